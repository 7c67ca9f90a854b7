//! The `local` provider: deploys services to the local platform (`engine local up`) through its
//! admin API on loopback. An ordinary sandboxed provider: it needs only an HTTP grant for the
//! admin address (`allow_http = ["http://localhost:7700"]`), nothing else.
//!
//! A service's `artifact` is the program to run (a path, or a name on the platform's `PATH`),
//! with its `args` (`{port}` stands for the instance's port) and `env`; the platform adds `PORT`.
//! `min_instances` sets how many copies run behind the revision's URL.

use engine_sdk::http::{Client, RequestBuilder};
use engine_sdk::secrets::Secret;
use engine_sdk::{
    Artifact, Capabilities, DeploymentPlan, Diagnostic, Endpoint, EndpointKind, Error, ErrorExt,
    Feature, PlanAction, PluginInfo, Provider, Revision, ServiceRef, ServiceSpec, ServiceStatus,
    Severity, TrafficTarget,
};
use local_api::{RevisionRequest, RevisionState, RevisionView, ServiceView, Weight};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// The provider's configuration (`provider_config` of a service).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The platform's admin API.
    pub admin: String,
    /// How long a new revision gets to accept connections, in seconds.
    pub ready_timeout_seconds: u64,
    /// The front door's port on 127.0.0.1; none for any free port.
    pub port: Option<u16>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            admin: local_api::DEFAULT_ADMIN.into(),
            ready_timeout_seconds: 20,
            port: None,
        }
    }
}

pub const CONFIG_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "local provider",
  "type": "object",
  "properties": {
    "admin": { "type": "string", "default": "http://localhost:7700", "description": "The local platform's admin API; grant it with allow_http." },
    "ready_timeout_seconds": { "type": "integer", "minimum": 1, "maximum": 25, "default": 20, "description": "How long a new revision gets to accept connections." },
    "port": { "type": "integer", "minimum": 1, "maximum": 65535, "description": "The front door's port on 127.0.0.1; default any free port." }
  },
  "additionalProperties": false
}"#;

fn parse_config(text: &str) -> Result<Config, Error> {
    let text = if text.trim().is_empty() { "{}" } else { text };
    let config: Config = serde_json::from_str(text)
        .map_err(|e| Error::invalid_config(format!("local provider configuration: {e}")))?;
    if !config.admin.starts_with("http://localhost:")
        && !config.admin.starts_with("http://127.0.0.1:")
    {
        return Err(Error::invalid_config(format!(
            "`admin` {:?} is not on loopback; the local platform listens on http://localhost:PORT",
            config.admin
        )));
    }
    Ok(config)
}

/// The admin API's client: every request carries the platform's access token, which the
/// engine brokers for its own `local` provider (the plugin holds only a placeholder).
struct Admin {
    client: Client,
    token: Option<Secret>,
}

impl Admin {
    fn request(&self, method: &str, url: &str) -> RequestBuilder<'_> {
        let request = self.client.request(method, url);
        match &self.token {
            Some(token) => request.bearer(token),
            None => request,
        }
    }
}

fn client(timeout: Duration) -> Admin {
    Admin {
        client: Client::new().with_timeout(timeout),
        token: Secret::open(local_api::SECRET_NAME).ok(),
    }
}

fn service_url(config: &Config, service: &str) -> String {
    format!(
        "{}/v1/services/{service}",
        config.admin.trim_end_matches('/')
    )
}

/// The platform is not running: say how to start it.
fn explain(e: Error, config: &Config) -> Error {
    let text = e.describe();
    if matches!(e, Error::Unauthorized(_)) {
        Error::fatal(format!(
            "the local platform at {} refused the call without its access token ({text}); only the engine's built-in `local` provider is given it",
            config.admin
        ))
    } else if text.contains("connect") || text.contains("refused") {
        Error::transient(format!(
            "the local platform does not answer at {} ({text}); start it with `engine local up`",
            config.admin
        ))
    } else {
        e
    }
}

fn fetch(config: &Config, service: &str) -> Result<Option<ServiceView>, Error> {
    match client(Duration::from_secs(10))
        .request("GET", &service_url(config, service))
        .send()
    {
        Ok(r) => r.json().map(Some),
        Err(e) if e.describe().contains("HTTP 404") || matches!(e, Error::NotFound(_)) => Ok(None),
        Err(e) => Err(explain(e, config)),
    }
}

fn revision(view: &RevisionView) -> Revision {
    Revision {
        id: view.id.clone(),
        artifact: Some(view.artifact.clone()),
        created_at_ms: Some(view.created_at_ms),
        ready: view.state == RevisionState::Ready,
        message: view.message.clone(),
    }
}

fn traffic(weights: &[Weight]) -> Vec<TrafficTarget> {
    weights
        .iter()
        .filter(|w| w.percent > 0)
        .map(|w| TrafficTarget {
            revision: w.revision.clone(),
            percent: w.percent,
        })
        .collect()
}

