//! The hostile-plugin suite: one test per sandbox rule, each asserting the exact outcome.
//!
//! The plugin is `plugins/testing/hostile`, compiled to a real component by host/core/build.rs; the
//! HTTP peer is a real server on loopback.

mod support;

use engine::grants::{DirGrant, GrantsConfig, SecretGrantConfig};
use engine::plugins::PluginSource;
use engine::runtime::bindings::types::ServiceRef;
use engine::runtime::events::{Capability, Denial, PluginEvent};
use engine::runtime::{CallError, LoadError, LoadedPlugin, PluginError};
use serde_json::{Value, json};
use std::time::Duration;
use support::*;

/// Calls the hostile plugin's `read` with `orders`; returns its report `(outcome, detail)`.
async fn probe(plugin: &LoadedPlugin, orders: Value) -> Result<(String, String), CallError> {
    let status = plugin
        .provider()?
        .read(&ServiceRef {
            name: "svc".into(),
            config: orders.to_string(),
        })
        .await?
        .expect("the hostile plugin always reports");
    let report: Value = serde_json::from_str(&status.deployed).unwrap();
    Ok((
        report["outcome"].as_str().unwrap().to_string(),
        report["detail"].as_str().unwrap().to_string(),
    ))
}

/// Has the plugin GET `url`, checks the sandbox refused it, and returns the one denial reported.
async fn denied_get(
    plugin: &LoadedPlugin,
    sink: &engine::runtime::MemorySink,
    url: &str,
) -> Denial {
    let (outcome, detail) = probe(plugin, json!({"mode": "http", "url": url}))
        .await
        .unwrap();
    assert_eq!(outcome, "err");
    assert!(
        detail.contains("denied by the engine's sandbox"),
        "{detail}"
    );
    let mut denials = sink.denials();
    assert_eq!(denials.len(), 1, "{denials:?}");
    denials.remove(0)
}

fn dir_grant(host: &std::path::Path, guest: &str, writable: bool) -> GrantsConfig {
    GrantsConfig {
        dirs: vec![DirGrant {
            host: host.into(),
            guest: guest.into(),
            writable,
        }],
        ..Default::default()
    }
}

async fn still_works(plugin: &LoadedPlugin) {
    assert_eq!(
        probe(plugin, json!({"mode": "ok"})).await.unwrap(),
        ("ok".to_string(), "fine".to_string()),
        "the next call after a failure must work"
    );
}

