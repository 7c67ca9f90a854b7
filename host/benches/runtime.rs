//! Plugin runtime benchmarks; the figures and the machine are in docs/performance.md.
//!
//! The same `plan` logic (plugins/testing/bench-provider) runs four ways:
//! - in the sandbox, instantiated fresh for the call (how the engine calls plugins);
//! - in the sandbox, in an instance kept across calls ([`ProviderSession`]);
//! - natively, as a plain function call;
//! - in a subprocess speaking JSON over stdio: the go-plugin model of Terraform, Waypoint and
//!   Argo Rollouts. Spawned per call, and kept running.
//!
//! The subprocess is this benchmark binary re-executed with `ENGINE_BENCH_STDIO_CHILD=1`, so it
//! runs exactly the same native code. Under `cargo bench` a summary with the ratios follows
//! criterion's output.

use criterion::{BatchSize, Criterion};
use engine::grants::GrantsConfig;
use engine::plugins::PluginSource;
use engine::runtime::bindings::types as host;
use engine::runtime::{LoadedPlugin, Runtime, RuntimeOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "ENGINE_BENCH_STDIO_CHILD";

fn sdk_spec(image: &str) -> engine_sdk::ServiceSpec {
    engine_sdk::ServiceSpec {
        name: "api".into(),
        artifact: engine_sdk::Artifact::Image(image.into()),
        args: vec!["serve".into(), "--port=8080".into()],
        env: (0..8)
            .map(|i| (format!("VAR_{i}"), format!("value-{i}")))
            .collect(),
        secrets: vec![],
        resources: engine_sdk::Resources {
            cpu_millis: Some(1000),
            memory_mib: Some(512),
        },
        scaling: engine_sdk::Scaling {
            min_instances: Some(1),
            max_instances: Some(20),
            concurrency: Some(80),
        },
        port: Some(8080),
        ingress: engine_sdk::Ingress::Public,
        labels: vec![("team".into(), "payments".into())],
        config: r#"{"region":"europe-west1"}"#.into(),
    }
}

fn sdk_status() -> engine_sdk::ServiceStatus {
    engine_sdk::ServiceStatus {
        revisions: vec![],
        traffic: vec![],
        url: None,
        deployed: testing_bench_provider::deployed_form(&sdk_spec("api:1")).to_string(),
    }
}

/// The same spec in the host's types (the two sides are generated from one WIT).
fn host_spec(s: &engine_sdk::ServiceSpec) -> host::ServiceSpec {
    host::ServiceSpec {
        name: s.name.clone(),
        artifact: match &s.artifact {
            engine_sdk::Artifact::Image(i) => host::Artifact::Image(i.clone()),
            engine_sdk::Artifact::Path(p) => host::Artifact::Path(p.clone()),
        },
        args: s.args.clone(),
        env: s.env.clone(),
        secrets: vec![],
        resources: host::Resources {
            cpu_millis: s.resources.cpu_millis,
            memory_mib: s.resources.memory_mib,
        },
        scaling: host::Scaling {
            min_instances: s.scaling.min_instances,
            max_instances: s.scaling.max_instances,
            concurrency: s.scaling.concurrency,
        },
        port: s.port,
        ingress: host::Ingress::Public,
        labels: s.labels.clone(),
        config: s.config.clone(),
    }
}

fn host_status(s: &engine_sdk::ServiceStatus) -> host::ServiceStatus {
    host::ServiceStatus {
        revisions: vec![],
        traffic: vec![],
        url: None,
        deployed: s.deployed.clone(),
    }
}

fn bench_plugin() -> PathBuf {
    PathBuf::from(engine::build_info::PLUGINS_DIR).join("testing_bench_provider.wasm")
}

fn cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-compile-cache")
}

/// The subprocess side: one JSON request per line in, one JSON plan per line out.
fn child_main() {
    let stdin = std::io::stdin().lock();
    let mut stdout = std::io::stdout().lock();
    for line in stdin.lines() {
        let line = line.expect("stdin");
        let (desired, current): (engine_sdk::ServiceSpec, Option<engine_sdk::ServiceStatus>) =
            serde_json::from_str(&line).expect("request");
        let plan =
            testing_bench_provider::plan(&desired, current.as_ref()).map_err(|e| format!("{e:?}"));
        serde_json::to_writer(&mut stdout, &plan).expect("response");
        stdout
            .write_all(b"\n")
            .and_then(|()| stdout.flush())
            .expect("stdout");
    }
}

struct StdioPlugin {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl StdioPlugin {
    fn spawn() -> StdioPlugin {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(CHILD_ENV, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the stdio plugin");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        StdioPlugin {
            child,
            stdin,
            stdout,
        }
    }

    fn call(&mut self, request: &str) -> String {
        self.stdin.write_all(request.as_bytes()).unwrap();
        self.stdin.write_all(b"\n").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert!(line.contains("Update"), "unexpected answer {line}");
        line
    }

