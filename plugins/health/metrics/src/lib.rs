//! The `metrics` health check: thresholds on the revision's error rate and p95/p99 latency over
//! the analysis window (since the last traffic change), such as the seeds' "error rate > 1 %"
//! and "p95 > 500 ms" gates. The numbers come from the local platform's admin API
//! (`source = "local"`), from any Prometheus-compatible query API (`source = "prometheus"`:
//! Prometheus, Thanos, Mimir, Google Managed Prometheus…) through PromQL queries, or from the
//! load balancer's CloudWatch metrics of the revision's target group on ECS
//! (`source = "cloudwatch"`). Too few
//! requests in the window, or a query without data, make the verdict inconclusive rather than
//! a guess.

mod cloudwatch;
mod prometheus;

use engine_sdk::health::{CheckResult, Target};
use engine_sdk::http::Client;
use engine_sdk::{
    Capabilities, Diagnostic, Error, ErrorExt, Health, Measurement, PluginInfo, Verdict,
};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

pub use cloudwatch::CloudWatch;
pub use prometheus::Queries;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the metrics come from: `local`, `prometheus` or `cloudwatch`.
    pub source: String,
    /// The local platform's admin API (`source = "local"`).
    pub admin: String,
    /// The Prometheus-compatible API's base URL, such as `http://localhost:9090`.
    pub prometheus: Option<String>,
    /// Where the revision's load balancer metrics are (`source = "cloudwatch"`).
    pub cloudwatch: Option<CloudWatch>,
    /// PromQL for each number, with `{{service}}`, `{{revision}}` and `{{window}}` filled in.
    pub queries: Queries,
    /// The shortest range `{{window}}` stands for, so a window shorter than a few scrape
    /// intervals still has samples.
    pub min_window: String,
    /// Headers sent to the Prometheus API (a tenant header, say).
    pub headers: BTreeMap<String, String>,
    /// A granted secret sent to the Prometheus API as `Authorization: Bearer …`.
    pub bearer_secret: Option<String>,
    /// Unhealthy above this share of 5xx answers, in percent.
    pub max_error_rate_percent: Option<f64>,
    /// Unhealthy above this 95th percentile latency, in milliseconds.
    pub max_p95_ms: Option<f64>,
    /// Unhealthy above this 99th percentile latency, in milliseconds.
    pub max_p99_ms: Option<f64>,
    /// Unhealthy above this many 5xx answers a minute, on average over the window.
    pub max_5xx_per_minute: Option<f64>,
    /// Unhealthy above this mean latency, in milliseconds.
    pub max_mean_ms: Option<f64>,
    /// Inconclusive below this many requests in the window.
    pub min_requests: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            source: "local".into(),
            admin: local_api::DEFAULT_ADMIN.into(),
            prometheus: None,
            cloudwatch: None,
            queries: Queries::default(),
            min_window: "30s".into(),
            headers: BTreeMap::new(),
            bearer_secret: None,
            max_error_rate_percent: None,
            max_p95_ms: None,
            max_p99_ms: None,
            max_5xx_per_minute: None,
            max_mean_ms: None,
            min_requests: 10,
        }
    }
}