#[tokio::test]
async fn an_infinite_loop_is_stopped_at_its_deadline() {
    let (runtime, _) = runtime();
    let grants = GrantsConfig {
        timeout: Some("300ms".into()),
        ..Default::default()
    };
    let plugin = load_hostile(&runtime, grants).await;
    let err = probe(&plugin, json!({"mode": "loop"})).await.unwrap_err();
    match &err {
        CallError::DeadlineExceeded {
            plugin,
            function,
            limit,
        } => {
            assert_eq!(
                (plugin.as_str(), *function, *limit),
                ("hostile", "read", Duration::from_millis(300))
            );
        }
        other => panic!("expected a deadline error, got {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "plugin 'hostile' read did not finish within 300ms and was stopped; if it needs longer, raise `timeout` in [plugins.hostile]"
    );
    still_works(&plugin).await;
}

#[tokio::test]
async fn a_memory_bomb_stops_at_the_cap() {
    let (runtime, _) = runtime();
    let grants = GrantsConfig {
        memory: Some("64MiB".into()),
        ..Default::default()
    };
    let plugin = load_hostile(&runtime, grants).await;
    let err = probe(&plugin, json!({"mode": "memory-bomb"}))
        .await
        .unwrap_err();
    match &err {
        CallError::MemoryExceeded {
            plugin,
            function,
            requested,
            limit,
        } => {
            assert_eq!(
                (plugin.as_str(), *function, *limit),
                ("hostile", "read", 64 << 20)
            );
            assert!(*requested > 64 << 20, "requested {requested}");
        }
        other => panic!("expected a memory error, got {other:?}"),
    }
    assert!(
        err.to_string()
            .contains("raise `memory` in [plugins.hostile]")
    );
    still_works(&plugin).await;
}

#[tokio::test]
async fn files_outside_granted_directories_cannot_be_read() {
    let (runtime, _) = runtime();
    let plugin = load_hostile(&runtime, GrantsConfig::default()).await;
    assert_eq!(
        probe(&plugin, json!({"mode": "read-file", "path": "/etc/passwd"}))
            .await
            .unwrap(),
        (
            "err".into(),
            "No such file or directory (os error 44)".into()
        )
    );
    let (outcome, _) = probe(&plugin, json!({"mode": "list-dir", "path": "/"}))
        .await
        .unwrap();
    assert_eq!(outcome, "err");
}

#[tokio::test]
async fn only_granted_directories_are_visible_and_read_only_means_read_only() {
    let granted = tempfile::tempdir().unwrap();
    std::fs::write(granted.path().join("artifact.txt"), "v1").unwrap();
    let ungranted = tempfile::tempdir().unwrap();
    std::fs::write(ungranted.path().join("private.txt"), "no").unwrap();
    let (runtime, _) = runtime();

    let read_only = dir_grant(granted.path(), "/data", false);
    let plugin = load_hostile(&runtime, read_only).await;
    assert_eq!(
        probe(&plugin, json!({"mode": "list-dir", "path": "/data"}))
            .await
            .unwrap(),
        ("ok".into(), "artifact.txt".into())
    );
    let path = ungranted.path().join("private.txt");
    let (outcome, _) = probe(&plugin, json!({"mode": "read-file", "path": path}))
        .await
        .unwrap();
    assert_eq!(
        outcome, "err",
        "a host path outside the grant must not open"
    );
    let (outcome, _) = probe(
        &plugin,
        json!({"mode": "read-file", "path": "/data/../../etc/passwd"}),
    )
    .await
    .unwrap();
    assert_eq!(outcome, "err", "`..` must not escape the preopen");
    let (outcome, _) = probe(
        &plugin,
        json!({"mode": "write-file", "path": "/data/new.txt"}),
    )
    .await
    .unwrap();
    assert_eq!(outcome, "err", "a read-only grant must refuse writes");
    assert!(!granted.path().join("new.txt").exists());

    let writable = dir_grant(granted.path(), "/data", true);
    let plugin = load_hostile(&runtime, writable).await;
    assert_eq!(
        probe(
            &plugin,
            json!({"mode": "write-file", "path": "/data/new.txt"})
        )
        .await
        .unwrap(),
        ("ok".into(), "written".into())
    );
    assert_eq!(
        std::fs::read_to_string(granted.path().join("new.txt")).unwrap(),
        "written by the hostile plugin"
    );
}

#[tokio::test]
async fn environment_variables_are_passed_only_when_granted_and_declared() {
    let (runtime, sink) = runtime();
    let grants = GrantsConfig {
        allow_env: vec!["PATH".into(), "HOME".into()],
        ..Default::default()
    };
    let plugin = load_hostile(&runtime, grants).await;
    let (outcome, detail) = probe(&plugin, json!({"mode": "env", "name": "PATH"}))
        .await
        .unwrap();
    assert_eq!(
        (outcome.as_str(), detail.as_str()),
        ("ok", std::env::var("PATH").unwrap().as_str())
    );
    // HOME is granted but the plugin does not declare it: not passed, and the user is told.
    let (outcome, detail) = probe(&plugin, json!({"mode": "env", "name": "HOME"}))
        .await
        .unwrap();
    assert_eq!(
        (outcome.as_str(), detail.as_str()),
        ("err", "environment variable not found")
    );
    assert_eq!(
        probe(&plugin, json!({"mode": "env-all"})).await.unwrap(),
        ("ok".into(), "PATH".into())
    );
    assert!(sink.events().iter().any(|e| matches!(e,
        PluginEvent::GrantMismatch { message, .. } if message.contains("environment variable HOME, which the plugin does not declare"))));

    let (runtime, _) = support::runtime();
    let plugin = load_hostile(&runtime, GrantsConfig::default()).await;
    assert_eq!(
        probe(&plugin, json!({"mode": "env", "name": "PATH"}))
            .await
            .unwrap(),
        ("err".into(), "environment variable not found".into())
    );
}

#[tokio::test]
async fn http_to_an_ungranted_host_is_denied_with_the_grant_to_add() {
    let server = TestServer::start();
    let (runtime, sink) = runtime();
    let grants = GrantsConfig {
        allow_http: vec![format!("http://localhost:{}", server.port)],
        ..Default::default()
    };
    let plugin = load_hostile(&runtime, grants).await;
    let url = format!("http://127.0.0.1:{}/", server.port);
    let denial = denied_get(&plugin, &sink, &url).await;
    assert_eq!(denial.capability, Capability::Http);
    assert_eq!(
        denial.to_string(),
        format!(
            "plugin 'hostile' was denied http access: GET {url}; add \"http://127.0.0.1:{port}\" to allow_http in [plugins.hostile]",
            port = server.port
        )
    );
    assert!(server.requests().is_empty(), "nothing may reach the server");

    // The granted name works, so the denial above was the rule and not a broken client.
    let (outcome, detail) = probe(
        &plugin,
        json!({"mode": "http", "url": format!("http://localhost:{}/", server.port)}),
    )
    .await
    .unwrap();
    assert_eq!((outcome.as_str(), detail.as_str()), ("ok", "200 hello"));
}

#[tokio::test]
async fn a_granted_hostname_that_resolves_to_a_private_address_is_denied() {
    let server = TestServer::start();
    let (runtime, sink) = runtime_with(&[("internal.example", "127.0.0.1".parse().unwrap())]);
    let grants = GrantsConfig {
        allow_http: vec![format!("http://internal.example:{}", server.port)],
        ..Default::default()
    };
    let plugin = load_hostile(&runtime, grants).await;
    let url = format!("http://internal.example:{}/", server.port);
    let denial = denied_get(&plugin, &sink, &url).await;
    assert_eq!(denial.capability, Capability::Address);
    assert!(
        denial
            .attempted
            .contains("internal.example resolves only to internal addresses [127.0.0.1]"),
        "{}",
        denial
    );
    assert!(
        denial
            .hint
            .contains(&format!("\"http://127.0.0.1:{}\"", server.port)),
        "{}",
        denial
    );
    assert!(server.requests().is_empty(), "nothing may reach the server");
}

#[tokio::test]
async fn a_granted_loopback_address_is_reachable() {
    let server = TestServer::start();
    let (runtime, sink) = runtime();
    let grants = GrantsConfig {
        allow_http: vec![format!("http://127.0.0.1:{}", server.port)],
        ..Default::default()
    };
    let plugin = load_hostile(&runtime, grants).await;
    let (outcome, detail) = probe(
        &plugin,
        json!({"mode": "http", "url": format!("http://127.0.0.1:{}/x", server.port)}),
    )
    .await
    .unwrap();
    assert_eq!((outcome.as_str(), detail.as_str()), ("ok", "200 hello"));
    assert_eq!(server.requests().len(), 1);
    assert!(sink.denials().is_empty());
}

#[tokio::test]
async fn a_response_over_the_size_cap_is_refused() {
    let server = TestServer::start();
    let (runtime, sink) = runtime();
    let grants = GrantsConfig {
        allow_http: vec![format!("http://127.0.0.1:{}", server.port)],
        max_response: Some("1MiB".into()),
        ..Default::default()
    };
    let plugin = load_hostile(&runtime, grants).await;
    let (outcome, detail) = probe(
        &plugin,
        json!({"mode": "http", "url": format!("http://127.0.0.1:{}/big", server.port)}),
    )
    .await
    .unwrap();
    assert_eq!(outcome, "err");
    // Refused at the headers when the length is announced, or as the body passes the cap.
    assert!(
        detail.contains("HttpResponseBodySize")
            || detail.contains("body size exceeds limit: 1048576 bytes"),
        "{detail}"
    );
    assert!(sink.events().iter().any(|e| matches!(e,
        PluginEvent::LimitExceeded { message, .. } if message.contains("larger than the plugin's max_response of 1048576 bytes"))));
}

#[tokio::test]
async fn a_panic_becomes_an_error_and_the_next_call_works() {
    let (runtime, _) = runtime();
    let plugin = load_hostile(&runtime, GrantsConfig::default()).await;
    let err = probe(&plugin, json!({"mode": "panic"})).await.unwrap_err();
    match &err {
        CallError::Panicked {
            plugin,
            function,
            message,
        } => {
            assert_eq!((plugin.as_str(), *function), ("hostile", "read"));
            assert!(
                message.starts_with("hostile plugin panicked on purpose (at "),
                "{message}"
            );
        }
        other => panic!("expected a panic error, got {other:?}"),
    }
    still_works(&plugin).await;
}

#[tokio::test]
async fn a_trap_becomes_an_error_and_the_next_call_works() {
    let (runtime, _) = runtime();
    let plugin = load_hostile(&runtime, GrantsConfig::default()).await;
    let err = probe(&plugin, json!({"mode": "trap"})).await.unwrap_err();
    match &err {
        CallError::Trapped {
            plugin,
            function,
            detail,
        } => {
            assert_eq!((plugin.as_str(), *function), ("hostile", "read"));
            assert!(detail.contains("unreachable"), "{detail}");
        }
        other => panic!("expected a trap error, got {other:?}"),
    }
    still_works(&plugin).await;
}

#[tokio::test]
async fn malformed_output_is_a_typed_error() {
    let (runtime, _) = runtime();
    let plugin = load_hostile(&runtime, GrantsConfig::default()).await;
    let err = probe(&plugin, json!({"mode": "malformed"}))
        .await
        .unwrap_err();
    match &err {
        CallError::MalformedOutput {
            plugin,
            function,
            detail,
        } => {
            assert_eq!((plugin.as_str(), *function), ("hostile", "read"));
            assert_eq!(detail, "revision a gets 150% of traffic");
        }
        other => panic!("expected malformed output, got {other:?}"),
    }
}

#[tokio::test]
async fn a_plugin_error_keeps_its_type() {
    let (runtime, _) = runtime();
    let plugin = load_hostile(&runtime, GrantsConfig::default()).await;
    let err = probe(&plugin, json!({"mode": "error"})).await.unwrap_err();
    assert_eq!(
        err.plugin_error(),
        Some(&PluginError::RateLimited {
            message: "slow down".into(),
            retry_after: Some(Duration::from_millis(1500))
        })
    );
}

fn secret_file(value: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), format!("{value}\n")).unwrap();
    file
}

