//! The provider's configuration (`provider_config` of a service, usually set per environment):
//! where the service runs (region, cluster, subnets) and the load balancer listener whose rule
//! carries its traffic.

use engine_sdk::{Error, ErrorExt};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The AWS region, such as `eu-west-1`.
    pub region: String,
    /// The ECS cluster's name or ARN; the provider never creates or deletes it.
    pub cluster: String,
    /// The ECS service's name when it differs from the pipeline's service name.
    #[serde(default)]
    pub service_name: Option<String>,
    /// One base URL for every AWS API the provider calls; only a test server (moto) needs it.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The VPC of the subnets, where the target groups are made.
    pub vpc_id: String,
    pub subnets: Vec<String>,
    #[serde(default)]
    pub security_groups: Vec<String>,
    /// A public IP for each task (tasks in public subnets without a NAT gateway need one).
    #[serde(default)]
    pub assign_public_ip: bool,
    /// The ALB listener whose rule forwards the service's requests, weighted by revision.
    pub listener_arn: String,
    /// The service's rule on that listener.
    pub rule: Rule,
    /// A second listener on the same load balancer whose rule (same priority and conditions)
    /// forwards to the newest revision only, so checks reach it before it takes traffic.
    #[serde(default)]
    pub test_listener_arn: Option<String>,
    /// The URL the service's users reach it at (a DNS name pointing at the load balancer); by
    /// default the load balancer's own DNS name with the rule's path.
    #[serde(default)]
    pub url: Option<String>,
    /// The role ECS uses to pull the image, write logs and read the `secrets` (`valueFrom`).
    #[serde(default)]
    pub execution_role_arn: Option<String>,
    /// The role the service's code runs as.
    #[serde(default)]
    pub task_role_arn: Option<String>,
    /// The task definition family; the service's name by default.
    #[serde(default)]
    pub family: Option<String>,
    /// The CloudWatch Logs group of the `awslogs` driver; `/ecs/SERVICE` by default.
    #[serde(default)]
    pub log_group: Option<String>,
    /// The container's health check (ECS runs the command inside the container).
    #[serde(default)]
    pub health_check: Option<ContainerHealthCheck>,
    /// The path the target group's health check requests; `/health` by default.
    #[serde(default = "default_health_path")]
    pub target_health_path: String,
    /// Tasks per revision; by default the service's `min_instances`, else 1.
    #[serde(default)]
    pub desired_count: Option<u32>,
    /// Application Auto Scaling of the service's desired count.
    #[serde(default)]
    pub autoscaling: Option<Autoscaling>,
    /// The Fargate platform version (`LATEST` by default).
    #[serde(default)]
    pub platform_version: Option<String>,
    /// How long a new revision may take to reach its desired count and a steady state.
    #[serde(default = "default_ready_timeout")]
    pub ready_timeout_seconds: u64,
    /// Milliseconds between polls while waiting.
    #[serde(default = "default_poll")]
    pub poll_interval_ms: u64,
}

/// The listener rule: its priority (unique on the listener) and the requests it matches.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub priority: u32,
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ContainerHealthCheck {
    /// As ECS takes it: `["CMD-SHELL", "curl -f http://localhost:8080/health || exit 1"]`.
    pub command: Vec<String>,
    #[serde(default)]
    pub interval_seconds: Option<u32>,
    #[serde(default)]
    pub timeout_seconds: Option<u32>,
    #[serde(default)]
    pub retries: Option<u32>,
    #[serde(default)]
    pub start_period_seconds: Option<u32>,
}

/// Target tracking of the service's average CPU between `min` and `max` tasks.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Autoscaling {
    pub min: u32,
    pub max: u32,
    /// The average CPU utilisation to keep, in percent.
    pub cpu_target: f64,
}

fn default_health_path() -> String {
    "/health".into()
}

fn default_ready_timeout() -> u64 {
    600
}

fn default_poll() -> u64 {
    5000
}

