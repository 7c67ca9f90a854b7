//! A revision's deployed form: the fields of its Deployment (and autoscaler) a pipeline sets,
//! in one flat JSON object, for `plan`'s field-level diff. Both sides of a diff come from the
//! API server (what serves, and a server-side dry run of what the pipeline asks), so the
//! defaults the server fills in and the forms it normalises (`0.5` CPU is `500m`) are the same
//! on both and never a change.

use crate::manifest::{REVISION_LABEL, SERVICE_LABEL};
use serde_json::{Map, Value, json};

/// The fields compared, in the order a plan lists them.
pub const FIELDS: &[&str] = &[
    "image",
    "args",
    "port",
    "env",
    "env_from",
    "requests",
    "limits",
    "readiness_probe",
    "liveness_probe",
    "startup_probe",
    "service_account",
    "image_pull_secrets",
    "labels",
    "replicas",
    "autoscaling",
];

/// The form of a Deployment (as the API server holds it, or as the provider writes it), with
/// the autoscaler's targets when one scales it.
pub fn of(deployment: &Value, autoscaling: Option<Value>) -> Value {
    let pod = &deployment["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let mut env = Map::new();
    for e in c["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().unwrap_or_default().to_string();
        let value = match (&e["value"], &e["valueFrom"]) {
            (Value::String(v), _) => json!(v),
            (_, from) if from["secretKeyRef"].is_object() => json!(format!(
                "secret {}/{}",
                from["secretKeyRef"]["name"].as_str().unwrap_or("?"),
                from["secretKeyRef"]["key"].as_str().unwrap_or("?")
            )),
            (_, from) if !from.is_null() => from.clone(),
            _ => json!(""),
        };
        env.insert(name, value);
    }
    let mut labels = deployment["spec"]["template"]["metadata"]["labels"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    for engine in [
        SERVICE_LABEL,
        REVISION_LABEL,
        "app.kubernetes.io/name",
        "app.kubernetes.io/managed-by",
    ] {
        labels.remove(engine);
    }
    let pull: Vec<&Value> = pod["imagePullSecrets"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| &s["name"])
        .collect();
    let some = |v: &Value| (!v.is_null()).then(|| v.clone());
    let autoscaled = autoscaling.is_some();
    json!({
        "image": some(&c["image"]),
        "args": some(&c["args"]),
        "port": some(&c["ports"][0]["containerPort"]),
        "env": env,
        "env_from": some(&c["envFrom"]),
        "requests": some(&c["resources"]["requests"]),
        "limits": some(&c["resources"]["limits"]),
        "readiness_probe": some(&c["readinessProbe"]),
        "liveness_probe": some(&c["livenessProbe"]),
        "startup_probe": some(&c["startupProbe"]),
        "service_account": some(&pod["serviceAccountName"]),
        "image_pull_secrets": if pull.is_empty() { Value::Null } else { json!(pull) },
        "labels": labels,
        // An autoscaler owns the count of pods; the plan shows its bounds instead.
        "replicas": if autoscaled { None } else { some(&deployment["spec"]["replicas"]) },
        "autoscaling": autoscaling,
    })
}

/// The autoscaling a HorizontalPodAutoscaler sets, in the pipeline's terms.
pub fn autoscaling_of(hpa: &Value) -> Value {
    let spec = &hpa["spec"];
    let mut out = json!({ "min": spec["minReplicas"], "max": spec["maxReplicas"] });
    for m in spec["metrics"].as_array().into_iter().flatten() {
        if let Some(name) = m["resource"]["name"].as_str() {
            out[name] = m["resource"]["target"]["averageUtilization"].clone();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_form_names_secrets_and_leaves_out_the_engines_labels() {
        let deployment = json!({
            "spec": {
                "replicas": 2,
                "template": {
                    "metadata": { "labels": { "engine/service": "api", "engine/revision": "api-r1", "team": "chat" } },
                    "spec": { "containers": [{
                        "image": "api:1",
                        "ports": [{ "containerPort": 8000 }],
                        "env": [
                            { "name": "LOG", "value": "info" },
                            { "name": "KEY", "valueFrom": { "secretKeyRef": { "name": "api-secrets", "key": "openai" } } },
                        ],
                    }] },
                },
            },
        });
        let form = of(&deployment, None);
        assert_eq!(
            form["env"],
            json!({ "LOG": "info", "KEY": "secret api-secrets/openai" })
        );
        assert_eq!(form["labels"], json!({ "team": "chat" }));
        assert_eq!(
            (&form["replicas"], &form["port"]),
            (&json!(2), &json!(8000))
        );
        let scaled = of(&deployment, Some(json!({ "min": 2, "max": 10 })));
        assert!(scaled["replicas"].is_null());
    }
}
