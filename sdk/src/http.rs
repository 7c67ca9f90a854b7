//! A typed HTTP client over `wasi:http`, for talking to a platform's API.
//!
//! - JSON request and response bodies ([`RequestBuilder::json`], [`Response::json`]).
//! - Status codes become the WIT [`Error`] cases the host acts on ([`error_for_status`]).
//! - Bounded retries with exponential backoff and full jitter; `Retry-After` is honoured; a 4xx
//!   other than 408 and 429 is never retried ([`RetryPolicy`]).
//!
//! In WebAssembly the requests go through the host, which checks them against the plugin's
//! grants. Natively (a plugin's `cargo test`) they go through a real HTTP client.

use crate::secrets::Secret;
use crate::{Error, ErrorExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::{Duration, SystemTime};

/// When and how often a failed request is tried again.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included. 1 means no retry.
    pub max_attempts: u32,
    /// The backoff before the first retry; it doubles with each retry.
    pub base_delay: Duration,
    /// The longest backoff.
    pub max_delay: Duration,
    /// The longest `Retry-After` the client waits for itself. A server that asks for more gets
    /// a `rate-limited` error back to the host, which waits outside the plugin's deadline.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(20),
        }
    }
}

impl RetryPolicy {
    /// One attempt, no retry: for requests that must not be repeated.
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..Default::default()
        }
    }

    /// The longest backoff before retry number `retry` (0 for the first retry): the base delay
    /// doubled `retry` times, capped at `max_delay`.
    pub fn backoff_ceiling(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX);
        self.base_delay.saturating_mul(factor).min(self.max_delay)
    }

    /// The backoff before retry number `retry`: a random duration up to the ceiling ("full
    /// jitter"), so that many clients do not retry in step.
    pub fn backoff(&self, retry: u32) -> Duration {
        let ceiling = self.backoff_ceiling(retry).as_millis() as u64;
        Duration::from_millis(fastrand::u64(0..=ceiling))
    }
}

/// Whether a status is worth retrying: 408, 429 and every 5xx.
pub fn is_retryable_status(status: u16) -> bool {
    status == 408 || status == 429 || (500..600).contains(&status)
}

/// Parses a `Retry-After` value: delay-seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The WIT error for a non-success status: 400 and 422 `invalid-config`, 401 and 403
/// `unauthorized`, 404 and 410 `not-found`, 409 and 412 `conflict`, 429 `rate-limited`, 408 and
/// 5xx `transient`, any other status `fatal`.
pub fn error_for_status(status: u16, retry_after: Option<Duration>, message: String) -> Error {
    match status {
        400 | 422 => Error::invalid_config(message),
        401 | 403 => Error::unauthorized(message),
        404 | 410 => Error::not_found(message),
        409 | 412 => Error::conflict(message),
        429 => Error::rate_limited(message, retry_after.map(|d| d.as_millis() as u64)),
        408 | 500..=599 => Error::transient(message),
        _ => Error::fatal(message),
    }
}

/// An HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Header names are lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON. A body that does not parse is a `fatal` error naming the type.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.body).map_err(|e| {
            Error::fatal(format!(
                "the response (HTTP {}) is not the expected {}: {e}",
                self.status,
                std::any::type_name::<T>()
            ))
        })
    }

    /// A short description of an error response: the API's own message when the body is one of
    /// the usual JSON error shapes (`{"error":{"message":…}}`, `{"message":…}`), otherwise the
    /// start of the body.
    pub fn error_message(&self) -> String {
        let detail = serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| {
                v.pointer("/error/message")
                    .or_else(|| v.get("message"))
                    .or_else(|| v.get("Message"))
                    .or_else(|| v.get("error"))
                    .and_then(|m| m.as_str().map(str::to_string))
            })
            .unwrap_or_else(|| {
                let text = self.text();
                let text = text.trim();
                match text.char_indices().nth(300) {
                    Some((i, _)) => format!("{}…", &text[..i]),
                    None => text.to_string(),
                }
            });
        if detail.is_empty() {
            format!("HTTP {}", self.status)
        } else {
            format!("HTTP {}: {detail}", self.status)
        }
    }
}

