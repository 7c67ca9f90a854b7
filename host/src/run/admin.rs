//! Operations on deployed services outside a rollout: rolling a service back to an earlier
//! revision, and destroying the pipeline's services in reverse dependency order.

use super::{retry, verify_split};
use crate::config::Pipeline;
use crate::runtime::LoadedPlugin;
use crate::runtime::bindings::types::{ServiceRef, TrafficTarget};
use crate::state::{RevisionRecord, Store, now_ms};
use std::collections::BTreeMap;

fn target(service: &crate::config::Service) -> ServiceRef {
    ServiceRef {
        name: service.name.clone(),
        config: service.provider_config.to_string(),
    }
}

fn record(
    store: &Store,
    pipeline: &Pipeline,
    service: &str,
    revision: &str,
    traffic: u8,
    outcome: &str,
    detail: Option<String>,
) {
    let environment = pipeline.environment.as_deref().unwrap_or("default");
    let r = RevisionRecord {
        revision: revision.into(),
        run_id: None,
        recorded_ms: now_ms(),
        traffic,
        outcome: outcome.into(),
        detail,
    };
    if let Err(e) = store.record_revision(&pipeline.name, environment, service, None, &r) {
        tracing::error!("cannot record the history of `{service}`: {e}");
    }
}

/// Sends all of a service's traffic to `to`, or to the newest revision promoted before the one
/// serving now. Returns the revision that now serves.
pub async fn rollback(
    pipeline: &Pipeline,
    plugins: &BTreeMap<String, LoadedPlugin>,
    store: &Store,
    service_name: &str,
    to: Option<&str>,
) -> Result<String, String> {
    let service = pipeline.service(service_name)?;
    let provider = plugins[&service.provider]
        .provider()
        .map_err(|e| e.to_string())?;
    let target = target(service);
    let current = retry(|| provider.get_traffic(&target)).await?;
    let serving = current
        .iter()
        .max_by_key(|t| t.percent)
        .map(|t| t.revision.clone());
    let environment = pipeline.environment.as_deref().unwrap_or("default");
    let chosen = match to {
        Some(r) => r.to_string(),
        None => store
            .history(&pipeline.name, environment, service_name)
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|r| r.outcome == "promoted" && Some(&r.revision) != serving.as_ref())
            .map(|r| r.revision)
            .next()
            .ok_or_else(|| format!("`{service_name}` has no earlier promoted revision to go back to; name one with --to"))?,
    };
    let split = [TrafficTarget {
        revision: chosen.clone(),
        percent: 100,
    }];
    retry(|| provider.set_traffic(&target, &split)).await?;
    verify_split(&provider, &target, &split).await?;
    let detail = serving.map(|s| format!("rolled back from {s}"));
    record(
        store,
        pipeline,
        service_name,
        &chosen,
        100,
        "rolled-back-to",
        detail,
    );
    Ok(chosen)
}

/// Destroys every service, dependents before their dependencies. With `dry_run`, only says what
/// it would destroy. Returns each service with its result, in the order handled.
pub async fn destroy(
    pipeline: &Pipeline,
    plugins: &BTreeMap<String, LoadedPlugin>,
    store: &Store,
    dry_run: bool,
) -> Vec<(String, Result<(), String>)> {
    let waves = pipeline.waves();
    let mut results = Vec::new();
    for index in waves.into_iter().rev().flatten() {
        let service = &pipeline.services[index];
        if dry_run {
            results.push((service.name.clone(), Ok(())));
            continue;
        }
        let target = target(service);
        let result = match plugins[&service.provider].provider() {
            Ok(provider) => retry(|| provider.destroy(&target)).await,
            Err(e) => Err(e.to_string()),
        };
        if result.is_ok() {
            record(store, pipeline, &service.name, "-", 0, "destroyed", None);
        }
        results.push((service.name.clone(), result));
    }
    results
}
