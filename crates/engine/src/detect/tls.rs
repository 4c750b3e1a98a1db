//! TLS ClientHello parsing: SNI, ALPN, the highest offered version and resumption hints.
//! Handles a ClientHello split across several TLS records and across TCP segments (the caller
//! re-runs the parser on a longer prefix). The handshake message is bounded by
//! [`MAX_CLIENT_HELLO`]; anything larger is refused as malformed.

use super::DetectError;

/// Largest ClientHello accepted (the handshake message body). Real ones are under 2 KiB, those
/// with post-quantum key shares under 4 KiB; 16 KiB leaves room while bounding the peek buffer.
pub const MAX_CLIENT_HELLO: usize = 16 * 1024;

/// TLS protocol versions as upstream names them (`tlsVersionToString`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TlsVersion {
    Ssl3,
    Tls10,
    Tls11,
    Tls12,
    Tls13,
}

impl TlsVersion {
    pub fn from_wire(v: u16) -> Option<Self> {
        Some(match v {
            0x0300 => TlsVersion::Ssl3,
            0x0301 => TlsVersion::Tls10,
            0x0302 => TlsVersion::Tls11,
            0x0303 => TlsVersion::Tls12,
            0x0304 => TlsVersion::Tls13,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TlsVersion::Ssl3 => "SSLv3",
            TlsVersion::Tls10 => "TLSv1.0",
            TlsVersion::Tls11 => "TLSv1.1",
            TlsVersion::Tls12 => "TLSv1.2",
            TlsVersion::Tls13 => "TLSv1.3",
        }
    }

    /// Accepts upstream's spellings (`TLSv1.2`) and Node's (`TLSv1`, `TLSv1_2`).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.trim().replace('_', ".").as_str() {
            "SSLv3" => TlsVersion::Ssl3,
            "TLSv1" | "TLSv1.0" => TlsVersion::Tls10,
            "TLSv1.1" => TlsVersion::Tls11,
            "TLSv1.2" => TlsVersion::Tls12,
            "TLSv1.3" => TlsVersion::Tls13,
            _ => return None,
        })
    }
}

/// What routing needs from a ClientHello.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientHello {
    /// The normalised (lower-case, no trailing dot) server name, if the client sent one.
    pub sni: Option<String>,
    pub alpn: Vec<String>,
    /// Highest version offered (supported_versions if present, else legacy_version).
    pub version: Option<TlsVersion>,
    /// The client offers a session ticket or a PSK (a resumption attempt).
    pub resumption: bool,
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Result<u8, DetectError> {
        let v = *self.b.get(self.pos).ok_or(DetectError::Malformed("truncated ClientHello"))?;
        self.pos += 1;
        Ok(v)
    }
    fn u16(&mut self) -> Result<u16, DetectError> {
        Ok(u16::from(self.u8()?) << 8 | u16::from(self.u8()?))
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], DetectError> {
        let s = self.b.get(self.pos..self.pos + n).ok_or(DetectError::Malformed("truncated ClientHello"))?;
        self.pos += n;
        Ok(s)
    }
    fn vec8(&mut self) -> Result<&'a [u8], DetectError> {
        let n = self.u8()? as usize;
        self.take(n)
    }
    fn vec16(&mut self) -> Result<&'a [u8], DetectError> {
        let n = self.u16()? as usize;
        self.take(n)
    }
    fn done(&self) -> bool {
        self.pos >= self.b.len()
    }
}

/// The payload length of the handshake record whose 5-byte header is `hdr` (`first`: the
/// connection's first record), or why it cannot be one.
fn record_len(hdr: &[u8], first: bool) -> Result<usize, DetectError> {
    if hdr[0] != 0x16 {
        return Err(if first {
            DetectError::NotThisProtocol
        } else {
            DetectError::Malformed("ClientHello interrupted by a non-handshake record")
        });
    }
    if hdr[1] != 0x03 {
        return Err(DetectError::Malformed("unknown record version"));
    }
    let len = usize::from(hdr[3]) << 8 | usize::from(hdr[4]);
    if len == 0 || len > 16384 + 2048 {
        return Err(DetectError::Malformed("bad record length"));
    }
    Ok(len)
}

