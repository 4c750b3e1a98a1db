//! Looking at a connection's first bytes without consuming them (MSG_PEEK), so the backend (or,
//! later, a JavaScript socket handler) still receives every byte.
//!
//! Waiting for *more* bytes after a peek needs care: readiness stays set while data is queued,
//! so the peek runs inside `try_io`, which clears readiness only if no new readiness event arrived
//! since it was sampled. Then `ready()` sleeps until the next edge (new data or FIN) instead of
//! spinning. On Linux the peek is one `recv(MSG_PEEK)` on the socket itself (rustix's safe
//! wrapper). Elsewhere it goes through a duplicate of the descriptor (std's safe `peek`), which
//! costs a `dup` and a `close` per connection.

use crate::detect::{
    head_ends_after, hello_needs, parse_client_hello, parse_http_head, sniff, ClientHello, DetectError, HttpHead,
    Sniff, MAX_HEAD,
};
use std::io;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Initial peek buffer; grown up to [`MAX_PEEK`] when a ClientHello or request head is longer.
const FIRST_PEEK: usize = 4096;
/// Upper bound of bytes examined: a maximal ClientHello in records, or a maximal request head.
pub const MAX_PEEK: usize = crate::detect::tls_max_wire();

/// What the first bytes turned out to be.
#[derive(Debug)]
pub enum Initial {
    Tls(ClientHello),
    Http(HttpHead),
    /// Starts like HTTP but the head does not parse (the HTTP layer answers 400 where it serves).
    MalformedHttp,
    /// Neither TLS nor HTTP: routed without domain.
    Other,
}

/// Why detection gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeekError {
    Timeout,
    /// The client closed (or reset) before sending enough to decide.
    Closed,
    /// A TLS ClientHello that does not parse, or exceeds the bound.
    MalformedTls,
}

/// Peeks until the first bytes identify the connection, or `deadline` passes.
pub async fn peek_initial(stream: &TcpStream, deadline: Instant) -> Result<Initial, PeekError> {
    let peeker = Peeker::new(stream)?;
    let mut buf = vec![0u8; FIRST_PEEK];
    let mut have = 0usize;
    loop {
        let scanned = have;
        have = match peek_more(stream, |b| peeker.peek(b), &mut buf, have, deadline).await {
            More::Bytes(n) => n,
            More::Timeout => return Err(PeekError::Timeout),
            More::Closed => return Err(PeekError::Closed),
            // FIN after a partial message: no more bytes will come.
            More::Finished => return finish_partial(&buf[..have]),
        };
        match classify(&buf[..have], scanned) {
            Some(result) => return result,
            None if have == buf.len() => {
                if buf.len() >= MAX_PEEK {
                    return finish_partial(&buf[..have]);
                }
                buf.resize((buf.len() * 2).min(MAX_PEEK), 0);
            }
            None => {}
        }
    }
}

/// What waiting for more of a connection's first bytes gave.
enum More {
    /// This many bytes are queued now: more than before, or a full buffer.
    Bytes(usize),
    Timeout,
    /// The client closed or reset before sending anything, or the peek failed.
    Closed,
    /// FIN after the bytes already seen: no more will come.
    Finished,
}

