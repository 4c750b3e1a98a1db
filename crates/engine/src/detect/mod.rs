//! Protocol detection on the first bytes of a connection, as pure functions over a byte slice
//! (peeked, never consumed). Each parser answers `Ok(info)`, `Err(Incomplete)` (wait for more
//! bytes), or a definite error. No I/O here; the listener drives these under `initialDataTimeout`.

mod http;
mod tls;

pub use http::{parse_http_head, strip_port, HttpHead};
pub use tls::{parse_client_hello, ClientHello, TlsVersion};

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

/// Deterministic random mutations of a valid input, for tests that feed parsers of untrusted
/// bytes (first bytes of a connection, backend responses) with broken variants of it.
#[cfg(test)]
pub(crate) fn mutations(seed: &[u8], count: usize, mut f: impl FnMut(&[u8])) {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rand = move |n: usize| {
        // xorshift64*
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n.max(1)
    };
    const SPECIAL: [u8; 8] = [0x00, 0xff, 0x7f, 0x80, b'\r', b'\n', b':', b' '];
    for _ in 0..count {
        let mut v = seed.to_vec();
        for _ in 0..1 + rand(4) {
            let at = rand(v.len());
            match rand(6) {
                0 => v[at] = rand(256) as u8,
                1 => v[at] = SPECIAL[rand(SPECIAL.len())],
                2 => v[at] ^= 1 << rand(8),
                3 => v.truncate(at),
                4 => v.insert(at, SPECIAL[rand(SPECIAL.len())]),
                _ => {
                    // Copy a run of the input over another place (lengths that no longer match).
                    let from = rand(v.len());
                    let len = rand(16).min(v.len() - from).min(v.len() - at);
                    let run = v[from..from + len].to_vec();
                    v[at..at + len].copy_from_slice(&run);
                }
            }
            if v.is_empty() {
                break;
            }
        }
        f(&v);
    }
}
