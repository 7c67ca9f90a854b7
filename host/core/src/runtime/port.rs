//! Plugins behind the executor's port ([`crate::port`]): the one place where the executor's
//! domain types meet the WIT types of `engine:plugin@0.1.1`. A second WIT version gets an
//! adapter of its own beside this one.

use super::bindings::health::exports::engine::plugin::health::Target as HealthTarget;
use super::bindings::strategy::exports::engine::plugin::strategy as wit;
use super::bindings::types;
use super::resources::{ResourceSpec, ResourceStatus, Resources};
use super::{CallError, LoadedPlugin, PluginError, Provider};
use crate::config::{Artifact, Ingress, PluginRole, Resource, Service, Severity};
use crate::port::{
    self, CheckReport, CheckRun, ConfigProblem, Decision, Endpoint, EndpointKind, ErrorKind,
    Feature, Observation, Plan, PlanAction, Platform, PortError, Ports, ResourcePlatform,
    ResourceState, Rollout, ServiceState, Step, TrafficShare, Verdict,
};
use std::collections::BTreeMap;

/// The loaded plugins of a pipeline, as the executor's ports.
pub struct PluginPorts<'a> {
    plugins: &'a BTreeMap<String, LoadedPlugin>,
}

impl<'a> PluginPorts<'a> {
    pub fn new(plugins: &'a BTreeMap<String, LoadedPlugin>) -> PluginPorts<'a> {
        PluginPorts { plugins }
    }

    fn plugin(&self, name: &str) -> Result<&'a LoadedPlugin, PortError> {
        self.plugins
            .get(name)
            .ok_or_else(|| PortError::permanent(format!("plugin `{name}` is not loaded")))
    }
}

impl Ports for PluginPorts<'_> {
    fn platform<'s>(&'s self, service: &'s Service) -> Result<Box<dyn Platform + 's>, PortError> {
        let plugin = self.plugin(&service.provider)?;
        Ok(Box::new(PluginPlatform {
            ports: self,
            plugin,
            provider: plugin.provider().map_err(port_error)?,
            target: service_ref(service),
            spec: service_spec(service),
            checks: &service.checks,
        }))
    }

    fn strategy<'s>(
        &'s self,
        service: &'s Service,
    ) -> Result<Box<dyn port::Strategy + 's>, PortError> {
        let plugin = self.plugin(&service.strategy)?;
        Ok(Box::new(PluginStrategy {
            strategy: plugin.strategy().map_err(port_error)?,
        }))
    }

    fn resource<'s>(
        &'s self,
        resource: &'s Resource,
    ) -> Result<Box<dyn ResourcePlatform + 's>, PortError> {
        Ok(Box::new(self.resource_platform(resource)?))
    }
}

impl PluginPorts<'_> {
    fn resource_platform<'s>(
        &'s self,
        resource: &'s Resource,
    ) -> Result<PluginResource<'s>, PortError> {
        let plugin = self.plugin(&resource.provider)?;
        Ok(PluginResource {
            resources: plugin.resources().map_err(port_error)?,
            spec: resource_spec(resource),
        })
    }
}

/// The `ResourceSpec` a provider is given for a resource.
pub(crate) fn resource_spec(resource: &Resource) -> ResourceSpec {
    ResourceSpec {
        kind: resource.kind.clone(),
        name: resource.name.clone(),
        spec: resource.spec.to_string(),
        config: resource.provider_config.to_string(),
    }
}

/// A resource's provider plugin.
struct PluginResource<'a> {
    resources: Resources<'a>,
    spec: ResourceSpec,
}

#[async_trait::async_trait]
impl ResourcePlatform for PluginResource<'_> {
    async fn read(&self) -> Result<Option<ResourceState>, PortError> {
        let status = self.resources.read(&self.spec).await.map_err(port_error)?;
        Ok(status.map(resource_state))
    }

    async fn plan(&self, current: Option<&ResourceState>) -> Result<Plan, PortError> {
        let current = current.map(resource_status);
        let plan = self.resources.plan(&self.spec, current.as_ref()).await;
        Ok(domain_plan(plan.map_err(port_error)?))
    }

    async fn apply(&self, current: Option<&ResourceState>) -> Result<ResourceState, PortError> {
        let current = current.map(resource_status);
        let applied = self.resources.apply(&self.spec, current.as_ref()).await;
        Ok(resource_state(applied.map_err(port_error)?))
    }

    async fn delete(&self) -> Result<(), PortError> {
        self.resources.delete(&self.spec).await.map_err(port_error)
    }
}

