//! The executor's port: what a rollout needs from the platform a service runs on and from its
//! strategy, in the engine's own types.
//!
//! The executor (`engine::run`) drives rollouts through these traits only. The runtime adapts
//! plugins to them ([`crate::runtime::port`]), which is the one place that knows the WIT types
//! of a plugin version; tests drive the executor with platforms and strategies of their own.

use crate::config::{Resource, Service};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// A revision's share of a service's traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficShare {
    pub revision: String,
    pub percent: u8,
}

impl TrafficShare {
    pub fn new(revision: &str, percent: u8) -> TrafficShare {
        TrafficShare {
            revision: revision.into(),
            percent,
        }
    }
}

/// One revision a platform reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevisionInfo {
    pub id: String,
    pub artifact: Option<String>,
    pub created_at_ms: Option<u64>,
    pub ready: bool,
    pub message: Option<String>,
}

/// A service as it runs on the platform now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceState {
    pub revisions: Vec<RevisionInfo>,
    pub traffic: Vec<TrafficShare>,
    pub url: Option<String>,
    /// The provider's own record of what it deployed, handed back to its `plan`.
    pub deployed: String,
}

impl ServiceState {
    /// The revision with the largest share of the traffic; none while none takes any.
    pub fn serving(&self) -> Option<&str> {
        self.traffic
            .iter()
            .filter(|t| t.percent > 0)
            .max_by_key(|t| t.percent)
            .map(|t| t.revision.as_str())
    }
}

/// What a deploy would change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanAction {
    Create,
    Update,
    NoChange,
}

impl PlanAction {
    pub fn label(self) -> &'static str {
        match self {
            PlanAction::Create => "create",
            PlanAction::Update => "update",
            PlanAction::NoChange => "no-change",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub field: String,
    pub before: Option<String>,
    pub after: Option<String>,
}

/// A provider's plan of a deploy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub action: PlanAction,
    pub changes: Vec<Change>,
    pub summary: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointKind {
    /// The service's own address, which follows the traffic split.
    Service,
    /// One revision's address.
    Revision,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub url: String,
    pub kind: EndpointKind,
    pub revision: Option<String>,
}

/// What a platform can do, as a provider declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feature {
    TrafficSplit,
    RevisionUrls,
    InstanceBatches,
    RetireRevisions,
}

impl Feature {
    /// Its name in WIT and in the CLI's output.
    pub fn name(self) -> &'static str {
        match self {
            Feature::TrafficSplit => "traffic-split",
            Feature::RevisionUrls => "revision-urls",
            Feature::InstanceBatches => "instance-batches",
            Feature::RetireRevisions => "retire-revisions",
        }
    }
}

/// A health check's judgement of a revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Healthy,
    Unhealthy,
    Inconclusive,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Healthy => "healthy",
            Verdict::Unhealthy => "unhealthy",
            Verdict::Inconclusive => "inconclusive",
        }
    }

    /// The verdict of a stored name; anything unknown is unhealthy.
    pub fn parse(name: &str) -> Verdict {
        match name {
            "healthy" => Verdict::Healthy,
            "inconclusive" => Verdict::Inconclusive,
            _ => Verdict::Unhealthy,
        }
    }
}

/// One health check's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    pub verdict: Verdict,
    pub message: String,
}

/// One health check, run or not.
#[derive(Debug)]
pub struct CheckRun {
    pub check: String,
    pub result: Result<CheckReport, PortError>,
}

/// How a platform call failed: what decides whether it is worth calling again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The platform asks to wait this long (or a moment) and call again.
    RateLimited { retry_after: Option<Duration> },
    /// A failure that may pass by itself (a timeout, a 503).
    Transient,
    /// Someone else changed the service at the same time.
    Conflict,
    /// Calling again gives the same answer (bad config, denied, a broken plugin…).
    Permanent,
}

/// A call through the port that failed; `message` says what and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PortError {
    pub kind: ErrorKind,
    pub message: String,
}

impl PortError {
    pub fn permanent(message: impl Into<String>) -> PortError {
        PortError {
            kind: ErrorKind::Permanent,
            message: message.into(),
        }
    }
}

/// A problem a plugin's own `validate` found in the configuration a service gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub severity: crate::config::Severity,
    /// Where in the configuration, as a JSON pointer (`/region`); empty for all of it.
    pub path: String,
    pub message: String,
    /// How to fix it, when the plugin can say.
    pub hint: Option<String>,
}

