//! A loaded plugin and the typed calls into it.
//!
//! Every call gets a fresh `Store`: instantiate from the plugin's `InstancePre` (microseconds
//! with the pooling allocator), call one export under the deadline, memory cap and grants,
//! check the output against the contract, drop the store.

use super::RuntimeShared;
use super::bindings::health::{HealthPlugin, HealthPluginPre};
use super::bindings::provider::{ProviderPlugin, ProviderPluginPre};
use super::bindings::resource_provider::{ResourceProviderPlugin, ResourceProviderPluginPre};
use super::bindings::strategy::{StrategyPlugin, StrategyPluginPre};
use super::bindings::{health as health_world, strategy as strategy_world, types};
use super::error::{CallError, PluginError};
use super::events::{PluginEvent, Stream};
use super::inspect::{PluginKind, WIT_PACKAGE, WIT_VERSION};
use super::store::{CallProbes, Pinned, PluginState, Sandbox};
use crate::redact::redactor;
use futures::future::BoxFuture;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use wasmtime::component::InstancePre;
use wasmtime::{Store, Trap, UpdateDeadline};

/// Extra time the host-side timeout allows beyond the plugin's deadline, so the epoch
/// interruption (which reports the deadline precisely) normally fires first; the timeout catches
/// a plugin blocked in a host call, where epochs do not run.
const TIMEOUT_GRACE: Duration = Duration::from_millis(250);

/// Instantiation for one world.
pub trait WorldPre: Send + Sync {
    type Bindings: Send + 'static;
    fn instantiate<'a>(
        &'a self,
        store: &'a mut Store<PluginState>,
    ) -> BoxFuture<'a, wasmtime::Result<Self::Bindings>>;
}

macro_rules! world_pre {
    ($pre:ty, $bindings:ty) => {
        impl WorldPre for $pre {
            type Bindings = $bindings;
            fn instantiate<'a>(
                &'a self,
                store: &'a mut Store<PluginState>,
            ) -> BoxFuture<'a, wasmtime::Result<$bindings>> {
                Box::pin(self.instantiate_async(store))
            }
        }
    };
}
world_pre!(ProviderPluginPre<PluginState>, ProviderPlugin);
world_pre!(StrategyPluginPre<PluginState>, StrategyPlugin);
world_pre!(HealthPluginPre<PluginState>, HealthPlugin);
world_pre!(
    ResourceProviderPluginPre<PluginState>,
    ResourceProviderPlugin
);

/// The pre-instantiated component, by kind. A provider that exports `resources` (WIT 0.1.1)
/// has that interface bound too.
pub enum KindPre {
    Provider(
        ProviderPluginPre<PluginState>,
        // Boxed: its export indices would make every other variant as large.
        Option<Box<ResourceProviderPluginPre<PluginState>>>,
    ),
    Strategy(StrategyPluginPre<PluginState>),
    Health(HealthPluginPre<PluginState>),
}

impl KindPre {
    pub fn new(kind: PluginKind, pre: InstancePre<PluginState>) -> wasmtime::Result<KindPre> {
        Ok(match kind {
            PluginKind::Provider => {
                // Looked up by name, semver-compatibly, as wasmtime looks up every export.
                let export = format!("{WIT_PACKAGE}/resources@{WIT_VERSION}");
                let exports_resources = pre.component().get_export_index(None, &export).is_some();
                let resources = match exports_resources {
                    true => Some(Box::new(ResourceProviderPluginPre::new(pre.clone())?)),
                    false => None,
                };
                KindPre::Provider(ProviderPluginPre::new(pre)?, resources)
            }
            PluginKind::Strategy => KindPre::Strategy(StrategyPluginPre::new(pre)?),
            PluginKind::Health => KindPre::Health(HealthPluginPre::new(pre)?),
        })
    }

    pub fn kind(&self) -> PluginKind {
        match self {
            KindPre::Provider(..) => PluginKind::Provider,
            KindPre::Strategy(_) => PluginKind::Strategy,
            KindPre::Health(_) => PluginKind::Health,
        }
    }

