//! Kubernetes clusters, brokered by the host (a secret granted `from = "kubeconfig"`,
//! `"kubeconfig:CONTEXT"`, `"kubeconfig-file:PATH"` or `"in-cluster"`): which API server the grant names, a TLS client
//! that trusts that cluster's certificate authority for that server alone (and presents the
//! user's client certificate, if the kubeconfig gives one), and the bearer token the host
//! attaches: the kubeconfig's, its token file's (read again, as it rotates), or an exec
//! credential plugin's (such as `gke-gcloud-auth-plugin`), which the host runs and caches until
//! the credential expires.
//!
//! A plugin holds only a handle. It sends its requests to `https://kubernetes.invalid/PATH`,
//! naming the handle's placeholder in the [`CLUSTER_HEADER`]; the egress hook sends them to the
//! cluster's API server with the credentials, and to nowhere else.

use crate::grants::source::KubeSource;
use crate::redact::redactor;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The host a plugin sends a cluster's requests to; the egress hook replaces it with the
/// cluster's API server.
pub const API_HOST: &str = "kubernetes.invalid";
/// The header that names the cluster secret (its placeholder) a request is for.
pub const CLUSTER_HEADER: &str = "x-engine-kubernetes";

/// How long an exec plugin's credential without an expiry is used before it runs again.
const EXEC_DEFAULT_LIFETIME: Duration = Duration::from_secs(300);
/// An expiring credential is renewed this long before it expires.
const RENEW_BEFORE: Duration = Duration::from_secs(30);
/// An exec plugin that has not answered by then has failed.
const EXEC_TIMEOUT: Duration = Duration::from_secs(60);
/// Where a pod's service account is mounted.
const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// One cluster as a grant names it.
pub struct KubeCluster {
    server: reqwest::Url,
    /// Where it came from, for messages: `context prod of /home/me/.kube/config`.
    described: String,
    client: reqwest::Client,
    auth: Auth,
}

impl std::fmt::Debug for KubeCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KubeCluster({} at {})", self.described, self.server)
    }
}

/// How the host proves who it is to the API server, besides a client certificate.
enum Auth {
    /// A client certificate alone, or nothing.
    None,
    Token(String),
    /// A token read from a file at each request (a projected service account token rotates).
    TokenFile(PathBuf),
    Exec(ExecPlugin),
}

impl KubeCluster {
    /// Reads the connection a grant names. Nothing is sent yet; an exec plugin first runs with
    /// the first request.
    pub fn new(source: &KubeSource) -> Result<KubeCluster, String> {
        match source {
            KubeSource::Kubeconfig { context, file } => {
                from_kubeconfig(context.as_deref(), file.as_deref())
            }
            KubeSource::InCluster => in_cluster(),
        }
    }

