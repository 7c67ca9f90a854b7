//! `engine run` end to end: a real engine process, real plugins (the test provider keeps its
//! platform in a directory, the test health check answers from its config), a real SQLite state
//! file.

mod support;

use support::project::{Project, assert_exit};

use serde_json::{Value, json};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Runs a future of the library (the state store) from a plain test.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect(l))
        .collect()
}

const SYSTEM: &str = r#"
[services.db]
image = "db:1"

[services.api]
image = "api:1"
depends_on = ["db"]

[[services.api.checks]]
plugin = "health"
config = { unhealthy_revisions = ["api-r2"] }

[services.worker]
image = "worker:1"
depends_on = ["db"]

[services.web]
image = "web:1"
depends_on = ["api"]
"#;

/// A service's revision history in the project's state, newest first.
fn history(project: &Project, service: &str) -> Vec<engine::state::RevisionRecord> {
    block_on(async {
        let store = engine::state::Store::open(&project.path(".engine/state.db"))
            .await
            .unwrap();
        store.history("shop", "default", service).await.unwrap()
    })
}

#[test]
fn services_deploy_in_dependency_order_with_independent_ones_in_parallel() {
    let project = Project::new(SYSTEM);
    let out = project.run(&["--output", "json"]);
    assert_exit(&out, 0);
    let events = json_lines(&out);
    assert!(events.iter().all(|e| e["schema"] == 1));
    let position = |kind: &str, service: &str| {
        events
            .iter()
            .position(|e| e["type"] == kind && e["service"] == service)
            .unwrap_or_else(|| panic!("{kind} {service}"))
    };
    for (dep, service) in [("db", "api"), ("db", "worker"), ("api", "web")] {
        assert!(
            position("service-finished", dep) < position("phase", service),
            "{service} started before {dep} finished"
        );
    }
    // api and worker both depend only on db: they run side by side.
    assert!(position("phase", "worker") < position("service-finished", "api"));
    let summary = events.last().unwrap();
    assert_eq!(summary["type"], "summary");
    assert_eq!(summary["succeeded"], true);
    for service in ["db", "api", "worker", "web"] {
        assert_eq!(
            project.platform(service)["traffic"],
            serde_json::json!([[format!("{service}-r1"), 100]])
        );
    }
    // Nothing changed: the second run leaves every service as it is.
    let again = project.run(&["--output", "json"]);
    assert_eq!(again.status.code(), Some(0));
    assert!(
        json_lines(&again)
            .iter()
            .filter(|e| e["type"] == "service-finished")
            .all(|e| e["outcome"] == "unchanged")
    );
}

