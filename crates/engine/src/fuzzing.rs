//! Fuzz entry points: one per parser of untrusted bytes. Each runs the parser on arbitrary
//! input and checks what must hold for any input (bounds, and that reading the same bytes in
//! pieces gives the same answer as reading them whole); a panic is a finding.
//!
//! The coverage-guided fuzz targets in `fuzz/` (cargo fuzz) call these; the unit test at the end
//! replays the kept corpus and every past finding (`fuzz/corpus/<target>/`,
//! `fuzz/regressions/<target>/`) so CI checks them without a fuzzer. `docs/fuzzing.md` records
//! the runs.

use crate::detect::head_ends_after;
use crate::http::chunked::Chunked;
use crate::http::h1::{scan_request, Scanned};
use crate::http::ws::{Scanner, Verdict};
use crate::proxy_protocol::{self, Parsed, Source, Version};

/// The targets by name (the names of `fuzz/fuzz_targets/*.rs` and of the corpus folders).
/// A fuzz entry point.
pub type Target = fn(&[u8]);

pub const TARGETS: &[(&str, Target)] = &[
    ("client_hello", client_hello),
    ("request_head", request_head),
    ("response_head", response_head),
    ("chunked", chunked),
    ("ws_frames", ws_frames),
    ("proxy_header", proxy_header),
    ("route_config", route_config),
];

/// A split point of `data` chosen by its first byte, so that a fuzzer controls it.
fn cut(data: &[u8]) -> usize {
    data.first().map_or(0, |&b| usize::from(b) % data.len())
}

/// The TLS ClientHello parser (SNI, ALPN, version) and the first-bytes classifier.
pub fn client_hello(data: &[u8]) {
    let _ = crate::detect::sniff(data);
    // Detection skips the parser below the length the records announce.
    for p in [data, &data[..cut(data)]] {
        if p.len() < crate::detect::hello_needs(p) {
            assert_eq!(crate::detect::parse_client_hello(p).err(), Some(crate::detect::DetectError::Incomplete));
        }
    }
    if let Ok(hello) = crate::detect::parse_client_hello(data) {
        if let Some(sni) = &hello.sni {
            assert!(!sni.is_empty() && !sni.ends_with('.'), "{sni:?}");
            assert!(!sni.bytes().any(|b| b.is_ascii_uppercase()), "{sni:?}");
        }
        // A longer buffer (more records after the hello) gives the same answer.
        let mut more = data.to_vec();
        more.extend_from_slice(&[0x16, 0x03, 0x01, 0x00, 0x00]);
        assert_eq!(crate::detect::parse_client_hello(&more).ok().map(|h| h.sni), Some(hello.sni));
    }
}

/// HTTP/1.1 request heads: the detection parser, and the fast path's head scan and its test
/// for a complete head (fed in two pieces, as reads deliver them).
pub fn request_head(data: &[u8]) {
    // Detection skips the parser until a head can have ended.
    for p in [data, &data[..cut(data)]] {
        if !head_ends_after(p, 0) {
            assert!(crate::detect::parse_http_head(p).is_err());
        }
    }
    let mut hs = [httparse::EMPTY_HEADER; crate::http::wire::MAX_HEADERS];
    match scan_request(data, &mut hs) {
        Scanned::Head(h) => {
            assert!(h.len <= data.len());
            assert!(head_ends_after(&data[..h.len], 0), "complete head without an end");
            let k = cut(data).min(h.len);
            assert!(head_ends_after(&data[..h.len], k) || head_ends_after(&data[..k], 0), "end missed after {k}");
            assert!(h.headers.len() <= crate::http::wire::MAX_HEADERS);
        }
        Scanned::Malformed(len, _) => assert!(len <= data.len()),
        Scanned::Partial | Scanned::Hyper => {}
    }
}

/// HTTP/1.1 response heads from backends, the head clients get, and the body framing after.
pub fn response_head(data: &[u8]) {
    for head_request in [false, true] {
        if let Ok(Some(r)) = crate::upstream::http1::parse_response(data, head_request) {
            assert!(r.len <= data.len());
            assert!(r.reason.end <= r.len);
            for (n, v) in &r.headers {
                assert!(n.end <= r.len && v.end <= r.len);
            }
            let _ = crate::http::h1::client_head(data, &r, &[], head_request);
            let mut framing = r.framing;
            if let Ok(n) = framing.take(&data[r.len..]) {
                assert!(n <= data.len() - r.len);
            }
        }
    }
}

