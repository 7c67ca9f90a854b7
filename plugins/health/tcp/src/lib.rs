//! The `tcp` health check: connects to a port like a Kubernetes `tcpSocket` probe. The host
//! makes each connection (the plugin holds no socket) and only to destinations the pipeline
//! grants in `allow_tcp`. By default it connects to the host and port of the revision's URL;
//! `port` picks another port on that host, `address` a fixed destination (a database, a cache).

use engine_sdk::health::{CheckResult, Probe, Probing, Reach, Target};
use engine_sdk::tcp::{self, ConnectError};
use engine_sdk::{Capabilities, Diagnostic, Error, ErrorExt, Health, PluginInfo};
use serde::Deserialize;
use std::time::Instant;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `revision` (its own URL, falling back to the service's) or `service` (the front door).
    pub target: String,
    /// Another port on the target's host.
    pub port: Option<u16>,
    /// A fixed `host:port` instead of the target's URL.
    pub address: Option<String>,
    /// One connect's timeout.
    pub timeout: String,
    /// Between connects.
    pub interval: String,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            target: "revision".into(),
            port: None,
            address: None,
            timeout: "2s".into(),
            interval: "1s".into(),
            success_threshold: 1,
            failure_threshold: 3,
        }
    }
}

pub const CONFIG_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "tcp health check",
  "type": "object",
  "properties": {
    "target": { "enum": ["revision", "service"], "default": "revision", "description": "Connect to the host and port of the revision's own URL, or of the service's front door." },
    "port": { "type": "integer", "minimum": 1, "maximum": 65535, "description": "Another port on the target's host." },
    "address": { "type": "string", "description": "A fixed host:port instead of the target's URL, such as db.internal:5432." },
    "timeout": { "type": "string", "default": "2s" },
    "interval": { "type": "string", "default": "1s" },
    "success_threshold": { "type": "integer", "minimum": 1, "default": 1 },
    "failure_threshold": { "type": "integer", "minimum": 1, "default": 3 }
  },
  "additionalProperties": false
}"#;

/// Where to connect, once the configuration is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// A fixed `host:port`.
    Fixed { host: String, port: u16 },
    /// The host of the target's endpoint, on its own port or on `port`.
    Endpoint { reach: Reach, port: Option<u16> },
}

pub struct Parsed {
    pub destination: Destination,
    pub probing: Probing,
}

/// Splits `host:port` (`[::1]:5432` for IPv6).
pub fn split_address(text: &str) -> Result<(String, u16), String> {
    let hint = "write it as host:port, such as db.internal:5432 or [::1]:6379";
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("{text:?} has no port; {hint}"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("{text:?} has no host; {hint}"));
    }
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{text:?}: port {port:?} is not 1-65535; {hint}"))?;
    Ok((host.to_string(), port))
}

pub fn parse(text: &str) -> Result<Parsed, Error> {
    let text = if text.trim().is_empty() { "{}" } else { text };
    let config: Config = serde_json::from_str(text)
        .map_err(|e| Error::invalid_config(format!("tcp check configuration: {e}")))?;
    let reach = Reach::parse("tcp", &config.target)?;
    let destination = match (&config.address, config.port) {
        (Some(_), Some(_)) => {
            return Err(Error::invalid_config(
                "tcp check: set `address` (a fixed host:port) or `port` (on the target's host), not both",
            ));
        }
        (Some(address), None) => {
            let (host, port) = split_address(address)
                .map_err(|m| Error::invalid_config(format!("tcp check `address` {m}")))?;
            Destination::Fixed { host, port }
        }
        (None, port) => Destination::Endpoint { reach, port },
    };
    let probing = Probing::parse(
        "tcp",
        &config.timeout,
        &config.interval,
        config.success_threshold,
        config.failure_threshold,
    )?;
    Ok(Parsed {
        destination,
        probing,
    })
}

/// The host and port to connect to for `target`.
pub fn resolve(destination: &Destination, target: &Target) -> Result<(String, u16), Error> {
    match destination {
        Destination::Fixed { host, port } => Ok((host.clone(), *port)),
        Destination::Endpoint { reach, port } => {
            let url = &engine_sdk::health::endpoint(target, *reach)?.url;
            let uri: http::Uri = url
                .parse()
                .map_err(|e| Error::fatal(format!("the provider's URL {url:?}: {e}")))?;
            let host = uri
                .host()
                .ok_or_else(|| Error::fatal(format!("the provider's URL {url:?} has no host")))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let default_port = match uri.scheme_str() {
                Some("https") => 443,
                _ => 80,
            };
            Ok((host, port.or(uri.port_u16()).unwrap_or(default_port)))
        }
    }
}

pub struct TcpCheck;

