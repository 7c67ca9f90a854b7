//! `engine plan`: what a run would do, without doing it. The executor of `engine run` drives
//! the pipeline, so a plan follows the same decisions a run does (dependencies, the contract,
//! retries, rollbacks), against a simulation:
//!
//! - each platform is the provider's own `read` and `plan` (under a dry-run runtime, see
//!   [`crate::runtime::RuntimeOptions::dry_run`]) with a pretend candidate, traffic kept in
//!   memory, and every health check passing;
//! - the clock jumps over waits, approvals are given, hooks are listed and not run;
//! - checkpoints go to a store in memory.
//!
//! What the strategy decided becomes the service's timeline.

use super::hooks::HookContext;
use super::world::World;
use super::{Event, Observer, Outcome, RunOptions, RunReport};
use crate::config::{Check, Pipeline, Resource, Service, Unit};
use crate::port::{
    Change, CheckReport, CheckRun, Decision, Endpoint, Feature, Observation, Plan, Platform,
    PortError, Ports, ResourcePlatform, ResourceState, Rollout, ServiceState, Step, Strategy,
    TrafficShare, Verdict,
};
use crate::runtime::{LoadedPlugin, PluginPorts};
use crate::state::{Store, now_ms};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The plan of one service, or of one resource.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServicePlan {
    /// The service's name, or the resource's.
    pub service: String,
    /// For a resource, its kind; absent for a service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
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

/// Longest simulated rollout, in strategy steps; a strategy that never finishes is reported.
const MAX_STEPS: usize = 1000;

/// What a plan reads besides the pipeline: the state of earlier runs (none when the pipeline
/// has not run yet), and whether a rejected release would be tried again.
#[derive(Clone, Copy, Default)]
pub struct PlanInputs<'a> {
    pub state: Option<&'a Store>,
    pub retry_rejected: bool,
}

/// Plans every service, in dependency order.
pub async fn plan(
    pipeline: &Pipeline,
    plugins: &BTreeMap<String, LoadedPlugin>,
    inputs: PlanInputs<'_>,
) -> Vec<ServicePlan> {
    simulate(pipeline, &PluginPorts::new(plugins), inputs).await
}

/// Runs the executor over `ports` in a simulation, and reports what it did per service.
pub(crate) async fn simulate(
    pipeline: &Pipeline,
    ports: &dyn Ports,
    inputs: PlanInputs<'_>,
) -> Vec<ServicePlan> {
    let simulation = Simulation::new(pipeline);
    let simulated = SimulatedPorts {
        ports,
        simulation: &simulation,
    };
    let report = match Store::in_memory().await {
        Ok(store) => {
            let options = RunOptions {
                retry_rejected: inputs.retry_rejected,
                ..RunOptions::default()
            };
            let stores = super::Stores {
                run: &store,
                earlier: inputs.state.unwrap_or(&store),
            };
            super::execute_in(
                pipeline,
                &simulated,
                stores,
                &simulation,
                &options,
                &simulation,
            )
            .await
            .map_err(|e| e.to_string())
        }
        Err(e) => Err(format!("cannot simulate the run: {e}")),
    };
    simulation.into_plans(report)
}

/// What the simulated run of `pipeline` has done so far: the plan of each service, and the clock.
struct Simulation<'p> {
    pipeline: &'p Pipeline,
    sheets: Mutex<BTreeMap<String, Sheet>>,
    clock_ms: AtomicU64,
}

/// One service's plan as the run fills it in.
struct Sheet {
    plan: ServicePlan,
    /// The traffic as the simulated platform has it.
    traffic: Vec<TrafficShare>,
    steps: usize,
    /// The strategy itself decided to abort: its rollback is part of the plan, not an error.
    strategy_aborted: bool,
}