    /// Calls the kind's `info`, whichever the kind.
    pub(crate) async fn info(
        &self,
        runtime: &RuntimeShared,
        sandbox: &Arc<Sandbox>,
    ) -> Result<types::PluginInfo, CallError> {
        let info = match self {
            KindPre::Provider(pre, _) => {
                invoke(runtime, sandbox, pre, "info", |b, mut s| async move {
                    b.engine_plugin_provider().call_info(&mut s).await
                })
                .await?
            }
            KindPre::Strategy(pre) => {
                invoke(runtime, sandbox, pre, "info", |b, mut s| async move {
                    b.engine_plugin_strategy().call_info(&mut s).await
                })
                .await?
            }
            KindPre::Health(pre) => {
                invoke(runtime, sandbox, pre, "info", |b, mut s| async move {
                    b.engine_plugin_health().call_info(&mut s).await
                })
                .await?
            }
        };
        check::info(&info).map_err(|detail| malformed(&sandbox.plugin, "info", detail))?;
        Ok(info)
    }
}

/// Runs one call in a fresh store under the sandbox's limits.
pub(crate) async fn invoke<P, R, F, Fut>(
    runtime: &RuntimeShared,
    sandbox: &Arc<Sandbox>,
    pre: &P,
    function: &'static str,
    call: F,
) -> Result<R, CallError>
where
    P: WorldPre,
    F: FnOnce(P::Bindings, Store<PluginState>) -> Fut,
    Fut: Future<Output = wasmtime::Result<R>>,
{
    invoke_pinned(runtime, sandbox, pre, function, None, call).await
}

/// [`invoke`], with the clocks and random numbers of `pinned` when it is given.
pub(crate) async fn invoke_pinned<P, R, F, Fut>(
    runtime: &RuntimeShared,
    sandbox: &Arc<Sandbox>,
    pre: &P,
    function: &'static str,
    pinned: Option<Pinned>,
    call: F,
) -> Result<R, CallError>
where
    P: WorldPre,
    F: FnOnce(P::Bindings, Store<PluginState>) -> Fut,
    Fut: Future<Output = wasmtime::Result<R>>,
{
    let plugin = sandbox.plugin.as_str();
    let setup = |detail: String| CallError::Setup {
        plugin: plugin.to_string(),
        function,
        detail,
    };
    let _permit = runtime
        .calls
        .acquire()
        .await
        .map_err(|e| setup(e.to_string()))?;
    let (mut store, probes) = new_store(runtime, sandbox, pinned.as_ref()).map_err(setup)?;

    let limit = sandbox.limits.timeout;
    let work = async move {
        let bindings = pre.instantiate(&mut store).await.map_err(|e| (true, e))?;
        call(bindings, store).await.map_err(|e| (false, e))
    };
    let outcome = tokio::time::timeout(limit + TIMEOUT_GRACE, work).await;
    report_output(sandbox, &probes);
    match outcome {
        Ok(Ok(_)) if let Some(exceeded) = disk_exceeded(sandbox, function, &probes) => {
            Err(exceeded)
        }
        Ok(Ok(value)) => Ok(value),
        Ok(Err((instantiating, error))) => {
            Err(classify(sandbox, function, instantiating, error, &probes))
        }
        Err(_elapsed) => Err(CallError::DeadlineExceeded {
            plugin: plugin.to_string(),
            function,
            limit,
        }),
    }
}

/// A store for one call (or one session) with the sandbox's limits and deadline.
fn new_store(
    runtime: &RuntimeShared,
    sandbox: &Arc<Sandbox>,
    pinned: Option<&Pinned>,
) -> Result<(Store<PluginState>, CallProbes), String> {
    let (state, probes) = PluginState::new(sandbox, pinned).map_err(|e| format!("{e:#}"))?;
    let mut store = Store::new(&runtime.engine, state);
    store.limiter(|s| &mut s.limiter);
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|cx| {
        let state = cx.data();
        Ok(
            if Instant::now() >= state.deadline || state.disk_over.load(Ordering::Relaxed) {
                UpdateDeadline::Interrupt
            } else {
                UpdateDeadline::Yield(1)
            },
        )
    });
    Ok((store, probes))
}

/// Sends what the plugin printed to the event sink, redacted.
fn report_output(sandbox: &Sandbox, probes: &CallProbes) {
    for (stream, pipe) in [
        (Stream::Stdout, &probes.stdout),
        (Stream::Stderr, &probes.stderr),
    ] {
        let bytes = pipe.contents();
        if !bytes.is_empty() {
            sandbox.sink.event(PluginEvent::Output {
                plugin: sandbox.plugin.clone(),
                stream,
                text: String::from_utf8_lossy(&bytes)
                    .lines()
                    .map(super::untrusted::text)
                    .collect::<Vec<_>>()
                    .join("\n"),
            });
        }
    }
}

