//! The Rust SDK for engine plugins.
//!
//! A plugin is a WebAssembly component that implements one of three worlds of the WIT package
//! `engine:plugin@0.1.1`: a **provider** (a platform such as Cloud Run), a **strategy** (how a
//! new revision replaces the old one) or a **health** check. With this crate a plugin author
//! implements one trait and calls one export macro:
//!
//! ```no_run
//! use engine_sdk::strategy::{Decision, Observation, Rollout, StepResult};
//! use engine_sdk::{Capabilities, Diagnostic, Error, PluginInfo, Strategy, TrafficTarget};
//!
//! struct Instant;
//!
//! impl Strategy for Instant {
//!     fn info() -> PluginInfo {
//!         PluginInfo {
//!             name: "instant".into(),
//!             version: "0.1.0".into(),
//!             description: "All traffic to the new revision, no checks".into(),
//!             config_schema: r#"{"type":"object"}"#.into(),
//!             features: vec![],
//!             capabilities: Capabilities::none(),
//!         }
//!     }
//!     fn validate(_config: String) -> Vec<Diagnostic> {
//!         vec![]
//!     }
//!     fn step(rollout: Rollout, state: Option<String>, _seen: Observation, _now: u64) -> Result<StepResult, Error> {
//!         let decision = match state {
//!             None => Decision::SetTraffic(vec![TrafficTarget { revision: rollout.candidate, percent: 100 }]),
//!             Some(_) => Decision::Done,
//!         };
//!         Ok(StepResult { state: "started".into(), decision, phase: "instant".into() })
//!     }
//! }
//!
//! engine_sdk::export_strategy!(Instant);
//! ```
//!
//! and builds it as a component with
//!
//! ```sh
//! rustup target add wasm32-wasip2
//! cargo rustc --release --lib --crate-type cdylib --target wasm32-wasip2
//! ```
//!
//! (a plain `cargo build --target wasm32-wasip2` builds an rlib, no component; and keep
//! `crate-type = ["cdylib"]` out of Cargo.toml, where it breaks the native test build). The
//! component is `target/wasm32-wasip2/release/NAME.wasm`; see docs/plugin-authoring.md.
//!
//! Durations in a plugin's configuration are read with [`duration::parse`], which bounds them.
//!
//! The host imports have Rust wrappers here: [`log`], [`clock`], [`secrets`], [`tcp`] (health
//! checks only) and an HTTP client with retries in [`http`]. Each also works outside
//! WebAssembly, so the plugin's logic can be tested natively with `cargo test` (see [`testing`]).

#[cfg(feature = "aws")]
pub mod aws;
pub mod bindings;
pub mod clock;
pub mod duration;
pub mod error;
pub mod health;
pub mod http;
#[cfg(feature = "kubernetes")]
pub mod kubernetes;
pub mod log;
pub mod secrets;
pub mod tcp;
pub mod testing;

pub use bindings::engine::plugin::types::*;
pub use error::ErrorExt;

/// The trait a provider plugin implements: one function per export of the `provider` interface.
pub use bindings::provider::exports::engine::plugin::provider::Guest as Provider;

/// The trait a provider that manages resources (WIT 0.1.1) implements besides [`Provider`]
/// (`Resources` is the CPU and memory of a service spec).
pub use bindings::resource_provider::exports::engine::plugin::resources::Guest as ResourceProvider;

/// The types of the `resources` interface: kinds, specs and statuses.
pub mod resources {
    pub use crate::bindings::resource_provider::exports::engine::plugin::resources::{
        ResourceKind, ResourceSpec, ResourceStatus,
    };
}

/// The trait a strategy plugin implements.
pub use bindings::strategy::exports::engine::plugin::strategy::Guest as Strategy;

/// The trait a health-check plugin implements.
pub use bindings::health::exports::engine::plugin::health::Guest as Health;

/// Types used only by strategies: the rollout, observations, decisions; and the judgement
/// every strategy makes of an analysis.
pub mod strategy {
    pub use crate::bindings::strategy::exports::engine::plugin::strategy::{
        AnalysisRequest, CheckOutcome, Decision, Observation, Rollout, StepResult,
    };

    /// The checks of an analysis that fail it, as `name (message)` joined by `; `, or `None`
    /// when it passes. An inconclusive check fails only with `fail_on_inconclusive`.
    pub fn failing_checks(outcomes: &[CheckOutcome], fail_on_inconclusive: bool) -> Option<String> {
        use crate::Verdict;
        let failing: Vec<String> = outcomes
            .iter()
            .filter(|o| match o.verdict {
                Verdict::Healthy => false,
                Verdict::Unhealthy => true,
                Verdict::Inconclusive => fail_on_inconclusive,
            })
            .map(|o| format!("{} ({})", o.name, o.message))
            .collect();
        (!failing.is_empty()).then(|| failing.join("; "))
    }

    /// The end every strategy shares once the candidate has passed its gates: promote it,
    /// retire the previous revision (when there is one and the strategy retires it), done.
    /// Keep the stage in the strategy's state and let [`Finish::next`] decide each step, so
    /// that every strategy ends a rollout the same way (never retiring the candidate itself).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
    #[serde(rename_all = "kebab-case")]
    pub enum Finish {
        /// Promotion was asked for.
        Promoting,
        /// Retiring the previous revision was asked for.
        Retiring,
        /// The rollout is finished.
        Done,
    }

    /// A stage of the finish with the decision that enters it and the label for the user.
    pub type FinishStep = (Finish, Decision, String);

    impl Finish {
        /// The first step of the finish: promotion.
        pub fn start() -> FinishStep {
            (Finish::Promoting, Decision::Promote, "promoting".into())
        }

