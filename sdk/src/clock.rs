//! The engine's clock (simulated during `engine plan`).

/// Milliseconds since the Unix epoch, as the host sees them.
pub fn now_ms() -> u64 {
    #[cfg(target_arch = "wasm32")]
    {
        crate::bindings::engine::plugin::clock::now_ms()
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        crate::testing::native_now_ms()
    }
}
