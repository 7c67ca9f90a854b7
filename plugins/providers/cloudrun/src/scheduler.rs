//! The `scheduler-job` resource: a Cloud Scheduler HTTP job (Cloud Scheduler API v1), such as
//! the data pipeline's `reset-daily-quotas`, calling a service's URL on a schedule.
//!
//! The spec is written in the pipeline's snake_case and turned into the API's `Job`. `plan`
//! compares only what the spec sets, so the defaults Google fills in (a retry config, a
//! `User-Agent` header) never show as drift. The recommended way to authenticate the call is
//! `oidc`: Cloud Scheduler mints an identity token for the service account, which the target
//! service's `invokers` admits. A header whose value is a secret (the guide's `X-Admin-Key`)
//! is `secret_headers`: the job is sent with the secret's placeholder, which the host replaces
//! with the value on its way to Google; the plugin never holds it, and Google's answer reaches
//! it masked, so `plan` compares only that the header is there.

use super::api::Google;
use super::config::Config;
use base64::Engine as _;
use engine_sdk::resources::{ResourceKind, ResourceSpec, ResourceStatus};
use engine_sdk::{Change, DeploymentPlan, Error, ErrorExt, PlanAction};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

pub const KIND: &str = "scheduler-job";

const SPEC_SCHEMA: &str = r##"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "cloudrun scheduler-job",
  "type": "object",
  "required": ["schedule", "uri"],
  "properties": {
    "schedule": { "type": "string", "minLength": 1, "description": "unix-cron, such as \"0 0 * * *\"" },
    "time_zone": { "type": "string", "description": "tz database name; UTC by default" },
    "uri": { "type": "string", "pattern": "^https?://", "description": "what the job calls, such as \"${services.api.url}/reset\"" },
    "http_method": { "enum": ["POST", "GET", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS"] },
    "headers": { "type": "object", "additionalProperties": { "type": "string" } },
    "secret_headers": { "type": "object", "additionalProperties": { "type": "string", "pattern": "^[A-Za-z0-9_.-]+$" }, "description": "header name → the name of a secret granted under [plugins.cloudrun.secrets], whose value the host puts in" },
    "body": { "type": "string", "description": "the request body, as text" },
    "description": { "type": "string" },
    "attempt_deadline": { "type": "string", "description": "15s to 30m, such as \"180s\"" },
    "retry": {
      "type": "object",
      "properties": {
        "count": { "type": "integer", "minimum": 0, "maximum": 5 },
        "min_backoff": { "type": "string" },
        "max_backoff": { "type": "string" },
        "max_retry_duration": { "type": "string" },
        "max_doublings": { "type": "integer", "minimum": 0 }
      },
      "additionalProperties": false
    },
    "oidc": {
      "type": "object",
      "required": ["service_account"],
      "properties": {
        "service_account": { "type": "string", "description": "NAME@PROJECT.iam.gserviceaccount.com" },
        "audience": { "type": "string", "description": "the token's audience; the URI by default" }
      },
      "additionalProperties": false
    },
    "location": { "type": "string", "description": "the job's region; provider_config's region by default" },
    "job_id": { "type": "string", "description": "the job's id; the resource's name by default" }
  },
  "additionalProperties": false
}"##;

pub fn kind() -> ResourceKind {
    ResourceKind {
        name: KIND.into(),
        description: "A Cloud Scheduler HTTP job (Cloud Scheduler API v1)".into(),
        spec_schema: SPEC_SCHEMA.into(),
        outputs: vec!["name".into(), "uri".into()],
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    schedule: String,
    #[serde(default)]
    time_zone: Option<String>,
    uri: String,
    #[serde(default)]
    http_method: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    secret_headers: BTreeMap<String, String>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    attempt_deadline: Option<String>,
    #[serde(default)]
    retry: Option<Retry>,
    #[serde(default)]
    oidc: Option<Oidc>,
    #[serde(default)]
    location: Option<String>,
    #[serde(default)]
    job_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Retry {
    #[serde(default)]
    count: Option<i64>,
    #[serde(default)]
    min_backoff: Option<String>,
    #[serde(default)]
    max_backoff: Option<String>,
    #[serde(default)]
    max_retry_duration: Option<String>,
    #[serde(default)]
    max_doublings: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Oidc {
    service_account: String,
    #[serde(default)]
    audience: Option<String>,
}

/// A duration in the API's form (`180s`), from the pipeline's (`180s`, `3m`, `1h`).
fn duration(what: &str, text: &str) -> Result<String, Error> {
    let d: Duration = humantime::parse_duration(text)
        .map_err(|e| Error::invalid_config(format!("`{what}` {text:?}: {e}")))?;
    Ok(format!("{}s", d.as_secs()))
}

/// The job a spec describes.
struct Desired {
    /// `projects/P/locations/L/jobs/ID`.
    name: String,
    /// The API's `Job`, with placeholders for secret headers.
    job: Value,
    /// The leaf paths of secret headers (`httpTarget.headers.X-Admin-Key`), by secret name.
    secret_paths: BTreeMap<String, String>,
}

/// The headers whose values are secrets.
struct SecretHeaders {
    /// Header name to the secret's placeholder, which the host fills on egress.
    values: BTreeMap<String, String>,
    /// Leaf path (`httpTarget.headers.X-Admin-Key`) to secret name.
    paths: BTreeMap<String, String>,
}

/// Opens the secrets a spec's `secret_headers` name.
fn secret_headers(job_name: &str, spec: &Spec) -> Result<SecretHeaders, Error> {
    let (mut values, mut paths) = (BTreeMap::new(), BTreeMap::new());
    for (header, secret) in &spec.secret_headers {
        if spec.headers.keys().any(|h| h.eq_ignore_ascii_case(header)) {
            return Err(Error::invalid_config(format!(
                "scheduler-job `{job_name}`: header {header} is in both `headers` and `secret_headers`; keep one"
            )));
        }
        let opened = engine_sdk::secrets::Secret::open(secret).map_err(|e| {
            Error::invalid_config(format!(
                "scheduler-job `{job_name}`: secret_headers.{header} names secret '{secret}', which cannot be opened ({e}); grant it under [plugins.cloudrun.secrets], such as `{secret} = {{ from = \"env:VARIABLE\", hosts = [\"https://cloudscheduler.googleapis.com\"] }}`"
            ))
        })?;
        values.insert(header.clone(), opened.placeholder().to_string());
        paths.insert(format!("httpTarget.headers.{header}"), secret.clone());
    }
    Ok(SecretHeaders { values, paths })
}

/// The job's full name (`projects/P/locations/L/jobs/ID`) and its parsed spec. Reading and
/// deleting a job need only this, not the secrets its headers name.
fn job_name(target: &ResourceSpec) -> Result<(String, Spec), Error> {
    let config = Config::parse(&target.config)?;
    let spec: Spec = serde_json::from_str(&target.spec)
        .map_err(|e| Error::invalid_config(format!("scheduler-job `{}`: {e}", target.name)))?;
    let location = match spec
        .location
        .clone()
        .or_else(|| config.regions().first().cloned())
    {
        Some(l) => l,
        None => {
            return Err(Error::invalid_config(
                "a scheduler job needs a `location` or a `region` in provider_config",
            ));
        }
    };
    let id = spec.job_id.clone().unwrap_or_else(|| target.name.clone());
    let name = format!("projects/{}/locations/{location}/jobs/{id}", config.project);
    Ok((name, spec))
}

/// The job the spec describes, as the API's `Job`, and its full name.
fn desired(target: &ResourceSpec) -> Result<Desired, Error> {
    let (name, spec) = job_name(target)?;
    let mut http = json!({
        "uri": spec.uri,
        "httpMethod": spec.http_method.clone().unwrap_or_else(|| "POST".into()),
    });
    let secret = secret_headers(&target.name, &spec)?;
    let secret_paths = secret.paths;
    let mut headers = spec.headers.clone();
    headers.extend(secret.values);
    if !headers.is_empty() {
        http["headers"] = json!(headers);
    }
    if let Some(body) = &spec.body {
        http["body"] = json!(base64::engine::general_purpose::STANDARD.encode(body));
    }
    if let Some(oidc) = &spec.oidc {
        http["oidcToken"] = json!({
            "serviceAccountEmail": oidc.service_account,
            "audience": oidc.audience.clone().unwrap_or_else(|| spec.uri.clone()),
        });
    }
    let mut job = json!({
        "name": name,
        "schedule": spec.schedule,
        "timeZone": spec.time_zone.clone().unwrap_or_else(|| "UTC".into()),
        "httpTarget": http,
    });
    if let Some(d) = &spec.description {
        job["description"] = json!(d);
    }
    if let Some(d) = &spec.attempt_deadline {
        job["attemptDeadline"] = json!(duration("attempt_deadline", d)?);
    }
    if let Some(r) = &spec.retry {
        let mut retry = Map::new();
        if let Some(n) = r.count {
            retry.insert("retryCount".into(), json!(n));
        }
        for (key, value, what) in [
            ("minBackoffDuration", &r.min_backoff, "retry.min_backoff"),
            ("maxBackoffDuration", &r.max_backoff, "retry.max_backoff"),
            (
                "maxRetryDuration",
                &r.max_retry_duration,
                "retry.max_retry_duration",
            ),
        ] {
            if let Some(v) = value {
                retry.insert(key.into(), json!(duration(what, v)?));
            }
        }
        if let Some(n) = r.max_doublings {
            retry.insert("maxDoublings".into(), json!(n));
        }
        job["retryConfig"] = Value::Object(retry);
    }
    Ok(Desired {
        name,
        job,
        secret_paths,
    })
}

/// Every leaf of `value` by its path (`httpTarget.uri`); headers are leaves one by one.
fn leaves(value: &Value, path: &str, out: &mut BTreeMap<String, Value>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                leaves(v, &p, out);
            }
        }
        other => {
            out.insert(path.to_string(), other.clone());
        }
    }
}

fn shown(v: Option<&Value>) -> Option<String> {
    v.map(|v| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

/// The fields the spec sets that the job has otherwise. A secret header's value cannot be
/// compared (the plugin sees neither value): it is a change only when the header is missing.
fn changes(desired: &Desired, observed: &Value) -> Vec<Change> {
    let (mut want, mut have) = (BTreeMap::new(), BTreeMap::new());
    leaves(&desired.job, "", &mut want);
    leaves(observed, "", &mut have);
    want.iter()
        .filter_map(|(path, value)| match desired.secret_paths.get(path) {
            Some(secret) => (!have.contains_key(path)).then(|| Change {
                field: path.clone(),
                before: None,
                after: Some(format!("(the value of secret {secret})")),
            }),
            None => (have.get(path) != Some(value)).then(|| Change {
                field: path.clone(),
                before: shown(have.get(path)),
                after: shown(Some(value)),
            }),
        })
        .collect()
}

fn scheduler(target: &ResourceSpec) -> Result<Google, Error> {
    let config = Config::parse(&target.config)?;
    let base = format!("{}/v1", config.scheduler_endpoint().trim_end_matches('/'));
    Google::new(base, "Cloud Scheduler")
}

fn status(job: Value) -> ResourceStatus {
    let name = job["name"].as_str().unwrap_or_default().to_string();
    let uri = job["httpTarget"]["uri"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    ResourceStatus {
        id: name.clone(),
        observed: job.to_string(),
        outputs: vec![("name".into(), name), ("uri".into(), uri)],
    }
}

pub fn read(target: &ResourceSpec) -> Result<Option<ResourceStatus>, Error> {
    let (name, _) = job_name(target)?;
    Ok(scheduler(target)?.find(&name)?.map(status))
}

pub fn plan(
    target: &ResourceSpec,
    current: Option<&ResourceStatus>,
) -> Result<DeploymentPlan, Error> {
    let desired = desired(target)?;
    let name = &desired.name;
    let Some(current) = current else {
        let mut changes = changes(&desired, &json!({}));
        changes.retain(|c| c.field != "name");
        return Ok(DeploymentPlan {
            action: PlanAction::Create,
            changes,
            summary: format!("create {name}"),
        });
    };
    let observed: Value = serde_json::from_str(&current.observed).unwrap_or_default();
    let changes = changes(&desired, &observed);
    Ok(match changes.is_empty() {
        true => DeploymentPlan {
            action: PlanAction::NoChange,
            changes,
            summary: format!("{name} is as described"),
        },
        false => DeploymentPlan {
            action: PlanAction::Update,
            summary: format!("update {} field(s) of {name}", changes.len()),
            changes,
        },
    })
}

pub fn apply(
    target: &ResourceSpec,
    current: Option<&ResourceStatus>,
) -> Result<ResourceStatus, Error> {
    let Desired { name, job, .. } = desired(target)?;
    let api = scheduler(target)?;
    let parent = name
        .rsplit_once("/jobs/")
        .map(|(p, _)| p)
        .unwrap_or_default();
    // Read again rather than trust `current`: a resumed run may repeat an apply that landed.
    let exists = current.is_some() || api.find(&name)?.is_some();
    let applied = if exists {
        // Every field the engine manages, replaced as a whole (httpTarget with its headers).
        let mut mask: Vec<&str> = job
            .as_object()
            .map(|o| {
                o.keys()
                    .map(String::as_str)
                    .filter(|k| *k != "name")
                    .collect()
            })
            .unwrap_or_default();
        mask.sort_unstable();
        api.send(
            "PATCH",
            &format!("{name}?updateMask={}", mask.join(",")),
            Some(&job),
        )?
    } else {
        match api.send("POST", &format!("{parent}/jobs"), Some(&job)) {
            Err(Error::Conflict(_)) => api.find(&name)?.ok_or_else(|| {
                Error::conflict(format!("{name} exists and vanished again; run again"))
            })?,
            other => other?,
        }
    };
    Ok(status(applied))
}

pub fn delete(target: &ResourceSpec) -> Result<(), Error> {
    let (name, _) = job_name(target)?;
    scheduler(target)?.delete(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(spec: Value) -> ResourceSpec {
        ResourceSpec {
            kind: KIND.into(),
            name: "reset-daily-quotas".into(),
            spec: spec.to_string(),
            config: json!({"project": "gac-prod-471220", "region": "us-central1"}).to_string(),
        }
    }

    #[test]
    fn the_guides_job_becomes_the_apis_job() {
        let Desired { name, job, .. } = desired(&target(json!({
            "schedule": "0 0 * * *",
            "uri": "https://api.run.app/api/v1/scheduler/reset-daily-quotas",
            "attempt_deadline": "180s",
            "retry": {"count": 3, "max_backoff": "1h", "min_backoff": "30s"},
            "oidc": {"service_account": "scheduler@gac-prod-471220.iam.gserviceaccount.com"},
        })))
        .unwrap();
        assert_eq!(
            name,
            "projects/gac-prod-471220/locations/us-central1/jobs/reset-daily-quotas"
        );
        assert_eq!(job["httpTarget"]["httpMethod"], "POST");
        assert_eq!(job["retryConfig"]["maxBackoffDuration"], "3600s");
        assert_eq!(job["attemptDeadline"], "180s");
        assert_eq!(
            job["httpTarget"]["oidcToken"]["audience"],
            "https://api.run.app/api/v1/scheduler/reset-daily-quotas"
        );
    }

    #[test]
    fn only_what_the_spec_sets_is_compared() {
        let wanted = desired(&target(
            json!({"schedule": "*/30 * * * *", "uri": "https://a"}),
        ))
        .unwrap();
        let mut observed = wanted.job.clone();
        observed["state"] = json!("ENABLED");
        observed["retryConfig"] = json!({"maxDoublings": 5});
        assert!(changes(&wanted, &observed).is_empty());
        observed["schedule"] = json!("*/15 * * * *");
        let found = changes(&wanted, &observed);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].field, "schedule");
        assert_eq!(found[0].before.as_deref(), Some("*/15 * * * *"));
    }

    #[test]
    fn a_secret_header_carries_the_placeholder_and_is_compared_by_presence() {
        let spec = json!({"schedule": "0 0 * * *", "uri": "https://a",
                          "secret_headers": {"X-Admin-Key": "admin-key"}});
        let refused = desired(&target(spec.clone())).err().unwrap();
        assert!(
            refused
                .to_string()
                .contains("grant it under [plugins.cloudrun.secrets]"),
            "{refused}"
        );
        engine_sdk::testing::grant_secret("admin-key", "the-key");
        let wanted = desired(&target(spec)).unwrap();
        let sent = wanted.job["httpTarget"]["headers"]["X-Admin-Key"]
            .as_str()
            .unwrap();
        assert_eq!(sent, "engine-secret-admin-key-native");
        // Google's answer reaches the plugin masked: the header is there, which is all it can see.
        let mut observed = wanted.job.clone();
        observed["httpTarget"]["headers"]["X-Admin-Key"] = json!("*******");
        assert!(changes(&wanted, &observed).is_empty());
        observed["httpTarget"]["headers"] = json!({});
        let found = changes(&wanted, &observed);
        assert_eq!(found.len(), 1);
        assert_eq!(
            found[0].after.as_deref(),
            Some("(the value of secret admin-key)")
        );
    }

    #[test]
    fn a_header_is_either_plain_or_secret() {
        engine_sdk::testing::grant_secret("admin-key", "the-key");
        let both = json!({"schedule": "0 0 * * *", "uri": "https://a",
                          "headers": {"x-admin-key": "plain"},
                          "secret_headers": {"X-Admin-Key": "admin-key"}});
        let refused = desired(&target(both)).err().unwrap();
        assert!(refused.to_string().contains("keep one"), "{refused}");
    }
}
