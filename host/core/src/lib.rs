//! The engine below its executor: what a pipeline says, what it grants, the plugin runtime that
//! enforces it, and the state. The `engine` crate builds the executor, the reports and the
//! command line on top of it, and re-exports these modules under its own name.
//!
//! - [`config`]: pipeline.toml, parsed and validated; [`graph`]: deployment order.
//! - [`grants`]: what a pipeline grants a plugin (hosts, directories, secrets, limits), parsed.
//! - [`port`]: the executor's view of platforms and strategies, in domain types.
//! - [`runtime`]: the plugin runtime (wasmtime, capabilities, limits, secrets).
//! - [`lockfile`]: engine.lock, what each plugin is and may do, pinned.
//! - [`plugins`]: where plugins come from (built in, or a pinned `.wasm` file).
//! - [`state`]: runs, checkpoints, revision history and locks, in SQLite or PostgreSQL.
//! - [`redact`]: secret values kept out of output, state and what plugins read.

pub mod build_info;
pub mod config;
pub mod grants;
pub mod graph;
pub mod lockfile;
pub mod plugins;
pub mod port;
pub mod redact;
pub mod runtime;
pub mod state;
