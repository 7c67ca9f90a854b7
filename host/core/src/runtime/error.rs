//! Errors of loading and calling plugins. Each says which plugin, what went wrong and, where the
//! user can do something about it, what to change.

use super::bindings::types;
use crate::grants::GrantError;
use std::time::Duration;

/// An error a plugin returned: the WIT `error` variant, with secret values redacted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginError {
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("rate limited{}: {message}", retry_after.map(|d| format!(" (retry after {d:?})")).unwrap_or_default())]
    RateLimited {
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("transient failure: {0}")]
    Transient(String),
    #[error("{0}")]
    Fatal(String),
}

impl From<types::Error> for PluginError {
    fn from(e: types::Error) -> Self {
        let r = |s: String| super::untrusted::text(&s);
        match e {
            types::Error::InvalidConfig(m) => PluginError::InvalidConfig(r(m)),
            types::Error::Unauthorized(m) => PluginError::Unauthorized(r(m)),
            types::Error::NotFound(m) => PluginError::NotFound(r(m)),
            types::Error::Conflict(m) => PluginError::Conflict(r(m)),
            types::Error::RateLimited(l) => PluginError::RateLimited {
                message: r(l.message),
                retry_after: l.retry_after_ms.map(Duration::from_millis),
            },
            types::Error::Transient(m) => PluginError::Transient(r(m)),
            types::Error::Fatal(m) => PluginError::Fatal(r(m)),
        }
    }
}

/// A call into a plugin that did not produce a usable answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The plugin answered with an error of its own.
    #[error("plugin '{plugin}' {function}: {error}")]
    Plugin {
        plugin: String,
        function: &'static str,
        error: PluginError,
    },
    /// The call ran past its deadline and was stopped.
    #[error(
        "plugin '{plugin}' {function} did not finish within {limit:?} and was stopped; if it needs longer, raise `timeout` in [plugins.{plugin}]"
    )]
    DeadlineExceeded {
        plugin: String,
        function: &'static str,
        limit: Duration,
    },
    /// The plugin tried to use more memory than its cap.
    #[error(
        "plugin '{plugin}' {function} tried to grow its memory to {requested} bytes, over its cap of {limit} bytes, and was stopped; if it needs more, raise `memory` in [plugins.{plugin}]"
    )]
    MemoryExceeded {
        plugin: String,
        function: &'static str,
        requested: u64,
        limit: u64,
    },
    /// The call added more to the plugin's writable directories than its `disk` limit (or more
    /// than [`super::disk::MAX_NEW_ENTRIES`] entries).
    #[error(
        "plugin '{plugin}' {function} wrote more than {limit} bytes or {} new files and directories into its writable directories ({dirs}) and was stopped; what it wrote is still there; if it needs more, raise `disk` in [plugins.{plugin}]",
        super::disk::MAX_NEW_ENTRIES
    )]
    DiskExceeded {
        plugin: String,
        function: &'static str,
        limit: u64,
        dirs: String,
    },
    /// The plugin's code panicked.
    #[error("plugin '{plugin}' {function} panicked: {message}")]
    Panicked {
        plugin: String,
        function: &'static str,
        message: String,
    },
    /// The plugin's code trapped (an `unreachable`, a bad memory access…).
    #[error("plugin '{plugin}' {function} crashed: {detail}")]
    Trapped {
        plugin: String,
        function: &'static str,
        detail: String,
    },
    /// The plugin returned something the contract forbids.
    #[error("plugin '{plugin}' {function} returned malformed output: {detail}")]
    MalformedOutput {
        plugin: String,
        function: &'static str,
        detail: String,
    },
    /// The sandbox for the call could not be set up (a granted directory vanished, the pool is
    /// exhausted…).
    #[error("plugin '{plugin}' {function} could not start: {detail}")]
    Setup {
        plugin: String,
        function: &'static str,
        detail: String,
    },
    /// The plugin is of another kind than the call needs.
    #[error("plugin '{plugin}' is a {actual} plugin, not a {expected} plugin")]
    WrongKind {
        plugin: String,
        expected: &'static str,
        actual: &'static str,
    },
    /// The plugin is no provider, or a provider that manages no resources.
    #[error(
        "plugin '{plugin}' manages no resources (a provider exports them by targeting the resource-provider-plugin world of WIT 0.1.1)"
    )]
    NoResources { plugin: String },
}

impl CallError {
    /// The plugin's own error, when that is what this is.
    pub fn plugin_error(&self) -> Option<&PluginError> {
        match self {
            CallError::Plugin { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// A plugin that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The plugin's bytes could not be found, read, or do not match their pin.
    #[error(transparent)]
    Source(#[from] crate::plugins::SourceError),
    #[error("plugin '{plugin}' is not a WebAssembly component this engine can compile: {message}")]
    NotAComponent { plugin: String, message: String },
    #[error(
        "plugin '{plugin}' exports none of engine:plugin/provider, /strategy or /health (it exports: {exports}); build it against the engine's WIT package with one of the three worlds"
    )]
    NotAPlugin { plugin: String, exports: String },
    #[error(
        "plugin '{plugin}' was built against WIT {package}@{plugin_version}, but this engine implements {package}@{host_version}; {advice}"
    )]
    IncompatibleWit {
        plugin: String,
        package: String,
        plugin_version: String,
        host_version: String,
        advice: String,
    },
    #[error(
        "plugin '{plugin}' is a {kind} plugin and imports {import}, which {kind} plugins cannot use{advice}"
    )]
    ForbiddenImport {
        plugin: String,
        kind: &'static str,
        import: String,
        /// How to build the plugin without it, where that is known (`; build it …`).
        advice: String,
    },
    #[error("plugin '{plugin}' cannot be linked: {message}")]
    Link { plugin: String, message: String },
    #[error("[plugins.{plugin}] {error}")]
    Grant { plugin: String, error: GrantError },
    #[error("plugin '{plugin}': {message}")]
    Sandbox { plugin: String, message: String },
    /// A granted secret cannot be read on this machine.
    #[error("plugin '{plugin}': {error}")]
    Secret {
        plugin: String,
        error: super::secrets::UnreadableSecret,
    },
    #[error("plugin '{plugin}' failed to describe itself: {error}")]
    Info { plugin: String, error: CallError },
}
