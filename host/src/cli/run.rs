//! `engine run`: validate, load plugins, take the lock, execute, report.

use super::{CommandError, exit};
use crate::config;
use crate::run::{Event, Observer, Outcome, RunOptions, RunReport};
use crate::runtime::secrets::redactor;
use crate::state::{Holder, StateError, Store};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The pipeline file
    #[arg(default_value = "pipeline.toml")]
    pipeline: PathBuf,
    /// The environment whose variables and overrides apply
    #[arg(long = "env", value_name = "NAME")]
    environment: Option<String>,
    /// Services rolled out at the same time, at most
    #[arg(long, default_value_t = 4, value_name = "N")]
    concurrency: usize,
    /// Stop starting services after the first failure
    #[arg(long)]
    fail_fast: bool,
    /// The state database [default: .engine/state.db beside the pipeline]
    #[arg(long, value_name = "PATH")]
    state: Option<PathBuf>,
    /// If another run holds the pipeline's lock, wait this long for it (such as `10m`)
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    lock_wait: Option<Duration>,
    /// `text`: a line per step; `json`: one JSON event per line (schema in docs/cli.md)
    #[arg(long, value_enum, default_value = "text")]
    output: super::Format,
    /// Also write a JUnit XML report: a test case per service and per health check
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
}

/// Prints events as plain timestamped lines, or as JSON lines, and keeps the health checks
/// for the JUnit report.
struct Printer {
    json: bool,
    checks: std::sync::Mutex<Vec<(String, String, String, String)>>,
}

fn timestamp() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

fn outcome_json(o: &Outcome) -> serde_json::Value {
    serde_json::json!({ "outcome": o.label(), "reason": o.reason() })
}

impl Printer {
    fn emit(&self, json: serde_json::Value, text: String) {
        let line = if self.json {
            let mut json = json;
            json["schema"] = 1.into();
            json["time"] = timestamp().into();
            json.to_string()
        } else {
            format!("{} {text}", timestamp())
        };
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", redactor().redact(&line));
    }
}

impl Observer for Printer {
    fn event(&self, event: &Event) {
        match event {
            Event::Started { run_id, resumed, services } => self.emit(
                serde_json::json!({ "type": "run-started", "run": run_id, "resumed": resumed, "services": services }),
                format!("run {run_id}{}: {services} services", if *resumed { " (resumed)" } else { "" }),
            ),
            Event::Phase { service, phase, traffic } => self.emit(
                serde_json::json!({ "type": "phase", "service": service, "phase": phase, "traffic": traffic }),
                format!("{service}: {phase} (traffic {traffic}%)"),
            ),
            Event::Check { service, check, verdict, message } => {
                self.checks.lock().unwrap_or_else(|e| e.into_inner()).push((
                    service.clone(),
                    check.clone(),
                    verdict.clone(),
                    message.clone(),
                ));
                self.emit(
                serde_json::json!({ "type": "check", "service": service, "check": check, "verdict": verdict, "message": message }),
                format!("{service}: check {check} {verdict}: {message}"),
            )
            }
            Event::Finished(r) => {
                let mut json = serde_json::json!({
                    "type": "service-finished", "service": r.service, "revision": r.revision, "traffic": r.traffic,
                    "checks_passed": r.checks_passed, "checks_run": r.checks_run, "seconds": r.elapsed.as_secs_f64(),
                });
                json.as_object_mut().unwrap().extend(outcome_json(&r.outcome).as_object().unwrap().clone());
                let reason = r.outcome.reason().map(|x| format!(": {x}")).unwrap_or_default();
                self.emit(json, format!("{}: {}{reason}", r.service, r.outcome.label()))
            }
        }
    }
}

impl Printer {
    fn summary(&self, report: &RunReport) {
        let ok = report.succeeded();
        if self.json {
            let services: Vec<serde_json::Value> = report
                .services
                .iter()
                .map(|s| {
                    let mut v = serde_json::json!({ "service": s.service, "revision": s.revision, "traffic": s.traffic });
                    v.as_object_mut().unwrap().extend(outcome_json(&s.outcome).as_object().unwrap().clone());
                    v
                })
                .collect();
            self.emit(
                serde_json::json!({ "type": "summary", "run": report.run_id, "succeeded": ok, "services": services }),
                String::new(),
            );
            return;
        }
        let mut rows = vec![
            [
                "SERVICE", "OUTCOME", "REVISION", "TRAFFIC", "CHECKS", "TIME",
            ]
            .map(String::from)
            .to_vec(),
        ];
        for s in &report.services {
            rows.push(vec![
                s.service.clone(),
                s.outcome.label().into(),
                s.revision.clone().unwrap_or_else(|| "-".into()),
                format!("{}%", s.traffic),
                format!("{}/{}", s.checks_passed, s.checks_run),
                format!("{:.1}s", s.elapsed.as_secs_f64()),
            ]);
        }
        print!("{}", super::plugins::table(&rows));
    }
}