/// A failure below HTTP: the request never got a status.
#[derive(Debug, Clone, PartialEq)]
pub enum TransportError {
    /// The engine's sandbox refused the request: the pipeline does not grant this destination.
    Denied(String),
    /// Connecting or waiting for the response took too long.
    Timeout(String),
    /// Anything else (refused connection, DNS, TLS, a broken stream).
    Failed(String),
}

impl TransportError {
    fn into_error(self, method: &str, url: &str) -> Error {
        match self {
            TransportError::Denied(m) => Error::fatal(format!(
                "{method} {url} was denied by the engine's sandbox ({m}); grant the destination in the pipeline's [plugins] table"
            )),
            TransportError::Timeout(m) => {
                Error::transient(format!("{method} {url} timed out: {m}"))
            }
            TransportError::Failed(m) => Error::transient(format!("{method} {url} failed: {m}")),
        }
    }
}

/// An HTTP client. Cheap to create; holds only its settings.
#[derive(Debug, Clone)]
pub struct Client {
    retry: RetryPolicy,
    timeout: Duration,
}

impl Default for Client {
    fn default() -> Self {
        Client {
            retry: RetryPolicy::default(),
            timeout: Duration::from_secs(30),
        }
    }
}

impl Client {
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Sets the per-attempt timeout (connect and first byte).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn request(&self, method: &str, url: &str) -> RequestBuilder<'_> {
        RequestBuilder {
            client: self,
            method: method.to_ascii_uppercase(),
            url: url.to_string(),
            headers: Vec::new(),
            body: None,
            error: None,
        }
    }
    pub fn get(&self, url: &str) -> RequestBuilder<'_> {
        self.request("GET", url)
    }
    pub fn post(&self, url: &str) -> RequestBuilder<'_> {
        self.request("POST", url)
    }
    pub fn put(&self, url: &str) -> RequestBuilder<'_> {
        self.request("PUT", url)
    }
    pub fn patch(&self, url: &str) -> RequestBuilder<'_> {
        self.request("PATCH", url)
    }
    pub fn delete(&self, url: &str) -> RequestBuilder<'_> {
        self.request("DELETE", url)
    }
}

/// A request being built. Nothing is sent until [`RequestBuilder::send`].
#[derive(Debug)]
pub struct RequestBuilder<'c> {
    client: &'c Client,
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
    error: Option<Error>,
}

