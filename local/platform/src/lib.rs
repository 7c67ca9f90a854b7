//! The local platform: plays the part a cloud control plane plays for the other providers, on
//! one machine. Each revision of a service runs as supervised local processes
//! ([`supervisor`]); each service has an HTTP front door on loopback that splits requests
//! between revisions by weight, and each revision a URL of its own ([`proxy`]); every request's
//! status and latency is recorded per revision ([`metrics`]). An admin API on loopback
//! ([`api`], described in the `local-api` crate) is how the `local` provider plugin drives it.
//!
//! The platform runs as its own process (`engine local up`), so deployments outlive the
//! `engine run` that made them; stopping it (`engine local down`) stops every process it
//! started.

pub mod api;
pub mod metrics;
pub mod proxy;
pub mod supervisor;
pub mod token;

use local_api::{RevisionRequest, RevisionView, ServiceView, Weight};
use metrics::Recorder;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use supervisor::InstanceStatus;
use tokio::sync::watch;
use tokio::task::JoinHandle;

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    hyper::body::Incoming,
>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The platform's state: services by name.
pub struct Platform {
    services: Mutex<BTreeMap<String, Arc<Service>>>,
    /// Revision logs go to `dir/logs/SERVICE/REVISION.log`.
    dir: PathBuf,
    client: Client,
    /// Set to true to stop the platform.
    shutdown: watch::Sender<bool>,
    /// Every revision's request metrics, for `GET /metrics`.
    exporter: Arc<metrics::Exporter>,
    /// What every admin call but the read-only ones must carry ([`token`]).
    token: String,
    /// The files `file:` secret references may read: those the pipelines using this platform
    /// name, registered by the engine itself (canonical paths).
    secret_files: Mutex<std::collections::BTreeSet<PathBuf>>,
}

/// One service: its front door and revisions.
pub struct Service {
    pub name: String,
    pub front_port: u16,
    front: JoinHandle<()>,
    /// Newest first.
    revisions: Mutex<Vec<Arc<Revision>>>,
    split: Mutex<proxy::Split>,
}

/// One revision: its processes, own listener and request records.
pub struct Revision {
    pub id: String,
    pub request: RevisionRequest,
    pub created_at_ms: u64,
    pub log: PathBuf,
    pub port: u16,
    pub metrics: Recorder,
    instances: Vec<Arc<Mutex<InstanceStatus>>>,
    next: AtomicUsize,
    stop: watch::Sender<bool>,
    /// The revision's own listener (aborted on stop) and its instances' supervisors (awaited).
    listener: Mutex<Option<JoinHandle<()>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Revision {
    fn statuses(&self) -> Vec<InstanceStatus> {
        self.instances.iter().map(|i| lock(i).clone()).collect()
    }

    pub fn state(&self) -> local_api::RevisionState {
        supervisor::revision_state(&self.statuses())
    }

    /// The port of a ready instance, taking them in turn.
    pub fn next_ready_port(&self) -> Option<u16> {
        // On every proxied request: read the ports, without cloning whole statuses.
        let ready: Vec<u16> = self
            .instances
            .iter()
            .filter_map(|i| {
                let status = lock(i);
                status.ready.then_some(status.port)
            })
            .collect();
        if ready.is_empty() {
            return None;
        }
        Some(ready[self.next.fetch_add(1, Ordering::Relaxed) % ready.len()])
    }

    pub fn view(&self) -> RevisionView {
        let statuses = self.statuses();
        let state = supervisor::revision_state(&statuses);
        let message = statuses.iter().find_map(|s| s.failed.clone()).or_else(|| {
            (state == local_api::RevisionState::Degraded).then(|| {
                format!(
                    "an instance exited ({}) and is being restarted",
                    statuses
                        .iter()
                        .find_map(|s| s.last_exit.clone())
                        .unwrap_or_default()
                )
            })
        });
        RevisionView {
            id: self.id.clone(),
            artifact: self.request.artifact.clone(),
            created_at_ms: self.created_at_ms,
            state,
            message,
            url: format!("http://localhost:{}", self.port),
            log: self.log.display().to_string(),
            instances: statuses.iter().map(InstanceStatus::view).collect(),
            spec: self.request.spec.clone(),
        }
    }

    /// Stops the processes and the listener, and waits for the processes to be gone.
    async fn stop(&self) {
        if let Some(listener) = lock(&self.listener).take() {
            listener.abort();
        }
        let _ = self.stop.send(true);
        let tasks: Vec<JoinHandle<()>> = std::mem::take(&mut *lock(&self.tasks));
        for task in tasks {
            let _ = task.await;
        }
    }
}

impl Service {
    pub fn revision(&self, id: &str) -> Option<Arc<Revision>> {
        lock(&self.revisions).iter().find(|r| r.id == id).cloned()
    }