fn lock_with_wait(
    store: &mut Store,
    pipeline: &str,
    env: &str,
    wait: Option<Duration>,
) -> Result<crate::state::Lock, CommandError> {
    let holder = Holder::this_process(format!("engine run {pipeline} ({env})"));
    let deadline = wait.map(|w| Instant::now() + w);
    loop {
        match store.lock(pipeline, env, &holder) {
            Ok(lock) => return Ok(lock),
            Err(busy @ StateError::LockBusy { .. }) => match deadline {
                Some(d) if Instant::now() < d => std::thread::sleep(Duration::from_millis(500)),
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
    path: &std::path::Path,
    environment: Option<&str>,
    dry_run: bool,
) -> Result<
    (
        config::Pipeline,
        std::collections::BTreeMap<String, crate::runtime::LoadedPlugin>,
    ),
    CommandError,
> {
    let report_config = |e: config::ConfigError| {
        eprintln!("{}", redactor().redact(&e.to_string()));
        CommandError::reported(exit::USAGE)
    };
    let pipeline = config::load(path, environment).map_err(report_config)?;
    let options = crate::runtime::RuntimeOptions {
        dry_run,
        ..cli.runtime_options()
    };
    let runtime = crate::runtime::Runtime::new(options)
        .map_err(|e| CommandError::failure(format!("{e:#}")))?;
    let plugins = config::check_plugins(&pipeline, &runtime)
        .await
        .map_err(report_config)?;
    Ok((pipeline, plugins))
}

/// Opens the state database and takes the pipeline's lock.
pub(super) fn locked_store(
    pipeline_file: &std::path::Path,
    state: Option<&std::path::Path>,
    pipeline: &config::Pipeline,
    lock_wait: Option<Duration>,
) -> Result<(Store, crate::state::Lock, PathBuf), CommandError> {
    let path = state
        .map(PathBuf::from)
        .unwrap_or_else(|| Store::default_path(pipeline_file));
    let mut store = Store::open(&path).map_err(CommandError::failure)?;
    let environment = pipeline
        .environment
        .clone()
        .unwrap_or_else(|| "default".into());
    let lock = lock_with_wait(&mut store, &pipeline.name, &environment, lock_wait)?;
    Ok((store, lock, path))
}

/// Gives the lock back, whatever happened.
pub(super) fn release(path: &std::path::Path, lock: crate::state::Lock) {
    match Store::open(path) {
        Ok(store) => {
            if let Err(e) = store.unlock(lock) {
                tracing::error!("cannot release the lock: {e}");
            }
        }
        Err(e) => tracing::error!("cannot release the lock: {e}"),
    }
}

pub async fn run(cli: &super::Cli, args: &RunArgs) -> Result<(), CommandError> {
    let (pipeline, plugins) =
        prepare(cli, &args.pipeline, args.environment.as_deref(), false).await?;
    let (store, lock, state_path) = locked_store(
        &args.pipeline,
        args.state.as_deref(),
        &pipeline,
        args.lock_wait,
    )?;
    let printer = Printer {
        json: args.output == super::Format::Json,
        checks: Default::default(),
    };
    let options = RunOptions {
        concurrency: args.concurrency.max(1),
        fail_fast: args.fail_fast,
        ..RunOptions::default()
    };
    let result = crate::run::execute(&pipeline, &plugins, store, &printer, &options).await;
    release(&state_path, lock);
    let report = result.map_err(CommandError::failure)?;
    printer.summary(&report);
    if let Some(path) = &args.junit {
        let checks = printer
            .checks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let xml = junit(&pipeline.name, &report, &checks);
        std::fs::write(path, redactor().redact(&xml))
            .map_err(|e| CommandError::failure(format!("cannot write {}: {e}", path.display())))?;
    }
    if std::env::var("GITHUB_ACTIONS").as_deref() == Ok("true") {
        for line in annotations(&report) {
            println!("{}", redactor().redact(&line));
        }
    }
    if report.succeeded() {
        Ok(())
    } else {
        let failed: Vec<&str> = report
            .services
            .iter()
            .filter(|s| !s.outcome.succeeded())
            .map(|s| s.service.as_str())
            .collect();
        Err(CommandError::failure(format!(
            "{} of {} services did not deploy: {}",
            failed.len(),
            report.services.len(),
            failed.join(", ")
        )))
    }
}

/// The run as JUnit XML: one test case per service (skipped ones as skipped) and one per health
/// check that ran, so CI systems show a failed gate where people look for failed tests.
fn junit(
    pipeline: &str,
    report: &RunReport,
    checks: &[(String, String, String, String)],
) -> String {
    use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
    let mut suite = TestSuite::new(format!("engine run {pipeline}"));
    for s in &report.services {
        let mut status = match &s.outcome {
            o if o.succeeded() => TestCaseStatus::success(),
            Outcome::Skipped(_) => TestCaseStatus::skipped(),
            _ => TestCaseStatus::non_success(NonSuccessKind::Failure),
        };
        if let Some(reason) = s.outcome.reason() {
            status.set_message(reason).set_type(s.outcome.label());
        }
        let mut case = TestCase::new(s.service.clone(), status);
        case.set_classname(pipeline).set_time(s.elapsed);
        suite.add_test_case(case);
    }
    for (service, check, verdict, message) in checks {
        let mut status = if verdict == "unhealthy" {
            TestCaseStatus::non_success(NonSuccessKind::Failure)
        } else {
            TestCaseStatus::success()
        };
        if verdict == "unhealthy" {
            status.set_message(message.clone()).set_type("unhealthy");
        }
        let mut case = TestCase::new(format!("{service} / {check}"), status);
        case.set_classname(format!("{pipeline}.health"));
        suite.add_test_case(case);
    }
    let mut out = Report::new(format!("engine {pipeline}"));
    out.add_test_suite(suite);
    out.to_string().expect("a JUnit report serialises")
}

/// GitHub Actions `::error` lines for the services that did not deploy.
fn annotations(report: &RunReport) -> Vec<String> {
    // The workflow-command syntax needs %, CR and LF escaped in the message.
    let escape = |s: &str| {
        s.replace('%', "%25")
            .replace('\r', "%0D")
            .replace('\n', "%0A")
    };
    report
        .services
        .iter()
        .filter(|s| !s.outcome.succeeded())
        .map(|s| {
            format!(
                "::error title=engine: {} {}::{}",
                escape(&s.service),
                s.outcome.label(),
                escape(s.outcome.reason().unwrap_or(""))
            )
        })
        .collect()
}