impl<'p> Simulation<'p> {
    fn new(pipeline: &'p Pipeline) -> Self {
        let sheet = |unit: &Unit<'_>| Sheet {
            plan: ServicePlan {
                service: unit.name().to_string(),
                resource: match unit {
                    Unit::Service(_) => None,
                    Unit::Resource(r) => Some(r.kind.clone()),
                },
                action: None,
                summary: String::new(),
                changes: Vec::new(),
                timeline: Vec::new(),
                error: None,
            },
            traffic: Vec::new(),
            steps: 0,
            strategy_aborted: false,
        };
        Simulation {
            pipeline,
            sheets: Mutex::new(
                pipeline
                    .units()
                    .iter()
                    .map(|u| (u.name().to_string(), sheet(u)))
                    .collect(),
            ),
            clock_ms: AtomicU64::new(now_ms() as u64),
        }
    }

    fn with_sheet<T>(&self, service: &str, f: impl FnOnce(&mut Sheet) -> T) -> Option<T> {
        let mut sheets = self.sheets.lock().unwrap_or_else(|e| e.into_inner());
        sheets.get_mut(service).map(f)
    }

    fn note(&self, service: &str, line: String) {
        self.with_sheet(service, |sheet| sheet.plan.timeline.push(line));
    }

    /// The plans in dependency order; a run that could not go on at all is every plan's error.
    fn into_plans(self, report: Result<RunReport, String>) -> Vec<ServicePlan> {
        let pipeline = self.pipeline;
        let mut sheets = self.sheets.into_inner().unwrap_or_else(|e| e.into_inner());
        let units = pipeline.units();
        pipeline
            .unit_waves()
            .into_iter()
            .flatten()
            .filter_map(|index| sheets.remove(units[index].name()))
            .map(|mut sheet| {
                if let Err(e) = &report {
                    sheet.plan.error.get_or_insert_with(|| e.clone());
                }
                sheet.plan
            })
            .collect()
    }

    /// Writes the end of a service's rollout into its plan.
    fn finished(&self, service: &str, outcome: &Outcome) {
        self.with_sheet(service, |sheet| {
            let plan = &mut sheet.plan;
            match outcome {
                Outcome::Deployed => plan.timeline.push("done".into()),
                Outcome::Unchanged => {}
                Outcome::RolledBack(_) if sheet.strategy_aborted => {}
                Outcome::RolledBack(reason) => {
                    plan.error = Some(format!("a run would roll back: {reason}"));
                }
                Outcome::Skipped(reason) => {
                    plan.error = Some(format!("not planned, because {reason}"));
                }
                // A contract broken, a strategy or platform call failed: what a run would
                // meet too.
                other => plan.error = other.reason(),
            }
        });
    }

    fn decided(&self, service: &str, decision: &Decision) {
        let line = match decision {
            Decision::SetTraffic(split) => format!("set traffic: {}", describe(split)),
            Decision::Wait(ms) => format!(
                "wait {}",
                humantime::format_duration(Duration::from_millis(*ms))
            ),
            Decision::Analyse(request) => {
                let service = self.pipeline.service(service).ok();
                let all = service.map_or(&[][..], |s| s.checks.as_slice());
                let checks: Vec<String> = Check::selected(all, &request.checks)
                    .map(|c| match c.delay {
                        Duration::ZERO => c.name.clone(),
                        delay => {
                            format!("{} (after {})", c.name, humantime::format_duration(delay))
                        }
                    })
                    .collect();
                if checks.is_empty() {
                    format!("analyse {} (no checks configured)", request.revision)
                } else {
                    format!("analyse {}: {}", request.revision, checks.join(", "))
                }
            }
            Decision::AwaitApproval(what) => format!("await approval: {what}"),
            Decision::Promote => format!("promote {}", planned_candidate(service)),
            Decision::Retire(revision) => format!("retire {revision}"),
            Decision::Abort(reason) => format!("abort: {reason}"),
            // Written when the service finishes, after its post hooks.
            Decision::Done => return,
        };
        self.with_sheet(service, |sheet| {
            sheet.steps += 1;
            sheet.strategy_aborted |= matches!(decision, Decision::Abort(_));
            sheet.plan.timeline.push(line);
        });
    }
}

