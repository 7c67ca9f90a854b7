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

/// The whole rollout's decisions (checked for purity and for resuming from every checkpoint by
/// the SDK), answering checks with `verdicts` in turn (the last repeats) and approval with
/// `approve`.
fn drive(config: &str, stable: Option<&str>, verdicts: &[Verdict], approve: bool) -> Vec<Decision> {
    let r = rollout(config, stable);
    let answers = HostAnswers::verdicts(verdicts);
    let answers = if approve {
        answers
    } else {
        answers.rejecting("not today")
    };
    drive_strategy(|state, observation| step(&r, state, observation), &answers)
        .into_iter()
        .map(|s| s.decision)
        .collect()
}

fn split(pairs: &[(&str, u8)]) -> Decision {
    Decision::SetTraffic(
        pairs
            .iter()
            .map(|(r, p)| TrafficTarget {
                revision: r.to_string(),
                percent: *p,
            })
            .collect(),
    )
}

fn check() -> Decision {
    Decision::Analyse(AnalysisRequest {
        revision: "api-2".into(),
        checks: vec![],
    })
}

#[test]
fn green_is_checked_at_zero_percent_then_bakes_with_all_traffic_and_blue_is_retired() {
    assert_eq!(
        drive("{}", Some("api-1"), &[Verdict::Healthy], true),
        vec![
            split(&[("api-1", 100), ("api-2", 0)]),
            check(),
            split(&[("api-2", 100)]),
            Decision::Wait(30_000),
            check(),
            Decision::Promote,
            Decision::Retire("api-1".into()),
            Decision::Done,
        ]
    );
}

#[test]
fn a_failed_preview_aborts_before_any_user_traffic_moves() {
    let decisions = drive("{}", Some("api-1"), &[Verdict::Unhealthy], true);
    assert_eq!(decisions.len(), 3);
    assert!(
        matches!(&decisions[2], Decision::Abort(r) if r.starts_with("the preview failed its checks: ready"))
    );
}

#[test]
fn a_failure_after_the_switch_aborts_so_the_host_restores_blue() {
    let decisions = drive(
        "{}",
        Some("api-1"),
        &[Verdict::Healthy, Verdict::Unhealthy],
        true,
    );
    assert!(
        matches!(decisions.last(), Some(Decision::Abort(r)) if r.starts_with("checks failed after the switch"))
    );
}

#[test]
fn approval_comes_before_the_switch_and_a_rejection_aborts() {
    let approved = drive(
        r#"{"approval": true, "bake": "0s"}"#,
        Some("api-1"),
        &[Verdict::Healthy],
        true,
    );
    assert_eq!(
        approved[2],
        Decision::AwaitApproval("switch all traffic of `api` to api-2".into())
    );
    assert_eq!(approved[3], split(&[("api-2", 100)]));
    assert_eq!(approved[4], check(), "no bake: checked at once");
    let rejected = drive(
        r#"{"approval": true}"#,
        Some("api-1"),
        &[Verdict::Healthy],
        false,
    );
    assert_eq!(
        rejected.last(),
        Some(&Decision::Abort("rejected: not today".into()))
    );
}

#[test]
fn a_first_deployment_takes_all_traffic_and_is_checked() {
    assert_eq!(
        drive(
            r#"{"check_after_switch": false}"#,
            None,
            &[Verdict::Healthy],
            true
        ),
        vec![
            split(&[("api-2", 100)]),
            check(),
            Decision::Promote,
            Decision::Done
        ]
    );
}

#[test]
fn bad_configurations_and_out_of_order_observations_are_errors() {
    let d = BlueGreen::validate(r#"{"bake": "a while"}"#.into());
    assert!(
        d[0].message.contains("write it like 500ms, 30s or 5m"),
        "{}",
        d[0].message
    );
    assert!(
        BlueGreen::validate(r#"{"keep": "1m"}"#.into())[0]
            .message
            .contains("unknown field")
    );
    let state = serde_json::to_string(&Phase::Preview).unwrap();
    let err = step(
        &rollout("{}", Some("api-1")),
        Some(&state),
        &Observation::Promoted,
    )
    .unwrap_err();
    assert!(err.describe().contains("does not fit phase"));
}
