//! Client IP patterns (spec §6.4): exact addresses, CIDR (IPv4 and IPv6), `a-b` ranges, octet
//! wildcards such as `192.168.1.*`, and `*`. IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`) are
//! normalised to IPv4 on both sides, so either spelling matches.

use ipnet::IpNet;
use std::net::IpAddr;

/// Maps `::ffff:a.b.c.d` to `a.b.c.d`; other addresses are returned unchanged.
pub fn normalize_ip(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// A compiled client IP pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpPattern {
    Any,
    Net(IpNet),
    Range(IpAddr, IpAddr),
    Octets([Option<u8>; 4]),
}

impl IpPattern {
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let p = pattern.trim();
        let bad = || format!("invalid IP pattern {pattern:?} (expected an address, CIDR, a-b range or 1.2.3.*)");
        if p == "*" {
            return Ok(IpPattern::Any);
        }
        if p.contains('/') {
            let net: IpNet = p.parse().map_err(|_| bad())?;
            return Ok(IpPattern::Net(canonical_net(net)));
        }
        if let Some((a, b)) = p.split_once('-') {
            let a = normalize_ip(a.trim().parse().map_err(|_| bad())?);
            let b = normalize_ip(b.trim().parse().map_err(|_| bad())?);
            if a.is_ipv4() != b.is_ipv4() || a > b {
                return Err(bad());
            }
            return Ok(IpPattern::Range(a, b));
        }
        if p.contains('*') {
            let parts: Vec<&str> = p.split('.').collect();
            if parts.len() != 4 {
                return Err(bad());
            }
            let mut oct = [None; 4];
            for (i, part) in parts.iter().enumerate() {
                oct[i] = match *part {
                    "*" => None,
                    n => Some(n.parse::<u8>().map_err(|_| bad())?),
                };
            }
            return Ok(IpPattern::Octets(oct));
        }
        let ip = normalize_ip(p.parse().map_err(|_| bad())?);
        Ok(IpPattern::Net(IpNet::from(ip)))
    }

    /// `ip` must already be normalised with [`normalize_ip`].
    pub fn matches(&self, ip: IpAddr) -> bool {
        match self {
            IpPattern::Any => true,
            IpPattern::Net(net) => net.contains(&ip),
            IpPattern::Range(a, b) => ip.is_ipv4() == a.is_ipv4() && *a <= ip && ip <= *b,
            IpPattern::Octets(oct) => match ip {
                IpAddr::V4(v4) => v4.octets().iter().zip(oct).all(|(o, p)| p.is_none_or(|p| p == *o)),
                IpAddr::V6(_) => false,
            },
        }
    }
}

fn canonical_net(net: IpNet) -> IpNet {
    // `::ffff:10.0.0.0/104` is the IPv4 network 10.0.0.0/8.
    if let IpNet::V6(v6) = net {
        if let Some(v4) = v6.addr().to_ipv4_mapped() {
            if v6.prefix_len() >= 96 {
                if let Ok(n) = ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96) {
                    return IpNet::V4(n.trunc());
                }
            }
        }
    }
    net.trunc()
}

/// Decides `isIPAuthorized` (spec §6.4): the block list wins, then a non-empty allow list must match.
pub fn is_authorized(ip: IpAddr, allow: &[IpPattern], block: &[IpPattern]) -> bool {
    if block.iter().any(|p| p.matches(ip)) {
        return false;
    }
    allow.is_empty() || allow.iter().any(|p| p.matches(ip))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    fn ip(s: &str) -> IpAddr {
        normalize_ip(s.parse().unwrap())
    }

    #[test]
    fn table() {
        let cases: &[(&str, &str, bool)] = &[
            ("127.0.0.1", "127.0.0.1", true),
            ("127.0.0.1", "::ffff:127.0.0.1", true),
            ("::ffff:127.0.0.1", "127.0.0.1", true),
            ("127.0.0.1", "127.0.0.2", false),
            ("10.0.0.0/8", "10.200.3.4", true),
            ("10.0.0.0/8", "11.0.0.1", false),
            ("::ffff:10.0.0.0/104", "10.9.9.9", true),
            ("2001:db8::/32", "2001:db8:1::5", true),
            ("2001:db8::/32", "2001:db9::5", false),
            ("192.168.1.*", "192.168.1.77", true),
            ("192.168.1.*", "192.168.2.77", false),
            ("192.*.*.1", "192.5.6.1", true),
            ("192.168.1.10-192.168.1.20", "192.168.1.15", true),
            ("192.168.1.10-192.168.1.20", "192.168.1.21", false),
            ("*", "::1", true),
            ("::1", "::1", true),
            ("192.168.1.*", "::1", false),
        ];
        for (pat, addr, want) in cases {
            let p = IpPattern::parse(pat).unwrap();
            assert_eq!(p.matches(ip(addr)), *want, "{pat} vs {addr}");
        }
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "1.2.3", "1.2.3.4/40", "a.b.c.d", "1.2.*", "5.5.5.5-1.1.1.1", "1.1.1.1-::1"] {
            assert!(IpPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn authorization_block_wins() {
        let allow = vec![IpPattern::parse("10.0.0.0/8").unwrap()];
        let block = vec![IpPattern::parse("10.0.0.5").unwrap()];
        assert!(is_authorized(v4(10, 0, 0, 4), &allow, &block));
        assert!(!is_authorized(v4(10, 0, 0, 5), &allow, &block));
        assert!(!is_authorized(v4(11, 0, 0, 5), &allow, &block));
        assert!(is_authorized(v4(11, 0, 0, 5), &[], &[]));
        assert!(!is_authorized(v4(11, 0, 0, 5), &[], &[IpPattern::Any]));
    }
}
