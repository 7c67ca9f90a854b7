//! The `cloudrun` provider: deploys services to Google Cloud Run through the Cloud Run Admin
//! API v2 (`run.googleapis.com/v2`).
//!
//! Each deployment creates a revision named `SERVICE-DEPLOYMENT` (so a repeated `deploy` after a
//! crash finds it instead of making another) with no traffic and a tag of its own, so health
//! checks reach it at its tag URL before it takes traffic; `set-traffic` then moves percentages
//! between revisions, keeping the tags. Every change is a long-running operation, polled until
//! done, with Cloud Run's error (a container that fails to start, a quota) surfaced as is.
//! `invokers` keeps `roles/run.invoker` to exactly the listed members, so an internal service
//! can only be called by the services that need it. With `regions = [...]` the service is
//! deployed to each region in lockstep.
//!
//! The plugin never holds a credential: it sends the placeholder of the granted secret
//! `google`, and the host puts the access token in as the request leaves, for the granted
//! Google hosts only.

mod api;
mod config;
mod form;
mod iam;
mod lookups;
mod policy;
mod scheduler;

use api::Api;
use config::{CONFIG_SCHEMA, Config};
use engine_sdk::{
    Artifact, Capabilities, DeploymentPlan, Diagnostic, Endpoint, EndpointKind, Error, ErrorExt,
    Feature, PlanAction, PluginInfo, Provider, Revision, ServiceRef, ServiceSpec, ServiceStatus,
    TrafficTarget,
};
use serde_json::{Value, json};

fn location(config: &Config, region: &str) -> String {
    format!("projects/{}/locations/{region}", config.project)
}

/// The Cloud Run service's full name; its id is `service_id` when set, else the pipeline's name.
fn service_name(config: &Config, region: &str, service: &str) -> String {
    format!(
        "{}/services/{}",
        location(config, region),
        config.id(service)
    )
}

/// The revision a deployment creates: `SERVICE-DEPLOYMENT`, lower case.
fn revision_id(service: &str, deployment_id: &str) -> String {
    format!("{service}-{deployment_id}").to_ascii_lowercase()
}

/// The tag that gives a revision its own URL: `DEPLOYMENT` (a letter first, as tags need).
fn tag_for(revision: &str, service: &str) -> String {
    let id = revision
        .strip_prefix(&format!("{service}-"))
        .unwrap_or(revision);
    let clean: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    if clean.starts_with(|c: char| c.is_ascii_alphabetic()) {
        clean
    } else {
        format!("r{clean}")
    }
}

fn last(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

fn millis(timestamp: &Value) -> Option<u64> {
    let text = timestamp.as_str()?;
    let time = humantime::parse_rfc3339_weak(text.trim_end_matches('Z')).ok()?;
    time.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis() as u64)
}

/// The Ready condition of a revision: (ready, message).
fn readiness(revision: &Value) -> (bool, Option<String>) {
    let ready = revision["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready");
    match ready {
        Some(c) => (
            c["state"] == "CONDITION_SUCCEEDED",
            c["message"].as_str().map(String::from),
        ),
        None => (false, Some("no Ready condition yet".into())),
    }
}

