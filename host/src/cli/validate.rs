//! `engine validate [PIPELINE] [--env NAME] [--output json]`.

use super::{CommandError, Format, exit, output};
use crate::config::{self, Diagnostic, Pipeline, Severity};
use crate::runtime::events::PluginEvent;
use crate::runtime::{MemorySink, Runtime, RuntimeOptions};
use serde_json::json;
use std::sync::Arc;

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    pipeline: super::PipelineArgs,
    /// Check only the file, without loading plugins to check their configuration
    #[arg(long)]
    skip_plugins: bool,
    /// `text`: diagnostics as cargo prints them; `json`: one document with every diagnostic
    /// (schema in docs/cli.md)
    #[arg(long, value_enum, default_value = "text")]
    output: Format,
}

/// What validation found: the pipeline if it is usable, and every diagnostic.
struct Found {
    file: String,
    source: String,
    pipeline: Option<Pipeline>,
    diagnostics: Vec<Diagnostic>,
}

pub async fn run(cli: &super::Cli, args: &ValidateArgs) -> Result<(), CommandError> {
    let found = validate(cli, args).await?;
    let valid = found.pipeline.is_some();
    match args.output {
        Format::Json => super::history::print_json(&document(&found)),
        Format::Text => {
            let rendered: String = found
                .diagnostics
                .iter()
                .map(|d| config::diagnostic::render(&found.file, &found.source, d) + "\n")
                .collect();
            output::error_report(&rendered);
            match &found.pipeline {
                Some(pipeline) => print!("{}", summary(&found.file, pipeline)),
                None => output::error(&format!(
                    "{} problem{} in {}",
                    errors(&found),
                    if errors(&found) == 1 { "" } else { "s" },
                    found.file
                )),
            }
        }
    }
    if valid {
        Ok(())
    } else {
        Err(CommandError::reported(exit::USAGE))
    }
}

fn errors(found: &Found) -> usize {
    found
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count()
}

/// The file's checks, then (unless skipped) the plugins' checks of their configuration.
async fn validate(cli: &super::Cli, args: &ValidateArgs) -> Result<Found, CommandError> {
    let path = args.pipeline.path();
    let file = path.display().to_string();
    let pipeline = match config::load_with(path, &args.pipeline.inputs()) {
        Ok(p) => p,
        Err(e) => {
            return Ok(Found {
                file,
                source: e.source,
                pipeline: None,
                diagnostics: e.diagnostics,
            });
        }
    };
    let source = pipeline.origin.source.clone();
    if args.skip_plugins {
        return Ok(Found {
            file,
            source,
            pipeline: Some(pipeline),
            diagnostics: Vec::new(),
        });
    }
    // Notes the runtime makes while loading (a grant the plugin does not declare, a secret this
    // machine cannot read) become warnings in place, instead of log lines.
    let sink = Arc::new(MemorySink::default());
    let options = RuntimeOptions {
        check_only: true,
        sink: sink.clone(),
        ..cli.runtime_options()
    };
    let runtime = Runtime::new(options).map_err(|e| CommandError::failure(format!("{e:#}")))?;
    let checked = config::examine_plugins(&pipeline, &runtime).await;
    let mut diagnostics = checked.diagnostics;
    diagnostics.extend(sink.events().into_iter().filter_map(|event| match event {
        PluginEvent::GrantMismatch { plugin, message } => Some(Diagnostic::warning(
            format!("plugin `{plugin}`: {message}"),
            pipeline.plugin_span(&plugin),
        )),
        _ => None,
    }));
    diagnostics.sort_by_key(|d| (d.span.start, d.severity));
    let usable = !diagnostics.iter().any(|d| d.severity == Severity::Error);
    Ok(Found {
        file,
        source,
        pipeline: usable.then_some(pipeline),
        diagnostics,
    })
}

fn summary(file: &str, pipeline: &Pipeline) -> String {
    let waves = pipeline.waves();
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    let mut out = format!(
        "{file}: pipeline `{}`{} is valid: {} service{} in {} wave{}\n",
        pipeline.name,
        pipeline
            .environment
            .as_deref()
            .map(|e| format!(" (environment `{e}`)"))
            .unwrap_or_default(),
        pipeline.services.len(),
        plural(pipeline.services.len()),
        waves.len(),
        plural(waves.len()),
    );
    for (i, names) in wave_names(pipeline).iter().enumerate() {
        out.push_str(&format!("  {}. {}\n", i + 1, names.join(", ")));
    }
    out
}

fn wave_names(pipeline: &Pipeline) -> Vec<Vec<&str>> {
    pipeline
        .waves()
        .iter()
        .map(|wave| {
            wave.iter()
                .map(|&s| pipeline.services[s].name.as_str())
                .collect()
        })
        .collect()
}

fn document(found: &Found) -> serde_json::Value {
    json!({
        "schema": super::history::OUTPUT_SCHEMA,
        "file": found.file,
        "valid": found.pipeline.is_some(),
        "pipeline": found.pipeline.as_ref().map(|p| p.name.as_str()),
        "environment": found.pipeline.as_ref().and_then(|p| p.environment.as_deref()),
        "waves": found.pipeline.as_ref().map(wave_names),
        "diagnostics": found
            .diagnostics
            .iter()
            .map(|d| d.to_json(&found.file, &found.source))
            .collect::<Vec<_>>(),
    })
}
