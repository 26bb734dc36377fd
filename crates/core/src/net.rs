//! Which network addresses outbound requests on a client's behalf may reach
//! (the one SSRF policy, used for image URLs and webhook URLs).
//!
//! The rule follows the IANA IPv4 and IPv6 Special-Purpose Address
//! Registries: every entry that is not globally reachable is forbidden, and
//! so is every IPv6 form whose IPv4 address a kernel or a translator will
//! actually reach when that IPv4 address is forbidden.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An IPv4 range: network, prefix length, registry name.
type V4Range = (Ipv4Addr, u8, &'static str);
/// An IPv6 range: network, prefix length, registry name.
type V6Range = (Ipv6Addr, u8, &'static str);

/// IPv4 ranges that are not globally reachable. A few registry entries
/// inside 192.0.0.0/24 are marked reachable (PCP and TURN anycast,
/// 192.0.0.9 and .10); no image or webhook lives there, so the whole /24
/// stays forbidden.
const FORBIDDEN_V4: &[V4Range] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8, "this network"),
    (Ipv4Addr::new(10, 0, 0, 0), 8, "private use"),
    (
        Ipv4Addr::new(100, 64, 0, 0),
        10,
        "shared address space (CGN)",
    ),
    (Ipv4Addr::new(127, 0, 0, 0), 8, "loopback"),
    (
        Ipv4Addr::new(169, 254, 0, 0),
        16,
        "link local (cloud metadata)",
    ),
    (Ipv4Addr::new(172, 16, 0, 0), 12, "private use"),
    (Ipv4Addr::new(192, 0, 0, 0), 24, "IETF protocol assignments"),
    (
        Ipv4Addr::new(192, 0, 2, 0),
        24,
        "documentation (TEST-NET-1)",
    ),
    (Ipv4Addr::new(192, 88, 99, 0), 24, "6to4 relay anycast"),
    (Ipv4Addr::new(192, 168, 0, 0), 16, "private use"),
    (Ipv4Addr::new(198, 18, 0, 0), 15, "benchmarking"),
    (
        Ipv4Addr::new(198, 51, 100, 0),
        24,
        "documentation (TEST-NET-2)",
    ),
    (
        Ipv4Addr::new(203, 0, 113, 0),
        24,
        "documentation (TEST-NET-3)",
    ),
    (Ipv4Addr::new(224, 0, 0, 0), 4, "multicast"),
    (Ipv4Addr::new(240, 0, 0, 0), 4, "reserved"),
    (Ipv4Addr::new(255, 255, 255, 255), 32, "limited broadcast"),
];

/// IPv6 ranges that are forbidden whatever they carry. Three forms that
/// carry an IPv4 address are deliberately absent (IPv4-mapped, IPv4-
/// translated, NAT64 64:ff9b::/96, 6to4 2002::/16): their carried address
/// decides (see [`embedded_ipv4`]). 2001::/23 is forbidden whole, Teredo
/// (2001::/32) included, though the registry marks a few small entries in
/// it reachable (anycast, AMT, AS112, ORCHIDv2): none serves images or
/// webhooks.
const FORBIDDEN_V6: &[V6Range] = &[
    (Ipv6Addr::UNSPECIFIED, 128, "unspecified"),
    (Ipv6Addr::LOCALHOST, 128, "loopback"),
    (
        Ipv6Addr::UNSPECIFIED,
        96,
        "IPv4-compatible (deprecated, RFC 4291)",
    ),
    (
        Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0),
        48,
        "local-use IPv4/IPv6 translation",
    ),
    (
        Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0),
        64,
        "discard only",
    ),
    (
        Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0),
        23,
        "IETF protocol assignments (Teredo included)",
    ),
    (
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0),
        32,
        "documentation",
    ),
    (
        Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0),
        20,
        "documentation",
    ),
    (
        Ipv6Addr::new(0x5f00, 0, 0, 0, 0, 0, 0, 0),
        16,
        "segment routing SIDs",
    ),
    (
        Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0),
        7,
        "unique local",
    ),
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10, "link local"),
    (
        Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0),
        10,
        "site local (deprecated)",
    ),
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8, "multicast"),
];

