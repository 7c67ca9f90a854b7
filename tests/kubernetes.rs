//! The `kubernetes` provider and the host's Kubernetes credentials, end to end against a real
//! control plane on loopback (tests/support/kube.rs), with kubectl as the independent client.

mod support;

use engine::grants::{GrantsConfig, SecretGrantConfig};
use engine::plugins::PluginSource;
use engine::runtime::bindings::types::ServiceRef;
use engine::runtime::{LoadedPlugin, MemorySink, PluginEvent, Runtime, RuntimeOptions};
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Command, Output};
use support::TestServer;
use support::kube::ControlPlane;
use support::text;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_runs_deployments_to_readiness() {
    let plane = ControlPlane::shared().await;
    plane.kubectl(&["create", "namespace", "harness"]);
    plane.kubectl(&[
        "-n",
        "harness",
        "create",
        "deployment",
        "web",
        "--image=web:1",
        "--replicas=2",
    ]);
    plane.kubectl(&[
        "-n",
        "harness",
        "rollout",
        "status",
        "deployment/web",
        "--timeout=60s",
    ]);
    let deployment = plane.get(&["-n", "harness", "deployment", "web"]).unwrap();
    assert_eq!(deployment["status"]["readyReplicas"], 2);
}

fn engine(plane: &ControlPlane, dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(args)
        .env("ENGINE_CACHE_DIR", support::cache_dir())
        .env("KUBECONFIG", &plane.kubeconfig)
        .current_dir(dir)
        .output()
        .unwrap()
}

/// A pipeline on the control plane: the cluster granted from the kubeconfig, a namespace, and
/// `services`.
fn pipeline(namespace: &str, services: &str) -> String {
    format!(
        r#"name = "k8s-test"

[plugins.kubernetes.secrets]
cluster = {{ from = "kubeconfig" }}
[plugins.kubernetes]
timeout = "5m"

[resources.{namespace}]
provider = "kubernetes"
kind = "namespace"

[defaults]
provider = "kubernetes"
port = 8080
depends_on = ["{namespace}"]

[defaults.provider_config]
namespace = "{namespace}"
poll_interval_ms = 200
progress_deadline_seconds = 15
ready_timeout_seconds = 120
{services}"#
    )
}

