//! A service's `hooks.pre` and `hooks.post`: commands of the pipeline's author (database
//! migrations, cache warm-ups, notifications), run by `sh -c` in the pipeline's directory.
//!
//! Hooks are not plugins and are not sandboxed: they are the author's own commands, with the
//! same trust as the CI step that runs `engine`. They may run again when a crashed run is
//! resumed, so they must be safe to repeat.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

/// When a service's hooks run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookStage {
    /// Before the new revision is deployed.
    Pre,
    /// After it was promoted.
    Post,
}

impl HookStage {
    pub fn label(self) -> &'static str {
        match self {
            HookStage::Pre => "pre",
            HookStage::Post => "post",
        }
    }
}

/// What a hook is told about the rollout, as environment variables.
pub struct HookContext<'a> {
    pub stage: HookStage,
    pub pipeline: &'a str,
    pub environment: &'a str,
    pub service: &'a str,
    pub run_id: i64,
    /// The revision serving before the rollout.
    pub stable: Option<&'a str>,
    /// The new revision (post hooks only: pre hooks run before it exists).
    pub candidate: Option<&'a str>,
    /// The service's URL, as its provider reports it (post hooks only).
    pub url: Option<&'a str>,
}

/// The process groups of the hooks running now, so that an engine ending at once (a second
/// signal) takes them with it: [`kill_running`].
static RUNNING: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

/// A running hook's process group. Each hook runs in a group of its own: a terminal's Ctrl-C
/// reaches the engine, which lets the hook finish, not the hook; and the whole group (the
/// hook's own children too) is killed when the engine gives up on it (a timeout, a run that
/// is dropped). A hook that ended leaves what it started in the background alone.
struct Group {
    id: i32,
    ended: bool,
}

impl Group {
    fn new(leader: Option<u32>) -> Group {
        let id = leader.map_or(0, |pid| pid as i32);
        if id > 0 {
            running().insert(id);
        }
        Group { id, ended: false }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if self.id <= 0 {
            return;
        }
        running().remove(&self.id);
        if !self.ended {
            kill_group(self.id);
        }
    }
}

fn running() -> std::sync::MutexGuard<'static, BTreeSet<i32>> {
    RUNNING.lock().unwrap_or_else(|e| e.into_inner())
}

fn kill_group(id: i32) {
    // SAFETY: kill(2) on a negative id signals that process group and touches no memory.
    unsafe {
        libc::kill(-id, libc::SIGKILL);
    }
}

/// Kills every hook still running, with what it started: for an engine about to end at once.
pub fn kill_running() {
    for id in running().iter() {
        kill_group(*id);
    }
}

/// How much of a failed hook's output the error quotes.
const OUTPUT_TAIL_LINES: usize = 20;

/// Runs `command`; an error says how it failed and ends with the last lines of its output.
pub async fn run(
    command: &str,
    directory: &Path,
    context: &HookContext<'_>,
    timeout: Duration,
) -> Result<(), String> {
    let mut child = tokio::process::Command::new("sh");
    child
        .arg("-c")
        .arg(command)
        .current_dir(directory)
        .env("ENGINE_HOOK_STAGE", context.stage.label())
        .env("ENGINE_PIPELINE", context.pipeline)
        .env("ENGINE_ENVIRONMENT", context.environment)
        .env("ENGINE_SERVICE", context.service)
        .env("ENGINE_RUN_ID", context.run_id.to_string())
        .env("ENGINE_STABLE_REVISION", context.stable.unwrap_or(""))
        .env("ENGINE_REVISION", context.candidate.unwrap_or(""))
        .env("ENGINE_SERVICE_URL", context.url.unwrap_or(""))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        // A run that is stopped takes its hooks with it.
        .kill_on_drop(true);
    let child = child
        .spawn()
        .map_err(|e| format!("hook `{command}` could not start: {e}"))?;
    let mut group = Group::new(child.id());
    let output = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(output)) => {
            group.ended = true;
            output
        }
        Ok(Err(e)) => return Err(format!("hook `{command}` failed: {e}")),
        Err(_) => {
            return Err(format!(
                "hook `{command}` did not finish within {}",
                humantime::format_duration(timeout)
            ));
        }
    };
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        tracing::info!(target: "hook", "{}: {line}", context.service);
    }
    if output.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(OUTPUT_TAIL_LINES)..].join("\n");
    let status = match output.status.code() {
        Some(code) => format!("exit code {code}"),
        None => "a signal".to_string(),
    };
    Err(if tail.trim().is_empty() {
        format!("hook `{command}` ended with {status}")
    } else {
        format!("hook `{command}` ended with {status}:\n{tail}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> HookContext<'static> {
        HookContext {
            stage: HookStage::Pre,
            pipeline: "shop",
            environment: "staging",
            service: "api",
            run_id: 7,
            stable: Some("api-r6"),
            candidate: None,
            url: None,
        }
    }

    #[tokio::test]
    async fn a_hook_sees_the_rollout_and_runs_in_the_pipeline_directory() {
        let dir = tempfile::tempdir().unwrap();
        run(
            "echo \"$ENGINE_HOOK_STAGE $ENGINE_PIPELINE $ENGINE_ENVIRONMENT $ENGINE_SERVICE $ENGINE_RUN_ID $ENGINE_STABLE_REVISION\" > seen",
            dir.path(),
            &context(),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
        let seen = std::fs::read_to_string(dir.path().join("seen")).unwrap();
        assert_eq!(seen.trim(), "pre shop staging api 7 api-r6");
    }

    #[tokio::test]
    async fn a_failing_hook_reports_its_exit_code_and_last_output() {
        let dir = tempfile::tempdir().unwrap();
        let err = run(
            "echo migrating; echo 'relation users does not exist' >&2; exit 3",
            dir.path(),
            &context(),
            Duration::from_secs(30),
        )
        .await
        .unwrap_err();
        assert!(err.contains("ended with exit code 3"), "{err}");
        assert!(err.contains("relation users does not exist"), "{err}");
    }

    #[tokio::test]
    async fn a_hook_over_its_time_is_killed_with_what_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let err = run(
            "sleep 600 & echo $! > child.pid; wait",
            dir.path(),
            &context(),
            Duration::from_millis(500),
        )
        .await
        .unwrap_err();
        assert!(err.contains("did not finish within 500ms"), "{err}");
        let pid = std::fs::read_to_string(dir.path().join("child.pid")).unwrap();
        let ended = || match std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())) {
            Ok(stat) => stat
                .rsplit_once(") ")
                .is_some_and(|(_, s)| s.starts_with('Z')),
            Err(_) => true,
        };
        for _ in 0..100 {
            if ended() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the hook's child {pid} still runs");
    }
}