fn program(spec: &ServiceSpec) -> Result<String, Error> {
    match &spec.artifact {
        Artifact::Path(p) => Ok(p.clone()),
        Artifact::Image(i) => Err(Error::invalid_config(format!(
            "the local platform runs programs, not container images ({i}); set `artifact = \"path/to/program\"` instead of `image`"
        ))),
    }
}

/// What the platform runs for a spec, in the form `plan` compares.
fn deployed_form(spec: &ServiceSpec) -> serde_json::Value {
    let env: BTreeMap<&str, &str> = spec
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut form = serde_json::json!({
        "artifact": match &spec.artifact { Artifact::Path(p) | Artifact::Image(p) => p },
        "args": spec.args,
        "env": env,
        "instances": spec.scaling.min_instances.unwrap_or(1).max(1),
    });
    // Only when there are some, so services deployed before secrets existed plan no change.
    if !spec.secrets.is_empty() {
        form["secrets"] = serde_json::json!(secret_references(spec));
    }
    form
}

/// Variable name → reference; the platform reads the values, this plugin never sees them.
fn secret_references(spec: &ServiceSpec) -> BTreeMap<String, String> {
    spec.secrets
        .iter()
        .map(|s| (s.name.clone(), s.reference.clone()))
        .collect()
}

pub struct Local;

impl Provider for Local {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "local".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Runs services as local processes on the local platform (engine local)"
                .into(),
            config_schema: CONFIG_SCHEMA.into(),
            features: vec![
                Feature::TrafficSplit,
                Feature::RevisionUrls,
                Feature::RetireRevisions,
            ],
            capabilities: Capabilities {
                http: vec!["http://localhost:*".into()],
                env: Vec::new(),
                dirs: Vec::new(),
                secrets: vec![local_api::SECRET_NAME.into()],
            },
        }
    }

    fn validate(spec: ServiceSpec) -> Vec<Diagnostic> {
        let mut problems = Vec::new();
        let mut error = |path: &str, e: Error, hint: Option<&str>| {
            problems.push(Diagnostic {
                severity: Severity::Error,
                path: path.into(),
                message: e.describe(),
                hint: hint.map(String::from),
            })
        };
        if let Err(e) = parse_config(&spec.config) {
            error("", e, None);
        }
        if let Err(e) = program(&spec) {
            error("", e, Some("the quickstart's demo service is an example"));
        }
        for s in spec
            .secrets
            .iter()
            .filter(|s| !local_api::is_secret_reference(&s.reference))
        {
            error(
                "",
                Error::invalid_config(format!(
                    "secret `{}`: the local platform reads secrets from its own environment or a file, and {:?} is neither",
                    s.name, s.reference
                )),
                Some(
                    "write env:VARIABLE or file:/absolute/path, for example in a local environment override",
                ),
            );
        }
        problems
    }

    fn read(service: ServiceRef) -> Result<Option<ServiceStatus>, Error> {
        let config = parse_config(&service.config)?;
        let Some(view) = fetch(&config, &service.name)? else {
            return Ok(None);
        };
        let serving = view
            .traffic
            .iter()
            .max_by_key(|w| w.percent)
            .and_then(|w| view.revisions.iter().find(|r| r.id == w.revision));
        Ok(Some(ServiceStatus {
            revisions: view.revisions.iter().map(revision).collect(),
            traffic: traffic(&view.traffic),
            url: Some(view.url.clone()),
            deployed: serving.map_or("{}".into(), |r| r.spec.to_string()),
        }))
    }

    fn plan(desired: ServiceSpec, current: Option<ServiceStatus>) -> Result<DeploymentPlan, Error> {
        let after = deployed_form(&desired);
        let Some(current) = current else {
            return Ok(DeploymentPlan {
                action: PlanAction::Create,
                changes: Vec::new(),
                summary: format!("create {} on the local platform", desired.name),
            });
        };
        Ok(engine_sdk::update_plan(
            &current.deployed,
            &after,
            &["artifact", "args", "env", "secrets", "instances"],
        ))
    }

    fn deploy(spec: ServiceSpec, deployment_id: String) -> Result<Revision, Error> {
        let config = parse_config(&spec.config)?;
        let id = format!("{}-{deployment_id}", spec.name);
        let request = RevisionRequest {
            command: program(&spec)?,
            args: spec.args.clone(),
            env: spec.env.iter().cloned().collect(),
            secrets: secret_references(&spec),
            instances: spec.scaling.min_instances.unwrap_or(1).max(1),
            artifact: match &spec.artifact {
                Artifact::Path(p) | Artifact::Image(p) => p.clone(),
            },
            spec: deployed_form(&spec),
            ready_timeout_ms: config.ready_timeout_seconds * 1000,
            front_port: config.port,
        };
        // The platform answers once the revision is ready; the same id twice creates it once.
        let url = format!("{}/revisions/{id}", service_url(&config, &spec.name));
        let timeout = Duration::from_secs(config.ready_timeout_seconds + 4);
        match client(timeout).request("PUT", &url).json(&request).send() {
            Ok(r) => r.json::<RevisionView>().map(|v| revision(&v)),
            // The platform refuses a revision that cannot start, with its log's end: no retry
            // will fix that, so it is fatal rather than "invalid config".
            Err(Error::InvalidConfig(message)) => Err(Error::fatal(message)),
            Err(e) => Err(explain(e, &config)),
        }
    }

    fn set_traffic(service: ServiceRef, split: Vec<TrafficTarget>) -> Result<(), Error> {
        let config = parse_config(&service.config)?;
        let weights: Vec<Weight> = split
            .iter()
            .map(|t| Weight {
                revision: t.revision.clone(),
                percent: t.percent,
            })
            .collect();
        client(Duration::from_secs(10))
            .request(
                "PUT",
                &format!("{}/traffic", service_url(&config, &service.name)),
            )
            .json(&weights)
            .send()
            .map(drop)
            .map_err(|e| explain(e, &config))
    }

    fn get_traffic(service: ServiceRef) -> Result<Vec<TrafficTarget>, Error> {
        let config = parse_config(&service.config)?;
        match fetch(&config, &service.name)? {
            Some(view) => Ok(traffic(&view.traffic)),
            None => Ok(Vec::new()),
        }
    }

    fn endpoints(service: ServiceRef, revision: Option<String>) -> Result<Vec<Endpoint>, Error> {
        let config = parse_config(&service.config)?;
        let view = fetch(&config, &service.name)?.ok_or_else(|| {
            Error::not_found(format!(
                "the local platform has no service `{}`",
                service.name
            ))
        })?;
        let mut out = Vec::new();
        if let Some(id) = revision {
            let r = view.revisions.iter().find(|r| r.id == id).ok_or_else(|| {
                Error::not_found(format!("`{}` has no revision {id}", service.name))
            })?;
            out.push(Endpoint {
                url: r.url.clone(),
                kind: EndpointKind::Revision,
                revision: Some(id),
            });
        }
        out.push(Endpoint {
            url: view.url.clone(),
            kind: EndpointKind::Service,
            revision: None,
        });
        Ok(out)
    }

    fn retire(service: ServiceRef, revision: String) -> Result<(), Error> {
        let config = parse_config(&service.config)?;
        let url = format!(
            "{}/revisions/{revision}",
            service_url(&config, &service.name)
        );
        match client(Duration::from_secs(20))
            .request("DELETE", &url)
            .send()
        {
            Ok(_) => Ok(()),
            Err(Error::NotFound(_)) => Ok(()),
            Err(e) => Err(explain(e, &config)),
        }
    }

    fn destroy(service: ServiceRef) -> Result<(), Error> {
        let config = parse_config(&service.config)?;
        client(Duration::from_secs(20))
            .request("DELETE", &service_url(&config, &service.name))
            .send()
            .map(drop)
            .map_err(|e| explain(e, &config))
    }
}

