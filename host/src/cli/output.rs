//! How the CLI writes to the terminal: error lines in cargo's style, and the engine's own log
//! lines, with every registered secret value redacted, and colour only where it belongs.

use crate::redact::redactor;
use std::io::{IsTerminal, Write};
use std::sync::RwLock;
use tracing_subscriber::EnvFilter;

/// While live progress is drawn, log lines go above it instead of through it.
static PROGRESS: RwLock<Option<indicatif::MultiProgress>> = RwLock::new(None);

/// Routes log lines above `progress` (or straight to stderr again, with `None`).
pub fn log_above(progress: Option<indicatif::MultiProgress>) {
    *PROGRESS.write().unwrap_or_else(|e| e.into_inner()) = progress;
}

/// Whether stderr is a terminal that shows more than plain text (not `TERM=dumb`; an unset
/// `TERM` is no reason to think so): live progress is drawn only there.
pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal() && !std::env::var("TERM").is_ok_and(|t| t == "dumb")
}

/// Whether what goes to stderr is coloured: never when `NO_COLOR` is set (to anything but the
/// empty string), always when `CLICOLOR_FORCE` is (to anything but `0`), otherwise only at a
/// terminal (see [`stderr_is_terminal`]). A log file or a CI log gets no escape codes.
pub fn colour_stderr() -> bool {
    colour_choice(
        std::env::var_os("NO_COLOR").as_deref(),
        std::env::var_os("CLICOLOR_FORCE").as_deref(),
        stderr_is_terminal(),
    )
}

fn colour_choice(
    no_color: Option<&std::ffi::OsStr>,
    force: Option<&std::ffi::OsStr>,
    terminal: bool,
) -> bool {
    if no_color.is_some_and(|v| !v.is_empty()) {
        return false;
    }
    if force.is_some_and(|v| !v.is_empty() && v != "0") {
        return true;
    }
    terminal
}

/// `error` in bold red where colour belongs, plain elsewhere.
fn error_label() -> &'static str {
    if colour_stderr() {
        "\x1b[1;31merror\x1b[0m"
    } else {
        "error"
    }
}

/// Prints `error: message` to stderr, continuation lines indented, secrets redacted.
pub fn error(message: &str) {
    let message = redactor().redact(message);
    let mut lines = message.lines();
    let mut stderr = std::io::stderr().lock();
    if let Some(first) = lines.next() {
        let _ = writeln!(stderr, "{}: {first}", error_label());
    }
    for line in lines {
        let _ = writeln!(stderr, "  {line}");
    }
}

/// The version of the JSON documents `status`, `history`, `plan` and `validate` print.
pub const OUTPUT_SCHEMA: u32 = 1;

/// A JSON document as printed or written: pretty, secrets redacted.
pub fn json_text(value: &serde_json::Value) -> String {
    let text = serde_json::to_string_pretty(value).expect("JSON values always serialise");
    redactor().redact(&text)
}

/// Prints text for people on stdout, secrets redacted: state read back may hold a value the
/// process that wrote it did not know was secret.
pub fn print_text(text: &str) {
    print!("{}", redactor().redact(text));
}

/// Prints a JSON document on stdout, secrets redacted.
pub fn print_json(value: &serde_json::Value) {
    println!("{}", json_text(value));
}

/// Prints a pipeline's problems in place and gives the exit code for them: what every command
/// does with a pipeline it cannot use.
pub fn config_failure(e: crate::config::ConfigError) -> super::CommandError {
    error_report(&e.to_string());
    super::CommandError::reported(super::exit::USAGE)
}

/// Prints a report whose lines already say `error: …` (rendered diagnostics), secrets
/// redacted.
pub fn error_report(report: &str) {
    let report = redactor().redact(report);
    let label = error_label();
    let mut stderr = std::io::stderr().lock();
    for line in report.lines() {
        let _ = match line.strip_prefix("error:") {
            Some(rest) => writeln!(stderr, "{label}:{rest}"),
            None => writeln!(stderr, "{line}"),
        };
    }
}

/// A stderr writer that redacts each log record before it is written.
struct RedactingStderr(Vec<u8>);

impl Write for RedactingStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.0.is_empty() {
            let text = redactor().redact(&String::from_utf8_lossy(&self.0));
            match &*PROGRESS.read().unwrap_or_else(|e| e.into_inner()) {
                Some(progress) => progress.println(text.trim_end_matches('\n'))?,
                None => std::io::stderr().lock().write_all(text.as_bytes())?,
            }
            self.0.clear();
        }
        Ok(())
    }
}

impl Drop for RedactingStderr {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// Sends `tracing` output to stderr at `level` (or per `ENGINE_LOG` directives). What plugins
/// and hooks say at `info` is shown unless the level asks for less.
pub fn init_logging(level: &str) {
    let directives = match level {
        "warn" => "warn,plugin=info,hook=info",
        other => other,
    };
    let filter = EnvFilter::try_new(directives).unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(colour_stderr())
        .with_writer(|| RedactingStderr(Vec::new()))
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::colour_choice;
    use std::ffi::OsStr;

    #[test]
    fn colour_follows_no_color_then_clicolor_force_then_the_terminal() {
        let v = |s: &'static str| Some(OsStr::new(s));
        assert!(colour_choice(None, None, true));
        assert!(!colour_choice(None, None, false));
        assert!(!colour_choice(v("1"), None, true));
        assert!(!colour_choice(v("1"), v("1"), true), "NO_COLOR wins");
        assert!(
            colour_choice(v(""), None, true),
            "an empty NO_COLOR is unset"
        );
        assert!(colour_choice(None, v("1"), false));
        assert!(!colour_choice(None, v("0"), false));
    }
}
