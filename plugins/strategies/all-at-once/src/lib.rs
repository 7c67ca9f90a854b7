//! The `all-at-once` strategy: the new revision takes all traffic in one step, the service's
//! health checks run against it, and it is promoted when they pass or the rollout is aborted
//! (the host then restores the previous split) when they fail. The previous revision stays, idle,
//! for an instant `engine rollback`, unless `retire_previous = true`.
//!
//! States, in order: `shifting` → `analysing` → `promoting` → `retiring` → done. Every step is a pure
//! function of (configuration, state, observation), so the host can checkpoint after any step
//! and resume from it.

use engine_sdk::strategy::{AnalysisRequest, Decision, Finish, Observation, Rollout, StepResult};
use engine_sdk::{Capabilities, Diagnostic, Error, ErrorExt, PluginInfo, Strategy, TrafficTarget};
use serde::{Deserialize, Serialize};

/// The plugin's configuration (`strategy_config` of a service in pipeline.toml).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Skip the health analysis and promote at once.
    pub skip_analysis: bool,
    /// Treat an inconclusive analysis (no data yet) as a failure instead of a pass.
    pub fail_on_inconclusive: bool,
    /// Retire the previous revision once the new one is promoted (by default it is kept, idle,
    /// for an instant rollback).
    pub retire_previous: bool,
}

/// Where the rollout is; stored by the host between steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// All traffic was asked for the candidate.
    Shifting,
    /// Health checks were asked for.
    Analysing,
    /// Promoting, retiring the previous revision, or finished (done or aborted): the end
    /// every strategy shares (stored as `promoting`, `retiring`, `done`, as before).
    #[serde(untagged)]
    Finishing(Finish),
}

pub const CONFIG_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "all-at-once strategy",
  "type": "object",
  "properties": {
    "skip_analysis": { "type": "boolean", "default": false, "description": "Promote without running the service's health checks." },
    "fail_on_inconclusive": { "type": "boolean", "default": false, "description": "Abort when the analysis is inconclusive instead of treating it as a pass." },
    "retire_previous": { "type": "boolean", "default": false, "description": "Retire the previous revision after promotion instead of keeping it for an instant rollback." }
  },
  "additionalProperties": false
}"#;

pub fn parse_config(config: &str) -> Result<Config, Error> {
    let text = if config.trim().is_empty() {
        "{}"
    } else {
        config
    };
    serde_json::from_str(text)
        .map_err(|e| Error::invalid_config(format!("all-at-once configuration: {e}")))
}

fn parse_phase(state: Option<&str>) -> Result<Option<Phase>, Error> {
    state
        .map(|s| {
            serde_json::from_str(s)
                .map_err(|e| Error::fatal(format!("all-at-once: unreadable checkpoint {s:?}: {e}")))
        })
        .transpose()
}

fn emit(phase: Phase, decision: Decision, label: &str) -> Result<StepResult, Error> {
    Ok(StepResult {
        state: serde_json::to_string(&phase).expect("a phase always serialises"),
        decision,
        phase: label.to_string(),
    })
}

fn promote() -> Result<StepResult, Error> {
    let (stage, decision, label) = Finish::start();
    emit(Phase::Finishing(stage), decision, &label)
}

fn unexpected(phase: Option<Phase>, observation: &Observation) -> Error {
    Error::fatal(format!(
        "all-at-once: observation {observation:?} does not fit phase {phase:?}"
    ))
}

/// One step of the state machine.
pub fn step(
    rollout: &Rollout,
    state: Option<&str>,
    observation: &Observation,
) -> Result<StepResult, Error> {
    let config = parse_config(&rollout.config)?;
    let phase = parse_phase(state)?;
    match (phase, observation) {
        (None, Observation::Start) => emit(
            Phase::Shifting,
            Decision::SetTraffic(vec![TrafficTarget {
                revision: rollout.candidate.clone(),
                percent: 100,
            }]),
            "shifting 100%",
        ),
        (Some(Phase::Shifting), Observation::TrafficSet(_)) if config.skip_analysis => promote(),
        (Some(Phase::Shifting), Observation::TrafficSet(_)) => emit(
            Phase::Analysing,
            Decision::Analyse(AnalysisRequest {
                revision: rollout.candidate.clone(),
                checks: Vec::new(),
            }),
            "analysing",
        ),
        (Some(Phase::Analysing), Observation::Analysed(outcomes)) => {
            match engine_sdk::strategy::failing_checks(outcomes, config.fail_on_inconclusive) {
                None => promote(),
                Some(failing) => emit(
                    Phase::Finishing(Finish::Done),
                    Decision::Abort(format!("health checks failed: {failing}")),
                    "aborted",
                ),
            }
        }
        (Some(Phase::Finishing(stage)), observation)
            if let Some((stage, decision, label)) =
                stage.next(rollout, observation, config.retire_previous) =>
        {
            emit(Phase::Finishing(stage), decision, &label)
        }
        (_, Observation::Rejected(reason)) => emit(
            Phase::Finishing(Finish::Done),
            Decision::Abort(format!("rejected: {reason}")),
            "aborted",
        ),
        (phase, observation) => Err(unexpected(phase, observation)),
    }
}

pub struct AllAtOnce;

