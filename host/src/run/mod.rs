//! The executor: deploys a validated pipeline's services in dependency order, each through its
//! provider and strategy, with health analysis, rollback on abort and a checkpoint after every
//! step.
//!
//! Data flows one way: the caller validates the pipeline ([`crate::config`]) and loads its
//! plugins ([`crate::runtime::check_plugins`]), takes the lock in the [`Store`], and hands all
//! three to [`execute`], which reports to an [`Observer`].
//!
//! A CI runner that embeds the engine instead of running the `engine` binary does the same as
//! `engine run`:
//!
//! ```no_run
//! use engine::run::{Event, Observer, RunOptions};
//! use engine::runtime::{Runtime, RuntimeOptions};
//! use engine::state::{Holder, Location, Store};
//! use std::path::Path;
//!
//! struct Log;
//! impl Observer for Log {
//!     fn event(&self, event: &Event) {
//!         println!("{event:?}");
//!     }
//! }
//!
//! # async fn deploy() -> anyhow::Result<()> {
//! let file = Path::new("pipeline.toml");
//! let pipeline = engine::config::load(file, Some("staging"))?; // every problem, with spans
//! let runtime = Runtime::new(RuntimeOptions::default())?;
//! let plugins = engine::runtime::check_plugins(&pipeline, &runtime).await?;
//! // Or Location::parse("postgres://…") for state shared by several CI machines.
//! let store = Store::connect(&Location::beside(file)).await?;
//! let lock = store.lock(&pipeline.name, "staging", &Holder::this_process("my CI runner")).await?;
//! let report = engine::run::execute(&pipeline, &plugins, &store, &Log, &RunOptions::default()).await;
//! store.unlock(lock).await?; // whatever happened (cancel `RunOptions::interrupt` to stop at a checkpoint)
//! let report = report?;
//! println!("succeeded: {}", report.succeeded());
//! # Ok(()) }
//! ```

pub mod admin;
pub mod checkpoint;
pub mod contract;
mod hooks;
pub mod plan;
mod references;
mod rejected;
mod resource;
mod rollout;
mod world;

#[cfg(test)]
mod executor_tests;
#[cfg(test)]
mod memory;

use crate::config::{Pipeline, Service, Unit};
use crate::port::Ports;
use crate::runtime::{LoadedPlugin, PluginPorts};
use crate::state::{StateError, Store};
use checkpoint::{Checkpoint, Finished};
use futures::stream::{FuturesUnordered, StreamExt};
use rollout::Executor;
pub(crate) use rollout::{retry, verify_split};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use world::{RealWorld, World};

/// How to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Services rolled out at the same time, at most.
    pub concurrency: usize,
    /// Stop starting services after the first failure (independent branches otherwise go on).
    pub fail_fast: bool,
    /// Longest wait a strategy may ask for in one step.
    pub max_wait: Duration,
    /// Longest a pre or post hook may run.
    pub hook_timeout: Duration,
    /// Cancel it to stop the run (on a signal): no new service, step or hook starts, each
    /// rollout stops at its next checkpoint (a plugin call or hook under way finishes first),
    /// and the run stays open for the next one to resume.
    pub interrupt: CancellationToken,
    /// Deploy a release again although the service's last attempt at it was rejected (rolled
    /// back, or refused by the platform); without it such a service fails with the reason.
    pub retry_rejected: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            concurrency: 4,
            fail_fast: false,
            max_wait: Duration::from_secs(3600),
            hook_timeout: Duration::from_secs(30 * 60),
            interrupt: CancellationToken::new(),
            retry_rejected: false,
        }
    }
}

/// How a service ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The new revision takes the traffic.
    Deployed,
    /// Nothing to change.
    Unchanged,
    /// The rollout was aborted and the previous traffic restored.
    RolledBack(String),
    /// It failed before or without a rollback.
    Failed(String),
    /// Not attempted, because a dependency did not deploy (or `--fail-fast`).
    Skipped(SkipReason),
    /// Paused until a person runs `engine promote` or `engine abort`; says what to approve.
    AwaitingApproval(String),
    /// Stopped at a checkpoint because the run was interrupted; says where. The next run
    /// resumes it.
    Interrupted(String),
}

