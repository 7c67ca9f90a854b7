//! The objects the provider writes, as the API server takes them in a server-side apply: a
//! Deployment and a Service per revision, the service's own Service (selector or replica
//! traffic), its HTTPRoute (weighted traffic) and its HorizontalPodAutoscaler.

use crate::config::{Config, Probe, Traffic};
use engine_sdk::{Artifact, Error, ErrorExt, ServiceSpec};
use serde_json::{Map, Value, json};

/// The field manager of every apply: the engine owns the fields it sets, and leaves the others'.
pub const MANAGER: &str = "engine";
/// The label naming the service a Deployment, pod or Service belongs to.
pub const SERVICE_LABEL: &str = "engine/service";
/// The label naming the revision of a Deployment and its pods.
pub const REVISION_LABEL: &str = "engine/revision";
/// The share of traffic the engine set on a revision (`traffic = "replicas"`).
pub const PERCENT_ANNOTATION: &str = "engine/traffic-percent";

/// The labels every object of a revision carries, and which select its pods.
fn revision_labels(service: &str, revision: &str) -> Map<String, Value> {
    let mut labels = Map::new();
    labels.insert(SERVICE_LABEL.into(), json!(service));
    labels.insert(REVISION_LABEL.into(), json!(revision));
    labels
}

/// `{ metadata }` with the service's own labels and the engine's.
fn metadata(name: &str, namespace: &str, labels: Map<String, Value>) -> Value {
    json!({ "name": name, "namespace": namespace, "labels": labels })
}

/// The container image of a spec: Kubernetes runs images only.
pub fn image(spec: &ServiceSpec) -> Result<&str, Error> {
    match &spec.artifact {
        Artifact::Image(image) => Ok(image),
        Artifact::Path(path) => Err(Error::invalid_config(format!(
            "kubernetes runs container images; `artifact = {path:?}` is for the local platform: give an `image`"
        ))),
    }
}

/// The container's port: the service's `port`, else 8080.
pub fn container_port(spec: &ServiceSpec) -> u16 {
    spec.port.unwrap_or(8080)
}

pub fn service_port(config: &Config) -> u16 {
    config.service_port.unwrap_or(80)
}

/// Pods per revision: `replicas`, else the service's `min_instances`, else 1.
pub fn replicas(config: &Config, spec: &ServiceSpec) -> u32 {
    config.replicas.or(spec.scaling.min_instances).unwrap_or(1)
}

/// One revision's Deployment. `replicas` is left out when `None` (an autoscaler owns it).
pub fn deployment(
    spec: &ServiceSpec,
    config: &Config,
    service: &str,
    revision: &str,
    replicas: Option<u32>,
) -> Result<Value, Error> {
    let selector = revision_labels(service, revision);
    let mut labels = selector.clone();
    for (k, v) in &spec.labels {
        labels.insert(k.clone(), json!(v));
    }
    labels.insert("app.kubernetes.io/name".into(), json!(service));
    labels.insert("app.kubernetes.io/managed-by".into(), json!(MANAGER));
    let mut pod = json!({ "containers": [container(spec, config, service)?] });
    if let Some(account) = &config.service_account {
        pod["serviceAccountName"] = json!(account);
    }
    if !config.image_pull_secrets.is_empty() {
        let secrets: Vec<Value> = config
            .image_pull_secrets
            .iter()
            .map(|n| json!({ "name": n }))
            .collect();
        pod["imagePullSecrets"] = json!(secrets);
    }
    let mut deployment_spec = json!({
        "selector": { "matchLabels": selector },
        "progressDeadlineSeconds": config.progress_deadline_seconds,
        "template": { "metadata": { "labels": labels }, "spec": pod },
    });
    if let Some(n) = replicas {
        deployment_spec["replicas"] = json!(n);
    }
    Ok(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(revision, &config.namespace, labels),
        "spec": deployment_spec,
    }))
}

fn container(spec: &ServiceSpec, config: &Config, service: &str) -> Result<Value, Error> {
    let port = container_port(spec);
    let mut env: Vec<Value> = spec
        .env
        .iter()
        .map(|(name, value)| json!({ "name": name, "value": value }))
        .collect();
    for secret in &spec.secrets {
        let (name, key) = secret.reference.split_once('/').ok_or_else(|| {
            Error::invalid_config(format!(
                "secret {} = {:?}: name a Kubernetes secret and one of its keys, \"SECRET/KEY\" (such as \"api-secrets/openai-api-key\")",
                secret.name, secret.reference
            ))
        })?;
        env.push(json!({
            "name": secret.name,
            "valueFrom": { "secretKeyRef": { "name": name, "key": key } },
        }));
    }
    let mut c = json!({
        "name": service,
        "image": image(spec)?,
        "ports": [{ "name": "http", "containerPort": port }],
    });
    if !spec.args.is_empty() {
        c["args"] = json!(spec.args);
    }
    if !env.is_empty() {
        c["env"] = json!(env);
    }
    let env_from: Vec<Value> = config
        .env_from
        .iter()
        .map(|e| match (&e.config_map, &e.secret) {
            (Some(m), _) => json!({ "configMapRef": { "name": m } }),
            (_, Some(s)) => json!({ "secretRef": { "name": s } }),
            _ => Value::Null,
        })
        .collect();
    if !env_from.is_empty() {
        c["envFrom"] = json!(env_from);
    }
    let resources = resources(spec, config);
    if resources != json!({}) {
        c["resources"] = resources;
    }
    for (key, probe) in [
        ("readinessProbe", &config.readiness_probe),
        ("livenessProbe", &config.liveness_probe),
        ("startupProbe", &config.startup_probe),
    ] {
        if let Some(p) = probe {
            c[key] = self::probe(p, port);
        }
    }
    Ok(c)
}

