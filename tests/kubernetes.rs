//! The `kubernetes` provider and the host's Kubernetes credentials, end to end against a real
//! control plane on loopback (tests/support/kube.rs), with kubectl as the independent client.

mod support;

use std::path::Path;
use std::process::{Command, Output};
use support::kube::ControlPlane;

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

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
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

    // Destroy: the engine's objects go, and the namespace with them.
    let out = engine(plane, dir.path(), &["destroy", "pipeline.toml"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(plane.get(&["-n", "bluegreen", "service", "web"]).is_none());
}
