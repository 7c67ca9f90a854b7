//! `engine status` and `engine history SERVICE`: what the state database remembers, as text or
//! as JSON (schemas in docs/cli.md).

use super::output::{OUTPUT_SCHEMA, print_json, print_text};
use super::{CommandError, Format};
use crate::config;
use crate::state::{Location, RevisionRecord, RunRecord, Store, serving_revision};
use serde_json::{Value, json};
use std::time::{Duration, UNIX_EPOCH};

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    scope: super::Scope,
    /// `text` for people, `json` for programs (schema in docs/cli.md)
    #[arg(long, value_enum, default_value = "text")]
    output: Format,
}

#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    /// The service
    service: String,
    #[command(flatten)]
    scope: super::Scope,
    /// `text` for people, `json` for programs (schema in docs/cli.md)
    #[arg(long, value_enum, default_value = "text")]
    output: Format,
}

fn time(ms: i64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
        .to_string()
}

/// The pipeline (validated, for its name and services) and its state database.
async fn open(scope: &super::Scope) -> Result<(config::Pipeline, String, Store), CommandError> {
    let pipeline = scope.pipeline.load()?;
    let location = scope.location();
    if let Location::Sqlite(path) = &location
        && !path.exists()
    {
        return Err(CommandError::failure(format!(
            "no state at {}: this pipeline has not been run from here (or pass --state)",
            path.display()
        )));
    }
    let store = Store::connect(&location)
        .await
        .map_err(CommandError::failure)?;
    let environment = pipeline
        .environment
        .clone()
        .unwrap_or_else(|| "default".into());
    Ok((pipeline, environment, store))
}

/// Everything `engine status` shows.
struct Status {
    lock: Option<(crate::state::Holder, i64)>,
    last_run: Option<RunRecord>,
    /// Service → what it waits for.
    waiting: Vec<(String, String)>,
    /// Each service with its history, newest first.
    services: Vec<(String, Vec<RevisionRecord>)>,
}

async fn read_status(
    store: &Store,
    pipeline: &config::Pipeline,
    environment: &str,
) -> Result<Status, CommandError> {
    let lock = store
        .lock_holder(&pipeline.name, environment)
        .await
        .map_err(CommandError::failure)?;
    let last_run = store
        .runs(&pipeline.name, environment, 1)
        .await
        .map_err(CommandError::failure)?
        .into_iter()
        .next();
    let mut waiting = Vec::new();
    if let Some(run) = last_run.as_ref().filter(|r| r.finished_ms.is_none()) {
        for service in &pipeline.services {
            let cp = crate::run::load_checkpoint(store, run.id, &service.name)
                .await
                .map_err(CommandError::failure)?;
            if let crate::run::checkpoint::Phase::AwaitingApproval { what } = cp.phase {
                waiting.push((service.name.clone(), what));
            }
        }
    }
    let mut services = Vec::new();
    for service in &pipeline.services {
        let history = store
            .history(&pipeline.name, environment, &service.name)
            .await
            .map_err(CommandError::failure)?;
        services.push((service.name.clone(), history));
    }
    Ok(Status {
        lock,
        last_run,
        waiting,
        services,
    })
}

pub async fn status(args: &StatusArgs) -> Result<(), CommandError> {
    let (pipeline, environment, store) = open(&args.scope).await?;
    let status = read_status(&store, &pipeline, &environment).await?;
    match args.output {
        Format::Json => print_json(&status_json(&pipeline, &environment, &status)),
        Format::Text => print_text(&status_text(&pipeline, &environment, &status)),
    }
    Ok(())
}

