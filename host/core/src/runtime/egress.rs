//! Outbound HTTP from plugins: the `wasi:http` send hook.
//!
//! The URL is read once, by the parser the HTTP client uses, and every check sees that
//! reading. Every request a plugin sends passes these checks before it leaves:
//! 1. its `scheme://host:port` matches a pattern the pipeline grants *and* one the plugin
//!    declares;
//! 2. the address rules of [`super::address`]: internal addresses only when named, on the
//!    named ports; names that resolve to internal addresses never; the local platform's admin
//!    port only through an exact grant;
//! 3. secret placeholders in its headers, and in the strings of a JSON body
//!    ([`super::json_body`]), are replaced only for destinations the secret is granted for;
//! 4. no secret the destination is not granted travels in its URL, headers or body, in any
//!    spelling of [`crate::redact::forms`] (a plugin may hold a value a granted host reflected);
//! 5. the call has fewer than [`MAX_REQUESTS_IN_FLIGHT`] requests open.
//!
//! A request to `https://kubernetes.invalid` ([`super::kubernetes`]) names a granted cluster
//! secret in its `x-engine-kubernetes` header instead: it goes to that cluster's API server
//! (the grant is its network grant), through the cluster's own TLS client, with the cluster's
//! credentials, and carries no other secret.
//!
//! Bodies are streamed both ways, so the engine's memory holds only a bounded window of each;
//! the response body fails once it passes the plugin's `max_response`. The plugin's secret
//! values are masked (`*`, same length) in every response before the plugin reads it.
//!
//! Redirects are not followed (a granted host could redirect anywhere) and proxies from the
//! environment are ignored: only the plugin's `proxy` grant is used. Through a proxy, names
//! are resolved by the proxy, so rule 2 applies to address literals and to the proxy itself;
//! the proxy's own rules decide what the names reach.

use super::address::{AddressPolicy, CanonicalHost, Refusal};
use super::aws;
use super::events::{Capability, Denial, EventSink, PluginEvent};
use super::json_body;
use super::kubernetes::{self, KubeCluster};
use super::secrets::{PLACEHOLDER_PREFIX, PluginSecrets, ResolvedSecret, SecretValue};
use crate::grants::{HttpPattern, suggested_http_grant};
use crate::redact::redactor;
use crate::redact::stream::{OnFound, Patterns, Window};
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
    pending: Vec<(http::HeaderName, String, Vec<Arc<ResolvedSecret>>)>,
    origin: String,
    /// The secrets this destination is not granted, for the body scan.
    withheld: Option<Withheld>,
    /// The AWS credentials to sign the request with, if it asks ([`aws::SIGN_HEADER`]).
    sign: Option<SignWith>,
    /// The Kubernetes cluster the request goes to, if it names one.
    cluster: Option<Arc<KubeCluster>>,
}

/// A request the host signs with an AWS secret.
#[derive(Clone)]
struct SignWith {
    secret: Arc<ResolvedSecret>,
    scope: aws::SigningScope,
}

/// Secrets a request must not carry, and how to report one found in its body.
#[derive(Clone)]
struct Withheld {
    patterns: Arc<Patterns>,
    names: String,
    attempted: String,
    suggestion: String,
}

/// What a request goes out with once its placeholders are filled in.
struct Filled {
    url: reqwest::Url,
    headers: HeaderMap,
    /// Values minted for this request (Google tokens, the local platform's), masked in its
    /// response along with the plugin's fixed secret values.
    minted: Vec<String>,
    /// The destination's origin, the audience of an identity token put in the body.
    origin: String,
    withheld: Option<Withheld>,
    sign: Option<SignWith>,
    cluster: Option<Arc<KubeCluster>>,
}

/// Everything the send hook needs about one loaded plugin; shared by all its calls.
pub struct EgressPolicy {
    plugin: String,
    granted: Vec<HttpPattern>,
    declared: Vec<HttpPattern>,
    addresses: AddressPolicy,
    secrets: Arc<PluginSecrets>,
    max_response_bytes: u64,
    /// The spellings of the plugin's fixed secret values, masked in every response.
    masked: Option<Arc<Patterns>>,
    /// The spellings withheld from destinations, by the names of the secrets withheld.
    withheld_patterns: std::sync::Mutex<HashMap<Vec<String>, Option<Arc<Patterns>>>>,
    client: reqwest::Client,
    sink: Arc<dyn EventSink>,
    dry_run: bool,
    /// Secrets are withheld from every request of this dry run.
    withhold_secrets: bool,
}

