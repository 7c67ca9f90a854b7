//! The provider's configuration (`provider_config` of a service, usually set per environment):
//! the cluster and namespace, how traffic moves between revisions, and what the pod needs
//! beyond the service's common keys.

use engine_sdk::{Error, ErrorExt};
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The granted secret naming the cluster (`from = "kubeconfig"`).
    #[serde(default = "default_cluster")]
    pub cluster: String,
    /// The namespace of the service's objects; the provider never creates it (a `namespace`
    /// resource does).
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// The name of the service's objects when it differs from the pipeline's service name.
    #[serde(default)]
    pub name: Option<String>,
    /// How traffic moves between revisions.
    #[serde(default)]
    pub traffic: Traffic,
    /// Pods per revision; by default the service's `min_instances`, else 1.
    #[serde(default)]
    pub replicas: Option<u32>,
    /// The Service's port (the container's is the service's `port`); 80 by default.
    #[serde(default)]
    pub service_port: Option<u16>,
    /// `ClusterIP` (default), `NodePort` or `LoadBalancer`.
    #[serde(default)]
    pub service_type: Option<String>,
    /// The URL users reach the service at (its Ingress or load balancer), for
    /// `${services.NAME.url}` and checks; by default the Service's in-cluster DNS name.
    #[serde(default)]
    pub url: Option<String>,
    /// Resource limits, such as `{ cpu = "500m", memory = "512Mi" }`; the service's `cpu` and
    /// `memory` are the requests.
    #[serde(default)]
    pub limits: BTreeMap<String, String>,
    /// Whole config maps and secrets as environment variables: `[{ config_map = "app-config" },
    /// { secret = "api-secrets" }]`.
    #[serde(default)]
    pub env_from: Vec<EnvFrom>,
    #[serde(default)]
    pub readiness_probe: Option<Probe>,
    #[serde(default)]
    pub liveness_probe: Option<Probe>,
    #[serde(default)]
    pub startup_probe: Option<Probe>,
    /// The pods' service account.
    #[serde(default)]
    pub service_account: Option<String>,
    #[serde(default)]
    pub image_pull_secrets: Vec<String>,
    /// A HorizontalPodAutoscaler (autoscaling/v2) of the serving revision.
    #[serde(default)]
    pub autoscaling: Option<Autoscaling>,
    /// The Gateway API HTTPRoute that splits traffic by weight (`traffic = "gateway"`).
    #[serde(default)]
    pub route: Option<Route>,
    /// The Deployment controller's progress deadline: a revision whose pods make no progress
    /// for this long has failed (the controller's `ProgressDeadlineExceeded`).
    #[serde(default = "default_progress_deadline")]
    pub progress_deadline_seconds: u32,
    /// How long `deploy` and a traffic change wait for pods to become ready.
    #[serde(default = "default_ready_timeout")]
    pub ready_timeout_seconds: u64,
    /// Milliseconds between polls while waiting.
    #[serde(default = "default_poll")]
    pub poll_interval_ms: u64,
}

/// How traffic moves between revisions.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Traffic {
    /// One Service whose selector names the serving revision: all of the traffic moves at
    /// once (blue-green).
    #[default]
    Selector,
    /// A Gateway API HTTPRoute with a weighted backend per revision (canaries by weight).
    Gateway,
    /// One Service over every revision's pods, the split being the share of pods each revision
    /// runs (a canary without a traffic router; an approximation by whole pods).
    Replicas,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EnvFrom {
    #[serde(default)]
    pub config_map: Option<String>,
    #[serde(default)]
    pub secret: Option<String>,
}

