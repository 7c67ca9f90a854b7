//! Types used only by health checks (the target and the result), and the pieces every probing
//! check shares: picking the endpoint to probe, and Kubernetes-style thresholds.

pub use crate::bindings::health::exports::engine::plugin::health::{CheckResult, Target};
use crate::{Endpoint, EndpointKind, Error, ErrorExt, Measurement, Verdict};
use std::time::{Duration, Instant};

/// Which endpoint of the target a check probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// The revision's own URL (so a revision without traffic can be checked), falling back to
    /// the service's when the provider has none.
    Revision,
    /// The service's front door.
    Service,
}

impl Reach {
    /// `"revision"` or `"service"`, as checks spell it in their configuration.
    pub fn parse(check: &str, text: &str) -> Result<Reach, Error> {
        match text {
            "revision" => Ok(Reach::Revision),
            "service" => Ok(Reach::Service),
            other => Err(Error::invalid_config(format!(
                "{check} check `target` {other:?}: use \"revision\" or \"service\""
            ))),
        }
    }
}

/// The endpoint of `target` to probe.
pub fn endpoint(target: &Target, reach: Reach) -> Result<&Endpoint, Error> {
    let pick = |kind: EndpointKind| {
        target.endpoints.iter().find(|e| {
            e.kind == kind && (kind == EndpointKind::Service || e.revision == target.revision)
        })
    };
    let found = match reach {
        Reach::Revision => pick(EndpointKind::Revision).or_else(|| pick(EndpointKind::Service)),
        Reach::Service => pick(EndpointKind::Service),
    };
    found.ok_or_else(|| {
        let which = match reach {
            Reach::Revision => "revision or service",
            Reach::Service => "service",
        };
        Error::not_found(format!(
            "the provider gave no {which} URL for `{}`",
            target.service
        ))
    })
}

/// Repeated probing like a Kubernetes probe: one probe every `interval`, each allowed
/// `timeout`; `success_threshold` passes in a row make the target healthy, `failure_threshold`
/// failures in a row unhealthy. A check that cannot decide within [`Probing::BUDGET`] is
/// inconclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probing {
    pub timeout: Duration,
    pub interval: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

/// One probe's result: what it did when it passed or why it failed, and how long it took.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub outcome: Result<String, String>,
    pub latency: Duration,
}

impl Probing {
    /// The longest a whole check may take: under the host's per-call deadline (30 s by default).
    pub const BUDGET: Duration = Duration::from_secs(25);

    /// Parses the two durations (`"500ms"`, `"2s"`) and checks the thresholds and that the
    /// worst case fits in the budget. `check` names the check in error messages.
    pub fn parse(
        check: &str,
        timeout: &str,
        interval: &str,
        success_threshold: u32,
        failure_threshold: u32,
    ) -> Result<Probing, Error> {
        // The budget bounds both below; this bound only keeps the arithmetic in range.
        let duration = |name: &str, v: &str| {
            crate::duration::parse(&format!("{check} check `{name}`"), v, Self::BUDGET)
        };
        let probing = Probing {
            timeout: duration("timeout", timeout)?,
            interval: duration("interval", interval)?,
            success_threshold,
            failure_threshold,
        };
        if probing.timeout.is_zero() {
            return Err(Error::invalid_config(format!(
                "{check} check `timeout` must be more than zero"
            )));
        }
        if success_threshold == 0 || failure_threshold == 0 {
            return Err(Error::invalid_config(format!(
                "{check} check thresholds start at 1"
            )));
        }
        let worst = (success_threshold + failure_threshold) * (probing.timeout + probing.interval);
        if worst > Self::BUDGET {
            return Err(Error::invalid_config(format!(
                "{check} check could take {} (thresholds × (timeout + interval)), more than the {} a check may run; lower them",
                humantime::format_duration(worst),
                humantime::format_duration(Self::BUDGET)
            )));
        }
        Ok(probing)
    }

    /// Probes until a threshold is reached or the budget runs out. The result's measurement is
    /// the last probe's latency. A probe that returns an error ends the check with it at once:
    /// a destination the sandbox refuses is the pipeline's mistake, not the target's ill
    /// health, and asking again would only be refused again.
    pub fn run(
        &self,
        mut probe: impl FnMut() -> Result<Probe, Error>,
    ) -> Result<CheckResult, Error> {
        let (mut passes, mut failures) = (0u32, 0u32);
        let started = Instant::now();
        loop {
            let Probe { outcome, latency } = probe()?;
            let measurements = vec![Measurement {
                name: "latency".into(),
                value: latency.as_secs_f64() * 1000.0,
                unit: "ms".into(),
            }];
            let last = match outcome {
                Ok(what) => {
                    passes += 1;
                    failures = 0;
                    what
                }
                Err(why) => {
                    failures += 1;
                    passes = 0;
                    why
                }
            };
            let (verdict, message) = if passes >= self.success_threshold {
                (Verdict::Healthy, last)
            } else if failures >= self.failure_threshold {
                (
                    Verdict::Unhealthy,
                    format!("{last} ({failures} failure(s) in a row)"),
                )
            } else if started.elapsed() + self.interval + self.timeout > Self::BUDGET {
                let waited = Duration::from_secs(started.elapsed().as_secs());
                (
                    Verdict::Inconclusive,
                    format!(
                        "undecided after {}: {last}",
                        humantime::format_duration(waited)
                    ),
                )
            } else {
                std::thread::sleep(self.interval);
                continue;
            };
            return Ok(CheckResult {
                verdict,
                message,
                measurements,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probing(success: u32, failure: u32) -> Probing {
        Probing::parse("test", "1s", "0s", success, failure).unwrap()
    }

    fn answers(mut results: Vec<bool>) -> impl FnMut() -> Result<Probe, Error> {
        results.reverse();
        move || {
            Ok(Probe {
                outcome: if results.pop().expect("probed too often") {
                    Ok("passed".into())
                } else {
                    Err("failed".into())
                },
                latency: Duration::from_millis(3),
            })
        }
    }

    #[test]
    fn thresholds_count_passes_and_failures_in_a_row() {
        let r = probing(2, 3)
            .run(answers(vec![true, false, true, true]))
            .unwrap();
        assert_eq!(r.verdict, Verdict::Healthy);
        let r = probing(2, 3)
            .run(answers(vec![false, true, false, false, false]))
            .unwrap();
        assert_eq!(r.verdict, Verdict::Unhealthy);
        assert_eq!(r.message, "failed (3 failure(s) in a row)");
        assert_eq!(r.measurements[0].value, 3.0);
    }

    #[test]
    fn a_probe_error_ends_the_check_at_once() {
        let mut calls = 0;
        let e = probing(1, 3)
            .run(|| {
                calls += 1;
                Err(Error::unauthorized("denied"))
            })
            .unwrap_err();
        assert_eq!(e.describe(), "unauthorized: denied");
        assert_eq!(calls, 1, "not asked again");
    }

    #[test]
    fn bad_probing_settings_say_what_to_fix() {
        for (timeout, interval, s, f, expected) in [
            ("soon", "1s", 1, 1, "write it like 500ms, 30s or 5m"),
            ("0s", "1s", 1, 1, "more than zero"),
            ("1s", "1s", 0, 1, "thresholds start at 1"),
            ("2s", "10s", 1, 3, "more than the 25s a check may run"),
        ] {
            let e = Probing::parse("tcp", timeout, interval, s, f).unwrap_err();
            assert!(e.describe().contains(expected), "{}", e.describe());
            assert!(e.describe().contains("tcp check"), "{}", e.describe());
        }
    }
}
