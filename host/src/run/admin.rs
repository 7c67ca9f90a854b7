//! Operations on services outside the executor's loop: rolling a service back to an earlier
//! revision, destroying the pipeline's services in reverse dependency order, and recording a
//! person's approval or rejection of a rollout.

use super::checkpoint::{Observed, Phase};
use super::{retry, verify_split};
use crate::config::{Pipeline, Unit};
use crate::port::{Ports, TrafficShare};
use crate::runtime::{LoadedPlugin, PluginPorts};
use crate::state::{RevisionRecord, Store, now_ms};
use std::collections::BTreeMap;
use tokio_util::sync::CancellationToken;

/// Records a change an operation made. A row that cannot be written is an error the operation
/// reports (the platform has changed, the history does not say so), never a log line only.
async fn record(
    store: &Store,
    pipeline: &Pipeline,
    service: &str,
    revision: &str,
    traffic: u8,
    outcome: &str,
    detail: Option<String>,
) -> Result<(), String> {
    let environment = pipeline.environment.as_deref().unwrap_or("default");
    let r = RevisionRecord {
        revision: revision.into(),
        run_id: None,
        recorded_ms: now_ms(),
        traffic,
        outcome: outcome.into(),
        detail,
        release: None,
    };
    store
        .record_revision(&pipeline.name, environment, service, None, &r)
        .await
        .map_err(|e| format!("cannot record the history of `{service}`: {e}"))
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
    let ports = PluginPorts::new(plugins);
    let platform = ports.platform(service).map_err(|e| e.message)?;
    let platform = platform.as_ref();
    let current = retry(|| platform.get_traffic()).await?;
    let serving = current
        .iter()
        .max_by_key(|t| t.percent)
        .map(|t| t.revision.clone());
    let environment = pipeline.environment.as_deref().unwrap_or("default");
    let history = store
        .history(&pipeline.name, environment, service_name)
        .await
        .map_err(|e| e.to_string())?;
    // A revision whose latest record says it was retired no longer exists on the platform.
    let mut latest: BTreeMap<&str, &str> = BTreeMap::new();
    for r in &history {
        latest.entry(&r.revision).or_insert(&r.outcome);
    }
    let retired = |revision: &str| latest.get(revision) == Some(&"retired");
    let chosen = match to {
        Some(r) if retired(r) => {
            return Err(format!(
                "{r} was retired (see `engine history`), so it is gone from the platform; deploy it again with `engine run`"
            ));
        }
        Some(r) => r.to_string(),
        None => history
            .iter()
            .filter(|r| {
                r.outcome == "promoted"
                    && Some(&r.revision) != serving.as_ref()
                    && !retired(&r.revision)
            })
            .map(|r| r.revision.clone())
            .next()
            .ok_or_else(|| {
                format!(
                    "`{service_name}` has no earlier promoted revision that still exists to go back to (retired ones are gone); name one with --to"
                )
            })?,
    };
    let split = [TrafficShare::new(&chosen, 100)];
    retry(|| platform.set_traffic(&split)).await?;
    verify_split(platform, &split).await?;
    let detail = serving.map(|s| format!("rolled back from {s}"));
    record(
        store,
        pipeline,
        service_name,
        &chosen,
        100,
        "rolled-back-to",
        detail,
    )
    .await
    .map_err(|e| format!("{chosen} serves all traffic of `{service_name}`, but {e}"))?;
    Ok(chosen)
}

