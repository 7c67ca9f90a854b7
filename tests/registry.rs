//! Plugins from an OCI registry: pushed by `engine plugins push` as Wasm artifacts, pinned by
//! engine.lock, loaded from the cache when the registry is down, and refused when the registry
//! serves content that does not match its digests or a tag moved under `--locked`. Against a
//! real registry server (the CNCF distribution registry, Debian's `docker-registry`).

mod support;

use std::path::Path;
use std::process::{Command, Output};
use support::project::{CHECKED_SERVICE as SERVICES, Project, assert_exit};
use support::registry::Registry;
use support::text;

fn engine_with_cache(project: &Project, cache: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(args)
        .arg("--pipeline")
        .arg(project.path("pipeline.toml"))
        .env("ENGINE_CACHE_DIR", cache)
        .env_remove("ENGINE_LOG")
        .output()
        .unwrap()
}

/// The pipeline validates with the downloads kept in `cache`, and not with an empty cache:
/// returns what the engine said then.
fn loads_from_the_kept_copy_only(project: &Project, cache: &Path) -> Output {
    let kept = engine_with_cache(project, cache, &["validate", "--locked"]);
    assert_exit(&kept, 0);
    let fresh = tempfile::tempdir().unwrap();
    let out = engine_with_cache(project, fresh.path(), &["validate", "--locked"]);
    assert_exit(&out, 2);
    out
}

fn engine(args: &[&str], cache: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(args)
        .env("ENGINE_CACHE_DIR", cache)
        .env_remove("ENGINE_LOG")
        .output()
        .unwrap()
}

/// Pushes a test plugin; returns the manifest digest the push printed.
fn push(package: &str, reference: &str, cache: &Path) -> String {
    push_file(&support::testing_plugin(package), reference, cache)
}

fn push_file(path: &Path, reference: &str, cache: &Path) -> String {
    let out = engine(
        &["plugins", "push", path.to_str().unwrap(), reference],
        cache,
    );
    assert_exit(&out, 0);
    let shown = text(&out);
    let digest = shown
        .lines()
        .find_map(|l| l.trim().strip_prefix("manifest: "))
        .unwrap_or_else(|| panic!("no digest in: {shown}"))
        .to_string();
    assert!(shown.contains(&format!("@{digest}")), "{shown}");
    digest
}

/// A plugin that nothing pins is refused; `engine plugins lock` then pins it.
fn refused_unpinned_then_locked(project: &Project, cache: &Path) {
    let out = engine_with_cache(project, cache, &["validate"]);
    assert_exit(&out, 2);
    assert!(
        text(&out).contains("nothing pins its code"),
        "{}",
        text(&out)
    );
    assert_exit(&engine_with_cache(project, cache, &["plugins", "lock"]), 0);
}

/// A project whose health check comes from `reference`, pinned by nothing yet.
fn project_from(reference: &str) -> Project {
    let project = Project::new(SERVICES);
    let path = project.path("pipeline.toml");
    let pipeline = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<String> = Vec::new();
    let mut in_health = false;
    for line in pipeline.lines() {
        if line.starts_with('[') {
            in_health = line == "[plugins.health]";
        }
        if in_health && line.starts_with("sha256 =") {
            continue;
        }
        if in_health && line.starts_with("source =") {
            lines.push(format!("source = \"{reference}\""));
            continue;
        }
        lines.push(line.to_string());
    }
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    project
}

