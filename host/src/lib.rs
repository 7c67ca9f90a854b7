//! The engine: deploys multi-service systems through sandboxed WebAssembly plugins.
//!
//! - [`config`]: pipeline.toml, parsed and validated; [`graph`]: deployment order.
//! - [`grants`]: what a pipeline grants a plugin (hosts, directories, secrets, limits), parsed.
//! - [`port`]: the executor's view of platforms and strategies, in domain types.
//! - [`runtime`]: the plugin runtime (wasmtime, capabilities, limits, secrets).
//! - [`plugins`]: where plugins come from (built in, or a pinned `.wasm` file).
//! - [`run`]: the executor: dependency order, strategies, health analysis, rollback.
//! - [`state`]: runs, checkpoints, revision history and locks, in SQLite or PostgreSQL.
//! - [`redact`]: secret values kept out of output, state and what plugins read.
//! - [`report`]: live progress, event lines, JSON events, JUnit and CI annotations.
//! - [`cli`]: the `engine` command line, a thin layer over the above.

pub mod cli;
pub mod config;
pub mod grants;
pub mod graph;
pub mod plugins;
pub mod port;
pub mod redact;
pub mod report;
pub mod run;
pub mod runtime;
pub mod state;
