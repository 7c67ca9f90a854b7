//! The local platform end to end: the `engine` binary, the built-in `local` provider, `canary`
//! strategy and `http`/`metrics` checks, real demo-service processes and real HTTP through the
//! front doors. Each test runs its own platform on a free admin port. No timed assertions:
//! every wait is on a condition, with a generous bound.

mod support;

use support::project::assert_exit;

use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A quickstart-shaped pipeline in a temporary directory, with its own platform.
struct Quickstart {
    dir: tempfile::TempDir,
    admin: String,
    orders_port: u16,
}

impl Quickstart {
    fn new(extra: &str) -> Quickstart {
        let dir = tempfile::tempdir().unwrap();
        let admin = format!("http://localhost:{}", free_port());
        let orders_port = free_port();
        let text = format!(
            r#"name = "quickstart"

[variables]
release = "v1"
error_rate = "0"

[plugins.local]
allow_http = ["{admin}"]

[plugins.http]
allow_http = ["http://localhost:*"]

[plugins.metrics]
allow_http = ["{admin}"]

[defaults]
provider = "local"
provider_config = {{ admin = "{admin}" }}
artifact = "{demo}"

[[defaults.checks]]
name = "ready"
plugin = "http"
config = {{ path = "/healthz" }}

[services.catalog]
args = ["--name", "catalog", "--release", "${{release}}"]

[services.orders]
depends_on = ["catalog"]
args = ["--name", "orders", "--release", "${{release}}", "--error-rate", "${{error_rate}}"]
provider_config = {{ port = {orders_port} }}
strategy = "canary"
strategy_config = {{ steps = [25, 50, 100], pause = "4s" }}

[[services.orders.checks]]
name = "ready"
plugin = "http"
config = {{ path = "/healthz" }}

[[services.orders.checks]]
name = "errors"
plugin = "metrics"
config = {{ admin = "{admin}", max_error_rate_percent = 1, min_requests = 20 }}

[services.web]
depends_on = ["orders"]
args = ["--name", "web", "--release", "${{release}}"]
{extra}"#,
            demo = engine::build_info::DEMO_SERVICE,
        );
        std::fs::write(dir.path().join("pipeline.toml"), text).unwrap();
        Quickstart {
            dir,
            admin,
            orders_port,
        }
    }

    fn pipeline(&self) -> PathBuf {
        self.dir.path().join("pipeline.toml")
    }

    fn engine(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_engine"));
        cmd.args(args)
            .env("ENGINE_CACHE_DIR", support::cache_dir())
            .env("ENGINE_LOCAL_ADMIN", &self.admin);
        cmd
    }

    fn run(&self, extra: &[&str]) -> Output {
        self.engine(&["run"])
            .arg(self.pipeline())
            .args(extra)
            .output()
            .unwrap()
    }

    fn set(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(self.pipeline()).unwrap();
        assert!(text.contains(from), "{from}");
        std::fs::write(self.pipeline(), text.replace(from, to)).unwrap();
    }

    /// The admin API's token, as the engine finds it: by the admin port.
    fn bearer(&self) -> String {
        let port: u16 = self.admin.rsplit(':').next().unwrap().parse().unwrap();
        let token = local_platform::token::read(port).unwrap_or_default();
        format!("Bearer {token}")
    }

    fn service(&self, name: &str) -> Option<Value> {
        let r = ureq::get(&format!("{}/v1/services/{name}", self.admin))
            .header("authorization", &self.bearer())
            .call()
            .ok()?;
        r.into_body().read_json().ok()
    }

    fn traffic(&self, name: &str) -> Vec<(String, u64)> {
        self.service(name).map_or(Vec::new(), |s| {
            s["traffic"]
                .as_array()
                .unwrap()
                .iter()
                .map(|w| {
                    (
                        w["revision"].as_str().unwrap().to_string(),
                        w["percent"].as_u64().unwrap(),
                    )
                })
                .collect()
        })
    }

    /// Who answers `n` requests at the orders front door: versions, or `500`.
    fn sample(&self, n: usize) -> Vec<String> {
        (0..n).map(|_| answer(self.orders_port)).collect()
    }

