//! `engine plugins list`, `inspect` and `lock`.

use super::{Cli, CommandError, Format};
use crate::grants::GrantsConfig;
use crate::plugins::{PluginSource, embedded, find_embedded};
use crate::runtime::info::PluginInfo;
use crate::runtime::{LoadedPlugin, MemorySink, Runtime, WIT_PACKAGE};
use clap::Subcommand;
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, Subcommand)]
pub enum PluginsCommand {
    /// List the plugins built into this engine
    List {
        /// `text` for people, `json` for programs (`--format` is the old name)
        #[arg(long = "output", alias = "format", value_enum, default_value = "text")]
        format: Format,
    },
    /// Show what a plugin exports, imports and asks for, and its configuration schema
    Inspect {
        /// A built-in plugin's name, the path of a .wasm component, an oci:// reference or an
        /// https:// URL
        plugin: String,
        /// `text` for people, `json` for programs (`--format` is the old name)
        #[arg(long = "output", alias = "format", value_enum, default_value = "text")]
        format: Format,
    },
    /// Write a new plugin project that builds as it is: Rust, JavaScript or Python
    New(super::new::NewArgs),
    /// Check a plugin of a pipeline against the contract of its kind, rule by rule
    Check(super::plugin_check::CheckArgs),
    /// Record each plugin's code and capabilities in engine.lock beside the pipeline
    Lock(super::lockfile::LockArgs),
    /// Publish a component to an OCI registry as a Wasm artifact
    Push {
        /// The .wasm component
        path: std::path::PathBuf,
        /// Where: oci://REGISTRY/REPOSITORY:TAG
        reference: String,
    },
}

pub async fn run(cli: &Cli, command: &PluginsCommand) -> Result<(), CommandError> {
    match command {
        PluginsCommand::List { format } => list(&inspecting_runtime(cli)?, *format).await,
        PluginsCommand::Inspect { plugin, format } => {
            inspect(&inspecting_runtime(cli)?, plugin, *format).await
        }
        PluginsCommand::Lock(args) => super::lockfile::run(cli, args).await,
        PluginsCommand::New(args) => super::new::run(args),
        PluginsCommand::Check(args) => super::plugin_check::run(cli, args).await,
        PluginsCommand::Push { path, reference } => {
            push(&inspecting_runtime(cli)?, path, reference).await
        }
    }
}

/// A runtime for listing and inspecting, which grant nothing: the load-time notes about
/// ungranted capabilities would only be noise, so they go to a sink nobody reads.
fn inspecting_runtime(cli: &Cli) -> Result<Runtime, CommandError> {
    let options = crate::runtime::RuntimeOptions {
        sink: Arc::new(MemorySink::default()),
        ..cli.runtime_options()
    };
    Runtime::new(options).map_err(|e| CommandError::failure(format!("{e:#}")))
}

async fn list(runtime: &Runtime, format: Format) -> Result<(), CommandError> {
    let mut plugins = Vec::new();
    for builtin in embedded() {
        let source = PluginSource::Embedded(builtin.name.to_string());
        let plugin = runtime
            .load(builtin.name, &source, &GrantsConfig::default())
            .await
            .map_err(CommandError::failure)?;
        plugins.push(plugin);
    }
    match format {
        Format::Json => {
            let rows: Vec<Value> = plugins.iter().map(summary_json).collect();
            super::output::print_json(&Value::Array(rows));
        }
        Format::Text => {
            let mut rows = vec![
                ["NAME", "KIND", "VERSION", "WIT", "SOURCE", "SHA256"]
                    .map(String::from)
                    .to_vec(),
            ];
            for p in &plugins {
                rows.push(vec![
                    p.name().to_string(),
                    p.kind().to_string(),
                    p.info().version.clone(),
                    p.wit_version().to_string(),
                    p.origin().to_string(),
                    p.sha256().to_string(),
                ]);
            }
            print!("{}", table(&rows));
        }
    }
    Ok(())
}

pub(super) use crate::report::table;

/// Loads the component first, so only a plugin this engine can run is published, and
/// describes its exports and imports in the artifact's config.
async fn push(runtime: &Runtime, path: &Path, reference: &str) -> Result<(), CommandError> {
    let Some(target) = reference.strip_prefix("oci://") else {
        return Err(CommandError::usage(format!(
            "`{reference}` is not a registry reference; write oci://REGISTRY/REPOSITORY:TAG"
        )));
    };
    let source = PluginSource::Unpinned(path.to_path_buf());
    let plugin = runtime
        .load("pushed", &source, &GrantsConfig::default())
        .await
        .map_err(CommandError::failure)?;
    let bytes = std::fs::read(path)
        .map_err(|e| CommandError::failure(format!("cannot read {}: {e}", path.display())))?;
    let description = crate::plugins::registry::ComponentDescription {
        exports: vec![export_name(&plugin)],
        imports: plugin.imports().to_vec(),
    };
    let pushed = crate::plugins::registry::push(target, bytes, description)
        .await
        .map_err(CommandError::failure)?;
    println!(
        "pushed {} {} as {reference}",
        plugin.kind(),
        plugin.info().name
    );
    println!("  manifest: {}", pushed.manifest_digest);
    println!("  sha256:   {}", plugin.sha256());
    println!(
        "to use it in a pipeline:\n  [plugins.{}]\n  source = \"{}\"",
        plugin.info().name,
        pushed.pinned
    );
    Ok(())
}

