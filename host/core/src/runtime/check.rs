//! The part of validation that needs the plugins themselves: each plugin loads (its pin
//! matches, its WIT version fits), and each service's configuration for it passes the plugin's
//! own JSON schema and its `validate`. Problems point into pipeline.toml like the others.

use super::{LoadError, LoadedPlugin, PluginKind, Runtime};
use crate::config::diagnostic::{nearest, services_phrase};
use crate::config::{ConfigError, Diagnostic, Pipeline, PluginRole, PluginUse, Service, Severity};
use crate::port::ConfigProblem;
use std::collections::BTreeMap;
use std::ops::Range;

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
        Err(pipeline.error(errors))
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
            Err(LoadError::Secret { plugin, error }) => check.diagnostics.push(
                Diagnostic::new(
                    format!("plugin '{plugin}': {error}"),
                    pipeline.secret_span(&plugin, &error.secret),
                )
                .help(error.hint),
            ),
            Err(e) => check
                .diagnostics
                .push(Diagnostic::new(e.to_string(), pipeline.plugin_span(name))),
        }
    }
    let mut schemas = Schemas::default();
    let mut per_service = Vec::new();
    for service in &pipeline.services {
        for used in service.plugin_uses() {
            let Some(plugin) = check.plugins.get(used.plugin) else {
                continue;
            };
            let found = check_use(pipeline, service, used, plugin, &mut schemas).await;
            per_service.extend(found.into_iter().map(|d| (service.name.as_str(), d)));
        }
    }
    check.diagnostics.extend(shared_once(per_service));
    for resource in &pipeline.resources {
        if let Some(plugin) = check.plugins.get(&resource.provider) {
            check
                .diagnostics
                .extend(check_resource(pipeline, resource, plugin));
        }
    }
    check
        .diagnostics
        .extend(check_output_references(pipeline, &check.plugins));
    check
        .diagnostics
        .extend(dir_diagnostics(pipeline, &check.plugins));
    check
        .diagnostics
        .extend(super::lockfile_check::lock_diagnostics(
            pipeline,
            &check.plugins,
        ));
    check.diagnostics.sort_by_key(|d| d.span.start);
    check
}

/// The directories plugins need and the pipeline does not grant as needed.
fn dir_diagnostics(
    pipeline: &Pipeline,
    plugins: &BTreeMap<String, LoadedPlugin>,
) -> Vec<Diagnostic> {
    plugins
        .iter()
        .flat_map(|(name, plugin)| {
            let granted = &pipeline.plugins[name].grants.dirs;
            super::intersection::dir_shortfalls(name, granted, &plugin.info().capabilities)
                .into_iter()
                .map(|message| Diagnostic::new(message, pipeline.plugin_span(name)))
        })
        .collect()
}

/// A resource's provider manages its kind, and its spec passes the kind's schema.
fn check_resource(
    pipeline: &Pipeline,
    resource: &crate::config::Resource,
    plugin: &LoadedPlugin,
) -> Vec<Diagnostic> {
    let name = &resource.name;
    let at = |field: &str, pointer: &str| pipeline.resource_span(name, field, pointer);
    let kinds = &plugin.info().resource_kinds;
    if plugin.kind() != PluginKind::Provider || kinds.is_empty() {
        let message = format!(
            "the provider of resource `{name}` is `{}`, which manages no resources",
            resource.provider
        );
        return vec![Diagnostic::new(message, at("provider", "")).help(
            "a provider that manages resources lists its kinds in `engine plugins inspect NAME`",
        )];
    }
    let Some(kind) = plugin.info().resource_kind(&resource.kind) else {
        let names: Vec<&str> = kinds.iter().map(|k| k.name.as_str()).collect();
        let help = match nearest(&resource.kind, names.iter().copied()) {
            Some(n) => format!("did you mean `{n}`?"),
            None => format!("its kinds: {}", names.join(", ")),
        };
        let message = format!(
            "resource `{name}`: provider `{}` has no kind `{}`",
            resource.provider, resource.kind
        );
        return vec![Diagnostic::new(message, at("kind", "")).help(help)];
    };
    // The kind's schema was checked when the plugin loaded.
    let Ok(schema) = serde_json::from_str::<serde_json::Value>(&kind.spec_schema) else {
        return Vec::new();
    };
    let Ok(validator) = jsonschema::validator_for(&schema) else {
        return Vec::new();
    };
    let see = format!(
        "see the `{}` kind's schema with `engine plugins inspect {}`",
        kind.name, resource.provider
    );
    // References are filled in at run time; until then a stand-in of the right form stands
    // for each.
    let spec = crate::config::references::with_stand_ins(&resource.spec);
    validator
        .iter_errors(&spec)
        .map(|error| {
            let pointer = error.instance_path().as_str().to_string();
            Diagnostic::new(
                format!("`spec` of resource `{name}`: {error}"),
                at("spec", &pointer),
            )
            .help(see.clone())
        })
        .collect()
}