/// Destroys every service and every resource the engine created, dependents before their
/// dependencies; a resource the engine did not create is left in place. With `dry_run`, only
/// says what it would do. Returns each unit (a resource as `resource NAME`) with its result,
/// in the order handled.
pub async fn destroy(
    pipeline: &Pipeline,
    plugins: &BTreeMap<String, LoadedPlugin>,
    store: &Store,
    dry_run: bool,
    interrupt: &CancellationToken,
) -> Vec<(String, Result<Destroyed, DestroyError>)> {
    let ports = PluginPorts::new(plugins);
    let units = pipeline.units();
    let mut results = Vec::new();
    for index in pipeline.unit_waves().into_iter().rev().flatten() {
        let unit = units[index];
        let label = match unit {
            Unit::Service(s) => s.name.clone(),
            Unit::Resource(r) => format!("resource {}", r.name),
        };
        // Interrupted: the unit being destroyed is finished, the next ones are not begun.
        if interrupt.is_cancelled() {
            let not_begun = "not begun: the command was interrupted".to_string();
            results.push((label, Err(DestroyError::NotDestroyed(not_begun))));
            continue;
        }
        let result = match unit {
            Unit::Service(service) if dry_run => what_destroy_removes(&ports, service).await,
            Unit::Service(service) => destroy_service(&ports, store, pipeline, service).await,
            Unit::Resource(resource) => {
                delete_resource(&ports, store, pipeline, resource, dry_run).await
            }
        };
        results.push((label, result));
    }
    results
}

/// What destroying one unit did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destroyed {
    /// It is gone (or, in a dry run, would be).
    Removed,
    /// A resource the engine did not create, or never applied: not the engine's to delete.
    LeftInPlace(String),
    /// In a dry run, a service that exists, with what destroying it would remove (its
    /// revisions as the platform reads them, with their share of the traffic).
    WouldRemove(Vec<String>),
    /// In a dry run, a service the platform does not have: nothing to remove.
    Absent,
}

/// A dry run's answer for a service: it reads the service, and changes nothing.
async fn what_destroy_removes(
    ports: &PluginPorts<'_>,
    service: &crate::config::Service,
) -> Result<Destroyed, DestroyError> {
    let platform = ports
        .platform(service)
        .map_err(|e| DestroyError::NotDestroyed(e.message))?;
    let state = retry(|| platform.read())
        .await
        .map_err(DestroyError::NotDestroyed)?;
    let Some(state) = state else {
        return Ok(Destroyed::Absent);
    };
    let revisions = state.revisions.iter().map(|r| {
        let percent = state
            .traffic
            .iter()
            .find(|t| t.revision == r.id)
            .map_or(0, |t| t.percent);
        let artifact = r
            .artifact
            .as_deref()
            .map(|a| format!(" ({a})"))
            .unwrap_or_default();
        format!("revision {}{artifact}, {percent}% of the traffic", r.id)
    });
    Ok(Destroyed::WouldRemove(revisions.collect()))
}

async fn destroy_service(
    ports: &PluginPorts<'_>,
    store: &Store,
    pipeline: &Pipeline,
    service: &crate::config::Service,
) -> Result<Destroyed, DestroyError> {
    let destroyed = match ports.platform(service) {
        Ok(platform) => retry(|| platform.destroy()).await,
        Err(e) => Err(e.message),
    };
    destroyed.map_err(DestroyError::NotDestroyed)?;
    record(store, pipeline, &service.name, "-", 0, "destroyed", None)
        .await
        .map_err(DestroyError::NotRecorded)?;
    Ok(Destroyed::Removed)
}

/// Deletes a resource the state says the engine created, as it was last applied (its
/// references as they were then), and forgets it.
async fn delete_resource(
    ports: &PluginPorts<'_>,
    store: &Store,
    pipeline: &Pipeline,
    resource: &crate::config::Resource,
    dry_run: bool,
) -> Result<Destroyed, DestroyError> {
    let environment = pipeline.environment.as_deref().unwrap_or("default");
    let record = store
        .resource(&pipeline.name, environment, &resource.name)
        .await
        .map_err(|e| DestroyError::NotDestroyed(e.to_string()))?;
    let Some(record) = record else {
        return Ok(Destroyed::LeftInPlace(
            "no run of this pipeline applied it".into(),
        ));
    };
    if !record.created {
        return Ok(Destroyed::LeftInPlace(format!(
            "{} existed before the engine first applied it, so it is not the engine's to delete",
            record.platform_id
        )));
    }
    if dry_run {
        return Ok(Destroyed::Removed);
    }
    let json = |text: &str| serde_json::from_str(text).unwrap_or(serde_json::json!({}));
    let applied = crate::config::Resource {
        spec: json(&record.spec),
        provider_config: json(&record.config),
        ..resource.clone()
    };
    let deleted = match ports.resource(&applied) {
        Ok(platform) => retry(|| platform.delete()).await,
        Err(e) => Err(e.message),
    };
    deleted.map_err(DestroyError::NotDestroyed)?;
    store
        .forget_resource(&pipeline.name, environment, &resource.name)
        .await
        .map_err(|e| DestroyError::NotRecorded(format!("the state still lists it ({e})")))?;
    Ok(Destroyed::Removed)
}

