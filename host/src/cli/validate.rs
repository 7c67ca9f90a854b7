//! `engine validate [PIPELINE] [--env NAME] [--output json]`.

use super::{CommandError, Format, exit, output};
use crate::config::{self, ConfigError, Diagnostic, Pipeline, Severity};
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

/// What validation found: every diagnostic (against its file), and the pipeline if it is
/// usable.
struct Found {
    report: ConfigError,
    pipeline: Option<Pipeline>,
}

pub async fn run(cli: &super::Cli, args: &ValidateArgs) -> Result<(), CommandError> {
    let found = validate(cli, args).await?;
    let valid = found.pipeline.is_some();
    match args.output {
        Format::Json => output::print_json(&document(&found)),
        Format::Text => {
            output::error_report(&found.report.rendered());
            match &found.pipeline {
                Some(pipeline) => print!("{}", summary(&found.report.file, pipeline)),
                None => output::error(&found.report.tally()),
            }
        }
    }
    if valid {
        Ok(())
    } else {
        Err(CommandError::reported(exit::USAGE))
    }
}

/// The file's checks, then (unless skipped) the plugins' checks of their configuration.
async fn validate(cli: &super::Cli, args: &ValidateArgs) -> Result<Found, CommandError> {
    let pipeline = match config::load_with(args.pipeline.path(), &args.pipeline.inputs()) {
        Ok(p) => p,
        Err(report) => {
            return Ok(Found {
                report,
                pipeline: None,
            });
        }
    };
    if args.skip_plugins {
        return Ok(Found {
            report: pipeline.error(Vec::new()),
            pipeline: Some(pipeline),
        });
    }
    // Notes the runtime makes while loading (a grant the plugin does not declare, a secret this
    // machine cannot read) become warnings in place, instead of log lines.
    let sink = Arc::new(MemorySink::default());
    let options = RuntimeOptions {
        check_only: true,
        // A pull request's check: plugins may look, never touch (as in `engine plan`).
        dry_run: true,
        local_admin_ports: super::local::admin_ports(Some(&pipeline)),
        protected_paths: super::protected_paths(&pipeline),
        sink: sink.clone(),
        ..cli.runtime_options()
    };
    let runtime = Runtime::new(options).map_err(|e| CommandError::failure(format!("{e:#}")))?;
    let checked = crate::runtime::examine_plugins(&pipeline, &runtime).await;
    let mut diagnostics = checked.diagnostics;
    diagnostics.extend(sink.events().into_iter().filter_map(|event| match event {
        PluginEvent::GrantMismatch { plugin, message } => Some(Diagnostic::warning(
            format!("plugin `{plugin}`: {message}"),
            pipeline.plugin_span(&plugin),
        )),
        PluginEvent::SecretUnreadable { plugin, error } => Some(
            Diagnostic::warning(
                format!(
                    "plugin `{plugin}`: {error}; a real run will need it (not an error while only checking)"
                ),
                pipeline.secret_span(&plugin, &error.secret),
            )
            .help(error.hint),
        ),
        _ => None,
    }));
    diagnostics.sort_by_key(|d| (d.span.start, d.severity));
    let usable = !diagnostics.iter().any(|d| d.severity == Severity::Error);
    Ok(Found {
        report: pipeline.error(diagnostics),
        pipeline: usable.then_some(pipeline),
    })
}

fn summary(file: &str, pipeline: &Pipeline) -> String {
    let waves = pipeline.unit_waves();
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    let (services, resources) = (pipeline.services.len(), pipeline.resources.len());
    let resources = match resources {
        0 => String::new(),
        n => format!(" and {n} resource{}", plural(n)),
    };
    let mut out = format!(
        "{file}: pipeline `{}`{} is valid: {services} service{}{resources} in {} wave{}\n",
        pipeline.name,
        pipeline
            .environment
            .as_deref()
            .map(|e| format!(" (environment `{e}`)"))
            .unwrap_or_default(),
        plural(services),
        waves.len(),
        plural(waves.len()),
    );
    for (i, names) in wave_names(pipeline).iter().enumerate() {
        out.push_str(&format!("  {}. {}\n", i + 1, names.join(", ")));
    }
    out
}

/// Each wave's services and resources (`resource NAME`), in order.
fn wave_names(pipeline: &Pipeline) -> Vec<Vec<String>> {
    let units = pipeline.units();
    pipeline
        .unit_waves()
        .iter()
        .map(|wave| {
            wave.iter()
                .map(|&i| match units[i] {
                    crate::config::Unit::Service(s) => s.name.clone(),
                    crate::config::Unit::Resource(r) => format!("resource {}", r.name),
                })
                .collect()
        })
        .collect()
}

fn document(found: &Found) -> serde_json::Value {
    json!({
        "schema": output::OUTPUT_SCHEMA,
        "file": found.report.file,
        "valid": found.pipeline.is_some(),
        "pipeline": found.pipeline.as_ref().map(|p| p.name.as_str()),
        "environment": found.pipeline.as_ref().and_then(|p| p.environment.as_deref()),
        "waves": found.pipeline.as_ref().map(wave_names),
        "diagnostics": found.report.diagnostics_json(),
    })
}
