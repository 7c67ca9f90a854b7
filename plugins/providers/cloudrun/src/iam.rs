//! IAM bindings as resources: `run-invoker` grants `roles/run.invoker` on a Cloud Run service
//! (in each of provider_config's regions), `secret-accessor` grants
//! `roles/secretmanager.secretAccessor` on a Secret Manager secret, as the guides'
//! `gcloud … add-iam-policy-binding` do.
//!
//! A binding adds its members and leaves the role's other members alone, unless `exclusive`
//! makes the role exactly the list (like a service's `invokers`). Destroying it removes the
//! members it names. It "exists" when any of its members already holds the role: then the
//! engine did not create it, and `destroy` leaves it in place.

use super::api::Google;
use super::config::Config;
use super::policy;
use engine_sdk::resources::{ResourceKind, ResourceSpec, ResourceStatus};
use engine_sdk::{Change, DeploymentPlan, Error, ErrorExt, PlanAction};
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;

pub const RUN_INVOKER: &str = "run-invoker";
pub const SECRET_ACCESSOR: &str = "secret-accessor";

const MEMBERS_SCHEMA: &str = r##"{ "type": "array", "minItems": 1, "maxItems": 1500,
      "items": { "type": "string", "pattern": "^(allUsers|allAuthenticatedUsers|(user|serviceAccount|group|domain|principal|principalSet):.+)$" },
      "description": "members such as serviceAccount:NAME@PROJECT.iam.gserviceaccount.com" }"##;

fn schema(title: &str, target: &str, target_doc: &str, region: bool) -> String {
    let region = match region {
        true => {
            r#", "region": { "type": "string", "description": "one region; every region of provider_config by default" }"#
        }
        false => "",
    };
    format!(
        r##"{{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "cloudrun {title}",
  "type": "object",
  "required": ["{target}", "members"],
  "properties": {{
    "{target}": {{ "type": "string", "pattern": "^[A-Za-z0-9_-]+$", "description": "{target_doc}" }},
    "members": {MEMBERS_SCHEMA},
    "exclusive": {{ "type": "boolean", "default": false, "description": "make the role exactly these members, removing others" }}{region}
  }},
  "additionalProperties": false
}}"##
    )
}

pub fn kinds() -> Vec<ResourceKind> {
    vec![
        ResourceKind {
            name: RUN_INVOKER.into(),
            description: "roles/run.invoker on a Cloud Run service for the members listed".into(),
            spec_schema: schema(
                RUN_INVOKER,
                "service",
                "the Cloud Run service's id",
                true,
            ),
            outputs: vec!["role".into(), "resource".into()],
        },
        ResourceKind {
            name: SECRET_ACCESSOR.into(),
            description:
                "roles/secretmanager.secretAccessor on a Secret Manager secret for the members listed"
                    .into(),
            spec_schema: schema(
                SECRET_ACCESSOR,
                "secret",
                "the secret's id in provider_config's project",
                false,
            ),
            outputs: vec!["role".into(), "resource".into()],
        },
    ]
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    #[serde(default)]
    service: Option<String>,
    #[serde(default)]
    secret: Option<String>,
    members: Vec<String>,
    #[serde(default)]
    exclusive: bool,
    #[serde(default)]
    region: Option<String>,
}

/// A binding as the API sees it: the role, and the full names it is set on.
struct Binding {
    role: &'static str,
    api: Google,
    targets: Vec<String>,
    members: Vec<String>,
    exclusive: bool,
}

impl Binding {
    fn of(target: &ResourceSpec) -> Result<Binding, Error> {
        let config = Config::parse(&target.config)?;
        let spec: Spec = serde_json::from_str(&target.spec).map_err(|e| {
            Error::invalid_config(format!("{} `{}`: {e}", target.kind, target.name))
        })?;
        let mut members = spec.members.clone();
        members.sort();
        members.dedup();
        let (role, api, targets) = match (target.kind.as_str(), &spec.service, &spec.secret) {
            (RUN_INVOKER, Some(service), None) => {
                let regions = match &spec.region {
                    Some(r) => vec![r.clone()],
                    None => config.regions(),
                };
                let targets = regions
                    .iter()
                    .map(|r| {
                        format!(
                            "projects/{}/locations/{r}/services/{service}",
                            config.project
                        )
                    })
                    .collect();
                let base = format!("{}/v2", config.endpoint.trim_end_matches('/'));
                (
                    policy::INVOKER,
                    Google::new(base, "the Cloud Run API")?,
                    targets,
                )
            }
            (SECRET_ACCESSOR, None, Some(secret)) => {
                let base = format!("{}/v1", config.google_api("secretmanager"));
                let targets = vec![format!("projects/{}/secrets/{secret}", config.project)];
                (
                    policy::SECRET_ACCESSOR,
                    Google::new(base, "Secret Manager")?,
                    targets,
                )
            }
            (kind, _, _) => {
                return Err(Error::invalid_config(format!(
                    "{kind} `{}`: give `{}` (and only that) to say what the role is granted on",
                    target.name,
                    if kind == RUN_INVOKER {
                        "service"
                    } else {
                        "secret"
                    }
                )));
            }
        };
        Ok(Binding {
            role,
            api,
            targets,
            members,
            exclusive: spec.exclusive,
        })
    }

    /// The role's members on each target; a target that does not exist (yet) has none.
    fn held(&self) -> Result<BTreeMap<String, Vec<String>>, Error> {
        let mut held = BTreeMap::new();
        for t in &self.targets {
            let members = match policy::read(&self.api, t) {
                Ok(p) => policy::members(&p, self.role),
                Err(Error::NotFound(_)) => Vec::new(),
                Err(e) => return Err(e),
            };
            held.insert(t.clone(), members);
        }
        Ok(held)
    }

