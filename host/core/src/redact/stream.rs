//! Looking for secret values in bodies as they stream, holding back only what could be the
//! start of one.

use aho_corasick::AhoCorasick;
use bytes::{Bytes, BytesMut};
use std::sync::Arc;

/// Spellings shorter than this are not searched for in bodies and headers: masking a short one
/// would corrupt ordinary data (a four-letter secret is a common word). They are still redacted
/// from output.
pub const MIN_STREAM_SPELLING: usize = 8;

/// The spellings of some secret values, ready to search bytes for.
#[derive(Debug)]
pub struct Patterns {
    matcher: AhoCorasick,
    longest: usize,
}

impl Patterns {
    /// The spellings of `values`; None when there is nothing to look for.
    pub fn of<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<Arc<Patterns>> {
        let mut spellings: Vec<String> = Vec::new();
        for value in values {
            super::add_spellings(&mut spellings, value, MIN_STREAM_SPELLING);
        }
        let longest = spellings.iter().map(String::len).max()?;
        let matcher = super::matcher(&spellings)?;
        Some(Arc::new(Patterns { matcher, longest }))
    }

    pub fn found_in(&self, bytes: &[u8]) -> bool {
        self.matcher.is_match(bytes)
    }

    /// Overwrites every spelling in `bytes` with `*` (same length, so framing stays valid);
    /// whether there was one.
    pub fn mask(&self, bytes: &mut [u8]) -> bool {
        let found: Vec<_> = self.matcher.find_iter(&*bytes).map(|m| m.range()).collect();
        for range in &found {
            bytes[range.clone()].fill(b'*');
        }
        !found.is_empty()
    }
}

/// What to do with a spelling found in a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFound {
    Mask,
    Refuse,
}

/// A spelling was found in a stream that must not carry one.
#[derive(Debug)]
pub struct Found;

/// The tail of a stream not passed on yet: a spelling could span it and the next chunk.
pub struct Window {
    patterns: Arc<Patterns>,
    on_found: OnFound,
    held: BytesMut,
}

impl Window {
    pub fn new(patterns: Arc<Patterns>, on_found: OnFound) -> Window {
        Window {
            patterns,
            on_found,
            held: BytesMut::new(),
        }
    }

    /// Takes the next chunk; gives back the bytes that can be passed on, every spelling in
    /// them already handled.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Bytes, Found> {
        self.held.extend_from_slice(chunk);
        match self.on_found {
            OnFound::Refuse if self.patterns.found_in(&self.held) => return Err(Found),
            OnFound::Refuse => {}
            OnFound::Mask => {
                self.patterns.mask(&mut self.held);
            }
        }
        let keep = (self.patterns.longest - 1).min(self.held.len());
        let ready = self.held.len() - keep;
        Ok(self.held.split_to(ready).freeze())
    }

    /// The end of the stream: what was held back (already searched).
    pub fn finish(&mut self) -> Bytes {
        self.held.split().freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(window: &mut Window, chunks: &[&[u8]]) -> Result<Vec<u8>, Found> {
        let mut out = Vec::new();
        for chunk in chunks {
            out.extend_from_slice(&window.push(chunk)?);
        }
        out.extend_from_slice(&window.finish());
        Ok(out)
    }

    #[test]
    fn a_value_split_across_chunks_is_masked() {
        let patterns = Patterns::of(["s3cret-value"]).unwrap();
        let mut window = Window::new(patterns, OnFound::Mask);
        let out = run(&mut window, &[b"before s3c", b"ret-", b"value after"]).unwrap();
        assert_eq!(out, b"before ************ after");
    }

    #[test]
    fn a_refused_value_is_stopped_before_it_is_whole() {
        let patterns = Patterns::of(["s3cret-value"]).unwrap();
        let mut window = Window::new(patterns.clone(), OnFound::Refuse);
        let passed = window.push(b"aaaa s3cret-va").unwrap();
        assert!(!patterns.found_in(&passed));
        assert!(passed.len() < b"aaaa ".len() + 1);
        assert!(window.push(b"lue").is_err());
        let mut clean = Window::new(patterns, OnFound::Refuse);
        assert_eq!(
            run(&mut clean, &[b"no ", b"secret here"]).unwrap(),
            b"no secret here"
        );
    }
}
