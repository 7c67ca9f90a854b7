//! The sandboxed WebAssembly plugin runtime.
//!
//! One wasmtime [`Engine`] per process (pooling allocator, epoch interruption), one `Linker`
//! per plugin world, one `InstancePre` per loaded plugin, a fresh `Store` per call. Compiled
//! plugins are cached on disk. Each plugin gets only what the pipeline grants and the plugin
//! declares; see [`grants`] and [`egress`].
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use engine_core::grants::GrantsConfig;
//! use engine_core::runtime::{Runtime, RuntimeOptions};
//! use engine_core::plugins::PluginSource;
//!
//! let runtime = Runtime::new(RuntimeOptions::default())?;
//! let plugin = runtime
//!     .load("all-at-once", &PluginSource::Embedded("all-at-once".into()), &GrantsConfig::default())
//!     .await?;
//! println!("{} is a {} plugin", plugin.info().name, plugin.kind());
//! # Ok(()) }
//! ```

pub mod address;
pub mod aws;
pub mod bindings;
pub mod cache;
pub mod check;
pub mod disk;
pub mod egress;
pub mod engine;
pub mod error;
pub mod events;
pub mod google;
pub mod google_external;
pub mod info;
pub mod inspect;
pub mod intersection;
pub mod json_body;
pub mod kubernetes;
mod lockfile_check;
pub use lockfile_check::{lock_diagnostics, locked_now};
pub mod places;
pub mod plugin;
pub mod port;
pub mod resources;
pub mod secrets;
pub mod store;
pub mod tcp;
pub mod untrusted;

pub use check::{PluginCheck, check_plugins, examine_plugins};
pub use error::{CallError, LoadError, PluginError};
pub use events::{Denial, EventSink, MemorySink, PluginEvent, TracingSink};
pub use inspect::{PluginKind, WIT_PACKAGE, WIT_VERSION};
pub use plugin::{Health, LoadedPlugin, Provider, ProviderSession, Strategy};
pub use port::PluginPorts;

use crate::grants::{self, Grants, GrantsConfig, HttpPattern};
use crate::plugins::PluginSource;
use cache::{CacheOutcome, CompileCache, sha256_hex};
use events::PluginEvent as Event;
use secrets::PluginSecrets;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use store::{PluginState, Sandbox};
use wasmtime::Engine;
use wasmtime::component::{HasSelf, Linker};

/// How to set the runtime up.
#[derive(Clone)]
pub struct RuntimeOptions {
    /// Where compiled plugins are cached (and, in its `downloads/`, plugins fetched from
    /// registries and URLs, by sha256); None turns both caches off.
    pub cache_dir: Option<PathBuf>,
    /// How many plugin calls may run at once (the size of the instance pool).
    pub max_concurrent_calls: u32,
    /// Where plugin logs, output and denials go.
    pub sink: Arc<dyn EventSink>,
    /// Fixed name resolutions for plugin HTTP, like curl's `--resolve`; the address checks still
    /// apply to them.
    pub resolve_overrides: HashMap<String, Vec<IpAddr>>,
    /// A dry run (`engine plan`): every outbound request other than GET and HEAD is blocked and
    /// reported as [`PluginEvent::WouldCall`], and granted directories are mounted read-only,
    /// so no plugin can change anything, whatever its code does.
    pub dry_run: bool,
    /// With `dry_run`: no secret is sent at all (`engine plan --no-secrets`); a request that
    /// needs one is refused. Secrets granted with `in_plan = false` are withheld regardless.
    pub withhold_secrets: bool,
    /// The local platform's admin ports on this machine: no wildcard grant reaches them, and
    /// the engine's own `local` provider gets the platform's token for them.
    pub local_admin_ports: Vec<u16>,
    /// Paths no directory grant may expose besides the compile cache and its key, which are
    /// always protected: the state, and the pipeline's own files.
    pub protected_paths: Vec<grants::ProtectedPath>,
    /// Plugins are loaded only to be checked (`engine validate`): a secret whose source cannot
    /// be read here (a CI variable a pull-request job lacks, no Google credentials) is reported
    /// as a warning instead of failing the load, and the plugin simply does not get it.
    pub check_only: bool,
}

