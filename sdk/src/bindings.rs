//! Bindings generated from the WIT package in `wit/`.
//!
//! The host imports (types, log, clock, secrets, tcp) are generated once, from the `host-imports`
//! world, and each plugin world reuses them through `with`, so a type such as `ServiceSpec` is
//! the same Rust type whichever kind of plugin uses it. The WASI interfaces come from the
//! `wasip2` crate, the Bytecode Alliance's bindings for the same WASI release as `wit/deps`.

wit_bindgen::generate!({
    path: "../wit",
    world: "engine:plugin/host-imports",
    with: {
        "wasi:http/outgoing-handler@0.2.12": wasip2::http::outgoing_handler,
        "wasi:http/types@0.2.12": wasip2::http::types,
        "wasi:io/poll@0.2.12": wasip2::io::poll,
        "wasi:io/error@0.2.12": wasip2::io::error,
        "wasi:io/streams@0.2.12": wasip2::io::streams,
        "wasi:clocks/monotonic-clock@0.2.12": wasip2::clocks::monotonic_clock,
    },
    additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
});

/// The `provider-plugin` world.
pub mod provider {
    wit_bindgen::generate!({
        path: "../wit",
        world: "engine:plugin/provider-plugin",
        with: {
            "engine:plugin/types@0.1.1": crate::bindings::engine::plugin::types,
            "engine:plugin/log@0.1.1": crate::bindings::engine::plugin::log,
            "engine:plugin/clock@0.1.1": crate::bindings::engine::plugin::clock,
            "engine:plugin/secrets@0.1.1": crate::bindings::engine::plugin::secrets,
            "wasi:http/outgoing-handler@0.2.12": wasip2::http::outgoing_handler,
            "wasi:http/types@0.2.12": wasip2::http::types,
            "wasi:io/poll@0.2.12": wasip2::io::poll,
            "wasi:io/error@0.2.12": wasip2::io::error,
            "wasi:io/streams@0.2.12": wasip2::io::streams,
            "wasi:clocks/monotonic-clock@0.2.12": wasip2::clocks::monotonic_clock,
        },
        pub_export_macro: true,
        export_macro_name: "__export_provider_world",
        default_bindings_module: "engine_sdk::bindings::provider",
    });
}

/// The `strategy-plugin` world.
pub mod strategy {
    wit_bindgen::generate!({
        path: "../wit",
        world: "engine:plugin/strategy-plugin",
        with: {
            "engine:plugin/types@0.1.1": crate::bindings::engine::plugin::types,
            "engine:plugin/log@0.1.1": crate::bindings::engine::plugin::log,
        },
        additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
        pub_export_macro: true,
        export_macro_name: "__export_strategy_world",
        default_bindings_module: "engine_sdk::bindings::strategy",
    });
}

/// The `health-plugin` world.
pub mod health {
    wit_bindgen::generate!({
        path: "../wit",
        world: "engine:plugin/health-plugin",
        with: {
            "engine:plugin/types@0.1.1": crate::bindings::engine::plugin::types,
            "engine:plugin/log@0.1.1": crate::bindings::engine::plugin::log,
            "engine:plugin/clock@0.1.1": crate::bindings::engine::plugin::clock,
            "engine:plugin/secrets@0.1.1": crate::bindings::engine::plugin::secrets,
            "engine:plugin/tcp@0.1.1": crate::bindings::engine::plugin::tcp,
            "wasi:http/outgoing-handler@0.2.12": wasip2::http::outgoing_handler,
            "wasi:http/types@0.2.12": wasip2::http::types,
            "wasi:io/poll@0.2.12": wasip2::io::poll,
            "wasi:io/error@0.2.12": wasip2::io::error,
            "wasi:io/streams@0.2.12": wasip2::io::streams,
            "wasi:clocks/monotonic-clock@0.2.12": wasip2::clocks::monotonic_clock,
        },
        additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
        pub_export_macro: true,
        export_macro_name: "__export_health_world",
        default_bindings_module: "engine_sdk::bindings::health",
    });
}

/// The `resource-provider-plugin` world (WIT 0.1.1): a provider that also manages resources.
/// Generated from the `resource-exports` world: its `resources` export, beside the `provider`
/// export of [`provider`], makes a `resource-provider-plugin` component.
pub mod resource_provider {
    wit_bindgen::generate!({
        path: "../wit",
        world: "engine:plugin/resource-exports",
        with: {
            "engine:plugin/types@0.1.1": crate::bindings::engine::plugin::types,
            "engine:plugin/log@0.1.1": crate::bindings::engine::plugin::log,
            "engine:plugin/clock@0.1.1": crate::bindings::engine::plugin::clock,
            "engine:plugin/secrets@0.1.1": crate::bindings::engine::plugin::secrets,
            "wasi:http/outgoing-handler@0.2.12": wasip2::http::outgoing_handler,
            "wasi:http/types@0.2.12": wasip2::http::types,
            "wasi:io/poll@0.2.12": wasip2::io::poll,
            "wasi:io/error@0.2.12": wasip2::io::error,
            "wasi:io/streams@0.2.12": wasip2::io::streams,
            "wasi:clocks/monotonic-clock@0.2.12": wasip2::clocks::monotonic_clock,
        },
        additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
        pub_export_macro: true,
        export_macro_name: "__export_resource_provider_world",
        default_bindings_module: "engine_sdk::bindings::resource_provider",
    });
}