/// Reassembles the first handshake message from consecutive handshake records.
fn handshake_message(buf: &[u8]) -> Result<Vec<u8>, DetectError> {
    let mut msg: Vec<u8> = Vec::new();
    let mut pos = 0;
    loop {
        let hdr = match buf.get(pos..pos + 5) {
            Some(h) => h,
            None => return Err(DetectError::Incomplete),
        };
        let len = record_len(hdr, pos == 0)?;
        let body = match buf.get(pos + 5..pos + 5 + len) {
            Some(b) => b,
            // The record is not all here yet; parse what we have if it already holds the message.
            None => {
                msg.extend_from_slice(&buf[pos + 5..]);
                return if complete(&msg)? { Ok(msg) } else { Err(DetectError::Incomplete) };
            }
        };
        msg.extend_from_slice(body);
        if complete(&msg)? {
            return Ok(msg);
        }
        pos += 5 + len;
    }
}

/// A lower bound of the bytes a connection must have sent before [`parse_client_hello`] can
/// answer anything but [`DetectError::Incomplete`]: 0 when it can answer now. Walks the record
/// headers only (no copy), so a client that sends its hello a byte at a time costs linear work.
pub fn hello_needs(buf: &[u8]) -> usize {
    let mut pos = 0;
    let mut got = 0usize; // handshake message bytes in the records before `pos`
    let mut head = [0u8; 4]; // the message's type and length, as far as seen
    loop {
        let Some(hdr) = buf.get(pos..pos + 5) else { return buf.len() + 1 };
        // A record the parser refuses: it can answer now.
        let Ok(len) = record_len(hdr, pos == 0) else { return 0 };
        let body = &buf[pos + 5..buf.len().min(pos + 5 + len)];
        for (i, &b) in body.iter().enumerate().take(4usize.saturating_sub(got)) {
            head[got + i] = b;
        }
        let seen = got + body.len();
        if seen >= 1 && head[0] != 0x01 {
            return 0;
        }
        if seen >= 4 {
            let total = 4 + (usize::from(head[1]) << 16 | usize::from(head[2]) << 8 | usize::from(head[3]));
            if total - 4 > MAX_CLIENT_HELLO || seen >= total {
                return 0;
            }
            if got + len >= total {
                return pos + 5 + (total - got); // completes inside this record
            }
        }
        if body.len() < len {
            return buf.len() + 1;
        }
        got += len;
        pos += 5 + len;
    }
}

/// Whether `msg` holds a whole handshake message; checks type and bound.
fn complete(msg: &[u8]) -> Result<bool, DetectError> {
    if msg.is_empty() {
        return Ok(false);
    }
    if msg[0] != 0x01 {
        return Err(DetectError::Malformed("first handshake message is not a ClientHello"));
    }
    if msg.len() < 4 {
        return Ok(false);
    }
    let len = usize::from(msg[1]) << 16 | usize::from(msg[2]) << 8 | usize::from(msg[3]);
    if len > MAX_CLIENT_HELLO {
        return Err(DetectError::Malformed("ClientHello too large"));
    }
    Ok(msg.len() >= 4 + len)
}

fn is_grease(v: u16) -> bool {
    v & 0x0f0f == 0x0a0a && (v >> 8) == (v & 0xff)
}

