//! Filling in references (`${services.NAME.url}`, `${services.NAME.urls.PLACE}`,
//! `${resources.NAME.outputs.KEY}`) once what they name has settled: validation made each one
//! a dependency, so the executor starts a unit only after everything it references.

use super::ServiceReport;
use super::rollout::{Executor, retry};
use crate::config::references::{self, Reference};
use crate::config::{Resource, Service, Unit};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

/// What this run has learnt of the units others reference.
#[derive(Default)]
pub(super) struct Known {
    /// A service's URL, once read.
    urls: Mutex<BTreeMap<String, String>>,
    /// A service's URL in each place, once read.
    place_urls: Mutex<BTreeMap<String, Vec<(String, String)>>>,
    /// A resource's outputs, once applied (or found unchanged) in this run.
    outputs: Mutex<BTreeMap<String, BTreeMap<String, String>>>,
}

impl Known {
    pub fn set_outputs(&self, resource: &str, outputs: BTreeMap<String, String>) {
        let mut known = self.outputs.lock().unwrap_or_else(|e| e.into_inner());
        known.insert(resource.to_string(), outputs);
    }

    fn output(&self, resource: &str, key: &str) -> Result<String, String> {
        let known = self.outputs.lock().unwrap_or_else(|e| e.into_inner());
        let Some(outputs) = known.get(resource) else {
            return Err(format!("resource `{resource}` was not applied in this run"));
        };
        outputs.get(key).cloned().ok_or_else(|| {
            let keys: Vec<&str> = outputs.keys().map(String::as_str).collect();
            format!(
                "resource `{resource}` has no output `{key}` (its outputs: {})",
                if keys.is_empty() {
                    "none".to_string()
                } else {
                    keys.join(", ")
                }
            )
        })
    }

    fn url(&self, service: &str) -> Option<String> {
        let known = self.urls.lock().unwrap_or_else(|e| e.into_inner());
        known.get(service).cloned()
    }

    fn set_url(&self, service: &str, url: &str) {
        let mut known = self.urls.lock().unwrap_or_else(|e| e.into_inner());
        known.insert(service.to_string(), url.to_string());
    }

    fn place_urls(&self, service: &str) -> Option<Vec<(String, String)>> {
        let known = self.place_urls.lock().unwrap_or_else(|e| e.into_inner());
        known.get(service).cloned()
    }

    fn set_place_urls(&self, service: &str, urls: Vec<(String, String)>) {
        let mut known = self.place_urls.lock().unwrap_or_else(|e| e.into_inner());
        known.insert(service.to_string(), urls);
    }
}

impl Executor<'_> {
    /// Runs one unit of the graph: a service's rollout or a resource's apply.
    pub(super) async fn unit(&self, unit: Unit<'_>) -> ServiceReport {
        match unit {
            Unit::Service(service) => match self.resolved_service(service).await {
                Ok(resolved) => self.service(&resolved).await,
                Err(reason) => self.not_resolved(unit, reason),
            },
            Unit::Resource(resource) => match self.resolved_resource(resource).await {
                Ok(resolved) => self.resource(&resolved).await,
                Err(reason) => self.not_resolved(unit, reason),
            },
        }
    }

    fn not_resolved(&self, unit: Unit<'_>, reason: String) -> ServiceReport {
        ServiceReport {
            outcome: super::Outcome::Failed(format!("{reason}; nothing was deployed")),
            elapsed: Duration::ZERO,
            ..super::not_started(unit)
        }
    }

    /// The service with its references filled in.
    async fn resolved_service(&self, service: &Service) -> Result<Service, String> {
        let wanted = service.references();
        if wanted.is_empty() {
            return Ok(service.clone());
        }
        let values = self.values(&wanted).await;
        let value = |r: &Reference| values[r].clone();
        let text = |t: &String| references::resolve_text(t, &value).map_err(|e| e.to_string());
        let json =
            |j: &serde_json::Value| references::resolve_json(j, &value).map_err(|e| e.to_string());
        let mut resolved = service.clone();
        for v in resolved.env.values_mut() {
            *v = text(v)?;
        }
        resolved.provider_config = json(&service.provider_config)?;
        resolved.strategy_config = json(&service.strategy_config)?;
        for check in &mut resolved.checks {
            check.config = json(&check.config)?;
        }
        Ok(resolved)
    }

    /// The resource with its references filled in.
    async fn resolved_resource(&self, resource: &Resource) -> Result<Resource, String> {
        let mut wanted = references::in_json(&resource.spec);
        wanted.extend(references::in_json(&resource.provider_config));
        if wanted.is_empty() {
            return Ok(resource.clone());
        }
        let values = self.values(&wanted).await;
        let value = |r: &Reference| values[r].clone();
        let json =
            |j: &serde_json::Value| references::resolve_json(j, &value).map_err(|e| e.to_string());
        Ok(Resource {
            spec: json(&resource.spec)?,
            provider_config: json(&resource.provider_config)?,
            ..resource.clone()
        })
    }

    /// The value of each reference, or why it has none; in a plan, what is not known yet has
    /// a stand-in.
    async fn values(
        &self,
        wanted: &BTreeSet<Reference>,
    ) -> BTreeMap<Reference, Result<String, String>> {
        let mut values = BTreeMap::new();
        for reference in wanted {
            let value = match reference {
                Reference::ServiceUrl {
                    service,
                    place: None,
                } => self.service_url(service).await,
                Reference::ServiceUrl {
                    service,
                    place: Some(place),
                } => self.place_url(service, place).await,
                Reference::ResourceOutput { resource, key } => self.known.output(resource, key),
            };
            // Even a region the service does not run in yet: the plan's run may add it.
            let value = match value {
                Err(_) if self.world.simulated() => Ok(references::stand_in(reference)),
                other => other,
            };
            values.insert(reference.clone(), value);
        }
        values
    }

    /// A service's URL, as its provider reads it (once per run).
    async fn service_url(&self, name: &str) -> Result<String, String> {
        if let Some(url) = self.known.url(name) {
            return Ok(url);
        }
        let service = self.pipeline.service(name)?;
        let platform = self.ports.platform(service).map_err(|e| e.message)?;
        let state = retry(|| platform.read()).await?;
        let url = match state {
            None => return Err(format!("service `{name}` does not exist")),
            Some(state) => state
                .url
                .ok_or_else(|| format!("the provider of service `{name}` reports no URL for it"))?,
        };
        self.known.set_url(name, &url);
        Ok(url)
    }

    /// A service's URL in one place, from the URLs its provider lists by place (read once
    /// per run).
    async fn place_url(&self, name: &str, place: &str) -> Result<String, String> {
        let urls = match self.known.place_urls(name) {
            Some(urls) => urls,
            None => {
                let service = self.pipeline.service(name)?;
                let platform = self.ports.platform(service).map_err(|e| e.message)?;
                let urls = retry(|| platform.place_urls()).await?;
                self.known.set_place_urls(name, urls.clone());
                urls
            }
        };
        if let Some((_, url)) = urls.iter().find(|(p, _)| p == place) {
            return Ok(url.clone());
        }
        if urls.is_empty() {
            return Err(format!(
                "the provider of service `{name}` lists no URL by region for it: the service does not exist yet, or its provider does not tell regions apart (then use ${{services.{name}.url}})"
            ));
        }
        let places: Vec<&str> = urls.iter().map(|(p, _)| p.as_str()).collect();
        Err(format!(
            "service `{name}` runs in {}, not in {place}",
            places.join(", ")
        ))
    }
}
