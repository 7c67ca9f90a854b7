//! A platform and a strategy in memory, to drive the executor in unit tests without Wasm.
//!
//! The platform keeps services, revisions and traffic like a real one (deploys are idempotent
//! per deployment id, a serving revision cannot be retired), records every call, and fails the
//! calls a test asks it to. The strategy is a scripted canary: 10 % to the candidate, analyse,
//! optionally wait for approval, promote, retire the stable revision, done.

use crate::config::{Artifact, Resource, Service};
use crate::port::{
    CheckReport, CheckRun, Decision, Endpoint, EndpointKind, ErrorKind, Feature, Observation, Plan,
    PlanAction, Platform, PortError, Ports, ResourcePlatform, ResourceState, RevisionInfo, Rollout,
    ServiceState, Step, Strategy, TrafficShare, Verdict,
};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// A revision in the cloud: its id and the image it runs.
#[derive(Debug, Clone)]
struct Revision {
    id: String,
    image: String,
}

#[derive(Debug, Clone, Default)]
struct Deployed {
    revisions: Vec<Revision>,
    traffic: Vec<TrafficShare>,
}

/// The in-memory cloud every service of a test runs on.
#[derive(Default)]
pub struct Cloud {
    services: Mutex<BTreeMap<String, Deployed>>,
    calls: Mutex<Vec<String>>,
    failures: Mutex<BTreeMap<String, VecDeque<ErrorKind>>>,
    unhealthy: Mutex<BTreeSet<String>>,
    /// Cancelled when a call named here is made: a signal arriving during that call.
    interrupt_on: Mutex<Option<(String, CancellationToken)>>,
    /// Resources by name: the spec each was last applied with.
    resources: Mutex<BTreeMap<String, serde_json::Value>>,
}

impl Cloud {
    /// Makes the next `times` calls of `call` (`deploy api`, `retire api-r1`…) fail with `kind`.
    pub fn fail(&self, call: &str, kind: ErrorKind, times: usize) {
        let mut failures = self.failures.lock().unwrap();
        let queue = failures.entry(call.into()).or_default();
        queue.extend(std::iter::repeat_n(kind, times));
    }

    /// Health checks of `revision` fail.
    pub fn make_unhealthy(&self, revision: &str) {
        self.unhealthy.lock().unwrap().insert(revision.into());
    }

    /// Cancels `token` when a call starting with `call` is made.
    pub fn interrupt_on(&self, call: &str, token: CancellationToken) {
        *self.interrupt_on.lock().unwrap() = Some((call.into(), token));
    }

    /// The calls made, in order (`deploy api r1`, `set-traffic api api-r1=10,api-r0=90`…).
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    /// How many calls begin with `prefix`.
    pub fn count(&self, prefix: &str) -> usize {
        self.calls()
            .iter()
            .filter(|c| c.starts_with(prefix))
            .count()
    }

    /// A service's traffic as `revision=percent` pairs; `None` when it does not exist.
    pub fn traffic(&self, service: &str) -> Option<Vec<(String, u8)>> {
        let services = self.services.lock().unwrap();
        let deployed = services.get(service)?;
        Some(
            deployed
                .traffic
                .iter()
                .map(|t| (t.revision.clone(), t.percent))
                .collect(),
        )
    }

    /// A service's revisions, oldest first.
    pub fn revisions(&self, service: &str) -> Vec<String> {
        let services = self.services.lock().unwrap();
        services.get(service).map_or(Vec::new(), |d| {
            d.revisions.iter().map(|r| r.id.clone()).collect()
        })
    }

    /// A resource's spec as last applied; `None` when it does not exist.
    pub fn resource(&self, name: &str) -> Option<serde_json::Value> {
        self.resources.lock().unwrap().get(name).cloned()
    }

    /// Creates a resource as someone else would, outside the engine.
    pub fn put_resource(&self, name: &str, spec: serde_json::Value) {
        self.resources.lock().unwrap().insert(name.into(), spec);
    }

    /// Writes `what` into the list of calls, to see what happened between them.
    pub fn note(&self, what: String) {
        self.calls.lock().unwrap().push(what);
    }