#[tokio::test]
async fn a_secret_value_reaches_the_granted_host_but_never_the_logs() {
    const VALUE: &str = "s3cr3t-token-value-8c1f";
    let file = secret_file(VALUE);
    let server = TestServer::start();
    let (runtime, sink) = runtime();
    let grants = GrantsConfig {
        allow_http: vec![format!("http://127.0.0.1:{}", server.port)],
        secrets: [(
            "token".to_string(),
            SecretGrantConfig {
                from: format!("file:{}", file.path().display()),
                hosts: None,
                in_plan: None,
            },
        )]
        .into(),
        ..Default::default()
    };
    let plugin = load_hostile(&runtime, grants).await;
    let err = probe(
        &plugin,
        json!({"mode": "leak-secret", "secret": "token", "url": format!("http://127.0.0.1:{}/echo", server.port)}),
    )
    .await
    .unwrap_err();

    // The host put the value in the request...
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].authorization.as_deref(),
        Some(format!("Bearer {VALUE}").as_str())
    );
    // ...masked it in the response before the plugin read it, so nothing the plugin said
    // (log, stdout, stderr, error) carries it.
    let masked = format!("Bearer {}", "*".repeat(VALUE.len()));
    let texts: Vec<String> = sink
        .events()
        .iter()
        .filter(|e| matches!(e, PluginEvent::Log { .. } | PluginEvent::Output { .. }))
        .map(|e| format!("{e:?}"))
        .collect();
    assert_eq!(texts.len(), 3, "one log line, stdout and stderr: {texts:?}");
    for text in texts.iter().chain([err.to_string()].iter()) {
        assert!(!text.contains(VALUE), "secret leaked: {text}");
        assert!(text.contains(&masked), "{text}");
    }
    assert_eq!(
        err.plugin_error(),
        Some(&PluginError::Fatal(format!("error: {masked}")))
    );
}

