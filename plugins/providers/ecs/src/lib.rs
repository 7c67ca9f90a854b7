//! The `ecs` provider: deploys services to AWS ECS on Fargate, behind an Application Load
//! Balancer, with the engine's strategies moving the traffic.
//!
//! A revision is a task definition revision run by a task set of its own, registered in a
//! target group of its own. The service uses the `EXTERNAL` deployment controller, so ECS
//! never shifts traffic by itself: the split between revisions is the weighted forward action
//! of the service's rule on the listener, which `set-traffic` writes and reads back. A second
//! (test) listener can forward to the newest revision only, so checks reach it before it takes
//! traffic, as CodeDeploy's test listener does. The revision id `SERVICE-DEPLOYMENT` is the
//! task set's external id, so a repeated `deploy` after a crash finds what the first made.
//!
//! The plugin never holds a credential: it names the granted secret `aws` in each request and
//! the host signs it (Signature Version 4) as it leaves, for the granted AWS hosts only.

mod apis;
mod config;
mod listener;
mod scaling;
mod service;
mod task;

use config::{CONFIG_SCHEMA, Config};
use engine_sdk::aws::{JsonApi, QueryApi as Elb};
use engine_sdk::{
    Capabilities, DeploymentPlan, Diagnostic, Endpoint, EndpointKind, Error, ErrorExt, Feature,
    PluginInfo, Provider, Revision, ServiceRef, ServiceSpec, ServiceStatus, TrafficTarget,
};
use listener::Rule;
use serde_json::{Value, json};
use service::Service;

/// Tasks per revision: `desired_count`, else the service's `min_instances`, else one.
pub fn desired_count(config: &Config, spec: &ServiceSpec) -> u32 {
    config
        .desired_count
        .or(spec.scaling.min_instances)
        .unwrap_or(1)
}

/// The revision a deployment makes: `SERVICE-DEPLOYMENT`, lower case.
fn revision_id(service: &str, deployment_id: &str) -> String {
    format!("{service}-{deployment_id}").to_ascii_lowercase()
}

/// What names the service on rules and target groups it owns: `CLUSTER/SERVICE`.
fn owner(config: &Config, service: &str) -> String {
    let cluster = config.cluster.rsplit('/').next().unwrap_or(&config.cluster);
    format!("{cluster}/{service}")
}

/// Everything one call needs: the parsed configuration, both APIs and the service's name.
struct Deployment {
    config: Config,
    ecs: JsonApi,
    elb: Elb,
    name: String,
}

impl Deployment {
    fn new(pipeline_name: &str, config_text: &str) -> Result<Deployment, Error> {
        let config = Config::parse(config_text)?;
        Ok(Deployment {
            ecs: apis::ecs(&config)?,
            elb: apis::elb(&config)?,
            name: config.service(pipeline_name).to_string(),
            config,
        })
    }

