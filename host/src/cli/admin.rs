//! `engine rollback SERVICE` and `engine destroy`.

use super::run::{locked_store, prepare, release};
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
    let (store, lock) = locked_store(&args.scope, &pipeline, args.lock_wait).await?;
    let result = crate::run::admin::rollback(
        &pipeline,
        &plugins,
        &store,
        &args.service,
        args.to.as_deref(),
    )
    .await;
    release(&store, lock).await;
    let revision = result
        .map_err(|e| CommandError::failure(format!("cannot roll `{}` back: {e}", args.service)))?;
    println!("{}: all traffic to {revision}", args.service);
    Ok(())
}

pub async fn destroy(cli: &super::Cli, args: &DestroyArgs) -> Result<(), CommandError> {
    let (pipeline, plugins) = prepare(cli, &args.scope.pipeline, args.dry_run).await?;
    let (store, lock) = locked_store(&args.scope, &pipeline, args.lock_wait).await?;
    let results = crate::run::admin::destroy(&pipeline, &plugins, &store, args.dry_run).await;
    release(&store, lock).await;
    let mut failed = Vec::new();
    for (service, result) in &results {
        match result {
            Ok(()) if args.dry_run => println!("would destroy {service}"),
            Ok(()) => println!("destroyed {service}"),
            Err(e) => {
                println!("{service}: not destroyed: {e}");
                failed.push(service.as_str());
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(CommandError::failure(format!(
            "{} service(s) not destroyed: {}",
            failed.len(),
            failed.join(", ")
        )))
    }
}