impl RequestBuilder<'_> {
    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_ascii_lowercase(), value.into()));
        self
    }

    /// `Authorization: Bearer <secret>`; the host puts the value in.
    pub fn bearer(self, secret: &Secret) -> Self {
        self.header("authorization", secret.bearer())
    }

    /// Signed by the host with the AWS credentials `secret` stands for (Signature Version 4,
    /// for `service`'s signing name in `region`); the plugin never sees a key.
    pub fn aws_sigv4(self, secret: &Secret, service: &str, region: &str) -> Self {
        self.header("x-engine-aws-sigv4", secret.aws_sigv4(service, region))
    }

    /// A JSON body, with `content-type: application/json`.
    pub fn json<T: Serialize + ?Sized>(mut self, body: &T) -> Self {
        match serde_json::to_vec(body) {
            Ok(bytes) => {
                self.body = Some(bytes);
                self.header("content-type", "application/json")
            }
            Err(e) => {
                self.error = Some(Error::fatal(format!("cannot encode the request body: {e}")));
                self
            }
        }
    }

    /// A raw body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// Sends the request, retrying per the client's policy, and returns the response when its
    /// status is below 400. Any other status becomes an [`Error`] (see [`error_for_status`]).
    pub fn send(self) -> Result<Response, Error> {
        self.send_with(&mut |req| transport::send(req), &mut |d| {
            std::thread::sleep(d)
        })
    }

    /// Sends the request once and returns the response whatever its status: for probes and
    /// checks that judge the status themselves. Only a request that got no answer (refused,
    /// timed out, denied by the sandbox) is an error.
    pub fn send_once(self) -> Result<Response, Error> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let raw = RawRequest {
            method: &self.method,
            url: &self.url,
            headers: &self.headers,
            body: self.body.as_deref(),
            timeout: self.client.timeout,
        };
        transport::send(&raw).map_err(|e| e.into_error(&self.method, &self.url))
    }

    /// Sends and parses the JSON response.
    pub fn send_json<T: DeserializeOwned>(self) -> Result<T, Error> {
        self.send()?.json()
    }

    /// [`RequestBuilder::send`] with the transport and the sleep passed in; the retry logic lives
    /// here so it can be tested without a network or a real clock.
    pub(crate) fn send_with(
        self,
        transport: &mut dyn FnMut(&RawRequest<'_>) -> Result<Response, TransportError>,
        sleep: &mut dyn FnMut(Duration),
    ) -> Result<Response, Error> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let policy = &self.client.retry;
        let raw = RawRequest {
            method: &self.method,
            url: &self.url,
            headers: &self.headers,
            body: self.body.as_deref(),
            timeout: self.client.timeout,
        };
        let mut retry = 0;
        loop {
            let attempt = retry + 1;
            let last = attempt >= policy.max_attempts;
            let (error, delay) = match transport(&raw) {
                Ok(resp) if resp.status < 400 => return Ok(resp),
                Ok(resp) => {
                    let retry_after = resp
                        .header("retry-after")
                        .and_then(|v| parse_retry_after(v, SystemTime::now()));
                    let error = error_for_status(resp.status, retry_after, resp.error_message());
                    if !is_retryable_status(resp.status) || last {
                        return Err(error);
                    }
                    match retry_after {
                        Some(wait) if wait > policy.max_retry_after => return Err(error),
                        Some(wait) => (error, wait),
                        None => (error, policy.backoff(retry)),
                    }
                }
                Err(TransportError::Denied(m)) => {
                    return Err(TransportError::Denied(m).into_error(&self.method, &self.url));
                }
                Err(e) => {
                    let error = e.into_error(&self.method, &self.url);
                    if last {
                        return Err(error);
                    }
                    (error, policy.backoff(retry))
                }
            };
            crate::log::write(
                crate::log::Level::Debug,
                "retrying request",
                &[
                    ("method", &self.method),
                    ("url", &self.url),
                    ("attempt", &attempt.to_string()),
                    ("delay_ms", &delay.as_millis().to_string()),
                    ("error", &error.describe()),
                ],
            );
            sleep(delay);
            retry += 1;
        }
    }
}

/// What a transport sends.
#[derive(Debug)]
pub(crate) struct RawRequest<'a> {
    pub method: &'a str,
    pub url: &'a str,
    pub headers: &'a [(String, String)],
    pub body: Option<&'a [u8]>,
    pub timeout: Duration,
}

#[cfg(target_arch = "wasm32")]
mod transport {
    //! Requests through the host's `wasi:http/outgoing-handler`.
    use super::{RawRequest, Response, TransportError};
    use wasip2::http::outgoing_handler;
    use wasip2::http::types::{
        ErrorCode, Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, RequestOptions,
        Scheme,
    };
    use wasip2::io::streams::StreamError;

    fn method(m: &str) -> Method {
        match m {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "CONNECT" => Method::Connect,
            "OPTIONS" => Method::Options,
            "TRACE" => Method::Trace,
            "PATCH" => Method::Patch,
            other => Method::Other(other.to_string()),
        }
    }

