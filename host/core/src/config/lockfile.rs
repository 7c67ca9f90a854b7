//! engine.lock read with the pipeline: it pins the plugin files whose `sha256` line is left out,
//! and `--locked` demands it.

use super::{Diagnostic, Inputs, Pipeline, PipelineLock};
use crate::lockfile::{FILE_NAME, LockFile, LockedPlugin};
use crate::plugins::PluginSource;

/// Reads the lock beside `pipeline`, pins its unpinned plugin files with it, and refuses what
/// stays unpinned (unless `inputs` allow it) and a `--locked` run without a lock.
pub(super) fn apply(pipeline: &mut Pipeline, inputs: &Inputs) -> Result<(), Vec<Diagnostic>> {
    let file = LockFile::read(pipeline.directory())
        .map_err(|e| vec![Diagnostic::new(e.to_string(), 0..0)])?;
    if inputs.locked && file.is_none() {
        return Err(vec![
            Diagnostic::new(
                format!("--locked, but there is no {FILE_NAME} beside the pipeline"),
                0..0,
            )
            .help(format!(
                "run `engine plugins lock` where the pipeline is, review {FILE_NAME} and commit it"
            )),
        ]);
    }
    pipeline.lock = PipelineLock {
        file,
        locked: inputs.locked,
    };
    if inputs.allow_unpinned {
        // `engine plugins lock` reads each file as it is now, to compare it with the lock.
        return Ok(());
    }
    let base = pipeline.directory().to_path_buf();
    let mut problems = Vec::new();
    let names: Vec<String> = pipeline.plugins.keys().cloned().collect();
    for name in names {
        let source = &pipeline.plugins[&name].source;
        let written = source.lock_text(&base);
        // An environment not locked yet still pins the plugin with the pipeline's own entry:
        // the same source is the same code; what it is granted there is checked later.
        let environment = pipeline.environment.as_deref();
        let entry = [environment, None]
            .into_iter()
            .filter_map(|env| pipeline.lock.section(env)?.get(&name))
            .find(|entry| entry.source == written)
            .cloned();
        match pinned(source, entry.as_ref()) {
            Some(source) => {
                pipeline
                    .plugins
                    .get_mut(&name)
                    .expect("listed above")
                    .source = source
            }
            None => problems.push(unpinned(pipeline, &name, &written)),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// `source` with the pins `entry` adds; None when it stays unpinned.
fn pinned(source: &PluginSource, entry: Option<&LockedPlugin>) -> Option<PluginSource> {
    match source {
        PluginSource::Unpinned(path) => Some(PluginSource::File {
            path: path.clone(),
            sha256: entry?.sha256.clone(),
        }),
        PluginSource::Url { url, sha256: None } => Some(PluginSource::Url {
            url: url.clone(),
            sha256: Some(entry?.sha256.clone()),
        }),
        PluginSource::Registry(registry) => {
            let mut registry = registry.clone();
            if let Some(entry) = entry {
                registry.manifest = registry.manifest.or_else(|| entry.digest.clone());
                registry.sha256 = registry.sha256.or_else(|| Some(entry.sha256.clone()));
            }
            // A tag alone is never trusted: the lock or the pipeline must say what it meant.
            let pinned = registry.manifest.is_some() || registry.sha256.is_some();
            pinned.then_some(PluginSource::Registry(registry))
        }
        other => Some(other.clone()),
    }
}

fn unpinned(pipeline: &Pipeline, name: &str, written: &str) -> Diagnostic {
    Diagnostic::new(
        format!("plugin `{name}` loads from {written} but nothing pins its code: it has no `sha256` (or registry digest) and {FILE_NAME} does not lock it"),
        pipeline.plugin_span(name),
    )
    .help(if written.contains("://") {
        format!("run `engine plugins lock` to record its digest and sha256 (and what it may do) in {FILE_NAME}")
    } else {
        format!("run `engine plugins lock` to record its sha256 (and what it may do) in {FILE_NAME}, or add the `sha256` that `engine plugins inspect {written}` shows")
    })
}