/// Waits until `deadline` for bytes beyond the `have` already seen and peeks them into `buf`
/// (the peek inside `try_io`, see the module header).
async fn peek_more(
    stream: &TcpStream,
    peek: impl Fn(&mut [u8]) -> io::Result<usize>,
    buf: &mut [u8],
    have: usize,
    deadline: Instant,
) -> More {
    loop {
        let ready = match tokio::time::timeout_at(deadline, stream.ready(Interest::READABLE)).await {
            Err(_) => return More::Timeout,
            Ok(Err(_)) => return More::Closed,
            Ok(Ok(r)) => r,
        };
        let peeked = stream.try_io(Interest::READABLE, || {
            let n = peek(&mut *buf)?;
            if n == have && n > 0 && n < buf.len() {
                // Nothing new yet: let readiness be cleared and wait for the next edge.
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        match peeked {
            Ok(0) => return More::Closed,
            Ok(n) => return More::Bytes(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if ready.is_read_closed() {
                    return More::Finished;
                }
            }
            Err(_) => return More::Closed,
        }
    }
}

/// Why no PROXY protocol header could be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeaderError {
    Timeout,
    Closed,
    Invalid(&'static str),
}

/// Reads the PROXY protocol header a trusted source sends first, also when it arrives in pieces.
/// Without `greedy` it consumes exactly the header's bytes (the connection's own bytes stay
/// queued for detection). With `greedy` (the caller will relay the connection without looking at
/// its bytes) one read takes the header and whatever followed it, which is returned with it:
/// one `recv` instead of a peek, a read of the header and a read of the first bytes.
pub async fn read_proxy_header(
    stream: &TcpStream,
    deadline: Instant,
    greedy: bool,
) -> Result<(crate::proxy_protocol::Header, Vec<u8>), ProxyHeaderError> {
    if greedy {
        return read_proxy_header_greedy(stream, deadline).await;
    }
    read_proxy_header_exact(stream, deadline).await.map(|h| (h, Vec::new()))
}

/// Bytes read at once by the greedy reader (the header and the client's first bytes).
const GREEDY_READ: usize = 16 * 1024;

async fn read_proxy_header_greedy(
    stream: &TcpStream,
    deadline: Instant,
) -> Result<(crate::proxy_protocol::Header, Vec<u8>), ProxyHeaderError> {
    use crate::proxy_protocol::{parse, Parsed, MAX_HEADER};
    let mut buf = Vec::new();
    loop {
        // The runtime takes a new socket for readable, so the first pass reads at once (with
        // `deferAccept` the header is there: the connection was accepted when it arrived). A
        // read that finds nothing clears that readiness, so the next pass waits for the event
        // of the balancer's bytes instead of reading again; a short read clears it too, so the
        // relay's first read waits for new bytes instead of failing with `EAGAIN`.
        tokio::time::timeout_at(deadline, stream.ready(Interest::READABLE))
            .await
            .map_err(|_| ProxyHeaderError::Timeout)?
            .map_err(|_| ProxyHeaderError::Closed)?;
        match super::relay::read_queued(stream, &mut buf, GREEDY_READ) {
            Ok(0) => return Err(ProxyHeaderError::Closed),
            Ok(_) => match parse(&buf) {
                Parsed::Header(h) => {
                    // The client's bytes stay in the same buffer (no second allocation).
                    buf.drain(..h.len);
                    return Ok((h, buf));
                }
                Parsed::Invalid(why) => return Err(ProxyHeaderError::Invalid(why)),
                // The parser decides within MAX_HEADER bytes; this bounds the buffer regardless.
                Parsed::Incomplete if buf.len() >= MAX_HEADER => {
                    return Err(ProxyHeaderError::Invalid("header too long"))
                }
                Parsed::Incomplete => {}
            },
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
            Err(_) => return Err(ProxyHeaderError::Closed),
        }
    }
}

async fn read_proxy_header_exact(
    stream: &TcpStream,
    deadline: Instant,
) -> Result<crate::proxy_protocol::Header, ProxyHeaderError> {
    use crate::proxy_protocol::{parse, Parsed, MAX_HEADER, V1_MAX};
    let peeker = Peeker::new(stream).map_err(|_| ProxyHeaderError::Closed)?;
    // A v1 header, or a v2 header with addresses and a few TLVs, fits at once.
    let mut buf = vec![0u8; 256.max(V1_MAX)];
    // Nothing seen yet: the first pass of the loop peeks at once (the runtime takes a new socket
    // for readable; with `deferAccept` the header is there), and a peek that finds nothing
    // clears that readiness, so the next one waits for the balancer's bytes.
    let mut have = 0usize;
    let header = loop {
        match parse(&buf[..have]) {
            Parsed::Header(h) => break h,
            Parsed::Invalid(why) => return Err(ProxyHeaderError::Invalid(why)),
            Parsed::Incomplete if have == buf.len() => buf.resize(MAX_HEADER, 0),
            Parsed::Incomplete => {}
        }
        have = match peek_more(stream, |b| peeker.peek(b), &mut buf, have, deadline).await {
            More::Bytes(n) => n,
            More::Timeout => return Err(ProxyHeaderError::Timeout),
            More::Closed | More::Finished => return Err(ProxyHeaderError::Closed),
        };
    };
    // Consume the header: its bytes are queued already (one `recv`, at once, as a rule).
    let mut left = header.len - consume_now(stream, &mut buf, header.len);
    while left > 0 {
        tokio::time::timeout_at(deadline, stream.ready(Interest::READABLE))
            .await
            .map_err(|_| ProxyHeaderError::Timeout)?
            .map_err(|_| ProxyHeaderError::Closed)?;
        match stream.try_read(&mut buf[..left]) {
            Ok(0) => return Err(ProxyHeaderError::Closed),
            Ok(n) => left -= n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return Err(ProxyHeaderError::Closed),
        }
    }
    Ok(header)
}

/// Consumes up to `len` queued bytes with one `recv`, without waiting; how many it consumed
/// (the caller reads the rest through the runtime).
fn consume_now(stream: &TcpStream, buf: &mut [u8], len: usize) -> usize {
    #[cfg(target_os = "linux")]
    {
        rustix::net::recv(stream, &mut buf[..len], rustix::net::RecvFlags::DONTWAIT).map_or(0, |(n, _)| n)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (stream, buf, len);
        0
    }
}

/// Copies queued bytes without consuming them.
#[cfg(target_os = "linux")]
struct Peeker<'a>(&'a TcpStream);

#[cfg(target_os = "linux")]
impl<'a> Peeker<'a> {
    fn new(stream: &'a TcpStream) -> Result<Self, PeekError> {
        Ok(Peeker(stream))
    }

    fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        let (n, _) = rustix::net::recv(self.0, buf, rustix::net::RecvFlags::PEEK)?;
        Ok(n)
    }
}

/// Copies queued bytes without consuming them (through a duplicate descriptor).
#[cfg(not(target_os = "linux"))]
struct Peeker(std::net::TcpStream);

#[cfg(not(target_os = "linux"))]
impl Peeker {
    fn new(stream: &TcpStream) -> Result<Self, PeekError> {
        let dup = socket2::SockRef::from(stream).try_clone().map_err(|_| PeekError::Closed)?;
        Ok(Peeker(dup.into()))
    }

    fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.peek(buf)
    }
}