pub const CONFIG_SCHEMA: &str = r##"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "ecs provider",
  "type": "object",
  "properties": {
    "region": { "type": "string", "description": "The AWS region, such as eu-west-1." },
    "cluster": { "type": "string", "description": "The ECS cluster's name or ARN (never created or deleted by the provider)." },
    "service_name": { "type": "string", "description": "The ECS service's name, when it differs from the pipeline's service name." },
    "endpoint": { "type": "string", "description": "One base URL for every AWS API called; only a test server (moto) needs it." },
    "vpc_id": { "type": "string", "description": "The VPC of the subnets; target groups are made in it." },
    "subnets": { "type": "array", "items": { "type": "string" }, "minItems": 1 },
    "security_groups": { "type": "array", "items": { "type": "string" } },
    "assign_public_ip": { "type": "boolean", "default": false },
    "listener_arn": { "type": "string", "description": "The ALB listener whose rule carries the service's traffic, weighted by revision." },
    "rule": { "type": "object", "properties": {
        "priority": { "type": "integer", "minimum": 1, "maximum": 50000 },
        "hosts": { "type": "array", "items": { "type": "string" }, "description": "Host headers the rule matches." },
        "paths": { "type": "array", "items": { "type": "string" }, "description": "Path patterns the rule matches, such as /api/*." }
      }, "required": ["priority"], "additionalProperties": false },
    "test_listener_arn": { "type": "string", "description": "A listener whose rule forwards to the newest revision only, for checks before it takes traffic." },
    "url": { "type": "string", "description": "The URL users reach the service at; by default the load balancer's DNS name." },
    "execution_role_arn": { "type": "string" },
    "task_role_arn": { "type": "string" },
    "family": { "type": "string", "description": "The task definition family; the service's name by default." },
    "log_group": { "type": "string", "description": "The awslogs group; /ecs/SERVICE by default." },
    "health_check": { "type": "object", "properties": {
        "command": { "type": "array", "items": { "type": "string" }, "minItems": 1 },
        "interval_seconds": { "type": "integer", "minimum": 5, "maximum": 300 },
        "timeout_seconds": { "type": "integer", "minimum": 2, "maximum": 60 },
        "retries": { "type": "integer", "minimum": 1, "maximum": 10 },
        "start_period_seconds": { "type": "integer", "minimum": 0, "maximum": 300 }
      }, "required": ["command"], "additionalProperties": false },
    "target_health_path": { "type": "string", "pattern": "^/", "default": "/health" },
    "desired_count": { "type": "integer", "minimum": 0 },
    "autoscaling": { "type": "object", "properties": {
        "min": { "type": "integer", "minimum": 0 },
        "max": { "type": "integer", "minimum": 1 },
        "cpu_target": { "type": "number", "exclusiveMinimum": 0, "maximum": 100 }
      }, "required": ["min", "max", "cpu_target"], "additionalProperties": false },
    "platform_version": { "type": "string" },
    "ready_timeout_seconds": { "type": "integer", "minimum": 1, "default": 600 },
    "poll_interval_ms": { "type": "integer", "minimum": 10, "maximum": 60000, "default": 5000 }
  },
  "required": ["region", "cluster", "vpc_id", "subnets", "listener_arn", "rule"],
  "additionalProperties": false
}"##;

impl Config {
    pub fn parse(text: &str) -> Result<Config, Error> {
        let text = if text.trim().is_empty() { "{}" } else { text };
        let config: Config = serde_json::from_str(text)
            .map_err(|e| Error::invalid_config(format!("ecs provider configuration: {e}")))?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), Error> {
        let region_like = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        };
        if !region_like(&self.region) {
            return Err(Error::invalid_config(format!(
                "ecs `region` {:?} is not a region name such as eu-west-1",
                self.region
            )));
        }
        if self.subnets.is_empty() {
            return Err(Error::invalid_config(
                "ecs needs `subnets = [\"subnet-…\"]`: Fargate tasks use the awsvpc network mode",
            ));
        }
        if self.rule.hosts.is_empty() && self.rule.paths.is_empty() {
            return Err(Error::invalid_config(
                "ecs `rule` needs `hosts` or `paths` to match the service's requests (`paths = [\"/*\"]` for all)",
            ));
        }
        if let Some(a) = &self.autoscaling
            && a.min > a.max
        {
            return Err(Error::invalid_config(format!(
                "ecs `autoscaling`: min {} is above max {}",
                a.min, a.max
            )));
        }
        if let Some(endpoint) = &self.endpoint
            && !endpoint.starts_with("https://")
            && !endpoint.starts_with("http://127.0.0.1:")
            && !endpoint.starts_with("http://localhost:")
        {
            return Err(Error::invalid_config(format!(
                "ecs `endpoint` {endpoint:?} must be https (plain http only for a test server on loopback)"
            )));
        }
        Ok(())
    }

    /// The ECS service's name for the pipeline's service `name`.
    pub fn service<'a>(&'a self, name: &'a str) -> &'a str {
        self.service_name.as_deref().unwrap_or(name)
    }

    pub fn family<'a>(&'a self, name: &'a str) -> &'a str {
        self.family.as_deref().unwrap_or(self.service(name))
    }

    pub fn log_group(&self, name: &str) -> String {
        self.log_group
            .clone()
            .unwrap_or_else(|| format!("/ecs/{}", self.service(name)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"{"region":"eu-west-1","cluster":"prod","vpc_id":"vpc-1","subnets":["subnet-1"],
        "listener_arn":"arn:aws:elasticloadbalancing:eu-west-1:1:listener/app/lb/1/2","rule":{"priority":10,"paths":["/*"]}}"#;

    #[test]
    fn a_minimal_configuration_has_the_documented_defaults() {
        let config = Config::parse(MINIMAL).unwrap();
        assert_eq!(config.log_group("api"), "/ecs/api");
        assert_eq!(config.family("api"), "api");
        assert_eq!(config.target_health_path, "/health");
    }

    #[test]
    fn a_rule_that_matches_nothing_is_refused_with_the_fix() {
        let text = MINIMAL.replace(r#""paths":["/*"]"#, r#""paths":[]"#);
        let e = Config::parse(&text).unwrap_err();
        assert!(e.describe().contains("`paths = [\"/*\"]`"), "{e:?}");
    }

    #[test]
    fn plain_http_endpoints_are_for_loopback_only() {
        let text = MINIMAL.replacen('{', r#"{"endpoint":"http://ecs.example.com","#, 1);
        assert!(Config::parse(&text).is_err());
        let text = MINIMAL.replacen('{', r#"{"endpoint":"http://127.0.0.1:5000","#, 1);
        assert!(Config::parse(&text).is_ok());
    }
}
