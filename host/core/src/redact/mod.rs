//! Keeping secret values out of everything the engine prints, stores or lets a plugin read.
//!
//! Every value the engine resolves is registered with the process-wide [`Redactor`] in all the
//! [spellings](forms) it could be passed on in. Text from plugins is redacted at the boundary
//! (`runtime::untrusted`), before it is stored, encoded or printed; the engine's own output
//! passes through it again on the way out. [`stream`] applies the same spellings to HTTP
//! bodies as they stream: masking a plugin's secrets in the responses it reads, and stopping a
//! request that carries a secret somewhere the secret is not granted.

pub mod forms;
pub mod stream;

use aho_corasick::{AhoCorasick, MatchKind};
use std::collections::HashSet;
use std::sync::{OnceLock, RwLock};

pub use forms::forms;

/// What a redacted value is replaced with in text.
pub const REDACTED: &str = "[REDACTED]";

/// Replaces every spelling of every registered secret value in text with [`REDACTED`].
#[derive(Debug, Default)]
pub struct Redactor {
    known: RwLock<Known>,
}

#[derive(Debug, Default)]
struct Known {
    /// The values registered, so registering one again (the local platform's token is read
    /// per request) costs a lookup, not its spellings.
    values: HashSet<String>,
    spellings: Vec<String>,
    matcher: Option<AhoCorasick>,
}

/// Adds the spellings of `value` at least `min_len` bytes long that `spellings` lacks.
fn add_spellings(spellings: &mut Vec<String>, value: &str, min_len: usize) {
    for form in forms(value) {
        if form.len() >= min_len && !spellings.contains(&form) {
            spellings.push(form);
        }
    }
}

/// A matcher for `spellings`, leftmost-longest so a value that contains another is found whole.
fn matcher(spellings: &[String]) -> Option<AhoCorasick> {
    AhoCorasick::builder()
        .match_kind(MatchKind::LeftmostLongest)
        .build(spellings)
        .ok()
}

impl Redactor {
    pub fn register(&self, value: &str) {
        if self.read().values.contains(value) {
            return;
        }
        let mut known = self.known.write().unwrap_or_else(|e| e.into_inner());
        if !known.values.insert(value.to_string()) {
            return;
        }
        add_spellings(&mut known.spellings, value, 0);
        known.matcher = matcher(&known.spellings);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Known> {
        self.known.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn redact(&self, text: &str) -> String {
        let known = self.read();
        let Some(matcher) = &known.matcher else {
            return text.to_string();
        };
        let mut out = String::with_capacity(text.len());
        matcher.replace_all_with(text, &mut out, |_, _, out| {
            out.push_str(REDACTED);
            true
        });
        out
    }

    /// Whether `text` holds a spelling of a registered value.
    pub fn reveals_a_secret(&self, text: &str) -> bool {
        self.read()
            .matcher
            .as_ref()
            .is_some_and(|m| m.is_match(text))
    }
}

/// The process-wide redactor. One for the whole process because a value resolved anywhere must
/// be hidden everywhere: plugin logs, the engine's own log lines, events, state records.
pub fn redactor() -> &'static Redactor {
    static REDACTOR: OnceLock<Redactor> = OnceLock::new();
    REDACTOR.get_or_init(Redactor::default)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    #[test]
    fn redaction_replaces_longest_values_first() {
        let r = Redactor::default();
        r.register("abcd");
        r.register("abcdefgh");
        assert_eq!(r.redact("x abcdefgh y abcd"), "x [REDACTED] y [REDACTED]");
        assert_eq!(r.redact("nothing here"), "nothing here");
    }

    #[test]
    fn encoded_and_escaped_spellings_are_redacted() {
        let r = Redactor::default();
        let secret = "tok\"en<&>value";
        r.register(secret);
        let json = serde_json::to_string(&serde_json::json!({ "id": secret })).unwrap();
        assert!(!r.redact(&json).contains("en<"), "{}", r.redact(&json));
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("x:{secret}"));
        assert!(r.reveals_a_secret(&b64));
        assert!(!r.reveals_a_secret(&r.redact(&b64)));
        assert!(r.reveals_a_secret(&hex::encode(secret)));
    }
}