/// Each `${resources.NAME.outputs.KEY}` names an output the resource's kind declares.
fn check_output_references(
    pipeline: &Pipeline,
    plugins: &BTreeMap<String, LoadedPlugin>,
) -> Vec<Diagnostic> {
    use crate::config::references::{self, Reference};
    let mut found = Vec::new();
    let mut written: Vec<(serde_json::Value, Range<usize>)> = Vec::new();
    for service in &pipeline.services {
        let env = serde_json::to_value(&service.env).unwrap_or_default();
        let at = pipeline.config_span(&service.name, PluginRole::Provider, "");
        written.push((env, at.clone()));
        written.push((service.provider_config.clone(), at.clone()));
        for check in &service.checks {
            written.push((check.config.clone(), at.clone()));
        }
    }
    for resource in &pipeline.resources {
        let at = pipeline.resource_span(&resource.name, "spec", "");
        written.push((resource.spec.clone(), at));
    }
    for (value, at) in written {
        for reference in references::in_json(&value) {
            let Reference::ResourceOutput { resource, key } = &reference else {
                continue;
            };
            let Some(r) = pipeline.resource(resource) else {
                continue;
            };
            let kind = plugins
                .get(&r.provider)
                .and_then(|p| p.info().resource_kind(&r.kind));
            let Some(kind) = kind else { continue };
            if !kind.outputs.iter().any(|o| o == key) {
                let outputs = if kind.outputs.is_empty() {
                    "none".to_string()
                } else {
                    kind.outputs.join(", ")
                };
                found.push(
                    Diagnostic::new(
                        format!("{reference}: a `{}` has no output `{key}`", kind.name),
                        at.clone(),
                    )
                    .help(format!("its outputs: {outputs}")),
                );
            }
        }
    }
    found
}

/// One diagnostic per problem: a line in `[defaults]` that is wrong for every service would
/// otherwise be reported once per service, at the same place with the same words.
fn shared_once(found: Vec<(&str, Diagnostic)>) -> Vec<Diagnostic> {
    const NAME: &str = "service `\u{0}`";
    let mut groups: Vec<(Diagnostic, Vec<&str>)> = Vec::new();
    for (service, mut d) in found {
        d.message = d.message.replacen(&format!("service `{service}`"), NAME, 1);
        match groups.iter_mut().find(|(g, _)| *g == d) {
            Some((_, services)) => services.push(service),
            None => groups.push((d, vec![service])),
        }
    }
    groups
        .into_iter()
        .map(|(mut d, services)| {
            d.message = d.message.replacen(NAME, &services_phrase(&services), 1);
            d
        })
        .collect()
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
    let written = Written {
        pipeline,
        service: &service.name,
        role: used.role,
    };
    let at = written.span("");
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
            "plugin `{}` is a {} plugin, not a {expected} (used by service `{}`)",
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
        .flat_map(|error| schema_diagnostics(&what, used.plugin, &written, schema, &error))
        .collect();
    if !refused.is_empty() {
        return refused; // the plugin's own checks assume a configuration of the right shape
    }
    match plugin.validate_configuration(service, used.role).await {
        Ok(found) => found
            .into_iter()
            .map(|d| plugin_diagnostic(&what, &written, d))
            .collect(),
        Err(e) => vec![Diagnostic::new(e.to_string(), at)],
    }
}

/// A schema violation as diagnostics: an unknown key is pointed at its own line with the
/// nearest key the schema knows; anything else at the value it is about.
fn schema_diagnostics(
    what: &str,
    plugin: &str,
    written: &Written<'_>,
    schema: &serde_json::Value,
    error: &jsonschema::ValidationError<'_>,
) -> Vec<Diagnostic> {
    let pointer = error.instance_path().as_str();
    let see_schema = format!("see its schema with `engine plugins inspect {plugin}`");
    let jsonschema::error::ValidationErrorKind::AdditionalProperties { unexpected } = error.kind()
    else {
        return vec![
            Diagnostic::new(format!("{what}: {error}"), written.span(pointer)).help(see_schema),
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
    unexpected
        .iter()
        .map(|key| {
            let key_span = written.key_span(pointer, key);
            let help = match nearest(key, known.iter().copied()) {
                Some(n) => format!("did you mean `{n}`?"),
                None if known.is_empty() => see_schema.clone(),
                None => format!("valid keys here: {}", known.join(", ")),
            };
            Diagnostic::new(format!("{what}: unknown key `{key}`"), key_span).help(help)
        })
        .collect()
}

/// A plugin's own diagnostic, pointed at the configuration it is about.
fn plugin_diagnostic(what: &str, written: &Written<'_>, problem: ConfigProblem) -> Diagnostic {
    let message = format!("{what}: {}", problem.message);
    let mut out = match problem.severity {
        Severity::Error => Diagnostic::new(message, written.span(&problem.path)),
        Severity::Warning => Diagnostic::warning(message, written.span(&problem.path)),
    };
    out.help = problem.hint;
    out
}

/// Where the configuration a service gives one plugin is written.
struct Written<'p> {
    pipeline: &'p Pipeline,
    service: &'p str,
    role: PluginRole,
}

impl Written<'_> {
    /// The value at JSON `pointer` of the configuration.
    fn span(&self, pointer: &str) -> Range<usize> {
        self.pipeline.config_span(self.service, self.role, pointer)
    }

    /// The key `key` of the table at `pointer`, or that table when the key is not written.
    fn key_span(&self, pointer: &str, key: &str) -> Range<usize> {
        let found = self
            .pipeline
            .config_key_span(self.service, self.role, pointer, key);
        found.unwrap_or_else(|| self.span(pointer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_every_service_shares_is_reported_once() {
        let at = |message: &str, span: Range<usize>| Diagnostic::new(message, span).help("fix");
        let found = vec![
            (
                "api",
                at("`provider_config` of service `api`: unknown key `x`", 5..6),
            ),
            (
                "web",
                at("`provider_config` of service `web`: unknown key `x`", 5..6),
            ),
            (
                "job",
                at("`provider_config` of service `job`: unknown key `x`", 5..6),
            ),
            (
                "web",
                at("`provider_config` of service `web`: unknown key `y`", 9..10),
            ),
        ];
        let messages: Vec<String> = shared_once(found).into_iter().map(|d| d.message).collect();
        assert_eq!(
            messages,
            [
                "`provider_config` of services `api`, `web` and `job`: unknown key `x`",
                "`provider_config` of service `web`: unknown key `y`",
            ]
        );
    }
}