fn status_text(pipeline: &config::Pipeline, environment: &str, status: &Status) -> String {
    let mut out = format!(
        "pipeline `{}`, environment `{environment}`\n",
        pipeline.name
    );
    match &status.lock {
        Some((h, since)) => out.push_str(&format!(
            "locked by {} on {} (process {}: {}) since {}\n",
            h.name,
            h.host,
            h.pid,
            h.liveness().describe(),
            time(*since)
        )),
        None => out.push_str("not locked\n"),
    }
    match &status.last_run {
        Some(run) => out.push_str(&format!(
            "last run: {} started {}, {}\n",
            run.id,
            time(run.started_ms),
            match (&run.outcome, run.finished_ms) {
                (Some(o), Some(f)) => format!("{o} at {}", time(f)),
                _ => "unfinished (the next `engine run` resumes it)".into(),
            }
        )),
        None => out.push_str("no runs yet\n"),
    }
    for (service, what) in &status.waiting {
        out.push_str(&format!(
            "{service}: awaiting approval: {what} (`engine promote {service}` or `engine abort {service}`)\n"
        ));
    }
    let mut rows = vec![
        ["SERVICE", "SERVING", "SINCE", "LAST EVENT", "WHEN"]
            .map(String::from)
            .to_vec(),
    ];
    for (service, history) in &status.services {
        let serving = serving_revision(history);
        let latest = history.first();
        rows.push(vec![
            service.clone(),
            serving.map_or("-".into(), |r| r.revision.clone()),
            serving.map_or("-".into(), |r| time(r.recorded_ms)),
            latest.map_or("never deployed".into(), |r| {
                format!("{} {}", r.revision, r.outcome)
            }),
            latest.map_or("-".into(), |r| time(r.recorded_ms)),
        ]);
    }
    out.push_str(&super::plugins::table(&rows));
    out
}

fn status_json(pipeline: &config::Pipeline, environment: &str, status: &Status) -> Value {
    let services: Vec<Value> = status
        .services
        .iter()
        .map(|(service, history)| {
            json!({
                "service": service,
                "serving": serving_revision(history).map(|r| json!({
                    "revision": r.revision,
                    "since": time(r.recorded_ms),
                })),
                "last_event": history.first().map(record_json),
                "awaiting_approval": status.waiting.iter().find(|(s, _)| s == service).map(|(_, w)| w),
            })
        })
        .collect();
    json!({
        "schema": OUTPUT_SCHEMA,
        "pipeline": pipeline.name,
        "environment": environment,
        "lock": status.lock.as_ref().map(|(h, since)| json!({
            "holder": h.name, "host": h.host, "pid": h.pid, "since": time(*since),
            "holder_process": match h.liveness() {
                crate::state::Liveness::Alive => "alive",
                crate::state::Liveness::Gone => "gone",
                crate::state::Liveness::Unknown => "unknown",
            },
        })),
        "last_run": status.last_run.as_ref().map(|run| json!({
            "id": run.id,
            "started": time(run.started_ms),
            "finished": run.finished_ms.map(time),
            "outcome": run.outcome,
        })),
        "services": services,
    })
}

fn record_json(r: &RevisionRecord) -> Value {
    json!({
        "revision": r.revision,
        "outcome": r.outcome,
        "traffic": r.traffic,
        "run": r.run_id,
        "when": time(r.recorded_ms),
        "detail": r.detail,
        "release": r.release,
    })
}

pub async fn history(args: &HistoryArgs) -> Result<(), CommandError> {
    let (pipeline, environment, store) = open(&args.scope).await?;
    pipeline
        .service(&args.service)
        .map_err(CommandError::usage)?;
    let records = store
        .history(&pipeline.name, &environment, &args.service)
        .await
        .map_err(CommandError::failure)?;
    if args.output == Format::Json {
        print_json(&json!({
            "schema": OUTPUT_SCHEMA,
            "pipeline": pipeline.name,
            "environment": environment,
            "service": args.service,
            "revisions": records.iter().map(record_json).collect::<Vec<_>>(),
        }));
        return Ok(());
    }
    let mut rows = vec![
        ["WHEN", "REVISION", "OUTCOME", "TRAFFIC", "RUN", "DETAIL"]
            .map(String::from)
            .to_vec(),
    ];
    for r in records {
        rows.push(vec![
            time(r.recorded_ms),
            r.revision,
            r.outcome,
            format!("{}%", r.traffic),
            r.run_id.map_or("-".into(), |id| id.to_string()),
            r.detail.unwrap_or_default(),
        ]);
    }
    print_text(&super::plugins::table(&rows));
    Ok(())
}
