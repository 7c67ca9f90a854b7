//! A provider for the engine's own tests. Its "platform" is a directory the pipeline grants as
//! `/platform`: one JSON file per service with its revisions, traffic split and a count of every
//! call, so a test can see exactly what the engine asked for (a duplicate deploy, a traffic
//! step) after the run, even after the engine was killed.
//!
//! Its `provider_config` sets latency and failures:
//! `{"latency_ms": 50, "fail": {"set-traffic": "transient"}, "fail_times": 2}` makes the first
//! two `set-traffic` calls fail with a transient error, each call taking 50 ms.
//!
//! `{"flaws": ["deploy-twice", ...]}` breaks the provider contract on purpose, so the tests of
//! `engine plugins check` can show each rule failing: see [`Flaw`].

use engine_sdk::{
    Artifact, Capabilities, DeploymentPlan, Diagnostic, DirNeed, Endpoint, EndpointKind, Error,
    ErrorExt, Feature, PlanAction, PluginInfo, Provider, Revision, ServiceRef, ServiceSpec,
    ServiceStatus, Severity, TrafficTarget,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Where the platform lives inside the sandbox.
pub const PLATFORM_DIR: &str = "/platform";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub latency_ms: u64,
    /// Verb → error kind (`transient`, `fatal`, `rate-limited`, `conflict`, `unauthorized`).
    #[serde(default)]
    pub fail: BTreeMap<String, String>,
    /// How many times each failing verb fails before it succeeds; unlimited when absent.
    #[serde(default)]
    pub fail_times: Option<u32>,
    /// Verb (`deploy`, `set-traffic`, `retire`, `destroy`) → how long the call keeps going
    /// after its change is stored (like a platform whose operation finishes late), so a test
    /// can stop the engine in exactly that gap: the platform changed, the engine not told yet.
    #[serde(default)]
    pub hold_after_ms: BTreeMap<String, u64>,
    /// Where the platform directory is; the default is the granted `/platform`.
    #[serde(default)]
    pub dir: Option<String>,
    /// Rules of the provider contract to break.
    #[serde(default)]
    pub flaws: Vec<Flaw>,
}

/// A way to break the provider contract, for the conformance kit's own tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Flaw {
    /// A repeated deploy creates another revision instead of finding its own.
    DeployTwice,
    /// `plan` always reports an update, even right after a deploy.
    PlanAlwaysUpdates,
    /// `plan` writes to the platform (and so fails in a dry run, whose directories are
    /// read-only).
    PlanWrites,
    /// `set-traffic` returns before the split takes effect: `get-traffic` still reports the
    /// old one.
    TrafficLate,
    /// `retire` of a revision that does not exist fails.
    RetireMissingFails,
}

impl Config {
    fn has(&self, flaw: Flaw) -> bool {
        self.flaws.contains(&flaw)
    }
}

pub const CONFIG_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "properties": {
    "latency_ms": { "type": "integer", "minimum": 0 },
    "fail": { "type": "object", "additionalProperties": { "enum": ["transient", "fatal", "rate-limited", "conflict", "unauthorized"] } },
    "fail_times": { "type": "integer", "minimum": 0 },
    "hold_after_ms": { "type": "object", "additionalProperties": { "type": "integer", "minimum": 0 } },
    "dir": { "type": "string" },
    "flaws": { "type": "array", "items": { "enum": ["deploy-twice", "plan-always-updates", "plan-writes", "traffic-late", "retire-missing-fails"] } }
  },
  "additionalProperties": false
}"#;

/// One service on the test platform.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceRecord {
    pub revisions: Vec<RevisionRecord>,
    pub traffic: Vec<(String, u8)>,
    /// Every call by verb, for tests to assert on.
    pub calls: BTreeMap<String, u32>,
    /// Failures served so far, by verb.
    pub failures: BTreeMap<String, u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RevisionRecord {
    pub id: String,
    pub artifact: String,
    pub retired: bool,
    /// What the revision runs, in the form `plan` compares.
    pub spec: serde_json::Value,
}

impl ServiceRecord {
    /// The deployed form of the revision serving most traffic: what users get today.
    fn serving(&self) -> serde_json::Value {
        let leader = self
            .traffic
            .iter()
            .max_by_key(|(_, p)| *p)
            .map(|(r, _)| r.as_str());
        self.revisions
            .iter()
            .find(|r| Some(r.id.as_str()) == leader)
            .map_or(serde_json::json!({}), |r| r.spec.clone())
    }
}