        /// The step after this stage once the host reports `observation`; `None` when the
        /// observation does not follow this stage (the strategy reports that as its error).
        pub fn next(
            self,
            rollout: &Rollout,
            observation: &Observation,
            retire_previous: bool,
        ) -> Option<FinishStep> {
            let done = || (Finish::Done, Decision::Done, "done".to_string());
            match (self, observation) {
                (Finish::Promoting, Observation::Promoted) => Some(match &rollout.stable {
                    Some(old) if retire_previous && *old != rollout.candidate => (
                        Finish::Retiring,
                        Decision::Retire(old.clone()),
                        format!("retiring {old}"),
                    ),
                    _ => done(),
                }),
                (Finish::Retiring, Observation::Retired(_)) => Some(done()),
                _ => None,
            }
        }
    }
}

/// The plan for an existing service, comparing the deployed form the provider stored
/// (`service-status.deployed`, JSON) with the desired one, field by field: `no-change` when
/// every listed field is equal, otherwise `update` with one [`Change`] per field that differs.
/// Where both sides of a field are JSON objects (`env`, `labels`), the change is listed per key
/// (`env.LOG_LEVEL`), so one changed variable does not print the whole map.
/// A field that is `null` counts as unset: `null` and a missing field are the same.
pub fn update_plan(deployed: &str, desired: &serde_json::Value, fields: &[&str]) -> DeploymentPlan {
    let before: serde_json::Value = serde_json::from_str(deployed).unwrap_or_default();
    let mut changes = Vec::new();
    for field in fields {
        // A null field is an unset one, on either side.
        let set = |v: &&serde_json::Value| !v.is_null();
        let (old, new) = (
            before.get(*field).filter(set),
            desired.get(*field).filter(set),
        );
        if old == new {
            continue;
        }
        match (old, new) {
            (Some(serde_json::Value::Object(a)), Some(serde_json::Value::Object(b))) => {
                let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
                for key in keys.into_iter().filter(|k| a.get(*k) != b.get(*k)) {
                    changes.push(Change {
                        field: format!("{field}.{key}"),
                        before: a.get(key).map(|v| v.to_string()),
                        after: b.get(key).map(|v| v.to_string()),
                    });
                }
            }
            _ => changes.push(Change {
                field: field.to_string(),
                before: old.map(|v| v.to_string()),
                after: new.map(|v| v.to_string()),
            }),
        }
    }
    DeploymentPlan {
        action: if changes.is_empty() {
            PlanAction::NoChange
        } else {
            PlanAction::Update
        },
        summary: format!("{} change(s)", changes.len()),
        changes,
    }
}

/// The plan for a service that does not exist yet: `create`, with one [`Change`] per listed field
/// the desired form sets (not null, not an empty object or list), and `summary`.
pub fn create_plan(
    desired: &serde_json::Value,
    fields: &[&str],
    summary: String,
) -> DeploymentPlan {
    let changes = fields
        .iter()
        .filter(|f| match &desired[**f] {
            serde_json::Value::Null => false,
            serde_json::Value::Object(o) => !o.is_empty(),
            serde_json::Value::Array(a) => !a.is_empty(),
            _ => true,
        })
        .map(|f| Change {
            field: f.to_string(),
            before: None,
            after: Some(desired[*f].to_string()),
        })
        .collect();
    DeploymentPlan {
        action: PlanAction::Create,
        changes,
        summary,
    }
}

/// What `validate` returns for a configuration that parsed (`Ok`) or did not (`Err`): nothing,
/// or one error diagnostic for the whole configuration with an optional hint.
pub fn config_diagnostics<T>(parsed: Result<T, Error>, hint: Option<&str>) -> Vec<Diagnostic> {
    match parsed {
        Ok(_) => Vec::new(),
        Err(e) => vec![Diagnostic {
            severity: Severity::Error,
            path: String::new(),
            message: e.describe(),
            hint: hint.map(String::from),
        }],
    }
}

/// The version of the WIT package this SDK implements.
pub const WIT_VERSION: &str = "0.1.1";

/// Exports a type implementing [`Provider`] as the plugin's `provider` interface.
#[macro_export]
macro_rules! export_provider {
    ($plugin:ident) => {
        $crate::bindings::provider::__export_provider_world!($plugin with_types_in $crate::bindings::provider);
    };
}

/// Exports a type implementing [`Provider`] and [`ResourceProvider`] as the plugin's `provider` and
/// `resources` interfaces (the `resource-provider-plugin` world of WIT 0.1.1).
#[macro_export]
macro_rules! export_resource_provider {
    ($plugin:ident) => {
        $crate::bindings::provider::__export_provider_world!($plugin with_types_in $crate::bindings::provider);
        $crate::bindings::resource_provider::__export_resource_provider_world!($plugin with_types_in $crate::bindings::resource_provider);
    };
}

/// Exports a type implementing [`Strategy`] as the plugin's `strategy` interface.
#[macro_export]
macro_rules! export_strategy {
    ($plugin:ident) => {
        $crate::bindings::strategy::__export_strategy_world!($plugin with_types_in $crate::bindings::strategy);
    };
}

/// Exports a type implementing [`Health`] as the plugin's `health` interface.
#[macro_export]
macro_rules! export_health {
    ($plugin:ident) => {
        $crate::bindings::health::__export_health_world!($plugin with_types_in $crate::bindings::health);
    };
}

impl Capabilities {
    /// No capability at all: what a strategy, or a pure provider, declares.
    pub fn none() -> Self {
        Capabilities {
            http: Vec::new(),
            env: Vec::new(),
            dirs: Vec::new(),
            secrets: Vec::new(),
        }
    }
}
