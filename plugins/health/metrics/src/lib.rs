//! The `metrics` health check: thresholds on the revision's error rate and p95/p99 latency over
//! the analysis window (since the last traffic change), such as the seeds' "error rate > 1 %"
//! and "p95 > 500 ms" gates. Today it reads the local platform's per-revision metrics; too few
//! requests in the window make the verdict inconclusive rather than a guess.

use engine_sdk::health::{CheckResult, Target};
use engine_sdk::http::Client;
use engine_sdk::{
    Capabilities, Diagnostic, Error, ErrorExt, Health, Measurement, PluginInfo, Verdict,
};
use local_api::Metrics;
use serde::Deserialize;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the metrics come from: `local` (the local platform's admin API).
    pub source: String,
    /// The local platform's admin API.
    pub admin: String,
    /// Unhealthy above this share of 5xx answers, in percent.
    pub max_error_rate_percent: Option<f64>,
    /// Unhealthy above this 95th percentile latency, in milliseconds.
    pub max_p95_ms: Option<f64>,
    /// Unhealthy above this 99th percentile latency, in milliseconds.
    pub max_p99_ms: Option<f64>,
    /// Inconclusive below this many requests in the window.
    pub min_requests: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            source: "local".into(),
            admin: local_api::DEFAULT_ADMIN.into(),
            max_error_rate_percent: None,
            max_p95_ms: None,
            max_p99_ms: None,
            min_requests: 10,
        }
    }
}

pub const CONFIG_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "metrics health check",
  "type": "object",
  "properties": {
    "source": { "enum": ["local"], "default": "local", "description": "Where the metrics come from." },
    "admin": { "type": "string", "default": "http://localhost:7700", "description": "The local platform's admin API." },
    "max_error_rate_percent": { "type": "number", "minimum": 0, "maximum": 100, "description": "Unhealthy above this share of 5xx answers." },
    "max_p95_ms": { "type": "number", "exclusiveMinimum": 0, "description": "Unhealthy above this p95 latency." },
    "max_p99_ms": { "type": "number", "exclusiveMinimum": 0, "description": "Unhealthy above this p99 latency." },
    "min_requests": { "type": "integer", "minimum": 1, "default": 10, "description": "Inconclusive below this many requests in the window." }
  },
  "additionalProperties": false
}"#;

pub fn parse(text: &str) -> Result<Config, Error> {
    let text = if text.trim().is_empty() { "{}" } else { text };
    let config: Config = serde_json::from_str(text)
        .map_err(|e| Error::invalid_config(format!("metrics check configuration: {e}")))?;
    if config.source != "local" {
        return Err(Error::invalid_config(format!(
            "metrics check `source` {:?}: only \"local\" is supported so far",
            config.source
        )));
    }
    if config.max_error_rate_percent.is_none()
        && config.max_p95_ms.is_none()
        && config.max_p99_ms.is_none()
    {
        return Err(Error::invalid_config(
            "the metrics check has no threshold: set max_error_rate_percent, max_p95_ms or max_p99_ms",
        ));
    }
    Ok(config)
}

/// The verdict and its reason for a window's metrics.
pub fn judge(config: &Config, m: &Metrics) -> (Verdict, String) {
    let seen = format!(
        "{} requests, error rate {:.1}%, p95 {:.0} ms, p99 {:.0} ms",
        m.requests, m.error_rate_percent, m.p95_ms, m.p99_ms
    );
    let counted = format!("{} requests in the window", m.requests);
    if m.requests < config.min_requests {
        return (
            Verdict::Inconclusive,
            format!(
                "only {} requests since the step began (need {})",
                m.requests, config.min_requests
            ),
        );
    }
    let mut broken = Vec::new();
    if let Some(max) = config.max_error_rate_percent
        && m.error_rate_percent > max
    {
        broken.push(format!("error rate {:.1}% > {max}%", m.error_rate_percent));
    }
    if let Some(max) = config.max_p95_ms
        && m.p95_ms > max
    {
        broken.push(format!("p95 {:.0} ms > {max} ms", m.p95_ms));
    }
    if let Some(max) = config.max_p99_ms
        && m.p99_ms > max
    {
        broken.push(format!("p99 {:.0} ms > {max} ms", m.p99_ms));
    }
    if broken.is_empty() {
        (Verdict::Healthy, seen)
    } else {
        (
            Verdict::Unhealthy,
            format!("{} ({counted})", broken.join(", ")),
        )
    }
}

pub struct MetricsCheck;

impl Health for MetricsCheck {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "metrics".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description:
                "Thresholds on a revision's error rate and p95/p99 latency over the analysis window"
                    .into(),
            config_schema: CONFIG_SCHEMA.into(),
            features: Vec::new(),
            capabilities: Capabilities {
                http: vec!["http://localhost:*".into()],
                env: Vec::new(),
                dirs: Vec::new(),
                secrets: Vec::new(),
            },
        }
    }

    fn validate(config: String) -> Vec<Diagnostic> {
        engine_sdk::config_diagnostics(parse(&config), None)
    }

    fn check(config: String, target: Target) -> Result<CheckResult, Error> {
        let config = parse(&config)?;
        let revision = target.revision.as_deref().ok_or_else(|| {
            Error::invalid_config("the metrics check needs a revision to look at")
        })?;
        let url = format!(
            "{}/v1/services/{}/revisions/{revision}/metrics?since_ms={}",
            config.admin.trim_end_matches('/'),
            target.service,
            target.since_ms
        );
        let m: Metrics = Client::new()
            .with_timeout(Duration::from_secs(10))
            .get(&url)
            .send_json()?;
        let (verdict, message) = judge(&config, &m);
        Ok(CheckResult {
            verdict,
            message,
            measurements: vec![
                Measurement {
                    name: "requests".into(),
                    value: m.requests as f64,
                    unit: "count".into(),
                },
                Measurement {
                    name: "error-rate".into(),
                    value: m.error_rate_percent,
                    unit: "percent".into(),
                },
                Measurement {
                    name: "latency-p95".into(),
                    value: m.p95_ms,
                    unit: "ms".into(),
                },
                Measurement {
                    name: "latency-p99".into(),
                    value: m.p99_ms,
                    unit: "ms".into(),
                },
            ],
        })
    }
}

engine_sdk::export_health!(MetricsCheck);

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(requests: u64, error_rate: f64, p95: f64) -> Metrics {
        Metrics {
            requests,
            error_rate_percent: error_rate,
            p50_ms: p95 / 2.0,
            p95_ms: p95,
            p99_ms: p95 * 1.2,
            ..Default::default()
        }
    }

    #[test]
    fn thresholds_decide_and_say_why() {
        let c = parse(r#"{"max_error_rate_percent": 1, "max_p95_ms": 500}"#).unwrap();
        assert_eq!(judge(&c, &metrics(200, 0.5, 120.0)).0, Verdict::Healthy);
        let (v, why) = judge(&c, &metrics(200, 12.5, 620.0));
        assert_eq!(v, Verdict::Unhealthy);
        assert!(
            why.starts_with("error rate 12.5% > 1%, p95 620 ms > 500 ms"),
            "{why}"
        );
        let (v, why) = judge(&c, &metrics(3, 100.0, 9000.0));
        assert_eq!(v, Verdict::Inconclusive, "too few requests to judge");
        assert!(why.contains("only 3 requests"));
    }

    #[test]
    fn a_check_without_a_threshold_is_refused() {
        assert!(
            parse("{}")
                .unwrap_err()
                .describe()
                .contains("has no threshold")
        );
        assert!(parse(r#"{"source": "prometheus", "max_p95_ms": 1}"#).is_err());
    }
}
