//! How the CLI writes to the terminal: error lines in cargo's style, and the engine's own log
//! lines, with every registered secret value redacted.

use crate::runtime::secrets::redactor;
use std::io::Write;
use std::sync::RwLock;
use tracing_subscriber::EnvFilter;

/// While live progress is drawn, log lines go above it instead of through it.
static PROGRESS: RwLock<Option<indicatif::MultiProgress>> = RwLock::new(None);

/// Routes log lines above `progress` (or straight to stderr again, with `None`).
pub fn log_above(progress: Option<indicatif::MultiProgress>) {
    *PROGRESS.write().unwrap_or_else(|e| e.into_inner()) = progress;
}

/// Prints `error: message` to stderr, continuation lines indented, secrets redacted.
pub fn error(message: &str) {
    let message = redactor().redact(message);
    let mut lines = message.lines();
    let mut stderr = std::io::stderr().lock();
    if let Some(first) = lines.next() {
        let _ = writeln!(stderr, "error: {first}");
    }
    for line in lines {
        let _ = writeln!(stderr, "  {line}");
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
        .with_writer(|| RedactingStderr(Vec::new()))
        .try_init();
}
