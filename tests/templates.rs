//! `engine plugins new`: every template builds as written with its real toolchain (cargo for
//! Rust, componentize-js from npm, componentize-py from PyPI, pinned and cached in the user's
//! cache directory), passes its own native tests, is inspected and locked by its build script,
//! passes `engine plugins check --locked`, and deploys in its pipeline: on a directory
//! platform (providers) or on the local platform (strategies and health checks).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use support::project::assert_exit;
use support::text;

/// The toolchain versions the templates pin (templates/js/package.json,
/// templates/python/requirements.txt).
const COMPONENTIZE_JS: &str = "@bytecodealliance/componentize-js@0.23.0";
const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";

static INSTALLING: Mutex<()> = Mutex::new(());

/// `node_modules` holding componentize-js, made once per machine.
fn js_toolchain() -> PathBuf {
    let dir = support::cache_root().join("componentize-js-0.23.0");
    let _one = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    if !dir.join("node_modules/.bin/componentize-js").exists() {
        let building = dir.with_extension(format!("{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&building);
        std::fs::create_dir_all(&building).unwrap();
        succeed(
            Command::new("npm")
                .args(["install", "--no-audit", "--no-fund", "--prefix"])
                .arg(&building)
                .arg(COMPONENTIZE_JS),
        );
        if std::fs::rename(&building, &dir).is_err() {
            let _ = std::fs::remove_dir_all(&building); // another process made it first
        }
    }
    dir.join("node_modules")
}

/// A `componentize-py` command, from a virtual environment made once per machine.
fn python_toolchain(scratch: &Path) -> PathBuf {
    let python = {
        let _one = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
        support::python::venv(&[COMPONENTIZE_PY])
    };
    // The environment's own script names the path it was built at; this one does not.
    let wrapper = scratch.join("componentize-py");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec '{}' -c 'import sys; from componentize_py import script; sys.argv[0] = \"componentize-py\"; sys.exit(script())' \"$@\"\n",
            python.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    wrapper
}

fn succeed(command: &mut Command) -> Output {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(out.status.success(), "{command:?}\n{}", text(&out));
    out
}

fn engine(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_engine"));
    cmd.args(args).env("ENGINE_CACHE_DIR", support::cache_dir());
    cmd
}

/// One template, made into a project in a temporary directory.
struct Made {
    _scratch: tempfile::TempDir,
    dir: PathBuf,
    name: String,
    admin: String,
}

impl Made {
    fn new(kind: &str, lang: &str) -> Made {
        let scratch = tempfile::tempdir().unwrap();
        let name = format!("my-{lang}-{kind}");
        let dir = scratch.path().join(&name);
        let out = engine(&[
            "plugins", "new", &name, "--kind", kind, "--lang", lang, "--dir",
        ])
        .arg(&dir)
        .output()
        .unwrap();
        assert_exit(&out, 0);
        // Its own local platform, so tests in parallel do not share one.
        let admin = format!("http://localhost:{}", support::free_port());
        let pipeline = dir.join("pipeline.toml");
        let text = std::fs::read_to_string(&pipeline).unwrap();
        let text = text.replace("http://localhost:7700", &admin).replace(
            "provider_config = { port = 18080 }",
            &format!(
                "provider_config = {{ port = {}, admin = \"{admin}\" }}",
                support::free_port()
            ),
        );
        std::fs::write(&pipeline, text).unwrap();
        Made {
            _scratch: scratch,
            dir,
            name,
            admin,
        }
    }

    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.current_dir(&self.dir)
            .env("ENGINE", env!("CARGO_BIN_EXE_engine"))
            .env("ENGINE_CACHE_DIR", support::cache_dir())
            .env("ENGINE_LOCAL_ADMIN", &self.admin)
            // One target directory for the Rust templates, kept between runs.
            .env(
                "CARGO_TARGET_DIR",
                PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("templates"),
            );
        cmd
    }

    fn engine(&self, args: &[&str]) -> Output {
        let mut cmd = self.command(env!("CARGO_BIN_EXE_engine"));
        cmd.args(args).output().unwrap()
    }

    /// Native tests, the build script, the conformance check and a run of the pipeline.
    fn goes_all_the_way(&self, native_test: &[&str], toolchain: &[(&str, PathBuf)]) {
        let mut test = self.command(native_test[0]);
        succeed(test.args(&native_test[1..]));
        let mut build = self.command("./build.sh");
        for (key, value) in toolchain {
            build.env(key, value);
        }
        let built = succeed(&mut build);
        assert!(
            String::from_utf8_lossy(&built.stdout)
                .contains(&format!("name:         {}", self.name)),
            "{}",
            text(&built)
        );
        let checked = self.engine(&[
            "plugins",
            "check",
            &self.name,
            "--config",
            "pipeline.toml",
            "--locked",
        ]);
        assert_exit(&checked, 0);
        assert!(
            String::from_utf8_lossy(&checked.stdout).contains(" 0 failed"),
            "{}",
            text(&checked)
        );
        let ran = self.engine(&["run", "pipeline.toml", "--locked"]);
        assert_exit(&ran, 0);
    }
}

impl Drop for Made {
    fn drop(&mut self) {
        let _ = self.engine(&["local", "down"]);
    }
}

#[test]
fn rust_templates_build_check_and_deploy() {
    for kind in ["provider", "strategy", "health"] {
        let made = Made::new(kind, "rust");
        made.goes_all_the_way(&["cargo", "test", "--quiet"], &[]);
    }
}

#[test]
fn python_templates_build_check_and_deploy() {
    for kind in ["provider", "strategy", "health"] {
        let made = Made::new(kind, "python");
        let componentize = python_toolchain(made.dir.parent().unwrap());
        made.goes_all_the_way(
            &["python3", "-m", "unittest", "-q"],
            &[("COMPONENTIZE_PY", componentize)],
        );
    }
}

#[test]
fn javascript_templates_build_check_and_deploy() {
    let node_modules = js_toolchain();
    for kind in ["provider", "strategy", "health"] {
        let made = Made::new(kind, "js");
        std::os::unix::fs::symlink(&node_modules, made.dir.join("node_modules")).unwrap();
        // The provider's platform: the template's own platform.js, on a port of its own.
        let _platform = (kind == "provider").then(|| made.start_platform());
        made.goes_all_the_way(&["node", "--test"], &[]);
        if kind == "strategy" {
            a_strategy_with_http_is_refused_naming_the_flags(&made);
        }
    }
}

/// componentize-js without `-d http fetch-event` imports wasi:http, which no strategy gets.
fn a_strategy_with_http_is_refused_naming_the_flags(made: &Made) {
    let mut build = made.command("npx");
    build.args([
        "componentize-js",
        "src/plugin.js",
        "--wit",
        "wit",
        "--world-name",
        "strategy-plugin",
        "-o",
        "with-http.wasm",
    ]);
    succeed(&mut build);
    let out = made.engine(&["plugins", "inspect", "with-http.wasm"]);
    assert_exit(&out, 1);
    assert!(text(&out).contains("-d http fetch-event"), "{}", text(&out));
}

/// A process killed when dropped.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Made {
    /// Starts `node platform.js` and points the pipeline at it.
    fn start_platform(&self) -> Running {
        let port = support::free_port();
        let pipeline = self.dir.join("pipeline.toml");
        let text = std::fs::read_to_string(&pipeline).unwrap();
        std::fs::write(&pipeline, text.replace("7800", &port.to_string())).unwrap();
        let child = self
            .command("node")
            .arg("platform.js")
            .env("PORT", port.to_string())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let running = Running(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "platform.js did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        running
    }
}

#[test]
fn a_template_is_not_written_over_a_project_or_under_a_bad_name() {
    let scratch = tempfile::tempdir().unwrap();
    let out = engine(&["plugins", "new", "My_Check", "--kind", "health"])
        .current_dir(scratch.path())
        .output()
        .unwrap();
    assert_exit(&out, 2);
    assert!(
        text(&out).contains("is not a plugin name"),
        "{}",
        text(&out)
    );
    std::fs::write(scratch.path().join("keep.txt"), "mine").unwrap();
    let out = engine(&["plugins", "new", "ok", "--kind", "health", "--dir"])
        .arg(scratch.path())
        .output()
        .unwrap();
    assert_exit(&out, 2);
    assert!(text(&out).contains("is not empty"), "{}", text(&out));
}