    fn service(&self) -> Service<'_> {
        Service {
            ecs: &self.ecs,
            config: &self.config,
            name: &self.name,
        }
    }

    fn owner(&self) -> String {
        owner(&self.config, &self.name)
    }

    /// The service's rule on `listener`, if it exists; a rule at its priority that another
    /// service owns is a conflict, never taken over.
    fn own_rule(&self, listener: &str) -> Result<Option<Rule>, Error> {
        let Some(rule) = listener::find_rule(&self.elb, listener, self.config.rule.priority)?
        else {
            return Ok(None);
        };
        let found = listener::owner_of(&self.elb, &rule.arn)?;
        if found.as_deref() != Some(self.owner().as_str()) {
            return Err(Error::conflict(format!(
                "priority {} on the listener {listener} is taken by a rule the engine did not make for `{}` (owner: {}); give the service another `rule.priority`",
                self.config.rule.priority,
                self.owner(),
                found.unwrap_or_else(|| "none".into())
            )));
        }
        Ok(Some(rule))
    }

    /// Adds a revision's target group to the service's rule: with all the traffic when nothing
    /// else takes any (a new service), else with none.
    fn add_to_rule(&self, target_group: &str) -> Result<(), Error> {
        let listener = &self.config.listener_arn;
        let Some(rule) = self.own_rule(listener)? else {
            return listener::create_rule(
                &self.elb,
                &self.config,
                listener,
                &self.owner(),
                &[(target_group.to_string(), 100)],
            );
        };
        if rule.forwards.iter().any(|(arn, _)| arn == target_group) {
            return Ok(());
        }
        if rule.forwards.len() >= 5 {
            return Err(Error::conflict(format!(
                "the rule {} already forwards to 5 target groups, the most ALB allows; retire older revisions (`engine run` does once a rollout ends)",
                rule.arn
            )));
        }
        let weight = if rule.forwards.iter().all(|(_, w)| *w == 0) {
            100
        } else {
            0
        };
        let mut forwards = rule.forwards.clone();
        forwards.push((target_group.to_string(), weight));
        listener::set_forwards(
            &self.elb,
            listener,
            self.config.rule.priority,
            &rule,
            &forwards,
        )
    }

    /// Points the test listener's rule at the newest revision only.
    fn point_test_rule(&self, target_group: &str) -> Result<(), Error> {
        let Some(test) = &self.config.test_listener_arn else {
            return Ok(());
        };
        let only = [(target_group.to_string(), 1)];
        match self.own_rule(test)? {
            None => listener::create_rule(&self.elb, &self.config, test, &self.owner(), &only),
            Some(rule) if rule.forwards == only => Ok(()),
            Some(rule) => {
                listener::set_forwards(&self.elb, test, self.config.rule.priority, &rule, &only)
            }
        }
    }

    /// The revisions' target groups by revision id.
    fn target_groups(sets: &[Value]) -> Vec<(String, String)> {
        sets.iter()
            .filter_map(|s| {
                Some((
                    s["externalId"].as_str()?.to_string(),
                    service::target_group_of(s)?.to_string(),
                ))
            })
            .collect()
    }

    /// Autoscaling, applied when configured and removed when it no longer is. The service's
    /// `engine:autoscaling` tag records that the engine registered it, so a service that
    /// never used it makes no Application Auto Scaling call.
    fn apply_scaling(&self, current: &Value) -> Result<(), Error> {
        let tagged = task::tag(&current["tags"], scaling::TAG).is_some();
        let arn = current["serviceArn"].as_str().unwrap_or_default();
        match (&self.config.autoscaling, tagged) {
            (Some(_), _) => {
                scaling::apply(&self.config, &self.name)?;
                if !tagged {
                    self.ecs.call(
                        "TagResource",
                        json!({ "resourceArn": arn, "tags": [{ "key": scaling::TAG, "value": "true" }] }),
                    )?;
                }
                Ok(())
            }
            (None, true) => {
                scaling::remove(&self.config, &self.name)?;
                self.ecs
                    .call(
                        "UntagResource",
                        json!({ "resourceArn": arn, "tagKeys": [scaling::TAG] }),
                    )
                    .map(|_| ())
            }
            (None, false) => Ok(()),
        }
    }

    /// Removes one revision's task set, target group and task definition; what is already
    /// gone is skipped, so a retire cut off halfway finishes when repeated.
    fn remove_revision(&self, revision: &str, set: Option<&Value>) -> Result<(), Error> {
        let svc = self.service();
        if let Some(set) = set {
            svc.remove_task_set(set)?;
        }
        let by_name = listener::target_group_name(&self.config, &self.name, revision);
        let group = match set.and_then(service::target_group_of) {
            Some(arn) => Some(arn.to_string()),
            None => listener::find_target_group(&self.elb, &by_name)?,
        };
        if let Some(group) = group {
            listener::delete_target_group(&self.elb, &group)?;
        }
        if let Some(definition) = set.and_then(|s| s["taskDefinition"].as_str()) {
            svc.deregister(definition)?;
        }
        Ok(())
    }
}

