//! Per-revision request records: status and latency of every request that went through the
//! front door or the revision's own URL, kept for a bounded window and summarised on demand
//! (the admin API's metrics), and exported to Prometheus as counters and a latency histogram
//! (`GET /metrics`, OpenMetrics text) so a Prometheus server can scrape the platform like any
//! other target.

use local_api::Metrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// The status classes a request is counted under.
const CLASSES: [&str; 4] = ["2xx", "3xx", "4xx", "5xx"];

/// Latency buckets in seconds: fine below 100 ms where services live, coarse above, so the
/// seeds' gates (p95 < 500 ms) fall between buckets that `histogram_quantile` can tell apart.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RevisionLabels {
    service: String,
    revision: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    service: String,
    revision: String,
    code: String,
}

fn new_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// The platform's Prometheus metrics: `engine_local_requests_total{service,revision,code}` and
/// `engine_local_request_duration_seconds{service,revision}`.
pub struct Exporter {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Family<RevisionLabels, Histogram, fn() -> Histogram>,
}

impl Default for Exporter {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("engine_local");
        let requests = Family::<RequestLabels, Counter>::default();
        let durations =
            Family::<RevisionLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                new_histogram,
            );
        registry.register(
            "requests",
            "Requests answered per revision and status class",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from receiving a request to its answer, per revision",
            durations.clone(),
        );
        Exporter {
            registry,
            requests,
            durations,
        }
    }
}

impl Exporter {
    /// The metrics in OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// A revision's series in the exporter, looked up once so recording a request needs no label
/// lookup; removed from the exporter when the revision goes.
struct Series {
    exporter: Arc<Exporter>,
    labels: RevisionLabels,
    by_class: [Counter; 4],
    duration: Histogram,
}

impl Series {
    fn request_labels(labels: &RevisionLabels, class: &str) -> RequestLabels {
        RequestLabels {
            service: labels.service.clone(),
            revision: labels.revision.clone(),
            code: class.to_string(),
        }
    }
}

impl Drop for Series {
    fn drop(&mut self) {
        for class in CLASSES {
            self.exporter
                .requests
                .remove(&Series::request_labels(&self.labels, class));
        }
        self.exporter.durations.remove(&self.labels);
    }
}

/// Requests kept per revision; past this the oldest half is dropped.
const KEEP: usize = 200_000;

#[derive(Debug, Clone, Copy)]
struct Sample {
    at_ms: u64,
    status: u16,
    latency_us: u32,
}

/// One revision's requests.
#[derive(Default)]
pub struct Recorder {
    /// The window's samples; the lock is taken once per proxied request.
    samples: Mutex<Vec<Sample>>,
    /// None for a recorder that exports nothing (tests).
    series: Option<Series>,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `2xx`…`5xx`; anything else (a revision that could not be reached) counts as `5xx`.
pub fn class(status: u16) -> &'static str {
    match status {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// The value below which `q` of the sorted values fall (nearest rank).
fn percentile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64 / 1000.0
}

impl Recorder {
    /// A recorder whose requests are also exported as `service`/`revision` series.
    pub fn exported(exporter: &Arc<Exporter>, service: &str, revision: &str) -> Recorder {
        let labels = RevisionLabels {
            service: service.to_string(),
            revision: revision.to_string(),
        };
        let by_class = CLASSES.map(|class| {
            exporter
                .requests
                .get_or_create(&Series::request_labels(&labels, class))
                .clone()
        });
        let duration = exporter.durations.get_or_create(&labels).clone();
        Recorder {
            samples: Mutex::default(),
            series: Some(Series {
                exporter: exporter.clone(),
                labels,
                by_class,
                duration,
            }),
        }
    }

    pub fn record(&self, status: u16, latency: std::time::Duration) {
        let sample = Sample {
            at_ms: now_ms(),
            status,
            latency_us: latency.as_micros().min(u32::MAX as u128) as u32,
        };
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if samples.len() >= KEEP {
            samples.drain(..KEEP / 2);
        }
        samples.push(sample);
        drop(samples);
        if let Some(series) = &self.series {
            let i = CLASSES
                .iter()
                .position(|c| *c == class(status))
                .unwrap_or(3);
            series.by_class[i].inc();
            series.duration.observe(latency.as_secs_f64());
        }
    }

    /// Requests that finished at or after `since_ms`.
    pub fn summary(&self, since_ms: u64) -> Metrics {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let window: Vec<Sample> = samples
            .iter()
            .filter(|s| s.at_ms >= since_ms)
            .copied()
            .collect();
        drop(samples);
        let mut status: BTreeMap<String, u64> = BTreeMap::new();
        for s in &window {
            *status.entry(class(s.status).to_string()).or_default() += 1;
        }
        let mut latencies: Vec<u32> = window.iter().map(|s| s.latency_us).collect();
        latencies.sort_unstable();
        let requests = window.len() as u64;
        let errors = status.get("5xx").copied().unwrap_or(0);
        Metrics {
            requests,
            status,
            error_rate_percent: if requests == 0 {
                0.0
            } else {
                errors as f64 * 100.0 / requests as f64
            },
            p50_ms: percentile(&latencies, 0.50),
            p95_ms: percentile(&latencies, 0.95),
            p99_ms: percentile(&latencies, 0.99),
            since_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn summaries_count_classes_and_take_nearest_rank_percentiles() {
        let r = Recorder::default();
        for ms in 1..=100u64 {
            let status = if ms % 10 == 0 { 503 } else { 200 };
            r.record(status, Duration::from_millis(ms));
        }
        let m = r.summary(0);
        assert_eq!(m.requests, 100);
        assert_eq!(m.status["2xx"], 90);
        assert_eq!(m.status["5xx"], 10);
        assert_eq!(m.error_rate_percent, 10.0);
        assert_eq!((m.p50_ms, m.p95_ms, m.p99_ms), (50.0, 95.0, 99.0));
        assert_eq!(r.summary(now_ms() + 60_000).requests, 0, "an empty window");
    }

    #[test]
    fn exported_series_count_classes_fill_buckets_and_leave_with_the_revision() {
        let exporter = Arc::new(Exporter::default());
        let r = Recorder::exported(&exporter, "api", "api-2");
        r.record(200, Duration::from_millis(3));
        r.record(200, Duration::from_millis(300));
        r.record(502, Duration::from_millis(1));
        let text = exporter.encode();
        for line in [
            r#"engine_local_requests_total{service="api",revision="api-2",code="2xx"} 2"#,
            r#"engine_local_requests_total{service="api",revision="api-2",code="5xx"} 1"#,
            r#"engine_local_request_duration_seconds_count{service="api",revision="api-2"} 3"#,
            r#"engine_local_request_duration_seconds_bucket{le="0.005",service="api",revision="api-2"} 2"#,
            r#"engine_local_request_duration_seconds_bucket{le="0.5",service="api",revision="api-2"} 3"#,
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
        drop(r);
        assert!(
            !exporter.encode().contains("api-2"),
            "series of a removed revision"
        );
    }
}
