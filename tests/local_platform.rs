//! The local platform in-process (the `local-platform` crate), with real processes (the quickstart's demo service) and real
//! HTTP through its front doors. No timed assertions: every wait is on a condition, with a
//! generous bound.

use local_api::{Metrics, RevisionRequest, RevisionState, ServiceView, Weight};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The demo service, built by host/core/build.rs.
fn demo_service() -> PathBuf {
    PathBuf::from(engine::build_info::DEMO_SERVICE)
}

fn demo(release: &str, error_rate: f64, instances: u32) -> RevisionRequest {
    RevisionRequest {
        command: demo_service().display().to_string(),
        args: vec![
            "--name".into(),
            "api".into(),
            "--release".into(),
            release.into(),
            "--error-rate".into(),
            error_rate.to_string(),
        ],
        env: Default::default(),
        secrets: Default::default(),
        instances,
        artifact: format!("demo {release}"),
        spec: serde_json::json!({ "release": release }),
        ready_timeout_ms: 20_000,
        front_port: None,
    }
}

struct Harness {
    admin: String,
    /// For the services' own URLs: carries nothing.
    http: reqwest::Client,
    /// For the admin API: carries the platform's token.
    api: reqwest::Client,
    _dir: tempfile::TempDir,
    running: local_platform::Running,
}

