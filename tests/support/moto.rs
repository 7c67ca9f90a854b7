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

/// What [`Moto::data_plane`] plays besides moto: the images that fail, the private zones, and
/// the traffic it sends.
#[derive(Default)]
pub struct DataPlaneOptions<'a> {
    /// `(suffix, load balancer name)`: a private zone whose names point at that load balancer.
    pub zones: &'a [(&'a str, &'a str)],
    /// `(image, error rate)`: the processes of that image answer that share of `GET /` with 500.
    pub faults: &'a [(&'a str, f64)],
    /// `(url, requests a second)`: steady traffic through the load balancers.
    pub load: &'a [(&'a str, u32)],
}

/// The ECS agent and load balancer data plane that moto lacks (tests/support/ecs_data_plane.py):
/// real demo-service processes for each task set, registered in its target group, and an HTTP
/// proxy that routes by moto's listener rules and weights and publishes what it served to
/// moto's CloudWatch.
pub struct DataPlane {
    /// `http://127.0.0.1:PORT`: the proxy, for a `proxy` grant or an HTTP client.
    pub proxy: String,
    dir: tempfile::TempDir,
    guard: Child,
}

impl Moto {
    pub async fn data_plane(&self, options: DataPlaneOptions<'_>) -> DataPlane {
        let python = super::python::venv(super::python::MOTO);
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/support/ecs_data_plane.py"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = super::free_port();
        let mut args = vec![
            format!("--endpoint {}", self.url),
            format!("--listen {port}"),
            format!("--service-binary '{}'", engine::build_info::DEMO_SERVICE),
            format!("--log '{}'", dir.path().join("served.jsonl").display()),
        ];
        args.extend(
            options
                .zones
                .iter()
                .map(|(s, n)| format!("--zone '{s}={n}'")),
        );
        args.extend(
            options
                .faults
                .iter()
                .map(|(i, r)| format!("--fault '{i}={r}'")),
        );
        args.extend(
            options
                .load
                .iter()
                .map(|(u, r)| format!("--load '{u}={r}'")),
        );
        let start = format!(
            r#"'{}' '{script}' {} 2>'{}' &"#,
            python.display(),
            args.join(" "),
            dir.path().join("stderr.log").display()
        );
        let guard = super::guarded_server("ecs-data-plane", &start);
        let proxy = format!("http://127.0.0.1:{port}");
        super::wait_until_ready(&format!("{proxy}/-/ready"), "the ECS data plane").await;
        DataPlane { proxy, dir, guard }
    }
}

impl DataPlane {
    /// Every request the load balancers served so far: `{t, host, port, path, rule, group,
    /// status}`, with `group` the target group's name.
    pub fn served(&self) -> Vec<serde_json::Value> {
        let text =
            std::fs::read_to_string(self.dir.path().join("served.jsonl")).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// What the data plane printed on stderr (its failures), for a test's message.
    pub fn errors(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }
}

impl Drop for DataPlane {
    fn drop(&mut self) {
        super::stop_guarded(&mut self.guard);
    }
}