/// Chunked body framing: reading the body in two pieces, or run by run, takes the same bytes
/// and reaches the same state as reading it whole.
pub fn chunked(data: &[u8]) {
    let mut whole = Chunked::default();
    let all = whole.feed(data);
    if let Ok(n) = all {
        assert!(n <= data.len());
    }
    let k = cut(data);
    let mut split = Chunked::default();
    let pieces = split.feed(&data[..k]).and_then(|a| {
        if split.is_done() {
            return Ok(a);
        }
        split.feed(&data[k..]).map(|b| a + b)
    });
    assert_eq!(all, pieces, "cut at {k}");
    if all.is_ok() {
        assert_eq!(whole, split);
    }
    // Run by run (data, framing), as the decoders take a body.
    let mut runs = Chunked::default();
    let mut at = 0;
    let mut failed = false;
    while at < data.len() && !runs.is_done() {
        match runs.step(&data[at..]) {
            Ok((0, _)) => break,
            Ok((n, _)) => at += n,
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    match all {
        Ok(n) => assert!(!failed && at == n, "runs took {at}, whole {n}"),
        Err(_) => assert!(failed),
    }
}

/// WebSocket frames in a relay: every byte comes out once, in order, whatever the reads.
/// What is held back is at most one frame header and one control frame.
pub fn ws_frames(data: &[u8]) {
    let max = match data.first() {
        Some(b) if b & 1 == 1 => Some(u64::from(*b) * 64),
        _ => None,
    };
    let run = |pieces: &[&[u8]]| {
        let mut s = Scanner::new();
        let mut out = Vec::new();
        let mut too_big = false;
        for p in pieces {
            if too_big {
                break;
            }
            s.feed(p, max, |bytes, verdict, _| {
                if verdict == Verdict::TooBig {
                    too_big = true;
                } else {
                    out.extend_from_slice(bytes);
                }
            });
        }
        (out, too_big)
    };
    let (whole, big) = run(&[data]);
    // What is not out yet is the end of a frame header or of a control frame (held whole).
    assert!(data.starts_with(&whole), "bytes changed or repeated");
    if !big {
        assert!(data.len() - whole.len() <= 14 + 125, "{} bytes held", data.len() - whole.len());
    }
    let k = cut(data);
    let (pieces, big2) = run(&[&data[..k], &data[k..]]);
    assert_eq!(big, big2, "cut at {k}");
    if !big {
        assert_eq!(pieces, whole, "cut at {k}");
    }
}

/// PROXY protocol v1/v2 headers: a header is decided by its own bytes, and the addresses it
/// names survive being written again.
pub fn proxy_header(data: &[u8]) {
    let Parsed::Header(h) = proxy_protocol::parse(data) else { return };
    assert!(h.len <= data.len() && h.len <= proxy_protocol::MAX_HEADER);
    assert_eq!(proxy_protocol::parse(&data[..h.len]), Parsed::Header(h.clone()));
    assert_eq!(proxy_protocol::parse(&data[..h.len - 1]), Parsed::Incomplete, "a header shorter by one byte");
    if let Source::Tcp { src, dst } = h.source {
        for v in [Version::V1, Version::V2] {
            let wire = proxy_protocol::encode(v, src, dst);
            match proxy_protocol::parse(&wire) {
                Parsed::Header(again) => {
                    let Source::Tcp { src: s2, dst: d2 } = again.source else { panic!("{v:?} lost the addresses") };
                    assert_eq!((s2.ip().to_canonical(), s2.port()), (src.ip().to_canonical(), src.port()));
                    assert_eq!((d2.ip().to_canonical(), d2.port()), (dst.ip().to_canonical(), dst.port()));
                }
                other => panic!("{v:?} of {src} → {dst}: {other:?}"),
            }
        }
    }
}

/// Route and option configuration as JSON (what `new SmartProxy(...)` and `updateRoutes` hand
/// over): refused with an error, or compiled into a route table that can match.
pub fn route_config(data: &[u8]) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let _ = crate::config::parse_options(&v);
    let routes = match v.get("routes") {
        Some(r) => r,
        None => &v,
    };
    match crate::config::parse_routes(routes) {
        Ok(routes) => {
            let table = crate::matching::RouteTable::new(routes);
            let head = crate::detect::parse_http_head(b"GET /api/v1?q=1 HTTP/1.1\r\nHost: a.example.com\r\n\r\n").ok();
            for port in [80, 443, 8080] {
                for ip in [std::net::IpAddr::from([10, 1, 2, 3]), std::net::IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1])] {
                    let _ = table.early(port, ip);
                    let input = crate::matching::MatchInput {
                        port,
                        client_ip: ip,
                        domain: Some("a.example.com"),
                        http: head.as_ref().map(|h| h as &(dyn crate::matching::HttpView + Sync)),
                        tls_version: None,
                    };
                    if let Some(i) = table.find(&input) {
                        let _ = table.select_target(i, &input);
                    }
                }
            }
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Every kept corpus input and every past finding still passes its target.
    #[test]
    fn corpus_and_findings_replay() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
        let mut total = 0;
        for (name, target) in super::TARGETS {
            let mut seen = 0;
            for kind in ["corpus", "regressions"] {
                let dir = root.join(kind).join(name);
                let Ok(entries) = std::fs::read_dir(&dir) else { continue };
                for e in entries.flatten() {
                    let data = std::fs::read(e.path()).unwrap();
                    target(&data);
                    seen += 1;
                }
            }
            assert!(seen > 0, "no corpus for {name}");
            total += seen;
        }
        println!("replayed {total} inputs");
    }
}