impl Outcome {
    pub fn succeeded(&self) -> bool {
        matches!(self, Outcome::Deployed | Outcome::Unchanged)
    }

    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Deployed => "deployed",
            Outcome::Unchanged => "unchanged",
            Outcome::RolledBack(_) => "rolled-back",
            Outcome::Failed(_) => "failed",
            Outcome::Skipped(_) => "skipped",
            Outcome::AwaitingApproval(_) => "awaiting-approval",
            Outcome::Interrupted(_) => "interrupted",
        }
    }

    pub fn reason(&self) -> Option<String> {
        match self {
            Outcome::RolledBack(r)
            | Outcome::Failed(r)
            | Outcome::AwaitingApproval(r)
            | Outcome::Interrupted(r) => Some(r.clone()),
            Outcome::Skipped(skip) => Some(skip.to_string()),
            _ => None,
        }
    }

    /// It went wrong: failed, rolled back, or skipped because something else went wrong. A
    /// service that waits (for approval, for a dependency's approval, for the next run after an
    /// interruption) has not failed.
    pub fn is_failure(&self) -> bool {
        match self {
            Outcome::Deployed | Outcome::Unchanged => false,
            Outcome::AwaitingApproval(_) | Outcome::Interrupted(_) => false,
            Outcome::Skipped(SkipReason::DependencyAwaitingApproval { .. }) => false,
            Outcome::RolledBack(_) | Outcome::Failed(_) | Outcome::Skipped(_) => true,
        }
    }
}

/// Why a service was not attempted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// A dependency ended with this outcome label (`failed`, `rolled-back`, `skipped`…).
    Dependency {
        service: String,
        outcome: &'static str,
    },
    /// A dependency waits for approval: this service follows once it is promoted.
    DependencyAwaitingApproval { service: String },
    /// An earlier service failed and `--fail-fast` is set.
    FailFast,
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SkipReason::Dependency { service, outcome } => {
                write!(f, "dependency `{service}` {outcome}")
            }
            SkipReason::DependencyAwaitingApproval { service } => {
                write!(f, "dependency `{service}` is awaiting approval")
            }
            SkipReason::FailFast => write!(f, "an earlier service failed and --fail-fast is set"),
        }
    }
}

/// One service (or resource) in the final report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceReport {
    /// The service's name, or the resource's.
    pub service: String,
    /// For a resource, its kind (`scheduler-job`); `None` for a service.
    pub resource: Option<String>,
    pub outcome: Outcome,
    pub revision: Option<String>,
    /// The candidate's share of traffic at the end.
    pub traffic: u8,
    pub checks_passed: u32,
    pub checks_run: u32,
    pub elapsed: Duration,
    /// Problems that did not change the outcome (a promoted release whose old revision would
    /// not retire).
    pub warnings: Vec<String>,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReport {
    pub run_id: i64,
    pub resumed: bool,
    pub services: Vec<ServiceReport>,
}

impl RunReport {
    pub fn succeeded(&self) -> bool {
        self.services.iter().all(|s| s.outcome.succeeded())
    }

    /// Some services failed, were rolled back or skipped for a reason other than waiting.
    pub fn failed(&self) -> bool {
        self.services.iter().any(|s| s.outcome.is_failure())
    }

    /// Services stopped because the run was interrupted (the run stays open, and the next one
    /// resumes them).
    pub fn interrupted(&self) -> Vec<&ServiceReport> {
        self.services
            .iter()
            .filter(|s| matches!(s.outcome, Outcome::Interrupted(_)))
            .collect()
    }

    /// Services paused for approval (the run stays open, and resumes after `engine promote`).
    pub fn awaiting_approval(&self) -> Vec<&ServiceReport> {
        self.services
            .iter()
            .filter(|s| matches!(s.outcome, Outcome::AwaitingApproval(_)))
            .collect()
    }
}

