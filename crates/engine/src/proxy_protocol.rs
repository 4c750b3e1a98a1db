//! The PROXY protocol, versions 1 (text) and 2 (binary), as specified by HAProxy
//! (`/usr/share/doc/haproxy/proxy-protocol.txt.gz`): [`parse`] reads the header a trusted load
//! balancer puts before a connection's bytes, [`encode`] writes one for a backend. Pure
//! functions over byte slices; reading from and writing to sockets is the callers'.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The v2 signature (12 bytes; it cannot start a v1 header, TLS or HTTP).
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// A v1 header is at most this long, CRLF included.
pub const V1_MAX: usize = 107;
/// The longest v2 header accepted: 16 fixed bytes and at most this many bytes of addresses and
/// TLVs (the protocol allows 65,535; balancers send tens to a few hundred).
pub const V2_MAX_PAYLOAD: usize = 4096;
/// The most bytes [`parse`] may need to see to decide.
pub const MAX_HEADER: usize = 16 + V2_MAX_PAYLOAD;

/// TLV types with a meaning here (others are kept as they came).
pub const PP2_TYPE_ALPN: u8 = 0x01;
pub const PP2_TYPE_AUTHORITY: u8 = 0x02;
pub const PP2_TYPE_UNIQUE_ID: u8 = 0x05;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

impl Version {
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        }
    }
}

/// Whom a header says the connection is from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A proxied TCP connection: the client and the address it connected to.
    Tcp { src: SocketAddr, dst: SocketAddr },
    /// v2 `LOCAL` (the balancer's own connection, e.g. a health check), v1 `UNKNOWN`, or a v2
    /// family other than TCP over IPv4/IPv6: the socket's own addresses apply.
    Local,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tlv {
    pub kind: u8,
    pub value: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: Version,
    pub source: Source,
    /// v2 TLVs in the order they came (v1 has none).
    pub tlvs: Vec<Tlv>,
    /// The header's length in bytes: the connection's own bytes start after it.
    pub len: usize,
}

impl Header {
    fn tlv(&self, kind: u8) -> Option<&[u8]> {
        self.tlvs.iter().find(|t| t.kind == kind).map(|t| t.value.as_slice())
    }

    /// `PP2_TYPE_ALPN`: the protocol the client negotiated with the balancer.
    pub fn alpn(&self) -> Option<&[u8]> {
        self.tlv(PP2_TYPE_ALPN)
    }

