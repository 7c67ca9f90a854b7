//! Compiles every plugin under `plugins/` for `wasm32-wasip2` in release mode, embeds the
//! first-party ones (providers/, strategies/, health/) in the `engine` binary, and tells the
//! tests where the test-only ones (testing/) are (`build_info`).
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
    let core_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = core_dir.ancestors().nth(2).unwrap().to_path_buf();
    for watched in [
        "plugins",
        "sdk",
        "wit",
        "examples/demo-service",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    println!("cargo:rerun-if-env-changed=ENGINE_PLUGIN_TOOLCHAIN");

    let target_root = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let target_dir = target_root.join("plugins");
    let crates = discover(&root.join("plugins"));
    ensure_wasm_target();
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
    let mut cmd = match plugin_toolchain() {
        Some(toolchain) => {
            let mut cmd = tool_of(&toolchain, "cargo");
            // The outer build's compiler is not the one to use.
            cmd.env_remove("RUSTC");
            cmd
        }
        None => Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())),
    };
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
            "building plugin {} ({}) for {WASM_TARGET} failed (see the errors above)",
            plugin.name, plugin.package
        );
    }
}

/// The rustup toolchain the plugins are built with when it is not the engine's own:
/// `ENGINE_PLUGIN_TOOLCHAIN`, for builds whose toolchain cannot build them (a nightly for
/// fuzzing, whose wasm target rustup may not serve). The plugins are the same either way.
fn plugin_toolchain() -> Option<String> {
    std::env::var("ENGINE_PLUGIN_TOOLCHAIN")
        .ok()
        .filter(|t| !t.is_empty())
}

/// `rustup run TOOLCHAIN TOOL`.
fn tool_of(toolchain: &str, tool: &str) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", toolchain, tool]);
    cmd
}

/// Makes sure the active toolchain has the `wasm32-wasip2` standard library before any plugin
/// is built. rust-toolchain.toml lists the target, but rustup acts on that line only when it
/// installs the toolchain itself; with the toolchain already present (or `RUSTUP_AUTO_INSTALL=0`,
/// as on many CI images) the target would be missing and every plugin build fail.
fn ensure_wasm_target() {
    let override_toolchain = plugin_toolchain();
    let rustc_command = || match &override_toolchain {
        Some(toolchain) => tool_of(toolchain, "rustc"),
        None => Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into())),
    };
    let rustc = match &override_toolchain {
        Some(toolchain) => format!("the {toolchain} toolchain"),
        None => std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()),
    };
    if wasm_target_installed(rustc_command()) {
        return;
    }
    let toolchain = override_toolchain
        .clone()
        .or_else(|| std::env::var("RUSTUP_TOOLCHAIN").ok());
    let mut add = Command::new("rustup");
    add.args(["target", "add", WASM_TARGET]);
    if let Some(toolchain) = &toolchain {
        add.args(["--toolchain", toolchain]);
    }
    let shown = match &toolchain {
        Some(toolchain) => format!("rustup target add {WASM_TARGET} --toolchain {toolchain}"),
        None => format!("rustup target add {WASM_TARGET}"),
    };
    match add.output() {
        Err(_) => panic!(
            "the plugins need Rust's {WASM_TARGET} target, which {rustc} does not have, and rustup \
             is not on PATH to add it. Install the target's standard library for this toolchain \
             (with rustup: `{shown}`), then build again."
        ),
        Ok(out) if !out.status.success() => panic!(
            "the plugins need Rust's {WASM_TARGET} target; `{shown}` failed:\n{}\n\
             Run that command yourself (it needs access to rustup's download server), then build again.",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Ok(_) => {
            println!("cargo:warning=installed the {WASM_TARGET} target for the plugins (`{shown}`)")
        }
    }
    assert!(
        wasm_target_installed(rustc_command()),
        "`{shown}` succeeded but {rustc} still has no {WASM_TARGET} standard library"
    );
}

/// Whether `rustc`'s sysroot holds the wasm target's standard library.
fn wasm_target_installed(mut rustc: Command) -> bool {
    let Ok(out) = rustc.args(["--print", "sysroot"]).output() else {
        return false;
    };
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    sysroot
        .join("lib/rustlib")
        .join(WASM_TARGET)
        .join("lib")
        .is_dir()
}