    pub fn server(&self) -> &reqwest::Url {
        &self.server
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// `context prod of /home/me/.kube/config`, for messages.
    pub fn described(&self) -> &str {
        &self.described
    }

    /// The URL on the API server for a plugin's request to `https://kubernetes.invalid…`: the
    /// server's own path (a proxy's prefix, as Rancher's `/k8s/clusters/ID`) followed by the
    /// request's path and query. `None` when the result would leave that prefix (an encoded
    /// `..` that the URL parser resolves once joined).
    pub fn url_for(&self, request: &reqwest::Url) -> Option<reqwest::Url> {
        let mut url = self.server.clone();
        let base = self.server.path().trim_end_matches('/');
        url.set_path(&format!("{base}{}", request.path()));
        url.set_query(request.query());
        url.path().starts_with(&format!("{base}/")).then_some(url)
    }

    /// The bearer token to send, registered with the redactor; none for a client certificate.
    pub async fn bearer_token(&self) -> Result<Option<String>, String> {
        let token = match &self.auth {
            Auth::None => return Ok(None),
            Auth::Token(token) => token.clone(),
            Auth::TokenFile(path) => read_token_file(path)?,
            Auth::Exec(exec) => exec.token().await?,
        };
        redactor().register(&token);
        Ok(Some(token))
    }
}

fn read_token_file(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?;
    Ok(text.trim().to_string())
}

// The kubeconfig, as kubectl reads it: the files of KUBECONFIG (separated by `:`) merged, the
// first to name an entry winning, or ~/.kube/config. Only the fields the engine uses.

#[derive(Debug, Default, Deserialize)]
struct Kubeconfig {
    #[serde(default)]
    clusters: Vec<NamedCluster>,
    #[serde(default)]
    users: Vec<NamedUser>,
    #[serde(default)]
    contexts: Vec<NamedContext>,
    #[serde(rename = "current-context", default)]
    current_context: Option<String>,
}

#[derive(Debug, Deserialize)]
struct NamedCluster {
    name: String,
    cluster: Cluster,
    /// The directory of the file it came from, which its relative paths start from.
    #[serde(skip)]
    dir: PathBuf,
}

#[derive(Debug, Deserialize)]
struct NamedUser {
    name: String,
    #[serde(default)]
    user: User,
    #[serde(skip)]
    dir: PathBuf,
}

#[derive(Debug, Deserialize)]
struct NamedContext {
    name: String,
    context: Context,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Cluster {
    server: String,
    certificate_authority: Option<String>,
    certificate_authority_data: Option<String>,
    #[serde(default)]
    insecure_skip_tls_verify: bool,
    tls_server_name: Option<String>,
    proxy_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct User {
    token: Option<String>,
    #[serde(rename = "tokenFile")]
    token_file: Option<String>,
    client_certificate: Option<String>,
    client_certificate_data: Option<String>,
    client_key: Option<String>,
    client_key_data: Option<String>,
    exec: Option<ExecConfig>,
    auth_provider: Option<serde_json::Value>,
    username: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Context {
    cluster: String,
    #[serde(default)]
    user: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExecConfig {
    command: String,
    #[serde(default)]
    args: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<ExecEnv>>,
    api_version: Option<String>,
    install_hint: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct ExecEnv {
    name: String,
    value: String,
}

/// The kubeconfig files kubectl would read.
fn kubeconfig_paths() -> Result<Vec<PathBuf>, String> {
    if let Some(list) = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
        return Ok(std::env::split_paths(&list).collect());
    }
    let home =
        dirs::home_dir().ok_or("no KUBECONFIG and no home directory to find ~/.kube/config in")?;
    Ok(vec![home.join(".kube/config")])
}

fn read_kubeconfig(file: Option<&Path>) -> Result<(Kubeconfig, String), String> {
    let paths = match file {
        Some(path) => vec![path.to_path_buf()],
        None => kubeconfig_paths()?,
    };
    let mut merged = Kubeconfig::default();
    let mut read = Vec::new();
    for path in &paths {
        let Ok(text) = std::fs::read_to_string(path) else {
            continue; // kubectl skips a listed file that does not exist
        };
        let mut file: Kubeconfig = serde_saphyr::from_str(&text)
            .map_err(|e| format!("cannot read the kubeconfig {}: {e}", path.display()))?;
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        file.clusters.iter_mut().for_each(|c| c.dir = dir.clone());
        file.users.iter_mut().for_each(|u| u.dir = dir.clone());
        merge(&mut merged, file);
        read.push(path.display().to_string());
    }
    if read.is_empty() {
        let listed: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        return Err(format!(
            "no kubeconfig at {} (set KUBECONFIG, or write the cluster's with `gcloud container clusters get-credentials` or `kubectl config`)",
            listed.join(", ")
        ));
    }
    Ok((merged, read.join(", ")))
}

/// kubectl's merge: the first file to name a cluster, user or context, or to set the current
/// context, wins.
fn merge(into: &mut Kubeconfig, file: Kubeconfig) {
    for c in file.clusters {
        if !into.clusters.iter().any(|x| x.name == c.name) {
            into.clusters.push(c);
        }
    }
    for u in file.users {
        if !into.users.iter().any(|x| x.name == u.name) {
            into.users.push(u);
        }
    }
    for c in file.contexts {
        if !into.contexts.iter().any(|x| x.name == c.name) {
            into.contexts.push(c);
        }
    }
    if into
        .current_context
        .as_deref()
        .unwrap_or_default()
        .is_empty()
    {
        into.current_context = file.current_context;
    }
}

fn from_kubeconfig(context: Option<&str>, file: Option<&Path>) -> Result<KubeCluster, String> {
    let (config, files) = read_kubeconfig(file)?;
    let name = match context {
        Some(name) => name.to_string(),
        None => config
            .current_context
            .clone()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| format!("the kubeconfig ({files}) has no current-context; name one with from = \"kubeconfig:CONTEXT\""))?,
    };
    let context = config
        .contexts
        .iter()
        .find(|c| c.name == name)
        .ok_or_else(|| {
            let known: Vec<&str> = config.contexts.iter().map(|c| c.name.as_str()).collect();
            format!(
                "the kubeconfig ({files}) has no context {name:?}; it has {}",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )
        })?;
    let described = format!("context {name} of {files}");
    let cluster = config
        .clusters
        .iter()
        .find(|c| c.name == context.context.cluster)
        .ok_or_else(|| {
            format!(
                "{described} names cluster {:?}, which the kubeconfig does not define",
                context.context.cluster
            )
        })?;
    let user = match context.context.user.as_str() {
        "" => None,
        name => Some(
            config
                .users
                .iter()
                .find(|u| u.name == name)
                .ok_or_else(|| {
                    format!("{described} names user {name:?}, which the kubeconfig does not define")
                })?,
        ),
    };
    let server = server_url(&cluster.cluster.server, &described)?;
    refuse_unsupported(&cluster.cluster, user.map(|u| &u.user), &described)?;
    let ca = certificate_authority(cluster)?;
    let identity = match user {
        Some(u) => client_identity(u)?,
        None => None,
    };
    let auth = match user {
        Some(u) => user_auth(u),
        None => Auth::None,
    };
    Ok(KubeCluster {
        client: tls_client(ca.as_deref(), identity.as_deref())?,
        server,
        described,
        auth,
    })
}

fn in_cluster() -> Result<KubeCluster, String> {
    let host = std::env::var("KUBERNETES_SERVICE_HOST").map_err(|_| {
        "KUBERNETES_SERVICE_HOST is not set: the engine is not running in a Kubernetes pod (use from = \"kubeconfig\" elsewhere)".to_string()
    })?;
    let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
    let host = match host.parse::<std::net::Ipv6Addr>() {
        Ok(v6) => format!("[{v6}]"),
        Err(_) => host,
    };
    let dir = Path::new(SERVICE_ACCOUNT_DIR);
    let ca = std::fs::read(dir.join("ca.crt")).map_err(|e| {
        format!(
            "cannot read the service account's CA certificate {SERVICE_ACCOUNT_DIR}/ca.crt: {e}"
        )
    })?;
    let described = format!("the pod's service account ({SERVICE_ACCOUNT_DIR})");
    Ok(KubeCluster {
        server: server_url(&format!("https://{host}:{port}"), &described)?,
        client: tls_client(Some(&ca), None)?,
        described,
        auth: Auth::TokenFile(dir.join("token")),
    })
}

/// The API server's URL: https, or http on loopback only (`kubectl proxy`).
fn server_url(text: &str, described: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(text)
        .map_err(|e| format!("{described}: the cluster's server {text:?} is not a URL: {e}"))?;
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name == "localhost",
        None => false,
    };
    match url.scheme() {
        "https" => Ok(url),
        "http" if loopback => Ok(url),
        _ => Err(format!(
            "{described}: the cluster's server {text} is not https (plain http is accepted on loopback only, for `kubectl proxy`)"
        )),
    }
}

/// What the engine will not do with a kubeconfig, each with the way that works instead.
fn refuse_unsupported(
    cluster: &Cluster,
    user: Option<&User>,
    described: &str,
) -> Result<(), String> {
    if cluster.insecure_skip_tls_verify {
        return Err(format!(
            "{described}: the cluster sets insecure-skip-tls-verify, and the engine never turns certificate checks off; give the cluster's certificate-authority-data instead"
        ));
    }
    if cluster.tls_server_name.is_some() || cluster.proxy_url.is_some() {
        return Err(format!(
            "{described}: the cluster sets tls-server-name or proxy-url, which the engine does not support; name the API server by the name its certificate has, reachable directly"
        ));
    }
    let Some(user) = user else { return Ok(()) };
    if let Some(provider) = &user.auth_provider {
        let name = provider["name"].as_str().unwrap_or("?");
        return Err(format!(
            "{described}: the user's auth-provider {name:?} was removed from Kubernetes clients (1.26); use its exec credential plugin instead (for GKE, gke-gcloud-auth-plugin: `gcloud container clusters get-credentials` writes it)"
        ));
    }
    if user.username.is_some() {
        return Err(format!(
            "{described}: the user has a username and password, which Kubernetes no longer accepts (1.19); use a token, a client certificate or an exec credential plugin"
        ));
    }
    Ok(())
}

/// A kubeconfig field given as a file or as base64 data, read.
fn file_or_data(
    path: &Option<String>,
    data: &Option<String>,
    dir: &Path,
    what: &str,
) -> Result<Option<Vec<u8>>, String> {
    use base64::Engine;
    if let Some(data) = data {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map_err(|e| format!("the kubeconfig's {what}-data is not base64: {e}"))?;
        return Ok(Some(decoded));
    }
    let Some(path) = path else { return Ok(None) };
    let path = dir.join(path);
    std::fs::read(&path).map(Some).map_err(|e| {
        format!(
            "cannot read the kubeconfig's {what} {}: {e}",
            path.display()
        )
    })
}

fn certificate_authority(cluster: &NamedCluster) -> Result<Option<Vec<u8>>, String> {
    let c = &cluster.cluster;
    file_or_data(
        &c.certificate_authority,
        &c.certificate_authority_data,
        &cluster.dir,
        "certificate-authority",
    )
}

/// The user's client certificate and key, as one PEM document.
fn client_identity(user: &NamedUser) -> Result<Option<Vec<u8>>, String> {
    let u = &user.user;
    let cert = file_or_data(
        &u.client_certificate,
        &u.client_certificate_data,
        &user.dir,
        "client-certificate",
    )?;
    let key = file_or_data(&u.client_key, &u.client_key_data, &user.dir, "client-key")?;
    match (cert, key) {
        (Some(mut cert), Some(key)) => {
            cert.push(b'\n');
            cert.extend(key);
            Ok(Some(cert))
        }
        (None, None) => Ok(None),
        _ => Err(format!(
            "the kubeconfig's user {} has a client certificate without its key, or a key without its certificate",
            user.name
        )),
    }
}

fn user_auth(user: &NamedUser) -> Auth {
    let u = &user.user;
    if let Some(token) = u.token.as_ref().filter(|t| !t.is_empty()) {
        redactor().register(token);
        return Auth::Token(token.clone());
    }
    if let Some(file) = &u.token_file {
        return Auth::TokenFile(user.dir.join(file));
    }
    match &u.exec {
        Some(exec) => Auth::Exec(ExecPlugin::new(exec.clone(), user.dir.clone())),
        None => Auth::None,
    }
}

/// A client that trusts `ca` alone (or the system's roots when the kubeconfig names none),
/// presents `identity`, and follows no redirect.
fn tls_client(ca: Option<&[u8]>, identity: Option<&[u8]>) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .use_rustls_tls()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10));
    if let Some(ca) = ca {
        let certificates = reqwest::Certificate::from_pem_bundle(ca).map_err(|e| {
            format!("the cluster's certificate authority is not PEM certificates: {e}")
        })?;
        if certificates.is_empty() {
            return Err("the cluster's certificate authority holds no certificate".into());
        }
        builder = builder.tls_built_in_root_certs(false);
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
    }
    if let Some(identity) = identity {
        let identity = reqwest::Identity::from_pem(identity)
            .map_err(|e| format!("the user's client certificate and key are not PEM: {e}"))?;
        builder = builder.identity(identity);
    }
    builder
        .build()
        .map_err(|e| format!("cannot make the cluster's HTTP client: {e}"))
}

