//! The `kubernetes` provider and the host's Kubernetes credentials, end to end against a real
//! control plane on loopback (tests/support/kube.rs), with kubectl as the independent client.

mod support;

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
