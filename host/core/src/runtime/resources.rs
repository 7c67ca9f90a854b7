//! Typed calls into a provider's `resources` interface (WIT 0.1.1), with every answer checked
//! as hostile input: bounded sizes, printable names, no secret in what is stored or printed.

use super::RuntimeShared;
use super::bindings::resource_provider::ResourceProviderPluginPre;
use super::bindings::resource_provider::exports::engine::plugin::resources as wit;
use super::bindings::types;
use super::error::CallError;
use super::plugin::{KindPre, PluginInner, invoke, malformed, plugin_error};
use super::store::{PluginState, Sandbox};
use super::untrusted;
use std::sync::Arc;

pub use wit::{ResourceKind, ResourceSpec, ResourceStatus};

/// The most kinds one provider may list.
pub const MAX_KINDS: usize = 64;
/// The most outputs one resource may have.
pub const MAX_OUTPUTS: usize = 64;
/// The most bytes of what a provider says it observed of one resource.
pub const MAX_OBSERVED: usize = 256 << 10;
/// The most bytes of one kind's spec schema.
pub const MAX_SCHEMA: usize = 256 << 10;

/// Typed calls into a provider's resources.
pub struct Resources<'p> {
    pub(super) plugin: &'p PluginInner,
    pub(super) pre: &'p ResourceProviderPluginPre<PluginState>,
}

impl Resources<'_> {
    async fn call<R, F, Fut>(&self, function: &'static str, call: F) -> Result<R, CallError>
    where
        F: FnOnce(
            super::bindings::resource_provider::ResourceProviderPlugin,
            wasmtime::Store<PluginState>,
        ) -> Fut,
        Fut: Future<Output = wasmtime::Result<Result<R, types::Error>>>,
    {
        invoke(
            &self.plugin.runtime,
            &self.plugin.sandbox,
            self.pre,
            function,
            call,
        )
        .await?
        .map_err(|e| plugin_error(&self.plugin.name, function, e))
    }

    fn malformed(&self, function: &'static str, detail: String) -> CallError {
        malformed(&self.plugin.name, function, detail)
    }

    pub async fn read(&self, target: &ResourceSpec) -> Result<Option<ResourceStatus>, CallError> {
        let status = self
            .call("read-resource", |b, mut s| async move {
                b.engine_plugin_resources().call_read(&mut s, target).await
            })
            .await?;
        match status {
            Some(status) => Ok(Some(
                check_status(&status)
                    .map(|()| status)
                    .map_err(|d| self.malformed("read-resource", d))?,
            )),
            None => Ok(None),
        }
    }

    pub async fn plan(
        &self,
        desired: &ResourceSpec,
        current: Option<&ResourceStatus>,
    ) -> Result<types::DeploymentPlan, CallError> {
        let mut plan = self
            .call("plan-resource", |b, mut s| async move {
                b.engine_plugin_resources()
                    .call_plan(&mut s, desired, current)
                    .await
            })
            .await?;
        clean_plan(&mut plan);
        Ok(plan)
    }

    pub async fn apply(
        &self,
        desired: &ResourceSpec,
        current: Option<&ResourceStatus>,
    ) -> Result<ResourceStatus, CallError> {
        let status = self
            .call("apply-resource", |b, mut s| async move {
                b.engine_plugin_resources()
                    .call_apply(&mut s, desired, current)
                    .await
            })
            .await?;
        check_status(&status).map_err(|d| self.malformed("apply-resource", d))?;
        Ok(status)
    }

    /// The service's URL per place, checked: bounded, each place a kebab-case name given
    /// once, each URL absolute.
    pub async fn service_urls(
        &self,
        service: &types::ServiceRef,
    ) -> Result<Vec<(String, String)>, CallError> {
        let urls = self
            .call("service-urls", |b, mut s| async move {
                b.engine_plugin_resources()
                    .call_service_urls(&mut s, service)
                    .await
            })
            .await?;
        check_place_urls(&urls).map_err(|d| self.malformed("service-urls", d))?;
        Ok(urls)
    }

    pub async fn delete(&self, target: &ResourceSpec) -> Result<(), CallError> {
        self.call("delete-resource", |b, mut s| async move {
            b.engine_plugin_resources()
                .call_delete(&mut s, target)
                .await
        })
        .await
    }
}

impl KindPre {
    /// The resource kinds a provider manages (none when it does not export `resources`),
    /// checked; called once at load, like `info`, with nothing granted.
    pub(crate) async fn resource_kinds(
        &self,
        runtime: &RuntimeShared,
        sandbox: &Arc<Sandbox>,
    ) -> Result<Vec<ResourceKind>, CallError> {
        let KindPre::Provider(_, Some(pre)) = self else {
            return Ok(Vec::new());
        };
        let kinds = invoke(
            runtime,
            sandbox,
            pre.as_ref(),
            "kinds",
            |b, mut s| async move { b.engine_plugin_resources().call_kinds(&mut s).await },
        )
        .await?;
        check_kinds(&kinds).map_err(|d| malformed(&sandbox.plugin, "kinds", d))?;
        Ok(kinds)
    }
}