/// The port of the local platform's default admin address (`local_api::DEFAULT_ADMIN`).
pub const DEFAULT_ADMIN_PORT: u16 = 7700;

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            cache_dir: CompileCache::default_dir(),
            max_concurrent_calls: 64,
            sink: Arc::new(TracingSink),
            resolve_overrides: HashMap::new(),
            dry_run: false,
            withhold_secrets: false,
            local_admin_ports: vec![DEFAULT_ADMIN_PORT],
            protected_paths: Vec::new(),
            check_only: false,
        }
    }
}

/// What every loaded plugin shares.
pub(crate) struct RuntimeShared {
    pub engine: Engine,
    pub allocation: engine::Allocation,
    pub cache: CompileCache,
    pub downloads: crate::plugins::DownloadCache,
    pub calls: Arc<tokio::sync::Semaphore>,
    pub sink: Arc<dyn EventSink>,
    pub resolve_overrides: Arc<HashMap<String, Vec<IpAddr>>>,
    pub dry_run: bool,
    pub withhold_secrets: bool,
    pub check_only: bool,
    pub local_admin_ports: Vec<u16>,
    pub protected_paths: Vec<grants::ProtectedPath>,
    provider_linker: Linker<PluginState>,
    strategy_linker: Linker<PluginState>,
    health_linker: Linker<PluginState>,
}

/// The plugin runtime. Create one per process and load plugins from it.
#[derive(Clone)]
pub struct Runtime {
    shared: Arc<RuntimeShared>,
}

/// The linker for one plugin world: WASI (sockets denied by each store's context), the host
/// imports the world has, and `wasi:http` only for worlds that import it.
fn linker(engine: &Engine, kind: PluginKind) -> wasmtime::Result<Linker<PluginState>> {
    use bindings::provider::engine::plugin::{clock, log, secrets, types};
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    refuse_symlinks(&mut linker)?;
    types::add_to_linker::<PluginState, HasSelf<PluginState>>(&mut linker, |s| s)?;
    log::add_to_linker::<PluginState, HasSelf<PluginState>>(&mut linker, |s| s)?;
    if kind != PluginKind::Strategy {
        clock::add_to_linker::<PluginState, HasSelf<PluginState>>(&mut linker, |s| s)?;
        secrets::add_to_linker::<PluginState, HasSelf<PluginState>>(&mut linker, |s| s)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    }
    if kind == PluginKind::Health {
        bindings::health::engine::plugin::tcp::add_to_linker::<PluginState, HasSelf<PluginState>>(
            &mut linker,
            |s| s,
        )?;
    }
    Ok(linker)
}

/// The `wasi:filesystem` version wasmtime-wasi defines; guests importing any 0.2.x get it.
const WASI_FILESYSTEM_TYPES: &str = "wasi:filesystem/types@0.2.12";

