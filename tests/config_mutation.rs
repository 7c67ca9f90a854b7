//! Thousands of mutated pipelines through `engine validate`'s library entry points: each one is
//! accepted or rejected with diagnostics that point inside the file, never a panic, a stack
//! overflow or a hang. Seeded, so every run tries the same inputs and a failure reproduces.
//! (Time and memory bounds are measured in `cargo bench --bench config`; the coverage-guided
//! fuzz target over the same entry point is in fuzz/.)

mod support;

use engine::config::{self, Inputs, Pipeline};
use engine::runtime::{MemorySink, Runtime, RuntimeOptions};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Pipelines to mutate: every example, and a few written to reach the corners.
fn corpus() -> Vec<String> {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut texts: Vec<String> = std::fs::read_dir(&examples)
        .unwrap()
        .map(|e| e.unwrap().path().join("pipeline.toml"))
        .filter(|p| p.exists())
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    texts.sort();
    assert!(texts.len() >= 4, "the examples are the corpus");
    texts.push(
        r#"name = "corner"
[variables]
a = "${b}${b}"
b = "${c}${c}"
c = "x"
[environments.e.variables]
c = "${a}"
[plugins.all-at-once]
timeout = "30s"
[defaults]
provider = "local"
[services.one]
artifact = "/bin/true"
depends_on = ["two"]
env = { A = "${a}" }
[[services.one.checks]]
plugin = "http"
config = { path = "/${c}" }
[services.two]
image = "two:${c}"
"#
        .into(),
    );
    texts
}

/// Pieces that break TOML, variables, references and bounds in interesting ways.
const TOKENS: &[&str] = &[
    "${",
    "}",
    "${a}",
    "$${",
    "\"",
    "'''",
    "[",
    "]]",
    "{",
    "=",
    "\n",
    ",",
    "[[services.x.checks]]\n",
    "[services.api]\n",
    "depends_on = [\"api\", \"web\"]\n",
    "[environments.e.variables]\na = \"${b}\"\n",
    "timeout = \"300000000000years\"\n",
    "memory = \"999999999999TiB\"\n",
    "cpu = -1\n",
    "port = 99999999999999999999\n",
    "99999999999999999999",
    "-0x8000000000000000",
    "nan",
    "1e400",
    "é",
    "\u{0}",
    "\u{202e}",
    "\r\n",
];

#[derive(Debug, Clone)]
enum Mutation {
    Delete { at: usize, len: usize },
    Duplicate { at: usize, len: usize },
    Insert { at: usize, token: usize },
    Byte { at: usize, byte: u8 },
    Repeat { at: usize, len: usize, times: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1usize..40).prop_map(|(at, len)| Mutation::Delete { at, len }),
        (any::<usize>(), 1usize..200).prop_map(|(at, len)| Mutation::Duplicate { at, len }),
        (any::<usize>(), 0..TOKENS.len()).prop_map(|(at, token)| Mutation::Insert { at, token }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Byte { at, byte }),
        (any::<usize>(), 1usize..30, 2usize..2000).prop_map(|(at, len, times)| Mutation::Repeat {
            at,
            len,
            times
        }),
    ]
}

/// Applies a mutation to the bytes; the result may be any bytes, as a file may.
fn apply(text: &mut Vec<u8>, m: &Mutation) {
    let at = |i: usize, text: &Vec<u8>| {
        if text.is_empty() {
            0
        } else {
            i % (text.len() + 1)
        }
    };
    match *m {
        Mutation::Delete { at: i, len } => {
            let start = at(i, text);
            let end = (start + len).min(text.len());
            text.drain(start..end);
        }
        Mutation::Duplicate { at: i, len } => {
            let start = at(i, text);
            let end = (start + len).min(text.len());
            let piece = text[start..end].to_vec();
            text.splice(end..end, piece);
        }
        Mutation::Insert { at: i, token } => {
            let start = at(i, text);
            text.splice(start..start, TOKENS[token].bytes());
        }
        Mutation::Byte { at: i, byte } => {
            if !text.is_empty() {
                let i = i % text.len();
                text[i] = byte;
            }
        }
        Mutation::Repeat { at: i, len, times } => {
            let start = at(i, text);
            let end = (start + len).min(text.len());
            let piece = text[start..end].repeat(times);
            text.splice(end..end, piece);
        }
    }
}

