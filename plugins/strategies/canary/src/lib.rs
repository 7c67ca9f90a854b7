//! The `canary` strategy: the new revision takes a growing share of the traffic in steps (such
//! as 10/25/50/100), with a pause and a health analysis at every step. A failed analysis is
//! measured again after the pause until more than `failure_limit` have failed, then the rollout
//! is aborted (the host restores the previous split). After the last step the rollout waits for
//! a person if `approval` is set and is promoted; the previous revision stays, without traffic,
//! for an instant rollback, unless `retire_previous` is set.
//!
//! A first deployment (no stable revision) has nothing to split with: it takes 100 % at once and
//! is analysed before promotion.
//!
//! Every step is a pure function of (configuration, state, observation): the host checkpoints
//! after each and may resume from any.

use engine_sdk::strategy::{
    AnalysisRequest, Decision, Finish, Observation, Rollout, StepResult, failing_checks,
};
use engine_sdk::{Capabilities, Diagnostic, Error, ErrorExt, PluginInfo, Strategy, TrafficTarget};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The plugin's configuration (`strategy_config` of a service in pipeline.toml).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The candidate's share of traffic at each step, increasing, each 1 to 100.
    pub steps: Vec<u8>,
    /// How long each step runs before its analysis (and between re-analyses), such as `30s`.
    pub pause: String,
    /// Failed analyses tolerated over the whole rollout before it is aborted.
    pub failure_limit: u32,
    /// Count an inconclusive analysis (no data yet) as failed.
    pub fail_on_inconclusive: bool,
    /// Wait for `engine promote` after the last step, before promotion.
    pub approval: bool,
    /// Retire the previous revision once the candidate is promoted. Off by default: the
    /// previous revision stays, without traffic, for an instant `engine rollback` (Cloud Run
    /// keeps revisions too).
    pub retire_previous: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            steps: vec![25, 50, 100],
            pause: "30s".into(),
            failure_limit: 0,
            fail_on_inconclusive: false,
            approval: false,
            retire_previous: false,
        }
    }
}

pub const CONFIG_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "canary strategy",
  "type": "object",
  "properties": {
    "steps": { "type": "array", "items": { "type": "integer", "minimum": 0, "maximum": 100 }, "minItems": 1, "default": [25, 50, 100], "description": "The new revision's share of traffic at each step, increasing." },
    "pause": { "type": "string", "default": "30s", "description": "How long each step runs before it is analysed, such as 30s, 5m or 1h 30m." },
    "failure_limit": { "type": "integer", "minimum": 0, "default": 0, "description": "Failed analyses tolerated before the rollout is aborted." },
    "fail_on_inconclusive": { "type": "boolean", "default": false, "description": "Count an inconclusive analysis as failed." },
    "approval": { "type": "boolean", "default": false, "description": "Wait for `engine promote` after the last step." },
    "retire_previous": { "type": "boolean", "default": false, "description": "Retire the previous revision after promotion instead of keeping it, without traffic, for an instant rollback." }
  },
  "additionalProperties": false
}"#;

/// A configuration, checked beyond its schema.
pub fn parse_config(text: &str) -> Result<(Config, Duration), Error> {
    let text = if text.trim().is_empty() { "{}" } else { text };
    let config: Config = serde_json::from_str(text)
        .map_err(|e| Error::invalid_config(format!("canary configuration: {e}")))?;
    let pause = engine_sdk::duration::parse(
        "canary `pause`",
        &config.pause,
        engine_sdk::duration::MAX_WAIT,
    )?;
    if config.steps.is_empty() {
        return Err(Error::invalid_config(
            "canary `steps` is empty; give the traffic percentages, such as [10, 25, 50, 100]",
        ));
    }
    // A first step of 0: the new revision is checked through its own URL before it takes any
    // traffic (Cloud Run's --no-traffic --tag), then the percentages follow.
    if let Some(bad) = config
        .steps
        .iter()
        .enumerate()
        .find(|(i, p)| {
            let allowed = (1..=100).contains(*p) || (*i == 0 && **p == 0);
            !allowed
        })
        .map(|(_, p)| p)
    {
        return Err(Error::invalid_config(format!(
            "canary step {bad}% is outside 1 to 100 (only the first step may be 0)"
        )));
    }
    if let Some(w) = config.steps.windows(2).find(|w| w[0] >= w[1]) {
        return Err(Error::invalid_config(format!(
            "canary `steps` must increase, but {}% is followed by {}%",
            w[0], w[1]
        )));
    }
    Ok((config, pause))
}