impl Observer for Simulation<'_> {
    fn event(&self, event: &Event) {
        match event {
            Event::Decided { service, decision } => self.decided(service, decision),
            Event::Finished(report) => self.finished(&report.service, &report.outcome),
            Event::Started { .. } | Event::Phase { .. } | Event::Check { .. } => {}
        }
    }
}

#[async_trait::async_trait]
impl World for Simulation<'_> {
    fn now_ms(&self) -> u64 {
        self.clock_ms.load(Ordering::Relaxed)
    }

    /// Time jumps: a wait of an hour is over at once.
    async fn wait_until(&self, until_ms: u64, _interrupt: &CancellationToken) -> bool {
        self.clock_ms.fetch_max(until_ms, Ordering::Relaxed);
        true
    }

    /// Hooks are the author's own commands, outside the sandbox: a plan lists, never runs them.
    async fn run_hook(
        &self,
        command: &str,
        _directory: &Path,
        context: &HookContext<'_>,
        _timeout: Duration,
    ) -> Result<(), String> {
        let stage = context.stage.label();
        let line = format!("run {stage} hook (not run in a plan): {command}");
        self.note(context.service, line);
        Ok(())
    }

    fn approves_at_once(&self) -> bool {
        true
    }

    fn simulated(&self) -> bool {
        true
    }
}

/// The pipeline's ports, with each platform simulated past its `read` and `plan`.
struct SimulatedPorts<'a> {
    ports: &'a dyn Ports,
    simulation: &'a Simulation<'a>,
}

impl Ports for SimulatedPorts<'_> {
    fn platform<'a>(&'a self, service: &'a Service) -> Result<Box<dyn Platform + 'a>, PortError> {
        Ok(Box::new(SimulatedPlatform {
            real: self.ports.platform(service)?,
            service,
            simulation: self.simulation,
        }))
    }

    fn strategy<'a>(&'a self, service: &'a Service) -> Result<Box<dyn Strategy + 'a>, PortError> {
        Ok(Box::new(BoundedStrategy {
            real: self.ports.strategy(service)?,
            service: &service.name,
            simulation: self.simulation,
        }))
    }

    fn resource<'a>(
        &'a self,
        resource: &'a Resource,
    ) -> Result<Box<dyn ResourcePlatform + 'a>, PortError> {
        Ok(Box::new(SimulatedResource {
            real: self.ports.resource(resource)?,
            resource,
            simulation: self.simulation,
        }))
    }
}

/// A resource that is read and planned for real, and applied in pretence only.
struct SimulatedResource<'a> {
    real: Box<dyn ResourcePlatform + 'a>,
    resource: &'a Resource,
    simulation: &'a Simulation<'a>,
}

#[async_trait::async_trait]
impl ResourcePlatform for SimulatedResource<'_> {
    async fn read(&self) -> Result<Option<ResourceState>, PortError> {
        self.real.read().await
    }

    async fn plan(&self, current: Option<&ResourceState>) -> Result<Plan, PortError> {
        let plan = self.real.plan(current).await?;
        self.simulation.with_sheet(&self.resource.name, |sheet| {
            sheet.plan.action = Some(plan.action.label().into());
            sheet.plan.summary = plan.summary.clone();
            sheet.plan.changes = plan.changes.clone();
            sheet
                .plan
                .timeline
                .push(format!("{} {}", plan.action.label(), self.resource.kind));
        });
        Ok(plan)
    }

    /// What exists stays as it is; what does not has no outputs yet (its dependents' plans show
    /// stand-ins).
    async fn apply(&self, current: Option<&ResourceState>) -> Result<ResourceState, PortError> {
        Ok(current.cloned().unwrap_or_else(|| ResourceState {
            id: format!("{}-planned", self.resource.name),
            observed: "{}".into(),
            outputs: Default::default(),
        }))
    }

    async fn delete(&self) -> Result<(), PortError> {
        Ok(())
    }
}

