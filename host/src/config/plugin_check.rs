//! The part of validation that needs the plugins themselves: each plugin loads (its pin
//! matches, its WIT version fits), and each service's configuration for it passes the plugin's
//! own JSON schema and its `validate`. Problems point into pipeline.toml like the others.

use super::tree::Node;
use super::{ConfigError, Diagnostic, Pipeline, Severity};
use crate::runtime::bindings::types::{Diagnostic as PluginDiagnostic, Severity as PluginSeverity};
use crate::runtime::{LoadedPlugin, PluginKind, Runtime};
use std::collections::BTreeMap;

/// One configuration a service gives a plugin.
struct Use<'p> {
    service: &'p str,
    plugin: &'p str,
    /// The key in the service's table: `provider_config`, `strategy_config` or `checks`.
    field: &'static str,
    /// For checks, which one.
    check: Option<usize>,
    config: &'p serde_json::Value,
}

/// Loads every plugin the pipeline uses and checks every service's configuration against it.
/// Returns the loaded plugins by name; warnings are logged.
pub async fn check_plugins(
    pipeline: &Pipeline,
    runtime: &Runtime,
) -> Result<BTreeMap<String, LoadedPlugin>, ConfigError> {
    let found = examine_plugins(pipeline, runtime).await;
    let (errors, warnings): (Vec<_>, Vec<_>) = found
        .diagnostics
        .into_iter()
        .partition(|d| d.severity == Severity::Error);
    for w in warnings {
        tracing::warn!("{}", w.message);
    }
    if errors.is_empty() {
        Ok(found.plugins)
    } else {
        Err(pipeline.origin.error(errors))
    }
}

/// What loading a pipeline's plugins found.
pub struct PluginCheck {
    /// The plugins that loaded, by name.
    pub plugins: BTreeMap<String, LoadedPlugin>,
    /// Every problem, warnings included, in the order of the file.
    pub diagnostics: Vec<Diagnostic>,
}

/// Loads every plugin the pipeline uses and checks every service's configuration against it,
/// keeping warnings as diagnostics (`engine validate` shows them in place).
pub async fn examine_plugins(pipeline: &Pipeline, runtime: &Runtime) -> PluginCheck {
    let mut diagnostics = Vec::new();
    let mut loaded = BTreeMap::new();
    for (name, decl) in &pipeline.plugins {
        match runtime.load(name, &decl.source, &decl.grants).await {
            Ok(plugin) => {
                loaded.insert(name.clone(), plugin);
            }
            Err(e) => {
                diagnostics.push(Diagnostic::new(e.to_string(), pipeline.plugin_span(name)));
            }
        }
    }

    let mut uses = Vec::new();
    for s in &pipeline.services {
        uses.push(Use {
            service: &s.name,
            plugin: &s.provider,
            field: "provider_config",
            check: None,
            config: &s.provider_config,
        });
        uses.push(Use {
            service: &s.name,
            plugin: &s.strategy,
            field: "strategy_config",
            check: None,
            config: &s.strategy_config,
        });
        for (i, c) in s.checks.iter().enumerate() {
            uses.push(Use {
                service: &s.name,
                plugin: &c.plugin,
                field: "checks",
                check: Some(i),
                config: &c.config,
            });
        }
    }
    let mut schemas = BTreeMap::new();
    for u in &uses {
        let Some(plugin) = loaded.get(u.plugin) else {
            continue;
        };
        let node = config_node(pipeline, u);
        let what = match u.check {
            Some(i) => format!("the config of check {} of service `{}`", i + 1, u.service),
            None => format!("`{}` of service `{}`", u.field, u.service),
        };
        let expected = match u.field {
            "provider_config" => PluginKind::Provider,
            "strategy_config" => PluginKind::Strategy,
            _ => PluginKind::Health,
        };
        if plugin.kind() != expected {
            diagnostics.push(Diagnostic::new(
                format!(
                    "plugin `{}` is a {} plugin, but service `{}` uses it as a {expected}",
                    u.plugin,
                    plugin.kind(),
                    u.service
                ),
                node.as_ref().map_or(0..0, |n| n.span.clone()),
            ));
            continue;
        }
        let validator = schemas.entry(u.plugin.to_string()).or_insert_with(|| {
            let schema: serde_json::Value =
                serde_json::from_str(&plugin.info().config_schema).ok()?;
            let validator = jsonschema::validator_for(&schema).ok()?;
            Some((schema, validator))
        });
        let mut found_schema_error = false;
        if let Some((schema, validator)) = validator {
            for error in validator.iter_errors(u.config) {
                found_schema_error = true;
                diagnostics.extend(schema_diagnostics(&what, u.plugin, &node, schema, &error));
            }
        } else {
            diagnostics.push(Diagnostic::new(
                format!(
                    "plugin `{}` declares a configuration schema that is not a valid JSON Schema",
                    u.plugin
                ),
                node.as_ref().map_or(0..0, |n| n.span.clone()),
            ));
        }
        if found_schema_error {
            continue; // the plugin's own checks assume a configuration of the right shape
        }
        let service = pipeline
            .services
            .iter()
            .find(|s| s.name == u.service)
            .expect("service");
        let config_text = u.config.to_string();
        let result = match expected {
            PluginKind::Provider => match plugin.provider() {
                Ok(p) => {
                    p.validate(&crate::runtime::port::service_spec(service))
                        .await
                }
                Err(e) => Err(e),
            },
            PluginKind::Strategy => match plugin.strategy() {
                Ok(p) => p.validate(&config_text).await,
                Err(e) => Err(e),
            },
            PluginKind::Health => match plugin.health() {
                Ok(p) => p.validate(&config_text).await,
                Err(e) => Err(e),
            },
        };
        match result {
            Ok(found) => diagnostics.extend(
                found
                    .into_iter()
                    .map(|d| plugin_diagnostic(&what, &node, d)),
            ),
            Err(e) => diagnostics.push(Diagnostic::new(
                e.to_string(),
                node.as_ref().map_or(0..0, |n| n.span.clone()),
            )),
        }
    }
    diagnostics.sort_by_key(|d| d.span.start);
    PluginCheck {
        plugins: loaded,
        diagnostics,
    }
}

