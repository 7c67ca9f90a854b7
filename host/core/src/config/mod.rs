//! pipeline.toml: the model, and its complete validation before any plugin runs.
//!
//! [`load`] reads the file, applies `[defaults]`, the chosen environment's variables and
//! overrides, and `${var}` interpolation, and checks everything it can without running a
//! plugin: unknown keys (with the nearest valid name), types, undefined plugins, services and
//! variables, dependency cycles, grants. Every problem is reported, each pointing at its place
//! in the file.

pub mod diagnostic;
mod lockfile;
mod origin;
pub mod references;
mod resources;
mod tree;
mod validate;
pub mod variables;

use crate::grants::GrantsConfig;
use crate::plugins::PluginSource;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use diagnostic::{Diagnostic, Severity};

/// A pipeline after validation, for one environment.
#[derive(Debug, Clone, PartialEq)]
pub struct Pipeline {
    pub name: String,
    /// The environment chosen with `--env`, if any.
    pub environment: Option<String>,
    /// Every plugin the pipeline uses, declared or built in.
    pub plugins: BTreeMap<String, PluginDecl>,
    /// Services in the order the file lists them.
    pub services: Vec<Service>,
    /// Resources (provisioning steps) of this environment, in the order the file lists them.
    pub resources: Vec<Resource>,
    /// engine.lock beside the pipeline, and whether it must be followed (`--locked`).
    pub lock: PipelineLock,
    /// Where everything came from, to point later diagnostics (plugin schemas) at the file.
    pub(crate) origin: Origin,
}

/// The lock file a pipeline was read with.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PipelineLock {
    /// engine.lock beside the pipeline, when there is one.
    pub file: Option<crate::lockfile::LockFile>,
    /// `--locked`: a plugin that differs from its lock, or is missing from it, is an error
    /// instead of a warning.
    pub locked: bool,
}

impl PipelineLock {
    /// The plugins locked for this pipeline's environment.
    pub fn section(
        &self,
        environment: Option<&str>,
    ) -> Option<&BTreeMap<String, crate::lockfile::LockedPlugin>> {
        self.file.as_ref()?.section(environment)
    }
}

/// The file a pipeline was read from and the spanned tables behind its model.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Origin {
    pub file: String,
    pub source: String,
    /// Each service's merged table (defaults, its own table, the environment's override).
    pub services: BTreeMap<String, tree::Table>,
    /// Each resource's merged table (its own, the environment's override).
    pub resources: BTreeMap<String, tree::Table>,
    /// Where each `[plugins.NAME]` table starts.
    pub plugin_keys: BTreeMap<String, std::ops::Range<usize>>,
    /// Where each granted secret is written: (plugin, secret) → its key in `secrets`.
    pub secret_keys: BTreeMap<(String, String), std::ops::Range<usize>>,
    /// The directory relative paths start from (the pipeline file's).
    pub base: PathBuf,
}

impl Origin {
    pub fn error(&self, diagnostics: Vec<Diagnostic>) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            source: self.source.clone(),
            diagnostics,
        }
    }
}

/// Where a plugin comes from and what it may do.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginDecl {
    pub source: PluginSource,
    pub grants: GrantsConfig,
}

/// What a service runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Artifact {
    Image(String),
    Path(String),
}

/// Who can reach a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingress {
    Public,
    Internal,
    None,
}

/// One health check of a service.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub name: String,
    pub plugin: String,
    pub config: serde_json::Value,
    /// How long after the analysis window began (the deploy, or the last traffic change) the
    /// check may first run: a service that warms up for 30 s is not judged before. The engine
    /// waits it, so it does not count against the check plugin's own time limit.
    pub delay: std::time::Duration,
}

/// One service, with defaults, environment overrides and variables applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub name: String,
    pub provider: String,
    pub provider_config: serde_json::Value,
    pub artifact: Artifact,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Environment variable → the platform's secret reference.
    pub secrets: BTreeMap<String, String>,
    pub cpu_millis: Option<u32>,
    pub memory_mib: Option<u32>,
    pub min_instances: Option<u32>,
    pub max_instances: Option<u32>,
    pub concurrency: Option<u32>,
    pub port: Option<u16>,
    pub ingress: Ingress,
    pub labels: BTreeMap<String, String>,
    pub depends_on: Vec<String>,
    pub strategy: String,
    pub strategy_config: serde_json::Value,
    pub checks: Vec<Check>,
    /// Commands run before and after the service's rollout.
    pub pre_hooks: Vec<String>,
    pub post_hooks: Vec<String>,
}