impl Health for TcpCheck {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "tcp".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Connects to a port of the revision, or a fixed address, with thresholds"
                .into(),
            config_schema: CONFIG_SCHEMA.into(),
            features: Vec::new(),
            capabilities: Capabilities {
                // The destinations come from the provider or the configuration; the pipeline
                // grants which ones with allow_tcp (such as "localhost:*").
                http: vec!["tcp://*:*".into()],
                env: Vec::new(),
                dirs: Vec::new(),
                secrets: Vec::new(),
            },
        }
    }

    fn validate(config: String) -> Vec<Diagnostic> {
        engine_sdk::config_diagnostics(parse(&config), None)
    }

    fn check(config: String, target: Target) -> Result<CheckResult, Error> {
        let Parsed {
            destination,
            probing,
        } = parse(&config)?;
        let (host, port) = resolve(&destination, &target)?;
        let shown = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        probing.run(|| {
            let started = Instant::now();
            let outcome = match tcp::connect(&host, port, probing.timeout) {
                Ok(c) => Ok(format!("connected to {shown} ({})", c.address)),
                // A refused grant is the pipeline's mistake, not the service's ill health.
                Err(e @ ConnectError::Denied(_)) => {
                    return Err(Error::unauthorized(format!(
                        "tcp check cannot connect to {shown}: {e}"
                    )));
                }
                Err(e) => Err(format!("connect {shown}: {e}")),
            };
            Ok(Probe {
                outcome,
                latency: started.elapsed(),
            })
        })
    }
}

engine_sdk::export_health!(TcpCheck);

#[cfg(test)]
mod tests {
    use super::*;
    use engine_sdk::{Endpoint, EndpointKind, Verdict};

    fn target(urls: &[(&str, EndpointKind)]) -> Target {
        Target {
            service: "api".into(),
            revision: Some("api-2".into()),
            endpoints: urls
                .iter()
                .map(|(url, kind)| Endpoint {
                    url: url.to_string(),
                    kind: *kind,
                    revision: (*kind == EndpointKind::Revision).then(|| "api-2".into()),
                })
                .collect(),
            since_ms: 0,
        }
    }

    #[test]
    fn the_destination_comes_from_the_revision_url_the_port_or_the_address() {
        let t = target(&[
            ("http://localhost:8080", EndpointKind::Service),
            ("http://127.0.0.1:41234/", EndpointKind::Revision),
        ]);
        let at = |config: &str| resolve(&parse(config).unwrap().destination, &t).unwrap();
        assert_eq!(at("{}"), ("127.0.0.1".into(), 41234));
        assert_eq!(at(r#"{"target": "service"}"#), ("localhost".into(), 8080));
        assert_eq!(at(r#"{"port": 9090}"#), ("127.0.0.1".into(), 9090));
        assert_eq!(
            at(r#"{"address": "db.internal:5432"}"#),
            ("db.internal".into(), 5432)
        );
        assert_eq!(at(r#"{"address": "[::1]:6379"}"#), ("::1".into(), 6379));
        let https = target(&[("https://api.example.com", EndpointKind::Service)]);
        assert_eq!(
            resolve(&parse("{}").unwrap().destination, &https).unwrap(),
            ("api.example.com".into(), 443)
        );
    }

    #[test]
    fn bad_configurations_say_what_to_fix() {
        for (text, expected) in [
            (r#"{"address": "db.internal"}"#, "has no port"),
            (r#"{"address": "db:0"}"#, "is not 1-65535"),
            (r#"{"address": "db:5432", "port": 1}"#, "not both"),
            (r#"{"target": "pod"}"#, "use \"revision\" or \"service\""),
            (r#"{"timeout": "soon"}"#, "write it like 500ms, 30s or 5m"),
            (r#"{"hostt": "x"}"#, "unknown field `hostt`"),
        ] {
            let e = parse(text)
                .err()
                .unwrap_or_else(|| panic!("{text} should fail"));
            assert!(e.describe().contains(expected), "{text}: {}", e.describe());
        }
    }

    #[test]
    fn a_listening_port_is_healthy_and_a_closed_one_unhealthy() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = listener.local_addr().unwrap().port();
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let t = target(&[]);
        let config =
            |port: u16| format!(r#"{{"address": "127.0.0.1:{port}", "interval": "10ms"}}"#);
        let healthy = TcpCheck::check(config(open), t.clone()).unwrap();
        assert_eq!(healthy.verdict, Verdict::Healthy, "{}", healthy.message);
        assert!(healthy.message.contains("connected to 127.0.0.1:"));
        let unhealthy = TcpCheck::check(config(closed), t).unwrap();
        assert_eq!(unhealthy.verdict, Verdict::Unhealthy);
        assert!(
            unhealthy.message.contains("refused") && unhealthy.message.contains("3 failure(s)"),
            "{}",
            unhealthy.message
        );
    }
}
