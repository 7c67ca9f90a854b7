//! {{name}}: a deployment strategy. Sends `percent` of the traffic to the candidate, analyses
//! it, then promotes it and retires the stable revision; aborts when the analysis fails.
//!
//! A strategy is a pure state machine: the same rollout, state, observation and time give the
//! same step, so the engine can checkpoint after every step and resume anywhere.

use engine_sdk::strategy::{AnalysisRequest, Decision, Observation, Rollout, StepResult};
use engine_sdk::{
    Capabilities, Diagnostic, Error, ErrorExt, Feature, PluginInfo, Severity, Strategy,
    TrafficTarget,
};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The candidate's share of traffic while it is analysed.
    #[serde(default = "ten")]
    pub percent: u8,
}

fn ten() -> u8 {
    10
}

pub fn parse(text: &str) -> Result<Config, Error> {
    let text = if text.trim().is_empty() { "{}" } else { text };
    let config: Config = serde_json::from_str(text)
        .map_err(|e| Error::invalid_config(format!("{{name}} configuration: {e}")))?;
    if !(1..=99).contains(&config.percent) {
        return Err(Error::invalid_config("`percent` must be between 1 and 99"));
    }
    Ok(config)
}

/// What the state remembers: the last stage entered.
const STAGES: [&str; 5] = ["split", "analyse", "promote", "retire", "done"];

fn step(rollout: &Rollout, state: Option<&str>, seen: &Observation) -> Result<StepResult, Error> {
    let config = parse(&rollout.config)?;
    if let Observation::Analysed(outcomes) = seen
        && let Some(failing) = engine_sdk::strategy::failing_checks(outcomes, false)
    {
        return Ok(result("aborted", Decision::Abort(format!("unhealthy: {failing}"))));
    }
    if let Observation::Rejected(reason) = seen {
        return Ok(result("aborted", Decision::Abort(reason.clone())));
    }
    let candidate = rollout.candidate.clone();
    let splits = rollout.features.contains(&Feature::TrafficSplit) && rollout.stable.is_some();
    let next = match state {
        None if splits => "split",
        None => "analyse",
        Some("split") => "analyse",
        Some("analyse") => "promote",
        Some("promote") if rollout.stable.is_some() => "retire",
        Some(_) => "done",
    };
    let decision = match next {
        "split" => Decision::SetTraffic(vec![
            TrafficTarget { revision: candidate, percent: config.percent },
            TrafficTarget {
                revision: rollout.stable.clone().unwrap_or_default(),
                percent: 100 - config.percent,
            },
        ]),
        "analyse" => Decision::Analyse(AnalysisRequest { revision: candidate, checks: Vec::new() }),
        "promote" => Decision::Promote,
        "retire" => Decision::Retire(rollout.stable.clone().unwrap_or_default()),
        _ => Decision::Done,
    };
    debug_assert!(STAGES.contains(&next));
    Ok(result(next, decision))
}

fn result(stage: &str, decision: Decision) -> StepResult {
    StepResult { state: stage.into(), decision, phase: stage.into() }
}

pub struct Plugin;

impl Strategy for Plugin {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "{{name}}".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Analyses the candidate at a share of the traffic, then promotes it".into(),
            config_schema: r#"{"type":"object","properties":{"percent":{"type":"integer","minimum":1,"maximum":99,"default":10}},"additionalProperties":false}"#.into(),
            features: Vec::new(),
            capabilities: Capabilities::none(),
        }
    }

    fn validate(config: String) -> Vec<Diagnostic> {
        match parse(&config) {
            Ok(_) => Vec::new(),
            Err(e) => vec![Diagnostic {
                severity: Severity::Error,
                path: String::new(),
                message: e.describe(),
                hint: None,
            }],
        }
    }

    fn step(
        rollout: Rollout,
        state: Option<String>,
        seen: Observation,
        _now_ms: u64,
    ) -> Result<StepResult, Error> {
        step(&rollout, state.as_deref(), &seen)
    }
}

engine_sdk::export_strategy!(Plugin);

#[cfg(test)]
mod tests {
    use super::*;
    use engine_sdk::Verdict;
    use engine_sdk::testing::{HostAnswers, drive_strategy};

    fn rollout() -> Rollout {
        Rollout {
            service: "api".into(),
            stable: Some("api-r1".into()),
            candidate: "api-r2".into(),
            features: vec![Feature::TrafficSplit],
            config: r#"{"percent": 20}"#.into(),
        }
    }

    fn decisions(answers: &HostAnswers) -> Vec<Decision> {
        let r = rollout();
        drive_strategy(|state, seen| step(&r, state, seen), answers)
            .into_iter()
            .map(|s| s.decision)
            .collect()
    }

    #[test]
    fn a_healthy_candidate_is_promoted_and_the_stable_retired() {
        let steps = decisions(&HostAnswers::verdicts(&[Verdict::Healthy]));
        assert!(matches!(steps[0], Decision::SetTraffic(_)));
        assert_eq!(steps[2..], [Decision::Promote, Decision::Retire("api-r1".into()), Decision::Done]);
    }

    #[test]
    fn an_unhealthy_candidate_is_aborted() {
        let steps = decisions(&HostAnswers::verdicts(&[Verdict::Unhealthy]));
        assert!(matches!(steps.last(), Some(Decision::Abort(_))));
        assert!(!steps.contains(&Decision::Promote));
    }
}