/// Something that happened during a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Started {
        run_id: i64,
        resumed: bool,
        services: usize,
    },
    /// A service entered a phase (`planning`, `deploying`, the strategy's own labels…).
    Phase {
        service: String,
        phase: String,
        traffic: u8,
    },
    /// A health check finished.
    Check {
        service: String,
        check: String,
        verdict: String,
        message: String,
    },
    /// The strategy decided the next step of a service's rollout (checked against the
    /// contract); the executor carries it out next.
    Decided {
        service: String,
        decision: crate::port::Decision,
    },
    /// A service finished.
    Finished(ServiceReport),
}

/// Receives events as they happen.
pub trait Observer: Send + Sync {
    fn event(&self, event: &Event);
}

/// A run that could not go on at all (as opposed to a service that failed).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("plugin `{0}` is used by the pipeline but was not loaded")]
    MissingPlugin(String),
    #[error(
        "services {0} wait on dependencies that can never finish (a dependency cycle or an unknown service)"
    )]
    Stuck(String),
}

/// Kills the hooks still running, with what they started: for a process about to end at once
/// (the `engine` binary's answer to a second signal).
pub fn kill_running_hooks() {
    hooks::kill_running();
}

/// Runs the pipeline. `plugins` are the pipeline's plugins, loaded; the caller holds the lock.
pub async fn execute(
    pipeline: &Pipeline,
    plugins: &BTreeMap<String, LoadedPlugin>,
    store: &Store,
    observer: &dyn Observer,
    options: &RunOptions,
) -> Result<RunReport, RunError> {
    let uses = pipeline.services.iter().flat_map(Service::plugin_uses);
    let uses = uses.map(|u| u.plugin);
    let mut used = uses.chain(pipeline.resources.iter().map(|r| r.provider.as_str()));
    if let Some(missing) = used.find(|p| !plugins.contains_key(*p)) {
        return Err(RunError::MissingPlugin(missing.to_string()));
    }
    execute_with(
        pipeline,
        &PluginPorts::new(plugins),
        store,
        observer,
        options,
    )
    .await
}

/// Runs the pipeline through `ports` (plugins, or platforms and strategies of a test's own);
/// the caller holds the lock.
pub async fn execute_with(
    pipeline: &Pipeline,
    ports: &dyn Ports,
    store: &Store,
    observer: &dyn Observer,
    options: &RunOptions,
) -> Result<RunReport, RunError> {
    let stores = Stores {
        run: store,
        earlier: store,
    };
    execute_in(pipeline, ports, stores, observer, options, &RealWorld).await
}

/// Where a run writes, and where it reads what earlier runs did.
#[derive(Clone, Copy)]
pub(crate) struct Stores<'a> {
    /// Runs, checkpoints and history rows of this run.
    pub run: &'a Store,
    /// The history of earlier runs (rejected releases, revisions left behind): the same store
    /// in a run; in a plan, the real state, only read, while the simulation writes in memory.
    pub earlier: &'a Store,
}

/// Runs the pipeline in `world`: the real one, or the simulation of `engine plan`.
pub(crate) async fn execute_in(
    pipeline: &Pipeline,
    ports: &dyn Ports,
    stores: Stores<'_>,
    observer: &dyn Observer,
    options: &RunOptions,
    world: &dyn World,
) -> Result<RunReport, RunError> {
    let environment = pipeline
        .environment
        .clone()
        .unwrap_or_else(|| "default".into());
    let store = stores.run;
    let (run_id, resumed) = store.begin_run(&pipeline.name, &environment).await?;
    observer.event(&Event::Started {
        run_id,
        resumed,
        services: pipeline.services.len() + pipeline.resources.len(),
    });
    let executor = Executor {
        pipeline,
        ports,
        store,
        earlier: stores.earlier,
        observer,
        options,
        world,
        run_id,
        environment,
        state_failed: AtomicBool::new(false),
        known: references::Known::default(),
    };
    let mut reports = roll_out_all(&executor).await?;
    let report = RunReport {
        run_id,
        resumed,
        services: pipeline
            .units()
            .iter()
            .map(|u| reports.remove(u.name()).expect("every unit reported"))
            .collect(),
    };
    // A run with a rollout waiting for approval stays open: the next `engine run` (or
    // `engine promote`) resumes it. So does an interrupted one.
    if report.awaiting_approval().is_empty()
        && report.interrupted().is_empty()
        && !executor.state_failed.load(Ordering::Relaxed)
    {
        let outcome = if report.succeeded() {
            "deployed"
        } else {
            "failed"
        };
        store.finish_run(run_id, outcome).await?;
    }
    Ok(report)
}

