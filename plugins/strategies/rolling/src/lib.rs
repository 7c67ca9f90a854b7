//! The `rolling` strategy: the new revision replaces the old one in `batches` equal parts
//! (4 batches: 25 %, 50 %, 75 %, 100 % of the traffic, or of the instances where the provider
//! replaces instances in batches), waiting `interval` after each and checking the new revision
//! before the next. Any failed check aborts; the host restores the previous split. Unlike
//! `canary` there is no failure budget and no approval: it is the plain, steady replacement.
//!
//! Every step is a pure function of (configuration, state, observation).

use engine_sdk::strategy::{
    AnalysisRequest, Decision, Finish, Observation, Rollout, StepResult, failing_checks,
};
use engine_sdk::{
    Capabilities, Diagnostic, Error, ErrorExt, Feature, PluginInfo, Strategy, TrafficTarget,
};
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// How many equal parts the replacement goes in (1 to 10).
    pub batches: u8,
    /// The wait after each batch, before its check.
    pub interval: String,
    /// Count an inconclusive check as failed.
    pub fail_on_inconclusive: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            batches: 4,
            interval: "10s".into(),
            fail_on_inconclusive: false,
        }
    }
}

pub const CONFIG_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "rolling strategy",
  "type": "object",
  "properties": {
    "batches": { "type": "integer", "minimum": 1, "maximum": 10, "default": 4, "description": "How many equal parts the replacement goes in." },
    "interval": { "type": "string", "default": "10s", "description": "The wait after each batch, before its check." },
    "fail_on_inconclusive": { "type": "boolean", "default": false, "description": "Count an inconclusive check as failed." }
  },
  "additionalProperties": false
}"#;

pub fn parse_config(text: &str) -> Result<(Config, Duration), Error> {
    let text = if text.trim().is_empty() { "{}" } else { text };
    let config: Config = serde_json::from_str(text)
        .map_err(|e| Error::invalid_config(format!("rolling configuration: {e}")))?;
    if !(1..=10).contains(&config.batches) {
        return Err(Error::invalid_config(format!(
            "rolling `batches` is {}; use 1 to 10",
            config.batches
        )));
    }
    let interval = engine_sdk::duration::parse(
        "rolling `interval`",
        &config.interval,
        engine_sdk::duration::MAX_WAIT,
    )?;
    Ok((config, interval))
}

/// The new revision's percent after batch `i` (0-based) of `n`; the last is exactly 100.
pub fn percent_after(i: u8, n: u8) -> u8 {
    ((u16::from(i) + 1) * 100 / u16::from(n)) as u8
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Shifting,
    Waiting,
    Checking,
    /// Promoting, retiring the previous revision, or finished (done or aborted): the end
    /// every strategy shares (stored as `promoting`, `retiring`, `done`, as before).
    #[serde(untagged)]
    Finishing(Finish),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub phase: Phase,
    /// The batch in progress, 0-based.
    pub batch: u8,
}

fn emit(state: State, decision: Decision, label: String) -> Result<StepResult, Error> {
    Ok(StepResult {
        state: serde_json::to_string(&state).expect("a state serialises"),
        decision,
        phase: label,
    })
}

pub fn step(
    rollout: &Rollout,
    state: Option<&str>,
    observation: &Observation,
) -> Result<StepResult, Error> {
    let (config, interval) = parse_config(&rollout.config)?;
    // A first deployment has nothing to replace: one batch.
    let batches = if rollout.stable.is_some() {
        config.batches
    } else {
        1
    };
    let unit = if rollout.features.contains(&Feature::InstanceBatches) {
        "of the instances"
    } else {
        "of the traffic"
    };
    let state: Option<State> = state
        .map(|s| {
            serde_json::from_str(s)
                .map_err(|e| Error::fatal(format!("rolling: unreadable checkpoint {s:?}: {e}")))
        })
        .transpose()?;
    let shift = |batch: u8| {
        let percent = percent_after(batch, batches);
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
        emit(
            State {
                phase: Phase::Shifting,
                batch,
            },
            Decision::SetTraffic(split),
            format!("batch {}/{batches}: {percent}% {unit}", batch + 1),
        )
    };
    let check = |s: State| {
        emit(
            State {
                phase: Phase::Checking,
                ..s
            },
            Decision::Analyse(AnalysisRequest {
                revision: rollout.candidate.clone(),
                checks: Vec::new(),
            }),
            format!("checking batch {}/{batches}", s.batch + 1),
        )
    };
    match (state, observation) {
        (s, Observation::Rejected(reason)) => emit(
            State {
                phase: Phase::Finishing(Finish::Done),
                batch: s.map_or(0, |s| s.batch),
            },
            Decision::Abort(format!("rejected: {reason}")),
            "aborted".into(),
        ),
        (None, Observation::Start) => shift(0),
        (
            Some(
                s @ State {
                    phase: Phase::Shifting,
                    ..
                },
            ),
            Observation::TrafficSet(_),
        ) => {
            if interval.is_zero() {
                check(s)
            } else {
                emit(
                    State {
                        phase: Phase::Waiting,
                        ..s
                    },
                    Decision::Wait(interval.as_millis() as u64),
                    format!("batch {}/{batches} settling", s.batch + 1),
                )
            }
        }
        (
            Some(
                s @ State {
                    phase: Phase::Waiting,
                    ..
                },
            ),
            Observation::Waited,
        ) => check(s),
        (
            Some(
                s @ State {
                    phase: Phase::Checking,
                    ..
                },
            ),
            Observation::Analysed(outcomes),
        ) => match failing_checks(outcomes, config.fail_on_inconclusive) {
            Some(f) => emit(
                State {
                    phase: Phase::Finishing(Finish::Done),
                    ..s
                },
                Decision::Abort(format!(
                    "health checks failed at batch {}/{batches}: {f}",
                    s.batch + 1
                )),
                "aborted".into(),
            ),
            None if s.batch + 1 < batches => shift(s.batch + 1),
            None => emit(
                State {
                    phase: Phase::Finishing(Finish::Promoting),
                    ..s
                },
                Decision::Promote,
                "promoting".into(),
            ),
        },
        (
            Some(
                s @ State {
                    phase: Phase::Finishing(stage),
                    ..
                },
            ),
            observation,
        ) if let Some((stage, decision, label)) = stage.next(rollout, observation, true) => emit(
            State {
                phase: Phase::Finishing(stage),
                ..s
            },
            decision,
            label,
        ),
        (state, observation) => Err(Error::fatal(format!(
            "rolling: observation {observation:?} does not fit state {state:?}"
        ))),
    }
}

pub struct Rolling;

impl Strategy for Rolling {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "rolling".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description:
                "Replaces the old revision in equal batches, checking each batch before the next"
                    .into(),
            config_schema: CONFIG_SCHEMA.into(),
            features: Vec::new(),
            capabilities: Capabilities::none(),
        }
    }

    fn validate(config: String) -> Vec<Diagnostic> {
        engine_sdk::config_diagnostics(
            parse_config(&config),
            Some("keys: batches, interval, fail_on_inconclusive"),
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

engine_sdk::export_strategy!(Rolling);

#[cfg(test)]
mod tests;
