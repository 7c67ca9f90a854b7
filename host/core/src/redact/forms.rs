//! The spellings of a secret value a plugin or a log could carry.
//!
//! A value that comes back from a host that reflects it can be passed on encoded: hex, base64
//! (either alphabet, any alignment inside a longer encoded text), percent-encoded, or escaped
//! by JSON or XML on its way into a report. Redaction and the egress scans look for all of
//! them; a value the plugin transforms in other ways (reversed, encrypted) cannot be told from
//! other data, which docs/sandbox.md says.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};

/// Spellings shorter than this are not looked for: they would match ordinary text.
const MIN_FORM_LEN: usize = 4;

/// Every spelling of `value` looked for, the value itself first, without duplicates.
pub fn forms(value: &str) -> Vec<String> {
    let mut out = vec![value.to_string()];
    let bytes = value.as_bytes();
    let mut add = |form: String| {
        if form.len() >= MIN_FORM_LEN && !out.contains(&form) {
            out.push(form);
        }
    };
    add(hex::encode(bytes));
    add(hex::encode_upper(bytes));
    add(form_urlencoded::byte_serialize(bytes).collect());
    add(json_escaped(value));
    add(xml_escaped(value));
    for shift in 0..3 {
        let standard = base64_core(bytes, shift, &STANDARD_NO_PAD);
        add(standard.clone());
        add(standard.replace('+', "-").replace('/', "_"));
        add(base64_core(bytes, shift, &URL_SAFE_NO_PAD));
    }
    out
}

/// The base64 characters that depend on `value` alone when it is encoded `shift` bytes after
/// a 3-byte boundary of a longer text: the characters shared with the neighbours are cut.
fn base64_core(value: &[u8], shift: usize, engine: &impl Engine) -> String {
    let mut padded = vec![0u8; shift];
    padded.extend_from_slice(value);
    let encoded = engine.encode(&padded);
    let first = (8 * shift).div_ceil(6);
    let last = (8 * padded.len()) / 6;
    encoded.get(first..last).unwrap_or_default().to_string()
}

/// The value as it appears inside a JSON string.
fn json_escaped(value: &str) -> String {
    let quoted = serde_json::to_string(value).unwrap_or_default();
    quoted
        .strip_prefix('"')
        .and_then(|q| q.strip_suffix('"'))
        .unwrap_or_default()
        .to_string()
}

/// The value as it appears in XML text or an attribute.
fn xml_escaped(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_inside_longer_text_is_found_at_every_alignment() {
        let secret = "s3cr3t-T0ken/value+";
        let spellings = forms(secret);
        for prefix in ["", "a", "ab", "abc", "abcd"] {
            for suffix in ["", "z", "zz"] {
                let text = format!("{prefix}{secret}{suffix}");
                for encoded in [
                    base64::engine::general_purpose::STANDARD.encode(&text),
                    base64::engine::general_purpose::URL_SAFE.encode(&text),
                    base64::engine::general_purpose::STANDARD_NO_PAD.encode(&text),
                ] {
                    assert!(
                        spellings
                            .iter()
                            .skip(1)
                            .any(|f| encoded.contains(f.as_str())),
                        "{encoded} of {text:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn hex_percent_json_and_xml_spellings_are_included() {
        let secret = "a\"b\\c&d<e f";
        let spellings = forms(secret);
        for expected in [
            secret.to_string(),
            hex::encode(secret),
            hex::encode_upper(secret),
            "a%22b%5Cc%26d%3Ce+f".to_string(),
            "a\\\"b\\\\c&d<e f".to_string(),
            "a&quot;b\\c&amp;d&lt;e f".to_string(),
        ] {
            assert!(spellings.contains(&expected), "{expected} in {spellings:?}");
        }
    }
}