/// The name and image of each Deployment in `namespace`, and the Service's selector.
fn deployments(plane: &ControlPlane, namespace: &str) -> Vec<(String, String, u64)> {
    let list = plane.get(&["-n", namespace, "deployments"]).unwrap();
    let mut out: Vec<(String, String, u64)> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["metadata"]["name"].as_str().unwrap().to_string(),
                d["spec"]["template"]["spec"]["containers"][0]["image"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                d["spec"]["replicas"].as_u64().unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_by_selector_then_a_revision_that_never_becomes_ready_is_rolled_back() {
    let plane = ControlPlane::shared().await;
    let dir = tempfile::tempdir().unwrap();
    let services = r#"
[services.web]
image = "registry.example/web:v1"
min_instances = 2
strategy = "blue-green"
strategy_config = { bake = "0s" }
"#;
    let release = |image: &str| {
        std::fs::write(
            dir.path().join("pipeline.toml"),
            pipeline("bluegreen", &services.replace("web:v1", image)),
        )
        .unwrap()
    };
    release("web:v1");
    let out = engine(plane, dir.path(), &["plan", "pipeline.toml"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("web: create"), "{}", text(&out));

    let out = engine(plane, dir.path(), &["run", "pipeline.toml"]);
    assert!(out.status.success(), "{}\n{}", text(&out), plane.logs());
    assert_eq!(
        deployments(plane, "bluegreen"),
        [(
            "web-r1".to_string(),
            "registry.example/web:v1".to_string(),
            2
        )]
    );
    let service = plane.get(&["-n", "bluegreen", "service", "web"]).unwrap();
    assert_eq!(service["spec"]["selector"]["engine/revision"], "web-r1");

    // A second plan has nothing to do; a new image is a field-level change from the server's
    // dry run.
    let out = engine(plane, dir.path(), &["plan", "pipeline.toml"]);
    assert!(text(&out).contains("web: no-change"), "{}", text(&out));
    release("web:v2");
    let out = engine(plane, dir.path(), &["plan", "pipeline.toml"]);
    assert!(
        text(&out).contains(r#"image: "registry.example/web:v1" → "registry.example/web:v2""#),
        "{}",
        text(&out)
    );
    let out = engine(plane, dir.path(), &["run", "pipeline.toml"]);
    assert!(out.status.success(), "{}", text(&out));
    let service = plane.get(&["-n", "bluegreen", "service", "web"]).unwrap();
    assert_eq!(service["spec"]["selector"]["engine/revision"], "web-r2");

    // A release whose pods never become ready fails at the controller's progress deadline,
    // and the Service keeps selecting web-r2.
    release("web:never-ready");
    let out = engine(plane, dir.path(), &["run", "pipeline.toml"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("progress deadline"), "{}", text(&out));
    let service = plane.get(&["-n", "bluegreen", "service", "web"]).unwrap();
    assert_eq!(service["spec"]["selector"]["engine/revision"], "web-r2");

    // Blue-green retired web-r1 once web-r2 served, and the failed web-r3 is gone too.
    assert_eq!(
        deployments(plane, "bluegreen"),
        [(
            "web-r2".to_string(),
            "registry.example/web:v2".to_string(),
            2
        )]
    );

    // Destroy: the engine's objects go, but not a namespace that holds something the engine did
    // not make; once that is gone, the namespace goes too.
    plane.kubectl(&[
        "-n",
        "bluegreen",
        "create",
        "configmap",
        "by-hand",
        "--from-literal=a=b",
    ]);
    let out = engine(plane, dir.path(), &["destroy", "pipeline.toml"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("still holds objects the engine did not make (configmap by-hand)"),
        "{}",
        text(&out)
    );
    assert!(
        plane
            .get(&["-n", "bluegreen", "configmap", "by-hand"])
            .is_some()
    );
    plane.kubectl(&["-n", "bluegreen", "delete", "configmap", "by-hand"]);
    let out = engine(plane, dir.path(), &["destroy", "pipeline.toml"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(plane.get(&["-n", "bluegreen", "service", "web"]).is_none());
    let namespace = plane.get(&["namespace", "bluegreen"]);
    assert!(
        namespace
            .as_ref()
            .is_none_or(|n| n["status"]["phase"] == "Terminating"),
        "{namespace:?}"
    );
}

// The host's Kubernetes credentials, through the hostile test plugin: the plugin names the
// cluster secret in a request to https://kubernetes.invalid and the host sends it to the API
// server with the kubeconfig's credentials, which the plugin never holds.

/// The hostile plugin, its secret `token` granted from `from` (and `allow_http` naming the test
/// server, if any), in a runtime that is a dry run when `dry_run`.
async fn cluster_plugin(
    from: &str,
    server: Option<&TestServer>,
    dry_run: bool,
) -> (Result<LoadedPlugin, String>, MemorySink) {
    let sink = MemorySink::default();
    let runtime = Runtime::new(RuntimeOptions {
        cache_dir: Some(support::cache_dir()),
        sink: std::sync::Arc::new(sink.clone()),
        dry_run,
        ..Default::default()
    })
    .unwrap();
    let grants = GrantsConfig {
        allow_http: server
            .map(|s| vec![format!("http://127.0.0.1:{}", s.port)])
            .unwrap_or_default(),
        secrets: [(
            "token".to_string(),
            SecretGrantConfig {
                from: from.to_string(),
                hosts: None,
                in_plan: None,
            },
        )]
        .into(),
        ..Default::default()
    };
    let plugin = runtime
        .load(
            "hostile",
            &PluginSource::Unpinned(support::testing_plugin("testing-hostile")),
            &grants,
        )
        .await
        .map_err(|e| format!("{e:#}"));
    (plugin, sink)
}

/// The plugin's `cluster` request with `config`: its outcome and what it read.
async fn cluster_call(plugin: &LoadedPlugin, config: Value) -> (String, String) {
    let mut all = json!({ "mode": "cluster", "secret": "token" });
    for (k, v) in config.as_object().unwrap() {
        all[k] = v.clone();
    }
    let status = plugin
        .provider()
        .unwrap()
        .read(&ServiceRef {
            name: "svc".into(),
            config: all.to_string(),
        })
        .await;
    let report: Value = match status {
        Ok(Some(s)) => serde_json::from_str(&s.deployed).unwrap(),
        other => panic!("{other:?}"),
    };
    (
        report["outcome"].as_str().unwrap().to_string(),
        report["detail"].as_str().unwrap().to_string(),
    )
}

/// A kubeconfig file in `dir` for the control plane with `user` (YAML of a kubeconfig user).
fn kubeconfig_with(plane: &ControlPlane, dir: &Path, name: &str, ca: &str, user: &str) -> String {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n    {ca}\nusers:\n- name: u\n  user:\n{user}\ncontexts:\n- name: test\n  context: {{cluster: test, user: u}}\ncurrent-context: test\n",
            plane.server
        ),
    )
    .unwrap();
    format!("kubeconfig-file:{}", path.display())
}

fn b64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_reaches_the_cluster_with_a_token_a_client_certificate_or_an_exec_plugin() {
    let plane = ControlPlane::shared().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = format!(
        "certificate-authority-data: {}",
        b64(&plane.authority.certificate_pem())
    );
    let read = json!({ "path": "/api/v1/namespaces/default" });

    // A token; the plugin's own Authorization is replaced by the host's.
    let token = kubeconfig_with(
        plane,
        dir.path(),
        "token",
        &ca,
        &format!("    token: {}", support::kube::ADMIN_TOKEN),
    );
    let plugin = cluster_plugin(&token, None, false).await.0.unwrap();
    let (outcome, detail) = cluster_call(&plugin, read.clone()).await;
    assert_eq!(outcome, "ok", "{detail}");
    assert!(
        detail.starts_with("200 ") && detail.contains(r#""name":"default""#),
        "{detail}"
    );
    let forged = json!({ "path": "/api/v1/namespaces/default", "authorization": "Bearer forged" });
    assert!(cluster_call(&plugin, forged).await.1.starts_with("200 "));

    // A client certificate the cluster's CA signed.
    let (cert, key) = plane.authority.sign(&["cert-user"], Some("system:masters"));
    let user = format!(
        "    client-certificate-data: {}\n    client-key-data: {}",
        b64(&cert),
        b64(&key)
    );
    let plugin = cluster_plugin(
        &kubeconfig_with(plane, dir.path(), "cert", &ca, &user),
        None,
        false,
    )
    .await
    .0
    .unwrap();
    let (outcome, detail) = cluster_call(&plugin, read.clone()).await;
    assert!(detail.starts_with("200 "), "{outcome}: {detail}");

    // An exec credential plugin (as gke-gcloud-auth-plugin is), run once for both calls.
    let script = dir.path().join("credential.sh");
    let runs = dir.path().join("runs");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho run >> '{}'\necho '{{\"apiVersion\":\"client.authentication.k8s.io/v1\",\"kind\":\"ExecCredential\",\"status\":{{\"token\":\"{}\"}}}}'\n",
            runs.display(),
            support::kube::EXEC_TOKEN
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let user = format!(
        "    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: {}\n      interactiveMode: Never",
        script.display()
    );
    let plugin = cluster_plugin(
        &kubeconfig_with(plane, dir.path(), "exec", &ca, &user),
        None,
        false,
    )
    .await
    .0
    .unwrap();
    for _ in 0..2 {
        let (outcome, detail) = cluster_call(&plugin, read.clone()).await;
        assert!(detail.starts_with("200 "), "{outcome}: {detail}");
    }
    assert_eq!(
        std::fs::read_to_string(&runs).unwrap().lines().count(),
        1,
        "the credential is cached"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_clusters_own_authority_is_trusted_and_verification_is_never_off() {
    let plane = ControlPlane::shared().await;
    let dir = tempfile::tempdir().unwrap();
    let user = format!("    token: {}", support::kube::ADMIN_TOKEN);
    // Another authority: the API server's certificate is not trusted, whatever the system trusts.
    let other = support::kube::Authority::new();
    let ca = format!(
        "certificate-authority-data: {}",
        b64(&other.certificate_pem())
    );
    let (plugin, sink) = cluster_plugin(
        &kubeconfig_with(plane, dir.path(), "other", &ca, &user),
        None,
        false,
    )
    .await;
    let plugin = plugin.unwrap();
    let (outcome, detail) = cluster_call(&plugin, json!({ "path": "/api/v1/namespaces" })).await;
    assert_eq!(outcome, "err", "{detail}");
    assert!(detail.contains("TlsCertificateError"), "{detail}");
    let told = sink.events().iter().any(|e| {
        matches!(e, PluginEvent::Log { message, .. } if message.contains("certificate was not accepted"))
    });
    assert!(told, "the user reads why: {:?}", sink.events());
    // Turning verification off is refused when the plugin loads, with the way that works.
    let insecure = kubeconfig_with(
        plane,
        dir.path(),
        "insecure",
        "insecure-skip-tls-verify: true",
        &user,
    );
    let error = cluster_plugin(&insecure, None, false)
        .await
        .0
        .err()
        .unwrap();
    assert!(
        error.contains("never turns certificate checks off")
            && error.contains("certificate-authority-data"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_never_holds_the_clusters_token_and_cannot_send_it_elsewhere() {
    // The test server plays a cluster reached over plain http on loopback (as `kubectl proxy`
    // is): it echoes the Authorization it receives.
    let server = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    let token = "cluster-token-0123456789";
    std::fs::write(
        &path,
        format!("apiVersion: v1\nclusters:\n- name: c\n  cluster: {{server: 'http://127.0.0.1:{}'}}\nusers:\n- name: u\n  user: {{token: {token}}}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\n", server.port),
    )
    .unwrap();
    let from = format!("kubeconfig-file:{}", path.display());
    let plugin = cluster_plugin(&from, Some(&server), false).await.0.unwrap();
    let (outcome, detail) = cluster_call(&plugin, json!({ "path": "/echo" })).await;
    assert_eq!(outcome, "ok", "{detail}");
    assert_eq!(
        server.requests().last().unwrap().authorization.as_deref(),
        Some(format!("Bearer {token}").as_str())
    );
    assert!(
        !detail.contains(token),
        "the echoed token is masked: {detail}"
    );

    // The cluster's handle in a request to another host is no credential: nothing is sent.
    let before = server.requests().len();
    let elsewhere = json!({ "url": format!("http://127.0.0.1:{}/echo", server.port) });
    let (outcome, detail) = cluster_call(&plugin, elsewhere).await;
    assert_eq!(outcome, "err", "{detail}");
    assert_eq!(server.requests().len(), before);
    // A request to the cluster without the handle, or with another secret's, is refused.
    let (outcome, detail) = cluster_call(
        &plugin,
        json!({ "path": "/echo", "header": "not-a-placeholder" }),
    )
    .await;
    assert_eq!(outcome, "err", "{detail}");
    assert_eq!(server.requests().len(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_reads_the_cluster_and_runs_server_side_dry_runs_but_writes_nothing() {
    let plane = ControlPlane::shared().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = format!(
        "certificate-authority-data: {}",
        b64(&plane.authority.certificate_pem())
    );
    let from = kubeconfig_with(
        plane,
        dir.path(),
        "token",
        &ca,
        &format!("    token: {}", support::kube::ADMIN_TOKEN),
    );
    let (plugin, sink) = cluster_plugin(&from, None, true).await;
    let plugin = plugin.unwrap();
    let (outcome, _) = cluster_call(&plugin, json!({ "path": "/api/v1/namespaces" })).await;
    assert_eq!(outcome, "ok");
    let write = json!({ "path": "/api/v1/namespaces", "method": "POST" });
    let (outcome, _) = cluster_call(&plugin, write).await;
    assert_eq!(outcome, "err");
    assert!(
        sink.events()
            .iter()
            .any(|e| matches!(e, PluginEvent::WouldCall { method, .. } if method == "POST"))
    );
    let dry = json!({ "path": "/api/v1/namespaces?dryRun=All", "method": "POST" });
    let (_, detail) = cluster_call(&plugin, dry).await;
    assert!(
        detail.starts_with("400 ") && detail.contains(r#""kind":"Status""#),
        "a server-side dry run is sent: {detail}"
    );
}

// The AI chatbot example (examples/k8s-chatbot), run as written but for its pauses and how
// often it polls: these replacements, each of which must match, make it quick.

fn chatbot_example(dir: &Path) {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/k8s-chatbot");
    std::fs::create_dir_all(dir.join("k8s")).unwrap();
    for entry in std::fs::read_dir(source.join("k8s")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join("k8s").join(path.file_name().unwrap())).unwrap();
    }
    let mut text = std::fs::read_to_string(source.join("pipeline.toml")).unwrap();
    for (from, to) in [
        (r#"pause = "10m""#, r#"pause = "1s""#),
        (r#"bake = "5m""#, r#"bake = "0s""#),
        (
            "[defaults.provider_config]\n",
            "[defaults.provider_config]\npoll_interval_ms = 200\nprogress_deadline_seconds = 15\nready_timeout_seconds = 120\n",
        ),
    ] {
        assert!(
            text.contains(from),
            "the example no longer contains {from:?}"
        );
        text = text.replace(from, to);
    }
    std::fs::write(dir.join("pipeline.toml"), text).unwrap();
}

/// Each Deployment of the chatbot namespace with its pods wanted and ready.
fn replicas_of(plane: &ControlPlane, name: &str) -> Option<(u64, u64)> {
    let d = plane.get(&["-n", "ai-chatbot", "deployment", name])?;
    Some((
        d["spec"]["replicas"].as_u64().unwrap_or(0),
        d["status"]["readyReplicas"].as_u64().unwrap_or(0),
    ))
}

fn hpa_target(plane: &ControlPlane, service: &str) -> String {
    let hpa = plane.get(&["-n", "ai-chatbot", "hpa", service]).unwrap();
    hpa["spec"]["scaleTargetRef"]["name"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chatbot_example_deploys_canaries_by_pods_switches_blue_green_and_rolls_back() {
    let plane = ControlPlane::shared().await;
    let dir = tempfile::tempdir().unwrap();
    chatbot_example(dir.path());
    // The guide's first steps, by hand: the namespace and the secrets the services name.
    plane.kubectl(&["create", "namespace", "ai-chatbot"]);
    for (name, literal) in [
        (
            "postgres-secret",
            "--from-literal=password=not-in-the-pipeline",
        ),
        ("api-secrets", "--from-literal=openai-api-key=sk-test"),
    ] {
        plane.kubectl(&[
            "-n",
            "ai-chatbot",
            "create",
            "secret",
            "generic",
            name,
            literal,
        ]);
    }

    let out = engine(plane, dir.path(), &["plan", "pipeline.toml"]);
    assert!(out.status.success(), "{}", text(&out));
    println!("{}", String::from_utf8_lossy(&out.stdout));
    for expected in [
        "ai-chatbot: create (create ai-chatbot in namespace ai-chatbot; traffic by the share of 5 pods",
        "resource postgres (manifest): create",
        "api-gateway: create",
    ] {
        assert!(text(&out).contains(expected), "{expected}: {}", text(&out));
    }

    // The first release: everything, in dependency order; each service behind its Service.
    let out = engine(
        plane,
        dir.path(),
        &["run", "pipeline.toml", "--var", "version=v1"],
    );
    assert!(out.status.success(), "{}\n{}", text(&out), plane.logs());
    assert_eq!(replicas_of(plane, "ai-chatbot-r1"), Some((5, 5)));
    assert_eq!(replicas_of(plane, "api-gateway-r1"), Some((2, 2)));
    assert_eq!(hpa_target(plane, "ai-chatbot"), "ai-chatbot-r1");
    let hpa = plane
        .get(&["-n", "ai-chatbot", "hpa", "api-gateway"])
        .unwrap();
    assert_eq!(
        (&hpa["spec"]["minReplicas"], &hpa["spec"]["maxReplicas"]),
        (&json!(2), &json!(10))
    );
    let metrics: Vec<(String, u64)> = hpa["spec"]["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["resource"]["name"].as_str().unwrap().to_string(),
                m["resource"]["target"]["averageUtilization"]
                    .as_u64()
                    .unwrap(),
            )
        })
        .collect();
    assert_eq!(
        metrics,
        [("cpu".to_string(), 70), ("memory".to_string(), 80)]
    );
    let gateway = plane
        .get(&["-n", "ai-chatbot", "deployment", "api-gateway-r1"])
        .unwrap();
    let container = &gateway["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["resources"],
        json!({ "requests": { "cpu": "250m", "memory": "256Mi" }, "limits": { "cpu": "500m", "memory": "512Mi" } })
    );
    let env: Vec<&Value> = container["env"].as_array().unwrap().iter().collect();
    assert!(
        env.iter().any(|e| e["name"] == "MODEL_GATEWAY_URL"
            && e["value"] == "http://model-gateway.ai-chatbot.svc.cluster.local:80"),
        "{env:?}"
    );
    assert!(
        env.iter().any(|e| e["name"] == "JWT_SECRET"
            && e["valueFrom"]["secretKeyRef"]
                == json!({ "name": "api-secrets", "key": "jwt-secret" })),
        "{env:?}"
    );
    assert_eq!(
        container["envFrom"],
        json!([{ "configMapRef": { "name": "app-config" } }])
    );
    let config = plane
        .get(&["-n", "ai-chatbot", "configmap", "app-config"])
        .unwrap();
    assert_eq!(config["data"]["NATS_URL"], "nats://nats-service:4222");
    for object in [
        ["pvc", "postgres-pvc"],
        ["deployment", "postgres"],
        ["service", "postgres-service"],
        ["ingress", "ai-chatbot-ingress"],
        ["networkpolicy", "ai-chatbot-network-policy"],
    ] {
        assert!(
            plane
                .get(&["-n", "ai-chatbot", object[0], object[1]])
                .is_some(),
            "{object:?}"
        );
    }
    let service = plane
        .get(&["-n", "ai-chatbot", "service", "ai-chatbot"])
        .unwrap();
    assert_eq!(service["spec"]["type"], "LoadBalancer");
    assert!(
        service["spec"]["selector"].get("engine/revision").is_none(),
        "every revision's pods"
    );

    // Nothing to do the second time.
    let out = engine(
        plane,
        dir.path(),
        &["plan", "pipeline.toml", "--var", "version=v1"],
    );
    assert_eq!(
        text(&out).matches(": no-change").count(),
        9,
        "{}",
        text(&out)
    );

    // v2: the chatbot's canary moves its pods 20/40/60/80/100; the API gateway switches.
    let out = engine(
        plane,
        dir.path(),
        &["plan", "pipeline.toml", "--var", "version=v2"],
    );
    println!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(
        text(&out).contains("set traffic: ai-chatbot-planned 20%, ai-chatbot-r1 80%"),
        "{}",
        text(&out)
    );
    let out = engine(
        plane,
        dir.path(),
        &[
            "run",
            "pipeline.toml",
            "--var",
            "version=v2",
            "--output",
            "json",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let verified: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["type"] == "phase" && e["service"] == "ai-chatbot")
        .filter_map(|e| e["phase"].as_str().map(String::from))
        .collect();
    for step in [
        "canary 20%",
        "canary 40%",
        "canary 60%",
        "canary 80%",
        "canary 100%",
    ] {
        assert!(verified.contains(&step.to_string()), "{step}: {verified:?}");
    }
    assert_eq!(replicas_of(plane, "ai-chatbot-r2"), Some((5, 5)));
    assert_eq!(
        replicas_of(plane, "ai-chatbot-r1").map(|r| r.0),
        Some(0),
        "kept, without pods, for a rollback"
    );
    assert_eq!(hpa_target(plane, "ai-chatbot"), "ai-chatbot-r2");
    let gateway = plane
        .get(&["-n", "ai-chatbot", "service", "api-gateway"])
        .unwrap();
    assert_eq!(
        gateway["spec"]["selector"]["engine/revision"],
        "api-gateway-r2"
    );

    // v3 of the chatbot never becomes ready: its first pod fails the controller's progress
    // deadline, and v2 keeps all five.
    let file = dir.path().join("pipeline.toml");
    let pipeline = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        pipeline.replace(
            r#"image = "${registry}/ai-chatbot:${version}""#,
            r#"image = "${registry}/ai-chatbot:never-ready""#,
        ),
    )
    .unwrap();
    let out = engine(
        plane,
        dir.path(),
        &["run", "pipeline.toml", "--var", "version=v2"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("progress deadline"), "{}", text(&out));
    assert_eq!(replicas_of(plane, "ai-chatbot-r2"), Some((5, 5)));
    assert_eq!(
        replicas_of(plane, "ai-chatbot-r3"),
        None,
        "the failed revision is retired"
    );
    assert_eq!(hpa_target(plane, "ai-chatbot"), "ai-chatbot-r2");
    std::fs::write(&file, pipeline).unwrap();

    // The guide's rollback: v1 takes its five pods back.
    let out = engine(
        plane,
        dir.path(),
        &[
            "rollback",
            "ai-chatbot",
            "pipeline.toml",
            "--var",
            "version=v2",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(replicas_of(plane, "ai-chatbot-r1"), Some((5, 5)));
    assert_eq!(replicas_of(plane, "ai-chatbot-r2").map(|r| r.0), Some(0));

    // The teardown: what the engine made goes; the namespace and the secrets, made by hand, stay.
    let out = engine(
        plane,
        dir.path(),
        &[
            "destroy",
            "--dry-run",
            "pipeline.toml",
            "--var",
            "version=v2",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("would destroy ai-chatbot\n"),
        "{}",
        text(&out)
    );
    let out = engine(
        plane,
        dir.path(),
        &["destroy", "pipeline.toml", "--var", "version=v2"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("left resource ai-chatbot-namespace in place"),
        "{}",
        text(&out)
    );
    let left = plane.get(&["-n", "ai-chatbot", "deployments"]).unwrap();
    assert_eq!(left["items"], json!([]), "{left:#}");
    assert!(
        plane
            .get(&["-n", "ai-chatbot", "configmap", "app-config"])
            .is_none()
    );
    assert!(
        plane
            .get(&["-n", "ai-chatbot", "secret", "api-secrets"])
            .is_some()
    );
}

/// The weights of the service's HTTPRoute by backend.
fn route_weights(plane: &ControlPlane, namespace: &str, route: &str) -> Vec<(String, u64)> {
    let route = plane.get(&["-n", namespace, "httproute", route]).unwrap();
    route["spec"]["rules"][0]["backendRefs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["name"].as_str().unwrap().to_string(),
                b["weight"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_by_gateway_api_weights_is_read_back_from_the_httproute() {
    let plane = ControlPlane::shared().await;
    let dir = tempfile::tempdir().unwrap();
    let services = r#"
[services.shop]
image = "registry.example/shop:v1"
strategy = "canary"
strategy_config = { steps = [25, 100], pause = "0s" }

[services.shop.provider_config]
traffic = "gateway"
route = { parents = [{ name = "external", namespace = "gateway-system" }], hostnames = ["shop.example.com"] }
"#;
    let release = |image: &str| {
        let text = pipeline("weighted", &services.replace("shop:v1", image));
        std::fs::write(dir.path().join("pipeline.toml"), text).unwrap()
    };
    release("shop:v1");
    let out = engine(plane, dir.path(), &["run", "pipeline.toml"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        route_weights(plane, "weighted", "shop"),
        [("shop-r1".to_string(), 100)]
    );
    let route = plane.get(&["-n", "weighted", "httproute", "shop"]).unwrap();
    assert_eq!(route["spec"]["parentRefs"][0]["name"], "external");
    assert_eq!(route["spec"]["hostnames"], json!(["shop.example.com"]));

    // The next release: 25 % through the route's weights, then all of it; the old revision
    // stays without a weight for a rollback, which the route's weights undo.
    release("shop:v2");
    let out = engine(
        plane,
        dir.path(),
        &["run", "pipeline.toml", "--output", "json"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(r#""phase":"canary 25%""#),
        "{}",
        text(&out)
    );
    assert_eq!(
        route_weights(plane, "weighted", "shop"),
        [("shop-r2".to_string(), 100)]
    );
    let out = engine(plane, dir.path(), &["rollback", "shop", "pipeline.toml"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        route_weights(plane, "weighted", "shop"),
        [("shop-r1".to_string(), 100)]
    );

    let out = engine(plane, dir.path(), &["destroy", "pipeline.toml"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        plane
            .get(&["-n", "weighted", "httproute", "shop"])
            .is_none()
    );
}

/// `engine plugins check` against the control plane: the kubernetes provider keeps every rule
/// of the provider contract with real Deployments (kwok makes their pods ready), moving traffic
/// by HTTPRoute weights (with `traffic = "selector"` it cannot split, and the kit says so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubernetes_provider_passes_the_conformance_kit() {
    let plane = ControlPlane::shared().await;
    let _ = plane.try_kubectl(&["create", "namespace", "conformance"], "");
    let dir = tempfile::tempdir().unwrap();
    let services = r#"
[services.api]
image = "registry.example/api:v1"

[services.api.provider_config]
traffic = "gateway"
route = { parents = [{ name = "external", namespace = "gateway-system" }], hostnames = ["api.example.com"] }

[services.web]
image = "registry.example/web:v1"

[services.web.provider_config]
traffic = "gateway"
route = { parents = [{ name = "external", namespace = "gateway-system" }], hostnames = ["web.example.com"] }
"#;
    std::fs::write(
        dir.path().join("pipeline.toml"),
        pipeline("conformance", services),
    )
    .unwrap();
    let out = tokio::task::spawn_blocking({
        let dir = dir.path().to_path_buf();
        move || {
            engine(
                plane,
                &dir,
                &[
                    "plugins",
                    "check",
                    "kubernetes",
                    "--config",
                    "pipeline.toml",
                ],
            )
        }
    })
    .await
    .unwrap();
    let shown = text(&out);
    assert!(out.status.success(), "{shown}\n{}", plane.logs());
    assert!(shown.contains("16 passed, 0 failed, 0 skipped"), "{shown}");
    assert_eq!(
        deployments(plane, "conformance"),
        [],
        "the check's copies are removed"
    );
}
