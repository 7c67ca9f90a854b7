//! One service's rollout: a state machine over the phases of its checkpoint
//! ([`Phase`]), driven through the platform and strategy ports. Each pass carries out one
//! phase, moves the checkpoint to the next and saves it (with the history row of the step it
//! completes, in one transaction) before the next pass begins; a pass is where an interrupted
//! run stops, and where the next run resumes.

use super::checkpoint::{
    CheckSeen, Checkpoint, Finished, Observed, Phase, split_pairs, split_targets,
};
use super::contract::{self, Contract};
use super::hooks::{self, HookStage};
use super::rejected;
use super::world::World;
use super::{Event, Observer, Outcome, RunOptions, ServiceReport};
use crate::config::{Check, Pipeline, Service};
use crate::port::{
    AnalysisRequest, CheckRun, Decision, EndpointKind, ErrorKind, PlanAction, Platform, PortError,
    Ports, Rollout, ServiceState, TrafficShare, Verdict,
};
use crate::state::{HistoryEntry, RevisionRecord, Store};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Rolls out the services of one run.
pub(super) struct Executor<'a> {
    pub pipeline: &'a Pipeline,
    pub ports: &'a dyn Ports,
    pub store: &'a Store,
    /// Where the history of earlier runs is read (see [`super::Stores`]).
    pub earlier: &'a Store,
    pub observer: &'a dyn Observer,
    pub options: &'a RunOptions,
    /// The clock, the hooks and the approvals: real in a run, simulated in a plan.
    pub world: &'a dyn World,
    pub run_id: i64,
    pub environment: String,
    /// A checkpoint or history write failed: the run is left open, so that the next run
    /// resumes from the last step that was saved instead of trusting a state that missed one.
    pub state_failed: AtomicBool,
    /// What referenced units became in this run (URLs, outputs).
    pub known: super::references::Known,
}

/// Why a rollout could not go on. The service ends failed, its checkpoint as last saved.
#[derive(Debug, thiserror::Error)]
enum RolloutError {
    /// A call failed where nothing needs undoing (reading, planning, deploying).
    #[error("{0}")]
    Failed(String),
    /// A checkpoint or history write failed.
    #[error(
        "{0}; the run stays open: once the state can be written, the next `engine run` resumes from the last step saved"
    )]
    StateLost(String),
}

fn failed(error: PortError) -> RolloutError {
    RolloutError::Failed(error.message)
}

/// What one pass through a phase did.
enum Pass {
    /// Moved the checkpoint to its next phase: save it, with the history row of the step.
    Next(Option<RevisionRecord>),
    /// Stopped where the saved checkpoint is (interrupted in a hook or a wait).
    Stopped(Outcome),
}

