//! The HTTP/1.1 client on raw backend connections (no hyper): idle-connection pool, send a
//! request and read the response head (with one retry of a stale pooled connection), the
//! response body as a hyper body (`PoolBody`) for the HTTP/2 front end and the hyper path.
//! The HTTP/1.1 fast path ([`crate::http`]'s `h1`) drives these for its own exchanges.

use super::{connect, Backends};
use crate::context::EngineContext;
use crate::http::chunked::Chunked;
use crate::http::wire::{bufs, push_header, tokens, Framing, BUF, MAX_HEAD, MAX_HEADERS};
use crate::http::HttpError;
use dashmap::DashMap;
use http::header::{HeaderName, HeaderValue};
use http::StatusCode;
use std::collections::VecDeque;
use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Idle pooled backend connections are closed after this long.
const POOL_IDLE: Duration = Duration::from_secs(90);
/// Idle connections kept per backend address. HTTP/2 clients keep up to 200 streams each in
/// flight, every one on a backend connection of its own; with 256 the pool closed connections that
/// the next burst had to open again (a connect and a close cost more than the request itself).
const POOL_MAX_PER_TARGET: usize = 1024;

/// Idle keep-alive connections to plain-HTTP backends, by address. Touched when a client
/// connection needs a backend it does not already hold, and when it ends.
#[derive(Default)]
pub struct Pool {
    /// Oldest first: taken from the back (the warmest connection), expired from the front.
    idle: DashMap<(String, u16), VecDeque<(TcpStream, Instant)>>,
}

impl Pool {
    pub(crate) fn take(&self, host: &str, port: u16) -> Option<TcpStream> {
        let mut list = self.idle.get_mut(&(host.to_owned(), port))?;
        while let Some((s, since)) = list.pop_back() {
            if since.elapsed() < POOL_IDLE && alive(&s) {
                return Some(s);
            }
        }
        None
    }

    pub(crate) fn put(&self, kept: Kept) {
        if !alive(&kept.stream) {
            return;
        }
        let now = Instant::now();
        let mut list = self.idle.entry((kept.host, kept.port)).or_default();
        while list.front().is_some_and(|(_, since)| now.duration_since(*since) >= POOL_IDLE)
            || list.len() >= POOL_MAX_PER_TARGET
        {
            list.pop_front();
        }
        list.push_back((kept.stream, now));
    }

    pub fn clear(&self) {
        self.idle.clear();
    }
}