    /// The members a target should have, given those it has.
    fn wanted(&self, current: &[String]) -> Vec<String> {
        let mut wanted = self.members.clone();
        if !self.exclusive {
            wanted.extend(current.iter().cloned());
        }
        wanted.sort();
        wanted.dedup();
        wanted
    }

    fn status(&self, held: &BTreeMap<String, Vec<String>>) -> ResourceStatus {
        let id = self.targets.join(",");
        ResourceStatus {
            id: id.clone(),
            observed: json!({ "role": self.role, "members": held }).to_string(),
            outputs: vec![("role".into(), self.role.into()), ("resource".into(), id)],
        }
    }
}

pub fn read(target: &ResourceSpec) -> Result<Option<ResourceStatus>, Error> {
    let binding = Binding::of(target)?;
    let held = binding.held()?;
    let any = held
        .values()
        .any(|m| m.iter().any(|x| binding.members.contains(x)));
    Ok(any.then(|| binding.status(&held)))
}

pub fn plan(
    target: &ResourceSpec,
    current: Option<&ResourceStatus>,
) -> Result<DeploymentPlan, Error> {
    let binding = Binding::of(target)?;
    let held: BTreeMap<String, Vec<String>> = current
        .and_then(|c| serde_json::from_str::<serde_json::Value>(&c.observed).ok())
        .and_then(|o| serde_json::from_value(o["members"].clone()).ok())
        .unwrap_or_default();
    let changes: Vec<Change> = binding
        .targets
        .iter()
        .filter_map(|t| {
            let now = held.get(t).cloned().unwrap_or_default();
            let wanted = binding.wanted(&now);
            (wanted != now).then(|| Change {
                field: format!("{t} {}", binding.role),
                before: Some(now.join(", ")).filter(|s| !s.is_empty()),
                after: Some(wanted.join(", ")),
            })
        })
        .collect();
    let role = binding.role;
    Ok(match (current, changes.is_empty()) {
        (None, _) => DeploymentPlan {
            action: PlanAction::Create,
            summary: format!("grant {role} to {}", binding.members.join(", ")),
            changes,
        },
        (Some(_), true) => DeploymentPlan {
            action: PlanAction::NoChange,
            summary: format!("{role} is granted as described"),
            changes,
        },
        (Some(_), false) => DeploymentPlan {
            action: PlanAction::Update,
            summary: format!("change {role} on {} resource(s)", changes.len()),
            changes,
        },
    })
}

pub fn apply(target: &ResourceSpec) -> Result<ResourceStatus, Error> {
    let binding = Binding::of(target)?;
    for t in &binding.targets {
        policy::update(&binding.api, t, binding.role, |now| binding.wanted(now)).map_err(|e| {
            match e {
                Error::NotFound(m) => Error::not_found(format!(
                    "cannot grant {} on {t}: it does not exist ({m}); deploy it first (`depends_on`)",
                    binding.role
                )),
                other => other,
            }
        })?;
    }
    Ok(binding.status(&binding.held()?))
}

pub fn delete(target: &ResourceSpec) -> Result<(), Error> {
    let binding = Binding::of(target)?;
    for t in &binding.targets {
        let removed = policy::update(&binding.api, t, binding.role, |now| {
            now.iter()
                .filter(|m| !binding.members.contains(m))
                .cloned()
                .collect()
        });
        match removed {
            Ok(()) | Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(kind: &str, spec: serde_json::Value) -> ResourceSpec {
        ResourceSpec {
            kind: kind.into(),
            name: "grant".into(),
            spec: spec.to_string(),
            config: json!({"project": "p", "regions": ["europe-west1", "us-central1"], "endpoint": "http://127.0.0.1:9"}).to_string(),
        }
    }

    #[test]
    fn an_invoker_binding_is_set_on_the_service_in_every_region() {
        engine_sdk::testing::grant_secret("google", "token");
        let b = Binding::of(&target(
            RUN_INVOKER,
            json!({"service": "api", "members": ["serviceAccount:b@p", "serviceAccount:a@p"]}),
        ))
        .unwrap();
        assert_eq!(
            b.targets,
            [
                "projects/p/locations/europe-west1/services/api",
                "projects/p/locations/us-central1/services/api"
            ]
        );
        assert_eq!(b.members, ["serviceAccount:a@p", "serviceAccount:b@p"]);
        // Additive: others keep the role; exclusive: only the listed.
        assert_eq!(
            b.wanted(&["user:x@y".into()]),
            ["serviceAccount:a@p", "serviceAccount:b@p", "user:x@y"]
        );
    }

    #[test]
    fn a_binding_names_exactly_one_thing() {
        engine_sdk::testing::grant_secret("google", "token");
        let both = target(
            SECRET_ACCESSOR,
            json!({"service": "api", "secret": "s", "members": ["user:a@b"]}),
        );
        let Err(e) = Binding::of(&both) else {
            panic!("accepted")
        };
        assert!(e.describe().contains("give `secret`"), "{}", e.describe());
        let b = Binding::of(&target(
            SECRET_ACCESSOR,
            json!({"secret": "admin-api-key-staging", "members": ["user:a@b"], "exclusive": true}),
        ))
        .unwrap();
        assert_eq!(b.targets, ["projects/p/secrets/admin-api-key-staging"]);
        assert_eq!(b.wanted(&["user:x@y".into()]), ["user:a@b"]);
    }
}