    /// `PP2_TYPE_AUTHORITY`: the host name the client asked for (its SNI).
    pub fn authority(&self) -> Option<&str> {
        self.tlv(PP2_TYPE_AUTHORITY).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// `PP2_TYPE_UNIQUE_ID`: the balancer's identifier of the connection.
    pub fn unique_id(&self) -> Option<&[u8]> {
        self.tlv(PP2_TYPE_UNIQUE_ID)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed to decide.
    Incomplete,
    Header(Header),
    /// Not a valid header (the reason, for the logs).
    Invalid(&'static str),
}

/// Reads the header at the start of `buf`.
pub fn parse(buf: &[u8]) -> Parsed {
    let sig = buf.len().min(V2_SIGNATURE.len());
    if buf[..sig] == V2_SIGNATURE[..sig] && !buf.is_empty() {
        return parse_v2(buf);
    }
    let v1 = buf.len().min(6);
    if buf[..v1] == b"PROXY "[..v1] {
        return if buf.is_empty() { Parsed::Incomplete } else { parse_v1(buf) };
    }
    if buf.is_empty() {
        return Parsed::Incomplete;
    }
    Parsed::Invalid("no PROXY protocol header")
}

fn parse_v1(buf: &[u8]) -> Parsed {
    let Some(end) = buf.iter().take(V1_MAX).position(|&b| b == b'\n') else {
        return if buf.len() >= V1_MAX {
            Parsed::Invalid("v1 header longer than 107 bytes")
        } else {
            Parsed::Incomplete
        };
    };
    if end == 0 || buf[end - 1] != b'\r' {
        return Parsed::Invalid("v1 header not ended by CRLF");
    }
    let Ok(line) = std::str::from_utf8(&buf[6..end - 1]) else {
        return Parsed::Invalid("v1 header is not ASCII");
    };
    let len = end + 1;
    let mut fields = line.split(' ');
    let source = match fields.next() {
        // Whatever follows UNKNOWN is ignored (spec 2.1).
        Some("UNKNOWN") => Source::Local,
        Some(proto @ ("TCP4" | "TCP6")) => {
            let f: Vec<&str> = fields.collect();
            let [src, dst, sport, dport] = f[..] else {
                return Parsed::Invalid("v1 header needs source, destination and two ports");
            };
            let v6 = proto == "TCP6";
            let (Some(src), Some(dst)) = (v1_ip(src, v6), v1_ip(dst, v6)) else {
                return Parsed::Invalid("v1 header has an address not of its family");
            };
            let (Some(sport), Some(dport)) = (v1_port(sport), v1_port(dport)) else {
                return Parsed::Invalid("v1 header has an invalid port");
            };
            Source::Tcp { src: SocketAddr::new(src, sport), dst: SocketAddr::new(dst, dport) }
        }
        _ => return Parsed::Invalid("v1 header names no known protocol"),
    };
    Parsed::Header(Header { version: Version::V1, source, tlvs: Vec::new(), len })
}

fn v1_ip(s: &str, v6: bool) -> Option<IpAddr> {
    if v6 {
        s.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
    } else {
        s.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
    }
}

/// A decimal port, 0 to 65535, without sign or leading zeros (spec 2.1).
fn v1_port(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0')) {
        return None;
    }
    s.parse().ok()
}

fn parse_v2(buf: &[u8]) -> Parsed {
    if buf.len() < 16 {
        // The version/command byte can be checked before the rest arrives.
        if buf.len() > 12 && buf[12] >> 4 != 2 {
            return Parsed::Invalid("v2 header of an unknown version");
        }
        return Parsed::Incomplete;
    }
    let (ver_cmd, fam) = (buf[12], buf[13]);
    let payload = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    if ver_cmd >> 4 != 2 {
        return Parsed::Invalid("v2 header of an unknown version");
    }
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        _ => return Parsed::Invalid("v2 header with an unknown command"),
    };
    if payload > V2_MAX_PAYLOAD {
        return Parsed::Invalid("v2 header longer than the accepted maximum");
    }
    let len = 16 + payload;
    if buf.len() < len {
        return Parsed::Incomplete;
    }
    let body = &buf[16..len];
    let (addr_len, tcp) = match fam {
        0x00 => (0, None),
        0x11 => (12, Some(false)), // TCP over IPv4
        0x12 => (12, None),        // UDP over IPv4: not a TCP client, the socket's addresses apply
        0x21 => (36, Some(true)),  // TCP over IPv6
        0x22 => (36, None),
        0x31 | 0x32 => (216, None), // UNIX stream / datagram
        _ => return Parsed::Invalid("v2 header with an unknown address family"),
    };
    if body.len() < addr_len {
        return Parsed::Invalid("v2 header too short for its address family");
    }
    let source = match (local, tcp) {
        (false, Some(v6)) => {
            let a = &body[..addr_len];
            let (src, dst, ports) = if v6 {
                let ip =
                    |at: usize| IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&a[at..at + 16]).unwrap_or([0; 16])));
                (ip(0), ip(16), &a[32..36])
            } else {
                let ip = |at: usize| IpAddr::V4(Ipv4Addr::new(a[at], a[at + 1], a[at + 2], a[at + 3]));
                (ip(0), ip(4), &a[8..12])
            };
            let sport = u16::from_be_bytes([ports[0], ports[1]]);
            let dport = u16::from_be_bytes([ports[2], ports[3]]);
            Source::Tcp { src: SocketAddr::new(src, sport), dst: SocketAddr::new(dst, dport) }
        }
        // LOCAL: addresses (if any) are skipped; other families: the socket's addresses.
        _ => Source::Local,
    };
    let mut tlvs = Vec::new();
    let mut rest = &body[addr_len..];
    while !rest.is_empty() {
        if rest.len() < 3 {
            return Parsed::Invalid("v2 header with a truncated TLV");
        }
        let n = u16::from_be_bytes([rest[1], rest[2]]) as usize;
        if rest.len() < 3 + n {
            return Parsed::Invalid("v2 header with a TLV longer than the header");
        }
        tlvs.push(Tlv { kind: rest[0], value: rest[3..3 + n].to_vec() });
        rest = &rest[3 + n..];
    }
    Parsed::Header(Header { version: Version::V2, source, tlvs, len })
}

/// A header naming `src` → `dst`. Mixed families are written as IPv6 (IPv4-mapped).
pub fn encode(version: Version, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (src, dst) = match (src.ip(), dst.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => (src, dst),
        _ => (as_v6(src), as_v6(dst)),
    };
    match version {
        Version::V1 => {
            let proto = if src.is_ipv4() { "TCP4" } else { "TCP6" };
            format!("PROXY {proto} {} {} {} {}\r\n", src.ip(), dst.ip(), src.port(), dst.port()).into_bytes()
        }
        Version::V2 => {
            let mut out = Vec::with_capacity(16 + 36);
            out.extend_from_slice(&V2_SIGNATURE);
            out.push(0x21); // version 2, PROXY
            match (src.ip(), dst.ip()) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    out.extend_from_slice(&[0x11, 0, 12]);
                    out.extend_from_slice(&s.octets());
                    out.extend_from_slice(&d.octets());
                }
                (s, d) => {
                    out.extend_from_slice(&[0x21, 0, 36]);
                    out.extend_from_slice(&v6_octets(s));
                    out.extend_from_slice(&v6_octets(d));
                }
            }
            out.extend_from_slice(&src.port().to_be_bytes());
            out.extend_from_slice(&dst.port().to_be_bytes());
            out
        }
    }
}

