//! How a grant or a request names a host: read by the same parser the HTTP client uses, so that
//! every spelling of an address is that address (the runtime decides on addresses in this form).

use std::net::IpAddr;

/// A destination host read by the URL parser: lower case, IDNA-normalised, IPv6 without
/// brackets; `ip` is set when the host is an address in any spelling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalHost {
    pub name: String,
    pub ip: Option<IpAddr>,
}

/// Reads `host` (no port; IPv6 with or without brackets) as the HTTP client would.
pub fn canonical_host(host: &str) -> Result<CanonicalHost, String> {
    let bracketed = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    let url = reqwest::Url::parse(&format!("http://{bracketed}/"))
        .map_err(|e| format!("{host:?} is not a valid host name or address: {e}"))?;
    url.host()
        .map(CanonicalHost::from)
        .ok_or_else(|| format!("{host:?} has no host"))
}

impl From<url::Host<&str>> for CanonicalHost {
    fn from(host: url::Host<&str>) -> CanonicalHost {
        match host {
            url::Host::Ipv4(v4) => CanonicalHost {
                name: v4.to_string(),
                ip: Some(IpAddr::V4(v4)),
            },
            url::Host::Ipv6(v6) => CanonicalHost {
                name: v6.to_string(),
                ip: Some(IpAddr::V6(v6)),
            },
            url::Host::Domain(name) => CanonicalHost {
                name: name.to_string(),
                ip: None,
            },
        }
    }
}
