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