fn parse_config(text: &str) -> Result<Config, Error> {
    let text = if text.trim().is_empty() { "{}" } else { text };
    serde_json::from_str(text)
        .map_err(|e| Error::invalid_config(format!("test provider config: {e}")))
}

fn file(config: &Config, service: &str) -> PathBuf {
    PathBuf::from(config.dir.as_deref().unwrap_or(PLATFORM_DIR)).join(format!("{service}.json"))
}

fn load(config: &Config, service: &str) -> Result<Option<ServiceRecord>, Error> {
    match std::fs::read_to_string(file(config, service)) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::fatal(format!("corrupt platform file: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::fatal(format!(
            "cannot read the platform directory: {e}"
        ))),
    }
}

/// Writes through a temporary file and a rename, so a killed call leaves the old state.
fn store(config: &Config, service: &str, record: &ServiceRecord) -> Result<(), Error> {
    let path = file(config, service);
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(record).expect("records serialise");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| Error::fatal(format!("cannot write the platform directory: {e}")))
}

/// Verbs that only look: they write nothing, so they also work in a read-only dry run, and
/// their calls and failures are not counted (a failing read fails every time).
const READ_ONLY: &[&str] = &["read", "get-traffic"];

/// Keeps a call going after its change, as long as the config says for `verb`.
fn hold(config: &Config, verb: &str) {
    if let Some(ms) = config.hold_after_ms.get(verb) {
        std::thread::sleep(std::time::Duration::from_millis(*ms));
    }
}

/// Counts the call, sleeps the configured latency, and fails when the config says so.
fn enter(config: &Config, service: &str, verb: &str) -> Result<ServiceRecord, Error> {
    if config.latency_ms > 0 {
        std::thread::sleep(std::time::Duration::from_millis(config.latency_ms));
    }
    let mut record = load(config, service)?.unwrap_or_default();
    let counted = !READ_ONLY.contains(&verb);
    if counted {
        *record.calls.entry(verb.to_string()).or_default() += 1;
    }
    if let Some(kind) = config.fail.get(verb) {
        let served = record.failures.entry(verb.to_string()).or_default();
        if config.fail_times.is_none_or(|n| *served < n) {
            *served += 1;
            if counted {
                store(config, service, &record)?;
            }
            let message = format!("{verb} failed on purpose");
            return Err(match kind.as_str() {
                "transient" => Error::transient(message),
                "rate-limited" => Error::rate_limited(message, Some(10)),
                "conflict" => Error::conflict(message),
                "unauthorized" => Error::unauthorized(message),
                _ => Error::fatal(message),
            });
        }
    }
    if counted {
        store(config, service, &record)?;
    }
    Ok(record)
}

fn artifact_text(a: &Artifact) -> String {
    match a {
        Artifact::Image(i) | Artifact::Path(i) => i.clone(),
    }
}

/// The deployed form the plan compares.
fn deployed_form(spec: &ServiceSpec) -> serde_json::Value {
    serde_json::json!({ "artifact": artifact_text(&spec.artifact), "env": spec.env, "args": spec.args, "port": spec.port })
}

pub struct TestProvider;

