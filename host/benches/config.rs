//! Validation of pipeline.toml (`engine validate --skip-plugins`, `engine::config::parse_with`)
//! on ordinary and on hostile files: its time must grow linearly with the text, and the
//! hostile shapes (long chains of variables, values that double at each level, thousands of
//! services) must end quickly with a diagnostic. Figures and machine in docs/performance.md.

use criterion::{BenchmarkId, Criterion, Throughput};
use engine::config::{self, Inputs};
use std::fmt::Write as _;
use std::path::Path;

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

fn main() {
    let mut c = Criterion::default().configure_from_args();
    examples(&mut c);
    hostile(&mut c);
    c.final_summary();
}
