//! How a run is shown: live per-service progress at a terminal, plain timestamped lines or JSON
//! events elsewhere, the final table, the JUnit file and GitHub Actions annotations.
//!
//! Everything here is an [`Observer`] of the executor's events or a function of its
//! [`RunReport`]; nothing here changes what a run does.

mod junit;
mod live;

pub use junit::junit;
pub use live::Live;

use crate::redact::redactor;
use crate::run::{Event, Observer, Outcome, RunReport};
use std::io::Write;
use std::sync::Mutex;

/// The version of the JSON event schema (docs/cli.md); raised on any incompatible change.
pub const EVENT_SCHEMA: u32 = 1;

/// A health check's result, kept for the JUnit report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRecord {
    pub service: String,
    pub check: String,
    pub verdict: String,
    pub message: String,
}

/// How events are shown.
pub enum Style {
    /// A timestamped line per event.
    Lines,
    /// One JSON object per line.
    Json,
    /// Redrawn per-service progress lines (at a terminal).
    Live(Live),
}

/// The run's observer in the CLI: shows events in its style and keeps the health checks.
pub struct Printer {
    style: Style,
    checks: Mutex<Vec<CheckRecord>>,
}

fn timestamp() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

fn outcome_fields(json: &mut serde_json::Value, o: &Outcome) {
    json["outcome"] = o.label().into();
    json["reason"] = o.reason().into();
}

/// Writes one line to stdout, secrets redacted.
fn out(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{}", redactor().redact(line));
}

impl Printer {
    pub fn new(style: Style) -> Printer {
        Printer {
            style,
            checks: Mutex::default(),
        }
    }