impl Provider for TestProvider {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "test-provider".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Test platform in a directory; configurable latency and failures".into(),
            config_schema: CONFIG_SCHEMA.into(),
            features: vec![
                Feature::TrafficSplit,
                Feature::RevisionUrls,
                Feature::RetireRevisions,
            ],
            capabilities: Capabilities {
                http: Vec::new(),
                env: Vec::new(),
                dirs: vec![DirNeed {
                    path: PLATFORM_DIR.into(),
                    writable: true,
                    purpose: "the test platform's state".into(),
                }],
                secrets: Vec::new(),
            },
        }
    }

    fn validate(spec: ServiceSpec) -> Vec<Diagnostic> {
        match parse_config(&spec.config) {
            Ok(_) => Vec::new(),
            Err(e) => vec![Diagnostic {
                severity: Severity::Error,
                path: String::new(),
                message: e.describe(),
                hint: None,
            }],
        }
    }

    fn read(service: ServiceRef) -> Result<Option<ServiceStatus>, Error> {
        let config = parse_config(&service.config)?;
        let record = enter(&config, &service.name, "read")?;
        if record.revisions.is_empty() {
            return Ok(None);
        }
        Ok(Some(ServiceStatus {
            revisions: record
                .revisions
                .iter()
                .rev()
                .filter(|r| !r.retired)
                .map(|r| Revision {
                    id: r.id.clone(),
                    artifact: Some(r.artifact.clone()),
                    created_at_ms: None,
                    ready: true,
                    message: None,
                })
                .collect(),
            traffic: record
                .traffic
                .iter()
                .map(|(r, p)| TrafficTarget {
                    revision: r.clone(),
                    percent: *p,
                })
                .collect(),
            url: Some(format!("http://{}.test.invalid/", service.name)),
            deployed: record.serving().to_string(),
        }))
    }

    fn plan(desired: ServiceSpec, current: Option<ServiceStatus>) -> Result<DeploymentPlan, Error> {
        let config = parse_config(&desired.config)?;
        if config.has(Flaw::PlanWrites) {
            enter(&config, &desired.name, "plan")?;
        }
        let after = deployed_form(&desired);
        if config.has(Flaw::PlanAlwaysUpdates) && current.is_some() {
            return Ok(DeploymentPlan {
                action: PlanAction::Update,
                changes: Vec::new(),
                summary: format!("update {}", desired.name),
            });
        }
        let Some(current) = current else {
            return Ok(DeploymentPlan {
                action: PlanAction::Create,
                changes: Vec::new(),
                summary: format!("create {}", desired.name),
            });
        };
        Ok(engine_sdk::update_plan(
            &current.deployed,
            &after,
            &["artifact", "env", "args", "port"],
        ))
    }

    fn deploy(spec: ServiceSpec, deployment_id: String) -> Result<Revision, Error> {
        let config = parse_config(&spec.config)?;
        let mut record = enter(&config, &spec.name, "deploy")?;
        let id = if config.has(Flaw::DeployTwice) {
            format!(
                "{}-{deployment_id}-{}",
                spec.name,
                record.revisions.len() + 1
            )
        } else {
            format!("{}-{deployment_id}", spec.name)
        };
        // A repeated deploy (after a crash) finds its revision instead of making another.
        if !record.revisions.iter().any(|r| r.id == id) {
            record.revisions.push(RevisionRecord {
                id: id.clone(),
                artifact: artifact_text(&spec.artifact),
                retired: false,
                spec: deployed_form(&spec),
            });
            *record.calls.entry("deploy-created".into()).or_default() += 1;
            if record.traffic.is_empty() {
                record.traffic.push((id.clone(), 0));
            }
            store(&config, &spec.name, &record)?;
            hold(&config, "deploy");
        }
        Ok(Revision {
            id,
            artifact: Some(artifact_text(&spec.artifact)),
            created_at_ms: None,
            ready: true,
            message: None,
        })
    }

    fn set_traffic(service: ServiceRef, split: Vec<TrafficTarget>) -> Result<(), Error> {
        let config = parse_config(&service.config)?;
        let mut record = enter(&config, &service.name, "set-traffic")?;
        for t in &split {
            if !record
                .revisions
                .iter()
                .any(|r| r.id == t.revision && !r.retired)
            {
                return Err(Error::not_found(format!(
                    "revision {} does not exist",
                    t.revision
                )));
            }
        }
        if config.has(Flaw::TrafficLate) {
            return Ok(());
        }
        record.traffic = split
            .into_iter()
            .filter(|t| t.percent > 0)
            .map(|t| (t.revision, t.percent))
            .collect();
        store(&config, &service.name, &record)?;
        hold(&config, "set-traffic");
        Ok(())
    }

    fn get_traffic(service: ServiceRef) -> Result<Vec<TrafficTarget>, Error> {
        let config = parse_config(&service.config)?;
        let record = enter(&config, &service.name, "get-traffic")?;
        Ok(record
            .traffic
            .iter()
            .filter(|(_, p)| *p > 0)
            .map(|(r, p)| TrafficTarget {
                revision: r.clone(),
                percent: *p,
            })
            .collect())
    }

    fn endpoints(service: ServiceRef, revision: Option<String>) -> Result<Vec<Endpoint>, Error> {
        Ok(vec![match revision {
            Some(r) => Endpoint {
                url: format!("http://{r}.{}.test.invalid/", service.name),
                kind: EndpointKind::Revision,
                revision: Some(r),
            },
            None => Endpoint {
                url: format!("http://{}.test.invalid/", service.name),
                kind: EndpointKind::Service,
                revision: None,
            },
        }])
    }

    fn retire(service: ServiceRef, revision: String) -> Result<(), Error> {
        let config = parse_config(&service.config)?;
        let mut record = enter(&config, &service.name, "retire")?;
        if record.traffic.iter().any(|(r, p)| *r == revision && *p > 0) {
            return Err(Error::conflict(format!(
                "revision {revision} still takes traffic"
            )));
        }
        if config.has(Flaw::RetireMissingFails)
            && !record.revisions.iter().any(|r| r.id == revision)
        {
            return Err(Error::not_found(format!(
                "revision {revision} does not exist"
            )));
        }
        for r in record.revisions.iter_mut().filter(|r| r.id == revision) {
            r.retired = true;
        }
        store(&config, &service.name, &record)?;
        hold(&config, "retire");
        Ok(())
    }

    fn destroy(service: ServiceRef) -> Result<(), Error> {
        let config = parse_config(&service.config)?;
        enter(&config, &service.name, "destroy")?;
        match std::fs::remove_file(file(&config, &service.name)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::fatal(format!("cannot remove the service: {e}"))),
        }
        hold(&config, "destroy");
        Ok(())
    }
}

