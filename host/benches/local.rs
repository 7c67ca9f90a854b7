//! The local platform's cost, and the `http` health check's: figures and machine in
//! docs/performance.md.
//!
//! - One request at a time to the demo service, directly and through the front door (the
//!   front door adds a proxy hop, weighted routing and a metrics record).
//! - 512 requests with 16 in flight, directly and through the front door (throughput).
//! - One `GET /healthz` probe through the sandboxed `http` plugin (a fresh instance per check,
//!   as the engine runs it) against the same probe from a native client.

use criterion::{Criterion, Throughput};
use engine::plugins::PluginSource;
use engine::runtime::bindings::health::exports::engine::plugin::health::Target;
use engine::runtime::bindings::types::{Endpoint, EndpointKind};
use engine::runtime::grants::GrantsConfig;
use engine::runtime::{Runtime, RuntimeOptions};
use local_api::{RevisionRequest, RevisionView, Weight};
use std::path::PathBuf;

const BATCH: usize = 512;
const IN_FLIGHT: usize = 16;

async fn get(client: &reqwest::Client, url: &str) {
    let response = client.get(url).send().await.expect("an answer");
    assert!(response.status().is_success());
    response.bytes().await.expect("a body");
}

/// `BATCH` requests, `IN_FLIGHT` at a time.
async fn batch(client: &reqwest::Client, url: &str) {
    let workers = (0..IN_FLIGHT).map(|_| async {
        for _ in 0..BATCH / IN_FLIGHT {
            get(client, url).await;
        }
    });
    futures::future::join_all(workers).await;
}

fn main() {
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let (running, front, direct, revision_url) = tokio.block_on(async {
        let running = local_platform::start("127.0.0.1:0".parse().unwrap(), dir.path())
            .await
            .unwrap();
        let admin = format!("http://127.0.0.1:{}", running.admin.port());
        let request = RevisionRequest {
            command: env!("ENGINE_DEMO_SERVICE").into(),
            args: vec!["--release".into(), "v1".into()],
            env: Default::default(),
            secrets: Default::default(),
            instances: 1,
            artifact: "demo".into(),
            spec: serde_json::Value::Null,
            ready_timeout_ms: 20_000,
            front_port: None,
        };
        let view: RevisionView = client
            .put(format!("{admin}/v1/services/bench/revisions/bench-r1"))
            .bearer_auth(&running.token)
            .json(&request)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let service: local_api::ServiceView = client
            .put(format!("{admin}/v1/services/bench/traffic"))
            .bearer_auth(&running.token)
            .json(&[Weight {
                revision: "bench-r1".into(),
                percent: 100,
            }])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let direct = format!("http://127.0.0.1:{}/", view.instances[0].port);
        (running, format!("{}/", service.url), direct, view.url)
    });

    let mut c = Criterion::default().configure_from_args();
    let mut group = c.benchmark_group("local platform");
    group.bench_function("one request, direct", |b| {
        b.to_async(&tokio).iter(|| get(&client, &direct))
    });
    group.bench_function("one request, front door", |b| {
        b.to_async(&tokio).iter(|| get(&client, &front))
    });
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("512 requests 16 in flight, direct", |b| {
        b.to_async(&tokio).iter(|| batch(&client, &direct))
    });
    group.bench_function("512 requests 16 in flight, front door", |b| {
        b.to_async(&tokio).iter(|| batch(&client, &front))
    });
    group.finish();

    let runtime = Runtime::new(RuntimeOptions {
        cache_dir: Some(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-compile-cache")),
        ..Default::default()
    })
    .unwrap();
    let plugin = tokio
        .block_on(runtime.load(
            "http",
            &PluginSource::Embedded("http".into()),
            &GrantsConfig {
                allow_http: vec!["http://localhost:*".into()],
                ..Default::default()
            },
        ))
        .unwrap();
    let health = plugin.health().unwrap();
    let target = Target {
        service: "bench".into(),
        revision: Some("bench-r1".into()),
        endpoints: vec![Endpoint {
            url: revision_url.clone(),
            kind: EndpointKind::Revision,
            revision: Some("bench-r1".into()),
        }],
        since_ms: 0,
    };
    let config = r#"{"path": "/healthz"}"#;
    let probe_url = format!("{revision_url}/healthz");
    let mut group = c.benchmark_group("health probe");
    group.bench_function("http plugin, sandboxed", |b| {
        b.to_async(&tokio).iter(|| async {
            let result = health.check(config, &target).await.unwrap();
            assert_eq!(
                result.verdict,
                engine::runtime::bindings::types::Verdict::Healthy
            );
        })
    });
    group.bench_function("native client", |b| {
        b.to_async(&tokio).iter(|| get(&client, &probe_url))
    });
    group.finish();
    c.final_summary();

    tokio.block_on(async {
        running.platform.request_shutdown();
        let _ = running.task.await;
    });
}