/// Rolls out every service once its dependencies have settled, a few at a time, and returns
/// how each ended.
async fn roll_out_all(
    executor: &Executor<'_>,
) -> Result<BTreeMap<String, ServiceReport>, RunError> {
    let options = executor.options;
    let mut schedule = Schedule::new(executor.pipeline, executor.observer);
    let mut running = FuturesUnordered::new();
    loop {
        let settled_before = schedule.reports.len() + running.len();
        if options.interrupt.is_cancelled() {
            schedule.interrupt_the_rest();
        }
        while running.len() < options.concurrency.max(1) {
            match schedule.next_ready(options.fail_fast) {
                Some(unit) => running.push(executor.unit(unit)),
                None => break,
            }
        }
        match running.next().await {
            Some(report) => schedule.settle(report),
            None if schedule.all_settled() => return Ok(schedule.reports),
            // Skips settled more services: look again.
            None if schedule.reports.len() > settled_before => continue,
            // Nothing runs and nothing can start: only a dependency cycle or an unknown
            // dependency does that, and validation rejects both, so this is a bug to report.
            None => return Err(RunError::Stuck(schedule.unsettled())),
        }
    }
}

/// Which services and resources have started, and how those that ended, ended.
struct Schedule<'p> {
    units: Vec<Unit<'p>>,
    observer: &'p dyn Observer,
    reports: BTreeMap<String, ServiceReport>,
    started: BTreeSet<String>,
    failed_any: bool,
}

impl<'p> Schedule<'p> {
    fn new(pipeline: &'p Pipeline, observer: &'p dyn Observer) -> Self {
        Schedule {
            units: pipeline.units(),
            observer,
            reports: BTreeMap::new(),
            started: BTreeSet::new(),
            failed_any: false,
        }
    }

    fn settle(&mut self, report: ServiceReport) {
        self.failed_any |= report.outcome.is_failure();
        self.observer.event(&Event::Finished(report.clone()));
        self.reports.insert(report.service.clone(), report);
    }

    /// Reports every unit that has not started as interrupted before it started.
    fn interrupt_the_rest(&mut self) {
        for unit in self.units.clone() {
            if self.started.insert(unit.name().to_string()) {
                self.settle(not_started(unit));
            }
        }
    }

    /// The next unit whose dependencies have settled and allow it to start; the units they
    /// forbid to start are settled as skipped on the way.
    fn next_ready(&mut self, fail_fast: bool) -> Option<Unit<'p>> {
        for unit in self.units.clone() {
            if self.started.contains(unit.name()) {
                continue;
            }
            let deps: Vec<&ServiceReport> = unit
                .depends_on()
                .iter()
                .filter_map(|d| self.reports.get(d))
                .collect();
            if deps.len() < unit.depends_on().len() {
                continue;
            }
            self.started.insert(unit.name().to_string());
            match skip_reason(&deps, self.failed_any && fail_fast) {
                Some(reason) => self.settle(skipped(unit, reason)),
                None => return Some(unit),
            }
        }
        None
    }

    fn all_settled(&self) -> bool {
        self.reports.len() == self.units.len()
    }

    fn unsettled(&self) -> String {
        let waiting: Vec<&str> = self
            .units
            .iter()
            .filter(|u| !self.reports.contains_key(u.name()))
            .map(|u| u.name())
            .collect();
        waiting.join(", ")
    }
}

