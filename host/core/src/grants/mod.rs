//! What the pipeline grants a plugin (`[plugins.NAME]` in pipeline.toml), parsed and checked.
//!
//! Deny by default: a plugin gets outbound HTTP only to the `allow_http` patterns, TCP connects
//! (health checks) only to the `allow_tcp` ones, the environment variables in `allow_env`, the
//! directories in `dirs` and the secrets in `secrets`, and only those of them it also declares
//! in its `info`.

pub mod host;
pub mod source;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The grants as written in pipeline.toml (strings not yet parsed).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantsConfig {
    /// Outbound HTTP destinations, `scheme://host[:port]` with `*` wildcards.
    #[serde(default)]
    pub allow_http: Vec<String>,
    /// TCP destinations for health checks, `host:port` with `*` wildcards.
    #[serde(default)]
    pub allow_tcp: Vec<String>,
    /// Environment variables passed to the plugin, by name.
    #[serde(default)]
    pub allow_env: Vec<String>,
    /// Host directories the plugin may open.
    #[serde(default)]
    pub dirs: Vec<DirGrant>,
    /// Secrets by the name the plugin opens them with.
    #[serde(default)]
    pub secrets: BTreeMap<String, SecretGrantConfig>,
    /// Wall-clock limit for one call, such as `30s`.
    #[serde(default)]
    pub timeout: Option<String>,
    /// Memory cap, such as `256MiB`.
    #[serde(default)]
    pub memory: Option<String>,
    /// Largest HTTP response body the plugin may receive, such as `16MiB`.
    #[serde(default)]
    pub max_response: Option<String>,
    /// The most bytes one call may add to the plugin's writable directories, such as `1GiB`.
    #[serde(default)]
    pub disk: Option<String>,
    /// An HTTP proxy every outbound request of the plugin goes through (`http://HOST:PORT`):
    /// one inside a private network, to reach services that accept only requests from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<String>,
}

/// A directory granted to a plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirGrant {
    /// The directory on this machine.
    pub host: PathBuf,
    /// The path the plugin sees, which must be one it declares.
    pub guest: String,
    /// Whether the plugin may write there.
    #[serde(default)]
    pub writable: bool,
}

/// A secret granted to a plugin, as written in pipeline.toml.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretGrantConfig {
    /// Where the value comes from: `env:NAME` or `file:PATH`.
    pub from: String,
    /// Destinations the value may be sent to; defaults to all of `allow_http`.
    #[serde(default)]
    pub hosts: Option<Vec<String>>,
    /// `false`: never sent during `engine plan` (the requests that need it are refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_plan: Option<bool>,
}

/// The default of a plugin's `disk` limit.
pub const DEFAULT_DISK_BYTES: u64 = 1 << 30;

/// Per-call limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub timeout: Duration,
    pub memory_bytes: u64,
    pub max_response_bytes: u64,
    /// What one call may add to the writable directories (measured by the runtime).
    pub disk_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_secs(30),
            memory_bytes: 256 << 20,
            max_response_bytes: 16 << 20,
            disk_bytes: DEFAULT_DISK_BYTES,
        }
    }
}

/// The largest memory cap a plugin can be given: the engine reserves this much address space
/// per pooled instance slot.
pub const MAX_MEMORY_BYTES: u64 = 4 << 30;

/// Grants after parsing.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    pub http: Vec<HttpPattern>,
    /// `tcp://host:port` patterns, parsed from `allow_tcp`.
    pub tcp: Vec<HttpPattern>,
    pub env: Vec<String>,
    pub dirs: Vec<DirGrant>,
    pub secrets: BTreeMap<String, SecretGrant>,
    pub limits: Limits,
    pub proxy: Option<ProxyGrant>,
}

/// A parsed `proxy`: its URL, and the exact destination it is, which the address rules allow
/// (the pipeline named it; a private address is what such a proxy has).
#[derive(Debug, Clone)]
pub struct ProxyGrant {
    pub url: String,
    pub destination: HttpPattern,
}

