//! The `kubernetes` provider: deploys services to a Kubernetes cluster, with the engine's
//! strategies moving the traffic.
//!
//! A revision is a Deployment named `SERVICE-DEPLOYMENT` (so a repeated `deploy` after a crash
//! finds what the first made), with a Service of its own that reaches its pods alone. Every
//! object is written by server-side apply under the field manager `engine`, so a second apply
//! is a no-op and fields other managers own are left alone, and `plan` diffs what serves
//! against the API server's own dry run of the pipeline's spec. Traffic moves by the service's
//! Service selector, by a Gateway API HTTPRoute's weights, or by the share of pods each
//! revision runs (`traffic`, in [`traffic`]); readiness is what `kubectl rollout status`
//! checks ([`rollout`]).
//!
//! The plugin never holds a credential or the cluster's address: it sends its requests to
//! `https://kubernetes.invalid` naming the granted secret `cluster`, and the host sends them to
//! the cluster's API server with the kubeconfig's credentials.

mod config;
mod form;
mod manifest;
mod resources;
mod rollout;
mod traffic;

use config::{CONFIG_SCHEMA, Config, Traffic};
use engine_sdk::kubernetes::{Cluster, Resource, kinds};
use engine_sdk::{
    Capabilities, DeploymentPlan, Diagnostic, DirNeed, Endpoint, EndpointKind, Error, ErrorExt,
    Feature, PluginInfo, Provider, Revision, ServiceRef, ServiceSpec, ServiceStatus, TrafficTarget,
};
use manifest::{MANAGER, SERVICE_LABEL};
use serde_json::Value;

/// One service on one cluster: where its objects are, and the calls that touch them.
pub struct Target {
    cluster: Cluster,
    config: Config,
    /// The name of the service's objects.
    service: String,
}

impl Target {
    fn new(name: &str, config: &str) -> Result<Target, Error> {
        let config = Config::parse(config)?;
        Ok(Target {
            cluster: Cluster::open(&config.cluster)?,
            service: config.service(name),
            config,
        })
    }

    fn path(&self, kind: Resource, name: &str) -> String {
        kind.object(&self.config.namespace, name)
    }

    /// The service's revisions: its Deployments, newest first.
    fn revisions(&self) -> Result<Vec<Value>, Error> {
        let selector = format!(
            "{SERVICE_LABEL}={},app.kubernetes.io/managed-by={MANAGER}",
            self.service
        );
        let mut found = self.cluster.list(
            &kinds::deployments().collection(&self.config.namespace),
            Some(&selector),
        )?;
        found.sort_by_key(|d| std::cmp::Reverse(created_ms(d)));
        Ok(found)
    }

    fn require_revision(&self, revision: &str) -> Result<Value, Error> {
        self.cluster
            .get(&self.path(kinds::deployments(), revision))?
            .ok_or_else(|| {
                Error::not_found(format!(
                    "{revision} does not exist in namespace {}",
                    self.config.namespace
                ))
            })
    }

    /// The service's own Service, refused when something else made it: the engine does not
    /// take over objects it did not create.
    fn stable_service(&self) -> Result<Option<Value>, Error> {
        let found = self
            .cluster
            .get(&self.path(kinds::services(), &self.service))?;
        if let Some(s) = &found
            && s["metadata"]["labels"][SERVICE_LABEL] != self.service.as_str()
        {
            return Err(Error::conflict(format!(
                "the Service {}/{} exists and was not made by the engine (it has no {SERVICE_LABEL} label); the engine does not take it over: delete it, or give the engine's service another `name`",
                self.config.namespace, self.service
            )));
        }
        Ok(found)
    }

    /// Applies the service's own Service, selecting `serving`'s pods (`traffic = "selector"`)
    /// or every revision's.
    fn apply_stable_service(&self, serving: Option<&str>) -> Result<(), Error> {
        let service = manifest::stable_service(&self.config, &self.service, serving);
        let path = self.path(kinds::services(), &self.service);
        self.cluster.apply(&path, &service, MANAGER, false)?;
        Ok(())
    }