/// Whether a URL a client gives us (an image to fetch, a webhook to call)
/// may not reach `ip` unless private addresses are explicitly allowed.
///
/// Forbidden: every range of the IANA special-purpose registries that is
/// not globally reachable (loopback, private, link local and so cloud
/// metadata, CGN, documentation, benchmarking, multicast, reserved,
/// unique local, deprecated site local, IPv4-compatible, local-use NAT64,
/// 2001::/23 with Teredo).
///
/// IPv6 forms that carry an IPv4 address are decoded and the carried
/// address is checked with the IPv4 rule: IPv4-mapped `::ffff:a.b.c.d`,
/// IPv4-translated `::ffff:0:a.b.c.d`, NAT64 `64:ff9b::a.b.c.d` and 6to4
/// `2002:aabb:ccdd::/48`. Such an address carrying a **public** IPv4
/// address is allowed: a dual-stack socket, an IPv6-only host behind DNS64
/// or a 6to4 relay reaches exactly that public host, so refusing it would
/// only break legitimate fetches; carrying a forbidden one (e.g.
/// `64:ff9b::7f00:1`, `2002:a9fe:a9fe::`) is forbidden.
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => forbidden_v4_range(v4).is_some(),
        IpAddr::V6(v6) => {
            forbidden_v6_range(v6).is_some()
                || embedded_ipv4(v6).is_some_and(|v4| forbidden_v4_range(v4).is_some())
        }
    }
}

/// The IPv4 address an IPv6 address carries, for the forms that carry one:
/// IPv4-mapped (`::ffff:0:0/96`), IPv4-translated (`::ffff:0:0:0/96`),
/// IPv4-compatible (`::/96`, but not `::` and `::1`), NAT64 well-known
/// prefix (`64:ff9b::/96`), all in the last 32 bits; 6to4 (`2002::/16`, bits
/// 16..48); Teredo (`2001::/32`, the client's address is the last 32 bits
/// inverted).
pub fn embedded_ipv4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = u128::from(ip);
    let last32 = Ipv4Addr::from(bits as u32);
    let in_prefix = |net: Ipv6Addr, len: u8| in_v6(ip, net, len);
    if in_prefix(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96)
        || in_prefix(Ipv6Addr::new(0, 0, 0, 0, 0xffff, 0, 0, 0), 96)
        || in_prefix(Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96)
        || (in_prefix(Ipv6Addr::UNSPECIFIED, 96) && bits > 1)
    {
        return Some(last32);
    }
    if in_prefix(Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16) {
        return Some(Ipv4Addr::from((bits >> 80) as u32));
    }
    if in_prefix(Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 32) {
        return Some(Ipv4Addr::from(!(bits as u32)));
    }
    None
}

/// The registry name of the forbidden IPv4 range holding `ip`, if any.
fn forbidden_v4_range(ip: Ipv4Addr) -> Option<&'static str> {
    FORBIDDEN_V4
        .iter()
        .find(|(net, len, _)| {
            let mask = u32::MAX.checked_shl(32 - u32::from(*len)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(*net) & mask
        })
        .map(|(_, _, name)| *name)
}

/// The registry name of the forbidden IPv6 range holding `ip`, if any.
fn forbidden_v6_range(ip: Ipv6Addr) -> Option<&'static str> {
    FORBIDDEN_V6
        .iter()
        .find(|(net, len, _)| in_v6(ip, *net, *len))
        .map(|(_, _, name)| *name)
}