fn check_kinds(kinds: &[ResourceKind]) -> Result<(), String> {
    if kinds.len() > MAX_KINDS {
        return Err(format!(
            "{} kinds, over the limit of {MAX_KINDS}",
            kinds.len()
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for kind in kinds {
        kebab("a kind's name", &kind.name)?;
        if !seen.insert(kind.name.as_str()) {
            return Err(format!("kind `{}` is listed twice", kind.name));
        }
        if kind.spec_schema.len() > MAX_SCHEMA {
            return Err(format!(
                "the schema of kind `{}` is over {MAX_SCHEMA} bytes",
                kind.name
            ));
        }
        let schema: serde_json::Value = serde_json::from_str(&kind.spec_schema)
            .map_err(|e| format!("the schema of kind `{}` is not JSON ({e})", kind.name))?;
        jsonschema::validator_for(&schema).map_err(|e| {
            format!(
                "the schema of kind `{}` is not a JSON Schema ({e})",
                kind.name
            )
        })?;
        if kind.outputs.len() > MAX_OUTPUTS {
            return Err(format!(
                "kind `{}` declares over {MAX_OUTPUTS} outputs",
                kind.name
            ));
        }
        for output in &kind.outputs {
            output_key(output)?;
        }
    }
    Ok(())
}

/// A status is stored and its outputs are written into other specs, so it must be exact, not
/// cleaned: a bounded, printable id and outputs, valid JSON observed.
fn check_status(status: &ResourceStatus) -> Result<(), String> {
    untrusted::name("a resource's id", &status.id)?;
    if status.observed.len() > MAX_OBSERVED {
        return Err(format!(
            "what it observed of a resource is {} bytes, over the {MAX_OBSERVED}-byte limit",
            status.observed.len()
        ));
    }
    serde_json::from_str::<serde_json::Value>(&status.observed)
        .map_err(|e| format!("what it observed of a resource is not JSON ({e})"))?;
    if status.outputs.len() > MAX_OUTPUTS {
        return Err(format!("over {MAX_OUTPUTS} outputs"));
    }
    for (key, value) in &status.outputs {
        output_key(key)?;
        exact_value(&format!("output `{key}`"), value)?;
    }
    Ok(())
}

/// Place names are written into references (`${services.NAME.urls.PLACE}`) and URLs into
/// other services' specs.
fn check_place_urls(urls: &[(String, String)]) -> Result<(), String> {
    super::plugin::check::endpoint_count(urls.len())?;
    let mut seen = std::collections::BTreeSet::new();
    for (place, url) in urls {
        kebab("a place", place)?;
        if !seen.insert(place) {
            return Err(format!("place {place} is listed twice"));
        }
        super::plugin::check::url(url)?;
        exact_value(&format!("the URL of place {place}"), url)?;
    }
    Ok(())
}

fn kebab(what: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    match ok {
        true => Ok(()),
        false => Err(format!(
            "{what} {:?} is not a kebab-case name",
            untrusted::text(name)
        )),
    }
}

/// Output keys are referenced as `${resources.NAME.outputs.KEY}`.
fn output_key(key: &str) -> Result<(), String> {
    let ok = !key.is_empty()
        && key.len() <= 64
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    match ok {
        true => Ok(()),
        false => Err(format!(
            "output key {:?} is not a name of letters, digits, `_` and `-`",
            untrusted::text(key)
        )),
    }
}

/// A value written into other specs as it is: bounded, printable, and no secret.
fn exact_value(what: &str, value: &str) -> Result<(), String> {
    if value.len() > untrusted::MAX_TEXT {
        return Err(format!("{what} is over {} bytes", untrusted::MAX_TEXT));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("{what} holds control characters"));
    }
    if crate::redact::redactor().reveals_a_secret(value) {
        return Err(format!("{what} contains a secret value"));
    }
    Ok(())
}

fn clean_plan(plan: &mut types::DeploymentPlan) {
    plan.changes.truncate(1000);
    untrusted::clean(&mut plan.summary);
    for change in &mut plan.changes {
        untrusted::clean(&mut change.field);
        change.before.as_mut().map(untrusted::clean);
        change.after.as_mut().map(untrusted::clean);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(name: &str, schema: &str, outputs: &[&str]) -> ResourceKind {
        ResourceKind {
            name: name.into(),
            description: String::new(),
            spec_schema: schema.into(),
            outputs: outputs.iter().map(|o| o.to_string()).collect(),
        }
    }

    #[test]
    fn kinds_are_checked() {
        assert!(check_kinds(&[kind("scheduler-job", r#"{"type":"object"}"#, &["name"])]).is_ok());
        let twice = [kind("a", "{}", &[]), kind("a", "{}", &[])];
        assert!(check_kinds(&twice).unwrap_err().contains("twice"));
        assert!(check_kinds(&[kind("Bad Name", "{}", &[])]).is_err());
        assert!(check_kinds(&[kind("a", "not json", &[])]).is_err());
        assert!(check_kinds(&[kind("a", r#"{"type":7}"#, &[])]).is_err());
        assert!(check_kinds(&[kind("a", "{}", &["no spaces"])]).is_err());
    }

    #[test]
    fn a_status_is_exact_or_malformed() {
        let status = |outputs: Vec<(&str, &str)>| ResourceStatus {
            id: "projects/p/jobs/j".into(),
            observed: "{}".into(),
            outputs: outputs
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        assert!(check_status(&status(vec![("name", "projects/p/jobs/j")])).is_ok());
        assert!(check_status(&status(vec![("name", "a\nb")])).is_err());
        assert!(check_status(&status(vec![("", "x")])).is_err());
        let mut bad = status(vec![]);
        bad.observed = "{".into();
        assert!(check_status(&bad).is_err());
    }
}
