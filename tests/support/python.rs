//! Python packages the tests use as independent peers (moto's AWS server, botocore's own
//! request signer), from
//! PyPI at pinned versions, in a virtual environment cached in the user's cache directory by
//! its requirements: only the first run on a machine installs them (CI clones afresh, but
//! keeps that directory).

use super::cache_root;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

/// moto's server and AWS's Python SDK, at the versions the research notes were made with: one
/// environment for the moto server and for botocore's signer.
pub const MOTO: &[&str] = &["moto[server]==5.2.5", "boto3==1.44.5", "botocore==1.44.5"];

/// One creation at a time within a test binary; across processes, the rename below decides.
static CREATING: Mutex<()> = Mutex::new(());

/// The Python interpreter of a virtual environment holding `requirements` (pip specifiers,
/// pinned), made on first use.
pub fn venv(requirements: &[&str]) -> PathBuf {
    let key = hex::encode(&Sha256::digest(requirements.join("\n").as_bytes())[..8]);
    let dir = cache_root().join(format!("python-{key}"));
    let python = dir.join("bin/python");
    let _one = CREATING.lock().unwrap_or_else(|e| e.into_inner());
    if python.exists() {
        return python;
    }
    std::fs::create_dir_all(cache_root()).unwrap();
    // Built aside and renamed into place, so a half-made environment is never used.
    let building = cache_root().join(format!("python-{key}.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&building);
    run(Command::new("python3").args(["-m", "venv"]).arg(&building));
    run(Command::new(building.join("bin/python"))
        .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
        .args(requirements));
    // The environment's scripts name its path; only `python -m …` is used, which does not.
    if std::fs::rename(&building, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&building); // another process made it first
    }
    python
}

fn run(command: &mut Command) {
    let out = command.output().expect("python3 is installed");
    assert!(
        out.status.success(),
        "{command:?} failed (the tests install their Python peers from PyPI):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