fn authorized(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

impl Harness {
    async fn start() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let running = local_platform::start("127.0.0.1:0".parse().unwrap(), dir.path())
            .await
            .unwrap();
        Harness {
            admin: format!("http://127.0.0.1:{}", running.admin.port()),
            http: reqwest::Client::new(),
            api: authorized(&running.token),
            _dir: dir,
            running,
        }
    }

    async fn deploy(
        &self,
        service: &str,
        revision: &str,
        request: &RevisionRequest,
    ) -> reqwest::Response {
        self.api
            .put(format!(
                "{}/v1/services/{service}/revisions/{revision}",
                self.admin
            ))
            .json(request)
            .send()
            .await
            .unwrap()
    }

    async fn traffic(&self, service: &str, weights: &[(&str, u8)]) -> reqwest::Response {
        let weights: Vec<Weight> = weights
            .iter()
            .map(|(r, p)| Weight {
                revision: r.to_string(),
                percent: *p,
            })
            .collect();
        self.api
            .put(format!("{}/v1/services/{service}/traffic", self.admin))
            .json(&weights)
            .send()
            .await
            .unwrap()
    }

    async fn service(&self, service: &str) -> ServiceView {
        self.api
            .get(format!("{}/v1/services/{service}", self.admin))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The versions that answer `n` requests at the front door.
    async fn versions(&self, url: &str, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        for _ in 0..n {
            let r = self.http.get(url).send().await.unwrap();
            let status = r.status();
            let body = r.text().await.unwrap();
            out.push(if status.is_success() {
                serde_json::from_str::<serde_json::Value>(&body).unwrap()["version"]
                    .as_str()
                    .unwrap()
                    .to_string()
            } else {
                format!("{}", status.as_u16())
            });
        }
        out
    }
}

fn alive(pid: u32) -> bool {
    PathBuf::from(format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

async fn wait_for(what: &str, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn revisions_serve_through_the_front_door_by_weight_and_record_metrics() {
    let h = Harness::start().await;
    let created = h.deploy("api", "api-r1", &demo("v1", 0.0, 2)).await;
    assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());
    let again = h.deploy("api", "api-r1", &demo("v1", 0.0, 2)).await;
    assert_eq!(
        again.status(),
        200,
        "deploying the same revision twice creates nothing"
    );

    let view = h.service("api").await;
    assert_eq!(view.revisions[0].state, RevisionState::Ready);
    assert_eq!(view.revisions[0].instances.len(), 2);
    // No weights yet: the front door says so rather than guessing.
    assert_eq!(h.http.get(&view.url).send().await.unwrap().status(), 503);

    assert_eq!(h.traffic("api", &[("api-r1", 100)]).await.status(), 200);
    assert_eq!(h.versions(&view.url, 4).await, ["v1"; 4]);

    assert_eq!(
        h.deploy("api", "api-r2", &demo("v2", 0.2, 1))
            .await
            .status(),
        201
    );
    // The new revision's own URL reaches it before it takes traffic.
    let r2_url = h.service("api").await.revisions[0].url.clone();
    assert_eq!(h.versions(&r2_url, 1).await, ["v2"]);

    assert_eq!(
        h.traffic("api", &[("api-r2", 25), ("api-r1", 75)])
            .await
            .status(),
        200
    );
    // The window starts after the probe of r2's own URL above: let the millisecond clock move
    // past it, or that request would count too.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let since = local_platform::metrics::now_ms();
    let answers = h.versions(&view.url, 400).await;
    let v1 = answers.iter().filter(|a| *a == "v1").count();
    let v2_ok = answers.iter().filter(|a| *a == "v2").count();
    let v2_err = answers.iter().filter(|a| *a == "500").count();
    assert_eq!(v1, 300, "75% of 400");
    assert_eq!(v2_ok + v2_err, 100, "25% of 400");
    assert_eq!(v2_err, 20, "v2 fails a fifth of its requests");

    let metrics: Metrics = h
        .http
        .get(format!(
            "{}/v1/services/api/revisions/api-r2/metrics?since_ms={since}",
            h.admin
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(metrics.requests, 100);
    assert_eq!(metrics.status["5xx"], 20);
    assert_eq!(metrics.error_rate_percent, 20.0);
    assert!(metrics.p99_ms >= metrics.p50_ms && metrics.p50_ms > 0.0);

    let text = h
        .http
        .get(format!("{}/metrics", h.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(
            "engine_local_requests_total{service=\"api\",revision=\"api-r2\",code=\"5xx\"} 20"
        ),
        "{text}"
    );
    h.platform_down().await;
}

#[tokio::test]
async fn bad_requests_are_refused_with_reasons() {
    let h = Harness::start().await;
    assert_eq!(
        h.deploy("api", "api-r1", &demo("v1", 0.0, 1))
            .await
            .status(),
        201
    );
    let r = h.traffic("api", &[("api-r1", 60)]).await;
    assert_eq!(r.status(), 422);
    assert!(r.text().await.unwrap().contains("add up to 60%, not 100%"));
    let r = h.traffic("api", &[("api-r9", 100)]).await;
    assert_eq!(r.status(), 409);
    assert!(r.text().await.unwrap().contains("has no revision api-r9"));
    let r = h.deploy("api!", "r1", &demo("v1", 0.0, 1)).await;
    assert_eq!(r.status(), 422);
    assert_eq!(h.traffic("api", &[("api-r1", 100)]).await.status(), 200);
    let r = h
        .api
        .delete(format!("{}/v1/services/api/revisions/api-r1", h.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409, "a revision with traffic is not retired");
    h.platform_down().await;
}

#[tokio::test]
async fn the_platform_survives_commands_that_fail_and_revisions_that_crash() {
    let h = Harness::start().await;
    let mut missing = demo("v1", 0.0, 1);
    missing.command = "/nonexistent/service-binary".into();
    let r = h.deploy("api", "api-r1", &missing).await;
    assert_eq!(r.status(), 422);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("cannot start `/nonexistent/service-binary`"),
        "{text}"
    );

    let mut exits = demo("v1", 0.0, 1);
    exits.command = "sh".into();
    exits.args = vec!["-c".into(), "echo 'config file missing' >&2; exit 3".into()];
    let r = h.deploy("api", "api-r2", &exits).await;
    assert_eq!(r.status(), 422);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("exited 3 times before accepting connections"),
        "{text}"
    );
    assert!(
        text.contains("config file missing"),
        "the log's end is quoted: {text}"
    );

    // A port already taken: the demo exits at once when asked for a port in use; the platform
    // reports it instead of hanging.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut clash = demo("v1", 0.0, 1);
    clash.args.extend([
        "--port".into(),
        taken.local_addr().unwrap().port().to_string(),
    ]);
    let r = h.deploy("api", "api-r3", &clash).await;
    assert_eq!(r.status(), 422);
    assert!(r.text().await.unwrap().contains("cannot listen on"));

    // The platform still works, and restarts an instance that dies after it was ready.
    assert_eq!(
        h.deploy("api", "api-r4", &demo("v4", 0.0, 1))
            .await
            .status(),
        201
    );
    assert_eq!(h.traffic("api", &[("api-r4", 100)]).await.status(), 200);
    let pid = h.service("api").await.revisions[0].instances[0]
        .pid
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::SIGKILL,
    )
    .unwrap();
    wait_for("the instance to be restarted", async || {
        let view = h.service("api").await;
        let r4 = view.revisions.iter().find(|r| r.id == "api-r4").unwrap();
        r4.state == RevisionState::Ready && r4.instances[0].restarts == 1
    })
    .await;
    let url = h.service("api").await.url;
    assert_eq!(h.versions(&url, 2).await, ["v4"; 2]);
    h.platform_down().await;
}

#[tokio::test]
async fn secrets_are_read_by_the_platform_and_only_their_references_cross_the_api() {
    let h = Harness::start().await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("token");
    std::fs::write(&secret, "s3cret-value\n").unwrap();
    let seen = dir.path().join("seen");
    // A wrapper that writes what the process received, then serves as the demo.
    let mut request = demo("v1", 0.0, 1);
    request.args = vec![
        "-c".into(),
        format!(
            "printf %s \"$API_TOKEN\" > {}; exec {} --name api --release v1",
            seen.display(),
            demo_service().display()
        ),
    ];
    request.command = "sh".into();
    request.secrets = [(
        "API_TOKEN".to_string(),
        format!("file:{}", secret.display()),
    )]
    .into();
    // Only files the engine registered (those its pipeline names) are read.
    let r = h.deploy("api", "api-r1", &request).await;
    assert_eq!(r.status(), 422);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("is not a secret file the pipeline names"),
        "{text}"
    );
    let r = h
        .api
        .post(format!("{}/v1/secret-files", h.admin))
        .json(&[secret.display().to_string()])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = h.deploy("api", "api-r1", &request).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    assert_eq!(std::fs::read_to_string(&seen).unwrap(), "s3cret-value");
    let view = h
        .api
        .get(format!("{}/v1/services/api", h.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !view.contains("s3cret-value"),
        "the value is served: {view}"
    );

    // A reference the platform cannot read is refused before anything starts.
    let mut missing = demo("v2", 0.0, 1);
    missing.secrets = [(
        "DB_PASSWORD".to_string(),
        "env:ENGINE_TEST_SURELY_UNSET_VARIABLE".to_string(),
    )]
    .into();
    let r = h.deploy("api", "api-r2", &missing).await;
    assert_eq!(r.status(), 422);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("secret DB_PASSWORD: environment variable ENGINE_TEST_SURELY_UNSET_VARIABLE is not set for the local platform"),
        "{text}"
    );
    assert!(
        h.service("api")
            .await
            .revisions
            .iter()
            .all(|r| r.id != "api-r2")
    );
    h.platform_down().await;
}

#[tokio::test]
async fn retiring_and_shutting_down_leave_no_process_behind() {
    let h = Harness::start().await;
    assert_eq!(
        h.deploy("api", "api-r1", &demo("v1", 0.0, 2))
            .await
            .status(),
        201
    );
    assert_eq!(
        h.deploy("api", "api-r2", &demo("v2", 0.0, 1))
            .await
            .status(),
        201
    );
    assert_eq!(
        h.deploy("web", "web-r1", &demo("w1", 0.0, 1))
            .await
            .status(),
        201
    );
    let pids = |v: &ServiceView| -> Vec<u32> {
        v.revisions
            .iter()
            .flat_map(|r| r.instances.iter().filter_map(|i| i.pid))
            .collect()
    };
    let api = h.service("api").await;
    let r1: Vec<u32> = api.revisions[1]
        .instances
        .iter()
        .filter_map(|i| i.pid)
        .collect();
    assert_eq!(r1.len(), 2);
    let r = h
        .api
        .delete(format!("{}/v1/services/api/revisions/api-r1", h.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(
        r1.iter().all(|p| !alive(*p)),
        "retired instances are stopped"
    );
    let all: Vec<u32> = pids(&h.service("api").await)
        .into_iter()
        .chain(pids(&h.service("web").await))
        .collect();
    assert_eq!(all.len(), 2);
    h.platform_down().await;
    assert!(
        all.iter().all(|p| !alive(*p)),
        "shutdown stops every process"
    );
}

impl Harness {
    async fn platform_down(self) {
        let r = self
            .api
            .post(format!("{}/v1/shutdown", self.admin))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        tokio::time::timeout(Duration::from_secs(60), self.running.task)
            .await
            .expect("the platform stops")
            .unwrap();
    }
}

#[tokio::test]
async fn every_call_that_changes_or_reveals_anything_needs_the_token() {
    let h = Harness::start().await;
    assert_eq!(
        h.deploy("api", "api-r1", &demo("v1", 0.0, 1))
            .await
            .status(),
        201
    );
    let token_file = local_platform::token::path(h.running.admin.port());
    assert_eq!(
        std::fs::read_to_string(&token_file).unwrap(),
        h.running.token,
        "the engine finds the token by the admin port"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let shell = RevisionRequest {
        command: "/bin/sh".into(),
        args: vec!["-c".into(), "touch /tmp/engine-test-pwned".into()],
        ..demo("x", 0.0, 1)
    };
    let wrong = authorized("0000");
    for client in [&h.http, &wrong] {
        let base = &h.admin;
        let calls = [
            client.get(format!("{base}/v1/services")),
            client.get(format!("{base}/v1/services/api")),
            client
                .put(format!("{base}/v1/services/api/revisions/evil"))
                .json(&shell),
            client
                .put(format!("{base}/v1/services/api/traffic"))
                .json(&[Weight {
                    revision: "api-r1".into(),
                    percent: 100,
                }]),
            client.delete(format!("{base}/v1/services/api/revisions/api-r1")),
            client.delete(format!("{base}/v1/services/api")),
            client
                .post(format!("{base}/v1/secret-files"))
                .json(&["/etc/passwd"]),
            client.post(format!("{base}/v1/shutdown")),
        ];
        for call in calls {
            let r = call.send().await.unwrap();
            assert_eq!(r.status(), 401);
            let body = r.text().await.unwrap();
            assert!(body.contains("needs its access token"), "{body}");
        }
    }
    let api = h.service("api").await;
    assert_eq!(api.revisions.len(), 1, "nothing was deployed or removed");
    assert!(!std::path::Path::new("/tmp/engine-test-pwned").exists());
    // What the metrics check and Prometheus read stays open: counts, no configuration.
    for path in [
        "/v1/health",
        "/metrics",
        "/v1/services/api/revisions/api-r1/metrics",
    ] {
        let r = h
            .http
            .get(format!("{}{path}", h.admin))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    let port = h.running.admin.port();
    h.platform_down().await;
    assert!(
        !local_platform::token::path(port).exists(),
        "a stopped platform removes its token"
    );
}
