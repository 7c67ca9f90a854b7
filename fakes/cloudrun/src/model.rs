//! What the fake Cloud Run holds and how it behaves: services, revisions, traffic, operations
//! and IAM policies, in the API's own JSON shapes (v2), plus the v1 (Knative) view gcloud reads.

use super::ApiError;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::BTreeMap;

const RUN_TYPE: &str = "type.googleapis.com/google.cloud.run.v2.Service";

/// One service and everything under it.
#[derive(Debug, Clone)]
pub struct StoredService {
    /// The v2 `Service` resource as the API returns it.
    pub resource: Value,
    /// v2 `Revision` resources, oldest first.
    pub revisions: Vec<Value>,
    /// The IAM policy (`Policy`).
    pub policy: Value,
    /// Requests the data plane answered, per revision.
    pub served: BTreeMap<String, u64>,
    /// Every data-plane request: (revision, `METHOD /path`).
    pub calls: Vec<(String, String)>,
    /// Answers per (revision, status class `2xx`/`5xx`), for `/metrics`.
    pub answers: BTreeMap<(String, String), u64>,
}

#[derive(Debug, Clone)]
struct Operation {
    resource: Value,
    /// Polls left before it reports `done`.
    polls_left: u32,
}

/// The fake's whole state.
#[derive(Debug)]
pub struct Model {
    base: String,
    /// By full name, `projects/P/locations/L/services/S`.
    pub services: BTreeMap<String, StoredService>,
    operations: BTreeMap<String, Operation>,
    counter: u64,
    /// Polls an operation needs before it is done (1: done on the first `get`).
    pub operation_polls: u32,
    /// (service's full name, revision) pairs whose data plane answers 503: a revision broken
    /// in one region alone, as when a regional dependency is down.
    pub broken: std::collections::BTreeSet<(String, String)>,
    /// Source addresses inside the project's VPC networks. A service with internal ingress
    /// answers only requests from them, as Cloud Run does: a proxy in the VPC, or the engine
    /// running there. Empty by default: this machine is outside.
    pub vpc_sources: std::collections::BTreeSet<std::net::IpAddr>,
}

/// Who calls a service's URL: their identity token, and the address the request comes from.
pub struct Caller<'a> {
    pub bearer: Option<&'a str>,
    pub source: std::net::IpAddr,
}

fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

fn not_found(what: &str) -> ApiError {
    ApiError::new(404, "NOT_FOUND", format!("Resource '{what}' was not found"))
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(400, "INVALID_ARGUMENT", message)
}