pub const CONFIG_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "metrics health check",
  "type": "object",
  "properties": {
    "source": { "enum": ["local", "prometheus", "cloudwatch"], "default": "local", "description": "Where the metrics come from." },
    "cloudwatch": { "type": "object", "description": "The revision's ALB target group metrics on ECS (source cloudwatch).", "properties": {
        "region": { "type": "string" },
        "cluster": { "type": "string", "description": "The ECS cluster of the service." },
        "service_name": { "type": "string", "description": "The ECS service's name, when it differs from the pipeline's." },
        "endpoint": { "type": "string", "description": "One base URL for the AWS APIs; only a test server needs it." },
        "credentials": { "type": "string", "default": "aws", "description": "The granted secret with the AWS credentials." },
        "period_seconds": { "type": "integer", "minimum": 10, "maximum": 3600, "default": 60 }
      }, "required": ["region", "cluster"], "additionalProperties": false },
    "admin": { "type": "string", "default": "http://localhost:7700", "description": "The local platform's admin API (source local)." },
    "prometheus": { "type": "string", "description": "The Prometheus-compatible API's base URL (source prometheus), such as http://localhost:9090." },
    "queries": {
      "type": "object",
      "description": "PromQL per number; {{service}}, {{revision}} and {{window}} are filled in. Defaults read the local platform's metrics.",
      "properties": {
        "requests": { "type": "string" },
        "error_rate_percent": { "type": "string" },
        "p95_ms": { "type": "string" },
        "p99_ms": { "type": "string" }
      },
      "additionalProperties": false
    },
    "min_window": { "type": "string", "default": "30s", "description": "The shortest range {{window}} stands for." },
    "headers": { "type": "object", "additionalProperties": { "type": "string" }, "description": "Headers sent to the Prometheus API." },
    "bearer_secret": { "type": "string", "description": "A granted secret sent to the Prometheus API as Authorization: Bearer." },
    "max_error_rate_percent": { "type": "number", "minimum": 0, "maximum": 100, "description": "Unhealthy above this share of 5xx answers." },
    "max_p95_ms": { "type": "number", "exclusiveMinimum": 0, "description": "Unhealthy above this p95 latency." },
    "max_p99_ms": { "type": "number", "exclusiveMinimum": 0, "description": "Unhealthy above this p99 latency." },
    "max_5xx_per_minute": { "type": "number", "minimum": 0, "description": "Unhealthy above this many 5xx answers a minute (cloudwatch)." },
    "max_mean_ms": { "type": "number", "exclusiveMinimum": 0, "description": "Unhealthy above this mean latency (cloudwatch)." },
    "min_requests": { "type": "integer", "minimum": 1, "default": 10, "description": "Inconclusive below this many requests in the window." }
  },
  "additionalProperties": false
}"#;

/// A checked configuration.
pub struct Parsed {
    pub config: Config,
    pub min_window: Duration,
}

pub fn parse(text: &str) -> Result<Parsed, Error> {
    let text = if text.trim().is_empty() { "{}" } else { text };
    let config: Config = serde_json::from_str(text)
        .map_err(|e| Error::invalid_config(format!("metrics check configuration: {e}")))?;
    check_source(&config)?;
    let thresholds = [
        config.max_error_rate_percent,
        config.max_p95_ms,
        config.max_p99_ms,
        config.max_5xx_per_minute,
        config.max_mean_ms,
    ];
    if thresholds.iter().all(Option::is_none) {
        return Err(Error::invalid_config(
            "the metrics check has no threshold: set max_error_rate_percent, max_p95_ms, max_p99_ms, max_5xx_per_minute or max_mean_ms",
        ));
    }
    // A window longer than a day reads more history than any gate needs.
    let min_window = engine_sdk::duration::parse(
        "metrics check `min_window`",
        &config.min_window,
        std::time::Duration::from_secs(24 * 3600),
    )?;
    if config.source == "prometheus" {
        config.queries.check()?;
    }
    Ok(Parsed { config, min_window })
}

/// The source and the settings it needs, and only those.
fn check_source(config: &Config) -> Result<(), Error> {
    let cloudwatch_only = config.max_5xx_per_minute.is_some() || config.max_mean_ms.is_some();
    if cloudwatch_only && config.source != "cloudwatch" {
        return Err(Error::invalid_config(
            "metrics check: max_5xx_per_minute and max_mean_ms are thresholds of the cloudwatch source; use max_error_rate_percent and max_p95_ms with this source",
        ));
    }
    match (config.source.as_str(), &config.cloudwatch) {
        ("cloudwatch", None) => {
            return Err(Error::invalid_config(
                "metrics check: source \"cloudwatch\" needs `cloudwatch = { region = \"eu-west-1\", cluster = \"…\" }`",
            ));
        }
        ("local" | "prometheus", Some(_)) => {
            return Err(Error::invalid_config(
                "metrics check: `cloudwatch` is set but `source` is not; add source = \"cloudwatch\"",
            ));
        }
        _ => {}
    }
    match (config.source.as_str(), &config.prometheus) {
        ("local", None) | ("prometheus", Some(_)) | ("cloudwatch", None) => Ok(()),
        ("local" | "cloudwatch", Some(_)) => Err(Error::invalid_config(format!(
            "metrics check: `prometheus` is set but `source` is \"{}\"; add source = \"prometheus\"",
            config.source
        ))),
        ("prometheus", None) => Err(Error::invalid_config(
            "metrics check: source \"prometheus\" needs `prometheus`, the API's base URL, such as \"http://localhost:9090\"",
        )),
        (other, _) => Err(Error::invalid_config(format!(
            "metrics check `source` {other:?}: use \"local\", \"prometheus\" or \"cloudwatch\""
        ))),
    }
}

