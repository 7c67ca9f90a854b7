//! What plugins say and what the sandbox refuses them, as events for the engine's output.
//!
//! Every string in an event has passed through the redactor.

use std::fmt;
use std::sync::{Arc, Mutex};

/// A capability a plugin asked for and did not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    /// Outbound HTTP to a destination not in `allow_http` (or not declared by the plugin).
    Http,
    /// A TCP connect to a destination not in `allow_tcp` (or not declared by the plugin).
    Tcp,
    /// A destination whose address is private, loopback, link-local or a metadata service.
    Address,
    /// A secret that is not granted, or not granted for the destination it was sent to.
    Secret,
    /// An environment variable.
    Env,
    /// A directory.
    Dir,
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Capability::Http => "http",
            Capability::Tcp => "tcp",
            Capability::Address => "address",
            Capability::Secret => "secret",
            Capability::Env => "env",
            Capability::Dir => "dir",
        })
    }
}

/// One refusal: names the plugin, the capability, what was asked and the grant that would allow it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub plugin: String,
    pub capability: Capability,
    /// What the plugin tried, such as `GET http://10.0.0.5/`.
    pub attempted: String,
    /// How to allow it, naming the pipeline.toml key to change.
    pub hint: String,
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "plugin '{}' was denied {} access: {}; {}",
            self.plugin, self.capability, self.attempted, self.hint
        )
    }
}

/// Which stream a plugin wrote to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Log levels, as in the WIT `log` interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// Something a plugin did that the user may need to see.
#[derive(Debug, Clone, PartialEq)]
pub enum PluginEvent {
    /// A line from the plugin's `log.write`.
    Log {
        plugin: String,
        level: LogLevel,
        message: String,
        fields: Vec<(String, String)>,
    },
    /// What the plugin printed to stdout or stderr during one call.
    Output {
        plugin: String,
        stream: Stream,
        text: String,
    },
    /// A capability the sandbox refused.
    Denied(Denial),
    /// A capability the plugin declares that the pipeline does not grant (or the reverse),
    /// noticed when the plugin loads.
    GrantMismatch { plugin: String, message: String },
    /// A granted secret this machine cannot read, noticed while only checking the pipeline
    /// (a real run fails to load the plugin instead).
    SecretUnreadable {
        plugin: String,
        error: super::secrets::UnreadableSecret,
    },
    /// A per-call limit stopped something (a response over `max_response`).
    LimitExceeded { plugin: String, message: String },
    /// In a dry run, a request that would change something, blocked.
    WouldCall {
        plugin: String,
        method: String,
        url: String,
    },
}

/// Receives plugin events. The CLI prints them; a CI runner embedding the engine can forward
/// them anywhere.
pub trait EventSink: Send + Sync {
    fn event(&self, event: PluginEvent);
}

/// Sends events to `tracing`, at the level they carry.
#[derive(Debug, Default)]
pub struct TracingSink;

impl EventSink for TracingSink {
    fn event(&self, event: PluginEvent) {
        match event {
            PluginEvent::Log {
                plugin,
                level,
                message,
                fields,
            } => {
                let fields = fields
                    .iter()
                    .map(|(k, v)| format!(" {k}={v}"))
                    .collect::<String>();
                match level {
                    LogLevel::Trace => {
                        tracing::trace!(target: "plugin", plugin, "{message}{fields}")
                    }
                    LogLevel::Debug => {
                        tracing::debug!(target: "plugin", plugin, "{message}{fields}")
                    }
                    LogLevel::Info => tracing::info!(target: "plugin", plugin, "{message}{fields}"),
                    LogLevel::Warn => tracing::warn!(target: "plugin", plugin, "{message}{fields}"),
                    LogLevel::Error => {
                        tracing::error!(target: "plugin", plugin, "{message}{fields}")
                    }
                }
            }
            PluginEvent::Output {
                plugin,
                stream,
                text,
            } => {
                for line in text.lines() {
                    tracing::debug!(plugin, ?stream, "{line}");
                }
            }
            PluginEvent::Denied(denial) => tracing::error!("{denial}"),
            PluginEvent::GrantMismatch { plugin, message } => tracing::warn!(plugin, "{message}"),
            PluginEvent::SecretUnreadable { plugin, error } => {
                tracing::warn!(plugin, "{error}; a real run will need it")
            }
            PluginEvent::LimitExceeded { plugin, message } => tracing::error!(plugin, "{message}"),
            PluginEvent::WouldCall {
                plugin,
                method,
                url,
            } => {
                tracing::info!(plugin, "dry run: would call {method} {url}")
            }
        }
    }
}

/// Keeps every event in memory; for tests and for embedding callers that inspect them later.
#[derive(Debug, Default, Clone)]
pub struct MemorySink {
    events: Arc<Mutex<Vec<PluginEvent>>>,
}

impl MemorySink {
    pub fn events(&self) -> Vec<PluginEvent> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Forgets what was recorded so far.
    pub fn clear(&self) {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    pub fn denials(&self) -> Vec<Denial> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                PluginEvent::Denied(d) => Some(d),
                _ => None,
            })
            .collect()
    }
}

impl EventSink for MemorySink {
    fn event(&self, event: PluginEvent) {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(event);
    }
}