/// Turns a wasmtime error into what happened, in the user's terms.
fn classify(
    sandbox: &Sandbox,
    function: &'static str,
    instantiating: bool,
    error: wasmtime::Error,
    probes: &CallProbes,
) -> CallError {
    let plugin = sandbox.plugin.clone();
    if let Some(exceeded) = disk_exceeded(sandbox, function, probes) {
        return exceeded;
    }
    let requested = probes.memory_refused.load(Ordering::SeqCst);
    if requested > 0 {
        return CallError::MemoryExceeded {
            plugin,
            function,
            requested,
            limit: sandbox.limits.memory_bytes,
        };
    }
    if error.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        return CallError::DeadlineExceeded {
            plugin,
            function,
            limit: sandbox.limits.timeout,
        };
    }
    let stderr = redactor().redact(&String::from_utf8_lossy(&probes.stderr.contents()));
    if let Some(message) = panic_message(&stderr) {
        return CallError::Panicked {
            plugin,
            function,
            message,
        };
    }
    let detail = redactor().redact(&format!("{error:#}"));
    if instantiating && error.downcast_ref::<Trap>().is_none() {
        return CallError::Setup {
            plugin,
            function,
            detail,
        };
    }
    CallError::Trapped {
        plugin,
        function,
        detail,
    }
}

/// The error for a call that wrote more than its `disk` limit, if it did.
fn disk_exceeded(
    sandbox: &Sandbox,
    function: &'static str,
    probes: &CallProbes,
) -> Option<CallError> {
    let watch = probes.disk.as_ref().filter(|w| w.went_over())?;
    Some(CallError::DiskExceeded {
        plugin: sandbox.plugin.clone(),
        function,
        limit: watch.limit(),
        dirs: watch
            .dirs()
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// The message of a Rust panic from what the plugin printed to stderr:
/// `thread '…' panicked at src/lib.rs:3:5:\nthe message`.
fn panic_message(stderr: &str) -> Option<String> {
    let mut lines = stderr.lines();
    while let Some(line) = lines.next() {
        if let Some((_, location)) = line.split_once("panicked at ") {
            let location = location.trim_end_matches(':');
            let message: Vec<&str> = lines
                .by_ref()
                .take_while(|l| !l.starts_with("note: "))
                .collect();
            return Some(format!("{} (at {location})", message.join("\n").trim()));
        }
    }
    None
}

/// A plugin's diagnostics, safe to print.
fn clean_diagnostics(mut diagnostics: Vec<types::Diagnostic>) -> Vec<types::Diagnostic> {
    use super::untrusted::clean;
    diagnostics.truncate(100);
    for d in &mut diagnostics {
        clean(&mut d.path);
        clean(&mut d.message);
        d.hint.as_mut().map(clean);
    }
    diagnostics
}

pub(super) fn malformed(plugin: &str, function: &'static str, detail: String) -> CallError {
    CallError::MalformedOutput {
        plugin: plugin.to_string(),
        function,
        detail,
    }
}

pub(super) fn plugin_error(plugin: &str, function: &'static str, error: types::Error) -> CallError {
    CallError::Plugin {
        plugin: plugin.to_string(),
        function,
        error: PluginError::from(error),
    }
}

/// A plan's texts as they may be printed: its summary and the names of the fields it changes
/// are plugin text (see [`super::untrusted`]).
fn clean_plan(mut plan: types::DeploymentPlan) -> types::DeploymentPlan {
    super::untrusted::clean(&mut plan.summary);
    for change in &mut plan.changes {
        super::untrusted::clean(&mut change.field);
    }
    plan
}

/// A loaded plugin. Cheap to clone; calls may run concurrently.
#[derive(Clone)]
pub struct LoadedPlugin {
    pub(crate) inner: Arc<PluginInner>,
}

pub(crate) struct PluginInner {
    pub runtime: Arc<RuntimeShared>,
    pub name: String,
    pub origin: String,
    pub sha256: String,
    pub wit_version: semver::Version,
    pub functions: Vec<String>,
    pub imports: Vec<String>,
    pub info: super::info::PluginInfo,
    pub pre: KindPre,
    pub sandbox: Arc<Sandbox>,
    /// What it was granted of what it declared, as `engine.lock` records it.
    pub granted: crate::lockfile::Capabilities,
    /// For a plugin pulled from a registry: its manifest, and where its tag points now.
    pub registry: Option<crate::plugins::registry::Pulled>,
}

impl LoadedPlugin {
    /// The name the pipeline gives the plugin.
    pub fn name(&self) -> &str {
        &self.inner.name
    }
    pub fn kind(&self) -> PluginKind {
        self.inner.pre.kind()
    }
    /// Where it came from: `built-in` or a file path.
    pub fn origin(&self) -> &str {
        &self.inner.origin
    }
    pub fn sha256(&self) -> &str {
        &self.inner.sha256
    }
    /// The WIT version the plugin was built against.
    pub fn wit_version(&self) -> &semver::Version {
        &self.inner.wit_version
    }
    /// What the plugin said about itself.
    pub fn info(&self) -> &super::info::PluginInfo {
        &self.inner.info
    }
    /// What the pipeline granted it of what it declared: what it actually gets.
    pub fn granted(&self) -> &crate::lockfile::Capabilities {
        &self.inner.granted
    }
    /// For a plugin pulled from a registry: the manifest it came from, and where its tag
    /// points now.
    pub fn registry(&self) -> Option<&crate::plugins::registry::Pulled> {
        self.inner.registry.as_ref()
    }
    /// Functions of the interface it exports.
    pub fn functions(&self) -> &[String] {
        &self.inner.functions
    }
    /// Everything it imports.
    pub fn imports(&self) -> &[String] {
        &self.inner.imports
    }

    fn wrong_kind(&self, expected: &'static str) -> CallError {
        CallError::WrongKind {
            plugin: self.inner.name.clone(),
            expected,
            actual: self.kind().as_str(),
        }
    }

    /// The provider calls, if this is a provider.
    pub fn provider(&self) -> Result<Provider<'_>, CallError> {
        match &self.inner.pre {
            KindPre::Provider(pre, _) => Ok(Provider {
                plugin: &self.inner,
                pre,
            }),
            _ => Err(self.wrong_kind("provider")),
        }
    }

    /// The resource calls, if this is a provider that manages resources.
    pub fn resources(&self) -> Result<super::resources::Resources<'_>, CallError> {
        match &self.inner.pre {
            KindPre::Provider(_, Some(pre)) => Ok(super::resources::Resources {
                plugin: &self.inner,
                pre: pre.as_ref(),
            }),
            _ => Err(CallError::NoResources {
                plugin: self.inner.name.clone(),
            }),
        }
    }

    /// The strategy calls, if this is a strategy.
    pub fn strategy(&self) -> Result<Strategy<'_>, CallError> {
        match &self.inner.pre {
            KindPre::Strategy(pre) => Ok(Strategy {
                plugin: &self.inner,
                pre,
            }),
            _ => Err(self.wrong_kind("strategy")),
        }
    }

    /// The health-check calls, if this is a health check.
    pub fn health(&self) -> Result<Health<'_>, CallError> {
        match &self.inner.pre {
            KindPre::Health(pre) => Ok(Health {
                plugin: &self.inner,
                pre,
            }),
            _ => Err(self.wrong_kind("health")),
        }
    }
}

