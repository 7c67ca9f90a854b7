//! Shared by the end-to-end tests: test plugins, a runtime with a captured event sink, and a
//! real HTTP server on loopback.

#![allow(dead_code)]

use engine::grants::GrantsConfig;
use engine::plugins::PluginSource;
use engine::runtime::{LoadedPlugin, MemorySink, Runtime, RuntimeOptions};
use std::collections::HashMap;
use std::io::Read;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// A test-only plugin built by host/core/build.rs.
pub fn testing_plugin(package: &str) -> PathBuf {
    PathBuf::from(engine::build_info::PLUGINS_DIR)
        .join(format!("{}.wasm", package.replace('-', "_")))
}

/// One compile cache for every test, so each plugin compiles once per `cargo test`.
pub fn cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("compile-cache")
}

pub fn runtime_with(resolve: &[(&str, IpAddr)]) -> (Runtime, MemorySink) {
    let sink = MemorySink::default();
    let mut overrides: HashMap<String, Vec<IpAddr>> = HashMap::new();
    for (host, ip) in resolve {
        overrides.entry(host.to_string()).or_default().push(*ip);
    }
    let runtime = Runtime::new(RuntimeOptions {
        cache_dir: Some(cache_dir()),
        max_concurrent_calls: 8,
        sink: Arc::new(sink.clone()),
        resolve_overrides: overrides,
        ..Default::default()
    })
    .expect("runtime");
    (runtime, sink)
}

pub fn runtime() -> (Runtime, MemorySink) {
    runtime_with(&[])
}

pub async fn load_hostile(runtime: &Runtime, grants: GrantsConfig) -> LoadedPlugin {
    runtime
        .load(
            "hostile",
            &PluginSource::Unpinned(testing_plugin("testing-hostile")),
            &grants,
        )
        .await
        .expect("the hostile plugin loads")
}

/// The grants of a plugin that may reach `server` and holds the secret `token` (the name the
/// hostile plugin declares) from `from`, limited to `hosts` when given.
pub fn token_grants(server: &TestServer, from: String, hosts: Option<Vec<String>>) -> GrantsConfig {
    GrantsConfig {
        allow_http: vec![format!("http://127.0.0.1:{}", server.port)],
        secrets: [(
            "token".to_string(),
            engine::grants::SecretGrantConfig {
                from,
                hosts,
                in_plan: None,
            },
        )]
        .into(),
        ..Default::default()
    }
}

/// A finished command's exit code and output, for a test's failure message.
pub fn text(out: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A loopback port nothing listens on now, for a server the test starts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until `url` answers with a success, for up to two minutes; `what` names the server
/// in the failure.
pub async fn wait_until_ready(url: &str, what: &str) {
    let http = reqwest::Client::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        if let Ok(r) = http.get(url).send().await
            && r.status().is_success()
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what} did not become ready at {url}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// A request the test server received.
#[derive(Debug, Clone)]
pub struct Received {
    pub url: String,
    pub authorization: Option<String>,
    pub headers: Vec<(String, String)>,
    /// The body of a request to `/keep`.
    pub body: Vec<u8>,
}

/// A real HTTP server on 127.0.0.1: `/echo` answers with the request's Authorization header,
/// `/echo-encoded` with the bearer token in several encodings (and in an `x-echo` header),
/// `/echo-reversed` with the bearer token backwards, `/big` with 2 MiB, `/sink` reads the
/// request body and answers with its length, `/keep` keeps up to 1 MiB of it in
/// [`Received::body`] and answers with it, anything else answers `hello`.
pub struct TestServer {
    pub port: u16,
    pub received: Arc<Mutex<Vec<Received>>>,
    server: Arc<tiny_http::Server>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    pub fn start() -> TestServer {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind loopback"));
        let port = server.server_addr().to_ip().unwrap().port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let (srv, log) = (server.clone(), received.clone());
        let thread = std::thread::spawn(move || {
            for mut request in srv.incoming_requests() {
                let authorization = request
                    .headers()
                    .iter()
                    .find(|h| h.field.equiv("authorization"))
                    .map(|h| h.value.to_string());
                let headers = request
                    .headers()
                    .iter()
                    .map(|h| (h.field.to_string(), h.value.to_string()))
                    .collect();
                let mut kept = Vec::new();
                if request.url() == "/keep" {
                    let _ = request.as_reader().take(1 << 20).read_to_end(&mut kept);
                }
                log.lock().unwrap().push(Received {
                    url: request.url().to_string(),
                    authorization: authorization.clone(),
                    headers,
                    body: kept.clone(),
                });
                let token = authorization
                    .as_deref()
                    .unwrap_or_default()
                    .trim_start_matches("Bearer ")
                    .to_string();
                let mut extra = Vec::new();
                let body = match request.url() {
                    "/echo" => authorization.unwrap_or_default().into_bytes(),
                    "/echo-encoded" => {
                        extra.push(
                            tiny_http::Header::from_bytes("x-echo", token.as_bytes()).unwrap(),
                        );
                        encodings(&token).into_bytes()
                    }
                    "/echo-reversed" => token.chars().rev().collect::<String>().into_bytes(),
                    "/sink" => {
                        let n = std::io::copy(request.as_reader(), &mut std::io::sink());
                        n.map_or_else(|e| e.to_string(), |n| format!("{n} bytes"))
                            .into_bytes()
                    }
                    "/keep" => kept,
                    "/big" => vec![b'x'; 2 << 20],
                    _ => b"hello".to_vec(),
                };
                let mut response = tiny_http::Response::from_data(body);
                for header in extra {
                    response.add_header(header);
                }
                let _ = request.respond(response);
            }
        });
        TestServer {
            port,
            received,
            server,
            thread: Some(thread),
        }
    }

    pub fn requests(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

/// A token as a reflecting API might send it back: as is, in hex, in base64 at an odd offset,
/// inside a JSON document, percent-encoded.
fn encodings(token: &str) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("user:{token}"));
    let json = serde_json::json!({ "token": token }).to_string();
    let percent: String = form_urlencoded::byte_serialize(token.as_bytes()).collect();
    format!(
        "raw={token} hex={} b64={b64} json={json} percent={percent}",
        hex::encode(token)
    )
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
pub mod kube;
pub mod moto;
pub mod postgres;
pub mod project;
pub mod prometheus;
pub mod proxy;
pub mod python;
pub mod registry;

/// Where the tests keep the tools they build or install (Python environments, the Kubernetes
/// control plane), by version: the user's cache directory, which a fresh CI clone keeps.
pub fn cache_root() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .expect("HOME is set");
    base.join("engine-tests")
}

/// Starts `start` (shell lines that start one server in the background, in `$dir`, a fresh
/// directory) under a shell that waits on a pipe from this process: when the returned child's
/// stdin closes (the guard is dropped, or the test process ends in whatever way), the shell
/// stops the server and deletes the directory.
pub fn guarded_server(name: &str, start: &str) -> std::process::Child {
    let script = format!(
        "set -e\ndir=$(mktemp -d /tmp/engine-test-{name}-XXXXXX)\n{start}\npid=$!\nread _ || true\nkill $pid 2>/dev/null || true\nwait $pid 2>/dev/null || true\nrm -rf \"$dir\"\n"
    );
    std::process::Command::new("sh")
        .args(["-c", &script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start the {name} test server: {e}"))
}

/// Stops a [`guarded_server`].
pub fn stop_guarded(guard: &mut std::process::Child) {
    use std::io::Write;
    if let Some(stdin) = guard.stdin.as_mut() {
        let _ = stdin.write_all(b"stop\n");
    }
    let _ = guard.wait();
}
