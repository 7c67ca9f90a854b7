//! Service bodies for the API, built from the engine's spec, and the flat "form" `plan`
//! compares: the same fields read from the desired spec and from the deployed service, so the
//! diff is field by field and also catches changes made outside the engine.

use super::config::{Config, Probe};
use engine_sdk::{Artifact, Error, ErrorExt, Ingress, ServiceSpec};
use serde_json::{Map, Value, json};

/// Fields of a v2 `Service` the API fills in and refuses in requests (output only).
const OUTPUT_ONLY: &[&str] = &[
    "conditions",
    "createTime",
    "creator",
    "deleteTime",
    "expireTime",
    "generation",
    "lastModifier",
    "latestCreatedRevision",
    "latestReadyRevision",
    "observedGeneration",
    "reconciling",
    "satisfiesPzs",
    "terminalCondition",
    "threatDetectionEnabled",
    "trafficStatuses",
    "uid",
    "updateTime",
    "uri",
    "urls",
];

/// A deployed service as a request body: its writable fields only.
pub fn writable(service: &Value) -> Value {
    let mut body = service.clone();
    if let Some(o) = body.as_object_mut() {
        for key in OUTPUT_ONLY {
            o.remove(*key);
        }
    }
    body
}

fn ingress(config: &Config, spec: &ServiceSpec) -> &'static str {
    match config.ingress.as_deref() {
        Some("internal") => "INGRESS_TRAFFIC_INTERNAL_ONLY",
        Some("internal-and-cloud-load-balancing") => "INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER",
        Some(_) => "INGRESS_TRAFFIC_ALL",
        None => match spec.ingress {
            Ingress::Public => "INGRESS_TRAFFIC_ALL",
            Ingress::Internal => "INGRESS_TRAFFIC_INTERNAL_ONLY",
            Ingress::None => "INGRESS_TRAFFIC_NONE",
        },
    }
}

/// A secret reference as Secret Manager names it: `projects/P/secrets/NAME/versions/V`,
/// `NAME:VERSION` or `NAME` (latest).
pub fn secret_ref(reference: &str) -> Result<(String, String), Error> {
    if let Some(rest) = reference.strip_prefix("projects/") {
        let parts: Vec<&str> = rest.split('/').collect();
        return match parts.as_slice() {
            [_, "secrets", name, "versions", version] => {
                Ok((name.to_string(), version.to_string()))
            }
            [_, "secrets", name] => Ok((name.to_string(), "latest".into())),
            _ => Err(Error::invalid_config(format!(
                "secret reference {reference:?}: write projects/P/secrets/NAME/versions/VERSION, NAME:VERSION or NAME"
            ))),
        };
    }
    let (name, version) = reference.split_once(':').unwrap_or((reference, "latest"));
    if name.is_empty() || name.contains('/') || version.is_empty() {
        return Err(Error::invalid_config(format!(
            "secret reference {reference:?}: write projects/P/secrets/NAME/versions/VERSION, NAME:VERSION or NAME"
        )));
    }
    Ok((name.to_string(), version.to_string()))
}

/// `1000` millicores → `"1"`, `500` → `"500m"`.
fn cpu(millis: u32) -> String {
    if millis.is_multiple_of(1000) {
        (millis / 1000).to_string()
    } else {
        format!("{millis}m")
    }
}

