//! A pipeline project on disk for the end-to-end tests: the test plugins copied in and
//! pinned, a platform directory the test provider keeps its services in.

use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output};

/// One service on the test provider, checked by the test health check: every plugin of a
/// [`Project`] in use.
pub const CHECKED_SERVICE: &str = r#"
[services.api]
image = "api:1"

[[services.api.checks]]
plugin = "health"
config = {}
"#;

/// A pipeline directory: the test plugins copied in and pinned, a platform directory.
pub struct Project {
    dir: tempfile::TempDir,
}

impl Project {
    pub fn new(services: &str) -> Project {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("plugins")).unwrap();
        std::fs::create_dir_all(dir.path().join("platform")).unwrap();
        let mut pins = Vec::new();
        for package in ["testing-test-provider", "testing-test-health"] {
            let bytes = std::fs::read(super::testing_plugin(package)).unwrap();
            let file = format!("{}.wasm", package.replace('-', "_"));
            std::fs::write(dir.path().join("plugins").join(&file), &bytes).unwrap();
            pins.push((file, engine::runtime::cache::sha256_hex(&bytes)));
        }
        let text = format!(
            r#"name = "shop"

[plugins.test]
source = "plugins/{}"
sha256 = "{}"
dirs = [{{ host = "platform", guest = "/platform", writable = true }}]

[plugins.health]
source = "plugins/{}"
sha256 = "{}"

[defaults]
provider = "test"

{services}"#,
            pins[0].0, pins[0].1, pins[1].0, pins[1].1
        );
        std::fs::write(dir.path().join("pipeline.toml"), text).unwrap();
        Project { dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_engine"));
        cmd.arg("run")
            .arg(self.path("pipeline.toml"))
            .args(args)
            .env("ENGINE_CACHE_DIR", super::cache_dir());
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// Any subcommand that takes `--pipeline` (promote, abort, status, history…).
    pub fn engine(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_engine"))
            .args(args)
            .arg("--pipeline")
            .arg(self.path("pipeline.toml"))
            .env("ENGINE_CACHE_DIR", super::cache_dir())
            .output()
            .unwrap()
    }

    pub fn edit(&self, from: &str, to: &str) {
        let path = self.path("pipeline.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{from}");
        std::fs::write(&path, text.replace(from, to)).unwrap();
    }

    /// What the test platform holds for a service.
    pub fn platform(&self, service: &str) -> Value {
        serde_json::from_str(
            &std::fs::read_to_string(self.path(&format!("platform/{service}.json"))).unwrap(),
        )
        .unwrap()
    }
}

/// Checks the exit code, showing stdout and stderr when it is not the expected one.
pub fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
