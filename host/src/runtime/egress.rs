//! Outbound HTTP from plugins: the `wasi:http` send hook.
//!
//! The URL is read once, by the parser the HTTP client uses, and every check sees that
//! reading. Every request a plugin sends passes these checks before it leaves:
//! 1. its `scheme://host:port` matches a pattern the pipeline grants *and* one the plugin
//!    declares;
//! 2. the address rules of [`super::address`]: internal addresses only when named, on the
//!    named ports; names that resolve to internal addresses never; the local platform's admin
//!    port only through an exact grant;
//! 3. secret placeholders in its headers are replaced only for destinations the secret is
//!    granted for;
//! 4. the call has fewer than [`MAX_REQUESTS_IN_FLIGHT`] requests open.
//!
//! Bodies are streamed both ways, so the engine's memory holds only a bounded window of each;
//! the response body fails once it passes the plugin's `max_response`.
//!
//! Redirects are not followed (a granted host could redirect anywhere) and proxies from the
//! environment are ignored.

use super::address::{AddressPolicy, CanonicalHost, Refusal};
use super::events::{Capability, Denial, EventSink, PluginEvent};
use super::grants::{HttpPattern, default_port, suggested_http_grant};
use super::secrets::{PLACEHOLDER_PREFIX, PluginSecrets, redactor};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body_util::BodyExt;
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

/// The error the guarded resolver returns; found again in the error chain to report a denial.
#[derive(Debug)]
struct AddressDenied {
    host: String,
    addresses: Vec<IpAddr>,
}

impl std::fmt::Display for AddressDenied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} resolves only to internal addresses {:?}",
            self.host, self.addresses
        )
    }
}

impl std::error::Error for AddressDenied {}

