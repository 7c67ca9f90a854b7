use super::*;
use engine_sdk::Verdict;
use engine_sdk::testing::{HostAnswers, drive_strategy};

fn rollout(config: &str, stable: Option<&str>, features: Vec<Feature>) -> Rollout {
    Rollout {
        service: "api".into(),
        stable: stable.map(String::from),
        candidate: "api-2".into(),
        features,
        config: config.into(),
    }
}

/// The rollout's steps, checked for purity and for resuming from every checkpoint by the SDK.
fn drive(r: &Rollout, verdicts: &[Verdict]) -> Vec<StepResult> {
    drive_strategy(
        |state, observation| step(r, state, observation),
        &HostAnswers::verdicts(verdicts),
    )
}

fn splits(steps: &[StepResult]) -> Vec<Vec<(String, u8)>> {
    steps
        .iter()
        .filter_map(|s| match &s.decision {
            Decision::SetTraffic(split) => Some(
                split
                    .iter()
                    .map(|t| (t.revision.clone(), t.percent))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

#[test]
fn four_batches_replace_the_old_revision_a_quarter_at_a_time() {
    let steps = drive(&rollout("{}", Some("api-1"), vec![]), &[Verdict::Healthy]);
    let shares: Vec<u8> = splits(&steps).iter().map(|s| s[0].1).collect();
    assert_eq!(shares, [25, 50, 75, 100]);
    assert_eq!(splits(&steps)[0][1], ("api-1".to_string(), 75));
    let waits = steps
        .iter()
        .filter(|s| s.decision == Decision::Wait(10_000))
        .count();
    let checks = steps
        .iter()
        .filter(|s| matches!(s.decision, Decision::Analyse(_)))
        .count();
    assert_eq!(
        (waits, checks),
        (4, 4),
        "every batch settles and is checked"
    );
    let tail: Vec<&Decision> = steps[steps.len() - 3..]
        .iter()
        .map(|s| &s.decision)
        .collect();
    assert_eq!(
        tail,
        [
            &Decision::Promote,
            &Decision::Retire("api-1".into()),
            &Decision::Done
        ]
    );
    assert_eq!(steps[0].phase, "batch 1/4: 25% of the traffic");
}

#[test]
fn batches_count_instances_where_the_provider_replaces_instances() {
    let r = rollout(
        r#"{"batches": 3, "interval": "0s"}"#,
        Some("api-1"),
        vec![Feature::InstanceBatches],
    );
    let steps = drive(&r, &[Verdict::Healthy]);
    assert_eq!(steps[0].phase, "batch 1/3: 33% of the instances");
    let shares: Vec<u8> = splits(&steps).iter().map(|s| s[0].1).collect();
    assert_eq!(shares, [33, 66, 100]);
    assert!(
        !steps
            .iter()
            .any(|s| matches!(s.decision, Decision::Wait(_))),
        "0s: no waits"
    );
}

#[test]
fn a_failed_batch_aborts_and_names_it() {
    let steps = drive(
        &rollout("{}", Some("api-1"), vec![]),
        &[Verdict::Healthy, Verdict::Unhealthy],
    );
    assert!(
        matches!(&steps.last().unwrap().decision, Decision::Abort(r) if r.starts_with("health checks failed at batch 2/4: ready")),
        "{:?}",
        steps.last()
    );
}

#[test]
fn a_first_deployment_is_one_batch() {
    let steps = drive(&rollout("{}", None, vec![]), &[Verdict::Healthy]);
    assert_eq!(splits(&steps), [[("api-2".to_string(), 100)]]);
    assert_eq!(steps.last().unwrap().decision, Decision::Done);
}

#[test]
fn bad_configurations_and_rejections() {
    assert!(
        Rolling::validate(r#"{"batches": 0}"#.into())[0]
            .message
            .contains("use 1 to 10")
    );
    assert!(
        Rolling::validate(r#"{"interval": "soon"}"#.into())[0]
            .message
            .contains("write it like")
    );
    let state = serde_json::to_string(&State {
        phase: Phase::Waiting,
        batch: 1,
    })
    .unwrap();
    let out = step(
        &rollout("{}", Some("api-1"), vec![]),
        Some(&state),
        &Observation::Rejected("stop".into()),
    )
    .unwrap();
    assert_eq!(out.decision, Decision::Abort("rejected: stop".into()));
    assert_eq!((percent_after(0, 3), percent_after(2, 3)), (33, 100));
}