/// Why a service whose dependencies ended as `deps` must not start, if it must not. A
/// dependency that went wrong decides before one that waits for approval (directly, or
/// through its own dependencies): that one is waiting, not a failure.
fn skip_reason(deps: &[&ServiceReport], fail_fast_tripped: bool) -> Option<SkipReason> {
    let went_wrong = deps.iter().find(|d| d.outcome.is_failure());
    let waiting = deps.iter().find_map(|d| match &d.outcome {
        Outcome::AwaitingApproval(_) => Some(d.service.clone()),
        Outcome::Skipped(SkipReason::DependencyAwaitingApproval { service }) => {
            Some(service.clone())
        }
        _ => None,
    });
    let not_done = deps.iter().find(|d| !d.outcome.succeeded());
    match (went_wrong, waiting, not_done) {
        (Some(d), _, _) | (None, None, Some(d)) => Some(SkipReason::Dependency {
            service: d.service.clone(),
            outcome: d.outcome.label(),
        }),
        (None, Some(service), _) => Some(SkipReason::DependencyAwaitingApproval { service }),
        (None, None, None) if fail_fast_tripped => Some(SkipReason::FailFast),
        (None, None, None) => None,
    }
}

fn skipped(unit: Unit<'_>, reason: SkipReason) -> ServiceReport {
    ServiceReport {
        outcome: Outcome::Skipped(reason),
        ..not_started(unit)
    }
}

/// A unit the run was interrupted before it started.
fn not_started(unit: Unit<'_>) -> ServiceReport {
    ServiceReport {
        service: unit.name().to_string(),
        resource: match unit {
            Unit::Service(_) => None,
            Unit::Resource(r) => Some(r.kind.clone()),
        },
        outcome: Outcome::Interrupted("the run was interrupted before it started".into()),
        revision: None,
        traffic: 0,
        checks_passed: 0,
        checks_run: 0,
        elapsed: Duration::ZERO,
        warnings: Vec::new(),
    }
}

/// A service's checkpoint in a run (the default one when it has not started).
pub async fn load_checkpoint(
    store: &Store,
    run_id: i64,
    service: &str,
) -> Result<Checkpoint, String> {
    match store
        .checkpoint(run_id, service)
        .await
        .map_err(|e| e.to_string())?
    {
        Some(text) => Checkpoint::parse(&text)
            .map_err(|e| format!("unreadable checkpoint of `{service}`: {e}")),
        None => Ok(Checkpoint::default()),
    }
}

/// Stores a service's checkpoint in a run, replacing the previous one.
pub(crate) async fn save_checkpoint(
    store: &Store,
    run_id: i64,
    service: &str,
    checkpoint: &Checkpoint,
) -> Result<(), String> {
    store
        .save_checkpoint(run_id, service, &checkpoint.to_json())
        .await
        .map_err(|e| e.to_string())
}

impl From<Finished> for Outcome {
    fn from(finished: Finished) -> Outcome {
        match finished {
            Finished::Deployed => Outcome::Deployed,
            Finished::Unchanged => Outcome::Unchanged,
            Finished::RolledBack(r) => Outcome::RolledBack(r),
            Finished::Failed(r) => Outcome::Failed(r),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_went_wrong_is_a_failure_and_waiting_is_not() {
        let dependency = |outcome| SkipReason::Dependency {
            service: "db".into(),
            outcome,
        };
        let waiting = SkipReason::DependencyAwaitingApproval {
            service: "db".into(),
        };
        assert_eq!(
            Outcome::Skipped(waiting.clone()).reason().as_deref(),
            Some("dependency `db` is awaiting approval")
        );
        for (outcome, failure) in [
            (Outcome::Deployed, false),
            (Outcome::Unchanged, false),
            (Outcome::AwaitingApproval("promote".into()), false),
            (Outcome::Interrupted("stopped".into()), false),
            (Outcome::Skipped(waiting), false),
            (Outcome::Skipped(dependency("failed")), true),
            (Outcome::Skipped(SkipReason::FailFast), true),
            (Outcome::RolledBack("checks failed".into()), true),
            (Outcome::Failed("deploy failed".into()), true),
        ] {
            assert_eq!(outcome.is_failure(), failure, "{outcome:?}");
        }
    }
}