/// The revision template for a spec in `region`, named `revision`.
pub fn template(
    config: &Config,
    spec: &ServiceSpec,
    region: &str,
    revision: &str,
) -> Result<Value, Error> {
    let Artifact::Image(image) = &spec.artifact else {
        return Err(Error::invalid_config(
            "Cloud Run runs container images; set `image = \"REGISTRY/REPOSITORY:TAG\"` instead of `artifact`",
        ));
    };
    let mut env: Vec<Value> = spec
        .env
        .iter()
        .map(|(k, v)| json!({ "name": k, "value": v }))
        .collect();
    for s in &spec.secrets {
        let (secret, version) = secret_ref(&s.reference)?;
        env.push(json!({ "name": s.name, "valueSource": { "secretKeyRef": { "secret": secret, "version": version } } }));
    }
    let mut container = json!({ "image": image, "env": env });
    if !spec.args.is_empty() {
        container["args"] = json!(spec.args);
    }
    match (spec.port, config.http2()) {
        // Cloud Run's default port, named for HTTP/2.
        (port, true) => {
            container["ports"] = json!([{ "name": "h2c", "containerPort": port.unwrap_or(8080) }])
        }
        (Some(port), false) => container["ports"] = json!([{ "containerPort": port }]),
        (None, false) => {}
    }
    if let Some(probe) = &config.startup_probe {
        container["startupProbe"] = probe_body(probe);
    }
    if let Some(probe) = &config.liveness_probe {
        container["livenessProbe"] = probe_body(probe);
    }
    let mut limits = Map::new();
    if let Some(c) = spec.resources.cpu_millis {
        limits.insert("cpu".into(), json!(cpu(c)));
    }
    if let Some(m) = spec.resources.memory_mib {
        limits.insert("memory".into(), json!(format!("{m}Mi")));
    }
    if !limits.is_empty() {
        container["resources"] = json!({ "limits": limits });
    }
    if let Some(throttling) = config.cpu_throttling {
        container["resources"]["cpuIdle"] = json!(throttling);
    }
    if let Some(boost) = config.startup_cpu_boost {
        container["resources"]["startupCpuBoost"] = json!(boost);
    }
    let (volumes, mounts) = volumes(config)?;
    if !mounts.is_empty() {
        container["volumeMounts"] = json!(mounts);
    }
    let mut template = json!({ "revision": revision, "containers": [container] });
    if !volumes.is_empty() {
        template["volumes"] = json!(volumes);
    }
    let mut scaling = Map::new();
    if let Some(n) = spec.scaling.min_instances {
        scaling.insert("minInstanceCount".into(), json!(n));
    }
    if let Some(n) = spec.scaling.max_instances {
        scaling.insert("maxInstanceCount".into(), json!(n));
    }
    if !scaling.is_empty() {
        template["scaling"] = json!(scaling);
    }
    if let Some(n) = spec.scaling.concurrency {
        template["maxInstanceRequestConcurrency"] = json!(n);
    }
    if let Some(t) = config.timeout_text() {
        template["timeout"] = json!(t);
    }
    if let Some(sa) = &config.service_account {
        template["serviceAccount"] = json!(sa);
    }
    if let Some(connector) = &config.vpc_connector {
        let egress = match config.vpc_egress.as_deref() {
            Some("all-traffic") => "ALL_TRAFFIC",
            _ => "PRIVATE_RANGES_ONLY",
        };
        // `{region}` lets one setting name each region's own connector.
        let connector = connector.replace("{region}", region);
        template["vpcAccess"] = json!({ "connector": connector, "egress": egress });
    }
    if let Some(env) = &config.execution_environment {
        template["executionEnvironment"] = json!(format!(
            "EXECUTION_ENVIRONMENT_{}",
            env.to_ascii_uppercase()
        ));
    }
    let labels: Map<String, Value> = spec
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    if !labels.is_empty() {
        template["labels"] = json!(labels);
    }
    Ok(template)
}

/// The fields of a revision template that a `Revision` resource carries as well.
const REVISION_TEMPLATE_FIELDS: &[&str] = &[
    "labels",
    "scaling",
    "vpcAccess",
    "serviceAccount",
    "containers",
    "volumes",
    "executionEnvironment",
    "timeout",
    "maxInstanceRequestConcurrency",
    "sessionAffinity",
];

/// The template a deployed revision was created from, read from the `Revision` resource.
pub fn template_of(revision: &Value) -> Value {
    let template: Map<String, Value> = REVISION_TEMPLATE_FIELDS
        .iter()
        .filter_map(|key| Some((key.to_string(), revision.get(*key)?.clone())))
        .collect();
    Value::Object(template)
}

/// A probe as the API writes it.
fn probe_body(probe: &Probe) -> Value {
    let (kind, mut action) = if let Some(path) = &probe.path {
        ("httpGet", json!({ "path": path }))
    } else if let Some(service) = &probe.grpc_service {
        ("grpc", json!({ "service": service }))
    } else {
        ("tcpSocket", json!({}))
    };
    if let Some(port) = probe.port {
        action["port"] = json!(port);
    }
    let mut body = Map::new();
    body.insert(kind.into(), action);
    for (key, value) in [
        ("initialDelaySeconds", probe.initial_delay_seconds),
        ("periodSeconds", probe.period_seconds),
        ("timeoutSeconds", probe.timeout_seconds),
        ("failureThreshold", probe.failure_threshold),
    ] {
        if let Some(v) = value {
            body.insert(key.into(), json!(v));
        }
    }
    Value::Object(body)
}

/// The revision's volumes and the container's mounts: one for the Cloud SQL instances (at
/// `/cloudsql`, where the client libraries look for their sockets) and one per directory of
/// secret files. Cloud Run mounts one secret per directory.
fn volumes(config: &Config) -> Result<(Vec<Value>, Vec<Value>), Error> {
    let (mut volumes, mut mounts) = (Vec::new(), Vec::new());
    if !config.cloud_sql_instances.is_empty() {
        volumes.push(json!({ "name": "cloudsql", "cloudSqlInstance": { "instances": config.cloud_sql_instances } }));
        mounts.push(json!({ "name": "cloudsql", "mountPath": "/cloudsql" }));
    }
    let mut directories: Vec<(&str, &str, Vec<Value>)> = Vec::new();
    for v in &config.secret_volumes {
        let item = json!({ "path": v.file.as_deref().unwrap_or(&v.secret), "version": v.version });
        match directories
            .iter_mut()
            .find(|(path, _, _)| *path == v.mount_path)
        {
            Some((_, secret, items)) if *secret == v.secret => items.push(item),
            Some((path, secret, _)) => {
                return Err(Error::invalid_config(format!(
                    "cloudrun `secret_volumes`: {path} already holds secret `{secret}`; Cloud Run mounts one secret per directory, so give `{}` a `mount_path` of its own",
                    v.secret
                )));
            }
            None => directories.push((&v.mount_path, &v.secret, vec![item])),
        }
    }
    for (i, (path, secret, items)) in directories.into_iter().enumerate() {
        let name = format!("secret-{i}");
        volumes.push(json!({ "name": name, "secret": { "secret": secret, "items": items } }));
        mounts.push(json!({ "name": name, "mountPath": path }));
    }
    Ok((volumes, mounts))
}

