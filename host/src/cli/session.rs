//! What every command that changes a platform shares: load the pipeline and its plugins, open
//! the state, take the pipeline's lock (waiting for it if asked), stop cleanly on a signal, and
//! give the lock back.

use super::{CommandError, PipelineArgs, Scope, exit, output};
use crate::config;
use crate::runtime::LoadedPlugin;
use crate::state::{Holder, Lock, StateError, Store};
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Loads and validates a pipeline and its plugins: the start of every deploying command.
pub(super) async fn prepare(
    cli: &super::Cli,
    args: &PipelineArgs,
    dry_run: bool,
) -> Result<(config::Pipeline, BTreeMap<String, LoadedPlugin>), CommandError> {
    let pipeline = args.load()?;
    let options = crate::runtime::RuntimeOptions {
        dry_run,
        local_admin_ports: super::local::admin_ports(Some(&pipeline)),
        protected_paths: super::protected_paths(&pipeline),
        ..cli.runtime_options()
    };
    let runtime = crate::runtime::Runtime::new(options)
        .map_err(|e| CommandError::failure(format!("{e:#}")))?;
    let plugins = crate::runtime::check_plugins(&pipeline, &runtime)
        .await
        .map_err(output::config_failure)?;
    super::local::ensure_for(&pipeline).await?;
    Ok((pipeline, plugins))
}

/// The state, the pipeline's lock in it, and the signals that stop the command.
pub(super) struct Session {
    pub store: Store,
    lock: Lock,
    pub signals: Signals,
}

impl Session {
    /// Catches SIGINT and SIGTERM (see [`Signals`]), opens the state and takes the pipeline's
    /// lock, waiting up to `lock_wait` for it; a signal during the wait ends it.
    pub async fn open(
        scope: &Scope,
        pipeline: &config::Pipeline,
        lock_wait: Option<Duration>,
    ) -> Result<Session, CommandError> {
        let signals = Signals::catch()?;
        let store = Store::connect(&scope.location())
            .await
            .map_err(CommandError::failure)?;
        let environment = pipeline.environment.as_deref().unwrap_or("default");
        let wait = lock_with_wait(&store, &pipeline.name, environment, lock_wait);
        let lock = tokio::select! {
            lock = wait => lock?,
            () = signals.token.cancelled() => {
                let signal = signals.received().unwrap_or(StopSignal::Interrupt);
                return Err(signal.stopped("while waiting for the lock; nothing was done"));
            }
        };
        Ok(Session {
            store,
            lock,
            signals,
        })
    }

    /// Gives the lock back, whatever happened.
    pub async fn close(self) {
        if let Err(e) = self.store.unlock(self.lock).await {
            tracing::error!("cannot release the lock: {e}");
        }
    }
}

async fn lock_with_wait(
    store: &Store,
    pipeline: &str,
    env: &str,
    wait: Option<Duration>,
) -> Result<Lock, CommandError> {
    let holder = Holder::this_process(format!("engine run {pipeline} ({env})"));
    let deadline = wait.and_then(|w| Instant::now().checked_add(w));
    let mut said = false;
    loop {
        match store.lock(pipeline, env, &holder).await {
            Ok(lock) => return Ok(lock),
            Err(busy @ StateError::LockBusy { .. }) => match deadline {
                Some(d) if Instant::now() < d => {
                    if !std::mem::replace(&mut said, true) {
                        let wait = humantime::format_duration(wait.unwrap_or_default());
                        tracing::warn!("{busy}; waiting for it, up to {wait} (--lock-wait)");
                    }
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

/// A signal that asks the engine to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StopSignal {
    /// SIGINT: Ctrl-C at a terminal.
    Interrupt,
    /// SIGTERM: what CI runners send when a job is cancelled.
    Terminate,
}

impl StopSignal {
    pub fn name(self) -> &'static str {
        match self {
            StopSignal::Interrupt => "SIGINT",
            StopSignal::Terminate => "SIGTERM",
        }
    }

    /// The error of a command this signal stopped, with the signal's exit code; `what` says
    /// when, and what is left.
    pub fn stopped(self, what: &str) -> CommandError {
        CommandError {
            message: format!("stopped by {} {what}", self.name()),
            code: self.exit_code(),
        }
    }

    /// 128 + the signal's number, as a shell reports a process the signal ended.
    pub fn exit_code(self) -> u8 {
        match self {
            StopSignal::Interrupt => 130,
            StopSignal::Terminate => 143,
        }
    }
}

async fn next_signal(
    interrupt: &mut tokio::signal::unix::Signal,
    terminate: &mut tokio::signal::unix::Signal,
) -> StopSignal {
    tokio::select! {
        _ = interrupt.recv() => StopSignal::Interrupt,
        _ = terminate.recv() => StopSignal::Terminate,
    }
}

/// SIGINT and SIGTERM, caught while a command holds the lock. The first one cancels
/// [`Signals::token`]: the command starts nothing new, brings what it is doing to its next
/// checkpoint, releases the lock and reports. A second one ends the process at once (the lock
/// is left behind, and the next run sees that its holder is gone).
pub(super) struct Signals {
    token: CancellationToken,
    received: Arc<OnceLock<StopSignal>>,
}

impl Signals {
    fn catch() -> Result<Signals, CommandError> {
        let cannot =
            |e: std::io::Error| CommandError::failure(format!("cannot catch signals: {e}"));
        let mut interrupt = signal(SignalKind::interrupt()).map_err(cannot)?;
        let mut terminate = signal(SignalKind::terminate()).map_err(cannot)?;
        let signals = Signals {
            token: CancellationToken::new(),
            received: Arc::default(),
        };
        let (token, received) = (signals.token.clone(), signals.received.clone());
        tokio::spawn(async move {
            let first = next_signal(&mut interrupt, &mut terminate).await;
            let _ = received.set(first);
            tracing::warn!(
                "{}: stopping at the next checkpoint, then releasing the lock (send it again to stop at once)",
                first.name()
            );
            token.cancel();
            let second = next_signal(&mut interrupt, &mut terminate).await;
            output::error(&format!(
                "{} again: stopping at once (a hook still running is killed); the lock stays until a run sees its holder is gone",
                second.name()
            ));
            crate::run::kill_running_hooks();
            // Other threads may be inside plugin code: end the process without running exit
            // handlers (stderr, written above, is unbuffered).
            // SAFETY: `_exit` only ends the process; nothing after it runs.
            unsafe { libc::_exit(second.exit_code().into()) }
        });
        Ok(signals)
    }

    /// Cancelled on the first signal.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// The first signal, if one came.
    pub fn received(&self) -> Option<StopSignal> {
        self.received.get().copied()
    }
}
