//! Which network addresses a plugin may reach, decided once for HTTP and TCP.
//!
//! A host is read by the same parser the HTTP client uses (the WHATWG URL parser of the `url`
//! crate), so every spelling of an address that the client would connect to without name
//! resolution (`0x7f.0.0.1`, `2130706433`, `0177.0.0.1`, `127.1`, `127.0.0.1.`, `0`,
//! `[::ffff:7f00:1]`) is recognised as that address before any rule is applied. Grants are
//! read by the same parser, so a grant and a request name a host the same way.
//!
//! Internal addresses (loopback, private, link-local and cloud metadata, carrier-grade NAT,
//! reserved and documentation ranges, and IPv6 forms that embed an internal IPv4 address) are
//! reachable only by naming them: an address literal in both the URL and a grant with the same
//! port, or `localhost` granted with that port. A name that resolves to an internal address is
//! refused whatever else is granted. The local platform's admin ports are reachable only
//! through a grant that names the host and port exactly, never through a wildcard.

use crate::grants::HttpPattern;
pub use crate::grants::host::{CanonicalHost, canonical_host};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Whether an address belongs to a network a plugin must not reach unless it names it.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => is_internal_v6(v6),
    }
}

fn is_internal_v4(v4: Ipv4Addr) -> bool {
    let [a, b, c, _] = v4.octets();
    v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local() // 169.254.0.0/16, cloud metadata among them
        || v4.is_broadcast()
        || v4.is_multicast()
        || a == 0 // "this network", 0.0.0.0 connects to the local host
        || a >= 240 // reserved
        || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT
        || (a == 192 && b == 0 && (c == 0 || c == 2)) // IETF protocol assignments, TEST-NET-1
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || (a == 198 && b == 51 && c == 100) // TEST-NET-2
        || (a == 203 && b == 0 && c == 113) // TEST-NET-3
}

fn is_internal_v6(v6: Ipv6Addr) -> bool {
    let s = v6.segments();
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from(((hi as u32) << 16) | lo as u32);
    if let Some(v4) = v6.to_ipv4_mapped() {
        return is_internal_v4(v4); // ::ffff:a.b.c.d
    }
    if s[..6] == [0; 6] {
        return true; // ::, ::1 and the deprecated IPv4-compatible ::a.b.c.d
    }
    if s[..6] == [0, 0, 0, 0, 0xffff, 0] || s[..6] == [0, 0, 0, 0, 0, 0xffff] {
        return true; // IPv4-translated
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return is_internal_v4(embedded(s[6], s[7])); // NAT64, 64:ff9b::/96
    }
    if s[0] == 0x2002 {
        return is_internal_v4(embedded(s[1], s[2])); // 6to4, 2002::/16
    }
    (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1) // local-use NAT64, 64:ff9b:1::/48
        || (s[0] == 0x2001 && s[1] == 0) // Teredo, whose client address is hidden
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[..4] == [0x100, 0, 0, 0]) // discard-only
        || v6.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local, fd00:ec2::254 (AWS metadata) among them
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated, still routed by some)
}

/// Whether an address is this machine itself: where the local platform's admin API listens.
fn is_this_machine(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.octets()[0] == 0,
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| is_this_machine(v4.into()))
        }
    }
}

/// A request the policy refuses, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// An internal address that no grant names with this port.
    Internal,
    /// The local platform's admin port through a wildcard grant.
    AdminPort,
}

/// Which internal destinations a plugin's grants open.
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    /// Grants whose host is an address literal: each opens that address on its own ports.
    literal: Vec<HttpPattern>,
    /// Grants naming `localhost`: each opens loopback, for that name, on its own ports.
    localhost: Vec<HttpPattern>,
    /// Every grant, to find one naming an admin destination exactly.
    granted: Vec<HttpPattern>,
    /// The local platform's admin ports on this machine.
    admin_ports: Vec<u16>,
}

impl AddressPolicy {
    pub fn new(granted: &[HttpPattern], admin_ports: &[u16]) -> AddressPolicy {
        AddressPolicy {
            literal: granted
                .iter()
                .filter(|p| p.literal_ip().is_some())
                .cloned()
                .collect(),
            localhost: granted
                .iter()
                .filter(|p| p.names_host("localhost"))
                .cloned()
                .collect(),
            granted: granted.to_vec(),
            admin_ports: admin_ports.to_vec(),
        }
    }

    /// Checks a destination before any connection: address literals in full, names for the
    /// rules that need the port (`localhost`, the admin ports). Resolved addresses of other
    /// names are checked by [`AddressPolicy::allows_resolved`].
    pub fn check(&self, scheme: &str, host: &CanonicalHost, port: u16) -> Result<(), Refusal> {
        let local = host.name == "localhost" || host.ip.is_some_and(is_this_machine);
        if local
            && self.admin_ports.contains(&port)
            && !self
                .granted
                .iter()
                .any(|p| p.names_exactly(&host.name, port))
        {
            return Err(Refusal::AdminPort);
        }
        let opened_by =
            |grants: &[HttpPattern]| grants.iter().any(|p| p.matches(scheme, &host.name, port));
        match host.ip {
            Some(ip) if is_internal(ip) && !opened_by(&self.literal) => Err(Refusal::Internal),
            None if host.name == "localhost" && !opened_by(&self.localhost) => {
                Err(Refusal::Internal)
            }
            _ => Ok(()),
        }
    }