/// `Some(result)` when the bytes decide, `None` when more are needed. The bytes before
/// `scanned` were looked at before: a parser runs only once the message can be complete (the
/// end of a request head among the new bytes, the length a ClientHello's records announce), so
/// a client that sends its first bytes one at a time costs linear work, not quadratic.
fn classify(b: &[u8], scanned: usize) -> Option<Result<Initial, PeekError>> {
    match sniff(b) {
        Sniff::Unknown => None,
        Sniff::Other => Some(Ok(Initial::Other)),
        Sniff::Tls if b.len() < hello_needs(b) => None,
        Sniff::Http if b.len() < MAX_HEAD && !head_ends_after(b, scanned) => None,
        Sniff::Tls => match counted(parse_client_hello)(b) {
            Ok(h) => Some(Ok(Initial::Tls(h))),
            Err(DetectError::Incomplete) => None,
            Err(DetectError::NotThisProtocol) => Some(Ok(Initial::Other)),
            Err(DetectError::Malformed(_)) => Some(Err(PeekError::MalformedTls)),
        },
        Sniff::Http => match counted(parse_http_head)(b) {
            Ok(h) => Some(Ok(Initial::Http(h))),
            Err(DetectError::Incomplete) => None,
            Err(_) => Some(Ok(Initial::MalformedHttp)),
        },
    }
}

/// The parser itself (tests count its calls).
fn counted<T>(parse: fn(&[u8]) -> T) -> fn(&[u8]) -> T {
    #[cfg(test)]
    tests::PARSES.with(|c| c.set(c.get() + 1));
    parse
}

