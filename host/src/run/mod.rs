//! The executor: deploys a validated pipeline's services in dependency order, each through its
//! provider and strategy, with health analysis, rollback on abort and a checkpoint after every
//! step.
//!
//! Data flows one way: the caller validates the pipeline ([`crate::config`]) and loads its
//! plugins ([`crate::config::check_plugins`]), takes the lock in the [`Store`], and hands all
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
//! let plugins = engine::config::check_plugins(&pipeline, &runtime).await?;
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

#[cfg(test)]
mod executor_tests;
#[cfg(test)]
mod memory;

use crate::config::{Pipeline, Service};
use crate::port::{
    AnalysisRequest, Decision, EndpointKind, PlanAction, Platform, PortError, Ports, Rollout,
    ServiceState, TrafficShare, Verdict,
};
use crate::runtime::{LoadedPlugin, PluginPorts};
use crate::state::{HistoryEntry, RevisionRecord, StateError, Store, now_ms};
use checkpoint::{CheckSeen, Checkpoint, Finished, Observed, split_pairs, split_targets};
use futures::stream::{FuturesUnordered, StreamExt};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

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
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            concurrency: 4,
            fail_fast: false,
            max_wait: Duration::from_secs(3600),
            hook_timeout: Duration::from_secs(30 * 60),
            interrupt: CancellationToken::new(),
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

/// One service in the final report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceReport {
    pub service: String,
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

/// Runs the pipeline. `plugins` are the pipeline's plugins, loaded; the caller holds the lock.
pub async fn execute(
    pipeline: &Pipeline,
    plugins: &BTreeMap<String, LoadedPlugin>,
    store: &Store,
    observer: &dyn Observer,
    options: &RunOptions,
) -> Result<RunReport, RunError> {
    for s in &pipeline.services {
        for name in std::iter::once(&s.provider)
            .chain([&s.strategy])
            .chain(s.checks.iter().map(|c| &c.plugin))
        {
            if !plugins.contains_key(name) {
                return Err(RunError::MissingPlugin(name.clone()));
            }
        }
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
    let environment = pipeline
        .environment
        .clone()
        .unwrap_or_else(|| "default".into());
    let (run_id, resumed) = store.begin_run(&pipeline.name, &environment).await?;
    observer.event(&Event::Started {
        run_id,
        resumed,
        services: pipeline.services.len(),
    });
    let executor = Executor {
        pipeline,
        ports,
        store,
        observer,
        options,
        run_id,
        environment,
        state_failed: AtomicBool::new(false),
    };

    let mut reports: BTreeMap<String, ServiceReport> = BTreeMap::new();
    let mut started = BTreeSet::new();
    let mut running = FuturesUnordered::new();
    let mut failed_any = false;
    loop {
        let settled_before = reports.len() + running.len();
        if options.interrupt.is_cancelled() {
            for service in pipeline
                .services
                .iter()
                .filter(|s| started.insert(s.name.clone()))
            {
                let report = not_started(service);
                observer.event(&Event::Finished(report.clone()));
                reports.insert(service.name.clone(), report);
            }
        }
        // Start every service whose dependencies are settled, up to the concurrency limit.
        for service in &pipeline.services {
            if started.contains(&service.name) || running.len() >= options.concurrency.max(1) {
                continue;
            }
            let deps: Vec<&ServiceReport> = service
                .depends_on
                .iter()
                .filter_map(|d| reports.get(d))
                .collect();
            if deps.len() < service.depends_on.len() {
                continue;
            }
            started.insert(service.name.clone());
            if let Some(reason) = skip_reason(&deps, failed_any && options.fail_fast) {
                let report = skipped(service, reason);
                observer.event(&Event::Finished(report.clone()));
                reports.insert(service.name.clone(), report);
                continue;
            }
            running.push(executor.service(service));
        }
        match running.next().await {
            Some(report) => {
                failed_any |= report.outcome.is_failure();
                observer.event(&Event::Finished(report.clone()));
                reports.insert(report.service.clone(), report);
            }
            None if reports.len() == pipeline.services.len() => break,
            // Skips settled more services: look again.
            None if reports.len() > settled_before => continue,
            // Nothing runs and nothing can start: only a dependency cycle or an unknown
            // dependency does that, and validation rejects both, so this is a bug to report.
            None => {
                let waiting: Vec<&str> = pipeline
                    .services
                    .iter()
                    .filter(|s| !reports.contains_key(&s.name))
                    .map(|s| s.name.as_str())
                    .collect();
                return Err(RunError::Stuck(waiting.join(", ")));
            }
        }
    }
    drop(running);
    let report = RunReport {
        run_id,
        resumed,
        services: pipeline
            .services
            .iter()
            .map(|s| reports.remove(&s.name).expect("every service reported"))
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
        executor.store.finish_run(run_id, outcome).await?;
    }
    Ok(report)
}

/// The revisions on the platform that this engine left behind: it deployed them (they have a
/// history), their latest record is an abort or a failed retirement, and they take no traffic.
fn leftovers(history: &[RevisionRecord], current: &ServiceState) -> Vec<String> {
    let serving: BTreeSet<&str> = current
        .traffic
        .iter()
        .filter(|t| t.percent > 0)
        .map(|t| t.revision.as_str())
        .collect();
    // Newest first: the first record of a revision is its latest.
    let latest = |id: &str| history.iter().find(|r| r.revision == id);
    current
        .revisions
        .iter()
        .map(|r| r.id.as_str())
        .filter(|id| !serving.contains(id))
        .filter(|id| {
            latest(id).is_some_and(|r| r.outcome == "aborted" || r.outcome == "retire-failed")
        })
        .map(String::from)
        .collect()
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

fn skipped(service: &Service, reason: SkipReason) -> ServiceReport {
    ServiceReport {
        outcome: Outcome::Skipped(reason),
        ..not_started(service)
    }
}

/// A service the run was interrupted before it started.
fn not_started(service: &Service) -> ServiceReport {
    ServiceReport {
        service: service.name.clone(),
        outcome: Outcome::Interrupted("the run was interrupted before it started".into()),
        revision: None,
        traffic: 0,
        checks_passed: 0,
        checks_run: 0,
        elapsed: Duration::ZERO,
        warnings: Vec::new(),
    }
}

struct Executor<'a> {
    pipeline: &'a Pipeline,
    ports: &'a dyn Ports,
    store: &'a Store,
    observer: &'a dyn Observer,
    options: &'a RunOptions,
    run_id: i64,
    environment: String,
    /// A checkpoint or history write failed: the run is left open, so that the next run
    /// resumes from the last step that was saved instead of trusting a state that missed one.
    state_failed: AtomicBool,
}

/// When a service's hooks run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HookStage {
    /// Before the new revision is deployed.
    Pre,
    /// After it was promoted.
    Post,
}