/// An idle backend connection has nothing to read: data would be out of turn, and a readable
/// end of stream means the backend closed it.
fn alive(s: &TcpStream) -> bool {
    let mut b = [0u8; 1];
    matches!(s.try_read(&mut b), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// The backend connection a client connection keeps between its requests.
pub(crate) struct Kept {
    pub stream: TcpStream,
    pub host: String,
    pub port: u16,
}

/// A backend connection: the one kept from the last request (same target) if still open, else
/// an idle pooled one, else a new one; `true` when reused.
pub(crate) async fn backend(
    sh: &EngineContext,
    kept: Option<TcpStream>,
    host: &str,
    port: u16,
) -> Result<(TcpStream, bool), HttpError> {
    if let Some(s) = kept.filter(alive) {
        return Ok((s, true));
    }
    if let Some(s) = sh.backends.pool.take(host, port) {
        return Ok((s, true));
    }
    connect(sh, host, port).await.map(|s| (s, false))
}

/// Sends a whole request (`out`: head and body) and waits for the first bytes of the answer
/// (into `bbuf`). A reused connection the backend closed meanwhile (the write fails, or it
/// closes without answering) is replaced by a new one, once.
pub(crate) async fn send_whole(
    sh: &EngineContext,
    kept: Option<TcpStream>,
    host: &str,
    port: u16,
    out: &[u8],
    bbuf: &mut Vec<u8>,
    wait: Duration,
) -> Result<TcpStream, HttpError> {
    let (mut be, mut reused) = backend(sh, kept, host, port).await?;
    loop {
        let sent = match be.write_all(out).await {
            Ok(()) => first_bytes(&mut be, bbuf, wait).await,
            Err(_) => Err(HttpError::BackendBroken),
        };
        match sent {
            Err(HttpError::BackendBroken) if reused => {
                be = connect(sh, host, port).await?;
                reused = false;
            }
            Err(status) => return Err(status),
            Ok(()) => return Ok(be),
        }
    }
}

/// Waits, at most `wait`, for the first bytes of a response (the one timer per request).
/// An empty `bbuf` (no capacity) gets a cached buffer only once the answer is there: requests
/// waiting for their backends then hold no buffer (500 HTTP/2 streams in flight would drain the
/// cache and allocate 32 KiB each).
pub(crate) async fn first_bytes(be: &mut TcpStream, bbuf: &mut Vec<u8>, wait: Duration) -> Result<(), HttpError> {
    let read = async {
        loop {
            be.readable().await?;
            if bbuf.capacity() == 0 {
                *bbuf = bufs::take();
            }
            bbuf.reserve(BUF);
            match be.try_read_buf(bbuf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                r => return r,
            }
        }
    };
    match tokio::time::timeout(wait, read).await {
        Err(_) => Err(HttpError::BackendTimeout),
        Ok(Ok(n)) if n > 0 => Ok(()),
        Ok(_) => Err(HttpError::BackendBroken),
    }
}

/// Reads until a response head is complete at the start of `bbuf`, by `deadline`.
pub(crate) async fn read_head(
    be: &mut TcpStream,
    bbuf: &mut Vec<u8>,
    deadline: tokio::time::Instant,
    head_request: bool,
) -> Result<RespHead, HttpError> {
    loop {
        match parse_response(bbuf, head_request) {
            Err(()) => return Err(HttpError::BackendBroken),
            Ok(Some(h)) => return Ok(h),
            Ok(None) if bbuf.len() >= MAX_HEAD => return Err(HttpError::BackendBroken),
            Ok(None) => {
                if bbuf.capacity() - bbuf.len() < 1024 {
                    bbuf.reserve(BUF);
                }
                match tokio::time::timeout_at(deadline, be.read_buf(bbuf)).await {
                    Err(_) => return Err(HttpError::BackendTimeout),
                    Ok(Ok(n)) if n > 0 => {}
                    Ok(_) => return Err(HttpError::BackendBroken),
                }
            }
        }
    }
}

/// Hop-by-hop response headers, except the framing: the body goes through as it came.
pub(crate) fn response_dropped(name: &str) -> bool {
    crate::http::headers::is_hop_by_hop(name) && !name.eq_ignore_ascii_case("transfer-encoding")
}

/// A backend's response head, parsed in place.
pub(crate) struct RespHead {
    pub len: usize,
    pub code: u16,
    pub reason: Range<usize>,
    /// 1xx other than 101: passed on (or skipped), then the next head follows.
    pub interim: bool,
    pub framing: Framing,
    /// The backend connection can carry another request once the body is through.
    pub backend_keep: bool,
    /// The end-to-end header fields (hop-by-hop ones left out) as ranges of the buffer: name,
    /// value. Framing fields stay: HTTP/1.1 clients get the body as it came.
    pub headers: Vec<(Range<usize>, Range<usize>)>,
}

/// Where `part`, a slice of `buf`, lies in it; `None` if it is not inside `buf` (checked in
/// every build: a range outside the buffer would panic where it is used). An empty `part` may
/// point anywhere (httparse gives a static `""` as the reason of a status line without one): it
/// is the empty range.
pub(crate) fn range_in(buf: &[u8], part: &[u8]) -> Option<Range<usize>> {
    if part.is_empty() {
        return Some(0..0);
    }
    let start = (part.as_ptr() as usize).checked_sub(buf.as_ptr() as usize)?;
    let end = start.checked_add(part.len())?;
    (end <= buf.len()).then_some(start..end)
}

/// Parses a response head at the start of `buf` (`Ok(None)`: not complete yet).
pub(crate) fn parse_response(buf: &[u8], head_request: bool) -> Result<Option<RespHead>, ()> {
    let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Response::new(&mut hs);
    let len = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(()),
    };
    let (Some(version), Some(code)) = (r.version, r.code) else { return Err(()) };
    let reason = range_in(buf, r.reason.unwrap_or("").as_bytes()).ok_or(())?;
    if (100..200).contains(&code) {
        if code == 101 {
            return Err(()); // no upgrade was asked for on this path
        }
        let framing = Framing::None;
        return Ok(Some(RespHead {
            len,
            code,
            reason,
            interim: true,
            framing,
            backend_keep: false,
            headers: Vec::new(),
        }));
    }
    let mut length: Option<u64> = None;
    let mut te: Option<bool> = None; // Some(last coding is chunked)
    let mut close = version == 0;
    let mut has_connection = false;
    for h in r.headers.iter() {
        let n = h.name;
        if n.eq_ignore_ascii_case("content-length") {
            let l = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse::<u64>().ok()).ok_or(())?;
            if length.is_some_and(|p| p != l) {
                return Err(());
            }
            length = Some(l);
        } else if n.eq_ignore_ascii_case("transfer-encoding") {
            te = Some(tokens(h.value).last().is_some_and(|t| t.eq_ignore_ascii_case("chunked")));
        } else if n.eq_ignore_ascii_case("connection") {
            has_connection = true;
            close |= tokens(h.value).any(|t| t.eq_ignore_ascii_case("close"));
        }
    }
    let framing = if head_request || code == 204 || code == 304 {
        Framing::None
    } else {
        match (te, length) {
            (Some(true), _) => Framing::Chunked(Chunked::default()),
            (Some(false), _) | (None, None) => Framing::UntilClose,
            (None, Some(n)) => Framing::Length(n),
        }
    };
    let listed: Vec<&str> = if has_connection {
        r.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("connection")).flat_map(|h| tokens(h.value)).collect()
    } else {
        Vec::new()
    };
    let headers = r
        .headers
        .iter()
        .filter(|h| !response_dropped(h.name) && !listed.iter().any(|d| h.name.eq_ignore_ascii_case(d)))
        .map(|h| Some((range_in(buf, h.name.as_bytes())?, range_in(buf, h.value)?)))
        .collect::<Option<_>>()
        .ok_or(())?;
    let backend_keep = !close && framing != Framing::UntilClose;
    Ok(Some(RespHead { len, code, reason, interim: false, framing, backend_keep, headers }))
}

