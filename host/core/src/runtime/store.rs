//! The state of one plugin call (`Store<PluginState>`) and the host imports it serves.
//!
//! A fresh store is made for every call, so nothing a plugin leaves in memory survives into the
//! next call, and a call that traps or is stopped takes only its own store down.

use super::bindings::health::engine::plugin::tcp;
use super::bindings::provider::engine::plugin::{clock, log, secrets, types};
use super::disk::DiskWatch;
use super::egress::{EgressHooks, EgressPolicy};
use super::events::{Capability, Denial, EventSink, LogLevel, PluginEvent};
use super::secrets::{PluginSecrets, SecretHandle};
use super::tcp::TcpPolicy;
use crate::grants::{DirGrant, Limits};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;
use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// How much a plugin may print to stdout and stderr in one call; the rest is dropped.
const OUTPUT_CAPACITY: usize = 256 << 10;

/// What every call of one loaded plugin shares: its identity and its effective grants.
pub struct Sandbox {
    pub plugin: String,
    pub env: Vec<(String, String)>,
    pub dirs: Vec<DirGrant>,
    pub limits: Limits,
    pub secrets: Arc<PluginSecrets>,
    pub egress: Arc<EgressPolicy>,
    pub tcp: Arc<TcpPolicy>,
    pub sink: Arc<dyn EventSink>,
}

/// Shared with the caller so it can read them even after the store was dropped (a deadline
/// drops the call's future, and the store with it).
#[derive(Clone)]
pub struct CallProbes {
    pub stdout: MemoryOutputPipe,
    pub stderr: MemoryOutputPipe,
    /// The size a memory grow asked for when it went over the cap; 0 if none did.
    pub memory_refused: Arc<AtomicU64>,
    /// The writable directories' watch, when there are any.
    pub disk: Option<Arc<DiskWatch>>,
}

/// Caps linear memory per store and records a refusal for the error message.
pub struct MemoryLimiter {
    cap: u64,
    refused: Arc<AtomicU64>,
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired as u64 > self.cap {
            self.refused.store(desired as u64, Ordering::SeqCst);
            wasmtime::bail!("memory cap of {} bytes reached", self.cap);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

pub struct PluginState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: EgressHooks,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) deadline: Instant,
    /// Set when the call has written more than its `disk` limit: the epoch callback stops it.
    pub(crate) disk_over: Arc<AtomicBool>,
    sandbox: Arc<Sandbox>,
    /// Log lines and bytes this call has written ([`MAX_LOG_LINES`], [`MAX_LOG_BYTES`]).
    logged: (usize, usize),
    /// The moment a pinned call sees on every clock (milliseconds since the epoch).
    pinned_now_ms: Option<u64>,
}

/// What a strategy's call sees instead of the machine's clocks and random numbers: the
/// engine's clock (simulated during `engine plan`) and random bytes drawn from a seed of the
/// call's inputs. Strategies are documented as pure; with this, a strategy that reads the
/// time or asks for random numbers anyway still decides the same in a plan, a run and a resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pinned {
    pub now_ms: u64,
    pub seed: [u8; 32],
}

impl Pinned {
    /// Random bytes as a cycle long enough that a strategy would not notice the repetition.
    fn random_bytes(&self) -> Vec<u8> {
        use sha2::Digest;
        (0u8..32)
            .flat_map(|block| {
                sha2::Sha256::new_with_prefix(self.seed)
                    .chain_update([block])
                    .finalize()
            })
            .collect()
    }
}

/// A clock stopped at one moment, for [`Pinned`] calls.
struct StoppedClock(std::time::Duration);

impl wasmtime_wasi::HostWallClock for StoppedClock {
    fn resolution(&self) -> std::time::Duration {
        std::time::Duration::from_millis(1)
    }
    fn now(&self) -> std::time::Duration {
        self.0
    }
}

impl wasmtime_wasi::HostMonotonicClock for StoppedClock {
    fn resolution(&self) -> u64 {
        1_000_000
    }
    fn now(&self) -> u64 {
        self.0.as_nanos() as u64
    }
}

/// How many log lines one call may write; the rest are dropped, with one notice.
pub const MAX_LOG_LINES: usize = 1000;
/// How many bytes of log one call may write.
pub const MAX_LOG_BYTES: usize = 1 << 20;

impl PluginState {
    /// Counts a log line against the call's budget; false once the budget is spent (the first
    /// time, the user is told).
    fn within_log_budget(&mut self, message: &str, fields: &[(String, String)]) -> bool {
        let size = message.len() + fields.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        let (lines, bytes) = self.logged;
        self.logged = (lines + 1, bytes.saturating_add(size));
        let within = |(l, b): (usize, usize)| l <= MAX_LOG_LINES && b <= MAX_LOG_BYTES;
        if within(self.logged) {
            return true;
        }
        if within((lines, bytes)) {
            self.sandbox.sink.event(PluginEvent::LimitExceeded {
                plugin: self.sandbox.plugin.clone(),
                message: format!(
                    "logged more than {MAX_LOG_LINES} lines or {} MiB in one call; the rest of this call's log lines are dropped",
                    MAX_LOG_BYTES >> 20
                ),
            });
        }
        false
    }
}

