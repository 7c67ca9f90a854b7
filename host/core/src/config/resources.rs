//! `[resources.NAME]` and the references between services and resources: the checks that need
//! no plugin. (A resource's kind and spec are checked against its provider's schema when the
//! plugins load, in `runtime::check`.)

use super::diagnostic::nearest;
use super::references::{self, Reference};
use super::tree::{Node, Table, Value};
use super::validate::{Checker, as_table, config_table, layered};
use super::{Resource, Service};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

pub(super) const RESOURCE_KEYS: &[&str] = &[
    "provider",
    "provider_config",
    "kind",
    "spec",
    "depends_on",
    "environments",
];

/// What resources are read with: the pipeline's tables, and the chosen environment.
pub(super) struct ResourceLayers<'a> {
    pub root: &'a Table,
    pub defaults: &'a Table,
    /// The chosen environment's name and its table.
    pub environment: Option<(&'a str, &'a Table)>,
}

impl ResourceLayers<'_> {
    /// Every valid resource of the chosen environment, with the merged table it came from.
    pub fn read(&self, c: &mut Checker) -> Vec<(Resource, Table)> {
        let Some(node) = self.root.get("resources") else {
            return Vec::new();
        };
        let Some(declared) = c.table(node, "[resources]").cloned() else {
            return Vec::new();
        };
        let overrides = self.overrides(c, &declared);
        let mut out = Vec::new();
        for (key, node) in &declared.entries {
            let context = format!("[resources.{}]", key.name);
            let Some(own) = c.table(node, &context).cloned() else {
                continue;
            };
            c.unknown_keys(&own, RESOURCE_KEYS, &context);
            let over = overrides.get(&key.name).cloned().unwrap_or_default();
            let own = layered(&own, &over);
            let mut merged = Node {
                span: node.span.clone(),
                value: Value::Table(layered(&self.inherited(&own), &own)),
            };
            c.interpolate(&mut merged);
            let table = as_table(&merged).cloned().unwrap_or_default();
            if !self.included(c, &table) {
                continue;
            }
            if let Some(resource) = self.resource(c, &key.name, key.span.clone(), &table) {
                out.push((resource, table));
            }
        }
        out
    }

    /// The chosen environment's `[environments.ENV.resources.NAME]`, which must name resources
    /// the pipeline defines.
    fn overrides(&self, c: &mut Checker, declared: &Table) -> BTreeMap<String, Table> {
        let Some((name, env)) = self.environment else {
            return BTreeMap::new();
        };
        let Some(table) = env
            .get("resources")
            .and_then(|n| c.table(n, "environment resource overrides"))
            .cloned()
        else {
            return BTreeMap::new();
        };
        let mut out = BTreeMap::new();
        for (key, node) in &table.entries {
            let context = format!("[environments.{name}.resources.{}]", key.name);
            if declared.get(&key.name).is_none() {
                let names = declared.entries.iter().map(|(k, _)| k.name.as_str());
                c.error(
                    format!(
                        "the environment overrides resource `{}`, which the pipeline does not define",
                        key.name
                    ),
                    key.span.clone(),
                    nearest(&key.name, names).map(|n| format!("did you mean `{n}`?")),
                );
                continue;
            }
            if let Some(t) = c.table(node, &context).cloned() {
                c.unknown_keys(&t, RESOURCE_KEYS, &context);
                out.insert(key.name.clone(), t);
            }
        }
        out
    }

    /// A resource with `environments = [...]` exists only in those.
    fn included(&self, c: &mut Checker, table: &Table) -> bool {
        let Some(node) = table.get("environments") else {
            return true;
        };
        let Some(names) = c.strings(node, "`environments`") else {
            return true;
        };
        match self.environment {
            Some((chosen, _)) => names.iter().any(|n| n == chosen),
            None => false,
        }
    }

    fn resource(
        &self,
        c: &mut Checker,
        name: &str,
        at: Range<usize>,
        t: &Table,
    ) -> Option<Resource> {
        let provider = match t.get("provider") {
            Some(n) => c.string(n, "`provider`"),
            None => {
                c.error(
                    format!("resource `{name}` has no `provider`"),
                    at.clone(),
                    Some(
                        "name the provider plugin that manages it: `provider = \"cloudrun\"`"
                            .into(),
                    ),
                );
                None
            }
        };
        let kind = match t.get("kind") {
            Some(n) => c.string(n, "`kind`"),
            None => {
                c.error(
                    format!("resource `{name}` has no `kind`"),
                    at,
                    Some(
                        "`engine plugins inspect PROVIDER` lists the kinds a provider manages"
                            .into(),
                    ),
                );
                None
            }
        };
        let spec = config_table(c, t.get("spec"), "`spec`");
        let provider_config = config_table(c, t.get("provider_config"), "`provider_config`");
        let depends_on = t
            .get("depends_on")
            .and_then(|n| c.strings(n, "`depends_on`"));
        Some(Resource {
            name: name.to_string(),
            provider: provider?,
            provider_config: provider_config?,
            kind: kind?,
            spec: spec?,
            depends_on: depends_on.unwrap_or_default(),
        })
    }

    /// What a resource inherits from [defaults]: its `provider_config`, when both name one
    /// provider, so a scheduler job shares the services' project and region without repeating
    /// them (its own `provider_config` goes over it, key by key).
    fn inherited(&self, own: &Table) -> Table {
        let provider = |t: &Table| match t.get("provider").map(|n| &n.value) {
            Some(Value::String(p)) => Some(p.clone()),
            _ => None,
        };
        let mut base = Table::default();
        if provider(own).is_some()
            && provider(own) == provider(self.defaults)
            && let Some(key) = self.defaults.key("provider_config")
            && let Some(node) = self.defaults.get("provider_config")
        {
            base.entries.push((key.clone(), node.clone()));
        }
        base
    }
}

