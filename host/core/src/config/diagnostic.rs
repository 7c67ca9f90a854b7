//! Problems found in pipeline.toml, each tied to the place in the file it is about, rendered the
//! way cargo renders compiler errors:
//!
//! ```text
//! error: unknown key `provder` in [services.api]
//!   --> pipeline.toml:12:1
//!    |
//! 12 | provder = "cloud-run"
//!    | ^^^^^^^
//!    = help: did you mean `provider`?
//! ```

use std::fmt::Write as _;
use std::ops::Range;

/// One problem, with the byte range of the file it points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub message: String,
    pub span: Range<usize>,
    pub help: Option<String>,
}

/// Whether a problem stops the pipeline from being used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Error,
    /// Worth knowing, but a run may go on (a grant the plugin does not use, say).
    Warning,
}

impl Severity {
    pub fn label(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

impl Diagnostic {
    pub fn new(message: impl Into<String>, span: Range<usize>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            message: message.into(),
            span,
            help: None,
        }
    }

    pub fn warning(message: impl Into<String>, span: Range<usize>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::new(message, span)
        }
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// The diagnostic as a JSON object (`engine validate --output json`): positions are
    /// 1-based lines and columns in characters, the end exclusive.
    pub fn to_json(&self, file: &str, source: &str) -> serde_json::Value {
        let (line, column) = line_col(source, self.span.start);
        let (end_line, end_column) = line_col(source, self.span.end.max(self.span.start));
        serde_json::json!({
            "file": file,
            "line": line,
            "column": column,
            "end_line": end_line,
            "end_column": end_column,
            "severity": self.severity.label(),
            "message": self.message,
            "hint": self.help,
        })
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(source.len());
    // A span from a plugin's diagnostic may fall inside a character: go back to its start.
    while !source.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// Renders one diagnostic against the file it came from.
pub fn render(file: &str, source: &str, d: &Diagnostic) -> String {
    let (line, col) = line_col(source, d.span.start);
    let text = source.lines().nth(line - 1).unwrap_or("");
    let gutter = line.to_string().len();
    let pad = " ".repeat(gutter);
    let start_col = col - 1;
    let width = {
        let end = d.span.end.min(source.len()).max(d.span.start);
        let (end_line, end_col) = line_col(source, end);
        if end_line == line {
            (end_col - col).max(1)
        } else {
            text.chars().count().saturating_sub(start_col).max(1)
        }
    };
    let mut out = String::new();
    let _ = writeln!(out, "{}: {}", d.severity.label(), d.message);
    let _ = writeln!(out, "{pad}--> {file}:{line}:{col}");
    let _ = writeln!(out, "{pad} |");
    let _ = writeln!(out, "{line} | {text}");
    let _ = writeln!(
        out,
        "{pad} | {}{}",
        " ".repeat(start_col),
        "^".repeat(width)
    );
    if let Some(help) = &d.help {
        let _ = writeln!(out, "{pad} = help: {help}");
    }
    out
}

/// The closest of `candidates` to `word`, if one is close enough to be a likely typo.
pub fn nearest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// "service `a`" or "services `a`, `b` and `c`", for one problem that several services share.
pub fn services_phrase<S: AsRef<str>>(names: &[S]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("`{}`", n.as_ref())).collect();
    match quoted.as_slice() {
        [] => "no services".to_string(),
        [one] => format!("service {one}"),
        [rest @ .., last] => format!("services {} and {last}", rest.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_cargo() {
        let source = "name = \"shop\"\n[services.api]\nprovder = \"x\"\n";
        let start = source.find("provder").unwrap();
        let d = Diagnostic::new("unknown key `provder` in [services.api]", start..start + 7)
            .help("did you mean `provider`?");
        assert_eq!(
            render("pipeline.toml", source, &d),
            "error: unknown key `provder` in [services.api]\n --> pipeline.toml:3:1\n  |\n3 | provder = \"x\"\n  | ^^^^^^^\n  = help: did you mean `provider`?\n"
        );
    }

    #[test]
    fn suggests_only_close_names() {
        assert_eq!(
            nearest("provder", ["provider", "strategy"]),
            Some("provider")
        );
        assert_eq!(nearest("zzz", ["provider", "strategy"]), None);
    }
}
