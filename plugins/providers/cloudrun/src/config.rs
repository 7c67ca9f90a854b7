//! The provider's configuration (`provider_config` of a service, usually set per environment).

use engine_sdk::{Error, ErrorExt};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The Google Cloud project id.
    pub project: String,
    /// The Cloud Run service's id when it differs from the pipeline's service name (such as
    /// `api-staging`).
    #[serde(default)]
    pub service_id: Option<String>,
    /// One region, such as `europe-west1`.
    #[serde(default)]
    pub region: Option<String>,
    /// Several regions: the service is deployed to each, in lockstep (same revisions, same
    /// split).
    #[serde(default)]
    pub regions: Vec<String>,
    /// The API's base URL; only a test server needs another.
    #[serde(default = "default_endpoint")]
    pub endpoint: String,
    /// `all`, `internal` or `internal-and-cloud-load-balancing`; by default from the service's
    /// `ingress` (public → all, internal → internal).
    #[serde(default)]
    pub ingress: Option<String>,
    /// The revision's identity, `name@project.iam.gserviceaccount.com`.
    #[serde(default)]
    pub service_account: Option<String>,
    /// The longest a request may take, such as `300s`.
    #[serde(default)]
    pub timeout: Option<String>,
    /// A Serverless VPC Access connector, `projects/P/locations/L/connectors/NAME`; `{region}`
    /// stands for each region the service is deployed to.
    #[serde(default)]
    pub vpc_connector: Option<String>,
    /// `all-traffic` or `private-ranges-only` through the connector.
    #[serde(default)]
    pub vpc_egress: Option<String>,
    /// Who may invoke the service (`roles/run.invoker`): members such as
    /// `serviceAccount:gateway@p.iam.gserviceaccount.com`. `allUsers` makes it public. The
    /// provider keeps the binding exactly this list.
    #[serde(default)]
    pub invokers: Option<Vec<String>>,
    /// `gen1` or `gen2`.
    #[serde(default)]
    pub execution_environment: Option<String>,
    /// `false` keeps the CPU allocated between requests (Cloud Run's "CPU always allocated");
    /// by default Cloud Run throttles it.
    #[serde(default)]
    pub cpu_throttling: Option<bool>,
    /// More CPU while an instance starts (`--cpu-boost`).
    #[serde(default)]
    pub startup_cpu_boost: Option<bool>,
    /// Cloud SQL instances (`PROJECT:REGION:INSTANCE`) reachable through their Unix sockets
    /// under `/cloudsql` (`--add-cloudsql-instances`).
    #[serde(default)]
    pub cloud_sql_instances: Vec<String>,
    /// HTTP/2 end to end (`--use-http2`): the container receives cleartext HTTP/2 (h2c), as
    /// gRPC servers need.
    #[serde(default)]
    pub http2: Option<bool>,
    /// Cloud Run's probe while an instance starts; it takes no requests until the probe passes.
    #[serde(default)]
    pub startup_probe: Option<Probe>,
    /// Cloud Run's probe of a running instance; one that keeps failing is restarted.
    #[serde(default)]
    pub liveness_probe: Option<Probe>,
    /// Secret Manager secrets mounted as files (`--set-secrets=/PATH=SECRET:VERSION`).
    #[serde(default)]
    pub secret_volumes: Vec<SecretVolume>,
    /// A tag the newest revision also gets, moved from the revision that had it (the data
    /// pipeline's `--tag blue`): a fixed URL for the candidate, `https://TAG---SERVICE-…`.
    #[serde(default)]
    pub candidate_tag: Option<String>,
    /// The Cloud Scheduler API's base URL, for `scheduler-job` resources; by default Google's
    /// (`https://cloudscheduler.googleapis.com`), or `endpoint` when that names a test server.
    #[serde(default)]
    pub scheduler_endpoint: Option<String>,
    /// Whether `plan` looks up what the service names (its service account, VPC connector and
    /// secret versions) so a typo fails the plan rather than the rollout. On by default; a
    /// deploying identity that may not read them can turn it off.
    #[serde(default = "yes")]
    pub check_references: bool,
    /// Seconds between polls of a long-running operation.
    #[serde(default = "default_poll")]
    pub poll_interval_ms: u64,
}

/// A startup or liveness probe: an HTTP GET of `path`, a TCP connection, or a gRPC health
/// check, on the container's port unless `port` says otherwise.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub tcp: bool,
    /// The gRPC service to check (`""` for the server as a whole).
    #[serde(default)]
    pub grpc_service: Option<String>,
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

