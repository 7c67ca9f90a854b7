//! `engine status` and `engine history SERVICE`: what the state database remembers.

use super::{CommandError, exit};
use crate::config;
use crate::state::{Location, Store};
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

/// Which pipeline's state to read.
#[derive(Debug, clap::Args)]
pub struct StateArgs {
    /// The pipeline file
    #[arg(long, short = 'p', default_value = "pipeline.toml")]
    pipeline: PathBuf,
    #[command(flatten)]
    scope: super::Scope,
}

#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    /// The service
    service: String,
    #[command(flatten)]
    state: StateArgs,
}

fn time(ms: i64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
        .to_string()
}

/// The pipeline (validated, for its name and services) and its state database.
async fn open(args: &StateArgs) -> Result<(config::Pipeline, String, Store), CommandError> {
    let pipeline =
        config::load(&args.pipeline, args.scope.environment.as_deref()).map_err(|e| {
            eprintln!("{e}");
            CommandError::reported(exit::USAGE)
        })?;
    let location = args.scope.location(&args.pipeline);
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

pub async fn status(args: &StateArgs) -> Result<(), CommandError> {
    let (pipeline, environment, store) = open(args).await?;
    println!("pipeline `{}`, environment `{environment}`", pipeline.name);
    match store
        .lock_holder(&pipeline.name, &environment)
        .await
        .map_err(CommandError::failure)?
    {
        Some((h, since)) => println!(
            "locked by {} on {} (process {}) since {}",
            h.name,
            h.host,
            h.pid,
            time(since)
        ),
        None => println!("not locked"),
    }
    let last = store
        .runs(&pipeline.name, &environment, 1)
        .await
        .map_err(CommandError::failure)?;
    match last.first() {
        Some(run) => println!(
            "last run: {} started {}, {}",
            run.id,
            time(run.started_ms),
            match (&run.outcome, run.finished_ms) {
                (Some(o), Some(f)) => format!("{o} at {}", time(f)),
                _ => "unfinished (the next `engine run` resumes it)".into(),
            }
        ),
        None => println!("no runs yet"),
    }
    if let Some(run) = last.first().filter(|r| r.finished_ms.is_none()) {
        for service in &pipeline.services {
            let cp = crate::run::load_checkpoint(&store, run.id, &service.name)
                .await
                .map_err(CommandError::failure)?;
            if let Some(what) = cp.awaiting_approval {
                println!(
                    "{}: awaiting approval: {what} (`engine promote {0}` or `engine abort {0}`)",
                    service.name
                );
            }
        }
    }
    let mut rows = vec![
        ["SERVICE", "REVISION", "OUTCOME", "TRAFFIC", "WHEN"]
            .map(String::from)
            .to_vec(),
    ];
    for service in &pipeline.services {
        let history = store
            .history(&pipeline.name, &environment, &service.name)
            .await
            .map_err(CommandError::failure)?;
        rows.push(match history.first() {
            Some(r) => vec![
                service.name.clone(),
                r.revision.clone(),
                r.outcome.clone(),
                format!("{}%", r.traffic),
                time(r.recorded_ms),
            ],
            None => vec![
                service.name.clone(),
                "-".into(),
                "never deployed".into(),
                "-".into(),
                "-".into(),
            ],
        });
    }
    print!("{}", super::plugins::table(&rows));
    Ok(())
}

pub async fn history(args: &HistoryArgs) -> Result<(), CommandError> {
    let (pipeline, environment, store) = open(&args.state).await?;
    pipeline
        .service(&args.service)
        .map_err(CommandError::usage)?;
    let records = store
        .history(&pipeline.name, &environment, &args.service)
        .await
        .map_err(CommandError::failure)?;
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
    print!("{}", super::plugins::table(&rows));
    Ok(())
}