fn last_segment(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

impl Model {
    pub fn new(base: &str) -> Model {
        Model {
            base: base.to_string(),
            services: BTreeMap::new(),
            operations: BTreeMap::new(),
            counter: 0,
            operation_polls: 1,
            broken: Default::default(),
            vpc_sources: Default::default(),
        }
    }

    fn next(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }

    fn uri(&self, name: &str, tag: Option<&str>) -> String {
        // name = projects/P/locations/L/services/S
        let parts: Vec<&str> = name.split('/').collect();
        let base = format!("{}/_run/{}/{}/{}", self.base, parts[1], parts[3], parts[5]);
        match tag {
            Some(t) => format!("{base}/_tag/{t}"),
            None => base,
        }
    }

    /// Dispatches one API method (by its discovery id).
    pub fn call(
        &mut self,
        method: &str,
        params: &BTreeMap<String, String>,
        query: &[(String, String)],
        input: Value,
    ) -> Result<Value, ApiError> {
        let p = |k: &str| params.get(k).cloned().unwrap_or_default();
        let q = |k: &str| query.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let location = format!(
            "projects/{}/locations/{}",
            p("projectsId"),
            p("locationsId")
        );
        let service_name = format!("{location}/services/{}", p("servicesId"));
        match method {
            "run.projects.locations.services.create" => {
                let id =
                    q("serviceId").ok_or_else(|| invalid("serviceId is required by this fake"))?;
                let name = format!("{location}/services/{id}");
                if self.services.contains_key(&name) {
                    return Err(ApiError::new(
                        409,
                        "ALREADY_EXISTS",
                        format!("Resource '{id}' already exists."),
                    ));
                }
                self.apply(&name, input, q("validateOnly").as_deref() == Some("true"))
            }
            "run.projects.locations.services.patch" => {
                let missing = !self.services.contains_key(&service_name);
                if missing && q("allowMissing").as_deref() != Some("true") {
                    return Err(not_found(&service_name));
                }
                // Optimistic concurrency: an update based on an older read is refused.
                if let (Some(sent), Some(current)) = (
                    input["etag"].as_str(),
                    self.services
                        .get(&service_name)
                        .and_then(|s| s.resource["etag"].as_str()),
                ) && sent != current
                {
                    return Err(ApiError::new(
                        409,
                        "ABORTED",
                        format!(
                            "The service has been modified (etag {current}, request based on {sent}); read it again and retry."
                        ),
                    ));
                }
                self.apply(
                    &service_name,
                    input,
                    q("validateOnly").as_deref() == Some("true"),
                )
            }
            "run.projects.locations.services.get" => self
                .services
                .get(&service_name)
                .map(|s| s.resource.clone())
                .ok_or_else(|| not_found(&service_name)),
            "run.projects.locations.services.list" => {
                let services: Vec<Value> = self
                    .services
                    .iter()
                    .filter(|(n, _)| n.starts_with(&format!("{location}/")))
                    .map(|(_, s)| s.resource.clone())
                    .collect();
                Ok(json!({ "services": services }))
            }
            "run.projects.locations.services.delete" => {
                let gone = self
                    .services
                    .remove(&service_name)
                    .ok_or_else(|| not_found(&service_name))?;
                Ok(self.operation(&location, gone.resource, None))
            }
            "run.projects.locations.services.revisions.get" => {
                let name = format!("{service_name}/revisions/{}", p("revisionsId"));
                self.services
                    .get(&service_name)
                    .and_then(|s| s.revisions.iter().find(|r| r["name"] == name.as_str()))
                    .cloned()
                    .ok_or_else(|| not_found(&name))
            }
            "run.projects.locations.services.revisions.list" => {
                let svc = self
                    .services
                    .get(&service_name)
                    .ok_or_else(|| not_found(&service_name))?;
                let mut revisions = svc.revisions.clone();
                revisions.reverse();
                Ok(json!({ "revisions": revisions }))
            }
            "run.projects.locations.services.revisions.delete" => {
                let name = format!("{service_name}/revisions/{}", p("revisionsId"));
                let svc = self
                    .services
                    .get_mut(&service_name)
                    .ok_or_else(|| not_found(&service_name))?;
                let id = p("revisionsId");
                let serving = svc.resource["trafficStatuses"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|t| {
                        t["revision"] == id.as_str()
                            && (t["percent"].as_i64().unwrap_or(0) > 0 || t.get("tag").is_some())
                    });
                if serving {
                    return Err(ApiError::new(
                        400,
                        "FAILED_PRECONDITION",
                        format!(
                            "Revision {id} is referenced by the traffic configuration of service {}; remove it from traffic first.",
                            last_segment(&service_name)
                        ),
                    ));
                }
                let index = svc
                    .revisions
                    .iter()
                    .position(|r| r["name"] == name.as_str())
                    .ok_or_else(|| not_found(&name))?;
                let removed = svc.revisions.remove(index);
                Ok(self.operation(
                    &location,
                    removed,
                    Some("type.googleapis.com/google.cloud.run.v2.Revision"),
                ))
            }
            "run.projects.locations.operations.get" | "run.projects.locations.operations.wait" => {
                let name = format!("{location}/operations/{}", p("operationsId"));
                let op = self
                    .operations
                    .get_mut(&name)
                    .ok_or_else(|| not_found(&name))?;
                if op.polls_left > 0 && method.ends_with(".get") {
                    op.polls_left -= 1;
                }
                if op.polls_left == 0 || method.ends_with(".wait") {
                    op.resource["done"] = json!(true);
                }
                let mut view = op.resource.clone();
                if view["done"] != true
                    && let Some(o) = view.as_object_mut()
                {
                    o.remove("response");
                    o.remove("error");
                }
                Ok(view)
            }
            "run.projects.locations.operations.delete" => {
                let name = format!("{location}/operations/{}", p("operationsId"));
                self.operations
                    .remove(&name)
                    .ok_or_else(|| not_found(&name))?;
                Ok(json!({}))
            }
            "run.projects.locations.services.getIamPolicy" => self
                .services
                .get(&service_name)
                .map(|s| s.policy.clone())
                .ok_or_else(|| not_found(&service_name)),
            "run.projects.locations.services.setIamPolicy" => {
                let counter = self.next();
                let svc = self
                    .services
                    .get_mut(&service_name)
                    .ok_or_else(|| not_found(&service_name))?;
                let mut policy = input["policy"].clone();
                if let Some(etag) = policy["etag"].as_str()
                    && svc.policy["etag"].as_str() != Some(etag)
                {
                    return Err(ApiError::new(
                        409,
                        "ABORTED",
                        "There were concurrent policy changes. Please retry the whole read-modify-write with exponential backoff.",
                    ));
                }
                use base64::Engine;
                policy["etag"] = json!(
                    base64::engine::general_purpose::STANDARD.encode(format!("etag-{counter}"))
                );
                policy["version"] = json!(1);
                svc.policy = policy.clone();
                Ok(policy)
            }
            other => Err(invalid(format!("{other} is not modelled by the fake"))),
        }
    }

    /// Dispatches one method of the v1 API: the two (Knative) reads gcloud makes.
    pub fn call_v1(
        &mut self,
        method: &str,
        params: &BTreeMap<String, String>,
        region: Option<&str>,
    ) -> Result<Value, ApiError> {
        let p = |k: &str| params.get(k).cloned().unwrap_or_default();
        match method {
            "run.namespaces.services.get" => {
                let region = region.ok_or_else(|| invalid("v1 reads need a regional endpoint"))?;
                let name = format!(
                    "projects/{}/locations/{region}/services/{}",
                    p("namespacesId"),
                    p("servicesId")
                );
                self.services
                    .get(&name)
                    .map(|s| knative(&s.resource))
                    .ok_or_else(|| not_found(&name))
            }
            "run.projects.locations.services.list" => {
                let location = p("locationsId");
                let prefix = format!("projects/{}/", p("projectsId"));
                let items: Vec<Value> = self
                    .services
                    .iter()
                    .filter(|(n, _)| {
                        n.starts_with(&prefix)
                            && (location == "-" || n.contains(&format!("/locations/{location}/")))
                    })
                    .map(|(_, s)| knative(&s.resource))
                    .collect();
                Ok(
                    json!({ "apiVersion": "serving.knative.dev/v1", "kind": "ServiceList", "items": items, "metadata": {}, "unreachable": [] }),
                )
            }
            other => Err(invalid(format!("v1 {other} is not modelled by the fake"))),
        }
    }

    /// A long-running operation for `resource`, done after `operation_polls` polls.
    fn operation(&mut self, location: &str, resource: Value, kind: Option<&str>) -> Value {
        let id = self.next();
        let name = format!("{location}/operations/op-{id:06}");
        let mut response = resource.clone();
        response["@type"] = json!(kind.unwrap_or(RUN_TYPE));
        let mut metadata = resource;
        metadata["@type"] = json!(kind.unwrap_or(RUN_TYPE));
        let op = json!({ "name": name, "metadata": metadata, "done": false, "response": response });
        self.operations.insert(
            name,
            Operation {
                resource: op.clone(),
                polls_left: self.operation_polls,
            },
        );
        let mut first = op;
        if let Some(o) = first.as_object_mut() {
            o.remove("response");
        }
        first
    }

    /// A failed long-running operation.
    fn failed_operation(
        &mut self,
        location: &str,
        resource: Value,
        code: i32,
        message: String,
    ) -> Value {
        let op = self.operation(location, resource, None);
        let name = op["name"].as_str().unwrap_or_default().to_string();
        if let Some(stored) = self.operations.get_mut(&name) {
            let o = stored.resource.as_object_mut().expect("an object");
            o.remove("response");
            o.insert("error".into(), json!({ "code": code, "message": message }));
        }
        op
    }

    /// Creates or updates a service from a v2 `Service` body, returning the operation.
    fn apply(&mut self, name: &str, input: Value, validate_only: bool) -> Result<Value, ApiError> {
        let service_id = last_segment(name).to_string();
        let location = name
            .rsplit_once("/services/")
            .map(|(l, _)| l.to_string())
            .unwrap_or_default();
        let existing = self.services.get(name).cloned();
        let template = input["template"].clone();
        let generation = existing
            .as_ref()
            .and_then(|s| s.resource["generation"].as_str()?.parse::<u64>().ok())
            .unwrap_or(0)
            + 1;
        // A new revision when the template changed (or there is none yet).
        let mut revisions = existing
            .as_ref()
            .map(|s| s.revisions.clone())
            .unwrap_or_default();
        let previous_template = existing.as_ref().map(|s| s.resource["template"].clone());
        let changed = previous_template.as_ref() != Some(&template);
        let mut created: Option<String> = None;
        if changed {
            let revision_id = match template["revision"].as_str() {
                Some(r) => {
                    if !r.starts_with(&format!("{service_id}-")) {
                        return Err(invalid(format!(
                            "template.revision {r:?} must start with the service name and a hyphen ({service_id}-)"
                        )));
                    }
                    if revisions
                        .iter()
                        .any(|x| last_segment(x["name"].as_str().unwrap_or("")) == r)
                    {
                        return Err(ApiError::new(
                            409,
                            "ALREADY_EXISTS",
                            format!(
                                "Revision named '{r}' with different configuration already exists."
                            ),
                        ));
                    }
                    r.to_string()
                }
                None => format!("{service_id}-{generation:05}-{:03x}", self.next() % 4096),
            };
            created = Some(revision_id);
        }
        let failing = created.is_some()
            && template["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| {
                    c["image"]
                        .as_str()
                        .is_some_and(|i| i.contains("fail-to-start"))
                });

        // Which revisions exist once this applies, and which one is the latest ready.
        let mut known: Vec<String> = revisions
            .iter()
            .map(|r| last_segment(r["name"].as_str().unwrap_or("")).to_string())
            .collect();
        if let Some(c) = &created {
            known.push(c.clone());
        }
        let latest_ready = if failing {
            existing.as_ref().and_then(|s| {
                s.resource["latestReadyRevision"]
                    .as_str()
                    .map(|n| last_segment(n).to_string())
            })
        } else {
            created.clone().or_else(|| {
                existing.as_ref().and_then(|s| {
                    s.resource["latestReadyRevision"]
                        .as_str()
                        .map(|n| last_segment(n).to_string())
                })
            })
        };

        let traffic = match input["traffic"].as_array() {
            Some(t) if !t.is_empty() => t.clone(),
            _ => vec![json!({ "type": "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST", "percent": 100 })],
        };
        let mut total = 0;
        let mut tags = Vec::new();
        let mut statuses = Vec::new();
        for t in &traffic {
            let percent = t["percent"].as_i64().unwrap_or(0);
            total += percent;
            let revision = match t["type"].as_str() {
                Some("TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST") => latest_ready.clone(),
                _ => t["revision"].as_str().map(String::from),
            };
            let Some(revision) = revision else {
                return Err(invalid("a traffic target names no revision"));
            };
            if !known.contains(&revision) {
                return Err(invalid(format!(
                    "Revision '{revision}' referenced in traffic not found."
                )));
            }
            let mut status = json!({ "type": t["type"].as_str().unwrap_or("TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION"), "revision": revision, "percent": percent });
            if let Some(tag) = t["tag"].as_str() {
                if tags.contains(&tag.to_string()) {
                    return Err(invalid(format!("Tag '{tag}' is used more than once.")));
                }
                tags.push(tag.to_string());
                status["tag"] = json!(tag);
                status["uri"] = json!(self.uri(name, Some(tag)));
            }
            statuses.push(status);
        }
        if total != 100 {
            return Err(invalid(format!(
                "Traffic percentages must add up to 100, got {total}."
            )));
        }
        if validate_only {
            return Ok(self.operation(&location, input, None));
        }

        let stamp = now();
        let uid = existing
            .as_ref()
            .and_then(|s| s.resource["uid"].as_str().map(String::from))
            .unwrap_or_else(|| format!("uid-{:08}", self.next()));
        let create_time = existing
            .as_ref()
            .and_then(|s| s.resource["createTime"].as_str().map(String::from))
            .unwrap_or_else(|| stamp.clone());
        if let Some(revision_id) = &created {
            let mut revision = json!({
                "name": format!("{name}/revisions/{revision_id}"),
                "uid": format!("uid-{:08}", self.next()),
                "generation": "1",
                "createTime": stamp,
                "updateTime": stamp,
                "service": name,
                "observedGeneration": "1",
                "conditions": [{
                    "type": "Ready",
                    "state": if failing { "CONDITION_FAILED" } else { "CONDITION_SUCCEEDED" },
                    "lastTransitionTime": stamp,
                }],
            });
            for key in [
                "labels",
                "annotations",
                "scaling",
                "vpcAccess",
                "serviceAccount",
                "containers",
                "volumes",
                "executionEnvironment",
                "encryptionKey",
                "timeout",
                "maxInstanceRequestConcurrency",
                "sessionAffinity",
            ] {
                if let Some(v) = template.get(key) {
                    revision[key] = v.clone();
                }
            }
            revisions.push(revision);
        }

        let mut resource = input.clone();
        let o = resource
            .as_object_mut()
            .expect("checked to be a Service object");
        o.insert("name".into(), json!(name));
        o.insert("uid".into(), json!(uid));
        o.insert("generation".into(), json!(generation.to_string()));
        o.insert("observedGeneration".into(), json!(generation.to_string()));
        o.insert("createTime".into(), json!(create_time));
        o.insert("updateTime".into(), json!(stamp));
        o.insert("traffic".into(), json!(traffic));
        o.insert("etag".into(), json!(format!("\"{generation}-{uid}\"")));
        o.insert("uri".into(), json!(self.uri(name, None)));
        o.insert("urls".into(), json!([self.uri(name, None)]));
        o.insert("reconciling".into(), json!(false));
        if let Some(c) = created.clone().or_else(|| {
            existing.as_ref().and_then(|s| {
                s.resource["latestCreatedRevision"]
                    .as_str()
                    .map(|n| last_segment(n).to_string())
            })
        }) {
            o.insert(
                "latestCreatedRevision".into(),
                json!(format!("{name}/revisions/{c}")),
            );
        }
        if let Some(r) = &latest_ready {
            o.insert(
                "latestReadyRevision".into(),
                json!(format!("{name}/revisions/{r}")),
            );
        }
        let failure = failing.then(|| {
            format!(
                "Revision '{}' is not ready and cannot serve traffic. The user-provided container failed to start and listen on the port defined provided by the PORT=8080 environment variable.",
                created.as_deref().unwrap_or("?")
            )
        });
        let condition = match &failure {
            Some(message) => {
                json!({ "type": "Ready", "state": "CONDITION_FAILED", "message": message, "lastTransitionTime": stamp })
            }
            None => {
                json!({ "type": "Ready", "state": "CONDITION_SUCCEEDED", "lastTransitionTime": stamp })
            }
        };
        o.insert("terminalCondition".into(), condition);
        // A failed revision takes no traffic: the service keeps the split it had.
        let statuses = match (&failure, &existing) {
            (Some(_), Some(e)) => e.resource["trafficStatuses"].clone(),
            _ => json!(statuses),
        };
        o.insert("trafficStatuses".into(), statuses);
        if failure.is_some()
            && let Some(e) = &existing
        {
            o.insert("traffic".into(), e.resource["traffic"].clone());
        }

        let policy = existing
            .as_ref()
            .map(|s| s.policy.clone())
            .unwrap_or_else(|| json!({ "version": 1, "etag": "BwYAAAAAAAA=" }));
        let (served, calls, answers) = existing
            .map(|s| (s.served, s.calls, s.answers))
            .unwrap_or_default();
        self.services.insert(
            name.to_string(),
            StoredService {
                resource: resource.clone(),
                revisions,
                policy,
                served,
                calls,
                answers,
            },
        );
        Ok(match failure {
            Some(message) => self.failed_operation(&location, resource, 9, message),
            None => self.operation(&location, resource, None),
        })
    }

    /// The data plane: `/_run/PROJECT/LOCATION/SERVICE[/_tag/TAG][/path]`. The revision
    /// chosen by weight (or by tag) answers like a typical service's health endpoint:
    /// `{"status": "healthy", "service", "revision", "version", "environment"}`, the last two
    /// from its container's `VERSION` and `ENVIRONMENT` variables. A container variable
    /// `FAKE_ERROR_RATE` (0 to 1) makes that share of its answers 500s, spread evenly.
    pub fn serve(&mut self, method: &str, rest: &str, caller: Caller<'_>) -> Response {
        use axum::http::StatusCode;
        let parts: Vec<&str> = rest.splitn(4, '/').collect();
        if parts.len() < 3 {
            return (StatusCode::NOT_FOUND, "no such service").into_response();
        }
        let name = format!(
            "projects/{}/locations/{}/services/{}",
            parts[0], parts[1], parts[2]
        );
        let path = parts.get(3).copied().unwrap_or("");
        let counter = self.next();
        let inside = self.vpc_sources.contains(&caller.source);
        let Some(svc) = self.services.get_mut(&name) else {
            return (StatusCode::NOT_FOUND, "no such service").into_response();
        };
        // Ingress is checked before IAM: from outside the VPC an internal service does not
        // exist (Cloud Run answers 404 with its "Page not found" page).
        let ingress = svc.resource["ingress"]
            .as_str()
            .unwrap_or("INGRESS_TRAFFIC_ALL");
        if ingress != "INGRESS_TRAFFIC_ALL" && !inside {
            return (
                StatusCode::NOT_FOUND,
                "Error: Page not found. The requested URL was not found on this server.",
            )
                .into_response();
        }
        let bearer = caller.bearer;
        let public = svc.policy["bindings"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|b| {
                b["role"] == "roles/run.invoker"
                    && b["members"]
                        .as_array()
                        .is_some_and(|m| m.iter().any(|x| x == "allUsers"))
            });
        if !public && bearer.is_none() {
            return (
                StatusCode::FORBIDDEN,
                "Your client does not have permission to get URL from this server.",
            )
                .into_response();
        }
        let statuses: Vec<Value> = svc.resource["trafficStatuses"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let (revision, path) = if let Some(tag_rest) = path.strip_prefix("_tag/") {
            let (tag, path) = tag_rest.split_once('/').unwrap_or((tag_rest, ""));
            let revision = statuses
                .iter()
                .find(|t| t["tag"] == tag)
                .and_then(|t| t["revision"].as_str().map(String::from));
            (revision, path)
        } else {
            // Spread requests by weight, deterministically: request n goes to the target whose
            // cumulative percent covers n mod 100.
            let slot = (counter % 100) as i64;
            let mut acc = 0;
            let revision = statuses.iter().find_map(|t| {
                acc += t["percent"].as_i64().unwrap_or(0);
                (slot < acc)
                    .then(|| t["revision"].as_str().map(String::from))
                    .flatten()
            });
            (revision, path)
        };
        let Some(revision) = revision else {
            return (StatusCode::NOT_FOUND, "no revision serves this URL").into_response();
        };
        let served = {
            let n = svc.served.entry(revision.clone()).or_default();
            *n += 1;
            *n
        };
        svc.calls
            .push((revision.clone(), format!("{method} /{path}")));
        let template = svc
            .revisions
            .iter()
            .find(|r| last_segment(r["name"].as_str().unwrap_or("")) == revision)
            .cloned()
            .unwrap_or_default();
        let env = |key: &str| {
            template["containers"][0]["env"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|e| e["name"] == key)
                .and_then(|e| e["value"].as_str().map(String::from))
        };
        let error_rate: f64 = env("FAKE_ERROR_RATE")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        // Request n fails when floor(n·rate) moves past floor((n−1)·rate).
        let fails = self.broken.contains(&(name.clone(), revision.clone()))
            || (served as f64 * error_rate).floor() > ((served - 1) as f64 * error_rate).floor();
        let class = if fails { "5xx" } else { "2xx" };
        *svc.answers
            .entry((revision.clone(), class.to_string()))
            .or_default() += 1;
        if fails {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                "injected failure (FAKE_ERROR_RATE or a broken revision)",
            )
                .into_response();
        }
        axum::Json(json!({
            "status": "healthy",
            "service": parts[2],
            "revision": revision,
            "version": env("VERSION"),
            "environment": env("ENVIRONMENT"),
        }))
        .into_response()
    }

    /// The data plane's answers in the Prometheus text format, under the names Google Cloud
    /// Managed Service for Prometheus gives Cloud Run's metrics
    /// (`run_googleapis_com:request_count`, `run_googleapis_com:request_latencies`), so the
    /// same PromQL works against a Prometheus scraping this and against Google's. Written out
    /// here because the OpenMetrics encoder of the client library would add a `_total` suffix
    /// those names do not have. Every answer counts as taking 1 ms.
    pub fn metrics(&self) -> String {
        let mut out = String::from("# TYPE run_googleapis_com:request_count counter\n");
        let mut latencies = String::from("# TYPE run_googleapis_com:request_latencies histogram\n");
        for (name, svc) in &self.services {
            let service = last_segment(name);
            let mut per_revision: BTreeMap<&str, u64> = BTreeMap::new();
            for ((revision, class), n) in &svc.answers {
                let labels = format!(
                    "monitored_resource=\"cloud_run_revision\",service_name=\"{service}\",revision_name=\"{revision}\""
                );
                out.push_str(&format!(
                    "run_googleapis_com:request_count{{{labels},response_code_class=\"{class}\"}} {n}\n"
                ));
                *per_revision.entry(revision.as_str()).or_default() += n;
            }
            for (revision, n) in per_revision {
                let labels = format!(
                    "monitored_resource=\"cloud_run_revision\",service_name=\"{service}\",revision_name=\"{revision}\""
                );
                for le in ["1", "5", "10", "50", "100", "250", "500", "1000", "+Inf"] {
                    latencies.push_str(&format!(
                        "run_googleapis_com:request_latencies_bucket{{{labels},le=\"{le}\"}} {n}\n"
                    ));
                }
                latencies.push_str(&format!(
                    "run_googleapis_com:request_latencies_sum{{{labels}}} {n}\n"
                ));
                latencies.push_str(&format!(
                    "run_googleapis_com:request_latencies_count{{{labels}}} {n}\n"
                ));
            }
        }
        out + &latencies
    }
}