/// A case: which corpus entry, its mutations, and the inputs it is read with.
fn case(corpus_len: usize) -> impl Strategy<Value = (usize, Vec<Mutation>, Inputs)> {
    let inputs = (
        proptest::option::weighted(
            0.3,
            prop_oneof![Just("staging"), Just("production"), Just("e")],
        ),
        proptest::option::weighted(
            0.2,
            (
                prop_oneof![Just("a"), Just("c"), Just("project")],
                ".{0,12}",
            ),
        ),
    )
        .prop_map(|(environment, vars)| Inputs {
            environment: environment.map(str::to_string),
            process_env: Vec::new(),
            command_line: vars.map(|(n, v)| (n.to_string(), v)).into_iter().collect(),
            ..Inputs::default()
        });
    (
        0..corpus_len,
        proptest::collection::vec(mutation(), 1..6),
        inputs,
    )
}

/// What must hold of any outcome.
fn check_outcome(source: &str, result: &Result<Pipeline, config::ConfigError>) {
    match result {
        Ok(pipeline) => {
            assert!(!pipeline.services.is_empty());
            let waves = pipeline.waves();
            let placed: usize = waves.iter().map(Vec::len).sum();
            assert_eq!(placed, pipeline.services.len(), "every service in one wave");
        }
        Err(e) => {
            assert!(!e.diagnostics.is_empty(), "a rejection says why");
            for d in &e.diagnostics {
                assert!(!d.message.is_empty());
                assert!(
                    d.span.start <= d.span.end && d.span.end <= source.len(),
                    "span {:?} outside a file of {} bytes: {}",
                    d.span,
                    source.len(),
                    d.message
                );
            }
            assert!(e.to_string().contains("problem"), "renders");
            assert_eq!(e.diagnostics_json().len(), e.diagnostics.len());
        }
    }
}

fn runner(cases: u32, seed: u8) -> TestRunner {
    let config = Config {
        cases,
        failure_persistence: None,
        rng_algorithm: RngAlgorithm::ChaCha,
        ..Config::default()
    };
    TestRunner::new_with_rng(
        config,
        TestRng::from_seed(RngAlgorithm::ChaCha, &[seed; 32]),
    )
}

fn mutated(corpus: &[String], index: usize, mutations: &[Mutation]) -> String {
    let mut bytes = corpus[index].clone().into_bytes();
    for m in mutations {
        apply(&mut bytes, m);
    }
    // A file that is not UTF-8 is refused before validation (`cannot read`); keep the text.
    String::from_utf8_lossy(&bytes).into_owned()
}

#[test]
fn thousands_of_mutated_pipelines_are_accepted_or_rejected_with_diagnostics() {
    let corpus = corpus();
    let base = PathBuf::from("/srv/project");
    let accepted = Cell::new(0usize);
    let rejected = Cell::new(0usize);
    runner(4000, 7)
        .run(&case(corpus.len()), |(index, mutations, inputs)| {
            let text = mutated(&corpus, index, &mutations);
            let result = config::parse_with("pipeline.toml", &text, &base, &inputs);
            check_outcome(&text, &result);
            let counter = if result.is_ok() { &accepted } else { &rejected };
            counter.set(counter.get() + 1);
            Ok(())
        })
        .unwrap();
    // A mutation test that never gets past the parser, or never fails it, tests little.
    let (accepted, rejected) = (accepted.get(), rejected.get());
    assert!(accepted > 200, "only {accepted} accepted");
    assert!(rejected > 1000, "only {rejected} rejected");
}

#[test]
fn mutated_pipelines_that_parse_go_through_the_plugins_checks_too() {
    let corpus = corpus();
    let base = PathBuf::from("/srv/project");
    let options = RuntimeOptions {
        check_only: true,
        sink: Arc::new(MemorySink::default()),
        cache_dir: Some(support::cache_dir()),
        ..RuntimeOptions::default()
    };
    let runtime = Runtime::new(options).unwrap();
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let checked = Cell::new(0usize);
    runner(600, 11)
        .run(&case(corpus.len()), |(index, mutations, inputs)| {
            let text = mutated(&corpus, index, &mutations[..1]);
            let inputs = Inputs {
                command_line: Vec::new(),
                ..inputs
            };
            let Ok(pipeline) = config::parse_with("pipeline.toml", &text, &base, &inputs) else {
                return Ok(());
            };
            let found = tokio.block_on(engine::runtime::examine_plugins(&pipeline, &runtime));
            for d in &found.diagnostics {
                assert!(!d.message.is_empty());
                assert!(d.span.end <= text.len(), "{d:?}");
            }
            checked.set(checked.get() + 1);
            Ok(())
        })
        .unwrap();
    assert!(
        checked.get() > 100,
        "only {} reached the plugins",
        checked.get()
    );
}