    fn transport_error(code: ErrorCode) -> TransportError {
        match code {
            ErrorCode::HttpRequestDenied => {
                TransportError::Denied("destination not granted".into())
            }
            ErrorCode::DestinationIpProhibited => {
                TransportError::Denied("destination address not granted".into())
            }
            ErrorCode::ConnectionTimeout
            | ErrorCode::ConnectionReadTimeout
            | ErrorCode::ConnectionWriteTimeout
            | ErrorCode::HttpResponseTimeout => TransportError::Timeout(format!("{code:?}")),
            other => TransportError::Failed(format!("{other:?}")),
        }
    }

    fn failed(what: &str) -> TransportError {
        TransportError::Failed(what.to_string())
    }

    pub fn send(req: &RawRequest<'_>) -> Result<Response, TransportError> {
        let uri: http::Uri = req
            .url
            .parse()
            .map_err(|e| TransportError::Failed(format!("invalid URL {}: {e}", req.url)))?;
        let scheme = match uri.scheme_str() {
            Some("http") => Scheme::Http,
            Some("https") => Scheme::Https,
            _ => return Err(failed("the URL must start with http:// or https://")),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| failed("the URL has no host"))?
            .to_string();
        let path = uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());

        let fields = Fields::new();
        for (name, value) in req.headers {
            fields
                .append(name, value.as_bytes())
                .map_err(|e| TransportError::Failed(format!("header {name}: {e:?}")))?;
        }
        let outgoing = OutgoingRequest::new(fields);
        outgoing
            .set_method(&method(req.method))
            .map_err(|()| failed("invalid method"))?;
        outgoing
            .set_scheme(Some(&scheme))
            .map_err(|()| failed("invalid scheme"))?;
        outgoing
            .set_authority(Some(&authority))
            .map_err(|()| failed("invalid host"))?;
        outgoing
            .set_path_with_query(Some(&path))
            .map_err(|()| failed("invalid path"))?;
        // A request without a body never opens one: the host then knows the body is empty
        // and sends at once, instead of waiting for the plugin to finish an empty body.
        let body = match req.body {
            Some(_) => Some(outgoing.body().map_err(|()| failed("request body"))?),
            None => None,
        };

        let options = RequestOptions::new();
        let timeout_ns = req.timeout.as_nanos() as u64;
        let _ = options.set_connect_timeout(Some(timeout_ns));
        let _ = options.set_first_byte_timeout(Some(timeout_ns));
        let _ = options.set_between_bytes_timeout(Some(timeout_ns));

        // Send first, then stream the body: the host consumes it as it is written.
        let pending = outgoing_handler::handle(outgoing, Some(options)).map_err(transport_error)?;
        if let (Some(body), Some(bytes)) = (body, req.body) {
            let stream = body.write().map_err(|()| failed("request body stream"))?;
            for chunk in bytes.chunks(4096) {
                stream
                    .blocking_write_and_flush(chunk)
                    .map_err(|e| TransportError::Failed(format!("writing the body: {e:?}")))?;
            }
            drop(stream);
            OutgoingBody::finish(body, None).map_err(transport_error)?;
        }

        pending.subscribe().block();
        let incoming = pending
            .get()
            .ok_or_else(|| failed("no response"))?
            .map_err(|()| failed("response already taken"))?
            .map_err(transport_error)?;

