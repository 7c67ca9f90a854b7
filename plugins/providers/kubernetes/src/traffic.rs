//! Moving traffic between revisions, and reading back where it goes, in the three ways
//! `traffic` names:
//!
//! - `selector`: the service's Service selects one revision's pods (blue-green, the guide's
//!   `kubectl patch service … selector`); verified by the Service's endpoints, which must name
//!   that revision's pods only;
//! - `gateway`: the HTTPRoute's backends, one per revision's Service, carry the weights;
//! - `replicas`: one Service over every revision's pods, each revision running its share of the
//!   service's pods (20 % of 5 is one pod): an approximation by whole pods, as Argo Rollouts
//!   does without a traffic router.

use crate::Target;
use crate::config::Traffic;
use crate::manifest::{self, MANAGER, PERCENT_ANNOTATION};
use crate::rollout;
use engine_sdk::kubernetes::kinds;
use engine_sdk::{Error, ErrorExt, TrafficTarget};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Routes the service's traffic by `split`, and returns once it applies.
pub fn set(t: &Target, split: &[TrafficTarget]) -> Result<(), Error> {
    let whole = split
        .iter()
        .find(|s| s.percent == 100)
        .map(|s| s.revision.clone());
    match t.config.traffic {
        Traffic::Selector => switch(t, split)?,
        Traffic::Gateway => weigh(t, split)?,
        Traffic::Replicas => scale(t, split)?,
    }
    t.follow_autoscaler(whole.as_deref())
}

/// Where the traffic goes now, by revision, in percent.
pub fn get(t: &Target) -> Result<Vec<TrafficTarget>, Error> {
    match t.config.traffic {
        Traffic::Selector => selected(t),
        Traffic::Gateway => weighted(t),
        Traffic::Replicas => shares(t),
    }
}

/// `selector`: the one revision that takes all of it.
fn switch(t: &Target, split: &[TrafficTarget]) -> Result<(), Error> {
    let moving: Vec<&TrafficTarget> = split.iter().filter(|s| s.percent > 0).collect();
    let [only] = moving.as_slice() else {
        return Err(Error::invalid_config(format!(
            "traffic = \"selector\" moves all of a service's traffic at once (blue-green), not {}; for a canary use traffic = \"gateway\" (an HTTPRoute) or \"replicas\" (the share of pods)",
            describe(split)
        )));
    };
    t.require_revision(&only.revision)?;
    t.apply_stable_service(Some(&only.revision))?;
    wait_for_endpoints(t, &only.revision)
}

/// Waits until the Service's ready endpoints are `revision`'s pods alone (the endpoints
/// controller follows a selector change within moments).
fn wait_for_endpoints(t: &Target, revision: &str) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(t.config.ready_timeout_seconds);
    loop {
        let counts = endpoint_counts(t)?;
        let others: Vec<&String> = counts.keys().filter(|r| r.as_str() != revision).collect();
        if others.is_empty() && counts.contains_key(revision) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::transient(format!(
                "the Service {} still reaches {} after {} s, not {revision} alone",
                t.service,
                if counts.is_empty() {
                    "no ready pod".to_string()
                } else {
                    format!("{counts:?}")
                },
                t.config.ready_timeout_seconds
            )));
        }
        std::thread::sleep(Duration::from_millis(t.config.poll_interval_ms));
    }
}

/// The service's ready endpoints, counted by the revision whose pod each is.
fn endpoint_counts(t: &Target) -> Result<BTreeMap<String, u32>, Error> {
    let revisions: Vec<String> = t.revisions()?.iter().map(name_of).collect();
    let selector = format!("kubernetes.io/service-name={}", t.service);
    let slices = t.cluster.list(
        &kinds::endpoint_slices().collection(&t.config.namespace),
        Some(&selector),
    )?;
    let mut counts = BTreeMap::new();
    for endpoint in slices
        .iter()
        .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
    {
        if endpoint["conditions"]["ready"] == false {
            continue;
        }
        let pod = endpoint["targetRef"]["name"].as_str().unwrap_or_default();
        let revision = revisions
            .iter()
            .filter(|r| pod.starts_with(&format!("{r}-")))
            .max_by_key(|r| r.len())
            .cloned()
            .unwrap_or_else(|| format!("pod {pod} of no revision"));
        *counts.entry(revision).or_insert(0) += 1;
    }
    Ok(counts)
}