/// The value of a secret known before any request (not a token minted per destination).
fn fixed_value(secret: &ResolvedSecret) -> Option<&str> {
    match &secret.value {
        SecretValue::Fixed(value) => Some(value),
        _ => None,
    }
}

impl EgressPolicy {
    pub(crate) fn new(
        plugin: &str,
        granted: Vec<HttpPattern>,
        declared: Vec<HttpPattern>,
        secrets: Arc<PluginSecrets>,
        max_response_bytes: u64,
        proxy: Option<&crate::grants::ProxyGrant>,
        runtime: &super::RuntimeShared,
    ) -> anyhow::Result<EgressPolicy> {
        let (resolve_overrides, sink, dry_run, withhold_secrets) = (
            runtime.resolve_overrides.clone(),
            runtime.sink.clone(),
            runtime.dry_run,
            runtime.dry_run && runtime.withhold_secrets,
        );
        // The proxy is a destination the pipeline named: the address rules allow it, and only
        // the engine's client connects to it (a plugin's own request to it is not granted).
        let mut reachable = granted.clone();
        reachable.extend(proxy.map(|p| p.destination.clone()));
        let addresses = AddressPolicy::new(&reachable, &runtime.local_admin_ports);
        let builder = match proxy {
            Some(p) => reqwest::Client::builder().proxy(reqwest::Proxy::all(&p.url)?),
            None => reqwest::Client::builder().no_proxy(),
        };
        let client = builder
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .dns_resolver(Arc::new(GuardedResolver {
                policy: addresses.clone(),
                overrides: resolve_overrides,
            }))
            .build()?;
        let masked = Patterns::of(secrets.iter().filter_map(|s| fixed_value(s)));
        Ok(EgressPolicy {
            plugin: plugin.to_string(),
            granted,
            declared,
            addresses,
            secrets,
            max_response_bytes,
            masked,
            withheld_patterns: Default::default(),
            client,
            sink,
            dry_run,
            withhold_secrets,
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
        if host.name == kubernetes::API_HOST {
            return self.authorize_cluster(request, url, (&scheme, port), &attempted);
        }
        self.check_destination(&scheme, &host, port, &attempted)?;
        // A dry run lets plugins look but not touch: after the grant checks, so a plan still
        // reports what a real run would be denied. AWS's JSON APIs read with POST.
        self.block_writes_in_dry_run(request, &url, aws::is_signed_read(request.headers()))?;
        let host = host.name;
        let withheld = self.withheld(request, &url, (&scheme, &host, port), &attempted)?;
        let mut headers = HeaderMap::with_capacity(request.headers().len());
        let mut pending = Vec::new();
        let mut sign = None;
        for (name, value) in request.headers() {
            if name == http::header::HOST {
                continue; // the client sets it from the URL
            }
            if name == aws::SIGN_HEADER {
                if sign.is_some() {
                    return Err(self.bad_sign_header(&attempted, "it is given twice".into()));
                }
                sign = Some(self.sign_with(value, &attempted, (&scheme, &host, port))?);
                continue;
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
                let place = format!("header {name} of {attempted}");
                self.check_secret(secret, &place, (&scheme, &host, port))?;
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
            withheld,
            sign,
            cluster: None,
        })
    }

    /// A request to `https://kubernetes.invalid`: it must be declared, name a cluster secret
    /// the plugin opened, and, in a dry run, read (or be a server-side dry run, which the API
    /// server guarantees changes nothing). It goes to the cluster's API server, with no other
    /// secret in its headers.
    fn authorize_cluster(
        &self,
        request: &http::Request<WasiBody>,
        url: reqwest::Url,
        (scheme, port): (&str, u16),
        attempted: &str,
    ) -> Result<Authorized, HttpError> {
        if !self
            .declared
            .iter()
            .any(|p| p.matches(scheme, kubernetes::API_HOST, port))
        {
            return Err(self.deny(
                Capability::Http,
                attempted.to_string(),
                format!("the plugin does not declare https://{} in its capabilities, so it cannot reach a cluster", kubernetes::API_HOST),
            ));
        }
        let named = request
            .headers()
            .get(kubernetes::CLUSTER_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let Some((secret, cluster)) = self.secrets.iter().find_map(|s| match &s.value {
            SecretValue::Kubernetes(c) if !named.is_empty() && s.placeholder == named => {
                Some((s, c.clone()))
            }
            _ => None,
        }) else {
            return Err(self.deny(
                Capability::Secret,
                format!("{} header of {attempted}", kubernetes::CLUSTER_HEADER),
                "name the placeholder of a cluster secret the plugin opened (granted from = \"kubeconfig\"), as the SDK's kubernetes::Cluster does".into(),
            ));
        };
        // The API server guarantees that a server-side dry run changes nothing.
        let dry = url.query_pairs().any(|(k, v)| k == "dryRun" && v == "All");
        self.block_writes_in_dry_run(request, &url, dry)?;
        self.check_plan_use(secret, &format!("the cluster of {attempted}"))?;
        let Some(url) = cluster.url_for(&url) else {
            return Err(self.deny(
                Capability::Http,
                attempted.to_string(),
                "the path leaves the cluster server's own path (an encoded `..`); name a path under it".into(),
            ));
        };
        let server = Destination::read(
            &url.as_str()
                .parse()
                .map_err(|_| HttpError::HttpRequestUriInvalid)?,
        )?;
        let place = (
            server.scheme.as_str(),
            server.host.name.as_str(),
            server.port,
        );
        let withheld = self.withheld(request, &url, place, attempted)?;
        let mut headers = HeaderMap::with_capacity(request.headers().len());
        for (name, value) in request.headers() {
            if name == http::header::HOST
                || name == http::header::AUTHORIZATION
                || name == kubernetes::CLUSTER_HEADER
            {
                continue; // the host sets them
            }
            if value.to_str().is_ok_and(|t| t.contains(PLACEHOLDER_PREFIX)) {
                return Err(self.deny(
                    Capability::Secret,
                    format!("header {name} of {attempted}"),
                    "a request to a cluster carries only the cluster's own credentials, which the host attaches".into(),
                ));
            }
            headers.append(name, value.clone());
        }
        Ok(Authorized {
            origin: url.origin().ascii_serialization(),
            url,
            headers,
            pending: Vec::new(),
            withheld,
            sign: None,
            cluster: Some(cluster),
        })
    }

    /// A dry run lets plugins look but not touch: a request that neither reads (GET, HEAD) nor
    /// is `also_read` (an AWS JSON API's signed read, a Kubernetes dry run) is recorded as what a
    /// real run would call, and refused.
    fn block_writes_in_dry_run(
        &self,
        request: &http::Request<WasiBody>,
        url: &reqwest::Url,
        also_read: bool,
    ) -> Result<(), HttpError> {
        let read = matches!(*request.method(), http::Method::GET | http::Method::HEAD);
        if !self.dry_run || read || also_read {
            return Ok(());
        }
        self.sink.event(PluginEvent::WouldCall {
            plugin: self.plugin.clone(),
            method: request.method().to_string(),
            url: redactor().redact(url.as_str()),
        });
        Err(HttpError::HttpRequestDenied)
    }

    /// The AWS secret and scope a [`aws::SIGN_HEADER`] names, if this destination may be
    /// signed for with it.
    fn sign_with(
        &self,
        value: &HeaderValue,
        attempted: &str,
        destination: (&str, &str, u16),
    ) -> Result<SignWith, HttpError> {
        let text = value.to_str().unwrap_or_default();
        let (placeholder, scope) =
            aws::parse_sign_header(text).map_err(|why| self.bad_sign_header(attempted, why))?;
        let secret = self
            .secrets
            .iter()
            .find(|s| s.placeholder == placeholder && matches!(s.value, SecretValue::Aws(_)))
            .ok_or_else(|| {
                self.bad_sign_header(
                    attempted,
                    "its first part is not the placeholder of an AWS secret the plugin opened"
                        .into(),
                )
            })?;
        let place = format!("the signature of {attempted}");
        self.check_secret(secret, &place, destination)?;
        Ok(SignWith {
            secret: secret.clone(),
            scope,
        })
    }

    fn bad_sign_header(&self, attempted: &str, why: String) -> HttpError {
        self.deny(
            Capability::Secret,
            format!("{} header of {attempted}", aws::SIGN_HEADER),
            format!(
                "{why}; write \"PLACEHOLDER; service=NAME; region=NAME\" (the SDK's aws::sign does)"
            ),
        )
    }

    /// The grant, declaration and address rules for a destination.
    fn check_destination(
        &self,
        scheme: &str,
        host: &CanonicalHost,
        port: u16,
        attempted: &str,
    ) -> Result<(), HttpError> {
        let attempted = attempted.to_string();
        let suggestion = suggested_http_grant(scheme, &host.name, port);
        let add_grant = || {
            format!(
                "add \"{suggestion}\" to allow_http in [plugins.{}]",
                self.plugin
            )
        };
        if !self
            .granted
            .iter()
            .any(|p| p.matches(scheme, &host.name, port))
        {
            return Err(self.deny(Capability::Http, attempted, add_grant()));
        }
        if !self
            .declared
            .iter()
            .any(|p| p.matches(scheme, &host.name, port))
        {
            return Err(self.deny(
                Capability::Http,
                attempted,
                "the plugin does not declare this destination in its capabilities, so no grant can allow it".into(),
            ));
        }
        match self.addresses.check(scheme, host, port) {
            Ok(()) => Ok(()),
            Err(Refusal::Internal) => Err(self.deny(Capability::Address, attempted, add_grant())),
            Err(Refusal::AdminPort) => Err(self.deny(
                Capability::Address,
                attempted,
                format!(
                    "port {port} is the local platform's admin API, which no wildcard grant reaches; only the engine's own `local` provider may call it"
                ),
            )),
        }
    }

    /// Whether a placeholder of `secret` found in `place` may be filled in for this
    /// destination: not during a plan that withholds it, and only where it is granted.
    fn check_secret(
        &self,
        secret: &ResolvedSecret,
        place: &str,
        (scheme, host, port): (&str, &str, u16),
    ) -> Result<(), HttpError> {
        self.check_plan_use(secret, place)?;
        if !self.may_carry(secret, scheme, host, port) {
            return Err(self.deny(
                Capability::Secret,
                format!("secret '{}' in {place}", secret.name),
                format!(
                    "add \"{}\" to secrets.{}.hosts in [plugins.{}]",
                    suggested_http_grant(scheme, host, port),
                    secret.name,
                    self.plugin
                ),
            ));
        }
        Ok(())
    }

    /// Whether a secret may be used during this plan: not when the plan withholds it.
    fn check_plan_use(&self, secret: &ResolvedSecret, place: &str) -> Result<(), HttpError> {
        // The local platform's token is the engine's own, not the pipeline's.
        let own = matches!(secret.value, SecretValue::LocalPlatform);
        if self.dry_run && !own && (self.withhold_secrets || !secret.in_plan) {
            let why = if self.withhold_secrets {
                "`engine plan --no-secrets` sends no secret"
            } else {
                "the pipeline withholds this secret during plan (`in_plan = false`)"
            };
            return Err(self.deny(
                Capability::Secret,
                format!("secret '{}' in {place} during plan", secret.name),
                format!("{why}; a real run sends it"),
            ));
        }
        Ok(())
    }

    /// Whether `secret` may be sent to this destination: one its grant names (or, without
    /// `hosts`, any the plugin may reach; a cloud's credentials only that cloud's APIs).
    fn may_carry(&self, secret: &ResolvedSecret, scheme: &str, host: &str, port: u16) -> bool {
        let own_apis = secret.value.own_apis_only();
        secret
            .hosts
            .as_deref()
            .unwrap_or(&self.granted)
            .iter()
            .any(|p| p.matches(scheme, host, port))
            && (secret.hosts.is_some() || own_apis.is_none_or(|apis| apis.contains(host)))
    }

    /// The fixed secret values this destination may not receive; refuses the request at once
    /// if its URL or a header already carries one (a value a granted host reflected).
    fn withheld(
        &self,
        request: &http::Request<WasiBody>,
        url: &reqwest::Url,
        (scheme, host, port): (&str, &str, u16),
        attempted: &str,
    ) -> Result<Option<Withheld>, HttpError> {
        let secrets: Vec<&Arc<ResolvedSecret>> = self
            .secrets
            .iter()
            .filter(|s| fixed_value(s).is_some() && !self.may_carry(s, scheme, host, port))
            .collect();
        let Some(patterns) = self.patterns_of(&secrets) else {
            return Ok(None);
        };
        let withheld = Withheld {
            patterns,
            names: secrets
                .iter()
                .map(|s| format!("'{}'", s.name))
                .collect::<Vec<_>>()
                .join(", "),
            attempted: attempted.to_string(),
            suggestion: suggested_http_grant(scheme, host, port),
        };
        let decoded = percent_encoding::percent_decode_str(url.as_str()).collect::<Vec<u8>>();
        let in_url = withheld.patterns.found_in(url.as_str().as_bytes())
            || withheld.patterns.found_in(&decoded);
        let in_header = request.headers().iter().find(|(name, value)| {
            withheld.patterns.found_in(name.as_str().as_bytes())
                || withheld.patterns.found_in(value.as_bytes())
        });
        if in_url || in_header.is_some() {
            let place = match in_header {
                Some((name, _)) if !in_url => format!("header {name}"),
                _ => "URL".to_string(),
            };
            return Err(self.leak(&withheld, &place));
        }
        Ok(Some(withheld))
    }

    /// The spellings of these secrets' values, built once per set of secrets (a plugin has few
    /// secrets, so few sets occur) rather than per request.
    fn patterns_of(&self, secrets: &[&Arc<ResolvedSecret>]) -> Option<Arc<Patterns>> {
        if secrets.is_empty() {
            return None;
        }
        let names: Vec<String> = secrets.iter().map(|s| s.name.clone()).collect();
        let mut built = self
            .withheld_patterns
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        built
            .entry(names)
            .or_insert_with(|| Patterns::of(secrets.iter().filter_map(|s| fixed_value(s))))
            .clone()
    }

    /// Reports a request that carries a secret its destination is not granted.
    fn leak(&self, withheld: &Withheld, place: &str) -> HttpError {
        self.deny(
            Capability::Secret,
            format!(
                "the {place} of {} carries the value of secret {}",
                withheld.attempted, withheld.names
            ),
            format!(
                "a secret goes only to the hosts its grant names; if this destination should receive it, add \"{}\" to the secret's hosts in [plugins.{}]",
                withheld.suggestion, self.plugin
            ),
        )
    }

    /// Puts the secrets' values into the headers that carry their placeholders.
    async fn fill_secrets(&self, authorized: Authorized) -> Result<Filled, HttpError> {
        let Authorized {
            url,
            mut headers,
            pending,
            origin,
            withheld,
            sign,
            cluster,
        } = authorized;
        let mut minted = Vec::new();
        if let Some(cluster) = &cluster {
            self.cluster_credentials(cluster, &mut headers, &mut minted)
                .await?;
        }
        for (name, text, secrets) in pending {
            let mut replaced = text;
            for secret in secrets {
                let value = self.secret_value(&secret, &origin, &mut minted).await?;
                replaced = replaced.replace(&secret.placeholder, &value);
            }
            let value =
                HeaderValue::from_str(&replaced).map_err(|_| HttpError::HttpRequestHeaderSize {
                    field_name: Some(name.to_string()),
                    field_size: None,
                })?;
            headers.append(name, value);
        }
        Ok(Filled {
            url,
            headers,
            minted,
            origin,
            withheld,
            sign,
            cluster,
        })
    }

    /// A credential the host could not obtain (a token, a signature): the user reads why in the
    /// log, the plugin gets the request's failure; both redacted.
    fn credential_failed(&self, message: String) -> HttpError {
        let message = redactor().redact(&message);
        self.credential_failed_as(message.clone(), HttpError::InternalError(Some(message)))
    }

    /// Logs `message` (redacted) for the user and returns `error` to the plugin.
    fn credential_failed_as(&self, message: String, error: HttpError) -> HttpError {
        self.sink.event(PluginEvent::Log {
            plugin: self.plugin.clone(),
            level: super::events::LogLevel::Error,
            message: redactor().redact(&message),
            fields: Vec::new(),
        });
        error
    }

    /// The cluster's bearer token, as the request's Authorization (noted in `minted`, to be
    /// masked in the response).
    async fn cluster_credentials(
        &self,
        cluster: &KubeCluster,
        headers: &mut HeaderMap,
        minted: &mut Vec<String>,
    ) -> Result<(), HttpError> {
        let token = cluster.bearer_token().await.map_err(|e| {
            self.credential_failed(format!(
                "the credentials of the cluster ({}): {e}",
                cluster.described()
            ))
        })?;
        if let Some(token) = token {
            let value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                HttpError::InternalError(Some("the cluster's token is not a header value".into()))
            })?;
            headers.insert(http::header::AUTHORIZATION, value);
            minted.push(token);
        }
        Ok(())
    }

    /// The value of a secret for this destination (a Google token is minted for it, and
    /// noted in `minted` to be masked in the response).
    async fn secret_value(
        &self,
        secret: &ResolvedSecret,
        origin: &str,
        minted: &mut Vec<String>,
    ) -> Result<String, HttpError> {
        let value = secret.value.for_destination(origin).await.map_err(|e| {
            self.credential_failed(format!("secret '{}' has no value: {e}", secret.name))
        })?;
        if fixed_value(secret).is_none() {
            minted.push(value.clone());
        }
        Ok(value)
    }

    /// The body to send: a JSON body collected and its placeholders filled in (checked as a
    /// header's are), any other streamed as written. Either way, searched for the secrets
    /// its destination is not granted.
    async fn body(
        self: &Arc<Self>,
        body: WasiBody,
        method: &http::Method,
        filled: &mut Filled,
    ) -> Result<reqwest::Body, HttpError> {
        let guard = filled.withheld.clone().map(|w| (w, self.clone()));
        let json = json_body::is_json(&filled.headers);
        // A signature covers the body: a signed request's is collected whatever its type.
        if !json && filled.sign.is_none() {
            return Ok(streamed(body, guard).await);
        }
        let bytes = match json_body::read(body, json_body::MAX_COLLECTED).await? {
            json_body::Read::TooLarge(_) if filled.sign.is_some() => {
                return Err(self.too_large_to_sign(method, &filled.url));
            }
            json_body::Read::TooLarge(body) => return Ok(streamed(body, guard).await),
            json_body::Read::Whole(bytes) => bytes,
        };
        let bytes = match json {
            true => self.fill_body(bytes, method, filled).await?,
            false => bytes,
        };
        if let Some((withheld, _)) = &guard
            && withheld.patterns.found_in(&bytes)
        {
            return Err(self.leak(withheld, "body"));
        }
        // The length changed with the values; the client sets it from the body.
        filled.headers.remove(http::header::CONTENT_LENGTH);
        if let Some(sign) = filled.sign.clone() {
            self.sign(&sign, method, filled, &bytes).await?;
        }
        Ok(reqwest::Body::from(bytes))
    }

    /// Adds the Signature Version 4 headers for the request as it goes out.
    async fn sign(
        &self,
        sign: &SignWith,
        method: &http::Method,
        filled: &mut Filled,
        body: &[u8],
    ) -> Result<(), HttpError> {
        let SecretValue::Aws(credentials) = &sign.secret.value else {
            return Err(HttpError::InternalError(None));
        };
        let failed =
            |e: String| self.credential_failed(format!("secret '{}': {e}", sign.secret.name));
        let credentials = credentials.current().await.map_err(failed)?;
        // Masked in the response, should a server reflect them.
        filled
            .minted
            .push(credentials.secret_access_key().to_string());
        filled
            .minted
            .extend(credentials.session_token().map(str::to_string));
        let target = (method, &filled.url);
        let now = std::time::SystemTime::now();
        aws::sign_request(
            &credentials,
            &sign.scope,
            now,
            target,
            &mut filled.headers,
            body,
        )
        .map_err(failed)
    }

    fn too_large_to_sign(&self, method: &http::Method, url: &reqwest::Url) -> HttpError {
        let message = format!(
            "the body of {method} {} is larger than {} bytes, the most the host signs; AWS API calls are far smaller",
            redactor().redact(url.as_str()),
            json_body::MAX_COLLECTED
        );
        self.limit_exceeded(message.clone());
        HttpError::InternalError(Some(message))
    }

    /// A JSON body with the placeholders of the secrets this destination is granted filled in.
    async fn fill_body(
        &self,
        bytes: Bytes,
        method: &http::Method,
        filled: &mut Filled,
    ) -> Result<Bytes, HttpError> {
        let Ok(text) = std::str::from_utf8(&bytes) else {
            return Ok(bytes);
        };
        if !text.contains(PLACEHOLDER_PREFIX) {
            return Ok(bytes);
        }
        let url = &filled.url;
        let host = url
            .host()
            .map(CanonicalHost::from)
            .ok_or(HttpError::HttpRequestUriInvalid)?
            .name;
        let port = url.port_or_known_default().unwrap_or_default();
        let place = format!("the body of {method} {url}");
        let mut values = Vec::new();
        for secret in self.secrets.placeholders_in(text) {
            self.check_secret(secret, &place, (url.scheme(), &host, port))?;
            let value = self
                .secret_value(secret, &filled.origin, &mut filled.minted)
                .await?;
            values.push((secret.placeholder.clone(), value));
        }
        Ok(Bytes::from(json_body::fill(text, &values)))
    }

    /// The spellings masked in this request's response.
    fn masked_in_response(&self, minted: &[String]) -> Option<Arc<Patterns>> {
        if minted.is_empty() {
            return self.masked.clone();
        }
        let fixed = self.secrets.iter().filter_map(|s| fixed_value(s));
        Patterns::of(fixed.chain(minted.iter().map(String::as_str)))
    }

    async fn send(
        self: Arc<Self>,
        request: http::Request<WasiBody>,
        mut filled: Filled,
        options: Option<RequestOptions>,
        permit: OwnedSemaphorePermit,
    ) -> Result<http::Response<WasiBody>, HttpError> {
        let (parts, body) = request.into_parts();
        let shown = redactor().redact(filled.url.as_str());
        let body = self.body(body, &parts.method, &mut filled).await?;
        let masked = self.masked_in_response(&filled.minted);
        let client = match &filled.cluster {
            Some(cluster) => cluster.client(),
            None => &self.client,
        };
        let mut builder = client
            .request(parts.method.clone(), filled.url.clone())
            .headers(filled.headers)
            .body(body);
        if let Some(timeout) = options.and_then(|o| o.first_byte_timeout) {
            builder = builder.timeout(timeout);
        }
        let response = builder
            .send()
            .await
            .map_err(|e| self.send_error(&parts.method, &filled.url, &shown, e))?;
        if response
            .content_length()
            .is_some_and(|n| n > self.max_response_bytes)
        {
            return Err(self.response_too_large(&parts.method, &shown));
        }
        let response: http::Response<reqwest::Body> = response.into();
        let (mut head, body) = response.into_parts();
        if let Some(patterns) = &masked {
            mask_headers(&mut head.headers, patterns);
        }
        let body = Metered {
            inner: body,
            received: 0,
            cap: self.max_response_bytes,
            over: Some(OverCap {
                policy: self.clone(),
                what: format!("{} {shown}", parts.method),
            }),
            mask: masked.map(|p| Window::new(p, OnFound::Mask)),
            ended: false,
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

    fn send_error(
        &self,
        method: &http::Method,
        url: &reqwest::Url,
        shown: &str,
        error: reqwest::Error,
    ) -> HttpError {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
        while let Some(e) = source {
            if let Some(denied) = e.downcast_ref::<AddressDenied>() {
                let address = denied.addresses.first().map(|a| a.to_string());
                let grant = suggested_http_grant(
                    url.scheme(),
                    &address.unwrap_or_default(),
                    url.port_or_known_default().unwrap_or(443),
                );
                return self.deny(
                    Capability::Address,
                    format!("{method} {shown} ({denied})"),
                    format!(
                        "grant the address itself, e.g. add \"{grant}\" to allow_http in [plugins.{}], if the plugin really must reach it",
                        self.plugin
                    ),
                );
            }
            if let Some(why) = rejected_certificate(e) {
                // Not a refused connection: the server is not the one the plugin's TLS trusts
                // (for a cluster, its kubeconfig's certificate authority). Say so.
                return self.credential_failed_as(
                    format!("{method} {shown}: the server's certificate was not accepted ({why})"),
                    HttpError::TlsCertificateError,
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

/// Why TLS rejected the server's certificate, if `error` (or the I/O error it wraps) says so.
fn rejected_certificate(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    // The connector wraps rustls's error in I/O errors, whose `source` skips what they wrap.
    let mut error = error;
    while let Some(inner) = error
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
    {
        error = inner;
    }
    let tls = error.downcast_ref::<rustls::Error>()?;
    matches!(tls, rustls::Error::InvalidCertificate(_)).then(|| tls.to_string())
}

/// Overwrites the spellings of secret values in response headers (same length, so each stays
/// a valid header value).
fn mask_headers(headers: &mut HeaderMap, patterns: &Patterns) {
    for value in headers.values_mut() {
        let mut bytes = value.as_bytes().to_vec();
        if patterns.mask(&mut bytes)
            && let Ok(masked) = HeaderValue::from_bytes(&bytes)
        {
            *value = masked;
        }
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
            let filled = policy.fill_secrets(authorized).await?;
            let response = policy.send(request, filled, options, permit).await?;
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
/// engine's memory (a bounded channel between the two). With `guard`, the body is searched for
/// the secrets its destination is not granted and cut off before one is complete.
///
/// A body that ends before its first frame (a GET's) is sent as empty: no forwarding task and
/// no chunked encoding. Waiting for that frame cannot block the plugin: `wasi:http` runs the
/// send as a task of its own while the plugin writes its body.
async fn streamed(
    mut body: WasiBody,
    guard: Option<(Withheld, Arc<EgressPolicy>)>,
) -> reqwest::Body {
    let Some(first) = body.frame().await else {
        return reqwest::Body::from(Bytes::new());
    };
    let (sender, receiver) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::spawn(async move {
        let mut window = guard
            .as_ref()
            .map(|(w, _)| Window::new(w.patterns.clone(), OnFound::Refuse));
        let mut first = Some(first);
        loop {
            let frame = match first.take() {
                Some(frame) => frame,
                None => match body.frame().await {
                    Some(frame) => frame,
                    None => break,
                },
            };
            let item = match frame.map(http_body::Frame::into_data) {
                Ok(Ok(data)) => match (&mut window, &guard) {
                    (Some(window), Some((withheld, policy))) => window.push(&data).map_err(|_| {
                        policy.leak(withheld, "body");
                        std::io::Error::other("the request body carries a withheld secret")
                    }),
                    _ => Ok(data),
                },
                // Trailers are not forwarded.
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
        if let Some(window) = &mut window {
            let _ = sender.send(Ok(window.finish())).await;
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

/// A response body passed to the plugin as it arrives, failing once it passes the cap, with the
/// plugin's secret values masked; holds its request's place among the call's open requests
/// until the plugin is done with it.
struct Metered {
    inner: reqwest::Body,
    received: u64,
    cap: u64,
    over: Option<OverCap>,
    mask: Option<Window>,
    ended: bool,
    _permit: OwnedSemaphorePermit,
}

impl http_body::Body for Metered {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, HttpError>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => {
                self.ended = true;
                let rest = self.mask.as_mut().map(Window::finish);
                return Poll::Ready(rest.map(|r| Ok(http_body::Frame::data(r))));
            }
            Poll::Ready(Some(Err(e))) => {
                let message = redactor().redact(&e.to_string());
                return Poll::Ready(Some(Err(HttpError::InternalError(Some(message)))));
            }
            Poll::Ready(Some(Ok(frame))) => frame,
        };
        let Some(data) = frame.data_ref() else {
            return Poll::Ready(Some(Ok(frame)));
        };
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
        let data = match self.mask.as_mut() {
            Some(window) => window.push(data).unwrap_or_default(),
            None => return Poll::Ready(Some(Ok(frame))),
        };
        Poll::Ready(Some(Ok(http_body::Frame::data(data))))
    }
}
