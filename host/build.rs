//! Compiles every plugin under `plugins/` for `wasm32-wasip2` in release mode, embeds the
//! first-party ones (providers/, strategies/, health/) in the `engine` binary, and tells the
//! tests where the test-only ones (testing/) are.
//!
//! The plugins are built by a nested `cargo` with its own target directory (`target/plugins`),
//! so it never waits on the lock of the build that runs this script.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

const WASM_TARGET: &str = "wasm32-wasip2";

/// Plugin directories and the kind of plugin each holds; `None` marks test-only plugins.
const KINDS: [(&str, Option<&str>); 4] = [
    ("providers", Some("provider")),
    ("strategies", Some("strategy")),
    ("health", Some("health")),
    ("testing", None),
];

struct PluginCrate {
    /// The directory name, which is the plugin's name in pipelines.
    name: String,
    package: String,
    kind: Option<&'static str>,
}

fn main() {
    let host_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = host_dir.parent().unwrap().to_path_buf();
    for watched in [
        "plugins",
        "sdk",
        "wit",
        "examples/demo-service",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }

    let target_root = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let target_dir = target_root.join("plugins");
    let crates = discover(&root.join("plugins"));
    for plugin in &crates {
        build(&root, &target_dir, plugin);
    }

    let wasm_dir = target_dir.join(WASM_TARGET).join("release");
    let mut out = String::from("static EMBEDDED: &[EmbeddedPlugin] = &[\n");
    for plugin in crates.iter().filter(|c| c.kind.is_some()) {
        let wasm = wasm_dir.join(format!("{}.wasm", plugin.package.replace('-', "_")));
        writeln!(
            out,
            "    EmbeddedPlugin {{ name: {:?}, kind: {:?}, bytes: include_bytes!({:?}) }},",
            plugin.name,
            plugin.kind.unwrap(),
            wasm.display().to_string()
        )
        .unwrap();
    }
    out.push_str("];\n");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    std::fs::write(out_dir.join("embedded_plugins.rs"), out).unwrap();
    println!(
        "cargo:rustc-env=ENGINE_TESTING_PLUGINS={}",
        wasm_dir.display()
    );
    println!(
        "cargo:rustc-env=ENGINE_WASMTIME_VERSION={}",
        locked_version(&root, "wasmtime")
    );

    // The quickstart's demo service: a native program the local platform runs. Built here, in
    // release mode, so the engine's tests and benchmarks (and the quickstart, whose pipeline
    // points at `target/demo/release/demo-service`) have it without a second command.
    let demo_dir = target_root.join("demo");
    let status = nested_cargo(&root)
        .args([
            "build",
            "--quiet",
            "--release",
            "-p",
            "demo-service",
            "--bin",
            "demo-service",
        ])
        .arg("--target-dir")
        .arg(&demo_dir)
        .status()
        .expect("cannot run cargo to build the demo service");
    assert!(
        status.success(),
        "building examples/demo-service failed (see the errors above)"
    );
    println!(
        "cargo:rustc-env=ENGINE_DEMO_SERVICE={}",
        demo_dir.join("release").join("demo-service").display()
    );
}

/// A cargo command for a nested build: the outer build's flags are for the engine, not for
/// what is built here (and clippy's wrapper would lint it a second time), so it starts clean.
fn nested_cargo(root: &Path) -> Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root);
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// The version of a dependency as Cargo.lock resolved it, for `engine --version`.
fn locked_version(root: &Path, package: &str) -> String {
    let lock: toml::Table = std::fs::read_to_string(root.join("Cargo.lock"))
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or_default();
    lock.get("package")
        .and_then(|p| p.as_array())
        .and_then(|packages| {
            packages
                .iter()
                .find(|p| p.get("name").and_then(|n| n.as_str()) == Some(package))
        })
        .and_then(|p| p.get("version").and_then(|v| v.as_str()))
        .unwrap_or("unknown")
        .to_string()
}

fn discover(plugins: &Path) -> Vec<PluginCrate> {
    let mut found = Vec::new();
    for (dir, kind) in KINDS {
        let Ok(entries) = std::fs::read_dir(plugins.join(dir)) else {
            continue;
        };
        let mut dirs: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        dirs.sort();
        for path in dirs {
            let manifest = path.join("Cargo.toml");
            let Ok(text) = std::fs::read_to_string(&manifest) else {
                continue;
            };
            let parsed: toml::Table = text
                .parse()
                .unwrap_or_else(|e| panic!("{}: {e}", manifest.display()));
            let package = parsed["package"]["name"].as_str().unwrap().to_string();
            found.push(PluginCrate {
                name: path.file_name().unwrap().to_string_lossy().into_owned(),
                package,
                kind,
            });
        }
    }
    found
}

fn build(root: &Path, target_dir: &Path, plugin: &PluginCrate) {
    let mut cmd = nested_cargo(root);
    cmd.args([
        "rustc",
        "--quiet",
        "--release",
        "--lib",
        "--crate-type",
        "cdylib",
    ])
    .args(["--target", WASM_TARGET, "-p", &plugin.package])
    .arg("--target-dir")
    .arg(target_dir);
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo to build plugin {}: {e}", plugin.name));
    if !status.success() {
        panic!(
            "building plugin {} ({}) for {WASM_TARGET} failed (see the errors above). \
             If the target is missing, run `rustup target add {WASM_TARGET}` \
             (rust-toolchain.toml asks rustup to install it on first use).",
            plugin.name, plugin.package
        );
    }
}
