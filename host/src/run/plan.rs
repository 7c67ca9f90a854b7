//! `engine plan`: what a run would do, without doing it. The same provider `read` and `plan`
//! calls as a run, under a dry-run runtime (see [`crate::runtime::RuntimeOptions::dry_run`]),
//! then the strategy stepped through with simulated healthy observations to show the traffic
//! timeline it would follow.

use crate::config::{Pipeline, Service};
use crate::port::{
    Change, CheckOutcome, Decision, Observation, PlanAction, Ports, Rollout, Strategy,
    TrafficShare, Verdict,
};
use crate::runtime::{LoadedPlugin, PluginPorts};
use crate::state::now_ms;
use serde::Serialize;
use std::collections::BTreeMap;

/// The plan of one service.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServicePlan {
    pub service: String,
    /// `create`, `update` or `no-change`; absent when planning failed.
    pub action: Option<String>,
    pub summary: String,
    pub changes: Vec<PlannedChange>,
    /// The strategy's steps, simulated with every health check passing.
    pub timeline: Vec<String>,
    pub error: Option<String>,
}

/// A field a deploy would change.
pub type PlannedChange = Change;

/// Longest simulated rollout, in steps; a strategy that never finishes is reported.
const MAX_STEPS: usize = 1000;

/// Plans every service in dependency order.
pub async fn plan(
    pipeline: &Pipeline,
    plugins: &BTreeMap<String, LoadedPlugin>,
) -> Vec<ServicePlan> {
    let ports = PluginPorts::new(plugins);
    let waves = pipeline.waves();
    let mut out = Vec::new();
    for index in waves.into_iter().flatten() {
        let service = &pipeline.services[index];
        let mut result = ServicePlan {
            service: service.name.clone(),
            action: None,
            summary: String::new(),
            changes: Vec::new(),
            timeline: Vec::new(),
            error: None,
        };
        if let Err(e) = plan_service(&ports, service, &mut result).await {
            result.error = Some(e);
        }
        out.push(result);
    }
    out
}

async fn plan_service(
    ports: &dyn Ports,
    service: &Service,
    out: &mut ServicePlan,
) -> Result<(), String> {
    let platform = ports.platform(service).map_err(|e| e.message)?;
    let current = platform.read().await.map_err(|e| e.message)?;
    let plan = platform
        .plan(current.as_ref())
        .await
        .map_err(|e| e.message)?;
    out.action = Some(plan.action.label().into());
    out.summary = plan.summary;
    out.changes = plan.changes;
    if plan.action == PlanAction::NoChange {
        return Ok(());
    }
    let strategy = ports.strategy(service).map_err(|e| e.message)?;
    let rollout = Rollout {
        service: service.name.clone(),
        stable: current.as_ref().and_then(|c| c.serving()).map(String::from),
        candidate: format!("{}-planned", service.name),
        features: platform.features(),
        config: service.strategy_config.to_string(),
    };
    // Hooks are the author's own commands, outside the sandbox: a dry run lists, never runs them.
    for command in &service.pre_hooks {
        out.timeline
            .push(format!("run pre hook (not run in a plan): {command}"));
    }
    simulate(service, strategy.as_ref(), &rollout, &mut out.timeline).await
}

/// Steps the strategy through a rollout in which every check passes and every approval is
/// given, and writes down what it would do.
async fn simulate(
    service: &Service,
    strategy: &dyn Strategy,
    rollout: &Rollout,
    timeline: &mut Vec<String>,
) -> Result<(), String> {
    let mut state: Option<String> = None;
    let mut observation = Observation::Start;
    let mut now = now_ms() as u64;
    // The simulation holds the strategy to the contract a real run enforces.
    let mut contract =
        super::contract::Contract::new(&rollout.candidate, rollout.stable.as_deref(), 0);
    for _ in 0..MAX_STEPS {
        let step = strategy
            .step(rollout, state.as_deref(), &observation, now)
            .await
            .map_err(|e| e.message)?;
        contract
            .check(&step.decision)
            .map_err(|broken| format!("the strategy broke its contract: {broken}"))?;
        state = Some(step.state);
        observation = match step.decision {
            Decision::SetTraffic(split) => {
                timeline.push(format!("set traffic: {}", describe(&split)));
                Observation::TrafficSet(split)
            }
            Decision::Wait(ms) => {
                timeline.push(format!(
                    "wait {}",
                    humantime::format_duration(std::time::Duration::from_millis(ms))
                ));
                now += ms;
                Observation::Waited
            }
            Decision::Analyse(request) => {
                let checks: Vec<&str> =
                    crate::config::Check::selected(&service.checks, &request.checks)
                        .map(|c| c.name.as_str())
                        .collect();
                timeline.push(if checks.is_empty() {
                    format!("analyse {} (no checks configured)", request.revision)
                } else {
                    format!("analyse {}: {}", request.revision, checks.join(", "))
                });
                Observation::Analysed(checks.iter().map(|name| passed(name)).collect())
            }
            Decision::AwaitApproval(what) => {
                timeline.push(format!("await approval: {what}"));
                Observation::Approved
            }
            Decision::Promote => {
                timeline.push(format!("promote {}", rollout.candidate));
                Observation::Promoted
            }
            Decision::Retire(revision) => {
                timeline.push(format!("retire {revision}"));
                Observation::Retired(revision)
            }
            Decision::Abort(reason) => {
                timeline.push(format!("abort: {reason}"));
                return Ok(());
            }
            Decision::Done => {
                for command in &service.post_hooks {
                    timeline.push(format!("run post hook (not run in a plan): {command}"));
                }
                timeline.push("done".into());
                return Ok(());
            }
        };
    }
    Err(format!(
        "the strategy did not finish within {MAX_STEPS} simulated steps"
    ))
}

fn describe(split: &[TrafficShare]) -> String {
    split
        .iter()
        .map(|t| format!("{} {}%", t.revision, t.percent))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A simulated check result: every check passes in a plan.
fn passed(name: &str) -> CheckOutcome {
    CheckOutcome {
        name: name.into(),
        verdict: Verdict::Healthy,
        message: "simulated".into(),
    }
}
