//! Constructors for the WIT `error` variant, and a description for people.

use crate::{Error, RateLimit};

/// Short constructors, so plugin code reads `Error::transient("…")`.
pub trait ErrorExt {
    fn invalid_config(msg: impl Into<String>) -> Self;
    fn unauthorized(msg: impl Into<String>) -> Self;
    fn not_found(msg: impl Into<String>) -> Self;
    fn conflict(msg: impl Into<String>) -> Self;
    fn rate_limited(msg: impl Into<String>, retry_after_ms: Option<u64>) -> Self;
    fn transient(msg: impl Into<String>) -> Self;
    fn fatal(msg: impl Into<String>) -> Self;
    /// The case's name in the WIT, such as `rate-limited`.
    fn kind(&self) -> &'static str;
    /// Whether the host would retry this error.
    fn is_retryable(&self) -> bool;
    /// `kind: message`, for people.
    fn describe(&self) -> String;
    /// The same error (same case, so the host acts the same) with `what` put before the
    /// message: `what: message`.
    fn context(self, what: impl Into<String>) -> Self;
}

impl ErrorExt for Error {
    fn invalid_config(msg: impl Into<String>) -> Self {
        Error::InvalidConfig(msg.into())
    }
    fn unauthorized(msg: impl Into<String>) -> Self {
        Error::Unauthorized(msg.into())
    }
    fn not_found(msg: impl Into<String>) -> Self {
        Error::NotFound(msg.into())
    }
    fn conflict(msg: impl Into<String>) -> Self {
        Error::Conflict(msg.into())
    }
    fn rate_limited(msg: impl Into<String>, retry_after_ms: Option<u64>) -> Self {
        Error::RateLimited(RateLimit {
            message: msg.into(),
            retry_after_ms,
        })
    }
    fn transient(msg: impl Into<String>) -> Self {
        Error::Transient(msg.into())
    }
    fn fatal(msg: impl Into<String>) -> Self {
        Error::Fatal(msg.into())
    }
    fn kind(&self) -> &'static str {
        match self {
            Error::InvalidConfig(_) => "invalid-config",
            Error::Unauthorized(_) => "unauthorized",
            Error::NotFound(_) => "not-found",
            Error::Conflict(_) => "conflict",
            Error::RateLimited(_) => "rate-limited",
            Error::Transient(_) => "transient",
            Error::Fatal(_) => "fatal",
        }
    }
    fn is_retryable(&self) -> bool {
        matches!(self, Error::RateLimited(_) | Error::Transient(_))
    }
    fn describe(&self) -> String {
        match self {
            Error::InvalidConfig(m)
            | Error::Unauthorized(m)
            | Error::NotFound(m)
            | Error::Conflict(m)
            | Error::Transient(m)
            | Error::Fatal(m) => format!("{}: {m}", self.kind()),
            Error::RateLimited(r) => match r.retry_after_ms {
                Some(ms) => format!("rate-limited (retry after {ms} ms): {}", r.message),
                None => format!("rate-limited: {}", r.message),
            },
        }
    }
    fn context(mut self, what: impl Into<String>) -> Self {
        let message = match &mut self {
            Error::InvalidConfig(m)
            | Error::Unauthorized(m)
            | Error::NotFound(m)
            | Error::Conflict(m)
            | Error::Transient(m)
            | Error::Fatal(m) => m,
            Error::RateLimited(r) => &mut r.message,
        };
        *message = format!("{}: {message}", what.into());
        self
    }
}

impl From<serde_json::Error> for Error {
    /// JSON that cannot be parsed is a configuration problem when it is the plugin's config, and a
    /// platform problem otherwise; plugins that know which should map it themselves.
    fn from(e: serde_json::Error) -> Self {
        Error::Fatal(format!("invalid JSON: {e}"))
    }
}