    /// Records `call` and returns the failure a test asked for, if any.
    fn call(&self, call: String) -> Result<(), PortError> {
        if let Some((prefix, token)) = &*self.interrupt_on.lock().unwrap()
            && call.starts_with(prefix.as_str())
        {
            token.cancel();
        }
        self.calls.lock().unwrap().push(call.clone());
        let mut failures = self.failures.lock().unwrap();
        let kind = failures
            .iter_mut()
            .find(|(name, _)| call.starts_with(name.as_str()))
            .and_then(|(_, queue)| queue.pop_front());
        match kind {
            Some(kind) => Err(PortError {
                kind,
                message: format!("{call} failed (as the test asked)"),
            }),
            None => Ok(()),
        }
    }
}

/// The cloud as the executor's ports: every service's platform is the cloud, every strategy
/// the scripted canary.
impl Ports for Cloud {
    fn resource<'a>(
        &'a self,
        resource: &'a Resource,
    ) -> Result<Box<dyn ResourcePlatform + 'a>, PortError> {
        Ok(Box::new(MemoryResource {
            cloud: self,
            resource,
        }))
    }

    fn platform<'a>(&'a self, service: &'a Service) -> Result<Box<dyn Platform + 'a>, PortError> {
        Ok(Box::new(MemoryPlatform {
            cloud: self,
            service,
        }))
    }

    fn strategy<'a>(&'a self, service: &'a Service) -> Result<Box<dyn Strategy + 'a>, PortError> {
        let approval = service.strategy_config["approval"].as_bool() == Some(true);
        let breaks_contract = service.strategy_config["breaks_contract"].as_bool() == Some(true);
        let wait_ms = service.strategy_config["wait_ms"].as_u64();
        let never_finishes = service.strategy_config["never_finishes"].as_bool() == Some(true);
        Ok(Box::new(ScriptedCanary {
            approval,
            breaks_contract,
            wait_ms,
            never_finishes,
        }))
    }
}

struct MemoryPlatform<'a> {
    cloud: &'a Cloud,
    service: &'a Service,
}

impl MemoryPlatform<'_> {
    fn name(&self) -> &str {
        &self.service.name
    }

    fn image(&self) -> String {
        match &self.service.artifact {
            Artifact::Image(i) | Artifact::Path(i) => i.clone(),
        }
    }

    fn with<T>(
        &self,
        change: impl FnOnce(&mut Deployed) -> Result<T, String>,
    ) -> Result<T, PortError> {
        let mut services = self.cloud.services.lock().unwrap();
        let Some(deployed) = services.get_mut(self.name()) else {
            return Err(PortError::permanent(format!(
                "`{}` does not exist",
                self.name()
            )));
        };
        change(deployed).map_err(PortError::permanent)
    }
}

