//! Runs a revision's instances as local processes and keeps them running: each instance gets a
//! fresh port on every start, its output goes to the revision's log, and an instance that exits
//! is started again with a growing pause. An instance that never accepts connections after a
//! few starts, or whose command cannot start at all, fails the revision with the reason and the
//! last lines of its log.

use local_api::{InstanceView, RevisionRequest, RevisionState};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::watch;

/// Starts in a row that end before the process accepted a connection, before giving up.
const STARTS_BEFORE_FAILING: u32 = 3;
/// How long a process gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// One process of a revision, as the supervisor last saw it.
#[derive(Debug, Clone, Default)]
pub struct InstanceStatus {
    pub pid: Option<u32>,
    pub port: u16,
    pub restarts: u32,
    pub last_exit: Option<String>,
    pub ready: bool,
    /// Set when the instance gave up: why.
    pub failed: Option<String>,
}

impl InstanceStatus {
    pub fn view(&self) -> InstanceView {
        InstanceView {
            pid: self.pid,
            port: self.port,
            restarts: self.restarts,
            last_exit: self.last_exit.clone(),
        }
    }
}

/// What the revision's instances add up to.
pub fn revision_state(instances: &[InstanceStatus]) -> RevisionState {
    if instances.iter().any(|i| i.failed.is_some()) {
        RevisionState::Failed
    } else if instances.iter().all(|i| i.ready) {
        RevisionState::Ready
    } else if instances.iter().all(|i| i.restarts == 0) {
        RevisionState::Starting
    } else {
        RevisionState::Degraded
    }
}

/// The last `n` lines of a log file, for error messages.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Sends `signal` to the process group `pid` leads (the instance and anything it started).
fn signal_group(pid: u32, signal: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid as i32), signal);
}

/// Everything one instance's supervisor needs.
pub struct InstanceTask {
    pub revision: String,
    pub request: RevisionRequest,
    /// The secrets' values, resolved when the revision was created (never logged or served).
    pub secrets: std::sync::Arc<Vec<(String, String)>>,
    pub log: PathBuf,
    pub status: std::sync::Arc<Mutex<InstanceStatus>>,
    pub stop: watch::Receiver<bool>,
}

impl InstanceTask {
    fn update(&self, f: impl FnOnce(&mut InstanceStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }

    fn note(&self, line: &str) {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
        {
            let _ = writeln!(f, "[local platform] {line}");
        }
    }

    /// Supervises the instance until told to stop, or until it gives up.
    pub async fn run(mut self) {
        let mut early_exits = 0;
        let mut pause = Duration::from_millis(100);
        loop {
            if *self.stop.borrow() {
                return;
            }
            let port = match free_port() {
                Ok(p) => p,
                Err(e) => {
                    self.update(|s| s.failed = Some(format!("no free port on 127.0.0.1: {e}")));
                    return;
                }
            };
            let child = match self.spawn(port) {
                Ok(child) => child,
                Err(e) => {
                    let why = format!("cannot start `{}`: {e}", self.request.command);
                    self.note(&why);
                    self.update(|s| s.failed = Some(why));
                    return;
                }
            };
            let pid = child.id();
            self.update(|s| {
                s.pid = pid;
                s.port = port;
                s.ready = false;
            });
            self.note(&format!(
                "started `{}` as process {} on port {port}",
                self.request.command,
                pid.unwrap_or(0)
            ));
            let (exit, was_ready) = match self.watch(child, port).await {
                Some(ended) => ended,
                None => return, // told to stop; the process is gone
            };
            self.note(&format!("process exited: {exit}"));
            self.update(|s| {
                s.pid = None;
                s.ready = false;
                s.restarts += 1;
                s.last_exit = Some(exit.clone());
            });
            if was_ready {
                early_exits = 0;
                pause = Duration::from_millis(100);
            } else {
                early_exits += 1;
                if early_exits >= STARTS_BEFORE_FAILING {
                    let why = format!(
                        "it exited {early_exits} times before accepting connections on its port (last: {exit}); the end of its log:\n{}",
                        log_tail(&self.log, 10)
                    );
                    self.update(|s| s.failed = Some(why));
                    return;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.stop.changed() => return,
            }
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }

    fn spawn(&self, port: u16) -> std::io::Result<tokio::process::Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let args: Vec<String> = self
            .request
            .args
            .iter()
            .map(|a| a.replace("{port}", &port.to_string()))
            .collect();
        let mut command = tokio::process::Command::new(&self.request.command);
        command
            .args(&args)
            .envs(&self.request.env)
            .envs(self.secrets.iter().map(|(k, v)| (k, v)))
            .env("PORT", port.to_string())
            .env("ENGINE_REVISION", &self.revision)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group, so stopping it stops whatever it started too.
            .process_group(0)
            .kill_on_drop(true);
        // If the platform dies without stopping it (SIGKILL), the kernel stops the instance.
        unsafe {
            command.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        command.spawn()
    }

    /// Waits for the process to exit, marking it ready once its port accepts a connection.
    /// Returns how it exited and whether it had been ready, or `None` when told to stop.
    async fn watch(
        &mut self,
        mut child: tokio::process::Child,
        port: u16,
    ) -> Option<(String, bool)> {
        let mut ready = false;
        let mut probe = tokio::time::interval(Duration::from_millis(25));
        loop {
            tokio::select! {
                status = child.wait() => {
                    let exit = match status {
                        Ok(s) => s.to_string(),
                        Err(e) => format!("cannot wait for it: {e}"),
                    };
                    return Some((exit, ready));
                }
                _ = self.stop.changed() => {
                    stop(&mut child).await;
                    return None;
                }
                _ = probe.tick(), if !ready => {
                    if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                        ready = true;
                        self.update(|s| s.ready = true);
                    }
                }
            }
        }
    }
}

/// SIGTERM to the instance's process group, SIGKILL after the grace period.
async fn stop(child: &mut tokio::process::Child) {
    let Some(pid) = child.id() else { return };
    signal_group(pid, nix::sys::signal::Signal::SIGTERM);
    if tokio::time::timeout(STOP_GRACE, child.wait())
        .await
        .is_err()
    {
        signal_group(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = child.wait().await;
    }
    // Anything the instance started and left behind in its group.
    signal_group(pid, nix::sys::signal::Signal::SIGKILL);
}