#[tokio::test]
async fn a_pushed_plugin_is_a_wasm_artifact_other_tools_can_read() {
    let storage = tempfile::tempdir().unwrap();
    let registry = Registry::start(storage.path()).await;
    let cache = tempfile::tempdir().unwrap();
    let digest = push(
        "testing-test-health",
        &format!("oci://{}/acme/check:1.0.0", registry.host),
        cache.path(),
    );
    let manifest: serde_json::Value = reqwest::Client::new()
        .get(format!(
            "http://{}/v2/acme/check/manifests/{digest}",
            registry.host
        ))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.wasm.config.v0+json"
    );
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 1);
    assert_eq!(manifest["layers"][0]["mediaType"], "application/wasm");
    let bytes = std::fs::read(support::testing_plugin("testing-test-health")).unwrap();
    let sha = engine::runtime::cache::sha256_hex(&bytes);
    assert_eq!(manifest["layers"][0]["digest"], format!("sha256:{sha}"));
    let config: serde_json::Value = reqwest::Client::new()
        .get(format!(
            "http://{}/v2/acme/check/blobs/{}",
            registry.host,
            manifest["config"]["digest"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(config["architecture"], "wasm");
    assert_eq!(config["layerDigests"][0], format!("sha256:{sha}"));
    assert!(
        config["component"]["exports"][0]
            .as_str()
            .unwrap()
            .starts_with("engine:plugin/health@")
    );

    let pinned = format!("oci://{}/acme/check@{digest}", registry.host);
    let out = engine(&["plugins", "inspect", &pinned], cache.path());
    assert_exit(&out, 0);
    assert!(text(&out).contains(&sha), "{}", text(&out));

    let out = engine(
        &[
            "plugins",
            "push",
            "/etc/hostname",
            &format!("oci://{}/acme/junk:1", registry.host),
        ],
        cache.path(),
    );
    assert_exit(&out, 1);
}

#[tokio::test]
async fn a_tag_is_pinned_by_the_lock_and_a_moved_tag_is_refused_when_locked() {
    let storage = tempfile::tempdir().unwrap();
    let registry = Registry::start(storage.path()).await;
    let cache = tempfile::tempdir().unwrap();
    let reference = format!("oci://{}/acme/check:stable", registry.host);
    let first = push("testing-test-health", &reference, cache.path());
    let project = project_from(&reference);

    refused_unpinned_then_locked(&project, cache.path());
    let lock = std::fs::read_to_string(project.path("engine.lock")).unwrap();
    assert!(lock.contains(&format!("digest = \"{first}\"")), "{lock}");
    let out = engine_with_cache(&project, cache.path(), &["run", "--locked"]);
    assert_exit(&out, 0);

    // The tag moves to other content: the locked manifest is still what loads, and --locked
    // refuses until the move is accepted.
    // Another health check: the built-in `http` one, as a file.
    let other = cache.path().join("http.wasm");
    std::fs::write(
        &other,
        engine::plugins::find_embedded("http").unwrap().bytes,
    )
    .unwrap();
    let moved = push_file(&other, &reference, cache.path());
    assert_ne!(moved, first);
    let out = engine_with_cache(&project, cache.path(), &["validate", "--locked"]);
    assert_exit(&out, 2);
    assert!(
        text(&out).contains("the registry's tag now points at another manifest")
            && text(&out).contains(&moved),
        "{}",
        text(&out)
    );
    let out = engine_with_cache(&project, cache.path(), &["validate"]);
    assert_exit(&out, 0);
    assert!(text(&out).contains("warning"), "{}", text(&out));
    let out = engine_with_cache(&project, cache.path(), &["plugins", "lock"]);
    assert_exit(&out, 1);
    assert!(text(&out).contains("nothing was written"), "{}", text(&out));
}

#[tokio::test]
async fn a_pinned_plugin_loads_from_the_cache_while_its_registry_is_down() {
    let storage = tempfile::tempdir().unwrap();
    let registry = Registry::start(storage.path()).await;
    let cache = tempfile::tempdir().unwrap();
    let reference = format!("oci://{}/acme/check:1", registry.host);
    push("testing-test-health", &reference, cache.path());
    let project = project_from(&reference);
    assert_exit(
        &engine_with_cache(&project, cache.path(), &["plugins", "lock"]),
        0,
    );
    drop(registry);

    let out = loads_from_the_kept_copy_only(&project, cache.path());
    assert!(
        text(&out).contains(&format!("cannot fetch plugin 'health' from {reference}"))
            && text(&out).contains("cannot pull the manifest"),
        "{}",
        text(&out)
    );
}

#[tokio::test]
async fn a_registry_that_serves_other_content_than_its_digests_name_is_refused() {
    let storage = tempfile::tempdir().unwrap();
    let registry = Registry::start(storage.path()).await;
    let cache = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(support::testing_plugin("testing-test-health")).unwrap();
    let layer = format!("sha256:{}", engine::runtime::cache::sha256_hex(&bytes));

    // A pinned digest: the registry's manifest blob is altered behind its name.
    let reference = format!("oci://{}/acme/check:1", registry.host);
    let manifest = push("testing-test-health", &reference, cache.path());
    let pinned = format!("oci://{}/acme/check@{manifest}", registry.host);
    let project = project_from(&pinned);
    let fresh = tempfile::tempdir().unwrap();
    assert_exit(&engine_with_cache(&project, fresh.path(), &["validate"]), 0);
    let manifest_file = registry.blob_file(&manifest);
    let mut altered = std::fs::read(&manifest_file).unwrap();
    altered.extend_from_slice(b"\n ");
    std::fs::write(&manifest_file, &altered).unwrap();
    let fresh = tempfile::tempdir().unwrap();
    let out = engine_with_cache(&project, fresh.path(), &["validate"]);
    assert_exit(&out, 2);
    assert!(
        text(&out).contains("the manifest does not match its digest"),
        "{}",
        text(&out)
    );

    // The component layer altered behind its digest.
    let reference = format!("oci://{}/acme/other:1", registry.host);
    push("testing-test-health", &reference, cache.path());
    let mut tampered = bytes.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0xff;
    std::fs::write(registry.blob_file(&layer), &tampered).unwrap();
    let project = project_from(&reference);
    let fresh = tempfile::tempdir().unwrap();
    let out = engine_with_cache(&project, fresh.path(), &["plugins", "lock"]);
    assert_exit(&out, 2);
    assert!(
        text(&out).contains("the component layer does not match its digest"),
        "{}",
        text(&out)
    );
}

/// Serves `bytes` at every path until dropped; returns its base URL.
struct FileServer {
    url: String,
    server: std::sync::Arc<tiny_http::Server>,
    bytes: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl FileServer {
    fn start(bytes: Vec<u8>) -> FileServer {
        let server = std::sync::Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let url = format!("http://{}", server.server_addr().to_ip().unwrap());
        let bytes = std::sync::Arc::new(std::sync::Mutex::new(bytes));
        let (srv, served) = (server.clone(), bytes.clone());
        std::thread::spawn(move || {
            for request in srv.incoming_requests() {
                let body = served.lock().unwrap().clone();
                let _ = request.respond(tiny_http::Response::from_data(body));
            }
        });
        FileServer { url, server, bytes }
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.server.unblock();
    }
}

#[test]
fn a_plugin_from_a_url_is_pinned_by_its_sha256_and_kept() {
    let bytes = std::fs::read(support::testing_plugin("testing-test-health")).unwrap();
    let server = FileServer::start(bytes);
    let url = format!("{}/check.wasm", server.url);
    let project = project_from(&url);
    let cache = tempfile::tempdir().unwrap();
    refused_unpinned_then_locked(&project, cache.path());
    assert_exit(
        &engine_with_cache(&project, cache.path(), &["validate", "--locked"]),
        0,
    );

    // The server now serves other bytes: the kept copy still loads; without it, the pin refuses.
    *server.bytes.lock().unwrap() = b"\0asm other".to_vec();
    let out = loads_from_the_kept_copy_only(&project, cache.path());
    assert!(
        text(&out).contains("does not match its pinned sha256"),
        "{}",
        text(&out)
    );

    let remote = project_from("http://downloads.example.com/check.wasm");
    let out = engine_with_cache(&remote, cache.path(), &["validate"]);
    assert_exit(&out, 2);
    assert!(text(&out).contains("is plain HTTP"), "{}", text(&out));

    // A server on this machine that redirects elsewhere over plain HTTP is not followed.
    let redirect = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let redirect_url = format!(
        "http://{}/check.wasm",
        redirect.server_addr().to_ip().unwrap()
    );
    std::thread::spawn(move || {
        for request in redirect.incoming_requests() {
            let location =
                tiny_http::Header::from_bytes("location", "http://downloads.example.com/x.wasm")
                    .unwrap();
            let _ = request.respond(tiny_http::Response::empty(302).with_header(location));
        }
    });
    let redirected = project_from(&redirect_url);
    let out = engine_with_cache(&redirected, cache.path(), &["plugins", "lock"]);
    assert_exit(&out, 2);
    assert!(text(&out).contains("leaves HTTPS"), "{}", text(&out));
}
