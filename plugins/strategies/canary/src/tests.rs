use super::*;
use engine_sdk::Verdict;
use engine_sdk::testing::{HostAnswers, drive_strategy};

fn rollout(config: &str, stable: Option<&str>) -> Rollout {
    Rollout {
        service: "api".into(),
        stable: stable.map(String::from),
        candidate: "api-2".into(),
        features: Vec::new(),
        config: config.into(),
    }
}

fn to(candidate: u8, stable: u8) -> Decision {
    let mut split = vec![TrafficTarget {
        revision: "api-2".into(),
        percent: candidate,
    }];
    if stable > 0 {
        split.push(TrafficTarget {
            revision: "api-1".into(),
            percent: stable,
        });
    }
    Decision::SetTraffic(split)
}

fn analyse() -> Decision {
    Decision::Analyse(AnalysisRequest {
        revision: "api-2".into(),
        checks: vec![],
    })
}

/// A person's answer when the rollout waits for approval.
#[derive(Clone, Copy)]
enum Answer {
    Approve,
    Reject,
}

/// A rollout's decisions, from start to end.
struct Walk {
    decisions: Vec<Decision>,
}

/// Drives the machine to its end (checked for purity and for resuming from every checkpoint by
/// the SDK), answering analyses with `verdicts` in turn (the last one repeats) and approvals
/// with `answer`.
fn drive(config: &str, stable: Option<&str>, verdicts: &[Verdict], answer: Answer) -> Walk {
    let r = rollout(config, stable);
    let answers = HostAnswers::verdicts(verdicts).check("errors", "error rate 0.2%");
    let answers = match answer {
        Answer::Approve => answers,
        Answer::Reject => answers.rejecting("looks wrong"),
    };
    let steps = drive_strategy(|state, observation| step(&r, state, observation), &answers);
    Walk {
        decisions: steps.into_iter().map(|s| s.decision).collect(),
    }
}

#[test]
fn a_healthy_canary_steps_pauses_analyses_promotes_and_retires_the_old_revision() {
    let config = r#"{"retire_previous": true}"#;
    let walk = drive(config, Some("api-1"), &[Verdict::Healthy], Answer::Approve);
    let pause = Decision::Wait(30_000);
    assert_eq!(
        walk.decisions,
        vec![
            to(25, 75),
            pause.clone(),
            analyse(),
            to(50, 50),
            pause.clone(),
            analyse(),
            to(100, 0),
            pause,
            analyse(),
            Decision::Promote,
            Decision::Retire("api-1".into()),
            Decision::Done,
        ]
    );
}

