//! The local platform's admin API, version 1: the JSON the platform serves and the `local`
//! provider plugin sends. One crate for both, so they cannot drift apart. It depends on serde
//! alone, so it builds for the plugin's WebAssembly target too.
//!
//! | method and path | body | answer |
//! |---|---|---|
//! | `GET /v1/health` | | [`Health`] |
//! | `GET /v1/services` | | `[`[`ServiceView`]`]` |
//! | `GET /v1/services/{service}` | | [`ServiceView`], 404 if unknown |
//! | `PUT /v1/services/{service}/revisions/{revision}` | [`RevisionRequest`] | [`RevisionView`] once ready (201), or the existing one (200); 422 with [`ApiError`] if it cannot start |
//! | `DELETE /v1/services/{service}/revisions/{revision}` | | 204; 409 while it takes traffic |
//! | `PUT /v1/services/{service}/traffic` | `[`[`Weight`]`]` | [`ServiceView`]; 409 for an unknown or unready revision, 422 unless the weights add up to 100 |
//! | `DELETE /v1/services/{service}` | | 204 (stops every revision) |
//! | `GET /v1/services/{service}/revisions/{revision}/metrics?since_ms=N` | | [`Metrics`] |
//! | `GET /metrics` | | every revision's request counters and latency histogram, OpenMetrics text for Prometheus |
//! | `POST /v1/secret-files` | `["/absolute/path", …]` | 204; `file:` secret references may read these files (the engine registers those its pipeline names) |
//! | `POST /v1/shutdown` | | 202; the platform stops its processes and exits |
//!
//! Every call except `GET /v1/health` and the two metrics reads needs the platform's access
//! token as `Authorization: Bearer <token>` ([`SECRET_NAME`]); without it the answer is 401.
//! Errors are [`ApiError`] with a fitting status code.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The name under which the engine gives its own `local` provider the platform's access token,
/// as a host-brokered secret: the plugin holds a placeholder, the host puts the value into
/// requests to the admin address only.
pub const SECRET_NAME: &str = "local-platform-token";

/// The default admin address (loopback only).
pub const DEFAULT_ADMIN: &str = "http://localhost:7700";

/// `GET /v1/health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub version: String,
    pub pid: u32,
    /// Where revision logs are kept.
    pub logs: String,
}

/// Asks for a revision: what to run and how many copies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RevisionRequest {
    /// The program: an absolute path, or a name looked up on the platform's `PATH`.
    pub command: String,
    /// Its arguments; `{port}` is replaced by the instance's port.
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment variables, on top of `PORT` (the instance's port) and `ENGINE_REVISION`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Environment variables whose values the platform reads itself when it starts the revision:
    /// variable name → `env:NAME` (the platform's own environment) or `file:/absolute/path`
    /// (trailing newline removed). Only references cross the API; values never do.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    /// Copies of the process, each on its own port, behind the revision's URL.
    #[serde(default = "one")]
    pub instances: u32,
    /// What the revision runs, for people (the artifact).
    #[serde(default)]
    pub artifact: String,
    /// The deployed form the provider compares in `plan`; stored and returned as is.
    #[serde(default)]
    pub spec: serde_json::Value,
    /// How long to wait for every instance to accept connections, in milliseconds.
    #[serde(default = "ready_timeout")]
    pub ready_timeout_ms: u64,
    /// The port of the service's front door, when the service is created by this request;
    /// none for any free port.
    #[serde(default)]
    pub front_port: Option<u16>,
}

fn one() -> u32 {
    1
}

fn ready_timeout() -> u64 {
    20_000
}

/// Where a revision is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RevisionState {
    /// Its processes are starting and not yet accepting connections.
    Starting,
    /// Every instance accepts connections.
    Ready,
    /// An instance exited and is being restarted.
    Degraded,
    /// It could not start (a missing command, a process that keeps exiting).
    Failed,
}

/// One process of a revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceView {
    pub pid: Option<u32>,
    pub port: u16,
    pub restarts: u32,
    /// The last exit, such as `exit status: 1`.
    pub last_exit: Option<String>,
}

/// One revision, as the platform reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RevisionView {
    pub id: String,
    pub artifact: String,
    pub created_at_ms: u64,
    pub state: RevisionState,
    /// Why it is not ready, with the last lines of its log.
    pub message: Option<String>,
    /// Reaches this revision alone, whatever its share of traffic.
    pub url: String,
    /// Its log file.
    pub log: String,
    pub instances: Vec<InstanceView>,
    pub spec: serde_json::Value,
}

/// A revision's share of a service's requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Weight {
    pub revision: String,
    pub percent: u8,
}

/// A service: its front door, revisions (newest first) and traffic split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceView {
    pub name: String,
    /// The front door, which splits requests by the weights.
    pub url: String,
    pub revisions: Vec<RevisionView>,
    pub traffic: Vec<Weight>,
}

/// What the front door and the revision URL saw of one revision's requests.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub requests: u64,
    /// Requests by status class: `2xx`, `3xx`, `4xx`, `5xx` (a revision that could not be
    /// reached counts as `5xx`).
    pub status: BTreeMap<String, u64>,
    /// 5xx answers as a percentage of requests; 0 without requests.
    pub error_rate_percent: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    /// The window: requests that finished at or after this time (ms since the epoch).
    pub since_ms: u64,
}

/// An error answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

/// Reads a secret reference (`env:NAME` or `file:/absolute/path`) in the platform's process.
/// The error says what is missing and how to provide it.
pub fn resolve_secret(reference: &str) -> Result<String, String> {
    if let Some(name) = reference.strip_prefix("env:") {
        return std::env::var(name).map_err(|_| {
            format!(
                "environment variable {name} is not set for the local platform (it has the environment of the `engine local up` or first `engine run` that started it; restart it with `engine local down` after setting {name})"
            )
        });
    }
    if let Some(path) = reference.strip_prefix("file:") {
        if !path.starts_with('/') {
            return Err(format!(
                "{reference:?}: the file must be an absolute path, such as file:/run/secrets/token"
            ));
        }
        return std::fs::read_to_string(path)
            .map(|v| v.strip_suffix('\n').unwrap_or(&v).to_string())
            .map_err(|e| format!("cannot read {path}: {e}"));
    }
    Err(format!(
        "{reference:?} is not a local secret reference; write env:NAME or file:/absolute/path"
    ))
}

/// Whether a reference has a form [`resolve_secret`] understands (without reading it).
pub fn is_secret_reference(reference: &str) -> bool {
    reference
        .strip_prefix("env:")
        .is_some_and(|n| !n.is_empty())
        || reference
            .strip_prefix("file:")
            .is_some_and(|p| p.starts_with('/'))
}