/// A reference written where it is not filled in: the service's name of what it runs, its
/// arguments, labels and secret names.
fn misplaced_reference(service: &Service) -> Option<(&'static str, Reference)> {
    let image = match &service.artifact {
        super::Artifact::Image(i) | super::Artifact::Path(i) => i,
    };
    let fields: [(&'static str, Vec<&String>); 4] = [
        ("image", vec![image]),
        ("args", service.args.iter().collect()),
        ("labels", service.labels.values().collect()),
        ("secrets", service.secrets.values().collect()),
    ];
    fields.into_iter().find_map(|(field, values)| {
        values
            .into_iter()
            .find_map(|v| references::in_text(v).into_iter().next())
            .map(|r| (field, r))
    })
}

/// A unit of the graph as validation sees it.
pub(super) struct Written<'a> {
    pub name: &'a str,
    /// `service` or `resource`.
    pub what: &'static str,
    pub depends_on: &'a mut Vec<String>,
    pub references: BTreeSet<Reference>,
    pub table: &'a Table,
    pub key_span: Range<usize>,
}

/// Every service and resource: their names are distinct, every dependency names one of them,
/// every reference names one of the right sort (and becomes a dependency), and they form no
/// cycle.
pub(super) fn check_graph(
    c: &mut Checker,
    services: &mut [(Service, Table)],
    resources: &mut [(Resource, Table)],
    key_span: &dyn Fn(&str) -> Range<usize>,
) {
    let service_names: BTreeSet<String> = services.iter().map(|(s, _)| s.name.clone()).collect();
    let resource_names: BTreeSet<String> = resources.iter().map(|(r, _)| r.name.clone()).collect();
    for (r, table) in resources.iter() {
        if service_names.contains(&r.name) {
            c.error(
                format!("resource `{}` has the name of a service", r.name),
                table.get("kind").map_or(0..0, |n| n.span.clone()),
                Some("services and resources share one graph (`depends_on` names either): rename one".into()),
            );
        }
    }
    for (s, _) in services.iter() {
        if let Some((field, reference)) = misplaced_reference(s) {
            c.error(
                format!("service `{}`: {reference} in `{field}` is never filled in", s.name),
                key_span(&s.name),
                Some("references are filled in `env`, `provider_config`, `strategy_config` and check configs, and in a resource's `spec`".into()),
            );
        }
    }
    let mut units: Vec<Written<'_>> = Vec::new();
    for (s, table) in services.iter_mut() {
        let references = s.references();
        let span = key_span(&s.name);
        units.push(Written {
            name: &s.name,
            what: "service",
            depends_on: &mut s.depends_on,
            references,
            table,
            key_span: span,
        });
    }
    for (r, table) in resources.iter_mut() {
        let mut references = references::in_json(&r.spec);
        references.extend(references::in_json(&r.provider_config));
        let span = table.get("kind").map_or(0..0, |n| n.span.clone());
        units.push(Written {
            name: &r.name,
            what: "resource",
            depends_on: &mut r.depends_on,
            references,
            table,
            key_span: span,
        });
    }
    let all: BTreeSet<&str> = service_names
        .iter()
        .chain(&resource_names)
        .map(String::as_str)
        .collect();
    for unit in &mut units {
        check_depends_on(c, unit, &all);
        imply_references(c, unit, &service_names, &resource_names);
    }
    check_cycle(c, &units);
}