impl HookStage {
    fn label(self) -> &'static str {
        match self {
            HookStage::Pre => "pre",
            HookStage::Post => "post",
        }
    }
}

/// Why a stage of hooks did not complete.
enum HookStop {
    /// A hook failed; the message says how.
    Failed(String),
    /// The run was interrupted before the stage completed.
    Interrupted,
}

/// Per-service counters for the report.
#[derive(Default)]
struct Tally {
    checks_passed: u32,
    checks_run: u32,
}

/// A rollout's result: how it ended and its last checkpoint, or why it could not go on.
type RolloutResult = Result<(Outcome, Checkpoint), (String, Checkpoint)>;

impl Executor<'_> {
    async fn save(&self, service: &str, checkpoint: &Checkpoint) -> Result<(), String> {
        let saved = save_checkpoint(self.store, self.run_id, service, checkpoint).await;
        saved.map_err(|e| self.state_lost(e))
    }

    /// Marks the run as one to resume, and says so in the service's reason.
    fn state_lost(&self, error: String) -> String {
        self.state_failed.store(true, Ordering::Relaxed);
        format!(
            "{error}; the run stays open: once the state can be written, the next `engine run` resumes from the last step saved"
        )
    }

    async fn load(&self, service: &str) -> Result<Checkpoint, String> {
        load_checkpoint(self.store, self.run_id, service).await
    }

    /// Saves the checkpoint together with the history row of the step it completes (one
    /// transaction). A row that cannot be written fails the step like a checkpoint would.
    async fn save_recording(
        &self,
        service: &str,
        checkpoint: &Checkpoint,
        record: Option<RevisionRecord>,
    ) -> Result<(), String> {
        let Some(record) = record else {
            return self.save(service, checkpoint).await;
        };
        let text = serde_json::to_string(checkpoint).expect("checkpoints serialise");
        let entry = HistoryEntry {
            pipeline: &self.pipeline.name,
            environment: &self.environment,
            service,
            record: &record,
        };
        self.store
            .save_checkpoint_and_record(self.run_id, &text, &entry)
            .await
            .map_err(|e| self.state_lost(format!("cannot record the history of `{service}`: {e}")))
    }

    /// A history row of this run.
    fn history_row(
        &self,
        revision: &str,
        traffic: u8,
        outcome: &str,
        detail: Option<String>,
    ) -> RevisionRecord {
        RevisionRecord {
            revision: revision.into(),
            run_id: Some(self.run_id),
            recorded_ms: now_ms(),
            traffic,
            outcome: outcome.into(),
            detail,
        }
    }

    fn phase(&self, service: &str, phase: &str, traffic: u8) {
        self.observer.event(&Event::Phase {
            service: service.into(),
            phase: phase.into(),
            traffic,
        });
    }

    /// Ends a service with `finished`, stored so a resumed run reports it without redoing it.
    async fn finish(&self, service: &str, cp: Checkpoint, finished: Finished) -> RolloutResult {
        self.finish_recording(service, cp, finished, None).await
    }

    async fn finish_recording(
        &self,
        service: &str,
        mut cp: Checkpoint,
        finished: Finished,
        record: Option<RevisionRecord>,
    ) -> RolloutResult {
        cp.outcome = Some(finished.clone());
        cp.pending = None;
        self.save_recording(service, &cp, record)
            .await
            .map_err(|e| (e, cp.clone()))?;
        Ok((finished.into(), cp))
    }

    /// Runs one stage of a service's hooks, in order, stopping at the first failure. A hook
    /// under way when the run is interrupted finishes (it may be a migration that must not be
    /// cut), the next one does not start, and the stage is reported interrupted, not failed,
    /// even if the hook failed (a terminal's Ctrl-C reaches it too): the resumed run repeats
    /// the stage.
    async fn hooks(
        &self,
        service: &Service,
        stage: HookStage,
        cp: &Checkpoint,
        url: Option<&str>,
    ) -> Result<(), HookStop> {
        let commands = match stage {
            HookStage::Pre => &service.pre_hooks,
            HookStage::Post => &service.post_hooks,
        };
        let context = hooks::HookContext {
            pipeline: &self.pipeline.name,
            environment: &self.environment,
            service: &service.name,
            run_id: self.run_id,
            stable: cp.stable.as_deref(),
            candidate: cp.candidate.as_deref(),
            url,
        };
        for command in commands {
            if self.is_interrupted() {
                return Err(HookStop::Interrupted);
            }
            self.phase(
                &service.name,
                &format!("{} hook: {command}", stage.label()),
                cp.traffic,
            );
            let ran = hooks::run(
                command,
                self.pipeline.directory(),
                &context,
                self.options.hook_timeout,
            )
            .await;
            match ran {
                Err(_) if self.is_interrupted() => return Err(HookStop::Interrupted),
                Err(e) => return Err(HookStop::Failed(e)),
                Ok(()) => {}
            }
        }
        Ok(())
    }

    fn is_interrupted(&self) -> bool {
        self.options.interrupt.is_cancelled()
    }

    /// The outcome of a rollout stopped by an interruption at `cp`, which is saved.
    fn interrupted(&self, cp: &Checkpoint) -> Outcome {
        let at = match &cp.candidate {
            Some(candidate) => format!("{candidate} had {}% of the traffic", cp.traffic),
            None => "nothing was deployed yet".into(),
        };
        Outcome::Interrupted(format!(
            "stopped at a checkpoint ({at}); the next `engine run` resumes it"
        ))
    }

    async fn service(&self, service: &Service) -> ServiceReport {
        let start = Instant::now();
        let mut tally = Tally::default();
        let (outcome, checkpoint) = match self.rollout(service, &mut tally).await {
            Ok(done) => done,
            Err((message, checkpoint)) => (Outcome::Failed(message), checkpoint),
        };
        ServiceReport {
            service: service.name.clone(),
            revision: checkpoint.candidate.clone().or(checkpoint.stable.clone()),
            traffic: checkpoint.traffic,
            outcome,
            checks_passed: tally.checks_passed,
            checks_run: tally.checks_run,
            elapsed: start.elapsed(),
            warnings: checkpoint.warnings,
        }
    }

    /// Plan, deploy and drive the strategy, resuming from the service's checkpoint.
    async fn rollout(&self, service: &Service, tally: &mut Tally) -> RolloutResult {
        let name = service.name.as_str();
        let mut cp = self
            .load(name)
            .await
            .map_err(|e| (e, Checkpoint::default()))?;
        if let Some(done) = cp.outcome.clone() {
            return Ok((done.into(), cp));
        }
        let platform = self
            .ports
            .platform(service)
            .map_err(|e| (e.to_string(), cp.clone()))?;
        let platform = platform.as_ref();

        if cp.candidate.is_none() && !cp.deploy_started {
            self.phase(name, "planning", 0);
            let current = retry(|| platform.read())
                .await
                .map_err(|e| (e, cp.clone()))?;
            let plan = retry(|| platform.plan(current.as_ref()))
                .await
                .map_err(|e| (e, cp.clone()))?;
            cp.new_service = current.is_none();
            if let Some(current) = &current {
                cp.previous_split = split_pairs(&current.traffic);
                cp.stable = current.serving().map(String::from);
                self.retire_leftovers(name, platform, current, &mut cp)
                    .await
                    .map_err(|e| (e, cp.clone()))?;
            }
            if plan.action == PlanAction::NoChange {
                cp.traffic = 100;
                return self.finish(name, cp, Finished::Unchanged).await;
            }
            if !cp.pre_hooks_done {
                match self.hooks(service, HookStage::Pre, &cp, None).await {
                    Ok(()) => cp.pre_hooks_done = true,
                    Err(HookStop::Interrupted) => return Ok((self.interrupted(&cp), cp)),
                    Err(HookStop::Failed(e)) => {
                        let reason = format!("{e}\nnothing was deployed");
                        return self.finish(name, cp, Finished::Failed(reason)).await;
                    }
                }
            }
            cp.deploy_started = true;
            self.save(name, &cp).await.map_err(|e| (e, cp.clone()))?;
            if self.is_interrupted() {
                return Ok((self.interrupted(&cp), cp));
            }
        }
        if cp.candidate.is_none() {
            self.phase(name, "deploying", 0);
            let deployment_id = format!("r{}", self.run_id);
            let revision = retry(|| platform.deploy(&deployment_id))
                .await
                .map_err(|e| (e, cp.clone()))?;
            cp.candidate = Some(revision.clone());
            cp.pending = Some(Observed::Start);
            cp.window_start_ms = Some(now_ms() as u64);
            let deployed = self.history_row(&revision, 0, "deployed", None);
            self.save_recording(name, &cp, Some(deployed))
                .await
                .map_err(|e| (e, cp.clone()))?;
        }
        let candidate = cp
            .candidate
            .clone()
            .expect("deployed above or before the checkpoint");
        let strategy = self
            .ports
            .strategy(service)
            .map_err(|e| (e.to_string(), cp.clone()))?;
        let rollout = Rollout {
            service: name.into(),
            stable: cp.stable.clone(),
            candidate: candidate.clone(),
            features: platform.features(),
            config: service.strategy_config.to_string(),
        };
        let mut contract = contract::Contract::new(&candidate, cp.stable.as_deref(), cp.traffic)
            .resumed_after(cp.strategy_steps);
        loop {
            // Every pass starts at a saved checkpoint: the place to stop when interrupted.
            if self.is_interrupted() {
                return Ok((self.interrupted(&cp), cp));
            }
            // What an earlier run or a person left for this one.
            if let Some(reason) = cp.abort_requested.clone() {
                let reason = format!("aborted by `engine abort`: {reason}");
                return self.abort(service, platform, cp, reason).await;
            }
            if let Some(what) = cp.awaiting_approval.clone() {
                return Ok((Outcome::AwaitingApproval(what), cp));
            }
            if let Some(until) = cp.wait_until_ms {
                let left = until.saturating_sub(now_ms() as u64);
                // The wait is in the checkpoint: a resumed run waits out what is left of it.
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(left)) => {}
                    () = self.options.interrupt.cancelled() => {
                        return Ok((self.interrupted(&cp), cp));
                    }
                }
                cp.wait_until_ms = None;
                cp.pending = Some(Observed::Waited);
                self.save(name, &cp).await.map_err(|e| (e, cp.clone()))?;
            }

            let observation = cp.pending.clone().unwrap_or(Observed::Start);
            // The history row of this step, written with the checkpoint that records it.
            let mut recorded = None;
            let step = match strategy
                .step(
                    &rollout,
                    cp.strategy_state.as_deref(),
                    &observation.to_observation(),
                    now_ms() as u64,
                )
                .await
            {
                Ok(step) => step,
                Err(e) => {
                    let reason = format!("strategy failed: {e}");
                    return self.abort(service, platform, cp, reason).await;
                }
            };
            if let Err(broken) = contract.check(&step.decision) {
                let reason = format!(
                    "strategy `{}` broke its contract: {broken}",
                    service.strategy
                );
                return self.abort(service, platform, cp, reason).await;
            }
            self.phase(name, &step.phase, cp.traffic);
            cp.strategy_state = Some(step.state);
            cp.strategy_steps = contract.steps();
            let next = match step.decision {
                Decision::SetTraffic(split) => match self.set_traffic(platform, &split).await {
                    Ok(()) => {
                        cp.window_start_ms = Some(now_ms() as u64);
                        cp.traffic = split
                            .iter()
                            .find(|t| t.revision == candidate)
                            .map_or(0, |t| t.percent);
                        Some(Observed::TrafficSet {
                            split: split_pairs(&split),
                        })
                    }
                    Err(e) => return self.abort(service, platform, cp, e).await,
                },
                // Waits and approvals are stored first and carried out at the top of the loop,
                // where a resumed run picks them up too.
                Decision::Wait(ms) => {
                    let ms = ms
                        .max(contract::MIN_WAIT.as_millis() as u64)
                        .min(self.options.max_wait.as_millis() as u64);
                    cp.wait_until_ms = Some((now_ms() as u64).saturating_add(ms));
                    None
                }
                Decision::AwaitApproval(what) => {
                    cp.awaiting_approval = Some(what);
                    None
                }
                Decision::Analyse(request) => {
                    let checks = self
                        .analyse(
                            service,
                            platform,
                            &request,
                            cp.window_start_ms.unwrap_or(now_ms() as u64),
                            tally,
                        )
                        .await;
                    Some(Observed::Analysed { checks })
                }
                Decision::Promote => {
                    let split = [TrafficShare::new(&candidate, 100)];
                    if let Err(e) = self.set_traffic(platform, &split).await {
                        return self.abort(service, platform, cp, e).await;
                    }
                    cp.traffic = 100;
                    cp.window_start_ms = Some(now_ms() as u64);
                    recorded = Some(self.history_row(&candidate, 100, "promoted", None));
                    Some(Observed::Promoted)
                }
                Decision::Retire(revision) => {
                    match retry(|| platform.retire(&revision)).await {
                        Ok(()) => recorded = Some(self.history_row(&revision, 0, "retired", None)),
                        // Promoted, the release has passed its gates: an old revision that
                        // will not go is left for later, never a reason to roll back.
                        Err(e) if cp.traffic == 100 && revision != candidate => {
                            cp.warnings.push(format!(
                                "retiring {revision} failed: {e}; it takes no traffic and was left in place: retire it on the platform"
                            ));
                            recorded =
                                Some(self.history_row(&revision, 0, "retire-failed", Some(e)));
                        }
                        Err(e) => return self.abort(service, platform, cp, e).await,
                    }
                    Some(Observed::Retired { revision })
                }
                Decision::Abort(reason) => {
                    return self.abort(service, platform, cp, reason).await;
                }
                Decision::Done => {
                    // A failing post hook does not undo a promotion that already took the
                    // traffic: it fails the service and says how to go back.
                    // The service's URL, for a post hook that calls it (a bootstrap, a smoke test).
                    let url = if service.post_hooks.is_empty() {
                        None
                    } else {
                        retry(|| platform.endpoints(None))
                            .await
                            .ok()
                            .and_then(|endpoints| {
                                endpoints
                                    .into_iter()
                                    .find(|e| e.kind == EndpointKind::Service)
                                    .map(|e| e.url)
                            })
                    };
                    match self
                        .hooks(service, HookStage::Post, &cp, url.as_deref())
                        .await
                    {
                        Ok(()) => return self.finish(name, cp, Finished::Deployed).await,
                        Err(HookStop::Interrupted) => return Ok((self.interrupted(&cp), cp)),
                        Err(HookStop::Failed(e)) => {
                            let reason = format!(
                                "{e}\n{candidate} was promoted and serves the traffic; `engine rollback {name}` returns to the previous revision"
                            );
                            return self.finish(name, cp, Finished::Failed(reason)).await;
                        }
                    }
                }
            };
            cp.pending = next;
            self.save_recording(name, &cp, recorded)
                .await
                .map_err(|e| (e, cp.clone()))?;
        }
    }

    /// Retires what this engine's own failed rollouts left on the platform (a candidate an
    /// abort could not remove, an old revision whose retirement failed after a promotion), each
    /// reported as a phase. A revision the engine did not deploy is never touched; one that will
    /// not go is a warning, not a reason to stop this rollout.
    async fn retire_leftovers(
        &self,
        service: &str,
        platform: &dyn Platform,
        current: &ServiceState,
        cp: &mut Checkpoint,
    ) -> Result<(), String> {
        let history = self
            .store
            .history(&self.pipeline.name, &self.environment, service)
            .await
            .map_err(|e| e.to_string())?;
        for revision in leftovers(&history, current) {
            self.phase(
                service,
                &format!("retiring {revision}, left by an earlier run"),
                0,
            );
            match retry(|| platform.retire(&revision)).await {
                Ok(()) => {
                    let row = RevisionRecord {
                        detail: Some("left by an earlier run".into()),
                        ..self.history_row(&revision, 0, "retired", None)
                    };
                    self.store
                        .record_revision(
                            &self.pipeline.name,
                            &self.environment,
                            service,
                            Some(self.run_id),
                            &row,
                        )
                        .await
                        .map_err(|e| self.state_lost(e.to_string()))?;
                }
                Err(e) => cp.warnings.push(format!(
                    "{revision}, left by an earlier run, could not be retired: {e}"
                )),
            }
        }
        Ok(())
    }

    /// Applies a split and reads it back from the platform.
    async fn set_traffic(
        &self,
        platform: &dyn Platform,
        split: &[TrafficShare],
    ) -> Result<(), String> {
        retry(|| platform.set_traffic(split)).await?;
        verify_split(platform, split).await
    }

    /// Runs the requested health checks against one revision, and reports each.
    async fn analyse(
        &self,
        service: &Service,
        platform: &dyn Platform,
        request: &AnalysisRequest,
        since_ms: u64,
        tally: &mut Tally,
    ) -> Vec<CheckSeen> {
        let runs = platform
            .analyse(&request.revision, &request.checks, since_ms)
            .await;
        let mut seen = Vec::new();
        for run in runs {
            // A check that cannot run counts against the revision: better a needless rollback
            // than an unchecked release.
            let (verdict, message) = match run.result {
                Ok(r) => (r.verdict, r.message),
                Err(e) => (Verdict::Unhealthy, format!("the check could not run: {e}")),
            };
            tally.checks_run += 1;
            if verdict == Verdict::Healthy {
                tally.checks_passed += 1;
            }
            self.observer.event(&Event::Check {
                service: service.name.clone(),
                check: run.check.clone(),
                verdict: verdict.name().into(),
                message: message.clone(),
            });
            seen.push(CheckSeen {
                name: run.check,
                verdict: verdict.name().into(),
                message,
            });
        }
        seen
    }

    /// Puts the service back as it was before the run: the previous split restored and the
    /// candidate retired, or, for a service this run created, the service removed.
    async fn abort(
        &self,
        service: &Service,
        platform: &dyn Platform,
        mut cp: Checkpoint,
        reason: String,
    ) -> RolloutResult {
        let name = service.name.as_str();
        self.phase(name, "rolling back", cp.traffic);
        let mut problems = Vec::new();
        let mut notes = Vec::new();
        let mut recorded = None;
        if let Some(candidate) = cp.candidate.clone() {
            if cp.new_service {
                // Nothing served before this run: going back means removing what it created.
                match retry(|| platform.destroy()).await {
                    Ok(()) => {
                        cp.traffic = 0;
                        notes.push(format!(
                            "`{name}` did not exist before this run, so it was removed"
                        ));
                    }
                    Err(e) => problems.push(format!("removing the new service failed: {e}")),
                }
            } else {
                if !cp.previous_split.is_empty()
                    && let Err(e) = self
                        .set_traffic(platform, &split_targets(&cp.previous_split))
                        .await
                {
                    problems.push(format!("restoring the previous traffic failed: {e}"));
                }
                if problems.is_empty() {
                    match retry(|| platform.retire(&candidate)).await {
                        Ok(()) => cp.traffic = 0,
                        Err(e) => problems.push(format!("retiring {candidate} failed: {e}")),
                    }
                } else {
                    problems.push(format!("{candidate} was left in place"));
                }
            }
            recorded =
                Some(self.history_row(&candidate, cp.traffic, "aborted", Some(reason.clone())));
        }
        let mut full = reason;
        for extra in notes.iter().chain(&problems) {
            full.push_str("; ");
            full.push_str(extra);
        }
        cp.awaiting_approval = None;
        cp.abort_requested = None;
        cp.wait_until_ms = None;
        let finished = if problems.is_empty() {
            Finished::RolledBack(full)
        } else {
            // The platform is not where it was: say so instead of claiming a rollback.
            Finished::Failed(full)
        };
        self.finish_recording(name, cp, finished, recorded).await
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
        Some(text) => serde_json::from_str(&text)
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
    let text = serde_json::to_string(checkpoint).expect("checkpoints serialise");
    store
        .save_checkpoint(run_id, service, &text)
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

/// Reads the split back from the platform and compares it with what was set (like Argo's
/// VerifyWeight): a platform that silently ignored a change must not pass for a healthy step.
pub(crate) async fn verify_split(
    platform: &dyn Platform,
    split: &[TrafficShare],
) -> Result<(), String> {
    let applied = retry(|| platform.get_traffic()).await?;
    let normalise = |s: &[TrafficShare]| -> BTreeMap<String, u8> {
        s.iter()
            .filter(|t| t.percent > 0)
            .map(|t| (t.revision.clone(), t.percent))
            .collect()
    };
    if normalise(&applied) != normalise(split) {
        return Err(format!(
            "the platform reports traffic {:?} after the engine set {:?}",
            split_pairs(&applied),
            split_pairs(split)
        ));
    }
    Ok(())
}

/// [`crate::port::retry`], with the error as the text the executor reports.
pub(crate) async fn retry<T, F, Fut>(call: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, PortError>>,
{
    crate::port::retry(call).await.map_err(|e| e.message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::port::RevisionInfo;

    fn row(revision: &str, outcome: &str) -> RevisionRecord {
        RevisionRecord {
            revision: revision.into(),
            run_id: Some(1),
            recorded_ms: 0,
            traffic: 0,
            outcome: outcome.into(),
            detail: None,
        }
    }

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

    #[test]
    fn leftovers_are_the_engines_own_aborted_or_unretired_revisions_without_traffic() {
        let revision = |id: &str| RevisionInfo {
            id: id.into(),
            artifact: None,
            created_at_ms: None,
            ready: true,
            message: None,
        };
        let current = ServiceState {
            revisions: ["api-r5", "api-r4", "api-r3", "api-r2", "api-r1", "manual"]
                .map(revision)
                .to_vec(),
            traffic: vec![TrafficShare::new("api-r4", 100)],
            url: None,
            deployed: "{}".into(),
        };
        // Newest first, as the store returns it.
        let history = [
            row("api-r5", "aborted"),
            row("api-r5", "deployed"),
            row("api-r3", "retire-failed"),
            row("api-r4", "promoted"),
            row("api-r4", "deployed"),
            row("api-r2", "rolled-back-to"),
            row("api-r2", "aborted"),
            row("api-r1", "promoted"),
        ];
        assert_eq!(leftovers(&history, &current), ["api-r5", "api-r3"]);
        // Serving, even if its latest record is an abort: never retired.
        let serving = ServiceState {
            traffic: vec![TrafficShare::new("api-r5", 100)],
            ..current
        };
        assert_eq!(leftovers(&history, &serving), ["api-r3"]);
    }
}