/// The split a service serves, as the engine writes it (revisions with a share).
fn split(service: &Value) -> Vec<TrafficTarget> {
    service["trafficStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["percent"].as_u64().unwrap_or(0) > 0)
        .map(|t| TrafficTarget {
            revision: t["revision"].as_str().unwrap_or_default().to_string(),
            percent: t["percent"].as_u64().unwrap_or(0) as u8,
        })
        .collect()
}

/// The service as its serving revision (the one with the largest share) runs it: the
/// service's own fields with that revision's template. Cloud Run keeps a rejected release as
/// the service's template, so comparing with the template would take a rerun of it for "no
/// change" while the old revision serves.
fn serving_form(service: &Value, revisions: &[Value]) -> Value {
    let serving = split(service)
        .into_iter()
        .max_by_key(|t| t.percent)
        .and_then(|t| {
            revisions
                .iter()
                .find(|r| last(r["name"].as_str().unwrap_or_default()) == t.revision)
        });
    let mut body = service.clone();
    if let Some(revision) = serving {
        body["template"] = form::template_of(revision);
    }
    body
}

/// A traffic list for the API: `split` by revision, and every tag the service has kept on its
/// revision (with 0 % where the split leaves that revision out), plus `extra_tags`
/// (revision, tag); a tag among them is moved from the revision that had it.
fn traffic(service: Option<&Value>, split: &[(String, u8)], extra_tags: &[(&str, &str)]) -> Value {
    let mut entries: Vec<Value> = split
        .iter()
        .map(|(r, p)| json!({ "type": "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION", "revision": r, "percent": p }))
        .collect();
    let mut tags: Vec<(String, String)> = service
        .and_then(|s| s["trafficStatuses"].as_array())
        .into_iter()
        .flatten()
        .filter_map(|t| {
            Some((
                t["revision"].as_str()?.to_string(),
                t["tag"].as_str()?.to_string(),
            ))
        })
        .filter(|(_, tag)| !extra_tags.iter().any(|(_, moved)| moved == tag))
        .collect();
    for (revision, tag) in extra_tags {
        tags.push((revision.to_string(), tag.to_string()));
    }
    for (revision, tag) in tags {
        match entries
            .iter_mut()
            .find(|e| e["revision"] == revision.as_str() && e.get("tag").is_none())
        {
            Some(e) => e["tag"] = json!(tag),
            None => entries.push(json!({ "type": "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION", "revision": revision, "percent": 0, "tag": tag })),
        }
    }
    json!(entries)
}

/// Keeps `roles/run.invoker` to exactly the configured members, when they are configured.
fn ensure_invokers(api: &Api, config: &Config, name: &str) -> Result<(), Error> {
    match &config.invokers {
        Some(wanted) => policy::update(api.google(), name, policy::INVOKER, |_| wanted.clone()),
        None => Ok(()),
    }
}

pub struct CloudRun;

impl Provider for CloudRun {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "cloudrun".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Deploys container images to Google Cloud Run (Admin API v2)".into(),
            config_schema: CONFIG_SCHEMA.into(),
            features: vec![
                Feature::TrafficSplit,
                Feature::RevisionUrls,
                Feature::RetireRevisions,
            ],
            capabilities: Capabilities {
                // Loopback only for a test server (`endpoint`); the pipeline grants which.
                http: vec![
                    "https://run.googleapis.com".into(),
                    "https://cloudscheduler.googleapis.com".into(),
                    "https://iam.googleapis.com".into(),
                    "https://vpcaccess.googleapis.com".into(),
                    "https://secretmanager.googleapis.com".into(),
                    "http://127.0.0.1:*".into(),
                    "http://localhost:*".into(),
                ],
                env: Vec::new(),
                dirs: Vec::new(),
                // `*`: the secrets scheduler jobs name in `secret_headers`.
                secrets: vec![api::TOKEN_SECRET.into(), "*".into()],
            },
        }
    }

    fn validate(spec: ServiceSpec) -> Vec<Diagnostic> {
        let checked = Config::parse(&spec.config).and_then(|config| {
            let region = config.regions().first().cloned().unwrap_or_default();
            form::template(&config, &spec, &region, "planned")
        });
        engine_sdk::config_diagnostics(checked, None)
    }

    fn read(service: ServiceRef) -> Result<Option<ServiceStatus>, Error> {
        let config = Config::parse(&service.config)?;
        let api = Api::new(&config)?;
        for region in config.regions() {
            let name = service_name(&config, &region, &service.name);
            let Some(svc) = api.service(&name)? else {
                continue;
            };
            let revisions = api.revisions(&name)?;
            let invokers = match &config.invokers {
                Some(_) => Some(policy::members(
                    &policy::read(api.google(), &name)?,
                    policy::INVOKER,
                )),
                None => None,
            };
            return Ok(Some(ServiceStatus {
                revisions: revisions
                    .iter()
                    .map(|r| {
                        let (ready, message) = readiness(r);
                        Revision {
                            id: last(r["name"].as_str().unwrap_or_default()).to_string(),
                            artifact: r["containers"][0]["image"].as_str().map(String::from),
                            created_at_ms: millis(&r["createTime"]),
                            ready,
                            message,
                        }
                    })
                    .collect(),
                traffic: split(&svc),
                url: svc["uri"].as_str().map(String::from),
                deployed: form::form(&serving_form(&svc, &revisions), invokers.as_deref())
                    .to_string(),
            }));
        }
        Ok(None)
    }

    fn plan(desired: ServiceSpec, current: Option<ServiceStatus>) -> Result<DeploymentPlan, Error> {
        let config = Config::parse(&desired.config)?;
        lookups::check(&config, &desired)?;
        let first = config.regions().first().cloned().unwrap_or_default();
        let body = form::service(&config, &desired, &first, "planned", json!([]))?;
        let after = form::form(&body, config.invokers.as_deref());
        let regions = config.regions().join(", ");
        let Some(current) = current else {
            let summary = format!("create {} in {regions}", config.id(&desired.name));
            return Ok(engine_sdk::create_plan(&after, form::FORM_FIELDS, summary));
        };
        let deployed = form::without_platform_defaults(&current.deployed, &after);
        let mut plan = engine_sdk::update_plan(&deployed, &after, form::FORM_FIELDS);
        if plan.action == PlanAction::Update {
            plan.summary = format!("{} in {regions}", plan.summary);
        }
        Ok(plan)
    }

    fn deploy(spec: ServiceSpec, deployment_id: String) -> Result<Revision, Error> {
        let config = Config::parse(&spec.config)?;
        let api = Api::new(&config)?;
        let id = config.id(&spec.name).to_string();
        let revision = revision_id(&id, &deployment_id);
        let tag = tag_for(&revision, &id);
        let mut tags = vec![(revision.as_str(), tag.as_str())];
        if let Some(named) = &config.candidate_tag {
            tags.push((revision.as_str(), named.as_str()));
        }
        let mut created_at_ms = None;
        for region in config.regions() {
            let name = service_name(&config, &region, &spec.name);
            let revision_name = format!("{name}/revisions/{revision}");
            match api.service(&name)? {
                None => {
                    // A new service: its first revision takes all traffic (there is nothing
                    // to split with) and gets its tag too.
                    let traffic = traffic(None, &[(revision.clone(), 100)], &tags);
                    let body = form::service(&config, &spec, &region, &revision, traffic)?;
                    api.create(&location(&config, &region), &id, &body)?;
                }
                // Deployed before (a resumed run): nothing to create.
                Some(_) if api.revision(&revision_name)?.is_some() => {}
                Some(current) => {
                    let pinned: Vec<(String, u8)> = split(&current)
                        .into_iter()
                        .map(|t| (t.revision, t.percent))
                        .collect();
                    let traffic = traffic(Some(&current), &pinned, &tags);
                    let mut body = form::service(&config, &spec, &region, &revision, traffic)?;
                    if let Some(etag) = current.get("etag") {
                        body["etag"] = etag.clone();
                    }
                    api.update(&name, &body)?;
                }
            }
            ensure_invokers(&api, &config, &name)?;
            let created = api.settled_revision(&revision_name)?.ok_or_else(|| {
                Error::fatal(format!(
                    "Cloud Run reported success but has no revision {revision_name}"
                ))
            })?;
            let (ready, message) = readiness(&created);
            if !ready {
                return Err(Error::fatal(format!(
                    "revision {revision} in {region} is not ready: {}",
                    message.unwrap_or_default()
                )));
            }
            created_at_ms = created_at_ms.or(millis(&created["createTime"]));
        }
        Ok(Revision {
            id: revision,
            artifact: match &spec.artifact {
                Artifact::Image(i) => Some(i.clone()),
                Artifact::Path(p) => Some(p.clone()),
            },
            created_at_ms,
            ready: true,
            message: None,
        })
    }

    fn set_traffic(service: ServiceRef, split: Vec<TrafficTarget>) -> Result<(), Error> {
        let config = Config::parse(&service.config)?;
        let api = Api::new(&config)?;
        let pairs: Vec<(String, u8)> = split
            .iter()
            .map(|t| (t.revision.clone(), t.percent))
            .collect();
        for region in config.regions() {
            let name = service_name(&config, &region, &service.name);
            let current = api
                .service(&name)?
                .ok_or_else(|| Error::not_found(format!("{name} does not exist")))?;
            let mut body = form::writable(&current);
            body["traffic"] = traffic(Some(&current), &pairs, &[]);
            api.update(&name, &body)?;
        }
        Ok(())
    }

    fn get_traffic(service: ServiceRef) -> Result<Vec<TrafficTarget>, Error> {
        let config = Config::parse(&service.config)?;
        let api = Api::new(&config)?;
        let mut first: Option<(String, Vec<TrafficTarget>)> = None;
        for region in config.regions() {
            let name = service_name(&config, &region, &service.name);
            let current = api
                .service(&name)?
                .ok_or_else(|| Error::not_found(format!("{name} does not exist")))?;
            let here = split(&current);
            match &first {
                None => first = Some((region, here)),
                Some((r, s)) if *s != here => {
                    return Err(Error::conflict(format!(
                        "the regions disagree: {r} serves {s:?}, {region} serves {here:?}"
                    )));
                }
                Some(_) => {}
            }
        }
        Ok(first.map(|(_, s)| s).unwrap_or_default())
    }

    fn endpoints(service: ServiceRef, revision: Option<String>) -> Result<Vec<Endpoint>, Error> {
        let config = Config::parse(&service.config)?;
        let api = Api::new(&config)?;
        let mut out = Vec::new();
        for region in config.regions() {
            let name = service_name(&config, &region, &service.name);
            let Some(current) = api.service(&name)? else {
                continue;
            };
            if let Some(uri) = current["uri"].as_str() {
                out.push(Endpoint {
                    url: uri.to_string(),
                    kind: EndpointKind::Service,
                    revision: None,
                });
            }
            let Some(revision) = &revision else {
                continue;
            };
            // The revision's own tag, once: a `candidate_tag` reaches the same revision.
            let named = config.candidate_tag.as_deref();
            for t in current["trafficStatuses"].as_array().into_iter().flatten() {
                if t["revision"] == revision.as_str()
                    && (named.is_none() || t["tag"].as_str() != named)
                    && let Some(uri) = t["uri"].as_str()
                {
                    out.push(Endpoint {
                        url: uri.to_string(),
                        kind: EndpointKind::Revision,
                        revision: Some(revision.clone()),
                    });
                }
            }
        }
        Ok(out)
    }

    fn retire(service: ServiceRef, revision: String) -> Result<(), Error> {
        let config = Config::parse(&service.config)?;
        let api = Api::new(&config)?;
        for region in config.regions() {
            let name = service_name(&config, &region, &service.name);
            let Some(current) = api.service(&name)? else {
                continue;
            };
            let entries = current["trafficStatuses"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if entries.iter().any(|t| {
                t["revision"] == revision.as_str() && t["percent"].as_u64().unwrap_or(0) > 0
            }) {
                return Err(Error::conflict(format!(
                    "{revision} still takes traffic in {region}; move its share first"
                )));
            }
            // Drop its tag first: Cloud Run keeps a tagged revision.
            if entries.iter().any(|t| t["revision"] == revision.as_str()) {
                let keep: Vec<(String, u8)> = split(&current)
                    .into_iter()
                    .map(|t| (t.revision, t.percent))
                    .collect();
                let mut without = current.clone();
                if let Some(list) = without["trafficStatuses"].as_array_mut() {
                    list.retain(|t| t["revision"] != revision.as_str());
                }
                let mut body = form::writable(&current);
                body["traffic"] = traffic(Some(&without), &keep, &[]);
                api.update(&name, &body)?;
            }
            api.delete(&format!("{name}/revisions/{revision}"))?;
        }
        Ok(())
    }

    fn destroy(service: ServiceRef) -> Result<(), Error> {
        let config = Config::parse(&service.config)?;
        let api = Api::new(&config)?;
        for region in config.regions() {
            api.delete(&service_name(&config, &region, &service.name))?;
        }
        Ok(())
    }
}

