//! Where the build put what the tests and benchmarks use.

/// The directory of the compiled plugins, the test-only ones among them.
pub const PLUGINS_DIR: &str = env!("ENGINE_TESTING_PLUGINS");

/// The quickstart's demo service, a native program the local platform runs.
pub const DEMO_SERVICE: &str = env!("ENGINE_DEMO_SERVICE");