/// Typed calls into a provider plugin.
pub struct Provider<'p> {
    plugin: &'p PluginInner,
    pre: &'p ProviderPluginPre<PluginState>,
}

impl Provider<'_> {
    async fn call<R, F, Fut>(&self, function: &'static str, call: F) -> Result<R, CallError>
    where
        F: FnOnce(ProviderPlugin, Store<PluginState>) -> Fut,
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

    fn check<T>(
        &self,
        function: &'static str,
        value: T,
        rule: impl FnOnce(&T) -> Result<(), String>,
    ) -> Result<T, CallError> {
        rule(&value).map_err(|d| malformed(&self.plugin.name, function, d))?;
        Ok(value)
    }

    pub async fn validate(
        &self,
        spec: &types::ServiceSpec,
    ) -> Result<Vec<types::Diagnostic>, CallError> {
        invoke(
            &self.plugin.runtime,
            &self.plugin.sandbox,
            self.pre,
            "validate",
            |b, mut s| async move { b.engine_plugin_provider().call_validate(&mut s, spec).await },
        )
        .await
        .map(clean_diagnostics)
    }

    pub async fn read(
        &self,
        service: &types::ServiceRef,
    ) -> Result<Option<types::ServiceStatus>, CallError> {
        let status = self
            .call("read", |b, mut s| async move {
                b.engine_plugin_provider().call_read(&mut s, service).await
            })
            .await?;
        let mut status = self.check("read", status, |s| {
            s.as_ref().map_or(Ok(()), check::service_status)
        })?;
        for revision in status.iter_mut().flat_map(|s| s.revisions.iter_mut()) {
            revision.message.as_mut().map(super::untrusted::clean);
        }
        Ok(status)
    }

    pub async fn plan(
        &self,
        desired: &types::ServiceSpec,
        current: Option<&types::ServiceStatus>,
    ) -> Result<types::DeploymentPlan, CallError> {
        self.call("plan", |b, mut s| async move {
            b.engine_plugin_provider()
                .call_plan(&mut s, desired, current)
                .await
        })
        .await
        .map(clean_plan)
    }

    pub async fn deploy(
        &self,
        spec: &types::ServiceSpec,
        deployment_id: &str,
    ) -> Result<types::Revision, CallError> {
        let revision = self
            .call("deploy", |b, mut s| async move {
                b.engine_plugin_provider()
                    .call_deploy(&mut s, spec, deployment_id)
                    .await
            })
            .await?;
        let mut revision = self.check("deploy", revision, |r| {
            super::untrusted::name("the revision id", &r.id)
        })?;
        revision.message.as_mut().map(super::untrusted::clean);
        Ok(revision)
    }

    pub async fn set_traffic(
        &self,
        service: &types::ServiceRef,
        split: &[types::TrafficTarget],
    ) -> Result<(), CallError> {
        self.call("set-traffic", |b, mut s| async move {
            b.engine_plugin_provider()
                .call_set_traffic(&mut s, service, split)
                .await
        })
        .await
    }

    pub async fn get_traffic(
        &self,
        service: &types::ServiceRef,
    ) -> Result<Vec<types::TrafficTarget>, CallError> {
        let split = self
            .call("get-traffic", |b, mut s| async move {
                b.engine_plugin_provider()
                    .call_get_traffic(&mut s, service)
                    .await
            })
            .await?;
        self.check("get-traffic", split, |s| check::split(s))
    }

    pub async fn endpoints(
        &self,
        service: &types::ServiceRef,
        revision: Option<&str>,
    ) -> Result<Vec<types::Endpoint>, CallError> {
        let endpoints = self
            .call("endpoints", |b, mut s| async move {
                b.engine_plugin_provider()
                    .call_endpoints(&mut s, service, revision)
                    .await
            })
            .await?;
        self.check("endpoints", endpoints, |e| {
            check::endpoint_count(e.len())?;
            e.iter().try_for_each(|e| check::url(&e.url))
        })
    }

    pub async fn retire(
        &self,
        service: &types::ServiceRef,
        revision: &str,
    ) -> Result<(), CallError> {
        self.call("retire", |b, mut s| async move {
            b.engine_plugin_provider()
                .call_retire(&mut s, service, revision)
                .await
        })
        .await
    }

    pub async fn destroy(&self, service: &types::ServiceRef) -> Result<(), CallError> {
        self.call("destroy", |b, mut s| async move {
            b.engine_plugin_provider()
                .call_destroy(&mut s, service)
                .await
        })
        .await
    }
}

