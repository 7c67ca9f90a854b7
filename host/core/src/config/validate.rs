//! The checks behind [`super::load`]. A `Checker` walks the spanned tree, collects every
//! problem instead of stopping at the first, and builds the model from what is valid.

use super::diagnostic::{Diagnostic, nearest, services_phrase};
use super::resources::{ResourceLayers, check_graph};
use super::tree::{self, Key, Node, Table, Value};
use super::variables::{Given, Raw, Variables};
use super::{
    Artifact, Check, DEFAULT_STRATEGY, Ingress, Inputs, Origin, Pipeline, PluginDecl, PluginRole,
    PluginUse, Resource, Service,
};
use crate::grants::GrantsConfig;
use crate::plugins::{PluginSource, embedded, find_embedded};
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

const TOP_KEYS: &[&str] = &[
    "name",
    "variables",
    "plugins",
    "environments",
    "defaults",
    "services",
    "resources",
];
const ENVIRONMENT_KEYS: &[&str] = &["variables", "services", "resources", "plugins"];
const PLUGIN_KEYS: &[&str] = &[
    "source",
    "sha256",
    "allow_http",
    "allow_tcp",
    "allow_env",
    "dirs",
    "secrets",
    "timeout",
    "memory",
    "max_response",
    "disk",
    "proxy",
];
const SERVICE_KEYS: &[&str] = &[
    "provider",
    "provider_config",
    "image",
    "artifact",
    "args",
    "env",
    "secrets",
    "cpu",
    "memory",
    "min_instances",
    "max_instances",
    "concurrency",
    "port",
    "ingress",
    "labels",
    "depends_on",
    "strategy",
    "strategy_config",
    "checks",
    "hooks",
];
const CHECK_KEYS: &[&str] = &["name", "plugin", "config", "delay"];
const HOOK_KEYS: &[&str] = &["pre", "post"];

#[derive(Default)]
pub(super) struct Checker {
    diagnostics: Vec<Diagnostic>,
    variables: Variables,
}

pub(super) fn as_table(node: &Node) -> Option<&Table> {
    match &node.value {
        Value::Table(t) => Some(t),
        _ => None,
    }
}

impl Checker {
    pub(super) fn error(
        &mut self,
        message: impl Into<String>,
        span: Range<usize>,
        help: Option<String>,
    ) {
        let mut d = Diagnostic::new(message, span);
        d.help = help;
        self.diagnostics.push(d);
    }

    pub(super) fn wrong_type(&mut self, node: &Node, what: &str, expected: &str) {
        self.error(
            format!("{what} must be {expected}, not {}", node.value.type_name()),
            node.span.clone(),
            None,
        );
    }

    pub(super) fn unknown_keys(&mut self, table: &Table, allowed: &[&str], context: &str) {
        for (key, _) in &table.entries {
            if !allowed.contains(&key.name.as_str()) {
                let help = match nearest(&key.name, allowed.iter().copied()) {
                    Some(n) => format!("did you mean `{n}`?"),
                    None => format!("valid keys here: {}", allowed.join(", ")),
                };
                self.error(
                    format!("unknown key `{}` in {context}", key.name),
                    key.span.clone(),
                    Some(help),
                );
            }
        }
    }

    pub(super) fn table<'n>(&mut self, node: &'n Node, what: &str) -> Option<&'n Table> {
        let t = as_table(node);
        if t.is_none() {
            self.wrong_type(node, what, "a table");
        }
        t
    }

    pub(super) fn string(&mut self, node: &Node, what: &str) -> Option<String> {
        match &node.value {
            Value::String(s) => Some(s.clone()),
            _ => {
                self.wrong_type(node, what, "a string");
                None
            }
        }
    }

    pub(super) fn strings(&mut self, node: &Node, what: &str) -> Option<Vec<String>> {
        let Value::Array(items) = &node.value else {
            self.wrong_type(node, what, "an array of strings");
            return None;
        };
        items
            .iter()
            .map(|n| self.string(n, &format!("each entry of {what}")))
            .collect()
    }

    pub(super) fn string_map(
        &mut self,
        node: &Node,
        what: &str,
    ) -> Option<BTreeMap<String, String>> {
        let t = self.table(node, what)?;
        t.entries
            .iter()
            .map(|(k, v)| {
                Some((
                    k.name.clone(),
                    self.string(v, &format!("{what}.{}", k.name))?,
                ))
            })
            .collect()
    }

    pub(super) fn count(
        &mut self,
        node: &Node,
        what: &str,
        range: std::ops::RangeInclusive<i64>,
    ) -> Option<u32> {
        match node.value {
            Value::Integer(i) if range.contains(&i) => Some(i as u32),
            Value::Integer(i) => {
                self.error(
                    format!("{what} is {i}, outside {}..={}", range.start(), range.end()),
                    node.span.clone(),
                    None,
                );
                None
            }
            _ => {
                self.wrong_type(node, what, "an integer");
                None
            }
        }
    }

    /// Replaces `${name}` in every string of the tree; `$${` writes a literal `${`. Walks
    /// with a stack of its own, so no nesting depth can overflow the engine's.
    pub(super) fn interpolate(&mut self, node: &mut Node) {
        let mut pending = vec![node];
        while let Some(node) = pending.pop() {
            match &mut node.value {
                Value::String(s) => {
                    match self.variables.expand(s, node.span.clone(), "this value") {
                        Ok(Cow::Owned(expanded)) => *s = expanded,
                        Ok(Cow::Borrowed(_)) => {}
                        Err(problem) => self.diagnostics.extend(problem),
                    }
                }
                Value::Array(items) => pending.extend(items.iter_mut()),
                Value::Table(t) => pending.extend(t.entries.iter_mut().map(|(_, n)| n)),
                _ => {}
            }
        }
    }
}

