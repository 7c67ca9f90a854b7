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
//! use engine::state::{Holder, Store};
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
//! let mut store = Store::open(&Store::default_path(file))?;
//! let lock = store.lock(&pipeline.name, "staging", &Holder::this_process("my CI runner"))?;
//! let report = engine::run::execute(&pipeline, &plugins, store, &Log, &RunOptions::default()).await?;
//! Store::open(&Store::default_path(file))?.unlock(lock)?;
//! println!("succeeded: {}", report.succeeded());
//! # Ok(()) }
//! ```

pub mod admin;
pub mod checkpoint;
pub mod plan;

use crate::config::{Pipeline, Service};
use crate::runtime::bindings::health::exports::engine::plugin::health::Target;
use crate::runtime::bindings::strategy::exports::engine::plugin::strategy::{Decision, Rollout};
use crate::runtime::bindings::types::{ServiceRef, TrafficTarget, Verdict};
use crate::runtime::{CallError, LoadedPlugin, PluginError};
use crate::state::{RevisionRecord, StateError, Store, now_ms};
use checkpoint::{
    CheckSeen, Checkpoint, Finished, Observed, split_pairs, split_targets, verdict_name,
};
use futures::stream::{FuturesUnordered, StreamExt};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Services rolled out at the same time, at most.
    pub concurrency: usize,
    /// Stop starting services after the first failure (independent branches otherwise go on).
    pub fail_fast: bool,
    /// Longest wait a strategy may ask for in one step.
    pub max_wait: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            concurrency: 4,
            fail_fast: false,
            max_wait: Duration::from_secs(3600),
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
    Skipped(String),
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
        }
    }

    pub fn reason(&self) -> Option<&str> {
        match self {
            Outcome::RolledBack(r) | Outcome::Failed(r) | Outcome::Skipped(r) => Some(r),
            _ => None,
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
    store: Store,
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
    let environment = pipeline
        .environment
        .clone()
        .unwrap_or_else(|| "default".into());
    let (run_id, resumed) = store.begin_run(&pipeline.name, &environment)?;
    observer.event(&Event::Started {
        run_id,
        resumed,
        services: pipeline.services.len(),
    });
    let executor = Executor {
        pipeline,
        plugins,
        store: Mutex::new(store),
        observer,
        options,
        run_id,
        environment,
    };

    let mut reports: BTreeMap<String, ServiceReport> = BTreeMap::new();
    let mut started = BTreeSet::new();
    let mut running = FuturesUnordered::new();
    let mut failed_any = false;
    loop {
        let settled_before = reports.len() + running.len();
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
            let blocked = deps.iter().find(|d| !d.outcome.succeeded());
            let skip = match (blocked, failed_any && options.fail_fast) {
                (Some(d), _) => Some(format!("dependency `{}` {}", d.service, d.outcome.label())),
                (None, true) => {
                    Some("an earlier service failed and --fail-fast is set".to_string())
                }
                _ => None,
            };
            if let Some(reason) = skip {
                let report = skipped(service, reason);
                observer.event(&Event::Finished(report.clone()));
                reports.insert(service.name.clone(), report);
                continue;
            }
            running.push(executor.service(service));
        }
        match running.next().await {
            Some(report) => {
                failed_any |= !report.outcome.succeeded();
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
    let store = executor
        .store
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());
    store.finish_run(
        run_id,
        if report.succeeded() {
            "deployed"
        } else {
            "failed"
        },
    )?;
    Ok(report)
}

fn skipped(service: &Service, reason: String) -> ServiceReport {
    ServiceReport {
        service: service.name.clone(),
        outcome: Outcome::Skipped(reason),
        revision: None,
        traffic: 0,
        checks_passed: 0,
        checks_run: 0,
        elapsed: Duration::ZERO,
    }
}

struct Executor<'a> {
    pipeline: &'a Pipeline,
    plugins: &'a BTreeMap<String, LoadedPlugin>,
    store: Mutex<Store>,
    observer: &'a dyn Observer,
    options: &'a RunOptions,
    run_id: i64,
    environment: String,
}

/// Per-service counters for the report.
#[derive(Default)]
struct Tally {
    checks_passed: u32,
    checks_run: u32,
}

impl Executor<'_> {
    fn save(&self, service: &str, checkpoint: &Checkpoint) -> Result<(), String> {
        let text = serde_json::to_string(checkpoint).expect("checkpoints serialise");
        let store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        store
            .save_checkpoint(self.run_id, service, &text)
            .map_err(|e| e.to_string())
    }

    fn load(&self, service: &str) -> Result<Checkpoint, String> {
        let store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        match store
            .checkpoint(self.run_id, service)
            .map_err(|e| e.to_string())?
        {
            Some(text) => serde_json::from_str(&text)
                .map_err(|e| format!("unreadable checkpoint of `{service}`: {e}")),
            None => Ok(Checkpoint::default()),
        }
    }

    fn record(
        &self,
        service: &str,
        revision: &str,
        traffic: u8,
        outcome: &str,
        detail: Option<String>,
    ) {
        let store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        let record = RevisionRecord {
            revision: revision.into(),
            run_id: Some(self.run_id),
            recorded_ms: now_ms(),
            traffic,
            outcome: outcome.into(),
            detail,
        };
        if let Err(e) = store.record_revision(
            &self.pipeline.name,
            &self.environment,
            service,
            Some(self.run_id),
            &record,
        ) {
            tracing::error!("cannot record the history of `{service}`: {e}");
        }
    }

    fn phase(&self, service: &str, phase: &str, traffic: u8) {
        self.observer.event(&Event::Phase {
            service: service.into(),
            phase: phase.into(),
            traffic,
        });
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
        }
    }

    /// Plan, deploy and drive the strategy, resuming from the service's checkpoint.
    async fn rollout(
        &self,
        service: &Service,
        tally: &mut Tally,
    ) -> Result<(Outcome, Checkpoint), (String, Checkpoint)> {
        let name = service.name.as_str();
        let mut cp = self.load(name).map_err(|e| (e, Checkpoint::default()))?;
        if let Some(done) = &cp.outcome {
            let outcome = match done {
                Finished::Deployed => Outcome::Deployed,
                Finished::Unchanged => Outcome::Unchanged,
                Finished::RolledBack(r) => Outcome::RolledBack(r.clone()),
                Finished::Failed(r) => Outcome::Failed(r.clone()),
            };
            return Ok((outcome, cp));
        }
        let provider_plugin = &self.plugins[&service.provider];
        let provider = provider_plugin
            .provider()
            .map_err(|e| (e.to_string(), cp.clone()))?;
        let target = ServiceRef {
            name: name.into(),
            config: service.provider_config.to_string(),
        };
        let spec = service.spec();

        if cp.candidate.is_none() {
            self.phase(name, "planning", 0);
            let current = retry(|| provider.read(&target))
                .await
                .map_err(|e| (e, cp.clone()))?;
            let plan = retry(|| provider.plan(&spec, current.as_ref()))
                .await
                .map_err(|e| (e, cp.clone()))?;
            if let Some(current) = &current {
                cp.previous_split = split_pairs(&current.traffic);
                cp.stable = current
                    .traffic
                    .iter()
                    .max_by_key(|t| t.percent)
                    .map(|t| t.revision.clone());
            }
            if plan.action == crate::runtime::bindings::types::PlanAction::NoChange {
                cp.traffic = 100;
                cp.outcome = Some(Finished::Unchanged);
                self.save(name, &cp).map_err(|e| (e, cp.clone()))?;
                return Ok((Outcome::Unchanged, cp));
            }
            self.phase(name, "deploying", 0);
            let deployment_id = format!("r{}", self.run_id);
            let revision = retry(|| provider.deploy(&spec, &deployment_id))
                .await
                .map_err(|e| (e, cp.clone()))?;
            cp.candidate = Some(revision.id.clone());
            cp.pending = Some(Observed::Start);
            self.save(name, &cp).map_err(|e| (e, cp.clone()))?;
            self.record(name, &revision.id, 0, "deployed", None);
        }
        let candidate = cp
            .candidate
            .clone()
            .expect("deployed above or before the checkpoint");
        let strategy_plugin = &self.plugins[&service.strategy];
        let strategy = strategy_plugin
            .strategy()
            .map_err(|e| (e.to_string(), cp.clone()))?;
        let rollout = Rollout {
            service: name.into(),
            stable: cp.stable.clone(),
            candidate: candidate.clone(),
            features: provider_plugin.info().features.clone(),
            config: service.strategy_config.to_string(),
        };
        loop {
            let observation = cp.pending.clone().unwrap_or(Observed::Start);
            let step = match strategy
                .step(
                    &rollout,
                    cp.strategy_state.as_deref(),
                    &observation.to_wit(),
                    now_ms() as u64,
                )
                .await
            {
                Ok(step) => step,
                Err(e) => {
                    return self
                        .abort(
                            service,
                            &provider,
                            &target,
                            cp,
                            format!("strategy failed: {e}"),
                        )
                        .await;
                }
            };
            self.phase(name, &step.phase, cp.traffic);
            let next = match step.decision {
                Decision::SetTraffic(split) => {
                    match self.set_traffic(&provider, &target, &split).await {
                        Ok(()) => {
                            cp.traffic = split
                                .iter()
                                .find(|t| t.revision == candidate)
                                .map_or(0, |t| t.percent);
                            Observed::TrafficSet {
                                split: split_pairs(&split),
                            }
                        }
                        Err(e) => return self.abort(service, &provider, &target, cp, e).await,
                    }
                }
                Decision::Wait(ms) => {
                    tokio::time::sleep(Duration::from_millis(ms).min(self.options.max_wait)).await;
                    Observed::Waited
                }
                Decision::Analyse(request) => {
                    let checks = self
                        .analyse(
                            service,
                            &provider,
                            &target,
                            &request.revision,
                            &request.checks,
                            tally,
                        )
                        .await;
                    Observed::Analysed { checks }
                }
                Decision::AwaitApproval(what) => {
                    let reason = format!(
                        "the strategy asks for approval ({what}), and approvals (`engine promote`) are not available yet"
                    );
                    return self.abort(service, &provider, &target, cp, reason).await;
                }
                Decision::Promote => {
                    let split = [TrafficTarget {
                        revision: candidate.clone(),
                        percent: 100,
                    }];
                    if let Err(e) = self.set_traffic(&provider, &target, &split).await {
                        return self.abort(service, &provider, &target, cp, e).await;
                    }
                    cp.traffic = 100;
                    self.record(name, &candidate, 100, "promoted", None);
                    Observed::Promoted
                }
                Decision::Retire(revision) => {
                    if let Err(e) = retry(|| provider.retire(&target, &revision)).await {
                        return self.abort(service, &provider, &target, cp, e).await;
                    }
                    self.record(name, &revision, 0, "retired", None);
                    Observed::Retired { revision }
                }
                Decision::Abort(reason) => {
                    return self.abort(service, &provider, &target, cp, reason).await;
                }
                Decision::Done => {
                    cp.outcome = Some(Finished::Deployed);
                    cp.strategy_state = Some(step.state);
                    cp.pending = None;
                    self.save(name, &cp).map_err(|e| (e, cp.clone()))?;
                    return Ok((Outcome::Deployed, cp));
                }
            };
            cp.strategy_state = Some(step.state);
            cp.pending = Some(next);
            self.save(name, &cp).map_err(|e| (e, cp.clone()))?;
        }
    }

    /// Applies a split and reads it back from the platform.
    async fn set_traffic(
        &self,
        provider: &crate::runtime::Provider<'_>,
        target: &ServiceRef,
        split: &[TrafficTarget],
    ) -> Result<(), String> {
        retry(|| provider.set_traffic(target, split)).await?;
        verify_split(provider, target, split).await
    }

    /// Runs the requested health checks against one revision.
    async fn analyse(
        &self,
        service: &Service,
        provider: &crate::runtime::Provider<'_>,
        target: &ServiceRef,
        revision: &str,
        wanted: &[String],
        tally: &mut Tally,
    ) -> Vec<CheckSeen> {
        let endpoints = match retry(|| provider.endpoints(target, Some(revision))).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!("endpoints of `{}` unavailable: {e}", service.name);
                Vec::new()
            }
        };
        let mut seen = Vec::new();
        for check in service
            .checks
            .iter()
            .filter(|c| wanted.is_empty() || wanted.contains(&c.name))
        {
            let health = self.plugins[&check.plugin].health();
            let result = match health {
                Ok(h) => {
                    let t = Target {
                        service: service.name.clone(),
                        revision: Some(revision.into()),
                        endpoints: endpoints.clone(),
                        since_ms: now_ms() as u64,
                    };
                    h.check(&check.config.to_string(), &t)
                        .await
                        .map_err(|e| e.to_string())
                }
                Err(e) => Err(e.to_string()),
            };
            // A check that cannot run counts against the revision: better a needless rollback
            // than an unchecked release.
            let (verdict, message) = match result {
                Ok(r) => (r.verdict, r.message),
                Err(e) => (Verdict::Unhealthy, format!("the check could not run: {e}")),
            };
            tally.checks_run += 1;
            if verdict == Verdict::Healthy {
                tally.checks_passed += 1;
            }
            self.observer.event(&Event::Check {
                service: service.name.clone(),
                check: check.name.clone(),
                verdict: verdict_name(verdict).into(),
                message: message.clone(),
            });
            seen.push(CheckSeen {
                name: check.name.clone(),
                verdict: verdict_name(verdict).into(),
                message,
            });
        }
        seen
    }

    /// Restores the previous split, retires the candidate, records why.
    async fn abort(
        &self,
        service: &Service,
        provider: &crate::runtime::Provider<'_>,
        target: &ServiceRef,
        mut cp: Checkpoint,
        reason: String,
    ) -> Result<(Outcome, Checkpoint), (String, Checkpoint)> {
        let name = service.name.as_str();
        self.phase(name, "rolling back", cp.traffic);
        let mut problems = Vec::new();
        if !cp.previous_split.is_empty()
            && let Err(e) = self
                .set_traffic(provider, target, &split_targets(&cp.previous_split))
                .await
        {
            problems.push(format!("restoring the previous traffic failed: {e}"));
        }
        if let Some(candidate) = cp.candidate.clone() {
            if cp.previous_split.is_empty() {
                // A first deployment has nothing to go back to; the candidate keeps no traffic
                // only if the platform can route none, so it is left as it is and reported.
                problems.push("no previous revision to restore".into());
            } else if let Err(e) = retry(|| provider.retire(target, &candidate)).await {
                problems.push(format!("retiring {candidate} failed: {e}"));
            } else {
                cp.traffic = 0;
            }
            self.record(
                name,
                &candidate,
                cp.traffic,
                "aborted",
                Some(reason.clone()),
            );
        }
        let full = if problems.is_empty() {
            reason
        } else {
            format!("{reason}; {}", problems.join("; "))
        };
        let finished = if cp.previous_split.is_empty() {
            Finished::Failed(full.clone())
        } else {
            Finished::RolledBack(full.clone())
        };
        cp.outcome = Some(finished.clone());
        cp.pending = None;
        self.save(name, &cp).map_err(|e| (e, cp.clone()))?;
        let outcome = match finished {
            Finished::Failed(r) => Outcome::Failed(r),
            _ => Outcome::RolledBack(full),
        };
        Ok((outcome, cp))
    }
}

