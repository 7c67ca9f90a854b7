//! Per-revision request records: status and latency of every request that went through the
//! front door or the revision's own URL, kept for a bounded window and summarised on demand.

use local_api::Metrics;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Requests kept per revision; past this the oldest half is dropped.
const KEEP: usize = 200_000;

#[derive(Debug, Clone, Copy)]
struct Sample {
    at_ms: u64,
    status: u16,
    latency_us: u32,
}

/// One revision's requests.
#[derive(Debug, Default)]
pub struct Recorder {
    /// One lock for both, taken once per proxied request.
    records: Mutex<Records>,
}

#[derive(Debug, Default)]
struct Records {
    samples: Vec<Sample>,
    /// Totals since the revision started, for the Prometheus counters (never dropped).
    totals: BTreeMap<&'static str, u64>,
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
    pub fn record(&self, status: u16, latency: std::time::Duration) {
        let sample = Sample {
            at_ms: now_ms(),
            status,
            latency_us: latency.as_micros().min(u32::MAX as u128) as u32,
        };
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        if records.samples.len() >= KEEP {
            records.samples.drain(..KEEP / 2);
        }
        records.samples.push(sample);
        *records.totals.entry(class(status)).or_default() += 1;
    }

    /// Requests that finished at or after `since_ms`.
    pub fn summary(&self, since_ms: u64) -> Metrics {
        let records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        let window: Vec<Sample> = records
            .samples
            .iter()
            .filter(|s| s.at_ms >= since_ms)
            .copied()
            .collect();
        drop(records);
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

    /// Requests by status class since the revision started.
    pub fn totals(&self) -> BTreeMap<&'static str, u64> {
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .totals
            .clone()
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
        assert_eq!(r.totals()["5xx"], 10);
    }
}