/// A schema violation as diagnostics: an unknown key is pointed at its own line with the
/// nearest key the schema knows; anything else at the value it is about.
fn schema_diagnostics(
    what: &str,
    plugin: &str,
    node: &Option<Node>,
    schema: &serde_json::Value,
    error: &jsonschema::ValidationError<'_>,
) -> Vec<Diagnostic> {
    let pointer = error.instance_path().as_str();
    let see_schema = format!("see its schema with `engine plugins inspect {plugin}`");
    let jsonschema::error::ValidationErrorKind::AdditionalProperties { unexpected } = error.kind()
    else {
        return vec![
            Diagnostic::new(format!("{what}: {error}"), span(node, pointer)).help(see_schema),
        ];
    };
    // The schema object whose `additionalProperties` refused them lists the keys it knows.
    let parent = error
        .schema_path()
        .as_str()
        .rsplit_once('/')
        .map_or("", |(p, _)| p);
    let known: Vec<&str> = schema
        .pointer(parent)
        .and_then(|s| s.get("properties"))
        .and_then(|p| p.as_object())
        .map(|p| p.keys().map(String::as_str).collect())
        .unwrap_or_default();
    let table = node
        .as_ref()
        .map(|n| n.at(pointer))
        .and_then(|n| match &n.value {
            super::tree::Value::Table(t) => Some(t),
            _ => None,
        });
    unexpected
        .iter()
        .map(|key| {
            let key_span = table
                .and_then(|t| t.key(key))
                .map(|k| k.span.clone())
                .unwrap_or_else(|| span(node, pointer));
            let help = match super::diagnostic::nearest(key, known.iter().copied()) {
                Some(n) => format!("did you mean `{n}`?"),
                None if known.is_empty() => see_schema.clone(),
                None => format!("valid keys here: {}", known.join(", ")),
            };
            Diagnostic::new(format!("{what}: unknown key `{key}`"), key_span).help(help)
        })
        .collect()
}

/// A plugin's own diagnostic, pointed at the configuration it is about.
fn plugin_diagnostic(what: &str, node: &Option<Node>, d: PluginDiagnostic) -> Diagnostic {
    let message = format!("{what}: {}", d.message);
    let mut out = match d.severity {
        PluginSeverity::Error => Diagnostic::new(message, span(node, &d.path)),
        PluginSeverity::Warning => Diagnostic::warning(message, span(node, &d.path)),
    };
    out.help = d.hint;
    out
}

fn span(node: &Option<Node>, pointer: &str) -> std::ops::Range<usize> {
    node.as_ref().map_or(0..0, |n| n.span_at(pointer))
}

/// The spanned node of a configuration; a missing one (the plugin gets `{}`) has none.
fn config_node(pipeline: &Pipeline, u: &Use<'_>) -> Option<Node> {
    let table = pipeline.origin.services.get(u.service)?;
    match u.check {
        // With no configuration written, point at the plugin's name instead.
        None => table
            .get(u.field)
            .or_else(|| {
                table.get(if u.field == "provider_config" {
                    "provider"
                } else {
                    "strategy"
                })
            })
            .cloned(),
        Some(i) => match &table.get("checks")?.value {
            super::tree::Value::Array(items) => {
                let check = items.get(i)?;
                match &check.value {
                    super::tree::Value::Table(t) => {
                        t.get("config").cloned().or_else(|| Some(check.clone()))
                    }
                    _ => None,
                }
            }
            _ => None,
        },
    }
}

impl Pipeline {
    /// Where a plugin is declared, or first used when it is a built-in nobody declared.
    pub fn plugin_span(&self, plugin: &str) -> std::ops::Range<usize> {
        self.origin
            .plugin_keys
            .get(plugin)
            .cloned()
            .or_else(|| first_use_span(self, plugin))
            .unwrap_or(0..0)
    }
}

fn first_use_span(pipeline: &Pipeline, plugin: &str) -> Option<std::ops::Range<usize>> {
    pipeline.services.iter().find_map(|s| {
        let table = pipeline.origin.services.get(&s.name)?;
        ["provider", "strategy"]
            .iter()
            .filter_map(|k| table.get(k))
            .find(|n| matches!(&n.value, super::tree::Value::String(v) if v == plugin))
            .map(|n| n.span.clone())
    })
}
