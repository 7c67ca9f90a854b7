//! One resource's turn in a run: read it, plan it, apply it when the plan changes something,
//! and record what the platform then holds. Every provider call is idempotent, so a resumed run
//! simply does the same again; a resource needs no checkpoint of its own.

use super::rollout::{Executor, retry};
use super::{Outcome, ServiceReport};
use crate::config::Resource;
use crate::port::{PlanAction, ResourceState};
use crate::state::ResourceRecord;
use std::sync::atomic::Ordering;
use std::time::Instant;

impl Executor<'_> {
    /// Applies a resource whose references are filled in.
    pub(super) async fn resource(&self, resource: &Resource) -> ServiceReport {
        let start = Instant::now();
        let (outcome, id) = match self.apply_resource(resource).await {
            Ok((outcome, id)) => (outcome, id),
            Err(reason) => (Outcome::Failed(reason), None),
        };
        ServiceReport {
            service: resource.name.clone(),
            resource: Some(resource.kind.clone()),
            outcome,
            revision: id,
            traffic: 0,
            checks_passed: 0,
            checks_run: 0,
            elapsed: start.elapsed(),
            warnings: Vec::new(),
        }
    }

    async fn apply_resource(
        &self,
        resource: &Resource,
    ) -> Result<(Outcome, Option<String>), String> {
        let name = resource.name.as_str();
        let platform = self.ports.resource(resource).map_err(|e| e.message)?;
        self.phase(name, "planning", 0);
        let current = retry(|| platform.read()).await?;
        let plan = retry(|| platform.plan(current.as_ref())).await?;
        let existed = current.is_some();
        let (outcome, state) = match current {
            Some(current) if plan.action == PlanAction::NoChange => (Outcome::Unchanged, current),
            current => {
                if self.is_interrupted() {
                    let reason = "the run was interrupted before it was applied; the next `engine run` applies it";
                    return Ok((Outcome::Interrupted(reason.into()), None));
                }
                self.phase(name, plan.action.label(), 0);
                let applied = retry(|| platform.apply(current.as_ref())).await?;
                (Outcome::Deployed, applied)
            }
        };
        self.record_resource(resource, &state, existed).await?;
        self.known.set_outputs(name, state.outputs.clone());
        Ok((outcome, Some(state.id)))
    }

    /// Records what the platform holds. The engine created the object if it did not exist
    /// when the engine first applied it; an object found existing is never the engine's to
    /// delete, whatever later runs do.
    async fn record_resource(
        &self,
        resource: &Resource,
        state: &ResourceState,
        existed: bool,
    ) -> Result<(), String> {
        let (pipeline, environment) = (&self.pipeline.name, &self.environment);
        let earlier = self
            .earlier
            .resource(pipeline, environment, &resource.name)
            .await
            .map_err(|e| e.to_string())?;
        let record = ResourceRecord {
            name: resource.name.clone(),
            provider: resource.provider.clone(),
            kind: resource.kind.clone(),
            platform_id: state.id.clone(),
            spec: resource.spec.to_string(),
            config: resource.provider_config.to_string(),
            outputs: state.outputs.clone(),
            created: earlier.map_or(!existed, |e| e.created),
            digest: resource.digest(),
            run_id: Some(self.run_id),
            updated_ms: 0,
        };
        let recorded = self
            .store
            .record_resource(pipeline, environment, &record)
            .await;
        recorded.map_err(|e| {
            self.state_failed.store(true, Ordering::Relaxed);
            format!(
                "{} is applied, but the state could not record it ({e}); the next `engine run` records it",
                state.id
            )
        })
    }
}