    fn finish(mut self) {
        drop(self.stdin);
        self.child.wait().unwrap();
    }
}

struct Fixture {
    tokio: tokio::runtime::Runtime,
    runtime: Runtime,
    plugin: LoadedPlugin,
    spec: host::ServiceSpec,
    status: host::ServiceStatus,
    sdk_spec: engine_sdk::ServiceSpec,
    sdk_status: engine_sdk::ServiceStatus,
    request: String,
}

fn fixture() -> Fixture {
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let runtime = Runtime::new(RuntimeOptions {
        cache_dir: Some(cache_dir()),
        ..Default::default()
    })
    .unwrap();
    let plugin = tokio
        .block_on(runtime.load(
            "bench",
            &PluginSource::Unpinned(bench_plugin()),
            &GrantsConfig::default(),
        ))
        .unwrap();
    let (sdk_spec, sdk_status) = (sdk_spec("api:2"), sdk_status());
    let request = serde_json::to_string(&(&sdk_spec, Some(&sdk_status))).unwrap();
    Fixture {
        spec: host_spec(&sdk_spec),
        status: host_status(&sdk_status),
        tokio,
        runtime,
        plugin,
        sdk_spec,
        sdk_status,
        request,
    }
}

fn bench_calls(c: &mut Criterion, f: &Fixture) {
    let mut group = c.benchmark_group("plan");
    let provider = f.plugin.provider().unwrap();
    group.bench_function("wasm: fresh instance + call", |b| {
        b.to_async(&f.tokio)
            .iter(|| async { provider.plan(&f.spec, Some(&f.status)).await.unwrap() })
    });
    let service = host::ServiceRef {
        name: "api".into(),
        config: "{}".into(),
    };
    group.bench_function("wasm: fresh instance + empty call", |b| {
        b.to_async(&f.tokio)
            .iter(|| async { provider.endpoints(&service, None).await.unwrap() })
    });
    let mut session = f.tokio.block_on(f.plugin.provider_session()).unwrap();
    group.bench_function("wasm: call into a live instance", |b| {
        b.iter(|| {
            f.tokio
                .block_on(session.plan(&f.spec, Some(&f.status)))
                .unwrap()
        })
    });
    drop(session);
    group.bench_function("native: function call", |b| {
        b.iter(|| testing_bench_provider::plan(&f.sdk_spec, Some(&f.sdk_status)).unwrap())
    });
    group.bench_function("subprocess: spawn + call", |b| {
        b.iter(|| {
            let mut child = StdioPlugin::spawn();
            child.call(&f.request);
            child.finish();
        })
    });
    let mut child = StdioPlugin::spawn();
    group.bench_function("subprocess: call into a running process", |b| {
        b.iter(|| child.call(&f.request))
    });
    child.finish();
    group.finish();
}

fn bench_load(c: &mut Criterion, f: &Fixture) {
    let bytes = std::fs::read(bench_plugin()).unwrap();
    let sha = engine::runtime::cache::sha256_hex(&bytes);
    let engine = f.runtime.engine();
    let mut group = c.benchmark_group("load");
    group.bench_function("from the compile cache", |b| {
        b.iter(|| f.runtime.cache().load(engine, &sha, &bytes).unwrap())
    });
    group.sample_size(10);
    group.bench_function("cold compile", |b| {
        b.iter_batched(
            || (),
            |()| wasmtime::component::Component::new(engine, &bytes).unwrap(),
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

/// The median of `n` timings of `op`.
fn median(n: usize, mut op: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..n)
        .map(|_| {
            let start = Instant::now();
            op();
            start.elapsed()
        })
        .collect();
    times.sort();
    times[n / 2]
}

/// The comparison the docs quote, measured in the same run.
fn print_ratios(f: &Fixture) {
    let provider = f.plugin.provider().unwrap();
    let fresh = median(500, || {
        f.tokio
            .block_on(provider.plan(&f.spec, Some(&f.status)))
            .unwrap();
    });
    let mut session = f.tokio.block_on(f.plugin.provider_session()).unwrap();
    let live = median(2000, || {
        f.tokio
            .block_on(session.plan(&f.spec, Some(&f.status)))
            .unwrap();
    });
    let native = median(2000, || {
        testing_bench_provider::plan(&f.sdk_spec, Some(&f.sdk_status)).unwrap();
    });
    let spawned = median(100, || {
        let mut child = StdioPlugin::spawn();
        child.call(&f.request);
        child.finish();
    });
    let mut child = StdioPlugin::spawn();
    let running = median(2000, || {
        child.call(&f.request);
    });
    child.finish();
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    println!("\nsummary (medians, same run):");
    println!("  wasm fresh instance + call      {fresh:>10.1?}");
    println!("  wasm call into a live instance  {live:>10.1?}");
    println!("  native function call            {native:>10.1?}");
    println!("  subprocess spawn + call         {spawned:>10.1?}");
    println!("  subprocess running, one call    {running:>10.1?}");
    println!(
        "  live wasm call / native call               {:>8.2}x",
        ratio(live, native)
    );
    println!(
        "  subprocess spawn+call / wasm fresh+call    {:>8.1}x",
        ratio(spawned, fresh)
    );
    println!(
        "  subprocess running call / wasm live call   {:>8.1}x",
        ratio(running, live)
    );
}

fn main() {
    if std::env::var_os(CHILD_ENV).is_some() {
        child_main();
        return;
    }
    let fixture = fixture();
    let mut criterion = Criterion::default().configure_from_args();
    bench_calls(&mut criterion, &fixture);
    bench_load(&mut criterion, &fixture);
    criterion.final_summary();
    // `cargo bench` passes --bench; `cargo test --benches` runs each benchmark once without it.
    if std::env::args().any(|a| a == "--bench") {
        print_ratios(&fixture);
    }
}
