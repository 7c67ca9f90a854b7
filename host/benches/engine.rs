//! Engine overhead: a whole `engine run` (validation, plugin loading from the compile cache,
//! scheduling, strategy steps, checkpoints in SQLite) with a provider that does no work of its
//! own: the test provider with no latency, whose only cost is its small state file per service.
//! That file lives on tmpfs (`/dev/shm`) where there is one, so the file system's inode work
//! is not counted as engine time; the state database stays on the ordinary disk.
//! Figures and machine in docs/performance.md.
//!
//! Pipelines: 29 services shaped like the first seed system (3 infrastructure services, 2 core
//! services on them, 23 domain services on the core, an API gateway on everything), and
//! generated DAGs of 10, 100 and 1,000 services where each service depends on up to two earlier
//! ones.

use criterion::{BenchmarkId, Criterion};
use engine::run::{Event, Observer, RunOptions};
use engine::runtime::{Runtime, RuntimeOptions};
use engine::state::Store;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

struct Quiet;
impl Observer for Quiet {
    fn event(&self, _: &Event) {}
}

fn plugin() -> (PathBuf, String) {
    let path = PathBuf::from(engine::build_info::PLUGINS_DIR).join("testing_test_provider.wasm");
    let sha = engine::runtime::cache::sha256_hex(&std::fs::read(&path).unwrap());
    (path, sha)
}

fn header(platform: &Path) -> String {
    let (path, sha) = plugin();
    format!(
        "name = \"bench\"\n\n[plugins.test]\nsource = \"{}\"\nsha256 = \"{sha}\"\ndirs = [{{ host = \"{}\", guest = \"/platform\", writable = true }}]\n\n[defaults]\nprovider = \"test\"\n\n",
        path.display(),
        platform.display()
    )
}

fn service(out: &mut String, name: &str, deps: &[String]) {
    let deps: Vec<String> = deps.iter().map(|d| format!("\"{d}\"")).collect();
    let _ = write!(
        out,
        "[services.{name}]\nimage = \"{name}:1\"\ndepends_on = [{}]\n\n",
        deps.join(", ")
    );
}

/// The first seed system's shape.
fn seed_shape(platform: &Path) -> String {
    let mut out = header(platform);
    let infra: Vec<String> = ["service-discovery", "authentication", "configuration"]
        .map(String::from)
        .to_vec();
    for s in &infra {
        service(&mut out, s, &[]);
    }
    let core: Vec<String> = ["agent-management", "conversation-management"]
        .map(String::from)
        .to_vec();
    for s in &core {
        service(&mut out, s, &infra);
    }
    let domain: Vec<String> = (0..23).map(|i| format!("domain-{i}")).collect();
    for s in &domain {
        service(&mut out, s, &core);
    }
    service(&mut out, "api-gateway", &domain);
    out
}

/// A DAG of `n` services, each depending on up to two earlier ones.
fn generated(platform: &Path, n: usize) -> String {
    let mut out = header(platform);
    for i in 0..n {
        let mut deps = Vec::new();
        if i > 0 {
            deps.push(format!("s{}", i - 1));
        }
        if i > 3 {
            deps.push(format!("s{}", i / 2));
        }
        deps.dedup();
        service(&mut out, &format!("s{i}"), &deps);
    }
    out
}

/// One full run on a fresh platform and state; returns the number of services deployed.
fn run_once(
    tokio: &tokio::runtime::Runtime,
    runtime: &Runtime,
    make: &dyn Fn(&Path) -> String,
) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let shm = Path::new("/dev/shm");
    let platform = if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let text = make(platform.path());
    let pipeline = engine::config::parse("bench.toml", &text, dir.path(), None).expect("valid");
    tokio.block_on(async {
        let plugins = engine::runtime::check_plugins(&pipeline, runtime)
            .await
            .expect("plugins");
        let store = Store::open(&dir.path().join("state.db")).await.unwrap();
        let options = RunOptions {
            concurrency: 8,
            ..RunOptions::default()
        };
        let report = engine::run::execute(&pipeline, &plugins, &store, &Quiet, &options)
            .await
            .unwrap();
        assert!(report.succeeded());
        report.services.len()
    })
}

fn main() {
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-compile-cache");
    let runtime = Runtime::new(RuntimeOptions {
        cache_dir: Some(cache),
        ..Default::default()
    })
    .unwrap();
    let mut c = Criterion::default().configure_from_args();
    let mut group = c.benchmark_group("engine run");
    group.sample_size(10);
    group.bench_function("29 services, seed shape", |b| {
        b.iter(|| run_once(&tokio, &runtime, &seed_shape))
    });
    for n in [10usize, 100, 1000] {
        group.bench_with_input(BenchmarkId::new("generated DAG", n), &n, |b, &n| {
            b.iter(|| run_once(&tokio, &runtime, &|platform| generated(platform, n)))
        });
    }
    group.finish();
    c.final_summary();
}