/// Forwards a request without a body that the hyper server received (HTTP/2 clients, and the
/// HTTP/1 requests handed to it) to a plain-HTTP/1.1 backend over the fast path's connections:
/// no hyper client, no pool lock, no hop to a connection task. The response body streams from
/// the backend socket ([`PoolBody`]), which goes back to the pool when the body is through.
pub(crate) async fn send_bodyless(
    sh: &EngineContext,
    host: &str,
    port: u16,
    req: &http::request::Parts,
    path_and_query: &str,
    wait: Duration,
) -> Result<http::Response<crate::http::ProxyBody>, HttpError> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(req.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path_and_query.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers.iter().filter(|(n, _)| **n != http::header::COOKIE) {
        push_header(&mut out, name.as_str().as_bytes(), value.as_bytes());
    }
    // HTTP/2 may split `cookie` into several fields; HTTP/1.1 wants one (RFC 9113 §8.2.3).
    let mut cookies = req.headers.get_all(http::header::COOKIE).iter();
    if let Some(first) = cookies.next() {
        out.extend_from_slice(b"cookie: ");
        out.extend_from_slice(first.as_bytes());
        for c in cookies {
            out.extend_from_slice(b"; ");
            out.extend_from_slice(c.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
    let m = &req.method;
    if (m == http::Method::POST || m == http::Method::PUT || m == http::Method::PATCH)
        && !req.headers.contains_key(http::header::CONTENT_LENGTH)
    {
        out.extend_from_slice(b"content-length: 0\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let mut bbuf = bufs::Buf(Vec::new()); // taken from the cache when the answer arrives
    let mut be = send_whole(sh, None, host, port, &out, &mut bbuf.0, wait).await?;
    let deadline = tokio::time::Instant::now() + wait;
    let head = loop {
        let h = read_head(&mut be, &mut bbuf.0, deadline, req.method == http::Method::HEAD).await?;
        if !h.interim {
            break h;
        }
        bbuf.drain(..h.len); // interim responses have no place in this response
    };
    let status = StatusCode::from_u16(head.code).map_err(|_| HttpError::BackendBroken)?;
    // One copy of the head; the header values are slices of it.
    let raw = bytes::Bytes::copy_from_slice(&bbuf[..head.len]);
    let headers = header_map(
        &raw,
        // The body is handed on decoded: no transfer-encoding.
        head.headers.iter().filter(|(n, _)| !raw[n.clone()].eq_ignore_ascii_case(b"transfer-encoding")).cloned(),
    );
    let mut body = PoolBody {
        stream: Some(be),
        buf: bytes::BytesMut::from(&bbuf[head.len..]),
        framing: head.framing,
        keep: head.backend_keep,
        home: sh.backends.clone(),
        host: host.to_owned(),
        port,
        trailers: Vec::new(),
    };
    if body.framing.done() {
        body.finish();
    }
    let mut resp = http::Response::new(http_body_util::BodyExt::boxed(body));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    Ok(resp)
}

/// Header fields, given as (name, value) ranges of `raw`, as a header map whose values are
/// slices of `raw` (no allocation per value). Fields that are not valid names or values are left
/// out.
fn header_map(raw: &bytes::Bytes, fields: impl Iterator<Item = (Range<usize>, Range<usize>)>) -> http::HeaderMap {
    let mut map = http::HeaderMap::with_capacity(fields.size_hint().1.unwrap_or(0));
    for (n, v) in fields {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(&raw[n]), HeaderValue::from_maybe_shared(raw.slice(v))) {
            map.append(n, v);
        }
    }
    map
}

/// A response body read from a pooled backend connection by its framing (chunked bodies are
/// decoded); the connection returns to the pool once the body is through.
struct PoolBody {
    stream: Option<TcpStream>,
    buf: bytes::BytesMut,
    framing: Framing,
    keep: bool,
    home: Arc<Backends>,
    host: String,
    port: u16,
    /// The trailer section of a chunked body, raw, until the body ends.
    trailers: Vec<u8>,
}

impl PoolBody {
    /// The collected trailer fields as a trailers frame (once), if there were any.
    fn trailer_frame(&mut self) -> Option<hyper::body::Frame<bytes::Bytes>> {
        let raw = bytes::Bytes::from(std::mem::take(&mut self.trailers));
        if raw.len() <= 2 {
            return None; // none, or only the final empty line
        }
        let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let Ok(httparse::Status::Complete((_, fields))) = httparse::parse_headers(&raw, &mut hs) else { return None };
        let fields = fields.iter().filter_map(|f| Some((range_in(&raw, f.name.as_bytes())?, range_in(&raw, f.value)?)));
        Some(hyper::body::Frame::trailers(header_map(&raw, fields)))
    }

    fn finish(&mut self) {
        if let Some(stream) = self.stream.take() {
            if self.keep && self.buf.is_empty() {
                self.home.pool.put(Kept { stream, host: std::mem::take(&mut self.host), port: self.port });
            }
        }
    }

    fn fail(&mut self, why: &str) -> Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, crate::http::BoxError>>> {
        self.stream = None;
        self.framing = Framing::None;
        Poll::Ready(Some(Err(why.into())))
    }
}

impl hyper::body::Body for PoolBody {
    type Data = bytes::Bytes;
    type Error = crate::http::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, crate::http::BoxError>>> {
        let this = &mut *self;
        loop {
            if this.framing.done() {
                this.finish();
                return Poll::Ready(this.trailer_frame().map(Ok));
            }
            if !this.buf.is_empty() {
                let (k, data) = match &mut this.framing {
                    Framing::Chunked(c) => {
                        let in_trailers = c.in_trailers();
                        match c.step(&this.buf) {
                            Ok((k, data)) => {
                                if in_trailers {
                                    if this.trailers.len() + k > MAX_HEAD {
                                        return this.fail("trailer section from the backend too large");
                                    }
                                    this.trailers.extend_from_slice(&this.buf[..k]);
                                }
                                (k, data)
                            }
                            Err(_) => return this.fail("malformed chunked body from the backend"),
                        }
                    }
                    f => (f.take(&this.buf).unwrap_or(0), true),
                };
                let part = this.buf.split_to(k);
                if data && k > 0 {
                    if this.framing.done() {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(hyper::body::Frame::data(part.freeze()))));
                }
                continue;
            }
            let Some(stream) = this.stream.as_mut() else { return Poll::Ready(None) };
            if this.buf.capacity() < 1024 {
                this.buf.reserve(BUF);
            }
            match tokio_util::io::poll_read_buf(Pin::new(stream), cx, &mut this.buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) if this.framing == Framing::UntilClose => {
                    this.stream = None;
                    this.framing = Framing::None;
                }
                Poll::Ready(Ok(0)) => return this.fail("the backend closed before the body ended"),
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(_)) => return this.fail("reading the body from the backend failed"),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing.done() && self.trailers.is_empty()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self.framing {
            Framing::Length(n) => hyper::body::SizeHint::with_exact(n),
            Framing::None => hyper::body::SizeHint::with_exact(0),
            _ => hyper::body::SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_in_is_checked() {
        let buf = b"hello world";
        assert_eq!(range_in(buf, &buf[6..]), Some(6..11));
        assert_eq!(range_in(buf, b""), Some(0..0));
        let other = b"elsewhere";
        assert_eq!(range_in(buf, other), None);
        assert_eq!(range_in(&buf[..5], &buf[3..8]), None, "overlapping the end");
    }
}
