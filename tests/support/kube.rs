//! A real Kubernetes control plane on loopback, built from its Go modules: etcd,
//! kube-apiserver, kube-controller-manager and kube-scheduler at the release `tests/kube/go.mod`
//! pins (`tests/kube/pin.sh` writes it), and kwok, which plays the kubelets of simulated nodes
//! (it makes their pods run and become ready, as envtest and kwokctl's binary runtime do).
//! The Deployment controller really creates ReplicaSets, the scheduler really binds pods, and
//! every object is validated by the real API server.
//!
//! The binaries are built on the first run on a machine (about ten minutes on two cores) into
//! the user's cache directory, keyed by the pinned versions, so later runs (and fresh CI clones
//! on the same machine) start at once. Each test binary starts one control plane, shared by its
//! tests (each in namespaces of its own); it stops when the test process ends.
//!
//! Pods whose image contains `never-ready` are never made ready by kwok: a release that never
//! becomes available, for the tests of a failed rollout. kwok renews its node's lease, so the
//! node lifecycle controller keeps the node (and its pods) ready however long a test runs.

use super::{cache_root, free_port};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// kwok, built with `go install` from its module (it needs no replacements).
pub const KWOK: &str = "v0.7.0";
/// The Gateway API, whose CRDs are installed so that weighted HTTPRoutes can be tested.
pub const GATEWAY_API: &str = "v1.3.0";
/// The bearer token of the control plane's administrator (`system:masters`).
pub const ADMIN_TOKEN: &str = "engine-test-admin-token";
/// A second user's token, in `system:masters` too, for the exec credential plugin tests.
pub const EXEC_TOKEN: &str = "engine-test-exec-token";

fn module_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/kube"))
}

/// The Kubernetes release `tests/kube/go.mod` requires, such as `v1.33.13`.
pub fn kubernetes_release() -> String {
    let go_mod = std::fs::read_to_string(module_dir().join("go.mod")).unwrap();
    go_mod
        .lines()
        .find_map(|l| l.strip_prefix("require k8s.io/kubernetes "))
        .expect("tests/kube/go.mod requires k8s.io/kubernetes")
        .trim()
        .to_string()
}

static BUILDING: Mutex<()> = Mutex::new(());

