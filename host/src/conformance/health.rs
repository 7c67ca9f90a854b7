//! The health-check scenario: the check run against a target that is healthy, one that answers
//! with errors, and one nobody listens at. The kit serves the first two itself on loopback
//! (HTTP 200 and HTTP 503 to every path); a check whose notion of health is not an HTTP status
//! (one reading metrics) is given its own targets with `--healthy` and `--unhealthy`.

use super::{Rules, violated};
use crate::runtime::bindings::health::exports::engine::plugin::health::Target;
use crate::runtime::bindings::types::{Endpoint, EndpointKind, Verdict};
use crate::runtime::{CallError, LoadedPlugin};
use std::time::{SystemTime, UNIX_EPOCH};

/// Where the check is pointed in each case.
#[derive(Debug, Clone)]
pub struct Targets {
    pub healthy: String,
    /// None when the plugin cannot tell a reachable target is unhealthy (a TCP check).
    pub unhealthy: Option<String>,
    pub unreachable: String,
}

/// The servers the kit answers from, for as long as they are kept.
pub struct KitServers {
    pub healthy: String,
    pub unhealthy: String,
    pub unreachable: String,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for KitServers {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl KitServers {
    /// Starts a server answering 200 and one answering 503 on loopback, and finds a port
    /// nobody listens at.
    pub async fn start() -> std::io::Result<KitServers> {
        let (healthy, a) = serve(axum::http::StatusCode::OK, "ok").await?;
        let (unhealthy, b) =
            serve(axum::http::StatusCode::SERVICE_UNAVAILABLE, "unavailable").await?;
        // A port that was free a moment ago: bound, then let go.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await?
            .local_addr()?;
        Ok(KitServers {
            healthy: format!("http://localhost:{healthy}"),
            unhealthy: format!("http://localhost:{unhealthy}"),
            unreachable: format!("http://localhost:{}", closed.port()),
            tasks: vec![a, b],
        })
    }

    /// The `allow_http` and `allow_tcp` patterns that reach the kit's servers.
    pub fn grants(&self) -> (Vec<String>, Vec<String>) {
        let urls = [&self.healthy, &self.unhealthy, &self.unreachable];
        let http = urls.iter().map(|u| u.to_string()).collect();
        let tcp = urls
            .iter()
            .map(|u| u.trim_start_matches("http://").to_string())
            .collect();
        (http, tcp)
    }
}

async fn serve(
    status: axum::http::StatusCode,
    body: &'static str,
) -> std::io::Result<(u16, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let app = axum::Router::new().fallback(move || async move { (status, body) });
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((port, task))
}

/// How a plugin reaches its targets, by what it declares: over HTTP (any destination but a
/// `tcp://` one), over TCP (a `tcp://` destination), or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reach {
    pub http: bool,
    pub tcp: bool,
}

impl Reach {
    pub fn of(plugin: &LoadedPlugin) -> Reach {
        let hosts = &plugin.info().capabilities.http;
        Reach {
            http: hosts.iter().any(|h| !h.starts_with("tcp://")),
            tcp: hosts.iter().any(|h| h.starts_with("tcp://")),
        }
    }

    /// Only TCP connections: a server that answers with errors is as healthy as any other.
    pub fn tcp_only(self) -> bool {
        self.tcp && !self.http
    }
}

/// The check, with the configuration the pipeline gives it.
pub struct Subject<'a> {
    pub plugin: &'a LoadedPlugin,
    pub config: String,
}

impl Subject<'_> {
    async fn verdict(&self, url: &str) -> Result<(Verdict, String), CallError> {
        let health = self.plugin.health()?;
        let revision = "conformance-r2".to_string();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let target = Target {
            service: "conformance".into(),
            revision: Some(revision.clone()),
            endpoints: vec![
                Endpoint {
                    url: url.to_string(),
                    kind: EndpointKind::Service,
                    revision: None,
                },
                Endpoint {
                    url: url.to_string(),
                    kind: EndpointKind::Revision,
                    revision: Some(revision),
                },
            ],
            since_ms: now.saturating_sub(60_000),
        };
        let result = health.check(&self.config, &target).await?;
        Ok((result.verdict, result.message))
    }
}

fn name(v: Verdict) -> &'static str {
    match v {
        Verdict::Healthy => "healthy",
        Verdict::Unhealthy => "unhealthy",
        Verdict::Inconclusive => "inconclusive",
    }
}

/// Runs the scenario and returns every rule's result.
pub async fn check(subject: &Subject<'_>, targets: &Targets) -> Rules {
    let mut rules = Rules::default();
    rules
        .check(
            "healthy-target",
            "a healthy target is judged healthy within the check's time limit, the same when asked again",
            async {
                for _ in 0..2 {
                    let (verdict, message) = subject.verdict(&targets.healthy).await?;
                    if verdict != Verdict::Healthy {
                        violated!("{} is judged {}: {message}", targets.healthy, name(verdict));
                    }
                }
                Ok(())
            },
        )
        .await;
    const UNHEALTHY: &str = "unhealthy-target";
    const UNHEALTHY_DEMANDS: &str = "a target that answers with errors is judged unhealthy";
    match &targets.unhealthy {
        None => rules.skip(
            UNHEALTHY,
            UNHEALTHY_DEMANDS,
            "the check only opens TCP connections; give --unhealthy URL to check a target of your own",
        ),
        Some(url) => {
            rules
                .check(UNHEALTHY, UNHEALTHY_DEMANDS, async {
                    let (verdict, message) = subject.verdict(url).await?;
                    if verdict != Verdict::Unhealthy {
                        violated!("{url} is judged {}: {message}", name(verdict));
                    }
                    Ok(())
                })
                .await;
        }
    }
    rules
        .check(
            "unreachable-target",
            "a target nobody listens at is never judged healthy, and the check answers within its time limit",
            async {
                match subject.verdict(&targets.unreachable).await {
                    Ok((Verdict::Healthy, message)) => {
                        violated!("{} (nothing listens there) is judged healthy: {message}", targets.unreachable)
                    }
                    Ok(_) => Ok(()),
                    // An error is an answer too, as long as it comes in time.
                    Err(e @ CallError::DeadlineExceeded { .. }) => {
                        violated!("it did not answer in time: {e}")
                    }
                    Err(_) => Ok(()),
                }
            },
        )
        .await;
    rules
}
