//! TCP connects for health checks (`engine:plugin/tcp`).
//!
//! The plugin never holds a socket (WASI sockets stay denied): it asks the host to connect to
//! `host:port`, and the host checks, in order, that the plugin declares the destination, that
//! the pipeline grants it in `allow_tcp`, and that the resolved address is not internal unless
//! the grant names it (the same rule as for HTTP), then connects, measures and closes.

use super::address::{AddressPolicy, Refusal, canonical_host};
use super::bindings::health::engine::plugin::tcp::{ConnectError, Connected};
use super::events::{Capability, Denial, EventSink, PluginEvent};
use crate::grants::HttpPattern;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What every TCP connect of one loaded plugin is checked against.
pub struct TcpPolicy {
    plugin: String,
    granted: Vec<HttpPattern>,
    declared: Vec<HttpPattern>,
    addresses: AddressPolicy,
    resolve_overrides: Arc<HashMap<String, Vec<IpAddr>>>,
    sink: Arc<dyn EventSink>,
}

impl TcpPolicy {
    pub(crate) fn new(
        plugin: &str,
        granted: Vec<HttpPattern>,
        declared: Vec<HttpPattern>,
        runtime: &super::RuntimeShared,
    ) -> TcpPolicy {
        TcpPolicy {
            plugin: plugin.to_string(),
            addresses: AddressPolicy::new(&granted, &runtime.local_admin_ports),
            granted,
            declared,
            resolve_overrides: runtime.resolve_overrides.clone(),
            sink: runtime.sink.clone(),
        }
    }

    fn deny(&self, capability: Capability, attempted: String, hint: String) -> ConnectError {
        let message = format!("{attempted}: {hint}");
        self.sink.event(PluginEvent::Denied(Denial {
            plugin: self.plugin.clone(),
            capability,
            attempted,
            hint,
        }));
        ConnectError::Denied(message)
    }

    /// Connects to `host:port` within `timeout` and closes the connection at once.
    pub async fn connect(
        &self,
        host: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<Connected, ConnectError> {
        let started = Instant::now();
        let canonical = canonical_host(host).map_err(ConnectError::Unresolved)?;
        let host = canonical.name.clone();
        let shown = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        if !self.declared.iter().any(|p| p.matches("tcp", &host, port)) {
            return Err(self.deny(
                Capability::Tcp,
                format!("connect {shown}"),
                format!(
                    "the plugin does not declare it (declare \"tcp://{shown}\" in its capabilities)"
                ),
            ));
        }
        if !self.granted.iter().any(|p| p.matches("tcp", &host, port)) {
            return Err(self.deny(
                Capability::Tcp,
                format!("connect {shown}"),
                format!("add \"{shown}\" to allow_tcp in [plugins.{}]", self.plugin),
            ));
        }
        if let Err(refusal) = self.addresses.check("tcp", &canonical, port) {
            let why = match refusal {
                Refusal::Internal => {
                    "an internal address no grant names with this port".to_string()
                }
                Refusal::AdminPort => format!(
                    "port {port} is the local platform's admin API, which no wildcard grant reaches"
                ),
            };
            return Err(self.deny(
                Capability::Address,
                format!("connect {shown} ({why})"),
                format!("grant it exactly, \"{shown}\" in allow_tcp in [plugins.{}], if the check really must reach it", self.plugin),
            ));
        }
        let lookup = super::egress::lookup(&self.resolve_overrides, &host);
        let resolved = match tokio::time::timeout(timeout, lookup).await {
            Err(_) => return Err(ConnectError::TimedOut),
            Ok(Err(e)) => return Err(ConnectError::Unresolved(format!("{host}: {e}"))),
            Ok(Ok(addresses)) => addresses,
        };
        let allowed: Vec<IpAddr> = resolved
            .iter()
            .copied()
            .filter(|ip| canonical.ip == Some(*ip) || self.addresses.allows_resolved(&host, *ip))
            .collect();
        if allowed.is_empty() {
            return Err(self.deny(
                Capability::Address,
                format!("connect {shown} (resolves only to internal addresses {resolved:?})"),
                format!(
                    "grant the address itself in allow_tcp in [plugins.{}], if the plugin really must reach it",
                    self.plugin
                ),
            ));
        }
        let mut last = ConnectError::TimedOut;
        for ip in allowed {
            let address = SocketAddr::new(ip, port);
            let left = timeout.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Err(ConnectError::TimedOut);
            }
            match tokio::time::timeout(left, tokio::net::TcpStream::connect(address)).await {
                Ok(Ok(stream)) => {
                    drop(stream);
                    return Ok(Connected {
                        address: address.to_string(),
                        elapsed_us: started.elapsed().as_micros() as u64,
                    });
                }
                Ok(Err(e)) => last = ConnectError::Refused(format!("{address}: {e}")),
                Err(_) => last = ConnectError::TimedOut,
            }
        }
        Err(last)
    }
}