/// Resources beside the services: Cloud Scheduler jobs and IAM bindings.
impl engine_sdk::ResourceProvider for CloudRun {
    fn kinds() -> Vec<engine_sdk::resources::ResourceKind> {
        let mut kinds = vec![scheduler::kind()];
        kinds.extend(iam::kinds());
        kinds
    }

    fn read(
        target: engine_sdk::resources::ResourceSpec,
    ) -> Result<Option<engine_sdk::resources::ResourceStatus>, Error> {
        match kind_of(&target)? {
            Kind::SchedulerJob => scheduler::read(&target),
            Kind::Binding => iam::read(&target),
        }
    }

    fn plan(
        desired: engine_sdk::resources::ResourceSpec,
        current: Option<engine_sdk::resources::ResourceStatus>,
    ) -> Result<DeploymentPlan, Error> {
        match kind_of(&desired)? {
            Kind::SchedulerJob => scheduler::plan(&desired, current.as_ref()),
            Kind::Binding => iam::plan(&desired, current.as_ref()),
        }
    }

    fn apply(
        desired: engine_sdk::resources::ResourceSpec,
        current: Option<engine_sdk::resources::ResourceStatus>,
    ) -> Result<engine_sdk::resources::ResourceStatus, Error> {
        match kind_of(&desired)? {
            Kind::SchedulerJob => scheduler::apply(&desired, current.as_ref()),
            Kind::Binding => iam::apply(&desired),
        }
    }

