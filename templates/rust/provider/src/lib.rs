//! {{name}}: a provider. Its "platform" is a directory the pipeline grants as `/platform`, one
//! JSON file per service with its revisions and traffic split: replace `Platform` with calls to
//! your platform's API (`engine_sdk::http`), and keep the contract the calls below keep
//! (docs/provider-contract.md; `engine plugins check` checks it).

use engine_sdk::{
    Artifact, Capabilities, DeploymentPlan, Diagnostic, DirNeed, Endpoint, EndpointKind, Error,
    ErrorExt, Feature, PlanAction, PluginInfo, Provider, Revision, ServiceRef, ServiceSpec,
    ServiceStatus, TrafficTarget,
};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// One service on the platform.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Revision id → what it runs, oldest first.
    pub revisions: Vec<(String, serde_json::Value)>,
    pub traffic: Vec<(String, u8)>,
}

/// The platform: where services are kept.
pub struct Platform {
    pub dir: PathBuf,
}

impl Platform {
    fn granted() -> Platform {
        Platform { dir: PathBuf::from("/platform") }
    }

    fn file(&self, service: &str) -> PathBuf {
        self.dir.join(format!("{service}.json"))
    }

    pub fn load(&self, service: &str) -> Result<Option<Record>, Error> {
        match std::fs::read_to_string(self.file(service)) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| Error::fatal(format!("{service}: corrupt record: {e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::fatal(format!("cannot read the platform: {e}"))),
        }
    }

    /// Through a temporary file and a rename: a call killed half-way leaves the old record.
    pub fn store(&self, service: &str, record: &Record) -> Result<(), Error> {
        let path = self.file(service);
        let tmp = path.with_extension("tmp");
        let text = serde_json::to_string(record).map_err(|e| Error::fatal(e.to_string()))?;
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| Error::fatal(format!("cannot write the platform: {e}")))
    }

    pub fn remove(&self, service: &str) -> Result<(), Error> {
        match std::fs::remove_file(self.file(service)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::fatal(format!("cannot remove {service}: {e}")))
            }
            _ => Ok(()),
        }
    }
}

/// What `plan` compares: the parts of the spec this platform runs.
fn runs(spec: &ServiceSpec) -> serde_json::Value {
    let artifact = match &spec.artifact {
        Artifact::Image(a) | Artifact::Path(a) => a.clone(),
    };
    serde_json::json!({ "artifact": artifact, "args": spec.args, "env": spec.env })
}

impl Record {
    /// What the revision serving the most traffic runs (`{}` before any takes traffic).
    fn deployed(&self) -> serde_json::Value {
        let serving = self.traffic.iter().filter(|t| t.1 > 0).max_by_key(|t| t.1);
        serving
            .and_then(|(id, _)| self.revisions.iter().find(|(r, _)| r == id))
            .map_or(serde_json::json!({}), |(_, runs)| runs.clone())
    }
}

pub struct Plugin;

