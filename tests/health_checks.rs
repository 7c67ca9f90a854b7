//! The built-in `tcp` and `metrics` checks inside the sandbox, against real peers: TCP
//! listeners on loopback, and a real Prometheus server scraping the local platform while real
//! demo services answer real requests. No timed assertions: every wait is on a condition.

mod support;

use engine::grants::GrantsConfig;
use engine::plugins::PluginSource;
use engine::runtime::bindings::health::exports::engine::plugin::health::{CheckResult, Target};
use engine::runtime::bindings::types::{Endpoint, EndpointKind, Verdict};
use engine::runtime::events::Capability;
use engine::runtime::{LoadedPlugin, Runtime};
use local_api::RevisionRequest;
use std::time::{Duration, Instant};
use support::prometheus::Prometheus;

async fn load(runtime: &Runtime, name: &str, grants: GrantsConfig) -> LoadedPlugin {
    runtime
        .load(name, &PluginSource::Embedded(name.into()), &grants)
        .await
        .unwrap_or_else(|e| panic!("the {name} plugin loads: {e}"))
}

fn target(revision_url: Option<&str>) -> Target {
    Target {
        service: "api".into(),
        revision: Some("api-2".into()),
        endpoints: revision_url
            .map(|url| Endpoint {
                url: url.into(),
                kind: EndpointKind::Revision,
                revision: Some("api-2".into()),
            })
            .into_iter()
            .collect(),
        since_ms: 0,
    }
}

async fn check(plugin: &LoadedPlugin, config: serde_json::Value, target: &Target) -> CheckResult {
    plugin
        .health()
        .unwrap()
        .check(&config.to_string(), target)
        .await
        .unwrap_or_else(|e| panic!("the check runs: {e}"))
}

fn tcp_grants(allow: &[&str]) -> GrantsConfig {
    GrantsConfig {
        allow_tcp: allow.iter().map(|s| s.to_string()).collect(),
        ..GrantsConfig::default()
    }
}

fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn tcp_connects_to_the_revision_url_a_port_or_an_address_it_is_granted() {
    let (runtime, sink) = support::runtime();
    let plugin = load(&runtime, "tcp", tcp_grants(&["localhost:*", "127.0.0.1:*"])).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let open = listener.local_addr().unwrap().port();

    let by_url = target(Some(&format!("http://localhost:{open}/")));
    let r = check(&plugin, serde_json::json!({}), &by_url).await;
    assert_eq!(r.verdict, Verdict::Healthy, "{}", r.message);
    assert!(
        r.message
            .starts_with(&format!("connected to localhost:{open}"))
    );
    assert_eq!(r.measurements[0].name, "latency");

    let by_address = serde_json::json!({ "address": format!("127.0.0.1:{open}") });
    let r = check(&plugin, by_address, &target(None)).await;
    assert_eq!(r.verdict, Verdict::Healthy, "{}", r.message);

    let closed = serde_json::json!({ "port": closed_port(), "interval": "50ms" });
    let r = check(&plugin, closed, &by_url).await;
    assert_eq!(r.verdict, Verdict::Unhealthy, "{}", r.message);
    assert!(
        r.message.contains("refused") && r.message.contains("3 failure(s) in a row"),
        "{}",
        r.message
    );
    assert!(sink.denials().is_empty(), "{:?}", sink.denials());
}

#[tokio::test]
async fn tcp_to_a_destination_not_granted_is_refused_with_the_line_to_add() {
    let (runtime, sink) = support::runtime();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let open = listener.local_addr().unwrap().port();
    let plugin = load(&runtime, "tcp", tcp_grants(&["127.0.0.1:1"])).await;
    let config = serde_json::json!({ "address": format!("127.0.0.1:{open}") });
    let e = plugin
        .health()
        .unwrap()
        .check(&config.to_string(), &target(None))
        .await
        .expect_err("a destination outside allow_tcp");
    assert!(e.to_string().contains("unauthorized"), "{e}");
    assert_eq!(
        sink.denials().len(),
        1,
        "a refused destination is not asked again"
    );
    let denial = &sink.denials()[0];
    assert_eq!(denial.capability, Capability::Tcp);
    assert_eq!(denial.attempted, format!("connect 127.0.0.1:{open}"));
    assert_eq!(
        denial.hint,
        format!("add \"127.0.0.1:{open}\" to allow_tcp in [plugins.tcp]")
    );
}