    fn pids(&self) -> Vec<u32> {
        let all: Value = ureq::get(&format!("{}/v1/services", self.admin))
            .header("authorization", &self.bearer())
            .call()
            .unwrap()
            .into_body()
            .read_json()
            .unwrap();
        all.as_array()
            .unwrap()
            .iter()
            .flat_map(|s| s["revisions"].as_array().unwrap().clone())
            .flat_map(|r| r["instances"].as_array().unwrap().clone())
            .filter_map(|i| i["pid"].as_u64().map(|p| p as u32))
            .collect()
    }

    fn down(&self) {
        let out = self.engine(&["local", "down"]).output().unwrap();
        assert_exit(&out, 0);
    }
}

/// A test that fails half-way still stops its platform (which outlives the engine processes).
impl Drop for Quickstart {
    fn drop(&mut self) {
        let _ = ureq::post(&format!("{}/v1/shutdown", self.admin))
            .header("authorization", &self.bearer())
            .send_empty();
    }
}

fn answer(port: u16) -> String {
    match ureq::get(&format!("http://localhost:{port}/")).call() {
        Ok(r) => {
            let v: Value = r.into_body().read_json().unwrap();
            v["version"].as_str().unwrap().to_string()
        }
        Err(ureq::Error::StatusCode(code)) => code.to_string(),
        Err(e) => format!("error: {e}"),
    }
}