impl Provider for Plugin {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "{{name}}".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Services kept as records in a directory".into(),
            config_schema: r#"{"type":"object","additionalProperties":false}"#.into(),
            features: vec![Feature::TrafficSplit, Feature::RetireRevisions],
            capabilities: Capabilities {
                dirs: vec![DirNeed {
                    path: "/platform".into(),
                    writable: true,
                    purpose: "the services' records".into(),
                }],
                ..Capabilities::none()
            },
        }
    }

    fn validate(_spec: ServiceSpec) -> Vec<Diagnostic> {
        Vec::new()
    }

    fn read(service: ServiceRef) -> Result<Option<ServiceStatus>, Error> {
        let Some(record) = Platform::granted().load(&service.name)? else {
            return Ok(None);
        };
        Ok(Some(ServiceStatus {
            revisions: record
                .revisions
                .iter()
                .rev()
                .map(|(id, _)| Revision {
                    id: id.clone(),
                    artifact: None,
                    created_at_ms: None,
                    ready: true,
                    message: None,
                })
                .collect(),
            traffic: split(&record.traffic),
            url: Some(format!("http://{}.invalid", service.name)),
            deployed: record.deployed().to_string(),
        }))
    }

    fn plan(desired: ServiceSpec, current: Option<ServiceStatus>) -> Result<DeploymentPlan, Error> {
        let Some(current) = current else {
            return Ok(DeploymentPlan {
                action: PlanAction::Create,
                changes: Vec::new(),
                summary: format!("create {}", desired.name),
            });
        };
        Ok(engine_sdk::update_plan(&current.deployed, &runs(&desired), &["artifact", "args", "env"]))
    }

    fn deploy(spec: ServiceSpec, deployment_id: String) -> Result<Revision, Error> {
        let platform = Platform::granted();
        let mut record = platform.load(&spec.name)?.unwrap_or_default();
        // The same deployment id names the same revision: a repeated deploy finds it.
        let id = format!("{}-{deployment_id}", spec.name);
        if !record.revisions.iter().any(|(r, _)| *r == id) {
            record.revisions.push((id.clone(), runs(&spec)));
            platform.store(&spec.name, &record)?;
        }
        Ok(Revision { id, artifact: None, created_at_ms: None, ready: true, message: None })
    }

    fn set_traffic(service: ServiceRef, targets: Vec<TrafficTarget>) -> Result<(), Error> {
        let platform = Platform::granted();
        let mut record = platform
            .load(&service.name)?
            .ok_or_else(|| Error::not_found(format!("service {} does not exist", service.name)))?;
        if let Some(t) = targets.iter().find(|t| !record.revisions.iter().any(|(r, _)| *r == t.revision)) {
            return Err(Error::not_found(format!("revision {} does not exist", t.revision)));
        }
        record.traffic = targets.into_iter().map(|t| (t.revision, t.percent)).collect();
        platform.store(&service.name, &record)
    }

    fn get_traffic(service: ServiceRef) -> Result<Vec<TrafficTarget>, Error> {
        let record = Platform::granted().load(&service.name)?.unwrap_or_default();
        Ok(split(&record.traffic))
    }

    fn endpoints(service: ServiceRef, _revision: Option<String>) -> Result<Vec<Endpoint>, Error> {
        // No revision URLs here: the service's URL only (and no `revision-urls` feature).
        Ok(vec![Endpoint {
            url: format!("http://{}.invalid", service.name),
            kind: EndpointKind::Service,
            revision: None,
        }])
    }

    fn retire(service: ServiceRef, revision: String) -> Result<(), Error> {
        let platform = Platform::granted();
        let Some(mut record) = platform.load(&service.name)? else {
            return Ok(());
        };
        if record.traffic.iter().any(|(r, p)| *r == revision && *p > 0) {
            return Err(Error::conflict(format!("{revision} still takes traffic")));
        }
        record.revisions.retain(|(r, _)| *r != revision);
        record.traffic.retain(|(r, _)| *r != revision);
        platform.store(&service.name, &record)
    }

    fn destroy(service: ServiceRef) -> Result<(), Error> {
        Platform::granted().remove(&service.name)
    }
}

fn split(traffic: &[(String, u8)]) -> Vec<TrafficTarget> {
    traffic
        .iter()
        .filter(|(_, p)| *p > 0)
        .map(|(r, p)| TrafficTarget { revision: r.clone(), percent: *p })
        .collect()
}

engine_sdk::export_provider!(Plugin);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_a_round_trip_and_removal_of_nothing_succeeds() {
        let dir = std::env::temp_dir().join(format!("{{crate}}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let platform = Platform { dir: dir.clone() };
        let record = Record {
            revisions: vec![("api-r1".into(), serde_json::json!({"artifact": "api:1"}))],
            traffic: vec![("api-r1".into(), 100)],
        };
        platform.store("api", &record).unwrap();
        assert_eq!(platform.load("api").unwrap(), Some(record.clone()));
        assert_eq!(record.deployed()["artifact"], "api:1");
        platform.remove("api").unwrap();
        platform.remove("api").unwrap();
        assert_eq!(platform.load("api").unwrap(), None);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
