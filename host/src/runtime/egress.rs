//! Outbound HTTP from plugins: the `wasi:http` send hook.
//!
//! Every request a plugin sends passes four checks before it leaves:
//! 1. its `scheme://host:port` matches a pattern the pipeline grants *and* one the plugin
//!    declares;
//! 2. every address the host name resolves to is public, unless the grant names that address
//!    literally (or the request is to `localhost` and `localhost` is granted), so a granted
//!    name cannot be pointed at an internal service or a cloud metadata endpoint;
//! 3. secret placeholders in its headers are replaced only for destinations the secret is
//!    granted for;
//! 4. the response body is read up to the plugin's `max_response` limit.
//!
//! Redirects are not followed (a granted host could redirect anywhere) and proxies from the
//! environment are ignored.

use super::events::{Capability, Denial, EventSink, PluginEvent};
use super::grants::{HttpPattern, default_port, suggested_http_grant};
use super::secrets::{PLACEHOLDER_PREFIX, PluginSecrets, redactor};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body_util::{BodyExt, Full};
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

/// Whether an address belongs to a network a plugin must not reach unless granted by address:
/// loopback, private ranges, link-local (cloud metadata at 169.254.169.254 included), carrier-
/// grade NAT, unspecified, multicast and broadcast.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal_v4(v4);
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local, fd00:ec2::254 (AWS metadata) among them
                || (first & 0xffc0) == 0xfe80 // link-local
        }
    }
}

fn is_internal_v4(v4: Ipv4Addr) -> bool {
    let [a, b, ..] = v4.octets();
    v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_unspecified()
        || v4.is_broadcast()
        || v4.is_multicast()
        || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT, 100.64.0.0/10
        || a == 0
}

/// Which internal addresses a plugin's grants allow.
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    /// Addresses the grants name literally (`http://10.0.0.5:8080`).
    literal: Vec<IpAddr>,
    /// Whether `localhost` is granted (then loopback is allowed for `localhost` only).
    localhost: bool,
}

impl AddressPolicy {
    pub fn from_grants(granted: &[HttpPattern]) -> AddressPolicy {
        AddressPolicy {
            literal: granted.iter().filter_map(HttpPattern::literal_ip).collect(),
            localhost: granted.iter().any(|p| p.names_host("localhost")),
        }
    }

