//! The HTTP/1.1 fast path, client side: one task per client connection parses each request head
//! in place, asks the request plan ([`super::plan`]) what to do, renders the plan as the head for
//! the backend (or as the answer to the client), sends it over a plain-HTTP backend connection it
//! keeps for the next request ([`crate::upstream::http1`]), and relays both bodies by their
//! framing (`Content-Length`, or chunked passed through verbatim). No header maps, no channel hop
//! to a pooled connection task, no lock per request; the only shared state touched is the
//! snapshot and, when a client connection starts or ends, the idle backend pool.
//!
//! What this path does not serve is handed on together with the bytes read so far (see
//! [`Counted`]): HTTP/2 prior knowledge to the HTTP/2 front end; to the hyper server, which keeps
//! the connection from then on, upgrades (WebSocket), `Expect` other than `100-continue`,
//! HTTP/1.0, absolute-form targets, transfer codings other than chunked, and requests whose plan
//! needs a target function, re-encryption, HTTP/2 to the backend or the route's own verifying
//! backend clients.
//!
//! While a client connection is idle it holds no read buffer (idle memory), only its socket,
//! the kept backend socket and a few words of state.

use super::chunked::Chunked;
use super::error::HttpError;
use super::headers;
use super::plan::{self, Answer, Outcome, RequestFacts, Routed};
use super::wire::{bufs, push_header, tokens, Framing, BUF, MAX_HEAD, MAX_HEADERS};
use super::{Counted, HttpConn};
use crate::conn::{ConnRecord, Termination};
use crate::detect::head_ends_after;
use crate::matching::{HttpView, SelectedTarget};
use crate::upstream::http1::{backend, first_bytes, parse_response, read_head, send_whole, Kept, RespHead};
use http::header::{HeaderName, HeaderValue};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::either::Either;

/// A client connection the fast path can serve: plain TCP or terminated TLS.
pub trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Waits for the client's next bytes and appends them to `buf`, which is empty and holds no
    /// allocation while the connection idles; returns how many bytes came (0: the client left).
    fn read_idle<'a>(&'a mut self, buf: &'a mut Vec<u8>) -> impl Future<Output = io::Result<usize>> + Send + 'a;

    /// HTTP/2 was negotiated (ALPN): hyper serves the connection.
    fn negotiated_h2(&self) -> bool {
        false
    }

    /// The stream counts the connection's bytes itself, on the wire (TLS): the HTTP layer
    /// does not count them again.
    const WIRE_COUNTED: bool = false;
}

impl ClientIo for TcpStream {
    async fn read_idle(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        loop {
            self.readable().await?;
            if buf.capacity() == 0 {
                *buf = bufs::take();
            }
            // `poll_read`, not `try_read`: a short read clears the read readiness, so the next
            // wait costs no `recv` that fails with `EAGAIN`.
            match poll_once(self.read_buf(buf)).await {
                Some(r) => return r,
                None if buf.is_empty() => bufs::give(std::mem::take(buf)),
                None => {}
            }
        }
    }
}