/// The split a rule applies, as revisions and percentages adding up to 100; target groups of
/// no revision are reported by name.
fn split_of(rule: &Rule, groups: &[(String, String)]) -> Result<Vec<TrafficTarget>, Error> {
    let total: u32 = rule.forwards.iter().map(|(_, w)| w).sum();
    if total == 0 {
        return Ok(Vec::new());
    }
    let mut split = Vec::new();
    for (arn, weight) in rule.forwards.iter().filter(|(_, w)| *w > 0) {
        let Some((revision, _)) = groups.iter().find(|(_, g)| g == arn) else {
            return Err(Error::conflict(format!(
                "the rule {} forwards {weight} of {total} to the target group {arn}, which no revision of the service runs in; remove it from the rule",
                rule.arn
            )));
        };
        split.push(TrafficTarget {
            revision: revision.clone(),
            percent: (weight * 100 / total) as u8,
        });
    }
    // Rounding down leaves a remainder; the largest share takes it.
    let sum: u32 = split.iter().map(|t| t.percent as u32).sum();
    if let Some(largest) = split.iter_mut().max_by_key(|t| t.percent) {
        largest.percent += (100 - sum) as u8;
    }
    Ok(split)
}

/// Why a revision's target group does not serve it yet: a target that is not healthy, or fewer
/// healthy targets than the task set runs (ECS registers each task once it starts, and the load
/// balancer sends it requests once its health checks pass).
fn targets_waiting(elb: &Elb, group: &str, tasks: u64) -> Result<Option<String>, Error> {
    let health = listener::target_health(elb, group)?;
    Ok(if !health.not_healthy.is_empty() {
        Some(format!(
            "targets not healthy: {}",
            health.not_healthy.join("; ")
        ))
    } else if (health.healthy as u64) < tasks {
        Some(format!(
            "{} of {tasks} targets healthy in the target group",
            health.healthy
        ))
    } else {
        None
    })
}

fn created_ms(set: &Value) -> Option<u64> {
    set["createdAt"].as_f64().map(|s| (s * 1000.0) as u64)
}

pub struct Ecs;

