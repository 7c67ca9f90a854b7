//! Host bindings for the WIT package in `wit/`, one module per plugin world.
//!
//! The `provider-plugin` world is generated in full; the strategy and health worlds reuse its
//! shared interfaces through `with`, so `types::ServiceSpec` and friends are one Rust type and
//! the host imports are implemented once.

/// The `provider-plugin` world and the shared interfaces.
pub mod provider {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "engine:plugin/provider-plugin",
        imports: { default: async | trappable },
        exports: { default: async },
        additional_derives: [PartialEq],
        with: {
            "wasi:http": wasmtime_wasi_http::p2::bindings::http,
            "wasi:io": wasmtime_wasi::p2::bindings::io,
            "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
            "engine:plugin/secrets.secret": crate::runtime::secrets::SecretHandle,
        },
    });
}

/// The `strategy-plugin` world.
pub mod strategy {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "engine:plugin/strategy-plugin",
        imports: { default: async | trappable },
        exports: { default: async },
        additional_derives: [PartialEq],
        with: {
            "engine:plugin/types": super::provider::engine::plugin::types,
            "engine:plugin/log": super::provider::engine::plugin::log,
        },
    });
}

/// The `health-plugin` world.
pub mod health {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "engine:plugin/health-plugin",
        imports: { default: async | trappable },
        exports: { default: async },
        additional_derives: [PartialEq],
        with: {
            "wasi:http": wasmtime_wasi_http::p2::bindings::http,
            "wasi:io": wasmtime_wasi::p2::bindings::io,
            "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
            "engine:plugin/types": super::provider::engine::plugin::types,
            "engine:plugin/log": super::provider::engine::plugin::log,
            "engine:plugin/clock": super::provider::engine::plugin::clock,
            "engine:plugin/secrets": super::provider::engine::plugin::secrets,
        },
    });
}

/// The `resource-provider-plugin` world (0.1.1): a provider that also exports `resources`. The
/// host binds only its `resources` export from here; the provider calls go through
/// [`provider`], whatever world the plugin was built for.
pub mod resource_provider {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "engine:plugin/resource-provider-plugin",
        imports: { default: async | trappable },
        exports: { default: async },
        additional_derives: [PartialEq],
        with: {
            "wasi:http": wasmtime_wasi_http::p2::bindings::http,
            "wasi:io": wasmtime_wasi::p2::bindings::io,
            "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
            "engine:plugin/types": super::provider::engine::plugin::types,
            "engine:plugin/log": super::provider::engine::plugin::log,
            "engine:plugin/clock": super::provider::engine::plugin::clock,
            "engine:plugin/secrets": super::provider::engine::plugin::secrets,
        },
    });
}

pub use provider::engine::plugin::types;
