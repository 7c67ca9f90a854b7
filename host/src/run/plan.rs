//! `engine plan`: what a run would do, without doing it. The same provider `read` and `plan`
//! calls as a run, under a dry-run runtime (see [`crate::runtime::RuntimeOptions::dry_run`]),
//! then the strategy stepped through with simulated healthy observations to show the traffic
//! timeline it would follow.

use crate::config::Pipeline;
use crate::runtime::LoadedPlugin;
use crate::runtime::bindings::strategy::exports::engine::plugin::strategy::{
    Decision, Observation, Rollout,
};
use crate::runtime::bindings::types::{PlanAction, ServiceRef, TrafficTarget, Verdict};
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

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlannedChange {
    pub field: String,
    pub before: Option<String>,
    pub after: Option<String>,
}

/// Longest simulated rollout, in steps; a strategy that never finishes is reported.
const MAX_STEPS: usize = 1000;

/// Plans every service in dependency order.
pub async fn plan(
    pipeline: &Pipeline,
    plugins: &BTreeMap<String, LoadedPlugin>,
) -> Vec<ServicePlan> {
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
        if let Err(e) = plan_service(pipeline, plugins, service, &mut result).await {
            result.error = Some(e);
        }
        out.push(result);
    }
    out
}

async fn plan_service(
    _pipeline: &Pipeline,
    plugins: &BTreeMap<String, LoadedPlugin>,
    service: &crate::config::Service,
    out: &mut ServicePlan,
) -> Result<(), String> {
    let missing = |name: &str| format!("plugin `{name}` is not loaded");
    let provider_plugin = plugins
        .get(&service.provider)
        .ok_or_else(|| missing(&service.provider))?;
    let provider = provider_plugin.provider().map_err(|e| e.to_string())?;
    let target = ServiceRef {
        name: service.name.clone(),
        config: service.provider_config.to_string(),
    };
    let spec = service.spec();
    let current = provider.read(&target).await.map_err(|e| e.to_string())?;
    let plan = provider
        .plan(&spec, current.as_ref())
        .await
        .map_err(|e| e.to_string())?;
    out.action = Some(
        match plan.action {
            PlanAction::Create => "create",
            PlanAction::Update => "update",
            PlanAction::NoChange => "no-change",
        }
        .into(),
    );
    out.summary = plan.summary;
    out.changes = plan
        .changes
        .into_iter()
        .map(|c| PlannedChange {
            field: c.field,
            before: c.before,
            after: c.after,
        })
        .collect();
    if plan.action == PlanAction::NoChange {
        return Ok(());
    }

    let strategy_plugin = plugins
        .get(&service.strategy)
        .ok_or_else(|| missing(&service.strategy))?;
    let strategy = strategy_plugin.strategy().map_err(|e| e.to_string())?;
    let stable = current.as_ref().and_then(|c| {
        c.traffic
            .iter()
            .max_by_key(|t| t.percent)
            .map(|t| t.revision.clone())
    });
    let candidate = format!("{}-planned", service.name);
    let rollout = Rollout {
        service: service.name.clone(),
        stable,
        candidate,
        features: provider_plugin.info().features.clone(),
        config: service.strategy_config.to_string(),
    };
    let describe = |split: &[TrafficTarget]| {
        split
            .iter()
            .map(|t| format!("{} {}%", t.revision, t.percent))
            .collect::<Vec<_>>()
            .join(", ")
    };
    // Hooks are the author's own commands, outside the sandbox: a dry run lists, never runs them.
    for command in &service.pre_hooks {
        out.timeline
            .push(format!("run pre hook (not run in a plan): {command}"));
    }
    let mut state: Option<String> = None;
    let mut observation = Observation::Start;
    let mut now = now_ms() as u64;
    // The simulation holds the strategy to the contract a real run enforces.
    let mut contract =
        super::contract::Contract::new(&rollout.candidate, rollout.stable.as_deref(), 0);
    for _ in 0..MAX_STEPS {
        let step = strategy
            .step(&rollout, state.as_deref(), &observation, now)
            .await
            .map_err(|e| e.to_string())?;
        contract
            .check(&step.decision)
            .map_err(|broken| format!("the strategy broke its contract: {broken}"))?;
        state = Some(step.state);
        observation = match step.decision {
            Decision::SetTraffic(split) => {
                out.timeline
                    .push(format!("set traffic: {}", describe(&split)));
                Observation::TrafficSet(split)
            }
            Decision::Wait(ms) => {
                out.timeline.push(format!(
                    "wait {}",
                    humantime::format_duration(std::time::Duration::from_millis(ms))
                ));
                now += ms;
                Observation::Waited
            }
            Decision::Analyse(request) => {
                let checks: Vec<&str> = service
                    .checks
                    .iter()
                    .filter(|c| request.checks.is_empty() || request.checks.contains(&c.name))
                    .map(|c| c.name.as_str())
                    .collect();
                out.timeline.push(if checks.is_empty() {
                    format!("analyse {} (no checks configured)", request.revision)
                } else {
                    format!("analyse {}: {}", request.revision, checks.join(", "))
                });
                Observation::Analysed(
                    checks
                        .iter()
                        .map(|name| crate::runtime::bindings::strategy::exports::engine::plugin::strategy::CheckOutcome {
                            name: name.to_string(),
                            verdict: Verdict::Healthy,
                            message: "simulated".into(),
                            measurements: Vec::new(),
                        })
                        .collect(),
                )
            }
            Decision::AwaitApproval(what) => {
                out.timeline.push(format!("await approval: {what}"));
                Observation::Approved
            }
            Decision::Promote => {
                out.timeline.push(format!("promote {}", rollout.candidate));
                Observation::Promoted
            }
            Decision::Retire(revision) => {
                out.timeline.push(format!("retire {revision}"));
                Observation::Retired(revision)
            }
            Decision::Abort(reason) => {
                out.timeline.push(format!("abort: {reason}"));
                return Ok(());
            }
            Decision::Done => {
                for command in &service.post_hooks {
                    out.timeline
                        .push(format!("run post hook (not run in a plan): {command}"));
                }
                out.timeline.push("done".into());
                return Ok(());
            }
        };
    }
    Err(format!(
        "the strategy did not finish within {MAX_STEPS} simulated steps"
    ))
}