        let status = incoming.status();
        let headers = incoming
            .headers()
            .entries()
            .into_iter()
            .map(|(k, v)| {
                (
                    k.to_ascii_lowercase(),
                    String::from_utf8_lossy(&v).into_owned(),
                )
            })
            .collect();
        let body = incoming.consume().map_err(|()| failed("response body"))?;
        let mut bytes = Vec::new();
        {
            let stream = body.stream().map_err(|()| failed("response body stream"))?;
            loop {
                match stream.blocking_read(64 * 1024) {
                    Ok(chunk) => bytes.extend_from_slice(&chunk),
                    Err(StreamError::Closed) => break,
                    Err(StreamError::LastOperationFailed(e)) => {
                        return Err(TransportError::Failed(format!(
                            "reading the response: {}",
                            e.to_debug_string()
                        )));
                    }
                }
            }
        }
        let _ = IncomingBody::finish(body);
        Ok(Response {
            status,
            headers,
            body: bytes,
        })
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod transport {
    //! Requests through a real client (ureq), for native tests of plugin logic.
    use super::{RawRequest, Response, TransportError};

    pub fn send(req: &RawRequest<'_>) -> Result<Response, TransportError> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(req.timeout))
            .build()
            .into();
        let mut builder = http::Request::builder().method(req.method).uri(req.url);
        for (name, value) in req.headers {
            builder = builder.header(name, crate::testing::substitute_secrets(value));
        }
        let request = builder
            .body(req.body.unwrap_or_default().to_vec())
            .map_err(|e| TransportError::Failed(e.to_string()))?;
        let mut response = agent.run(request).map_err(|e| match e {
            ureq::Error::Timeout(_) => TransportError::Timeout(e.to_string()),
            other => TransportError::Failed(other.to_string()),
        })?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = response
            .body_mut()
            .read_to_vec()
            .map_err(|e| TransportError::Failed(e.to_string()))?;
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    fn response(status: u16, headers: &[(&str, &str)], body: &str) -> Response {
        Response {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.as_bytes().to_vec(),
        }
    }

    /// Runs a request against scripted transport answers; returns the result, the number of
    /// attempts and the sleeps in between.
    fn run(
        policy: RetryPolicy,
        script: Vec<Result<Response, TransportError>>,
    ) -> (Result<Response, Error>, usize, Vec<Duration>) {
        let client = Client::new().with_retry(policy);
        let script = RefCell::new(script.into_iter());
        let attempts = RefCell::new(0);
        let mut sleeps = Vec::new();
        let result = client.get("https://api.example.com/x").send_with(
            &mut |_| {
                *attempts.borrow_mut() += 1;
                script
                    .borrow_mut()
                    .next()
                    .expect("the client asked for more attempts than scripted")
            },
            &mut |d| sleeps.push(d),
        );
        (result, attempts.into_inner(), sleeps)
    }

    fn quick() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(400),
            max_retry_after: Duration::from_secs(5),
        }
    }

    #[test]
    fn statuses_map_to_the_errors_the_host_acts_on() {
        let kind = |s| error_for_status(s, None, String::new()).kind();
        assert_eq!(kind(400), "invalid-config");
        assert_eq!(kind(422), "invalid-config");
        assert_eq!(kind(401), "unauthorized");
        assert_eq!(kind(403), "unauthorized");
        assert_eq!(kind(404), "not-found");
        assert_eq!(kind(409), "conflict");
        assert_eq!(kind(412), "conflict");
        assert_eq!(kind(429), "rate-limited");
        assert_eq!(kind(408), "transient");
        assert_eq!(kind(503), "transient");
        assert_eq!(kind(418), "fatal");
        assert_eq!(
            error_for_status(429, Some(Duration::from_secs(3)), "slow".into()),
            Error::rate_limited("slow", Some(3000))
        );
    }

