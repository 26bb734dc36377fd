//! Which network addresses outbound requests on a client's behalf may reach
//! (the one SSRF policy, used for image URLs and webhook URLs).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Addresses that URLs a client gives us (images to fetch, webhooks to
/// call) may not reach unless explicitly allowed: loopback, private,
/// link-local (cloud metadata included), carrier-grade NAT and the like.
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_forbidden_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_forbidden_v4(v4);
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local (incl. cloud metadata fd00:ec2::254)
                || (first & 0xffc0) == 0xfe80 // link-local
                || v6 == Ipv6Addr::from([0x64, 0xff9b, 0, 0, 0, 0, 0, 0]) // NAT64 prefix base
        }
    }
}

fn is_forbidden_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local() // includes 169.254.169.254, the cloud metadata address
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT
}
