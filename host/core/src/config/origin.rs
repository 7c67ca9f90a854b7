//! Where the parts of a pipeline are written in its file, for diagnostics found after parsing
//! (a plugin's schema, its own `validate`).

use super::tree::{self, Node};
use super::{ConfigError, Diagnostic, Pipeline, PluginRole};
use std::ops::Range;

impl Pipeline {
    /// The pipeline file's path, as it was given.
    pub fn file(&self) -> &str {
        &self.origin.file
    }

    /// The error of this pipeline's file, with `diagnostics` pointing into it.
    pub fn error(&self, diagnostics: Vec<Diagnostic>) -> ConfigError {
        self.origin.error(diagnostics)
    }

    /// Where the value at JSON `pointer` (`/steps/2`; empty for all of it) of the configuration
    /// `service` gives the plugin of `role` is written, or the deepest part of it that is; where
    /// the plugin is named when the configuration is not written at all.
    pub fn config_span(&self, service: &str, role: PluginRole, pointer: &str) -> Range<usize> {
        config_node(self, service, role).map_or(0..0, |n| n.span_at(pointer))
    }

    /// Where `key` of the table at `pointer` of that configuration is written.
    pub fn config_key_span(
        &self,
        service: &str,
        role: PluginRole,
        pointer: &str,
        key: &str,
    ) -> Option<Range<usize>> {
        let node = config_node(self, service, role)?;
        let tree::Value::Table(table) = &node.at(pointer).value else {
            return None;
        };
        table.key(key).map(|k| k.span.clone())
    }

    /// Where the value at JSON `pointer` of field `field` (`spec`, `kind`, `provider`) of
    /// resource `resource` is written, or the deepest part of it that is.
    pub fn resource_span(&self, resource: &str, field: &str, pointer: &str) -> Range<usize> {
        let Some(table) = self.origin.resources.get(resource) else {
            return 0..0;
        };
        match table.get(field).or_else(|| table.get("kind")) {
            Some(node) => node.span_at(pointer),
            None => 0..0,
        }
    }

    /// Where secret `secret` of plugin `plugin` is granted, or where the plugin is.
    pub fn secret_span(&self, plugin: &str, secret: &str) -> Range<usize> {
        let at = (plugin.to_string(), secret.to_string());
        match self.origin.secret_keys.get(&at) {
            Some(span) => span.clone(),
            None => self.plugin_span(plugin),
        }
    }

    /// Where a plugin is declared, or first used when it is a built-in nobody declared.
    pub fn plugin_span(&self, plugin: &str) -> Range<usize> {
        self.origin
            .plugin_keys
            .get(plugin)
            .cloned()
            .or_else(|| first_use_span(self, plugin))
            .unwrap_or(0..0)
    }
}

/// The spanned node of a configuration; a missing one (the plugin gets `{}`) has none.
fn config_node<'p>(pipeline: &'p Pipeline, service: &str, role: PluginRole) -> Option<&'p Node> {
    let table = pipeline.origin.services.get(service)?;
    // With no configuration written, point at the plugin's name instead.
    let (field, name) = match role {
        PluginRole::Provider => ("provider_config", "provider"),
        PluginRole::Strategy => ("strategy_config", "strategy"),
        PluginRole::Check(i) => {
            let tree::Value::Array(items) = &table.get("checks")?.value else {
                return None;
            };
            let check = items.get(i)?;
            let tree::Value::Table(t) = &check.value else {
                return None;
            };
            return t.get("config").or(Some(check));
        }
    };
    table.get(field).or_else(|| table.get(name))
}

fn first_use_span(pipeline: &Pipeline, plugin: &str) -> Option<Range<usize>> {
    pipeline.services.iter().find_map(|s| {
        let table = pipeline.origin.services.get(&s.name)?;
        ["provider", "strategy"]
            .iter()
            .filter_map(|k| table.get(k))
            .find(|n| matches!(&n.value, tree::Value::String(v) if v == plugin))
            .map(|n| n.span.clone())
    })
}
