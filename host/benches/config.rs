//! Validation of pipeline.toml (`engine validate --skip-plugins`, `engine::config::parse_with`)
//! on ordinary and on hostile files: its time must grow linearly with the text, and the
//! hostile shapes (long chains of variables, values that double at each level, thousands of
//! services) must end quickly with a diagnostic. After criterion's figures it prints the peak
//! heap each case takes, measured by a counting allocator. Figures and machine in
//! docs/performance.md.

use criterion::{BenchmarkId, Criterion, Throughput};
use engine::config::{self, Inputs};
use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The system allocator, counting the bytes in use and their peak.
struct Counting;

static IN_USE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = IN_USE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The most heap one validation of `text` holds at once, beyond what was in use before.
fn peak_heap(text: &str) -> usize {
    let before = IN_USE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    validate(text);
    PEAK.load(Ordering::Relaxed) - before
}

fn validate(text: &str) -> bool {
    config::parse_with("pipeline.toml", text, Path::new("/srv"), &Inputs::default()).is_ok()
}

/// Variables `v0 = first`, then `vI` = `each` with `{}` standing for `${vI-1}`, and a service
/// that uses the last one.
fn variables(n: usize, first: &str, each: &str) -> String {
    let mut out = format!("name = \"vars\"\n[variables]\nv0 = \"{first}\"\n");
    for i in 1..n {
        let value = each.replace("{}", &format!("${{v{}}}", i - 1));
        let _ = writeln!(out, "v{i} = \"{value}\"");
    }
    let _ = write!(
        out,
        "[services.api]\nprovider = \"local\"\nimage = \"api:${{v{}}}\"\n",
        n - 1
    );
    out
}

/// A chain: `v1 = "${v0}"`, `v2 = "${v1}"`, …
fn chain(n: usize) -> String {
    variables(n, "x", "{}")
}

/// Values that double at each level: the last would be 2^n × 8 bytes.
fn doubling(n: usize) -> String {
    variables(n, "xxxxxxxx", "{}{}")
}

/// N services, each depending on the one before, sharing defaults and a variable.
fn services(n: usize) -> String {
    let mut out = String::from(
        "name = \"many\"\n[variables]\nregistry = \"gcr.io/shop\"\n[defaults]\nprovider = \"local\"\n",
    );
    for i in 0..n {
        let _ = write!(
            out,
            "[services.s{i}]\nimage = \"${{registry}}/s{i}:1\"\nenv = {{ A = \"${{registry}}\" }}\n"
        );
        if i > 0 {
            let _ = writeln!(out, "depends_on = [\"s{}\"]", i - 1);
        }
    }
    out
}

fn examples(c: &mut Criterion) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut group = c.benchmark_group("validate/example");
    for name in ["quickstart", "cloudrun-agenthub"] {
        let text = std::fs::read_to_string(dir.join(name).join("pipeline.toml")).unwrap();
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_function(name, |b| b.iter(|| assert!(validate(&text))));
    }
    group.finish();
}

fn hostile(c: &mut Criterion) {
    let mut group = c.benchmark_group("validate/variable-chain");
    for n in [1_000, 10_000, 100_000] {
        let text = chain(n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &text, |b, t| {
            b.iter(|| assert!(validate(t)))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("validate/doubling");
    for n in [15, 64, 10_000] {
        let text = doubling(n);
        group.bench_with_input(BenchmarkId::from_parameter(n), &text, |b, t| {
            // 15 levels fit in the cap (the last is 128 KiB); more are refused at the cap.
            b.iter(|| assert_eq!(validate(t), n <= 15))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("validate/services");
    group.sample_size(20);
    for n in [100, 1_000, 5_000] {
        let text = services(n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &text, |b, t| {
            b.iter(|| assert!(validate(t)))
        });
    }
    group.finish();
}

fn heap_table() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let agenthub = std::fs::read_to_string(dir.join("cloudrun-agenthub/pipeline.toml")).unwrap();
    let cases = [
        ("example cloudrun-agenthub", agenthub),
        ("variable chain of 100,000", chain(100_000)),
        ("doubling, 15 levels (fits)", doubling(15)),
        ("doubling, 64 levels (refused)", doubling(64)),
        ("doubling, 10,000 levels (refused)", doubling(10_000)),
        ("5,000 services", services(5_000)),
    ];
    println!("\npeak heap of one validation:");
    for (name, text) in &cases {
        let peak = peak_heap(text);
        println!(
            "  {name:<36} file {:>9} B   peak {:>11} B ({:.1}× the file)",
            text.len(),
            peak,
            peak as f64 / text.len() as f64
        );
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    examples(&mut c);
    hostile(&mut c);
    c.final_summary();
    heap_table();
}
