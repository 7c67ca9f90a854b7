//! The `http` health check: probes a URL of the revision (its own URL when the provider gives
//! one, so a revision without traffic can be checked) like a Kubernetes probe: every `interval`,
//! each probe passing when the status is expected and the body matches; `success_threshold`
//! passes in a row make it healthy, `failure_threshold` failures in a row unhealthy.

use engine_sdk::health::{CheckResult, Probe, Probing, Reach, Target};
use engine_sdk::http::{Client, RetryPolicy};
use engine_sdk::{Capabilities, Diagnostic, Error, ErrorExt, Health, PluginInfo};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Instant;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The path probed, such as `/healthz`.
    pub path: String,
    /// `revision` (its own URL, falling back to the service's) or `service` (the front door).
    pub target: String,
    /// Statuses that pass; empty means any 2xx.
    pub expect_status: Vec<u16>,
    /// Text the body must contain.
    pub body_contains: Option<String>,
    /// A JSON field the body must have: `pointer` (RFC 6901) and the value it `equals`.
    pub json: Option<JsonMatch>,
    /// Request headers.
    pub headers: BTreeMap<String, String>,
    /// A granted secret sent as `Authorization: Bearer …` (the plugin never sees its value).
    pub bearer_secret: Option<String>,
    /// One probe's timeout.
    pub timeout: String,
    /// Between probes.
    pub interval: String,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonMatch {
    pub pointer: String,
    pub equals: serde_json::Value,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            path: "/".into(),
            target: "revision".into(),
            expect_status: Vec::new(),
            body_contains: None,
            json: None,
            headers: BTreeMap::new(),
            bearer_secret: None,
            timeout: "2s".into(),
            interval: "1s".into(),
            success_threshold: 1,
            failure_threshold: 3,
        }
    }
}

pub const CONFIG_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "http health check",
  "type": "object",
  "properties": {
    "path": { "type": "string", "default": "/", "description": "The path probed, such as /healthz." },
    "target": { "enum": ["revision", "service"], "default": "revision", "description": "Probe the revision's own URL, or the service's front door." },
    "expect_status": { "type": "array", "items": { "type": "integer", "minimum": 100, "maximum": 599 }, "description": "Statuses that pass; default any 2xx." },
    "body_contains": { "type": "string", "description": "Text the body must contain." },
    "json": { "type": "object", "properties": { "pointer": { "type": "string" }, "equals": {} }, "required": ["pointer", "equals"], "additionalProperties": false, "description": "A JSON field the body must have." },
    "headers": { "type": "object", "additionalProperties": { "type": "string" }, "description": "Request headers." },
    "bearer_secret": { "type": "string", "description": "A granted secret sent as Authorization: Bearer." },
    "timeout": { "type": "string", "default": "2s" },
    "interval": { "type": "string", "default": "1s" },
    "success_threshold": { "type": "integer", "minimum": 1, "default": 1 },
    "failure_threshold": { "type": "integer", "minimum": 1, "default": 3 }
  },
  "additionalProperties": false
}"#;

/// A configuration with its durations parsed, checked beyond the schema.
pub struct Parsed {
    pub config: Config,
    pub reach: Reach,
    pub probing: Probing,
}

pub fn parse(text: &str) -> Result<Parsed, Error> {
    let text = if text.trim().is_empty() { "{}" } else { text };
    let config: Config = serde_json::from_str(text)
        .map_err(|e| Error::invalid_config(format!("http check configuration: {e}")))?;
    if !config.path.starts_with('/') {
        return Err(Error::invalid_config(format!(
            "http check `path` {:?} must start with /",
            config.path
        )));
    }
    let reach = Reach::parse("http", &config.target)?;
    let probing = Probing::parse(
        "http",
        &config.timeout,
        &config.interval,
        config.success_threshold,
        config.failure_threshold,
    )?;
    Ok(Parsed {
        config,
        reach,
        probing,
    })
}