/// Validates the whole file, in phases: the top level, the environment and variables, the
/// plugins, each service (its layers merged), and what the services refer to.
pub fn pipeline(source: &str, base: &Path, inputs: &Inputs) -> Result<Pipeline, Vec<Diagnostic>> {
    let environment = inputs.environment.as_deref();
    let root = match tree::parse(source) {
        Ok(node) => as_table(&node).cloned().unwrap_or_default(),
        Err((message, span)) => {
            return Err(vec![Diagnostic::new(
                format!("invalid TOML: {message}"),
                span,
            )]);
        }
    };
    let mut c = Checker::default();
    c.unknown_keys(&root, TOP_KEYS, "the top level");
    let name = pipeline_name(&mut c, &root);
    let chosen = chosen_environment(&mut c, &root, environment);
    let env_vars = chosen.as_ref().and_then(|t| t.get("variables")).cloned();
    let given = variables(&mut c, &root, env_vars.as_ref(), inputs);
    let (resolved, problems) = Variables::resolve(given);
    c.variables = resolved;
    c.diagnostics.extend(problems);
    let mut declared = declared_plugins(&mut c, &root, chosen.as_ref(), base);
    let secret_keys = std::mem::take(&mut declared.secret_keys);
    let Some(layers) = Layers::read(&mut c, &root, chosen.as_ref()) else {
        return Err(c.diagnostics);
    };
    let mut services = layers.services(&mut c, base);
    let mut resources = ResourceLayers {
        root: &root,
        defaults: &layers.defaults,
        environment: environment.zip(chosen.as_ref()),
    }
    .read(&mut c);
    let mut plugins = PluginUses::new(declared, &layers);
    for (service, table) in &services {
        plugins.check(&mut c, service, table);
    }
    for (resource, table) in &resources {
        plugins.check_resource(&mut c, resource, table);
    }
    check_graph(&mut c, &mut services, &mut resources, &|n| {
        layers.key_span(n)
    });
    // A plugin no service or resource of this environment uses is not loaded: a developer
    // running the local environment needs no Google credentials for the Cloud Run provider.
    let used: BTreeSet<&str> = services
        .iter()
        .flat_map(|(s, _)| s.plugin_uses().map(|u| u.plugin))
        .chain(resources.iter().map(|(r, _)| r.provider.as_str()))
        .collect();
    plugins
        .plugins
        .retain(|name, _| used.contains(name.as_str()));
    if !c.diagnostics.is_empty() {
        c.diagnostics.sort_by_key(|d| d.span.start);
        return Err(c.diagnostics);
    }
    let origin = Origin {
        services: services
            .iter()
            .map(|(s, t)| (s.name.clone(), t.clone()))
            .collect(),
        resources: resources
            .iter()
            .map(|(r, t)| (r.name.clone(), t.clone()))
            .collect(),
        plugin_keys: plugins.declared_keys,
        secret_keys,
        ..Origin::default()
    };
    Ok(Pipeline {
        name: name.unwrap_or_default(),
        environment: environment.map(str::to_string),
        plugins: plugins.plugins,
        services: services.into_iter().map(|(s, _)| s).collect(),
        resources: resources.into_iter().map(|(r, _)| r).collect(),
        lock: super::PipelineLock::default(),
        origin,
    })
}

fn pipeline_name(c: &mut Checker, root: &Table) -> Option<String> {
    match root.get("name") {
        Some(n) => c.string(n, "`name`"),
        None => {
            c.error(
                "the pipeline has no `name`",
                0..0,
                Some("add `name = \"my-system\"` at the top of the file".into()),
            );
            None
        }
    }
}

/// Checks every `[environments.NAME]` and returns the one `--env` chose.
fn chosen_environment(c: &mut Checker, root: &Table, environment: Option<&str>) -> Option<Table> {
    let environments = root
        .get("environments")
        .and_then(|n| c.table(n, "[environments]"))
        .cloned()
        .unwrap_or_default();
    for (key, env) in &environments.entries {
        let context = format!("[environments.{}]", key.name);
        if let Some(t) = c.table(env, &context).cloned() {
            c.unknown_keys(&t, ENVIRONMENT_KEYS, &context);
        }
    }
    let wanted = environment?;
    if let Some(t) = environments.get(wanted).and_then(as_table) {
        return Some(t.clone());
    }
    let names: Vec<&str> = environments
        .entries
        .iter()
        .map(|(k, _)| k.name.as_str())
        .collect();
    let span = root.key("environments").map_or(0..0, |k| k.span.clone());
    let help = match nearest(wanted, names.iter().copied()) {
        Some(n) => format!("did you mean `{n}`?"),
        None if names.is_empty() => "the file defines no [environments.NAME]".into(),
        None => format!("environments: {}", names.join(", ")),
    };
    c.error(
        format!("there is no environment `{wanted}`"),
        span,
        Some(help),
    );
    None
}