impl ProxyGrant {
    fn parse(text: &str) -> Result<ProxyGrant, GrantError> {
        let refuse = |why: &str| {
            grant_error(
                "proxy",
                format!(
                    "{text:?} {why}; write it as http://HOST:PORT, such as \"http://10.8.0.2:3128\""
                ),
            )
        };
        let url = reqwest::Url::parse(text).map_err(|_| refuse("is not a URL"))?;
        if url.scheme() != "http" {
            return Err(refuse(
                "is not an http:// proxy (HTTPS destinations go through it with CONNECT)",
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(refuse(
                "carries credentials, which would be written in the pipeline",
            ));
        }
        if url.path() != "/" || url.query().is_some() {
            return Err(refuse("has a path"));
        }
        let host = url.host_str().ok_or_else(|| refuse("has no host"))?;
        let port = url.port_or_known_default().unwrap_or(80);
        let destination = HttpPattern::parse(&format!("http://{host}:{port}"))
            .map_err(|m| grant_error("proxy", m))?;
        Ok(ProxyGrant {
            url: format!("http://{host}:{port}"),
            destination,
        })
    }
}

/// A parsed secret grant.
#[derive(Debug, Clone)]
pub struct SecretGrant {
    pub source: source::SecretSource,
    /// None: any destination in `allow_http`.
    pub hosts: Option<Vec<HttpPattern>>,
    /// Whether the value may be sent during `engine plan`.
    pub in_plan: bool,
}

/// A grant that cannot be parsed; `key` names the pipeline.toml key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct GrantError {
    pub key: String,
    pub message: String,
}

fn grant_error(key: impl Into<String>, message: impl Into<String>) -> GrantError {
    GrantError {
        key: key.into(),
        message: message.into(),
    }
}

impl GrantsConfig {
    /// Parses every string; reports the first bad one with the key it came from.
    pub fn parse(&self) -> Result<Grants, GrantError> {
        let http = self
            .allow_http
            .iter()
            .map(|p| {
                if let Some(destination) = p.strip_prefix("tcp://") {
                    return Err(grant_error(
                        "allow_http",
                        format!(
                            "{p:?} is a TCP destination; grant it as \"{destination}\" in allow_tcp"
                        ),
                    ));
                }
                HttpPattern::parse(p).map_err(|m| grant_error("allow_http", m))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let tcp = self
            .allow_tcp
            .iter()
            .map(|p| HttpPattern::parse_tcp(p).map_err(|m| grant_error("allow_tcp", m)))
            .collect::<Result<Vec<_>, _>>()?;
        for name in &self.allow_env {
            if name.is_empty() || name.contains('=') {
                return Err(grant_error(
                    "allow_env",
                    format!("{name:?} is not an environment variable name"),
                ));
            }
        }
        for dir in &self.dirs {
            if !dir.guest.starts_with('/') {
                return Err(grant_error(
                    "dirs",
                    format!(
                        "guest path {:?} must be absolute, such as \"/data\"",
                        dir.guest
                    ),
                ));
            }
        }
        let mut secrets = BTreeMap::new();
        for (name, grant) in &self.secrets {
            let key = format!("secrets.{name}");
            let source = source::SecretSource::parse(&grant.from)
                .map_err(|m| grant_error(format!("{key}.from"), m))?;
            let hosts = grant
                .hosts
                .as_ref()
                .map(|hosts| {
                    hosts
                        .iter()
                        .map(|p| {
                            HttpPattern::parse(p)
                                .map_err(|m| grant_error(format!("{key}.hosts"), m))
                        })
                        .collect::<Result<Vec<_>, _>>()
                })
                .transpose()?;
            let in_plan = grant.in_plan.unwrap_or(true);
            secrets.insert(
                name.clone(),
                SecretGrant {
                    source,
                    hosts,
                    in_plan,
                },
            );
        }
        let mut limits = Limits::default();
        if let Some(t) = &self.timeout {
            limits.timeout = humantime::parse_duration(t).map_err(|e| {
                grant_error(
                    "timeout",
                    format!("{t:?} is not a duration ({e}); write it like \"30s\" or \"2m\""),
                )
            })?;
            if limits.timeout.is_zero() {
                return Err(grant_error("timeout", "must be more than zero"));
            }
            if limits.timeout > MAX_TIMEOUT {
                return Err(grant_error(
                    "timeout",
                    format!("{t:?} is longer than the longest plugin call, 1h"),
                ));
            }
        }
        if let Some(m) = &self.memory {
            limits.memory_bytes = parse_size("memory", m)?;
            if limits.memory_bytes > MAX_MEMORY_BYTES {
                return Err(grant_error(
                    "memory",
                    format!("{m} is over the engine's ceiling of 4GiB"),
                ));
            }
        }
        if let Some(m) = &self.max_response {
            limits.max_response_bytes = parse_size("max_response", m)?;
        }
        if let Some(d) = &self.disk {
            limits.disk_bytes = parse_size("disk", d)?;
        }
        let proxy = self.proxy.as_deref().map(ProxyGrant::parse).transpose()?;
        Ok(Grants {
            http,
            tcp,
            env: self.allow_env.clone(),
            dirs: self.dirs.clone(),
            secrets,
            limits,
            proxy,
        })
    }
}

/// The longest deadline a pipeline may give one plugin call (Cloud Run's slowest operations
/// take minutes; an hour is far past any of them).
pub const MAX_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

fn parse_size(key: &str, text: &str) -> Result<u64, GrantError> {
    text.parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| {
            grant_error(
                key,
                format!("{text:?} is not a size ({e}); write it like \"256MiB\""),
            )
        })
}

/// `scheme://host[:port]` with wildcards: scheme `*` (http or https), host `*` or `*.suffix`,
/// port `*`. Without a port the pattern matches the scheme's default port only. Scheme `tcp`
/// (port required) is for the host's TCP connects, never for HTTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpPattern {
    scheme: Option<String>,
    host: HostPattern,
    port: PortPattern,
    text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Any,
    Exact(String),
    Suffix(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortPattern {
    Any,
    Default,
    Exact(u16),
}

/// The port a URL uses when it names none.
pub fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

impl HttpPattern {
    pub fn parse(text: &str) -> Result<HttpPattern, String> {
        let hint = "write it as scheme://host[:port], such as \"https://*.example.com\" or \"http://localhost:*\"";
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| format!("{text:?} has no scheme; {hint}"))?;
        let scheme = match scheme {
            "*" => None,
            "http" | "https" | "tcp" => Some(scheme.to_string()),
            other => {
                return Err(format!(
                    "{text:?}: scheme {other:?} is not http, https, * or tcp"
                ));
            }
        };
        if rest.contains('/') || rest.contains('?') || rest.contains('@') {
            return Err(format!(
                "{text:?} must not have a path, query or user; {hint}"
            ));
        }
        // Split the port off, minding IPv6 literals in brackets.
        let (host, port) = if let Some(inner) = rest.strip_prefix('[') {
            let (addr, after) = inner
                .split_once(']')
                .ok_or_else(|| format!("{text:?}: unclosed '[' in the host"))?;
            (addr.to_string(), after.strip_prefix(':'))
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (rest.to_string(), None),
            }
        };
        let port = match port {
            None => PortPattern::Default,
            Some("*") => PortPattern::Any,
            Some(p) => PortPattern::Exact(
                p.parse()
                    .map_err(|_| format!("{text:?}: port {p:?} is not a number or *"))?,
            ),
        };
        if port == PortPattern::Default && scheme.is_none() {
            return Err(format!("{text:?}: with scheme * give a port or :*"));
        }
        if port == PortPattern::Default && scheme.as_deref() == Some("tcp") {
            return Err(format!(
                "{text:?}: a TCP destination needs a port, such as \"tcp://localhost:5432\" or \"tcp://localhost:*\""
            ));
        }
        let host = host.to_ascii_lowercase();
        let host = if host == "*" {
            HostPattern::Any
        } else if let Some(suffix) = host.strip_prefix("*.") {
            if suffix.is_empty() || suffix.contains('*') {
                return Err(format!(
                    "{text:?}: a wildcard host looks like *.example.com"
                ));
            }
            HostPattern::Suffix(format!(".{suffix}"))
        } else if host.is_empty() || host.contains('*') {
            return Err(format!(
                "{text:?}: '*' may only stand alone or as the first label; {hint}"
            ));
        } else {
            // Read as the HTTP client reads hosts, so `127.1` and `127.0.0.1` are one grant.
            HostPattern::Exact(
                host::canonical_host(&host)
                    .map_err(|e| format!("{text:?}: {e}"))?
                    .name,
            )
        };
        Ok(HttpPattern {
            scheme,
            host,
            port,
            text: text.to_string(),
        })
    }

