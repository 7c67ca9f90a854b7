//! A health check for the engine's own tests: healthy, unless the revision under analysis
//! matches one of `unhealthy_revisions` (substrings), or `verdict` says otherwise.

use engine_sdk::health::{CheckResult, Target};
use engine_sdk::{
    Capabilities, Diagnostic, Error, ErrorExt, Health, Measurement, PluginInfo, Severity, Verdict,
};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The verdict for revisions not listed below; default healthy.
    #[serde(default)]
    pub verdict: Option<String>,
    /// Revisions (by substring of their id) that are unhealthy.
    #[serde(default)]
    pub unhealthy_revisions: Vec<String>,
}

fn parse(text: &str) -> Result<Config, Error> {
    let text = if text.trim().is_empty() { "{}" } else { text };
    let config: Config = serde_json::from_str(text)
        .map_err(|e| Error::invalid_config(format!("test-health config: {e}")))?;
    match config.verdict.as_deref() {
        None | Some("healthy" | "unhealthy" | "inconclusive") => Ok(config),
        Some(other) => Err(Error::invalid_config(format!("unknown verdict {other:?}"))),
    }
}

/// The verdict for a revision under a configuration.
pub fn judge(config: &Config, revision: Option<&str>) -> Verdict {
    let listed = revision.is_some_and(|r| {
        config
            .unhealthy_revisions
            .iter()
            .any(|u| r.contains(u.as_str()))
    });
    match (listed, config.verdict.as_deref()) {
        (true, _) | (false, Some("unhealthy")) => Verdict::Unhealthy,
        (false, Some("inconclusive")) => Verdict::Inconclusive,
        _ => Verdict::Healthy,
    }
}

pub struct TestHealth;

impl Health for TestHealth {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "test-health".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Test health check with a configured verdict".into(),
            config_schema: r#"{"type":"object","properties":{"verdict":{"enum":["healthy","unhealthy","inconclusive"]},"unhealthy_revisions":{"type":"array","items":{"type":"string"}}},"additionalProperties":false}"#.into(),
            features: Vec::new(),
            capabilities: Capabilities::none(),
        }
    }

    fn validate(config: String) -> Vec<Diagnostic> {
        match parse(&config) {
            Ok(_) => Vec::new(),
            Err(e) => vec![Diagnostic {
                severity: Severity::Error,
                path: "/verdict".into(),
                message: e.describe(),
                hint: None,
            }],
        }
    }

    fn check(config: String, target: Target) -> Result<CheckResult, Error> {
        let config = parse(&config)?;
        let verdict = judge(&config, target.revision.as_deref());
        let error_rate = if verdict == Verdict::Unhealthy {
            12.5
        } else {
            0.0
        };
        Ok(CheckResult {
            verdict,
            message: format!(
                "error rate {error_rate}% for {}",
                target.revision.as_deref().unwrap_or(&target.service)
            ),
            measurements: vec![Measurement {
                name: "error-rate".into(),
                value: error_rate,
                unit: "percent".into(),
            }],
        })
    }
}

engine_sdk::export_health!(TestHealth);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_revisions_are_unhealthy() {
        let c = parse(r#"{"unhealthy_revisions": ["v3"]}"#).unwrap();
        assert_eq!(judge(&c, Some("api-v3-run2")), Verdict::Unhealthy);
        assert_eq!(judge(&c, Some("api-v2")), Verdict::Healthy);
        assert_eq!(
            judge(&parse(r#"{"verdict": "inconclusive"}"#).unwrap(), None),
            Verdict::Inconclusive
        );
        assert!(parse(r#"{"verdict": "great"}"#).is_err());
        assert_eq!(
            TestHealth::validate(r#"{"verdict": "great"}"#.into()).len(),
            1
        );
    }
}