impl PluginState {
    /// State for one call: the sandbox's env and directories, empty stdio captured in memory,
    /// no sockets (HTTP goes through `wasi:http` and the egress hook only).
    pub fn new(
        sandbox: &Arc<Sandbox>,
        pinned: Option<&Pinned>,
    ) -> anyhow::Result<(PluginState, CallProbes)> {
        let disk_over = Arc::new(AtomicBool::new(false));
        let writable = sandbox.dirs.iter().filter(|d| d.writable);
        let probes = CallProbes {
            stdout: MemoryOutputPipe::new(OUTPUT_CAPACITY),
            stderr: MemoryOutputPipe::new(OUTPUT_CAPACITY),
            memory_refused: Arc::new(AtomicU64::new(0)),
            disk: DiskWatch::start(
                writable.map(|d| d.host.clone()).collect(),
                sandbox.limits.disk_bytes,
                disk_over.clone(),
            )
            .map(Arc::new),
        };
        let mut builder = WasiCtxBuilder::new();
        builder
            .stdout(probes.stdout.clone())
            .stderr(probes.stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        if let Some(pinned) = pinned {
            let now = std::time::Duration::from_millis(pinned.now_ms);
            let bytes = pinned.random_bytes();
            builder
                .wall_clock(StoppedClock(now))
                .monotonic_clock(StoppedClock(now))
                .secure_random(wasmtime_wasi::Deterministic::new(bytes.clone()))
                .insecure_random(wasmtime_wasi::Deterministic::new(bytes))
                .insecure_random_seed(u128::from_le_bytes(pinned.seed[..16].try_into()?));
        }
        for (k, v) in &sandbox.env {
            builder.env(k, v);
        }
        for dir in &sandbox.dirs {
            let perms = if dir.writable {
                FsPerms::ReadWrite
            } else {
                FsPerms::ReadOnly
            };
            builder
                .preopened_dir(&dir.host, &dir.guest, perms)
                .map_err(|e| {
                    anyhow::anyhow!(
                        "cannot open directory {} for the plugin: {e}",
                        dir.host.display()
                    )
                })?;
        }
        let state = PluginState {
            wasi: builder.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks: EgressHooks::new(sandbox.egress.clone()),
            limiter: MemoryLimiter {
                cap: sandbox.limits.memory_bytes,
                refused: probes.memory_refused.clone(),
            },
            deadline: Instant::now() + sandbox.limits.timeout,
            disk_over,
            sandbox: sandbox.clone(),
            logged: (0, 0),
            pinned_now_ms: pinned.map(|p| p.now_ms),
        };
        Ok((state, probes))
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for PluginState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

impl types::Host for PluginState {}

impl log::Host for PluginState {
    async fn write(
        &mut self,
        level: log::Level,
        message: String,
        fields: Vec<(String, String)>,
    ) -> wasmtime::Result<()> {
        let level = match level {
            log::Level::Trace => LogLevel::Trace,
            log::Level::Debug => LogLevel::Debug,
            log::Level::Info => LogLevel::Info,
            log::Level::Warn => LogLevel::Warn,
            log::Level::Error => LogLevel::Error,
        };
        let redact = super::untrusted::text;
        if !self.within_log_budget(&message, &fields) {
            return Ok(());
        }
        self.sandbox.sink.event(PluginEvent::Log {
            plugin: self.sandbox.plugin.clone(),
            level,
            message: redact(&message),
            fields: fields.iter().map(|(k, v)| (redact(k), redact(v))).collect(),
        });
        Ok(())
    }
}

impl clock::Host for PluginState {
    async fn now_ms(&mut self) -> wasmtime::Result<u64> {
        if let Some(now) = self.pinned_now_ms {
            return Ok(now);
        }
        Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0))
    }
}

impl secrets::Host for PluginState {
    async fn open(
        &mut self,
        name: String,
    ) -> wasmtime::Result<Result<Resource<SecretHandle>, types::Error>> {
        match self.sandbox.secrets.get(&name) {
            Some(secret) => Ok(Ok(self.table.push(SecretHandle(secret.clone()))?)),
            None => {
                let plugin = &self.sandbox.plugin;
                let name = super::untrusted::text(&name);
                let hint = if name == local_api::SECRET_NAME {
                    "only the engine's built-in `local` provider is given the local platform's token".to_string()
                } else {
                    format!(
                        "add `{name} = {{ from = \"env:VARIABLE\" }}` to [plugins.{plugin}.secrets]"
                    )
                };
                self.sandbox.sink.event(PluginEvent::Denied(Denial {
                    plugin: plugin.clone(),
                    capability: Capability::Secret,
                    attempted: format!("open secret '{name}'"),
                    hint,
                }));
                Ok(Err(types::Error::Unauthorized(format!(
                    "secret '{name}' is not granted to plugin '{plugin}'"
                ))))
            }
        }
    }
}

impl secrets::HostSecret for PluginState {
    async fn name(&mut self, handle: Resource<SecretHandle>) -> wasmtime::Result<String> {
        Ok(self.table.get(&handle)?.0.name.clone())
    }

    async fn placeholder(&mut self, handle: Resource<SecretHandle>) -> wasmtime::Result<String> {
        Ok(self.table.get(&handle)?.0.placeholder.clone())
    }

    async fn drop(&mut self, handle: Resource<SecretHandle>) -> wasmtime::Result<()> {
        self.table.delete(handle)?;
        Ok(())
    }
}

impl tcp::Host for PluginState {
    async fn connect(
        &mut self,
        host: String,
        port: u16,
        timeout_ms: u32,
    ) -> wasmtime::Result<Result<tcp::Connected, tcp::ConnectError>> {
        // Never past the call's own deadline: a connect that hangs must not turn into a trap.
        let timeout = std::time::Duration::from_millis(u64::from(timeout_ms))
            .min(self.deadline.saturating_duration_since(Instant::now()));
        Ok(self.sandbox.tcp.connect(&host, port, timeout).await)
    }
}
