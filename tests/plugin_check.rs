//! `engine plugins check`: first-party plugins pass their kind's conformance rules, and test
//! plugins broken on purpose fail exactly the rules they break.

mod support;

use serde_json::Value;
use support::project::{Project, assert_exit};
use support::text;

/// Two services on the test provider (the concurrency rule needs a second), checked by the
/// test health check, the second through the canary strategy.
const SERVICES: &str = r#"
[services.api]
image = "api:1"

[[services.api.checks]]
plugin = "health"
config = {}

[services.worker]
image = "worker:1"
strategy = "canary"
strategy_config = { steps = [10, 50, 100], pause = "1s" }

[[services.worker.checks]]
name = "ready"
plugin = "http"
config = { path = "/healthz" }
"#;

fn check(project: &Project, plugin: &str, extra: &[&str]) -> (std::process::Output, Value) {
    let mut args = vec!["plugins", "check", plugin, "--output", "json"];
    args.extend(extra);
    let out = project.engine(&args);
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("the report is not JSON ({e})\n{}", text(&out));
    });
    (out, report)
}

/// Each rule's outcome, by rule.
fn outcomes(report: &Value) -> Vec<(String, String)> {
    report["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["rule"].as_str().unwrap().to_string(),
                r["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn outcome(report: &Value, rule: &str) -> String {
    outcomes(report)
        .into_iter()
        .find(|(r, _)| r == rule)
        .unwrap_or_else(|| panic!("no rule {rule} in {report:#}"))
        .1
}

/// The test provider with `flaws` set in the pipeline's defaults.
fn flawed(flaws: &str) -> Project {
    let project = Project::new(SERVICES);
    let path = project.path("pipeline.toml");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "provider = \"test\"",
        &format!("provider = \"test\"\nprovider_config = {{ flaws = [{flaws}] }}"),
    );
    std::fs::write(&path, text).unwrap();
    project
}

#[test]
fn the_test_provider_keeps_the_contract_and_reports_every_rule() {
    let project = Project::new(SERVICES);
    let junit = project.path("check.xml");
    let (out, report) = check(&project, "test", &["--junit", junit.to_str().unwrap()]);
    assert_exit(&out, 0);
    assert_eq!(report["failed"], 0, "{report:#}");
    assert_eq!(report["skipped"], 0, "{report:#}");
    for rule in [
        "validate",
        "destroy-missing",
        "plan-writes-nothing",
        "plan-create",
        "deploy-repeat",
        "traffic-round-trip",
        "plan-no-change",
        "reads-repeat",
        "deploy-takes-no-traffic",
        "traffic-split",
        "traffic-zero-entry",
        "endpoints",
        "typed-errors",
        "retire",
        "concurrent-services",
        "destroy",
    ] {
        assert_eq!(outcome(&report, rule), "passed", "{rule}: {report:#}");
    }
    let xml = std::fs::read_to_string(junit).unwrap();
    assert!(
        xml.contains(r#"failures="0""#) && xml.contains("deploy-repeat"),
        "{xml}"
    );
    // The check's copies are gone, and the pipeline's own services were never touched.
    let left: Vec<_> = std::fs::read_dir(project.path("platform"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left on the platform: {left:?}");

    let out = project.engine(&["plugins", "check", "test"]);
    assert_exit(&out, 0);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("checking provider `test` against services api-check-a and worker-check-b"),
        "{shown}"
    );
    assert!(shown.contains("  ok    deploy-repeat"), "{shown}");
    assert!(
        shown.ends_with("16 passed, 0 failed, 0 skipped\n"),
        "{shown}"
    );
}

#[test]
fn a_provider_broken_on_purpose_fails_the_rules_it_breaks_and_no_other() {
    let project = flawed(r#""plan-always-updates", "plan-writes", "retire-missing-fails""#);
    let (out, report) = check(&project, "test", &[]);
    assert_exit(&out, 1);
    let failed: Vec<String> = outcomes(&report)
        .into_iter()
        .filter(|(_, o)| o == "failed")
        .map(|(r, _)| r)
        .collect();
    assert_eq!(
        failed,
        ["plan-writes-nothing", "plan-no-change", "retire"],
        "{report:#}"
    );
    let detail = report["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rule"] == "plan-no-change")
        .unwrap()["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(detail.contains("phantom update"), "{detail}");

    let project = flawed(r#""deploy-twice""#);
    let (out, report) = check(&project, "test", &[]);
    assert_exit(&out, 1);
    assert_eq!(outcome(&report, "deploy-repeat"), "failed", "{report:#}");
    assert_eq!(outcome(&report, "remaining"), "skipped", "{report:#}");

    let project = flawed(r#""traffic-late""#);
    let (out, report) = check(&project, "test", &[]);
    assert_exit(&out, 1);
    assert_eq!(
        outcome(&report, "traffic-round-trip"),
        "failed",
        "{report:#}"
    );
}

#[test]
fn strategies_are_driven_through_whole_rollouts() {
    let project = Project::new(SERVICES);
    for strategy in ["canary", "all-at-once", "blue-green", "rolling"] {
        let (out, report) = check(&project, strategy, &[]);
        assert_exit(&out, 0);
        assert_eq!(outcome(&report, "healthy-rollout"), "passed", "{report:#}");
        assert_eq!(outcome(&report, "resume"), "passed", "{report:#}");
        assert_eq!(outcome(&report, "pure-steps"), "passed", "{report:#}");
    }
    let (_, report) = check(&project, "canary", &[]);
    assert_eq!(outcome(&report, "unhealthy-aborts"), "passed", "{report:#}");

    let hostile = support::testing_plugin("testing-hostile-strategy");
    let sha256 = engine::runtime::cache::sha256_hex(&std::fs::read(&hostile).unwrap());
    let project = Project::new(&format!(
        r#"{SERVICES}
[plugins.hostile]
source = "{}"
sha256 = "{sha256}"

[services.bad]
image = "bad:1"
strategy = "hostile"
strategy_config = {{ mode = "done-early" }}
"#,
        hostile.display()
    ));
    let (out, report) = check(&project, "hostile", &["--service", "bad"]);
    assert_exit(&out, 1);
    let detail = report["rules"][0]["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("without promoting"), "{report:#}");
}

#[test]
fn health_checks_meet_healthy_unhealthy_and_unreachable_targets() {
    let project = Project::new(SERVICES);
    let (out, report) = check(&project, "http", &[]);
    assert_exit(&out, 0);
    for rule in ["healthy-target", "unhealthy-target", "unreachable-target"] {
        assert_eq!(outcome(&report, rule), "passed", "{rule}: {report:#}");
    }
    // A TCP check cannot tell an answering server is unhealthy: that rule is skipped.
    let (out, report) = check(&project, "tcp", &[]);
    assert_exit(&out, 0);
    assert_eq!(outcome(&report, "healthy-target"), "passed", "{report:#}");
    assert_eq!(
        outcome(&report, "unhealthy-target"),
        "skipped",
        "{report:#}"
    );
    assert_eq!(
        outcome(&report, "unreachable-target"),
        "passed",
        "{report:#}"
    );
    // The test health check judges everything healthy: it fails the rules that notice.
    let (out, report) = check(&project, "health", &[]);
    assert_exit(&out, 1);
    assert_eq!(outcome(&report, "healthy-target"), "passed", "{report:#}");
    assert_eq!(outcome(&report, "unhealthy-target"), "failed", "{report:#}");
    assert_eq!(
        outcome(&report, "unreachable-target"),
        "failed",
        "{report:#}"
    );
}

#[test]
fn a_plugin_the_pipeline_does_not_have_is_a_usage_error() {
    let project = Project::new(SERVICES);
    let out = project.engine(&["plugins", "check", "nope"]);
    assert_exit(&out, 2);
    assert!(
        text(&out).contains("has no plugin named `nope`"),
        "{}",
        text(&out)
    );
}
