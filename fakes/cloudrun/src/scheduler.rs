//! Cloud Scheduler API v1 jobs, as much of them as the `cloudrun` provider's `scheduler-job`
//! resource uses: create, get, patch (with its update mask), delete, list. Requests and
//! responses are held to `cloudscheduler.v1.json` by the server like the run API's.
//!
//! What Google checks and this fake checks too: a job's name is `PARENT/jobs/ID` (letters,
//! digits, hyphens, underscores, at most 500 characters), a schedule and a target are given,
//! an HTTP target's `attemptDeadline` is between 15 seconds and 30 minutes, `retryCount` is at
//! most 5, an existing job is refused by create (409) and a missing one is 404.

use super::ApiError;
use serde_json::{Value, json};
use std::collections::BTreeMap;

#[derive(Debug, Default)]
pub struct Jobs {
    /// By full name, `projects/P/locations/L/jobs/ID`.
    pub jobs: BTreeMap<String, Value>,
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(400, "INVALID_ARGUMENT", message)
}

fn not_found(name: &str) -> ApiError {
    ApiError::new(404, "NOT_FOUND", format!("Job not found: {name}."))
}

fn seconds(text: &str) -> Option<f64> {
    text.strip_suffix('s')?.parse().ok()
}

impl Jobs {
    pub fn call(
        &mut self,
        method: &str,
        params: &BTreeMap<String, String>,
        query: &[(String, String)],
        input: Value,
    ) -> Result<Value, ApiError> {
        let p = |k: &str| params.get(k).cloned().unwrap_or_default();
        let parent = format!(
            "projects/{}/locations/{}",
            p("projectsId"),
            p("locationsId")
        );
        let name = format!("{parent}/jobs/{}", p("jobsId"));
        match method {
            "cloudscheduler.projects.locations.jobs.create" => self.create(&parent, input),
            "cloudscheduler.projects.locations.jobs.get" => self
                .jobs
                .get(&name)
                .cloned()
                .ok_or_else(|| not_found(&name)),
            "cloudscheduler.projects.locations.jobs.patch" => {
                let mask = query
                    .iter()
                    .find(|(k, _)| k == "updateMask")
                    .map(|(_, v)| v.clone());
                self.patch(&name, input, mask)
            }
            "cloudscheduler.projects.locations.jobs.delete" => match self.jobs.remove(&name) {
                Some(_) => Ok(json!({})),
                None => Err(not_found(&name)),
            },
            "cloudscheduler.projects.locations.jobs.list" => {
                let prefix = format!("{parent}/jobs/");
                let jobs: Vec<&Value> = self
                    .jobs
                    .iter()
                    .filter(|(n, _)| n.starts_with(&prefix))
                    .map(|(_, j)| j)
                    .collect();
                Ok(json!({ "jobs": jobs }))
            }
            other => Err(ApiError::new(
                501,
                "UNIMPLEMENTED",
                format!("{other} is not modelled by this fake"),
            )),
        }
    }

    fn create(&mut self, parent: &str, job: Value) -> Result<Value, ApiError> {
        let name = job["name"].as_str().unwrap_or_default().to_string();
        let id = name
            .strip_prefix(&format!("{parent}/jobs/"))
            .ok_or_else(|| invalid(format!("Job name {name:?} must be under {parent}/jobs/")))?;
        let id_ok = !id.is_empty()
            && id.len() <= 500
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !id_ok {
            return Err(invalid(format!(
                "Job id {id:?} is invalid: use letters, numbers, hyphens and underscores"
            )));
        }
        if self.jobs.contains_key(&name) {
            return Err(ApiError::new(
                409,
                "ALREADY_EXISTS",
                format!("Job {name} already exists."),
            ));
        }
        let stored = stored(job)?;
        self.jobs.insert(name, stored.clone());
        Ok(stored)
    }

    fn patch(
        &mut self,
        name: &str,
        update: Value,
        mask: Option<String>,
    ) -> Result<Value, ApiError> {
        let current = self
            .jobs
            .get(name)
            .cloned()
            .ok_or_else(|| not_found(name))?;
        let mut job = current;
        match mask {
            // Without a mask, every field the request sets replaces the job's.
            None => {
                for (k, v) in update.as_object().into_iter().flatten() {
                    job[k] = v.clone();
                }
            }
            Some(mask) => {
                for field in mask.split(',').map(str::trim).filter(|f| !f.is_empty()) {
                    let known = [
                        "description",
                        "schedule",
                        "timeZone",
                        "httpTarget",
                        "attemptDeadline",
                        "retryConfig",
                        "pubsubTarget",
                        "appEngineHttpTarget",
                    ];
                    if !known.contains(&field) {
                        return Err(invalid(format!(
                            "updateMask names an unknown field: {field}"
                        )));
                    }
                    match update.get(field) {
                        Some(v) => job[field] = v.clone(),
                        None => {
                            if let Some(o) = job.as_object_mut() {
                                o.remove(field);
                            }
                        }
                    }
                }
            }
        }
        let stored = stored(job)?;
        self.jobs.insert(name.to_string(), stored.clone());
        Ok(stored)
    }
}

/// A job as Google keeps it: checked, with its output fields and defaults.
fn stored(mut job: Value) -> Result<Value, ApiError> {
    if job["schedule"].as_str().is_none_or(str::is_empty) {
        return Err(invalid("Job.schedule is required"));
    }
    let Some(http) = job.get("httpTarget") else {
        return Err(invalid("a job needs a target; this fake models httpTarget"));
    };
    if http["uri"].as_str().is_none_or(|u| !u.starts_with("http")) {
        return Err(invalid("HttpTarget.uri must be an http or https URL"));
    }
    if let Some(deadline) = job["attemptDeadline"].as_str() {
        match seconds(deadline) {
            Some(s) if (15.0..=1800.0).contains(&s) => {}
            _ => {
                return Err(invalid(format!(
                    "attemptDeadline {deadline} is out of range: an HTTP target's deadline is between 15s and 30m"
                )));
            }
        }
    }
    if job["retryConfig"]["retryCount"]
        .as_i64()
        .is_some_and(|n| !(0..=5).contains(&n))
    {
        return Err(invalid("retryConfig.retryCount must be between 0 and 5"));
    }
    if job.get("timeZone").is_none() {
        job["timeZone"] = json!("Etc/UTC");
    }
    // Google fills in the retry defaults and a User-Agent header, which plans must not take
    // for drift.
    let retry = job["retryConfig"].as_object().cloned().unwrap_or_default();
    let mut defaults = json!({
        "maxRetryDuration": "0s", "minBackoffDuration": "5s",
        "maxBackoffDuration": "3600s", "maxDoublings": 5
    });
    for (k, v) in retry {
        defaults[k] = v;
    }
    job["retryConfig"] = defaults;
    job["httpTarget"]["headers"]["User-Agent"] = json!("Google-Cloud-Scheduler");
    job["state"] = json!("ENABLED");
    job["userUpdateTime"] =
        json!(humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string());
    Ok(job)
}