#[async_trait::async_trait]
impl Platform for MemoryPlatform<'_> {
    fn features(&self) -> Vec<Feature> {
        vec![Feature::TrafficSplit, Feature::RetireRevisions]
    }

    async fn read(&self) -> Result<Option<ServiceState>, PortError> {
        self.cloud.call(format!("read {}", self.name()))?;
        let services = self.cloud.services.lock().unwrap();
        Ok(services.get(self.name()).map(|d| ServiceState {
            revisions: d
                .revisions
                .iter()
                .map(|r| RevisionInfo {
                    id: r.id.clone(),
                    artifact: Some(r.image.clone()),
                    created_at_ms: None,
                    ready: true,
                    message: None,
                })
                .collect(),
            traffic: d.traffic.clone(),
            url: Some(format!("http://{}.memory", self.name())),
            deployed: String::new(),
        }))
    }

    async fn plan(&self, current: Option<&ServiceState>) -> Result<Plan, PortError> {
        self.cloud.call(format!("plan {}", self.name()))?;
        let serving_image = current.and_then(|c| {
            let serving = c.serving()?;
            let revision = c.revisions.iter().find(|r| r.id == serving)?;
            revision.artifact.clone()
        });
        let action = match (current, serving_image) {
            (None, _) => PlanAction::Create,
            (Some(_), Some(image)) if image == self.image() => PlanAction::NoChange,
            (Some(_), _) => PlanAction::Update,
        };
        Ok(Plan {
            action,
            changes: Vec::new(),
            summary: format!("{} {}", action.label(), self.name()),
        })
    }

    async fn deploy(&self, deployment_id: &str) -> Result<String, PortError> {
        self.cloud
            .call(format!("deploy {} {deployment_id}", self.name()))?;
        let id = format!("{}-{deployment_id}", self.name());
        let mut services = self.cloud.services.lock().unwrap();
        let deployed = services.entry(self.name().into()).or_default();
        if !deployed.revisions.iter().any(|r| r.id == id) {
            deployed.revisions.push(Revision {
                id: id.clone(),
                image: self.image(),
            });
        }
        Ok(id)
    }

    async fn set_traffic(&self, split: &[TrafficShare]) -> Result<(), PortError> {
        let pairs: Vec<String> = split
            .iter()
            .map(|t| format!("{}={}", t.revision, t.percent))
            .collect();
        self.cloud
            .call(format!("set-traffic {} {}", self.name(), pairs.join(",")))?;
        self.with(|d| {
            if let Some(t) = split
                .iter()
                .find(|t| !d.revisions.iter().any(|r| r.id == t.revision))
            {
                return Err(format!("no revision {}", t.revision));
            }
            d.traffic = split.iter().filter(|t| t.percent > 0).cloned().collect();
            Ok(())
        })
    }

    async fn get_traffic(&self) -> Result<Vec<TrafficShare>, PortError> {
        self.cloud.call(format!("get-traffic {}", self.name()))?;
        self.with(|d| Ok(d.traffic.clone()))
    }

    async fn endpoints(&self, revision: Option<&str>) -> Result<Vec<Endpoint>, PortError> {
        self.cloud.call(format!("endpoints {}", self.name()))?;
        Ok(vec![Endpoint {
            url: format!("http://{}.memory", revision.unwrap_or(self.name())),
            kind: if revision.is_some() {
                EndpointKind::Revision
            } else {
                EndpointKind::Service
            },
            revision: revision.map(String::from),
        }])
    }

    async fn retire(&self, revision: &str) -> Result<(), PortError> {
        self.cloud.call(format!("retire {revision}"))?;
        self.with(|d| {
            if d.traffic.iter().any(|t| t.revision == revision) {
                return Err(format!("{revision} serves traffic"));
            }
            d.revisions.retain(|r| r.id != revision);
            Ok(())
        })
    }

    async fn destroy(&self) -> Result<(), PortError> {
        self.cloud.call(format!("destroy {}", self.name()))?;
        self.cloud.services.lock().unwrap().remove(self.name());
        Ok(())
    }

    async fn analyse(
        &self,
        revision: &str,
        checks: &[String],
        _since_ms: u64,
        each: &(dyn for<'r> Fn(&'r CheckRun) + Sync),
    ) -> Vec<CheckRun> {
        let unhealthy = self.cloud.unhealthy.lock().unwrap().contains(revision);
        let mut runs = Vec::new();
        for c in crate::config::Check::selected(&self.service.checks, checks) {
            self.cloud.note(format!("check {} {}", revision, c.name));
            let run = CheckRun {
                check: c.name.clone(),
                result: Ok(CheckReport {
                    verdict: if unhealthy {
                        Verdict::Unhealthy
                    } else {
                        Verdict::Healthy
                    },
                    message: format!("{revision} checked"),
                }),
            };
            each(&run);
            runs.push(run);
        }
        runs
    }
}

/// A canary in Rust: its state is the name of the step it took last.
struct ScriptedCanary {
    approval: bool,
    /// Sends traffic to a revision that is neither candidate nor stable.
    breaks_contract: bool,
    /// A wait between the canary step and the analysis.
    wait_ms: Option<u64>,
    /// Analyses the candidate again and again.
    never_finishes: bool,
}

