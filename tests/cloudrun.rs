//! The `cloudrun` provider end to end: `engine run`, `plan`, `rollback` and `destroy` against
//! the Cloud Run test server (fakes/cloudrun), which holds every request the provider sends to
//! Google's published discovery document. The provider is never run against the live service.

mod support;

use cloudrun_fake::Fake;
use cloudrun_fake::directory::VersionState;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};
use support::text;

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
        .env("ADMIN_API_KEY", "test-admin-key")
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

/// A service by its full name, `projects/P/locations/L/services/S`.
fn service_at(fake: &Fake, name: &str) -> Value {
    fake.model().services[name].resource.clone()
}

/// The revisions that take traffic, with their percent.
fn split_at(fake: &Fake, name: &str) -> Vec<(String, i64)> {
    service_at(fake, name)["trafficStatuses"]
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

fn service(fake: &Fake, name: &str) -> Value {
    service_at(
        fake,
        &format!("projects/shop/locations/europe-west1/services/{name}"),
    )
}

fn serving(fake: &Fake, name: &str) -> Vec<(String, i64)> {
    split_at(
        fake,
        &format!("projects/shop/locations/europe-west1/services/{name}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_plan_canary_a_failing_container_and_destroy_against_the_published_api() {
    let fake = Fake::start().await.unwrap();
    // The engine runs inside the VPC here: `api` has internal ingress, and its checks reach it.
    fake.model()
        .vpc_sources
        .insert("127.0.0.1".parse().unwrap());
    // Every operation takes three polls: the provider must keep polling until it is done.
    fake.model().operation_polls = 3;
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

    // The canary: 50/50, then all of it, and the old revision kept (without traffic).
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
    assert_eq!(
        revisions,
        ["api-r1", "api-r2"],
        "the canary kept api-r1 for a rollback"
    );
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

    // Cloud Run kept the rejected spec as the service's template; the same release again is
    // neither "unchanged" nor tried again unasked, in a plan or a run.
    let template = &service(&fake, "api")["template"]["containers"][0]["image"];
    assert_eq!(template, "europe-docker.pkg.dev/shop/api:fail-to-start");
    let mut summary = String::new();
    for command in ["plan", "run"] {
        let out = run(dir.path(), &[command, "pipeline.toml"]).await;
        summary = String::from_utf8_lossy(&out.stdout).to_string();
        assert_eq!(out.status.code(), Some(1), "{command}: {}", text(&out));
        assert!(
            text(&out).contains("this release was rejected in run 3:")
                && text(&out).contains("--retry-rejected"),
            "{command}: {}",
            text(&out)
        );
    }
    let row = summary
        .lines()
        .find(|l| l.starts_with("api "))
        .unwrap_or_default();
    let row: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        row[..4],
        ["api", "failed", "api-r2", "100%"],
        "what serves: {summary}"
    );
    let out = run(dir.path(), &["plan", "pipeline.toml", "--retry-rejected"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("image: \"europe-docker.pkg.dev/shop/api:2\" → \"europe-docker.pkg.dev/shop/api:fail-to-start\""),
        "the diff is against what serves: {}",
        text(&out)
    );
    let out = run(dir.path(), &["run", "pipeline.toml", "--retry-rejected"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("failed to start and listen on the port"));
    let out = run(dir.path(), &["history", "api", "pipeline.toml"]).await;
    let failed = text(&out).matches("deploy-failed").count();
    assert_eq!(
        failed,
        2,
        "both attempts are in the history: {}",
        text(&out)
    );

    // After a rollback to api-r1, the plan of the release that api-r2 runs shows the drift
    // from what serves now.
    let out = run(dir.path(), &["rollback", "api", "pipeline.toml"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(serving(&fake, "api"), [("api-r1".to_string(), 100)]);
    std::fs::write(
        &file,
        pipeline(&fake, &SERVICES.replace("shop/api:1", "shop/api:2")),
    )
    .unwrap();
    let out = run(dir.path(), &["plan", "pipeline.toml"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(
            "image: \"europe-docker.pkg.dev/shop/api:1\" → \"europe-docker.pkg.dev/shop/api:2\""
        ),
        "{}",
        text(&out)
    );

    let out = run(dir.path(), &["destroy", "pipeline.toml"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(fake.model().services.is_empty());
    assert!(fake.violations().is_empty(), "{:#?}", fake.violations());
}

// The example pipelines for the Cloud Run systems (examples/cloudrun-*), run as written except
// for where the API is and where the token comes from: these replacements, each of which must
// match, point them at the test server.

fn example(fake: &Fake, dir: &Path, name: &str, extra: &[(&str, &str)]) {
    let source =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../examples/{name}/pipeline.toml"));
    let mut text = std::fs::read_to_string(&source).unwrap();
    let url = fake.url.as_str();
    let token = format!(r#"google = {{ from = "env:TEST_GOOGLE_TOKEN", hosts = ["{url}"] }}"#);
    let api = format!(r#"allow_http = ["{url}"]"#);
    let provider =
        format!("[defaults.provider_config]\nendpoint = \"{url}\"\npoll_interval_ms = 10");
    let hosts = format!(r#"hosts = ["{url}"]"#);
    // The API grant: the line naming Cloud Run's API, with whichever other Google APIs it names.
    let api_grant = text
        .lines()
        .find(|l| l.starts_with(r#"allow_http = ["https://run.googleapis.com""#))
        .unwrap_or_else(|| panic!("{name}: the example no longer grants run.googleapis.com"))
        .to_string();
    let mut replacements: Vec<(&str, &str)> = vec![
        (api_grant.as_str(), api.as_str()),
        (r#"google = { from = "google" }"#, token.as_str()),
        (r#"allow_http = ["https://*.run.app"]"#, api.as_str()),
    ];
    // Where the example has them.
    for (from, to) in [
        (
            r#"id-token = { from = "google-id-token" }"#,
            r#"id-token = { from = "env:TEST_GOOGLE_TOKEN" }"#,
        ),
        ("[defaults.provider_config]", provider.as_str()),
        (
            r#"hosts = ["https://cloudscheduler.googleapis.com"]"#,
            hosts.as_str(),
        ),
    ] {
        text = text.replace(from, to);
    }
    replacements.extend_from_slice(extra);
    for (from, to) in replacements {
        assert!(
            text.contains(from),
            "{name}: the example no longer contains {from:?}"
        );
        text = text.replace(from, to);
    }
    std::fs::write(dir.join("pipeline.toml"), text).unwrap();
}

/// What a guide's setup made before the first deploy, as `plan` looks it up: service accounts
/// (short names, in `project`), VPC connectors (`region`, name) and secrets with one enabled
/// version.
fn provision(
    fake: &Fake,
    project: &str,
    accounts: &[&str],
    connectors: &[(&str, &str)],
    secrets: &[&str],
) {
    let mut directory = fake.directory();
    for account in accounts {
        directory.add_service_account(
            project,
            &format!("{account}@{project}.iam.gserviceaccount.com"),
        );
    }
    for (region, connector) in connectors {
        directory.add_connector(
            &format!("projects/{project}/locations/{region}/connectors/{connector}"),
            "READY",
        );
    }
    for secret in secrets {
        directory.add_secret(project, secret, &[VersionState::Enabled]);
    }
}

/// `engine run --env production --output json`, which must succeed; its events.
async fn production_run_events(dir: &Path) -> Vec<Value> {
    let args = [
        "run",
        "pipeline.toml",
        "--env",
        "production",
        "--output",
        "json",
    ];
    let out = run(dir, &args).await;
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Replaces `from` (which must be there) with `to` in a file: a new release, say.
fn edit(file: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(file).unwrap();
    assert!(text.contains(from), "{} has no {from:?}", file.display());
    std::fs::write(file, text.replace(from, to)).unwrap();
}

/// `engine plan --env production`, printed (docs/cloudrun.md shows it) and returned.
async fn production_plan(dir: &Path) -> String {
    let out = run(dir, &["plan", "pipeline.toml", "--env", "production"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let plan = String::from_utf8_lossy(&out.stdout).to_string();
    println!("{plan}");
    plan
}

fn policy_members(fake: &Fake, name: &str) -> Vec<String> {
    let model = fake.model();
    model.services[name].policy["bindings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| b["role"] == "roles/run.invoker")
        .flat_map(|b| b["members"].as_array().cloned().unwrap_or_default())
        .map(|m| m.as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agenthub_example_deploys_in_its_order_with_its_security_model() {
    let fake = Fake::start().await.unwrap();
    // The project's VPC, with a real proxy in it; this machine is outside.
    let proxy = support::proxy::VpcProxy::start();
    fake.model()
        .vpc_sources
        .insert(support::proxy::VpcProxy::inside());
    let dir = tempfile::tempdir().unwrap();
    example(
        &fake,
        dir.path(),
        "cloudrun-agenthub",
        &[
            (r#"canary_pause = "5m""#, r#"canary_pause = "0s""#),
            (r#"delay = "30s""#, r#"delay = "1ms""#),
        ],
    );
    let accounts = [
        "agenthub-agent-management",
        "agenthub-api-gateway",
        "agenthub-authentication",
        "agenthub-conversation-management",
        "agenthub-database-operations",
        "agenthub-document-processing",
        "agenthub-embedding-generation",
        "agenthub-microservices",
        "agenthub-payment-intent",
        "agenthub-rag-query",
    ];
    let connector = [("asia-south1", "agenthub-connector")];
    provision(&fake, "agenthub-production", &accounts, &connector, &[]);
    let plan = production_plan(dir.path()).await;
    assert!(
        plan.contains("api-gateway: create (create api-gateway in asia-south1)"),
        "{plan}"
    );
    assert!(
        plan.contains("analyse api-gateway-planned: health (after 1ms)"),
        "{plan}"
    );
    assert!(
        plan.contains(r#"invokers: (none) → ["allUsers"]"#),
        "{plan}"
    );

    // From outside the VPC, internal services do not answer: the first checks fail, and the
    // new services are removed again.
    let out = run(dir.path(), &["run", "pipeline.toml", "--env", "production"]).await;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("404"), "{}", text(&out));
    assert!(
        fake.model().services.is_empty(),
        "{:?}",
        fake.model().services.keys().collect::<Vec<_>>()
    );
    // Through a proxy inside the VPC they do; the releases the checks could not reach are
    // retried on purpose.
    let file = dir.path().join("pipeline.toml");
    edit(
        &file,
        r#"# proxy = "http://10.8.0.2:3128""#,
        &format!(r#"proxy = "{}""#, proxy.url),
    );
    let out = run(
        dir.path(),
        &[
            "run",
            "pipeline.toml",
            "--env",
            "production",
            "--retry-rejected",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let prefix = "projects/agenthub-production/locations/asia-south1/services/";
    let names: Vec<String> = fake
        .model()
        .services
        .keys()
        .map(|k| k.trim_start_matches(prefix).to_string())
        .collect();
    assert_eq!(names.len(), 29, "the guide's 29 services: {names:?}");

    // The guide's order: infrastructure, core, domain, and the gateway last.
    let created: Vec<String> = fake
        .requests()
        .iter()
        .filter_map(|r| r.split("services?serviceId=").nth(1).map(String::from))
        .collect();
    let at = |s: &str| {
        created
            .iter()
            .position(|c| c == s)
            .unwrap_or_else(|| panic!("{s} not created"))
    };
    assert_eq!(created.last().map(String::as_str), Some("api-gateway"));
    for (first, then) in [
        ("authentication-service", "agent-management-service"),
        (
            "database-operations-service",
            "conversation-management-service",
        ),
        ("agent-management-service", "calendar-provider-service"),
        ("embedding-generation-service", "rag-query-service"),
        ("payment-intent-service", "payment-processing-service"),
        ("payment-processing-service", "refund-service"),
    ] {
        assert!(at(first) < at(then), "{first} before {then}: {created:?}");
    }

    // Internal-only everywhere but the gateway; the guide's sizes; invokers kept to the callers.
    let agent_name = format!("{prefix}agent-management-service");
    let gateway_name = format!("{prefix}api-gateway");
    let agent = service_at(&fake, &agent_name);
    assert_eq!(agent["ingress"], "INGRESS_TRAFFIC_INTERNAL_ONLY");
    assert_eq!(
        agent["template"]["serviceAccount"],
        "agenthub-agent-management@agenthub-production.iam.gserviceaccount.com"
    );
    let gateway = service_at(&fake, &gateway_name);
    assert_eq!(gateway["ingress"], "INGRESS_TRAFFIC_ALL");
    assert_eq!(
        gateway["template"]["scaling"],
        serde_json::json!({ "minInstanceCount": 2, "maxInstanceCount": 100 })
    );
    assert_eq!(
        gateway["template"]["containers"][0]["resources"]["limits"],
        serde_json::json!({ "cpu": "1", "memory": "1024Mi" })
    );
    assert_eq!(policy_members(&fake, &gateway_name), ["allUsers"]);
    assert_eq!(
        policy_members(&fake, &agent_name),
        [
            "serviceAccount:agenthub-api-gateway@agenthub-production.iam.gserviceaccount.com",
            "serviceAccount:agenthub-microservices@agenthub-production.iam.gserviceaccount.com",
        ]
    );
    // The data plane enforces it: from outside, an internal service is not there; from inside,
    // no token, no answer.
    let client = reqwest::Client::new();
    let outside = client
        .get(format!("{}/health", agent["uri"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(outside.status(), 404);
    let inside = reqwest::Client::builder()
        .proxy(reqwest::Proxy::all(&proxy.url).unwrap())
        .build()
        .unwrap();
    let anonymous = inside
        .get(format!("{}/health", agent["uri"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 403);
    let public = client
        .get(format!("{}/health", gateway["uri"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(public.status(), 200);

    // A new release: every service goes out as a canary, 50 % then all of it.
    edit(&file, r#"release = "latest""#, r#"release = "v2""#);
    let events = production_run_events(dir.path()).await;
    let halfway = events
        .iter()
        .filter(|e| e["type"] == "phase" && e["traffic"] == 50)
        .count();
    assert!(
        halfway >= 29,
        "each service spent a step at 50 %: {halfway}"
    );
    let all: Vec<String> = fake.model().services.keys().cloned().collect();
    for name in &all {
        let id = name.rsplit('/').next().unwrap();
        // Run 1 was refused from outside the VPC, run 2 deployed through the proxy.
        assert_eq!(split_at(&fake, name), [(format!("{id}-r3"), 100)], "{name}");
        assert_eq!(
            service_at(&fake, name)["template"]["containers"][0]["image"],
            format!("gcr.io/agenthub-production/{id}:v2")
        );
    }
    assert!(fake.violations().is_empty(), "{:#?}", fake.violations());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_atp_example_deploys_both_services_to_three_regions_in_lockstep() {
    let fake = Fake::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    atp_example(&fake, dir.path());
    let plan = production_plan(dir.path()).await;
    assert!(
        plan.contains(
            "atp-router: create (create atp-router in us-central1, europe-west1, asia-southeast1)"
        ),
        "{plan}"
    );

    let out = run(dir.path(), &["run", "pipeline.toml", "--env", "production"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let regions = ["us-central1", "europe-west1", "asia-southeast1"];
    for region in regions {
        let name = format!("projects/atp-production/locations/{region}/services/atp-router");
        let router = service_at(&fake, &name);
        assert_eq!(split_at(&fake, &name), [("atp-router-r1".to_string(), 100)]);
        let t = &router["template"];
        assert_eq!(
            t["containers"][0]["image"],
            "gcr.io/atp-production/atp-router:latest"
        );
        assert_eq!(t["maxInstanceRequestConcurrency"], 1000);
        assert_eq!(
            t["scaling"],
            serde_json::json!({ "minInstanceCount": 1, "maxInstanceCount": 1000 })
        );
        assert_eq!(t["timeout"], "300s");
        assert_eq!(t["executionEnvironment"], "EXECUTION_ENVIRONMENT_GEN2");
        assert_eq!(t["vpcAccess"]["egress"], "PRIVATE_RANGES_ONLY");
        assert_eq!(
            t["vpcAccess"]["connector"],
            format!("projects/atp-production/locations/{region}/connectors/atp-connector")
        );
        assert_eq!(
            t["containers"][0]["resources"],
            serde_json::json!({ "limits": { "cpu": "2", "memory": "4096Mi" }, "cpuIdle": false })
        );
        let env = t["containers"][0]["env"].as_array().unwrap();
        let db = env.iter().find(|e| e["name"] == "DATABASE_URL").unwrap();
        assert_eq!(
            db["valueSource"]["secretKeyRef"],
            serde_json::json!({ "secret": "atp-database-secret", "version": "latest" })
        );
        let gateway =
            format!("projects/atp-production/locations/{region}/services/atp-memory-gateway");
        let gateway = service_at(&fake, &gateway);
        assert_eq!(gateway["template"]["maxInstanceRequestConcurrency"], 500);
        assert_eq!(
            gateway["template"]["containers"][0]["ports"][0]["containerPort"],
            8000
        );
    }

    // A new release rolls out as one canary across the three regions.
    let file = dir.path().join("pipeline.toml");
    edit(&file, r#"release = "latest""#, r#"release = "2.1.0""#);
    let out = run(dir.path(), &["run", "pipeline.toml", "--env", "production"]).await;
    assert!(out.status.success(), "{}", text(&out));
    for region in regions {
        let name = format!("projects/atp-production/locations/{region}/services/atp-router");
        assert_eq!(
            split_at(&fake, &name),
            [("atp-router-r2".to_string(), 100)],
            "{region}"
        );
        // The health checks reached the new revision in every region, not only the first.
        assert!(
            fake.model().services[&name]
                .served
                .contains_key("atp-router-r2"),
            "{region} was not checked"
        );
    }

    // A release broken in one region alone is broken: the canary stops in all three.
    let asia = "projects/atp-production/locations/asia-southeast1/services/atp-router";
    fake.model()
        .broken
        .insert((asia.to_string(), "atp-router-r3".to_string()));
    edit(&file, r#"release = "2.1.0""#, r#"release = "2.2.0""#);
    let out = run(dir.path(), &["run", "pipeline.toml", "--env", "production"]).await;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("asia-southeast1/atp-router/_tag/"),
        "the failing region is named: {}",
        text(&out)
    );
    for region in regions {
        let name = format!("projects/atp-production/locations/{region}/services/atp-router");
        assert_eq!(
            split_at(&fake, &name),
            [("atp-router-r2".to_string(), 100)],
            "{region} went back to the release that serves"
        );
    }
    assert!(fake.violations().is_empty(), "{:#?}", fake.violations());
}

/// The ATP example (without its canary pauses) and what its guide's setup made, in the fake.
fn atp_example(fake: &Fake, dir: &Path) {
    example(
        fake,
        dir,
        "cloudrun-atp",
        &[(r#"pause = "2m""#, r#"pause = "0s""#)],
    );
    let atp_secrets = [
        "atp-database-secret",
        "atp-redis-secret",
        "atp-auth-secret",
        "atp-oidc-secret",
        "atp-provider-secrets",
        "atp-encryption-secret",
    ];
    provision(
        fake,
        "atp-production",
        &["atp-router", "atp-memory-gateway"],
        &[
            ("us-central1", "atp-connector"),
            ("europe-west1", "atp-connector"),
            ("asia-southeast1", "atp-connector"),
        ],
        &atp_secrets,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_is_given_one_region_of_another_by_urls_region() {
    let fake = Fake::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    atp_example(&fake, dir.path());
    // The gateway in every region calls the router's European instance (data residency, say).
    let file = dir.path().join("pipeline.toml");
    let env = r#"env = { PII_DETECTION_ENABLED = "true", AUDIT_LOG_ENABLED = "true" }"#;
    edit(
        &file,
        env,
        r#"env = { PII_DETECTION_ENABLED = "true", AUDIT_LOG_ENABLED = "true", ROUTER_EU = "${services.atp-router.urls.europe-west1}" }"#,
    );
    let plan = production_plan(dir.path()).await;
    assert!(plan.contains("atp-memory-gateway: create"), "{plan}");
    let out = run(dir.path(), &["run", "pipeline.toml", "--env", "production"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let service = |region: &str, name: &str| {
        format!("projects/atp-production/locations/{region}/services/{name}")
    };
    let router_eu = service_at(&fake, &service("europe-west1", "atp-router"))["uri"].clone();
    let router_us = service_at(&fake, &service("us-central1", "atp-router"))["uri"].clone();
    assert_ne!(
        router_eu, router_us,
        "the fake gives each region its own URL"
    );
    for region in ["us-central1", "europe-west1", "asia-southeast1"] {
        let env = env_of(&fake, &service(region, "atp-memory-gateway"));
        assert_eq!(env["ROUTER_EU"], router_eu.as_str().unwrap(), "{region}");
    }

    // A region the router does not run in is refused before the gateway deploys it, naming
    // the regions it does run in.
    edit(
        &file,
        "${services.atp-router.urls.europe-west1}",
        "${services.atp-router.urls.mars}",
    );
    edit(&file, r#"release = "latest""#, r#"release = "2.1.0""#);
    let out = run(dir.path(), &["run", "pipeline.toml", "--env", "production"]).await;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("runs in us-central1, europe-west1, asia-southeast1, not in mars"),
        "{}",
        text(&out)
    );
    for region in ["us-central1", "europe-west1", "asia-southeast1"] {
        let gateway = service_at(&fake, &service(region, "atp-memory-gateway"));
        assert_eq!(
            gateway["template"]["containers"][0]["image"],
            "gcr.io/atp-production/atp-memory-gateway:latest",
            "{region}: the gateway kept its release"
        );
    }
    assert!(fake.violations().is_empty(), "{:#?}", fake.violations());
}

/// Requests to `url` every 25 ms until dropped, like users of the service.
struct Users(tokio::task::JoinHandle<()>);

impl Users {
    fn start(url: String) -> Users {
        Users(tokio::spawn(async move {
            let client = reqwest::Client::new();
            loop {
                let _ = client.get(&url).send().await;
                tokio::time::sleep(std::time::Duration::from_millis(25)).await;
            }
        }))
    }
}

impl Drop for Users {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_pipeline_example_goes_dark_then_25_50_100_behind_metrics_gates() {
    let fake = Fake::start().await.unwrap();
    let prometheus = support::prometheus::Prometheus::start(&[fake.addr]).await;
    let dir = tempfile::tempdir().unwrap();
    let monitoring = r#"prometheus = "https://monitoring.googleapis.com/v1/projects/${project}/location/global/prometheus""#;
    let local_prometheus = format!(r#"prometheus = "{}""#, prometheus.url);
    let metrics_grant = format!(r#"allow_http = ["{}"]"#, prometheus.url);
    let provider = format!(
        "[services.convergence-api.provider_config]\nendpoint = \"{}\"\npoll_interval_ms = 10",
        fake.url
    );
    example(
        &fake,
        dir.path(),
        "cloudrun-data-pipeline",
        &[
            (
                r#"allow_http = ["https://monitoring.googleapis.com"]"#,
                metrics_grant.as_str(),
            ),
            (
                r#"monitoring = { from = "google" }"#,
                r#"monitoring = { from = "env:TEST_GOOGLE_TOKEN" }"#,
            ),
            (monitoring, local_prometheus.as_str()),
            (
                "[services.convergence-api.provider_config]",
                provider.as_str(),
            ),
            (r#"pause = "10m""#, r#"pause = "6s""#),
            (r#"min_window = "2m""#, r#"min_window = "20s""#),
        ],
    );
    provision(
        &fake,
        "gac-prod-471220",
        &["convergence-api-prod"],
        &[],
        &["admin-api-key-prod"],
    );
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/cloudrun-data-pipeline/bootstrap.sh"),
        dir.path().join("bootstrap.sh"),
    )
    .unwrap();
    let name = "projects/gac-prod-471220/locations/us-central1/services/convergence-api-prod";
    let file = dir.path().join("pipeline.toml");
    let release = |from: &str, to: &str| edit(&file, from, to);

    // First deployment: all traffic at once (nothing to split with), smoke-checked, bootstrapped.
    let out = run(dir.path(), &["run", "pipeline.toml", "--env", "production"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        split_at(&fake, name),
        [("convergence-api-prod-r1".to_string(), 100)]
    );
    let calls = fake.model().services[name].calls.clone();
    assert!(
        calls.contains(&(
            "convergence-api-prod-r1".to_string(),
            "POST /api/v1/admin/bootstrap".to_string()
        )),
        "{calls:?}"
    );
    let _users = Users::start(format!(
        "{}/",
        service_at(&fake, name)["uri"].as_str().unwrap()
    ));

    // v1.2.0: dark at 0 % (checked at its tag URL), then 25, 50, 100 with the gates passing.
    release(r#"version = "v1.1.0""#, r#"version = "v1.2.0""#);
    let plan = production_plan(dir.path()).await;
    assert!(
        plan.contains("1. set traffic: convergence-api-planned 0%, convergence-api-prod-r1 100%"),
        "{plan}"
    );
    let events = production_run_events(dir.path()).await;
    let phases: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "phase")
        .filter_map(|e| e["phase"].as_str())
        .collect();
    for step in ["canary 0%", "canary 25%", "canary 50%", "canary 100%"] {
        assert!(phases.contains(&step), "{step} missing: {phases:?}");
    }
    assert_eq!(
        split_at(&fake, name),
        [("convergence-api-prod-r2".to_string(), 100)]
    );
    let gate = events
        .iter()
        .filter(|e| e["type"] == "check" && e["check"] == "error-rate-and-latency")
        .filter(|e| e["verdict"] == "healthy")
        .count();
    assert!(
        gate >= 1,
        "the metrics gate passed on real numbers at least once: {events:#?}"
    );

    // v1.3.0 fails a fifth of its requests: the gate stops it at 25 % and v1.2.0 serves again.
    release(r#"version = "v1.2.0""#, r#"version = "v1.3.0""#);
    release(
        r#"VERSION = "${version}""#,
        "VERSION = \"${version}\"\nFAKE_ERROR_RATE = \"0.2\"",
    );
    let out = run(dir.path(), &["run", "pipeline.toml", "--env", "production"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("error rate"), "{}", text(&out));
    assert_eq!(
        split_at(&fake, name),
        [("convergence-api-prod-r2".to_string(), 100)]
    );

    // The previous revision was kept: rolling back to it is one command.
    let out = run(
        dir.path(),
        &["rollback", "convergence-api", "--env", "production"],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        split_at(&fake, name),
        [("convergence-api-prod-r1".to_string(), 100)]
    );
    assert!(fake.violations().is_empty(), "{:#?}", fake.violations());
}

/// The env of a service's serving revision as a map.
fn env_of(fake: &Fake, name: &str) -> std::collections::BTreeMap<String, String> {
    let service = service_at(fake, name);
    let env = service["template"]["containers"][0]["env"]
        .as_array()
        .cloned();
    env.unwrap_or_default()
        .iter()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?.to_string(),
                e["value"].as_str()?.to_string(),
            ))
        })
        .collect()
}

/// The Agent Exchange's ten services learn each other's URLs from Cloud Run, through
/// references, and are deployed in the order those references and the guide's tiers give; the
/// next release goes 10 → 100 everywhere but on a gateway whose health check fails, which its
/// gate sends back; a rollback, and a teardown with its dry run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_exchange_on_cloud_run_finds_its_urls_and_its_gate_stops_a_bad_gateway() {
    let fake = Fake::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    example(
        &fake,
        dir.path(),
        "cloudrun-agent-exchange",
        &[(r#"pause = "1m""#, r#"pause = "0s""#)],
    );
    provision(
        &fake,
        "aex-production",
        &["aex-runner"],
        &[("us-central1", "aex-connector")],
        &["aex-jwt-secret", "aex-api-key-salt"],
    );
    let plan = production_plan(dir.path()).await;
    assert_eq!(plan.matches(": create (").count(), 10, "{plan}");

    let out = run(dir.path(), &["run", "pipeline.toml", "--env", "production"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let name = |s: &str| format!("projects/aex-production/locations/us-central1/services/{s}");
    let url = |s: &str| {
        service_at(&fake, &name(s))["uri"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let gateway = env_of(&fake, &name("aex-gateway"));
    for (var, target) in [
        ("WORK_PUBLISHER_URL", "aex-work-publisher"),
        ("BID_GATEWAY_URL", "aex-bid-gateway"),
        ("PROVIDER_REGISTRY_URL", "aex-provider-registry"),
        ("SETTLEMENT_URL", "aex-settlement"),
        ("IDENTITY_URL", "aex-identity"),
    ] {
        assert_eq!(gateway[var], url(target), "{var}");
    }
    let evaluator = env_of(&fake, &name("aex-bid-evaluator"));
    assert_eq!(evaluator["TRUST_BROKER_URL"], url("aex-trust-broker"));
    assert_eq!(
        env_of(&fake, &name("aex-work-publisher"))["STORE_TYPE"],
        "firestore"
    );
    // Each service was created after the ones whose URLs it holds.
    let creates: Vec<String> = fake
        .requests()
        .iter()
        .filter(|r| r.starts_with("POST") && r.contains("serviceId="))
        .map(|r| {
            r.rsplit("serviceId=")
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    let at = |s: &str| creates.iter().position(|c| c.starts_with(s)).unwrap();
    assert!(
        at("aex-identity") < at("aex-provider-registry"),
        "{creates:?}"
    );
    assert!(
        at("aex-bid-gateway") < at("aex-bid-evaluator"),
        "{creates:?}"
    );
    assert!(at("aex-contract-engine") < at("aex-gateway"), "{creates:?}");

    // The URLs are the same next time: nothing to deploy.
    let plan = production_plan(dir.path()).await;
    assert_eq!(plan.matches(": no-change").count(), 10, "{plan}");

    // v1.1.0, whose gateway answers everything with a 500: its plan, then the nine others go
    // 10 → 100 and the gateway's health check at 10 % sends it back to v1.0.0.
    let first_gateway = split_at(&fake, &name("aex-gateway"));
    let first_identity = split_at(&fake, &name("aex-identity"));
    let file = dir.path().join("pipeline.toml");
    edit(&file, r#"version = "v1.0.0""#, r#"version = "v1.1.0""#);
    edit(
        &file,
        r#"IDENTITY_URL = "${services.aex-identity.url}""#,
        "IDENTITY_URL = \"${services.aex-identity.url}\"\nFAKE_ERROR_RATE = \"1\"",
    );
    let plan = production_plan(dir.path()).await;
    assert!(
        plan.contains("set traffic: aex-gateway-planned 10%"),
        "{plan}"
    );
    let out = run(dir.path(), &["run", "pipeline.toml", "--env", "production"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("aex-identity: canary 10%")
            && text(&out).contains("aex-gateway: rolled-back: health checks failed at 10%"),
        "{}",
        text(&out)
    );
    assert_eq!(split_at(&fake, &name("aex-gateway")), first_gateway);
    let identity = split_at(&fake, &name("aex-identity"));
    assert!(
        identity.len() == 1 && identity != first_identity,
        "{identity:?}"
    );

    // The previous revision was kept: rolling back to it is one command.
    let out = run(
        dir.path(),
        &["rollback", "aex-identity", "--env", "production"],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(split_at(&fake, &name("aex-identity")), first_identity);

    // The teardown: its dry run lists the ten services and deletes nothing; then it deletes them.
    let out = run(
        dir.path(),
        &[
            "destroy",
            "--dry-run",
            "pipeline.toml",
            "--env",
            "production",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    for service in ["aex-identity", "aex-gateway"] {
        assert!(
            text(&out).contains(&format!("would destroy {service}\n")),
            "{}",
            text(&out)
        );
    }
    assert_eq!(fake.model().services.len(), 10);
    let out = run(
        dir.path(),
        &["destroy", "pipeline.toml", "--env", "production"],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(fake.model().services.len(), 0);
    assert!(fake.violations().is_empty(), "{:#?}", fake.violations());
}

/// The data pipeline's scheduler jobs in staging: created after the API with its URL, left alone
/// when unchanged, updated field by field when the pipeline changes, shown by `plan`, and
/// deleted by `destroy`, which leaves a job the engine did not create in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_pipelines_scheduler_jobs_follow_the_pipeline_and_destroy_removes_only_its_own() {
    let fake = Fake::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    example(&fake, dir.path(), "cloudrun-data-pipeline", &[]);
    provision(
        &fake,
        "gac-stage-471220",
        &["convergence-api-staging"],
        &[],
        &["admin-api-key-staging"],
    );
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/cloudrun-data-pipeline/bootstrap.sh"),
        dir.path().join("bootstrap.sh"),
    )
    .unwrap();
    let file = dir.path().join("pipeline.toml");
    let staging = ["--env", "staging"];
    let with = |args: &[&'static str]| [args, &staging[..]].concat();
    let jobs = "projects/gac-stage-471220/locations/us-central1/jobs";
    let reset = format!("{jobs}/reset-daily-quotas");
    let cleanup = format!("{jobs}/cleanup-orphaned-pipelines");

    // The plan before anything exists: the jobs will be created, with a stand-in for the URL.
    let out = run(dir.path(), &with(&["plan", "pipeline.toml"])).await;
    assert!(out.status.success(), "{}", text(&out));
    let plan = text(&out);
    assert!(
        plan.contains("resource reset-daily-quotas (scheduler-job): create"),
        "{plan}"
    );
    assert!(
        plan.contains(
            "convergence-api.known-after-deploy.invalid/api/v1/scheduler/reset-daily-quotas"
        ),
        "{plan}"
    );

    let out = run(dir.path(), &with(&["run", "pipeline.toml"])).await;
    assert!(out.status.success(), "{}", text(&out));
    let url = service_at(
        &fake,
        "projects/gac-stage-471220/locations/us-central1/services/convergence-api-staging",
    )["uri"]
        .as_str()
        .unwrap()
        .to_string();
    let created = fake.jobs();
    let job = &created[&reset];
    assert_eq!(job["schedule"], "0 0 * * *");
    assert_eq!(
        job["httpTarget"]["uri"],
        format!("{url}/api/v1/scheduler/reset-daily-quotas")
    );
    assert_eq!(job["attemptDeadline"], "180s");
    assert_eq!(job["retryConfig"]["retryCount"], 3);
    assert_eq!(job["retryConfig"]["minBackoffDuration"], "30s");
    // The guide's admin key, put in by the host: the plugin held only a placeholder.
    assert_eq!(
        job["httpTarget"]["headers"]["X-Admin-Key"],
        "test-admin-key"
    );
    // Nothing the engine keeps or prints holds it (the state has what Google answered, masked).
    let key = b"test-admin-key";
    for file in ["state.db", "state.db-wal"] {
        let kept = std::fs::read(dir.path().join(".engine").join(file)).unwrap_or_default();
        assert!(!kept.windows(key.len()).any(|w| w == key), "{file}");
    }
    assert!(!text(&out).contains("test-admin-key"));
    assert_eq!(created[&cleanup]["schedule"], "*/30 * * * *");

    // Again: nothing changes (Google's defaults are not drift), and no job is written.
    let writes = |fake: &Fake| {
        fake.requests()
            .iter()
            .filter(|r| r.contains("/jobs") && !r.starts_with("GET"))
            .count()
    };
    let before = writes(&fake);
    let out = run(
        dir.path(),
        &with(&["run", "pipeline.toml", "--output", "json"]),
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(r#""resource":"scheduler-job""#),
        "{}",
        text(&out)
    );
    assert_eq!(writes(&fake), before, "{:#?}", fake.requests());

    // The guide's update (section 5.5): the cleanup every 15 minutes.
    edit(
        &file,
        r#"schedule = "*/30 * * * *""#,
        r#"schedule = "*/15 * * * *""#,
    );
    let out = run(dir.path(), &with(&["plan", "pipeline.toml"])).await;
    let plan = text(&out);
    assert!(
        plan.contains("resource cleanup-orphaned-pipelines (scheduler-job): update"),
        "{plan}"
    );
    assert!(
        plan.contains("schedule: */30 * * * * → */15 * * * *"),
        "{plan}"
    );
    assert!(
        plan.contains("resource reset-daily-quotas (scheduler-job): no-change"),
        "{plan}"
    );
    let out = run(dir.path(), &with(&["run", "pipeline.toml"])).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(fake.jobs()[&cleanup]["schedule"], "*/15 * * * *");

    // A job made by hand before the engine first applied it is not the engine's to delete.
    let hand = format!("{jobs}/made-by-hand");
    edit(
        &file,
        "[resources.cleanup-orphaned-pipelines]",
        "[resources.made-by-hand]\nprovider = \"cloudrun\"\nkind = \"scheduler-job\"\nenvironments = [\"staging\"]\nspec = { schedule = \"0 1 * * *\", uri = \"${services.convergence-api.url}/x\" }\n\n[resources.cleanup-orphaned-pipelines]",
    );
    let created_by_hand = reqwest::Client::new()
        .post(format!("{}/v1/{jobs}", fake.url))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({ "name": hand, "schedule": "0 1 * * *", "httpTarget": { "uri": format!("{url}/x") } }))
        .send()
        .await
        .unwrap();
    assert!(created_by_hand.status().is_success());
    let out = run(dir.path(), &with(&["run", "pipeline.toml"])).await;
    assert!(out.status.success(), "{}", text(&out));

    let out = run(dir.path(), &with(&["destroy", "pipeline.toml"])).await;
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("destroyed resource reset-daily-quotas"),
        "{said}"
    );
    assert!(
        said.contains("left resource made-by-hand in place"),
        "{said}"
    );
    let left: Vec<String> = fake.jobs().into_keys().collect();
    assert_eq!(
        left,
        [hand],
        "only the job the engine did not create is left"
    );
    // The jobs went before the service they call.
    let order: Vec<&str> = said.lines().collect();
    let job_at = order
        .iter()
        .position(|l| l.contains("reset-daily-quotas"))
        .unwrap();
    let service_at_line = order
        .iter()
        .position(|l| l.contains("destroyed convergence-api"))
        .unwrap();
    assert!(job_at < service_at_line, "{said}");
    assert!(fake.violations().is_empty(), "{:#?}", fake.violations());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_settings_the_guides_use_reach_the_revision_and_plan_quietly_after() {
    let fake = Fake::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pipeline.toml");
    let settings = r#"
[services.grpc]
image = "europe-docker.pkg.dev/shop/grpc:1"
[services.grpc.provider_config]
project = "shop"
region = "europe-west1"
endpoint = "URL"
poll_interval_ms = 10
startup_cpu_boost = true
http2 = true
cloud_sql_instances = ["shop:europe-west1:agenthub-postgres"]
startup_probe = { path = "/health", initial_delay_seconds = 30, period_seconds = 10, failure_threshold = 6 }
liveness_probe = { grpc_service = "", period_seconds = 30 }
candidate_tag = "blue"
secret_volumes = [
    { secret = "tls-cert", mount_path = "/secrets/tls", file = "cert.pem" },
    { secret = "tls-cert", mount_path = "/secrets/tls", file = "cert-previous.pem", version = "1" },
    { secret = "service-key", mount_path = "/secrets/key" },
]
"#
    .replace("URL", &fake.url);
    std::fs::write(&file, pipeline(&fake, &settings)).unwrap();
    fake.directory()
        .add_secret("shop", "tls-cert", &[VersionState::Enabled; 2]);
    provision(&fake, "shop", &[], &[], &["service-key"]);
    let out = run(dir.path(), &["run", "pipeline.toml"]).await;
    assert!(out.status.success(), "{}", text(&out));

    let template = &service(&fake, "grpc")["template"];
    let container = &template["containers"][0];
    assert_eq!(container["resources"]["startupCpuBoost"], true);
    assert_eq!(container["ports"][0]["name"], "h2c");
    assert_eq!(container["startupProbe"]["httpGet"]["path"], "/health");
    assert_eq!(container["startupProbe"]["initialDelaySeconds"], 30);
    assert_eq!(container["livenessProbe"]["grpc"]["service"], "");
    let volumes = template["volumes"].as_array().unwrap();
    assert_eq!(
        volumes[0]["cloudSqlInstance"]["instances"][0],
        "shop:europe-west1:agenthub-postgres"
    );
    assert_eq!(volumes[1]["secret"]["items"].as_array().unwrap().len(), 2);
    assert_eq!(volumes[2]["secret"]["secret"], "service-key");
    let mounts: Vec<&str> = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    assert_eq!(mounts, ["/cloudsql", "/secrets/tls", "/secrets/key"]);
    let tags: Vec<(String, String)> = service(&fake, "grpc")["trafficStatuses"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| Some((t["revision"].as_str()?.into(), t["tag"].as_str()?.into())))
        .collect();
    assert!(
        tags.contains(&("grpc-r1".into(), "blue".into())),
        "{tags:?}"
    );

    // Deployed as written: the plan has nothing to change.
    let out = run(dir.path(), &["plan", "pipeline.toml"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("grpc: no-change"),
        "{}",
        text(&out)
    );

    // A new release moves the named tag to the new revision.
    std::fs::write(
        &file,
        pipeline(&fake, &settings.replace("grpc:1", "grpc:2")),
    )
    .unwrap();
    let out = run(dir.path(), &["run", "pipeline.toml"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let blue: Vec<String> = service(&fake, "grpc")["trafficStatuses"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["tag"] == "blue")
        .map(|t| t["revision"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(blue, ["grpc-r2"]);

    // Two secrets in one directory: refused with the fix.
    let clash = settings.replace(
        r#"mount_path = "/secrets/key" }"#,
        r#"mount_path = "/secrets/tls" }"#,
    );
    std::fs::write(&file, pipeline(&fake, &clash)).unwrap();
    let out = run(dir.path(), &["validate", "pipeline.toml"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("Cloud Run mounts one secret per directory"),
        "{}",
        text(&out)
    );
    assert!(fake.violations().is_empty(), "{:#?}", fake.violations());
}

/// `plan` looks up what a service names, as Google answers: a typo, an unusable version or a
/// project the deployer cannot read fails the plan with each name and its fix, before anything
/// is deployed; `check_references = false` leaves the lookups to the deploy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_refuses_a_missing_service_account_connector_or_secret_version_with_the_fix() {
    let fake = Fake::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pipeline.toml");
    {
        let mut directory = fake.directory();
        directory.add_service_account("shop", "api@shop.iam.gserviceaccount.com");
        directory.add_connector(
            "projects/shop/locations/europe-west1/connectors/shop-vpc",
            "READY",
        );
        directory.add_connector(
            "projects/shop/locations/europe-west1/connectors/still-creating",
            "CREATING",
        );
        use VersionState::{Destroyed, Disabled, Enabled};
        directory.add_secret("shop", "db-password", &[Enabled, Disabled]);
        directory.add_secret("shop", "old-key", &[Destroyed]);
    }
    let service = |provider_config: &str, secrets: &str| {
        format!(
            r#"
[services.api]
image = "europe-docker.pkg.dev/shop/api:1"
[services.api.provider_config]
project = "shop"
region = "europe-west1"
endpoint = "{url}"
poll_interval_ms = 10
{provider_config}
[services.api.secrets]
{secrets}
"#,
            url = fake.url
        )
    };
    let good = service(
        r#"service_account = "api@shop.iam.gserviceaccount.com"
vpc_connector = "shop-vpc""#,
        r#"DB_PASSWORD = "db-password:1""#,
    );
    std::fs::write(&file, pipeline(&fake, &good)).unwrap();
    let out = run(dir.path(), &["plan", "pipeline.toml"]).await;
    assert!(out.status.success(), "{}", text(&out));

    let bad = service(
        r#"service_account = "apj@shop.iam.gserviceaccount.com"
vpc_connector = "still-creating""#,
        r#"DB_PASSWORD = "db-password:2"
OLD_KEY = "old-key:latest"
PARTNER_KEY = "projects/partner/secrets/partner-key/versions/latest""#,
    );
    std::fs::write(&file, pipeline(&fake, &bad)).unwrap();
    let out = run(dir.path(), &["plan", "pipeline.toml"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    for expected in [
        "service account apj@shop.iam.gserviceaccount.com does not exist",
        "projects/shop/locations/europe-west1/connectors/still-creating",
        "CREATING",
        "version 2 of secret db-password (for variable DB_PASSWORD)",
        "DISABLED",
        "old-key",
        "DESTROYED",
        "partner-key",
        "cannot be read (403",
    ] {
        assert!(said.contains(expected), "no {expected:?} in\n{said}");
    }
    // Nothing was deployed.
    assert!(fake.model().services.is_empty());

    // Lookups off: the plan no longer reads the directory.
    let off = bad.replace(
        "poll_interval_ms = 10",
        "poll_interval_ms = 10\ncheck_references = false",
    );
    std::fs::write(&file, pipeline(&fake, &off)).unwrap();
    let lookups = |fake: &Fake| {
        fake.requests()
            .iter()
            .filter(|r| r.contains("serviceAccounts") || r.contains("/secrets/"))
            .count()
    };
    let before = lookups(&fake);
    let out = run(dir.path(), &["plan", "pipeline.toml"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(lookups(&fake), before, "{:#?}", fake.requests());
    assert!(fake.violations().is_empty(), "{:#?}", fake.violations());
}

/// Invoker and secret-accessor bindings as resources: added beside the members already there,
/// unchanged when held, and destroyed by removing only their own members; a binding whose
/// members held the role before is left in place; `exclusive` makes the role exactly the list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iam_bindings_add_their_members_and_destroy_removes_only_those() {
    let fake = Fake::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pipeline.toml");
    let accessor = "roles/secretmanager.secretAccessor";
    // `api` has internal ingress: the engine runs inside the VPC here.
    fake.model()
        .vpc_sources
        .insert("127.0.0.1".parse().unwrap());
    fake.directory()
        .add_secret("shop", "api-key", &[VersionState::Enabled]);
    let resources = r#"
[resources.web-calls-api]
provider = "cloudrun"
kind = "run-invoker"
depends_on = ["api"]
spec = { service = "api", members = ["serviceAccount:web@shop.iam.gserviceaccount.com"] }

[resources.api-reads-key]
provider = "cloudrun"
kind = "secret-accessor"
spec = { secret = "api-key", members = ["serviceAccount:api@shop.iam.gserviceaccount.com"] }

[resources.ops-reads-audit]
provider = "cloudrun"
kind = "secret-accessor"
spec = { secret = "audit-key", members = ["user:ops@example.com"] }
"#;
    let body = format!("{SERVICES}{resources}");
    std::fs::write(&file, pipeline(&fake, &body)).unwrap();
    // Someone granted both keys to an operator by hand.
    {
        let mut directory = fake.directory();
        directory.add_secret("shop", "audit-key", &[VersionState::Enabled]);
        directory.add_secret_member("shop", "api-key", accessor, "user:ops@example.com");
        directory.add_secret_member("shop", "audit-key", accessor, "user:ops@example.com");
    }

    let out = run(dir.path(), &["plan", "pipeline.toml"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("resource web-calls-api (run-invoker): create"),
        "{}",
        text(&out)
    );
    let out = run(dir.path(), &["run", "pipeline.toml"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let web = "serviceAccount:web@shop.iam.gserviceaccount.com";
    assert!(
        policy_members(&fake, "projects/shop/locations/europe-west1/services/api")
            .contains(&web.to_string())
    );
    let mut holders = fake.directory().secret_members("shop", "api-key", accessor);
    holders.sort();
    assert_eq!(
        holders,
        [
            "serviceAccount:api@shop.iam.gserviceaccount.com",
            "user:ops@example.com"
        ]
    );

    // Held: nothing to do.
    let out = run(dir.path(), &["plan", "pipeline.toml"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("resource api-reads-key (secret-accessor): no-change"),
        "{}",
        text(&out)
    );

    // Exclusive: the operator's hand-made grant goes.
    edit(
        &file,
        r#"members = ["serviceAccount:api@shop.iam.gserviceaccount.com"] }"#,
        r#"members = ["serviceAccount:api@shop.iam.gserviceaccount.com"], exclusive = true }"#,
    );
    let out = run(dir.path(), &["plan", "pipeline.toml"]).await;
    assert!(
        text(&out).contains("resource api-reads-key (secret-accessor): update"),
        "{}",
        text(&out)
    );
    let out = run(dir.path(), &["run", "pipeline.toml"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        fake.directory().secret_members("shop", "api-key", accessor),
        ["serviceAccount:api@shop.iam.gserviceaccount.com"]
    );

    // Destroy removes the bindings' own members and leaves the rest.
    fake.directory()
        .add_secret_member("shop", "api-key", accessor, "user:ops@example.com");
    let out = run(dir.path(), &["destroy", "pipeline.toml"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("destroyed resource api-reads-key"),
        "{}",
        text(&out)
    );
    assert_eq!(
        fake.directory().secret_members("shop", "api-key", accessor),
        ["user:ops@example.com"]
    );
    // The operator's grant on the audit key was there before the engine: it stays.
    assert!(
        text(&out).contains("left resource ops-reads-audit in place"),
        "{}",
        text(&out)
    );
    assert_eq!(
        fake.directory()
            .secret_members("shop", "audit-key", accessor),
        ["user:ops@example.com"]
    );
    assert!(fake.violations().is_empty(), "{:#?}", fake.violations());
}

/// `engine plugins check` against the test server: the cloudrun provider keeps every rule of
/// the provider contract, its operations taking several polls as Google's do.
#[tokio::test(flavor = "multi_thread")]
async fn the_cloudrun_provider_passes_the_conformance_kit() {
    let fake = Fake::start().await.unwrap();
    fake.model().operation_polls = 2;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pipeline.toml"), pipeline(&fake, SERVICES)).unwrap();
    let out = run(
        dir.path(),
        &["plugins", "check", "cloudrun", "--config", "pipeline.toml"],
    )
    .await;
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains("against services api-check-a and web-check-b"),
        "{shown}"
    );
    assert!(shown.contains("16 passed, 0 failed, 0 skipped"), "{shown}");
    assert!(
        fake.model().services.is_empty(),
        "the check's copies are removed"
    );
}