/// Whether one answer passes, and why not.
pub fn judge(config: &Config, status: u16, body: &str) -> Result<(), String> {
    let status_ok = if config.expect_status.is_empty() {
        (200..300).contains(&status)
    } else {
        config.expect_status.contains(&status)
    };
    if !status_ok {
        return Err(format!("status {status}"));
    }
    if let Some(text) = &config.body_contains
        && !body.contains(text.as_str())
    {
        return Err(format!("the body does not contain {text:?}"));
    }
    if let Some(m) = &config.json {
        let value: serde_json::Value =
            serde_json::from_str(body).map_err(|e| format!("the body is not JSON ({e})"))?;
        match value.pointer(&m.pointer) {
            Some(v) if *v == m.equals => {}
            Some(v) => return Err(format!("{} is {v}, not {}", m.pointer, m.equals)),
            None => return Err(format!("the body has no {}", m.pointer)),
        }
    }
    Ok(())
}

pub struct HttpCheck;

impl Health for HttpCheck {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "http".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description:
                "Probes a URL of the revision: status, body and JSON-field matches, with thresholds"
                    .into(),
            config_schema: CONFIG_SCHEMA.into(),
            features: Vec::new(),
            capabilities: Capabilities {
                // The URLs come from the provider; the pipeline grants which hosts (such as
                // http://localhost:* for the local platform).
                http: vec!["*://*:*".into()],
                env: Vec::new(),
                dirs: Vec::new(),
                // `bearer_secret` names one; the pipeline grants which.
                secrets: vec!["*".into()],
            },
        }
    }

    fn validate(config: String) -> Vec<Diagnostic> {
        engine_sdk::config_diagnostics(parse(&config), None)
    }

    fn check(config: String, target: Target) -> Result<CheckResult, Error> {
        let Parsed {
            config,
            reach,
            probing,
        } = parse(&config)?;
        let base = engine_sdk::health::endpoint(&target, reach)?
            .url
            .trim_end_matches('/');
        let url = format!("{base}{}", config.path);
        let secret = match &config.bearer_secret {
            Some(name) => Some(engine_sdk::secrets::Secret::open(name)?),
            None => None,
        };
        // One attempt per probe: the thresholds are the retries.
        let client = Client::new()
            .with_timeout(probing.timeout)
            .with_retry(RetryPolicy::none());
        probing.run(|| {
            let mut request = client.get(&url);
            for (k, v) in &config.headers {
                request = request.header(k, v.clone());
            }
            if let Some(s) = &secret {
                request = request.bearer(s);
            }
            let sent = Instant::now();
            let outcome = match request.send_once() {
                Ok(response) => judge(&config, response.status, &response.text()),
                Err(e) => Err(e.describe()),
            };
            Ok(Probe {
                outcome: outcome
                    .map(|()| format!("GET {url} passed"))
                    .map_err(|why| format!("GET {url}: {why}")),
                latency: sent.elapsed(),
            })
        })
    }
}

engine_sdk::export_health!(HttpCheck);

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        parse(text).unwrap().config
    }

    #[test]
    fn answers_are_judged_by_status_body_and_json_field() {
        let any = config("{}");
        assert!(judge(&any, 204, "").is_ok());
        assert_eq!(judge(&any, 503, "").unwrap_err(), "status 503");
        let c = config(r#"{"expect_status": [200, 301], "body_contains": "ok"}"#);
        assert!(judge(&c, 301, "ok").is_ok());
        assert!(
            judge(&c, 200, "nope")
                .unwrap_err()
                .contains("does not contain")
        );
        let j = config(r#"{"json": {"pointer": "/status", "equals": "up"}}"#);
        assert!(judge(&j, 200, r#"{"status":"up"}"#).is_ok());
        assert_eq!(
            judge(&j, 200, r#"{"status":"down"}"#).unwrap_err(),
            r#"/status is "down", not "up""#
        );
        assert!(judge(&j, 200, "<html>").unwrap_err().contains("not JSON"));
    }

    #[test]
    fn bad_configurations_say_what_to_fix() {
        for (text, expected) in [
            (r#"{"path": "healthz"}"#, "must start with /"),
            (r#"{"timeout": "soon"}"#, "write it like 500ms, 30s or 5m"),
            (r#"{"target": "pod"}"#, "use \"revision\" or \"service\""),
            (
                r#"{"interval": "10s", "failure_threshold": 3}"#,
                "more than the 25s a check may run",
            ),
            (r#"{"pathh": "/"}"#, "unknown field `pathh`"),
        ] {
            let e = parse(text)
                .err()
                .unwrap_or_else(|| panic!("{text} should fail"));
            assert!(e.describe().contains(expected), "{text}: {}", e.describe());
        }
    }
}