/// The directory of the built binaries (`bin/`) and the Gateway API CRDs (`crds/`), built on
/// first use.
pub fn tools() -> PathBuf {
    let go_mod = std::fs::read(module_dir().join("go.mod")).unwrap();
    let go_sum = std::fs::read(module_dir().join("go.sum")).unwrap();
    let key = Sha256::new()
        .chain_update(&go_mod)
        .chain_update(&go_sum)
        .chain_update(KWOK)
        .chain_update(GATEWAY_API)
        .finalize();
    let dir = cache_root().join(format!("kube-{}", hex::encode(&key[..8])));
    let _one = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    if dir.join("bin/kwok").exists() {
        return dir;
    }
    eprintln!(
        "building the Kubernetes control plane {} into {} (the first run on this machine takes about ten minutes)",
        kubernetes_release(),
        dir.display()
    );
    std::fs::create_dir_all(cache_root()).unwrap();
    // Built aside and renamed into place, so a half-built set is never used.
    let building = cache_root().join(format!("kube-build.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&building);
    build_control_plane(&building.join("bin"));
    build_kwok(&building.join("bin"));
    copy_gateway_crds(&building.join("crds"));
    if std::fs::rename(&building, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&building); // another process built it first
    }
    dir
}

fn go(args: &[&str], dir: &Path, env: &[(&str, &Path)]) -> Output {
    let mut command = Command::new("go");
    command.args(args).current_dir(dir);
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command
        .output()
        .expect("the Kubernetes tests need Go (`go` on the PATH) to build the control plane");
    assert!(
        out.status.success(),
        "go {args:?} failed (the tests build the control plane from the Go module proxy):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// kube-apiserver, kube-controller-manager, kube-scheduler and etcd, in one build of the
/// pinned module's tools; the version stamped as a release build would be, so clients see it.
fn build_control_plane(bin: &Path) {
    std::fs::create_dir_all(bin).unwrap();
    let release = kubernetes_release();
    let minor = release.split('.').nth(1).unwrap();
    let stamp = [
        format!("-X k8s.io/component-base/version.gitVersion={release}"),
        "-X k8s.io/component-base/version.gitMajor=1".to_string(),
        format!("-X k8s.io/component-base/version.gitMinor={minor}"),
        "-X k8s.io/component-base/version.gitTreeState=clean".to_string(),
    ]
    .join(" ");
    let ldflags = format!("-s -w {stamp}");
    let out = bin.display().to_string() + "/";
    go(
        &[
            "build",
            "-trimpath",
            "-ldflags",
            &ldflags,
            "-o",
            &out,
            "tool",
        ],
        &module_dir(),
        &[],
    );
    // etcd's main package is its server module's root.
    std::fs::rename(bin.join("v3"), bin.join("etcd"))
        .or_else(|_| std::fs::rename(bin.join("server"), bin.join("etcd")))
        .expect("the etcd binary was built");
}

fn build_kwok(bin: &Path) {
    let outside = tempfile::tempdir().unwrap();
    go(
        &[
            "install",
            "-trimpath",
            "-ldflags=-s -w",
            &format!("sigs.k8s.io/kwok/cmd/kwok@{KWOK}"),
        ],
        outside.path(),
        &[("GOBIN", bin)],
    );
}

/// A Go module's directory in the module cache, downloaded if need be.
fn module_source(module: &str, version: &str) -> PathBuf {
    let outside = tempfile::tempdir().unwrap();
    let out = go(
        &["mod", "download", "-json", &format!("{module}@{version}")],
        outside.path(),
        &[],
    );
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    PathBuf::from(
        info["Dir"]
            .as_str()
            .expect("go mod download names the directory"),
    )
}

fn copy_gateway_crds(crds: &Path) {
    std::fs::create_dir_all(crds).unwrap();
    let source = module_source("sigs.k8s.io/gateway-api", GATEWAY_API).join("config/crd/standard");
    for entry in std::fs::read_dir(source).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            std::fs::copy(&path, crds.join(path.file_name().unwrap())).unwrap();
        }
    }
}

/// kwok's own pod stages, except that a pod whose image contains `never-ready` never becomes
/// ready (the pod-ready stage skips it): read from kwok's module, not copied into this project.
fn kwok_stages() -> String {
    let stages = module_source("sigs.k8s.io/kwok", KWOK).join("kustomize/stage/pod/fast");
    let mut out = String::new();
    for name in ["pod-ready.yaml", "pod-complete.yaml", "pod-delete.yaml"] {
        let text = std::fs::read_to_string(stages.join(name)).unwrap();
        let text = if name == "pod-ready.yaml" {
            let anchor = "  selector:\n    matchExpressions:\n";
            assert!(
                text.contains(anchor),
                "kwok's pod-ready stage changed shape"
            );
            text.replacen(
                anchor,
                &format!(
                    "{anchor}    - key: '.spec.containers[].image | select(contains(\"never-ready\"))'\n      operator: 'DoesNotExist'\n"
                ),
                1,
            )
        } else {
            text
        };
        out.push_str("---\n");
        out.push_str(&text);
    }
    out
}

/// A certificate authority, and the certificates it signs for the API server and for users.
pub struct Authority {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Authority {
    pub fn new() -> Authority {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "engine-test-cluster-ca");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        Authority {
            issuer: rcgen::CertifiedIssuer::self_signed(params, key).unwrap(),
        }
    }

    pub fn certificate_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate and its key (PEM) for `names`, a server's or (with `organization`, the
    /// user's group) a client's whose common name is the user.
    pub fn sign(&self, names: &[&str], organization: Option<&str>) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names.clone()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0].as_str());
        let usage = match organization {
            Some(group) => {
                params
                    .distinguished_name
                    .push(rcgen::DnType::OrganizationName, group);
                rcgen::ExtendedKeyUsagePurpose::ClientAuth
            }
            None => rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        };
        params.extended_key_usages = vec![usage];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// A running control plane.
