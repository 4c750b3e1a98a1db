//! Protocol detection on the first bytes of a connection, as pure functions over a byte slice
//! (peeked, never consumed). Each parser answers `Ok(info)`, `Err(Incomplete)` (wait for more
//! bytes), or a definite error. No I/O here; the listener drives these under `initialDataTimeout`.

mod http;
mod tls;

pub use http::{head_ends_after, parse_http_head, strip_port, HttpHead, MAX_HEAD};
pub use tls::{hello_needs, parse_client_hello, ClientHello, TlsVersion};

/// Why a detector could not produce a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DetectError {
    /// More bytes are needed.
    Incomplete,
    /// The bytes are not this protocol.
    NotThisProtocol,
    /// The bytes claim to be this protocol but are broken or exceed the size bound.
    Malformed(&'static str),
}

/// What the first bytes look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniff {
    Tls,
    Http,
    Other,
    /// Not enough bytes to tell.
    Unknown,
}

/// Classifies a connection from its first bytes.
pub fn sniff(buf: &[u8]) -> Sniff {
    match buf.first() {
        None => Sniff::Unknown,
        Some(0x16) => Sniff::Tls,
        Some(_) => http::looks_like_http(buf),
    }
}

/// Bytes needed to hold the largest accepted ClientHello with its record headers.
pub const fn tls_max_wire() -> usize {
    // Each record carries at most 16 KiB, so a maximal message spans two records.
    tls::MAX_CLIENT_HELLO + 4 + 2 * 5 + 64
}