impl Executor<'_> {
    pub(super) async fn service(&self, service: &Service) -> ServiceReport {
        let start = Instant::now();
        let mut tally = Tally::default();
        let mut cp = Checkpoint::default();
        let outcome = match self.rollout(service, &mut cp, &mut tally).await {
            Ok(outcome) => outcome,
            Err(error) => {
                if let RolloutError::StateLost(_) = error {
                    self.state_failed.store(true, Ordering::Relaxed);
                }
                Outcome::Failed(error.to_string())
            }
        };
        ServiceReport {
            service: service.name.clone(),
            resource: None,
            revision: cp.candidate.clone().or(cp.stable.clone()),
            traffic: cp.reported_traffic(),
            outcome,
            checks_passed: tally.checks_passed,
            checks_run: tally.checks_run,
            elapsed: start.elapsed(),
            warnings: cp.warnings,
        }
    }

    /// Runs the phases from the service's checkpoint until the rollout finishes, waits for a
    /// person, or is interrupted.
    async fn rollout(
        &self,
        service: &Service,
        cp: &mut Checkpoint,
        tally: &mut Tally,
    ) -> Result<Outcome, RolloutError> {
        *cp = super::load_checkpoint(self.store, self.run_id, &service.name)
            .await
            .map_err(RolloutError::Failed)?;
        if let Some(done) = cp.finished() {
            return Ok(done.clone().into());
        }
        let platform = self.ports.platform(service).map_err(failed)?;
        let platform = platform.as_ref();
        // Kept across passes: it follows the split the strategy set in this run.
        let mut contract = None;
        loop {
            let pass = match cp.phase.clone() {
                Phase::Finished { outcome } => return Ok(outcome.into()),
                // A rollback decided is carried out even when interrupted: an unhealthy
                // candidate must not keep its traffic until the next run.
                Phase::Aborting { reason } => self.abort(service, platform, cp, reason).await,
                // Every pass starts at a saved checkpoint: the place to stop when interrupted.
                _ if self.is_interrupted() => return Ok(self.interrupted(cp)),
                Phase::AwaitingApproval { what } => return Ok(Outcome::AwaitingApproval(what)),
                Phase::Planning => self.planning(service, platform, cp).await?,
                Phase::PreHooks { done } => self.pre_hook(service, cp, done).await,
                Phase::Deploying => self.deploying(service, platform, cp).await?,
                Phase::WaitingUntil { wait_until_ms } => self.wait(cp, wait_until_ms).await,
                Phase::Driving { pending } => {
                    let contract = contract.get_or_insert_with(|| contract_of(cp));
                    self.drive(service, platform, cp, pending, contract, tally)
                        .await?
                }
            };
            match pass {
                Pass::Next(record) => self.save(&service.name, cp, record).await?,
                Pass::Stopped(outcome) => return Ok(outcome),
            }
        }
    }

    /// Reads and plans the service and retires what earlier runs left.
    async fn planning(
        &self,
        service: &Service,
        platform: &dyn Platform,
        cp: &mut Checkpoint,
    ) -> Result<Pass, RolloutError> {
        let name = service.name.as_str();
        self.phase(name, "planning", 0);
        let current = retry(|| platform.read())
            .await
            .map_err(RolloutError::Failed)?;
        let plan = retry(|| platform.plan(current.as_ref()))
            .await
            .map_err(RolloutError::Failed)?;
        cp.new_service = current.is_none();
        let release = service.release_digest();
        cp.release = Some(release.clone());
        let history = self.history(name).await?;
        if let Some(current) = &current {
            cp.previous_split = split_pairs(&current.traffic);
            cp.stable = current.serving().map(String::from);
            self.retire_leftovers(name, platform, current, &history, cp)
                .await?;
        }
        if plan.action == PlanAction::NoChange {
            cp.traffic = 100;
            return Ok(finish(cp, Finished::Unchanged));
        }
        if !self.options.retry_rejected
            && let Some(rejection) = rejected::rejection(&history, &release)
        {
            return Ok(finish(cp, Finished::Failed(rejection.to_string())));
        }
        cp.phase = after_pre_hooks(service, 0);
        Ok(Pass::Next(None))
    }

    /// The service's history in this pipeline and environment from earlier runs, newest first.
    async fn history(&self, service: &str) -> Result<Vec<RevisionRecord>, RolloutError> {
        self.earlier
            .history(&self.pipeline.name, &self.environment, service)
            .await
            .map_err(|e| RolloutError::Failed(e.to_string()))
    }

    /// Runs the next pre hook; the ones before it passed (and are not run again on resume).
    async fn pre_hook(&self, service: &Service, cp: &mut Checkpoint, done: usize) -> Pass {
        let next = service.pre_hooks.get(done..=done).unwrap_or_default();
        match self.hooks(service, HookStage::Pre, next, cp, None).await {
            Ok(()) => {
                cp.phase = after_pre_hooks(service, done + 1);
                Pass::Next(None)
            }
            Err(HookStop::Interrupted) => Pass::Stopped(self.interrupted(cp)),
            Err(HookStop::Failed(e)) => {
                finish(cp, Finished::Failed(format!("{e}\nnothing was deployed")))
            }
        }
    }

    /// Deploys the candidate, named by the run so that a repeated deploy is the same one.
    async fn deploying(
        &self,
        service: &Service,
        platform: &dyn Platform,
        cp: &mut Checkpoint,
    ) -> Result<Pass, RolloutError> {
        self.phase(&service.name, "deploying", 0);
        let deployment_id = format!("r{}", self.run_id);
        let revision = match crate::port::retry(|| platform.deploy(&deployment_id)).await {
            Ok(revision) => revision,
            Err(e) => return Ok(self.deploy_failed(cp, &deployment_id, e)),
        };
        cp.candidate = Some(revision.clone());
        cp.window_start_ms = Some(self.world.now_ms());
        cp.phase = Phase::Driving {
            pending: Observed::Start,
        };
        Ok(Pass::Next(Some(
            self.attempt_row(cp, &revision, 0, "deployed", None),
        )))
    }

    /// Ends a rollout whose deploy failed, with a history row: `deploy-failed` when the
    /// platform refused the release (calling again gives the same answer), which rejects it
    /// like a rollback; `deploy-error` when the failure may pass by itself. The row names the
    /// deployment id, since no revision was returned.
    fn deploy_failed(&self, cp: &mut Checkpoint, deployment_id: &str, error: PortError) -> Pass {
        let outcome = match error.kind {
            ErrorKind::Permanent => "deploy-failed",
            _ => "deploy-error",
        };
        let row = self.attempt_row(cp, deployment_id, 0, outcome, Some(error.message.clone()));
        cp.phase = Phase::Finished {
            outcome: Finished::Failed(format!("{}\nnothing was deployed", error.message)),
        };
        Pass::Next(Some(row))
    }

    /// Waits out what is left of a wait the strategy asked for.
    async fn wait(&self, cp: &mut Checkpoint, until_ms: u64) -> Pass {
        if !self
            .world
            .wait_until(until_ms, &self.options.interrupt)
            .await
        {
            return Pass::Stopped(self.interrupted(cp));
        }
        drive_on(cp, Observed::Waited, None)
    }

    /// Tells the strategy what happened, checks its decision against the contract, and
    /// carries it out.
    async fn drive(
        &self,
        service: &Service,
        platform: &dyn Platform,
        cp: &mut Checkpoint,
        pending: Observed,
        contract: &mut Contract,
        tally: &mut Tally,
    ) -> Result<Pass, RolloutError> {
        let Some(candidate) = cp.candidate.clone() else {
            return Err(RolloutError::Failed(format!(
                "the checkpoint of `{}` drives a rollout without a candidate: it is damaged",
                service.name
            )));
        };
        let strategy = self.ports.strategy(service).map_err(failed)?;
        let rollout = Rollout {
            service: service.name.clone(),
            stable: cp.stable.clone(),
            candidate: candidate.clone(),
            features: platform.features(),
            config: service.strategy_config.to_string(),
        };
        let observation = pending.to_observation();
        let state = cp.strategy_state.as_deref();
        let step = match strategy
            .step(&rollout, state, &observation, self.world.now_ms())
            .await
        {
            Ok(step) => step,
            Err(e) => return Ok(aborting(cp, format!("strategy failed: {e}"))),
        };
        if let Err(broken) = contract.check(&step.decision) {
            let strategy = &service.strategy;
            return Ok(aborting(
                cp,
                format!("strategy `{strategy}` broke its contract: {broken}"),
            ));
        }
        self.phase(&service.name, &step.phase, cp.traffic);
        self.observer.event(&Event::Decided {
            service: service.name.clone(),
            decision: step.decision.clone(),
        });
        cp.strategy_state = Some(step.state);
        cp.strategy_steps = contract.steps();
        let decided = Decided {
            service,
            platform,
            candidate: &candidate,
        };
        Ok(self.carry_out(&decided, cp, step.decision, tally).await)
    }

    async fn carry_out(
        &self,
        at: &Decided<'_>,
        cp: &mut Checkpoint,
        decision: Decision,
        tally: &mut Tally,
    ) -> Pass {
        match decision {
            Decision::SetTraffic(split) => match self.set_traffic(at.platform, &split).await {
                Ok(()) => {
                    cp.window_start_ms = Some(self.world.now_ms());
                    cp.traffic = split
                        .iter()
                        .find(|t| t.revision == at.candidate)
                        .map_or(0, |t| t.percent);
                    let split = split_pairs(&split);
                    drive_on(cp, Observed::TrafficSet { split }, None)
                }
                Err(e) => aborting(cp, e),
            },
            // Waits and approvals are stored first and carried out by the next pass, where a
            // resumed run picks them up too.
            Decision::Wait(ms) => {
                let ms = ms
                    .max(contract::MIN_WAIT.as_millis() as u64)
                    .min(self.options.max_wait.as_millis() as u64);
                let wait_until_ms = self.world.now_ms().saturating_add(ms);
                cp.phase = Phase::WaitingUntil { wait_until_ms };
                Pass::Next(None)
            }
            Decision::AwaitApproval(_) if self.world.approves_at_once() => {
                drive_on(cp, Observed::Approved, None)
            }
            Decision::AwaitApproval(what) => {
                cp.phase = Phase::AwaitingApproval { what };
                Pass::Next(None)
            }
            Decision::Analyse(request) => {
                let since = cp.window_start_ms.unwrap_or(self.world.now_ms());
                if !self.delay_checks(at.service, cp, &request, since).await {
                    return Pass::Stopped(self.interrupted(cp));
                }
                let checks = self
                    .analyse(at.service, at.platform, &request, since, tally)
                    .await;
                drive_on(cp, Observed::Analysed { checks }, None)
            }
            Decision::Promote => self.promote(at, cp).await,
            Decision::Retire(revision) => self.retire(at, cp, revision).await,
            Decision::Abort(reason) => aborting(cp, reason),
            Decision::Done => self.done(at, cp).await,
        }
    }

    async fn promote(&self, at: &Decided<'_>, cp: &mut Checkpoint) -> Pass {
        let split = [TrafficShare::new(at.candidate, 100)];
        if let Err(e) = self.set_traffic(at.platform, &split).await {
            return aborting(cp, e);
        }
        cp.traffic = 100;
        cp.window_start_ms = Some(self.world.now_ms());
        let promoted = self.attempt_row(cp, at.candidate, 100, "promoted", None);
        drive_on(cp, Observed::Promoted, Some(promoted))
    }

    async fn retire(&self, at: &Decided<'_>, cp: &mut Checkpoint, revision: String) -> Pass {
        let record = match retry(|| at.platform.retire(&revision)).await {
            Ok(()) => self.history_row(&revision, 0, "retired", None),
            // Promoted, the release has passed its gates: an old revision that will not go is
            // left for later, never a reason to roll back.
            Err(e) if cp.traffic == 100 && revision != at.candidate => {
                cp.warnings.push(format!(
                    "retiring {revision} failed: {e}; it takes no traffic and was left in place: retire it on the platform"
                ));
                self.history_row(&revision, 0, "retire-failed", Some(e))
            }
            Err(e) => return aborting(cp, e),
        };
        drive_on(cp, Observed::Retired { revision }, Some(record))
    }

    /// Runs the post hooks of a promoted release. A failing one does not undo a promotion
    /// that already took the traffic: it fails the service and says how to go back.
    async fn done(&self, at: &Decided<'_>, cp: &mut Checkpoint) -> Pass {
        let service = at.service;
        // The service's URL, for a post hook that calls it (a bootstrap, a smoke test).
        let url = if service.post_hooks.is_empty() {
            None
        } else {
            let endpoints = retry(|| at.platform.endpoints(None)).await.ok();
            endpoints
                .into_iter()
                .flatten()
                .find(|e| e.kind == EndpointKind::Service)
                .map(|e| e.url)
        };
        match self
            .hooks(
                service,
                HookStage::Post,
                &service.post_hooks,
                cp,
                url.as_deref(),
            )
            .await
        {
            Ok(()) => finish(cp, Finished::Deployed),
            Err(HookStop::Interrupted) => Pass::Stopped(self.interrupted(cp)),
            Err(HookStop::Failed(e)) => {
                let reason = format!(
                    "{e}\n{} was promoted and serves the traffic; `engine rollback {}` returns to the previous revision",
                    at.candidate, service.name
                );
                finish(cp, Finished::Failed(reason))
            }
        }
    }

    /// Saves the checkpoint, together with the history row of the step it completes when
    /// there is one (one transaction): a row that cannot be written fails the step like a
    /// checkpoint would.
    async fn save(
        &self,
        service: &str,
        cp: &Checkpoint,
        record: Option<RevisionRecord>,
    ) -> Result<(), RolloutError> {
        let Some(record) = record else {
            let saved = super::save_checkpoint(self.store, self.run_id, service, cp).await;
            return saved.map_err(RolloutError::StateLost);
        };
        let entry = HistoryEntry {
            pipeline: &self.pipeline.name,
            environment: &self.environment,
            service,
            record: &record,
        };
        self.store
            .save_checkpoint_and_record(self.run_id, &cp.to_json(), &entry)
            .await
            .map_err(|e| {
                RolloutError::StateLost(format!("cannot record the history of `{service}`: {e}"))
            })
    }

    /// A history row of this run's attempt at its release: the release digest goes with it.
    fn attempt_row(
        &self,
        cp: &Checkpoint,
        revision: &str,
        traffic: u8,
        outcome: &str,
        detail: Option<String>,
    ) -> RevisionRecord {
        RevisionRecord {
            release: cp.release.clone(),
            ..self.history_row(revision, traffic, outcome, detail)
        }
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
            recorded_ms: self.world.now_ms() as i64,
            traffic,
            outcome: outcome.into(),
            detail,
            release: None,
        }
    }

    pub(super) fn phase(&self, service: &str, phase: &str, traffic: u8) {
        self.observer.event(&Event::Phase {
            service: service.into(),
            phase: phase.into(),
            traffic,
        });
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
        commands: &[String],
        cp: &Checkpoint,
        url: Option<&str>,
    ) -> Result<(), HookStop> {
        let context = hooks::HookContext {
            stage,
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
            let ran = self
                .world
                .run_hook(
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

    pub(super) fn is_interrupted(&self) -> bool {
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

    /// Retires what this engine's own failed rollouts left on the platform (a candidate an
    /// abort could not remove, an old revision whose retirement failed after a promotion), each
    /// reported as a phase. A revision the engine did not deploy is never touched; one that will
    /// not go is a warning, not a reason to stop this rollout.
    async fn retire_leftovers(
        &self,
        service: &str,
        platform: &dyn Platform,
        current: &ServiceState,
        history: &[RevisionRecord],
        cp: &mut Checkpoint,
    ) -> Result<(), RolloutError> {
        for revision in leftovers(history, current) {
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
                        .map_err(|e| RolloutError::StateLost(e.to_string()))?;
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

    /// Waits until the checks of `request` may run (their `delay` after the window began);
    /// `false` when interrupted first. Not a checkpointed phase: the strategy is asked again
    /// on resume, decides the same analysis, and the wait goes on from the stored window.
    async fn delay_checks(
        &self,
        service: &Service,
        cp: &Checkpoint,
        request: &AnalysisRequest,
        since_ms: u64,
    ) -> bool {
        let ready_at = Check::ready_at_ms(&service.checks, &request.checks, since_ms);
        let left = ready_at.saturating_sub(self.world.now_ms());
        if left == 0 {
            return true;
        }
        let left = humantime::format_duration(Duration::from_secs(left.div_ceil(1000)));
        self.phase(
            &service.name,
            &format!("waiting {left} before checking {}", request.revision),
            cp.traffic,
        );
        self.world
            .wait_until(ready_at, &self.options.interrupt)
            .await
    }

    /// Runs the requested health checks against one revision, and reports each as it ends.
    async fn analyse(
        &self,
        service: &Service,
        platform: &dyn Platform,
        request: &AnalysisRequest,
        since_ms: u64,
        tally: &mut Tally,
    ) -> Vec<CheckSeen> {
        let report = |run: &CheckRun| {
            let (verdict, message) = judged(run);
            self.observer.event(&Event::Check {
                service: service.name.clone(),
                check: run.check.clone(),
                verdict: verdict.name().into(),
                message,
            });
        };
        let runs = platform
            .analyse(&request.revision, &request.checks, since_ms, &report)
            .await;
        let mut seen = Vec::new();
        for run in &runs {
            let (verdict, message) = judged(run);
            tally.checks_run += 1;
            if verdict == Verdict::Healthy {
                tally.checks_passed += 1;
            }
            seen.push(CheckSeen {
                name: run.check.clone(),
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
        cp: &mut Checkpoint,
        reason: String,
    ) -> Pass {
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
                Some(self.attempt_row(cp, &candidate, cp.traffic, "aborted", Some(reason.clone())));
        }
        let mut full = reason;
        for extra in notes.iter().chain(&problems) {
            full.push_str("; ");
            full.push_str(extra);
        }
        let finished = if problems.is_empty() {
            Finished::RolledBack(full)
        } else {
            // The platform is not where it was: say so instead of claiming a rollback.
            Finished::Failed(full)
        };
        cp.phase = Phase::Finished { outcome: finished };
        Pass::Next(recorded)
    }
}

/// A check's verdict and message. A check that cannot run counts against the revision: better
/// a needless rollback than an unchecked release.
fn judged(run: &CheckRun) -> (Verdict, String) {
    match &run.result {
        Ok(r) => (r.verdict, r.message.clone()),
        Err(e) => (Verdict::Unhealthy, format!("the check could not run: {e}")),
    }
}

/// What a decision is carried out on.
struct Decided<'a> {
    service: &'a Service,
    platform: &'a dyn Platform,
    candidate: &'a str,
}

/// The contract of a rollout that is (again) driven from `cp`.
fn contract_of(cp: &Checkpoint) -> Contract {
    let candidate = cp.candidate.as_deref().unwrap_or_default();
    Contract::new(candidate, cp.stable.as_deref(), cp.traffic).resumed_after(cp.strategy_steps)
}

/// The phase once `done` of the service's pre hooks have passed.
fn after_pre_hooks(service: &Service, done: usize) -> Phase {
    if done < service.pre_hooks.len() {
        Phase::PreHooks { done }
    } else {
        Phase::Deploying
    }
}

/// The strategy is told `observed` on the next pass.
fn drive_on(cp: &mut Checkpoint, observed: Observed, record: Option<RevisionRecord>) -> Pass {
    cp.phase = Phase::Driving { pending: observed };
    Pass::Next(record)
}

/// The next pass rolls the service back.
fn aborting(cp: &mut Checkpoint, reason: String) -> Pass {
    cp.phase = Phase::Aborting { reason };
    Pass::Next(None)
}

/// Ends the service, stored so a resumed run reports it without doing it again.
fn finish(cp: &mut Checkpoint, outcome: Finished) -> Pass {
    cp.phase = Phase::Finished { outcome };
    Pass::Next(None)
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
            release: None,
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