fn selected(t: &Target) -> Result<Vec<TrafficTarget>, Error> {
    let Some(service) = t.cluster.get(&t.path(kinds::services(), &t.service))? else {
        return Ok(Vec::new());
    };
    let Some(revision) = service["spec"]["selector"][manifest::REVISION_LABEL].as_str() else {
        return Ok(Vec::new());
    };
    // The endpoints are what the Service really reaches: while they still name another
    // revision's pods, the split is theirs.
    let counts = endpoint_counts(t)?;
    if counts.keys().any(|r| r != revision) {
        return Ok(percentages(&counts));
    }
    Ok(vec![TrafficTarget {
        revision: revision.to_string(),
        percent: 100,
    }])
}

/// `gateway`: the route's backends, weighted; a revision without a share is left out.
fn weigh(t: &Target, split: &[TrafficTarget]) -> Result<(), Error> {
    t.cluster.resource("gateway.networking.k8s.io/v1", "HTTPRoute").map_err(|e| {
        e.context("traffic = \"gateway\" needs the Gateway API (its HTTPRoute CRD) installed in the cluster")
    })?;
    let mut weights = Vec::new();
    for s in split.iter().filter(|s| s.percent > 0) {
        t.require_revision(&s.revision)?;
        weights.push((s.revision.clone(), s.percent));
    }
    let route = manifest::route(&t.config, &t.service, &weights)?;
    let name = manifest::route_name(&t.config, &t.service);
    t.cluster
        .apply(&t.path(kinds::http_routes(), &name), &route, MANAGER, false)?;
    Ok(())
}

fn weighted(t: &Target) -> Result<Vec<TrafficTarget>, Error> {
    let name = manifest::route_name(&t.config, &t.service);
    let Some(route) = t.cluster.get(&t.path(kinds::http_routes(), &name))? else {
        return Ok(Vec::new());
    };
    let mut weights = BTreeMap::new();
    for backend in route["spec"]["rules"][0]["backendRefs"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let name = backend["name"].as_str().unwrap_or_default().to_string();
        *weights.entry(name).or_insert(0) += backend["weight"].as_u64().unwrap_or(1) as u32;
    }
    Ok(percentages(&weights))
}

/// `replicas`: each revision runs its share of the service's pods; the new shares are
/// started and ready before the old ones shrink.
fn scale(t: &Target, split: &[TrafficTarget]) -> Result<(), Error> {
    let total = t.config.replicas.ok_or_else(|| {
        Error::invalid_config("traffic = \"replicas\" needs `replicas`, the service's pods that the shares divide (5 gives 20 % steps)")
    })?;
    let pods = pods_for(split, total);
    let current: BTreeMap<String, u64> = t
        .revisions()?
        .iter()
        .map(|d| (name_of(d), d["spec"]["replicas"].as_u64().unwrap_or(0)))
        .collect();
    for s in split.iter().filter(|s| s.percent > 0) {
        t.require_revision(&s.revision)?;
    }
    let percent = |r: &str| {
        split
            .iter()
            .find(|s| s.revision == r)
            .map_or(0, |s| s.percent)
    };
    let (growing, shrinking): (Vec<_>, Vec<_>) = current
        .iter()
        .partition(|(r, n)| pods.get(*r).copied().unwrap_or(0) as u64 >= **n);
    for (revision, _) in growing {
        resize(
            t,
            revision,
            pods.get(revision).copied().unwrap_or(0),
            percent(revision),
        )?;
    }
    for (revision, &n) in &pods {
        if n > 0 {
            rollout::wait_ready(&t.cluster, &t.config, &t.service, revision)?;
        }
    }
    for (revision, _) in &shrinking {
        let n = pods.get(*revision).copied().unwrap_or(0);
        resize(t, revision, n, percent(revision))?;
    }
    for revision in current.keys() {
        let want = pods.get(revision).copied().unwrap_or(0);
        rollout::wait_scaled(&t.cluster, &t.config, revision, want)?;
    }
    t.apply_stable_service(None)
}

fn resize(t: &Target, revision: &str, pods: u32, percent: u8) -> Result<(), Error> {
    let patch = json!({
        "metadata": { "annotations": { PERCENT_ANNOTATION: percent.to_string() } },
        "spec": { "replicas": pods },
    });
    t.cluster
        .merge_patch(&t.path(kinds::deployments(), revision), &patch)?;
    Ok(())
}

