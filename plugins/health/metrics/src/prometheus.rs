//! `source = "prometheus"`: the window's numbers from PromQL instant queries against a
//! Prometheus-compatible HTTP API (`GET /api/v1/query`).

use super::{Config, Window};
use engine_sdk::http::{Client, RetryPolicy};
use engine_sdk::{Error, ErrorExt};
use serde::Deserialize;
use std::time::Duration;

/// The placeholders a query may use.
const PLACEHOLDERS: [&str; 3] = ["{{service}}", "{{revision}}", "{{window}}"];

/// PromQL per number. Each must return one value (a scalar, or a vector of one series); no
/// series or NaN is "no data". The defaults read the local platform's exported metrics.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Queries {
    pub requests: String,
    pub error_rate_percent: String,
    pub p95_ms: String,
    pub p99_ms: String,
}

const REVISION: &str = r#"service="{{service}}",revision="{{revision}}""#;

fn latency_quantile(q: &str) -> String {
    format!(
        "1000 * histogram_quantile({q}, sum by (le) (increase(engine_local_request_duration_seconds_bucket{{{REVISION}}}[{{{{window}}}}])))"
    )
}

impl Default for Queries {
    fn default() -> Self {
        let all =
            format!("sum(increase(engine_local_requests_total{{{REVISION}}}[{{{{window}}}}]))");
        let errors = format!(
            "sum(increase(engine_local_requests_total{{{REVISION},code=\"5xx\"}}[{{{{window}}}}]))"
        );
        Queries {
            error_rate_percent: format!("100 * {errors} / {all}"),
            requests: all,
            p95_ms: latency_quantile("0.95"),
            p99_ms: latency_quantile("0.99"),
        }
    }
}

impl Queries {
    /// Refuses placeholders the check does not fill (a typo would reach Prometheus as text).
    pub fn check(&self) -> Result<(), Error> {
        for (name, query) in self.named() {
            let mut rest = query;
            while let Some(start) = rest.find("{{") {
                let end = rest[start..]
                    .find("}}")
                    .map_or(rest.len(), |e| start + e + 2);
                let placeholder = &rest[start..end];
                if !PLACEHOLDERS.contains(&placeholder) {
                    return Err(Error::invalid_config(format!(
                        "metrics check query `{name}` uses {placeholder}; the placeholders are {}",
                        PLACEHOLDERS.join(", ")
                    )));
                }
                rest = &rest[end..];
            }
        }
        Ok(())
    }

