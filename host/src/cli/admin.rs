//! `engine rollback SERVICE` and `engine destroy`.

use super::session::{Session, prepare};
use super::{CommandError, Scope};
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct RollbackArgs {
    /// The service
    service: String,
    /// The revision to send all traffic to [default: the one promoted before the current one]
    #[arg(long, value_name = "REVISION")]
    to: Option<String>,
    #[command(flatten)]
    scope: Scope,
    /// If another run holds the pipeline's lock, wait this long for it (at most 24h)
    #[arg(long, value_name = "DURATION", value_parser = super::parse_lock_wait)]
    lock_wait: Option<Duration>,
}

#[derive(Debug, clap::Args)]
pub struct DestroyArgs {
    #[command(flatten)]
    scope: Scope,
    /// Only list what would be destroyed, in order
    #[arg(long)]
    dry_run: bool,
    /// If another run holds the pipeline's lock, wait this long for it (at most 24h)
    #[arg(long, value_name = "DURATION", value_parser = super::parse_lock_wait)]
    lock_wait: Option<Duration>,
}

pub async fn rollback(cli: &super::Cli, args: &RollbackArgs) -> Result<(), CommandError> {
    let (pipeline, plugins) = prepare(cli, &args.scope.pipeline, false).await?;
    pipeline
        .service(&args.service)
        .map_err(CommandError::usage)?;
    let session = Session::open(&args.scope, &pipeline, args.lock_wait).await?;
    // A rollback is one change of traffic: a signal lets it finish.
    let result = crate::run::admin::rollback(
        &pipeline,
        &plugins,
        &session.store,
        &args.service,
        args.to.as_deref(),
    )
    .await;
    let signal = session.signals.received();
    session.close().await;
    let revision = result
        .map_err(|e| CommandError::failure(format!("cannot roll `{}` back: {e}", args.service)))?;
    println!("{}: all traffic to {revision}", args.service);
    match signal {
        Some(signal) => Err(signal.stopped("after the rollback had finished")),
        None => Ok(()),
    }
}

pub async fn destroy(cli: &super::Cli, args: &DestroyArgs) -> Result<(), CommandError> {
    let (pipeline, plugins) = prepare(cli, &args.scope.pipeline, args.dry_run).await?;
    let session = Session::open(&args.scope, &pipeline, args.lock_wait).await?;
    let interrupt = session.signals.token();
    let results = crate::run::admin::destroy(
        &pipeline,
        &plugins,
        &session.store,
        args.dry_run,
        &interrupt,
    )
    .await;
    let signal = session.signals.received();
    session.close().await;
    let mut failed = Vec::new();
    for (service, result) in &results {
        use crate::run::admin::Destroyed;
        match result {
            Ok(Destroyed::Removed) if args.dry_run => println!("would destroy {service}"),
            Ok(Destroyed::WouldRemove(parts)) => {
                println!("would destroy {service}");
                for part in parts {
                    println!("    {part}");
                }
            }
            Ok(Destroyed::Absent) => println!("{service} does not exist: nothing to destroy"),
            Ok(Destroyed::Removed) => println!("destroyed {service}"),
            Ok(Destroyed::LeftInPlace(why)) => println!("left {service} in place: {why}"),
            Err(e) => {
                println!("{service}: {e}");
                failed.push(service.as_str());
            }
        }
    }
    if let Some(signal) = signal {
        Err(signal.stopped(&format!("with {} service(s) not destroyed", failed.len())))
    } else if failed.is_empty() {
        Ok(())
    } else {
        Err(CommandError::failure(format!(
            "{} service(s) not destroyed, or destroyed without a history row: {}",
            failed.len(),
            failed.join(", ")
        )))
    }
}