fn as_v6(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(IpAddr::V6(v6_of(a.ip())), a.port())
}

fn v6_of(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

fn v6_octets(ip: IpAddr) -> [u8; 16] {
    v6_of(ip).octets()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn header(buf: &[u8]) -> Header {
        match parse(buf) {
            Parsed::Header(h) => h,
            other => panic!("{other:?} for {buf:?}"),
        }
    }

    /// Every strict prefix of a valid header is incomplete, never invalid or a header.
    fn prefixes_are_incomplete(full: &[u8]) {
        let h = header(full);
        for n in 0..h.len {
            assert_eq!(parse(&full[..n]), Parsed::Incomplete, "prefix {n} of {full:?}");
        }
    }

    #[test]
    fn v1_tcp4_tcp6_unknown() {
        let h = header(b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nGET /");
        assert_eq!(h.source, Source::Tcp { src: sa("192.0.2.1:56324"), dst: sa("198.51.100.2:443") });
        assert_eq!(h.len, 45);
        let h = header(b"PROXY TCP6 2001:db8::1 ::1 1 65535\r\n");
        assert_eq!(h.source, Source::Tcp { src: sa("[2001:db8::1]:1"), dst: sa("[::1]:65535") });
        assert_eq!(header(b"PROXY UNKNOWN\r\n").source, Source::Local);
        assert_eq!(header(b"PROXY UNKNOWN ffff:f::1 ffff:f::2 1 2\r\n").source, Source::Local);
        for full in [&b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n"[..], b"PROXY UNKNOWN\r\n"] {
            prefixes_are_incomplete(full);
        }
        // The longest legal header is 107 bytes (spec 2.1: UNKNOWN with two full IPv6 addresses).
        let longest = b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        assert_eq!(longest.len(), V1_MAX);
        assert_eq!(header(longest).len, V1_MAX);
    }

    #[test]
    fn v1_refusals() {
        for bad in [
            &b"PROXY TCP4 192.0.2.1 198.51.100.2 56324\r\n"[..],
            b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443 9\r\n",
            b"PROXY TCP4 2001:db8::1 198.51.100.2 1 2\r\n",
            b"PROXY TCP6 192.0.2.1 ::1 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 65536 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 080 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 +80 443\r\n",
            b"PROXY TCP4  192.0.2.1 198.51.100.2 80 443\r\n",
            b"PROXY UDP4 192.0.2.1 198.51.100.2 80 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 80 443\n",
            b"GET / HTTP/1.1\r\n",
            b"\x16\x03\x01",
        ] {
            assert!(matches!(parse(bad), Parsed::Invalid(_)), "{:?}", String::from_utf8_lossy(bad));
        }
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(V1_MAX, b'x');
        assert!(matches!(parse(&long), Parsed::Invalid(_)));
        long.truncate(V1_MAX - 1);
        assert_eq!(parse(&long), Parsed::Incomplete);
    }

    fn v2(cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut b = V2_SIGNATURE.to_vec();
        b.push(0x20 | cmd);
        b.push(fam);
        b.extend_from_slice(&(body.len() as u16).to_be_bytes());
        b.extend_from_slice(body);
        b
    }

    #[test]
    fn v2_families_local_and_tlvs() {
        let mut body = vec![192, 0, 2, 1, 198, 51, 100, 2, 0xdc, 0x04, 0x01, 0xbb];
        body.extend_from_slice(&[PP2_TYPE_ALPN, 0, 2, b'h', b'2']);
        body.extend_from_slice(&[PP2_TYPE_AUTHORITY, 0, 6]);
        body.extend_from_slice(b"a.test");
        body.extend_from_slice(&[PP2_TYPE_UNIQUE_ID, 0, 3, 1, 2, 3]);
        body.extend_from_slice(&[0xe0, 0, 1, 9]);
        body.extend_from_slice(&[0x04, 0, 0]); // NOOP, empty
        let full = v2(1, 0x11, &body);
        let h = header(&full);
        assert_eq!(h.source, Source::Tcp { src: sa("192.0.2.1:56324"), dst: sa("198.51.100.2:443") });
        assert_eq!(
            (h.alpn(), h.authority(), h.unique_id()),
            (Some(&b"h2"[..]), Some("a.test"), Some(&[1u8, 2, 3][..]))
        );
        assert_eq!(h.tlvs.len(), 5);
        assert_eq!(h.tlvs[3], Tlv { kind: 0xe0, value: vec![9] });
        assert_eq!(h.len, full.len());
        prefixes_are_incomplete(&full);
        let mut with_data = full.clone();
        with_data.extend_from_slice(b"\x16\x03\x01");
        assert_eq!(header(&with_data).len, full.len());

        let mut six = Vec::new();
        six.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        six.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        six.extend_from_slice(&[0, 1, 0, 2]);
        assert_eq!(header(&v2(1, 0x21, &six)).source, Source::Tcp { src: sa("[2001:db8::1]:1"), dst: sa("[::1]:2") });
        // LOCAL, with or without addresses; UNSPEC; UDP and UNIX: the socket's addresses.
        assert_eq!(header(&v2(0, 0x00, &[])).source, Source::Local);
        assert_eq!(header(&v2(0, 0x11, &body)).source, Source::Local);
        assert_eq!(header(&v2(1, 0x00, &[])).source, Source::Local);
        assert_eq!(header(&v2(1, 0x12, &body[..12])).source, Source::Local);
        assert_eq!(header(&v2(1, 0x31, &[0; 216])).source, Source::Local);
    }

    #[test]
    fn v2_refusals() {
        let body = [192, 0, 2, 1, 198, 51, 100, 2, 0, 1, 0, 2];
        let mut wrong_version = v2(1, 0x11, &body);
        wrong_version[12] = 0x11;
        assert!(matches!(parse(&wrong_version), Parsed::Invalid(_)));
        assert!(matches!(parse(&wrong_version[..13]), Parsed::Invalid(_)), "decided at the 13th byte");
        assert!(matches!(parse(&v2(2, 0x11, &body)), Parsed::Invalid(_)), "unknown command");
        assert!(matches!(parse(&v2(1, 0x41, &body)), Parsed::Invalid(_)), "unknown family");
        assert!(matches!(parse(&v2(1, 0x11, &body[..8])), Parsed::Invalid(_)), "short addresses");
        let mut tlv = body.to_vec();
        tlv.extend_from_slice(&[1, 0, 5, b'x']);
        assert!(matches!(parse(&v2(1, 0x11, &tlv)), Parsed::Invalid(_)), "TLV past the end");
        tlv.truncate(body.len() + 2);
        assert!(matches!(parse(&v2(1, 0x11, &tlv)), Parsed::Invalid(_)), "truncated TLV");
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(matches!(parse(&huge), Parsed::Invalid(_)), "decided from the length field");
    }

    #[test]
    fn encode_round_trips() {
        for (src, dst) in
            [("192.0.2.1:56324", "198.51.100.2:443"), ("[2001:db8::1]:1", "[::1]:65535"), ("192.0.2.1:5", "[::1]:6")]
        {
            for v in [Version::V1, Version::V2] {
                let bytes = encode(v, sa(src), sa(dst));
                let h = header(&bytes);
                assert_eq!(h.version, v);
                assert_eq!(h.len, bytes.len());
                let Source::Tcp { src: s, dst: d } = h.source else { panic!() };
                assert_eq!((s.port(), d.port()), (sa(src).port(), sa(dst).port()));
                assert_eq!(crate::matching::normalize_ip(s.ip()), sa(src).ip());
                assert_eq!(crate::matching::normalize_ip(d.ip()), sa(dst).ip());
            }
        }
        assert_eq!(encode(Version::V1, sa("1.2.3.4:5"), sa("6.7.8.9:10")), b"PROXY TCP4 1.2.3.4 6.7.8.9 5 10\r\n");
    }

    /// Random mutations of valid headers never panic, and whatever parses is consistent.
    #[test]
    fn mutations_never_panic() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut body = vec![192, 0, 2, 1, 198, 51, 100, 2, 0xdc, 0x04, 0x01, 0xbb];
        body.extend_from_slice(&[PP2_TYPE_AUTHORITY, 0, 6]);
        body.extend_from_slice(b"a.test");
        let seeds = [
            b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nrest".to_vec(),
            b"PROXY TCP6 2001:db8::1 ::1 1 65535\r\n".to_vec(),
            v2(1, 0x11, &body),
            v2(1, 0x21, &[7; 36]),
        ];
        for _ in 0..20_000 {
            let mut b = seeds[(next() % seeds.len() as u64) as usize].clone();
            for _ in 0..1 + next() % 4 {
                let at = (next() % (b.len() as u64 + 1)) as usize;
                match next() % 4 {
                    0 if at < b.len() => b[at] = next() as u8,
                    1 if at < b.len() => {
                        b.remove(at);
                    }
                    2 => b.insert(at, next() as u8),
                    _ => b.truncate(at),
                }
            }
            if let Parsed::Header(h) = parse(&b) {
                assert!(h.len <= b.len() && h.len <= MAX_HEADER);
            }
        }
    }
}
