//! The objects around the services, as pipeline resources: a `namespace`, a `config-map`, and
//! a `manifest` of any objects (a YAML file in a granted directory, or an inline table). Each
//! is written by server-side apply under the engine's field manager; `plan` diffs the API
//! server's dry run against what exists. Deleting a namespace that still holds objects the
//! engine did not create is refused: the engine deletes only what it made.

use crate::config::{Config, dns_label};
use crate::manifest::MANAGER;
use engine_sdk::kubernetes::{Cluster, Resource, kinds};
use engine_sdk::resources::{ResourceKind, ResourceSpec, ResourceStatus};
use engine_sdk::{Change, DeploymentPlan, Error, ErrorExt, PlanAction};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// Where a `manifest` resource's `file` is read from: the directory the pipeline grants there.
pub const MANIFESTS_DIR: &str = "/manifests";

pub const NAMESPACE: &str = "namespace";
pub const CONFIG_MAP: &str = "config-map";
pub const MANIFEST: &str = "manifest";

pub fn kinds() -> Vec<ResourceKind> {
    vec![
        ResourceKind {
            name: NAMESPACE.into(),
            description: "A namespace (deleted by destroy only once it holds nothing the engine did not make)".into(),
            spec_schema: r#"{"type":"object","properties":{"name":{"type":"string"},"labels":{"type":"object","additionalProperties":{"type":"string"}}},"additionalProperties":false}"#.into(),
            outputs: vec!["name".into()],
        },
        ResourceKind {
            name: CONFIG_MAP.into(),
            description: "A config map of plain settings, in the service namespace or `namespace`".into(),
            spec_schema: r#"{"type":"object","properties":{"name":{"type":"string"},"namespace":{"type":"string"},"data":{"type":"object","additionalProperties":{"type":"string"}}},"required":["data"],"additionalProperties":false}"#.into(),
            outputs: vec!["name".into()],
        },
        ResourceKind {
            name: MANIFEST.into(),
            description: format!("Any objects: `file` (YAML, one or more documents, in the directory granted at {MANIFESTS_DIR}) or `object` (one inline table)"),
            spec_schema: r#"{"type":"object","properties":{"file":{"type":"string"},"object":{"type":"object"},"namespace":{"type":"string"}},"oneOf":[{"required":["file"]},{"required":["object"]}],"additionalProperties":false}"#.into(),
            outputs: vec!["name".into()],
        },
    ]
}

/// One object of a resource, with where it lives.
struct Placed {
    object: Value,
    resource: Resource,
    namespace: String,
    name: String,
}

impl Placed {
    fn path(&self) -> String {
        self.resource.object(&self.namespace, &self.name)
    }

    /// `ConfigMap/ai-chatbot/app-config` (`Namespace/ai-chatbot`), for ids, messages and plans.
    fn label(&self) -> String {
        let kind = self.object["kind"].as_str().unwrap_or("?");
        if self.resource.namespaced {
            format!("{kind}/{}/{}", self.namespace, self.name)
        } else {
            format!("{kind}/{}", self.name)
        }
    }
}

struct Context {
    cluster: Cluster,
    config: Config,
}

fn context(target: &ResourceSpec) -> Result<Context, Error> {
    let config = Config::parse(&target.config)?;
    Ok(Context {
        cluster: Cluster::open(&config.cluster)?,
        config,
    })
}

/// The objects a resource spec stands for, in the order they are applied.
fn objects(c: &Context, target: &ResourceSpec) -> Result<Vec<Placed>, Error> {
    let spec: Value = serde_json::from_str(&target.spec)?;
    let name = spec["name"].as_str().unwrap_or(&target.name).to_string();
    let namespace = spec["namespace"]
        .as_str()
        .unwrap_or(&c.config.namespace)
        .to_string();
    let raw = match target.kind.as_str() {
        NAMESPACE => {
            dns_label("namespace", &name)?;
            let mut metadata = json!({ "name": name });
            if let Some(labels) = spec.get("labels") {
                metadata["labels"] = labels.clone();
            }
            vec![json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": metadata })]
        }
        CONFIG_MAP => vec![json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": { "name": name, "namespace": namespace },
            "data": spec["data"],
        })],
        MANIFEST => match (&spec["file"], &spec["object"]) {
            (Value::String(file), _) => read_manifest(file)?,
            (_, object @ Value::Object(_)) => vec![object.clone()],
            _ => {
                return Err(Error::invalid_config(
                    "a manifest resource needs `file` or `object`",
                ));
            }
        },
        other => {
            return Err(Error::invalid_config(format!(
                "kubernetes manages no `{other}` resources"
            )));
        }
    };
    raw.into_iter()
        .map(|o| place(&c.cluster, o, &namespace))
        .collect()
}

