//! The `engine` command line: argument parsing, output and exit codes. Each subcommand is a
//! thin layer over the library.

mod admin;
mod docs;
mod history;
mod local;
mod lockfile;
mod new;
mod output;
mod plan;
mod plugin_check;
mod plugins;
mod run;
mod session;
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

/// `engine --version`: the engine, the plugin contract it implements, the commit it was built
/// from and the wasmtime under it.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (plugin WIT engine:plugin@0.1.1, commit ",
    env!("ENGINE_COMMIT"),
    ", wasmtime ",
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
    /// Create, check, list, inspect, lock and publish plugins
    #[command(subcommand)]
    Plugins(plugins::PluginsCommand),
    /// Deploy a pipeline: every service in dependency order, through its strategy
    Run(run::RunArgs),
    /// Show what `run` would do, in a dry run no plugin can break out of
    Plan(plan::PlanArgs),
    /// Show the pipeline's lock, last run and each service's latest revision
    Status(history::StatusArgs),
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
    /// Print a shell completion script: bash, zsh, fish, powershell or elvish
    Completions(docs::CompletionsArgs),
    /// Print the man page, or write one page per command into a directory
    Man(docs::ManArgs),
}

/// The pipeline a command reads: the file, the environment, and variables given from outside
/// the file. Every command that reads a pipeline takes these, the same way.
#[derive(Debug, clap::Args)]
pub struct PipelineArgs {
    /// The pipeline file [default: pipeline.toml]
    #[arg(value_name = "PIPELINE")]
    file: Option<PathBuf>,
    /// The pipeline file, as an option (the same as PIPELINE)
    #[arg(
        short = 'p',
        long = "pipeline",
        value_name = "FILE",
        conflicts_with = "file"
    )]
    file_option: Option<PathBuf>,
    /// The environment whose variables and overrides apply
    #[arg(long = "env", value_name = "NAME")]
    pub environment: Option<String>,
    /// Set a variable the pipeline declares (repeatable); wins over ENGINE_VAR_NAME in the
    /// environment, which wins over the file's values
    #[arg(long = "var", value_name = "NAME=VALUE", value_parser = parse_var)]
    vars: Vec<(String, String)>,
    /// Refuse any plugin whose code or capabilities differ from engine.lock, or that it does
    /// not record (what CI should use)
    #[arg(long)]
    locked: bool,
}

/// `NAME=VALUE` of `--var`.
fn parse_var(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err(format!(
            "`{text}` is not NAME=VALUE (write it like --var tag=v1.2.0)"
        )),
    }
}

impl PipelineArgs {
    pub fn path(&self) -> &std::path::Path {
        self.file
            .as_deref()
            .or(self.file_option.as_deref())
            .unwrap_or(std::path::Path::new("pipeline.toml"))
    }

    /// The environment and the outside variables: `ENGINE_VAR_*`, then `--var`.
    pub fn inputs(&self) -> crate::config::Inputs {
        let mut inputs =
            crate::config::Inputs::environment(self.environment.as_deref()).with_process_env();
        inputs.command_line = self.vars.clone();
        inputs.locked = self.locked;
        inputs
    }

    /// Reads and validates the pipeline; problems are printed with their place in the file.
    /// Its secrets' values are registered for redaction, whatever the command goes on to do.
    pub fn load(&self) -> Result<crate::config::Pipeline, CommandError> {
        let pipeline = crate::config::load_with(self.path(), &self.inputs())
            .map_err(output::config_failure)?;
        crate::runtime::secrets::register_readable_secrets(
            pipeline.plugins.values().map(|p| &p.grants),
        );
        Ok(pipeline)
    }
}

/// A pipeline and where its state lives: shared by every command that reads or writes the
/// state.
#[derive(Debug, clap::Args)]
pub struct Scope {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// The state: a SQLite file, or a postgres:// URL shared by several CI machines
    /// [default: .engine/state.db beside the pipeline]
    #[arg(long, env = "ENGINE_STATE", value_name = "PATH|URL")]
    pub state: Option<String>,
}

impl Scope {
    pub fn location(&self) -> crate::state::Location {
        match &self.state {
            Some(text) => crate::state::Location::parse(text),
            None => crate::state::Location::beside(self.pipeline.path()),
        }
    }
}

/// The longest `--lock-wait`: a day (CI jobs end long before).
pub const MAX_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// `--lock-wait DURATION`, at most [`MAX_LOCK_WAIT`].
pub fn parse_lock_wait(text: &str) -> Result<std::time::Duration, String> {
    let wait = humantime::parse_duration(text)
        .map_err(|e| format!("`{text}` is not a duration ({e}); write it like 30s or 10m"))?;
    if wait > MAX_LOCK_WAIT {
        return Err(format!(
            "`{text}` is longer than the longest lock wait, 24h"
        ));
    }
    Ok(wait)
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
            local_admin_ports: local::admin_ports(None),
            ..Default::default()
        }
    }
}

use crate::runtime as engine_runtime;

/// What a pipeline's plugins must not reach through a directory grant: its state and the local
/// platform's tokens (not even to read), its own file and plugin files (not to change).
pub(crate) fn protected_paths(
    pipeline: &crate::config::Pipeline,
) -> Vec<crate::grants::ProtectedPath> {
    use crate::grants::ProtectedPath;
    let protect = |path: PathBuf, what: &str, unreadable| ProtectedPath {
        path,
        what: what.to_string(),
        unreadable,
    };
    let mut paths = vec![
        protect(
            pipeline.directory().join(".engine"),
            "the engine's state",
            true,
        ),
        protect(
            local_platform::token::directory(),
            "the local platform's access tokens",
            true,
        ),
        protect(PathBuf::from(pipeline.file()), "the pipeline file", false),
    ];
    if let Ok(state) = std::env::var("ENGINE_STATE")
        && !state.contains("://")
    {
        paths.push(protect(PathBuf::from(state), "the engine's state", true));
    }
    for plugin in pipeline.plugins.values() {
        if let crate::plugins::PluginSource::File { path, .. } = &plugin.source {
            paths.push(protect(path.clone(), "a plugin's file", false));
        }
    }
    paths
}

/// Lets a closed stdout end the process quietly, as it ends `cat` or `grep`: Rust ignores
/// SIGPIPE, so `engine history api | head -1` would otherwise panic on the next line it prints.
fn quiet_on_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: called once at start, before any thread exists; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Runs the command line and returns the process's exit code.
pub fn main() -> ExitCode {
    quiet_on_closed_pipe();
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
            Command::Completions(args) => docs::completions(args),
            Command::Man(args) => docs::man(args),
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
