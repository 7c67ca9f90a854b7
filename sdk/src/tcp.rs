//! TCP connects for health checks. The host makes the connection (the plugin never holds a
//! socket), so it can apply the pipeline's `allow_tcp` grant and the same address rules as for
//! HTTP. Declare the destinations as `tcp://host:port` patterns in `Capabilities::http`.
//!
//! Compiled natively (in a plugin's unit tests) the connect is a real `std::net` connect with
//! no grant checks.

use std::time::Duration;

/// A connection the destination accepted; the host has already closed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connected {
    /// The address that accepted, as `ip:port`.
    pub address: String,
    /// How long the connect took, name resolution included.
    pub elapsed: Duration,
}

/// Why no connection was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectError {
    /// Not declared, not granted, or only internal addresses the grant does not name.
    Denied(String),
    /// The host name does not resolve.
    Unresolved(String),
    /// Refused or unreachable: nothing listens there.
    Refused(String),
    /// No answer within the timeout.
    TimedOut,
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Denied(m) => write!(f, "denied: {m}"),
            ConnectError::Unresolved(m) => write!(f, "does not resolve: {m}"),
            ConnectError::Refused(m) => write!(f, "refused: {m}"),
            ConnectError::TimedOut => f.write_str("timed out"),
        }
    }
}

impl std::error::Error for ConnectError {}

/// Connects to `host:port` within `timeout` and closes the connection again.
pub fn connect(host: &str, port: u16, timeout: Duration) -> Result<Connected, ConnectError> {
    let timeout_ms = u32::try_from(timeout.as_millis())
        .unwrap_or(u32::MAX)
        .max(1);
    #[cfg(target_arch = "wasm32")]
    {
        use crate::bindings::engine::plugin::tcp;
        match tcp::connect(host, port, timeout_ms) {
            Ok(c) => Ok(Connected {
                address: c.address,
                elapsed: Duration::from_micros(c.elapsed_us),
            }),
            Err(tcp::ConnectError::Denied(m)) => Err(ConnectError::Denied(m)),
            Err(tcp::ConnectError::Unresolved(m)) => Err(ConnectError::Unresolved(m)),
            Err(tcp::ConnectError::Refused(m)) => Err(ConnectError::Refused(m)),
            Err(tcp::ConnectError::TimedOut) => Err(ConnectError::TimedOut),
        }
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        native_connect(host, port, Duration::from_millis(u64::from(timeout_ms)))
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn native_connect(host: &str, port: u16, timeout: Duration) -> Result<Connected, ConnectError> {
    use std::net::{TcpStream, ToSocketAddrs};
    let started = std::time::Instant::now();
    let addresses: Vec<_> = (host, port)
        .to_socket_addrs()
        .map_err(|e| ConnectError::Unresolved(format!("{host}: {e}")))?
        .collect();
    let mut last = ConnectError::Unresolved(format!("{host} has no address"));
    for address in addresses {
        let left = timeout.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Err(ConnectError::TimedOut);
        }
        match TcpStream::connect_timeout(&address, left) {
            Ok(_) => {
                return Ok(Connected {
                    address: address.to_string(),
                    elapsed: started.elapsed(),
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => last = ConnectError::TimedOut,
            Err(e) => last = ConnectError::Refused(format!("{address}: {e}")),
        }
    }
    Err(last)
}
