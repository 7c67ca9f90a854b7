//! Live progress at a terminal: one redrawn line per service (phase, traffic, checks), on
//! stderr, so stdout keeps only the final table.

use crate::run::{Event, Outcome};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// Per-service progress lines.
pub struct Live {
    bars: MultiProgress,
    services: Mutex<BTreeMap<String, Line>>,
}

struct Line {
    bar: ProgressBar,
    checks_passed: u32,
    checks_run: u32,
}

impl Live {
    /// Progress drawn on stderr. The engine's log lines are printed above it (see
    /// [`Live::multi`]) instead of tearing it.
    pub fn new() -> Live {
        Live::drawing_to(ProgressDrawTarget::stderr())
    }

    /// Progress drawn somewhere else (a test's in-memory terminal).
    pub fn drawing_to(target: ProgressDrawTarget) -> Live {
        Live {
            bars: MultiProgress::with_draw_target(target),
            services: Mutex::default(),
        }
    }

    /// The progress area, for the logger to print above.
    pub fn multi(&self) -> MultiProgress {
        self.bars.clone()
    }

    fn with_line(&self, service: &str, f: impl FnOnce(&mut Line)) {
        let mut services = self.services.lock().unwrap_or_else(|e| e.into_inner());
        let line = services.entry(service.to_string()).or_insert_with(|| {
            let bar = self.bars.add(ProgressBar::new_spinner());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {prefix:<20} {msg} {elapsed:>4}")
                    .expect("a valid template"),
            );
            bar.set_prefix(service.to_string());
            bar.enable_steady_tick(Duration::from_millis(120));
            Line {
                bar,
                checks_passed: 0,
                checks_run: 0,
            }
        });
        f(line);
    }

    pub fn event(&self, event: &Event) {
        match event {
            // The phase event that comes with a decision already says what happens.
            Event::Started { .. } | Event::Decided { .. } => {}
            Event::Phase {
                service,
                phase,
                traffic,
            } => self.with_line(service, |l| {
                l.bar.set_message(format!(
                    "{phase:<28} traffic {traffic:>3}%  checks {}/{}",
                    l.checks_passed, l.checks_run
                ));
            }),
            Event::Check {
                service, verdict, ..
            } => self.with_line(service, |l| {
                l.checks_run += 1;
                if verdict == "healthy" {
                    l.checks_passed += 1;
                }
            }),
            Event::Finished(r) => self.with_line(&r.service, |l| {
                let mark = match r.outcome {
                    ref o if o.succeeded() => "✔",
                    Outcome::Skipped(_) => "-",
                    Outcome::AwaitingApproval(_) => "⏸",
                    Outcome::Interrupted(_) => "■",
                    _ => "✘",
                };
                l.bar.set_style(
                    ProgressStyle::with_template("{prefix:<22} {msg}").expect("a valid template"),
                );
                l.bar.set_prefix(format!("{mark} {}", r.service));
                l.bar.finish_with_message(format!(
                    "{:<28} traffic {:>3}%  checks {}/{}",
                    r.outcome.label(),
                    r.traffic,
                    r.checks_passed,
                    r.checks_run
                ));
            }),
        }
    }

    /// Removes the progress lines before the final table is printed.
    pub fn clear(&self) {
        let _ = self.bars.clear();
    }
}

impl Default for Live {
    fn default() -> Self {
        Live::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::ServiceReport;
    use indicatif::InMemoryTerm;

    fn phase(service: &str, phase: &str, traffic: u8) -> Event {
        Event::Phase {
            service: service.into(),
            phase: phase.into(),
            traffic,
        }
    }

    #[test]
    fn each_service_has_a_line_with_phase_traffic_and_checks() {
        let term = InMemoryTerm::new(10, 100);
        let live = Live::drawing_to(ProgressDrawTarget::term_like(Box::new(term.clone())));
        live.event(&phase("db", "deploying", 0));
        live.event(&phase("api", "canary 25%", 25));
        live.event(&Event::Check {
            service: "api".into(),
            check: "errors".into(),
            verdict: "healthy".into(),
            message: "0.1%".into(),
        });
        live.event(&phase("api", "analysing at 25%", 25));
        live.event(&Event::Finished(ServiceReport {
            service: "db".into(),
            resource: None,
            outcome: Outcome::Deployed,
            revision: Some("db-r1".into()),
            traffic: 100,
            checks_passed: 0,
            checks_run: 0,
            elapsed: Duration::from_secs(1),
            warnings: Vec::new(),
        }));
        let screen = term.contents();
        let lines: Vec<&str> = screen.lines().map(str::trim_end).collect();
        assert!(
            lines[0].starts_with("✔ db")
                && lines[0].contains("deployed")
                && lines[0].contains("traffic 100%"),
            "{screen}"
        );
        assert!(lines[1].contains("api"), "{screen}");
        assert!(
            lines[1].contains("analysing at 25%")
                && lines[1].contains("traffic  25%")
                && lines[1].contains("checks 1/1"),
            "{screen}"
        );
        live.clear();
        assert!(
            term.contents().trim().is_empty(),
            "cleared before the final table"
        );
    }
}