#[test]
fn phases_name_the_step_for_progress_displays() {
    let r = rollout(r#"{"steps": [10, 100]}"#, Some("api-1"));
    let out = step(&r, None, &Observation::Start).unwrap();
    assert_eq!(out.phase, "canary 10%");
    let out = step(&r, Some(&out.state), &Observation::TrafficSet(vec![])).unwrap();
    assert_eq!(out.phase, "pausing at 10%");
}

#[test]
fn a_first_deployment_takes_all_traffic_and_is_still_analysed() {
    let walk = drive("{}", None, &[Verdict::Healthy], Answer::Approve);
    assert_eq!(
        walk.decisions,
        vec![
            to(100, 0),
            Decision::Wait(30_000),
            analyse(),
            Decision::Promote,
            Decision::Done
        ]
    );
}

#[test]
fn a_failed_analysis_aborts_at_its_step() {
    let walk = drive(
        r#"{"steps": [10, 50, 100], "pause": "0s"}"#,
        Some("api-1"),
        &[Verdict::Healthy, Verdict::Unhealthy],
        Answer::Approve,
    );
    assert_eq!(
        walk.decisions,
        vec![
            to(10, 90),
            analyse(),
            to(50, 50),
            analyse(),
            Decision::Abort("health checks failed at 50%: errors (error rate 0.2%)".into()),
        ]
    );
}

#[test]
fn failures_up_to_the_limit_are_measured_again() {
    let config = r#"{"steps": [50, 100], "pause": "1m", "failure_limit": 1}"#;
    let once = drive(
        config,
        Some("api-1"),
        &[Verdict::Unhealthy, Verdict::Healthy],
        Answer::Approve,
    );
    assert_eq!(
        &once.decisions[..5],
        &[
            to(50, 50),
            Decision::Wait(60_000),
            analyse(),
            Decision::Wait(60_000),
            analyse()
        ]
    );
    assert_eq!(once.decisions.last(), Some(&Decision::Done));

    let twice = drive(
        config,
        Some("api-1"),
        &[Verdict::Unhealthy, Verdict::Healthy, Verdict::Unhealthy],
        Answer::Approve,
    );
    assert!(
        matches!(twice.decisions.last(), Some(Decision::Abort(r)) if r.starts_with("health checks failed at 100%")),
        "{:?}",
        twice.decisions.last()
    );
}

#[test]
fn inconclusive_passes_unless_configured_to_fail() {
    let passes = drive(
        "{}",
        Some("api-1"),
        &[Verdict::Inconclusive],
        Answer::Approve,
    );
    assert_eq!(passes.decisions.last(), Some(&Decision::Done));
    let fails = drive(
        r#"{"fail_on_inconclusive": true}"#,
        Some("api-1"),
        &[Verdict::Inconclusive],
        Answer::Approve,
    );
    assert!(matches!(fails.decisions.last(), Some(Decision::Abort(_))));
}

#[test]
fn approval_comes_after_the_last_step_and_before_promotion() {
    let config =
        r#"{"steps": [50, 100], "pause": "0s", "approval": true, "retire_previous": true}"#;
    let approved = drive(config, Some("api-1"), &[Verdict::Healthy], Answer::Approve);
    assert_eq!(
        approved.decisions[4..],
        [
            Decision::AwaitApproval("promote api-2 of `api` to 100% of the traffic".into()),
            Decision::Promote,
            Decision::Retire("api-1".into()),
            Decision::Done
        ]
    );
    let rejected = drive(config, Some("api-1"), &[Verdict::Healthy], Answer::Reject);
    assert_eq!(
        rejected.decisions.last(),
        Some(&Decision::Abort("rejected: looks wrong".into()))
    );
}

#[test]
fn the_previous_revision_is_kept_by_default() {
    let walk = drive(
        r#"{"pause": "0s"}"#,
        Some("api-1"),
        &[Verdict::Healthy],
        Answer::Approve,
    );
    assert_eq!(
        walk.decisions[walk.decisions.len() - 2..],
        [Decision::Promote, Decision::Done]
    );
}

#[test]
fn a_rejection_aborts_from_every_phase() {
    for phase in [
        Phase::Shifting,
        Phase::Pausing,
        Phase::Analysing,
        Phase::AwaitingApproval,
        Phase::Finishing(Finish::Promoting),
        Phase::Finishing(Finish::Retiring),
    ] {
        let state = serde_json::to_string(&State {
            phase,
            step: 1,
            failures: 0,
        })
        .unwrap();
        let out = step(
            &rollout("{}", Some("api-1")),
            Some(&state),
            &Observation::Rejected("no".into()),
        )
        .unwrap();
        assert_eq!(
            out.decision,
            Decision::Abort("rejected: no".into()),
            "{phase:?}"
        );
    }
}

#[test]
fn an_observation_out_of_order_or_a_broken_checkpoint_is_an_error() {
    let r = rollout("{}", Some("api-1"));
    let state = serde_json::to_string(&State {
        phase: Phase::Shifting,
        step: 0,
        failures: 0,
    })
    .unwrap();
    let err = step(&r, Some(&state), &Observation::Promoted).unwrap_err();
    assert!(
        err.describe().contains("does not fit state"),
        "{}",
        err.describe()
    );
    let err = step(&r, Some("garbage"), &Observation::Waited).unwrap_err();
    assert!(err.describe().contains("unreadable checkpoint"));
}

#[test]
fn a_first_step_of_zero_checks_the_revision_before_it_takes_traffic() {
    let walk = drive(
        r#"{"steps": [0, 25, 100], "pause": "10m", "retire_previous": true}"#,
        Some("api-1"),
        &[Verdict::Healthy],
        Answer::Approve,
    );
    let pause = Decision::Wait(600_000);
    assert_eq!(
        walk.decisions,
        vec![
            to(0, 100),
            analyse(), // at once: there is no traffic to watch
            to(25, 75),
            pause.clone(),
            analyse(),
            to(100, 0),
            pause,
            analyse(),
            Decision::Promote,
            Decision::Retire("api-1".into()),
            Decision::Done,
        ]
    );
    let failed = drive(
        r#"{"steps": [0, 25, 100]}"#,
        Some("api-1"),
        &[Verdict::Unhealthy],
        Answer::Approve,
    );
    assert_eq!(
        failed.decisions.len(),
        3,
        "aborted before any traffic moved"
    );
    assert!(matches!(failed.decisions[2], Decision::Abort(_)));
}

#[test]
fn bad_configurations_say_what_is_wrong() {
    for (config, expected) in [
        (
            r#"{"steps": [50, 25]}"#,
            "must increase, but 50% is followed by 25%",
        ),
        (r#"{"steps": []}"#, "`steps` is empty"),
        (
            r#"{"steps": [25, 0, 100]}"#,
            "step 0% is outside 1 to 100 (only the first step may be 0)",
        ),
        (r#"{"steps": [0, 0, 100]}"#, "step 0% is outside 1 to 100"),
        (r#"{"pause": "soon"}"#, "write it like 500ms, 30s or 5m"),
        (r#"{"step": [10]}"#, "unknown field `step`"),
    ] {
        let diagnostics = Canary::validate(config.into());
        assert_eq!(diagnostics.len(), 1, "{config}");
        assert!(
            diagnostics[0].message.contains(expected),
            "{config}: {}",
            diagnostics[0].message
        );
    }
    assert!(Canary::validate(String::new()).is_empty());
    assert!(Canary::validate(r#"{"steps": [10, 25, 50, 100], "pause": "5m"}"#.into()).is_empty());
}

#[test]
fn the_schema_is_json_with_the_documented_defaults() {
    let v: serde_json::Value = serde_json::from_str(CONFIG_SCHEMA).unwrap();
    assert_eq!(
        v["properties"]["steps"]["default"],
        serde_json::json!([25, 50, 100])
    );
    let defaults = Config::default();
    assert_eq!(defaults.steps, [25, 50, 100]);
    assert_eq!(v["properties"]["pause"]["default"], defaults.pause.as_str());
}

#[test]
fn states_stored_before_the_shared_finish_still_resume() {
    for (stored, phase) in [
        ("analysing", Phase::Analysing),
        ("promoting", Phase::Finishing(Finish::Promoting)),
        ("retiring", Phase::Finishing(Finish::Retiring)),
        ("done", Phase::Finishing(Finish::Done)),
    ] {
        let text = format!(r#"{{"phase":"{stored}","step":1,"failures":0}}"#);
        let state: State = serde_json::from_str(&text).unwrap();
        assert_eq!(state.phase, phase);
        assert_eq!(serde_json::to_string(&state).unwrap(), text);
    }
}