/// A probe: an HTTP GET of `path`, or a TCP connect with `tcp = true`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub tcp: bool,
    /// The container's port by default.
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub initial_delay_seconds: Option<u32>,
    #[serde(default)]
    pub period_seconds: Option<u32>,
    #[serde(default)]
    pub timeout_seconds: Option<u32>,
    #[serde(default)]
    pub failure_threshold: Option<u32>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Autoscaling {
    pub min: u32,
    pub max: u32,
    /// Average CPU utilisation to keep, in percent of the requests.
    #[serde(default)]
    pub cpu: Option<u32>,
    /// Average memory utilisation to keep, in percent of the requests.
    #[serde(default)]
    pub memory: Option<u32>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// The HTTPRoute's name; the service's by default.
    #[serde(default)]
    pub name: Option<String>,
    /// The Gateways it attaches to.
    pub parents: Vec<Parent>,
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// The path prefix it matches; `/` by default.
    #[serde(default)]
    pub path: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Parent {
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub section_name: Option<String>,
}

fn default_cluster() -> String {
    "cluster".into()
}

fn default_namespace() -> String {
    "default".into()
}

fn default_progress_deadline() -> u32 {
    600
}

fn default_ready_timeout() -> u64 {
    900
}

fn default_poll() -> u64 {
    2000
}

impl Config {
    pub fn parse(text: &str) -> Result<Config, Error> {
        let text = if text.trim().is_empty() { "{}" } else { text };
        let config: Config = serde_json::from_str(text).map_err(|e| {
            Error::invalid_config(format!("kubernetes provider configuration: {e}"))
        })?;
        config.check()?;
        Ok(config)
    }

    /// The name of the service's objects.
    pub fn service(&self, pipeline_name: &str) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| pipeline_name.to_ascii_lowercase())
    }

    fn check(&self) -> Result<(), Error> {
        dns_label("namespace", &self.namespace)?;
        if let Some(name) = &self.name {
            dns_label("name", name)?;
        }
        if let Some(kind) = &self.service_type
            && !["ClusterIP", "NodePort", "LoadBalancer"].contains(&kind.as_str())
        {
            return Err(Error::invalid_config(format!(
                "service_type {kind:?}: use \"ClusterIP\", \"NodePort\" or \"LoadBalancer\""
            )));
        }
        for e in &self.env_from {
            if e.config_map.is_some() == e.secret.is_some() {
                return Err(Error::invalid_config(
                    "each env_from entry names one config_map or one secret",
                ));
            }
        }
        for (name, probe) in [
            ("readiness_probe", &self.readiness_probe),
            ("liveness_probe", &self.liveness_probe),
            ("startup_probe", &self.startup_probe),
        ] {
            if let Some(p) = probe
                && p.path.is_some() == p.tcp
            {
                return Err(Error::invalid_config(format!(
                    "{name} needs either `path` (an HTTP GET) or `tcp = true`"
                )));
            }
        }
        if let Some(a) = &self.autoscaling {
            if a.min == 0 || a.min > a.max {
                return Err(Error::invalid_config(format!(
                    "autoscaling: min ({}) must be at least 1 and at most max ({})",
                    a.min, a.max
                )));
            }
            if a.cpu.is_none() && a.memory.is_none() {
                return Err(Error::invalid_config(
                    "autoscaling needs a target: cpu = 70 or memory = 80 (percent of the requests)",
                ));
            }
        }
        match (self.traffic, &self.route) {
            (Traffic::Gateway, None) => Err(Error::invalid_config(
                "traffic = \"gateway\" needs `route`, the HTTPRoute's parents (its Gateways): route = { parents = [{ name = \"external\", namespace = \"gateway\" }] }",
            )),
            (Traffic::Selector | Traffic::Replicas, Some(_)) => Err(Error::invalid_config(
                "`route` is for traffic = \"gateway\"; remove it or set traffic = \"gateway\"",
            )),
            _ => Ok(()),
        }
    }
}

/// A name Kubernetes accepts for a namespace or a Service: lower-case letters, digits and
/// dashes, at most 63, starting and ending alphanumeric.
pub fn dns_label(what: &str, name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid_config(format!(
            "{what} {name:?} is not a valid Kubernetes name: lower-case letters, digits and '-', at most 63, starting and ending with a letter or digit"
        )))
    }
}