/// The documents of a manifest file in the granted directory (empty ones skipped).
fn read_manifest(file: &str) -> Result<Vec<Value>, Error> {
    if file.starts_with('/') || file.split('/').any(|p| p == "..") {
        return Err(Error::invalid_config(format!(
            "manifest file {file:?}: name it relative to the directory granted at {MANIFESTS_DIR}"
        )));
    }
    let path = format!("{MANIFESTS_DIR}/{file}");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        Error::invalid_config(format!(
            "cannot read the manifest file {file} ({e}); grant its directory to the plugin: dirs = [{{ host = \"k8s\", guest = \"{MANIFESTS_DIR}\" }}] in [plugins.kubernetes]"
        ))
    })?;
    let documents: Vec<Value> = serde_saphyr::from_multiple(&text)
        .map_err(|e| Error::invalid_config(format!("the manifest file {file} is not YAML: {e}")))?;
    Ok(documents.into_iter().filter(|d| d.is_object()).collect())
}

/// Where an object goes: its kind by discovery, its namespace (the default one for a
/// namespaced kind that names none).
fn place(cluster: &Cluster, mut object: Value, default_namespace: &str) -> Result<Placed, Error> {
    let api_version = object["apiVersion"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let kind = object["kind"].as_str().unwrap_or_default().to_string();
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if api_version.is_empty() || kind.is_empty() || name.is_empty() {
        return Err(Error::invalid_config(format!(
            "every object needs apiVersion, kind and metadata.name; one has {:?}, {:?}, {:?}",
            api_version, kind, name
        )));
    }
    let resource = cluster.resource(&api_version, &kind)?;
    let namespace = object["metadata"]["namespace"]
        .as_str()
        .unwrap_or(default_namespace)
        .to_string();
    if resource.namespaced {
        object["metadata"]["namespace"] = json!(namespace);
    }
    Ok(Placed {
        object,
        resource,
        namespace,
        name,
    })
}

pub fn read(target: &ResourceSpec) -> Result<Option<ResourceStatus>, Error> {
    let c = context(target)?;
    let placed = objects(&c, target)?;
    let mut live = Vec::new();
    for p in &placed {
        if let Some(object) = c.cluster.get(&p.path())? {
            live.push(object);
        }
    }
    if live.is_empty() {
        return Ok(None);
    }
    Ok(Some(status(&placed, live)))
}

fn status(placed: &[Placed], live: Vec<Value>) -> ResourceStatus {
    // The first object names the resource (`Deployment/ns/name`), `+N` counts the others: an
    // id is one short word.
    let id = match placed {
        [] => String::new(),
        [one] => one.label(),
        [first, rest @ ..] => format!("{}+{}", first.label(), rest.len()),
    };
    let name = placed.first().map(|p| p.name.clone()).unwrap_or_default();
    ResourceStatus {
        id,
        observed: Value::Array(live).to_string(),
        outputs: vec![("name".into(), name)],
    }
}

pub fn plan(
    desired: &ResourceSpec,
    current: Option<&ResourceStatus>,
) -> Result<DeploymentPlan, Error> {
    let c = context(desired)?;
    let placed = objects(&c, desired)?;
    let live: Vec<Value> = match current {
        Some(s) => serde_json::from_str(&s.observed).unwrap_or_default(),
        None => Vec::new(),
    };
    let mut changes = Vec::new();
    for p in &placed {
        let existing = live
            .iter()
            .find(|o| o["metadata"]["name"] == p.name.as_str() && o["kind"] == p.object["kind"]);
        match existing {
            None => changes.push(Change {
                field: p.label(),
                before: None,
                after: Some("create".into()),
            }),
            // The API server's own result of applying it, compared where the pipeline speaks.
            Some(live) => {
                let dry = c.cluster.apply(&p.path(), &p.object, MANAGER, true)?;
                for (path, (before, after)) in differences(&p.object, live, &dry) {
                    changes.push(Change {
                        field: format!("{}: {path}", p.label()),
                        before,
                        after,
                    });
                }
            }
        }
    }
    let action = match (current, changes.is_empty()) {
        (None, _) => PlanAction::Create,
        (Some(_), true) => PlanAction::NoChange,
        (Some(_), false) => PlanAction::Update,
    };
    Ok(DeploymentPlan {
        action,
        summary: format!("{} change(s)", changes.len()),
        changes,
    })
}

pub fn apply(desired: &ResourceSpec) -> Result<ResourceStatus, Error> {
    let c = context(desired)?;
    let placed = objects(&c, desired)?;
    let mut live = Vec::new();
    for p in &placed {
        live.push(c.cluster.apply(&p.path(), &p.object, MANAGER, false)?);
    }
    Ok(status(&placed, live))
}

pub fn delete(target: &ResourceSpec) -> Result<(), Error> {
    let c = context(target)?;
    let placed = objects(&c, target)?;
    for p in placed.iter().rev() {
        if p.object["kind"] == "Namespace" {
            refuse_if_others_left(&c.cluster, &p.name)?;
        }
        c.cluster.delete(&p.path())?;
    }
    Ok(())
}

/// A namespace is deleted with everything in it: refused while it holds objects (of the usual
/// kinds) the engine did not make, which are someone else's to delete.
fn refuse_if_others_left(cluster: &Cluster, namespace: &str) -> Result<(), Error> {
    let kinds_checked = [
        kinds::deployments(),
        kinds::services(),
        kinds::config_maps(),
        Resource::new("v1", "secrets", true),
        Resource::new("v1", "persistentvolumeclaims", true),
        Resource::new("networking.k8s.io/v1", "ingresses", true),
    ];
    let mut others = Vec::new();
    for kind in kinds_checked {
        for object in cluster.list(&kind.collection(namespace), None)? {
            let meta = &object["metadata"];
            let name = meta["name"].as_str().unwrap_or_default();
            let by_engine = meta["managedFields"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|f| f["manager"] == MANAGER);
            // What Kubernetes itself puts in every namespace.
            let builtin = name == "kube-root-ca.crt"
                || object["type"] == "kubernetes.io/service-account-token";
            if !by_engine && !builtin {
                others.push(format!("{} {name}", kind.plural.trim_end_matches('s')));
            }
        }
    }
    if others.is_empty() {
        return Ok(());
    }
    Err(Error::conflict(format!(
        "namespace {namespace} still holds objects the engine did not make ({}); deleting it would delete them too. Delete them first, then destroy again (or keep the namespace: remove its resource from the pipeline)",
        others.join(", ")
    )))
}

/// Where the dry run of `desired` differs from `live`, in the parts the desired object sets
/// (its top-level fields but the object's identity and status, and its labels and
/// annotations), as JSON paths with the values before and after.
fn differences(
    desired: &Value,
    live: &Value,
    dry: &Value,
) -> BTreeMap<String, (Option<String>, Option<String>)> {
    let mut out = BTreeMap::new();
    let mut compare = |path: &str, pointer: &str| {
        let (mut before, mut after) = (BTreeMap::new(), BTreeMap::new());
        flatten(
            live.pointer(pointer).unwrap_or(&Value::Null),
            path,
            &mut before,
        );
        flatten(
            dry.pointer(pointer).unwrap_or(&Value::Null),
            path,
            &mut after,
        );
        let keys: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
        for key in keys {
            if before.get(key) != after.get(key) {
                out.insert(
                    key.clone(),
                    (before.get(key).cloned(), after.get(key).cloned()),
                );
            }
        }
    };
    for field in desired.as_object().into_iter().flat_map(Map::keys) {
        if !["apiVersion", "kind", "metadata", "status"].contains(&field.as_str()) {
            compare(field, &format!("/{field}"));
        }
    }
    compare("metadata.labels", "/metadata/labels");
    compare("metadata.annotations", "/metadata/annotations");
    out
}

/// A JSON value as `path → leaf` pairs (`spec.ports[0].port → 80`).
fn flatten(value: &Value, path: &str, out: &mut BTreeMap<String, String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                flatten(v, &format!("{path}.{k}"), out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                flatten(v, &format!("{path}[{i}]"), out);
            }
        }
        Value::Null => {}
        leaf => {
            out.insert(path.to_string(), leaf.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_are_where_the_pipeline_speaks() {
        let desired = json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": "app" }, "data": { "A": "1" } });
        let live = json!({ "metadata": { "name": "app", "resourceVersion": "5", "labels": { "x": "y" } }, "data": { "A": "0", "B": "2" } });
        let dry = json!({ "metadata": { "name": "app", "resourceVersion": "6", "labels": { "x": "y" } }, "data": { "A": "1" } });
        let d = differences(&desired, &live, &dry);
        assert_eq!(d["data.A"], (Some("\"0\"".into()), Some("\"1\"".into())));
        assert_eq!(d["data.B"], (Some("\"2\"".into()), None));
        assert_eq!(
            d.len(),
            2,
            "identity and resourceVersion are no change: {d:?}"
        );
    }
}