impl Provider for Ecs {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "ecs".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Deploys container images to AWS ECS on Fargate behind an Application Load Balancer, traffic weighted by the engine".into(),
            config_schema: CONFIG_SCHEMA.into(),
            features: vec![
                Feature::TrafficSplit,
                Feature::RevisionUrls,
                Feature::RetireRevisions,
            ],
            capabilities: Capabilities {
                // AWS's regional endpoints, or a test server on loopback (`endpoint`); the
                // pipeline grants which.
                http: vec![
                    "https://*.amazonaws.com".into(),
                    "https://*.amazonaws.com.cn".into(),
                    "http://127.0.0.1:*".into(),
                    "http://localhost:*".into(),
                ],
                env: Vec::new(),
                dirs: Vec::new(),
                secrets: vec![apis::CREDENTIALS_SECRET.into()],
            },
        }
    }

    fn validate(spec: ServiceSpec) -> Vec<Diagnostic> {
        let checked = Config::parse(&spec.config)
            .and_then(|config| task::definition(&config, &spec, "planned"));
        engine_sdk::config_diagnostics(checked, None)
    }

    fn read(service: ServiceRef) -> Result<Option<ServiceStatus>, Error> {
        let d = Deployment::new(&service.name, &service.config)?;
        let svc = d.service();
        let Some(current) = svc.describe()? else {
            return Ok(None);
        };
        svc.check_controller(&current)?;
        let mut sets = svc.task_sets()?;
        sets.sort_by_key(|set| std::cmp::Reverse(created_ms(set)));
        let groups = Deployment::target_groups(&sets);
        let traffic =
            match listener::find_rule(&d.elb, &d.config.listener_arn, d.config.rule.priority)? {
                Some(rule) => split_of(&rule, &groups)?,
                None => Vec::new(),
            };
        let serving = traffic
            .iter()
            .max_by_key(|t| t.percent)
            .and_then(|t| sets.iter().find(|s| s["externalId"] == t.revision.as_str()))
            .or(sets.first());
        let mut revisions = Vec::new();
        let mut deployed = json!({});
        for set in &sets {
            let definition = svc.definition_of(set)?;
            let ready = service::is_ready(set);
            revisions.push(Revision {
                id: set["externalId"].as_str().unwrap_or_default().to_string(),
                artifact: definition["containerDefinitions"][0]["image"]
                    .as_str()
                    .map(String::from),
                created_at_ms: created_ms(set),
                ready,
                message: (!ready).then(|| service::progress(set)),
            });
            if serving.is_some_and(|s| s["taskSetArn"] == set["taskSetArn"]) {
                let network = &set["networkConfiguration"]["awsvpcConfiguration"];
                deployed = task::form(&definition, network);
                deployed["desired_count"] = current["desiredCount"].clone();
                deployed["autoscaling"] = match task::tag(&current["tags"], scaling::TAG) {
                    Some(_) => scaling::read_form(&d.config, &d.name)?,
                    None => Value::Null,
                };
            }
        }
        let url = match &d.config.url {
            Some(url) => url.clone(),
            None => listener::listener(&d.elb, &d.config.listener_arn)?.url(&d.config),
        };
        Ok(Some(ServiceStatus {
            revisions,
            traffic,
            url: Some(url),
            deployed: deployed.to_string(),
        }))
    }

    fn plan(desired: ServiceSpec, current: Option<ServiceStatus>) -> Result<DeploymentPlan, Error> {
        let config = Config::parse(&desired.config)?;
        let after = task::desired_form(&config, &desired)?;
        let name = config.service(&desired.name);
        let Some(current) = current else {
            let summary = format!(
                "create {name} in cluster {} ({})",
                config.cluster, config.region
            );
            return Ok(engine_sdk::create_plan(&after, task::FORM_FIELDS, summary));
        };
        Ok(engine_sdk::update_plan(
            &current.deployed,
            &after,
            task::FORM_FIELDS,
        ))
    }

    fn deploy(spec: ServiceSpec, deployment_id: String) -> Result<Revision, Error> {
        let d = Deployment::new(&spec.name, &spec.config)?;
        let svc = d.service();
        let revision = revision_id(&d.name, &deployment_id);
        let current = svc.ensure(&spec, desired_count(&d.config, &spec))?;
        let group_name = listener::target_group_name(&d.config, &d.name, &revision);
        let port = task::port(&spec)?;
        let balancer = listener::listener(&d.elb, &d.config.listener_arn)?.load_balancer_arn;
        let group = listener::ensure_target_group(
            &d.elb,
            &d.config,
            &group_name,
            port,
            &d.owner(),
            &balancer,
        )?;
        let sets = svc.task_sets()?;
        let first = sets.iter().all(|s| s["externalId"] == revision.as_str());
        if !sets.iter().any(|s| s["externalId"] == revision.as_str()) {
            let definition = svc.definition(&spec, &deployment_id)?;
            svc.create_task_set(&spec, &revision, &definition, &group)?;
        }
        // The load balancer checks a group's targets only once a rule forwards to it. The test
        // listener's rule does that for the new revision, so the users' rule gains it once it
        // serves; otherwise a new service's path would answer 503 until its first task is up.
        let test_rule_attaches = d.config.test_listener_arn.is_some();
        d.point_test_rule(&group)?;
        if !test_rule_attaches {
            d.add_to_rule(&group)?;
        }
        d.apply_scaling(&current)?;
        let tasks = desired_count(&d.config, &spec);
        let set = svc.wait_ready(&revision, |set| {
            targets_waiting(&d.elb, &group, service::computed_desired_count(set, tasks))
        })?;
        if test_rule_attaches {
            d.add_to_rule(&group)?;
        }
        if first {
            svc.make_primary(set["taskSetArn"].as_str().unwrap_or_default())?;
        }
        Ok(Revision {
            id: revision,
            artifact: match &spec.artifact {
                engine_sdk::Artifact::Image(i) => Some(i.clone()),
                engine_sdk::Artifact::Path(p) => Some(p.clone()),
            },
            created_at_ms: created_ms(&set),
            ready: true,
            message: None,
        })
    }

    fn set_traffic(service: ServiceRef, split: Vec<TrafficTarget>) -> Result<(), Error> {
        let d = Deployment::new(&service.name, &service.config)?;
        let svc = d.service();
        let sets = svc.task_sets()?;
        let groups = Deployment::target_groups(&sets);
        let group_of = |revision: &str| {
            groups
                .iter()
                .find(|(r, _)| r == revision)
                .map(|(_, g)| g.clone())
                .ok_or_else(|| Error::not_found(format!("{} has no revision {revision}", d.name)))
        };
        let rule = d.own_rule(&d.config.listener_arn)?.ok_or_else(|| {
            Error::not_found(format!(
                "{} has no rule at priority {} on its listener; deploy it first",
                d.name, d.config.rule.priority
            ))
        })?;
        let mut wanted: Vec<(String, u32)> = Vec::new();
        for target in &split {
            wanted.push((group_of(&target.revision)?, target.percent as u32));
        }
        // Revisions left out keep their place in the rule at weight 0 until they are retired.
        for (arn, _) in &rule.forwards {
            if !wanted.iter().any(|(g, _)| g == arn) {
                wanted.push((arn.clone(), 0));
            }
        }
        listener::set_forwards(
            &d.elb,
            &d.config.listener_arn,
            d.config.rule.priority,
            &rule,
            &wanted,
        )?;
        let largest = split.iter().max_by_key(|t| t.percent);
        let primary =
            largest.and_then(|t| sets.iter().find(|s| s["externalId"] == t.revision.as_str()));
        if let Some(set) = primary.filter(|s| s["status"] != "PRIMARY") {
            svc.make_primary(set["taskSetArn"].as_str().unwrap_or_default())?;
        }
        Ok(())
    }

    fn get_traffic(service: ServiceRef) -> Result<Vec<TrafficTarget>, Error> {
        let d = Deployment::new(&service.name, &service.config)?;
        let sets = d.service().task_sets()?;
        match d.own_rule(&d.config.listener_arn)? {
            Some(rule) => split_of(&rule, &Deployment::target_groups(&sets)),
            None => Err(Error::not_found(format!(
                "{} has no rule on its listener",
                d.name
            ))),
        }
    }

    fn endpoints(service: ServiceRef, revision: Option<String>) -> Result<Vec<Endpoint>, Error> {
        let d = Deployment::new(&service.name, &service.config)?;
        let url = match &d.config.url {
            Some(url) => url.clone(),
            None => listener::listener(&d.elb, &d.config.listener_arn)?.url(&d.config),
        };
        let mut out = vec![Endpoint {
            url,
            kind: EndpointKind::Service,
            revision: None,
        }];
        let (Some(revision), Some(test)) = (revision, &d.config.test_listener_arn) else {
            return Ok(out);
        };
        // The test listener reaches the revision only while its rule forwards to it alone.
        let sets = d.service().task_sets()?;
        let group = Deployment::target_groups(&sets)
            .into_iter()
            .find(|(r, _)| *r == revision)
            .map(|(_, g)| g);
        let rule = listener::find_rule(&d.elb, test, d.config.rule.priority)?;
        if let (Some(group), Some(rule)) = (group, rule)
            && rule.forwards.iter().all(|(g, _)| *g == group)
        {
            out.push(Endpoint {
                url: listener::listener(&d.elb, test)?.url(&d.config),
                kind: EndpointKind::Revision,
                revision: Some(revision),
            });
        }
        Ok(out)
    }

    fn retire(service: ServiceRef, revision: String) -> Result<(), Error> {
        let d = Deployment::new(&service.name, &service.config)?;
        let sets = d.service().task_sets()?;
        let set = sets.iter().find(|s| s["externalId"] == revision.as_str());
        let group = set.and_then(service::target_group_of).map(String::from);
        if let (Some(group), Some(rule)) = (&group, d.own_rule(&d.config.listener_arn)?) {
            if rule.forwards.iter().any(|(g, w)| g == group && *w > 0) {
                return Err(Error::conflict(format!(
                    "{revision} still takes traffic; move its share first"
                )));
            }
            let rest: Vec<(String, u32)> = rule
                .forwards
                .iter()
                .filter(|(g, _)| g != group)
                .cloned()
                .collect();
            if rest.len() != rule.forwards.len() {
                listener::set_forwards(
                    &d.elb,
                    &d.config.listener_arn,
                    d.config.rule.priority,
                    &rule,
                    &rest,
                )?;
            }
        }
        if let (Some(group), Some(test)) = (&group, &d.config.test_listener_arn)
            && let Some(rule) = d.own_rule(test)?
            && rule.forwards.iter().any(|(g, _)| g == group)
        {
            listener::delete_rule(&d.elb, &rule.arn)?;
        }
        d.remove_revision(&revision, set)
    }

    fn destroy(service: ServiceRef) -> Result<(), Error> {
        let d = Deployment::new(&service.name, &service.config)?;
        let svc = d.service();
        let current = svc.describe()?;
        if let Some(current) = &current {
            svc.check_controller(current)?;
        }
        let listeners = [
            Some(&d.config.listener_arn),
            d.config.test_listener_arn.as_ref(),
        ];
        for listener in listeners.into_iter().flatten() {
            if let Some(rule) = d.own_rule(listener)? {
                listener::delete_rule(&d.elb, &rule.arn)?;
            }
        }
        for set in svc.task_sets()? {
            let revision = set["externalId"].as_str().unwrap_or_default().to_string();
            d.remove_revision(&revision, Some(&set))?;
        }
        if let Some(current) = &current {
            if task::tag(&current["tags"], scaling::TAG).is_some() {
                scaling::remove(&d.config, &d.name)?;
            }
            svc.delete()?;
        }
        Ok(())
    }
}