/// One provider instance kept across calls, for callers that make many calls in a row (a
/// plugin carrying an interpreter, such as a Python or JavaScript one, pays its start-up once
/// instead of per call). Each call still has the plugin's deadline; the memory cap covers the
/// session as a whole. After any error other than the plugin's own
/// ([`CallError::Plugin`]) the instance is in an unknown state: drop the session.
pub struct ProviderSession {
    plugin: Arc<PluginInner>,
    store: Store<PluginState>,
    bindings: ProviderPlugin,
    probes: CallProbes,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl LoadedPlugin {
    /// Instantiates the provider once for a [`ProviderSession`].
    pub async fn provider_session(&self) -> Result<ProviderSession, CallError> {
        let KindPre::Provider(pre, _) = &self.inner.pre else {
            return Err(self.wrong_kind("provider"));
        };
        let sandbox = &self.inner.sandbox;
        let setup = |detail: String| CallError::Setup {
            plugin: sandbox.plugin.clone(),
            function: "instantiate",
            detail,
        };
        let permit = self
            .inner
            .runtime
            .calls
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| setup(e.to_string()))?;
        let (mut store, probes) = new_store(&self.inner.runtime, sandbox, None).map_err(setup)?;
        let bindings = pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| classify(sandbox, "instantiate", true, e, &probes))?;
        Ok(ProviderSession {
            plugin: self.inner.clone(),
            store,
            bindings,
            probes,
            _permit: permit,
        })
    }
}

/// Waits for one session call under the plugin's deadline and sorts out its result.
async fn settle<R>(
    sandbox: &Sandbox,
    probes: &CallProbes,
    function: &'static str,
    call: impl Future<Output = wasmtime::Result<Result<R, types::Error>>>,
) -> Result<R, CallError> {
    let limit = sandbox.limits.timeout;
    match tokio::time::timeout(limit + TIMEOUT_GRACE, call).await {
        Ok(Ok(_)) if let Some(exceeded) = disk_exceeded(sandbox, function, probes) => Err(exceeded),
        Ok(Ok(result)) => result.map_err(|e| plugin_error(&sandbox.plugin, function, e)),
        Ok(Err(error)) => Err(classify(sandbox, function, false, error, probes)),
        Err(_elapsed) => Err(CallError::DeadlineExceeded {
            plugin: sandbox.plugin.clone(),
            function,
            limit,
        }),
    }
}