/// A secret mounted as a file: `mount_path/file`, holding `version` of `secret`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SecretVolume {
    pub secret: String,
    pub mount_path: String,
    /// The file's name in `mount_path`; the secret's name by default.
    #[serde(default)]
    pub file: Option<String>,
    #[serde(default = "latest")]
    pub version: String,
}

fn latest() -> String {
    "latest".into()
}

fn default_endpoint() -> String {
    "https://run.googleapis.com".into()
}

fn yes() -> bool {
    true
}

fn default_poll() -> u64 {
    1000
}

pub const CONFIG_SCHEMA: &str = r##"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "cloudrun provider",
  "type": "object",
  "properties": {
    "project": { "type": "string", "description": "The Google Cloud project id." },
    "service_id": { "type": "string", "description": "The Cloud Run service id, when it differs from the pipeline's service name." },
    "region": { "type": "string", "description": "The region, such as europe-west1." },
    "scheduler_endpoint": { "type": "string", "description": "The Cloud Scheduler API's base URL (scheduler-job resources); by default Google's, or `endpoint` when that names a test server." },
    "regions": { "type": "array", "items": { "type": "string" }, "description": "Several regions, deployed in lockstep." },
    "endpoint": { "type": "string", "default": "https://run.googleapis.com", "description": "The Cloud Run Admin API; only a test server needs another." },
    "ingress": { "enum": ["all", "internal", "internal-and-cloud-load-balancing"], "description": "Who can reach the service; default from the service's ingress." },
    "service_account": { "type": "string", "description": "The revision's service account." },
    "timeout": { "type": "string", "description": "The request timeout, such as 300s." },
    "vpc_connector": { "type": "string", "description": "projects/P/locations/L/connectors/NAME" },
    "vpc_egress": { "enum": ["all-traffic", "private-ranges-only"] },
    "invokers": { "type": "array", "items": { "type": "string" }, "description": "Members granted roles/run.invoker; allUsers makes the service public." },
    "execution_environment": { "enum": ["gen1", "gen2"] },
    "cpu_throttling": { "type": "boolean", "description": "false keeps the CPU allocated between requests." },
    "startup_cpu_boost": { "type": "boolean", "description": "More CPU while an instance starts (--cpu-boost)." },
    "cloud_sql_instances": { "type": "array", "items": { "type": "string", "pattern": "^[a-z0-9-.:]+:[a-z0-9-]+:[a-z0-9-]+$" }, "description": "Cloud SQL instances (PROJECT:REGION:INSTANCE), reachable at /cloudsql/PROJECT:REGION:INSTANCE." },
    "http2": { "type": "boolean", "description": "HTTP/2 end to end (h2c to the container), as gRPC servers need." },
    "startup_probe": { "$ref": "#/$defs/probe", "description": "Probe while an instance starts." },
    "liveness_probe": { "$ref": "#/$defs/probe", "description": "Probe of a running instance; failing ones are restarted." },
    "secret_volumes": { "type": "array", "items": { "type": "object", "properties": {
        "secret": { "type": "string", "description": "The Secret Manager secret's name." },
        "mount_path": { "type": "string", "pattern": "^/", "description": "The directory the file appears in." },
        "file": { "type": "string", "description": "The file's name; the secret's name by default." },
        "version": { "type": "string", "default": "latest" }
      }, "required": ["secret", "mount_path"], "additionalProperties": false },
      "description": "Secrets mounted as files." },
    "candidate_tag": { "type": "string", "pattern": "^[a-z][a-z0-9-]{0,45}$", "description": "A tag the newest revision also gets, moved from the one that had it (such as blue)." },
    "check_references": { "type": "boolean", "default": true, "description": "Whether plan looks up the service account, VPC connector and secret versions the service names (IAM, VPC Access and Secret Manager APIs)." },
    "poll_interval_ms": { "type": "integer", "minimum": 10, "maximum": 60000, "default": 1000 }
  },
  "required": ["project"],
  "additionalProperties": false,
  "$defs": {
    "probe": { "type": "object", "properties": {
      "path": { "type": "string", "pattern": "^/", "description": "HTTP GET of this path." },
      "tcp": { "type": "boolean", "description": "A TCP connection instead of an HTTP GET." },
      "grpc_service": { "type": "string", "description": "A gRPC health check of this service instead." },
      "port": { "type": "integer", "minimum": 1, "maximum": 65535 },
      "initial_delay_seconds": { "type": "integer", "minimum": 0, "maximum": 240 },
      "period_seconds": { "type": "integer", "minimum": 1, "maximum": 240 },
      "timeout_seconds": { "type": "integer", "minimum": 1, "maximum": 240 },
      "failure_threshold": { "type": "integer", "minimum": 1 }
    }, "additionalProperties": false }
  }
}"##;

