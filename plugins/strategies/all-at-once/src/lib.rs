//! The `all-at-once` strategy: the new revision takes all traffic in one step, the service's
//! health checks run against it, and it is promoted when they pass or the rollout is aborted
//! (the host then restores the previous split) when they fail.
//!
//! States, in order: `shifting` → `analysing` → `promoting` → done. Every step is a pure
//! function of (configuration, state, observation), so the host can checkpoint after any step
//! and resume from it.

use engine_sdk::strategy::{
    AnalysisRequest, CheckOutcome, Decision, Observation, Rollout, StepResult,
};
use engine_sdk::{
    Capabilities, Diagnostic, Error, ErrorExt, PluginInfo, Strategy, TrafficTarget, Verdict,
};
use serde::{Deserialize, Serialize};

/// The plugin's configuration (`strategy_config` of a service in pipeline.toml).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Skip the health analysis and promote at once.
    #[serde(default)]
    pub skip_analysis: bool,
    /// Treat an inconclusive analysis (no data yet) as a failure instead of a pass.
    #[serde(default)]
    pub fail_on_inconclusive: bool,
}

/// Where the rollout is; stored by the host between steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// All traffic was asked for the candidate.
    Shifting,
    /// Health checks were asked for.
    Analysing,
    /// Promotion was asked for.
    Promoting,
    /// Finished.
    Done,
}

pub const CONFIG_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "all-at-once strategy",
  "type": "object",
  "properties": {
    "skip_analysis": { "type": "boolean", "default": false, "description": "Promote without running the service's health checks." },
    "fail_on_inconclusive": { "type": "boolean", "default": false, "description": "Abort when the analysis is inconclusive instead of treating it as a pass." }
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

fn unexpected(phase: Option<Phase>, observation: &Observation) -> Error {
    Error::fatal(format!(
        "all-at-once: observation {observation:?} does not fit phase {phase:?}"
    ))
}

/// Whether an analysis passes under this configuration, and why not.
fn judge(config: &Config, outcomes: &[CheckOutcome]) -> Result<(), String> {
    let failing: Vec<String> = outcomes
        .iter()
        .filter(|o| match o.verdict {
            Verdict::Healthy => false,
            Verdict::Unhealthy => true,
            Verdict::Inconclusive => config.fail_on_inconclusive,
        })
        .map(|o| format!("{} ({})", o.name, o.message))
        .collect();
    if failing.is_empty() {
        Ok(())
    } else {
        Err(format!("health checks failed: {}", failing.join("; ")))
    }
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
        (Some(Phase::Shifting), Observation::TrafficSet(_)) if config.skip_analysis => {
            emit(Phase::Promoting, Decision::Promote, "promoting")
        }
        (Some(Phase::Shifting), Observation::TrafficSet(_)) => emit(
            Phase::Analysing,
            Decision::Analyse(AnalysisRequest {
                revision: rollout.candidate.clone(),
                checks: Vec::new(),
            }),
            "analysing",
        ),
        (Some(Phase::Analysing), Observation::Analysed(outcomes)) => match judge(&config, outcomes)
        {
            Ok(()) => emit(Phase::Promoting, Decision::Promote, "promoting"),
            Err(reason) => emit(Phase::Done, Decision::Abort(reason), "aborted"),
        },
        (Some(Phase::Promoting), Observation::Promoted) => {
            emit(Phase::Done, Decision::Done, "done")
        }
        (_, Observation::Rejected(reason)) => emit(
            Phase::Done,
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
            Some("allowed keys: skip_analysis, fail_on_inconclusive"),
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

    fn rollout(config: &str) -> Rollout {
        Rollout {
            service: "api".into(),
            stable: Some("api-1".into()),
            candidate: "api-2".into(),
            features: Vec::new(),
            config: config.into(),
        }
    }

    fn outcome(verdict: Verdict) -> CheckOutcome {
        CheckOutcome {
            name: "http".into(),
            verdict,
            message: "GET /healthz".into(),
            measurements: Vec::new(),
        }
    }

    /// Runs the machine to its end, feeding each decision's natural observation, and returns
    /// the decisions in order; also checks that resuming from every checkpoint repeats the step.
    fn drive(config: &str, verdict: Verdict) -> Vec<Decision> {
        let r = rollout(config);
        let mut state: Option<String> = None;
        let mut observation = Observation::Start;
        let mut decisions = Vec::new();
        loop {
            let out = step(&r, state.as_deref(), &observation).unwrap();
            let again = step(&r, state.as_deref(), &observation).unwrap();
            assert_eq!(out, again, "a step must be a pure function of its inputs");
            decisions.push(out.decision.clone());
            observation = match &out.decision {
                Decision::SetTraffic(split) => Observation::TrafficSet(split.clone()),
                Decision::Analyse(_) => Observation::Analysed(vec![outcome(verdict)]),
                Decision::Promote => Observation::Promoted,
                Decision::Done | Decision::Abort(_) => return decisions,
                other => panic!("all-at-once never decides {other:?}"),
            };
            state = Some(out.state);
        }
    }

    #[test]
    fn healthy_rollout_shifts_analyses_promotes() {
        let decisions = drive("{}", Verdict::Healthy);
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
    fn unhealthy_analysis_aborts_with_the_failing_check() {
        let decisions = drive("{}", Verdict::Unhealthy);
        assert_eq!(
            decisions.last(),
            Some(&Decision::Abort(
                "health checks failed: http (GET /healthz)".into()
            ))
        );
    }

    #[test]
    fn inconclusive_passes_unless_configured_to_fail() {
        assert_eq!(
            drive("{}", Verdict::Inconclusive).last(),
            Some(&Decision::Done)
        );
        assert!(matches!(
            drive(r#"{"fail_on_inconclusive": true}"#, Verdict::Inconclusive).last(),
            Some(Decision::Abort(_))
        ));
    }

    #[test]
    fn skip_analysis_promotes_right_after_the_shift() {
        let decisions = drive(r#"{"skip_analysis": true}"#, Verdict::Unhealthy);
        assert_eq!(decisions.len(), 3);
        assert_eq!(decisions[1], Decision::Promote);
    }

    #[test]
    fn rejection_aborts_from_any_phase() {
        for phase in [Phase::Shifting, Phase::Analysing, Phase::Promoting] {
            let state = serde_json::to_string(&phase).unwrap();
            let out = step(
                &rollout("{}"),
                Some(&state),
                &Observation::Rejected("no".into()),
            )
            .unwrap();
            assert_eq!(out.decision, Decision::Abort("rejected: no".into()));
        }
    }

    #[test]
    fn observation_out_of_order_is_an_error() {
        let state = serde_json::to_string(&Phase::Shifting).unwrap();
        let err = step(&rollout("{}"), Some(&state), &Observation::Promoted).unwrap_err();
        assert!(
            err.describe().contains("does not fit phase"),
            "{}",
            err.describe()
        );
        let err = step(&rollout("{}"), Some("garbage"), &Observation::Waited).unwrap_err();
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
