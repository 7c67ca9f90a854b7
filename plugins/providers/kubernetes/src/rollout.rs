//! Whether a revision's Deployment has rolled out, judged as `kubectl rollout status` judges it:
//! the controller has seen the latest spec, every pod is of it, and every one is available; a
//! `Progressing` condition whose reason is `ProgressDeadlineExceeded` fails the revision with
//! the controller's message (and why its pods are not ready).

use crate::config::Config;
use crate::manifest::{REVISION_LABEL, SERVICE_LABEL};
use engine_sdk::kubernetes::{Cluster, kinds};
use engine_sdk::{Error, ErrorExt};
use serde_json::Value;
use std::time::{Duration, Instant};

/// What a Deployment's status says.
#[derive(Debug, PartialEq)]
pub enum Progress {
    Done,
    Waiting(String),
    Failed(String),
}

pub fn progress(deployment: &Value) -> Progress {
    let name = deployment["metadata"]["name"].as_str().unwrap_or("?");
    let count = |v: &Value| v.as_u64().unwrap_or(0);
    let status = &deployment["status"];
    let generation = count(&deployment["metadata"]["generation"]);
    if count(&status["observedGeneration"]) < generation {
        return Progress::Waiting(format!(
            "the controller has not seen {name}'s latest spec yet"
        ));
    }
    let deadline = status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Progressing" && c["reason"] == "ProgressDeadlineExceeded");
    if let Some(c) = deadline {
        return Progress::Failed(format!(
            "{name} exceeded its progress deadline: {}",
            c["message"].as_str().unwrap_or("no message")
        ));
    }
    let wanted = deployment["spec"]["replicas"].as_u64().unwrap_or(1);
    let (updated, replicas, available) = (
        count(&status["updatedReplicas"]),
        count(&status["replicas"]),
        count(&status["availableReplicas"]),
    );
    if updated < wanted {
        Progress::Waiting(format!("{updated} of {wanted} new pods of {name} updated"))
    } else if replicas > updated {
        Progress::Waiting(format!(
            "{} old pods of {name} terminating",
            replicas - updated
        ))
    } else if available < updated {
        Progress::Waiting(format!("{available} of {updated} pods of {name} available"))
    } else {
        Progress::Done
    }
}

/// Waits until the revision's Deployment has rolled out; fails at the controller's progress
/// deadline, or after `ready_timeout_seconds`, naming why its pods are not ready.
pub fn wait_ready(
    cluster: &Cluster,
    config: &Config,
    service: &str,
    revision: &str,
) -> Result<Value, Error> {
    let path = kinds::deployments().object(&config.namespace, revision);
    let deadline = Instant::now() + Duration::from_secs(config.ready_timeout_seconds);
    let stalled_after = Duration::from_secs(config.progress_deadline_seconds as u64);
    // The controller judges its progress deadline only while a new template rolls out, not
    // while a revision is scaled up (`traffic = "replicas"`): the same deadline, judged here.
    let mut last_progress = (pod_counts(&Value::Null), Instant::now());
    loop {
        let deployment = cluster.get(&path)?.ok_or_else(|| {
            Error::conflict(format!(
                "the Deployment {revision} was deleted while the engine waited for it"
            ))
        })?;
        let counts = pod_counts(&deployment);
        if counts != last_progress.0 {
            last_progress = (counts, Instant::now());
        }
        let stalled = last_progress.1.elapsed() >= stalled_after;
        let waiting = match progress(&deployment) {
            Progress::Waiting(why) if stalled => {
                return Err(Error::fatal(format!(
                    "{revision} made no progress for {} s, its progress deadline: {why}{}",
                    config.progress_deadline_seconds,
                    pods_report(cluster, config, service, revision)
                )));
            }
            Progress::Done => return Ok(deployment),
            Progress::Failed(why) => {
                return Err(Error::fatal(format!(
                    "{why}{}",
                    pods_report(cluster, config, service, revision)
                )));
            }
            Progress::Waiting(why) => why,
        };
        if Instant::now() >= deadline {
            return Err(Error::fatal(format!(
                "{revision} did not become ready within {} s: {waiting}{}",
                config.ready_timeout_seconds,
                pods_report(cluster, config, service, revision)
            )));
        }
        std::thread::sleep(Duration::from_millis(config.poll_interval_ms));
    }
}