impl Config {
    pub fn parse(text: &str) -> Result<Config, Error> {
        let text = if text.trim().is_empty() { "{}" } else { text };
        let config: Config = serde_json::from_str(text)
            .map_err(|e| Error::invalid_config(format!("cloudrun provider configuration: {e}")))?;
        let valid_id = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        };
        if !valid_id(&config.project) {
            return Err(Error::invalid_config(format!(
                "cloudrun `project` {:?} is not a project id (lowercase letters, digits, hyphens)",
                config.project
            )));
        }
        match (&config.region, config.regions.is_empty()) {
            (None, true) => {
                return Err(Error::invalid_config(
                    "cloudrun needs `region = \"europe-west1\"` or `regions = [...]`",
                ));
            }
            (Some(_), false) => {
                return Err(Error::invalid_config(
                    "cloudrun: set `region` or `regions`, not both",
                ));
            }
            _ => {}
        }
        if let Some(id) = &config.service_id
            && (!valid_id(id) || !id.starts_with(|c: char| c.is_ascii_lowercase()) || id.len() > 49)
        {
            return Err(Error::invalid_config(format!(
                "cloudrun `service_id` {id:?}: a lowercase letter first, then lowercase letters, digits and hyphens, under 50 characters"
            )));
        }
        if let Some(region) = config.regions().iter().find(|r| !valid_id(r)) {
            return Err(Error::invalid_config(format!(
                "cloudrun region {region:?} is not a region name such as europe-west1"
            )));
        }
        if let Some(t) = &config.timeout {
            // Cloud Run's own ceiling for a request timeout.
            engine_sdk::duration::parse(
                "cloudrun `timeout`",
                t,
                std::time::Duration::from_secs(3600),
            )?;
        }
        for (name, probe) in [
            ("startup_probe", &config.startup_probe),
            ("liveness_probe", &config.liveness_probe),
        ] {
            if let Some(probe) = probe {
                probe.check(name)?;
            }
        }
        if !config.endpoint.starts_with("https://")
            && !config.endpoint.starts_with("http://127.0.0.1:")
            && !config.endpoint.starts_with("http://localhost:")
        {
            return Err(Error::invalid_config(format!(
                "cloudrun `endpoint` {:?} must be https (plain http only for a test server on loopback)",
                config.endpoint
            )));
        }
        Ok(config)
    }

    /// The Cloud Scheduler API's base URL.
    pub fn scheduler_endpoint(&self) -> String {
        match &self.scheduler_endpoint {
            Some(endpoint) => endpoint.clone(),
            None => self.google_api("cloudscheduler"),
        }
    }

    /// The base URL of another Google API the provider calls (`iam`, `vpcaccess`,
    /// `secretmanager`): Google's, or `endpoint` when that names a test server, which serves
    /// them all.
    pub fn google_api(&self, service: &str) -> String {
        match self.endpoint == default_endpoint() {
            true => format!("https://{service}.googleapis.com"),
            false => self.endpoint.trim_end_matches('/').to_string(),
        }
    }

    /// Whether the container is reached over cleartext HTTP/2.
    pub fn http2(&self) -> bool {
        self.http2 == Some(true)
    }

    /// The Cloud Run service id for the pipeline's service `name`.
    pub fn id<'a>(&'a self, name: &'a str) -> &'a str {
        self.service_id.as_deref().unwrap_or(name)
    }

    /// The regions, in order; the first is where reads look first.
    pub fn regions(&self) -> Vec<String> {
        match &self.region {
            Some(r) => vec![r.clone()],
            None => self.regions.clone(),
        }
    }

    /// The request timeout as the API writes durations (`300s`).
    pub fn timeout_text(&self) -> Option<String> {
        self.timeout
            .as_deref()
            .and_then(|t| humantime::parse_duration(t).ok())
            .map(|d| format!("{}s", d.as_secs()))
    }
}

impl Probe {
    /// Exactly one way to probe.
    fn check(&self, name: &str) -> Result<(), Error> {
        let ways = [self.path.is_some(), self.tcp, self.grpc_service.is_some()];
        match ways.iter().filter(|w| **w).count() {
            1 => Ok(()),
            0 => Err(Error::invalid_config(format!(
                "cloudrun `{name}`: say how to probe: `path = \"/health\"` (HTTP GET), `tcp = true` or `grpc_service = \"\"`"
            ))),
            _ => Err(Error::invalid_config(format!(
                "cloudrun `{name}`: give one of `path`, `tcp` and `grpc_service`, not several"
            ))),
        }
    }
}