    /// Whether a request to `host` may connect to `ip`.
    pub fn allows(&self, host: &str, ip: IpAddr) -> bool {
        !is_internal(ip)
            || self.literal.contains(&ip)
            || (self.localhost && host == "localhost" && ip.is_loopback())
    }
}

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
                .filter(|ip| policy.allows(&host, **ip))
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
        let addresses = AddressPolicy::from_grants(&granted);
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
        let scheme = uri.scheme_str().unwrap_or("https").to_ascii_lowercase();
        let host = uri
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let Some(port) = uri.port_u16().or_else(|| default_port(&scheme)) else {
            return Err(HttpError::HttpRequestUriInvalid);
        };
        let suggestion = suggested_http_grant(&scheme, &host, port);
        if !self.granted.iter().any(|p| p.matches(&scheme, &host, port)) {
            return Err(self.deny(
                Capability::Http,
                attempted,
                format!(
                    "add \"{suggestion}\" to allow_http in [plugins.{}]",
                    self.plugin
                ),
            ));
        }
        if !self
            .declared
            .iter()
            .any(|p| p.matches(&scheme, &host, port))
        {
            return Err(self.deny(
                Capability::Http,
                attempted,
                "the plugin does not declare this destination in its capabilities, so no grant can allow it".into(),
            ));
        }
        // A dry run lets plugins look but not touch: after the grant checks, so a plan still
        // reports what a real run would be denied.
        if self.dry_run && !matches!(*request.method(), http::Method::GET | http::Method::HEAD) {
            self.sink.event(PluginEvent::WouldCall {
                plugin: self.plugin.clone(),
                method: request.method().to_string(),
                url: redactor().redact(&uri.to_string()),
            });
            return Err(HttpError::HttpRequestDenied);
        }
        if let Ok(ip) = host.parse::<IpAddr>()
            && !self.addresses.allows(&host, ip)
        {
            return Err(self.deny(
                Capability::Address,
                attempted,
                format!(
                    "add \"{suggestion}\" to allow_http in [plugins.{}]",
                    self.plugin
                ),
            ));
        }

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
        let origin = match uri.port_u16() {
            Some(p) => format!("{scheme}://{host}:{p}"),
            None => format!("{scheme}://{host}"),
        };
        Ok(Authorized {
            headers,
            pending,
            origin,
        })
    }

    /// Puts the secrets' values into the headers that carry their placeholders.
    async fn fill_secrets(&self, authorized: Authorized) -> Result<HeaderMap, HttpError> {
        let Authorized {
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
        Ok(headers)
    }

    async fn send(
        self: Arc<Self>,
        request: http::Request<WasiBody>,
        headers: HeaderMap,
        options: Option<RequestOptions>,
    ) -> Result<http::Response<WasiBody>, HttpError> {
        let (parts, body) = request.into_parts();
        let body = body.collect().await?.to_bytes();
        let url = parts.uri.to_string();
        let mut builder = self
            .client
            .request(parts.method.clone(), &url)
            .headers(headers)
            .body(body);
        if let Some(timeout) = options.and_then(|o| o.first_byte_timeout) {
            builder = builder.timeout(timeout);
        }
        let mut response = builder
            .send()
            .await
            .map_err(|e| self.send_error(&parts.method, &url, e))?;

        let mut out = http::Response::builder().status(response.status());
        for (name, value) in response.headers() {
            out = out.header(name, value);
        }
        let mut collected = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.send_error(&parts.method, &url, e))?
        {
            if (collected.len() + chunk.len()) as u64 > self.max_response_bytes {
                self.sink.event(PluginEvent::LimitExceeded {
                    plugin: self.plugin.clone(),
                    message: format!(
                        "the response to {} {} is larger than the plugin's max_response of {} bytes; raise max_response in [plugins.{}]",
                        parts.method, redactor().redact(&url), self.max_response_bytes, self.plugin
                    ),
                });
                return Err(HttpError::HttpResponseBodySize(Some(
                    self.max_response_bytes,
                )));
            }
            collected.extend_from_slice(&chunk);
        }
        let body = Full::new(Bytes::from(collected))
            .map_err(|never| match never {})
            .boxed_unsync();
        out.body(body)
            .map_err(|e| HttpError::InternalError(Some(e.to_string())))
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

/// The hook object in each call's store.
pub struct EgressHooks {
    pub policy: Arc<EgressPolicy>,
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
        let authorized = policy.authorize(&request);
        Box::new(async move {
            let headers = policy.fill_secrets(authorized?).await?;
            let response = policy.send(request, headers, options).await?;
            Ok((response, Box::new(async { Ok(()) }) as IoFuture))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_ranges() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:10.0.0.1",
            "224.0.0.1",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip} should be internal");
        }
        for ip in [
            "8.8.8.8",
            "142.250.1.1",
            "2001:4860:4860::8888",
            "100.128.0.1",
        ] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip} should be public");
        }
    }

    #[test]
    fn internal_addresses_need_a_literal_grant_or_localhost() {
        let grants: Vec<HttpPattern> = [
            "https://api.example.com",
            "http://10.0.0.5:8080",
            "http://localhost:*",
        ]
        .iter()
        .map(|p| HttpPattern::parse(p).unwrap())
        .collect();
        let policy = AddressPolicy::from_grants(&grants);
        assert!(policy.allows("api.example.com", "93.184.216.34".parse().unwrap()));
        assert!(!policy.allows("api.example.com", "10.0.0.6".parse().unwrap()));
        assert!(policy.allows("api.example.com", "10.0.0.5".parse().unwrap()));
        assert!(policy.allows("localhost", "127.0.0.1".parse().unwrap()));
        assert!(!policy.allows("rebound.example.com", "127.0.0.1".parse().unwrap()));
        let none = AddressPolicy::from_grants(&[HttpPattern::parse("https://*").unwrap()]);
        assert!(!none.allows("localhost", "127.0.0.1".parse().unwrap()));
        assert!(!none.allows(
            "metadata.google.internal",
            "169.254.169.254".parse().unwrap()
        ));
    }
}