/// A grant of the secret in `file` to `hosts` (None: every host the plugin may reach), and
/// HTTP to each of `servers`.
fn secret_grants(
    file: &tempfile::NamedTempFile,
    hosts: Option<Vec<String>>,
    servers: &[&TestServer],
) -> GrantsConfig {
    GrantsConfig {
        allow_http: servers
            .iter()
            .map(|s| format!("http://127.0.0.1:{}", s.port))
            .collect(),
        secrets: [(
            "token".to_string(),
            SecretGrantConfig {
                from: format!("file:{}", file.path().display()),
                hosts,
                in_plan: None,
            },
        )]
        .into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_reflected_secret_is_masked_in_every_spelling_before_the_plugin_reads_it() {
    const VALUE: &str = "refl3cted-t0ken/value+x";
    let file = secret_file(VALUE);
    let server = TestServer::start();
    let (runtime, _) = runtime();
    let plugin = load_hostile(&runtime, secret_grants(&file, None, &[&server])).await;
    let (outcome, detail) = probe(
        &plugin,
        json!({"mode": "http", "secret": "token", "url": format!("http://127.0.0.1:{}/echo-encoded", server.port)}),
    )
    .await
    .unwrap();
    assert_eq!(outcome, "ok", "{detail}");
    // The server did send every spelling; none reached the plugin.
    assert!(detail.starts_with("200 raw=*****"), "{detail}");
    for spelling in engine::redact::forms(VALUE) {
        assert!(
            !detail.contains(&spelling),
            "{spelling} reached the plugin: {detail}"
        );
    }
    for place in ["hex=", "b64=", "json=", "percent="] {
        assert!(detail.contains(place), "{detail}");
    }
}

/// Has the plugin pass a secret that `from` reflected backwards on to `to`'s `/keep`, in
/// `place`; returns the plugin's outcome and what `to` received.
async fn relay(place: &str) -> (String, Vec<Received>, Vec<Denial>) {
    let file = secret_file(RELAYED);
    let (from, to) = (TestServer::start(), TestServer::start());
    let (runtime, sink) = runtime();
    let hosts = Some(vec![format!("http://127.0.0.1:{}", from.port)]);
    let plugin = load_hostile(&runtime, secret_grants(&file, hosts, &[&from, &to])).await;
    let (outcome, _) = probe(
        &plugin,
        json!({
            "mode": "relay", "secret": "token", "reversed": true, "place": place,
            "url": format!("http://127.0.0.1:{}/echo-reversed", from.port),
            "to": format!("http://127.0.0.1:{}/keep", to.port),
        }),
    )
    .await
    .unwrap();
    (outcome, to.requests(), sink.denials())
}

const RELAYED: &str = "relayed-secret-value-42";

#[tokio::test]
async fn a_reflected_secret_cannot_be_passed_to_a_host_it_is_not_granted_for() {
    for place in ["query", "header"] {
        let (outcome, received, denials) = relay(place).await;
        assert_eq!(outcome, "err", "{place}");
        assert!(received.is_empty(), "{place}: {received:?}");
        assert_eq!(denials.len(), 1, "{place}: {denials:?}");
        assert_eq!(denials[0].capability, Capability::Secret);
        let expected = if place == "query" {
            "the URL of GET"
        } else {
            "the header x-relay of GET"
        };
        assert!(denials[0].attempted.starts_with(expected), "{}", denials[0]);
        assert!(
            denials[0]
                .attempted
                .ends_with("carries the value of secret 'token'"),
            "{}",
            denials[0]
        );
        assert!(!denials[0].attempted.contains(RELAYED));
    }
    // In a body, the request is cut off before the value is complete.
    let (outcome, received, denials) = relay("body").await;
    assert_eq!(outcome, "err");
    for request in &received {
        let body = String::from_utf8_lossy(&request.body);
        assert!(!body.contains(RELAYED), "the body carried the secret");
        assert!(!body.contains(&RELAYED[..RELAYED.len() - 1]));
    }
    assert_eq!(denials.len(), 1, "{denials:?}");
    assert!(
        denials[0].attempted.starts_with("the body of POST"),
        "{}",
        denials[0]
    );
}

#[tokio::test]
async fn a_revision_id_carrying_a_secret_is_refused() {
    const VALUE: &str = "id-secret-value-77";
    let file = secret_file(VALUE);
    let server = TestServer::start();
    let (runtime, _) = runtime();
    let plugin = load_hostile(&runtime, secret_grants(&file, None, &[&server])).await;
    let orders = json!({
        "mode": "secret-id", "secret": "token", "reversed": true,
        "url": format!("http://127.0.0.1:{}/echo-reversed", server.port),
    });
    match probe(&plugin, orders).await {
        Err(CallError::MalformedOutput { detail, .. }) => {
            assert_eq!(detail, "a revision id [REDACTED] contains a secret value")
        }
        other => panic!("expected malformed output, got {other:?}"),
    }
}

#[tokio::test]
async fn a_secret_is_not_sent_to_a_host_it_is_not_granted_for() {
    let file = secret_file("another-secret-value");
    let server = TestServer::start();
    let (runtime, sink) = runtime();
    let grants = GrantsConfig {
        allow_http: vec![format!("http://127.0.0.1:{}", server.port)],
        secrets: [(
            "token".to_string(),
            SecretGrantConfig {
                from: format!("file:{}", file.path().display()),
                hosts: Some(vec!["https://api.example.com".into()]),
                in_plan: None,
            },
        )]
        .into(),
        ..Default::default()
    };
    let plugin = load_hostile(&runtime, grants).await;
    let (outcome, _) = probe(
        &plugin,
        json!({"mode": "http", "secret": "token", "url": format!("http://127.0.0.1:{}/echo", server.port)}),
    )
    .await
    .unwrap();
    assert_eq!(outcome, "err");
    assert!(server.requests().is_empty());
    let denials = sink.denials();
    assert_eq!(denials.len(), 1);
    assert_eq!(denials[0].capability, Capability::Secret);
    assert!(
        denials[0]
            .hint
            .contains("to secrets.token.hosts in [plugins.hostile]"),
        "{}",
        denials[0]
    );
}

/// A placeholder in a JSON body is filled in, JSON-escaped, for a destination the secret is
/// granted; the response reflecting it is masked before the plugin reads it.
#[tokio::test]
async fn a_secret_placeholder_in_a_json_body_reaches_only_a_granted_host() {
    const VALUE: &str = r#"adm1n"key\value"#;
    let file = secret_file(VALUE);
    let granted = TestServer::start();
    let other = TestServer::start();
    let (runtime, sink) = runtime();
    let hosts = Some(vec![format!("http://127.0.0.1:{}", granted.port)]);
    let plugin = load_hostile(&runtime, secret_grants(&file, hosts, &[&granted, &other])).await;
    let post = |port: u16| json!({"mode": "post-secret", "secret": "token", "url": format!("http://127.0.0.1:{port}/keep")});

    let (outcome, seen) = probe(&plugin, post(granted.port)).await.unwrap();
    assert_eq!(outcome, "ok", "{seen}");
    let sent: Value = serde_json::from_slice(&granted.requests()[0].body).unwrap();
    assert_eq!(sent, json!({ "headers": { "X-Admin-Key": VALUE } }));
    assert!(!seen.contains("adm1n"), "the plugin read the value: {seen}");

    // Not granted there: refused before it leaves, with the grant to add.
    let (outcome, _) = probe(&plugin, post(other.port)).await.unwrap();
    assert_eq!(outcome, "err");
    assert!(other.requests().is_empty());
    let denials = sink.denials();
    assert_eq!(denials.len(), 1, "{denials:?}");
    assert_eq!(denials[0].capability, Capability::Secret);
    assert!(
        denials[0].attempted.contains("the body of POST"),
        "{}",
        denials[0]
    );
    assert!(
        denials[0]
            .hint
            .contains("to secrets.token.hosts in [plugins.hostile]"),
        "{}",
        denials[0]
    );
}

#[tokio::test]
async fn an_ungranted_secret_cannot_be_opened() {
    let (runtime, sink) = runtime();
    let plugin = load_hostile(&runtime, GrantsConfig::default()).await;
    let err = probe(
        &plugin,
        json!({"mode": "http", "secret": "token", "url": "http://127.0.0.1:1/"}),
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.plugin_error(),
        Some(&PluginError::Unauthorized(
            "secret 'token' is not granted to plugin 'hostile'".into()
        ))
    );
    assert_eq!(sink.denials()[0].capability, Capability::Secret);
}

#[tokio::test]
async fn a_plugin_built_against_another_wit_version_gets_a_readable_error() {
    let (runtime, _) = runtime();
    let err = runtime
        .load(
            "future",
            &PluginSource::Unpinned(testing_plugin("testing-future-wit")),
            &GrantsConfig::default(),
        )
        .await
        .err()
        .expect("the plugin must be refused");
    assert!(matches!(err, LoadError::IncompatibleWit { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "plugin 'future' was built against WIT engine:plugin@0.2.0, but this engine implements engine:plugin@0.1.1; upgrade the engine, or rebuild the plugin against the engine's WIT version"
    );
}

#[tokio::test]
async fn a_file_that_does_not_match_its_pin_is_refused_with_both_hashes() {
    let (runtime, _) = runtime();
    let path = testing_plugin("testing-hostile");
    let pinned = "0".repeat(64);
    let err = runtime
        .load(
            "hostile",
            &PluginSource::File {
                path: path.clone(),
                sha256: pinned.clone(),
            },
            &GrantsConfig::default(),
        )
        .await
        .err()
        .expect("a wrong pin must be refused");
    let actual = engine::runtime::cache::sha256_hex(&std::fs::read(&path).unwrap());
    let message = err.to_string();
    assert!(
        message.contains(&format!("expected: {pinned}")),
        "{message}"
    );
    assert!(
        message.contains(&format!("actual:   {actual}")),
        "{message}"
    );

    let ok = runtime
        .load(
            "hostile",
            &PluginSource::File {
                path,
                sha256: actual.to_uppercase(),
            },
            &GrantsConfig::default(),
        )
        .await;
    assert!(ok.is_ok(), "the right pin loads, in either case");
}

#[tokio::test]
async fn the_compile_cache_is_hit_on_the_second_load_and_survives_damage() {
    let dir = tempfile::tempdir().unwrap();
    let options = || engine::runtime::RuntimeOptions {
        cache_dir: Some(dir.path().into()),
        ..Default::default()
    };
    let source = PluginSource::Embedded("all-at-once".into());
    use engine::runtime::cache::CacheOutcome;

    let (_, first) = engine::runtime::Runtime::new(options())
        .unwrap()
        .load_with_outcome("s", &source, &GrantsConfig::default())
        .await
        .unwrap();
    assert_eq!(first, CacheOutcome::Compiled);
    let (_, second) = engine::runtime::Runtime::new(options())
        .unwrap()
        .load_with_outcome("s", &source, &GrantsConfig::default())
        .await
        .unwrap();
    assert_eq!(
        second,
        CacheOutcome::Hit,
        "a second process start must not recompile"
    );

    let entry = std::fs::read_dir(dir.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&entry).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&entry, bytes).unwrap();
    let (plugin, third) = engine::runtime::Runtime::new(options())
        .unwrap()
        .load_with_outcome("s", &source, &GrantsConfig::default())
        .await
        .unwrap();
    assert_eq!(
        third,
        CacheOutcome::Compiled,
        "a damaged entry is recompiled, never run"
    );
    assert_eq!(plugin.info().name, "all-at-once");
}

#[tokio::test]
async fn a_session_keeps_one_instance_under_the_same_deadline() {
    let (runtime, _) = runtime();
    let grants = GrantsConfig {
        timeout: Some("300ms".into()),
        ..Default::default()
    };
    let plugin = load_hostile(&runtime, grants).await;
    let mut session = plugin.provider_session().await.unwrap();
    let service = |mode: &str| ServiceRef {
        name: "svc".into(),
        config: json!({ "mode": mode }).to_string(),
    };
    for _ in 0..3 {
        assert!(session.read(&service("ok")).await.unwrap().is_some());
    }
    match session.read(&service("loop")).await.unwrap_err() {
        CallError::DeadlineExceeded { limit, .. } => assert_eq!(limit, Duration::from_millis(300)),
        other => panic!("expected a deadline error, got {other:?}"),
    }
    drop(session);
    still_works(&plugin).await;
}

/// A call never sees what an earlier call left in memory: static data, a small heap block and
/// heap grown past what the pool keeps resident (reset by the pool's dirty-page scan or by
/// decommitting) all come back as the plugin's original image. The same plugin in a live
/// session does find its own leftovers, which shows the scan would see them.
#[tokio::test]
async fn no_call_sees_what_an_earlier_call_left_in_memory() {
    let (runtime, _) = runtime();
    let plugin = load_hostile(&runtime, GrantsConfig::default()).await;
    for grow_mib in [0, 8, 1, 8] {
        let orders = json!({"mode": "leftovers", "grow_mib": grow_mib});
        assert_eq!(
            probe(&plugin, orders).await.unwrap(),
            ("ok".to_string(), "0".to_string()),
            "a fresh instance found an earlier call's words (after growing {grow_mib} MiB)"
        );
    }

    let mut session = plugin.provider_session().await.unwrap();
    let leftovers = ServiceRef {
        name: "svc".into(),
        config: json!({"mode": "leftovers", "grow_mib": 1}).to_string(),
    };
    let found = |status: Option<engine::runtime::bindings::types::ServiceStatus>| {
        let report: Value = serde_json::from_str(&status.unwrap().deployed).unwrap();
        report["detail"].as_str().unwrap().parse::<usize>().unwrap()
    };
    assert_eq!(found(session.read(&leftovers).await.unwrap()), 0);
    let second = found(session.read(&leftovers).await.unwrap());
    assert!(
        second >= 1024 + (1 << 17),
        "the live instance should find its static words and its heap: found {second}"
    );
}

/// The test provider used by the pipeline tests keeps state in its granted directory between
/// calls (each call a fresh instance), writing through a rename inside the sandbox.
#[tokio::test]
async fn state_lives_in_the_granted_directory_across_fresh_instances() {
    use engine::runtime::bindings::types::{
        Artifact, Ingress, Resources, Scaling, ServiceSpec, TrafficTarget,
    };
    let platform = tempfile::tempdir().unwrap();
    let (runtime, _) = runtime();
    let grants = dir_grant(platform.path(), "/platform", true);
    let plugin = runtime
        .load(
            "test",
            &PluginSource::Unpinned(testing_plugin("testing-test-provider")),
            &grants,
        )
        .await
        .unwrap();
    let provider = plugin.provider().unwrap();
    let spec = ServiceSpec {
        name: "api".into(),
        artifact: Artifact::Image("api:1".into()),
        args: vec![],
        env: vec![],
        secrets: vec![],
        resources: Resources {
            cpu_millis: None,
            memory_mib: None,
        },
        scaling: Scaling {
            min_instances: None,
            max_instances: None,
            concurrency: None,
        },
        port: None,
        ingress: Ingress::Public,
        labels: vec![],
        config: "{}".into(),
    };
    let service = ServiceRef {
        name: "api".into(),
        config: "{}".into(),
    };
    let revision = provider.deploy(&spec, "run1").await.unwrap();
    assert_eq!(revision.id, "api-run1");
    let split = [TrafficTarget {
        revision: revision.id.clone(),
        percent: 100,
    }];
    provider.set_traffic(&service, &split).await.unwrap();
    assert_eq!(provider.get_traffic(&service).await.unwrap(), split);
    let on_disk: Value =
        serde_json::from_str(&std::fs::read_to_string(platform.path().join("api.json")).unwrap())
            .unwrap();
    assert_eq!(on_disk["calls"]["deploy"], 1);
    assert_eq!(on_disk["traffic"], json!([["api-run1", 100]]));
}

/// A runtime whose local platform admin port is `admin` (as `engine run` sets it from the
/// pipeline).
fn runtime_guarding(admin: u16) -> (engine::runtime::Runtime, engine::runtime::MemorySink) {
    let sink = engine::runtime::MemorySink::default();
    let runtime = engine::runtime::Runtime::new(engine::runtime::RuntimeOptions {
        cache_dir: Some(cache_dir()),
        max_concurrent_calls: 8,
        sink: std::sync::Arc::new(sink.clone()),
        local_admin_ports: vec![admin],
        ..Default::default()
    })
    .unwrap();
    (runtime, sink)
}

#[tokio::test]
async fn no_wildcard_grant_reaches_the_local_platforms_admin_api_and_nothing_else_holds_its_token()
{
    let dir = tempfile::tempdir().unwrap();
    let platform = local_platform::start("127.0.0.1:0".parse().unwrap(), dir.path())
        .await
        .unwrap();
    let port = platform.admin.port();
    let (runtime, sink) = runtime_guarding(port);
    let grants = GrantsConfig {
        allow_http: vec![
            "http://localhost:*".into(),
            "http://127.0.0.1:*".into(),
            "http://*:*".into(),
        ],
        ..Default::default()
    };
    let plugin = load_hostile(&runtime, grants).await;
    for host in [
        "localhost",
        "127.0.0.1",
        "127.1",
        "2130706433",
        "[::ffff:127.0.0.1]",
    ] {
        let url = format!("http://{host}:{port}/v1/services");
        let denial = denied_get(&plugin, &sink, &url).await;
        assert_eq!(denial.capability, Capability::Address, "{url}");
        assert!(
            denial
                .hint
                .contains(&format!("port {port} is the local platform's admin API")),
            "{denial}"
        );
        sink.clear();
    }
    for mode in ["post"] {
        let url = format!("http://localhost:{port}/v1/shutdown");
        let (outcome, _) = probe(&plugin, json!({"mode": mode, "url": url}))
            .await
            .unwrap();
        assert_eq!(outcome, "err");
    }

    // Granted exactly, a plugin reaches the port but not the API: the token is the engine's
    // own `local` provider's alone, and the plugin cannot open it.
    let (runtime, sink) = runtime_guarding(port);
    let grants = GrantsConfig {
        allow_http: vec![format!("http://localhost:{port}")],
        ..Default::default()
    };
    let plugin = load_hostile(&runtime, grants).await;
    let url = format!("http://localhost:{port}/v1/services");
    let (outcome, detail) = probe(&plugin, json!({"mode": "http", "url": url}))
        .await
        .unwrap();
    assert_eq!(outcome, "err");
    assert!(detail.contains("401"), "{detail}");
    let (outcome, detail) = probe(
        &plugin,
        json!({"mode": "http", "url": url, "secret": local_api::SECRET_NAME}),
    )
    .await
    .unwrap_err_or_report();
    assert_eq!(outcome, "err", "{detail}");
    let denials = sink.denials();
    assert_eq!(denials.len(), 1, "{denials:?}");
    assert_eq!(denials[0].capability, Capability::Secret);
    assert_eq!(denials[0].attempted, "open secret 'local-platform-token'");
    assert_eq!(
        denials[0].hint,
        "only the engine's built-in `local` provider is given the local platform's token"
    );
    assert!(platform.platform.services().is_empty());
    platform.platform.request_shutdown();
    platform.task.await.unwrap();
}

/// The outcome of a probe that may also fail as a call (an unopenable secret is a plugin error).
trait ReportOrError {
    fn unwrap_err_or_report(self) -> (String, String);
}

impl ReportOrError for Result<(String, String), CallError> {
    fn unwrap_err_or_report(self) -> (String, String) {
        match self {
            Ok(report) => report,
            Err(e) => ("err".into(), e.to_string()),
        }
    }
}

#[tokio::test]
async fn every_spelling_of_an_internal_address_is_refused_before_any_connection() {
    let server = TestServer::start();
    let port = server.port;
    let (runtime, sink) = runtime();
    let grants = GrantsConfig {
        allow_http: vec!["http://*:*".into()],
        ..Default::default()
    };
    let plugin = load_hostile(&runtime, grants).await;
    for host in [
        "0x7f.0.0.1",
        "2130706433",
        "0177.0.0.1",
        "127.1",
        "127.0.0.1.",
        "0",
        "0.0.0.0",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]",
        "[::127.0.0.1]",
        "[::1]",
        "[64:ff9b::7f00:1]",
        "[2002:7f00:1::]",
        "[fec0::1]",
        "2852039166", // 169.254.169.254, the metadata address, in decimal
        "0xa9.0xfe.0xa9.0xfe",
    ] {
        let url = format!("http://{host}:{port}/");
        let denial = denied_get(&plugin, &sink, &url).await;
        assert_eq!(denial.capability, Capability::Address, "{url}: {denial}");
        sink.clear();
    }
    assert!(server.requests().is_empty(), "nothing may reach the server");
}

#[tokio::test]
async fn a_literal_grant_opens_its_address_on_its_own_port_only() {
    let server = TestServer::start();
    let other = TestServer::start();
    let (runtime, sink) = runtime();
    let grants = GrantsConfig {
        allow_http: vec![
            format!("http://127.0.0.1:{}", server.port),
            format!("http://localhost:{}", server.port),
            "http://*:*".into(),
        ],
        ..Default::default()
    };
    let plugin = load_hostile(&runtime, grants).await;
    for host in ["127.0.0.1", "127.1", "localhost"] {
        let url = format!("http://{host}:{}/", server.port);
        let (outcome, detail) = probe(&plugin, json!({"mode": "http", "url": url}))
            .await
            .unwrap();
        assert_eq!(
            (outcome.as_str(), detail.as_str()),
            ("ok", "200 hello"),
            "{url}"
        );
        let url = format!("http://{host}:{}/", other.port);
        assert_eq!(
            denied_get(&plugin, &sink, &url).await.capability,
            Capability::Address
        );
        sink.clear();
    }
    assert!(other.requests().is_empty());
}

/// Set in the child process [`in_a_process_of_its_own`] starts.
const ALONE: &str = "ENGINE_SANDBOX_TEST_ALONE";

/// Whether this is the copy of the test that should do the work. A test that measures the whole
/// process (peak memory) cannot share it with the other tests of this binary, which run at the
/// same time: the first call re-runs only `test` in a child process and reports its outcome
/// (returns false); in that child it returns true.
fn in_a_process_of_its_own(test: &str) -> bool {
    if std::env::var_os(ALONE).is_some() {
        return true;
    }
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--test-threads=1", "--nocapture"])
        .env(ALONE, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "{test} failed in a process of its own:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    false
}

/// The engine process's peak resident memory, from /proc.
fn peak_resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[tokio::test]
async fn a_request_body_is_streamed_not_collected_in_the_engines_memory() {
    if !in_a_process_of_its_own("a_request_body_is_streamed_not_collected_in_the_engines_memory") {
        return;
    }
    let server = TestServer::start();
    let (runtime, _) = runtime();
    let grants = GrantsConfig {
        allow_http: vec![format!("http://127.0.0.1:{}", server.port)],
        memory: Some("32MiB".into()),
        timeout: Some("5m".into()),
        ..Default::default()
    };
    let plugin = load_hostile(&runtime, grants).await;
    let before = peak_resident_bytes();
    let url = format!("http://127.0.0.1:{}/sink", server.port);
    let (outcome, detail) = probe(&plugin, json!({"mode": "upload", "url": url, "mib": 256}))
        .await
        .unwrap();
    assert_eq!((outcome.as_str(), detail.as_str()), ("ok", "200"));
    let grown = peak_resident_bytes().saturating_sub(before);
    assert!(
        grown < 128 << 20,
        "a 256 MiB upload raised the engine's peak memory by {} MiB",
        grown >> 20
    );
}

/// A server that answers any number of connections at once (tiny_http serves a few at a
/// time); returns its port.
async fn concurrent_server() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().fallback(|| async { "hello" });
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

#[tokio::test]
async fn one_call_holds_at_most_sixteen_requests_open() {
    let port = concurrent_server().await;
    let (runtime, sink) = runtime();
    let grants = GrantsConfig {
        allow_http: vec![format!("http://127.0.0.1:{port}")],
        ..Default::default()
    };
    let plugin = load_hostile(&runtime, grants).await;
    let url = format!("http://127.0.0.1:{port}/");
    let (outcome, detail) = probe(&plugin, json!({"mode": "fan-out", "url": url, "count": 40}))
        .await
        .unwrap();
    assert_eq!(outcome, "ok");
    assert!(
        detail.starts_with("16 answered, 24 failed: ")
            && detail.contains("more than 16 requests open at once"),
        "{detail}"
    );
    assert!(sink.events().iter().any(|e| matches!(e, PluginEvent::LimitExceeded { message, .. } if message.contains("more than 16 HTTP requests open at once"))));
    // The limit is per call: the next call starts with none open.
    let (_, detail) = probe(&plugin, json!({"mode": "fan-out", "url": url, "count": 16}))
        .await
        .unwrap();
    assert_eq!(detail, "16 answered, 0 failed: ");
}

#[tokio::test]
async fn a_poisoned_compile_cache_entry_is_recompiled_never_run() {
    let dir = tempfile::tempdir().unwrap();
    let options = || engine::runtime::RuntimeOptions {
        cache_dir: Some(dir.path().into()),
        ..Default::default()
    };
    use engine::runtime::cache::CacheOutcome;
    let strategy = PluginSource::Embedded("all-at-once".into());
    let attacker = PluginSource::Unpinned(testing_plugin("testing-hostile"));
    let load = |source: PluginSource| {
        let options = options();
        async move {
            engine::runtime::Runtime::new(options)
                .unwrap()
                .load_with_outcome("p", &source, &GrantsConfig::default())
                .await
                .unwrap()
        }
    };
    load(strategy.clone()).await;
    let entries = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    };
    let target = entries()[0].clone();
    load(attacker).await;
    let planted = entries().into_iter().find(|p| *p != target).unwrap();
    // The attacker's own valid entry, put in the place of the pinned built-in's.
    std::fs::copy(&planted, &target).unwrap();
    let (plugin, outcome) = load(strategy.clone()).await;
    assert_eq!(outcome, CacheOutcome::Compiled);
    assert_eq!(plugin.info().name, "all-at-once");
    // A checksum the attacker recomputes does not help: the tag is keyed.
    let mut bytes = std::fs::read(&planted).unwrap();
    let code = bytes[40..].to_vec();
    use sha2::Digest;
    bytes[8..40].copy_from_slice(&sha2::Sha256::digest(&code));
    std::fs::write(&target, bytes).unwrap();
    let (plugin, outcome) = load(strategy).await;
    assert_eq!(outcome, CacheOutcome::Compiled);
    assert_eq!(plugin.info().name, "all-at-once");
}

#[tokio::test]
async fn a_grant_that_covers_the_cache_the_state_or_the_pipeline_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let cache = root.path().join("cache");
    let state = root.path().join("project/.engine");
    let pipeline = root.path().join("project/pipeline.toml");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(&pipeline, "name = \"p\"").unwrap();
    let protect = |path: &std::path::Path, what: &str, unreadable| engine::grants::ProtectedPath {
        path: path.into(),
        what: what.into(),
        unreadable,
    };
    let runtime = engine::runtime::Runtime::new(engine::runtime::RuntimeOptions {
        cache_dir: Some(cache.clone()),
        protected_paths: vec![
            protect(&state, "the engine's state", true),
            protect(&pipeline, "the pipeline file", false),
        ],
        ..Default::default()
    })
    .unwrap();
    let attempt = |host: std::path::PathBuf, writable: bool| {
        let runtime = runtime.clone();
        async move {
            runtime
                .load(
                    "hostile",
                    &PluginSource::Unpinned(testing_plugin("testing-hostile")),
                    &dir_grant(&host, "/data", writable),
                )
                .await
        }
    };
    for (host, writable, what) in [
        (cache.clone(), true, "change the compile cache"),
        (root.path().to_path_buf(), false, "read the engine's state"),
        (
            root.path().join("project"),
            false,
            "read the engine's state",
        ),
        (state.clone(), false, "read the engine's state"),
        (
            root.path().join("project"),
            true,
            "change the engine's state",
        ),
    ] {
        std::fs::create_dir_all(&host).unwrap();
        match attempt(host.clone(), writable).await {
            Err(LoadError::Sandbox { message, .. }) => {
                assert!(message.contains(what), "{}: {message}", host.display())
            }
            Err(other) => panic!("{}: {other}", host.display()),
            Ok(_) => panic!("{} (writable {writable}) was granted", host.display()),
        }
    }
    // Reading the repository is fine; the pipeline file is protected from change only.
    let repo = root.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(repo.join("manifest.yaml"), "x").unwrap();
    assert!(attempt(repo, false).await.is_ok());
}

#[tokio::test]
async fn plugin_text_cannot_forge_ci_annotations_or_drive_the_terminal() {
    let (runtime, sink) = runtime();
    let plugin = load_hostile(&runtime, GrantsConfig::default()).await;
    let err = probe(&plugin, json!({"mode": "forge-output"}))
        .await
        .unwrap_err();
    let escaped =
        "fine\\u{a}::error file=x::forged\\u{a}::stop-commands::t\\u{1b}]0;owned\\u{7}\\u{1b}[2J";
    assert_eq!(err.to_string(), format!("plugin 'hostile' read: {escaped}"));
    let events = sink.events();
    let log = events
        .iter()
        .find_map(|e| match e {
            PluginEvent::Log {
                message, fields, ..
            } => Some((message.clone(), fields.clone())),
            _ => None,
        })
        .expect("the log line");
    assert_eq!(log.0, escaped);
    assert_eq!(log.1, vec![("k".to_string(), escaped.to_string())]);
    let printed: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            PluginEvent::Output { text, .. } => Some(text.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(printed.len(), 1);
    // Printed line by line, each behind the engine's prefix: no line of its own may start with `::`.
    assert_eq!(
        printed[0],
        "fine\n::error file=x::forged\n::stop-commands::t\\u{1b}]0;owned\\u{7}\\u{1b}[2J"
    );
    for e in &events {
        assert!(!format!("{e:?}").contains('\u{1b}'), "{e:?}");
    }
}

#[tokio::test]
async fn a_revision_id_over_the_name_limit_is_malformed_output() {
    let (runtime, _) = runtime();
    let plugin = load_hostile(&runtime, GrantsConfig::default()).await;
    match probe(&plugin, json!({"mode": "long-id"})).await {
        Err(CallError::MalformedOutput { detail, .. }) => assert_eq!(
            detail,
            "a revision id is 70000 bytes long, over the 256-byte limit"
        ),
        other => panic!("expected malformed output, got {other:?}"),
    }
}

#[tokio::test]
async fn a_call_logs_at_most_a_thousand_lines() {
    let (runtime, sink) = runtime();
    let plugin = load_hostile(&runtime, GrantsConfig::default()).await;
    let (_, detail) = probe(&plugin, json!({"mode": "log-flood", "lines": 5000}))
        .await
        .unwrap();
    assert_eq!(detail, "flooded");
    let events = sink.events();
    let logs = events
        .iter()
        .filter(|e| matches!(e, PluginEvent::Log { .. }))
        .count();
    assert_eq!(logs, 1000);
    let notices: Vec<&PluginEvent> = events
        .iter()
        .filter(|e| matches!(e, PluginEvent::LimitExceeded { .. }))
        .collect();
    assert_eq!(notices.len(), 1, "{notices:?}");
}

#[tokio::test]
async fn history_and_status_redact_secrets_though_they_load_no_plugin() {
    // A value JSON and XML would escape: the spelling after encoding must go too.
    const VALUE: &str = r#"tok"en\with<odd>&chars-9"#;
    let project = support::project::Project::new("");
    let bytes = std::fs::read(testing_plugin("testing-hostile")).unwrap();
    std::fs::write(project.path("plugins/hostile.wasm"), &bytes).unwrap();
    let pipeline = format!(
        r#"name = "quiet"

[plugins.hostile]
source = "plugins/hostile.wasm"
sha256 = "{}"
secrets = {{ token = {{ from = "env:HOSTILE_SECRET" }} }}

[services.api]
provider = "hostile"
image = "x:1"
"#,
        engine::runtime::cache::sha256_hex(&bytes)
    );
    std::fs::write(project.path("pipeline.toml"), pipeline).unwrap();
    // State written raw, as by an engine that had not registered the value.
    std::fs::create_dir_all(project.path(".engine")).unwrap();
    let location = engine::state::Location::Sqlite(project.path(".engine/state.db"));
    let store = engine::state::Store::connect(&location).await.unwrap();
    let record = engine::state::RevisionRecord {
        revision: "api-1".into(),
        run_id: None,
        recorded_ms: engine::state::now_ms(),
        traffic: 100,
        outcome: "deployed".into(),
        detail: Some(format!("the check saw {VALUE}")),
        release: None,
    };
    store
        .record_revision("quiet", "default", "api", None, &record)
        .await
        .unwrap();
    drop(store);
    let json_spelling = serde_json::to_string(VALUE).unwrap();
    for args in [
        &["history", "api"][..],
        &["history", "api", "--output", "json"],
        &["status"],
        &["status", "--output", "json"],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_engine"))
            .args(args)
            .arg(project.path("pipeline.toml"))
            .env("HOSTILE_SECRET", VALUE)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{args:?}: {stdout}");
        assert!(!stdout.contains("en\\with"), "{args:?}: {stdout}");
        assert!(!stdout.contains(&json_spelling[1..json_spelling.len() - 1]));
        if args[0] == "history" {
            assert!(
                stdout.contains("the check saw [REDACTED]"),
                "{args:?}: {stdout}"
            );
        }
    }
}

#[tokio::test]
async fn a_strategy_sees_the_engines_clock_and_seeded_random_numbers() {
    use engine::runtime::bindings::strategy::exports::engine::plugin::strategy::{
        Decision, Observation, Rollout,
    };
    let (runtime, _) = runtime();
    let plugin = runtime
        .load(
            "hostile-strategy",
            &PluginSource::Unpinned(testing_plugin("testing-hostile-strategy")),
            &GrantsConfig::default(),
        )
        .await
        .unwrap();
    let rollout = |stable: &str| Rollout {
        service: "api".into(),
        stable: Some(stable.into()),
        candidate: "api-2".into(),
        features: Vec::new(),
        config: json!({"mode": "impure"}).to_string(),
    };
    let step = |rollout: Rollout, now_ms: u64| {
        let plugin = &plugin;
        async move {
            let step = plugin
                .strategy()
                .unwrap()
                .step(&rollout, Some("{}"), &Observation::Waited, now_ms)
                .await
                .unwrap();
            assert_eq!(step.decision, Decision::Wait(60_000));
            step.phase
        }
    };
    // A simulated moment far from the machine's own clock.
    const SIMULATED: u64 = 4_102_444_800_000;
    let first = step(rollout("api-1"), SIMULATED).await;
    let again = step(rollout("api-1"), SIMULATED).await;
    assert_eq!(first, again, "the same step decided differently");
    assert!(
        first.starts_with(&format!("wall={SIMULATED} monotonic={}000000 ", SIMULATED)),
        "{first}"
    );
    // Other inputs, other numbers: the source is seeded, not constant.
    let other = step(rollout("api-0"), SIMULATED).await;
    let random = |phase: &str| phase.split(" random=").nth(1).unwrap().to_string();
    assert_ne!(random(&first), random(&other));
}

/// A runtime for a plan: a dry run, withholding every secret when `withhold`.
fn plan_runtime(withhold: bool) -> (engine::runtime::Runtime, engine::runtime::MemorySink) {
    let sink = engine::runtime::MemorySink::default();
    let runtime = engine::runtime::Runtime::new(engine::runtime::RuntimeOptions {
        cache_dir: Some(cache_dir()),
        sink: std::sync::Arc::new(sink.clone()),
        dry_run: true,
        withhold_secrets: withhold,
        ..Default::default()
    })
    .unwrap();
    (runtime, sink)
}

#[tokio::test]
async fn a_pipeline_can_withhold_secrets_from_plan() {
    let file = secret_file("plan-time-secret-value");
    let server = TestServer::start();
    let url = format!("http://127.0.0.1:{}/echo", server.port);
    let orders = json!({"mode": "http", "secret": "token", "url": url});
    for (in_plan, withhold, hint) in [
        (
            Some(false),
            false,
            "the pipeline withholds this secret during plan (`in_plan = false`); a real run sends it",
        ),
        (
            None,
            true,
            "`engine plan --no-secrets` sends no secret; a real run sends it",
        ),
    ] {
        let (runtime, sink) = plan_runtime(withhold);
        let mut grants = secret_grants(&file, None, &[&server]);
        grants.secrets.get_mut("token").unwrap().in_plan = in_plan;
        let plugin = load_hostile(&runtime, grants).await;
        let (outcome, _) = probe(&plugin, orders.clone()).await.unwrap();
        assert_eq!(outcome, "err");
        assert!(server.requests().is_empty(), "{:?}", server.requests());
        let denials = sink.denials();
        assert_eq!(denials.len(), 1, "{denials:?}");
        assert_eq!(denials[0].capability, Capability::Secret);
        assert_eq!(
            denials[0].attempted,
            format!("secret 'token' in header authorization of GET {url} during plan")
        );
        assert_eq!(denials[0].hint, hint);
    }
    // By default a plan's GET carries the secret, as docs/sandbox.md says.
    let (runtime, _) = plan_runtime(false);
    let plugin = load_hostile(&runtime, secret_grants(&file, None, &[&server])).await;
    let (outcome, _) = probe(&plugin, orders).await.unwrap();
    assert_eq!(outcome, "ok");
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn a_plugin_cannot_leave_symbolic_links_in_a_granted_directory() {
    let granted = tempfile::tempdir().unwrap();
    let (runtime, _) = runtime();
    let plugin = load_hostile(&runtime, dir_grant(granted.path(), "/data", true)).await;
    for target in ["../../../etc", "inside.txt", "/etc/passwd"] {
        let (outcome, detail) = probe(
            &plugin,
            json!({"mode": "symlink", "dir": "/data", "target": target, "link": "link"}),
        )
        .await
        .unwrap();
        assert_eq!(outcome, "err", "{target}");
        assert!(
            detail.contains(r#"name: "not-permitted""#),
            "{target}: {detail}"
        );
        assert!(std::fs::symlink_metadata(granted.path().join("link")).is_err());
    }
    // Ordinary writes still work in the same call path.
    let (outcome, _) = probe(
        &plugin,
        json!({"mode": "write-file", "path": "/data/ok.txt"}),
    )
    .await
    .unwrap();
    assert_eq!(outcome, "ok");
}

#[tokio::test]
async fn a_call_that_writes_past_its_disk_limit_is_stopped() {
    let granted = tempfile::tempdir().unwrap();
    // Already there before the call: only what the call adds counts.
    std::fs::write(granted.path().join("existing"), vec![0u8; 8 << 20]).unwrap();
    let (runtime, _) = runtime();
    let mut grants = dir_grant(granted.path(), "/data", true);
    grants.disk = Some("4MiB".into());
    let plugin = load_hostile(&runtime, grants).await;
    let (outcome, detail) = probe(
        &plugin,
        json!({"mode": "fill-disk", "path": "/data/small", "mib": 3}),
    )
    .await
    .unwrap();
    assert_eq!((outcome.as_str(), detail.as_str()), ("ok", "filled"));
    // A call writing without end is stopped soon after it passes the limit.
    match probe(
        &plugin,
        json!({"mode": "fill-disk", "path": "/data/big", "mib": 100_000}),
    )
    .await
    {
        Err(CallError::DiskExceeded { limit, dirs, .. }) => {
            assert_eq!(limit, 4 << 20);
            assert_eq!(dirs, granted.path().display().to_string());
        }
        other => panic!("expected the disk limit, got {other:?}"),
    }
    let written = std::fs::metadata(granted.path().join("big")).unwrap().len();
    assert!(written < 100_000 << 20, "{written}");
    // A call that returns just over the limit fails too.
    std::fs::remove_file(granted.path().join("big")).unwrap();
    match probe(
        &plugin,
        json!({"mode": "fill-disk", "path": "/data/five", "mib": 5}),
    )
    .await
    {
        Err(CallError::DiskExceeded { .. }) => {}
        other => panic!("expected the disk limit, got {other:?}"),
    }
}

#[tokio::test]
async fn calls_of_one_plugin_share_its_connections() {
    use axum::serve::ListenerExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let counter = accepted.clone();
    let listener = listener.tap_io(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    let app = axum::Router::new().fallback(|| async { "hello" });
    tokio::spawn(async move { axum::serve(listener, app).await });
    let (runtime, _) = runtime();
    let grants = GrantsConfig {
        allow_http: vec![format!("http://127.0.0.1:{port}")],
        ..Default::default()
    };
    let plugin = load_hostile(&runtime, grants).await;
    let url = format!("http://127.0.0.1:{port}/");
    for _ in 0..5 {
        let (outcome, detail) = probe(&plugin, json!({"mode": "http", "url": url}))
            .await
            .unwrap();
        assert_eq!((outcome.as_str(), detail.as_str()), ("ok", "200 hello"));
    }
    // Each call is a fresh instance, but the host keeps the plugin's connections.
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_proxy_carries_the_granted_requests_and_is_no_destination_of_its_own() {
    let proxy = TestServer::start();
    let target = TestServer::start();
    let (runtime, sink) = runtime();
    let grants = GrantsConfig {
        allow_http: vec![format!("http://127.0.0.1:{}", target.port)],
        proxy: Some(format!("http://127.0.0.1:{}", proxy.port)),
        ..Default::default()
    };
    let plugin = load_hostile(&runtime, grants).await;
    // The proxy itself is not granted: a plugin cannot talk to it as a destination.
    let own = format!("http://127.0.0.1:{}/", proxy.port);
    let denial = denied_get(&plugin, &sink, &own).await;
    assert_eq!(denial.capability, Capability::Http);
    assert!(proxy.received.lock().unwrap().is_empty());
    // A granted request travels through it, in the absolute form a forward proxy is sent.
    let url = format!("http://127.0.0.1:{}/x", target.port);
    let (outcome, detail) = probe(&plugin, json!({"mode": "http", "url": url}))
        .await
        .unwrap();
    assert_eq!((outcome.as_str(), detail.as_str()), ("ok", "200 hello"));
    let seen: Vec<String> = proxy
        .received
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.url.clone())
        .collect();
    assert_eq!(seen, [url]);
    assert!(
        target.received.lock().unwrap().is_empty(),
        "only through the proxy"
    );
}

/// A resource's answers are stored and written into other specs, so the host takes them exact
/// or not at all: every broken one is malformed output, and a plan's text is made safe to print.
#[tokio::test]
async fn a_resource_answer_that_breaks_the_contract_is_malformed_output() {
    use engine::runtime::resources::ResourceSpec;
    let (runtime, _) = runtime();
    let plugin = load_hostile(&runtime, GrantsConfig::default()).await;
    assert_eq!(plugin.info().resource_kinds[0].name, "hostile-object");
    let resources = plugin.resources().unwrap();
    let spec = |mode: &str| ResourceSpec {
        kind: "hostile-object".into(),
        name: "x".into(),
        spec: json!({ "mode": mode }).to_string(),
        config: "{}".into(),
    };
    for (mode, expected) in [
        ("newline-output", "output `value` holds control characters"),
        ("huge-observed", "over the 262144-byte limit"),
        ("bad-id", "a resource's id"),
        ("many-outputs", "over 64 outputs"),
    ] {
        for result in [
            resources.read(&spec(mode)).await.map(|_| ()),
            resources.apply(&spec(mode), None).await.map(|_| ()),
        ] {
            match result {
                Err(CallError::MalformedOutput { detail, .. }) => {
                    assert!(detail.contains(expected), "{mode}: {detail}")
                }
                other => panic!("{mode}: expected malformed output, got {other:?}"),
            }
        }
    }
    let service = |mode: &str| ServiceRef {
        name: "svc".into(),
        config: json!({ "mode": mode }).to_string(),
    };
    for (mode, expected) in [
        ("place-with-newline", "is not a kebab-case name"),
        ("place-twice", "place eu is listed twice"),
        ("place-not-a-url", "is not an absolute http(s) URL"),
        ("many-places", "over the limit of 256"),
    ] {
        match resources.service_urls(&service(mode)).await {
            Err(CallError::MalformedOutput { detail, .. }) => {
                assert!(detail.contains(expected), "{mode}: {detail}")
            }
            other => panic!("{mode}: expected malformed output, got {other:?}"),
        }
    }
    let places = resources.service_urls(&service("ok")).await.unwrap();
    assert_eq!(
        places[1],
        ("us".to_string(), "https://us.example".to_string())
    );
    let fine = resources.read(&spec("ok")).await.unwrap().unwrap();
    assert_eq!(fine.outputs, [("value".to_string(), "fine".to_string())]);
    let plan = resources.plan(&spec("ok"), None).await.unwrap();
    assert!(
        !plan.summary.contains('\u{1b}') && !plan.summary.contains('\n'),
        "{}",
        plan.summary
    );
}