/// A provisioning step: an object a provider manages beside the services (a scheduler job, an
/// IAM binding), created, updated and deleted with the pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub name: String,
    pub provider: String,
    /// The provider's configuration: `[defaults].provider_config` when the resource has the
    /// same provider as [defaults], with its own `provider_config` over it.
    pub provider_config: serde_json::Value,
    /// One of the kinds the provider lists.
    pub kind: String,
    /// The object, checked against the kind's JSON Schema; references are filled in at run
    /// time.
    pub spec: serde_json::Value,
    /// What it waits for: written in `depends_on`, and implied by its references.
    pub depends_on: Vec<String>,
}

impl Resource {
    /// What identifies the object the spec describes, as [`Service::release_digest`] does.
    pub fn digest(&self) -> String {
        use sha2::Digest;
        let described = serde_json::json!({
            "provider": self.provider,
            "provider_config": self.provider_config,
            "kind": self.kind,
            "spec": self.spec,
        });
        let digest = sha2::Sha256::digest(sorted_keys(&described).to_string().as_bytes());
        format!("sha256:{}", hex::encode(digest))
    }
}

/// A service or a resource: the nodes of the pipeline's dependency graph.
#[derive(Debug, Clone, Copy)]
pub enum Unit<'p> {
    Service(&'p Service),
    Resource(&'p Resource),
}

impl<'p> Unit<'p> {
    pub fn name(&self) -> &'p str {
        match self {
            Unit::Service(s) => &s.name,
            Unit::Resource(r) => &r.name,
        }
    }

    pub fn depends_on(&self) -> &'p [String] {
        match self {
            Unit::Service(s) => &s.depends_on,
            Unit::Resource(r) => &r.depends_on,
        }
    }
}

/// The JSON Schema of pipeline.toml (as TOML maps to JSON), for editors: `engine schema`.
pub const SCHEMA: &str = include_str!("pipeline.schema.json");

/// The strategy a service gets when it names none.
pub const DEFAULT_STRATEGY: &str = "all-at-once";

/// A pipeline that cannot be used: every problem found, and the text to show them against.
#[derive(Debug)]
pub struct ConfigError {
    pub file: String,
    pub source: String,
    pub diagnostics: Vec<Diagnostic>,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.rendered(), self.tally())
    }
}

impl ConfigError {
    /// Every diagnostic rendered against the file, as cargo renders them, each followed by a
    /// blank line.
    pub fn rendered(&self) -> String {
        self.diagnostics
            .iter()
            .map(|d| diagnostic::render(&self.file, &self.source, d) + "\n")
            .collect()
    }

    /// `N problems in FILE`, counting the errors (warnings do not make a problem).
    pub fn tally(&self) -> String {
        let n = self
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count();
        format!(
            "{n} problem{} in {}",
            if n == 1 { "" } else { "s" },
            self.file
        )
    }

    /// The diagnostics as JSON objects (see [`Diagnostic::to_json`]).
    pub fn diagnostics_json(&self) -> Vec<serde_json::Value> {
        self.diagnostics
            .iter()
            .map(|d| d.to_json(&self.file, &self.source))
            .collect()
    }
}

impl std::error::Error for ConfigError {}

/// The largest pipeline file the engine reads (a 30-service pipeline is about 20 KiB).
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// What a pipeline is read with besides its file: the environment and the variables given
/// from outside it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inputs {
    /// The environment whose variables and overrides apply (`--env`).
    pub environment: Option<String>,
    /// `ENGINE_VAR_NAME=VALUE` from the process environment, as (NAME, VALUE).
    pub process_env: Vec<(String, String)>,
    /// `--var NAME=VALUE`, in the order given (a later one wins); these win over all others.
    pub command_line: Vec<(String, String)>,
    /// `--locked`: plugins must match engine.lock.
    pub locked: bool,
    /// Plugin files may go without a pin (for `engine plugins lock`, which pins them).
    pub allow_unpinned: bool,
}

/// The prefix of environment variables that set pipeline variables.
pub const ENV_VAR_PREFIX: &str = "ENGINE_VAR_";

impl Inputs {
    /// An environment and no outside variables.
    pub fn environment(environment: Option<&str>) -> Inputs {
        Inputs {
            environment: environment.map(str::to_string),
            ..Inputs::default()
        }
    }

    /// Takes every `ENGINE_VAR_NAME` of this process's environment (names and values that are
    /// not UTF-8 are skipped: no pipeline variable could be named by them).
    pub fn with_process_env(mut self) -> Inputs {
        self.process_env = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .filter_map(|(k, v)| Some((k.strip_prefix(ENV_VAR_PREFIX)?.to_string(), v)))
            .filter(|(k, _)| !k.is_empty())
            .collect();
        self.process_env.sort();
        self
    }
}

/// Reads and validates a pipeline file for an environment.
pub fn load(path: &Path, environment: Option<&str>) -> Result<Pipeline, ConfigError> {
    load_with(path, &Inputs::environment(environment))
}

