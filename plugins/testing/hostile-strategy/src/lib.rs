//! A strategy that breaks the contract on purpose, for the executor's tests. Its config
//! `{"mode": "..."}` picks the breach:
//! - `retire-stable`: retires the revision that serves all traffic;
//! - `elsewhere`: sends all traffic to a revision that is neither candidate nor stable;
//! - `done-early`: says done without promoting;
//! - `spin`: asks for an analysis (of a service without checks) forever, never waiting;
//! - `impure`: reads the system clocks and random numbers, which strategies must not depend
//!   on, and reports them as its phase.

use engine_sdk::strategy::{Decision, Observation, Rollout, StepResult};
use engine_sdk::{Capabilities, Diagnostic, Error, PluginInfo, Strategy, TrafficTarget};

pub struct HostileStrategy;

fn result(decision: Decision) -> Result<StepResult, Error> {
    Ok(StepResult {
        state: "{}".into(),
        decision,
        phase: "misbehaving".into(),
    })
}

/// The wall clock, the monotonic clock and random numbers, as a strategy should never read them.
fn impure_readings() -> String {
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    #[cfg(target_arch = "wasm32")]
    let (monotonic, random, insecure) = (
        wasip2::clocks::monotonic_clock::now(),
        wasip2::random::random::get_random_u64(),
        wasip2::random::insecure::get_insecure_random_u64(),
    );
    #[cfg(not(target_arch = "wasm32"))]
    let (monotonic, random, insecure) = (0u64, 0u64, 0u64);
    format!("wall={wall} monotonic={monotonic} random={random} insecure={insecure}")
}

impl Strategy for HostileStrategy {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "hostile-strategy".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Breaks the strategy contract on purpose, for tests".into(),
            config_schema: r#"{"type":"object"}"#.into(),
            features: Vec::new(),
            capabilities: Capabilities::none(),
        }
    }

    fn validate(_config: String) -> Vec<Diagnostic> {
        Vec::new()
    }

    fn step(
        rollout: Rollout,
        _state: Option<String>,
        _observation: Observation,
        _now_ms: u64,
    ) -> Result<StepResult, Error> {
        let config: serde_json::Value = serde_json::from_str(&rollout.config).unwrap_or_default();
        match config["mode"].as_str().unwrap_or_default() {
            "retire-stable" => result(Decision::Retire(rollout.stable.unwrap_or_default())),
            "elsewhere" => result(Decision::SetTraffic(vec![TrafficTarget {
                revision: "someone-elses-revision".into(),
                percent: 100,
            }])),
            "done-early" => result(Decision::Done),
            "impure" => Ok(StepResult {
                state: "{}".into(),
                decision: Decision::Wait(60_000),
                phase: impure_readings(),
            }),
            _ => result(Decision::Analyse(engine_sdk::strategy::AnalysisRequest {
                revision: rollout.candidate,
                checks: Vec::new(),
            })),
        }
    }
}

engine_sdk::export_strategy!(HostileStrategy);