/// The `[plugins.NAME]` tables, by name, and where each name is written (a table with
/// problems of its own is reported and left out of the first).
struct DeclaredPlugins {
    plugins: BTreeMap<String, PluginDecl>,
    keys: BTreeMap<String, Range<usize>>,
    /// Where each granted secret is written: (plugin, secret) → its key in `secrets`.
    secret_keys: BTreeMap<(String, String), Range<usize>>,
}

/// The chosen environment's `[environments.ENV.plugins.NAME]` tables are merged over the
/// pipeline's, key by key, so an environment can grant a check what its own platform needs
/// (`http://localhost:*` on the local platform) without granting it everywhere.
fn declared_plugins(
    c: &mut Checker,
    root: &Table,
    chosen: Option<&Table>,
    base: &Path,
) -> DeclaredPlugins {
    let mut declared = DeclaredPlugins {
        plugins: BTreeMap::new(),
        keys: BTreeMap::new(),
        secret_keys: BTreeMap::new(),
    };
    let mut table = Table::default();
    for (node, what) in [
        (root.get("plugins"), "[plugins]"),
        (
            chosen.and_then(|t| t.get("plugins")),
            "the environment's [plugins]",
        ),
    ] {
        let Some(node) = node else { continue };
        let mut node = node.clone();
        c.interpolate(&mut node);
        if let Some(layer) = c.table(&node, what) {
            table = table.merged(layer);
        }
    }
    for (key, decl) in &table.entries {
        declared.keys.insert(key.name.clone(), key.span.clone());
        let secrets = as_table(decl)
            .and_then(|t| t.get("secrets"))
            .and_then(as_table);
        for (secret, _) in secrets.map(|t| &t.entries[..]).unwrap_or_default() {
            let at = (key.name.clone(), secret.name.clone());
            declared.secret_keys.insert(at, secret.span.clone());
        }
        if let Some(d) = plugin(c, key, decl, base) {
            declared.plugins.insert(key.name.clone(), d);
        }
    }
    declared
}

/// A service's settings come in layers: `[defaults]`, its own `[services.NAME]`, and the
/// chosen environment's override of it.
struct Layers {
    defaults: Table,
    overrides: Table,
    services: Table,
}

impl Layers {
    /// `None` when there are no services at all (nothing else is worth checking then).
    fn read(c: &mut Checker, root: &Table, chosen: Option<&Table>) -> Option<Layers> {
        let defaults = root
            .get("defaults")
            .and_then(|n| c.table(n, "[defaults]"))
            .cloned()
            .unwrap_or_default();
        c.unknown_keys(&defaults, SERVICE_KEYS, "[defaults]");
        let overrides = chosen
            .and_then(|t| t.get("services"))
            .and_then(|n| c.table(n, "environment service overrides"))
            .cloned()
            .unwrap_or_default();
        let Some(services_node) = root.get("services") else {
            c.error(
                "the pipeline has no services",
                0..0,
                Some("add a [services.NAME] table for each service".into()),
            );
            return None;
        };
        let services = c
            .table(services_node, "[services]")
            .cloned()
            .unwrap_or_default();
        let layers = Layers {
            defaults,
            overrides,
            services,
        };
        layers.check_overrides(c);
        Some(layers)
    }

    /// An environment may only override services the pipeline defines.
    fn check_overrides(&self, c: &mut Checker) {
        for (key, _) in &self.overrides.entries {
            if self.services.get(&key.name).is_some() {
                continue;
            }
            let names = self.services.entries.iter().map(|(k, _)| k.name.as_str());
            c.error(
                format!(
                    "the environment overrides service `{}`, which the pipeline does not define",
                    key.name
                ),
                key.span.clone(),
                nearest(&key.name, names).map(|n| format!("did you mean `{n}`?")),
            );
        }
    }

    /// Every valid service, with the merged table it was built from.
    fn services(&self, c: &mut Checker, base: &Path) -> Vec<(Service, Table)> {
        let mut services = Vec::new();
        let mut without_provider = Vec::new();
        for (key, node) in &self.services.entries {
            let context = format!("[services.{}]", key.name);
            let Some(own) = c.table(node, &context).cloned() else {
                continue;
            };
            c.unknown_keys(&own, SERVICE_KEYS, &context);
            let over = self
                .overrides
                .get(&key.name)
                .and_then(as_table)
                .cloned()
                .unwrap_or_default();
            let whose = format!("the environment's override of {context}");
            c.unknown_keys(&over, SERVICE_KEYS, &whose);
            let mut merged = Node {
                span: node.span.clone(),
                value: Value::Table(layered(&layered(&self.defaults, &own), &over)),
            };
            c.interpolate(&mut merged);
            let table = as_table(&merged).cloned().unwrap_or_default();
            if table.get("provider").is_none() {
                without_provider.push(key);
            }
            if let Some(s) = service(c, key, &table, base) {
                services.push((s, table));
            }
        }
        no_provider(c, &without_provider);
        services
    }

