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
//! - [`conformance`]: `engine plugins check`, a plugin run through its kind's contract.
//! - [`cli`]: the `engine` command line, a thin layer over the above.
//!
//! `run`, `report` and `cli` are this crate's; the others are `engine-core`'s (`host/core`),
//! re-exported here, so a change to the executor does not rebuild the runtime.

pub mod cli;
pub mod conformance;
pub mod report;
pub mod run;

pub use engine_core::{
    build_info, config, grants, graph, lockfile, plugins, port, redact, runtime, state,
};