/// Why a service was not destroyed, or was but is not in its history.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DestroyError {
    #[error("not destroyed: {0}")]
    NotDestroyed(String),
    /// The platform removed it; the history does not say so.
    #[error("destroyed, but {0}")]
    NotRecorded(String),
}

/// A person's answer to a rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Approval {
    /// `engine promote SERVICE`: the rollout waiting for approval goes on.
    Approve,
    /// `engine abort SERVICE`: the rollout is rolled back, with this reason.
    Reject(String),
}

/// Records `approval` in the checkpoint of `service` in the pipeline's open run, for the run
/// that resumes it to act on: the strategy is told `approved` or `rejected`, or, for a rollout
/// that was not waiting for approval (one interrupted mid-way), the host rolls it back.
/// Returns what the service was waiting for, or where its rollout was.
pub async fn decide(
    store: &Store,
    pipeline: &Pipeline,
    service: &str,
    approval: &Approval,
) -> Result<String, String> {
    pipeline.service(service)?;
    let environment = pipeline.environment.as_deref().unwrap_or("default");
    let verb = match approval {
        Approval::Approve => "promote",
        Approval::Reject(_) => "abort",
    };
    let run = store
        .open_run(&pipeline.name, environment)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            format!(
                "no run of pipeline `{}` (environment `{environment}`) is in progress, so `{service}` has no rollout to {verb}; `engine status` shows the last run",
                pipeline.name
            )
        })?;
    let mut cp = super::load_checkpoint(store, run, service).await?;
    if let Some(done) = cp.finished() {
        let outcome: super::Outcome = done.clone().into();
        return Err(format!(
            "`{service}` already finished in run {run} ({}); to return to an earlier revision use `engine rollback {service}`",
            outcome.label()
        ));
    }
    let what = match (approval, cp.phase.clone()) {
        (Approval::Approve, Phase::AwaitingApproval { what }) => {
            cp.phase = Phase::Driving {
                pending: Observed::Approved,
            };
            what
        }
        (Approval::Reject(reason), Phase::AwaitingApproval { what }) => {
            let pending = Observed::Rejected {
                reason: reason.clone(),
            };
            cp.phase = Phase::Driving { pending };
            what
        }
        (Approval::Approve, _) => {
            return Err(match &cp.candidate {
                Some(c) => format!(
                    "`{service}` is not waiting for approval: its rollout of {c} is in progress at {}% (run {run}); `engine run` resumes it",
                    cp.traffic
                ),
                None => format!(
                    "`{service}` is not waiting for approval: it has not started in run {run}"
                ),
            });
        }
        (Approval::Reject(reason), _) => match &cp.candidate {
            Some(c) => {
                let what = format!("rollout of {c} at {}%", cp.traffic);
                let reason = format!("aborted by `engine abort`: {reason}");
                cp.phase = Phase::Aborting { reason };
                what
            }
            None => {
                return Err(format!(
                    "`{service}` has not started in run {run}: there is nothing to abort"
                ));
            }
        },
    };
    super::save_checkpoint(store, run, service, &cp).await?;
    Ok(what)
}