#[test]
fn a_failing_health_gate_rolls_back_and_skips_dependents() {
    let project = Project::new(SYSTEM);
    assert_eq!(project.run(&[]).status.code(), Some(0));
    project.edit("image = \"api:1\"", "image = \"api:2\"");
    project.edit("image = \"web:1\"", "image = \"web:2\"");
    project.edit("image = \"worker:1\"", "image = \"worker:2\"");
    let out = project.run(&["--output", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let events = json_lines(&out);
    let finished = |service: &str| {
        events
            .iter()
            .find(|e| e["type"] == "service-finished" && e["service"] == service)
            .unwrap()
            .clone()
    };
    assert_eq!(finished("api")["outcome"], "rolled-back");
    assert_eq!(
        finished("api")["reason"],
        "health checks failed: health (error rate 12.5% for api-r2)"
    );
    assert_eq!(finished("web")["outcome"], "skipped");
    assert_eq!(finished("web")["reason"], "dependency `api` rolled-back");
    assert_eq!(
        finished("worker")["outcome"],
        "deployed",
        "an independent branch goes on"
    );
    let api = project.platform("api");
    assert_eq!(
        api["traffic"],
        serde_json::json!([["api-r1", 100]]),
        "the previous split is restored"
    );
    assert_eq!(
        api["revisions"][1]["retired"], true,
        "the failed revision is retired"
    );
    assert!(
        project.platform("web")["revisions"]
            .as_array()
            .unwrap()
            .len()
            == 1,
        "web was never deployed"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("error: 2 of 4 services did not deploy: api, web"),
        "{stderr}"
    );

    let history = history(&project, "api");
    assert_eq!(history[0].revision, "api-r2");
    assert_eq!(history[0].outcome, "aborted");

    // The same, through the CLI.
    let state_cmd = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_engine"))
            .args(args)
            .arg("--pipeline")
            .arg(project.path("pipeline.toml"))
            .output()
            .unwrap()
    };
    let out = state_cmd(&["history", "api"]);
    assert_exit(&out, 0);
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert!(
        lines[0].starts_with("WHEN") && lines[0].contains("REVISION  OUTCOME"),
        "{lines:?}"
    );
    let cells: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(cells[1..5], ["api-r2", "aborted", "0%", "2"], "{lines:?}");
    assert!(
        lines[1].ends_with("health checks failed: health (error rate 12.5% for api-r2)"),
        "{lines:?}"
    );
    let out = state_cmd(&["status"]);
    assert_exit(&out, 0);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("not locked"), "{stdout}");
    assert!(stdout.contains("last run: 2 started"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("api") && l.contains("api-r2") && l.contains("aborted")),
        "{stdout}"
    );
    assert_exit(&state_cmd(&["history", "nope"]), 2);

    // The same release again is refused, not "unchanged" (api is not at the desired image).
    let out = project.run(&["--output", "json"]);
    assert_exit(&out, 1);
    let api = json_lines(&out)
        .into_iter()
        .find(|e| e["type"] == "service-finished" && e["service"] == "api")
        .unwrap();
    assert_eq!(api["outcome"], "failed");
    assert_eq!(
        (&api["revision"], &api["traffic"]),
        (&json!("api-r1"), &json!(100))
    );
    let reason = api["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("this release was rejected in run 2: health checks failed"),
        "{reason}"
    );

    // Asked to, the next run tries it again.
    let out = project.run(&["--output", "json", "--retry-rejected"]);
    assert_exit(&out, 0);
    let finished: Vec<(String, String)> = json_lines(&out)
        .iter()
        .filter(|e| e["type"] == "service-finished")
        .map(|e| {
            (
                e["service"].as_str().unwrap().to_string(),
                e["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        finished.contains(&("api".into(), "deployed".into())),
        "{finished:?}"
    );
    assert!(
        finished.contains(&("web".into(), "deployed".into())),
        "{finished:?}"
    );
    assert_eq!(
        project.platform("api")["traffic"],
        serde_json::json!([["api-r4", 100]])
    );
}

#[test]
fn a_step_whose_history_row_cannot_be_written_fails_and_the_next_run_resumes_it() {
    let project = Project::new("[services.api]\nimage = \"api:1\"\n");
    let state = project.path(".engine/state.db");
    drop(block_on(engine::state::Store::open(&state)).unwrap());
    // The promotion's row fails, as a full disk would: the step fails, its checkpoint with it.
    rusqlite::Connection::open(&state)
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER no_history BEFORE INSERT ON revisions WHEN NEW.outcome = 'promoted'
             BEGIN SELECT RAISE(ABORT, 'history is broken'); END;",
        )
        .unwrap();
    let out = project.run(&[]);
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{printed}");
    assert!(
        printed.contains("api: failed: cannot record the history of `api`")
            && printed.contains("history is broken"),
        "{printed}"
    );
    assert!(printed.contains("the run stays open"), "{printed}");
    let history = || {
        history(&project, "api")
            .into_iter()
            .map(|r| format!("{} {}", r.revision, r.outcome))
            .collect::<Vec<_>>()
    };
    assert_eq!(history(), ["api-r1 deployed"], "no row without its step");

    // Once the state can be written again, the same run resumes: promoted, recorded once.
    rusqlite::Connection::open(&state)
        .unwrap()
        .execute_batch("DROP TRIGGER no_history")
        .unwrap();
    let out = project.run(&[]);
    assert_exit(&out, 0);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("run 1 (resumed)"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(history(), ["api-r1 promoted", "api-r1 deployed"]);
}

#[test]
fn a_rollback_or_destroy_whose_history_row_cannot_be_written_says_so() {
    let project = Project::new("[services.api]\nimage = \"api:1\"\n");
    assert_exit(&project.run(&[]), 0);
    project.edit("image = \"api:1\"", "image = \"api:2\"");
    assert_exit(&project.run(&[]), 0);
    rusqlite::Connection::open(project.path(".engine/state.db"))
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER no_history BEFORE INSERT ON revisions
             WHEN NEW.outcome IN ('rolled-back-to', 'destroyed')
             BEGIN SELECT RAISE(ABORT, 'history is broken'); END;",
        )
        .unwrap();
    let out = project.engine(&["rollback", "api"]);
    assert_exit(&out, 1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .contains("api-r1 serves all traffic of `api`, but cannot record the history of `api`")
            && stderr.contains("history is broken"),
        "{stderr}"
    );
    assert_eq!(project.platform("api")["traffic"], json!([["api-r1", 100]]));

    let out = project.engine(&["destroy"]);
    assert_exit(&out, 1);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("api: destroyed, but cannot record the history of `api`"),
        "{stdout}"
    );
    assert!(
        !project.path("platform/api.json").exists(),
        "it was destroyed"
    );
}

/// Takes the project's lock as a run on another machine would (its process is not checked).
fn lock_from_another_machine(project: &Project) -> (engine::state::Store, engine::state::Lock) {
    let store = block_on(engine::state::Store::open(
        &project.path(".engine/state.db"),
    ))
    .unwrap();
    let holder = engine::state::Holder {
        name: "engine run on ci-7".into(),
        host: "ci-runner-7".into(),
        pid: 4242,
        process_start: None,
    };
    let lock = block_on(store.lock("shop", "default", &holder)).unwrap();
    (store, lock)
}

#[test]
fn a_second_run_finds_the_lock_busy() {
    let project = Project::new(SYSTEM);
    let (store, lock) = lock_from_another_machine(&project);
    let out = project.run(&[]);
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("error: pipeline `shop` (environment `default`) is locked by engine run on ci-7, running on ci-runner-7 as process 4242"),
        "{stderr}"
    );
    let started = Instant::now();
    let out = project.run(&["--lock-wait", "1s"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "it waited before giving up"
    );
    let status = project.engine(&["status"]);
    assert!(
        String::from_utf8_lossy(&status.stdout).contains(
            "locked by engine run on ci-7 on ci-runner-7 (process 4242: not checked from this machine)"
        ),
        "{status:?}"
    );
    block_on(store.unlock(lock)).unwrap();
    assert_eq!(
        project.run(&[]).status.code(),
        Some(0),
        "free once released"
    );
}

#[test]
fn a_run_killed_mid_rollout_resumes_without_deploying_twice() {
    // api's deploy creates its revision, then takes 3 s more to return: the kill below lands in
    // that gap, after the platform has the revision and before the engine stored it. The
    // resumed run must deploy again with the same id (finding the revision) rather than read
    // the platform afresh and take its own new revision for the serving one.
    let project = Project::new(SYSTEM);
    project.edit(
        "image = \"api:1\"",
        "image = \"api:1\"\nprovider_config = { hold_after_ms = { deploy = 3000 } }",
    );
    let mut child = spawn_quiet(&project);
    // Kill it once api's revision exists, while its deploy call is still running.
    wait_until("api's deploy", || {
        std::fs::read_to_string(project.path("platform/api.json"))
            .is_ok_and(|d| d.contains("api-r1"))
    });
    child.kill().unwrap(); // SIGKILL: no cleanup, the lock stays behind
    child.wait().unwrap();

    let out = project.run(&["--output", "json"]);
    assert_exit(&out, 0);
    let events = json_lines(&out);
    assert_eq!(events[0]["type"], "run-started");
    assert_eq!(events[0]["resumed"], true, "the interrupted run is resumed");
    for service in ["db", "api", "worker", "web"] {
        let platform = project.platform(service);
        assert_eq!(
            platform["calls"]["deploy-created"], 1,
            "{service} deployed twice: {platform}"
        );
        assert_eq!(
            platform["traffic"],
            serde_json::json!([[format!("{service}-r1"), 100]])
        );
    }
}

/// api:1 deployed, then api:2 rolled out with all-at-once (traffic, analysis, promotion,
/// retirement of api-r1), each platform call of `hold` kept going 3 s after its change.
fn updated_project(hold: &str) -> Project {
    let project = Project::new(
        "[services.api]\nimage = \"api:1\"\nstrategy_config = { retire_previous = true }\n",
    );
    assert_exit(&project.run(&[]), 0);
    project.edit("image = \"api:1\"", "image = \"api:2\"");
    if !hold.is_empty() {
        project.edit(
            "provider = \"test\"",
            &format!(
                "provider = \"test\"\nprovider_config = {{ hold_after_ms = {{ {hold} = 3000 }} }}"
            ),
        );
    }
    project
}

fn outcomes(project: &Project) -> Vec<String> {
    let rows = history(project, "api");
    rows.iter()
        .map(|r| format!("{} {}", r.revision, r.outcome))
        .collect()
}

#[test]
fn a_run_killed_in_any_write_window_resumes_to_the_exact_history() {
    // What an uninterrupted rollout records.
    let reference = updated_project("");
    assert_exit(&reference.run(&[]), 0);
    let expected = outcomes(&reference);
    assert_eq!(
        expected,
        [
            "api-r1 retired",
            "api-r2 promoted",
            "api-r2 deployed",
            "api-r1 promoted",
            "api-r1 deployed"
        ]
    );
    // Each window: the platform has made the change of the update's `nth` call of `verb`
    // (counted in its calls), the engine has not yet stored the step (`recorded` rows are).
    // The kill lands there.
    let windows = [
        ("deploy", 1, 2),
        ("set-traffic", 1, 3),
        ("set-traffic", 2, 3),
        ("retire", 1, 4),
    ];
    for (verb, nth, recorded) in windows {
        let project = updated_project(verb);
        let before = project.platform("api")["calls"][verb].as_u64().unwrap_or(0);
        let mut child = spawn_quiet(&project);
        wait_until(&format!("api's {verb} number {nth}"), || {
            std::fs::read_to_string(project.path("platform/api.json")).is_ok_and(|text| {
                let platform: Value = serde_json::from_str(&text).unwrap_or_default();
                platform["calls"][verb].as_u64() >= Some(before + nth)
            })
        });
        child.kill().unwrap();
        child.wait().unwrap();
        let at_the_kill = &expected[expected.len() - recorded..];
        assert_eq!(
            outcomes(&project),
            at_the_kill,
            "killed in {verb} number {nth}"
        );
        assert_exit(&project.run(&[]), 0);
        assert_eq!(
            outcomes(&project),
            expected,
            "resumed after {verb} number {nth}"
        );
        let api = project.platform("api");
        assert_eq!(api["traffic"], json!([["api-r2", 100]]), "{verb}: {api}");
        assert_eq!(api["calls"]["deploy-created"], 2, "{verb}: {api}");
    }
}

#[test]
fn a_promoted_release_whose_old_revision_will_not_retire_is_deployed_with_a_warning() {
    let project = Project::new(
        "[services.api]\nimage = \"api:1\"\nstrategy_config = { retire_previous = true }\n",
    );
    assert_exit(&project.run(&[]), 0);
    project.edit("image = \"api:1\"", "image = \"api:2\"");
    project.edit(
        "provider = \"test\"",
        "provider = \"test\"\nprovider_config = { fail = { retire = \"fatal\" } }",
    );
    let out = project.run(&["--output", "json"]);
    assert_exit(&out, 0);
    let events = json_lines(&out);
    let finished = events
        .iter()
        .find(|e| e["type"] == "service-finished")
        .expect("api finished");
    assert_eq!(
        (
            &finished["outcome"],
            &finished["revision"],
            &finished["traffic"]
        ),
        (&json!("deployed"), &json!("api-r2"), &json!(100)),
        "{finished}"
    );
    let warning = finished["warnings"][0].as_str().unwrap_or_default();
    assert!(
        warning.starts_with("retiring api-r1 failed") && warning.contains("left in place"),
        "{finished}"
    );
    let api = project.platform("api");
    assert_eq!(api["traffic"], json!([["api-r2", 100]]), "{api}");
    assert_eq!(
        api["revisions"][0]["retired"], false,
        "api-r1 is still there"
    );
    let history = history(&project, "api");
    let newest: Vec<String> = history
        .iter()
        .take(3)
        .map(|r| format!("{} {}", r.revision, r.outcome))
        .collect();
    assert_eq!(
        newest,
        ["api-r1 retire-failed", "api-r2 promoted", "api-r2 deployed"]
    );
}

#[test]
fn a_candidate_left_by_a_failed_rollout_is_retired_by_the_next_run() {
    let project = Project::new("[services.api]\nimage = \"api:1\"\n");
    assert_exit(&project.run(&[]), 0);
    // Traffic cannot move, nor be restored: the abort leaves api-r2 in place.
    project.edit("image = \"api:1\"", "image = \"api:2\"");
    project.edit(
        "provider = \"test\"",
        "provider = \"test\"\nprovider_config = { fail = { set-traffic = \"fatal\" } }",
    );
    let out = project.run(&[]);
    assert_exit(&out, 1);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("api-r2 was left in place"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    project.edit(
        "provider_config = { fail = { set-traffic = \"fatal\" } }",
        "",
    );
    let out = project.run(&[]);
    assert_exit(&out, 0);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("api: retiring api-r2, left by an earlier run"),
        "{stdout}"
    );
    let api = project.platform("api");
    let retired: Vec<(&str, bool)> = api["revisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["id"].as_str().unwrap(), r["retired"] == true))
        .collect();
    assert_eq!(
        retired,
        [("api-r1", false), ("api-r2", true), ("api-r3", false)],
        "only the leftover is retired: api-r1 stays for an instant rollback"
    );
    assert_eq!(api["traffic"], json!([["api-r3", 100]]));
}

#[test]
fn transient_provider_errors_are_retried() {
    let project = Project::new(SYSTEM);
    project.edit(
        "provider = \"test\"",
        "provider = \"test\"\nprovider_config = { fail = { set-traffic = \"transient\" }, fail_times = 2 }",
    );
    let out = project.run(&[]);
    assert_exit(&out, 0);
    assert_eq!(project.platform("db")["failures"]["set-traffic"], 2);
}

fn plan(project: &Project, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_engine"))
        .arg("plan")
        .arg(project.path("pipeline.toml"))
        .args(args)
        .env("ENGINE_CACHE_DIR", support::cache_dir())
        .output()
        .unwrap()
}

#[test]
fn plan_shows_changes_and_the_strategy_timeline_without_touching_anything() {
    let project = Project::new(SYSTEM);
    let out = plan(
        &project,
        &["--out", project.path("plan.json").to_str().unwrap()],
    );
    assert_exit(&out, 0);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("api: create (create api)\n    1. set traffic: api-planned 100%\n    2. analyse api-planned: health\n    3. promote api-planned\n    4. done\n"),
        "{stdout}"
    );
    assert_eq!(
        std::fs::read_dir(project.path("platform")).unwrap().count(),
        0,
        "a plan creates nothing"
    );
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(project.path("plan.json")).unwrap()).unwrap();
    assert_eq!(json["schema"], 1);
    assert_eq!(json["services"][0]["service"], "db");
    assert_eq!(json["services"][0]["action"], "create");

    assert_exit(&project.run(&[]), 0);
    project.edit("image = \"web:1\"", "image = \"web:2\"");
    let stdout = String::from_utf8_lossy(&plan(&project, &[]).stdout).into_owned();
    assert!(
        stdout.contains("web: update (1 change(s))\n    artifact: \"web:1\" → \"web:2\""),
        "{stdout}"
    );
    assert!(stdout.contains("db: no-change"), "{stdout}");
}

