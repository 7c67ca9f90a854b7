//! What the state keeps of resources (provisioning steps): the last spec applied, the
//! platform's id, the outputs, and whether the engine created the object, which alone lets
//! `destroy` delete it.

use super::{StateError, Store, now_ms};
use crate::redact::redactor;
use std::collections::BTreeMap;

/// A resource as the last run that applied it left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceRecord {
    pub name: String,
    pub provider: String,
    pub kind: String,
    /// The platform's identifier.
    pub platform_id: String,
    /// The spec applied (JSON, references filled in) and the provider configuration.
    pub spec: String,
    pub config: String,
    pub outputs: BTreeMap<String, String>,
    /// The engine created it (it did not exist when first applied); only then may `destroy`
    /// delete it.
    pub created: bool,
    /// [`crate::config::Resource::digest`] of what was applied.
    pub digest: String,
    pub run_id: Option<i64>,
    pub updated_ms: i64,
}

impl Store {
    /// Records a resource a run applied (or found unchanged). Whether the engine created it
    /// is kept from the first record: an object found existing stays someone else's.
    pub async fn record_resource(
        &self,
        pipeline: &str,
        environment: &str,
        record: &ResourceRecord,
    ) -> Result<(), StateError> {
        let outputs = serde_json::to_string(&record.outputs).unwrap_or_else(|_| "{}".into());
        let redact = |text: &str| redactor().redact(text);
        self.query(
            "INSERT INTO resources (pipeline, environment, name, provider, kind, platform_id, spec, config, outputs, created, digest, run_id, updated_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
             ON CONFLICT (pipeline, environment, name) DO UPDATE SET
               provider = excluded.provider, kind = excluded.kind,
               platform_id = excluded.platform_id, spec = excluded.spec, config = excluded.config,
               outputs = excluded.outputs, digest = excluded.digest, run_id = excluded.run_id,
               updated_ms = excluded.updated_ms",
            &[
                pipeline.into(),
                environment.into(),
                record.name.as_str().into(),
                record.provider.as_str().into(),
                record.kind.as_str().into(),
                record.platform_id.as_str().into(),
                redact(&record.spec).into(),
                redact(&record.config).into(),
                redact(&outputs).into(),
                i64::from(record.created).into(),
                record.digest.as_str().into(),
                record.run_id.into(),
                now_ms().into(),
            ],
        )
        .await?;
        Ok(())
    }

    /// The resources recorded for a pipeline and environment, by name.
    pub async fn resources(
        &self,
        pipeline: &str,
        environment: &str,
    ) -> Result<Vec<ResourceRecord>, StateError> {
        let rows = self
            .query(
                "SELECT name, provider, kind, platform_id, spec, config, outputs, created, digest, run_id, updated_ms
                 FROM resources WHERE pipeline = $1 AND environment = $2 ORDER BY name",
                &[pipeline.into(), environment.into()],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| ResourceRecord {
                name: r.text(0).unwrap_or_default(),
                provider: r.text(1).unwrap_or_default(),
                kind: r.text(2).unwrap_or_default(),
                platform_id: r.text(3).unwrap_or_default(),
                spec: r.text(4).unwrap_or_default(),
                config: r.text(5).unwrap_or_default(),
                outputs: r
                    .text(6)
                    .and_then(|o| serde_json::from_str(&o).ok())
                    .unwrap_or_default(),
                created: r.int(7) == Some(1),
                digest: r.text(8).unwrap_or_default(),
                run_id: r.int(9),
                updated_ms: r.int(10).unwrap_or(0),
            })
            .collect())
    }

    /// One recorded resource.
    pub async fn resource(
        &self,
        pipeline: &str,
        environment: &str,
        name: &str,
    ) -> Result<Option<ResourceRecord>, StateError> {
        let all = self.resources(pipeline, environment).await?;
        Ok(all.into_iter().find(|r| r.name == name))
    }

    /// Forgets a resource that was deleted.
    pub async fn forget_resource(
        &self,
        pipeline: &str,
        environment: &str,
        name: &str,
    ) -> Result<(), StateError> {
        self.query(
            "DELETE FROM resources WHERE pipeline = $1 AND environment = $2 AND name = $3",
            &[pipeline.into(), environment.into(), name.into()],
        )
        .await?;
        Ok(())
    }
}