    /// Where service `name`'s key is written.
    fn key_span(&self, name: &str) -> Range<usize> {
        self.services.key(name).map_or(0..0, |k| k.span.clone())
    }
}

/// `over` merged on top of `base`, key by key, except where a key of `over` makes one of
/// `base`'s meaningless: an `artifact` replaces an `image` (and back), and a different
/// `provider` or `strategy` drops the configuration written for the other plugin. So an
/// environment can run a Cloud Run service as a local process:
/// `provider = "local"`, `artifact = "./api"`, without the Cloud Run settings following.
pub(super) fn layered(base: &Table, over: &Table) -> Table {
    let changes = |key: &str| {
        over.get(key)
            .is_some_and(|o| base.get(key).is_some_and(|b| b.value != o.value))
    };
    let mut dropped: Vec<&str> = Vec::new();
    if over.get("image").is_some() || over.get("artifact").is_some() {
        dropped.extend(["image", "artifact"]);
    }
    if changes("provider") {
        dropped.push("provider_config");
    }
    if changes("strategy") {
        dropped.push("strategy_config");
    }
    let mut out = base.clone();
    out.entries
        .retain(|(k, _)| !dropped.contains(&k.name.as_str()));
    out.merged(over)
}

/// Checks that every plugin a service names exists and is of the kind its role needs, and
/// adds the built-in ones used to the pipeline's plugins.
struct PluginUses {
    plugins: BTreeMap<String, PluginDecl>,
    declared_keys: BTreeMap<String, Range<usize>>,
    /// Where [defaults]' values are (a table's own span is only its header).
    defaults_starts: BTreeSet<usize>,
    /// A plugin named in [defaults] is every service's: a problem with it is one problem,
    /// reported once, at its line in [defaults].
    reported_defaults: BTreeSet<(usize, String)>,
    service_keys: BTreeMap<String, Range<usize>>,
}

impl PluginUses {
    fn new(declared: DeclaredPlugins, layers: &Layers) -> Self {
        PluginUses {
            plugins: declared.plugins,
            declared_keys: declared.keys,
            defaults_starts: value_starts(&layers.defaults),
            reported_defaults: BTreeSet::new(),
            service_keys: layers
                .services
                .entries
                .iter()
                .map(|(k, _)| (k.name.clone(), layers.key_span(&k.name)))
                .collect(),
        }
    }

    fn check(&mut self, c: &mut Checker, service: &Service, table: &Table) {
        let check_nodes = match table.get("checks").map(|n| &n.value) {
            Some(Value::Array(items)) => &items[..],
            _ => &[],
        };
        for used in service.plugin_uses() {
            // Where the plugin's name is written; the service's key when it is inherited.
            let span = match used.role {
                PluginRole::Provider => table.get("provider").map(|n| n.span.clone()),
                PluginRole::Strategy => table.get("strategy").map(|n| n.span.clone()),
                PluginRole::Check(i) => check_nodes.get(i).map(|n| n.span.clone()),
            };
            let span = span.unwrap_or_else(|| {
                let key = self.service_keys.get(&service.name);
                key.cloned().unwrap_or(0..0)
            });
            self.check_use(c, &format!("service `{}`", service.name), used, span);
        }
    }

    /// A resource's provider exists and is a provider (whether it manages the resource's kind
    /// is known when it loads).
    fn check_resource(&mut self, c: &mut Checker, resource: &Resource, table: &Table) {
        let used = PluginUse {
            role: PluginRole::Provider,
            plugin: &resource.provider,
            config: &resource.provider_config,
        };
        let span = table.get("provider").map_or(0..0, |n| n.span.clone());
        self.check_use(c, &format!("resource `{}`", resource.name), used, span);
    }

    fn check_use(&mut self, c: &mut Checker, owner: &str, used: PluginUse<'_>, span: Range<usize>) {
        let (name, kind) = (used.plugin, used.role.kind());
        let role = match used.role {
            PluginRole::Provider => "provider",
            PluginRole::Strategy => "strategy",
            PluginRole::Check(_) => "check",
        };
        let from_defaults = self.defaults_starts.contains(&span.start);
        if from_defaults
            && !self
                .reported_defaults
                .insert((span.start, name.to_string()))
        {
            return;
        }
        let whose = if from_defaults {
            format!("the {role} set in [defaults]")
        } else {
            format!("the {role} of {owner}")
        };
        // The kind of a built-in plugin is known now; a file's only when it loads.
        let builtin = match self.plugins.get(name) {
            Some(PluginDecl {
                source: PluginSource::Embedded(n),
                ..
            }) => find_embedded(n),
            Some(_) => return,
            // Declared, but its table has problems of its own, already reported.
            None if self.declared_keys.contains_key(name) => return,
            None => find_embedded(name),
        };
        match builtin {
            Some(b) if b.kind == kind => {
                self.plugins
                    .entry(name.to_string())
                    .or_insert_with(|| PluginDecl {
                        source: PluginSource::Embedded(name.to_string()),
                        grants: GrantsConfig::default(),
                    });
            }
            Some(b) => c.error(
                format!(
                    "{whose} is `{name}`, a {} plugin, not a {kind} plugin",
                    b.kind
                ),
                span,
                None,
            ),
            None => {
                let help = self.unknown_plugin_help(name, kind);
                c.error(
                    format!("{whose} is `{name}`, which is not a declared or built-in plugin"),
                    span,
                    Some(help),
                );
            }
        }
    }