    fn delete(target: engine_sdk::resources::ResourceSpec) -> Result<(), Error> {
        match kind_of(&target)? {
            Kind::SchedulerJob => scheduler::delete(&target),
            Kind::Binding => iam::delete(&target),
        }
    }

    fn service_urls(service: ServiceRef) -> Result<Vec<(String, String)>, Error> {
        let config = Config::parse(&service.config)?;
        let api = Api::new(&config)?;
        let mut urls = Vec::new();
        for region in config.regions() {
            let name = service_name(&config, &region, &service.name);
            let uri = api
                .service(&name)?
                .and_then(|s| s["uri"].as_str().map(String::from));
            if let Some(uri) = uri {
                urls.push((region.clone(), uri));
            }
        }
        Ok(urls)
    }
}

/// The modules that manage the provider's kinds.
enum Kind {
    SchedulerJob,
    Binding,
}

/// The host checks kinds before calling; a kind it let through that is not ours is a bug.
fn kind_of(target: &engine_sdk::resources::ResourceSpec) -> Result<Kind, Error> {
    match target.kind.as_str() {
        scheduler::KIND => Ok(Kind::SchedulerJob),
        iam::RUN_INVOKER | iam::SECRET_ACCESSOR => Ok(Kind::Binding),
        other => Err(Error::invalid_config(format!(
            "cloudrun manages no `{other}` resources"
        ))),
    }
}

