//! A provider built against the released WIT 0.1.0 (`wit/released/0.1.0`), as a third party's
//! plugin from before 0.1.1 is: it exports `engine:plugin/provider@0.1.0` and imports the 0.1.0
//! host interfaces. The engine implements 0.1.1 and must load it and call it all the same.
//!
//! Its platform holds nothing: `read` finds no service, `plan` would create it, and the rest
//! say they are not implemented.

wit_bindgen::generate!({
    path: "../../../wit/released/0.1.0",
    world: "engine:plugin/provider-plugin",
    generate_all,
});

use engine::plugin::types::{
    Capabilities, DeploymentPlan, Diagnostic, Endpoint, Error, PlanAction, PluginInfo, Revision,
    ServiceRef, ServiceSpec, ServiceStatus, TrafficTarget,
};

struct OldProvider;

fn unsupported(what: &str) -> Error {
    Error::Fatal(format!("the 0.1.0 test provider does not {what}"))
}

impl exports::engine::plugin::provider::Guest for OldProvider {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "old-provider".into(),
            version: "0.1.0".into(),
            description: "Built against WIT 0.1.0".into(),
            config_schema: r#"{"type":"object"}"#.into(),
            features: vec![],
            capabilities: Capabilities {
                http: vec![],
                env: vec![],
                dirs: vec![],
                secrets: vec![],
            },
        }
    }
    fn validate(_spec: ServiceSpec) -> Vec<Diagnostic> {
        vec![]
    }
    fn read(_service: ServiceRef) -> Result<Option<ServiceStatus>, Error> {
        engine::plugin::log::write(
            engine::plugin::log::Level::Info,
            "read by a 0.1.0 plugin",
            &[],
        );
        Ok(None)
    }
    fn plan(
        desired: ServiceSpec,
        _current: Option<ServiceStatus>,
    ) -> Result<DeploymentPlan, Error> {
        Ok(DeploymentPlan {
            action: PlanAction::Create,
            changes: vec![],
            summary: format!("a 0.1.0 plugin would create {}", desired.name),
        })
    }
    fn deploy(_spec: ServiceSpec, _deployment_id: String) -> Result<Revision, Error> {
        Err(unsupported("deploy"))
    }
    fn set_traffic(_service: ServiceRef, _split: Vec<TrafficTarget>) -> Result<(), Error> {
        Err(unsupported("set traffic"))
    }
    fn get_traffic(_service: ServiceRef) -> Result<Vec<TrafficTarget>, Error> {
        Ok(vec![])
    }
    fn endpoints(_service: ServiceRef, _revision: Option<String>) -> Result<Vec<Endpoint>, Error> {
        Ok(vec![])
    }
    fn retire(_service: ServiceRef, _revision: String) -> Result<(), Error> {
        Ok(())
    }
    fn destroy(_service: ServiceRef) -> Result<(), Error> {
        Ok(())
    }
}

export!(OldProvider);