    fn unknown_plugin_help(&self, name: &str, kind: &str) -> String {
        let mut known: Vec<&str> = self.declared_keys.keys().map(String::as_str).collect();
        known.extend(embedded().iter().filter(|p| p.kind == kind).map(|p| p.name));
        match nearest(name, known.iter().copied()) {
            Some(n) => format!(
                "did you mean `{n}`? Otherwise declare it in [plugins.{name}] with its source and sha256"
            ),
            None => format!("declare it in [plugins.{name}] with its source and sha256"),
        }
    }
}

/// The start of every value in a table, nested ones included.
fn value_starts(table: &Table) -> BTreeSet<usize> {
    let mut starts = BTreeSet::new();
    let mut pending: Vec<&Node> = table.entries.iter().map(|(_, n)| n).collect();
    while let Some(node) = pending.pop() {
        starts.insert(node.span.start);
        match &node.value {
            Value::Array(items) => pending.extend(items),
            Value::Table(t) => pending.extend(t.entries.iter().map(|(_, n)| n)),
            _ => {}
        }
    }
    starts
}

/// The variables as given: the file's, the environment's on top, then those from outside the
/// file, each of which must name a variable the file declares.
fn variables(
    c: &mut Checker,
    root: &Table,
    environment: Option<&Node>,
    inputs: &Inputs,
) -> Vec<Raw> {
    let mut given = Vec::new();
    for node in root.get("variables").into_iter().chain(environment) {
        let Some(table) = c.table(node, "variables") else {
            continue;
        };
        for (key, value) in &table.entries {
            if let Some(text) = c.string(value, &format!("variable `{}`", key.name)) {
                given.push(Raw {
                    name: key.name.clone(),
                    text,
                    given: Given::File(value.span.clone()),
                });
            }
        }
    }
    let declared: BTreeSet<String> = given.iter().map(|r| r.name.clone()).collect();
    let outside = (inputs
        .process_env
        .iter()
        .map(|(n, v)| (n, v, Given::ProcessEnv)))
    .chain(
        inputs
            .command_line
            .iter()
            .map(|(n, v)| (n, v, Given::CommandLine)),
    );
    for (name, value, from) in outside {
        if declared.contains(name) {
            given.push(Raw {
                name: name.clone(),
                text: value.clone(),
                given: from,
            });
        } else {
            undeclared(c, root, &declared, name, &from);
        }
    }
    given
}

/// An outside variable the file does not declare: an error naming where it came from and the
/// variables there are.
fn undeclared(
    c: &mut Checker,
    root: &Table,
    declared: &BTreeSet<String>,
    name: &str,
    from: &Given,
) {
    let origin = match from {
        Given::ProcessEnv => format!("ENGINE_VAR_{name} in the environment"),
        _ => format!("--var {name}=…"),
    };
    let help = match nearest(name, declared.iter().map(String::as_str)) {
        Some(n) => format!("did you mean `{n}`?"),
        None if declared.is_empty() => {
            "declare it with a default under [variables], such as `tag = \"latest\"`".into()
        }
        None => {
            let names: Vec<&str> = declared.iter().map(String::as_str).collect();
            format!("declared variables: {}", names.join(", "))
        }
    };
    let span = root.key("variables").map_or(0..0, |k| k.span.clone());
    c.error(
        format!("{origin}: the pipeline declares no variable `{name}`"),
        span,
        Some(help),
    );
}

fn plugin(c: &mut Checker, key: &Key, node: &Node, base: &Path) -> Option<PluginDecl> {
    let context = format!("[plugins.{}]", key.name);
    let table = c.table(node, &context)?.clone();
    c.unknown_keys(&table, PLUGIN_KEYS, &context);
    let source_text = match table.get("source") {
        Some(n) => c.string(n, "`source`")?,
        None => key.name.clone(),
    };
    let source = if let Some(reference) = source_text.strip_prefix("oci://") {
        registry_source(c, key, &table, reference)
    } else if source_text.starts_with("https://") || source_text.starts_with("http://") {
        url_source(c, key, &table, &source_text)
    } else if source_text.ends_with(".wasm") || source_text.contains('/') {
        pinned_file(c, &table, &source_text, base)
    } else {
        builtin_source(c, key, &table, source_text)
    };
    let grants = plugin_grants(c, &context, node, &table, base)?;
    Some(PluginDecl {
        source: source?,
        grants,
    })
}

/// A plugin loaded from a file, pinned by its sha256 here or, when the line is left out, by
/// engine.lock (see `config::lockfile`).
fn pinned_file(
    c: &mut Checker,
    table: &Table,
    source_text: &str,
    base: &Path,
) -> Option<PluginSource> {
    let path = super::resolve_path(base, source_text);
    Some(match sha256_pin(c, table)? {
        Some(sha256) => PluginSource::File { path, sha256 },
        None => PluginSource::Unpinned(path),
    })
}

