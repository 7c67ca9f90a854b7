//! moto in server mode (PyPI, pinned in [`super::python::MOTO`]): AWS's APIs on one loopback
//! port, one private server per test. It routes by the service of the signature's scope and
//! does not verify signatures, so the tests check signatures separately (botocore's signer).
//!
//! As for the other servers, its parent shell waits on a pipe from this process and stops it
//! when the value is dropped or the test process ends.

use std::process::Child;
use std::time::{Duration, Instant};

pub struct Moto {
    /// `http://127.0.0.1:PORT`, every service's endpoint.
    pub url: String,
    guard: Child,
}

impl Moto {
    pub async fn start() -> Moto {
        let python = super::python::venv(super::python::MOTO);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let start = format!(
            r#"'{}' -m moto.server -H 127.0.0.1 -p {port} >"$dir/server.log" 2>&1 &"#,
            python.display()
        );
        let guard = super::guarded_server("moto", &start);
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(r) = http.get(format!("{url}/moto-api/")).send().await
                && r.status().is_success()
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the moto test server did not become ready on port {port}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Moto { url, guard }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        super::stop_guarded(&mut self.guard);
    }
}