engine_sdk::export_provider!(Ecs);

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(forwards: &[(&str, u32)]) -> Rule {
        Rule {
            arn: "arn:rule".into(),
            forwards: forwards.iter().map(|(g, w)| (g.to_string(), *w)).collect(),
        }
    }

    fn groups() -> Vec<(String, String)> {
        vec![
            ("api-r1".into(), "arn:tg/1".into()),
            ("api-r2".into(), "arn:tg/2".into()),
        ]
    }

    #[test]
    fn a_rules_weights_are_the_split_in_percent() {
        let split = split_of(&rule(&[("arn:tg/1", 90), ("arn:tg/2", 10)]), &groups()).unwrap();
        assert_eq!(
            split,
            [
                TrafficTarget {
                    revision: "api-r1".into(),
                    percent: 90
                },
                TrafficTarget {
                    revision: "api-r2".into(),
                    percent: 10
                },
            ]
        );
        // Weights set by hand need not add up to 100; zero weights are no share.
        let split = split_of(&rule(&[("arn:tg/1", 2), ("arn:tg/2", 1)]), &groups()).unwrap();
        assert_eq!(split.iter().map(|t| t.percent as u32).sum::<u32>(), 100);
        assert_eq!(split[0].percent, 67);
        let split = split_of(&rule(&[("arn:tg/1", 0), ("arn:tg/2", 5)]), &groups()).unwrap();
        assert_eq!(
            split,
            [TrafficTarget {
                revision: "api-r2".into(),
                percent: 100
            }]
        );
    }

    #[test]
    fn a_share_for_a_target_group_of_no_revision_is_a_conflict() {
        let e = split_of(&rule(&[("arn:tg/1", 50), ("arn:tg/other", 50)]), &groups()).unwrap_err();
        assert!(matches!(e, Error::Conflict(_)), "{e:?}");
        assert!(e.describe().contains("arn:tg/other"));
    }

    #[test]
    fn revisions_are_named_after_the_deployment() {
        assert_eq!(revision_id("Gateway", "r12"), "gateway-r12");
        let config = Config::parse(r#"{"region":"eu-west-1","cluster":"arn:aws:ecs:eu-west-1:1:cluster/prod","vpc_id":"v","subnets":["s"],"listener_arn":"l","rule":{"priority":1,"paths":["/*"]}}"#).unwrap();
        assert_eq!(owner(&config, "gateway"), "prod/gateway");
    }
}
