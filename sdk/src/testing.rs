//! What the host provides, outside WebAssembly: test a plugin's logic natively with `cargo test`.
//!
//! When a plugin is compiled for the host machine instead of `wasm32-wasip2`, the SDK's wrappers
//! fall back to these: log lines are kept for [`take_logs`], secrets come from [`grant_secret`],
//! the clock can be pinned with [`set_now_ms`], and [`crate::http`] uses a real HTTP client, so
//! tests can run the plugin against a server on loopback. Every piece of state is per thread,
//! which keeps parallel tests apart.

use crate::log::Level;

/// One line a plugin logged.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    pub level: Level,
    pub message: String,
    pub fields: Vec<(String, String)>,
}

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use super::LogLine;
    use crate::{Error, ErrorExt};
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;

    thread_local! {
        pub static LOGS: RefCell<Vec<LogLine>> = const { RefCell::new(Vec::new()) };
        pub static SECRETS: RefCell<HashMap<String, String>> = RefCell::new(HashMap::new());
        pub static NOW_MS: Cell<Option<u64>> = const { Cell::new(None) };
    }

    pub fn placeholder(name: &str) -> String {
        format!("engine-secret-{name}-native")
    }

    pub fn open_secret(name: &str) -> Result<String, Error> {
        SECRETS.with(|s| {
            if s.borrow().contains_key(name) {
                Ok(placeholder(name))
            } else {
                Err(Error::unauthorized(format!(
                    "secret '{name}' is not granted (call engine_sdk::testing::grant_secret in the test)"
                )))
            }
        })
    }
}

/// Makes `name` available to [`crate::secrets::Secret::open`] in this thread.
#[cfg(not(target_arch = "wasm32"))]
pub fn grant_secret(name: &str, value: &str) {
    native::SECRETS.with(|s| s.borrow_mut().insert(name.into(), value.into()));
}

/// Replaces secret placeholders in a header value, as the host does for granted hosts.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn substitute_secrets(value: &str) -> String {
    native::SECRETS.with(|s| {
        s.borrow()
            .iter()
            .fold(value.to_string(), |v, (name, secret)| {
                v.replace(&native::placeholder(name), secret)
            })
    })
}

#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn open_secret(name: &str) -> Result<String, crate::Error> {
    native::open_secret(name)
}

/// Returns and clears the lines logged in this thread.
#[cfg(not(target_arch = "wasm32"))]
pub fn take_logs() -> Vec<LogLine> {
    native::LOGS.with(|l| std::mem::take(&mut *l.borrow_mut()))
}

#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn record_log(level: Level, message: &str, fields: Vec<(String, String)>) {
    native::LOGS.with(|l| {
        l.borrow_mut().push(LogLine {
            level,
            message: message.to_string(),
            fields,
        })
    });
}

/// Pins [`crate::clock::now_ms`] for this thread.
#[cfg(not(target_arch = "wasm32"))]
pub fn set_now_ms(now: u64) {
    native::NOW_MS.with(|n| n.set(Some(now)));
}

#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn native_now_ms() -> u64 {
    native::NOW_MS.with(|n| n.get()).unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    })
}