/// Polls a future once: its output if it is ready right away.
async fn poll_once<F: Future>(fut: F) -> Option<F::Output> {
    tokio::pin!(fut);
    std::future::poll_fn(|cx| match fut.as_mut().poll(cx) {
        Poll::Ready(r) => Poll::Ready(Some(r)),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}

impl ClientIo for tokio_rustls::server::TlsStream<crate::tcp::Wire> {
    const WIRE_COUNTED: bool = true;

    async fn read_idle(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        // One byte first: rustls reads and decrypts the whole record into its own buffer, so
        // this costs no extra syscall, and the rest is taken below without waiting.
        let mut one = [0u8; 1];
        if self.read(&mut one).await? == 0 {
            return Ok(0);
        }
        if buf.capacity() == 0 {
            *buf = bufs::take();
        }
        buf.push(one[0]);
        let rest = poll_once(self.read_buf(buf)).await.transpose()?.unwrap_or(0);
        Ok(1 + rest)
    }

    fn negotiated_h2(&self) -> bool {
        self.get_ref().1.alpn_protocol() == Some(b"h2")
    }
}

/// The client side: its stream, the bytes read and not yet used, and the byte counters.
struct Client<IO> {
    io: IO,
    buf: Vec<u8>,
    rec: Arc<ConnRecord>,
    /// The status of the last answer sent (metrics).
    status: u16,
}

impl<IO: ClientIo> Client<IO> {
    fn counted_in(&self, n: usize) {
        if n > 0 && !IO::WIRE_COUNTED {
            self.rec.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
            self.rec.touch();
        }
    }

    async fn read_more(&mut self) -> io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(BUF);
        }
        let n = self.io.read_buf(&mut self.buf).await?;
        self.counted_in(n);
        Ok(n)
    }

    async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.io.write_all(bytes).await?;
        self.io.flush().await?;
        if !IO::WIRE_COUNTED {
            self.rec.bytes_out.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        }
        self.rec.touch();
        Ok(())
    }

    /// A response made here (an error, a refusal, a synthetic answer), with
    /// `connection: close` when `close`.
    /// Writes an answer; to a `HEAD` request (`head`) its head only, with the body's length.
    async fn reply(&mut self, a: Answer, close: bool, head: bool) -> io::Result<()> {
        self.status = a.status.as_u16();
        let mut out = Vec::with_capacity(160 + a.body.len());
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(a.status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(a.status.canonical_reason().unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\n");
        for (n, v) in &a.headers {
            push_header(&mut out, n.as_str().as_bytes(), v.as_bytes());
        }
        // 204 and 304 carry no body and no length.
        if !matches!(a.status.as_u16(), 204 | 304) {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(a.body.len().to_string().as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !head {
            out.extend_from_slice(&a.body);
        }
        self.send(&out).await
    }

    async fn reply_error(&mut self, e: HttpError, close: bool) -> io::Result<()> {
        self.reply(e.into(), close, false).await
    }

    /// A lingering close after an answer that ends the connection (nginx's `lingering_close`):
    /// the sending side is closed (over TLS with a close_notify), then whatever the client is
    /// still sending is read and dropped, for at most [`LINGER_TIME`] and [`LINGER_BYTES`], so
    /// that unread bytes do not make the kernel answer with a reset that destroys the answer
    /// before the client has read it.
    async fn linger(&mut self) {
        let drain = async {
            if self.io.shutdown().await.is_err() {
                return;
            }
            let mut scratch = vec![0u8; 16 * 1024];
            let mut left = LINGER_BYTES;
            while left > 0 {
                match self.io.read(&mut scratch).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => left = left.saturating_sub(n),
                }
            }
        };
        let _ = tokio::time::timeout(LINGER_TIME, drain).await;
    }
}

/// How long a lingering close reads what the client still sends.
const LINGER_TIME: Duration = Duration::from_secs(2);
/// How much a lingering close reads at most.
const LINGER_BYTES: usize = 1024 * 1024;

/// A request ready to go to its backend.
struct Forward {
    /// The rewritten head (and, once read, the body bytes that came with it).
    out: Vec<u8>,
    body: Framing,
    host: String,
    port: u16,
    head_request: bool,
    /// The client asked to close after this exchange.
    client_close: bool,
    /// `headers.response` of the route, expanded for this request.
    response_headers: Vec<(HeaderName, HeaderValue)>,
    /// How long the backend may take to start its response.
    wait: Duration,
    /// The route that forwards it (metrics).
    route: Option<Arc<crate::matching::CompiledRoute>>,
    /// The access log's view of the request (while the log is on).
    info: Option<Box<crate::access_log::HttpInfo>>,
}

enum Parsed {
    /// The head is not complete yet.
    Partial,
    /// Not for this path: hyper takes the connection.
    Hyper,
    /// Answer here: `len` bytes of head, whether the connection closes after, whether the
    /// request was malformed (the connection then ends as a client error), and whether it was a
    /// `HEAD` request (no body in the answer).
    Reply {
        len: usize,
        answer: Box<Answer>,
        close: bool,
        malformed: bool,
        head: bool,
        /// The access log's view of the request (while the log is on).
        info: Option<Box<crate::access_log::HttpInfo>>,
    },
    Forward(usize, Box<Forward>),
}

enum Step {
    Next,
    End(Termination),
    Hyper,
}

/// Serves the connection until the client leaves; hands it to hyper when a request needs it.
///
/// Not an `async fn`: its arguments would be stored in the future next to the [`Client`] they
/// are moved into, and the stream (1.2 KB with TLS) would be held twice by every idle connection.
pub fn run<IO: ClientIo>(io: IO, cx: Arc<HttpConn>) -> impl Future<Output = Termination> + Send {
    if io.negotiated_h2() {
        let io = Counted::new(io, cx.rec.clone(), Vec::new(), true, !IO::WIRE_COUNTED);
        return Either::Left(Box::pin(super::h2front::serve(io, cx)));
    }
    Either::Right(serve_h1(Client { io, buf: Vec::new(), rec: cx.rec.clone(), status: 0 }, cx))
}

/// Not an `async fn`: an async fn stores its arguments twice (as captured and as locals).
#[allow(clippy::manual_async_fn)]
fn serve_h1<IO: ClientIo>(mut c: Client<IO>, cx: Arc<HttpConn>) -> impl Future<Output = Termination> + Send {
    async move {
        let mut kept: Option<Kept> = None;
        let end = loop {
            if c.buf.is_empty() {
                bufs::give(std::mem::take(&mut c.buf));
                match c.io.read_idle(&mut c.buf).await {
                    Ok(0) => break Termination::ClientClosed,
                    Ok(n) => c.counted_in(n),
                    Err(_) => break Termination::ClientError,
                }
            }
            // Boxed: the state of one exchange must not size the idle connection's future.
            let mut serving = crate::conn::InFlight::pending(&cx.rec, &cx.sh.registry);
            c.status = 0;
            let step = Box::pin(exchange(&mut c, &mut kept, &cx, &mut serving)).await;
            serving.set_status(c.status);
            drop(serving);
            match step {
                Step::Next => {}
                Step::End(t) => break t,
                Step::Hyper => {
                    if let Some(k) = kept.take() {
                        cx.sh.backends.pool.put(k);
                    }
                    return to_hyper(c, cx).await;
                }
            }
        };
        if let Some(k) = kept.take() {
            cx.sh.backends.pool.put(k);
        }
        bufs::give(c.buf);
        end
    }
}

/// The connection, with the bytes read so far, as a boxed hyper server future (built here, so
/// that nothing of it is stored in the caller's future).
fn to_hyper<IO: ClientIo>(c: Client<IO>, cx: Arc<HttpConn>) -> Pin<Box<dyn Future<Output = Termination> + Send>> {
    if c.buf.starts_with(b"PRI * HTTP/2.0") {
        // HTTP/2 with prior knowledge: the engine's HTTP/2 front end.
        return Box::pin(super::h2front::serve(Counted::new(c.io, c.rec, c.buf, true, !IO::WIRE_COUNTED), cx));
    }
    Box::pin(super::serve_hyper(Counted::new(c.io, c.rec, c.buf, false, !IO::WIRE_COUNTED), cx))
}

/// One request and its response.
async fn exchange<IO: ClientIo>(
    c: &mut Client<IO>,
    kept: &mut Option<Kept>,
    cx: &HttpConn,
    serving: &mut crate::conn::InFlight,
) -> Step {
    let mut head_deadline = None;
    let (head_len, fw) = loop {
        match prepare(&c.buf, cx) {
            Parsed::Partial => {
                if c.buf.len() >= MAX_HEAD {
                    serving.is_request();
                    if c.reply_error(HttpError::HeadTooLarge, true).await.is_ok() {
                        c.linger().await;
                    }
                    return Step::End(Termination::ClientError);
                }
                let deadline = *head_deadline
                    .get_or_insert_with(|| tokio::time::Instant::now() + cx.sh.options.http_headers_timeout);
                // Read until the new bytes end the head (or reach the limit): a head that arrives
                // in many pieces is parsed once it is whole, not again on every piece.
                loop {
                    let scanned = c.buf.len();
                    match tokio::time::timeout_at(deadline, c.read_more()).await {
                        Ok(Ok(0)) => return Step::End(Termination::ClientClosed),
                        Ok(Ok(_)) => {}
                        Ok(Err(_)) | Err(_) => return Step::End(Termination::ClientError),
                    }
                    if head_ends_after(&c.buf, scanned) || c.buf.len() >= MAX_HEAD {
                        break;
                    }
                }
            }
            Parsed::Hyper => return Step::Hyper,
            Parsed::Reply { len, answer, close, malformed, head, info } => {
                serving.is_request();
                if let Some(i) = info {
                    serving.describe(*i, c.buf.len() as u64);
                }
                c.buf.drain(..len.min(c.buf.len()));
                let sent = c.reply(*answer, close, head).await.is_ok();
                if sent && close {
                    c.linger().await;
                }
                if !sent || close {
                    return Step::End(if malformed { Termination::ClientError } else { Termination::ClientClosed });
                }
                return Step::Next;
            }
            Parsed::Forward(len, fw) => {
                serving.is_request();
                break (len, fw);
            }
        }
    };
    let Forward { mut out, mut body, host, port, head_request, client_close, response_headers, wait, route, info } =
        *fw;
    serving.set_route(route);
    if let Some(i) = info {
        serving.describe(*i, c.buf.len() as u64);
    }
    c.buf.drain(..head_len);
    // The body bytes that came with the head go out with it.
    let Ok(k) = body.take(&c.buf) else {
        if c.reply_error(HttpError::BadRequest, true).await.is_ok() {
            c.linger().await;
        }
        return Step::End(Termination::ClientError);
    };
    out.extend_from_slice(&c.buf[..k]);
    c.buf.drain(..k);
    let replayable = body.done();

    let kept_here = match kept.take() {
        Some(k) if k.host == host && k.port == port => Some(k.stream),
        Some(k) => {
            cx.sh.backends.pool.put(k);
            None
        }
        None => None,
    };
    // A replayable request takes its buffer when the answer arrives (see `first_bytes`).
    let mut bbuf = bufs::Buf(if replayable { Vec::new() } else { bufs::take() });
    let mut early = false;
    let mut be = if replayable {
        let send = send_whole(&cx.sh, kept_here, &host, port, &out, &mut bbuf.0, wait);
        match until_client_leaves(c, send).await {
            None => return Step::End(Termination::ClientClosed),
            Some(Ok(s)) => s,
            Some(Err(status)) => return refuse(c, status, true, head_request).await,
        }
    } else {
        // A streamed body cannot be sent twice: no retry on a stale connection here.
        let mut be = match backend(&cx.sh, kept_here, &host, port).await {
            Ok((s, _)) => s,
            Err(status) => return refuse(c, status, false, head_request).await,
        };
        if be.write_all(&out).await.is_err() {
            return refuse(c, HttpError::BackendBroken, false, head_request).await;
        }
        match send_body(c, &mut be, &mut body, &mut bbuf.0).await {
            Ok(()) => {}
            Err(BodyError::Early) => early = true,
            Err(BodyError::Client) => return Step::End(Termination::ClientError),
            Err(BodyError::Framing) => {
                if c.reply_error(HttpError::BadRequest, true).await.is_ok() {
                    c.linger().await;
                }
                return Step::End(Termination::ClientError);
            }
            Err(BodyError::Backend) => return refuse(c, HttpError::BackendBroken, false, head_request).await,
        }
        if bbuf.is_empty() {
            match until_client_leaves(c, first_bytes(&mut be, &mut bbuf.0, wait)).await {
                None => return Step::End(Termination::ClientClosed),
                Some(Err(status)) => return refuse(c, status, body.done(), head_request).await,
                Some(Ok(())) => {}
            }
        }
        be
    };
    drop(out);
    let deadline = tokio::time::Instant::now() + wait;
    let resp = loop {
        let h = match read_head(&mut be, &mut bbuf.0, deadline, head_request).await {
            Ok(h) => h,
            Err(status) => return refuse(c, status, body.done(), head_request).await,
        };
        if !h.interim {
            break h;
        }
        // 1xx (not 101): passed on, the final response follows.
        if c.send(&bbuf[..h.len]).await.is_err() {
            return Step::End(Termination::ClientError);
        }
        bbuf.drain(..h.len);
    };
    c.status = resp.code;
    let close_client = client_close || early || resp.framing == Framing::UntilClose;
    let mut head = client_head(&bbuf, &resp, &response_headers, close_client);
    let RespHead { len, mut framing, mut backend_keep, .. } = resp;
    // The head and the body bytes read with it go to the client in one write.
    let Ok(k) = framing.take(&bbuf[len..]) else {
        return Step::End(Termination::BackendError);
    };
    if len + k < bbuf.len() {
        backend_keep = false; // bytes after the response: the connection is out of step
    }
    head.extend_from_slice(&bbuf[len..len + k]);
    if c.send(&head).await.is_err() {
        return Step::End(Termination::ClientError);
    }
    drop(head);
    while !framing.done() {
        bbuf.clear();
        let n = match be.read_buf(&mut bbuf.0).await {
            Ok(n) => n,
            Err(_) => return Step::End(Termination::BackendError),
        };
        if n == 0 {
            if framing == Framing::UntilClose {
                break;
            }
            // Cut short: the client cannot tell, except by the connection closing.
            return Step::End(Termination::BackendClosed);
        }
        let Ok(k) = framing.take(&bbuf) else {
            return Step::End(Termination::BackendError);
        };
        if k < n {
            backend_keep = false;
        }
        if c.send(&bbuf[..k]).await.is_err() {
            return Step::End(Termination::ClientError);
        }
    }
    if backend_keep && !early {
        *kept = Some(Kept { stream: be, host, port });
    }
    if close_client || early {
        let _ = c.io.shutdown().await;
        return Step::End(Termination::ClientClosed);
    }
    Step::Next
}

/// Runs `wait` (sending a request, waiting for its answer) while watching the client: `None` if
/// the client closes meanwhile, so that an abandoned request does not hold its backend connection
/// until the backend answers. Bytes the client pipelines meanwhile are kept for later (up to the
/// head limit; then only `wait` is awaited).
async fn until_client_leaves<IO: ClientIo, T>(c: &mut Client<IO>, wait: impl Future<Output = T>) -> Option<T> {
    tokio::pin!(wait);
    loop {
        let watch = c.buf.len() < MAX_HEAD;
        tokio::select! {
            biased;
            r = &mut wait => return Some(r),
            r = c.read_more(), if watch => match r {
                Ok(n) if n > 0 => {}
                _ => return None,
            },
        }
    }
}

/// Answers the client with an error status (to `HEAD`, the head alone); keeps the connection
/// when the request was read whole (`keep`), else closes it.
async fn refuse<IO: ClientIo>(c: &mut Client<IO>, e: HttpError, keep: bool, head: bool) -> Step {
    if c.reply(e.into(), !keep, head).await.is_err() {
        return Step::End(Termination::ClientError);
    }
    if keep {
        Step::Next
    } else {
        c.linger().await;
        Step::End(e.termination())
    }
}

enum BodyError {
    /// The backend answered before the body was sent.
    Early,
    Client,
    Backend,
    Framing,
}

/// Streams the rest of the request body; stops early if the backend starts its final answer
/// (then in `bbuf`). Interim answers (`100 Continue` to an `Expect`) go to the client and the
/// upload goes on. Each write is a single `write`, so an answer arriving meanwhile never cuts
/// one short unseen.
async fn send_body<IO: ClientIo>(
    c: &mut Client<IO>,
    be: &mut TcpStream,
    body: &mut Framing,
    bbuf: &mut Vec<u8>,
) -> Result<(), BodyError> {
    let (mut br, mut bw) = be.split();
    bbuf.reserve(BUF);
    while !body.done() {
        tokio::select! {
            biased;
            r = br.read_buf(bbuf) => {
                backend_spoke(r, c, bbuf).await?;
                continue;
            }
            r = c.read_more() => match r {
                Ok(n) if n > 0 => {}
                _ => return Err(BodyError::Client),
            },
        }
        let k = body.take(&c.buf).map_err(|_| BodyError::Framing)?;
        let mut written = 0;
        while written < k {
            tokio::select! {
                biased;
                r = br.read_buf(bbuf) => backend_spoke(r, c, bbuf).await?,
                r = bw.write(&c.buf[written..k]) => match r {
                    Ok(n) if n > 0 => written += n,
                    _ => return Err(BodyError::Backend),
                },
            }
        }
        c.buf.drain(..k);
    }
    Ok(())
}

/// The backend sent something while the body was going up: interim heads are passed to the
/// client (`Ok`: go on); the start of a final answer ends the upload (`Early`).
async fn backend_spoke<IO: ClientIo>(
    read: io::Result<usize>,
    c: &mut Client<IO>,
    bbuf: &mut Vec<u8>,
) -> Result<(), BodyError> {
    if !matches!(read, Ok(n) if n > 0) {
        return Err(BodyError::Backend);
    }
    loop {
        match parse_response(bbuf, false) {
            Ok(Some(h)) if h.interim => {
                c.send(&bbuf[..h.len]).await.map_err(|_| BodyError::Client)?;
                bbuf.drain(..h.len);
                if bbuf.is_empty() {
                    return Ok(());
                }
            }
            // Not a whole head yet: more will come with the next read.
            Ok(None) => return Ok(()),
            Ok(Some(_)) | Err(()) => return Err(BodyError::Early),
        }
    }
}

/// Request facts for [`HttpView`] (route matching by path and headers).
struct View<'a, 'h> {
    method: &'a str,
    path: &'a str,
    headers: &'h [httparse::Header<'a>],
}

impl HttpView for View<'_, '_> {
    fn method(&self) -> &str {
        self.method
    }
    fn path(&self) -> &str {
        self.path
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).and_then(|h| std::str::from_utf8(h.value).ok())
    }
}