/// Reads and validates a pipeline file with an environment and outside variables.
pub fn load_with(path: &Path, inputs: &Inputs) -> Result<Pipeline, ConfigError> {
    let file = path.display().to_string();
    let unreadable = |message: String| ConfigError {
        file: file.clone(),
        source: String::new(),
        diagnostics: vec![Diagnostic::new(message, 0..0)],
    };
    let size = std::fs::metadata(path)
        .map_err(|e| unreadable(format!("cannot read {file}: {e}")))?
        .len();
    if size > MAX_FILE_BYTES {
        return Err(unreadable(format!(
            "{file} is {size} bytes, over the {} MiB a pipeline file may have",
            MAX_FILE_BYTES >> 20
        )));
    }
    let source = std::fs::read_to_string(path)
        .map_err(|e| unreadable(format!("cannot read {file}: {e}")))?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    parse_with(&file, &source, &base, inputs)
}

/// Validates pipeline text; `base` is the directory relative plugin paths start from.
pub fn parse(
    file: &str,
    source: &str,
    base: &Path,
    environment: Option<&str>,
) -> Result<Pipeline, ConfigError> {
    parse_with(file, source, base, &Inputs::environment(environment))
}

/// Validates pipeline text with an environment and outside variables. This is the whole of
/// `engine validate --skip-plugins`: it never panics, and its time and memory grow linearly
/// with the text (variables included), whatever the text holds.
pub fn parse_with(
    file: &str,
    source: &str,
    base: &Path,
    inputs: &Inputs,
) -> Result<Pipeline, ConfigError> {
    let too_big = source.len() as u64 > MAX_FILE_BYTES;
    let result = if too_big {
        Err(vec![Diagnostic::new(
            format!(
                "the pipeline is {} bytes, over the {} MiB a pipeline file may have",
                source.len(),
                MAX_FILE_BYTES >> 20
            ),
            0..0,
        )])
    } else {
        validate::pipeline(source, base, inputs)
    };
    let mut pipeline = result.map_err(|diagnostics| ConfigError {
        file: file.to_string(),
        source: if too_big {
            String::new()
        } else {
            source.to_string()
        },
        diagnostics,
    })?;
    pipeline.origin.file = file.to_string();
    pipeline.origin.source = source.to_string();
    pipeline.origin.base = base.to_path_buf();
    lockfile::apply(&mut pipeline, inputs).map_err(|diagnostics| pipeline.error(diagnostics))?;
    Ok(pipeline)
}

/// What a service uses a plugin for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginRole {
    Provider,
    Strategy,
    /// The service's check at this index.
    Check(usize),
}

impl PluginRole {
    /// The kind of plugin the role needs, as plugins name their kind.
    pub fn kind(self) -> &'static str {
        match self {
            PluginRole::Provider => "provider",
            PluginRole::Strategy => "strategy",
            PluginRole::Check(_) => "health",
        }
    }
}

/// A plugin a service uses, with the configuration it gives it.
#[derive(Debug, Clone, Copy)]
pub struct PluginUse<'s> {
    pub role: PluginRole,
    pub plugin: &'s str,
    pub config: &'s serde_json::Value,
}

impl Service {
    /// Every plugin the service uses: its provider, its strategy, its checks, in that order.
    pub fn plugin_uses(&self) -> impl Iterator<Item = PluginUse<'_>> {
        let provider = PluginUse {
            role: PluginRole::Provider,
            plugin: &self.provider,
            config: &self.provider_config,
        };
        let strategy = PluginUse {
            role: PluginRole::Strategy,
            plugin: &self.strategy,
            config: &self.strategy_config,
        };
        let checks = self.checks.iter().enumerate().map(|(i, c)| PluginUse {
            role: PluginRole::Check(i),
            plugin: &c.plugin,
            config: &c.config,
        });
        [provider, strategy].into_iter().chain(checks)
    }

    /// The references (`${services.NAME.url}`, `${resources.NAME.outputs.KEY}`) it holds where
    /// they are filled in: its env, its plugin configurations and its checks'.
    pub fn references(&self) -> std::collections::BTreeSet<references::Reference> {
        let mut found: std::collections::BTreeSet<_> = self
            .env
            .values()
            .flat_map(|v| references::in_text(v))
            .collect();
        found.extend(references::in_json(&self.provider_config));
        found.extend(references::in_json(&self.strategy_config));
        for check in &self.checks {
            found.extend(references::in_json(&check.config));
        }
        found
    }

    /// What identifies the release the service's spec describes: a digest (`sha256:HEX`) of
    /// everything the provider is given (provider, its configuration, artifact, args, env,
    /// secret references, resources, scaling, port, ingress, labels), not of how it is rolled
    /// out (strategy, checks, hooks, dependencies). A rerun of a rejected release is
    /// recognised by it.
    pub fn release_digest(&self) -> String {
        use sha2::Digest;
        let artifact = match &self.artifact {
            Artifact::Image(image) => serde_json::json!({ "image": image }),
            Artifact::Path(path) => serde_json::json!({ "path": path }),
        };
        let ingress = match self.ingress {
            Ingress::Public => "public",
            Ingress::Internal => "internal",
            Ingress::None => "none",
        };
        let release = serde_json::json!({
            "provider": self.provider,
            "provider_config": self.provider_config,
            "artifact": artifact,
            "args": self.args,
            "env": self.env,
            "secrets": self.secrets,
            "cpu_millis": self.cpu_millis,
            "memory_mib": self.memory_mib,
            "min_instances": self.min_instances,
            "max_instances": self.max_instances,
            "concurrency": self.concurrency,
            "port": self.port,
            "ingress": ingress,
            "labels": self.labels,
        });
        let digest = sha2::Sha256::digest(sorted_keys(&release).to_string().as_bytes());
        format!("sha256:{}", hex::encode(digest))
    }
}

