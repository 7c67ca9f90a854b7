//! What a rollout meets besides its platform and strategy: the clock, the author's hooks, and
//! the people who approve. A run meets the real ones ([`RealWorld`]); `engine plan` drives the
//! same executor through a simulated world whose clock jumps, whose hooks are listed instead of
//! run, and whose approvals are given (see [`super::plan`]).

use super::hooks::{self, HookContext};
use crate::state::now_ms;
use std::path::Path;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[async_trait::async_trait]
pub(crate) trait World: Send + Sync {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;

    /// Returns at `until_ms`, or early with `false` when `interrupt` is cancelled first.
    async fn wait_until(&self, until_ms: u64, interrupt: &CancellationToken) -> bool;

    /// Runs one of the author's hook commands.
    async fn run_hook(
        &self,
        command: &str,
        directory: &Path,
        context: &HookContext<'_>,
        timeout: Duration,
    ) -> Result<(), String>;

    /// An approval the strategy asks for is given at once, without stopping the run.
    fn approves_at_once(&self) -> bool;

    /// This is `engine plan`'s simulation: a value known only after a deploy gets a stand-in.
    fn simulated(&self) -> bool;
}

/// The world of a real run: wall-clock time, hooks run by `sh`, approvals by people.
pub(crate) struct RealWorld;

#[async_trait::async_trait]
impl World for RealWorld {
    fn now_ms(&self) -> u64 {
        now_ms() as u64
    }

    async fn wait_until(&self, until_ms: u64, interrupt: &CancellationToken) -> bool {
        let left = until_ms.saturating_sub(self.now_ms());
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(left)) => true,
            () = interrupt.cancelled() => false,
        }
    }

    async fn run_hook(
        &self,
        command: &str,
        directory: &Path,
        context: &HookContext<'_>,
        timeout: Duration,
    ) -> Result<(), String> {
        hooks::run(command, directory, context, timeout).await
    }

    fn approves_at_once(&self) -> bool {
        false
    }

    fn simulated(&self) -> bool {
        false
    }
}