/// `sha256`, checked: Some(None) when the line is left out, None when it is malformed.
fn sha256_pin(c: &mut Checker, table: &Table) -> Option<Option<String>> {
    let Some(sha) = table.get("sha256") else {
        return Some(None);
    };
    let sha256 = c.string(sha, "`sha256`")?;
    if !crate::plugins::is_sha256_hex(&sha256) {
        c.error(
            "`sha256` must be 64 hexadecimal characters",
            sha.span.clone(),
            None,
        );
        return None;
    }
    Some(Some(sha256.to_ascii_lowercase()))
}

/// A plugin in an OCI registry; a tag is pinned by `sha256` or engine.lock, a digest pins itself.
fn registry_source(
    c: &mut Checker,
    key: &Key,
    table: &Table,
    reference: &str,
) -> Option<PluginSource> {
    let span = source_span(key, table);
    let mut source = match crate::plugins::registry::RegistrySource::parse(reference) {
        Ok(source) => source,
        Err(message) => {
            c.error(message, span, None);
            return None;
        }
    };
    source.sha256 = sha256_pin(c, table)?;
    Some(PluginSource::Registry(source))
}

/// Where a plugin's `source` is written, or its table when it has none.
fn source_span(key: &Key, table: &Table) -> std::ops::Range<usize> {
    table
        .get("source")
        .map_or(key.span.clone(), |n| n.span.clone())
}

/// A plugin at a URL: `https://`, or `http://` on this machine only.
fn url_source(c: &mut Checker, key: &Key, table: &Table, url: &str) -> Option<PluginSource> {
    let span = source_span(key, table);
    let Ok(parsed) = reqwest::Url::parse(url) else {
        c.error(format!("plugin source {url} is not a URL"), span, None);
        return None;
    };
    let this_machine = parsed
        .host_str()
        .is_some_and(crate::plugins::is_this_machine);
    if parsed.scheme() == "http" && !this_machine {
        c.error(
            format!("plugin source {url} is plain HTTP"),
            span,
            Some("fetch plugins over https:// (plain http:// only from this machine, localhost or 127.0.0.1)".into()),
        );
        return None;
    }
    Some(PluginSource::Url {
        url: url.to_string(),
        sha256: sha256_pin(c, table)?,
    })
}

fn builtin_source(
    c: &mut Checker,
    key: &Key,
    table: &Table,
    source_text: String,
) -> Option<PluginSource> {
    if find_embedded(&source_text).is_some() {
        return Some(PluginSource::Embedded(source_text));
    }
    let span = source_span(key, table);
    let names: Vec<&str> = embedded().iter().map(|p| p.name).collect();
    let help = match nearest(&source_text, names.iter().copied()) {
        Some(n) => format!("did you mean `{n}`?"),
        None => format!(
            "give the path of a .wasm file, or one of the built-in plugins: {}",
            names.join(", ")
        ),
    };
    c.error(
        format!("there is no built-in plugin named `{source_text}`"),
        span,
        Some(help),
    );
    None
}

/// The grant keys of a plugin's table, parsed (so a bad pattern or size is reported here, at
/// its line, rather than when the plugin loads).
fn plugin_grants(
    c: &mut Checker,
    context: &str,
    node: &Node,
    table: &Table,
    base: &Path,
) -> Option<GrantsConfig> {
    let mut grant_table = table.clone();
    grant_table.entries.retain(|(k, _)| {
        k.name != "source" && k.name != "sha256" && PLUGIN_KEYS.contains(&k.name.as_str())
    });
    let mut grants = match GrantsConfig::deserialize(Value::Table(grant_table.clone()).to_toml()) {
        Ok(g) => g,
        Err(e) => {
            c.error(
                format!("{context}: {}", e.message()),
                node.span.clone(),
                None,
            );
            return None;
        }
    };
    // Granted directories are relative to the pipeline file, like plugin sources.
    for dir in &mut grants.dirs {
        dir.host = super::resolve_path(base, &dir.host.to_string_lossy());
    }
    if let Err(e) = grants.parse() {
        let top = e.key.split('.').next().unwrap_or_default();
        let span = grant_table
            .get(top)
            .map_or(node.span.clone(), |n| n.span.clone());
        c.error(format!("{context} {}: {}", e.key, e.message), span, None);
        return None;
    }
    Some(grants)
}

fn cpu_millis(c: &mut Checker, node: &Node) -> Option<u32> {
    let cores = match &node.value {
        Value::Integer(i) => Some(*i as f64),
        Value::Float(f) => Some(*f),
        Value::String(s) => match s.strip_suffix('m') {
            Some(m) => m.parse::<f64>().ok().map(|m| m / 1000.0),
            None => s.parse().ok(),
        },
        _ => None,
    };
    match cores {
        Some(c) if c > 0.0 && c <= 1024.0 => Some((c * 1000.0).round() as u32),
        _ => {
            c.error(
                "`cpu` must be a number of cores such as 1, 0.5 or \"500m\"",
                node.span.clone(),
                None,
            );
            None
        }
    }
}

