//! Where the build put what the tests and benchmarks use.

/// The directory of the compiled plugins, the test-only ones among them.
pub const PLUGINS_DIR: &str = env!("ENGINE_TESTING_PLUGINS");

/// The quickstart's demo service, a native program the local platform runs.
pub const DEMO_SERVICE: &str = env!("ENGINE_DEMO_SERVICE");

/// The Rust SDK's source, which `engine plugins new --lang rust` points a new project at.
pub const SDK_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../sdk");
