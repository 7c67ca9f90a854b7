//! How the CLI writes to the terminal: error lines in cargo's style, and the engine's own log
//! lines, with every registered secret value redacted.

use crate::runtime::secrets::redactor;
use std::io::Write;
use tracing_subscriber::EnvFilter;

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
            std::io::stderr().lock().write_all(text.as_bytes())?;
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

/// Sends `tracing` output to stderr at `level` (or per `ENGINE_LOG` directives).
pub fn init_logging(level: &str) {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(|| RedactingStderr(Vec::new()))
        .try_init();
}
