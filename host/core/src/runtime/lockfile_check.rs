//! What validation finds by comparing loaded plugins with engine.lock.

use super::LoadedPlugin;
use crate::config::{Diagnostic, Pipeline};
use crate::lockfile::{FILE_NAME, LockedPlugin};
use std::collections::BTreeMap;

/// Each plugin that differs from engine.lock, or is missing from it: an error under
/// `--locked`, a warning otherwise (the lock is out of date). Nothing without a lock file.
pub fn lock_diagnostics(
    pipeline: &Pipeline,
    plugins: &BTreeMap<String, LoadedPlugin>,
) -> Vec<Diagnostic> {
    let Some(file) = &pipeline.lock.file else {
        return Vec::new();
    };
    let environment = pipeline.environment.as_deref();
    let section = file.section(environment);
    let report = |message: String, name: &str, help: String| {
        let span = pipeline.plugin_span(name);
        let d = if pipeline.lock.locked {
            Diagnostic::new(message, span)
        } else {
            Diagnostic::warning(message, span)
        };
        d.help(help)
    };
    let mut found = Vec::new();
    for (name, plugin) in plugins {
        let now = locked_now(pipeline, name, plugin);
        match section.and_then(|s| s.get(name)) {
            None => found.push(report(
                format!(
                    "plugin `{name}` is not recorded in {FILE_NAME}{}",
                    for_environment(environment)
                ),
                name,
                lock_command(environment, false),
            )),
            Some(locked) => {
                let differences = locked.differences(&now);
                if differences.is_empty() {
                    continue;
                }
                let lines: Vec<String> = differences.iter().map(|d| format!("- {d}")).collect();
                found.push(report(
                    format!(
                        "plugin `{name}` differs from {FILE_NAME}:\n{}",
                        lines.join("\n")
                    ),
                    name,
                    format!(
                        "if this change is intended, accept it with {}",
                        lock_command(environment, true)
                    ),
                ));
            }
        }
    }
    found
}

/// A plugin as engine.lock would record it now.
pub fn locked_now(pipeline: &Pipeline, name: &str, plugin: &LoadedPlugin) -> LockedPlugin {
    let decl = &pipeline.plugins[name];
    // Where the tag points now, when the registry said: a tag moved since the lock shows as a
    // changed digest.
    let digest = plugin.registry().map(|pulled| {
        pulled
            .tag_now
            .clone()
            .unwrap_or_else(|| pulled.manifest.clone())
    });
    LockedPlugin::of(plugin, decl.source.lock_text(pipeline.directory()), digest)
}

fn for_environment(environment: Option<&str>) -> String {
    environment.map_or(String::new(), |env| format!(" for environment `{env}`"))
}

fn lock_command(environment: Option<&str>, update: bool) -> String {
    let env = environment.map_or(String::new(), |e| format!(" --env {e}"));
    let update = if update { " --update" } else { "" };
    format!("`engine plugins lock{update}{env}`, and commit {FILE_NAME}")
}
