//! `engine run`, `engine promote` and `engine abort`: validate, load plugins, take the lock,
//! execute (or resume) the run, report.

use super::session::{Session, StopSignal, prepare};
use super::{CommandError, Scope, exit, output};
use crate::redact::redactor;
use crate::report::{self, Printer, Style};
use crate::run::admin::Approval;
use crate::run::{RunOptions, RunReport};
use std::path::PathBuf;
use std::time::Duration;

/// How a deploying command runs and reports: shared by `run`, `promote` and `abort`.
#[derive(Debug, clap::Args)]
pub struct Execution {
    #[command(flatten)]
    scope: Scope,
    /// Services rolled out at the same time, at most
    #[arg(long, default_value_t = 4, value_name = "N")]
    concurrency: usize,
    /// Stop starting services after the first failure
    #[arg(long)]
    fail_fast: bool,
    /// If another run holds the pipeline's lock, wait this long for it (such as `10m`; at
    /// most 24h)
    #[arg(long, value_name = "DURATION", value_parser = super::parse_lock_wait)]
    lock_wait: Option<Duration>,
    /// `text`: live progress at a terminal, timestamped lines elsewhere; `json`: one JSON event
    /// per line (schema in docs/cli.md)
    #[arg(long, value_enum, default_value = "text")]
    output: super::Format,
    /// Also write a JUnit XML report: a test case per service and per health check
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    execution: Execution,
    /// Deploy a release again although its last attempt was rejected (rolled back, or refused
    /// by the platform); without it such a service fails with the reason
    #[arg(long)]
    retry_rejected: bool,
}

#[derive(Debug, clap::Args)]
pub struct DecisionArgs {
    /// The service whose rollout is decided
    service: String,
    /// Why (recorded in the history; `abort` only)
    #[arg(long, value_name = "TEXT")]
    reason: Option<String>,
    #[command(flatten)]
    execution: Execution,
}

pub async fn run(cli: &super::Cli, args: &RunArgs) -> Result<(), CommandError> {
    deploy(cli, &args.execution, None, args.retry_rejected).await
}

/// `engine promote SERVICE` (`reject` false) and `engine abort SERVICE` (`reject` true).
pub async fn decide(
    cli: &super::Cli,
    args: &DecisionArgs,
    reject: bool,
) -> Result<(), CommandError> {
    let approval = if reject {
        Approval::Reject(
            args.reason
                .clone()
                .unwrap_or_else(|| "rejected with `engine abort`".into()),
        )
    } else if args.reason.is_some() {
        return Err(CommandError::usage(
            "--reason goes with `engine abort`; `engine promote` needs none",
        ));
    } else {
        Approval::Approve
    };
    deploy(cli, &args.execution, Some((&args.service, approval)), false).await
}

/// Runs (or resumes) the pipeline's run, first recording a person's decision if given.
async fn deploy(
    cli: &super::Cli,
    execution: &Execution,
    decision: Option<(&str, Approval)>,
    retry_rejected: bool,
) -> Result<(), CommandError> {
    let (pipeline, plugins) = prepare(cli, &execution.scope.pipeline, false).await?;
    if let Some((service, _)) = &decision {
        pipeline.service(service).map_err(CommandError::usage)?;
    }
    let session = Session::open(&execution.scope, &pipeline, execution.lock_wait).await?;
    if let Some((service, approval)) = &decision {
        match crate::run::admin::decide(&session.store, &pipeline, service, approval).await {
            Ok(what) => {
                let verb = match approval {
                    Approval::Approve => "approved",
                    Approval::Reject(_) => "rejected",
                };
                eprintln!("{service}: {verb} ({what}); resuming the run");
            }
            Err(e) => {
                session.close().await;
                return Err(CommandError::failure(e));
            }
        }
    }
    let style = match execution.output {
        super::Format::Json => Style::Json,
        super::Format::Text if output::stderr_is_terminal() => Style::Live(report::Live::new()),
        super::Format::Text => Style::Lines,
    };
    if let Style::Live(live) = &style {
        output::log_above(Some(live.multi()));
    }
    let printer = Printer::new(style);
    let options = RunOptions {
        concurrency: execution.concurrency.max(1),
        fail_fast: execution.fail_fast,
        interrupt: session.signals.token(),
        retry_rejected,
        ..RunOptions::default()
    };
    let result = crate::run::execute(&pipeline, &plugins, &session.store, &printer, &options).await;
    let signal = session.signals.received();
    session.close().await;
    let report = result.map_err(CommandError::failure);
    if let Ok(report) = &report {
        printer.summary(report);
    }
    output::log_above(None);
    let report = report?;
    if let Some(path) = &execution.junit {
        let xml = report::junit(&pipeline.name, &report, &printer.checks());
        std::fs::write(path, redactor().redact(&xml))
            .map_err(|e| CommandError::failure(format!("cannot write {}: {e}", path.display())))?;
    }
    if std::env::var("GITHUB_ACTIONS").as_deref() == Ok("true") {
        for line in report::annotations(&report) {
            println!("{}", redactor().redact(&line));
        }
    }
    match signal {
        Some(signal) => Err(interrupted(signal, &report)),
        None => verdict(&report),
    }
}

/// The error of a run a signal stopped: its exit code, and what is left to the next run.
fn interrupted(signal: StopSignal, report: &RunReport) -> CommandError {
    let left: Vec<&str> = report
        .interrupted()
        .into_iter()
        .map(|s| s.service.as_str())
        .collect();
    let what = if left.is_empty() {
        "after every service had finished".to_string()
    } else {
        format!(
            "before {} finished; the run stays open and the next `engine run` resumes it",
            left.join(", ")
        )
    };
    signal.stopped(&what)
}

/// The exit code: failures first, then rollouts waiting for a person.
fn verdict(report: &RunReport) -> Result<(), CommandError> {
    if report.failed() {
        let failed: Vec<&str> = report
            .services
            .iter()
            .filter(|s| !s.outcome.succeeded())
            .map(|s| s.service.as_str())
            .collect();
        return Err(CommandError::failure(format!(
            "{} of {} services did not deploy: {}",
            failed.len(),
            report.services.len(),
            failed.join(", ")
        )));
    }
    let waiting = report.awaiting_approval();
    if !waiting.is_empty() {
        let names: Vec<&str> = waiting.iter().map(|s| s.service.as_str()).collect();
        return Err(CommandError {
            message: format!(
                "waiting for approval: {}; the run resumes with `engine promote SERVICE` or `engine abort SERVICE`",
                names.join(", ")
            ),
            code: exit::AWAITING_APPROVAL,
        });
    }
    Ok(())
}
