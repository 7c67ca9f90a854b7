//! A real HTTP proxy (Debian's `tinyproxy`) standing in for a proxy inside a VPC: it listens on
//! 127.0.0.1 and connects onwards from 127.0.0.2, the address the Cloud Run test server is told
//! is inside the project's network. Forwarding and CONNECT both.
//!
//! Like the Prometheus server, it runs under a shell that waits on a pipe from this process, so
//! it stops when the value is dropped or the test process ends.

use std::net::IpAddr;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

pub struct VpcProxy {
    /// `http://127.0.0.1:PORT`, for a `proxy` grant.
    pub url: String,
    guard: Child,
}

/// The address the proxy's outgoing connections come from.
pub const INSIDE: &str = "127.0.0.2";

impl VpcProxy {
    pub fn start() -> VpcProxy {
        let found = Command::new("tinyproxy")
            .arg("-v")
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "the VPC proxy tests need tinyproxy: install it (`apt-get install tinyproxy-bin`, as .ci/run does)"
        );
        let port = super::free_port();
        let start = format!(
            r#"cat >"$dir/tinyproxy.conf" <<'CONF'
Port {port}
Listen 127.0.0.1
Bind {INSIDE}
Timeout 60
MaxClients 100
Allow 127.0.0.1
DisableViaHeader Yes
LogLevel Warning
CONF
tinyproxy -d -c "$dir/tinyproxy.conf" >"$dir/proxy.log" 2>&1 &"#
        );
        let guard = super::guarded_server("proxy", &start);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the test proxy did not listen on port {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        VpcProxy {
            url: format!("http://127.0.0.1:{port}"),
            guard,
        }
    }

    /// The source address of the proxy's requests, for the test server's VPC.
    pub fn inside() -> IpAddr {
        INSIDE.parse().unwrap()
    }
}

impl Drop for VpcProxy {
    fn drop(&mut self) {
        super::stop_guarded(&mut self.guard);
    }
}