/// What the host was last asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// The split of the current step was asked for.
    Shifting,
    /// The pause before the current step's analysis was asked for.
    Pausing,
    /// The current step's analysis was asked for.
    Analysing,
    /// Approval was asked for.
    AwaitingApproval,
    /// Promoting, retiring the previous revision, or finished (done or aborted): the end
    /// every strategy shares (stored as `promoting`, `retiring`, `done`, as before).
    #[serde(untagged)]
    Finishing(Finish),
}

/// The state the host stores between steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub phase: Phase,
    /// Index into the steps in use.
    pub step: usize,
    /// Failed analyses so far.
    pub failures: u32,
}

/// The steps of this rollout: the configured ones, or 100 % at once for a first deployment.
fn steps(config: &Config, rollout: &Rollout) -> Vec<u8> {
    if rollout.stable.is_none() {
        vec![100]
    } else {
        config.steps.clone()
    }
}

fn split(rollout: &Rollout, percent: u8) -> Vec<TrafficTarget> {
    let mut split = vec![TrafficTarget {
        revision: rollout.candidate.clone(),
        percent,
    }];
    if let Some(stable) = &rollout.stable
        && percent < 100
    {
        split.push(TrafficTarget {
            revision: stable.clone(),
            percent: 100 - percent,
        });
    }
    split
}

fn emit(state: State, decision: Decision, label: String) -> Result<StepResult, Error> {
    Ok(StepResult {
        state: serde_json::to_string(&state).expect("a state always serialises"),
        decision,
        phase: label,
    })
}

fn analyse(rollout: &Rollout) -> Decision {
    Decision::Analyse(AnalysisRequest {
        revision: rollout.candidate.clone(),
        checks: Vec::new(),
    })
}

/// After the last step passed: approval, or promotion.
fn finish_steps(config: &Config, rollout: &Rollout, state: State) -> Result<StepResult, Error> {
    if config.approval {
        emit(
            State {
                phase: Phase::AwaitingApproval,
                ..state
            },
            Decision::AwaitApproval(format!(
                "promote {} of `{}` to 100% of the traffic",
                rollout.candidate, rollout.service
            )),
            "awaiting approval".into(),
        )
    } else {
        emit(
            State {
                phase: Phase::Finishing(Finish::Promoting),
                ..state
            },
            Decision::Promote,
            "promoting".into(),
        )
    }
}

