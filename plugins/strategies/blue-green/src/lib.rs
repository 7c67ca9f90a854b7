//! The `blue-green` strategy: the new revision (green) starts at 0 % of the traffic and is
//! checked through its own URL; after an optional approval all traffic switches to it at once.
//! Green then serves everything for `bake` while the previous revision (blue) keeps running,
//! idle, and is checked again: a failure switches the traffic straight back to blue (the host
//! restores the previous split), a pass promotes green and retires blue. A failed check before
//! the switch aborts before any user request reaches green.
//!
//! A first deployment has no blue: green takes all traffic, is checked and promoted.
//!
//! Every step is a pure function of (configuration, state, observation): the host checkpoints
//! after each and may resume from any.

use engine_sdk::strategy::{
    AnalysisRequest, Decision, Finish, Observation, Rollout, StepResult, failing_checks,
};
use engine_sdk::{Capabilities, Diagnostic, Error, ErrorExt, PluginInfo, Strategy, TrafficTarget};
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Wait for `engine promote` before switching the traffic.
    pub approval: bool,
    /// Check green again once it has served all the traffic for `bake`.
    pub check_after_switch: bool,
    /// How long green serves all the traffic, with blue idle for an instant rollback, before
    /// the check after the switch, such as `2m`.
    pub bake: String,
    /// Count an inconclusive check as failed.
    pub fail_on_inconclusive: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            approval: false,
            check_after_switch: true,
            bake: "30s".into(),
            fail_on_inconclusive: false,
        }
    }
}

pub const CONFIG_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "blue-green strategy",
  "type": "object",
  "properties": {
    "approval": { "type": "boolean", "default": false, "description": "Wait for `engine promote` before switching the traffic." },
    "check_after_switch": { "type": "boolean", "default": true, "description": "Check the new revision again after it has served all the traffic for `bake`." },
    "bake": { "type": "string", "default": "30s", "description": "How long the new revision serves all the traffic, with the old one idle for an instant rollback, before that check." },
    "fail_on_inconclusive": { "type": "boolean", "default": false, "description": "Count an inconclusive check as failed." }
  },
  "additionalProperties": false
}"#;

pub fn parse_config(text: &str) -> Result<(Config, Duration), Error> {
    let text = if text.trim().is_empty() { "{}" } else { text };
    let config: Config = serde_json::from_str(text)
        .map_err(|e| Error::invalid_config(format!("blue-green configuration: {e}")))?;
    let bake = engine_sdk::duration::parse(
        "blue-green `bake`",
        &config.bake,
        engine_sdk::duration::MAX_WAIT,
    )?;
    Ok((config, bake))
}

/// What the host was last asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Green at 0 %, blue at 100 %.
    Preview,
    /// Checking green through its own URL.
    CheckingPreview,
    AwaitingApproval,
    /// All traffic to green.
    Switching,
    /// Green serves everything; blue idles, ready for a rollback.
    Baking,
    CheckingLive,
    /// Promoting, retiring the previous revision, or finished (done or aborted): the end
    /// every strategy shares (stored as `promoting`, `retiring`, `done`, as before).
    #[serde(untagged)]
    Finishing(Finish),
}

fn emit(phase: Phase, decision: Decision, label: &str) -> Result<StepResult, Error> {
    Ok(StepResult {
        state: serde_json::to_string(&phase).expect("a phase serialises"),
        decision,
        phase: label.to_string(),
    })
}

fn check(rollout: &Rollout) -> Decision {
    Decision::Analyse(AnalysisRequest {
        revision: rollout.candidate.clone(),
        checks: Vec::new(),
    })
}

fn all_to(revision: &str) -> Decision {
    Decision::SetTraffic(vec![TrafficTarget {
        revision: revision.to_string(),
        percent: 100,
    }])
}

/// After the preview passed: approval, or the switch.
fn switch(config: &Config, rollout: &Rollout) -> Result<StepResult, Error> {
    if config.approval {
        emit(
            Phase::AwaitingApproval,
            Decision::AwaitApproval(format!(
                "switch all traffic of `{}` to {}",
                rollout.service, rollout.candidate
            )),
            "awaiting approval",
        )
    } else {
        emit(Phase::Switching, all_to(&rollout.candidate), "switching")
    }
}