    pub fn pick(&self) -> Option<String> {
        lock(&self.split).pick()
    }

    pub fn view(&self) -> ServiceView {
        ServiceView {
            name: self.name.clone(),
            url: format!("http://localhost:{}", self.front_port),
            revisions: lock(&self.revisions).iter().map(|r| r.view()).collect(),
            traffic: lock(&self.split).weights(),
        }
    }
}

/// A request the platform refuses, with the HTTP status that says why.
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
}

fn refuse(status: u16, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        message: message.into(),
    }
}

/// A name that is safe as a path component and a URL segment.
fn check_name(what: &str, name: &str) -> Result<(), Refusal> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(refuse(
            422,
            format!("{what} {name:?}: use letters, digits, '-', '_' and '.' (not first)"),
        ))
    }
}

impl Platform {
    pub fn new(dir: &Path, token: String) -> Arc<Platform> {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        let (shutdown, _) = watch::channel(false);
        Arc::new(Platform {
            services: Mutex::default(),
            dir: dir.to_path_buf(),
            client,
            shutdown,
            exporter: Arc::default(),
            token,
            secret_files: Mutex::default(),
        })
    }

    /// Whether an `Authorization` header value carries this platform's token.
    pub fn authorizes(&self, header: Option<&str>) -> bool {
        token::authorizes(header, &self.token)
    }

    /// Allows `file:` secret references to these files (as the engine found them in a
    /// pipeline); each must exist, and is kept by its canonical path.
    pub fn allow_secret_files(&self, files: &[String]) -> Result<(), Refusal> {
        let mut canonical = Vec::with_capacity(files.len());
        for file in files {
            if !file.starts_with('/') {
                return Err(refuse(422, format!("{file:?} is not an absolute path")));
            }
            let path = std::fs::canonicalize(file)
                .map_err(|e| refuse(422, format!("secret file {file}: {e}")))?;
            canonical.push(path);
        }
        lock(&self.secret_files).extend(canonical);
        Ok(())
    }

    /// Reads a secret reference, refusing files no pipeline named.
    fn resolve_secret(&self, reference: &str) -> Result<String, String> {
        if let Some(file) = reference.strip_prefix("file:") {
            let allowed = std::fs::canonicalize(file)
                .is_ok_and(|path| lock(&self.secret_files).contains(&path));
            if !allowed {
                return Err(format!(
                    "{file} is not a secret file the pipeline names; the platform reads only the files the engine registered for the pipelines it runs (name it in the service's `secrets`)"
                ));
            }
        }
        local_api::resolve_secret(reference)
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }

    pub fn service(&self, name: &str) -> Option<Arc<Service>> {
        lock(&self.services).get(name).cloned()
    }

    pub fn services(&self) -> Vec<Arc<Service>> {
        lock(&self.services).values().cloned().collect()
    }