/// A platform that reads and plans for real, and pretends the rest.
struct SimulatedPlatform<'a> {
    real: Box<dyn Platform + 'a>,
    service: &'a Service,
    simulation: &'a Simulation<'a>,
}

impl SimulatedPlatform<'_> {
    fn sheet<T>(&self, f: impl FnOnce(&mut Sheet) -> T) -> Option<T> {
        self.simulation.with_sheet(&self.service.name, f)
    }
}

#[async_trait::async_trait]
impl Platform for SimulatedPlatform<'_> {
    fn features(&self) -> Vec<Feature> {
        self.real.features()
    }

    async fn read(&self) -> Result<Option<ServiceState>, PortError> {
        let current = self.real.read().await?;
        let traffic = current.as_ref().map(|c| c.traffic.clone());
        self.sheet(|sheet| sheet.traffic = traffic.unwrap_or_default());
        Ok(current)
    }

    async fn plan(&self, current: Option<&ServiceState>) -> Result<Plan, PortError> {
        let plan = self.real.plan(current).await?;
        self.sheet(|sheet| {
            sheet.plan.action = Some(plan.action.label().into());
            sheet.plan.summary = plan.summary.clone();
            sheet.plan.changes = plan.changes.clone();
        });
        Ok(plan)
    }

    async fn deploy(&self, _deployment_id: &str) -> Result<String, PortError> {
        Ok(planned_candidate(&self.service.name))
    }

    async fn set_traffic(&self, split: &[TrafficShare]) -> Result<(), PortError> {
        self.sheet(|sheet| sheet.traffic = split.to_vec());
        Ok(())
    }

    async fn get_traffic(&self) -> Result<Vec<TrafficShare>, PortError> {
        Ok(self
            .sheet(|sheet| sheet.traffic.clone())
            .unwrap_or_default())
    }

    async fn endpoints(&self, _revision: Option<&str>) -> Result<Vec<Endpoint>, PortError> {
        Ok(Vec::new())
    }

    async fn retire(&self, _revision: &str) -> Result<(), PortError> {
        Ok(())
    }

    async fn destroy(&self) -> Result<(), PortError> {
        Ok(())
    }

    /// Every check passes in a plan.
    async fn analyse(
        &self,
        _revision: &str,
        checks: &[String],
        _since: u64,
        each: &(dyn for<'r> Fn(&'r CheckRun) + Sync),
    ) -> Vec<CheckRun> {
        let passed = |check: &Check| CheckRun {
            check: check.name.clone(),
            result: Ok(CheckReport {
                verdict: Verdict::Healthy,
                message: "simulated".into(),
            }),
        };
        let runs: Vec<CheckRun> = Check::selected(&self.service.checks, checks)
            .map(passed)
            .collect();
        runs.iter().for_each(each);
        runs
    }
}

/// The service's strategy, stopped once a simulated rollout runs past [`MAX_STEPS`].
struct BoundedStrategy<'a> {
    real: Box<dyn Strategy + 'a>,
    service: &'a str,
    simulation: &'a Simulation<'a>,
}

#[async_trait::async_trait]
impl Strategy for BoundedStrategy<'_> {
    async fn step(
        &self,
        rollout: &Rollout,
        state: Option<&str>,
        observation: &Observation,
        now_ms: u64,
    ) -> Result<Step, PortError> {
        let steps = self.simulation.with_sheet(self.service, |s| s.steps);
        if steps.unwrap_or(0) >= MAX_STEPS {
            return Err(PortError::permanent(format!(
                "the strategy did not finish within {MAX_STEPS} simulated steps"
            )));
        }
        self.real.step(rollout, state, observation, now_ms).await
    }
}

/// The revision a plan pretends to deploy.
fn planned_candidate(service: &str) -> String {
    format!("{service}-planned")
}

fn describe(split: &[TrafficShare]) -> String {
    split
        .iter()
        .map(|t| format!("{} {}%", t.revision, t.percent))
        .collect::<Vec<_>>()
        .join(", ")
}