/// A whole service body: labels, ingress, the template and a traffic list.
pub fn service(
    config: &Config,
    spec: &ServiceSpec,
    region: &str,
    revision: &str,
    traffic: Value,
) -> Result<Value, Error> {
    let labels: Map<String, Value> = spec
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    let mut body = json!({
        "ingress": ingress(config, spec),
        "template": template(config, spec, region, revision)?,
        "traffic": traffic,
    });
    if !labels.is_empty() {
        body["labels"] = json!(labels);
    }
    Ok(body)
}

/// The fields `plan` compares, from a service body (desired or deployed). The template's
/// revision name is left out: every deployment names a new one.
pub fn form(service: &Value, invokers: Option<&[String]>) -> Value {
    let t = &service["template"];
    let c = &t["containers"][0];
    let env: Map<String, Value> = c["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let value = match e.get("valueSource") {
                Some(s) => json!(format!(
                    "secret {}:{}",
                    s["secretKeyRef"]["secret"].as_str().unwrap_or(""),
                    s["secretKeyRef"]["version"].as_str().unwrap_or("latest")
                )),
                None => e["value"].clone(),
            };
            (e["name"].as_str().unwrap_or("").to_string(), value)
        })
        .collect();
    let mut form = json!({
        "image": c["image"],
        "args": c["args"],
        "env": env,
        "port": c["ports"][0]["containerPort"],
        "cpu": c["resources"]["limits"]["cpu"],
        "cpu_throttling": c["resources"]["cpuIdle"],
        "startup_cpu_boost": c["resources"]["startupCpuBoost"],
        "http2": json!(c["ports"][0]["name"] == "h2c"),
        "startup_probe": c["startupProbe"],
        "liveness_probe": c["livenessProbe"],
        "volumes": t["volumes"],
        "volume_mounts": c["volumeMounts"],
        "memory": c["resources"]["limits"]["memory"],
        "min_instances": t["scaling"]["minInstanceCount"],
        "max_instances": t["scaling"]["maxInstanceCount"],
        "concurrency": t["maxInstanceRequestConcurrency"],
        "timeout": t["timeout"],
        "service_account": t["serviceAccount"],
        "vpc": t["vpcAccess"],
        "ingress": service["ingress"],
        "labels": service["labels"],
    });
    if let Some(invokers) = invokers {
        let mut sorted = invokers.to_vec();
        sorted.sort();
        form["invokers"] = json!(sorted);
    }
    form
}

/// The deployed form (JSON text) without what Cloud Run fills in by itself when the pipeline
/// leaves it unset: a startup probe (Cloud Run adds a TCP one to every revision), so that
/// leaving it to the platform is not a change on every plan.
pub fn without_platform_defaults(deployed: &str, desired: &Value) -> String {
    let Ok(mut deployed) = serde_json::from_str::<Value>(deployed) else {
        return deployed.to_string();
    };
    if desired["startup_probe"].is_null()
        && let Some(form) = deployed.as_object_mut()
    {
        form.remove("startup_probe");
    }
    deployed.to_string()
}

/// The fields `plan` lists, in order.
pub const FORM_FIELDS: &[&str] = &[
    "image",
    "args",
    "env",
    "port",
    "cpu",
    "cpu_throttling",
    "startup_cpu_boost",
    "http2",
    "startup_probe",
    "liveness_probe",
    "volumes",
    "volume_mounts",
    "memory",
    "min_instances",
    "max_instances",
    "concurrency",
    "timeout",
    "service_account",
    "vpc",
    "ingress",
    "labels",
    "invokers",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_references_in_every_accepted_form() {
        assert_eq!(
            secret_ref("projects/p/secrets/db/versions/3").unwrap(),
            ("db".into(), "3".into())
        );
        assert_eq!(
            secret_ref("projects/p/secrets/db").unwrap(),
            ("db".into(), "latest".into())
        );
        assert_eq!(secret_ref("db:7").unwrap(), ("db".into(), "7".into()));
        assert_eq!(secret_ref("db").unwrap(), ("db".into(), "latest".into()));
        assert!(secret_ref("projects/p/db").is_err());
        assert!(secret_ref("a/b").is_err());
    }

    #[test]
    fn cpu_is_written_in_cores_or_millicores() {
        assert_eq!(cpu(1000), "1");
        assert_eq!(cpu(500), "500m");
    }
}
