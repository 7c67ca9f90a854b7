//! Any bytes as pipeline.toml, with any environment and `--var`: validation accepts the file or
//! rejects it with diagnostics inside it; it never panics, overflows the stack or hangs.

#![no_main]

use engine::config::{self, Inputs};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    // The first line chooses the inputs: `ENV NAME=VALUE`; the rest is the file.
    let text = String::from_utf8_lossy(data);
    let (first, source) = text.split_once('\n').unwrap_or(("", &text));
    let mut words = first.split_whitespace();
    let inputs = Inputs {
        environment: words.next().filter(|w| *w != "-").map(str::to_string),
        process_env: Vec::new(),
        command_line: words
            .filter_map(|w| w.split_once('='))
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
        ..Inputs::default()
    };
    match config::parse_with("pipeline.toml", source, Path::new("/srv"), &inputs) {
        Ok(pipeline) => {
            let placed: usize = pipeline.waves().iter().map(Vec::len).sum();
            assert_eq!(placed, pipeline.services.len());
        }
        Err(e) => {
            assert!(!e.diagnostics.is_empty());
            for d in &e.diagnostics {
                assert!(d.span.start <= d.span.end && d.span.end <= source.len());
            }
            let _ = e.to_string();
            let _ = e.diagnostics_json();
        }
    }
});