#[test]
fn neither_plan_nor_validate_lets_a_plugin_change_anything() {
    let server = support::TestServer::start();
    let project = Project::new("");
    let bytes = std::fs::read(support::testing_plugin("testing-hostile")).unwrap();
    std::fs::write(project.path("plugins/hostile.wasm"), &bytes).unwrap();
    let data = project.path("data");
    std::fs::create_dir(&data).unwrap();
    let text = format!(
        r#"name = "dry"

[plugins.hostile]
source = "plugins/hostile.wasm"
sha256 = "{}"
allow_http = ["http://127.0.0.1:{port}"]
dirs = [{{ host = "data", guest = "/data", writable = true }}]

[services.poster]
provider = "hostile"
image = "x:1"
provider_config = {{ mode = "post", url = "http://127.0.0.1:{port}/mutate", in_validate = true }}

[services.writer]
provider = "hostile"
image = "x:1"
provider_config = {{ mode = "write-file", path = "/data/changed.txt", in_validate = true }}
"#,
        engine::runtime::cache::sha256_hex(&bytes),
        port = server.port
    );
    std::fs::write(project.path("pipeline.toml"), text).unwrap();
    // `engine validate`, the pull request's check, runs plugins' validate as a dry run too.
    let out = Command::new(env!("CARGO_BIN_EXE_engine"))
        .arg("validate")
        .arg(project.path("pipeline.toml"))
        .env("ENGINE_CACHE_DIR", support::cache_dir())
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("carried out in validate: Ok(Some(ServiceStatus"),
        "{stderr}"
    );
    assert!(
        server.requests().is_empty(),
        "validate sent {:?}",
        server.requests()
    );
    assert!(!data.join("changed.txt").exists(), "validate wrote a file");

    let out = plan(&project, &[]);
    assert_exit(&out, 0);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "blocked by the dry run (a real run would call):\n    hostile: POST http://127.0.0.1:{}/mutate",
            server.port
        )),
        "{stdout}"
    );
    assert!(
        server.requests().is_empty(),
        "the POST never left the engine"
    );
    assert!(
        !data.join("changed.txt").exists(),
        "granted directories are read-only in a dry run"
    );
}

