//! A real OCI registry (Debian's `docker-registry`, the CNCF distribution registry) on a free
//! loopback port, storing its blobs in a directory the test owns (so a test can damage one).
//! Stopped when dropped, as the other guarded servers.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

pub struct Registry {
    /// `127.0.0.1:PORT`, as it is written in `oci://` references.
    pub host: String,
    storage: PathBuf,
    guard: Child,
}

fn binary() -> &'static str {
    let found = Command::new("docker-registry")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "the registry tests need the CNCF distribution registry: install it (`apt-get install docker-registry`, as .ci/run does)"
    );
    "docker-registry"
}

impl Registry {
    /// Starts a registry keeping its content under `storage`, and waits until it answers.
    pub async fn start(storage: &Path) -> Registry {
        let binary = binary();
        let port = super::free_port();
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            storage.display()
        );
        let start = format!(
            r#"cat >"$dir/config.yml" <<'YAML'
{config}YAML
{binary} serve "$dir/config.yml" >"$dir/server.log" 2>&1 &"#
        );
        let guard = super::guarded_server("registry", &start);
        let host = format!("127.0.0.1:{port}");
        super::wait_until_ready(&format!("http://{host}/v2/"), "the registry test server").await;
        Registry {
            host,
            storage: storage.to_path_buf(),
            guard,
        }
    }

    /// The file holding the blob of `digest` (`sha256:HEX`) in the registry's storage.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        self.storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        super::stop_guarded(&mut self.guard);
    }
}
