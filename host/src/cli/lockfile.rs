//! `engine plugins lock [--update]`: records what each plugin of the pipeline is and may do in
//! engine.lock, and shows what changed since it was last written.

use super::{CommandError, PipelineArgs, exit, output};
use crate::config::{self, Pipeline, Severity};
use crate::lockfile::{Difference, FILE_NAME, LockFile, LockedPlugin};
use crate::runtime::{MemorySink, Runtime, RuntimeOptions};
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Debug, clap::Args)]
pub struct LockArgs {
    #[command(flatten)]
    pipeline: PipelineArgs,
    /// Accept plugins whose code or capabilities differ from the lock (after showing how)
    #[arg(long)]
    update: bool,
}

pub async fn run(cli: &super::Cli, args: &LockArgs) -> Result<(), CommandError> {
    let mut inputs = args.pipeline.inputs();
    inputs.locked = false;
    inputs.allow_unpinned = true;
    let mut pipeline =
        config::load_with(args.pipeline.path(), &inputs).map_err(output::config_failure)?;
    // The plugins are compared with the old lock here, not as validation warnings.
    let old = pipeline.lock.file.take();
    let now = locked_plugins(cli, &pipeline).await?;
    let environment = pipeline.environment.as_deref();
    let before = old
        .as_ref()
        .and_then(|l| l.section(environment))
        .cloned()
        .unwrap_or_default();
    let changes = Changes::between(&before, &now);
    print!("{}", changes.report());
    if !args.update && !changes.changed.is_empty() {
        output::error(&format!(
            "{FILE_NAME} records other code or capabilities for {}; nothing was written\nreview the differences above; if they are intended, run `engine plugins lock --update{}`",
            changes
                .changed
                .keys()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", "),
            environment.map_or(String::new(), |e| format!(" --env {e}"))
        ));
        return Err(CommandError::reported(exit::FAILURE));
    }
    if changes.is_empty() && old.is_some() {
        println!("{FILE_NAME} is up to date");
        return Ok(());
    }
    let mut lock = old.unwrap_or_else(LockFile::new);
    lock.set_section(environment, now);
    let path = lock
        .write(pipeline.directory())
        .map_err(CommandError::failure)?;
    println!("wrote {}", path.display());
    Ok(())
}

/// Loads every plugin of the pipeline as validation does (nothing deployed, secrets not
/// needed) and describes each as the lock records it. Validation errors stop the lock.
async fn locked_plugins(
    cli: &super::Cli,
    pipeline: &Pipeline,
) -> Result<BTreeMap<String, LockedPlugin>, CommandError> {
    let options = RuntimeOptions {
        check_only: true,
        dry_run: true,
        sink: Arc::new(MemorySink::default()),
        local_admin_ports: super::local::admin_ports(Some(pipeline)),
        protected_paths: super::protected_paths(pipeline),
        ..cli.runtime_options()
    };
    let runtime = Runtime::new(options).map_err(|e| CommandError::failure(format!("{e:#}")))?;
    let checked = crate::runtime::examine_plugins(pipeline, &runtime).await;
    let errors: Vec<_> = checked
        .diagnostics
        .into_iter()
        .filter(|d| d.severity == Severity::Error)
        .collect();
    if !errors.is_empty() {
        let report = pipeline.error(errors);
        output::error_report(&report.rendered());
        output::error(&format!("{}; nothing was locked", report.tally()));
        return Err(CommandError::reported(exit::USAGE));
    }
    Ok(checked
        .plugins
        .iter()
        .map(|(name, plugin)| {
            let entry = crate::runtime::locked_now(pipeline, name, plugin);
            (name.clone(), entry)
        })
        .collect())
}

/// How the plugins now differ from the lock's section.
struct Changes {
    added: BTreeMap<String, LockedPlugin>,
    changed: BTreeMap<String, Vec<Difference>>,
    removed: Vec<String>,
}

impl Changes {
    fn between(
        before: &BTreeMap<String, LockedPlugin>,
        now: &BTreeMap<String, LockedPlugin>,
    ) -> Changes {
        let mut changes = Changes {
            added: BTreeMap::new(),
            changed: BTreeMap::new(),
            removed: before
                .keys()
                .filter(|n| !now.contains_key(*n))
                .cloned()
                .collect(),
        };
        for (name, entry) in now {
            match before.get(name) {
                None => {
                    changes.added.insert(name.clone(), entry.clone());
                }
                Some(locked) => {
                    let differences = locked.differences(entry);
                    if !differences.is_empty() {
                        changes.changed.insert(name.clone(), differences);
                    }
                }
            }
        }
        changes
    }

    fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }

    /// For the person accepting it: each new plugin with everything it may do, each changed one
    /// with how, each dropped one.
    fn report(&self) -> String {
        let mut out = String::new();
        for (name, entry) in &self.added {
            let from = match crate::plugins::find_embedded(&entry.source) {
                Some(_) => "built in".to_string(),
                None => format!("from {}", entry.source),
            };
            out.push_str(&format!(
                "+ {name}: {} {}, {from} (sha256 {})\n",
                entry.kind, entry.version, entry.sha256
            ));
            let granted = entry.granted.lines();
            if granted.is_empty() {
                out.push_str("    may do nothing outside its sandbox\n");
            }
            for line in granted {
                out.push_str(&format!("    may use {line}\n"));
            }
        }
        for (name, differences) in &self.changed {
            out.push_str(&format!("~ {name}:\n"));
            for d in differences {
                for (i, line) in d.to_string().lines().enumerate() {
                    let lead = if i == 0 { "    " } else { "      " };
                    out.push_str(&format!("{lead}{}\n", line.trim_start()));
                }
            }
        }
        for name in &self.removed {
            out.push_str(&format!("- {name}: no longer used by the pipeline\n"));
        }
        out
    }
}