#[test]
fn rollback_returns_to_the_previous_revision_and_destroy_goes_in_reverse_order() {
    let project = Project::new(SYSTEM);
    assert_exit(&project.run(&[]), 0);
    project.edit("image = \"db:1\"", "image = \"db:2\"");
    assert_exit(&project.run(&[]), 0);
    assert_eq!(
        project.platform("db")["traffic"],
        serde_json::json!([["db-r2", 100]])
    );

    let engine = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_engine"))
            .args(args)
            .env("ENGINE_CACHE_DIR", support::cache_dir())
            .current_dir(project.path(""))
            .output()
            .unwrap()
    };
    let out = engine(&["rollback", "db"]);
    assert_exit(&out, 0);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "db: all traffic to db-r1\n"
    );
    assert_eq!(
        project.platform("db")["traffic"],
        serde_json::json!([["db-r1", 100]])
    );
    let out = engine(&["rollback", "db", "--to", "db-r2"]);
    assert_exit(&out, 0);
    assert_eq!(
        project.platform("db")["traffic"],
        serde_json::json!([["db-r2", 100]])
    );
    let out = engine(&["rollback", "web"]);
    assert_exit(&out, 1);
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("`web` has no earlier promoted revision that still exists to go back to")
    );

    // A strategy that retires the previous revision leaves nothing to roll back to.
    project.edit(
        "image = \"worker:1\"",
        "image = \"worker:2\"\nstrategy_config = { retire_previous = true }",
    );
    assert_exit(&project.run(&[]), 0);
    let out = engine(&["rollback", "worker"]);
    assert_exit(&out, 1);
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("no earlier promoted revision that still exists"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = engine(&["rollback", "worker", "--to", "worker-r1"]);
    assert_exit(&out, 1);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("worker-r1 was retired"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = engine(&["destroy", "--dry-run"]);
    assert_exit(&out, 0);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "would destroy web\n    revision web-r1 (web:1), 100% of the traffic\n\
         would destroy api\n    revision api-r1 (api:1), 100% of the traffic\n\
         would destroy worker\n    revision worker-r3 (worker:2), 100% of the traffic\n\
         would destroy db\n    revision db-r2 (db:2), 100% of the traffic\n    revision db-r1 (db:1), 0% of the traffic\n",
        "a dry run lists each service's revisions, as the platform has them"
    );
    assert!(
        project.path("platform/db.json").exists(),
        "a dry run destroys nothing"
    );
    let out = engine(&["destroy"]);
    assert_exit(&out, 0);
    for service in ["db", "api", "worker", "web"] {
        assert!(
            !project.path(&format!("platform/{service}.json")).exists(),
            "{service} still exists"
        );
    }
}