fn resource_state(status: ResourceStatus) -> ResourceState {
    ResourceState {
        id: status.id,
        observed: status.observed,
        outputs: status.outputs.into_iter().collect(),
    }
}

fn resource_status(state: &ResourceState) -> ResourceStatus {
    ResourceStatus {
        id: state.id.clone(),
        observed: state.observed.clone(),
        outputs: state
            .outputs
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

/// A service's provider plugin and its health-check plugins.
struct PluginPlatform<'a> {
    ports: &'a PluginPorts<'a>,
    plugin: &'a LoadedPlugin,
    provider: Provider<'a>,
    target: types::ServiceRef,
    spec: types::ServiceSpec,
    checks: &'a [crate::config::Check],
}

#[async_trait::async_trait]
impl Platform for PluginPlatform<'_> {
    fn features(&self) -> Vec<Feature> {
        self.plugin.info().features.clone()
    }

    async fn read(&self) -> Result<Option<ServiceState>, PortError> {
        let status = self.provider.read(&self.target).await.map_err(port_error)?;
        Ok(status.map(service_state))
    }

    async fn plan(&self, current: Option<&ServiceState>) -> Result<Plan, PortError> {
        let current = current.map(service_status);
        let plan = self.provider.plan(&self.spec, current.as_ref()).await;
        Ok(domain_plan(plan.map_err(port_error)?))
    }

    async fn deploy(&self, deployment_id: &str) -> Result<String, PortError> {
        let revision = self.provider.deploy(&self.spec, deployment_id).await;
        Ok(revision.map_err(port_error)?.id)
    }

    async fn set_traffic(&self, split: &[TrafficShare]) -> Result<(), PortError> {
        let split = wit_split(split);
        let set = self.provider.set_traffic(&self.target, &split).await;
        set.map_err(port_error)
    }

    async fn get_traffic(&self) -> Result<Vec<TrafficShare>, PortError> {
        let split = self.provider.get_traffic(&self.target).await;
        Ok(domain_split(&split.map_err(port_error)?))
    }

    async fn endpoints(&self, revision: Option<&str>) -> Result<Vec<Endpoint>, PortError> {
        let endpoints = self.wit_endpoints(revision).await?;
        Ok(endpoints.into_iter().map(endpoint).collect())
    }

    async fn place_urls(&self) -> Result<Vec<(String, String)>, PortError> {
        // A 0.1.0 provider, or one without resources, does not tell places apart.
        let Ok(resources) = self.plugin.resources() else {
            return Ok(Vec::new());
        };
        let urls = resources.service_urls(&self.target).await;
        urls.map_err(port_error)
    }

    async fn retire(&self, revision: &str) -> Result<(), PortError> {
        let retired = self.provider.retire(&self.target, revision).await;
        retired.map_err(port_error)
    }

    async fn destroy(&self) -> Result<(), PortError> {
        self.provider
            .destroy(&self.target)
            .await
            .map_err(port_error)
    }

    async fn analyse(
        &self,
        revision: &str,
        checks: &[String],
        since_ms: u64,
        each: &(dyn for<'r> Fn(&'r CheckRun) + Sync),
    ) -> Vec<CheckRun> {
        let endpoints = match port::retry(|| self.wit_endpoints(Some(revision))).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!("endpoints of `{}` unavailable: {e}", self.target.name);
                Vec::new()
            }
        };
        let places: Vec<(Option<String>, HealthTarget)> =
            super::places::places(endpoints, revision)
                .into_iter()
                .map(|place| {
                    let target = HealthTarget {
                        service: self.target.name.clone(),
                        revision: Some(revision.into()),
                        endpoints: place.endpoints,
                        since_ms,
                    };
                    (place.label, target)
                })
                .collect();
        let mut runs = Vec::new();
        for check in crate::config::Check::selected(self.checks, checks) {
            // Several places at once (each run has the check's whole time budget), a bounded
            // number at a time, since the provider decides how many places there are.
            let mut results = Vec::with_capacity(places.len());
            for batch in places.chunks(super::places::MAX_PLACES_AT_ONCE) {
                let runs = batch.iter().map(|(label, target)| async {
                    (label.clone(), self.check(check, target).await)
                });
                results.extend(futures::future::join_all(runs).await);
            }
            let run = CheckRun {
                check: check.name.clone(),
                result: super::places::combine(results),
            };
            each(&run);
            runs.push(run);
        }
        runs
    }
}