pub struct ControlPlane {
    /// `https://127.0.0.1:PORT`.
    pub server: String,
    /// The administrator's kubeconfig (a token).
    pub kubeconfig: PathBuf,
    /// The cluster's certificate authority, which also signs client certificates.
    pub authority: Authority,
    pub dir: PathBuf,
    _tmp: tempfile::TempDir,
    guards: Vec<Child>,
}

impl ControlPlane {
    /// The control plane of this test process, started by the first test that asks.
    pub async fn shared() -> &'static ControlPlane {
        static SHARED: tokio::sync::OnceCell<ControlPlane> = tokio::sync::OnceCell::const_new();
        SHARED.get_or_init(ControlPlane::start).await
    }

    async fn start() -> ControlPlane {
        let tools = tokio::task::spawn_blocking(tools).await.unwrap();
        let bin = tools.join("bin");
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let authority = Authority::new();
        let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).unwrap();
        write("ca.crt", &authority.certificate_pem());
        let (cert, key) = authority.sign(&["127.0.0.1", "localhost"], None);
        write("server.crt", &cert);
        write("server.key", &key);
        let signing = rcgen::KeyPair::generate().unwrap();
        write("service-accounts.key", &signing.serialize_pem());
        write("service-accounts.pub", &signing.public_key_pem());
        write(
            "tokens.csv",
            &format!(
                "{ADMIN_TOKEN},admin,admin,system:masters\n{EXEC_TOKEN},exec-user,exec-user,system:masters\n"
            ),
        );
        write("kwok-stages.yaml", &kwok_stages());
        let (etcd, peer, port) = (free_port(), free_port(), free_port());
        let server = format!("https://127.0.0.1:{port}");
        let kubeconfig = dir.join("admin.kubeconfig");
        write(
            "admin.kubeconfig",
            &token_kubeconfig(&server, &dir.join("ca.crt"), ADMIN_TOKEN),
        );
        let storage = format!(
            "'{bin}/etcd' --data-dir '{d}/etcd' --listen-client-urls http://127.0.0.1:{etcd} --advertise-client-urls http://127.0.0.1:{etcd} --listen-peer-urls http://127.0.0.1:{peer} >'{d}/etcd.log' 2>&1 & pids=$!\n\
             '{bin}/kube-apiserver' --etcd-servers=http://127.0.0.1:{etcd} --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port={port} \
             --tls-cert-file='{d}/server.crt' --tls-private-key-file='{d}/server.key' --client-ca-file='{d}/ca.crt' --token-auth-file='{d}/tokens.csv' \
             --authorization-mode=Node,RBAC --service-account-issuer=https://kubernetes.default.svc --service-account-key-file='{d}/service-accounts.pub' \
             --service-account-signing-key-file='{d}/service-accounts.key' --service-cluster-ip-range=10.96.0.0/16 >'{d}/apiserver.log' 2>&1 & pids=\"$pids $!\"",
            bin = bin.display(),
            d = dir.display(),
        );
        let mut guards = vec![guarded_group("kube-apiserver", &storage)];
        wait_until_ready(&server, &dir).await;
        let controllers = format!(
            "'{bin}/kube-controller-manager' --kubeconfig='{k}' --leader-elect=false --bind-address=127.0.0.1 --secure-port=0 --controllers='*' \
             --service-account-private-key-file='{d}/service-accounts.key' --root-ca-file='{d}/ca.crt' --use-service-account-credentials=false >'{d}/controller-manager.log' 2>&1 & pids=$!\n\
             '{bin}/kube-scheduler' --kubeconfig='{k}' --leader-elect=false --bind-address=127.0.0.1 --secure-port=0 >'{d}/scheduler.log' 2>&1 & pids=\"$pids $!\"\n\
             '{bin}/kwok' --kubeconfig='{k}' --config='{d}/kwok-stages.yaml' --manage-all-nodes=true --node-lease-duration-seconds=40 --cidr=10.244.0.1/16 --node-ip=10.0.0.2 >'{d}/kwok.log' 2>&1 & pids=\"$pids $!\"",
            bin = bin.display(),
            d = dir.display(),
            k = kubeconfig.display(),
        );
        guards.push(guarded_group("kube-controllers", &controllers));
        let plane = ControlPlane {
            server,
            kubeconfig,
            authority,
            dir,
            _tmp: tmp,
            guards,
        };
        plane.kubectl_stdin(&["apply", "-f", "-"], NODE);
        let crds = tools.join("crds").display().to_string();
        plane.kubectl(&["apply", "--server-side", "-f", &crds]);
        plane.kubectl(&[
            "wait",
            "--for=condition=Established",
            "crd/httproutes.gateway.networking.k8s.io",
            "--timeout=60s",
        ]);
        plane
    }

    /// `kubectl ARGS` as the administrator; panics with its output when it fails.
    pub fn kubectl(&self, args: &[&str]) -> String {
        self.kubectl_stdin(args, "")
    }

    /// `kubectl ARGS` with `input` on its standard input.
    pub fn kubectl_stdin(&self, args: &[&str], input: &str) -> String {
        let out = self.try_kubectl(args, input);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    pub fn try_kubectl(&self, args: &[&str], input: &str) -> Output {
        use std::io::Write;
        let mut child = Command::new("kubectl")
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("kubectl is installed (the independent client of the Kubernetes tests)");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// An object read with kubectl, as JSON; `None` when it does not exist.
    pub fn get(&self, args: &[&str]) -> Option<serde_json::Value> {
        let mut all = vec!["get", "-o", "json"];
        all.extend_from_slice(args);
        let out = self.try_kubectl(&all, "");
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains("NotFound"), "kubectl {all:?}: {stderr}");
            return None;
        }
        Some(serde_json::from_slice(&out.stdout).unwrap())
    }

    /// The last lines of each component's log, for a failure's message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for name in ["apiserver", "controller-manager", "scheduler", "kwok"] {
            let text =
                std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(5).collect();
            out.push_str(&format!("--- {name}.log (last lines)\n"));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        for guard in self.guards.iter_mut().rev() {
            super::stop_guarded(guard);
        }
    }
}