#[test]
fn junit_reports_and_github_annotations_show_the_failed_gate() {
    let project = Project::new(SYSTEM);
    assert_exit(&project.run(&[]), 0);
    project.edit("image = \"api:1\"", "image = \"api:2\"");
    let junit = project.path("report.xml");
    let out = project
        .command(&["--junit", junit.to_str().unwrap()])
        .env("GITHUB_ACTIONS", "true")
        .output()
        .unwrap();
    assert_exit(&out, 1);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("::error title=engine: api rolled-back::health checks failed: health (error rate 12.5%25 for api-r2)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("::error title=engine: web skipped::dependency `api` rolled-back"),
        "{stdout}"
    );
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(
        xml.contains(
            r#"<testsuite name="engine run shop" tests="5" skipped="1" errors="0" failures="2">"#
        ),
        "{xml}"
    );
    assert!(
        xml.contains(r#"<testcase name="api / health" classname="shop.health">"#),
        "{xml}"
    );
    assert!(
        xml.contains(r#"<failure message="error rate 12.5% for api-r2" type="unhealthy"/>"#),
        "{xml}"
    );
    assert!(
        xml.contains(r#"<skipped message="dependency `api` rolled-back" type="skipped"/>"#),
        "{xml}"
    );
}

/// The events of one service, as (type, phase or outcome) pairs.
fn service_events(events: &[Value], service: &str) -> Vec<(String, String)> {
    events
        .iter()
        .filter(|e| e["service"] == service)
        .map(|e| {
            let what = match e["type"].as_str() {
                Some("phase") => e["phase"].as_str().unwrap_or_default().to_string(),
                Some("service-finished") => e["outcome"].as_str().unwrap_or_default().to_string(),
                _ => e["verdict"].as_str().unwrap_or_default().to_string(),
            };
            (e["type"].as_str().unwrap_or_default().to_string(), what)
        })
        .collect()
}

const CANARY_WITH_APPROVAL: &str = r#"
[services.api]
image = "api:1"
strategy = "canary"
strategy_config = { steps = [50], pause = "0s", approval = true }

[[services.api.checks]]
plugin = "health"
config = {}

[services.web]
image = "web:1"
depends_on = ["api"]
"#;

#[test]
fn a_rollout_waits_for_approval_then_promote_or_abort_resumes_the_run() {
    let project = Project::new(CANARY_WITH_APPROVAL);

    // A first deployment waits for approval at 100 % (there is nothing to split with).
    let out = project.run(&["--output", "json"]);
    assert_exit(&out, 4);
    let events = json_lines(&out);
    let api = service_events(&events, "api");
    assert_eq!(
        api.last().unwrap(),
        &(
            "service-finished".to_string(),
            "awaiting-approval".to_string()
        ),
        "{api:?}"
    );
    let web = events
        .iter()
        .find(|e| e["service"] == "web" && e["type"] == "service-finished")
        .unwrap();
    assert_eq!(web["outcome"], "skipped");
    assert_eq!(web["reason"], "dependency `api` is awaiting approval");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("waiting for approval: api"), "{stderr}");

    let status = project.engine(&["status"]);
    assert_exit(&status, 0);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("awaiting approval: promote api-r1 of `api` to 100% of the traffic"),
        "{text}"
    );

    // Approval resumes the same run: api is promoted, then web deploys.
    let out = project.engine(&["promote", "api", "--output", "json"]);
    assert_exit(&out, 0);
    let events = json_lines(&out);
    assert_eq!(events[0]["resumed"], true);
    assert_eq!(
        project.platform("api")["traffic"],
        serde_json::json!([["api-r1", 100]])
    );
    assert_eq!(
        project.platform("web")["traffic"],
        serde_json::json!([["web-r1", 100]])
    );

    // v2 waits at 50 %; `engine abort` rolls it back and says why.
    project.edit("image = \"api:1\"", "image = \"api:2\"");
    let out = project.run(&[]);
    assert_exit(&out, 4);
    assert_eq!(
        project.platform("api")["traffic"],
        serde_json::json!([["api-r2", 50], ["api-r1", 50]])
    );
    let out = project.engine(&["abort", "api", "--reason", "p99 doubled"]);
    assert_exit(&out, 1);
    let platform = project.platform("api");
    assert_eq!(platform["traffic"], serde_json::json!([["api-r1", 100]]));
    let r2 = platform["revisions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "api-r2")
        .unwrap();
    assert_eq!(r2["retired"], true, "the rejected revision is retired");
    let history = String::from_utf8_lossy(&project.engine(&["history", "api"]).stdout).to_string();
    assert!(
        history.contains("aborted") && history.contains("rejected: p99 doubled"),
        "{history}"
    );

    // Nothing is waiting any more: a clear error, not a silent success.
    let out = project.engine(&["promote", "api"]);
    assert_exit(&out, 1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no run of pipeline `shop` (environment `default`) is in progress, so `api` has no rollout to promote"),
        "{stderr}"
    );
}

#[test]
fn promote_refuses_a_service_that_is_not_waiting() {
    let project = Project::new(SYSTEM);
    assert_exit(&project.run(&[]), 0);
    let out = project.engine(&["promote", "nope"]);
    assert_exit(&out, 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no service `nope`"));
    let out = project.engine(&["promote", "api", "--reason", "x"]);
    assert_exit(&out, 2);
}

#[test]
fn hooks_run_around_the_rollout_and_a_failing_pre_hook_deploys_nothing() {
    let project = Project::new(
        r#"
[services.api]
image = "api:1"
hooks = { pre = ["echo pre $ENGINE_SERVICE stable=$ENGINE_STABLE_REVISION >> hooks.log"], post = ["echo post $ENGINE_REVISION >> hooks.log"] }
"#,
    );
    assert_exit(&project.run(&[]), 0);
    project.edit("image = \"api:1\"", "image = \"api:2\"");
    assert_exit(&project.run(&[]), 0);
    let log = std::fs::read_to_string(project.path("hooks.log")).unwrap();
    assert_eq!(
        log, "pre api stable=\npost api-r1\npre api stable=api-r1\npost api-r2\n",
        "hooks run in the pipeline's directory, in order, with the rollout's revisions"
    );

    project.edit("echo pre", "echo 'migration failed' >&2; exit 3; echo");
    project.edit("image = \"api:2\"", "image = \"api:3\"");
    let out = project.run(&[]);
    assert_exit(&out, 1);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("ended with exit code 3"), "{stdout}");
    assert!(stdout.contains("migration failed"), "{stdout}");
    assert!(stdout.contains("nothing was deployed"), "{stdout}");
    assert_eq!(project.platform("api")["calls"]["deploy-created"], 2);
}

#[test]
fn a_first_deployment_that_fails_its_gate_is_removed() {
    let project = Project::new(
        r#"
[services.api]
image = "api:1"

[[services.api.checks]]
plugin = "health"
config = { unhealthy_revisions = ["api-r1"] }
"#,
    );
    let out = project.run(&["--output", "json"]);
    assert_exit(&out, 1);
    let events = json_lines(&out);
    let finished = events
        .iter()
        .find(|e| e["type"] == "service-finished")
        .unwrap();
    assert_eq!(finished["outcome"], "rolled-back");
    assert!(
        finished["reason"]
            .as_str()
            .unwrap()
            .contains("`api` did not exist before this run, so it was removed"),
        "{finished}"
    );
    assert!(
        !project.path("platform/api.json").exists(),
        "no orphaned deployment is left on the platform"
    );
}

#[test]
fn a_run_killed_during_a_wait_resumes_with_what_is_left_of_it() {
    let project = Project::new(
        r#"
[services.api]
image = "api:1"
"#,
    );
    assert_exit(&project.run(&[]), 0);
    project.edit(
        "image = \"api:1\"",
        "image = \"api:2\"\nstrategy = \"canary\"\nstrategy_config = { steps = [50], pause = \"8s\" }",
    );
    let mut child = spawn_quiet(&project);
    // Kill it once the wait is checkpointed.
    wait_until("the canary's pause", || {
        latest_checkpoint(&project, "api").is_some_and(|d| d.contains("\"wait_until_ms\":1"))
    });
    child.kill().unwrap();
    child.wait().unwrap();

    let out = project.run(&["--output", "json"]);
    assert_exit(&out, 0);
    let events = json_lines(&out);
    assert_eq!(events[0]["resumed"], true);
    let phases: Vec<String> = service_events(&events, "api")
        .into_iter()
        .filter(|(t, _)| t == "phase")
        .map(|(_, p)| p)
        .collect();
    assert_eq!(
        phases.first().map(String::as_str),
        Some("analysing at 50%"),
        "the resumed run finishes the stored wait instead of asking the strategy again: {phases:?}"
    );
    assert_eq!(project.platform("api")["calls"]["deploy-created"], 2);
    assert_eq!(
        project.platform("api")["traffic"],
        serde_json::json!([["api-r2", 100]])
    );
}

#[test]
fn state_shared_through_postgresql() {
    let url = block_on(support::postgres::database());
    let project = Project::new(SYSTEM);
    let out = project.run(&["--state", &url, "--output", "json"]);
    assert_exit(&out, 0);
    assert!(
        !project.path(".engine/state.db").exists(),
        "nothing is written beside the pipeline"
    );

    // Another machine's run holds the lock: this one is told who, with exit code 3.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let store = runtime
        .block_on(engine::state::Store::connect(
            &engine::state::Location::parse(&url),
        ))
        .unwrap();
    let holder = engine::state::Holder {
        name: "engine run on ci-9".into(),
        host: "ci-runner-9".into(),
        pid: 77,
        process_start: None,
    };
    let lock = runtime
        .block_on(store.lock("shop", "default", &holder))
        .unwrap();
    let out = project.run(&["--state", &url]);
    assert_exit(&out, 3);
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("locked by engine run on ci-9, running on ci-runner-9")
    );
    runtime.block_on(store.unlock(lock)).unwrap();

    // The CLI reads the same database (here through ENGINE_STATE).
    let out = Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(["history", "api", "--pipeline"])
        .arg(project.path("pipeline.toml"))
        .env("ENGINE_STATE", &url)
        .output()
        .unwrap();
    assert_exit(&out, 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains("api-r1"));
}

#[test]
fn a_strategy_that_breaks_its_contract_is_stopped_and_the_stable_revision_keeps_serving() {
    let bytes = std::fs::read(support::testing_plugin("testing-hostile-strategy")).unwrap();
    for (mode, broken) in [
        (
            "retire-stable",
            "it retired api-r1, which serves 100% of the traffic",
        ),
        (
            "elsewhere",
            "it sent traffic to someone-elses-revision, which is neither the candidate (api-r2) nor the stable revision (api-r1)",
        ),
        ("done-early", "it said done without promoting the candidate"),
        ("spin", "it took more than 1000 decisions without finishing"),
    ] {
        let project = Project::new("[services.api]\nimage = \"api:1\"\n");
        std::fs::write(project.path("plugins/bad.wasm"), &bytes).unwrap();
        assert_exit(&project.run(&[]), 0);
        let text = std::fs::read_to_string(project.path("pipeline.toml")).unwrap();
        let text = text.replace(
            "[defaults]",
            &format!(
                "[plugins.bad]\nsource = \"plugins/bad.wasm\"\nsha256 = \"{}\"\n\n[defaults]",
                engine::runtime::cache::sha256_hex(&bytes)
            ),
        );
        std::fs::write(project.path("pipeline.toml"), text).unwrap();
        project.edit(
            "image = \"api:1\"",
            &format!(
                "image = \"api:2\"\nstrategy = \"bad\"\nstrategy_config = {{ mode = \"{mode}\" }}"
            ),
        );
        let out = project.run(&[]);
        assert_exit(&out, 1);
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            printed.contains(&format!("strategy `bad` broke its contract: {broken}")),
            "{mode}: {printed}"
        );
        assert_eq!(
            project.platform("api")["traffic"],
            serde_json::json!([["api-r1", 100]]),
            "{mode}"
        );
    }
}

