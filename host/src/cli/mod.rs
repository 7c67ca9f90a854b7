//! The `engine` command line: argument parsing, output and exit codes. Each subcommand is a
//! thin layer over the library.

mod admin;
mod history;
mod local;
mod output;
mod plan;
mod plugins;
mod run;
mod validate;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit codes, documented in docs/cli.md.
pub mod exit {
    /// Everything worked.
    pub const OK: u8 = 0;
    /// The command ran and failed (a plugin that cannot load, a deployment that failed).
    pub const FAILURE: u8 = 1;
    /// The command line or the configuration is wrong.
    pub const USAGE: u8 = 2;
    /// Another run holds the pipeline's lock.
    pub const LOCK_BUSY: u8 = 3;
    /// A rollout waits for `engine promote` or `engine abort`; nothing failed.
    pub const AWAITING_APPROVAL: u8 = 4;
}

/// `engine --version`: the engine, the plugin contract it implements and the wasmtime under it.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (plugin WIT engine:plugin@0.1.0, wasmtime ",
    env!("ENGINE_WASMTIME_VERSION"),
    ")"
);

#[derive(Debug, Parser)]
#[command(
    name = "engine",
    version = VERSION,
    about = "Deploys multi-service systems through sandboxed WebAssembly plugins",
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,

    /// Where compiled plugins are cached [default: the user's cache directory, engine/compiled]
    #[arg(long, global = true, env = "ENGINE_CACHE_DIR", value_name = "DIR")]
    cache_dir: Option<PathBuf>,

    /// Compile plugins on every start instead of caching them
    #[arg(long, global = true)]
    no_cache: bool,

    /// How much the engine logs to stderr: error, warn, info, debug or trace
    #[arg(
        long,
        global = true,
        env = "ENGINE_LOG",
        default_value = "warn",
        value_name = "LEVEL"
    )]
    log_level: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List and inspect plugins
    #[command(subcommand)]
    Plugins(plugins::PluginsCommand),
    /// Deploy a pipeline: every service in dependency order, through its strategy
    Run(run::RunArgs),
    /// Show what `run` would do, in a dry run no plugin can break out of
    Plan(plan::PlanArgs),
    /// Show the pipeline's lock, last run and each service's latest revision
    Status(history::StateArgs),
    /// Show a service's revisions, newest first
    History(history::HistoryArgs),
    /// Approve a rollout waiting for approval, and resume the run
    Promote(run::DecisionArgs),
    /// Reject a rollout (waiting for approval or interrupted), roll it back, and resume the run
    Abort(run::DecisionArgs),
    /// Send all of a service's traffic back to an earlier revision
    Rollback(admin::RollbackArgs),
    /// Remove every service of the pipeline, dependents first
    Destroy(admin::DestroyArgs),
    /// Check a pipeline file completely, without deploying anything
    Validate(validate::ValidateArgs),
    /// Run the local platform: services as local processes behind weighted front doors
    #[command(subcommand)]
    Local(local::LocalCommand),
    /// Print the JSON Schema of pipeline.toml, for editor completion
    Schema,
}

/// Which environment of a pipeline, and where its state lives: shared by every command that
/// reads or writes the state.
#[derive(Debug, clap::Args)]
pub struct Scope {
    /// The environment whose variables and overrides apply
    #[arg(long = "env", value_name = "NAME")]
    pub environment: Option<String>,
    /// The state: a SQLite file, or a postgres:// URL shared by several CI machines
    /// [default: .engine/state.db beside the pipeline]
    #[arg(long, env = "ENGINE_STATE", value_name = "PATH|URL")]
    pub state: Option<String>,
}

impl Scope {
    pub fn location(&self, pipeline_file: &std::path::Path) -> crate::state::Location {
        match &self.state {
            Some(text) => crate::state::Location::parse(text),
            None => crate::state::Location::beside(pipeline_file),
        }
    }
}

/// Output format of commands that print data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned text for people
    Text,
    /// JSON for programs
    Json,
}

impl Cli {
    fn runtime_options(&self) -> engine_runtime::RuntimeOptions {
        engine_runtime::RuntimeOptions {
            cache_dir: if self.no_cache {
                None
            } else {
                self.cache_dir
                    .clone()
                    .or_else(engine_runtime::cache::CompileCache::default_dir)
            },
            ..Default::default()
        }
    }
}

use crate::runtime as engine_runtime;

/// Runs the command line and returns the process's exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    output::init_logging(&cli.log_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            output::error(&format!("cannot start the async runtime: {e}"));
            return ExitCode::from(exit::FAILURE);
        }
    };
    let result = runtime.block_on(async {
        match &cli.command {
            Command::Plugins(cmd) => plugins::run(&cli, cmd).await,
            Command::Run(args) => run::run(&cli, args).await,
            Command::Plan(args) => plan::run(&cli, args).await,
            Command::Promote(args) => run::decide(&cli, args, false).await,
            Command::Abort(args) => run::decide(&cli, args, true).await,
            Command::Status(args) => history::status(args).await,
            Command::History(args) => history::history(args).await,
            Command::Rollback(args) => admin::rollback(&cli, args).await,
            Command::Destroy(args) => admin::destroy(&cli, args).await,
            Command::Validate(args) => validate::run(&cli, args).await,
            Command::Local(cmd) => local::run(cmd).await,
            Command::Schema => {
                print!("{}", crate::config::SCHEMA);
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::from(exit::OK),
        Err(e) => {
            if !e.message.is_empty() {
                output::error(&e.message);
            }
            ExitCode::from(e.code)
        }
    }
}

/// A failed command: what to tell the user and which exit code to use.
#[derive(Debug)]
pub struct CommandError {
    pub message: String,
    pub code: u8,
}

impl CommandError {
    pub fn failure(message: impl std::fmt::Display) -> Self {
        CommandError {
            message: message.to_string(),
            code: exit::FAILURE,
        }
    }
    pub fn usage(message: impl std::fmt::Display) -> Self {
        CommandError {
            message: message.to_string(),
            code: exit::USAGE,
        }
    }
    /// The problem was already printed (rendered diagnostics); only the exit code is left.
    pub fn reported(code: u8) -> Self {
        CommandError {
            message: String::new(),
            code,
        }
    }
}
