//! `engine validate pipeline.toml [--env NAME]`.

use super::CommandError;
use crate::config;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// The pipeline file
    #[arg(default_value = "pipeline.toml")]
    pipeline: PathBuf,
    /// The environment whose variables and overrides apply
    #[arg(long = "env", value_name = "NAME")]
    environment: Option<String>,
    /// Check only the file, without loading plugins to check their configuration
    #[arg(long)]
    skip_plugins: bool,
}

fn report(e: config::ConfigError) -> CommandError {
    eprintln!(
        "{}",
        crate::runtime::secrets::redactor().redact(&e.to_string())
    );
    CommandError::reported(super::exit::USAGE)
}

pub async fn run(cli: &super::Cli, args: &ValidateArgs) -> Result<(), CommandError> {
    let pipeline = config::load(&args.pipeline, args.environment.as_deref()).map_err(report)?;
    if !args.skip_plugins {
        let options = crate::runtime::RuntimeOptions {
            check_only: true,
            ..cli.runtime_options()
        };
        let runtime = crate::runtime::Runtime::new(options)
            .map_err(|e| CommandError::failure(format!("{e:#}")))?;
        config::check_plugins(&pipeline, &runtime)
            .await
            .map_err(report)?;
    }
    let waves = pipeline.waves();
    println!(
        "{}: pipeline `{}`{} is valid: {} service{} in {} wave{}",
        args.pipeline.display(),
        pipeline.name,
        pipeline
            .environment
            .as_deref()
            .map(|e| format!(" (environment `{e}`)"))
            .unwrap_or_default(),
        pipeline.services.len(),
        if pipeline.services.len() == 1 {
            ""
        } else {
            "s"
        },
        waves.len(),
        if waves.len() == 1 { "" } else { "s" },
    );
    for (i, wave) in waves.iter().enumerate() {
        let names: Vec<&str> = wave
            .iter()
            .map(|&s| pipeline.services[s].name.as_str())
            .collect();
        println!("  {}. {}", i + 1, names.join(", "));
    }
    Ok(())
}