// Signals: the first SIGINT or SIGTERM stops each rollout at its next checkpoint, releases the
// lock, reports and exits 130 or 143; a second one exits at once. The next run resumes.

/// A spawned engine, with its output piped.
/// `engine run` in the background, its output thrown away (for a test that kills it).
fn spawn_quiet(project: &Project) -> std::process::Child {
    project
        .command(&[])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

fn spawn_run(project: &Project, args: &[&str]) -> std::process::Child {
    project
        .command(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn send(child: &std::process::Child, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
}

/// Waits for a spawned engine to exit: at most a minute, so that a hung engine fails the test
/// instead of hanging the suite.
fn exit_of(child: std::process::Child) -> Output {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the engine exits after the signal")
        .unwrap()
}

/// Polls `done` until it holds (at most a minute).
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "{what} never happened");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The latest checkpoint of a service, as stored.
fn latest_checkpoint(project: &Project, service: &str) -> Option<String> {
    let db = rusqlite::Connection::open(project.path(".engine/state.db")).ok()?;
    db.query_row(
        "SELECT data FROM checkpoints WHERE service = ?1 ORDER BY run_id DESC LIMIT 1",
        [service],
        |r| r.get(0),
    )
    .ok()
}

/// Each (revision, outcome) of a service's history, oldest first.
fn history_rows(project: &Project, service: &str) -> Vec<(String, String)> {
    let mut rows: Vec<(String, String)> = history(project, service)
        .into_iter()
        .map(|r| (r.revision, r.outcome))
        .collect();
    rows.reverse();
    rows
}

fn finished<'a>(events: &'a [Value], service: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["type"] == "service-finished" && e["service"] == service)
        .unwrap_or_else(|| panic!("no service-finished event for {service}: {events:?}"))
}