/// What a window's metrics say. `None` is a number the source has no data for.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Window {
    pub requests: u64,
    pub error_rate_percent: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// 5xx answers a minute (CloudWatch only).
    pub errors_per_minute: Option<f64>,
    /// Mean latency (CloudWatch only).
    pub mean_ms: Option<f64>,
}

impl From<&local_api::Metrics> for Window {
    fn from(m: &local_api::Metrics) -> Window {
        Window {
            requests: m.requests,
            error_rate_percent: Some(m.error_rate_percent),
            p95_ms: Some(m.p95_ms),
            p99_ms: Some(m.p99_ms),
            errors_per_minute: None,
            mean_ms: None,
        }
    }
}

/// The verdict and its reason for a window's metrics.
pub fn judge(config: &Config, w: &Window) -> (Verdict, String) {
    if w.requests < config.min_requests {
        return (
            Verdict::Inconclusive,
            format!(
                "only {} requests since the step began (need {})",
                w.requests, config.min_requests
            ),
        );
    }
    let gates = [
        (
            "error rate",
            "%",
            config.max_error_rate_percent,
            w.error_rate_percent,
        ),
        ("p95", " ms", config.max_p95_ms, w.p95_ms),
        ("p99", " ms", config.max_p99_ms, w.p99_ms),
        (
            "5xx",
            "/min",
            config.max_5xx_per_minute,
            w.errors_per_minute,
        ),
        ("mean", " ms", config.max_mean_ms, w.mean_ms),
    ];
    let (mut broken, mut missing, mut seen) = (Vec::new(), Vec::new(), Vec::new());
    for (name, unit, max, value) in gates {
        let show = |v: f64| {
            if unit == "%" || unit == "/min" {
                format!("{v:.1}{unit}")
            } else {
                format!("{v:.0}{unit}")
            }
        };
        match (max, value) {
            (Some(max), Some(v)) if v > max => {
                broken.push(format!("{name} {} > {max}{unit}", show(v)))
            }
            (Some(_), None) => missing.push(name),
            (_, Some(v)) => seen.push(format!("{name} {}", show(v))),
            (None, None) => {}
        }
    }
    let counted = format!("{} requests in the window", w.requests);
    if !broken.is_empty() {
        (
            Verdict::Unhealthy,
            format!("{} ({counted})", broken.join(", ")),
        )
    } else if !missing.is_empty() {
        (
            Verdict::Inconclusive,
            format!("no data for {} ({counted})", missing.join(", ")),
        )
    } else {
        (Verdict::Healthy, format!("{counted}, {}", seen.join(", ")))
    }
}

fn measurements(w: &Window) -> Vec<Measurement> {
    let mut out = vec![Measurement {
        name: "requests".into(),
        value: w.requests as f64,
        unit: "count".into(),
    }];
    for (name, unit, value) in [
        ("error-rate", "percent", w.error_rate_percent),
        ("latency-p95", "ms", w.p95_ms),
        ("latency-p99", "ms", w.p99_ms),
        ("errors-per-minute", "count", w.errors_per_minute),
        ("latency-mean", "ms", w.mean_ms),
    ] {
        if let Some(value) = value {
            out.push(Measurement {
                name: name.into(),
                value,
                unit: unit.into(),
            });
        }
    }
    out
}

/// The local platform's summary of the revision's requests since `since_ms`.
fn local_window(
    config: &Config,
    service: &str,
    revision: &str,
    since_ms: u64,
) -> Result<Window, Error> {
    let url = format!(
        "{}/v1/services/{service}/revisions/{revision}/metrics?since_ms={since_ms}",
        config.admin.trim_end_matches('/'),
    );
    let m: local_api::Metrics = Client::new()
        .with_timeout(Duration::from_secs(10))
        .get(&url)
        .send_json()?;
    Ok(Window::from(&m))
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
                // The local platform's admin API or a Prometheus API anywhere: the pipeline
                // grants which one (allow_http).
                http: vec!["*://*:*".into()],
                env: Vec::new(),
                dirs: Vec::new(),
                // Named by `bearer_secret` in the configuration; the pipeline grants it.
                secrets: vec!["*".into()],
            },
        }
    }

    fn validate(config: String) -> Vec<Diagnostic> {
        engine_sdk::config_diagnostics(parse(&config), None)
    }

    fn check(config: String, target: Target) -> Result<CheckResult, Error> {
        let Parsed { config, min_window } = parse(&config)?;
        let revision = target.revision.as_deref().ok_or_else(|| {
            Error::invalid_config("the metrics check needs a revision to look at")
        })?;
        let window = match config.source.as_str() {
            "prometheus" => prometheus::window(
                &config,
                min_window,
                &target.service,
                revision,
                target.since_ms,
            )?,
            "cloudwatch" => {
                cloudwatch::window(&config, &target.service, revision, target.since_ms)?
            }
            _ => local_window(&config, &target.service, revision, target.since_ms)?,
        };
        let (verdict, message) = judge(&config, &window);
        Ok(CheckResult {
            verdict,
            message,
            measurements: measurements(&window),
        })
    }
}