    /// The health checks seen so far.
    pub fn checks(&self) -> Vec<CheckRecord> {
        self.checks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn emit(&self, mut json: serde_json::Value, text: String) {
        match &self.style {
            Style::Json => {
                json["schema"] = EVENT_SCHEMA.into();
                json["time"] = timestamp().into();
                out(&json.to_string());
            }
            Style::Lines => out(&format!("{} {text}", timestamp())),
            Style::Live(_) => {}
        }
    }

    /// Ends the run's output: the summary event, or the final table.
    pub fn summary(&self, report: &RunReport) {
        if let Style::Live(live) = &self.style {
            live.clear();
        }
        if let Style::Json = self.style {
            let services: Vec<serde_json::Value> = report
                .services
                .iter()
                .map(|s| {
                    let mut v = serde_json::json!({ "service": s.service, "revision": s.revision, "traffic": s.traffic, "warnings": s.warnings });
                    if let Some(kind) = &s.resource {
                        v["resource"] = kind.as_str().into();
                    }
                    outcome_fields(&mut v, &s.outcome);
                    v
                })
                .collect();
            self.emit(
                serde_json::json!({ "type": "summary", "run": report.run_id, "succeeded": report.succeeded(), "services": services }),
                String::new(),
            );
            return;
        }
        print!("{}", redactor().redact(&summary_table(report)));
        // Timestamped lines already gave each reason; the live display has been cleared.
        let reasons = matches!(self.style, Style::Live(_));
        for s in report
            .services
            .iter()
            .filter(|s| reasons && s.outcome.reason().is_some())
        {
            out(&format!(
                "{}: {}: {}",
                s.service,
                s.outcome.label(),
                s.outcome.reason().unwrap_or_default()
            ));
        }
        for s in report.services.iter().filter(|_| reasons) {
            for warning in &s.warnings {
                out(&format!("{}: warning: {warning}", s.service));
            }
        }
        for s in report.awaiting_approval() {
            out(&format!(
                "to go on: `engine promote {0}`; to roll back: `engine abort {0}`",
                s.service
            ));
        }
    }
}

impl Observer for Printer {
    fn event(&self, event: &Event) {
        if let Style::Live(live) = &self.style {
            live.event(event);
        }
        match event {
            Event::Started {
                run_id,
                resumed,
                services,
            } => self.emit(
                serde_json::json!({ "type": "run-started", "run": run_id, "resumed": resumed, "services": services }),
                format!(
                    "run {run_id}{}: {services} services",
                    if *resumed { " (resumed)" } else { "" }
                ),
            ),
            Event::Phase {
                service,
                phase,
                traffic,
            } => self.emit(
                serde_json::json!({ "type": "phase", "service": service, "phase": phase, "traffic": traffic }),
                format!("{service}: {phase} (traffic {traffic}%)"),
            ),
            Event::Check {
                service,
                check,
                verdict,
                message,
            } => {
                self.checks
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(CheckRecord {
                        service: service.clone(),
                        check: check.clone(),
                        verdict: verdict.clone(),
                        message: message.clone(),
                    });
                self.emit(
                    serde_json::json!({ "type": "check", "service": service, "check": check, "verdict": verdict, "message": message }),
                    format!("{service}: check {check} {verdict}: {message}"),
                )
            }
            // The phase event that comes with a decision already names the step.
            Event::Decided { .. } => {}
            Event::Finished(r) => {
                let mut json = serde_json::json!({
                    "type": "service-finished", "service": r.service, "revision": r.revision, "traffic": r.traffic,
                    "checks_passed": r.checks_passed, "checks_run": r.checks_run, "seconds": r.elapsed.as_secs_f64(),
                    "warnings": r.warnings,
                });
                if let Some(kind) = &r.resource {
                    json["resource"] = kind.as_str().into();
                }
                outcome_fields(&mut json, &r.outcome);
                let mut reason = r
                    .outcome
                    .reason()
                    .map(|x| format!(": {x}"))
                    .unwrap_or_default();
                for warning in &r.warnings {
                    reason.push_str(&format!("\n{}: warning: {warning}", r.service));
                }
                self.emit(json, format!("{}: {}{reason}", r.service, r.outcome.label()))
            }
        }
    }
}

/// The final table: service, outcome, revision, traffic, checks, time.
pub fn summary_table(report: &RunReport) -> String {
    let mut rows = vec![
        [
            "SERVICE", "OUTCOME", "REVISION", "TRAFFIC", "CHECKS", "TIME",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for s in &report.services {
        // A resource has no traffic or checks; its revision column is the platform's id.
        let (name, outcome, traffic, checks) = match &s.resource {
            None => (
                s.service.clone(),
                s.outcome.label(),
                format!("{}%", s.traffic),
                format!("{}/{}", s.checks_passed, s.checks_run),
            ),
            Some(kind) => (
                format!("{} ({kind})", s.service),
                match s.outcome {
                    super::run::Outcome::Deployed => "applied",
                    ref other => other.label(),
                },
                "-".into(),
                "-".into(),
            ),
        };
        rows.push(vec![
            name,
            outcome.into(),
            s.revision.clone().unwrap_or_else(|| "-".into()),
            traffic,
            checks,
            format!("{:.1}s", s.elapsed.as_secs_f64()),
        ]);
    }
    table(&rows)
}

/// Lays rows out in aligned columns separated by two spaces.
pub fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, cell)| {
                if i + 1 == row.len() {
                    cell.clone()
                } else {
                    // Padded by hand: `format!`'s width is at most 65,535, and a cell holds
                    // whatever a plugin named its revision.
                    let pad = widths[i].saturating_sub(cell.chars().count());
                    format!("{cell}{}", " ".repeat(pad))
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// GitHub Actions workflow commands: `::error` for services that did not deploy, `::notice`
/// for rollouts waiting for approval, `::warning` for those an interruption stopped and for each
/// warning of a service (an old revision left in place).
pub fn annotations(report: &RunReport) -> Vec<String> {
    // The workflow-command syntax needs %, CR and LF escaped in the message.
    let escape = |s: &str| {
        s.replace('%', "%25")
            .replace('\r', "%0D")
            .replace('\n', "%0A")
    };
    let outcomes = report
        .services
        .iter()
        .filter(|s| !s.outcome.succeeded())
        .map(|s| {
            let level = match s.outcome {
                Outcome::AwaitingApproval(_) => "notice",
                Outcome::Interrupted(_) => "warning",
                _ => "error",
            };
            format!(
                "::{level} title=engine: {} {}::{}",
                escape(&s.service),
                s.outcome.label(),
                escape(&s.outcome.reason().unwrap_or_default())
            )
        });
    let warnings = report.services.iter().flat_map(|s| {
        s.warnings.iter().map(|w| {
            format!(
                "::warning title=engine: {} warning::{}",
                escape(&s.service),
                escape(w)
            )
        })
    });
    outcomes.chain(warnings).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::ServiceReport;
    use std::time::Duration;

    #[test]
    fn a_cell_wider_than_formats_allow_is_still_aligned() {
        let wide = "r".repeat(70_000);
        let rows = vec![
            vec!["REVISION".to_string(), "TRAFFIC".into()],
            vec![wide.clone(), "100%".into()],
        ];
        let text = table(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1], format!("{wide}  100%"));
        assert_eq!(lines[0].find("TRAFFIC"), Some(70_002));
    }

    fn report(outcomes: Vec<(&str, Outcome)>) -> RunReport {
        RunReport {
            run_id: 3,
            resumed: false,
            services: outcomes
                .into_iter()
                .map(|(name, outcome)| ServiceReport {
                    service: name.into(),
                    resource: None,
                    outcome,
                    revision: Some(format!("{name}-r3")),
                    traffic: 25,
                    checks_passed: 2,
                    checks_run: 3,
                    elapsed: Duration::from_millis(1500),
                    warnings: Vec::new(),
                })
                .collect(),
        }
    }

    #[test]
    fn tables_align_and_trim() {
        let t = table(&[
            vec!["A".into(), "BB".into(), "C".into()],
            vec!["aaa".into(), "b".into(), "".into()],
        ]);
        assert_eq!(t, "A    BB  C\naaa  b\n");
    }

    #[test]
    fn the_summary_table_has_a_row_per_service() {
        let t = summary_table(&report(vec![
            ("api", Outcome::Deployed),
            ("web", Outcome::RolledBack("p95 620 ms > 500 ms".into())),
        ]));
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("SERVICE  OUTCOME"), "{t}");
        assert!(
            lines[2].starts_with("web      rolled-back  web-r3    25%      2/3     1.5s"),
            "{t}"
        );
    }

    #[test]
    fn annotations_escape_and_tell_failures_from_waits_interruptions_and_warnings() {
        let mut run = report(vec![
            ("api", Outcome::Deployed),
            ("web", Outcome::Failed("100% of 5xx\nsecond line".into())),
            ("pay", Outcome::AwaitingApproval("promote pay-r3".into())),
            ("db", Outcome::Interrupted("stopped at a checkpoint".into())),
        ]);
        run.services[0].warnings = vec!["retiring api-r2 failed: 503\nleft in place".into()];
        assert_eq!(
            annotations(&run),
            [
                "::error title=engine: web failed::100%25 of 5xx%0Asecond line",
                "::notice title=engine: pay awaiting-approval::promote pay-r3",
                "::warning title=engine: db interrupted::stopped at a checkpoint",
                "::warning title=engine: api warning::retiring api-r2 failed: 503%0Aleft in place",
            ]
        );
    }
}