/// The service was reported interrupted, and its reason contains `at`.
fn assert_interrupted(events: &[Value], service: &str, at: &str) {
    let report = finished(events, service);
    assert_eq!(report["outcome"], "interrupted", "{report}");
    let reason = report["reason"].as_str().unwrap_or_default();
    assert!(reason.contains(at), "{report}");
}

#[test]
fn sigterm_stops_a_canary_at_its_checkpoint_releases_the_lock_and_the_next_run_resumes_it() {
    let project = Project::new("[services.api]\nimage = \"api:1\"\n");
    assert_exit(&project.run(&[]), 0);
    project.edit(
        "image = \"api:1\"",
        "image = \"api:2\"\nstrategy = \"canary\"\nstrategy_config = { steps = [50], pause = \"6s\", retire_previous = true }",
    );
    let child = spawn_run(&project, &["--output", "json"]);
    wait_until("the canary's pause", || {
        latest_checkpoint(&project, "api").is_some_and(|d| d.contains("\"wait_until_ms\":1"))
    });
    send(&child, nix::sys::signal::Signal::SIGTERM);
    let out = exit_of(child);
    assert_exit(&out, 143);
    let events = json_lines(&out);
    assert_interrupted(&events, "api", "api-r2 had 50% of the traffic");
    assert_eq!(events.last().unwrap()["type"], "summary");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "stopped by SIGTERM before api finished; the run stays open and the next `engine run` resumes it"
        ),
        "{stderr}"
    );
    let status = project.engine(&["status"]);
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("not locked"),
        "the lock was released: {status:?}"
    );
    assert_eq!(
        project.platform("api")["traffic"],
        json!([["api-r2", 50], ["api-r1", 50]]),
        "the split of the last checkpoint stays until the run is resumed"
    );

    let out = project.run(&["--output", "json"]);
    assert_exit(&out, 0);
    let events = json_lines(&out);
    assert_eq!(events[0]["resumed"], true);
    assert_eq!(finished(&events, "api")["outcome"], "deployed");
    assert_eq!(project.platform("api")["traffic"], json!([["api-r2", 100]]));
    assert_eq!(project.platform("api")["calls"]["deploy-created"], 2);
    let second: Vec<(String, String)> = history_rows(&project, "api")
        .into_iter()
        .filter(|(revision, _)| revision == "api-r2" || revision == "api-r1")
        .skip_while(|(revision, outcome)| !(revision == "api-r2" && outcome == "deployed"))
        .collect();
    let row = |r: &str, o: &str| (r.to_string(), o.to_string());
    assert_eq!(
        second,
        [
            row("api-r2", "deployed"),
            row("api-r2", "promoted"),
            row("api-r1", "retired")
        ],
        "each step of the interrupted rollout is recorded once"
    );
}

