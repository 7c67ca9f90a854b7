//! The `engine` binary run as a user runs it: output and exit codes.

mod support;

use serde_json::Value;
use std::process::{Command, Output};
use support::project::{Project, assert_exit};

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
fn version_names_the_wit_package_the_commit_and_wasmtime() {
    let out = engine(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    let commit = text
        .split("commit ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_else(|| panic!("no commit in {text}"));
    assert_eq!(
        text.trim(),
        format!(
            "engine {} (plugin WIT engine:plugin@{}, commit {commit}, wasmtime 48.0.8)",
            env!("CARGO_PKG_VERSION"),
            engine::runtime::WIT_VERSION
        )
    );
    // Built from this repository's checkout, the commit is its HEAD.
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("git");
    if head.status.success() {
        assert_eq!(commit, String::from_utf8_lossy(&head.stdout).trim());
    }
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
        assert_eq!(row["wit"], "0.1.1");
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
        v["exports"]["engine:plugin/provider@0.1.1"],
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
        "error: plugin 'testing-future-wit' was built against WIT engine:plugin@0.2.0, but this engine implements engine:plugin@0.1.1; upgrade the engine, or rebuild the plugin against the engine's WIT version"
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

/// The engine on a project's pipeline, with the arguments exactly as given (no `--pipeline`
/// added) and extra environment variables.
fn engine_in(project: &Project, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_engine"));
    cmd.args(args)
        .current_dir(project.path(""))
        .env("ENGINE_CACHE_DIR", support::cache_dir())
        .env_remove("ENGINE_LOG")
        .env_remove("NO_COLOR")
        .env_remove("CLICOLOR_FORCE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run engine")
}

fn json(out: &Output) -> Value {
    serde_json::from_str(&stdout(out)).unwrap_or_else(|e| panic!("{e}: {}", stdout(out)))
}

const TAGGED: &str = r#"
[variables]
tag = "1"

[environments.staging.variables]
tag = "staging"

[services.api]
image = "api:${tag}"

[[services.api.checks]]
plugin = "health"
config = { unhealthy_revisions = ["api-r2"] }
"#;

/// The image `engine plan` would deploy for `api`, planned against a deployed `api:1`.
fn planned_image(project: &Project, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut all = vec!["plan", "--output", "json"];
    all.extend_from_slice(args);
    let out = engine_in(project, &all, env);
    assert_exit(&out, 0);
    let plan = json(&out);
    let api = &plan["services"][0];
    assert_eq!(api["service"], "api");
    match api["action"].as_str() {
        Some("no-change") => "api:1".into(),
        _ => api["changes"][0]["after"]
            .as_str()
            .unwrap_or_else(|| panic!("{api}"))
            .trim_matches('"')
            .to_string(),
    }
}

#[test]
fn variables_come_from_the_command_line_over_the_environment_over_the_file() {
    let project = Project::new(TAGGED);
    project.edit("[\"api-r2\"]", "[]");
    assert_exit(&engine_in(&project, &["run"], &[]), 0);
    assert_eq!(planned_image(&project, &[], &[]), "api:1");
    assert_eq!(planned_image(&project, &["--var", "tag=2"], &[]), "api:2");
    assert_eq!(
        planned_image(&project, &[], &[("ENGINE_VAR_tag", "3")]),
        "api:3"
    );
    assert_eq!(
        planned_image(&project, &["--var", "tag=4"], &[("ENGINE_VAR_tag", "3")]),
        "api:4",
        "--var wins over ENGINE_VAR_"
    );
    assert_eq!(
        planned_image(&project, &["--env", "staging"], &[]),
        "api:staging"
    );
    assert_eq!(
        planned_image(&project, &["--env", "staging"], &[("ENGINE_VAR_tag", "3")]),
        "api:3",
        "ENGINE_VAR_ wins over the environment's variables"
    );
    // A value from outside the file is literal text, not a reference.
    assert_eq!(
        planned_image(&project, &["--var", "tag=${nope}"], &[]),
        "api:${nope}"
    );
    // The deploy takes the same variables as the plan.
    assert_exit(&engine_in(&project, &["run", "--var", "tag=5"], &[]), 0);
    let platform = project.platform("api");
    assert_eq!(platform["revisions"][1]["id"], "api-r2", "{platform}");
    assert_eq!(platform["revisions"][1]["artifact"], "api:5", "{platform}");
}

#[test]
fn a_variable_the_pipeline_does_not_declare_is_an_error_that_lists_the_declared_ones() {
    let project = Project::new(TAGGED);
    for (args, env, origin) in [
        (
            vec!["validate", "--var", "colour=red"],
            vec![],
            "--var colour=…",
        ),
        (
            vec!["validate"],
            vec![("ENGINE_VAR_colour", "red")],
            "ENGINE_VAR_colour in the environment",
        ),
    ] {
        let out = engine_in(&project, &args, &env);
        assert_exit(&out, 2);
        let err = stderr(&out);
        assert!(
            err.contains(&format!(
                "error: {origin}: the pipeline declares no variable `colour`"
            )),
            "{err}"
        );
        assert!(err.contains("help: declared variables: tag"), "{err}");
    }
    let out = engine_in(&project, &["validate", "--var", "tag"], &[]);
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("is not NAME=VALUE"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn every_command_takes_the_pipeline_the_same_way() {
    let project = Project::new(TAGGED);
    let file = project.path("pipeline.toml");
    let file = file.to_str().unwrap();
    // From another directory, so the default pipeline.toml is not found by accident.
    let elsewhere = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_engine"))
            .args(args)
            .current_dir(std::env::temp_dir())
            .env("ENGINE_CACHE_DIR", support::cache_dir())
            .output()
            .unwrap()
    };
    assert_exit(&elsewhere(&["run", file]), 0);
    for args in [
        vec!["validate", file],
        vec!["validate", "-p", file],
        vec!["plan", file],
        vec!["status", file],
        vec!["status", "--pipeline", file],
        vec!["history", "api", file],
        vec!["history", "api", "-p", file],
        vec!["rollback", "api", file],
        vec!["destroy", "--dry-run", file],
    ] {
        let out = elsewhere(&args);
        // Rollback has nothing to go back to after one deploy: a failure, not a usage error.
        let expected = if args[0] == "rollback" { 1 } else { 0 };
        assert_eq!(
            out.status.code(),
            Some(expected),
            "{args:?}\n{}{}",
            stdout(&out),
            stderr(&out)
        );
    }
    let both = elsewhere(&["status", file, "-p", file]);
    assert_exit(&both, 2);
    assert!(
        stderr(&both).contains("cannot be used with"),
        "{}",
        stderr(&both)
    );
    // The default is pipeline.toml in the working directory, for every command.
    assert_exit(&engine_in(&project, &["status"], &[]), 0);
    assert_exit(&engine_in(&project, &["history", "api"], &[]), 0);
}

#[test]
fn status_and_history_print_json_and_status_shows_the_serving_revision() {
    let project = Project::new(TAGGED);
    assert_exit(&engine_in(&project, &["run"], &[]), 0);
    // api-r2 fails its gate: it is rolled back, and api-r1 goes on serving.
    assert_exit(&engine_in(&project, &["run", "--var", "tag=2"], &[]), 1);

    let status = json(&engine_in(&project, &["status", "--output", "json"], &[]));
    assert_eq!(status["schema"], 1);
    assert_eq!(status["pipeline"], "shop");
    assert_eq!(status["environment"], "default");
    assert_eq!(status["lock"], Value::Null);
    assert_eq!(status["last_run"]["id"], 2);
    assert_eq!(status["last_run"]["outcome"], "failed");
    let api = &status["services"][0];
    assert_eq!(api["service"], "api");
    assert_eq!(api["serving"]["revision"], "api-r1");
    assert_eq!(api["last_event"]["revision"], "api-r2");
    assert_eq!(api["last_event"]["outcome"], "aborted");

    let text = stdout(&engine_in(&project, &["status"], &[]));
    let row = text
        .lines()
        .find(|l| l.starts_with("api "))
        .unwrap_or_else(|| panic!("{text}"));
    let columns: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(columns[1], "api-r1", "SERVING: {text}");
    assert!(row.contains("api-r2 aborted"), "LAST EVENT: {text}");

    let history = json(&engine_in(
        &project,
        &["history", "api", "--output", "json"],
        &[],
    ));
    assert_eq!(history["service"], "api");
    let outcomes: Vec<(&str, &str)> = history["revisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["revision"].as_str().unwrap(),
                r["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("api-r2", "aborted"),
            ("api-r2", "deployed"),
            ("api-r1", "promoted"),
            ("api-r1", "deployed")
        ]
    );
    assert_eq!(history["revisions"][0]["run"], 2);
    assert!(
        history["revisions"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("health checks failed")
    );
}

#[test]
fn plan_prints_its_json_document_on_stdout() {
    let project = Project::new(TAGGED);
    let out = engine_in(
        &project,
        &["plan", "--output", "json", "--out", "plan.json"],
        &[],
    );
    assert_exit(&out, 0);
    let printed = json(&out);
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(project.path("plan.json")).unwrap()).unwrap();
    assert_eq!(printed, written);
    assert_eq!(printed["schema"], 1);
    assert_eq!(printed["services"][0]["action"], "create");
    assert_eq!(printed["would_call"], serde_json::json!([]));
}

#[test]
fn validate_prints_diagnostics_as_json_with_their_place() {
    let project = Project::new(TAGGED);
    let out = engine_in(&project, &["validate", "--output", "json"], &[]);
    assert_exit(&out, 0);
    let valid = json(&out);
    assert_eq!(valid["valid"], true);
    assert_eq!(valid["pipeline"], "shop");
    assert_eq!(valid["waves"], serde_json::json!([["api"]]));
    assert_eq!(valid["diagnostics"], serde_json::json!([]));

    project.edit(
        "image = \"api:${tag}\"",
        "image = \"api:${tags}\"\nprovder = \"x\"",
    );
    let out = engine_in(&project, &["validate", "--output", "json"], &[]);
    assert_exit(&out, 2);
    let invalid = json(&out);
    assert_eq!(invalid["valid"], false);
    let text = std::fs::read_to_string(project.path("pipeline.toml")).unwrap();
    let line_of = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    let diagnostics = invalid["diagnostics"].as_array().unwrap();
    assert_eq!(diagnostics.len(), 2, "{invalid}");
    assert_eq!(
        diagnostics[0],
        serde_json::json!({
            "file": "pipeline.toml",
            "line": line_of("api:${tags}"),
            "column": 9,
            "end_line": line_of("api:${tags}"),
            "end_column": 22,
            "severity": "error",
            "message": "undefined variable `tags`",
            "hint": "did you mean `${tag}`?",
        })
    );
    assert_eq!(
        diagnostics[1]["message"],
        "unknown key `provder` in [services.api]"
    );
    assert_eq!(diagnostics[1]["line"], line_of("provder"));
    assert_eq!(diagnostics[1]["column"], 1);
    assert_eq!(diagnostics[1]["hint"], "did you mean `provider`?");
}

#[test]
fn validate_shows_warnings_in_place() {
    let project = Project::new(TAGGED);
    // The test health check declares no environment variables: granting one is a warning.
    project.edit(
        "[plugins.health]",
        "[plugins.health]\nallow_env = [\"HOME\"]",
    );
    let out = engine_in(&project, &["validate", "--output", "json"], &[]);
    assert_exit(&out, 0);
    let doc = json(&out);
    assert_eq!(doc["valid"], true);
    let warning = &doc["diagnostics"][0];
    assert_eq!(warning["severity"], "warning", "{doc}");
    assert!(
        warning["message"]
            .as_str()
            .unwrap()
            .starts_with("plugin `health`: "),
        "{warning}"
    );
    let out = engine_in(&project, &["validate"], &[]);
    assert_exit(&out, 0);
    assert!(
        stderr(&out).contains("warning: plugin `health`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn completions_and_man_pages_describe_every_command() {
    for shell in ["bash", "zsh", "fish", "powershell"] {
        let out = engine(&["completions", shell]);
        assert_eq!(out.status.code(), Some(0), "{shell}: {}", stderr(&out));
        let script = stdout(&out);
        for command in ["run", "plan", "validate", "rollback"] {
            assert!(script.contains(command), "{shell} lacks {command}");
        }
    }
    let bash = stdout(&engine(&["completions", "bash"]));
    assert!(bash.contains("complete -F _engine"), "{bash}");
    assert!(bash.contains("--lock-wait"), "bash completes options");

    let man = stdout(&engine(&["man"]));
    assert!(man.contains(".TH engine 1"), "{man}");
    let dir = tempfile::tempdir().unwrap();
    let out = engine(&["man", "--dir", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for page in [
        "engine.1",
        "engine-run.1",
        "engine-validate.1",
        "engine-local-up.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(page))
            .unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(".TH"), "{page}");
    }
}

#[test]
fn colour_only_at_a_terminal_unless_forced_and_never_with_no_color() {
    let project = Project::new(TAGGED);
    project.edit("image = \"api:${tag}\"", "image = \"api:${tga}\"");
    let esc = |out: &Output| out.stderr.contains(&0x1b);
    // stderr is a pipe here, as in a CI log.
    let plain = engine_in(&project, &["validate"], &[]);
    assert_exit(&plain, 2);
    assert!(!esc(&plain), "{}", stderr(&plain));
    let forced = engine_in(&project, &["validate"], &[("CLICOLOR_FORCE", "1")]);
    assert!(esc(&forced), "CLICOLOR_FORCE colours a pipe");
    let opted_out = engine_in(
        &project,
        &["validate"],
        &[("CLICOLOR_FORCE", "1"), ("NO_COLOR", "1")],
    );
    assert!(!esc(&opted_out), "NO_COLOR wins");

    // The engine's own log lines too: a grant the plugin does not declare is a warning.
    project.edit("image = \"api:${tga}\"", "image = \"api:${tag}\"");
    project.edit(
        "[plugins.health]",
        "[plugins.health]\nallow_env = [\"HOME\"]",
    );
    let run = engine_in(&project, &["run"], &[("TERM", "xterm")]);
    assert_exit(&run, 0);
    assert!(stderr(&run).contains("WARN"), "{}", stderr(&run));
    assert!(!esc(&run), "{}", stderr(&run));
    let forced = engine_in(&project, &["destroy"], &[("CLICOLOR_FORCE", "1")]);
    assert_exit(&forced, 0);
    assert!(esc(&forced), "{}", stderr(&forced));
}

#[test]
fn huge_durations_are_refused_with_their_bound() {
    let project = Project::new(TAGGED);
    let out = engine_in(&project, &["run", "--lock-wait", "300000000000years"], &[]);
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("longer than the longest lock wait, 24h"),
        "{}",
        stderr(&out)
    );
    project.edit(
        "[plugins.health]",
        "[plugins.health]\ntimeout = \"300000000000years\"",
    );
    let out = engine_in(&project, &["validate"], &[]);
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("is longer than the longest plugin call, 1h"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_closed_stdout_ends_the_engine_quietly() {
    use std::os::unix::process::ExitStatusExt;
    // A pipe whose reader is gone before the engine writes, as after `| head -1` has exited.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    for args in [&["completions", "bash"][..], &["plugins", "list"][..]] {
        let out = Command::new(env!("CARGO_BIN_EXE_engine"))
            .args(args)
            .env("ENGINE_CACHE_DIR", support::cache_dir())
            .stdout(writer.try_clone().unwrap())
            .output()
            .unwrap();
        let err = stderr(&out);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGPIPE),
            "{args:?} ends as other CLIs do on a closed pipe: {:?} {err}",
            out.status
        );
    }
}

/// WIT 0.1.1 only added to 0.1.0: a provider built against the released 0.1.0 (exporting
/// `provider@0.1.0`, importing the 0.1.0 host interfaces) loads and plans on this engine.
#[test]
fn a_provider_built_against_wit_0_1_0_still_loads_and_plans() {
    let path = support::testing_plugin("testing-wit-0-1-0");
    let text = stdout(&engine(&["plugins", "inspect", path.to_str().unwrap()]));
    assert!(text.contains("WIT:          engine:plugin@0.1.0"), "{text}");
    assert!(
        text.contains("exports:      engine:plugin/provider@0.1.0: info, validate, read"),
        "{text}"
    );
    let dir = tempfile::tempdir().unwrap();
    let sha = engine::runtime::cache::sha256_hex(&std::fs::read(&path).unwrap());
    let pipeline = format!(
        "name = \"compat\"\n[plugins.old]\nsource = \"{}\"\nsha256 = \"{sha}\"\n\n[services.api]\nprovider = \"old\"\nimage = \"example/api:1\"\n",
        path.display()
    );
    std::fs::write(dir.path().join("pipeline.toml"), pipeline).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(["plan", "pipeline.toml"])
        .env("ENGINE_CACHE_DIR", support::cache_dir())
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains("api: create (a 0.1.0 plugin would create api)"),
        "{}",
        stdout(&out)
    );
}
