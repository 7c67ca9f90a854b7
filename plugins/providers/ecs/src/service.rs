//! The ECS side: the service (with the `EXTERNAL` deployment controller, so the engine, not
//! ECS, decides which revision takes traffic), one task set per revision, and the task
//! definitions they run.

use crate::config::Config;
use crate::task;
use engine_sdk::aws::JsonApi;
use engine_sdk::{Error, ErrorExt, ServiceSpec};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// The ECS service and its cluster, as the calls name them.
pub struct Service<'a> {
    pub ecs: &'a JsonApi,
    pub config: &'a Config,
    pub name: &'a str,
}

impl Service<'_> {
    fn ids(&self) -> Value {
        json!({ "cluster": self.config.cluster, "service": self.name })
    }

    /// The service, or `None` when it does not exist (or was deleted: ECS keeps `INACTIVE`
    /// services for a while).
    pub fn describe(&self) -> Result<Option<Value>, Error> {
        let answer = self
            .ecs
            .call(
                "DescribeServices",
                json!({ "cluster": self.config.cluster, "services": [self.name], "include": ["TAGS"] }),
            )
            .map_err(|e| self.cluster_hint(e))?;
        Ok(answer["services"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["serviceName"] == self.name && s["status"] != "INACTIVE")
            .cloned())
    }

    fn cluster_hint(&self, e: Error) -> Error {
        match e {
            Error::NotFound(m) if m.contains("Cluster") => Error::not_found(format!(
                "{m} (the cluster `{}` in {}: create it first, or fix `cluster` in the provider config; the provider never creates clusters)",
                self.config.cluster, self.config.region
            )),
            e => e,
        }
    }

    /// The service as the engine runs it: made with the external controller when missing,
    /// refused when another controller deploys it, with `desired_count` applied.
    pub fn ensure(&self, spec: &ServiceSpec, desired_count: u32) -> Result<Value, Error> {
        let Some(current) = self.describe()? else {
            let created = self.ecs.call(
                "CreateService",
                json!({
                    "cluster": self.config.cluster,
                    "serviceName": self.name,
                    "desiredCount": desired_count,
                    "deploymentController": { "type": "EXTERNAL" },
                    "tags": task::tags(spec, "service"),
                }),
            )?;
            return Ok(created["service"].clone());
        };
        self.check_controller(&current)?;
        if current["desiredCount"].as_u64() != Some(desired_count as u64) {
            let mut body = self.ids();
            body["desiredCount"] = json!(desired_count);
            self.ecs.call("UpdateService", body)?;
        }
        Ok(current)
    }

    /// The engine deploys only services of the external controller: another controller would
    /// fight it over the tasks. No silent takeover.
    pub fn check_controller(&self, service: &Value) -> Result<(), Error> {
        let controller = service["deploymentController"]["type"]
            .as_str()
            .unwrap_or("ECS");
        if controller == "EXTERNAL" {
            return Ok(());
        }
        Err(Error::conflict(format!(
            "the ECS service `{}` in cluster `{}` is deployed by the {controller} deployment controller; the engine deploys only services of the EXTERNAL controller and does not take one over. Deploy under another `service_name`, or delete that service first",
            self.name, self.config.cluster
        )))
    }

    /// The service's task sets (one per revision).
    pub fn task_sets(&self) -> Result<Vec<Value>, Error> {
        match self.ecs.call("DescribeTaskSets", self.ids()) {
            Ok(answer) => Ok(answer["taskSets"].as_array().cloned().unwrap_or_default()),
            Err(Error::NotFound(_)) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// The task definition a deployment made, if an earlier attempt registered it: the
    /// family's newest revision, when tagged with the deployment.
    fn registered_for(
        &self,
        spec: &ServiceSpec,
        deployment_id: &str,
    ) -> Result<Option<String>, Error> {
        let family = self.config.family(&spec.name);
        let list = self.ecs.call(
            "ListTaskDefinitions",
            json!({ "familyPrefix": family, "sort": "DESC", "maxResults": 1 }),
        )?;
        let Some(arn) = list["taskDefinitionArns"][0].as_str() else {
            return Ok(None);
        };
        let described = self.ecs.call(
            "DescribeTaskDefinition",
            json!({ "taskDefinition": arn, "include": ["TAGS"] }),
        )?;
        let tags = &described["tags"];
        let ours = task::tag(tags, task::DEPLOYMENT_TAG) == Some(deployment_id)
            && task::tag(tags, task::SERVICE_TAG) == Some(spec.name.as_str());
        Ok(ours.then(|| arn.to_string()))
    }

    /// The deployment's task definition, registered unless an earlier attempt did.
    pub fn definition(&self, spec: &ServiceSpec, deployment_id: &str) -> Result<String, Error> {
        if let Some(arn) = self.registered_for(spec, deployment_id)? {
            return Ok(arn);
        }
        let body = task::definition(self.config, spec, deployment_id)?;
        let registered = self.ecs.call("RegisterTaskDefinition", body)?;
        registered["taskDefinition"]["taskDefinitionArn"]
            .as_str()
            .map(String::from)
            .ok_or_else(|| Error::fatal("ECS registered the task definition but answered no ARN"))
    }

    /// Starts a revision's tasks: a task set at full scale, registered in its target group.
    pub fn create_task_set(
        &self,
        spec: &ServiceSpec,
        revision: &str,
        definition: &str,
        target_group: &str,
    ) -> Result<Value, Error> {
        let config = self.config;
        let mut body = self.ids();
        let extra = json!({
            "externalId": revision,
            "taskDefinition": definition,
            "launchType": "FARGATE",
            "networkConfiguration": { "awsvpcConfiguration": {
                "subnets": config.subnets,
                "securityGroups": config.security_groups,
                "assignPublicIp": if config.assign_public_ip { "ENABLED" } else { "DISABLED" },
            } },
            "loadBalancers": [{
                "targetGroupArn": target_group,
                "containerName": config.service(&spec.name),
                "containerPort": task::port(spec)?,
            }],
            "scale": { "value": 100.0, "unit": "PERCENT" },
            "tags": task::tags(spec, revision),
        });
        for (k, v) in extra.as_object().into_iter().flatten() {
            body[k] = v.clone();
        }
        if let Some(version) = &config.platform_version {
            body["platformVersion"] = json!(version);
        }
        let created = self.ecs.call("CreateTaskSet", body)?;
        Ok(created["taskSet"].clone())
    }

    /// Waits until a task set runs its desired count in a steady state and `also` has no
    /// reason to wait (its targets' health); past the configured timeout, fails with ECS's
    /// latest event for the service.
    pub fn wait_ready(
        &self,
        revision: &str,
        also: impl Fn(&Value) -> Result<Option<String>, Error>,
    ) -> Result<Value, Error> {
        let deadline = Instant::now() + Duration::from_secs(self.config.ready_timeout_seconds);
        loop {
            let set = self
                .task_sets()?
                .into_iter()
                .find(|s| s["externalId"] == revision);
            let set = set.ok_or_else(|| {
                Error::conflict(format!("the task set of {revision} was deleted meanwhile"))
            })?;
            let waiting = match is_ready(&set) {
                true => also(&set)?,
                false => Some(progress(&set)),
            };
            let Some(reason) = waiting else {
                return Ok(set);
            };
            if Instant::now() >= deadline {
                return Err(Error::fatal(format!(
                    "revision {revision} did not become ready within {} s: {reason}; ECS says: {}",
                    self.config.ready_timeout_seconds,
                    self.latest_event()
                )));
            }
            std::thread::sleep(Duration::from_millis(self.config.poll_interval_ms));
        }
    }

    fn latest_event(&self) -> String {
        self.describe()
            .ok()
            .flatten()
            .and_then(|s| s["events"][0]["message"].as_str().map(String::from))
            .unwrap_or_else(|| "no event".into())
    }

    pub fn make_primary(&self, task_set_arn: &str) -> Result<(), Error> {
        let mut body = self.ids();
        body["primaryTaskSet"] = json!(task_set_arn);
        self.ecs
            .call("UpdateServicePrimaryTaskSet", body)
            .map(|_| ())
    }

    /// Scales a task set to zero and deletes it; one already gone is fine.
    pub fn remove_task_set(&self, set: &Value) -> Result<(), Error> {
        let arn = set["taskSetArn"].as_str().unwrap_or_default();
        let mut body = self.ids();
        body["taskSet"] = json!(arn);
        body["scale"] = json!({ "value": 0.0, "unit": "PERCENT" });
        match self.ecs.call("UpdateTaskSet", body.clone()) {
            Ok(_) | Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        body.as_object_mut().map(|b| b.remove("scale"));
        body["force"] = json!(true);
        match self.ecs.call("DeleteTaskSet", body) {
            Ok(_) | Err(Error::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Deregisters a task definition the engine registered (tagged with a deployment); one
    /// it did not make is left alone.
    pub fn deregister(&self, definition: &str) -> Result<(), Error> {
        let described = match self.ecs.call(
            "DescribeTaskDefinition",
            json!({ "taskDefinition": definition, "include": ["TAGS"] }),
        ) {
            Ok(d) => d,
            Err(Error::NotFound(_) | Error::InvalidConfig(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        if task::tag(&described["tags"], task::DEPLOYMENT_TAG).is_none()
            || described["taskDefinition"]["status"] == "INACTIVE"
        {
            return Ok(());
        }
        self.ecs
            .call(
                "DeregisterTaskDefinition",
                json!({ "taskDefinition": definition }),
            )
            .map(|_| ())
    }

    /// Deletes the service itself (its task sets first).
    pub fn delete(&self) -> Result<(), Error> {
        let mut body = self.ids();
        body["force"] = json!(true);
        match self.ecs.call("DeleteService", body) {
            Ok(_) | Err(Error::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The task definition a task set runs, described with its tags.
    pub fn definition_of(&self, set: &Value) -> Result<Value, Error> {
        let described = self.ecs.call(
            "DescribeTaskDefinition",
            json!({ "taskDefinition": set["taskDefinition"], "include": ["TAGS"] }),
        )?;
        let mut definition = described["taskDefinition"].clone();
        definition["tags"] = described["tags"].clone();
        Ok(definition)
    }
}

/// Running its desired count, in a steady state. (A count ECS leaves out is zero.)
pub fn is_ready(set: &Value) -> bool {
    let count = |k: &str| set[k].as_u64().unwrap_or(0);
    set["stabilityStatus"] == "STEADY_STATE"
        && count("runningCount") >= count("computedDesiredCount")
}

/// How many tasks a task set runs: ECS computes it as its scale's share of the service's
/// desired count, rounded up, and reports it; an API that leaves it out (moto) gets the formula.
pub fn computed_desired_count(set: &Value, service_desired: u32) -> u64 {
    set["computedDesiredCount"].as_u64().unwrap_or_else(|| {
        let percent = set["scale"]["value"].as_f64().unwrap_or(100.0);
        (service_desired as f64 * percent / 100.0).ceil() as u64
    })
}

/// `2 of 3 tasks running, STABILIZING`, for messages.
pub fn progress(set: &Value) -> String {
    format!(
        "{} of {} tasks running, {}",
        set["runningCount"].as_u64().unwrap_or(0),
        set["computedDesiredCount"].as_u64().unwrap_or(0),
        set["stabilityStatus"]
            .as_str()
            .unwrap_or("unknown stability")
    )
}

/// A task set's target group.
pub fn target_group_of(set: &Value) -> Option<&str> {
    set["loadBalancers"][0]["targetGroupArn"].as_str()
}