/// The v1 (Knative serving) form of a v2 service, as gcloud reads it.
fn knative(service: &Value) -> Value {
    let name = service["name"].as_str().unwrap_or_default();
    let parts: Vec<&str> = name.split('/').collect();
    let (project, region, id) = (parts[1], parts[3], parts[5]);
    let template = &service["template"];
    let containers: Vec<Value> = template["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let env: Vec<Value> = c["env"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| match e.get("valueSource") {
                    Some(source) => json!({ "name": e["name"], "valueFrom": { "secretKeyRef": {
                        "name": last_segment(source["secretKeyRef"]["secret"].as_str().unwrap_or("")),
                        "key": source["secretKeyRef"]["version"].as_str().unwrap_or("latest"),
                    } } }),
                    None => json!({ "name": e["name"], "value": e["value"].as_str().unwrap_or("") }),
                })
                .collect();
            let mut out = json!({ "image": c["image"], "env": env });
            if let Some(port) = c["ports"][0]["containerPort"].as_i64() {
                out["ports"] = json!([{ "name": "http1", "containerPort": port }]);
            }
            if let Some(limits) = c["resources"]["limits"].as_object() {
                out["resources"] = json!({ "limits": limits });
            }
            out
        })
        .collect();
    let generation = service["generation"]
        .as_str()
        .and_then(|g| g.parse::<i64>().ok())
        .unwrap_or(1);
    let ingress = match service["ingress"].as_str() {
        Some("INGRESS_TRAFFIC_INTERNAL_ONLY") => "internal",
        Some("INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER") => "internal-and-cloud-load-balancing",
        _ => "all",
    };
    let mut template_annotations = serde_json::Map::new();
    if let Some(n) = template["scaling"]["maxInstanceCount"].as_i64() {
        template_annotations.insert(
            "autoscaling.knative.dev/maxScale".into(),
            json!(n.to_string()),
        );
    }
    if let Some(n) = template["scaling"]["minInstanceCount"].as_i64() {
        template_annotations.insert(
            "autoscaling.knative.dev/minScale".into(),
            json!(n.to_string()),
        );
    }
    let mut spec = json!({ "containers": containers });
    if let Some(n) = template["maxInstanceRequestConcurrency"].as_i64() {
        spec["containerConcurrency"] = json!(n);
    }
    if let Some(t) = template["timeout"]
        .as_str()
        .and_then(|t| t.trim_end_matches('s').parse::<f64>().ok())
    {
        spec["timeoutSeconds"] = json!(t as i64);
    }
    if let Some(sa) = template["serviceAccount"].as_str() {
        spec["serviceAccountName"] = json!(sa);
    }
    let traffic = |source: &Value, with_url: bool| -> Vec<Value> {
        source
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                let mut out = json!({ "percent": t["percent"].as_i64().unwrap_or(0) });
                if t["type"] == "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST" {
                    out["latestRevision"] = json!(true);
                }
                if let Some(r) = t["revision"].as_str() {
                    out["revisionName"] = json!(r);
                }
                if let Some(tag) = t["tag"].as_str() {
                    out["tag"] = json!(tag);
                }
                if with_url && let Some(u) = t["uri"].as_str() {
                    out["url"] = json!(u);
                }
                out
            })
            .collect()
    };
    let ready = service["terminalCondition"]["state"] == "CONDITION_SUCCEEDED";
    let mut labels = service["labels"].as_object().cloned().unwrap_or_default();
    labels.insert("cloud.googleapis.com/location".into(), json!(region));
    let mut template_metadata =
        json!({ "namespace": project, "annotations": template_annotations });
    if let Some(r) = template["revision"].as_str() {
        template_metadata["name"] = json!(r);
    }
    json!({
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {
            "name": id,
            "namespace": project,
            "selfLink": format!("/apis/serving.knative.dev/v1/namespaces/{project}/services/{id}"),
            "uid": service["uid"],
            "resourceVersion": service["etag"].as_str().unwrap_or("").trim_matches('"'),
            "generation": generation,
            "creationTimestamp": service["createTime"],
            "labels": labels,
            "annotations": { "run.googleapis.com/ingress": ingress },
        },
        "spec": {
            "template": { "metadata": template_metadata, "spec": spec },
            "traffic": traffic(&service["traffic"], false),
        },
        "status": {
            "observedGeneration": generation,
            "conditions": [{
                "type": "Ready",
                "status": if ready { "True" } else { "False" },
                "message": service["terminalCondition"]["message"].as_str().unwrap_or(""),
                "lastTransitionTime": service["terminalCondition"]["lastTransitionTime"],
            }],
            "latestReadyRevisionName": last_segment(service["latestReadyRevision"].as_str().unwrap_or("")),
            "latestCreatedRevisionName": last_segment(service["latestCreatedRevision"].as_str().unwrap_or("")),
            "url": service["uri"],
            "address": { "url": service["uri"] },
            "traffic": traffic(&service["trafficStatuses"], true),
        },
    })
}
