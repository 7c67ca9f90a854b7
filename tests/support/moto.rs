//! moto in server mode (PyPI, pinned in [`super::python::MOTO`]): AWS's APIs on one loopback
//! port, one private server per test. It routes by the service of the signature's scope and
//! does not verify signatures, so the tests check signatures separately (botocore's signer).
//!
//! As for the other servers, its parent shell waits on a pipe from this process and stops it
//! when the value is dropped or the test process ends.

use std::process::Child;

pub struct Moto {
    /// `http://127.0.0.1:PORT`, every service's endpoint.
    pub url: String,
    guard: Child,
}

impl Moto {
    pub async fn start() -> Moto {
        let python = super::python::venv(super::python::MOTO);
        let port = super::free_port();
        let start = format!(
            r#"'{}' -m moto.server -H 127.0.0.1 -p {port} >"$dir/server.log" 2>&1 &"#,
            python.display()
        );
        let guard = super::guarded_server("moto", &start);
        let url = format!("http://127.0.0.1:{port}");
        super::wait_until_ready(&format!("{url}/moto-api/"), "the moto test server").await;
        Moto { url, guard }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        super::stop_guarded(&mut self.guard);
    }
}

/// Keys moto accepts (it checks no signature); the engine gets them as `aws-env:TEST_AWS`.
pub const TEST_KEYS: [(&str, &str); 2] = [
    ("TEST_AWS_ACCESS_KEY_ID", "AKIAMOTOTESTKEY"),
    ("TEST_AWS_SECRET_ACCESS_KEY", "moto-test-secret-key"),
];

impl Moto {
    /// Runs a Python script with boto3 against the server (`kw` holds the endpoint and region
    /// for `boto3.client(NAME, **kw)`) and returns the JSON it prints: an independent AWS
    /// client to set up what the engine expects and to read back what it made.
    pub fn boto3(&self, script: &str) -> serde_json::Value {
        let out = self.python(script).output().unwrap();
        assert!(
            out.status.success(),
            "boto3 script failed:\n{script}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "boto3 script printed no JSON ({e}):\n{}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }
}

impl Moto {
    /// Starts a boto3 script that runs beside the test (a stand-in for traffic, say); it is
    /// killed when the returned value is dropped.
    pub fn boto3_beside(&self, script: &str) -> Beside {
        Beside(self.python(script).spawn().unwrap())
    }

    fn python(&self, script: &str) -> std::process::Command {
        let python = super::python::venv(super::python::MOTO);
        let prelude = format!(
            "import boto3, json, os\nkw = dict(endpoint_url={:?}, region_name='eu-west-1')\n",
            self.url
        );
        let mut command = std::process::Command::new(python);
        command
            .args(["-c", &format!("{prelude}{script}")])
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env_remove("AWS_PROFILE");
        command
    }
}

/// A script running beside a test, killed on drop.
pub struct Beside(Child);

impl Drop for Beside {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