/// The addresses a plugin's destination `host` (lower case) stands for: a fixed resolution
/// from the runtime's options, the address itself, or the system resolver's answer. The
/// address policy is applied by the caller, to whatever this returns.
pub(crate) async fn lookup(
    overrides: &HashMap<String, Vec<IpAddr>>,
    host: &str,
) -> std::io::Result<Vec<IpAddr>> {
    if let Some(fixed) = overrides.get(host) {
        return Ok(fixed.clone());
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    Ok(tokio::net::lookup_host((host, 0))
        .await?
        .map(|a| a.ip())
        .collect())
}

/// Resolves names for the plugin's HTTP client and drops the addresses the policy forbids.
struct GuardedResolver {
    policy: AddressPolicy,
    overrides: Arc<HashMap<String, Vec<IpAddr>>>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_ascii_lowercase();
        let policy = self.policy.clone();
        let overrides = self.overrides.clone();
        Box::pin(async move {
            let addresses = lookup(&overrides, &host).await?;
            let allowed: Vec<SocketAddr> = addresses
                .iter()
                .filter(|ip| policy.allows_resolved(&host, **ip))
                .map(|ip| SocketAddr::new(*ip, 0))
                .collect();
            if allowed.is_empty() {
                return Err(Box::new(AddressDenied { host, addresses }) as _);
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// A request that passed the checks: its plain headers, the headers still holding secret
/// placeholders (with the secrets they name), and its origin (an identity token's audience).
struct Authorized {
    /// The URL as the client will read it (the same parse the checks saw).
    url: reqwest::Url,
    headers: HeaderMap,
    pending: Vec<(
        http::HeaderName,
        String,
        Vec<Arc<super::secrets::ResolvedSecret>>,
    )>,
    origin: String,
}

/// Everything the send hook needs about one loaded plugin; shared by all its calls.
pub struct EgressPolicy {
    plugin: String,
    granted: Vec<HttpPattern>,
    declared: Vec<HttpPattern>,
    addresses: AddressPolicy,
    secrets: Arc<PluginSecrets>,
    max_response_bytes: u64,
    client: reqwest::Client,
    sink: Arc<dyn EventSink>,
    dry_run: bool,
}

impl EgressPolicy {
    pub(crate) fn new(
        plugin: &str,
        granted: Vec<HttpPattern>,
        declared: Vec<HttpPattern>,
        secrets: Arc<PluginSecrets>,
        max_response_bytes: u64,
        runtime: &super::RuntimeShared,
    ) -> anyhow::Result<EgressPolicy> {
        let (resolve_overrides, sink, dry_run) = (
            runtime.resolve_overrides.clone(),
            runtime.sink.clone(),
            runtime.dry_run,
        );
        let addresses = AddressPolicy::new(&granted, &runtime.local_admin_ports);
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(Duration::from_secs(10))
            .dns_resolver(Arc::new(GuardedResolver {
                policy: addresses.clone(),
                overrides: resolve_overrides,
            }))
            .build()?;
        Ok(EgressPolicy {
            plugin: plugin.to_string(),
            granted,
            declared,
            addresses,
            secrets,
            max_response_bytes,
            client,
            sink,
            dry_run,
        })
    }

    fn deny(&self, capability: Capability, attempted: String, hint: String) -> HttpError {
        self.sink.event(PluginEvent::Denied(Denial {
            plugin: self.plugin.clone(),
            capability,
            attempted: redactor().redact(&attempted),
            hint,
        }));
        match capability {
            Capability::Address => HttpError::DestinationIpProhibited,
            _ => HttpError::HttpRequestDenied,
        }
    }

    /// Checks a request and returns the headers to send, with the secrets to put in place of
    /// their placeholders (filled in by [`fill_secrets`], since a Google token may have to be
    /// minted first).
    fn authorize(&self, request: &http::Request<WasiBody>) -> Result<Authorized, HttpError> {
        let uri = request.uri();
        let attempted = format!("{} {}", request.method(), uri);
        let Destination {
            url,
            scheme,
            host,
            port,
        } = Destination::read(uri)?;
        let suggestion = suggested_http_grant(&scheme, &host.name, port);
        let add_grant = || {
            format!(
                "add \"{suggestion}\" to allow_http in [plugins.{}]",
                self.plugin
            )
        };
        if !self
            .granted
            .iter()
            .any(|p| p.matches(&scheme, &host.name, port))
        {
            return Err(self.deny(Capability::Http, attempted, add_grant()));
        }
        if !self
            .declared
            .iter()
            .any(|p| p.matches(&scheme, &host.name, port))
        {
            return Err(self.deny(
                Capability::Http,
                attempted,
                "the plugin does not declare this destination in its capabilities, so no grant can allow it".into(),
            ));
        }
        match self.addresses.check(&scheme, &host, port) {
            Ok(()) => {}
            Err(Refusal::Internal) => {
                return Err(self.deny(Capability::Address, attempted, add_grant()));
            }
            Err(Refusal::AdminPort) => {
                return Err(self.deny(
                    Capability::Address,
                    attempted,
                    format!(
                        "port {port} is the local platform's admin API, which no wildcard grant reaches; only the engine's own `local` provider may call it"
                    ),
                ));
            }
        }
        // A dry run lets plugins look but not touch: after the grant checks, so a plan still
        // reports what a real run would be denied.
        if self.dry_run && !matches!(*request.method(), http::Method::GET | http::Method::HEAD) {
            self.sink.event(PluginEvent::WouldCall {
                plugin: self.plugin.clone(),
                method: request.method().to_string(),
                url: redactor().redact(url.as_str()),
            });
            return Err(HttpError::HttpRequestDenied);
        }
        let host = host.name;

        // An access token goes to Google's APIs only, unless its grant names hosts.
        let google_api = host == "googleapis.com" || host.ends_with(".googleapis.com");
        let mut headers = HeaderMap::with_capacity(request.headers().len());
        let mut pending = Vec::new();
        for (name, value) in request.headers() {
            if name == http::header::HOST {
                continue; // the client sets it from the URL
            }
            let Ok(text) = value.to_str() else {
                headers.append(name, value.clone());
                continue;
            };
            if !text.contains(PLACEHOLDER_PREFIX) {
                headers.append(name, value.clone());
                continue;
            }
            let mut secrets = Vec::new();
            for secret in self.secrets.placeholders_in(text) {
                let allowed = secret
                    .hosts
                    .as_deref()
                    .unwrap_or(&self.granted)
                    .iter()
                    .any(|p| p.matches(&scheme, &host, port))
                    && (secret.hosts.is_some() || google_api || !secret.value.google_apis_only());
                if !allowed {
                    return Err(self.deny(
                        Capability::Secret,
                        format!("secret '{}' in header {name} of {attempted}", secret.name),
                        format!(
                            "add \"{suggestion}\" to secrets.{}.hosts in [plugins.{}]",
                            secret.name, self.plugin
                        ),
                    ));
                }
                secrets.push(secret.clone());
            }
            pending.push((name.clone(), text.to_string(), secrets));
        }
        let origin = url.origin().ascii_serialization();
        Ok(Authorized {
            url,
            headers,
            pending,
            origin,
        })
    }

    /// Puts the secrets' values into the headers that carry their placeholders.
    async fn fill_secrets(
        &self,
        authorized: Authorized,
    ) -> Result<(reqwest::Url, HeaderMap), HttpError> {
        let Authorized {
            url,
            mut headers,
            pending,
            origin,
        } = authorized;
        for (name, text, secrets) in pending {
            let mut replaced = text;
            for secret in secrets {
                let value = secret.value.for_destination(&origin).await.map_err(|e| {
                    let message = format!("secret '{}' has no value: {e}", secret.name);
                    self.sink.event(PluginEvent::Log {
                        plugin: self.plugin.clone(),
                        level: super::events::LogLevel::Error,
                        message: redactor().redact(&message),
                        fields: Vec::new(),
                    });
                    HttpError::InternalError(Some(redactor().redact(&message)))
                })?;
                replaced = replaced.replace(&secret.placeholder, &value);
            }
            let value =
                HeaderValue::from_str(&replaced).map_err(|_| HttpError::HttpRequestHeaderSize {
                    field_name: Some(name.to_string()),
                    field_size: None,
                })?;
            headers.append(name, value);
        }
        Ok((url, headers))
    }

    async fn send(
        self: Arc<Self>,
        request: http::Request<WasiBody>,
        (url, headers): (reqwest::Url, HeaderMap),
        options: Option<RequestOptions>,
        permit: OwnedSemaphorePermit,
    ) -> Result<http::Response<WasiBody>, HttpError> {
        let (parts, body) = request.into_parts();
        let shown = redactor().redact(url.as_str());
        let mut builder = self
            .client
            .request(parts.method.clone(), url)
            .headers(headers)
            .body(streamed(body));
        if let Some(timeout) = options.and_then(|o| o.first_byte_timeout) {
            builder = builder.timeout(timeout);
        }
        let response = builder
            .send()
            .await
            .map_err(|e| self.send_error(&parts.method, &shown, e))?;
        if response
            .content_length()
            .is_some_and(|n| n > self.max_response_bytes)
        {
            return Err(self.response_too_large(&parts.method, &shown));
        }
        let response: http::Response<reqwest::Body> = response.into();
        let (head, body) = response.into_parts();
        let body = Metered {
            inner: body,
            received: 0,
            cap: self.max_response_bytes,
            over: Some(OverCap {
                policy: self.clone(),
                what: format!("{} {shown}", parts.method),
            }),
            _permit: permit,
        };
        Ok(http::Response::from_parts(head, body.boxed_unsync()))
    }

    fn response_too_large(&self, method: &http::Method, url: &str) -> HttpError {
        self.limit_exceeded(format!(
            "the response to {method} {url} is larger than the plugin's max_response of {} bytes; raise max_response in [plugins.{}]",
            self.max_response_bytes, self.plugin
        ));
        HttpError::HttpResponseBodySize(Some(self.max_response_bytes))
    }

    fn limit_exceeded(&self, message: String) {
        self.sink.event(PluginEvent::LimitExceeded {
            plugin: self.plugin.clone(),
            message,
        });
    }

    fn send_error(&self, method: &http::Method, url: &str, error: reqwest::Error) -> HttpError {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
        while let Some(e) = source {
            if let Some(denied) = e.downcast_ref::<AddressDenied>() {
                let port = url::port_of(url);
                return self.deny(
                    Capability::Address,
                    format!("{method} {url} ({denied})"),
                    format!(
                        "grant the address itself, e.g. add \"{}\" to allow_http in [plugins.{}], if the plugin really must reach it",
                        suggested_http_grant(
                            url::scheme_of(url),
                            &denied.addresses.first().map(|a| a.to_string()).unwrap_or_default(),
                            port
                        ),
                        self.plugin
                    ),
                );
            }
            source = e.source();
        }
        if error.is_timeout() {
            HttpError::ConnectionTimeout
        } else if error.is_connect() {
            HttpError::ConnectionRefused
        } else {
            HttpError::InternalError(Some(redactor().redact(&error.to_string())))
        }
    }
}

/// Small helpers over an absolute URL the hook already parsed once.
mod url {
    pub fn scheme_of(url: &str) -> &str {
        url.split_once("://").map(|(s, _)| s).unwrap_or("https")
    }

    pub fn port_of(url: &str) -> u16 {
        url.parse::<http::Uri>()
            .ok()
            .and_then(|u| u.port_u16().or_else(|| super::default_port(scheme_of(url))))
            .unwrap_or(443)
    }
}

/// How many requests one call may have open at once: each holds a connection and its
/// buffers in the engine's memory until the plugin has read the response or dropped it.
pub const MAX_REQUESTS_IN_FLIGHT: usize = 16;

/// The hook object in each call's store.
pub struct EgressHooks {
    pub policy: Arc<EgressPolicy>,
    /// This call's open requests ([`MAX_REQUESTS_IN_FLIGHT`]).
    in_flight: Arc<Semaphore>,
}

impl EgressHooks {
    pub fn new(policy: Arc<EgressPolicy>) -> EgressHooks {
        EgressHooks {
            policy,
            in_flight: Arc::new(Semaphore::new(MAX_REQUESTS_IN_FLIGHT)),
        }
    }
}

type IoFuture = Box<dyn Future<Output = Result<(), HttpError>> + Send>;

impl WasiHttpHooks for EgressHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: IoFuture,
    ) -> Box<dyn Future<Output = Result<(http::Response<WasiBody>, IoFuture), HttpError>> + Send>
    {
        let policy = self.policy.clone();
        let permit = self.in_flight.clone().try_acquire_owned().map_err(|_| {
            policy.limit_exceeded(format!(
                "more than {MAX_REQUESTS_IN_FLIGHT} HTTP requests open at once in one call (read or drop responses before sending more)"
            ));
            HttpError::InternalError(Some(format!(
                "more than {MAX_REQUESTS_IN_FLIGHT} requests open at once"
            )))
        });
        let authorized = permit.and_then(|permit| Ok((policy.authorize(&request)?, permit)));
        Box::new(async move {
            let (authorized, permit) = authorized?;
            let target = policy.fill_secrets(authorized).await?;
            let response = policy.send(request, target, options, permit).await?;
            Ok((response, Box::new(async { Ok(()) }) as IoFuture))
        })
    }
}

/// The destination of a request, read by the URL parser the HTTP client itself uses, so the
/// checks and the connection see the same host.
struct Destination {
    url: reqwest::Url,
    scheme: String,
    host: CanonicalHost,
    port: u16,
}

impl Destination {
    fn read(uri: &http::Uri) -> Result<Destination, HttpError> {
        let mut url =
            reqwest::Url::parse(&uri.to_string()).map_err(|_| HttpError::HttpRequestUriInvalid)?;
        // Credentials in a URL would become a Basic header no check has seen.
        if !url.username().is_empty() || url.password().is_some() {
            return Err(HttpError::HttpRequestUriInvalid);
        }
        let scheme = url.scheme().to_string();
        if scheme != "http" && scheme != "https" {
            return Err(HttpError::HttpProtocolError);
        }
        let host = url
            .host()
            .map(CanonicalHost::from)
            .ok_or(HttpError::HttpRequestUriInvalid)?;
        let port = url
            .port_or_known_default()
            .ok_or(HttpError::HttpRequestUriInvalid)?;
        url.set_fragment(None);
        Ok(Destination {
            url,
            scheme,
            host,
            port,
        })
    }
}

/// The plugin's request body, handed to the client as it is written: never collected in the
/// engine's memory (a bounded channel between the two).
fn streamed(mut body: WasiBody) -> reqwest::Body {
    let (sender, receiver) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::spawn(async move {
        while let Some(frame) = body.frame().await {
            let item = match frame.map(http_body::Frame::into_data) {
                Ok(Ok(data)) => Ok(data),
                Ok(Err(_trailers)) => continue,
                Err(e) => Err(std::io::Error::other(format!(
                    "the plugin's request body: {e:?}"
                ))),
            };
            let failed = item.is_err();
            if sender.send(item).await.is_err() || failed {
                return;
            }
        }
    });
    reqwest::Body::wrap(ChannelBody(receiver))
}

/// The receiving end of [`streamed`], as a body the client can send.
struct ChannelBody(tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|item| item.map(|chunk| chunk.map(http_body::Frame::data)))
    }
}

/// What to report when a response passes its cap.
struct OverCap {
    policy: Arc<EgressPolicy>,
    what: String,
}

/// A response body passed to the plugin as it arrives, failing once it passes the cap; holds
/// its request's place among the call's open requests until the plugin is done with it.
struct Metered {
    inner: reqwest::Body,
    received: u64,
    cap: u64,
    over: Option<OverCap>,
    _permit: OwnedSemaphorePermit,
}

impl http_body::Body for Metered {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, HttpError>>> {
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Ready(Some(Err(e))) => {
                let message = redactor().redact(&e.to_string());
                return Poll::Ready(Some(Err(HttpError::InternalError(Some(message)))));
            }
            Poll::Ready(Some(Ok(frame))) => frame,
        };
        if let Some(data) = frame.data_ref() {
            self.received += data.len() as u64;
            if self.received > self.cap {
                if let Some(over) = self.over.take() {
                    over.policy.limit_exceeded(format!(
                        "the response to {} is larger than the plugin's max_response of {} bytes; raise max_response in [plugins.{}]",
                        over.what, self.cap, over.policy.plugin
                    ));
                }
                return Poll::Ready(Some(Err(HttpError::HttpResponseBodySize(Some(self.cap)))));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }
}