/// `value` with every object's keys in sorted order, so that equal values give equal text
/// whatever order their keys were written in.
fn sorted_keys(value: &serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            serde_json::Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k.clone(), sorted_keys(v)))
                    .collect(),
            )
        }
        serde_json::Value::Array(items) => items.iter().map(sorted_keys).collect(),
        other => other.clone(),
    }
}

impl Check {
    /// The checks of `all` that an analysis asking for `wanted` runs: those named, or all of
    /// them when it names none.
    pub fn selected<'a>(all: &'a [Check], wanted: &'a [String]) -> impl Iterator<Item = &'a Check> {
        all.iter()
            .filter(move |c| wanted.is_empty() || wanted.contains(&c.name))
    }

    /// When an analysis of `wanted` that began at `since_ms` may run: after the longest delay
    /// of the checks it runs.
    pub fn ready_at_ms(all: &[Check], wanted: &[String], since_ms: u64) -> u64 {
        let delay = Check::selected(all, wanted)
            .map(|c| c.delay)
            .max()
            .unwrap_or_default();
        since_ms.saturating_add(delay.as_millis() as u64)
    }
}

impl Pipeline {
    /// The directory of the pipeline file: hooks run there, and relative paths start there.
    pub fn directory(&self) -> &Path {
        if self.origin.base.as_os_str().is_empty() {
            Path::new(".")
        } else {
            &self.origin.base
        }
    }

    /// Services grouped into deployment waves (indices into `services`); validation has
    /// rejected cycles, so every service is in one.
    pub fn waves(&self) -> crate::graph::Waves {
        // Services come first among the units, so their indices are the same; an order through
        // a resource (a service waits on a job that waits on another service) is kept.
        let services = self.services.len();
        self.unit_waves()
            .into_iter()
            .map(|wave| {
                wave.into_iter()
                    .filter(|&i| i < services)
                    .collect::<Vec<_>>()
            })
            .filter(|wave| !wave.is_empty())
            .collect()
    }

    /// Services and resources, services first, each in the order the file lists them.
    pub fn units(&self) -> Vec<Unit<'_>> {
        let services = self.services.iter().map(Unit::Service);
        services
            .chain(self.resources.iter().map(Unit::Resource))
            .collect()
    }

    /// Services and resources grouped into waves (indices into [`Pipeline::units`]): each
    /// waits only on units of earlier waves.
    pub fn unit_waves(&self) -> crate::graph::Waves {
        let units = self.units();
        let order: Vec<(&str, &[String])> =
            units.iter().map(|u| (u.name(), u.depends_on())).collect();
        crate::graph::waves(&order).expect("validation rejects dependency cycles")
    }

    /// A resource by name.
    pub fn resource(&self, name: &str) -> Option<&Resource> {
        self.resources.iter().find(|r| r.name == name)
    }

    /// A service by name, or an error that lists the services there are.
    pub fn service(&self, name: &str) -> Result<&Service, String> {
        self.services
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| {
                let names: Vec<&str> = self.services.iter().map(|s| s.name.as_str()).collect();
                format!(
                    "pipeline `{}` has no service `{name}`; its services: {}",
                    self.name,
                    names.join(", ")
                )
            })
    }
}

/// The directory plugin paths are resolved against.
pub fn resolve_path(base: &Path, path: &str) -> PathBuf {
    let joined = base.join(path); // an absolute `path` replaces `base`
    // Lexically drop `.` and `..`, so paths read well in plans, history and errors.
    let mut clean = PathBuf::new();
    for part in joined.components() {
        match part {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir if clean.file_name().is_some() => {
                clean.pop();
            }
            other => clean.push(other),
        }
    }
    clean
}