fn in_v6(ip: Ipv6Addr, net: Ipv6Addr, len: u8) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
    u128::from(ip) & mask == u128::from(net) & mask
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every range with an address inside (and the range's name, so a
    /// failure says which), the boundaries just outside, and public
    /// addresses, including IPv6 forms carrying public IPv4 addresses.
    #[test]
    fn the_rule_follows_the_special_purpose_registries() {
        let forbidden = [
            ("0.0.0.0", "this network"),
            ("0.255.255.255", "this network"),
            ("10.0.0.1", "private"),
            ("10.255.255.255", "private"),
            ("100.64.0.1", "CGN"),
            ("100.127.255.255", "CGN"),
            ("127.0.0.1", "loopback"),
            ("127.255.255.254", "loopback"),
            ("169.254.169.254", "link local, cloud metadata"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.0.0.8", "IETF protocol assignments"),
            ("192.0.2.1", "TEST-NET-1"),
            ("192.88.99.1", "6to4 relay anycast"),
            ("192.168.1.1", "private"),
            ("198.18.0.1", "benchmarking"),
            ("198.19.255.255", "benchmarking"),
            ("198.51.100.7", "TEST-NET-2"),
            ("203.0.113.9", "TEST-NET-3"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.255", "multicast"),
            ("240.0.0.1", "reserved"),
            ("255.255.255.255", "broadcast"),
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("::7f00:1", "IPv4-compatible loopback"),
            ("::808:808", "IPv4-compatible, deprecated even when public"),
            ("::ffff:127.0.0.1", "IPv4-mapped loopback"),
            ("::ffff:169.254.169.254", "IPv4-mapped metadata"),
            ("::ffff:0:127.0.0.1", "IPv4-translated loopback"),
            ("::ffff:0:10.0.0.1", "IPv4-translated private"),
            ("64:ff9b::7f00:1", "NAT64 loopback"),
            ("64:ff9b::a9fe:a9fe", "NAT64 metadata"),
            ("64:ff9b::", "NAT64 of 0.0.0.0"),
            ("64:ff9b:1::808:808", "local-use NAT64, whole /48"),
            ("64:ff9b:1:ffff::1", "local-use NAT64, whole /48"),
            ("100::1", "discard only"),
            ("2001::1", "Teredo"),
            (
                "2001:0:4136:e378:8000:63bf:3fff:fdd2",
                "Teredo, public client",
            ),
            ("2001:2::1", "benchmarking"),
            ("2001:1ff:ffff::1", "IETF protocol assignments"),
            ("2001:db8::1", "documentation"),
            ("2002:7f00:1::", "6to4 loopback"),
            ("2002:a9fe:a9fe::1", "6to4 metadata"),
            ("2002:c0a8:101::", "6to4 private"),
            ("3fff::1", "documentation"),
            ("3fff:fff::1", "documentation"),
            ("5f00::1", "SRv6 SIDs"),
            ("fc00::1", "unique local"),
            ("fd00:ec2::254", "unique local, cloud metadata"),
            ("fe80::1", "link local"),
            ("febf::1", "link local"),
            ("fec0::1", "site local"),
            ("feff::1", "site local"),
            ("ff02::1", "multicast"),
        ];
        for (address, what) in forbidden {
            assert!(is_forbidden(address.parse().unwrap()), "{address} ({what})");
        }
        let allowed = [
            // Boundaries just outside IPv4 ranges.
            "1.0.0.0",
            "9.255.255.255",
            "11.0.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "126.255.255.255",
            "128.0.0.0",
            "169.253.255.255",
            "169.255.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.0",
            "192.0.3.0",
            "192.88.98.255",
            "192.88.100.0",
            "192.167.255.255",
            "192.169.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "198.51.99.255",
            "198.51.101.0",
            "203.0.112.255",
            "203.0.114.0",
            "223.255.255.255",
            // Public addresses.
            "8.8.8.8",
            "1.1.1.1",
            "93.184.216.34",
            "2606:4700::1111",
            "2606:2800:220:1::1",
            "2a00:1450:4001:81c::200e",
            // Boundaries just outside IPv6 ranges.
            "2001:200::1",
            "2001:db7:ffff::1",
            "2001:db9::1",
            "2003::1",
            // Forms carrying a public IPv4 address: the carried address
            // decides.
            "::ffff:8.8.8.8",
            "::ffff:0:8.8.8.8",
            "64:ff9b::808:808",
            "64:ff9b::101:101",
            "2002:808:808::1",
        ];
        for address in allowed {
            assert!(!is_forbidden(address.parse().unwrap()), "{address}");
        }
    }

    #[test]
    fn carried_ipv4_addresses_are_decoded() {
        let carried = |s: &str| embedded_ipv4(s.parse().unwrap()).map(|v| v.to_string());
        assert_eq!(carried("::ffff:1.2.3.4").as_deref(), Some("1.2.3.4"));
        assert_eq!(carried("::ffff:0:1.2.3.4").as_deref(), Some("1.2.3.4"));
        assert_eq!(carried("::1.2.3.4").as_deref(), Some("1.2.3.4"));
        assert_eq!(carried("64:ff9b::1.2.3.4").as_deref(), Some("1.2.3.4"));
        assert_eq!(carried("2002:102:304:5::6").as_deref(), Some("1.2.3.4"));
        // RFC 4380's example: client 192.0.2.45 behind the server 65.54.227.120.
        assert_eq!(
            carried("2001:0:4136:e378:8000:63bf:3fff:fdd2").as_deref(),
            Some("192.0.2.45")
        );
        assert_eq!(carried("::1"), None);
        assert_eq!(carried("::"), None);
        assert_eq!(carried("2606:4700::1111"), None);
        assert_eq!(carried("64:ff9b:0:0:0:1::1"), None);
    }
}