fn source_for(argument: &str) -> Result<PluginSource, CommandError> {
    if find_embedded(argument).is_some() {
        return Ok(PluginSource::Embedded(argument.to_string()));
    }
    if let Some(reference) = argument.strip_prefix("oci://") {
        let source = crate::plugins::registry::RegistrySource::parse(reference)
            .map_err(CommandError::usage)?;
        return Ok(PluginSource::Registry(source));
    }
    if argument.starts_with("https://") {
        return Ok(PluginSource::Url {
            url: argument.to_string(),
            sha256: None,
        });
    }
    let path = Path::new(argument);
    if path.exists() {
        return Ok(PluginSource::Unpinned(path.to_path_buf()));
    }
    let names: Vec<&str> = embedded().iter().map(|p| p.name).collect();
    Err(CommandError::usage(format!(
        "no built-in plugin is named '{argument}' and there is no file at that path\nbuilt-in plugins: {}",
        names.join(", ")
    )))
}

fn export_name(p: &LoadedPlugin) -> String {
    format!("{WIT_PACKAGE}/{}@{}", p.kind(), p.wit_version())
}

fn summary_json(p: &LoadedPlugin) -> Value {
    json!({
        "name": p.name(),
        "kind": p.kind().as_str(),
        "version": p.info().version,
        "wit": p.wit_version().to_string(),
        "source": p.origin(),
        "sha256": p.sha256(),
    })
}

fn capabilities_json(info: &PluginInfo) -> Value {
    let c = &info.capabilities;
    json!({
        "http": c.http,
        "env": c.env,
        "dirs": c.dirs.iter().map(|d| json!({"path": d.path, "writable": d.writable, "purpose": d.purpose})).collect::<Vec<_>>(),
        "secrets": c.secrets,
    })
}

async fn inspect(runtime: &Runtime, argument: &str, format: Format) -> Result<(), CommandError> {
    let source = source_for(argument)?;
    let name = match &source {
        PluginSource::Embedded(n) => n.clone(),
        PluginSource::Registry(_) | PluginSource::Url { .. } => "inspected".to_string(),
        _ => Path::new(argument)
            .file_stem()
            .map(|s| s.to_string_lossy().replace('_', "-"))
            .unwrap_or_else(|| argument.to_string()),
    };
    let plugin = runtime
        .load(&name, &source, &GrantsConfig::default())
        .await
        .map_err(CommandError::failure)?;
    let info = plugin.info();
    let schema: Value = serde_json::from_str(&info.config_schema).unwrap_or(Value::Null);
    match format {
        Format::Json => {
            let mut value = summary_json(&plugin);
            value["description"] = json!(info.description);
            value["exports"] = json!({ export_name(&plugin): plugin.functions() });
            value["imports"] = json!(plugin.imports());
            value["capabilities"] = capabilities_json(info);
            value["features"] = json!(info.features.iter().map(|f| f.name()).collect::<Vec<_>>());
            value["config_schema"] = schema;
            value["resource_kinds"] = info
                .resource_kinds
                .iter()
                .map(|k| {
                    json!({
                        "name": k.name,
                        "description": k.description,
                        "outputs": k.outputs,
                        "spec_schema": serde_json::from_str::<Value>(&k.spec_schema).unwrap_or(Value::Null),
                    })
                })
                .collect::<Vec<_>>()
                .into();
            super::output::print_json(&value);
        }
        Format::Text => print!("{}", inspect_text(&plugin, &source, &schema)),
    }
    Ok(())
}

fn inspect_text(plugin: &LoadedPlugin, source: &PluginSource, schema: &Value) -> String {
    let info = plugin.info();
    let caps = &info.capabilities;
    let list = |items: &[String]| {
        if items.is_empty() {
            "(none)".to_string()
        } else {
            items.join(", ")
        }
    };
    let dirs: Vec<String> = caps
        .dirs
        .iter()
        .map(|d| {
            format!(
                "{} ({}): {}",
                d.path,
                if d.writable {
                    "read-write"
                } else {
                    "read-only"
                },
                d.purpose
            )
        })
        .collect();
    let features: Vec<String> = info.features.iter().map(|f| f.name().to_string()).collect();
    let mut out = String::new();
    let mut line = |key: &str, value: &str| out.push_str(&format!("{key:<13} {value}\n"));
    line("name:", &info.name);
    line("kind:", plugin.kind().as_str());
    line("version:", &info.version);
    line("description:", &info.description);
    line("WIT:", &format!("{WIT_PACKAGE}@{}", plugin.wit_version()));
    line("source:", plugin.origin());
    line("sha256:", plugin.sha256());
    line(
        "exports:",
        &format!("{}: {}", export_name(plugin), plugin.functions().join(", ")),
    );
    line("imports:", &list(plugin.imports()));
    line("features:", &list(&features));
    out.push_str("capabilities:\n");
    out.push_str(&format!("  http:        {}\n", list(&caps.http)));
    out.push_str(&format!("  env:         {}\n", list(&caps.env)));
    out.push_str(&format!("  dirs:        {}\n", list(&dirs)));
    out.push_str(&format!("  secrets:     {}\n", list(&caps.secrets)));
    out.push_str("config schema:\n");
    for l in serde_json::to_string_pretty(schema).expect("JSON").lines() {
        out.push_str(&format!("  {l}\n"));
    }
    for kind in &info.resource_kinds {
        out.push_str(&format!(
            "resource kind {}: {}\n  outputs: {}\n  spec schema:\n",
            kind.name,
            kind.description,
            list(&kind.outputs)
        ));
        let spec: Value = serde_json::from_str(&kind.spec_schema).unwrap_or(Value::Null);
        for l in serde_json::to_string_pretty(&spec).expect("JSON").lines() {
            out.push_str(&format!("    {l}\n"));
        }
    }
    if let PluginSource::Unpinned(path) = source {
        out.push_str(&format!(
            "to use it in a pipeline:\n  [plugins.{}]\n  source = \"{}\"\n  sha256 = \"{}\"\n",
            info.name,
            path.display(),
            plugin.sha256()
        ));
    }
    out
}
