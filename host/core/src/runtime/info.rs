//! What a plugin says about itself (its `info`), in the engine's own types: the CLI, the
//! configuration checks and the sandbox read it without knowing the WIT version it came in.

use crate::port::Feature;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginInfo {
    /// A short kebab-case name, such as `cloud-run`.
    pub name: String,
    /// The plugin's own version.
    pub version: String,
    pub description: String,
    /// The JSON Schema of its configuration.
    pub config_schema: String,
    /// What a provider's platform can do; empty for other kinds.
    pub features: Vec<Feature>,
    pub capabilities: Capabilities,
    /// The kinds of resource a provider manages (WIT 0.1.1 `resources`); empty when it
    /// manages none.
    pub resource_kinds: Vec<ResourceKind>,
}

/// A kind of resource a provider manages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceKind {
    pub name: String,
    pub description: String,
    /// The JSON Schema every `spec` of this kind must pass.
    pub spec_schema: String,
    /// The outputs a resource of this kind has.
    pub outputs: Vec<String>,
}

impl PluginInfo {
    /// One of its resource kinds by name.
    pub fn resource_kind(&self, name: &str) -> Option<&ResourceKind> {
        self.resource_kinds.iter().find(|k| k.name == name)
    }
}

/// What a plugin declares it needs from the sandbox.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Outbound destinations, `scheme://host[:port]`; `tcp://host:port` for TCP connects.
    pub http: Vec<String>,
    /// Environment variables it reads.
    pub env: Vec<String>,
    pub dirs: Vec<DirNeed>,
    /// Secrets it opens, by name; `*` for those its configuration names.
    pub secrets: Vec<String>,
}

/// A directory a plugin opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirNeed {
    /// The path inside the sandbox, such as `/artifacts`.
    pub path: String,
    pub writable: bool,
    /// Why, for the person granting it.
    pub purpose: String,
}