    /// The autoscaler scales the revision that takes all the traffic; while traffic is split
    /// by the share of pods (`replicas`), it would fight the shares, so it waits. One the
    /// pipeline no longer asks for is removed.
    fn follow_autoscaler(&self, whole: Option<&str>) -> Result<(), Error> {
        let path = self.path(kinds::horizontal_pod_autoscalers(), &self.service);
        let wanted = self.config.autoscaling.is_some();
        match whole {
            Some(revision) if wanted => {
                let hpa =
                    manifest::autoscaler(&self.config, &self.service, revision).unwrap_or_default();
                self.cluster.apply(&path, &hpa, MANAGER, false)?;
            }
            None if wanted && self.config.traffic == Traffic::Replicas => {
                self.cluster.delete(&path)?;
            }
            _ if !wanted && self.owns(self.cluster.get(&path)?) => {
                self.cluster.delete(&path)?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Whether an object exists and is this service's (the engine labelled it).
    fn owns(&self, object: Option<Value>) -> bool {
        object.is_some_and(|o| o["metadata"]["labels"][SERVICE_LABEL] == self.service.as_str())
    }

    /// A revision that never became ready holds the cluster's capacity for nothing (its pods
    /// wait for ever): removed, with the reason kept in the error.
    fn remove_failed(&self, revision: &str, failure: Error) -> Error {
        let removed = self
            .cluster
            .delete(&self.path(kinds::services(), revision))
            .and_then(|_| {
                self.cluster
                    .delete(&self.path(kinds::deployments(), revision))
            });
        let note = match removed {
            Ok(_) => format!("{revision} was removed"),
            Err(e) => format!("removing {revision} failed too: {}", e.describe()),
        };
        let mut failure = failure;
        if let Error::InvalidConfig(m)
        | Error::Unauthorized(m)
        | Error::NotFound(m)
        | Error::Conflict(m)
        | Error::Transient(m)
        | Error::Fatal(m) = &mut failure
        {
            m.push_str(&format!("; {note}"));
        }
        failure
    }

    fn autoscaling_now(&self) -> Result<Option<Value>, Error> {
        let hpa = self
            .cluster
            .get(&self.path(kinds::horizontal_pod_autoscalers(), &self.service))?;
        Ok(hpa.map(|h| form::autoscaling_of(&h)))
    }

    /// The URL users reach the service at: `url`, or the Service's in-cluster name.
    fn url(&self) -> String {
        self.config
            .url
            .clone()
            .unwrap_or_else(|| self.in_cluster_url(&self.service))
    }

    fn in_cluster_url(&self, name: &str) -> String {
        format!(
            "http://{name}.{}.svc.cluster.local:{}",
            self.config.namespace,
            manifest::service_port(&self.config)
        )
    }
}

/// When the API server made an object, in milliseconds since the epoch.
fn created_ms(object: &Value) -> Option<u64> {
    let at = object["metadata"]["creationTimestamp"].as_str()?;
    let time = humantime::parse_rfc3339_weak(at).ok()?;
    Some(time.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as u64)
}

/// The revision a deployment makes: `SERVICE-DEPLOYMENT`, lower case, a valid object name.
fn revision_id(service: &str, deployment_id: &str) -> Result<String, Error> {
    let id = format!("{service}-{}", deployment_id.to_ascii_lowercase());
    config::dns_label("revision", &id).map_err(|e| {
        e.context(format!("the service name {service:?} is too long to name its revisions; give it a shorter `name`"))
    })?;
    Ok(id)
}

/// The revision that takes the most traffic (the newest when none does).
fn serving(status: &ServiceStatus) -> Option<String> {
    status
        .traffic
        .iter()
        .max_by_key(|t| t.percent)
        .map(|t| t.revision.clone())
        .or_else(|| status.revisions.first().map(|r| r.id.clone()))
}

pub struct Kubernetes;

impl Provider for Kubernetes {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "kubernetes".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Deploys container images to Kubernetes: a Deployment per revision, traffic by Service selector, HTTPRoute weights or share of pods".into(),
            config_schema: CONFIG_SCHEMA.into(),
            features: vec![Feature::TrafficSplit, Feature::RevisionUrls, Feature::RetireRevisions],
            capabilities: Capabilities {
                // The cluster the granted kubeconfig names; the host sends the requests there.
                http: vec![engine_sdk::kubernetes::API_BASE.into()],
                env: Vec::new(),
                dirs: vec![DirNeed {
                    path: resources::MANIFESTS_DIR.into(),
                    writable: false,
                    purpose: "(optional) manifest files of `manifest` resources".into(),
                }],
                secrets: vec!["*".into()],
            },
        }
    }

    fn validate(spec: ServiceSpec) -> Vec<Diagnostic> {
        let checked = Config::parse(&spec.config).and_then(|config| {
            let service = config.service(&spec.name);
            let revision = revision_id(&service, "r1")?;
            manifest::deployment(&spec, &config, &service, &revision, Some(1))?;
            if config.traffic == Traffic::Replicas && config.replicas.is_none() {
                return Err(Error::invalid_config(
                    "traffic = \"replicas\" needs `replicas`, the service's pods that the shares divide (5 gives 20 % steps)",
                ));
            }
            Ok(())
        });
        engine_sdk::config_diagnostics(checked, None)
    }

    fn read(service: ServiceRef) -> Result<Option<ServiceStatus>, Error> {
        let t = Target::new(&service.name, &service.config)?;
        t.stable_service()?;
        let deployments = t.revisions()?;
        if deployments.is_empty() {
            return Ok(None);
        }
        let traffic = traffic::get(&t)?;
        let revisions: Vec<Revision> = deployments
            .iter()
            .map(|d| Revision {
                id: d["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                artifact: d["spec"]["template"]["spec"]["containers"][0]["image"]
                    .as_str()
                    .map(String::from),
                created_at_ms: created_ms(d),
                ready: rollout::progress(d) == rollout::Progress::Done,
                message: match rollout::progress(d) {
                    rollout::Progress::Failed(why) => Some(why),
                    _ => None,
                },
            })
            .collect();
        let mut status = ServiceStatus {
            revisions,
            traffic,
            url: Some(t.url()),
            deployed: String::new(),
        };
        let serving = serving(&status).unwrap_or_default();
        let deployed = deployments
            .iter()
            .find(|d| d["metadata"]["name"] == serving.as_str());
        if let Some(d) = deployed {
            status.deployed = form::of(d, t.autoscaling_now()?).to_string();
        }
        Ok(Some(status))
    }

    fn plan(desired: ServiceSpec, current: Option<ServiceStatus>) -> Result<DeploymentPlan, Error> {
        let t = Target::new(&desired.name, &desired.config)?;
        let replicas = Some(manifest::replicas(&t.config, &desired))
            .filter(|_| t.config.autoscaling.is_none());
        let autoscaling = t.config.autoscaling.as_ref().map(
            |a| serde_json::json!({ "min": a.min, "max": a.max, "cpu": a.cpu, "memory": a.memory }),
        );
        let Some(current) = current else {
            let manifest = manifest::deployment(
                &desired,
                &t.config,
                &t.service,
                &revision_id(&t.service, "planned")?,
                replicas,
            )?;
            let form = form::of(&manifest, autoscaling);
            let summary = format!(
                "create {} in namespace {}{}",
                t.service,
                t.config.namespace,
                traffic_note(&t.config)
            );
            return Ok(engine_sdk::create_plan(&form, form::FIELDS, summary));
        };
        // The API server's dry run of the pipeline's spec on the serving revision: its
        // defaults and normal forms, as the revision itself has them.
        let serving = serving(&current)
            .ok_or_else(|| Error::conflict("the service has no revision to compare with"))?;
        let manifest = manifest::deployment(&desired, &t.config, &t.service, &serving, replicas)?;
        let dry = t.cluster.apply(
            &t.path(kinds::deployments(), &serving),
            &manifest,
            MANAGER,
            true,
        )?;
        let form = form::of(&dry, autoscaling);
        let mut plan = engine_sdk::update_plan(&current.deployed, &form, form::FIELDS);
        plan.summary = format!(
            "{} in namespace {}{}",
            plan.summary,
            t.config.namespace,
            traffic_note(&t.config)
        );
        Ok(plan)
    }

    fn deploy(spec: ServiceSpec, deployment_id: String) -> Result<Revision, Error> {
        let t = Target::new(&spec.name, &spec.config)?;
        t.stable_service()?;
        let revision = revision_id(&t.service, &deployment_id)?;
        let existing = t.revisions()?;
        let first = existing
            .iter()
            .all(|d| d["metadata"]["name"] == revision.as_str());
        // What serves now runs the most pods (an autoscaler may have added some).
        let serving_pods = existing
            .iter()
            .filter_map(|d| d["spec"]["replicas"].as_u64())
            .max()
            .unwrap_or(0) as u32;
        let replicas = match (t.config.traffic, first) {
            // Shares of pods: a new revision starts with none, and takes its share with traffic;
            // the first runs them all.
            (Traffic::Replicas, false) => 0,
            (Traffic::Replicas, true) => manifest::replicas(&t.config, &spec),
            // With an autoscaler, as many as serve now (at least its floor), so the new
            // revision takes all the traffic with the pods it needs.
            _ => match &t.config.autoscaling {
                Some(a) => a.min.max(serving_pods),
                None => manifest::replicas(&t.config, &spec),
            },
        };
        let deployment =
            manifest::deployment(&spec, &t.config, &t.service, &revision, Some(replicas))?;
        let applied = t.cluster.apply(
            &t.path(kinds::deployments(), &revision),
            &deployment,
            MANAGER,
            false,
        )?;
        let service = manifest::revision_service(&t.config, &t.service, &revision);
        t.cluster.apply(
            &t.path(kinds::services(), &revision),
            &service,
            MANAGER,
            false,
        )?;
        let ready = if replicas > 0 {
            rollout::wait_ready(&t.cluster, &t.config, &t.service, &revision)
                .map_err(|e| t.remove_failed(&revision, e))?
        } else {
            applied
        };
        Ok(Revision {
            id: revision,
            artifact: Some(manifest::image(&spec)?.to_string()),
            created_at_ms: created_ms(&ready),
            ready: true,
            message: None,
        })
    }

    fn set_traffic(service: ServiceRef, split: Vec<TrafficTarget>) -> Result<(), Error> {
        let t = Target::new(&service.name, &service.config)?;
        t.stable_service()?;
        traffic::set(&t, &split)
    }

    fn get_traffic(service: ServiceRef) -> Result<Vec<TrafficTarget>, Error> {
        let t = Target::new(&service.name, &service.config)?;
        traffic::get(&t)
    }

    fn endpoints(service: ServiceRef, revision: Option<String>) -> Result<Vec<Endpoint>, Error> {
        let t = Target::new(&service.name, &service.config)?;
        let mut out = vec![Endpoint {
            url: t.url(),
            kind: EndpointKind::Service,
            revision: None,
        }];
        if let Some(revision) = revision
            && t.cluster
                .get(&t.path(kinds::services(), &revision))?
                .is_some()
        {
            out.push(Endpoint {
                url: t.in_cluster_url(&revision),
                kind: EndpointKind::Revision,
                revision: Some(revision),
            });
        }
        Ok(out)
    }

    fn retire(service: ServiceRef, revision: String) -> Result<(), Error> {
        let t = Target::new(&service.name, &service.config)?;
        if traffic::get(&t)?
            .iter()
            .any(|s| s.revision == revision && s.percent > 0)
        {
            return Err(Error::conflict(format!(
                "{revision} still takes traffic; move its share first"
            )));
        }
        t.cluster.delete(&t.path(kinds::services(), &revision))?;
        t.cluster.delete(&t.path(kinds::deployments(), &revision))?;
        Ok(())
    }

    fn destroy(service: ServiceRef) -> Result<(), Error> {
        let t = Target::new(&service.name, &service.config)?;
        t.stable_service()?;
        let route = t.path(
            kinds::http_routes(),
            &manifest::route_name(&t.config, &t.service),
        );
        if t.config.traffic == Traffic::Gateway && t.owns(t.cluster.get(&route)?) {
            t.cluster.delete(&route)?;
        }
        let hpa = t.path(kinds::horizontal_pod_autoscalers(), &t.service);
        if t.owns(t.cluster.get(&hpa)?) {
            t.cluster.delete(&hpa)?;
        }
        t.cluster.delete(&t.path(kinds::services(), &t.service))?;
        for d in t.revisions()? {
            let name = d["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            t.cluster.delete(&t.path(kinds::services(), &name))?;
            t.cluster.delete(&t.path(kinds::deployments(), &name))?;
        }
        Ok(())
    }
}

/// What a plan says of how traffic will move.
fn traffic_note(config: &Config) -> String {
    match config.traffic {
        Traffic::Selector => String::new(),
        Traffic::Gateway => "; traffic by HTTPRoute weights".into(),
        Traffic::Replicas => format!(
            "; traffic by the share of {} pods, an approximation in whole pods (20 % is 1 of 5)",
            config.replicas.unwrap_or(1)
        ),
    }
}

impl engine_sdk::ResourceProvider for Kubernetes {
    fn kinds() -> Vec<engine_sdk::resources::ResourceKind> {
        resources::kinds()
    }

    fn read(
        target: engine_sdk::resources::ResourceSpec,
    ) -> Result<Option<engine_sdk::resources::ResourceStatus>, Error> {
        resources::read(&target)
    }

    fn plan(
        desired: engine_sdk::resources::ResourceSpec,
        current: Option<engine_sdk::resources::ResourceStatus>,
    ) -> Result<DeploymentPlan, Error> {
        resources::plan(&desired, current.as_ref())
    }

    fn apply(
        desired: engine_sdk::resources::ResourceSpec,
        _current: Option<engine_sdk::resources::ResourceStatus>,
    ) -> Result<engine_sdk::resources::ResourceStatus, Error> {
        resources::apply(&desired)
    }

    fn delete(target: engine_sdk::resources::ResourceSpec) -> Result<(), Error> {
        resources::delete(&target)
    }

    /// One place: a pipeline references the service's URL as `${services.NAME.url}`.
    fn service_urls(_service: ServiceRef) -> Result<Vec<(String, String)>, Error> {
        Ok(Vec::new())
    }
}

engine_sdk::export_resource_provider!(Kubernetes);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revisions_are_named_after_the_deployment_and_fit_a_name() {
        assert_eq!(revision_id("chatbot", "R3").unwrap(), "chatbot-r3");
        let long = "a".repeat(62);
        assert!(
            revision_id(&long, "r1")
                .unwrap_err()
                .describe()
                .contains("shorter `name`")
        );
    }
}