fn memory_mib(c: &mut Checker, node: &Node) -> Option<u32> {
    let mib = match &node.value {
        Value::Integer(i) if *i > 0 => Some(*i as u64),
        Value::String(s) => {
            // Kubernetes writes Mi and Gi; bytesize wants MiB and GiB.
            let normalised = if s.ends_with("Mi") || s.ends_with("Gi") || s.ends_with("Ki") {
                format!("{s}B")
            } else {
                s.clone()
            };
            normalised
                .parse::<bytesize::ByteSize>()
                .ok()
                .map(|b| b.as_u64() >> 20)
                .filter(|m| *m > 0)
        }
        _ => None,
    };
    match mib {
        Some(m) if m <= u32::MAX as u64 => Some(m as u32),
        _ => {
            c.error(
                "`memory` must be a size such as \"512MiB\", \"2GiB\" or \"512Mi\"",
                node.span.clone(),
                None,
            );
            None
        }
    }
}

/// One problem for every service that names no provider (they usually share the cause: no
/// `provider` in [defaults]), at the first of them.
fn no_provider(c: &mut Checker, keys: &[&Key]) {
    let Some(first) = keys.first() else {
        return;
    };
    let names: Vec<&str> = keys.iter().map(|k| k.name.as_str()).collect();
    let verb = if names.len() == 1 { "has" } else { "have" };
    let help = if names.len() == 1 {
        "set `provider` in the service or in [defaults]"
    } else {
        "set `provider` in [defaults] for all of them, or in each service"
    };
    c.error(
        format!("{} {verb} no `provider`", services_phrase(&names)),
        first.span.clone(),
        Some(help.to_string()),
    );
}

fn service(c: &mut Checker, key: &Key, t: &Table, base: &Path) -> Option<Service> {
    let name = key.name.clone();
    // A missing provider is reported by the caller, once for all the services without one.
    let provider = t.get("provider").and_then(|n| c.string(n, "`provider`"));
    let artifact = artifact(c, key, t, base);
    let opt = |field: &str| t.get(field);
    let args = opt("args").map(|n| c.strings(n, "`args`"));
    let env = opt("env").map(|n| c.string_map(n, "`env`"));
    let secrets = opt("secrets").map(|n| c.string_map(n, "`secrets`"));
    let labels = opt("labels").map(|n| c.string_map(n, "`labels`"));
    let depends_on = opt("depends_on").map(|n| c.strings(n, "`depends_on`"));
    let cpu = opt("cpu").map(|n| cpu_millis(c, n));
    let memory = opt("memory").map(|n| memory_mib(c, n));
    let min = opt("min_instances").map(|n| c.count(n, "`min_instances`", 0..=10_000));
    let max = opt("max_instances").map(|n| c.count(n, "`max_instances`", 1..=10_000));
    let concurrency = opt("concurrency").map(|n| c.count(n, "`concurrency`", 1..=100_000));
    let port = opt("port").map(|n| c.count(n, "`port`", 1..=65_535));
    let ingress = opt("ingress").map_or(Ingress::Public, |n| ingress(c, n));
    let strategy = match opt("strategy") {
        Some(n) => c.string(n, "`strategy`"),
        None => Some(DEFAULT_STRATEGY.to_string()),
    };
    let provider_config = config_table(c, t.get("provider_config"), "`provider_config`");
    let strategy_config = config_table(c, t.get("strategy_config"), "`strategy_config`");
    let checks = opt("checks").map_or(Vec::new(), |n| checks(c, &name, n));
    let (pre_hooks, post_hooks) = opt("hooks").map_or((None, None), |n| hooks(c, &name, n));

    // Each optional field is None (absent), Some(None) (invalid, already reported: the load
    // fails, the default only lets the other checks go on) or Some(Some(value)).
    fn take<T: Default>(field: Option<Option<T>>) -> T {
        field.flatten().unwrap_or_default()
    }
    let service = Service {
        args: take(args),
        env: take(env),
        secrets: take(secrets),
        labels: take(labels),
        depends_on: take(depends_on),
        cpu_millis: cpu.flatten(),
        memory_mib: memory.flatten(),
        min_instances: min.flatten(),
        max_instances: max.flatten(),
        concurrency: concurrency.flatten(),
        port: port.flatten().map(|p| p as u16),
        checks,
        name,
        provider: provider?,
        artifact: artifact?,
        ingress,
        strategy: strategy?,
        provider_config: provider_config.unwrap_or_default(),
        strategy_config: strategy_config.unwrap_or_default(),
        pre_hooks: take(pre_hooks),
        post_hooks: take(post_hooks),
    };
    // Returned even with an invalid optional field, so its references are checked too.
    Some(service)
}

/// Exactly one of `image` and `artifact`.
fn artifact(c: &mut Checker, key: &Key, t: &Table, base: &Path) -> Option<Artifact> {
    let name = &key.name;
    match (t.get("image"), t.get("artifact")) {
        (Some(i), None) => c.string(i, "`image`").map(Artifact::Image),
        (None, Some(a)) => c
            .string(a, "`artifact`")
            .map(|path| Artifact::Path(resolve_artifact(base, &path))),
        (Some(_), Some(a)) => {
            c.error(
                format!("service `{name}` sets both `image` and `artifact`"),
                a.span.clone(),
                Some("keep one: `image` for a container image, `artifact` for a local file".into()),
            );
            None
        }
        (None, None) => {
            c.error(
                format!("service `{name}` has no `image` or `artifact`"),
                key.span.clone(),
                None,
            );
            None
        }
    }
}

