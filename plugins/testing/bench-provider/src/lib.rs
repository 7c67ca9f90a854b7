//! A provider whose `plan` does the work a real provider's plan does: parse the deployed
//! configuration, compare it field by field with the desired spec, list the changes. The
//! benchmarks run this same function inside the sandbox, natively, and in a subprocess.

use engine_sdk::{Artifact, Change};
use engine_sdk::{
    Capabilities, DeploymentPlan, Diagnostic, Endpoint, Error, ErrorExt, PlanAction, PluginInfo,
    Provider, Revision, ServiceRef, ServiceSpec, ServiceStatus, TrafficTarget,
};
use serde_json::{Value, json};

/// The spec as the bench platform would store it.
pub fn deployed_form(spec: &ServiceSpec) -> Value {
    let artifact = match &spec.artifact {
        Artifact::Image(i) => i.clone(),
        Artifact::Path(p) => p.clone(),
    };
    json!({
        "artifact": artifact,
        "args": spec.args,
        "env": spec.env.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect::<serde_json::Map<_, _>>(),
        "cpu_millis": spec.resources.cpu_millis,
        "memory_mib": spec.resources.memory_mib,
        "min_instances": spec.scaling.min_instances,
        "max_instances": spec.scaling.max_instances,
        "port": spec.port,
    })
}

fn flatten(prefix: &str, value: &Value, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

/// The benchmarked logic.
pub fn plan(
    desired: &ServiceSpec,
    current: Option<&ServiceStatus>,
) -> Result<DeploymentPlan, Error> {
    let Some(current) = current else {
        return Ok(DeploymentPlan {
            action: PlanAction::Create,
            changes: Vec::new(),
            summary: format!("create {}", desired.name),
        });
    };
    let deployed: Value = serde_json::from_str(&current.deployed)
        .map_err(|e| Error::fatal(format!("unreadable deployed state: {e}")))?;
    let (mut before, mut after) = (Vec::new(), Vec::new());
    flatten("", &deployed, &mut before);
    flatten("", &deployed_form(desired), &mut after);
    let mut changes = Vec::new();
    for (field, new) in &after {
        let old = before
            .iter()
            .find(|(f, _)| f == field)
            .map(|(_, v)| v.clone());
        if old.as_ref() != Some(new) {
            changes.push(Change {
                field: field.clone(),
                before: old,
                after: Some(new.clone()),
            });
        }
    }
    for (field, old) in &before {
        if !after.iter().any(|(f, _)| f == field) {
            changes.push(Change {
                field: field.clone(),
                before: Some(old.clone()),
                after: None,
            });
        }
    }
    let action = if changes.is_empty() {
        PlanAction::NoChange
    } else {
        PlanAction::Update
    };
    let summary = format!("{} field(s) change", changes.len());
    Ok(DeploymentPlan {
        action,
        changes,
        summary,
    })
}

pub struct BenchProvider;

fn unsupported(what: &str) -> Error {
    Error::fatal(format!("the bench provider does not {what}"))
}

impl Provider for BenchProvider {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "bench".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Benchmark provider: plan only".into(),
            config_schema: r#"{"type":"object"}"#.into(),
            features: Vec::new(),
            capabilities: Capabilities::none(),
        }
    }
    fn validate(_spec: ServiceSpec) -> Vec<Diagnostic> {
        Vec::new()
    }
    fn read(_service: ServiceRef) -> Result<Option<ServiceStatus>, Error> {
        Ok(None)
    }
    fn plan(desired: ServiceSpec, current: Option<ServiceStatus>) -> Result<DeploymentPlan, Error> {
        plan(&desired, current.as_ref())
    }
    fn deploy(_spec: ServiceSpec, _deployment_id: String) -> Result<Revision, Error> {
        Err(unsupported("deploy"))
    }
    fn set_traffic(_service: ServiceRef, _split: Vec<TrafficTarget>) -> Result<(), Error> {
        Err(unsupported("move traffic"))
    }
    fn get_traffic(_service: ServiceRef) -> Result<Vec<TrafficTarget>, Error> {
        Err(unsupported("read traffic"))
    }
    fn endpoints(_service: ServiceRef, _revision: Option<String>) -> Result<Vec<Endpoint>, Error> {
        Ok(Vec::new())
    }
    fn retire(_service: ServiceRef, _revision: String) -> Result<(), Error> {
        Err(unsupported("retire"))
    }
    fn destroy(_service: ServiceRef) -> Result<(), Error> {
        Err(unsupported("destroy"))
    }
}

engine_sdk::export_provider!(BenchProvider);

#[cfg(test)]
mod tests {
    use super::*;
    use engine_sdk::{Ingress, Resources, Scaling};

    fn spec(image: &str) -> ServiceSpec {
        ServiceSpec {
            name: "api".into(),
            artifact: Artifact::Image(image.into()),
            args: vec![],
            env: vec![("LOG".into(), "info".into())],
            secrets: vec![],
            resources: Resources {
                cpu_millis: Some(1000),
                memory_mib: Some(512),
            },
            scaling: Scaling {
                min_instances: Some(1),
                max_instances: Some(10),
                concurrency: None,
            },
            port: Some(8080),
            ingress: Ingress::Public,
            labels: vec![],
            config: "{}".into(),
        }
    }

    fn status(of: &ServiceSpec) -> ServiceStatus {
        ServiceStatus {
            revisions: vec![],
            traffic: vec![],
            url: None,
            deployed: deployed_form(of).to_string(),
        }
    }

    #[test]
    fn plans_create_update_and_no_change() {
        assert_eq!(
            plan(&spec("api:1"), None).unwrap().action,
            PlanAction::Create
        );
        assert_eq!(
            plan(&spec("api:1"), Some(&status(&spec("api:1"))))
                .unwrap()
                .action,
            PlanAction::NoChange
        );
        let update = plan(&spec("api:2"), Some(&status(&spec("api:1")))).unwrap();
        assert_eq!(update.action, PlanAction::Update);
        assert_eq!(
            update.changes,
            vec![Change {
                field: "artifact".into(),
                before: Some("\"api:1\"".into()),
                after: Some("\"api:2\"".into())
            }]
        );
    }
}