impl PluginPlatform<'_> {
    async fn check(
        &self,
        check: &crate::config::Check,
        target: &HealthTarget,
    ) -> Result<CheckReport, PortError> {
        let health = self.ports.plugin(&check.plugin)?.health();
        let config = check.config.to_string();
        let health = health.map_err(port_error)?;
        let result = health.check(&config, target).await.map_err(port_error)?;
        Ok(CheckReport {
            verdict: verdict(result.verdict),
            message: result.message,
        })
    }

    async fn wit_endpoints(
        &self,
        revision: Option<&str>,
    ) -> Result<Vec<types::Endpoint>, PortError> {
        let endpoints = self.provider.endpoints(&self.target, revision).await;
        endpoints.map_err(port_error)
    }
}

/// A strategy plugin.
struct PluginStrategy<'a> {
    strategy: super::Strategy<'a>,
}

#[async_trait::async_trait]
impl port::Strategy for PluginStrategy<'_> {
    async fn step(
        &self,
        rollout: &Rollout,
        state: Option<&str>,
        observation: &Observation,
        now_ms: u64,
    ) -> Result<Step, PortError> {
        let rollout = wit::Rollout {
            service: rollout.service.clone(),
            stable: rollout.stable.clone(),
            candidate: rollout.candidate.clone(),
            features: rollout.features.iter().map(|f| wit_feature(*f)).collect(),
            config: rollout.config.clone(),
        };
        let observation = wit_observation(observation);
        let step = self
            .strategy
            .step(&rollout, state, &observation, now_ms)
            .await;
        let step = step.map_err(port_error)?;
        Ok(Step {
            state: step.state,
            decision: decision(step.decision),
            phase: step.phase,
        })
    }
}

/// A plugin call's error, classified for [`port::retry`].
impl LoadedPlugin {
    /// The plugin's own `validate` of the configuration `service` gives it in `role`.
    pub async fn validate_configuration(
        &self,
        service: &Service,
        role: PluginRole,
    ) -> Result<Vec<ConfigProblem>, CallError> {
        let config = |value: Option<&serde_json::Value>| {
            value.map_or_else(|| "{}".to_string(), |v| v.to_string())
        };
        let found = match role {
            PluginRole::Provider => self.provider()?.validate(&service_spec(service)).await?,
            PluginRole::Strategy => {
                let config = config(Some(&service.strategy_config));
                self.strategy()?.validate(&config).await?
            }
            PluginRole::Check(i) => {
                let config = config(service.checks.get(i).map(|c| &c.config));
                self.health()?.validate(&config).await?
            }
        };
        Ok(found.into_iter().map(config_problem).collect())
    }
}

/// A plugin's `info`, in the engine's types.
pub(crate) fn plugin_info(i: types::PluginInfo) -> super::info::PluginInfo {
    use super::info::{Capabilities, DirNeed, PluginInfo};
    let c = i.capabilities;
    PluginInfo {
        name: i.name,
        // Free text, printed by `plugins inspect` and `plugins lock` and stored in engine.lock.
        version: untrusted_text(&i.version),
        description: untrusted_text(&i.description),
        config_schema: i.config_schema,
        features: i.features.iter().map(feature).collect(),
        capabilities: Capabilities {
            http: c.http,
            env: c.env,
            dirs: c
                .dirs
                .into_iter()
                .map(|d| DirNeed {
                    path: d.path,
                    writable: d.writable,
                    purpose: untrusted_text(&d.purpose),
                })
                .collect(),
            secrets: c.secrets,
        },
        resource_kinds: Vec::new(),
    }
}