    /// Whether a name may connect to an address it resolved to: public addresses always;
    /// loopback for `localhost` when it is granted (its port was checked by
    /// [`AddressPolicy::check`]); no other internal address.
    pub fn allows_resolved(&self, name: &str, ip: IpAddr) -> bool {
        !is_internal(ip) || (name == "localhost" && ip.is_loopback() && !self.localhost.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(text: &str) -> CanonicalHost {
        canonical_host(text).unwrap()
    }

    #[test]
    fn every_spelling_of_loopback_is_read_as_loopback() {
        for spelling in [
            "0x7f.0.0.1",
            "2130706433",
            "0177.0.0.1",
            "127.1",
            "127.0.0.1.",
            "0x7F000001",
            "127.000.000.001",
        ] {
            assert_eq!(
                host(spelling).ip,
                Some("127.0.0.1".parse().unwrap()),
                "{spelling}"
            );
        }
        assert_eq!(host("0").ip, Some("0.0.0.0".parse().unwrap()));
        assert_eq!(host("[::ffff:7f00:1]").name, "::ffff:127.0.0.1");
        assert_eq!(host("::1").ip, Some("::1".parse().unwrap()));
        assert_eq!(host("Example.COM").name, "example.com");
        assert_eq!(host("2852039166").name, "169.254.169.254");
    }

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
            "0.1.2.3",
            "240.0.0.1",
            "192.0.0.8",
            "198.18.0.1",
            "::",
            "::1",
            "::127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::1",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
            "2001::1",
            "2001:db8::1",
            "fd00:ec2::254",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "224.0.0.1",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip} should be internal");
        }
        for ip in [
            "8.8.8.8",
            "142.250.1.1",
            "2001:4860:4860::8888",
            "100.128.0.1",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip} should be public");
        }
    }

    fn policy(grants: &[&str], admin: &[u16]) -> AddressPolicy {
        let grants: Vec<HttpPattern> = grants
            .iter()
            .map(|p| HttpPattern::parse(p).unwrap())
            .collect();
        AddressPolicy::new(&grants, admin)
    }

    #[test]
    fn an_internal_address_is_opened_only_on_the_ports_its_grant_names() {
        let p = policy(
            &[
                "http://10.0.0.5:8080",
                "http://*:*",
                "http://localhost:9000",
            ],
            &[],
        );
        assert_eq!(p.check("http", &host("10.0.0.5"), 8080), Ok(()));
        assert_eq!(
            p.check("http", &host("10.0.0.5"), 22),
            Err(Refusal::Internal)
        );
        assert_eq!(
            p.check("http", &host("10.0.0.6"), 8080),
            Err(Refusal::Internal)
        );
        assert_eq!(p.check("http", &host("localhost"), 9000), Ok(()));
        assert_eq!(
            p.check("http", &host("localhost"), 22),
            Err(Refusal::Internal)
        );
        assert_eq!(
            p.check("http", &host("2130706433"), 80),
            Err(Refusal::Internal)
        );
        assert_eq!(p.check("http", &host("example.com"), 80), Ok(()));
        assert!(p.allows_resolved("localhost", "127.0.0.1".parse().unwrap()));
        assert!(!p.allows_resolved("rebound.example", "127.0.0.1".parse().unwrap()));
        assert!(!p.allows_resolved("rebound.example", "10.0.0.5".parse().unwrap()));
        assert!(!p.allows_resolved("localhost.", "127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn the_admin_port_needs_a_grant_naming_it_exactly() {
        let wildcard = policy(&["http://localhost:*", "http://127.0.0.1:*"], &[7700]);
        assert_eq!(
            wildcard.check("http", &host("localhost"), 7700),
            Err(Refusal::AdminPort)
        );
        assert_eq!(
            wildcard.check("http", &host("127.1"), 7700),
            Err(Refusal::AdminPort)
        );
        assert_eq!(
            wildcard.check("http", &host("[::ffff:127.0.0.1]"), 7700),
            Err(Refusal::AdminPort)
        );
        assert_eq!(wildcard.check("http", &host("localhost"), 8080), Ok(()));
        let exact = policy(&["http://localhost:7700"], &[7700]);
        assert_eq!(exact.check("http", &host("localhost"), 7700), Ok(()));
        assert_eq!(
            exact.check("http", &host("127.0.0.1"), 7700),
            Err(Refusal::AdminPort)
        );
    }
}