fn count(answers: &[String], what: &str) -> usize {
    answers.iter().filter(|a| *a == what).count()
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

#[test]
fn a_canary_moves_real_traffic_and_a_bad_release_is_rolled_back_by_its_metrics() {
    let q = Quickstart::new("");
    // v1: the run starts the platform itself.
    let out = q.run(&[]);
    assert_exit(&out, 0);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("local platform started on"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(q.sample(10), vec!["v1"; 10]);

    // v2 by canary: sample the front door at each step while the run goes on.
    q.set("release = \"v1\"", "release = \"v2\"");
    let mut child = q
        .engine(&["run"])
        .arg(q.pipeline())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut observed: Vec<(u64, usize, usize)> = Vec::new(); // (v2 %, v2 answers, of n)
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the v2 run did not finish");
        let before = q.traffic("orders");
        let v2 = before
            .iter()
            .find(|(r, _)| r == "orders-r2")
            .map_or(0, |w| w.1);
        if (v2 == 25 || v2 == 50) && !observed.iter().any(|o| o.0 == v2) {
            let answers = q.sample(200);
            if q.traffic("orders") == before {
                observed.push((v2, count(&answers, "v2"), answers.len()));
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(child.wait().unwrap().success(), "the v2 rollout failed");
    assert_eq!(
        observed.len(),
        2,
        "both canary steps were observed: {observed:?}"
    );
    for (percent, v2, n) in &observed {
        // Tolerance: 2 points of the requests (the front door's split is exact per 100).
        let expected = *n as f64 * *percent as f64 / 100.0;
        assert!(
            (*v2 as f64 - expected).abs() <= *n as f64 * 0.02,
            "at {percent}% v2 answered {v2} of {n}"
        );
    }
    assert_eq!(q.sample(20), vec!["v2"; 20], "promoted");

    // v3 fails 30% of its requests: under real load the metrics gate aborts it at 25%.
    q.set("release = \"v2\"", "release = \"v3\"");
    q.set("error_rate = \"0\"", "error_rate = \"0.3\"");
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (stop, port) = (stop.clone(), q.orders_port);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                answer(port);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let out = q.run(&["--output", "json"]);
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    assert_exit(&out, 1);
    let events: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let orders = events
        .iter()
        .find(|e| e["type"] == "service-finished" && e["service"] == "orders")
        .unwrap();
    assert_eq!(orders["outcome"], "rolled-back");
    let reason = orders["reason"].as_str().unwrap();
    assert!(
        reason.contains("health checks failed at 25%") && reason.contains("error rate"),
        "{reason}"
    );
    assert_eq!(
        q.traffic("orders"),
        [("orders-r2".to_string(), 100)],
        "v2 takes all traffic again"
    );
    assert_eq!(q.sample(50), vec!["v2"; 50]);
    let revisions: Vec<String> = q.service("orders").unwrap()["revisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert!(
        !revisions.contains(&"orders-r3".to_string())
            && revisions.contains(&"orders-r1".to_string()),
        "v3 was retired; v1 is kept for a rollback: {revisions:?}"
    );

    // The same release again is refused with the reason, and v2 keeps serving.
    let out = q.run(&[]);
    assert_exit(&out, 1);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            "orders: failed: this release was rejected in run 3: health checks failed at 25%"
        ),
        "{text}"
    );
    assert_eq!(q.traffic("orders"), [("orders-r2".to_string(), 100)]);

    // Teardown leaves nothing running.
    let pids = q.pids();
    assert!(!pids.is_empty());
    let out = q.engine(&["destroy"]).arg(q.pipeline()).output().unwrap();
    assert_exit(&out, 0);
    assert!(q.pids().is_empty(), "destroy removed every service");
    q.down();
    assert!(
        pids.iter().all(|p| !alive(*p)),
        "no demo process is left after `engine local down`"
    );
}

#[test]
fn a_revision_that_crashes_on_start_fails_its_service_and_the_platform_lives_on() {
    let q = Quickstart::new(
        r#"
[services.broken]
artifact = "sh"
args = ["-c", "echo 'cannot read config.yaml' >&2; exit 1"]
"#,
    );
    let out = q.run(&["--output", "json"]);
    assert_exit(&out, 1);
    let text = String::from_utf8_lossy(&out.stdout);
    let broken = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|e| e["type"] == "service-finished" && e["service"] == "broken")
        .unwrap();
    assert_eq!(broken["outcome"], "failed");
    let reason = broken["reason"].as_str().unwrap();
    assert!(
        reason.contains("exited 3 times before accepting connections")
            && reason.contains("cannot read config.yaml"),
        "{reason}"
    );
    assert!(
        q.service("broken").is_none(),
        "a revision that cannot start leaves nothing behind on the platform"
    );
    // The other services deployed, and the platform still serves them.
    assert_eq!(q.sample(3), vec!["v1"; 3]);
    let status = q.engine(&["local", "status"]).output().unwrap();
    assert_exit(&status, 0);
    assert!(String::from_utf8_lossy(&status.stdout).contains("orders-r1"));
    q.down();
}

#[test]
fn blue_green_sends_no_user_traffic_to_the_new_revision_before_the_switch() {
    let port = free_port();
    let q = Quickstart::new(&format!(
        r#"
[services.shop]
args = ["--name", "shop", "--release", "${{release}}"]
provider_config = {{ port = {port} }}
strategy = "blue-green"
strategy_config = {{ approval = true, bake = "1s" }}
"#
    ));
    assert_exit(&q.run(&[]), 0);
    q.set("release = \"v1\"", "release = \"v2\"");
    // Only shop matters here; the canary of orders would take its time, so make it quick.
    q.set("pause = \"4s\"", "pause = \"0s\"");
    let out = q.run(&[]);
    assert_exit(&out, 4);
    let shop = q.service("shop").unwrap();
    let green = shop["revisions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "shop-r2")
        .expect("green is deployed")
        .clone();
    assert_eq!(green["state"], "ready");
    let front: Vec<String> = (0..100).map(|_| answer(port)).collect();
    assert_eq!(
        front,
        vec!["v1"; 100],
        "users only reach blue before the switch"
    );
    let green_port: u16 = green["url"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(answer(green_port), "v2", "green answers on its own URL");

    let out = q
        .engine(&["promote", "shop", "--pipeline"])
        .arg(q.pipeline())
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let front: Vec<String> = (0..50).map(|_| answer(port)).collect();
    assert_eq!(front, vec!["v2"; 50], "all traffic switched");
    let ids: Vec<String> = q.service("shop").unwrap()["revisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["shop-r2"], "blue is retired after the bake");
    q.down();
}

/// The data pipeline's development environment, from its example: the Cloud Run service run
/// as a local process (provider, artifact and grants switched by the environment), its checks
/// and its bootstrap hook, with no Google credentials anywhere. A stand-in for the API answers
/// as the guide's does.
#[test]
fn the_data_pipelines_development_environment_runs_on_the_local_platform() {
    let dir = tempfile::tempdir().unwrap();
    let admin = format!("http://localhost:{}", free_port());
    let port = free_port();
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/cloudrun-data-pipeline");
    std::fs::copy(
        example.join("bootstrap.sh"),
        dir.path().join("bootstrap.sh"),
    )
    .unwrap();
    let api = dir.path().join("api.py");
    std::fs::write(&api, STAND_IN_API).unwrap();
    let text = std::fs::read_to_string(example.join("pipeline.toml")).unwrap();
    let uvicorn = r#"args = ["-m", "uvicorn", "src.app.main:app", "--app-dir", "${api_dir}", "--host", "127.0.0.1", "--port", "{port}"]"#;
    assert!(text.contains(uvicorn));
    let text = text
        .replace(
            uvicorn,
            &format!("args = [\"{}\", \"{{port}}\"]", api.display()),
        )
        .replace("http://localhost:7700", &admin)
        .replace(
            "provider_config = { port = 8000 }",
            &format!("provider_config = {{ port = {port}, admin = \"{admin}\" }}"),
        );
    std::fs::write(dir.path().join("pipeline.toml"), text).unwrap();
    let q = Quickstart {
        dir,
        admin,
        orders_port: port,
    };
    let no_gcloud = tempfile::tempdir().unwrap();
    let out = q
        .engine(&["run"])
        .arg(q.pipeline())
        .args(["--env", "development"])
        .env("CLOUDSDK_CONFIG", no_gcloud.path())
        .env("ADMIN_API_KEY", "dev-admin-key")
        .env_remove("GOOGLE_APPLICATION_CREDENTIALS")
        .env_remove("GCE_METADATA_HOST")
        .current_dir(q.dir.path())
        .output()
        .unwrap();
    assert_exit(&out, 0);
    // The bootstrap hook reached the service with the admin key the platform passed it (its
    // output is logged with the run's).
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        output.contains("Bootstrap completed successfully"),
        "{output}"
    );
    assert!(!output.contains("Google"), "{output}");
    let health: Value = ureq::get(&format!("http://localhost:{port}/health"))
        .call()
        .unwrap()
        .into_body()
        .read_json()
        .unwrap();
    assert_eq!(health["environment"], "development");
    assert_eq!(health["log_level"], "DEBUG");
    q.down();
}

/// Answers like the Convergence API: `/health` with its environment, and the bootstrap call
/// when given the admin key the service was started with.
const STAND_IN_API: &str = r#"#!/usr/bin/env python3
import http.server, json, os, sys

class Api(http.server.BaseHTTPRequestHandler):
    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/health":
            self.answer(200, {"status": "healthy", "environment": os.environ["ENVIRONMENT"],
                              "log_level": os.environ["LOG_LEVEL"]})
        else:
            self.answer(404, {"detail": "Not Found"})

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", "0")))
        if self.path != "/api/v1/admin/bootstrap":
            self.answer(404, {"detail": "Not Found"})
        elif self.headers.get("x-admin-key") != os.environ["ADMIN_API_KEY"]:
            self.answer(403, {"detail": "Invalid admin key"})
        else:
            self.answer(200, {"status": "success", "message": "Bootstrap completed successfully"})

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Api).serve_forever()
"#;

/// `engine plugins check` against the local platform: the built-in provider keeps every rule
/// of the provider contract with real processes, and the copies it deploys are gone after.
#[test]
fn the_local_provider_passes_the_conformance_kit() {
    let q = Quickstart::new("");
    let out = q
        .engine(&["plugins", "check", "local", "--config"])
        .arg(q.pipeline())
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("against services catalog-check-a and orders-check-b"),
        "{shown}"
    );
    assert!(
        shown.ends_with("16 passed, 0 failed, 0 skipped\n"),
        "{shown}"
    );
    assert_eq!(
        q.service("catalog-check-a"),
        None,
        "the check's copy is removed"
    );
    assert_eq!(q.pids(), Vec::<u32>::new(), "no process is left running");
    q.down();
}
