//! The local platform's cost, and the `http` health check's: figures and machine in
//! docs/performance.md.
//!
//! - One request at a time to the demo service, directly and through the front door (the
//!   front door adds a proxy hop, weighted routing and a metrics record).
//! - 512 requests with 16 in flight, directly and through the front door (throughput).
//! - One `GET /healthz` probe through the sandboxed `http` plugin (a fresh instance per check,
//!   as the engine runs it) against the same probe from a native client; then both again in
//!   alternating rounds ("health probe, paired"), wall-clock and CPU time, for a ratio that the
//!   machine's drift does not skew.

use criterion::{Criterion, Throughput};
use engine::grants::GrantsConfig;
use engine::plugins::PluginSource;
use engine::runtime::bindings::health::exports::engine::plugin::health::Target;
use engine::runtime::bindings::types::{Endpoint, EndpointKind};
use engine::runtime::{Runtime, RuntimeOptions};
use local_api::{RevisionRequest, RevisionView, Weight};
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

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

/// Whether to run the paired probe measurement: under `cargo bench`, unless a filter names
/// another group.
fn paired_requested() -> bool {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    args.iter().any(|a| a == "--bench")
        && (filters.is_empty()
            || filters
                .iter()
                .any(|f| "health probe, paired".contains(f.as_str())))
}

/// Wall-clock and CPU time (all of this process's threads) of one probe, averaged over a round.
#[derive(Clone, Copy)]
struct Cost {
    wall: Duration,
    cpu: Duration,
}

/// CPU time this process has used so far, user and system, all threads.
fn process_cpu() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct it is given and reads nothing else.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime))
}

async fn round<F: Future<Output = ()>>(probe: impl Fn() -> F, probes: u32) -> Cost {
    let (cpu, start) = (process_cpu(), Instant::now());
    for _ in 0..probes {
        probe().await;
    }
    Cost {
        wall: start.elapsed() / probes,
        cpu: (process_cpu() - cpu) / probes,
    }
}

/// The sandboxed probe against the native one in alternating rounds (ABBA order), so that both
/// see the same machine: on a shared VM whose speed drifts within minutes, criterion's separate
/// runs of each can disagree by 2×. Prints, for wall-clock time and for the engine process's
/// CPU time (which scheduling delays do not inflate), the medians and the ratio's quartiles.
async fn paired<S, SF, N, NF>(sandboxed: S, native: N)
where
    S: Fn() -> SF,
    SF: Future<Output = ()>,
    N: Fn() -> NF,
    NF: Future<Output = ()>,
{
    const ROUNDS: usize = 40;
    const PROBES: u32 = 100;
    let mut rounds = Vec::new();
    for i in 0..ROUNDS {
        rounds.push(if i % 2 == 0 {
            let s = round(&sandboxed, PROBES).await;
            (s, round(&native, PROBES).await)
        } else {
            let n = round(&native, PROBES).await;
            (round(&sandboxed, PROBES).await, n)
        });
    }
    println!("health probe, paired: {ROUNDS} rounds of {PROBES} probes each, alternating");
    for (what, of) in [
        ("wall-clock", (|c: &Cost| c.wall) as fn(&Cost) -> Duration),
        ("CPU", |c: &Cost| c.cpu),
    ] {
        let median = |mut v: Vec<Duration>| {
            v.sort();
            v[ROUNDS / 2]
        };
        let mut ratios: Vec<f64> = rounds
            .iter()
            .map(|(s, n)| of(s).as_secs_f64() / of(n).as_secs_f64())
            .collect();
        ratios.sort_by(f64::total_cmp);
        println!(
            "  {what}: sandboxed {:?}, native {:?} (medians); ratio median {:.2}x, quartiles {:.2}x..{:.2}x",
            median(rounds.iter().map(|(s, _)| of(s)).collect()),
            median(rounds.iter().map(|(_, n)| of(n)).collect()),
            ratios[ROUNDS / 2],
            ratios[ROUNDS / 4],
            ratios[3 * ROUNDS / 4],
        );
    }
}

fn main() {
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // A request that never gets its answer fails the bench instead of stalling it (one run of
    // the 512-request group hung once, cause not found).
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let (running, front, direct, revision_url) = tokio.block_on(async {
        let running = local_platform::start("127.0.0.1:0".parse().unwrap(), dir.path())
            .await
            .unwrap();
        let admin = format!("http://127.0.0.1:{}", running.admin.port());
        let request = RevisionRequest {
            command: engine::build_info::DEMO_SERVICE.into(),
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

    if paired_requested() {
        let sandboxed = || async {
            let result = health.check(config, &target).await.unwrap();
            assert_eq!(
                result.verdict,
                engine::runtime::bindings::types::Verdict::Healthy
            );
        };
        let native = || get(&client, &probe_url);
        tokio.block_on(paired(sandboxed, native));
    }

    tokio.block_on(async {
        running.platform.request_shutdown();
        let _ = running.task.await;
    });
}