    /// An `allow_tcp` entry, `host:port`, as the pattern `tcp://host:port`.
    pub fn parse_tcp(text: &str) -> Result<HttpPattern, String> {
        if text.contains("://") {
            return Err(format!(
                "{text:?}: write a TCP destination as host:port, such as \"localhost:5432\" or \"*.internal:*\""
            ));
        }
        let mut pattern = HttpPattern::parse(&format!("tcp://{text}"))?;
        pattern.text = text.to_string();
        Ok(pattern)
    }

    /// Whether a request to `scheme://host:port` matches. `host` is lower case, without brackets.
    /// Scheme `*` stands for http and https only: a TCP destination must be named as such.
    pub fn matches(&self, scheme: &str, host: &str, port: u16) -> bool {
        let scheme_ok = match self.scheme.as_deref() {
            Some(s) => s == scheme,
            None => scheme == "http" || scheme == "https",
        };
        let host_ok = match &self.host {
            HostPattern::Any => true,
            HostPattern::Exact(h) => h == host,
            HostPattern::Suffix(s) => host.ends_with(s.as_str()),
        };
        let port_ok = match self.port {
            PortPattern::Any => true,
            PortPattern::Exact(p) => p == port,
            PortPattern::Default => default_port(scheme) == Some(port),
        };
        scheme_ok && host_ok && port_ok
    }