engine_sdk::export_provider!(TestProvider);

#[cfg(test)]
mod tests {
    use super::*;
    use engine_sdk::{Ingress, Resources, Scaling};

    fn spec(dir: &str, image: &str, config: serde_json::Value) -> ServiceSpec {
        let mut config = config;
        config["dir"] = dir.into();
        ServiceSpec {
            name: "api".into(),
            artifact: Artifact::Image(image.into()),
            args: vec![],
            env: vec![],
            secrets: vec![],
            resources: Resources {
                cpu_millis: None,
                memory_mib: None,
            },
            scaling: Scaling {
                min_instances: None,
                max_instances: None,
                concurrency: None,
            },
            port: Some(8080),
            ingress: Ingress::Public,
            labels: vec![],
            config: config.to_string(),
        }
    }

    fn service(s: &ServiceSpec) -> ServiceRef {
        ServiceRef {
            name: s.name.clone(),
            config: s.config.clone(),
        }
    }

    #[test]
    fn deploy_is_idempotent_per_deployment_id() {
        let dir = std::env::temp_dir().join(format!("test-provider-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let s = spec(dir.to_str().unwrap(), "api:1", serde_json::json!({}));
        assert_eq!(TestProvider::read(service(&s)).unwrap(), None);
        let first = TestProvider::deploy(s.clone(), "d1".into()).unwrap();
        let again = TestProvider::deploy(s.clone(), "d1".into()).unwrap();
        assert_eq!(first.id, again.id);
        TestProvider::set_traffic(
            service(&s),
            vec![TrafficTarget {
                revision: first.id.clone(),
                percent: 100,
            }],
        )
        .unwrap();
        let record = load(&parse_config(&s.config).unwrap(), "api")
            .unwrap()
            .unwrap();
        assert_eq!(record.calls["deploy"], 2);
        assert_eq!(record.calls["deploy-created"], 1);
        assert_eq!(
            TestProvider::get_traffic(service(&s)).unwrap(),
            vec![TrafficTarget {
                revision: "api-d1".into(),
                percent: 100
            }]
        );
        let plan = TestProvider::plan(
            spec(dir.to_str().unwrap(), "api:2", serde_json::json!({})),
            TestProvider::read(service(&s)).unwrap(),
        )
        .unwrap();
        assert_eq!(plan.action, PlanAction::Update);
        TestProvider::destroy(service(&s)).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn failures_follow_the_config() {
        let dir = std::env::temp_dir().join(format!("test-provider-fail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let s = spec(
            dir.to_str().unwrap(),
            "api:1",
            serde_json::json!({"fail": {"deploy": "transient"}, "fail_times": 2}),
        );
        assert_eq!(
            TestProvider::deploy(s.clone(), "d".into())
                .unwrap_err()
                .kind(),
            "transient"
        );
        assert_eq!(
            TestProvider::deploy(s.clone(), "d".into())
                .unwrap_err()
                .kind(),
            "transient"
        );
        assert!(
            TestProvider::deploy(s.clone(), "d".into()).is_ok(),
            "succeeds after fail_times failures"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
