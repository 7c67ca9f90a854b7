//! What `engine --version` says: the commit it is built from and the wasmtime it embeds. (The
//! plugins are built by `core/build.rs`: a new commit rebuilds only this crate, not the runtime.)

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let host_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = host_dir.parent().unwrap().to_path_buf();
    println!(
        "cargo:rerun-if-changed={}",
        root.join("Cargo.lock").display()
    );
    println!(
        "cargo:rustc-env=ENGINE_WASMTIME_VERSION={}",
        locked_version(&root, "wasmtime")
    );
    println!("cargo:rustc-env=ENGINE_COMMIT={}", commit(&root));
}

/// The commit the engine is built from, for `engine --version`; "unknown" outside a git
/// checkout (a source tarball). Rebuilt when HEAD moves.
fn commit(root: &Path) -> String {
    let git = root.join(".git");
    let mut watched = vec![git.join("HEAD"), git.join("packed-refs")];
    if let Ok(head) = std::fs::read_to_string(git.join("HEAD"))
        && let Some(reference) = head.trim().strip_prefix("ref: ")
    {
        watched.push(git.join(reference));
    }
    // A path that does not exist would make cargo run this script on every build.
    for path in watched.iter().filter(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(root)
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "unknown".into())
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