/// The pods of a Deployment as its status counts them: a change is progress.
fn pod_counts(deployment: &Value) -> [u64; 4] {
    let status = &deployment["status"];
    [
        "replicas",
        "updatedReplicas",
        "readyReplicas",
        "availableReplicas",
    ]
    .map(|k| status[k].as_u64().unwrap_or(0))
}

/// Waits until a revision runs exactly `pods` ready pods and no other (after a scale down, its
/// extra pods have terminated), for up to `ready_timeout_seconds`.
pub fn wait_scaled(
    cluster: &Cluster,
    config: &Config,
    revision: &str,
    pods: u32,
) -> Result<(), Error> {
    let path = kinds::deployments().object(&config.namespace, revision);
    let deadline = Instant::now() + Duration::from_secs(config.ready_timeout_seconds);
    loop {
        let d = cluster.get(&path)?.ok_or_else(|| {
            Error::conflict(format!(
                "the Deployment {revision} was deleted while the engine waited for it"
            ))
        })?;
        let count = |key: &str| d["status"][key].as_u64().unwrap_or(0);
        let seen = count("observedGeneration") >= d["metadata"]["generation"].as_u64().unwrap_or(0);
        if seen && count("replicas") == pods as u64 && count("readyReplicas") == pods as u64 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::transient(format!(
                "{revision} runs {} pods ({} ready), not {pods}, after {} s",
                count("replicas"),
                count("readyReplicas"),
                config.ready_timeout_seconds
            )));
        }
        std::thread::sleep(Duration::from_millis(config.poll_interval_ms));
    }
}

/// `; pods: web-r2-7d9-x Pending (0/1 nodes are available…), …`: why a revision's pods are not
/// ready, from their phase, conditions and container states (at most five).
fn pods_report(cluster: &Cluster, config: &Config, service: &str, revision: &str) -> String {
    let selector = format!("{SERVICE_LABEL}={service},{REVISION_LABEL}={revision}");
    let Ok(pods) = cluster.list(
        &kinds::pods().collection(&config.namespace),
        Some(&selector),
    ) else {
        return String::new();
    };
    let described: Vec<String> = pods.iter().take(5).map(describe_pod).collect();
    if described.is_empty() {
        "; it has no pods".into()
    } else {
        format!("; pods: {}", described.join(", "))
    }
}

fn describe_pod(pod: &Value) -> String {
    let name = pod["metadata"]["name"].as_str().unwrap_or("?");
    let phase = pod["status"]["phase"].as_str().unwrap_or("Unknown");
    let waiting = pod["status"]["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|c| {
            let w = &c["state"]["waiting"];
            w["reason"]
                .as_str()
                .map(|r| format!("{r}: {}", w["message"].as_str().unwrap_or("")))
        });
    let unready = pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["status"] == "False" && c["message"].is_string())
        .map(|c| {
            format!(
                "{}: {}",
                c["type"].as_str().unwrap_or("?"),
                c["message"].as_str().unwrap_or("")
            )
        });
    match waiting.or(unready) {
        Some(why) => format!("{name} {phase} ({})", why.trim_end_matches(": ")),
        None => format!("{name} {phase}, not ready"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(status: Value) -> Value {
        json!({ "metadata": { "name": "web-r2", "generation": 2 }, "spec": { "replicas": 3 }, "status": status })
    }

    #[test]
    fn rolled_out_means_seen_updated_and_available_as_kubectl_says() {
        let done = json!({ "observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 3 });
        assert_eq!(progress(&deployment(done)), Progress::Done);
        let unseen = json!({ "observedGeneration": 1, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 3 });
        assert!(matches!(
            progress(&deployment(unseen)),
            Progress::Waiting(_)
        ));
        let starting = json!({ "observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 1 });
        assert_eq!(
            progress(&deployment(starting)),
            Progress::Waiting("1 of 3 pods of web-r2 available".into())
        );
        let stuck = json!({ "observedGeneration": 2, "conditions": [{ "type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "ReplicaSet \"web-r2-5d\" has timed out progressing." }] });
        assert_eq!(
            progress(&deployment(stuck)),
            Progress::Failed("web-r2 exceeded its progress deadline: ReplicaSet \"web-r2-5d\" has timed out progressing.".into())
        );
    }
}