/// The pods each revision runs for its share of `total`: whole pods by the largest remainder,
/// at least one for any share above zero.
pub fn pods_for(split: &[TrafficTarget], total: u32) -> BTreeMap<String, u32> {
    let exact: Vec<(String, f64)> = split
        .iter()
        .map(|s| (s.revision.clone(), total as f64 * s.percent as f64 / 100.0))
        .collect();
    let mut pods: BTreeMap<String, u32> = exact
        .iter()
        .map(|(r, x)| (r.clone(), x.floor() as u32))
        .collect();
    let left = total.saturating_sub(pods.values().sum());
    let mut by_remainder = exact;
    by_remainder.sort_by(|a, b| (b.1 - b.1.floor()).total_cmp(&(a.1 - a.1.floor())));
    for (revision, _) in by_remainder.iter().take(left as usize) {
        *pods.entry(revision.clone()).or_insert(0) += 1;
    }
    for s in split.iter().filter(|s| s.percent > 0) {
        pods.entry(s.revision.clone())
            .and_modify(|n| *n = (*n).max(1));
    }
    pods
}

fn shares(t: &Target) -> Result<Vec<TrafficTarget>, Error> {
    let revisions = t.revisions()?;
    let total = t.config.replicas.unwrap_or(1);
    // Settled on what the engine set: the shares it set. Otherwise the pods that are ready.
    let annotated: Vec<TrafficTarget> = revisions
        .iter()
        .filter_map(|d| {
            let percent = d["metadata"]["annotations"][PERCENT_ANNOTATION]
                .as_str()?
                .parse()
                .ok()?;
            Some(TrafficTarget {
                revision: name_of(d),
                percent,
            })
        })
        .collect();
    let pods = pods_for(&annotated, total);
    let settled = revisions.iter().all(|d| {
        let want = pods.get(&name_of(d)).copied().unwrap_or(0) as u64;
        let ready = d["status"]["readyReplicas"].as_u64().unwrap_or(0);
        d["spec"]["replicas"].as_u64() == Some(want) && (want == 0 || ready == want)
    });
    if settled && annotated.iter().map(|a| a.percent as u32).sum::<u32>() == 100 {
        return Ok(annotated.into_iter().filter(|a| a.percent > 0).collect());
    }
    let ready: BTreeMap<String, u32> = revisions
        .iter()
        .map(|d| {
            (
                name_of(d),
                d["status"]["readyReplicas"].as_u64().unwrap_or(0) as u32,
            )
        })
        .collect();
    Ok(percentages(&ready))
}

/// Counts as whole percentages adding up to 100 (largest remainder); zero counts left out.
pub fn percentages(counts: &BTreeMap<String, u32>) -> Vec<TrafficTarget> {
    let total: u32 = counts.values().sum();
    if total == 0 {
        return Vec::new();
    }
    let split: Vec<TrafficTarget> = counts
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(r, n)| TrafficTarget {
            revision: r.clone(),
            percent: (*n * 100 / total) as u8,
        })
        .collect();
    let mut split = split;
    let short = 100 - split.iter().map(|s| s.percent as u32).sum::<u32>();
    let mut order: Vec<usize> = (0..split.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse((counts[&split[i].revision] * 100) % total));
    for &i in order.iter().take(short as usize) {
        split[i].percent += 1;
    }
    split
}

fn name_of(deployment: &Value) -> String {
    deployment["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn describe(split: &[TrafficTarget]) -> String {
    let parts: Vec<String> = split
        .iter()
        .map(|s| format!("{} {}%", s.revision, s.percent))
        .collect();
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(pairs: &[(&str, u8)]) -> Vec<TrafficTarget> {
        pairs
            .iter()
            .map(|(r, p)| TrafficTarget {
                revision: r.to_string(),
                percent: *p,
            })
            .collect()
    }

    #[test]
    fn shares_become_whole_pods() {
        let pods = pods_for(&split(&[("web-r2", 20), ("web-r1", 80)]), 5);
        assert_eq!((pods["web-r2"], pods["web-r1"]), (1, 4));
        let pods = pods_for(&split(&[("web-r2", 60), ("web-r1", 40)]), 5);
        assert_eq!((pods["web-r2"], pods["web-r1"]), (3, 2));
        // A small share still gets a pod; the sum may then pass the total by one.
        let pods = pods_for(&split(&[("web-r2", 5), ("web-r1", 95)]), 5);
        assert_eq!(pods["web-r2"], 1);
        let pods = pods_for(&split(&[("web-r2", 100), ("web-r1", 0)]), 3);
        assert_eq!((pods["web-r2"], pods["web-r1"]), (3, 0));
    }

    #[test]
    fn counts_become_percentages_that_add_up() {
        let counts: BTreeMap<String, u32> = [("a".to_string(), 1), ("b".to_string(), 2)].into();
        let split = percentages(&counts);
        assert_eq!(split.iter().map(|s| s.percent as u32).sum::<u32>(), 100);
        assert_eq!((split[0].percent, split[1].percent), (33, 67));
        assert!(percentages(&BTreeMap::new()).is_empty());
    }
}