#[tokio::test]
async fn a_granted_name_that_resolves_to_an_internal_address_is_refused() {
    // `db.example.com` is granted by name, but someone pointed it at loopback.
    let (runtime, sink) =
        support::runtime_with(&[("db.example.com", "127.0.0.1".parse().unwrap())]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let open = listener.local_addr().unwrap().port();
    let plugin = load(&runtime, "tcp", tcp_grants(&["db.example.com:*"])).await;
    let config = serde_json::json!({ "address": format!("db.example.com:{open}") });
    let e = plugin
        .health()
        .unwrap()
        .check(&config.to_string(), &target(None))
        .await
        .expect_err("an internal address behind a granted name");
    assert!(e.to_string().contains("internal addresses"), "{e}");
    assert_eq!(sink.denials()[0].capability, Capability::Address);
}

#[tokio::test]
async fn tcp_without_any_grant_is_reported_when_the_plugin_loads() {
    let (runtime, sink) = support::runtime();
    let _plugin = load(&runtime, "tcp", GrantsConfig::default()).await;
    let warned = sink.events().iter().any(|e| {
        format!("{e:?}")
            .contains("declares TCP connects to tcp://*:* but [plugins.tcp] grants none")
    });
    assert!(warned, "{:?}", sink.events());
}

// The metrics check's Prometheus source, end to end: two revisions of the demo service on the
// local platform (one failing 30 % of its requests), real requests through their URLs, a real
// Prometheus scraping the platform, and the check's default queries.

fn demo(release: &str, error_rate: f64, latency_ms: u64) -> RevisionRequest {
    RevisionRequest {
        command: engine::build_info::DEMO_SERVICE.into(),
        args: vec![
            "--name".into(),
            "api".into(),
            "--release".into(),
            release.into(),
            "--error-rate".into(),
            error_rate.to_string(),
            "--latency-ms".into(),
            latency_ms.to_string(),
        ],
        env: Default::default(),
        secrets: Default::default(),
        instances: 1,
        artifact: format!("demo {release}"),
        spec: serde_json::json!({ "release": release }),
        ready_timeout_ms: 20_000,
        front_port: None,
    }
}

#[tokio::test]
async fn metrics_from_prometheus_pass_a_good_revision_and_fail_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let platform = local_platform::start("127.0.0.1:0".parse().unwrap(), dir.path())
        .await
        .unwrap();
    let prometheus = Prometheus::start(&[platform.admin]).await;
    let http = reqwest::Client::new();
    let mut urls = Vec::new();
    for (revision, error_rate, latency) in [("api-good", 0.0, 0), ("api-bad", 0.3, 30)] {
        let (view, _) = platform
            .platform
            .deploy("api", revision, demo(revision, error_rate, latency))
            .await
            .unwrap_or_else(|r| panic!("deploy {revision}: {}", r.message));
        urls.push(view.url);
    }
    // Prometheus must see the counters at zero first: a series whose first sample is already
    // 100 shows no increase.
    let deadline = Instant::now() + Duration::from_secs(120);
    for revision in ["api-good", "api-bad"] {
        let query =
            format!(r#"sum(engine_local_requests_total{{service="api",revision="{revision}"}})"#);
        while prometheus.value(&query).await != Some(0.0) {
            assert!(
                Instant::now() < deadline,
                "Prometheus never scraped {revision}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    for url in &urls {
        for _ in 0..100 {
            http.get(url).send().await.unwrap();
        }
    }
    // Wait until Prometheus has scraped every request of both revisions.
    for revision in ["api-good", "api-bad"] {
        let query =
            format!(r#"sum(engine_local_requests_total{{service="api",revision="{revision}"}})"#);
        while prometheus.value(&query).await != Some(100.0) {
            assert!(
                Instant::now() < deadline,
                "Prometheus never saw {revision}'s requests"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    let (runtime, sink) = support::runtime();
    let grants = GrantsConfig {
        allow_http: vec!["http://127.0.0.1:*".into()],
        ..GrantsConfig::default()
    };
    let plugin = load(&runtime, "metrics", grants).await;
    let config = serde_json::json!({
        "source": "prometheus",
        "prometheus": prometheus.url,
        "max_error_rate_percent": 1,
        "max_p95_ms": 500,
        "min_requests": 50,
        "min_window": "5m",
    });
    let since_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        - 60_000;
    let at = |revision: &str| Target {
        service: "api".into(),
        revision: Some(revision.into()),
        endpoints: Vec::new(),
        since_ms,
    };
    let good = check(&plugin, config.clone(), &at("api-good")).await;
    assert_eq!(good.verdict, Verdict::Healthy, "{}", good.message);
    let requests = good
        .measurements
        .iter()
        .find(|m| m.name == "requests")
        .unwrap();
    // increase() extrapolates to the window's edges; the count is near the 100 sent.
    assert!((80.0..=130.0).contains(&requests.value), "{good:?}");

    let bad = check(&plugin, config.clone(), &at("api-bad")).await;
    assert_eq!(bad.verdict, Verdict::Unhealthy, "{}", bad.message);
    assert!(
        bad.message.starts_with("error rate 30.0% > 1%"),
        "{}",
        bad.message
    );
    let p95 = bad
        .measurements
        .iter()
        .find(|m| m.name == "latency-p95")
        .unwrap();
    assert!(
        (25.0..=100.0).contains(&p95.value),
        "p95 of 30 ms answers: {bad:?}"
    );

    // A revision Prometheus knows nothing of: no requests, so no verdict either way.
    let unknown = check(&plugin, config.clone(), &at("api-unknown")).await;
    assert_eq!(
        unknown.verdict,
        Verdict::Inconclusive,
        "{}",
        unknown.message
    );

    // A query Prometheus cannot parse is the configuration's fault, with Prometheus's reason.
    let mut broken = config;
    broken["queries"] = serde_json::json!({ "requests": "sum(rate(x[1m]" });
    let e = plugin
        .health()
        .unwrap()
        .check(&broken.to_string(), &at("api-good"))
        .await
        .expect_err("a malformed query");
    assert!(
        e.to_string().contains("invalid configuration") && e.to_string().contains("parse error"),
        "{e}"
    );
    assert!(sink.denials().is_empty(), "{:?}", sink.denials());
    platform.platform.stop_all().await;
}