engine_sdk::export_resource_provider!(CloudRun);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revisions_and_tags_are_named_after_the_deployment() {
        assert_eq!(revision_id("api", "r12"), "api-r12");
        assert_eq!(tag_for("api-r12", "api"), "r12");
        assert_eq!(tag_for("api-7", "api"), "r7");
    }

    #[test]
    fn traffic_keeps_tags_and_adds_the_new_one() {
        let current = json!({ "trafficStatuses": [
            { "type": "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION", "revision": "api-r1", "percent": 100, "tag": "r1" },
        ] });
        let t = traffic(
            Some(&current),
            &[("api-r1".into(), 100)],
            &[("api-r2", "r2")],
        );
        assert_eq!(
            t,
            json!([
                { "type": "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION", "revision": "api-r1", "percent": 100, "tag": "r1" },
                { "type": "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION", "revision": "api-r2", "percent": 0, "tag": "r2" },
            ])
        );
    }

    #[test]
    fn a_named_tag_moves_to_the_new_revision() {
        let current = json!({ "trafficStatuses": [
            { "revision": "api-r1", "percent": 100, "tag": "r1" },
            { "revision": "api-r1", "percent": 0, "tag": "blue" },
        ] });
        let t = traffic(
            Some(&current),
            &[("api-r1".into(), 100)],
            &[("api-r2", "r2"), ("api-r2", "blue")],
        );
        let tags: Vec<(&str, &str)> = t
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| Some((e["revision"].as_str()?, e["tag"].as_str()?)))
            .collect();
        assert_eq!(
            tags,
            [("api-r1", "r1"), ("api-r2", "r2"), ("api-r2", "blue")]
        );
    }

    #[test]
    fn the_deployed_form_is_the_serving_revisions_not_the_latest_template() {
        let service = json!({
            "ingress": "INGRESS_TRAFFIC_ALL",
            "template": { "containers": [{ "image": "api:2-rejected" }] },
            "trafficStatuses": [
                { "revision": "api-r1", "percent": 100 },
                { "revision": "api-r2", "percent": 0, "tag": "r2" },
            ],
        });
        let revisions = [
            json!({ "name": "projects/p/locations/l/services/api/revisions/api-r2", "containers": [{ "image": "api:2-rejected" }] }),
            json!({ "name": "projects/p/locations/l/services/api/revisions/api-r1", "containers": [{ "image": "api:1" }], "timeout": "30s", "createTime": "x" }),
        ];
        let deployed = form::form(&serving_form(&service, &revisions), None);
        assert_eq!(deployed["image"], "api:1");
        assert_eq!(deployed["timeout"], "30s");
        assert_eq!(deployed["ingress"], "INGRESS_TRAFFIC_ALL");
        // Nothing serves (every share 0): the template is all there is to compare.
        let idle =
            json!({ "template": { "containers": [{ "image": "api:3" }] }, "trafficStatuses": [] });
        assert_eq!(
            form::form(&serving_form(&idle, &revisions), None)["image"],
            "api:3"
        );
    }
}