#[async_trait::async_trait]
impl Strategy for ScriptedCanary {
    async fn step(
        &self,
        rollout: &Rollout,
        state: Option<&str>,
        observation: &Observation,
        _now_ms: u64,
    ) -> Result<Step, PortError> {
        let candidate = rollout.candidate.as_str();
        let split = |percent: u8| {
            let mut split = vec![TrafficShare::new(candidate, percent)];
            if let Some(stable) = &rollout.stable {
                split.push(TrafficShare::new(stable, 100 - percent));
            }
            split
        };
        let (next, decision) = match (state, observation) {
            (None, _) if self.breaks_contract => (
                "stray",
                Decision::SetTraffic(vec![TrafficShare::new("elsewhere", 100)]),
            ),
            (None, _) if rollout.stable.is_some() => ("canary", Decision::SetTraffic(split(10))),
            (Some("analyse"), _) if self.never_finishes => (
                "analyse",
                Decision::Analyse(crate::port::AnalysisRequest {
                    revision: candidate.into(),
                    checks: Vec::new(),
                }),
            ),
            (Some("canary"), _) if let Some(ms) = self.wait_ms => ("wait", Decision::Wait(ms)),
            (None, _) | (Some("canary" | "wait"), _) => (
                "analyse",
                Decision::Analyse(crate::port::AnalysisRequest {
                    revision: candidate.into(),
                    checks: Vec::new(),
                }),
            ),
            (Some("analyse"), Observation::Analysed(checks))
                if checks.iter().any(|c| c.verdict != Verdict::Healthy) =>
            {
                (
                    "abort",
                    Decision::Abort(format!("{candidate} is unhealthy")),
                )
            }
            (Some("analyse"), _) if self.approval => (
                "approval",
                Decision::AwaitApproval(format!("promote {candidate}")),
            ),
            (Some("approval"), Observation::Rejected(why)) => {
                ("abort", Decision::Abort(format!("rejected: {why}")))
            }
            (Some("analyse" | "approval"), _) => ("promote", Decision::Promote),
            (Some("promote"), _) => match &rollout.stable {
                Some(stable) => ("retire", Decision::Retire(stable.clone())),
                None => ("done", Decision::Done),
            },
            (Some("retire"), _) => ("done", Decision::Done),
            (state, observation) => {
                return Err(PortError::permanent(format!(
                    "the scripted canary cannot go on from {state:?} after {observation:?}"
                )));
            }
        };
        Ok(Step {
            state: next.into(),
            decision,
            phase: next.into(),
        })
    }
}

/// A resource in the memory cloud: its spec is all there is; its output `id` is its name.
struct MemoryResource<'a> {
    cloud: &'a Cloud,
    resource: &'a Resource,
}

impl MemoryResource<'_> {
    fn state(&self, spec: &serde_json::Value) -> ResourceState {
        let name = &self.resource.name;
        ResourceState {
            id: format!("memory/{name}"),
            observed: spec.to_string(),
            outputs: [("id".to_string(), format!("memory/{name}"))].into(),
        }
    }
}

#[async_trait::async_trait]
impl ResourcePlatform for MemoryResource<'_> {
    async fn read(&self) -> Result<Option<ResourceState>, PortError> {
        self.cloud
            .call(format!("read-resource {}", self.resource.name))?;
        Ok(self
            .cloud
            .resource(&self.resource.name)
            .map(|s| self.state(&s)))
    }

    async fn plan(&self, current: Option<&ResourceState>) -> Result<Plan, PortError> {
        self.cloud
            .call(format!("plan-resource {}", self.resource.name))?;
        let action = match current {
            None => PlanAction::Create,
            Some(c)
                if serde_json::from_str::<serde_json::Value>(&c.observed)
                    .ok()
                    .as_ref()
                    == Some(&self.resource.spec) =>
            {
                PlanAction::NoChange
            }
            Some(_) => PlanAction::Update,
        };
        Ok(Plan {
            action,
            changes: Vec::new(),
            summary: String::new(),
        })
    }

    async fn apply(&self, _current: Option<&ResourceState>) -> Result<ResourceState, PortError> {
        self.cloud.call(format!(
            "apply-resource {} {}",
            self.resource.name, self.resource.spec
        ))?;
        let spec = self.resource.spec.clone();
        self.cloud.put_resource(&self.resource.name, spec.clone());
        Ok(self.state(&spec))
    }

    async fn delete(&self) -> Result<(), PortError> {
        self.cloud
            .call(format!("delete-resource {}", self.resource.name))?;
        self.cloud
            .resources
            .lock()
            .unwrap()
            .remove(&self.resource.name);
        Ok(())
    }
}
