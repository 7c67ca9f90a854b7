//! The engine: deploys multi-service systems through sandboxed WebAssembly plugins.
//!
//! - [`runtime`]: the plugin runtime (wasmtime, capabilities, limits, secrets).
//! - [`plugins`]: where plugins come from (built in, or a pinned `.wasm` file).
//! - [`cli`]: the `engine` command line, a thin layer over the above.

pub mod cli;
pub mod plugins;
pub mod runtime;
