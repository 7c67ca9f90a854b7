//! engine.lock read with the pipeline: it pins the plugin files whose `sha256` line is left out,
//! and `--locked` demands it.

use super::{Diagnostic, Inputs, Pipeline, PipelineLock};
use crate::lockfile::{FILE_NAME, LockFile};
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
        let PluginSource::Unpinned(path) = &pipeline.plugins[&name].source else {
            continue;
        };
        let written = PluginSource::Unpinned(path.clone()).lock_text(&base);
        // An environment not locked yet still pins the file with the pipeline's own entry:
        // the same file is the same code; what it is granted there is checked later.
        let environment = pipeline.environment.as_deref();
        let locked = [environment, None]
            .into_iter()
            .filter_map(|env| pipeline.lock.section(env)?.get(&name))
            .find(|entry| entry.source == written)
            .map(|entry| entry.sha256.clone());
        match locked {
            Some(sha256) => {
                let path = path.clone();
                let decl = pipeline.plugins.get_mut(&name).expect("listed above");
                decl.source = PluginSource::File { path, sha256 };
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

fn unpinned(pipeline: &Pipeline, name: &str, written: &str) -> Diagnostic {
    Diagnostic::new(
        format!("plugin `{name}` loads from {written} but nothing pins its code: it has no `sha256` and {FILE_NAME} does not lock it"),
        pipeline.plugin_span(name),
    )
    .help(format!(
        "run `engine plugins lock` to record its sha256 (and what it may do) in {FILE_NAME}, or add the `sha256` that `engine plugins inspect {written}` shows"
    ))
}
