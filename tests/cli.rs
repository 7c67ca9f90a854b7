//! The `engine` binary run as a user runs it: output and exit codes.

mod support;

use serde_json::Value;
use std::process::{Command, Output};

fn engine(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(args)
        .env("ENGINE_CACHE_DIR", support::cache_dir())
        .env_remove("ENGINE_LOG")
        .output()
        .expect("run engine")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn version_names_the_wit_package_and_wasmtime() {
    let out = engine(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        stdout(&out).trim(),
        format!(
            "engine {} (plugin WIT engine:plugin@0.1.0, wasmtime 48.0.8)",
            env!("CARGO_PKG_VERSION")
        )
    );
}

#[test]
fn plugins_list_shows_every_built_in_plugin_with_its_hash() {
    let out = engine(&["plugins", "list", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let rows: Vec<Value> = serde_json::from_str(&stdout(&out)).unwrap();
    let builtins = engine::plugins::embedded();
    assert_eq!(rows.len(), builtins.len());
    for (row, builtin) in rows.iter().zip(builtins) {
        assert_eq!(row["name"], builtin.name);
        assert_eq!(row["kind"], builtin.kind);
        assert_eq!(row["wit"], "0.1.0");
        assert_eq!(row["source"], "built-in");
        assert_eq!(
            row["sha256"],
            engine::runtime::cache::sha256_hex(builtin.bytes)
        );
    }

    let text = stdout(&engine(&["plugins", "list"]));
    let header: Vec<&str> = text.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "KIND", "VERSION", "WIT", "SOURCE", "SHA256"]
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("all-at-once") && l.contains("strategy")),
        "{text}"
    );
}

#[test]
fn inspect_shows_exports_capabilities_and_schema() {
    let path = support::testing_plugin("testing-hostile");
    let out = engine(&[
        "plugins",
        "inspect",
        path.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["kind"], "provider");
    assert_eq!(
        v["exports"]["engine:plugin/provider@0.1.0"],
        serde_json::json!([
            "info",
            "validate",
            "read",
            "plan",
            "deploy",
            "set-traffic",
            "get-traffic",
            "endpoints",
            "retire",
            "destroy"
        ])
    );
    assert_eq!(v["capabilities"]["secrets"], serde_json::json!(["token"]));
    assert_eq!(v["config_schema"]["type"], "object");
    assert!(
        v["imports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i == "wasi:http/outgoing-handler@0.2.12")
    );

    let text = stdout(&engine(&["plugins", "inspect", path.to_str().unwrap()]));
    assert!(
        text.contains(&format!("  source = \"{}\"", path.display())),
        "{text}"
    );
    assert!(
        text.contains("  sha256 = \""),
        "a file shows how to pin it: {text}"
    );
}

#[test]
fn inspecting_a_plugin_of_another_wit_version_fails_readably() {
    let path = support::testing_plugin("testing-future-wit");
    let out = engine(&["plugins", "inspect", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out).trim(),
        "error: plugin 'testing-future-wit' was built against WIT engine:plugin@0.2.0, but this engine implements engine:plugin@0.1.0; upgrade the engine, or rebuild the plugin against the engine's WIT version"
    );
    assert!(!stderr(&out).contains("matching implementation"));
}

#[test]
fn inspecting_something_that_does_not_exist_is_a_usage_error() {
    let out = engine(&["plugins", "inspect", "no-such-plugin"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).starts_with("error: no built-in plugin is named 'no-such-plugin'"),
        "{}",
        stderr(&out)
    );
    let out = engine(&["plugins", "frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_file_that_is_not_a_component_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("junk.wasm");
    std::fs::write(&path, b"not wasm at all").unwrap();
    let out = engine(&["plugins", "inspect", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with(
            "error: plugin 'junk' is not a WebAssembly component this engine can compile"
        ),
        "{}",
        stderr(&out)
    );
}