    /// The IP address this pattern names literally, if it does.
    pub fn literal_ip(&self) -> Option<IpAddr> {
        match &self.host {
            HostPattern::Exact(h) => h.parse().ok(),
            _ => None,
        }
    }

    /// Whether the pattern names exactly this host and this port (no wildcard in either).
    pub fn names_exactly(&self, host: &str, port: u16) -> bool {
        self.names_host(host) && self.port == PortPattern::Exact(port)
    }

    /// Whether the pattern names exactly this host (no wildcard).
    pub fn names_host(&self, host: &str) -> bool {
        matches!(&self.host, HostPattern::Exact(h) if h == host)
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for HttpPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The grant that would allow a request to `scheme://host:port`: what a denial tells the user
/// to add.
pub fn suggested_http_grant(scheme: &str, host: &str, port: u16) -> String {
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    if default_port(scheme) == Some(port) {
        format!("{scheme}://{host}")
    } else {
        format!("{scheme}://{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> HttpPattern {
        HttpPattern::parse(s).unwrap()
    }

    #[test]
    fn a_proxy_is_a_plain_http_host_and_port_without_credentials() {
        let proxy = ProxyGrant::parse("http://10.8.0.2:3128").unwrap();
        assert_eq!(proxy.url, "http://10.8.0.2:3128");
        assert!(proxy.destination.matches("http", "10.8.0.2", 3128));
        assert_eq!(
            ProxyGrant::parse("http://proxy.internal").unwrap().url,
            "http://proxy.internal:80"
        );
        for (bad, why) in [
            ("https://proxy:3128", "is not an http:// proxy"),
            ("http://user:pw@proxy:3128", "carries credentials"),
            ("http://proxy:3128/path", "has a path"),
            ("proxy:3128", "is not an http:// proxy"),
            ("not a url", "is not a URL"),
        ] {
            let e = ProxyGrant::parse(bad).unwrap_err();
            assert_eq!(e.key, "proxy");
            assert!(e.message.contains(why), "{bad}: {}", e.message);
        }
    }

    #[test]
    fn exact_host_matches_default_port_only() {
        let pat = p("https://run.googleapis.com");
        assert!(pat.matches("https", "run.googleapis.com", 443));
        assert!(!pat.matches("https", "run.googleapis.com", 8443));
        assert!(!pat.matches("http", "run.googleapis.com", 443));
        assert!(!pat.matches("https", "evil.com", 443));
    }

    #[test]
    fn wildcard_host_needs_a_label_before_the_suffix() {
        let pat = p("https://*.googleapis.com");
        assert!(pat.matches("https", "run.googleapis.com", 443));
        assert!(!pat.matches("https", "googleapis.com", 443));
        assert!(!pat.matches("https", "evilgoogleapis.com", 443));
    }

    #[test]
    fn wildcard_port_and_scheme() {
        let pat = p("*://localhost:*");
        assert!(pat.matches("http", "localhost", 1));
        assert!(pat.matches("https", "localhost", 65535));
        assert!(!pat.matches("http", "127.0.0.1", 80));
    }

    #[test]
    fn tcp_destinations_are_their_own_scheme() {
        let tcp = HttpPattern::parse_tcp("db.internal:5432").unwrap();
        assert!(tcp.matches("tcp", "db.internal", 5432));
        assert!(!tcp.matches("http", "db.internal", 5432));
        assert_eq!(tcp.to_string(), "db.internal:5432");
        // `*` stands for http and https only, so an HTTP grant never opens TCP.
        assert!(!p("*://*:*").matches("tcp", "db.internal", 5432));
        assert!(p("tcp://*:*").matches("tcp", "db.internal", 5432));
        assert!(
            HttpPattern::parse_tcp("db.internal")
                .unwrap_err()
                .contains("needs a port")
        );
        assert!(
            HttpPattern::parse_tcp("tcp://db:1")
                .unwrap_err()
                .contains("host:port")
        );
        let config = GrantsConfig {
            allow_http: vec!["tcp://db:5432".into()],
            ..GrantsConfig::default()
        };
        let e = config.parse().unwrap_err();
        assert_eq!(e.key, "allow_http");
        assert!(
            e.message.contains("grant it as \"db:5432\" in allow_tcp"),
            "{e}"
        );
    }

    #[test]
    fn ipv6_literal() {
        let pat = p("http://[::1]:8080");
        assert!(pat.matches("http", "::1", 8080));
        assert_eq!(pat.literal_ip(), Some("::1".parse().unwrap()));
    }

    #[test]
    fn bad_patterns_say_what_is_wrong() {
        assert!(
            HttpPattern::parse("example.com")
                .unwrap_err()
                .contains("no scheme")
        );
        assert!(
            HttpPattern::parse("ftp://x")
                .unwrap_err()
                .contains("not http")
        );
        assert!(
            HttpPattern::parse("https://x/path")
                .unwrap_err()
                .contains("path")
        );
        assert!(
            HttpPattern::parse("https://a.*.com")
                .unwrap_err()
                .contains("first label")
        );
        assert!(
            HttpPattern::parse("http://x:port")
                .unwrap_err()
                .contains("not a number")
        );
        assert!(
            HttpPattern::parse("*://x")
                .unwrap_err()
                .contains("give a port")
        );
    }

    #[test]
    fn suggestions_omit_default_ports() {
        assert_eq!(suggested_http_grant("https", "a.com", 443), "https://a.com");
        assert_eq!(
            suggested_http_grant("http", "127.0.0.1", 8080),
            "http://127.0.0.1:8080"
        );
        assert_eq!(suggested_http_grant("http", "::1", 80), "http://[::1]");
    }

    #[test]
    fn limits_parse_with_units_and_defaults() {
        let cfg = GrantsConfig {
            timeout: Some("1500ms".into()),
            memory: Some("64MiB".into()),
            ..Default::default()
        };
        let g = cfg.parse().unwrap();
        assert_eq!(g.limits.timeout, Duration::from_millis(1500));
        assert_eq!(g.limits.memory_bytes, 64 << 20);
        assert_eq!(
            g.limits.max_response_bytes,
            Limits::default().max_response_bytes
        );
        let bad = GrantsConfig {
            memory: Some("lots".into()),
            ..Default::default()
        };
        assert_eq!(bad.parse().unwrap_err().key, "memory");
        let huge = GrantsConfig {
            memory: Some("8GiB".into()),
            ..Default::default()
        };
        assert!(huge.parse().unwrap_err().message.contains("ceiling"));
    }
}

/// A path no directory grant may expose: the compile cache, its key, the state, or (for
/// writable grants) the pipeline's own files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtectedPath {
    pub path: PathBuf,
    /// For people: "the compile cache", "the pipeline file".
    pub what: String,
    /// Whether even a read-only grant is refused (the cache, its key, the state).
    pub unreadable: bool,
}

impl ProtectedPath {
    /// Why granting `dir` (writable or not) would expose this path, if it would. A grant
    /// exposes a path it contains, and for a protected directory also any part of it.
    pub fn exposed_by(&self, dir: &std::path::Path, writable: bool) -> Option<String> {
        if !writable && !self.unreadable {
            return None;
        }
        let dir = std::fs::canonicalize(dir).ok()?;
        let path = canonical_or_nearest(&self.path);
        let exposed = path.starts_with(&dir) || (self.unreadable && dir.starts_with(&path));
        exposed.then(|| {
            format!(
                "directory {} would let the plugin {} {} ({}); grant a directory that does not contain it",
                dir.display(),
                if writable { "change" } else { "read" },
                self.what,
                self.path.display()
            )
        })
    }
}

/// The canonical form of a path, or of its nearest existing ancestor with the rest appended
/// (a cache directory that does not exist yet is still protected).
fn canonical_or_nearest(path: &std::path::Path) -> PathBuf {
    let mut rest = Vec::new();
    let mut current = path.to_path_buf();
    loop {
        if let Ok(found) = std::fs::canonicalize(&current) {
            return rest.iter().rev().fold(found, |acc, part| acc.join(part));
        }
        match (current.file_name().map(|n| n.to_owned()), current.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                current = parent.to_path_buf();
            }
            _ => return path.to_path_buf(),
        }
    }
}