/// An invalid `ingress` is reported; `public` stands in so the other checks go on.
fn ingress(c: &mut Checker, node: &Node) -> Ingress {
    match c.string(node, "`ingress`").as_deref() {
        Some("internal") => Ingress::Internal,
        Some("none") => Ingress::None,
        Some("public") | None => Ingress::Public,
        Some(other) => {
            c.error(
                format!("`ingress` is `{other}`"),
                node.span.clone(),
                Some("use \"public\", \"internal\" or \"none\"".into()),
            );
            Ingress::Public
        }
    }
}

/// A plugin's configuration table as JSON (`{}` when absent); `None` when it is not a table.
pub(super) fn config_table(
    c: &mut Checker,
    node: Option<&Node>,
    what: &str,
) -> Option<serde_json::Value> {
    match node {
        None => Some(serde_json::json!({})),
        Some(n) => c.table(n, what).map(|_| n.value.to_json()),
    }
}

/// `[[services.NAME.checks]]`: the valid ones (the others are reported).
fn checks(c: &mut Checker, service: &str, node: &Node) -> Vec<Check> {
    let Value::Array(items) = &node.value else {
        c.wrong_type(
            node,
            "`checks`",
            "an array of tables ([[services.NAME.checks]])",
        );
        return Vec::new();
    };
    let mut checks = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let what = format!("check {} of service `{service}`", i + 1);
        let Some(ct) = c.table(item, &what).cloned() else {
            continue;
        };
        c.unknown_keys(&ct, CHECK_KEYS, &format!("a check of service `{service}`"));
        let plugin = match ct.get("plugin") {
            Some(p) => c.string(p, "a check's `plugin`"),
            None => {
                c.error(
                    format!("a check of service `{service}` has no `plugin`"),
                    item.span.clone(),
                    Some("name a health plugin, such as `plugin = \"http\"`".into()),
                );
                None
            }
        };
        let name = ct
            .get("name")
            .and_then(|p| c.string(p, "a check's `name`"))
            .or_else(|| plugin.clone());
        let config = config_table(c, ct.get("config"), "a check's `config`");
        let delay = match ct.get("delay") {
            Some(d) => check_delay(c, d),
            None => Some(Duration::ZERO),
        };
        if let (Some(plugin), Some(name), Some(config), Some(delay)) = (plugin, name, config, delay)
        {
            checks.push(Check {
                name,
                plugin,
                config,
                delay,
            });
        }
    }
    checks
}

/// The longest `delay` a check may have: longer waits belong in the strategy (a canary's
/// `pause`), where `engine plan` shows them and approvals can cut them short.
const MAX_CHECK_DELAY: Duration = Duration::from_secs(3600);

fn check_delay(c: &mut Checker, node: &Node) -> Option<Duration> {
    let text = c.string(node, "a check's `delay`")?;
    let help = "a duration such as \"30s\" or \"2m\", at most 1h";
    match humantime::parse_duration(&text) {
        Ok(d) if d <= MAX_CHECK_DELAY => Some(d),
        Ok(_) => {
            c.error(
                format!("a check's `delay` of {text} is longer than 1h"),
                node.span.clone(),
                Some("wait longer with the strategy's pause (a canary's `pause`), which `engine plan` shows".into()),
            );
            None
        }
        Err(e) => {
            c.error(
                format!("a check's `delay` is not a duration: {e}"),
                node.span.clone(),
                Some(help.into()),
            );
            None
        }
    }
}

/// `hooks = { pre = [...], post = [...] }`, each stage as `take` in [`service`] expects it.
type HookStages = (Option<Option<Vec<String>>>, Option<Option<Vec<String>>>);

fn hooks(c: &mut Checker, service: &str, node: &Node) -> HookStages {
    let Some(h) = c.table(node, "`hooks`").cloned() else {
        return (None, None);
    };
    c.unknown_keys(&h, HOOK_KEYS, &format!("the hooks of service `{service}`"));
    let pre = h.get("pre").map(|p| c.strings(p, "`hooks.pre`"));
    let post = h.get("post").map(|p| c.strings(p, "`hooks.post`"));
    (pre, post)
}

/// A relative artifact path (one with a `/`) starts from the pipeline's directory, so runs from
/// any working directory deploy the same file; a bare name (`python3`) is a program the platform
/// looks up on its `PATH`.
fn resolve_artifact(base: &Path, path: &str) -> String {
    if !path.contains('/') {
        return path.to_string();
    }
    let resolved = super::resolve_path(base, path);
    // Absolute, because the platform that runs it may have another working directory.
    match std::env::current_dir() {
        Ok(cwd) if resolved.is_relative() => super::resolve_path(&cwd, &resolved.to_string_lossy()),
        _ => resolved,
    }
    .display()
    .to_string()
}