/// Whether the plan needs something only the hyper path does: a target function to call, TLS
/// or HTTP/2 to the backend, or the route's own (verifying) backend clients.
fn needs_hyper(r: &Routed, cx: &HttpConn) -> bool {
    r.needs_js()
        || r.own_backends().is_some()
        || r.reencrypt()
        || r.backend_h2()
        || r.target.send_proxy.unwrap_or(cx.sh.options.send_proxy_protocol).is_some()
}

/// What a request head at the start of a buffer says, as far as this path needs it.
pub(crate) struct ReqHead<'b, 'h> {
    /// Bytes of the head.
    pub len: usize,
    pub method: &'b str,
    pub target: &'b str,
    pub headers: &'h [httparse::Header<'b>],
    pub host: &'b str,
    pub body: Framing,
    /// The client asked to close after this request.
    pub close: bool,
    pub has_connection: bool,
    pub xff_count: usize,
}

/// The verdict on the bytes at the start of a client's buffer.
pub(crate) enum Scanned<'b, 'h> {
    /// The head is not complete yet.
    Partial,
    /// Not for this path: hyper takes the connection (HTTP/2 preface, HTTP/1.0, absolute or
    /// CONNECT targets, upgrades, unusual framing or expectations, no Host).
    Hyper,
    /// Malformed: `len` bytes, and the answer.
    Malformed(usize, HttpError),
    Head(ReqHead<'b, 'h>),
}

