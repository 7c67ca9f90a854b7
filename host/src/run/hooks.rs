//! A service's `hooks.pre` and `hooks.post`: commands of the pipeline's author (database
//! migrations, cache warm-ups, notifications), run by `sh -c` in the pipeline's directory.
//!
//! Hooks are not plugins and are not sandboxed: they are the author's own commands, with the
//! same trust as the CI step that runs `engine`. They may run again when a crashed run is
//! resumed, so they must be safe to repeat.

use std::path::Path;
use std::process::Stdio;
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
        // A run that is stopped takes its hooks with it.
        .kill_on_drop(true);
    let child = child
        .spawn()
        .map_err(|e| format!("hook `{command}` could not start: {e}"))?;
    let output = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(output)) => output,
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
    async fn a_hook_that_runs_too_long_is_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let err = run(
            "sleep 30",
            dir.path(),
            &context(),
            Duration::from_millis(200),
        )
        .await
        .unwrap_err();
        assert!(err.contains("did not finish within"), "{err}");
    }
}
