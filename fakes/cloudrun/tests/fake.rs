//! The fake itself: it holds requests to the discovery document, models services, revisions,
//! traffic and operations, and gcloud (an independent client) can read what it serves.

use cloudrun_fake::Fake;
use serde_json::{Value, json};
use std::process::Command;

const PARENT: &str = "v2/projects/shop/locations/europe-west1";

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn send(
    fake: &Fake,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = client()
        .request(method, format!("{}/{path}", fake.url))
        .bearer_auth("test-token");
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn service(image: &str, revision: &str, traffic: Value) -> Value {
    json!({
        "ingress": "INGRESS_TRAFFIC_INTERNAL_ONLY",
        "labels": { "team": "shop" },
        "template": {
            "revision": revision,
            "containers": [{ "image": image, "ports": [{ "containerPort": 8080 }],
                             "env": [{ "name": "MODE", "value": "prod" }],
                             "resources": { "limits": { "cpu": "1", "memory": "512Mi" } } }],
            "scaling": { "minInstanceCount": 1, "maxInstanceCount": 10 },
            "maxInstanceRequestConcurrency": 80,
            "timeout": "300s",
        },
        "traffic": traffic,
    })
}

/// The message of an error answer (or of a failed operation's `error`).
fn message(error: &Value) -> &str {
    error["error"]["message"].as_str().unwrap_or_default()
}

/// Polls an operation until it is done, returning it.
async fn finish(fake: &Fake, operation: &Value) -> Value {
    let name = operation["name"].as_str().unwrap();
    for _ in 0..5 {
        let (status, op) = send(fake, reqwest::Method::GET, &format!("v2/{name}"), None).await;
        assert_eq!(status, 200, "{op}");
        if op["done"] == true {
            return op;
        }
    }
    panic!("operation {name} never finished");
}

#[tokio::test]
async fn requests_that_break_the_discovery_document_are_refused_and_recorded() {
    let fake = Fake::start().await.unwrap();
    let create = |body: Value| {
        let fake = &fake;
        async move {
            send(
                fake,
                reqwest::Method::POST,
                &format!("{PARENT}/services?serviceId=api"),
                Some(body),
            )
            .await
        }
    };
    let mut unknown = service("img:1", "api-r1", json!([]));
    unknown["template"]["containerz"] = json!([]);
    let (status, error) = create(unknown).await;
    assert_eq!(status, 400, "{error}");
    assert!(message(&error).contains("$.template.containerz: unknown field"));

    let mut wrong_type = service("img:1", "api-r1", json!([]));
    wrong_type["template"]["maxInstanceRequestConcurrency"] = json!("eighty");
    let (status, error) = create(wrong_type).await;
    assert_eq!(status, 400);
    assert!(
        message(&error).contains("maxInstanceRequestConcurrency: expected integer (int32)"),
        "{error}"
    );

    let mut missing = service("img:1", "api-r1", json!([]));
    missing["template"]["containers"][0]
        .as_object_mut()
        .unwrap()
        .remove("image");
    let (status, error) = create(missing).await;
    assert_eq!(status, 400);
    assert!(
        message(&error).contains("$.template.containers[0].image: required field missing"),
        "{error}"
    );

    let mut output_only = service("img:1", "api-r1", json!([]));
    output_only["uri"] = json!("https://api.run.app");
    let (status, _) = create(output_only).await;
    assert_eq!(status, 400);

    let (status, _) = send(
        &fake,
        reqwest::Method::GET,
        &format!("{PARENT}/services?pageSizee=3"),
        None,
    )
    .await;
    assert_eq!(status, 400);

    let no_token = client()
        .get(format!("{}/{PARENT}/services", fake.url))
        .send()
        .await
        .unwrap();
    assert_eq!(no_token.status(), 401);

    let violations = fake.violations();
    assert_eq!(violations.len(), 6, "{violations:#?}");
    assert!(violations[4].contains("unknown query parameter `pageSizee`"));
    assert!(violations[5].contains("no bearer token"));
    assert!(
        fake.model().services.is_empty(),
        "nothing invalid was stored"
    );
}

#[tokio::test]
async fn services_get_revisions_traffic_tags_and_long_running_operations() {
    let fake = Fake::start().await.unwrap();
    let (status, op) = send(
        &fake,
        reqwest::Method::POST,
        &format!("{PARENT}/services?serviceId=api"),
        Some(service("img:1", "api-r1", json!([]))),
    )
    .await;
    assert_eq!(status, 200, "{op}");
    assert_eq!(op["done"], false, "the operation takes a poll to finish");
    let done = finish(&fake, &op).await;
    assert_eq!(
        done["response"]["latestReadyRevision"],
        "projects/shop/locations/europe-west1/services/api/revisions/api-r1"
    );
    assert_eq!(done["response"]["trafficStatuses"][0]["percent"], 100);

    // A second revision without traffic, reachable by its tag.
    let split = json!([
        { "type": "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION", "revision": "api-r1", "percent": 100 },
        { "type": "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION", "revision": "api-r2", "percent": 0, "tag": "candidate" },
    ]);
    let (status, op) = send(
        &fake,
        reqwest::Method::PATCH,
        &format!("{PARENT}/services/api"),
        Some(service("img:2", "api-r2", split)),
    )
    .await;
    assert_eq!(status, 200, "{op}");
    let svc = finish(&fake, &op).await["response"].clone();
    let tagged = svc["trafficStatuses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tag"] == "candidate")
        .unwrap()
        .clone();
    // Internal ingress: from outside the VPC the service is not there, token or not.
    let outside = client()
        .get(format!("{}/health", tagged["uri"].as_str().unwrap()))
        .bearer_auth("id-token")
        .send()
        .await
        .unwrap();
    assert_eq!(outside.status(), 404);
    assert!(outside.text().await.unwrap().contains("Page not found"));
    // From inside it is, with IAM on top.
    fake.model()
        .vpc_sources
        .insert("127.0.0.1".parse().unwrap());
    let answer: Value = client()
        .get(format!("{}/health", tagged["uri"].as_str().unwrap()))
        .bearer_auth("id-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["revision"], "api-r2");
    let front: Value = client()
        .get(svc["uri"].as_str().unwrap())
        .bearer_auth("id-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        front["revision"], "api-r1",
        "the untagged URL follows the split"
    );
    let anonymous = client()
        .get(svc["uri"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(
        anonymous.status(),
        403,
        "no allUsers invoker: a token is needed"
    );

    // An update based on an older read of the service is refused.
    let mut stale = service("img:2", "api-r2", json!([]));
    stale["etag"] = json!("\"1-stale\"");
    let (status, error) = send(
        &fake,
        reqwest::Method::PATCH,
        &format!("{PARENT}/services/api"),
        Some(stale),
    )
    .await;
    assert_eq!(
        (status, error["error"]["status"].as_str()),
        (409, Some("ABORTED"))
    );

    // A revision that serves (or is tagged) cannot be deleted; traffic must add up to 100.
    let (status, error) = send(
        &fake,
        reqwest::Method::DELETE,
        &format!("{PARENT}/services/api/revisions/api-r2"),
        None,
    )
    .await;
    assert_eq!(
        (status, error["error"]["status"].as_str()),
        (400, Some("FAILED_PRECONDITION"))
    );
    let bad = json!([{ "type": "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION", "revision": "api-r2", "percent": 60 }]);
    let (status, error) = send(
        &fake,
        reqwest::Method::PATCH,
        &format!("{PARENT}/services/api"),
        Some(service("img:2", "api-r2", bad)),
    )
    .await;
    assert_eq!(status, 400);
    assert!(message(&error).contains("add up to 100"));

    // A container that fails to start: the operation fails with Cloud Run's message and the
    // service keeps serving what it served.
    let (_, op) = send(
        &fake,
        reqwest::Method::PATCH,
        &format!("{PARENT}/services/api"),
        Some(service("img:fail-to-start", "api-r3", json!([]))),
    )
    .await;
    let failed = finish(&fake, &op).await;
    assert_eq!(failed["error"]["code"], 9);
    assert!(message(&failed).contains("failed to start"));
    let (_, svc) = send(
        &fake,
        reqwest::Method::GET,
        &format!("{PARENT}/services/api"),
        None,
    )
    .await;
    assert_eq!(
        svc["latestReadyRevision"]
            .as_str()
            .unwrap()
            .rsplit('/')
            .next(),
        Some("api-r2")
    );
    assert_eq!(svc["trafficStatuses"][0]["revision"], "api-r1");

    // IAM: read-modify-write with the etag; a stale etag is refused.
    let (_, policy) = send(
        &fake,
        reqwest::Method::GET,
        &format!("{PARENT}/services/api:getIamPolicy"),
        None,
    )
    .await;
    let mut updated = policy.clone();
    updated["bindings"] = json!([{ "role": "roles/run.invoker", "members": ["serviceAccount:web@shop.iam.gserviceaccount.com"] }]);
    let (status, _) = send(
        &fake,
        reqwest::Method::POST,
        &format!("{PARENT}/services/api:setIamPolicy"),
        Some(json!({ "policy": updated })),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = send(
        &fake,
        reqwest::Method::POST,
        &format!("{PARENT}/services/api:setIamPolicy"),
        Some(json!({ "policy": updated })),
    )
    .await;
    assert_eq!(status, 409, "the etag is stale now");

    let (_, op) = send(
        &fake,
        reqwest::Method::DELETE,
        &format!("{PARENT}/services/api"),
        None,
    )
    .await;
    finish(&fake, &op).await;
    let (status, _) = send(
        &fake,
        reqwest::Method::GET,
        &format!("{PARENT}/services/api"),
        None,
    )
    .await;
    assert_eq!(status, 404);
    assert!(fake.violations().is_empty(), "{:#?}", fake.violations());
}

/// gcloud, pointed at the fake through its proxy settings (gcloud derives regional host names
/// such as `europe-west1-127.0.0.1`, which only a proxy can catch).
fn gcloud(fake: &Fake, config: &std::path::Path, args: &[&str]) -> std::process::Output {
    let token = config.join("token");
    std::fs::write(&token, "test-token").unwrap();
    Command::new("gcloud")
        .args(args)
        .args(["--project", "shop", "--format", "json", "--quiet"])
        .arg(format!("--access-token-file={}", token.display()))
        .env("CLOUDSDK_CONFIG", config)
        .env(
            "CLOUDSDK_API_ENDPOINT_OVERRIDES_RUN",
            format!("{}/", fake.url),
        )
        .env("CLOUDSDK_PROXY_TYPE", "http")
        .env("CLOUDSDK_PROXY_ADDRESS", "127.0.0.1")
        .env("CLOUDSDK_PROXY_PORT", fake.addr.port().to_string())
        .env("CLOUDSDK_CORE_DISABLE_USAGE_REPORTING", "true")
        .env("CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK", "true")
        .output()
        .expect("gcloud is installed on these machines (the Google Cloud SDK)")
}

// Multi-threaded: gcloud runs as a blocking child process while the fake serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcloud_describes_and_lists_what_the_fake_serves() {
    let fake = Fake::start().await.unwrap();
    let split = json!([
        { "type": "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION", "revision": "api-r1", "percent": 100, "tag": "stable" },
    ]);
    let (_, op) = send(
        &fake,
        reqwest::Method::POST,
        &format!("{PARENT}/services?serviceId=api"),
        Some(service("europe-docker.pkg.dev/shop/api:1", "api-r1", split)),
    )
    .await;
    finish(&fake, &op).await;
    let config = tempfile::tempdir().unwrap();

    let out = gcloud(
        &fake,
        config.path(),
        &[
            "run",
            "services",
            "describe",
            "api",
            "--region",
            "europe-west1",
        ],
    );
    assert!(
        out.status.success(),
        "gcloud describe: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let described: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        described["spec"]["template"]["spec"]["containers"][0]["image"],
        "europe-docker.pkg.dev/shop/api:1"
    );
    assert_eq!(
        described["spec"]["template"]["spec"]["containerConcurrency"],
        80
    );
    assert_eq!(described["status"]["traffic"][0]["tag"], "stable");
    assert_eq!(
        described["metadata"]["annotations"]["run.googleapis.com/ingress"],
        "internal"
    );

    let out = gcloud(&fake, config.path(), &["run", "services", "list"]);
    assert!(
        out.status.success(),
        "gcloud list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["metadata"]["name"], "api");

    let out = gcloud(
        &fake,
        config.path(),
        &[
            "run",
            "services",
            "describe",
            "nope",
            "--region",
            "europe-west1",
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Cannot find service [nope]"));
    assert!(fake.violations().is_empty(), "{:#?}", fake.violations());
}

/// The lookups `plan` makes answer as Google does: found, 404 in a project the caller may
/// read, 403 in any other; a secret's policy is written only with its current etag.
#[tokio::test]
async fn service_accounts_connectors_and_secrets_answer_404_or_403_as_google_does() {
    use cloudrun_fake::directory::VersionState::{Disabled, Enabled};
    let fake = Fake::start().await.unwrap();
    {
        let mut directory = fake.directory();
        directory.add_service_account("shop", "api@shop.iam.gserviceaccount.com");
        directory.add_connector(
            "projects/shop/locations/europe-west1/connectors/vpc",
            "READY",
        );
        directory.add_secret("shop", "db", &[Enabled, Disabled]);
    }
    let get = |path: &'static str| send(&fake, reqwest::Method::GET, path, None);

    let (status, account) =
        get("v1/projects/-/serviceAccounts/api@shop.iam.gserviceaccount.com").await;
    assert_eq!(status, 200, "{account}");
    assert_eq!(account["projectId"], "shop");
    let (status, _) = get("v1/projects/-/serviceAccounts/apj@shop.iam.gserviceaccount.com").await;
    assert_eq!(status, 404);
    let (status, error) =
        get("v1/projects/-/serviceAccounts/api@elsewhere.iam.gserviceaccount.com").await;
    assert_eq!(status, 403, "{error}");
    assert_eq!(error["error"]["status"], "PERMISSION_DENIED");

    let (status, connector) = get("v1/projects/shop/locations/europe-west1/connectors/vpc").await;
    assert_eq!((status, connector["state"].clone()), (200, json!("READY")));
    let (status, _) = get("v1/projects/shop/locations/us-east1/connectors/vpc").await;
    assert_eq!(status, 404);

    let (status, version) = get("v1/projects/shop/secrets/db/versions/1").await;
    assert_eq!((status, version["state"].clone()), (200, json!("ENABLED")));
    // `latest` is the newest version, whatever its state.
    let (_, latest) = get("v1/projects/shop/secrets/db/versions/latest").await;
    assert_eq!(latest["state"], "DISABLED");
    let (status, _) = get("v1/projects/shop/secrets/db/versions/3").await;
    assert_eq!(status, 404);
    let (status, _) = get("v1/projects/other/secrets/db/versions/1").await;
    assert_eq!(status, 403);

    // A policy written with a stale etag is refused, as concurrent writers are.
    let (_, policy) = get("v1/projects/shop/secrets/db:getIamPolicy").await;
    let grant = |etag: &Value| {
        json!({ "policy": { "etag": etag, "bindings": [
            { "role": "roles/secretmanager.secretAccessor", "members": ["user:a@example.com"] }
        ] } })
    };
    let post =
        |path: &'static str, body: Value| send(&fake, reqwest::Method::POST, path, Some(body));
    let (status, written) = post(
        "v1/projects/shop/secrets/db:setIamPolicy",
        grant(&policy["etag"]),
    )
    .await;
    assert_eq!(status, 200, "{written}");
    assert_ne!(written["etag"], policy["etag"]);
    let (status, _) = post(
        "v1/projects/shop/secrets/db:setIamPolicy",
        grant(&policy["etag"]),
    )
    .await;
    assert_eq!(status, 409);
    assert_eq!(
        fake.directory()
            .secret_members("shop", "db", "roles/secretmanager.secretAccessor"),
        ["user:a@example.com"]
    );
    assert!(fake.violations().is_empty(), "{:#?}", fake.violations());
}
