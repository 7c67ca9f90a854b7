//! `engine run`, `engine promote` and `engine abort`: validate, load plugins, take the lock,
//! execute (or resume) the run, report.

use super::{CommandError, PipelineArgs, Scope, exit, output};
use crate::config;
use crate::redact::redactor;
use crate::report::{self, Printer, Style};
use crate::run::admin::Approval;
use crate::run::{RunOptions, RunReport};
use crate::state::{Holder, Lock, StateError, Store};
use std::path::PathBuf;
use std::time::{Duration, Instant};

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

async fn lock_with_wait(
    store: &Store,
    pipeline: &str,
    env: &str,
    wait: Option<Duration>,
) -> Result<Lock, CommandError> {
    let holder = Holder::this_process(format!("engine run {pipeline} ({env})"));
    let deadline = wait.and_then(|w| Instant::now().checked_add(w));
    loop {
        match store.lock(pipeline, env, &holder).await {
            Ok(lock) => return Ok(lock),
            Err(busy @ StateError::LockBusy { .. }) => match deadline {
                Some(d) if Instant::now() < d => {
                    tokio::time::sleep(Duration::from_millis(500)).await
                }
                _ => {
                    let hint = if wait.is_some() {
                        "it was still held when --lock-wait ran out"
                    } else {
                        "wait for it, or pass --lock-wait 10m to queue behind it"
                    };
                    return Err(CommandError {
                        message: format!("{busy}\n{hint}"),
                        code: exit::LOCK_BUSY,
                    });
                }
            },
            Err(e) => return Err(CommandError::failure(e)),
        }
    }
}

/// Loads and validates a pipeline and its plugins: the start of every deploying command.
pub(super) async fn prepare(
    cli: &super::Cli,
    args: &PipelineArgs,
    dry_run: bool,
) -> Result<
    (
        config::Pipeline,
        std::collections::BTreeMap<String, crate::runtime::LoadedPlugin>,
    ),
    CommandError,
> {
    let pipeline = args.load()?;
    let options = crate::runtime::RuntimeOptions {
        dry_run,
        local_admin_ports: super::local::admin_ports(Some(&pipeline)),
        protected_paths: super::protected_paths(&pipeline),
        ..cli.runtime_options()
    };
    let runtime = crate::runtime::Runtime::new(options)
        .map_err(|e| CommandError::failure(format!("{e:#}")))?;
    let plugins = config::check_plugins(&pipeline, &runtime)
        .await
        .map_err(output::config_failure)?;
    super::local::ensure_for(&pipeline).await?;
    Ok((pipeline, plugins))
}

/// Opens the state and takes the pipeline's lock.
pub(super) async fn locked_store(
    scope: &Scope,
    pipeline: &config::Pipeline,
    lock_wait: Option<Duration>,
) -> Result<(Store, Lock), CommandError> {
    let store = Store::connect(&scope.location())
        .await
        .map_err(CommandError::failure)?;
    let environment = pipeline.environment.as_deref().unwrap_or("default");
    let lock = lock_with_wait(&store, &pipeline.name, environment, lock_wait).await?;
    Ok((store, lock))
}

/// Gives the lock back, whatever happened.
pub(super) async fn release(store: &Store, lock: Lock) {
    if let Err(e) = store.unlock(lock).await {
        tracing::error!("cannot release the lock: {e}");
    }
}

pub async fn run(cli: &super::Cli, args: &RunArgs) -> Result<(), CommandError> {
    deploy(cli, &args.execution, None).await
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
    deploy(cli, &args.execution, Some((&args.service, approval))).await
}

/// Runs (or resumes) the pipeline's run, first recording a person's decision if given.
async fn deploy(
    cli: &super::Cli,
    execution: &Execution,
    decision: Option<(&str, Approval)>,
) -> Result<(), CommandError> {
    let (pipeline, plugins) = prepare(cli, &execution.scope.pipeline, false).await?;
    if let Some((service, _)) = &decision {
        pipeline.service(service).map_err(CommandError::usage)?;
    }
    let (store, lock) = locked_store(&execution.scope, &pipeline, execution.lock_wait).await?;
    if let Some((service, approval)) = &decision {
        match crate::run::admin::decide(&store, &pipeline, service, approval).await {
            Ok(what) => {
                let verb = match approval {
                    Approval::Approve => "approved",
                    Approval::Reject(_) => "rejected",
                };
                eprintln!("{service}: {verb} ({what}); resuming the run");
            }
            Err(e) => {
                release(&store, lock).await;
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
        ..RunOptions::default()
    };
    let result = crate::run::execute(&pipeline, &plugins, &store, &printer, &options).await;
    release(&store, lock).await;
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
    verdict(&report)
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