    /// The service, created with its front door if it is new.
    async fn service_or_create(
        self: &Arc<Self>,
        name: &str,
        port: Option<u16>,
    ) -> Result<Arc<Service>, Refusal> {
        if let Some(s) = self.service(name) {
            return Ok(s);
        }
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port.unwrap_or(0)))
            .await
            .map_err(|e| {
                refuse(
                    409,
                    format!(
                        "cannot open the front door of `{name}` on 127.0.0.1:{}: {e}",
                        port.unwrap_or(0)
                    ),
                )
            })?;
        let front_port = listener
            .local_addr()
            .map_err(|e| refuse(500, e.to_string()))?
            .port();
        let mut services = lock(&self.services);
        if let Some(s) = services.get(name) {
            return Ok(s.clone()); // created meanwhile; this listener is dropped
        }
        let front = tokio::spawn(proxy::accept(
            self.clone(),
            listener,
            name.to_string(),
            None,
        ));
        let service = Arc::new(Service {
            name: name.to_string(),
            front_port,
            front,
            revisions: Mutex::default(),
            split: Mutex::default(),
        });
        services.insert(name.to_string(), service.clone());
        Ok(service)
    }

    /// Creates a revision and starts its instances (or returns the existing one of that id),
    /// then waits until it is ready or has failed.
    pub async fn deploy(
        self: &Arc<Self>,
        service: &str,
        id: &str,
        request: RevisionRequest,
    ) -> Result<(RevisionView, bool), Refusal> {
        check_name("service", service)?;
        check_name("revision", id)?;
        if request.command.trim().is_empty() {
            return Err(refuse(422, "the revision's command is empty"));
        }
        if !(1..=64).contains(&request.instances) {
            return Err(refuse(422, "instances must be between 1 and 64"));
        }
        let svc = self.service_or_create(service, request.front_port).await?;
        if let Some(existing) = svc.revision(id) {
            return Ok((existing.view(), false));
        }
        let mut secrets = Vec::new();
        for (name, reference) in &request.secrets {
            let value = self
                .resolve_secret(reference)
                .map_err(|e| refuse(422, format!("secret {name}: {e}")))?;
            secrets.push((name.clone(), value));
        }
        let secrets = Arc::new(secrets);
        let log_dir = self.logs_dir().join(service);
        std::fs::create_dir_all(&log_dir)
            .map_err(|e| refuse(500, format!("cannot create {}: {e}", log_dir.display())))?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| refuse(500, format!("cannot open the revision's port: {e}")))?;
        let port = listener
            .local_addr()
            .map_err(|e| refuse(500, e.to_string()))?
            .port();
        let (stop, stop_rx) = watch::channel(false);
        let log = log_dir.join(format!("{id}.log"));
        let instances: Vec<Arc<Mutex<InstanceStatus>>> = (0..request.instances)
            .map(|_| Arc::new(Mutex::new(InstanceStatus::default())))
            .collect();
        let revision = Arc::new(Revision {
            id: id.to_string(),
            request: request.clone(),
            created_at_ms: metrics::now_ms(),
            log: log.clone(),
            port,
            metrics: Recorder::exported(&self.exporter, service, id),
            instances: instances.clone(),
            next: AtomicUsize::new(0),
            stop,
            listener: Mutex::default(),
            tasks: Mutex::default(),
        });
        {
            let mut revisions = lock(&svc.revisions);
            if let Some(existing) = revisions.iter().find(|r| r.id == id) {
                return Ok((existing.view(), false));
            }
            revisions.insert(0, revision.clone());
        }
        *lock(&revision.listener) = Some(tokio::spawn(proxy::accept(
            self.clone(),
            listener,
            service.to_string(),
            Some(id.to_string()),
        )));
        let mut tasks = Vec::new();
        for status in instances {
            let task = supervisor::InstanceTask {
                revision: id.to_string(),
                request: request.clone(),
                secrets: secrets.clone(),
                log: log.clone(),
                status,
                stop: stop_rx.clone(),
            };
            tasks.push(tokio::spawn(task.run()));
        }
        *lock(&revision.tasks) = tasks;
        // Wait until ready or failed.
        let deadline =
            std::time::Instant::now() + std::time::Duration::from_millis(request.ready_timeout_ms);
        let refusal = loop {
            match revision.state() {
                local_api::RevisionState::Ready => return Ok((revision.view(), true)),
                local_api::RevisionState::Failed => {
                    let view = revision.view();
                    break refuse(
                        422,
                        format!(
                            "revision {id} of `{service}` could not start: {}",
                            view.message.unwrap_or_default()
                        ),
                    );
                }
                _ if std::time::Instant::now() >= deadline => {
                    break refuse(
                        422,
                        format!(
                            "revision {id} of `{service}` did not accept connections within {} ms; the end of its log ({}):\n{}",
                            request.ready_timeout_ms,
                            log.display(),
                            supervisor::log_tail(&log, 10)
                        ),
                    );
                }
                _ => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        };
        // A revision that cannot start is not kept (its log is); a service it created goes too.
        lock(&svc.revisions).retain(|r| r.id != id);
        revision.stop().await;
        if lock(&svc.revisions).is_empty() && lock(&svc.split).weights().is_empty() {
            self.destroy(service).await;
        }
        Err(refusal)
    }

    pub fn set_traffic(&self, service: &str, weights: &[Weight]) -> Result<ServiceView, Refusal> {
        let svc = self
            .service(service)
            .ok_or_else(|| refuse(404, format!("no service `{service}`")))?;
        let total: u32 = weights.iter().map(|w| w.percent as u32).sum();
        if total != 100 {
            return Err(refuse(
                422,
                format!("the weights add up to {total}%, not 100%"),
            ));
        }
        for w in weights.iter().filter(|w| w.percent > 0) {
            let rev = svc.revision(&w.revision).ok_or_else(|| {
                refuse(409, format!("`{service}` has no revision {}", w.revision))
            })?;
            let state = rev.state();
            if state != local_api::RevisionState::Ready {
                return Err(refuse(
                    409,
                    format!(
                        "revision {} is {state:?}, not ready for traffic",
                        w.revision
                    ),
                ));
            }
        }
        *lock(&svc.split) = proxy::Split::new(weights);
        Ok(svc.view())
    }

    /// Stops a revision that takes no traffic and forgets it.
    pub async fn retire(&self, service: &str, id: &str) -> Result<(), Refusal> {
        let svc = self
            .service(service)
            .ok_or_else(|| refuse(404, format!("no service `{service}`")))?;
        if lock(&svc.split)
            .weights()
            .iter()
            .any(|w| w.revision == id && w.percent > 0)
        {
            return Err(refuse(409, format!("revision {id} still takes traffic")));
        }
        let revision = {
            let mut revisions = lock(&svc.revisions);
            let Some(i) = revisions.iter().position(|r| r.id == id) else {
                return Ok(()); // already gone
            };
            revisions.remove(i)
        };
        revision.stop().await;
        Ok(())
    }

    /// Stops every revision of a service and removes it.
    pub async fn destroy(&self, service: &str) {
        let Some(svc) = lock(&self.services).remove(service) else {
            return;
        };
        svc.front.abort();
        let revisions: Vec<Arc<Revision>> = std::mem::take(&mut *lock(&svc.revisions));
        for r in revisions {
            r.stop().await;
        }
    }

    /// Stops everything.
    pub async fn stop_all(&self) {
        let names: Vec<String> = lock(&self.services).keys().cloned().collect();
        for name in names {
            self.destroy(&name).await;
        }
    }

    /// Asks [`serve`] to stop.
    pub fn request_shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Every revision's request counters and latency histogram, in OpenMetrics text.
    pub fn prometheus(&self) -> String {
        self.exporter.encode()
    }
}

