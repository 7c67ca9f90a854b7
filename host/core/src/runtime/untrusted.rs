//! Text and names that come from a plugin, made safe to store and print.
//!
//! Everything a plugin returns or logs is hostile input: a newline in a log line can forge a
//! `::error` annotation in a CI log, an escape sequence can rewrite the terminal, and a name a
//! megabyte long can break every table it appears in. So at the boundary, before anything is
//! stored, encoded or printed: free text is redacted, its control characters (and Unicode's
//! bidirectional overrides) are escaped as `\u{…}`, and it is cut at [`MAX_TEXT`] bytes; names
//! (revision ids) must be short, printable and free of secrets, or the output is malformed.

use crate::redact::redactor;

/// The most bytes of one piece of plugin text (a message, a phase, a reason) kept.
pub const MAX_TEXT: usize = 4096;

/// The longest revision id or other name a plugin may return.
pub const MAX_NAME: usize = 256;

/// Whether a character must not reach a terminal or a CI log as it is.
fn is_unsafe(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Plugin text as it may be stored and printed: redacted, control characters escaped, bounded.
pub fn text(raw: &str) -> String {
    let redacted = redactor().redact(raw);
    let mut out = String::with_capacity(redacted.len().min(MAX_TEXT));
    for (i, c) in redacted.char_indices() {
        if out.len() >= MAX_TEXT {
            out.push_str(&format!("… ({} more bytes)", redacted.len() - i));
            break;
        }
        if is_unsafe(c) {
            out.push_str(&c.escape_unicode().to_string());
        } else {
            out.push(c);
        }
    }
    out
}

/// [`text`] in place.
pub fn clean(field: &mut String) {
    *field = text(field);
}

/// Checks a name a plugin returns (a revision id): not empty, at most [`MAX_NAME`] bytes, no
/// white space or control characters.
pub fn name(what: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if value.len() > MAX_NAME {
        return Err(format!(
            "{what} is {} bytes long, over the {MAX_NAME}-byte limit",
            value.len()
        ));
    }
    // A name is stored and printed as it is, so it must not carry a secret in any spelling.
    if redactor().reveals_a_secret(value) {
        return Err(format!("{what} {} contains a secret value", text(value)));
    }
    if let Some(c) = value.chars().find(|c| c.is_whitespace() || is_unsafe(*c)) {
        return Err(format!(
            "{what} {} contains the character {}",
            text(value),
            c.escape_unicode()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_text_is_bounded() {
        assert_eq!(text("ok\n::error::forged"), "ok\\u{a}::error::forged");
        assert_eq!(text("\u{1b}]0;title\u{7}"), "\\u{1b}]0;title\\u{7}");
        assert_eq!(text("a\u{202e}b"), "a\\u{202e}b");
        let long = "x".repeat(MAX_TEXT + 10);
        assert_eq!(
            text(&long),
            format!("{}… (10 more bytes)", "x".repeat(MAX_TEXT))
        );
        assert_eq!(text("plain – text"), "plain – text");
    }

    #[test]
    fn names_are_short_and_printable() {
        assert!(name("a revision id", "api-r1").is_ok());
        assert!(name("a revision id", "").is_err());
        assert!(
            name("a revision id", &"r".repeat(MAX_NAME + 1))
                .unwrap_err()
                .contains("257 bytes")
        );
        assert!(
            name("a revision id", "r1\n::error::x")
                .unwrap_err()
                .contains("\\u{a}")
        );
        assert!(name("a revision id", "r 1").is_err());
    }
}