/// Parses a request head at the start of `buf` (pure: the parser of untrusted bytes of this
/// path, fuzzed in [`crate::fuzzing`]).
pub(crate) fn scan_request<'b, 'h>(buf: &'b [u8], hs: &'h mut [httparse::Header<'b>]) -> Scanned<'b, 'h> {
    if buf.starts_with(b"PRI ") {
        return Scanned::Hyper; // the HTTP/2 connection preface (prior knowledge)
    }
    let mut req = httparse::Request::new(hs);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Scanned::Partial,
        Err(httparse::Error::TooManyHeaders) => return Scanned::Malformed(buf.len(), HttpError::HeadTooLarge),
        Err(_) => return Scanned::Malformed(buf.len(), HttpError::BadRequest),
    };
    let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
        return Scanned::Hyper;
    };
    if !target.starts_with('/') || method == "CONNECT" {
        return Scanned::Hyper;
    }
    let mut host: Option<&str> = None;
    let mut length: Option<u64> = None;
    let mut te_headers = 0;
    let mut chunked = false;
    let mut close = false;
    let mut has_connection = false;
    let mut upgrade_token = false;
    let mut upgrade = false;
    let mut xff_count = 0;
    let headers: &'h [httparse::Header<'b>] = req.headers;
    for h in headers.iter() {
        let n = h.name;
        if n.eq_ignore_ascii_case("host") {
            if host.is_none() {
                match std::str::from_utf8(h.value) {
                    Ok(v) => host = Some(v.trim()),
                    Err(_) => return Scanned::Malformed(len, HttpError::BadRequest),
                }
            }
        } else if n.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value).unwrap_or("").trim();
            let Some(l) =
                (!v.is_empty() && v.bytes().all(|b| b.is_ascii_digit())).then(|| v.parse::<u64>().ok()).flatten()
            else {
                return Scanned::Malformed(len, HttpError::BadRequest);
            };
            if length.is_some_and(|prev| prev != l) {
                return Scanned::Malformed(len, HttpError::BadRequest);
            }
            length = Some(l);
        } else if n.eq_ignore_ascii_case("transfer-encoding") {
            te_headers += 1;
            chunked = std::str::from_utf8(h.value).is_ok_and(|v| v.trim().eq_ignore_ascii_case("chunked"));
        } else if n.eq_ignore_ascii_case("connection") {
            has_connection = true;
            for t in tokens(h.value) {
                close |= t.eq_ignore_ascii_case("close");
                upgrade_token |= t.eq_ignore_ascii_case("upgrade");
            }
        } else if n.eq_ignore_ascii_case("upgrade") {
            upgrade = true;
        } else if n.eq_ignore_ascii_case("expect") {
            // `100-continue` is forwarded and the backend's `100` passed back; anything else is
            // hyper's to refuse.
            if !h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue") {
                return Scanned::Hyper;
            }
        } else if n.eq_ignore_ascii_case("x-forwarded-for") {
            xff_count += 1;
        }
    }
    if (upgrade && upgrade_token) || te_headers > 1 || (te_headers == 1 && !chunked) {
        return Scanned::Hyper;
    }
    let Some(host) = host else { return Scanned::Hyper };
    let body = match (chunked, length) {
        (true, _) => Framing::Chunked(Chunked::default()),
        (false, Some(n)) if n > 0 => Framing::Length(n),
        _ => Framing::None,
    };
    Scanned::Head(ReqHead { len, method, target, headers, host, body, close, has_connection, xff_count })
}