/// Parses a ClientHello from the start of a connection.
pub fn parse_client_hello(buf: &[u8]) -> Result<ClientHello, DetectError> {
    let msg = handshake_message(buf)?;
    let len = usize::from(msg[1]) << 16 | usize::from(msg[2]) << 8 | usize::from(msg[3]);
    let mut r = Reader { b: &msg[4..4 + len], pos: 0 };
    let legacy_version = r.u16()?;
    r.take(32)?; // random
    r.vec8()?; // session id
    let suites = r.vec16()?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(DetectError::Malformed("bad cipher suite list"));
    }
    r.vec8()?; // compression methods
    let mut hello = ClientHello { version: TlsVersion::from_wire(legacy_version), ..Default::default() };
    if r.done() {
        return Ok(hello);
    }
    let exts = r.vec16()?;
    let mut e = Reader { b: exts, pos: 0 };
    while !e.done() {
        let ty = e.u16()?;
        let data = e.vec16()?;
        let mut d = Reader { b: data, pos: 0 };
        match ty {
            0 => {
                let list = d.vec16()?;
                let mut l = Reader { b: list, pos: 0 };
                while !l.done() {
                    let kind = l.u8()?;
                    let name = l.vec16()?;
                    if kind == 0 && hello.sni.is_none() {
                        let s = std::str::from_utf8(name).map_err(|_| DetectError::Malformed("SNI is not text"))?;
                        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_graphic()) {
                            return Err(DetectError::Malformed("SNI is not a host name"));
                        }
                        hello.sni = Some(crate::matching::normalize_host(s).into_owned());
                    }
                }
            }
            16 => {
                let list = d.vec16()?;
                let mut l = Reader { b: list, pos: 0 };
                while !l.done() {
                    hello.alpn.push(String::from_utf8_lossy(l.vec8()?).into_owned());
                }
            }
            43 => {
                let list = d.vec8()?;
                let best = list
                    .chunks_exact(2)
                    .map(|c| u16::from(c[0]) << 8 | u16::from(c[1]))
                    .filter(|v| !is_grease(*v))
                    .filter_map(TlsVersion::from_wire)
                    .max();
                if best.is_some() {
                    hello.version = best;
                }
            }
            35 if !data.is_empty() => hello.resumption = true,
            41 => hello.resumption = true,
            _ => {}
        }
    }
    Ok(hello)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A real ClientHello as rustls writes it for `server_name`.
    fn rustls_hello(server_name: &str) -> Vec<u8> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = rustls::RootCertStore::empty();
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let name = rustls::pki_types::ServerName::try_from(server_name.to_owned()).unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out).unwrap();
        }
        out
    }

    /// Before the length [`hello_needs`] gives, the parser could only say "incomplete": on every
    /// prefix of real hellos in records of any size, and of broken variants of them.
    #[test]
    fn hello_needs_is_a_lower_bound() {
        let hello = rustls_hello("needs.example.com");
        for chunk in [1, 3, 4, 5, 100, 16384] {
            let wire = split_records(&hello, chunk);
            let mut parses = 0;
            for end in 0..=wire.len() {
                let p = &wire[..end];
                if p.len() < hello_needs(p) {
                    assert_eq!(
                        parse_client_hello(p).err(),
                        Some(DetectError::Incomplete),
                        "chunk {chunk}, {end} bytes"
                    );
                } else {
                    parses += 1;
                }
            }
            assert_eq!(parses, 1, "chunk {chunk}: the parser runs once, on the whole hello");
            crate::testutil::mutations(&wire, 3_000, |b| {
                for end in [b.len() / 3, b.len() / 2, b.len().saturating_sub(1), b.len()] {
                    let p = &b[..end];
                    if p.len() < hello_needs(p) {
                        assert_eq!(parse_client_hello(p).err(), Some(DetectError::Incomplete), "{p:?}");
                    }
                }
            });
        }
    }

    /// Re-frames one handshake message into records of at most `chunk` bytes.
    fn split_records(hello: &[u8], chunk: usize) -> Vec<u8> {
        let body = &hello[5..];
        let mut out = Vec::new();
        for part in body.chunks(chunk) {
            out.extend_from_slice(&[0x16, 0x03, 0x01, (part.len() >> 8) as u8, part.len() as u8]);
            out.extend_from_slice(part);
        }
        out
    }

    #[test]
    fn parses_rustls_hello() {
        let h = parse_client_hello(&rustls_hello("Example.COM")).unwrap();
        assert_eq!(h.sni.as_deref(), Some("example.com"));
        assert_eq!(h.alpn, vec!["h2", "http/1.1"]);
        assert_eq!(h.version, Some(TlsVersion::Tls13));
    }

    #[test]
    fn no_sni_for_ip_address() {
        // rustls sends no SNI for an IP address: the same as a client without SNI.
        let h = parse_client_hello(&rustls_hello("127.0.0.1")).unwrap();
        assert_eq!(h.sni, None);
    }

    #[test]
    fn every_prefix_is_incomplete() {
        let full = rustls_hello("a.example.com");
        for n in 0..full.len() {
            assert_eq!(parse_client_hello(&full[..n]), Err(DetectError::Incomplete), "prefix {n}");
        }
    }

    #[test]
    fn split_across_records() {
        let full = rustls_hello("split.example.com");
        for chunk in [1, 7, 100, 512] {
            let framed = split_records(&full, chunk);
            let h = parse_client_hello(&framed).unwrap();
            assert_eq!(h.sni.as_deref(), Some("split.example.com"), "chunk {chunk}");
            for n in 0..framed.len() {
                assert_eq!(parse_client_hello(&framed[..n]), Err(DetectError::Incomplete), "chunk {chunk} prefix {n}");
            }
        }
    }

    #[test]
    fn trailing_data_is_fine() {
        let mut full = rustls_hello("x.example.com");
        full.extend_from_slice(&[0x17, 0x03, 0x03, 0, 1, 0]);
        assert_eq!(parse_client_hello(&full).unwrap().sni.as_deref(), Some("x.example.com"));
    }

    #[test]
    fn malformed_and_foreign() {
        assert_eq!(parse_client_hello(b"GET / HTTP/1.1\r\n"), Err(DetectError::NotThisProtocol));
        // A handshake record whose message is not a ClientHello.
        assert!(matches!(parse_client_hello(&[0x16, 3, 1, 0, 4, 2, 0, 0, 0]), Err(DetectError::Malformed(_))));
        // Claims a 1 MiB ClientHello.
        assert!(matches!(parse_client_hello(&[0x16, 3, 1, 0, 4, 1, 0x10, 0, 0]), Err(DetectError::Malformed(_))));
        // Zero-length record.
        assert!(matches!(parse_client_hello(&[0x16, 3, 1, 0, 0]), Err(DetectError::Malformed(_))));
        // Garbage inside a correctly framed message never panics.
        let mut full = rustls_hello("g.example.com");
        for i in 9..full.len() {
            let saved = full[i];
            full[i] = 0xff;
            let _ = parse_client_hello(&full);
            full[i] = saved;
        }
    }

    #[test]
    fn random_mutations_never_panic() {
        for name in ["m.example.com", "127.0.0.1"] {
            let hello = rustls_hello(name);
            for seed in [hello.clone(), split_records(&hello, 64)] {
                crate::testutil::mutations(&seed, 20_000, |b| {
                    if let Ok(h) = parse_client_hello(b) {
                        if let Some(sni) = &h.sni {
                            assert!(!sni.is_empty() && sni.bytes().all(|c| !c.is_ascii_uppercase()), "{sni:?}");
                        }
                    }
                });
            }
        }
    }

    #[test]
    fn versions() {
        assert_eq!(TlsVersion::parse("TLSv1.2"), Some(TlsVersion::Tls12));
        assert_eq!(TlsVersion::parse("TLSv1_3"), Some(TlsVersion::Tls13));
        assert_eq!(TlsVersion::parse("TLSv1"), Some(TlsVersion::Tls10));
        assert_eq!(TlsVersion::parse("TLS1.2"), None);
        assert!(is_grease(0x1a1a) && !is_grease(0x0304));
    }
}
