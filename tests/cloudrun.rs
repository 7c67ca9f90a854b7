//! The `cloudrun` provider end to end: `engine run`, `plan`, `rollback` and `destroy` against
//! the Cloud Run test server (fakes/cloudrun), which holds every request the provider sends to
//! Google's published discovery document. The provider is never run against the live service.

mod support;

use cloudrun_fake::Fake;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

const TOKEN: &str = "ya29.test-access-token";

fn pipeline(fake: &Fake, services: &str) -> String {
    format!(
        r#"name = "shop"

[plugins.cloudrun]
allow_http = ["{url}"]
[plugins.cloudrun.secrets]
google = {{ from = "env:TEST_GOOGLE_TOKEN" }}

[plugins.http]
allow_http = ["{url}"]
[plugins.http.secrets]
id-token = {{ from = "env:TEST_GOOGLE_TOKEN" }}

[defaults]
provider = "cloudrun"
provider_config = {{ project = "shop", region = "europe-west1", endpoint = "{url}", poll_interval_ms = 10 }}
port = 8080
cpu = "1"
memory = "512Mi"

[[defaults.checks]]
name = "health"
plugin = "http"
config = {{ path = "/health", bearer_secret = "id-token" }}

{services}"#,
        url = fake.url
    )
}

const SERVICES: &str = r#"
[services.api]
image = "europe-docker.pkg.dev/shop/api:1"
min_instances = 1
max_instances = 10
concurrency = 80
ingress = "internal"
strategy = "canary"
strategy_config = { steps = [50, 100], pause = "0s" }

[services.web]
image = "europe-docker.pkg.dev/shop/web:1"
depends_on = ["api"]
ingress = "public"
"#;

fn engine(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(args)
        .env("ENGINE_CACHE_DIR", support::cache_dir())
        .env("TEST_GOOGLE_TOKEN", TOKEN)
        .current_dir(dir)
        .output()
        .unwrap()
}

/// Runs the engine off the async runtime, so the in-process test server keeps serving.
async fn run(dir: &Path, args: &[&str]) -> Output {
    let (dir, args) = (
        dir.to_path_buf(),
        args.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
    );
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        engine(&dir, &args)
    })
    .await
    .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn service(fake: &Fake, name: &str) -> Value {
    fake.model().services[&format!("projects/shop/locations/europe-west1/services/{name}")]
        .resource
        .clone()
}

fn serving(fake: &Fake, name: &str) -> Vec<(String, i64)> {
    service(fake, name)["trafficStatuses"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["percent"].as_i64().unwrap_or(0) > 0)
        .map(|t| {
            (
                t["revision"].as_str().unwrap().to_string(),
                t["percent"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_plan_canary_a_failing_container_and_destroy_against_the_published_api() {
    let fake = Fake::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pipeline.toml");
    std::fs::write(&file, pipeline(&fake, SERVICES)).unwrap();

    // First deployment: both services created, each revision checked at its own tag URL.
    let out = run(dir.path(), &["run", "pipeline.toml"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(serving(&fake, "api"), [("api-r1".to_string(), 100)]);
    assert_eq!(serving(&fake, "web"), [("web-r1".to_string(), 100)]);
    let api = service(&fake, "api");
    assert_eq!(api["ingress"], "INGRESS_TRAFFIC_INTERNAL_ONLY");
    assert_eq!(api["template"]["maxInstanceRequestConcurrency"], 80);
    assert_eq!(api["template"]["scaling"]["minInstanceCount"], 1);
    assert_eq!(
        api["template"]["containers"][0]["resources"]["limits"]["memory"],
        "512Mi"
    );
    assert_eq!(service(&fake, "web")["ingress"], "INGRESS_TRAFFIC_ALL");

    // The plan for a new image is a field-level diff.
    std::fs::write(
        &file,
        pipeline(&fake, &SERVICES.replace("shop/api:1", "shop/api:2")),
    )
    .unwrap();
    let out = run(dir.path(), &["plan", "pipeline.toml"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("api: update"), "{stdout}");
    assert!(
        stdout.contains(
            "image: \"europe-docker.pkg.dev/shop/api:1\" → \"europe-docker.pkg.dev/shop/api:2\""
        ),
        "{stdout}"
    );
    assert!(stdout.contains("web: no-change"), "{stdout}");

    // The canary: 50/50, then all of it, and the old revision retired.
    let out = run(dir.path(), &["run", "pipeline.toml"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(serving(&fake, "api"), [("api-r2".to_string(), 100)]);
    let revisions: Vec<String> =
        fake.model().services["projects/shop/locations/europe-west1/services/api"]
            .revisions
            .iter()
            .map(|r| {
                r["name"]
                    .as_str()
                    .unwrap()
                    .rsplit('/')
                    .next()
                    .unwrap()
                    .to_string()
            })
            .collect();
    assert_eq!(revisions, ["api-r2"], "the canary retired api-r1");
    let sent = fake.requests();
    let split_50 = sent
        .iter()
        .filter(|r| r.starts_with("PATCH /v2/projects/shop/locations/europe-west1/services/api"))
        .count();
    assert!(split_50 >= 3, "deploy, 50 %, 100 %, untag: {sent:#?}");
    assert!(
        fake.model().services["projects/shop/locations/europe-west1/services/api"]
            .served
            .contains_key("api-r2"),
        "the health check reached the new revision"
    );

    // A container that fails to start: Cloud Run's own message, and the service keeps api-r2.
    std::fs::write(
        &file,
        pipeline(
            &fake,
            &SERVICES.replace("shop/api:1", "shop/api:fail-to-start"),
        ),
    )
    .unwrap();
    let out = run(dir.path(), &["run", "pipeline.toml"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("failed to start and listen on the port"),
        "{}",
        text(&out)
    );
    assert_eq!(serving(&fake, "api"), [("api-r2".to_string(), 100)]);

    let out = run(dir.path(), &["destroy", "pipeline.toml"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(fake.model().services.is_empty());
    assert!(fake.violations().is_empty(), "{:#?}", fake.violations());
}