/// Requests from the service's `cpu` and `memory`, limits from the provider's `limits`.
fn resources(spec: &ServiceSpec, config: &Config) -> Value {
    let mut requests = Map::new();
    if let Some(m) = spec.resources.cpu_millis {
        requests.insert("cpu".into(), json!(format!("{m}m")));
    }
    if let Some(m) = spec.resources.memory_mib {
        requests.insert("memory".into(), json!(format!("{m}Mi")));
    }
    let mut out = Map::new();
    if !requests.is_empty() {
        out.insert("requests".into(), Value::Object(requests));
    }
    if !config.limits.is_empty() {
        out.insert("limits".into(), json!(config.limits));
    }
    Value::Object(out)
}

fn probe(p: &Probe, container_port: u16) -> Value {
    let port = p.port.unwrap_or(container_port);
    let mut out = match &p.path {
        Some(path) => json!({ "httpGet": { "path": path, "port": port } }),
        None => json!({ "tcpSocket": { "port": port } }),
    };
    for (key, value) in [
        ("initialDelaySeconds", p.initial_delay_seconds),
        ("periodSeconds", p.period_seconds),
        ("timeoutSeconds", p.timeout_seconds),
        ("failureThreshold", p.failure_threshold),
    ] {
        if let Some(v) = value {
            out[key] = json!(v);
        }
    }
    out
}

/// The Service of one revision, named as the revision: its pods alone, to be checked before
/// they take traffic and, with `traffic = "gateway"`, the route's backend.
pub fn revision_service(config: &Config, service: &str, revision: &str) -> Value {
    let labels = revision_labels(service, revision);
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(revision, &config.namespace, labels.clone()),
        "spec": {
            "selector": labels,
            "ports": [{ "name": "http", "port": service_port(config), "targetPort": "http" }],
        },
    })
}

/// The service's own Service, named as the service: with `traffic = "selector"` it selects
/// the serving revision's pods; with `replicas`, every revision's.
pub fn stable_service(config: &Config, service: &str, serving: Option<&str>) -> Value {
    let mut selector = Map::new();
    selector.insert(SERVICE_LABEL.into(), json!(service));
    if config.traffic == Traffic::Selector
        && let Some(revision) = serving
    {
        selector.insert(REVISION_LABEL.into(), json!(revision));
    }
    let mut labels = Map::new();
    labels.insert(SERVICE_LABEL.into(), json!(service));
    let mut spec = json!({
        "selector": selector,
        "ports": [{ "name": "http", "port": service_port(config), "targetPort": "http" }],
    });
    if let Some(kind) = &config.service_type {
        spec["type"] = json!(kind);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(service, &config.namespace, labels),
        "spec": spec,
    })
}

/// The service's HTTPRoute, one weighted backend (the revision's Service) per revision.
pub fn route(config: &Config, service: &str, weights: &[(String, u8)]) -> Result<Value, Error> {
    let route = config
        .route
        .as_ref()
        .ok_or_else(|| Error::invalid_config("traffic = \"gateway\" needs `route`"))?;
    let parents: Vec<Value> = route
        .parents
        .iter()
        .map(|p| {
            let mut parent = json!({ "name": p.name });
            if let Some(ns) = &p.namespace {
                parent["namespace"] = json!(ns);
            }
            if let Some(section) = &p.section_name {
                parent["sectionName"] = json!(section);
            }
            parent
        })
        .collect();
    let backends: Vec<Value> = weights
        .iter()
        .map(|(revision, weight)| {
            json!({ "name": revision, "port": service_port(config), "weight": weight })
        })
        .collect();
    let mut labels = Map::new();
    labels.insert(SERVICE_LABEL.into(), json!(service));
    let mut spec = json!({
        "parentRefs": parents,
        "rules": [{
            "matches": [{ "path": { "type": "PathPrefix", "value": route.path.as_deref().unwrap_or("/") } }],
            "backendRefs": backends,
        }],
    });
    if !route.hostnames.is_empty() {
        spec["hostnames"] = json!(route.hostnames);
    }
    Ok(json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": metadata(&route_name(config, service), &config.namespace, labels),
        "spec": spec,
    }))
}

pub fn route_name(config: &Config, service: &str) -> String {
    config
        .route
        .as_ref()
        .and_then(|r| r.name.clone())
        .unwrap_or_else(|| service.to_string())
}

/// The HorizontalPodAutoscaler of the serving revision's Deployment, named as the service.
pub fn autoscaler(config: &Config, service: &str, revision: &str) -> Option<Value> {
    let a = config.autoscaling.as_ref()?;
    let target = |resource: &str, percent: u32| json!({ "type": "Resource", "resource": { "name": resource, "target": { "type": "Utilization", "averageUtilization": percent } } });
    let metrics: Vec<Value> = [("cpu", a.cpu), ("memory", a.memory)]
        .into_iter()
        .filter_map(|(r, p)| p.map(|p| target(r, p)))
        .collect();
    let mut labels = Map::new();
    labels.insert(SERVICE_LABEL.into(), json!(service));
    Some(json!({
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(service, &config.namespace, labels),
        "spec": {
            "scaleTargetRef": { "apiVersion": "apps/v1", "kind": "Deployment", "name": revision },
            "minReplicas": a.min,
            "maxReplicas": a.max,
            "metrics": metrics,
        },
    }))
}