/// A provider's resource kinds in the engine's own types.
pub(crate) fn resource_kinds(
    kinds: Vec<super::resources::ResourceKind>,
) -> Vec<super::info::ResourceKind> {
    kinds
        .into_iter()
        .map(|k| super::info::ResourceKind {
            name: k.name,
            description: untrusted_text(&k.description),
            spec_schema: k.spec_schema,
            outputs: k.outputs,
        })
        .collect()
}

fn untrusted_text(text: &str) -> String {
    super::untrusted::text(text)
}

fn config_problem(d: types::Diagnostic) -> ConfigProblem {
    ConfigProblem {
        severity: match d.severity {
            types::Severity::Error => Severity::Error,
            types::Severity::Warning => Severity::Warning,
        },
        path: d.path,
        message: d.message,
        hint: d.hint,
    }
}

fn port_error(error: CallError) -> PortError {
    let kind = match error.plugin_error() {
        Some(PluginError::RateLimited { retry_after, .. }) => ErrorKind::RateLimited {
            retry_after: *retry_after,
        },
        Some(PluginError::Transient(_)) => ErrorKind::Transient,
        Some(PluginError::Conflict(_)) => ErrorKind::Conflict,
        _ => ErrorKind::Permanent,
    };
    PortError {
        kind,
        message: error.to_string(),
    }
}

/// How a provider names a service.
pub fn service_ref(service: &Service) -> types::ServiceRef {
    types::ServiceRef {
        name: service.name.clone(),
        config: service.provider_config.to_string(),
    }
}

/// The service as the provider contract describes it.
pub fn service_spec(service: &Service) -> types::ServiceSpec {
    let pairs =
        |m: &BTreeMap<String, String>| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    types::ServiceSpec {
        name: service.name.clone(),
        artifact: match &service.artifact {
            Artifact::Image(i) => types::Artifact::Image(i.clone()),
            Artifact::Path(p) => types::Artifact::Path(p.clone()),
        },
        args: service.args.clone(),
        env: pairs(&service.env),
        secrets: service
            .secrets
            .iter()
            .map(|(name, reference)| types::SecretEnv {
                name: name.clone(),
                reference: reference.clone(),
            })
            .collect(),
        resources: types::Resources {
            cpu_millis: service.cpu_millis,
            memory_mib: service.memory_mib,
        },
        scaling: types::Scaling {
            min_instances: service.min_instances,
            max_instances: service.max_instances,
            concurrency: service.concurrency,
        },
        port: service.port,
        ingress: match service.ingress {
            Ingress::Public => types::Ingress::Public,
            Ingress::Internal => types::Ingress::Internal,
            Ingress::None => types::Ingress::None,
        },
        labels: pairs(&service.labels),
        config: service.provider_config.to_string(),
    }
}

fn service_state(s: types::ServiceStatus) -> ServiceState {
    ServiceState {
        revisions: s
            .revisions
            .into_iter()
            .map(|r| port::RevisionInfo {
                id: r.id,
                artifact: r.artifact,
                created_at_ms: r.created_at_ms,
                ready: r.ready,
                message: r.message,
            })
            .collect(),
        traffic: domain_split(&s.traffic),
        url: s.url,
        deployed: s.deployed,
    }
}

fn service_status(s: &ServiceState) -> types::ServiceStatus {
    types::ServiceStatus {
        revisions: s
            .revisions
            .iter()
            .map(|r| types::Revision {
                id: r.id.clone(),
                artifact: r.artifact.clone(),
                created_at_ms: r.created_at_ms,
                ready: r.ready,
                message: r.message.clone(),
            })
            .collect(),
        traffic: wit_split(&s.traffic),
        url: s.url.clone(),
        deployed: s.deployed.clone(),
    }
}