    fn named(&self) -> [(&'static str, &str); 4] {
        [
            ("requests", &self.requests),
            ("error_rate_percent", &self.error_rate_percent),
            ("p95_ms", &self.p95_ms),
            ("p99_ms", &self.p99_ms),
        ]
    }
}

/// `{{window}}` as a PromQL duration: the analysis window in whole seconds, at least `min`.
pub fn window_range(since_ms: u64, now_ms: u64, min: Duration) -> String {
    let seconds = now_ms.saturating_sub(since_ms).div_ceil(1000);
    format!("{}s", seconds.max(min.as_secs()).max(1))
}

pub fn fill(query: &str, service: &str, revision: &str, range: &str) -> String {
    query
        .replace("{{service}}", service)
        .replace("{{revision}}", revision)
        .replace("{{window}}", range)
}

/// The answer of `/api/v1/query`.
#[derive(Debug, Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "resultType", content = "result", rename_all = "lowercase")]
enum Data {
    Scalar((f64, String)),
    Vector(Vec<Sample>),
    Matrix(serde::de::IgnoredAny),
    String(serde::de::IgnoredAny),
}

#[derive(Debug, Deserialize)]
struct Sample {
    metric: serde_json::Map<String, serde_json::Value>,
    value: (f64, String),
}

/// The single value of an answer; `None` for no series or NaN.
pub fn single_value(name: &str, body: &[u8]) -> Result<Option<f64>, Error> {
    let answer: Answer = serde_json::from_slice(body).map_err(|e| {
        Error::fatal(format!(
            "query `{name}`: the answer is not a Prometheus query result ({e})"
        ))
    })?;
    if answer.status != "success" {
        return Err(Error::fatal(format!(
            "query `{name}`: Prometheus says {}",
            answer.error.unwrap_or(answer.status)
        )));
    }
    let text = match answer.data {
        Some(Data::Scalar((_, v))) => v,
        Some(Data::Vector(samples)) => match samples.as_slice() {
            [] => return Ok(None),
            [one] => one.value.1.clone(),
            many => {
                let labels: Vec<String> = many
                    .iter()
                    .take(3)
                    .map(|s| serde_json::Value::Object(s.metric.clone()).to_string())
                    .collect();
                return Err(Error::invalid_config(format!(
                    "query `{name}` returns {} series ({}…); aggregate it to one, with sum(...) for instance",
                    many.len(),
                    labels.join(", ")
                )));
            }
        },
        Some(Data::Matrix(_)) | Some(Data::String(_)) | None => {
            return Err(Error::invalid_config(format!(
                "query `{name}` does not return a number; write an instant query (a range [..] only inside a function such as increase)"
            )));
        }
    };
    let value: f64 = text
        .parse()
        .map_err(|_| Error::fatal(format!("query `{name}`: {text:?} is not a number")))?;
    Ok((!value.is_nan()).then_some(value))
}

/// Runs the queries the thresholds need (and the request count) for the revision's window.
pub fn window(
    config: &Config,
    min_window: Duration,
    service: &str,
    revision: &str,
    since_ms: u64,
) -> Result<Window, Error> {
    let base = config
        .prometheus
        .as_deref()
        .unwrap_or_default()
        .trim_end_matches('/');
    let now_ms = engine_sdk::clock::now_ms();
    let range = window_range(since_ms, now_ms, min_window);
    let secret = match &config.bearer_secret {
        Some(name) => Some(engine_sdk::secrets::Secret::open(name)?),
        None => None,
    };
    let client = Client::new()
        .with_timeout(Duration::from_secs(10))
        .with_retry(RetryPolicy::default());
    let query = |name: &str, promql: &str| -> Result<Option<f64>, Error> {
        let promql = fill(promql, service, revision, &range);
        let params = form_urlencoded::Serializer::new(String::new())
            .append_pair("query", &promql)
            .append_pair("time", &format!("{:.3}", now_ms as f64 / 1000.0))
            .finish();
        let mut request = client.get(&format!("{base}/api/v1/query?{params}"));
        for (k, v) in &config.headers {
            request = request.header(k, v.clone());
        }
        if let Some(s) = &secret {
            request = request.bearer(s);
        }
        let response = request
            .send()
            .map_err(|e| e.context(format!("metrics query `{name}` {promql:?}")))?;
        single_value(name, &response.body)
    };
    let requests = query("requests", &config.queries.requests)?;
    let gated = |max: Option<f64>, name: &str, promql: &str| match max {
        Some(_) => query(name, promql),
        None => Ok(None),
    };
    Ok(Window {
        // increase() extrapolates, so counts come back fractional.
        requests: requests.map_or(0, |r| r.max(0.0).round() as u64),
        error_rate_percent: gated(
            config.max_error_rate_percent,
            "error_rate_percent",
            &config.queries.error_rate_percent,
        )?,
        p95_ms: gated(config.max_p95_ms, "p95_ms", &config.queries.p95_ms)?,
        p99_ms: gated(config.max_p99_ms, "p99_ms", &config.queries.p99_ms)?,
        ..Window::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_yield_one_value_or_no_data() {
        let vector = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1700000000.5,"0.25"]}]}}"#;
        assert_eq!(single_value("q", vector).unwrap(), Some(0.25));
        let scalar =
            br#"{"status":"success","data":{"resultType":"scalar","result":[1700000000.5,"12"]}}"#;
        assert_eq!(single_value("q", scalar).unwrap(), Some(12.0));
        let empty = br#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert_eq!(single_value("q", empty).unwrap(), None);
        let nan = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"NaN"]}]}}"#;
        assert_eq!(single_value("q", nan).unwrap(), None);
    }

    #[test]
    fn answers_that_are_not_one_number_say_how_to_fix_the_query() {
        let two = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"code":"2xx"},"value":[1,"1"]},{"metric":{"code":"5xx"},"value":[1,"2"]}]}}"#;
        let e = single_value("requests", two).unwrap_err().describe();
        assert!(
            e.contains("returns 2 series") && e.contains("sum(...)"),
            "{e}"
        );
        let matrix = br#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#;
        let e = single_value("p95_ms", matrix).unwrap_err().describe();
        assert!(e.contains("instant query"), "{e}");
        let e = single_value("q", b"<html>").unwrap_err().describe();
        assert!(e.contains("not a Prometheus query result"), "{e}");
    }

    #[test]
    fn placeholders_are_filled_and_unknown_ones_refused() {
        let q = Queries::default();
        let filled = fill(&q.requests, "orders", "orders-7", "45s");
        assert_eq!(
            filled,
            r#"sum(increase(engine_local_requests_total{service="orders",revision="orders-7"}[45s]))"#
        );
        assert!(q.check().is_ok());
        let typo = Queries {
            p95_ms: "x{{revison}}".into(),
            ..Queries::default()
        };
        let e = typo.check().unwrap_err().describe();
        assert!(e.contains("uses {{revison}}"), "{e}");
    }

    #[test]
    fn the_window_covers_the_step_and_never_less_than_the_minimum() {
        let min = Duration::from_secs(30);
        assert_eq!(window_range(1_000, 91_500, min), "91s");
        assert_eq!(window_range(1_000, 2_000, min), "30s");
        assert_eq!(window_range(5_000, 1_000, Duration::ZERO), "1s");
    }
}