engine_sdk::export_provider!(Local);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_address_must_be_loopback() {
        assert!(parse_config("{}").is_ok());
        assert!(parse_config(r#"{"admin": "http://localhost:9000"}"#).is_ok());
        let err = parse_config(r#"{"admin": "http://10.0.0.5:7700"}"#).unwrap_err();
        assert!(
            err.describe().contains("not on loopback"),
            "{}",
            err.describe()
        );
    }

    #[test]
    fn images_and_unknown_secret_references_are_refused_with_a_hint() {
        let spec = ServiceSpec {
            name: "api".into(),
            artifact: Artifact::Image("api:1".into()),
            args: vec![],
            env: vec![],
            secrets: vec![engine_sdk::SecretEnv {
                name: "DB".into(),
                reference: "x".into(),
            }],
            resources: engine_sdk::Resources {
                cpu_millis: None,
                memory_mib: None,
            },
            scaling: engine_sdk::Scaling {
                min_instances: None,
                max_instances: None,
                concurrency: None,
            },
            port: None,
            ingress: engine_sdk::Ingress::Public,
            labels: vec![],
            config: "{}".into(),
        };
        let problems = Local::validate(spec.clone());
        assert_eq!(problems.len(), 2);
        assert!(problems[0].message.contains("not container images"));
        assert!(
            problems[1].message.contains("\"x\" is neither"),
            "{}",
            problems[1].message
        );
        let local = ServiceSpec {
            artifact: Artifact::Path("/bin/true".into()),
            secrets: vec![
                engine_sdk::SecretEnv {
                    name: "DB".into(),
                    reference: "env:DB_PASSWORD".into(),
                },
                engine_sdk::SecretEnv {
                    name: "KEY".into(),
                    reference: "file:/run/secrets/key".into(),
                },
            ],
            ..spec
        };
        assert!(Local::validate(local.clone()).is_empty());
        assert_eq!(
            deployed_form(&local)["secrets"],
            serde_json::json!({ "DB": "env:DB_PASSWORD", "KEY": "file:/run/secrets/key" })
        );
    }
}