pub const CONFIG_SCHEMA: &str = r##"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "kubernetes provider",
  "type": "object",
  "properties": {
    "cluster": { "type": "string", "default": "cluster", "description": "The granted secret naming the cluster (from = \"kubeconfig\", \"kubeconfig:CONTEXT\" or \"in-cluster\")." },
    "namespace": { "type": "string", "default": "default", "description": "The namespace of the service's objects (never created by the provider)." },
    "name": { "type": "string", "description": "The name of the service's objects, when it differs from the pipeline's service name." },
    "traffic": { "enum": ["selector", "gateway", "replicas"], "default": "selector", "description": "selector: one Service switched between revisions (blue-green); gateway: a Gateway API HTTPRoute's weights; replicas: the share of pods (a canary without a traffic router)." },
    "replicas": { "type": "integer", "minimum": 1, "description": "Pods per revision; by default the service's min_instances, else 1." },
    "service_port": { "type": "integer", "minimum": 1, "maximum": 65535, "default": 80 },
    "service_type": { "enum": ["ClusterIP", "NodePort", "LoadBalancer"], "default": "ClusterIP" },
    "url": { "type": "string", "description": "The URL users reach the service at; by default the Service's in-cluster name." },
    "limits": { "type": "object", "additionalProperties": { "type": "string" }, "description": "Resource limits: { cpu = \"500m\", memory = \"512Mi\" }." },
    "env_from": { "type": "array", "items": { "type": "object", "properties": { "config_map": { "type": "string" }, "secret": { "type": "string" } }, "additionalProperties": false } },
    "readiness_probe": { "$ref": "#/$defs/probe" },
    "liveness_probe": { "$ref": "#/$defs/probe" },
    "startup_probe": { "$ref": "#/$defs/probe" },
    "service_account": { "type": "string" },
    "image_pull_secrets": { "type": "array", "items": { "type": "string" } },
    "autoscaling": {
      "type": "object",
      "properties": {
        "min": { "type": "integer", "minimum": 1 },
        "max": { "type": "integer", "minimum": 1 },
        "cpu": { "type": "integer", "minimum": 1, "maximum": 1000, "description": "Average CPU utilisation to keep, percent of the requests." },
        "memory": { "type": "integer", "minimum": 1, "maximum": 1000, "description": "Average memory utilisation to keep, percent of the requests." }
      },
      "required": ["min", "max"],
      "additionalProperties": false
    },
    "route": {
      "type": "object",
      "properties": {
        "name": { "type": "string" },
        "parents": { "type": "array", "minItems": 1, "items": { "type": "object", "properties": { "name": { "type": "string" }, "namespace": { "type": "string" }, "section_name": { "type": "string" } }, "required": ["name"], "additionalProperties": false } },
        "hostnames": { "type": "array", "items": { "type": "string" } },
        "path": { "type": "string" }
      },
      "required": ["parents"],
      "additionalProperties": false
    },
    "progress_deadline_seconds": { "type": "integer", "minimum": 1, "default": 600 },
    "ready_timeout_seconds": { "type": "integer", "minimum": 1, "default": 900 },
    "poll_interval_ms": { "type": "integer", "minimum": 10, "default": 2000 }
  },
  "additionalProperties": false,
  "$defs": {
    "probe": {
      "type": "object",
      "properties": {
        "path": { "type": "string" },
        "tcp": { "type": "boolean" },
        "port": { "type": "integer", "minimum": 1, "maximum": 65535 },
        "initial_delay_seconds": { "type": "integer", "minimum": 0 },
        "period_seconds": { "type": "integer", "minimum": 1 },
        "timeout_seconds": { "type": "integer", "minimum": 1 },
        "failure_threshold": { "type": "integer", "minimum": 1 }
      },
      "additionalProperties": false
    }
  }
}"##;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gateway_split_needs_its_route_and_names_are_checked() {
        let e = Config::parse(r#"{"traffic":"gateway"}"#).unwrap_err();
        assert!(e.describe().contains("route"), "{e:?}");
        let e = Config::parse(r#"{"namespace":"AI_chatbot"}"#).unwrap_err();
        assert!(e.describe().contains("not a valid Kubernetes name"));
        let c = Config::parse(r#"{"namespace":"ai-chatbot","traffic":"replicas"}"#).unwrap();
        assert_eq!(c.traffic, Traffic::Replicas);
        assert_eq!(c.service("Chatbot"), "chatbot");
    }
}