/// Plugins may not create symbolic links. cap-std already refuses absolute targets, but a
/// relative one (`../../etc`) left in a granted directory would lead any other program that
/// follows it out of the grant; no plugin kind needs links, so none are made.
fn refuse_symlinks(linker: &mut Linker<PluginState>) -> wasmtime::Result<()> {
    use wasmtime::component::Resource;
    use wasmtime_wasi::filesystem::Descriptor;
    use wasmtime_wasi::p2::bindings::filesystem::types::ErrorCode;
    linker.allow_shadowing(true);
    linker.instance(WASI_FILESYSTEM_TYPES)?.func_wrap_async(
        "[method]descriptor.symlink-at",
        |_store, (_dir, _target, _link): (Resource<Descriptor>, String, String)| {
            Box::new(async { Ok((Err::<(), _>(ErrorCode::NotPermitted),)) })
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

impl Runtime {
    pub fn new(options: RuntimeOptions) -> anyhow::Result<Runtime> {
        let (engine, allocation) = engine::build(options.max_concurrent_calls)?;
        let downloads = crate::plugins::DownloadCache::new(
            options.cache_dir.as_ref().map(|d| d.join("downloads")),
        );
        let cache = CompileCache::new(&engine, options.cache_dir);
        let mut protected_paths = options.protected_paths;
        protected_paths.extend(cache.protected_paths());
        Ok(Runtime {
            shared: Arc::new(RuntimeShared {
                provider_linker: linker(&engine, PluginKind::Provider)?,
                strategy_linker: linker(&engine, PluginKind::Strategy)?,
                health_linker: linker(&engine, PluginKind::Health)?,
                engine,
                allocation,
                cache,
                downloads,
                calls: Arc::new(tokio::sync::Semaphore::new(
                    options.max_concurrent_calls.max(1) as usize,
                )),
                sink: options.sink,
                resolve_overrides: Arc::new(options.resolve_overrides),
                dry_run: options.dry_run,
                withhold_secrets: options.withhold_secrets,
                check_only: options.check_only,
                local_admin_ports: options.local_admin_ports,
                protected_paths,
            }),
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.shared.engine
    }

    pub fn allocation(&self) -> engine::Allocation {
        self.shared.allocation
    }

    pub fn cache(&self) -> &CompileCache {
        &self.shared.cache
    }

    /// Loads, checks and pre-instantiates a plugin, asks it for its `info`, and sets up its
    /// sandbox from `grants` and what it declares.
    pub async fn load(
        &self,
        name: &str,
        source: &PluginSource,
        grants: &GrantsConfig,
    ) -> Result<LoadedPlugin, LoadError> {
        self.load_with_outcome(name, source, grants)
            .await
            .map(|(p, _)| p)
    }

    /// [`Runtime::load`], also telling whether the compile cache was hit.
    pub async fn load_with_outcome(
        &self,
        name: &str,
        source: &PluginSource,
        grants: &GrantsConfig,
    ) -> Result<(LoadedPlugin, CacheOutcome), LoadError> {
        let shared = &self.shared;
        let fetched = source.fetch(name, &shared.downloads).await?;
        let bytes = fetched.bytes;
        let sha256 = sha256_hex(&bytes);
        source.verify(name, &sha256)?;
        let (component, outcome) =
            shared
                .cache
                .load(&shared.engine, &sha256, &bytes)
                .map_err(|e| LoadError::NotAComponent {
                    plugin: name.to_string(),
                    message: format!("{e:#}"),
                })?;
        let shape = inspect::shape(&shared.engine, name, &component)?;
        let linker = match shape.kind {
            PluginKind::Provider => &shared.provider_linker,
            PluginKind::Strategy => &shared.strategy_linker,
            PluginKind::Health => &shared.health_linker,
        };
        let link_error = |e: wasmtime::Error| LoadError::Link {
            plugin: name.to_string(),
            message: format!("{e:#}"),
        };
        let pre = linker.instantiate_pre(&component).map_err(link_error)?;
        let pre = plugin::KindPre::new(shape.kind, pre).map_err(link_error)?;

        let mut grants = grants.parse().map_err(|error| LoadError::Grant {
            plugin: name.to_string(),
            error,
        })?;
        if matches!(source, PluginSource::Embedded(n) if n == "local") {
            self.broker_local_platform_token(&mut grants);
        }
        // `info` runs with nothing granted: it must be pure.
        let bare = self.sandbox(
            name,
            &Grants {
                limits: grants.limits,
                ..Grants::default()
            },
            Vec::new(),
            Arc::default(),
        )?;
        let info = pre
            .info(shared, &bare)
            .await
            .map_err(|error| LoadError::Info {
                plugin: name.to_string(),
                error,
            })?;
        let kinds = pre
            .resource_kinds(shared, &bare)
            .await
            .map_err(|error| LoadError::Info {
                plugin: name.to_string(),
                error,
            })?;
        let mut info = port::plugin_info(info);
        info.resource_kinds = port::resource_kinds(kinds);
        let (sandbox, mut granted) = self.effective_sandbox(name, &grants, &info.capabilities)?;
        // The engine's own broker, not the pipeline, gives the `local` provider this token.
        granted.secrets.remove(local_api::SECRET_NAME);
        let plugin = LoadedPlugin {
            inner: Arc::new(plugin::PluginInner {
                runtime: shared.clone(),
                name: name.to_string(),
                origin: source.origin(),
                sha256,
                wit_version: shape.wit_version,
                functions: shape.functions,
                imports: shape.imports,
                info,
                pre,
                sandbox,
                granted,
                registry: fetched.registry,
            }),
        };
        Ok((plugin, outcome))
    }

    /// The engine's own `local` provider gets the local platform's access token, for the
    /// admin addresses only. No other plugin can: the source cannot be written in a pipeline.
    fn broker_local_platform_token(&self, grants: &mut Grants) {
        let hosts = self
            .shared
            .local_admin_ports
            .iter()
            .flat_map(|port| ["localhost", "127.0.0.1"].map(|host| format!("http://{host}:{port}")))
            .filter_map(|pattern| HttpPattern::parse(&pattern).ok())
            .collect();
        grants.secrets.insert(
            local_api::SECRET_NAME.to_string(),
            grants::SecretGrant {
                source: grants::source::SecretSource::LocalPlatform,
                hosts: Some(hosts),
                in_plan: true,
            },
        );
    }

    fn sandbox(
        &self,
        name: &str,
        grants: &Grants,
        declared: Vec<HttpPattern>,
        secrets: Arc<PluginSecrets>,
    ) -> Result<Arc<Sandbox>, LoadError> {
        let tcp = tcp::TcpPolicy::new(name, grants.tcp.clone(), declared.clone(), &self.shared);
        let egress = egress::EgressPolicy::new(
            name,
            grants.http.clone(),
            declared,
            secrets.clone(),
            grants.limits.max_response_bytes,
            grants.proxy.as_ref(),
            &self.shared,
        )
        .map_err(|e| LoadError::Sandbox {
            plugin: name.to_string(),
            message: format!("cannot set up its HTTP client: {e:#}"),
        })?;
        Ok(Arc::new(Sandbox {
            plugin: name.to_string(),
            env: grants
                .env
                .iter()
                .filter_map(|k| std::env::var(k).ok().map(|v| (k.clone(), v)))
                .collect(),
            dirs: grants
                .dirs
                .iter()
                .map(|d| grants::DirGrant {
                    writable: d.writable && !self.shared.dry_run,
                    ..d.clone()
                })
                .collect(),
            limits: grants.limits,
            secrets,
            egress: Arc::new(egress),
            tcp: Arc::new(tcp),
            sink: self.shared.sink.clone(),
        }))
    }

    /// The sandbox of plugin `name`: its grants intersected with what it declares (every
    /// difference told to the user), its directories checked, its secrets resolved.
    fn effective_sandbox(
        &self,
        name: &str,
        grants: &Grants,
        declared: &info::Capabilities,
    ) -> Result<(Arc<Sandbox>, crate::lockfile::Capabilities), LoadError> {
        let warn = |message: String| {
            self.shared.sink.event(Event::GrantMismatch {
                plugin: name.to_string(),
                message,
            })
        };
        let sandbox_error = |message: String| LoadError::Sandbox {
            plugin: name.to_string(),
            message,
        };
        let intersection::Intersection { grants, warnings } =
            intersection::intersect(name, grants, declared);
        warnings.into_iter().for_each(warn);
        let granted = intersection::granted(&grants);
        self.check_dirs(&grants.dirs).map_err(sandbox_error)?;
        let secrets = if self.shared.check_only {
            let (secrets, unreadable) = PluginSecrets::resolve_available(&grants.secrets);
            for error in unreadable {
                self.shared.sink.event(Event::SecretUnreadable {
                    plugin: name.to_string(),
                    error,
                });
            }
            secrets
        } else {
            PluginSecrets::resolve(&grants.secrets).map_err(|error| LoadError::Secret {
                plugin: name.to_string(),
                error,
            })?
        };
        let declared_patterns: Vec<HttpPattern> = declared
            .http
            .iter()
            .filter_map(|p| HttpPattern::parse(p).ok())
            .collect();
        let sandbox = self.sandbox(name, &grants, declared_patterns, Arc::new(secrets))?;
        Ok((sandbox, granted))
    }

    /// A directory to be opened must exist and expose no path the engine protects (its state
    /// and the local platform's tokens to any access, the pipeline's own files to writes).
    fn check_dirs(&self, dirs: &[grants::DirGrant]) -> Result<(), String> {
        for dir in dirs {
            if let Some(problem) = self
                .shared
                .protected_paths
                .iter()
                .find_map(|p| p.exposed_by(&dir.host, dir.writable))
            {
                return Err(problem);
            }
            if !dir.host.is_dir() {
                return Err(format!(
                    "directory {} granted as {} does not exist or is not a directory",
                    dir.host.display(),
                    dir.guest
                ));
            }
        }
        Ok(())
    }
}
