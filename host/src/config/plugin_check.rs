//! The part of validation that needs the plugins themselves: each plugin loads (its pin
//! matches, its WIT version fits), and each service's configuration for it passes the plugin's
//! own JSON schema and its `validate`. Problems point into pipeline.toml like the others.

use super::tree::Node;
use super::{ConfigError, Diagnostic, Pipeline, PluginRole, PluginUse, Service, Severity};
use crate::port::ConfigProblem;
use crate::runtime::{LoadedPlugin, PluginKind, Runtime};
use std::collections::BTreeMap;

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
    let mut check = PluginCheck {
        plugins: BTreeMap::new(),
        diagnostics: Vec::new(),
    };
    for (name, decl) in &pipeline.plugins {
        match runtime.load(name, &decl.source, &decl.grants).await {
            Ok(plugin) => {
                check.plugins.insert(name.clone(), plugin);
            }
            Err(e) => check
                .diagnostics
                .push(Diagnostic::new(e.to_string(), pipeline.plugin_span(name))),
        }
    }
    let mut schemas = Schemas::default();
    for service in &pipeline.services {
        for used in service.plugin_uses() {
            let Some(plugin) = check.plugins.get(used.plugin) else {
                continue;
            };
            let found = check_use(pipeline, service, used, plugin, &mut schemas).await;
            check.diagnostics.extend(found);
        }
    }
    check.diagnostics.sort_by_key(|d| d.span.start);
    check
}

/// Each plugin's configuration schema, compiled once; `None` when it is not a valid one.
type Schemas = BTreeMap<String, Option<(serde_json::Value, jsonschema::Validator)>>;

/// Checks one configuration a service gives a plugin: the plugin is of the kind the role
/// needs, the configuration passes the plugin's schema, then the plugin's own `validate`.
async fn check_use(
    pipeline: &Pipeline,
    service: &Service,
    used: PluginUse<'_>,
    plugin: &LoadedPlugin,
    schemas: &mut Schemas,
) -> Vec<Diagnostic> {
    let node = config_node(pipeline, &service.name, used.role);
    let at = node.as_ref().map_or(0..0, |n| n.span.clone());
    let what = match used.role {
        PluginRole::Check(i) => format!(
            "the config of check {} of service `{}`",
            i + 1,
            service.name
        ),
        PluginRole::Provider => format!("`provider_config` of service `{}`", service.name),
        PluginRole::Strategy => format!("`strategy_config` of service `{}`", service.name),
    };
    let expected = match used.role {
        PluginRole::Provider => PluginKind::Provider,
        PluginRole::Strategy => PluginKind::Strategy,
        PluginRole::Check(_) => PluginKind::Health,
    };
    if plugin.kind() != expected {
        let message = format!(
            "plugin `{}` is a {} plugin, but service `{}` uses it as a {expected}",
            used.plugin,
            plugin.kind(),
            service.name
        );
        return vec![Diagnostic::new(message, at)];
    }
    let schema = schemas.entry(used.plugin.to_string()).or_insert_with(|| {
        let schema: serde_json::Value = serde_json::from_str(&plugin.info().config_schema).ok()?;
        let validator = jsonschema::validator_for(&schema).ok()?;
        Some((schema, validator))
    });
    let Some((schema, validator)) = schema else {
        let message = format!(
            "plugin `{}` declares a configuration schema that is not a valid JSON Schema",
            used.plugin
        );
        return vec![Diagnostic::new(message, at)];
    };
    let refused: Vec<Diagnostic> = validator
        .iter_errors(used.config)
        .flat_map(|error| schema_diagnostics(&what, used.plugin, &node, schema, &error))
        .collect();
    if !refused.is_empty() {
        return refused; // the plugin's own checks assume a configuration of the right shape
    }
    match plugin.validate_configuration(service, used.role).await {
        Ok(found) => found
            .into_iter()
            .map(|d| plugin_diagnostic(&what, &node, d))
            .collect(),
        Err(e) => vec![Diagnostic::new(e.to_string(), at)],
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
fn plugin_diagnostic(what: &str, node: &Option<Node>, problem: ConfigProblem) -> Diagnostic {
    let message = format!("{what}: {}", problem.message);
    let mut out = match problem.severity {
        Severity::Error => Diagnostic::new(message, span(node, &problem.path)),
        Severity::Warning => Diagnostic::warning(message, span(node, &problem.path)),
    };
    out.help = problem.hint;
    out
}

fn span(node: &Option<Node>, pointer: &str) -> std::ops::Range<usize> {
    node.as_ref().map_or(0..0, |n| n.span_at(pointer))
}

/// The spanned node of a configuration; a missing one (the plugin gets `{}`) has none.
fn config_node(pipeline: &Pipeline, service: &str, role: PluginRole) -> Option<Node> {
    let table = pipeline.origin.services.get(service)?;
    // With no configuration written, point at the plugin's name instead.
    let (field, name) = match role {
        PluginRole::Provider => ("provider_config", "provider"),
        PluginRole::Strategy => ("strategy_config", "strategy"),
        PluginRole::Check(i) => {
            let super::tree::Value::Array(items) = &table.get("checks")?.value else {
                return None;
            };
            let check = items.get(i)?;
            let super::tree::Value::Table(t) = &check.value else {
                return None;
            };
            return t.get("config").cloned().or_else(|| Some(check.clone()));
        }
    };
    table.get(field).or_else(|| table.get(name)).cloned()
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