/// Parses a request head at the start of `buf`, asks the [`plan`] what to do with it, and
/// renders the head for the backend.
fn prepare(buf: &[u8], cx: &HttpConn) -> Parsed {
    let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let head = match scan_request(buf, &mut hs) {
        Scanned::Partial => return Parsed::Partial,
        Scanned::Hyper => return Parsed::Hyper,
        Scanned::Malformed(len, e) => {
            return Parsed::Reply {
                len,
                answer: Box::new(e.into()),
                close: true,
                malformed: true,
                head: false,
                info: None,
            };
        }
        Scanned::Head(h) => h,
    };
    let ReqHead { len, method, target, headers: fields, host, body, close, has_connection, xff_count } = head;
    let has_body = body != Framing::None;
    // The access log's view, built only while the log is on.
    let mut info = cx.sh.registry.access_log.load().is_some().then(|| {
        let field = |name: &str| {
            fields
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).into_owned())
                .unwrap_or_default()
        };
        Box::new(crate::access_log::HttpInfo {
            method: method.to_owned(),
            path: target.to_owned(),
            host: host.to_owned(),
            referer: field("referer"),
            user_agent: field("user-agent"),
            backend: None,
        })
    });
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let domain = crate::detect::strip_port(host);
    let view = View { method, path, headers: fields };
    let facts = RequestFacts { method, target, path, query, domain: Some(&domain), upgrade: false, view: &view };
    if plan::is_acme_validation(cx, path) {
        return Parsed::Hyper;
    }
    let snap = cx.sh.snapshot.load();
    let answer = |a: Answer, info| Parsed::Reply {
        len,
        answer: Box::new(a),
        close: has_body || close,
        malformed: false,
        head: method == "HEAD",
        info,
    };
    let routed = match plan::plan(&snap, cx, &facts) {
        Ok(Outcome::Forward(r)) => r,
        Ok(Outcome::Answer(a)) => return answer(a, info),
        Err(e) => return answer(e.into(), info),
    };
    if needs_hyper(&routed, cx) {
        return Parsed::Hyper;
    }
    let edits = routed.edits(cx, &facts);
    let listed: Vec<&str> = if has_connection {
        headers::connection_tokens(fields.iter().filter(|h| h.name.eq_ignore_ascii_case("connection")).map(|h| h.value))
    } else {
        Vec::new()
    };

    let mut out = Vec::with_capacity(len + 160);
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(routed.path_and_query(&facts).as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for h in fields.iter() {
        let n = h.name;
        // Framing is this path's own (written below).
        if headers::request_field_kept(n, false, &listed)
            && !n.eq_ignore_ascii_case("content-length")
            && !edits.replaces(n)
        {
            push_header(&mut out, n.as_bytes(), h.value);
        }
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    let prior = fields.iter().filter(|h| xff_count > 0 && h.name.eq_ignore_ascii_case("x-forwarded-for"));
    headers::forwarded_for(&mut out, prior.map(|h| h.value), cx.client_ip_text.as_bytes());
    out.extend_from_slice(if cx.tls {
        b"\r\nx-forwarded-proto: https\r\n"
    } else {
        b"\r\nx-forwarded-proto: http\r\n"
    });
    push_header(&mut out, b"x-forwarded-host", host.as_bytes());
    for (n, v) in &edits.request {
        if let Some(v) = v {
            push_header(&mut out, n.as_str().as_bytes(), v.as_bytes());
        }
    }
    match body {
        Framing::Chunked(_) => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(n.to_string().as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        _ => {}
    }
    out.extend_from_slice(b"\r\n");

    let wait = routed.wait();
    let route = routed.route.clone();
    let SelectedTarget { host: target_host, port: target_port, .. } = routed.target;
    if let Some(i) = &mut info {
        i.backend = Some(format!("{target_host}:{target_port}"));
    }
    Parsed::Forward(
        len,
        Box::new(Forward {
            out,
            body,
            host: target_host,
            port: target_port,
            head_request: method == "HEAD",
            client_close: close,
            response_headers: edits.response,
            wait,
            route,
            info,
        }),
    )
}

/// The head an HTTP/1.1 client gets: the backend's, without hop-by-hop fields, with the
/// route's response headers, and `connection: close` when the connection ends after it.
pub(crate) fn client_head(buf: &[u8], h: &RespHead, templates: &[(HeaderName, HeaderValue)], close: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(h.len + 64);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(&itoa3(h.code));
    out.push(b' ');
    out.extend_from_slice(&buf[h.reason.clone()]);
    out.extend_from_slice(b"\r\n");
    for (n, v) in &h.headers {
        let name = &buf[n.clone()];
        if !templates.iter().any(|(t, _)| name.eq_ignore_ascii_case(t.as_str().as_bytes())) {
            push_header(&mut out, name, &buf[v.clone()]);
        }
    }
    for (n, v) in templates {
        push_header(&mut out, n.as_str().as_bytes(), v.as_bytes());
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// A three-digit status code as text.
fn itoa3(code: u16) -> [u8; 3] {
    let c = code.min(999);
    [b'0' + (c / 100) as u8, b'0' + (c / 10 % 10) as u8, b'0' + (c % 10) as u8]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The end of a head is found in the new bytes, also when split across reads, for every
    /// split point, and not before it is there.
    #[test]
    fn head_end_found_in_new_bytes_only() {
        for head in [
            &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"GET / HTTP/1.1\nHost: a\n\n",
            b"GET / HTTP/1.1\r\nHost: a\n\r\n",
        ] {
            for split in 0..head.len() {
                let mut found_at = None;
                for end in split + 1..=head.len() {
                    if head_ends_after(&head[..end], end - 1) {
                        found_at = Some(end);
                        break;
                    }
                }
                let first = if head_ends_after(&head[..split], 0) { Some(split) } else { found_at };
                assert_eq!(first, Some(head.len()), "{head:?} split at {split}");
            }
        }
        assert!(!head_ends_after(b"GET / HTTP/1.1\r\nHost: a\r\n", 0));
    }

    #[test]
    fn status_line_without_reason() {
        for raw in [&b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok"[..], b"HTTP/1.1 404 \r\nX-Empty:\r\n\r\n"] {
            let r = parse_response(raw, false).unwrap().unwrap();
            let head = String::from_utf8(client_head(raw, &r, &[], false)).unwrap();
            assert!(head.starts_with(&format!("HTTP/1.1 {} \r\n", r.code)), "{head:?}");
        }
    }

    #[test]
    fn random_response_heads_never_panic() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive, x-hop\r\nX-Hop: 1\r\nSet-Cookie: a=1\r\n\r\nhello";
        crate::testutil::mutations(raw, 20_000, |b| {
            for head_request in [false, true] {
                if let Ok(Some(r)) = parse_response(b, head_request) {
                    assert!(r.len <= b.len());
                    let _ = client_head(b, &r, &[], true);
                }
            }
        });
    }

    #[test]
    fn response_framing_and_hop_by_hop() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, x-hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nX-Keep: 2\r\n\r\nhello";
        let r = parse_response(raw, false).unwrap().unwrap();
        assert_eq!(r.len, raw.len() - 5);
        assert_eq!(r.framing, Framing::Length(5));
        assert!(r.backend_keep);
        let head = String::from_utf8(client_head(raw, &r, &[], false)).unwrap();
        assert_eq!(head, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Keep: 2\r\n\r\n");
        let set = [(HeaderName::from_static("x-keep"), HeaderValue::from_static("mine"))];
        let head = String::from_utf8(client_head(raw, &r, &set, true)).unwrap();
        assert_eq!(head, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nx-keep: mine\r\nconnection: close\r\n\r\n");
    }

    #[test]
    fn response_without_length_closes() {
        let r = parse_response(b"HTTP/1.0 200 OK\r\nX: 1\r\n\r\n", false).unwrap().unwrap();
        assert_eq!(r.framing, Framing::UntilClose);
        assert!(!r.backend_keep);
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true).unwrap().unwrap();
        assert_eq!(r.framing, Framing::None);
        assert!(r.backend_keep);
        let r = parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", false).unwrap().unwrap();
        assert!(matches!(r.framing, Framing::Chunked(_)));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", false).is_err());
        assert!(parse_response(b"HTTP/1.1 100 Continue\r\n\r\n", false).unwrap().unwrap().interim);
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-", false).unwrap().is_none());
    }

    #[test]
    fn framing_takes_what_belongs() {
        let mut f = Framing::Length(4);
        assert_eq!(f.take(b"ab"), Ok(2));
        assert_eq!(f.take(b"cdGET"), Ok(2));
        assert!(f.done());
        assert_eq!(itoa3(204), *b"204");
    }
}