fn check_depends_on(c: &mut Checker, unit: &Written<'_>, all: &BTreeSet<&str>) {
    let span = unit.table.get("depends_on").map(|n| n.span.clone());
    for dep in unit.depends_on.iter().filter(|d| !all.contains(d.as_str())) {
        c.error(
            format!(
                "{} `{}` depends on `{dep}`, which the pipeline does not define",
                unit.what, unit.name
            ),
            span.clone().unwrap_or(unit.key_span.clone()),
            nearest(dep, all.iter().copied()).map(|n| format!("did you mean `{n}`?")),
        );
    }
}

/// Each reference names a service or resource of the pipeline and becomes a dependency.
fn imply_references(
    c: &mut Checker,
    unit: &mut Written<'_>,
    services: &BTreeSet<String>,
    resources: &BTreeSet<String>,
) {
    for reference in &unit.references {
        let written = reference.to_string();
        let span = text_span(unit.table, &written).unwrap_or(unit.key_span.clone());
        let (known, sort) = match reference {
            Reference::ServiceUrl { .. } => (services, "service"),
            Reference::ResourceOutput { .. } => (resources, "resource"),
        };
        let target = reference.target();
        if target == unit.name {
            c.error(
                format!(
                    "{} `{}` refers to itself with {written}",
                    unit.what, unit.name
                ),
                span,
                Some("a value can only come from another service or resource".into()),
            );
            continue;
        }
        if !known.contains(target) {
            c.error(
                format!("{written} names no {sort} of the pipeline"),
                span,
                nearest(target, known.iter().map(String::as_str))
                    .map(|n| format!("did you mean `{n}`?")),
            );
            continue;
        }
        if !unit.depends_on.iter().any(|d| d == target) {
            unit.depends_on.push(target.to_string());
        }
    }
}

fn check_cycle(c: &mut Checker, units: &[Written<'_>]) {
    let graph: Vec<(&str, &[String])> = units.iter().map(|u| (u.name, &u.depends_on[..])).collect();
    let Err(cycle) = crate::graph::waves(&graph) else {
        return;
    };
    let first = units.iter().find(|u| u.name == cycle[0]);
    let span = first.map_or(0..0, |u| {
        u.table
            .get("depends_on")
            .map_or(u.key_span.clone(), |n| n.span.clone())
    });
    let only_services = cycle
        .iter()
        .all(|n| units.iter().any(|u| u.name == n && u.what == "service"));
    let who = match only_services {
        true => "services",
        false => "services and resources",
    };
    c.error(
        format!("{who} depend on each other in a cycle: {}", cycle.join(" → ")),
        span,
        Some("remove one of these dependencies (a reference such as ${services.NAME.url} is one too)".into()),
    );
}

/// Where a string holding `needle` is written in a table.
fn text_span(table: &Table, needle: &str) -> Option<Range<usize>> {
    let mut pending: Vec<&Node> = table.entries.iter().map(|(_, n)| n).collect();
    while let Some(node) = pending.pop() {
        match &node.value {
            Value::String(s) if s.contains(needle) => return Some(node.span.clone()),
            Value::Array(items) => pending.extend(items),
            Value::Table(t) => pending.extend(t.entries.iter().map(|(_, n)| n)),
            _ => {}
        }
    }
    None
}