#[test]
fn sigint_lets_the_plugin_call_under_way_finish_and_starts_nothing_new() {
    let project = Project::new(SYSTEM);
    project.edit(
        "image = \"db:1\"",
        "image = \"db:1\"\nprovider_config = { hold_after_ms = { deploy = 2000 } }",
    );
    let child = spawn_run(&project, &["--output", "json"]);
    wait_until("db's deploy", || {
        std::fs::read_to_string(project.path("platform/db.json")).is_ok_and(|d| d.contains("db-r1"))
    });
    send(&child, nix::sys::signal::Signal::SIGINT);
    let out = exit_of(child);
    assert_exit(&out, 130);
    let events = json_lines(&out);
    // The deploy under way finished and was saved.
    assert_interrupted(&events, "db", "db-r1 had 0% of the traffic");
    for service in ["api", "worker", "web"] {
        let report = finished(&events, service);
        assert_eq!(report["outcome"], "interrupted", "{report}");
        assert_eq!(
            report["reason"], "the run was interrupted before it started",
            "{report}"
        );
        assert!(!project.path(&format!("platform/{service}.json")).exists());
    }

    let out = project.run(&["--output", "json"]);
    assert_exit(&out, 0);
    assert_eq!(json_lines(&out)[0]["resumed"], true);
    for service in ["db", "api", "worker", "web"] {
        let platform = project.platform(service);
        assert_eq!(
            platform["calls"]["deploy-created"], 1,
            "{service}: {platform}"
        );
        assert_eq!(platform["traffic"], json!([[format!("{service}-r1"), 100]]));
    }
    assert_eq!(
        history_rows(&project, "db"),
        [
            ("db-r1".to_string(), "deployed".to_string()),
            ("db-r1".to_string(), "promoted".to_string())
        ]
    );
}

#[test]
fn a_second_signal_exits_at_once_and_the_next_run_recovers() {
    use std::io::BufRead;
    let project = Project::new("[services.api]\nimage = \"api:1\"\n");
    project.edit(
        "image = \"api:1\"",
        "image = \"api:1\"\nprovider_config = { hold_after_ms = { deploy = 30000 } }",
    );
    let mut child = spawn_run(&project, &[]);
    wait_until("api's deploy", || {
        project.path("platform/api.json").exists()
    });
    send(&child, nix::sys::signal::Signal::SIGTERM);
    // The second signal only once the first was taken (two at once may arrive as one).
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    while !seen.contains("SIGTERM: stopping at the next checkpoint") {
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "{seen}");
        seen.push_str(&line);
    }
    send(&child, nix::sys::signal::Signal::SIGTERM);
    let out = exit_of(child);
    assert_exit(&out, 143);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert!(
        rest.contains("SIGTERM again: stopping at once"),
        "{seen}{rest}"
    );
    let status = project.engine(&["status"]);
    assert!(
        String::from_utf8_lossy(&status.stdout).contains(": gone (the next run breaks the lock)"),
        "the lock stays behind, its holder gone: {status:?}"
    );

    let out = project.run(&[]);
    assert_exit(&out, 0);
    let platform = project.platform("api");
    assert_eq!(platform["calls"]["deploy-created"], 1, "{platform}");
    assert_eq!(platform["traffic"], json!([["api-r1", 100]]));
}

/// Whether process `pid` has ended (gone, or a zombie nobody has reaped yet).
fn ended(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())) {
        // The state follows the command name in parentheses.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => true,
    }
}

#[test]
fn a_second_signal_kills_a_running_hook_with_what_it_started() {
    let project = Project::new(
        "[services.api]\nimage = \"api:1\"\nhooks.pre = [\"echo $$ > hook.pid; sleep 600 & echo $! > child.pid; wait\"]\n",
    );
    let mut child = spawn_run(&project, &[]);
    wait_until("the pre hook", || {
        std::fs::read_to_string(project.path("child.pid")).is_ok_and(|p| p.ends_with('\n'))
    });
    send(&child, nix::sys::signal::Signal::SIGINT);
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    while !seen.contains("SIGINT: stopping at the next checkpoint") {
        let mut line = String::new();
        let read = std::io::BufRead::read_line(&mut stderr, &mut line).unwrap();
        assert!(read > 0, "{seen}");
        seen.push_str(&line);
    }
    // The first signal lets the hook run on.
    let hook = std::fs::read_to_string(project.path("hook.pid")).unwrap();
    let started = std::fs::read_to_string(project.path("child.pid")).unwrap();
    assert!(!ended(&hook) && !ended(&started));
    send(&child, nix::sys::signal::Signal::SIGINT);
    assert_exit(&exit_of(child), 130);
    wait_until("the hook and its child end", || {
        ended(&hook) && ended(&started)
    });
}

#[test]
fn a_signal_during_a_pre_hook_lets_it_finish_starts_no_other_and_deploys_nothing() {
    let project = Project::new(
        "[services.api]\nimage = \"api:1\"\nhooks.pre = [\"echo first >> hook-runs; sleep 1\", \"echo second >> hook-runs\"]\n",
    );
    let child = spawn_run(&project, &["--output", "json"]);
    wait_until("the pre hook", || project.path("hook-runs").exists());
    send(&child, nix::sys::signal::Signal::SIGTERM);
    let out = exit_of(child);
    assert_exit(&out, 143);
    assert_eq!(finished(&json_lines(&out), "api")["outcome"], "interrupted");
    assert!(
        !project.path("platform/api.json").exists(),
        "nothing is deployed after an interrupted pre hook"
    );

    let out = project.run(&[]);
    assert_exit(&out, 0);
    assert_eq!(
        std::fs::read_to_string(project.path("hook-runs")).unwrap(),
        "first\nsecond\n",
        "the hook under way finished, the next did not start, the resumed run goes on with it: {out:?}"
    );
    assert_eq!(project.platform("api")["traffic"], json!([["api-r1", 100]]));
}

#[test]
fn a_signal_while_waiting_for_the_lock_ends_the_wait() {
    use std::io::BufRead;
    let project = Project::new(SYSTEM);
    let _held = lock_from_another_machine(&project);
    let mut child = spawn_run(&project, &["--lock-wait", "10m"]);
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(
        line.contains("is locked by engine run on ci-7")
            && line.contains("waiting for it, up to 10m"),
        "{line}"
    );
    send(&child, nix::sys::signal::Signal::SIGINT);
    let out = exit_of(child);
    assert_exit(&out, 130);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert!(
        rest.contains("stopped by SIGINT while waiting for the lock; nothing was done"),
        "{rest}"
    );
}