/// A kubeconfig that reaches `server`, trusting `ca`, with a bearer token.
pub fn token_kubeconfig(server: &str, ca: &Path, token: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n    certificate-authority: {}\nusers:\n- name: test\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: test\ncurrent-context: test\n",
        ca.display()
    )
}

/// The simulated node kwok manages; pods are scheduled to it.
const NODE: &str = "apiVersion: v1\nkind: Node\nmetadata:\n  name: kwok-node-0\n  annotations:\n    kwok.x-k8s.io/node: fake\n  labels:\n    kubernetes.io/hostname: kwok-node-0\n    type: kwok\nspec: {}\n";

/// Several servers started by `start` (shell lines that each start one in the background and
/// add its pid to `$pids`), stopped together when the returned guard is dropped or the test
/// process ends; like [`super::guarded_server`].
fn guarded_group(name: &str, start: &str) -> Child {
    let script = format!(
        "set -e\n{start}\nread _ || true\nkill $pids 2>/dev/null || true\nwait 2>/dev/null || true\n"
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {name}: {e}"))
}

/// Waits until the API server answers `/readyz`, for up to two minutes.
async fn wait_until_ready(server: &str, dir: &Path) {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(dir.join("ca.crt")).unwrap()).unwrap();
    let http = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ready = http
            .get(format!("{server}/readyz"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ready {
            return;
        }
        let log = std::fs::read_to_string(dir.join("apiserver.log")).unwrap_or_default();
        assert!(
            Instant::now() < deadline,
            "kube-apiserver did not become ready at {server}:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