/// One service on its platform. Every call is idempotent for the same arguments: a resumed
/// run repeats the call a crash interrupted.
#[async_trait::async_trait]
pub trait Platform: Send + Sync {
    /// What the platform can do (told to the strategy).
    fn features(&self) -> Vec<Feature>;
    /// The service as it runs now; `None` when it does not exist.
    async fn read(&self) -> Result<Option<ServiceState>, PortError>;
    /// What deploying the service's spec over `current` would change.
    async fn plan(&self, current: Option<&ServiceState>) -> Result<Plan, PortError>;
    /// Deploys the spec as a new revision that takes no traffic; returns its id. The same
    /// `deployment_id` gives the same revision.
    async fn deploy(&self, deployment_id: &str) -> Result<String, PortError>;
    async fn set_traffic(&self, split: &[TrafficShare]) -> Result<(), PortError>;
    async fn get_traffic(&self) -> Result<Vec<TrafficShare>, PortError>;
    /// The service's addresses, or one revision's.
    async fn endpoints(&self, revision: Option<&str>) -> Result<Vec<Endpoint>, PortError>;
    /// The service's URL in each place (region) it runs in, by place; empty when the platform
    /// does not tell places apart.
    async fn place_urls(&self) -> Result<Vec<(String, String)>, PortError> {
        Ok(Vec::new())
    }
    /// Removes a revision that takes no traffic.
    async fn retire(&self, revision: &str) -> Result<(), PortError>;
    /// Removes the whole service.
    async fn destroy(&self) -> Result<(), PortError>;
    /// Runs the service's health checks named in `checks` (all of them when empty) against
    /// `revision`, looking at what happened since `since_ms`; tells `each` about every check
    /// as it finishes (an analysis may take minutes: the user sees each result at once).
    async fn analyse(
        &self,
        revision: &str,
        checks: &[String],
        since_ms: u64,
        each: &(dyn for<'r> Fn(&'r CheckRun) + Sync),
    ) -> Vec<CheckRun>;
}

/// A resource as it exists on its platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceState {
    /// The platform's identifier, for messages and history.
    pub id: String,
    /// The provider's own record of what it observed, handed back to its `plan` and `apply`.
    pub observed: String,
    /// Values others reference as `${resources.NAME.outputs.KEY}`.
    pub outputs: BTreeMap<String, String>,
}

/// One resource on its platform. Every call is idempotent for the same arguments.
#[async_trait::async_trait]
pub trait ResourcePlatform: Send + Sync {
    /// The object as it exists now; `None` when it does not.
    async fn read(&self) -> Result<Option<ResourceState>, PortError>;
    /// What applying the spec over `current` would change.
    async fn plan(&self, current: Option<&ResourceState>) -> Result<Plan, PortError>;
    /// Creates or updates the object to the spec; returns it as it now is.
    async fn apply(&self, current: Option<&ResourceState>) -> Result<ResourceState, PortError>;
    /// Deletes the object; one that does not exist is deleted already.
    async fn delete(&self) -> Result<(), PortError>;
}

/// What a strategy is told about the rollout it drives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollout {
    pub service: String,
    pub stable: Option<String>,
    pub candidate: String,
    pub features: Vec<Feature>,
    /// The strategy's configuration (JSON).
    pub config: String,
}

/// What happened since the strategy's last decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    Start,
    TrafficSet(Vec<TrafficShare>),
    Waited,
    Analysed(Vec<CheckOutcome>),
    Approved,
    Rejected(String),
    Promoted,
    Retired(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOutcome {
    pub name: String,
    pub verdict: Verdict,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnalysisRequest {
    pub revision: String,
    /// The checks to run; all of the service's when empty.
    pub checks: Vec<String>,
}

/// What a strategy decides to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    SetTraffic(Vec<TrafficShare>),
    /// Milliseconds.
    Wait(u64),
    Analyse(AnalysisRequest),
    AwaitApproval(String),
    Promote,
    Retire(String),
    Abort(String),
    Done,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The strategy's state to hand back on the next step.
    pub state: String,
    pub decision: Decision,
    /// A label for the user (`canary 10%`).
    pub phase: String,
}

/// A deployment strategy: decides, step by step, what the rollout does. Given the same
/// rollout, state, observation and time it decides the same thing.
#[async_trait::async_trait]
pub trait Strategy: Send + Sync {
    async fn step(
        &self,
        rollout: &Rollout,
        state: Option<&str>,
        observation: &Observation,
        now_ms: u64,
    ) -> Result<Step, PortError>;
}

/// Gives the executor each service's platform and strategy.
pub trait Ports: Sync {
    fn platform<'a>(&'a self, service: &'a Service) -> Result<Box<dyn Platform + 'a>, PortError>;
    fn strategy<'a>(&'a self, service: &'a Service) -> Result<Box<dyn Strategy + 'a>, PortError>;
    /// The platform of a resource, its spec's references filled in.
    fn resource<'a>(
        &'a self,
        resource: &'a Resource,
    ) -> Result<Box<dyn ResourcePlatform + 'a>, PortError> {
        Err(PortError::permanent(format!(
            "resource `{}`: this engine has no platform for resources",
            resource.name
        )))
    }
}

/// Calls the platform again on the errors that ask for it: rate limited after its
/// retry-after, transient with exponential backoff, a conflict once; never on anything else.
pub async fn retry<T, F, Fut>(mut call: F) -> Result<T, PortError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, PortError>>,
{
    const ATTEMPTS: u32 = 5;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let error = match call().await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let wait = match error.kind {
            _ if attempt >= ATTEMPTS => None,
            ErrorKind::RateLimited { retry_after } => Some(
                retry_after
                    .unwrap_or(Duration::from_secs(1))
                    .min(Duration::from_secs(60)),
            ),
            ErrorKind::Transient => Some(Duration::from_millis(100 << attempt.min(6))),
            ErrorKind::Conflict if attempt == 1 => Some(Duration::from_millis(100)),
            ErrorKind::Conflict | ErrorKind::Permanent => None,
        };
        match wait {
            Some(d) => {
                tracing::info!("retrying in {d:?} after: {error}");
                tokio::time::sleep(d).await;
            }
            None => return Err(error),
        }
    }
}