/// An exec credential plugin (client.authentication.k8s.io), run by the host.
struct ExecPlugin {
    config: ExecConfig,
    /// The kubeconfig's directory: a command with a `/` is relative to it.
    dir: PathBuf,
    cached: tokio::sync::Mutex<Option<(String, SystemTime)>>,
}

/// What an exec plugin prints.
#[derive(Deserialize)]
struct ExecCredential {
    status: Option<ExecStatus>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExecStatus {
    token: Option<String>,
    expiration_timestamp: Option<String>,
    client_certificate_data: Option<String>,
}

impl ExecPlugin {
    fn new(config: ExecConfig, dir: PathBuf) -> ExecPlugin {
        ExecPlugin {
            config,
            dir,
            cached: tokio::sync::Mutex::new(None),
        }
    }

    /// The cached token, or a new one if it expires soon (one run at a time).
    async fn token(&self) -> Result<String, String> {
        let mut cached = self.cached.lock().await;
        if let Some((token, until)) = &*cached
            && SystemTime::now() + RENEW_BEFORE < *until
        {
            return Ok(token.clone());
        }
        let (token, until) = self.run().await?;
        *cached = Some((token.clone(), until));
        Ok(token)
    }

    async fn run(&self) -> Result<(String, SystemTime), String> {
        let c = &self.config;
        let program = if c.command.contains('/') {
            self.dir.join(&c.command)
        } else {
            PathBuf::from(&c.command)
        };
        let api_version = c
            .api_version
            .clone()
            .unwrap_or_else(|| "client.authentication.k8s.io/v1".into());
        let info = serde_json::json!({
            "apiVersion": api_version,
            "kind": "ExecCredential",
            "spec": { "interactive": false },
        });
        let mut command = tokio::process::Command::new(&program);
        command
            .args(c.args.iter().flatten())
            .env("KUBERNETES_EXEC_INFO", info.to_string())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        for e in c.env.iter().flatten() {
            command.env(&e.name, &e.value);
        }
        let shown = program.display().to_string();
        let hint = c
            .install_hint
            .as_deref()
            .map(|h| format!(" ({})", h.trim()))
            .unwrap_or_default();
        let output = tokio::time::timeout(EXEC_TIMEOUT, command.output())
            .await
            .map_err(|_| {
                format!(
                    "the exec credential plugin {shown} did not answer within {} s",
                    EXEC_TIMEOUT.as_secs()
                )
            })?
            .map_err(|e| format!("cannot run the exec credential plugin {shown}: {e}{hint}"))?;
        if !output.status.success() {
            // Its own words, which may be long or hold control characters: as plugin text.
            let stderr = super::untrusted::text(String::from_utf8_lossy(&output.stderr).trim());
            return Err(format!(
                "the exec credential plugin {shown} failed ({}): {stderr}",
                output.status
            ));
        }
        let credential: ExecCredential = serde_json::from_slice(&output.stdout).map_err(|e| {
            format!("the exec credential plugin {shown} printed no ExecCredential: {e}")
        })?;
        let status = credential
            .status
            .ok_or_else(|| format!("the exec credential plugin {shown} gave no status"))?;
        if status.client_certificate_data.is_some() && status.token.is_none() {
            return Err(format!(
                "the exec credential plugin {shown} gives a client certificate, which the engine does not take from exec plugins; use a plugin that gives a token"
            ));
        }
        let token = status
            .token
            .filter(|t| !t.is_empty())
            .ok_or_else(|| format!("the exec credential plugin {shown} gave no token"))?;
        redactor().register(&token);
        let until = match status.expiration_timestamp {
            Some(at) => humantime::parse_rfc3339_weak(&at)
                .map_err(|e| format!("the exec credential plugin {shown} gave an expiry that is not a time ({at}): {e}"))?,
            None => SystemTime::now() + EXEC_DEFAULT_LIFETIME,
        };
        Ok((token, until))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_file_to_name_an_entry_wins_as_kubectl_merges() {
        let first: Kubeconfig = serde_saphyr::from_str(
            "clusters:\n- name: a\n  cluster: {server: https://a.example}\ncurrent-context: one\n",
        )
        .unwrap();
        let second: Kubeconfig = serde_saphyr::from_str(
            "clusters:\n- name: a\n  cluster: {server: https://b.example}\n- name: c\n  cluster: {server: https://c.example}\ncurrent-context: two\n",
        )
        .unwrap();
        let mut merged = Kubeconfig::default();
        merge(&mut merged, first);
        merge(&mut merged, second);
        let servers: Vec<&str> = merged
            .clusters
            .iter()
            .map(|c| c.cluster.server.as_str())
            .collect();
        assert_eq!(servers, ["https://a.example", "https://c.example"]);
        assert_eq!(merged.current_context.as_deref(), Some("one"));
    }

    #[test]
    fn a_server_is_https_or_plain_http_on_loopback() {
        assert!(server_url("https://10.0.0.1:6443", "x").is_ok());
        assert!(server_url("http://127.0.0.1:8001", "x").is_ok());
        assert!(server_url("http://localhost:8001", "x").is_ok());
        assert!(
            server_url("http://10.0.0.1:8080", "x")
                .unwrap_err()
                .contains("not https")
        );
    }

    #[test]
    fn requests_keep_the_servers_own_path() {
        let cluster = KubeCluster {
            server: reqwest::Url::parse("https://rancher.example/k8s/clusters/c-1/").unwrap(),
            described: "test".into(),
            client: reqwest::Client::new(),
            auth: Auth::None,
        };
        let request =
            reqwest::Url::parse("https://kubernetes.invalid/api/v1/namespaces?limit=1").unwrap();
        assert_eq!(
            cluster.url_for(&request).unwrap().as_str(),
            "https://rancher.example/k8s/clusters/c-1/api/v1/namespaces?limit=1"
        );
        // An encoded `..` cannot climb out of the server's path: the request is read (and its
        // dot segments resolved) before it is joined, and the join is checked again.
        let climb =
            reqwest::Url::parse("https://kubernetes.invalid/%2e%2e/%2E%2e/c-2/api").unwrap();
        assert_eq!(
            cluster.url_for(&climb).unwrap().path(),
            "/k8s/clusters/c-1/c-2/api"
        );
    }
}