/// Reads the split back from the platform and compares it with what was set (like Argo's
/// VerifyWeight): a platform that silently ignored a change must not pass for a healthy step.
pub(crate) async fn verify_split(
    provider: &crate::runtime::Provider<'_>,
    target: &ServiceRef,
    split: &[TrafficTarget],
) -> Result<(), String> {
    let applied = retry(|| provider.get_traffic(target)).await?;
    let normalise = |s: &[TrafficTarget]| -> BTreeMap<String, u8> {
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

/// Calls a provider again on the errors that ask for it: `rate-limited` after its retry-after,
/// `transient` with exponential backoff, `conflict` once; never on anything else.
pub(crate) async fn retry<T, F, Fut>(mut call: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, CallError>>,
{
    const ATTEMPTS: u32 = 5;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let error = match call().await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let wait = match error.plugin_error() {
            _ if attempt >= ATTEMPTS => None,
            Some(PluginError::RateLimited { retry_after, .. }) => Some(
                retry_after
                    .unwrap_or(Duration::from_secs(1))
                    .min(Duration::from_secs(60)),
            ),
            Some(PluginError::Transient(_)) => Some(Duration::from_millis(100 << attempt.min(6))),
            Some(PluginError::Conflict(_)) if attempt == 1 => Some(Duration::from_millis(100)),
            _ => None,
        };
        match wait {
            Some(d) => {
                tracing::info!("retrying in {d:?} after: {error}");
                tokio::time::sleep(d).await;
            }
            None => return Err(error.to_string()),
        }
    }
}