/// A running platform: its admin address, and the task serving it.
pub struct Running {
    pub admin: SocketAddr,
    /// The admin API's access token (also in [`token::path`]).
    pub token: String,
    pub platform: Arc<Platform>,
    pub task: JoinHandle<()>,
}

/// Starts the platform on `admin` (port 0 for any free port), keeping logs under `dir`. It
/// serves until [`Platform::request_shutdown`] (or `POST /v1/shutdown`), then stops every
/// process it started.
pub async fn start(admin: SocketAddr, dir: &Path) -> anyhow::Result<Running> {
    if !admin.ip().is_loopback() {
        anyhow::bail!("the local platform's admin API listens on loopback only, not {admin}");
    }
    std::fs::create_dir_all(dir)?;
    let listener = tokio::net::TcpListener::bind(admin).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {admin}: {e} (is a platform already running? `engine local status`)"
        )
    })?;
    let admin = listener.local_addr()?;
    let token = token::create(admin.port()).map_err(|e| {
        anyhow::anyhow!(
            "cannot write the admin API's access token {}: {e}",
            token::path(admin.port()).display()
        )
    })?;
    let platform = Platform::new(dir, token.clone());
    let (mut stop, mut stop_late) = (platform.shutdown.subscribe(), platform.shutdown.subscribe());
    let router = api::router(platform.clone());
    let p = platform.clone();
    let task = tokio::spawn(async move {
        let server = axum::serve(listener, router).with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        });
        // Graceful shutdown waits for idle keep-alive connections of API clients; give them a
        // moment, not forever.
        let patience = async move {
            let _ = stop_late.wait_for(|s| *s).await;
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        };
        tokio::select! {
            result = server => {
                if let Err(e) = result {
                    tracing::error!("admin API: {e}");
                }
            }
            () = patience => {}
        }
        p.stop_all().await;
        token::remove(admin.port(), &p.token);
    });
    Ok(Running {
        admin,
        platform,
        task,
        token,
    })
}