impl ProviderSession {
    fn restart_deadline(&mut self) {
        self.store.data_mut().deadline = Instant::now() + self.plugin.sandbox.limits.timeout;
    }

    /// `plan`, as [`Provider::plan`].
    pub async fn plan(
        &mut self,
        desired: &types::ServiceSpec,
        current: Option<&types::ServiceStatus>,
    ) -> Result<types::DeploymentPlan, CallError> {
        self.restart_deadline();
        let call =
            self.bindings
                .engine_plugin_provider()
                .call_plan(&mut self.store, desired, current);
        settle(&self.plugin.sandbox, &self.probes, "plan", call)
            .await
            .map(clean_plan)
    }

    /// `read`, as [`Provider::read`].
    pub async fn read(
        &mut self,
        service: &types::ServiceRef,
    ) -> Result<Option<types::ServiceStatus>, CallError> {
        self.restart_deadline();
        let call = self
            .bindings
            .engine_plugin_provider()
            .call_read(&mut self.store, service);
        let status = settle(&self.plugin.sandbox, &self.probes, "read", call).await?;
        if let Some(s) = &status {
            check::service_status(s).map_err(|d| malformed(&self.plugin.name, "read", d))?;
        }
        Ok(status)
    }
}

impl Drop for ProviderSession {
    fn drop(&mut self) {
        report_output(&self.plugin.sandbox, &self.probes);
    }
}

/// Typed calls into a strategy plugin.
pub struct Strategy<'p> {
    plugin: &'p PluginInner,
    pre: &'p StrategyPluginPre<PluginState>,
}

/// The largest checkpoint a strategy may return; state is stored after every step.
pub const MAX_STRATEGY_STATE: usize = 64 << 10;

impl Strategy<'_> {
    pub async fn validate(&self, config: &str) -> Result<Vec<types::Diagnostic>, CallError> {
        invoke(
            &self.plugin.runtime,
            &self.plugin.sandbox,
            self.pre,
            "validate",
            |b, mut s| async move {
                b.engine_plugin_strategy()
                    .call_validate(&mut s, config)
                    .await
            },
        )
        .await
        .map(clean_diagnostics)
    }

    pub async fn step(
        &self,
        rollout: &strategy_world::exports::engine::plugin::strategy::Rollout,
        state: Option<&str>,
        observation: &strategy_world::exports::engine::plugin::strategy::Observation,
        now_ms: u64,
    ) -> Result<strategy_world::exports::engine::plugin::strategy::StepResult, CallError> {
        let pinned = Pinned {
            now_ms,
            seed: step_seed(rollout, state),
        };
        let result = invoke_pinned(
            &self.plugin.runtime,
            &self.plugin.sandbox,
            self.pre,
            "step",
            Some(pinned),
            |b, mut s| async move {
                b.engine_plugin_strategy()
                    .call_step(&mut s, rollout, state, observation, now_ms)
                    .await
            },
        )
        .await?
        .map_err(|e| plugin_error(&self.plugin.name, "step", e))?;
        let mut result = result;
        check::step(&mut result).map_err(|d| malformed(&self.plugin.name, "step", d))?;
        Ok(result)
    }
}

/// The seed of a step's random numbers: what a plan, a run and a resume of the same rollout
/// share at that step (not the candidate's id, which a plan can only guess).
fn step_seed(
    rollout: &strategy_world::exports::engine::plugin::strategy::Rollout,
    state: Option<&str>,
) -> [u8; 32] {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    for part in [
        rollout.service.as_str(),
        rollout.stable.as_deref().unwrap_or_default(),
        rollout.config.as_str(),
        state.unwrap_or_default(),
    ] {
        hash.update((part.len() as u64).to_le_bytes());
        hash.update(part);
    }
    hash.finalize().into()
}

/// Typed calls into a health-check plugin.
pub struct Health<'p> {
    plugin: &'p PluginInner,
    pre: &'p HealthPluginPre<PluginState>,
}