/// Decides on what arrived when no more will: an incomplete ClientHello is malformed, anything
/// else is routed as opaque data.
fn finish_partial(b: &[u8]) -> Result<Initial, PeekError> {
    match classify(b, 0) {
        Some(r) => r,
        None if sniff(b) == Sniff::Tls => Err(PeekError::MalformedTls),
        None if b.is_empty() => Err(PeekError::Closed),
        None => Ok(Initial::Other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    thread_local! {
        pub(super) static PARSES: Cell<usize> = const { Cell::new(0) };
    }

    /// First bytes that arrive one at a time are parsed once, when they can be complete.
    #[test]
    fn dripped_first_bytes_are_parsed_once() {
        let mut head = b"GET /drip HTTP/1.1\r\nHost: drip.example\r\n".to_vec();
        while head.len() < 12 * 1024 {
            head.extend_from_slice(format!("X-Filler: {}\r\n", "f".repeat(500)).as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        let (end, r, parses) = drip(&head);
        assert_eq!(end, head.len());
        assert!(matches!(r, Ok(Initial::Http(h)) if h.host.as_deref() == Some("drip.example")));
        assert_eq!(parses, 1);

        // A ClientHello in one record, then in records of 50 bytes.
        let mut hello = vec![0x16, 0x03, 0x01, 0, 0, 0x01, 0, 0, 0];
        let body: Vec<u8> = [&[0x03, 0x03][..], &[7; 32], &[0], &[0, 2, 0x13, 0x01], &[1, 0]].concat();
        hello[7..9].copy_from_slice(&(body.len() as u16).to_be_bytes());
        hello.extend_from_slice(&body);
        let rec = (hello.len() - 5) as u16;
        hello[3..5].copy_from_slice(&rec.to_be_bytes());
        for wire in [hello.clone(), reframe(&hello, 50)] {
            let (end, r, parses) = drip(&wire);
            assert_eq!(end, wire.len());
            assert!(matches!(r, Ok(Initial::Tls(_))), "{r:?}");
            assert_eq!(parses, 1);
        }
    }

    /// Feeds `wire` one more byte at a time until it decides: how many bytes that took, the
    /// decision, and how often a parser ran.
    fn drip(wire: &[u8]) -> (usize, Result<Initial, PeekError>, usize) {
        PARSES.with(|c| c.set(0));
        for end in 1..=wire.len() {
            if let Some(r) = classify(&wire[..end], end - 1) {
                return (end, r, PARSES.with(Cell::get));
            }
        }
        panic!("{} bytes did not decide", wire.len());
    }

    fn reframe(one: &[u8], chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for part in one[5..].chunks(chunk) {
            out.extend_from_slice(&[0x16, 0x03, 0x01, 0, part.len() as u8]);
            out.extend_from_slice(part);
        }
        out
    }

    /// Both header readers on real sockets: the header alone, in one piece with the client's
    /// bytes and dripped byte by byte; the exact reader leaves the client's bytes queued, the
    /// greedy one returns them; junk and silence end in their errors.
    #[test]
    fn proxy_header_readers_on_sockets() {
        use crate::proxy_protocol::{encode, Source, Version};
        use std::time::Duration;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let src: std::net::SocketAddr = "192.0.2.7:4321".parse().unwrap();
            let dst: std::net::SocketAddr = "198.51.100.1:443".parse().unwrap();
            let lis = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = lis.local_addr().unwrap();
            for version in [Version::V1, Version::V2] {
                let header = encode(version, src, dst);
                for greedy in [false, true] {
                    for drip in [false, true] {
                        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
                        let (s, _) = lis.accept().await.unwrap();
                        let wire = [&header[..], b"hello"].concat();
                        let writer = tokio::spawn(async move {
                            if drip {
                                for b in wire {
                                    c.write_all(&[b]).await.unwrap();
                                    tokio::time::sleep(Duration::from_millis(1)).await;
                                }
                            } else {
                                c.write_all(&wire).await.unwrap();
                            }
                            c
                        });
                        let deadline = Instant::now() + Duration::from_secs(5);
                        let (h, mut first) = read_proxy_header(&s, deadline, greedy).await.unwrap();
                        assert_eq!(h.len, header.len());
                        assert!(matches!(h.source, Source::Tcp { src: a, .. } if a == src), "{:?}", h.source);
                        let _c = writer.await.unwrap();
                        if !greedy {
                            assert!(first.is_empty());
                        }
                        // Whatever was not returned is still queued: together, the client's bytes.
                        let mut s = s;
                        while first.len() < 5 {
                            let mut b = [0u8; 16];
                            let n = s.read(&mut b).await.unwrap();
                            first.extend_from_slice(&b[..n]);
                        }
                        assert_eq!(first, b"hello", "{version:?} greedy {greedy} drip {drip}");
                    }
                }
            }
            for greedy in [false, true] {
                // Junk from a trusted source.
                let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
                let (s, _) = lis.accept().await.unwrap();
                c.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
                let r = read_proxy_header(&s, Instant::now() + Duration::from_secs(5), greedy).await;
                assert!(matches!(r, Err(ProxyHeaderError::Invalid(_))), "{r:?}");
                // Silence until the deadline.
                let _c = tokio::net::TcpStream::connect(addr).await.unwrap();
                let (s, _) = lis.accept().await.unwrap();
                let r = read_proxy_header(&s, Instant::now() + Duration::from_millis(50), greedy).await;
                assert_eq!(r.err(), Some(ProxyHeaderError::Timeout));
            }
        });
    }
}
