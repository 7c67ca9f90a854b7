//! {{name}}: a health check. A revision is healthy when its URL answers `path` with a 2xx
//! status, unhealthy when it answers anything else or nobody answers.

use engine_sdk::health::{CheckResult, Target};
use engine_sdk::http::{Client, RetryPolicy};
use engine_sdk::{
    Capabilities, Diagnostic, EndpointKind, Error, ErrorExt, Health, PluginInfo, Severity, Verdict,
};
use serde::Deserialize;
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The path probed.
    #[serde(default = "root")]
    pub path: String,
}

fn root() -> String {
    "/".into()
}

pub fn parse(text: &str) -> Result<Config, Error> {
    let text = if text.trim().is_empty() { "{}" } else { text };
    let config: Config = serde_json::from_str(text)
        .map_err(|e| Error::invalid_config(format!("{{name}} configuration: {e}")))?;
    if !config.path.starts_with('/') {
        return Err(Error::invalid_config(format!(
            "`path` {:?} must start with /",
            config.path
        )));
    }
    Ok(config)
}

/// The verdict for one answer (`None`: nobody answered).
pub fn judge(status: Option<u16>) -> Verdict {
    match status {
        Some(200..=299) => Verdict::Healthy,
        _ => Verdict::Unhealthy,
    }
}

pub struct Check;

impl Health for Check {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "{{name}}".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Healthy when the revision answers `path` with a 2xx status".into(),
            config_schema: r#"{"type":"object","properties":{"path":{"type":"string","default":"/"}},"additionalProperties":false}"#.into(),
            features: Vec::new(),
            capabilities: Capabilities {
                // The URLs come from the provider; the pipeline grants which hosts.
                http: vec!["*://*:*".into()],
                ..Capabilities::none()
            },
        }
    }

    fn validate(config: String) -> Vec<Diagnostic> {
        match parse(&config) {
            Ok(_) => Vec::new(),
            Err(e) => vec![Diagnostic {
                severity: Severity::Error,
                path: String::new(),
                message: e.describe(),
                hint: None,
            }],
        }
    }

    fn check(config: String, target: Target) -> Result<CheckResult, Error> {
        let config = parse(&config)?;
        // The revision's own URL when the provider has one, else the service's.
        let endpoint = target
            .endpoints
            .iter()
            .find(|e| e.kind == EndpointKind::Revision)
            .or(target.endpoints.first())
            .ok_or_else(|| Error::invalid_config("the provider lists no URL to probe"))?;
        let url = format!("{}{}", endpoint.url.trim_end_matches('/'), config.path);
        let client = Client::new()
            .with_timeout(Duration::from_secs(2))
            .with_retry(RetryPolicy::none());
        let (status, message) = match client.get(&url).send_once() {
            Ok(response) => (Some(response.status), format!("GET {url}: {}", response.status)),
            Err(e) => (None, format!("GET {url}: {}", e.describe())),
        };
        Ok(CheckResult {
            verdict: judge(status),
            message,
            measurements: Vec::new(),
        })
    }
}

engine_sdk::export_health!(Check);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_2xx_answers_are_healthy() {
        assert_eq!(judge(Some(200)), Verdict::Healthy);
        assert_eq!(judge(Some(503)), Verdict::Unhealthy);
        assert_eq!(judge(None), Verdict::Unhealthy);
    }

    #[test]
    fn a_path_must_be_absolute() {
        assert_eq!(parse("{}").unwrap().path, "/");
        assert!(parse(r#"{"path": "healthz"}"#).is_err());
    }
}