impl Health<'_> {
    pub async fn validate(&self, config: &str) -> Result<Vec<types::Diagnostic>, CallError> {
        invoke(
            &self.plugin.runtime,
            &self.plugin.sandbox,
            self.pre,
            "validate",
            |b, mut s| async move { b.engine_plugin_health().call_validate(&mut s, config).await },
        )
        .await
        .map(clean_diagnostics)
    }

    pub async fn check(
        &self,
        config: &str,
        target: &health_world::exports::engine::plugin::health::Target,
    ) -> Result<health_world::exports::engine::plugin::health::CheckResult, CallError> {
        let result = invoke(
            &self.plugin.runtime,
            &self.plugin.sandbox,
            self.pre,
            "check",
            |b, mut s| async move {
                b.engine_plugin_health()
                    .call_check(&mut s, config, target)
                    .await
            },
        )
        .await?
        .map_err(|e| plugin_error(&self.plugin.name, "check", e))?;
        check::measurements(&result.measurements)
            .map_err(|d| malformed(&self.plugin.name, "check", d))?;
        let mut result = result;
        super::untrusted::clean(&mut result.message);
        for m in &mut result.measurements {
            super::untrusted::clean(&mut m.name);
            super::untrusted::clean(&mut m.unit);
        }
        Ok(result)
    }
}

/// The rules plugin output must follow beyond its WIT types.
pub(crate) mod check {
    use super::MAX_STRATEGY_STATE;
    use super::strategy_world::exports::engine::plugin::strategy::{Decision, StepResult};
    use super::types;
    use crate::grants::HttpPattern;

    pub fn json(what: &str, text: &str) -> Result<(), String> {
        serde_json::from_str::<serde_json::Value>(text)
            .map(|_| ())
            .map_err(|e| format!("{what} is not valid JSON ({e})"))
    }

    /// The most endpoints a provider may list for one service: each revision URL is a place
    /// every health check runs in ([`crate::runtime::places`]).
    pub const MAX_ENDPOINTS: usize = 256;

    pub fn endpoint_count(n: usize) -> Result<(), String> {
        if n > MAX_ENDPOINTS {
            return Err(format!("{n} endpoints, over the limit of {MAX_ENDPOINTS}"));
        }
        Ok(())
    }

    pub fn url(text: &str) -> Result<(), String> {
        match text.parse::<http::Uri>() {
            Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {
                Ok(())
            }
            _ => Err(format!("{text:?} is not an absolute http(s) URL")),
        }
    }

    /// A traffic split: every percent at most 100, the total exactly 100, no revision twice.
    pub fn split(targets: &[types::TrafficTarget]) -> Result<(), String> {
        if targets.is_empty() {
            return Ok(());
        }
        let mut seen = std::collections::HashSet::new();
        let mut total = 0u32;
        for t in targets {
            super::super::untrusted::name("a traffic target's revision", &t.revision)?;
            if t.percent > 100 {
                return Err(format!(
                    "revision {} gets {}% of traffic",
                    t.revision, t.percent
                ));
            }
            if !seen.insert(t.revision.as_str()) {
                return Err(format!(
                    "revision {} appears twice in the traffic split",
                    t.revision
                ));
            }
            total += u32::from(t.percent);
        }
        // Only 0 % entries: a service none of whose revisions takes traffic yet.
        if total != 100 && total != 0 {
            return Err(format!("the traffic split adds up to {total}%, not 100%"));
        }
        Ok(())
    }

    pub fn service_status(s: &types::ServiceStatus) -> Result<(), String> {
        split(&s.traffic)?;
        json("`deployed`", &s.deployed)?;
        s.revisions
            .iter()
            .try_for_each(|r| super::super::untrusted::name("a revision id", &r.id))?;
        s.url.as_deref().map_or(Ok(()), url)
    }

    pub fn info(i: &types::PluginInfo) -> Result<(), String> {
        let name_ok = !i.name.is_empty()
            && i.name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !name_ok {
            return Err(format!("name {:?} is not kebab-case", i.name));
        }
        json("`config-schema`", &i.config_schema)?;
        for pattern in &i.capabilities.http {
            HttpPattern::parse(pattern).map_err(|e| format!("declared HTTP capability: {e}"))?;
        }
        for dir in &i.capabilities.dirs {
            if !dir.path.starts_with('/') {
                return Err(format!(
                    "declared directory {:?} is not an absolute path",
                    dir.path
                ));
            }
        }
        // Declared names are printed where a person decides what to grant (`plugins inspect`,
        // `plugins lock`) and stored in engine.lock: each must be a plain name.
        let names = [
            ("declared environment variable", &i.capabilities.env),
            ("declared secret", &i.capabilities.secrets),
        ];
        for (what, list) in names {
            list.iter()
                .try_for_each(|n| super::super::untrusted::name(what, n))?;
        }
        i.capabilities
            .dirs
            .iter()
            .try_for_each(|dir| super::super::untrusted::name("declared directory", &dir.path))
    }