fn promote() -> Result<StepResult, Error> {
    let (stage, decision, label) = Finish::start();
    emit(Phase::Finishing(stage), decision, &label)
}

pub fn step(
    rollout: &Rollout,
    state: Option<&str>,
    observation: &Observation,
) -> Result<StepResult, Error> {
    let (config, bake) = parse_config(&rollout.config)?;
    let phase: Option<Phase> = state
        .map(|s| {
            serde_json::from_str(s)
                .map_err(|e| Error::fatal(format!("blue-green: unreadable checkpoint {s:?}: {e}")))
        })
        .transpose()?;
    let abort = |why: String| {
        emit(
            Phase::Finishing(Finish::Done),
            Decision::Abort(why),
            "aborted",
        )
    };
    match (phase, observation) {
        (_, Observation::Rejected(reason)) => abort(format!("rejected: {reason}")),
        (None, Observation::Start) => match &rollout.stable {
            Some(blue) => emit(
                Phase::Preview,
                Decision::SetTraffic(vec![
                    TrafficTarget {
                        revision: blue.clone(),
                        percent: 100,
                    },
                    TrafficTarget {
                        revision: rollout.candidate.clone(),
                        percent: 0,
                    },
                ]),
                "preview at 0%",
            ),
            // Nothing to switch from: all traffic, then the live check.
            None => emit(Phase::Switching, all_to(&rollout.candidate), "switching"),
        },
        (Some(Phase::Preview), Observation::TrafficSet(_)) => {
            emit(Phase::CheckingPreview, check(rollout), "checking preview")
        }
        (Some(Phase::CheckingPreview), Observation::Analysed(outcomes)) => {
            match failing_checks(outcomes, config.fail_on_inconclusive) {
                Some(f) => abort(format!("the preview failed its checks: {f}")),
                None => switch(&config, rollout),
            }
        }
        (Some(Phase::AwaitingApproval), Observation::Approved) => {
            emit(Phase::Switching, all_to(&rollout.candidate), "switching")
        }
        (Some(Phase::Switching), Observation::TrafficSet(_)) => {
            if !(config.check_after_switch || rollout.stable.is_none()) {
                promote()
            } else if rollout.stable.is_some() && !bake.is_zero() {
                emit(
                    Phase::Baking,
                    Decision::Wait(bake.as_millis() as u64),
                    "baking (previous revision idle)",
                )
            } else {
                emit(Phase::CheckingLive, check(rollout), "checking live")
            }
        }
        (Some(Phase::Baking), Observation::Waited) => {
            emit(Phase::CheckingLive, check(rollout), "checking live")
        }
        (Some(Phase::CheckingLive), Observation::Analysed(outcomes)) => {
            match failing_checks(outcomes, config.fail_on_inconclusive) {
                Some(f) => abort(format!("checks failed after the switch: {f}")),
                None => promote(),
            }
        }
        // Blue is retired once green is promoted: a rollback from there is a new rollout.
        (Some(Phase::Finishing(stage)), observation)
            if let Some((stage, decision, label)) = stage.next(rollout, observation, true) =>
        {
            emit(Phase::Finishing(stage), decision, &label)
        }
        (phase, observation) => Err(Error::fatal(format!(
            "blue-green: observation {observation:?} does not fit phase {phase:?}"
        ))),
    }
}

pub struct BlueGreen;

impl Strategy for BlueGreen {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "blue-green".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Checks the new revision at 0% through its own URL, switches all traffic at once, keeps the old one for an instant rollback".into(),
            config_schema: CONFIG_SCHEMA.into(),
            features: Vec::new(),
            capabilities: Capabilities::none(),
        }
    }

    fn validate(config: String) -> Vec<Diagnostic> {
        engine_sdk::config_diagnostics(
            parse_config(&config),
            Some("keys: approval, check_after_switch, bake, fail_on_inconclusive"),
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

engine_sdk::export_strategy!(BlueGreen);

#[cfg(test)]
mod tests;