fn domain_plan(plan: types::DeploymentPlan) -> Plan {
    Plan {
        action: match plan.action {
            types::PlanAction::Create => PlanAction::Create,
            types::PlanAction::Update => PlanAction::Update,
            types::PlanAction::NoChange => PlanAction::NoChange,
        },
        changes: plan
            .changes
            .into_iter()
            .map(|c| port::Change {
                field: c.field,
                before: c.before,
                after: c.after,
            })
            .collect(),
        summary: plan.summary,
    }
}

fn domain_split(split: &[types::TrafficTarget]) -> Vec<TrafficShare> {
    split
        .iter()
        .map(|t| TrafficShare::new(&t.revision, t.percent))
        .collect()
}

fn wit_split(split: &[TrafficShare]) -> Vec<types::TrafficTarget> {
    split
        .iter()
        .map(|t| types::TrafficTarget {
            revision: t.revision.clone(),
            percent: t.percent,
        })
        .collect()
}

fn endpoint(e: types::Endpoint) -> Endpoint {
    Endpoint {
        url: e.url,
        kind: match e.kind {
            types::EndpointKind::Service => EndpointKind::Service,
            types::EndpointKind::Revision => EndpointKind::Revision,
        },
        revision: e.revision,
    }
}

fn feature(f: &types::Feature) -> Feature {
    match f {
        types::Feature::TrafficSplit => Feature::TrafficSplit,
        types::Feature::RevisionUrls => Feature::RevisionUrls,
        types::Feature::InstanceBatches => Feature::InstanceBatches,
        types::Feature::RetireRevisions => Feature::RetireRevisions,
    }
}

fn wit_feature(f: Feature) -> types::Feature {
    match f {
        Feature::TrafficSplit => types::Feature::TrafficSplit,
        Feature::RevisionUrls => types::Feature::RevisionUrls,
        Feature::InstanceBatches => types::Feature::InstanceBatches,
        Feature::RetireRevisions => types::Feature::RetireRevisions,
    }
}

fn verdict(v: types::Verdict) -> Verdict {
    match v {
        types::Verdict::Healthy => Verdict::Healthy,
        types::Verdict::Unhealthy => Verdict::Unhealthy,
        types::Verdict::Inconclusive => Verdict::Inconclusive,
    }
}

fn wit_verdict(v: Verdict) -> types::Verdict {
    match v {
        Verdict::Healthy => types::Verdict::Healthy,
        Verdict::Unhealthy => types::Verdict::Unhealthy,
        Verdict::Inconclusive => types::Verdict::Inconclusive,
    }
}

fn wit_observation(o: &Observation) -> wit::Observation {
    match o {
        Observation::Start => wit::Observation::Start,
        Observation::TrafficSet(split) => wit::Observation::TrafficSet(wit_split(split)),
        Observation::Waited => wit::Observation::Waited,
        Observation::Analysed(checks) => wit::Observation::Analysed(
            checks
                .iter()
                .map(|c| wit::CheckOutcome {
                    name: c.name.clone(),
                    verdict: wit_verdict(c.verdict),
                    message: c.message.clone(),
                    measurements: Vec::new(),
                })
                .collect(),
        ),
        Observation::Approved => wit::Observation::Approved,
        Observation::Rejected(reason) => wit::Observation::Rejected(reason.clone()),
        Observation::Promoted => wit::Observation::Promoted,
        Observation::Retired(revision) => wit::Observation::Retired(revision.clone()),
    }
}

fn decision(d: wit::Decision) -> Decision {
    match d {
        wit::Decision::SetTraffic(split) => Decision::SetTraffic(domain_split(&split)),
        wit::Decision::Wait(ms) => Decision::Wait(ms),
        wit::Decision::Analyse(request) => Decision::Analyse(port::AnalysisRequest {
            revision: request.revision,
            checks: request.checks,
        }),
        wit::Decision::AwaitApproval(what) => Decision::AwaitApproval(what),
        wit::Decision::Promote => Decision::Promote,
        wit::Decision::Retire(revision) => Decision::Retire(revision),
        wit::Decision::Abort(reason) => Decision::Abort(reason),
        wit::Decision::Done => Decision::Done,
    }
}