impl Strategy for AllAtOnce {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "all-at-once".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description:
                "Moves all traffic to the new revision, checks it, then promotes or rolls back"
                    .into(),
            config_schema: CONFIG_SCHEMA.into(),
            features: Vec::new(),
            capabilities: Capabilities::none(),
        }
    }

    fn validate(config: String) -> Vec<Diagnostic> {
        engine_sdk::config_diagnostics(
            parse_config(&config),
            Some("allowed keys: skip_analysis, fail_on_inconclusive, retire_previous"),
        )
    }

    fn step(
        rollout: Rollout,
        state: Option<String>,
        observation: Observation,
        _now_ms: u64,
    ) -> Result<StepResult, Error> {
        step(&rollout, state.as_deref(), &observation)
    }
}

engine_sdk::export_strategy!(AllAtOnce);

#[cfg(test)]
mod tests {
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

    /// The whole rollout's decisions, checked for purity and resumption by the SDK.
    fn drive(config: &str, stable: Option<&str>, verdict: Verdict) -> Vec<Decision> {
        let r = rollout(config, stable);
        drive_strategy(
            |state, observation| step(&r, state, observation),
            &HostAnswers::verdicts(&[verdict]),
        )
        .into_iter()
        .map(|s| s.decision)
        .collect()
    }

    #[test]
    fn healthy_rollout_shifts_analyses_promotes_and_keeps_the_old_revision() {
        let decisions = drive("{}", Some("api-1"), Verdict::Healthy);
        assert_eq!(
            decisions,
            vec![
                Decision::SetTraffic(vec![TrafficTarget {
                    revision: "api-2".into(),
                    percent: 100
                }]),
                Decision::Analyse(AnalysisRequest {
                    revision: "api-2".into(),
                    checks: vec![]
                }),
                Decision::Promote,
                Decision::Done,
            ]
        );
    }

    #[test]
    fn the_previous_revision_is_retired_when_asked_and_there_is_one() {
        let config = r#"{"retire_previous": true}"#;
        let retired = drive(config, Some("api-1"), Verdict::Healthy);
        assert_eq!(
            retired[2..],
            [
                Decision::Promote,
                Decision::Retire("api-1".into()),
                Decision::Done
            ]
        );
        let first = drive(config, None, Verdict::Healthy);
        assert_eq!(first[2..], [Decision::Promote, Decision::Done]);
    }

    #[test]
    fn unhealthy_analysis_aborts_with_the_failing_check() {
        let decisions = drive("{}", Some("api-1"), Verdict::Unhealthy);
        assert_eq!(
            decisions.last(),
            Some(&Decision::Abort(
                "health checks failed: ready (GET /healthz)".into()
            ))
        );
    }

    #[test]
    fn inconclusive_passes_unless_configured_to_fail() {
        assert_eq!(
            drive("{}", Some("api-1"), Verdict::Inconclusive).last(),
            Some(&Decision::Done)
        );
        assert!(matches!(
            drive(
                r#"{"fail_on_inconclusive": true}"#,
                Some("api-1"),
                Verdict::Inconclusive
            )
            .last(),
            Some(Decision::Abort(_))
        ));
    }

    #[test]
    fn skip_analysis_promotes_right_after_the_shift() {
        let decisions = drive(
            r#"{"skip_analysis": true}"#,
            Some("api-1"),
            Verdict::Unhealthy,
        );
        assert_eq!(decisions.len(), 3);
        assert_eq!(decisions[1], Decision::Promote);
    }

    #[test]
    fn rejection_aborts_from_any_phase() {
        for phase in [
            Phase::Shifting,
            Phase::Analysing,
            Phase::Finishing(Finish::Promoting),
            Phase::Finishing(Finish::Retiring),
        ] {
            let state = serde_json::to_string(&phase).unwrap();
            let out = step(
                &rollout("{}", Some("api-1")),
                Some(&state),
                &Observation::Rejected("no".into()),
            )
            .unwrap();
            assert_eq!(out.decision, Decision::Abort("rejected: no".into()));
        }
    }

    #[test]
    fn observation_out_of_order_is_an_error() {
        let r = rollout("{}", Some("api-1"));
        let state = serde_json::to_string(&Phase::Shifting).unwrap();
        let err = step(&r, Some(&state), &Observation::Promoted).unwrap_err();
        assert!(
            err.describe().contains("does not fit phase"),
            "{}",
            err.describe()
        );
        let err = step(&r, Some("garbage"), &Observation::Waited).unwrap_err();
        assert!(err.describe().contains("unreadable checkpoint"));
    }

    #[test]
    fn unknown_config_key_is_reported_by_validate() {
        let diags = AllAtOnce::validate(r#"{"skip": true}"#.into());
        assert_eq!(diags.len(), 1);
        assert!(
            diags[0].message.contains("unknown field `skip`"),
            "{}",
            diags[0].message
        );
        assert!(AllAtOnce::validate("{}".into()).is_empty());
        assert!(AllAtOnce::validate(String::new()).is_empty());
    }

    #[test]
    fn schema_is_json() {
        let v: serde_json::Value = serde_json::from_str(CONFIG_SCHEMA).unwrap();
        assert_eq!(v["type"], "object");
    }
}