    #[test]
    fn only_408_429_and_5xx_are_retryable() {
        for s in [408, 429, 500, 502, 503, 504, 599] {
            assert!(is_retryable_status(s), "{s}");
        }
        for s in [200, 301, 400, 401, 403, 404, 409, 422, 600] {
            assert!(!is_retryable_status(s), "{s}");
        }
    }

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(30))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_below_the_ceiling() {
        let p = quick();
        let ceilings: Vec<u128> = (0..5).map(|r| p.backoff_ceiling(r).as_millis()).collect();
        assert_eq!(ceilings, [100, 200, 400, 400, 400]);
        assert_eq!(
            p.backoff_ceiling(40),
            p.max_delay,
            "no overflow on many retries"
        );
        for retry in 0..5 {
            for _ in 0..50 {
                assert!(p.backoff(retry) <= p.backoff_ceiling(retry));
            }
        }
    }

    #[test]
    fn a_5xx_is_retried_until_success() {
        let (result, attempts, sleeps) = run(
            quick(),
            vec![
                Ok(response(503, &[], "busy")),
                Ok(response(502, &[], "")),
                Ok(response(200, &[], "ok")),
            ],
        );
        assert_eq!(result.unwrap().text(), "ok");
        assert_eq!(attempts, 3);
        assert_eq!(sleeps.len(), 2);
        assert!(sleeps[0] <= Duration::from_millis(100) && sleeps[1] <= Duration::from_millis(200));
    }

    #[test]
    fn retry_after_is_honoured() {
        let (result, attempts, sleeps) = run(
            quick(),
            vec![
                Ok(response(429, &[("retry-after", "2")], "")),
                Ok(response(200, &[], "ok")),
            ],
        );
        assert!(result.is_ok());
        assert_eq!(attempts, 2);
        assert_eq!(sleeps, [Duration::from_secs(2)]);
    }

    #[test]
    fn a_long_retry_after_goes_back_to_the_host() {
        let (result, attempts, sleeps) = run(
            quick(),
            vec![Ok(response(429, &[("retry-after", "120")], "later"))],
        );
        assert_eq!(
            result.unwrap_err(),
            Error::rate_limited("HTTP 429: later", Some(120_000))
        );
        assert_eq!(attempts, 1);
        assert!(sleeps.is_empty());
    }

    #[test]
    fn a_4xx_is_not_retried() {
        for status in [400, 401, 403, 404, 409] {
            let (result, attempts, _) = run(quick(), vec![Ok(response(status, &[], ""))]);
            assert!(result.is_err());
            assert_eq!(attempts, 1, "status {status}");
        }
        let (result, attempts, _) = run(
            quick(),
            vec![Ok(response(408, &[], "")), Ok(response(200, &[], ""))],
        );
        assert!(result.is_ok());
        assert_eq!(attempts, 2, "408 is retried");
    }

    #[test]
    fn retries_are_bounded() {
        let (result, attempts, sleeps) = run(
            quick(),
            (0..4).map(|_| Ok(response(500, &[], "down"))).collect(),
        );
        assert_eq!(result.unwrap_err(), Error::transient("HTTP 500: down"));
        assert_eq!(attempts, 4);
        assert_eq!(sleeps.len(), 3);
        let (_, attempts, _) = run(RetryPolicy::none(), vec![Ok(response(500, &[], ""))]);
        assert_eq!(attempts, 1);
    }

    #[test]
    fn transport_failures_are_retried_but_denials_are_not() {
        let (result, attempts, _) = run(
            quick(),
            vec![
                Err(TransportError::Timeout("slow".into())),
                Ok(response(200, &[], "")),
            ],
        );
        assert!(result.is_ok());
        assert_eq!(attempts, 2);
        let (result, attempts, _) = run(quick(), vec![Err(TransportError::Denied("no".into()))]);
        let err = result.unwrap_err();
        assert_eq!(attempts, 1);
        assert!(
            err.describe().contains("denied by the engine's sandbox"),
            "{}",
            err.describe()
        );
    }

    #[test]
    fn error_messages_come_from_the_usual_json_shapes() {
        let google = response(
            404,
            &[],
            r#"{"error":{"code":404,"message":"Service api not found"}}"#,
        );
        assert_eq!(google.error_message(), "HTTP 404: Service api not found");
        let aws = response(
            400,
            &[],
            r#"{"__type":"ClientException","message":"bad family"}"#,
        );
        assert_eq!(aws.error_message(), "HTTP 400: bad family");
        let plain = response(500, &[], "  oops \n");
        assert_eq!(plain.error_message(), "HTTP 500: oops");
        assert_eq!(response(502, &[], "").error_message(), "HTTP 502");
    }
}
