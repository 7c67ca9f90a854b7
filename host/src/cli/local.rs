//! `engine local up|status|down`: the local platform as its own process, so deployments
//! outlive the `engine run` that made them. `engine run` starts it too when a pipeline uses the
//! `local` provider and it is not running.

use super::CommandError;
use crate::report::table;
use local_api::{Health, Metrics, ServiceView};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, clap::Subcommand)]
pub enum LocalCommand {
    /// Start the local platform in the background (if it is not running)
    Up(UpArgs),
    /// Show the platform's services, revisions, weights and request counts
    Status(AddrArgs),
    /// Stop the platform and every process it started
    Down(AddrArgs),
    /// Run the platform in the foreground (what `up` starts)
    #[command(hide = true)]
    Serve(UpArgs),
}

#[derive(Debug, clap::Args)]
pub struct AddrArgs {
    /// The admin API's address
    #[arg(long, env = "ENGINE_LOCAL_ADMIN", default_value = local_api::DEFAULT_ADMIN, value_name = "URL")]
    admin: String,
}

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    #[command(flatten)]
    addr: AddrArgs,
    /// Where revision logs are kept [default: .engine/local]
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

/// The socket address of an admin URL (`http://localhost:7700` → 127.0.0.1:7700).
fn socket(admin: &str) -> Result<SocketAddr, CommandError> {
    let url = reqwest::Url::parse(admin)
        .map_err(|e| CommandError::usage(format!("admin address {admin:?}: {e}")))?;
    let port = url
        .port_or_known_default()
        .ok_or_else(|| CommandError::usage(format!("admin address {admin:?} has no port")))?;
    match url.host_str() {
        Some("localhost") | Some("127.0.0.1") => Ok(SocketAddr::from(([127, 0, 0, 1], port))),
        _ => Err(CommandError::usage(format!(
            "admin address {admin:?}: the local platform listens on loopback only (http://localhost:PORT)"
        ))),
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client")
}

/// The access token of the platform at `admin`, from its token file.
fn token(admin: &str) -> Result<String, CommandError> {
    local_platform::token::read(socket(admin)?.port()).map_err(CommandError::failure)
}

/// A call to the admin API with the platform's token.
fn call(
    admin: &str,
    method: reqwest::Method,
    path: &str,
) -> Result<reqwest::RequestBuilder, CommandError> {
    let url = format!("{}{path}", admin.trim_end_matches('/'));
    Ok(http().request(method, url).bearer_auth(token(admin)?))
}

async fn health(admin: &str) -> Option<Health> {
    let url = format!("{}/v1/health", admin.trim_end_matches('/'));
    http().get(url).send().await.ok()?.json().await.ok()
}

/// Starts the platform in the background unless it already answers at `admin`.
pub async fn ensure_running(admin: &str, dir: &Path) -> Result<Health, CommandError> {
    if let Some(h) = health(admin).await {
        return Ok(h);
    }
    let addr = socket(admin)?;
    std::fs::create_dir_all(dir)
        .map_err(|e| CommandError::failure(format!("cannot create {}: {e}", dir.display())))?;
    // The platform outlives this command: give it a path that does not depend on our directory.
    let dir = &std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let log_path = dir.join("platform.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| CommandError::failure(format!("cannot open {}: {e}", log_path.display())))?;
    let exe = std::env::current_exe()
        .map_err(|e| CommandError::failure(format!("cannot find the engine binary: {e}")))?;
    let mut command = std::process::Command::new(exe);
    command
        .args(["local", "serve", "--admin", admin, "--dir"])
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().map_err(CommandError::failure)?)
        .stderr(log);
    // Its own process group: a Ctrl-C meant for `engine run` does not stop the platform.
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut child = command
        .spawn()
        .map_err(|e| CommandError::failure(format!("cannot start the local platform: {e}")))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(h) = health(admin).await {
            eprintln!(
                "local platform started on {admin} (process {}, logs in {})",
                h.pid, h.logs
            );
            return Ok(h);
        }
        if let Ok(Some(status)) = child.try_wait() {
            let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
            let last: Vec<&str> = tail.lines().rev().take(5).collect();
            return Err(CommandError::failure(format!(
                "the local platform exited at once ({status}) on {addr}:\n{}",
                last.into_iter().rev().collect::<Vec<_>>().join("\n")
            )));
        }
        if Instant::now() > deadline {
            return Err(CommandError::failure(format!(
                "the local platform did not answer on {admin} within 30 s; see {}",
                log_path.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn run(command: &LocalCommand) -> Result<(), CommandError> {
    match command {
        LocalCommand::Up(args) => {
            let dir = args
                .dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(".engine/local"));
            let h = ensure_running(&args.addr.admin, &dir).await?;
            println!(
                "local platform running on {} (process {})",
                args.addr.admin, h.pid
            );
            Ok(())
        }
        LocalCommand::Serve(args) => serve(args).await,
        LocalCommand::Status(args) => status(&args.admin).await,
        LocalCommand::Down(args) => down(&args.admin).await,
    }
}

async fn serve(args: &UpArgs) -> Result<(), CommandError> {
    let addr = socket(&args.addr.admin)?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(".engine/local"));
    let running = local_platform::start(addr, &dir)
        .await
        .map_err(|e| CommandError::failure(format!("{e:#}")))?;
    eprintln!(
        "local platform serving on {addr}, logs in {}",
        dir.join("logs").display()
    );
    let platform = running.platform.clone();
    let mut task = running.task;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(CommandError::failure)?;
    tokio::select! {
        _ = &mut task => return Ok(()),
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    eprintln!("stopping every process of the local platform");
    platform.request_shutdown();
    let _ = task.await;
    Ok(())
}

async fn status(admin: &str) -> Result<(), CommandError> {
    let Some(h) = health(admin).await else {
        println!("the local platform is not running on {admin} (`engine local up` starts it)");
        return Ok(());
    };
    println!(
        "local platform on {admin}: process {}, logs in {}",
        h.pid, h.logs
    );
    let base = admin.trim_end_matches('/');
    let services: Vec<ServiceView> = call(admin, reqwest::Method::GET, "/v1/services")?
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(CommandError::failure)?
        .json()
        .await
        .map_err(CommandError::failure)?;
    let mut rows = vec![
        [
            "SERVICE", "REVISION", "STATE", "TRAFFIC", "REQUESTS", "5XX", "P95", "URL",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for s in &services {
        for r in &s.revisions {
            let weight = s
                .traffic
                .iter()
                .find(|w| w.revision == r.id)
                .map_or(0, |w| w.percent);
            let m: Metrics = http()
                .get(format!(
                    "{base}/v1/services/{}/revisions/{}/metrics",
                    s.name, r.id
                ))
                .send()
                .await
                .map_err(CommandError::failure)?
                .json()
                .await
                .unwrap_or_default();
            rows.push(vec![
                s.name.clone(),
                r.id.clone(),
                format!("{:?}", r.state).to_lowercase(),
                format!("{weight}%"),
                m.requests.to_string(),
                m.status.get("5xx").copied().unwrap_or(0).to_string(),
                format!("{:.1} ms", m.p95_ms),
                if weight > 0 {
                    s.url.clone()
                } else {
                    r.url.clone()
                },
            ]);
        }
    }
    if services.is_empty() {
        println!("no services");
    } else {
        print!("{}", table(&rows));
    }
    Ok(())
}

async fn down(admin: &str) -> Result<(), CommandError> {
    let Some(h) = health(admin).await else {
        println!("the local platform is not running on {admin}");
        return Ok(());
    };
    call(admin, reqwest::Method::POST, "/v1/shutdown")?
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(CommandError::failure)?;
    // The platform exits once every process it started is gone.
    let deadline = Instant::now() + Duration::from_secs(60);
    while Path::new(&format!("/proc/{}", h.pid)).exists() {
        if Instant::now() > deadline {
            return Err(CommandError::failure(format!(
                "the local platform (process {}) is still running a minute after it was told to stop",
                h.pid
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("local platform stopped");
    Ok(())
}

/// Starts the local platform for a pipeline whose services use the `local` provider, with
/// its logs beside the pipeline (`.engine/local`).
pub async fn ensure_for(pipeline: &crate::config::Pipeline) -> Result<(), CommandError> {
    let files = secret_files(pipeline);
    for admin in admins_used(pipeline) {
        ensure_running(&admin, &pipeline.directory().join(".engine").join("local")).await?;
        if !files.is_empty() {
            register_secret_files(&admin, &files).await?;
        }
    }
    Ok(())
}

/// The files the pipeline's `local` services read secrets from (`file:/path` references).
fn secret_files(pipeline: &crate::config::Pipeline) -> Vec<String> {
    let mut files: Vec<String> = pipeline
        .services
        .iter()
        .filter(|s| uses_local(pipeline, s))
        .flat_map(|s| s.secrets.values())
        .filter_map(|reference| reference.strip_prefix("file:"))
        .map(str::to_string)
        .collect();
    files.sort();
    files.dedup();
    files
}

/// Tells the platform which files the pipeline names as secrets: the only ones it will read.
async fn register_secret_files(admin: &str, files: &[String]) -> Result<(), CommandError> {
    let response = call(admin, reqwest::Method::POST, "/v1/secret-files")?
        .json(files)
        .send()
        .await
        .map_err(CommandError::failure)?;
    if response.status().is_success() {
        return Ok(());
    }
    let error = response
        .json::<local_api::ApiError>()
        .await
        .map(|e| e.error)
        .unwrap_or_default();
    Err(CommandError::failure(format!(
        "the local platform refused the pipeline's secret files: {error}"
    )))
}

/// Whether a service is deployed by the engine's own `local` provider.
fn uses_local(pipeline: &crate::config::Pipeline, service: &crate::config::Service) -> bool {
    pipeline.plugins.get(&service.provider).is_some_and(
        |p| matches!(&p.source, crate::plugins::PluginSource::Embedded(name) if name == "local"),
    )
}

/// The admin addresses of the `local` provider that a pipeline's services use.
pub fn admins_used(pipeline: &crate::config::Pipeline) -> Vec<String> {
    let mut admins: Vec<String> = pipeline
        .services
        .iter()
        .filter(|s| uses_local(pipeline, s))
        .map(|s| {
            s.provider_config
                .get("admin")
                .and_then(|a| a.as_str())
                .unwrap_or(local_api::DEFAULT_ADMIN)
                .to_string()
        })
        .collect();
    admins.sort();
    admins.dedup();
    admins
}

/// The local platform's admin ports a plugin must not reach through a wildcard grant: the
/// default one, `ENGINE_LOCAL_ADMIN`'s, and those the pipeline's `local` services name.
pub fn admin_ports(pipeline: Option<&crate::config::Pipeline>) -> Vec<u16> {
    let mut admins = vec![local_api::DEFAULT_ADMIN.to_string()];
    admins.extend(std::env::var("ENGINE_LOCAL_ADMIN").ok());
    if let Some(pipeline) = pipeline {
        admins.extend(admins_used(pipeline));
    }
    let mut ports: Vec<u16> = admins
        .iter()
        .filter_map(|a| reqwest::Url::parse(a).ok()?.port_or_known_default())
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}
