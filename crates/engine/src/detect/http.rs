//! HTTP/1.x request-head sniffing: method, path, query, Host and headers of the first request,
//! for routing plain-HTTP connections by domain, path and headers. Bounded by [`MAX_HEAD`].

use super::{DetectError, Sniff};

/// Largest request head examined. Bigger heads are refused as malformed (nginx's default large
/// header buffer is 8 KiB; 16 KiB accepts anything a browser sends).
pub const MAX_HEAD: usize = 16 * 1024;

const METHODS: &[&[u8]] =
    &[b"GET ", b"POST ", b"PUT ", b"DELETE ", b"HEAD ", b"OPTIONS ", b"PATCH ", b"CONNECT ", b"TRACE ", b"PRI "];

/// Whether `buf` starts like an HTTP/1.x request line (or could, given more bytes).
pub(super) fn looks_like_http(buf: &[u8]) -> Sniff {
    for m in METHODS {
        let n = buf.len().min(m.len());
        if buf[..n] == m[..n] {
            return if n == m.len() { Sniff::Http } else { Sniff::Unknown };
        }
    }
    Sniff::Other
}

/// Whether the bytes from `from` on complete a request head (an empty line, `\r\n` or bare
/// `\n` endings, as httparse accepts), looking back far enough to catch one split across reads.
pub fn head_ends_after(buf: &[u8], from: usize) -> bool {
    let start = from.saturating_sub(3);
    buf[start..]
        .windows(2)
        .enumerate()
        .any(|(i, w)| w == b"\n\n" || (w == b"\r\n" && start + i >= 1 && buf[start + i - 1] == b'\n'))
}

/// The parts of the first request head that routing uses.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpHead {
    pub method: String,
    /// Path without the query string.
    pub path: String,
    pub query: Option<String>,
    /// Host header without port, normalised.
    pub host: Option<String>,
    /// Lower-cased names, in order; repeated headers appear repeatedly.
    pub headers: Vec<(String, String)>,
    pub keep_alive: bool,
}

impl HttpHead {
    /// First value of a header by lower-cased name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Parses the head of the first request on a connection.
pub fn parse_http_head(buf: &[u8]) -> Result<HttpHead, DetectError> {
    let mut raw = [httparse::EMPTY_HEADER; 96];
    let mut req = httparse::Request::new(&mut raw);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Err(if buf.len() >= MAX_HEAD {
                DetectError::Malformed("request head too large")
            } else {
                DetectError::Incomplete
            })
        }
        Err(httparse::Error::TooManyHeaders) => return Err(DetectError::Malformed("too many headers")),
        Err(_) => return Err(DetectError::Malformed("malformed HTTP request")),
    }
    let target = req.path.unwrap_or("/");
    // Absolute-form targets (`http://host/path`) carry the path after the authority.
    let target = match target.find("://") {
        Some(i) => target[i + 3..].find('/').map_or("/", |j| &target[i + 3 + j..]),
        None => target,
    };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
        None => (target.to_owned(), None),
    };
    let headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).trim().to_owned()))
        .collect();
    let host = headers.iter().find(|(k, _)| k == "host").map(|(_, v)| strip_port(v).into_owned());
    let conn = headers.iter().find(|(k, _)| k == "connection").map(|(_, v)| v.to_ascii_lowercase());
    let keep_alive = match req.version {
        Some(0) => conn.as_deref().is_some_and(|c| c.contains("keep-alive")),
        _ => !conn.as_deref().is_some_and(|c| c.contains("close")),
    };
    Ok(HttpHead { method: req.method.unwrap_or("").to_owned(), path, query, host, headers, keep_alive })
}

/// A Host value without its port, normalised (`[v6]:port` and `name:port` forms); borrowed
/// when already in normal form, as [`crate::matching::normalize_host`].
pub fn strip_port(host: &str) -> std::borrow::Cow<'_, str> {
    let h = host.trim();
    let h = if let Some(rest) = h.strip_prefix('[') {
        // [v6]:port
        rest.split(']').next().unwrap_or(rest)
    } else if h.matches(':').count() == 1 {
        h.split(':').next().unwrap_or(h)
    } else {
        h
    };
    crate::matching::normalize_host(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A head the parser accepts always ends in an empty line: before one arrives, parsing can
    /// be skipped.
    #[test]
    fn no_head_before_its_end() {
        let raw = b"GET /a?b=1 HTTP/1.1\r\nHost: x.example:80\r\nX-A: 1\n\r\nGET / HTTP/1.1\r\n\r\n";
        crate::testutil::mutations(raw, 20_000, |b| {
            for end in 0..=b.len() {
                let p = &b[..end];
                if !head_ends_after(p, 0) {
                    assert!(parse_http_head(p).is_err(), "{p:?}");
                }
            }
        });
    }

    #[test]
    fn parses_head() {
        let raw = b"GET /api/users?id=1 HTTP/1.1\r\nHost: Example.com:8080\r\nX-Env: prod\r\nX-Env: dev\r\n\r\nbody";
        let h = parse_http_head(raw).unwrap();
        assert_eq!(h.method, "GET");
        assert_eq!(h.path, "/api/users");
        assert_eq!(h.query.as_deref(), Some("id=1"));
        assert_eq!(h.host.as_deref(), Some("example.com"));
        assert_eq!(h.header("x-env"), Some("prod"));
        assert!(h.keep_alive);
        for n in 0..raw.len() - 4 {
            assert_eq!(parse_http_head(&raw[..n]), Err(DetectError::Incomplete), "prefix {n}");
        }
    }

    #[test]
    fn hosts_and_forms() {
        let h = parse_http_head(b"GET http://a.b/x/y HTTP/1.0\r\nHost: [::1]:80\r\n\r\n").unwrap();
        assert_eq!(h.path, "/x/y");
        assert_eq!(h.host.as_deref(), Some("::1"));
        assert!(!h.keep_alive);
        let h = parse_http_head(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
        assert_eq!(h.host, None);
        assert!(!h.keep_alive);
    }

    #[test]
    fn sniffing() {
        assert_eq!(super::super::sniff(b"GE"), Sniff::Unknown);
        assert_eq!(super::super::sniff(b"GET /"), Sniff::Http);
        assert_eq!(super::super::sniff(b"\x16\x03"), Sniff::Tls);
        assert_eq!(super::super::sniff(b"SSH-2.0"), Sniff::Other);
        assert_eq!(super::super::sniff(b""), Sniff::Unknown);
    }

    #[test]
    fn random_mutations_never_panic() {
        let raw = b"POST http://a.example:81/p/q?x=1 HTTP/1.1\r\nHost: A.Example:81\r\nConnection: keep-alive\r\nX-A: 1\r\nContent-Length: 3\r\n\r\nabc";
        crate::testutil::mutations(raw, 20_000, |b| {
            let _ = super::super::sniff(b);
            if let Ok(h) = parse_http_head(b) {
                assert!(!h.method.is_empty());
                if let Some(host) = &h.host {
                    assert!(!host.bytes().any(|c| c.is_ascii_uppercase()), "{host:?}");
                }
            }
        });
    }

    #[test]
    fn malformed() {
        assert!(matches!(parse_http_head(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"), Err(DetectError::Malformed(_))));
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.resize(MAX_HEAD + 10, b'a');
        assert!(matches!(parse_http_head(&big), Err(DetectError::Malformed(_))));
    }
}