/// One step of the state machine.
pub fn step(
    rollout: &Rollout,
    state: Option<&str>,
    observation: &Observation,
) -> Result<StepResult, Error> {
    let (config, pause) = parse_config(&rollout.config)?;
    let steps = steps(&config, rollout);
    let state: Option<State> = state
        .map(|s| {
            serde_json::from_str(s)
                .map_err(|e| Error::fatal(format!("canary: unreadable checkpoint {s:?}: {e}")))
        })
        .transpose()?;
    let percent = |s: &State| steps.get(s.step).copied().unwrap_or(100);
    let wait = || Decision::Wait(pause.as_millis() as u64);
    match (state, observation) {
        (_, Observation::Rejected(reason)) => {
            let s = state.unwrap_or(State {
                phase: Phase::Finishing(Finish::Done),
                step: 0,
                failures: 0,
            });
            emit(
                State {
                    phase: Phase::Finishing(Finish::Done),
                    ..s
                },
                Decision::Abort(format!("rejected: {reason}")),
                "aborted".into(),
            )
        }
        (None, Observation::Start) => {
            let s = State {
                phase: Phase::Shifting,
                step: 0,
                failures: 0,
            };
            emit(
                s,
                Decision::SetTraffic(split(rollout, steps[0])),
                format!("canary {}%", steps[0]),
            )
        }
        (
            Some(
                s @ State {
                    phase: Phase::Shifting,
                    ..
                },
            ),
            Observation::TrafficSet(_),
        ) => {
            // Nothing to watch at 0 %: check the revision at once.
            if pause.is_zero() || percent(&s) == 0 {
                emit(
                    State {
                        phase: Phase::Analysing,
                        ..s
                    },
                    analyse(rollout),
                    format!("analysing at {}%", percent(&s)),
                )
            } else {
                emit(
                    State {
                        phase: Phase::Pausing,
                        ..s
                    },
                    wait(),
                    format!("pausing at {}%", percent(&s)),
                )
            }
        }
        (
            Some(
                s @ State {
                    phase: Phase::Pausing,
                    ..
                },
            ),
            Observation::Waited,
        ) => emit(
            State {
                phase: Phase::Analysing,
                ..s
            },
            analyse(rollout),
            format!("analysing at {}%", percent(&s)),
        ),
        (
            Some(
                s @ State {
                    phase: Phase::Analysing,
                    ..
                },
            ),
            Observation::Analysed(outcomes),
        ) => {
            match failing_checks(outcomes, config.fail_on_inconclusive) {
                Some(failing) => {
                    let failures = s.failures + 1;
                    if failures > config.failure_limit {
                        emit(
                            State {
                                phase: Phase::Finishing(Finish::Done),
                                failures,
                                ..s
                            },
                            Decision::Abort(format!(
                                "health checks failed at {}%: {failing}",
                                percent(&s)
                            )),
                            "aborted".into(),
                        )
                    } else {
                        // Tolerated: measure again after the pause.
                        emit(
                            State {
                                phase: Phase::Pausing,
                                failures,
                                ..s
                            },
                            wait(),
                            format!(
                                "re-checking at {}% ({failures} of {} failures tolerated)",
                                percent(&s),
                                config.failure_limit
                            ),
                        )
                    }
                }
                None if s.step + 1 < steps.len() => {
                    let next = State {
                        phase: Phase::Shifting,
                        step: s.step + 1,
                        ..s
                    };
                    emit(
                        next,
                        Decision::SetTraffic(split(rollout, steps[next.step])),
                        format!("canary {}%", steps[next.step]),
                    )
                }
                None => finish_steps(&config, rollout, s),
            }
        }
        (
            Some(
                s @ State {
                    phase: Phase::AwaitingApproval,
                    ..
                },
            ),
            Observation::Approved,
        ) => emit(
            State {
                phase: Phase::Finishing(Finish::Promoting),
                ..s
            },
            Decision::Promote,
            "promoting".into(),
        ),
        (
            Some(
                s @ State {
                    phase: Phase::Finishing(stage),
                    ..
                },
            ),
            observation,
        ) if let Some((stage, decision, label)) =
            stage.next(rollout, observation, config.retire_previous) =>
        {
            emit(
                State {
                    phase: Phase::Finishing(stage),
                    ..s
                },
                decision,
                label,
            )
        }
        (state, observation) => Err(Error::fatal(format!(
            "canary: observation {observation:?} does not fit state {state:?}"
        ))),
    }
}

pub struct Canary;

impl Strategy for Canary {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "canary".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Shifts traffic to the new revision in steps, checking its health at each; optional approval before promotion".into(),
            config_schema: CONFIG_SCHEMA.into(),
            features: Vec::new(),
            capabilities: Capabilities::none(),
        }
    }

    fn validate(config: String) -> Vec<Diagnostic> {
        engine_sdk::config_diagnostics(
            parse_config(&config),
            Some(
                "keys: steps, pause, failure_limit, fail_on_inconclusive, approval, retire_previous",
            ),
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

engine_sdk::export_strategy!(Canary);

#[cfg(test)]
mod tests;