engine_sdk::export_health!(MetricsCheck);

#[cfg(test)]
mod tests {
    use super::*;

    fn window(requests: u64, error_rate: f64, p95: f64) -> Window {
        Window {
            requests,
            error_rate_percent: Some(error_rate),
            p95_ms: Some(p95),
            p99_ms: Some(p95 * 1.2),
            ..Window::default()
        }
    }

    fn config(text: &str) -> Config {
        parse(text).unwrap().config
    }

    #[test]
    fn thresholds_decide_and_say_why() {
        let c = config(r#"{"max_error_rate_percent": 1, "max_p95_ms": 500}"#);
        let (v, why) = judge(&c, &window(200, 0.5, 120.0));
        assert_eq!(v, Verdict::Healthy);
        assert_eq!(
            why,
            "200 requests in the window, error rate 0.5%, p95 120 ms, p99 144 ms"
        );
        let (v, why) = judge(&c, &window(200, 12.5, 620.0));
        assert_eq!(v, Verdict::Unhealthy);
        assert_eq!(
            why,
            "error rate 12.5% > 1%, p95 620 ms > 500 ms (200 requests in the window)"
        );
        let (v, why) = judge(&c, &window(3, 100.0, 9000.0));
        assert_eq!(v, Verdict::Inconclusive, "too few requests to judge");
        assert!(why.contains("only 3 requests"));
    }

    #[test]
    fn a_gated_number_without_data_is_inconclusive_unless_another_gate_fails() {
        let c = config(r#"{"max_error_rate_percent": 1, "max_p95_ms": 500}"#);
        let no_latency = Window {
            p95_ms: None,
            ..window(200, 0.0, 0.0)
        };
        let (v, why) = judge(&c, &no_latency);
        assert_eq!(v, Verdict::Inconclusive);
        assert_eq!(why, "no data for p95 (200 requests in the window)");
        let failing = Window {
            p95_ms: None,
            ..window(200, 30.0, 0.0)
        };
        assert_eq!(judge(&c, &failing).0, Verdict::Unhealthy);
    }

    #[test]
    fn cloudwatchs_counts_per_minute_and_mean_latency_are_gates_too() {
        let c = config(
            r#"{"source": "cloudwatch", "cloudwatch": {"region": "eu-west-1", "cluster": "x"}, "max_5xx_per_minute": 10, "max_mean_ms": 2000}"#,
        );
        let w = Window {
            errors_per_minute: Some(12.0),
            mean_ms: Some(300.0),
            ..window(500, 2.4, 0.0)
        };
        let (v, why) = judge(&c, &w);
        assert_eq!(v, Verdict::Unhealthy);
        assert_eq!(why, "5xx 12.0/min > 10/min (500 requests in the window)");
    }

    #[test]
    fn bad_configurations_say_what_to_fix() {
        for (text, expected) in [
            ("{}", "has no threshold"),
            (
                r#"{"source": "prometheus", "max_p95_ms": 1}"#,
                "needs `prometheus`",
            ),
            (
                r#"{"prometheus": "http://p:9090", "max_p95_ms": 1}"#,
                "add source = \"prometheus\"",
            ),
            (
                r#"{"source": "datadog", "max_p95_ms": 1}"#,
                "use \"local\", \"prometheus\" or \"cloudwatch\"",
            ),
            (
                r#"{"source": "cloudwatch", "max_p95_ms": 1}"#,
                "needs `cloudwatch = {",
            ),
            (
                r#"{"max_mean_ms": 100}"#,
                "thresholds of the cloudwatch source",
            ),
            (
                r#"{"max_p95_ms": 1, "min_window": "a while"}"#,
                "write it like",
            ),
            (
                r#"{"source": "prometheus", "prometheus": "http://p:9090", "max_p95_ms": 1, "queries": {"p95_ms": "x{{svc}}"}}"#,
                "uses {{svc}}",
            ),
        ] {
            let e = parse(text)
                .err()
                .unwrap_or_else(|| panic!("{text} should fail"));
            assert!(e.describe().contains(expected), "{text}: {}", e.describe());
        }
    }
}