    /// Checks a step's result, and makes its free text (phase, reasons) safe to print.
    pub fn step(r: &mut StepResult) -> Result<(), String> {
        use super::super::untrusted::{clean, name};
        clean(&mut r.phase);
        match &mut r.decision {
            Decision::Abort(reason) | Decision::AwaitApproval(reason) => clean(reason),
            Decision::Retire(revision) => name("the revision to retire", revision)?,
            _ => {}
        }
        if r.state.len() > MAX_STRATEGY_STATE {
            return Err(format!(
                "its state is {} bytes, over the {MAX_STRATEGY_STATE}-byte limit",
                r.state.len()
            ));
        }
        if let Decision::SetTraffic(targets) = &r.decision {
            if targets.is_empty() {
                return Err("set-traffic with an empty split".into());
            }
            split(targets)?;
        }
        Ok(())
    }

    pub fn measurements(m: &[types::Measurement]) -> Result<(), String> {
        match m.iter().find(|m| !m.value.is_finite()) {
            Some(bad) => Err(format!("measurement {} is {}", bad.name, bad.value)),
            None => Ok(()),
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn t(revision: &str, percent: u8) -> types::TrafficTarget {
            types::TrafficTarget {
                revision: revision.into(),
                percent,
            }
        }

        #[test]
        fn splits() {
            assert!(split(&[]).is_ok());
            assert!(split(&[t("a", 0)]).is_ok(), "no traffic yet");
            assert!(split(&[t("a", 90), t("b", 10)]).is_ok());
            assert!(split(&[t("a", 90)]).unwrap_err().contains("90%"));
            assert!(split(&[t("a", 150)]).unwrap_err().contains("150%"));
            assert!(
                split(&[t("a", 50), t("a", 50)])
                    .unwrap_err()
                    .contains("twice")
            );
        }

        fn info_with(change: impl FnOnce(&mut types::PluginInfo)) -> Result<(), String> {
            let mut i = types::PluginInfo {
                name: "p".into(),
                version: "1.0.0".into(),
                description: String::new(),
                config_schema: "{}".into(),
                features: Vec::new(),
                capabilities: types::Capabilities {
                    http: Vec::new(),
                    env: vec!["REGION".into()],
                    dirs: Vec::new(),
                    secrets: vec!["*".into()],
                },
            };
            change(&mut i);
            info(&i)
        }

        #[test]
        fn declared_names_are_plain_names() {
            assert!(info_with(|_| {}).is_ok());
            let err = info_with(|i| i.capabilities.env.push("X\u{1b}[2K".into())).unwrap_err();
            assert!(err.contains("declared environment variable"), "{err}");
            let err = info_with(|i| i.capabilities.secrets.push("a\rb".into())).unwrap_err();
            assert!(err.contains("declared secret"), "{err}");
            let err = info_with(|i| {
                i.capabilities.dirs.push(types::DirNeed {
                    path: "/out\n+ nothing".into(),
                    writable: true,
                    purpose: String::new(),
                })
            })
            .unwrap_err();
            assert!(err.contains("declared directory"), "{err}");
        }

        #[test]
        fn urls() {
            assert!(url("https://x.run.app/healthz").is_ok());
            assert!(url("/healthz").is_err());
            assert!(url("ftp://x").is_err());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{clean_plan, panic_message, types};

    #[test]
    fn a_plans_summary_and_field_names_cannot_reach_a_terminal_raw() {
        let plan = clean_plan(types::DeploymentPlan {
            action: types::PlanAction::Update,
            changes: vec![types::Change {
                field: "env\u{1b}[2J".into(),
                before: None,
                after: Some("1".into()),
            }],
            summary: "update\n::error::forged".into(),
        });
        assert!(!plan.summary.contains('\n'), "{}", plan.summary);
        assert!(
            !plan.changes[0].field.contains('\u{1b}'),
            "{}",
            plan.changes[0].field
        );
    }

    #[test]
    fn panic_messages_are_extracted() {
        let stderr = "\nthread '<unnamed>' panicked at src/lib.rs:160:22:\nboom\nnote: run with `RUST_BACKTRACE=1`\n";
        assert_eq!(
            panic_message(stderr).unwrap(),
            "boom (at src/lib.rs:160:22)"
        );
        assert_eq!(panic_message("just output"), None);
    }
}
