//! The HTTP layer, on plain-HTTP ports and on TLS-terminated connections. Three front ends
//! serve clients: the HTTP/1.1 fast path (`h1`, most HTTP/1.1 traffic), the engine's own
//! HTTP/2 front end (`h2front`, on the h2 crate, for ALPN `h2` and prior knowledge), and
//! hyper's HTTP/1 server for the rare rest (upgrades, HTTP/1.0, `Expect` other than
//! `100-continue`, absolute-form targets, and routes whose target is a function or that
//! re-encrypt or speak HTTP/2 to the backend). Every request is decided by the one request
//! plan ([`plan`]); backends are reached through [`crate::upstream`].
//!
//! Failures are [`HttpError`]s, mapped to statuses in one place ([`error`]): no route → 404,
//! refused client → 403, backend unreachable or broken → 502, backend too slow → 504. Bodies
//! stream in both directions; nothing is buffered whole. WebSocket upgrades stay in the
//! connection's own task until they close ([`HttpConn::upgraded`]).

mod access;
pub(crate) mod chunked;
pub mod error;
pub(crate) mod h1;
mod h2front;
mod h2send;
pub mod headers;
pub mod plan;
pub(crate) mod wire;
pub(crate) mod ws;

use crate::upstream::Backends;
pub use access::RateLimiter;
pub use error::HttpError;
use plan::{Answer, Outcome, RequestFacts};

use crate::conn::{ConnRecord, Termination};
use crate::context::EngineContext;
use crate::detect::TlsVersion;
use crate::matching::{HttpView, SelectedTarget};
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::borrow::Cow;
use std::convert::Infallible;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Errors of response bodies (hyper's own, or the fast path's pooled-connection bodies).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// Per-connection facts every request of the connection shares.
pub struct HttpConn {
    pub sh: Arc<EngineContext>,
    pub port: u16,
    pub client_ip: IpAddr,
    pub client_ip_text: String,
    /// `client_ip_text` as a header value, made by the first request that forwards it (clones
    /// share its bytes).
    pub client_ip_value: std::sync::OnceLock<HeaderValue>,
    pub server_ip: String,
    /// The address the client connected to (a PROXY protocol header's, else this socket's):
    /// the destination of the PROXY header backends get.
    pub dst: std::net::SocketAddr,
    /// TLS was terminated here.
    pub tls: bool,
    pub sni: Option<String>,
    pub tls_version: Option<TlsVersion>,
    pub rec: Arc<ConnRecord>,
    /// The relay of an upgraded (WebSocket) request, run by the connection's own task once the
    /// HTTP server hands the connection over: so it stays on the books (counted, limited per IP
    /// and route, bytes counted, idle and lifetime timers) until it closes. Cold: set once.
    pub upgraded: std::sync::Mutex<Option<UpgradedRelay>>,
}

/// The relay of an upgraded connection, awaiting both upgraded streams.
pub type UpgradedRelay = Pin<Box<dyn std::future::Future<Output = Termination> + Send>>;

impl HttpConn {
    /// The PROXY protocol header for a backend connection of `target`, when its
    /// `sendProxyProtocol` (target, else route, else global) asks for one.
    pub(crate) fn proxy_header(&self, target: &SelectedTarget) -> Option<crate::upstream::ProxyHeader> {
        let version = target.send_proxy.unwrap_or(self.sh.options.send_proxy_protocol)?;
        let src = std::net::SocketAddr::new(self.client_ip, self.rec.client_port);
        Some(crate::upstream::ProxyHeader { version, src, dst: self.dst })
    }

    fn take_upgraded(&self) -> Option<UpgradedRelay> {
        self.upgraded.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// Serves HTTP on `io` until the client leaves, the idle limit passes, or the proxy stops.
///
/// HTTP/1.1 requests go through the fast path (`h1`); HTTP/2 (ALPN or prior knowledge) goes to
/// the HTTP/2 front end (`h2front`); the rarer HTTP/1 cases (upgrades, `Expect`, HTTP/1.0,
/// re-encryption, HTTP/2 backends or target functions) are handed to the hyper server, which
/// then keeps the connection.
///
/// Not an `async fn`, so that the stream is held once, inside the connection's future.
pub fn serve<IO: h1::ClientIo>(
    io: IO,
    cx: Arc<HttpConn>,
    idle: Option<Duration>,
) -> impl std::future::Future<Output = Termination> + Send {
    let rec = cx.rec.clone();
    rec.http.store(true, std::sync::atomic::Ordering::Relaxed);
    let o = &cx.sh.options;
    let (first, keep_alive) = (o.http_first_request_timeout(), o.http_keep_alive_timeout);
    // Boxed once per connection: pinning it inside the async fn below would copy it.
    serve_until_idle(Box::pin(h1::run(io, cx)), rec, idle, first, keep_alive)
}

/// Runs the connection under its idle limits: the connection's inactivity timeout (`idle`)
/// always, and, while no request is being served, the first-request timeout (before the first
/// one) or the keep-alive timeout (between requests). One lazily re-armed timer: it checks the
/// connection's last activity when it fires, and sleeps at most one keep-alive period, so a
/// connection that goes idle is closed at most twice that late.
async fn serve_until_idle<F: std::future::Future<Output = Termination>>(
    mut conn: Pin<Box<F>>,
    rec: Arc<ConnRecord>,
    idle: Option<Duration>,
    first: Duration,
    keep_alive: Duration,
) -> Termination {
    // The state can change while the timer sleeps (a first request answered, a request ending),
    // so it never sleeps longer than the keep-alive timeout.
    let mut at = tokio::time::Instant::now() + idle.map_or(first, |d| d.min(first)).min(keep_alive);
    loop {
        tokio::select! {
            t = conn.as_mut() => return t,
            _ = tokio::time::sleep_until(at) => {
                let now = tokio::time::Instant::now();
                let last = tokio::time::Instant::from_std(rec.last_activity());
                if idle.is_some_and(|d| last + d <= now) {
                    return Termination::InactivityTimeout;
                }
                let serving = rec.http_in_flight.load(Ordering::Relaxed) > 0;
                let between = if rec.http_served.load(Ordering::Relaxed) { keep_alive } else { first };
                if !serving && last + between <= now {
                    return Termination::HttpIdleTimeout;
                }
                let next_idle = idle.map(|d| last + d);
                let next_between = if serving { now + keep_alive } else { last + between };
                at = next_idle.map_or(next_between, |i| i.min(next_between)).min(now + keep_alive);
            }
        }
    }
}

/// The hyper server (HTTP/1) on a connection whose bytes are already counted (see [`Counted`]).
async fn serve_hyper<IO>(io: Counted<IO>, cx: Arc<HttpConn>) -> Termination
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc_cx = cx.clone();
    let svc = hyper::service::service_fn(move |req| handle(req, svc_cx.clone()));
    let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    b.http1().timer(TokioTimer::new()).header_read_timeout(cx.sh.options.http_headers_timeout).keep_alive(true);
    b.http2().timer(TokioTimer::new());
    let served = b.serve_connection_with_upgrades(TokioIo::new(io), svc).await;
    if let Some(relay) = cx.take_upgraded() {
        // The server gave the connection up for an upgrade: it lives on as the relay (a request
        // in flight until it closes: the HTTP idle timeouts do not apply to it; its request
        // was counted when it came).
        let _serving = crate::conn::InFlight::pending(&cx.rec, &cx.sh.registry);
        return relay.await;
    }
    match served {
        Ok(()) => Termination::ClientClosed,
        Err(_) => Termination::ClientError,
    }
}

struct ReqView<'a> {
    method: &'a str,
    path: &'a str,
    headers: &'a http::HeaderMap,
}

impl HttpView for ReqView<'_> {
    fn method(&self) -> &str {
        self.method
    }
    fn path(&self) -> &str {
        self.path
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A response the proxy gives itself (an error or a plan's answer).
fn answer_response(a: Answer) -> Response<ProxyBody> {
    let mut r = Response::new(Full::new(a.body).map_err(|e| match e {}).boxed());
    *r.status_mut() = a.status;
    for (n, v) in a.headers {
        r.headers_mut().insert(n, v);
    }
    r
}

fn error_response(e: HttpError) -> Response<ProxyBody> {
    answer_response(Answer::from(e))
}

fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
}

async fn handle(mut req: Request<Incoming>, cx: Arc<HttpConn>) -> Result<Response<ProxyBody>, Infallible> {
    let mut serving = crate::conn::InFlight::new(&cx.rec, &cx.sh.registry);
    let upgrade = is_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
    let info = serving.logging().then(|| access_info(&req));
    let mut served = Served::default();
    let resp = handle_inner(req, &cx, upgrade, &mut served).await.unwrap_or_else(error_response);
    serving.set_route(served.route);
    serving.set_status(resp.status().as_u16());
    if let Some(mut info) = info {
        info.backend = served.backend;
        serving.describe(info, 0);
    }
    Ok(resp.map(|body| Serving { body, _serving: serving }.boxed()))
}

/// What `handle_inner` found out for the request's books: its route, and (while the access log
/// is on) its backend.
#[derive(Default)]
pub(crate) struct Served {
    pub route: Option<Arc<crate::matching::CompiledRoute>>,
    pub backend: Option<String>,
}

/// The access log's view of a request.
pub(crate) fn access_info<B>(req: &Request<B>) -> crate::access_log::HttpInfo {
    let h = req.headers();
    let text = |n: header::HeaderName| h.get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let host = req.uri().authority().map(|a| a.as_str().to_owned()).unwrap_or_else(|| text(header::HOST));
    crate::access_log::HttpInfo {
        method: req.method().as_str().to_owned(),
        path: req.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned(),
        host,
        referer: text(header::REFERER),
        user_agent: text(header::USER_AGENT),
        backend: None,
    }
}

/// A response body that keeps its request counted as in flight until it is sent.
struct Serving {
    body: ProxyBody,
    _serving: crate::conn::InFlight,
}

impl hyper::body::Body for Serving {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// One request from either server (hyper's, or the HTTP/2 front end): the [`plan`] decides,
/// this renders it into the request's header map and sends it. `client_upgrade` is the client
/// side of an HTTP/1.1 upgrade request (WebSocket), taken by the caller.
async fn handle_inner<B>(
    mut req: Request<B>,
    cx: &HttpConn,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    route_out: &mut Served,
) -> Result<Response<ProxyBody>, HttpError>
where
    B: hyper::body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    if let Some(a) = plan::acme_answer(cx, req.uri().path()).await {
        return Ok(answer_response(a));
    }
    let snap = cx.sh.snapshot.load_full();
    // Cheap clones (shared bytes): they let the request be borrowed for the plan and changed
    // below without owned copies of host, path and query per request.
    let uri0 = req.uri().clone();
    let host_hv = req.headers().get(header::HOST).cloned();
    let host_raw: Option<&str> =
        host_hv.as_ref().and_then(|v| v.to_str().ok()).or_else(|| uri0.authority().map(|a| a.as_str()));
    let domain = host_raw.map(crate::detect::strip_port).or_else(|| cx.sni.as_deref().map(Cow::Borrowed));
    let method = req.method().clone();
    let headers0 = std::mem::take(req.headers_mut());
    let view = ReqView { method: method.as_str(), path: uri0.path(), headers: &headers0 };
    let facts = RequestFacts {
        method: method.as_str(),
        target: uri0.path_and_query().map_or("/", |p| p.as_str()),
        path: uri0.path(),
        query: uri0.query(),
        domain: domain.as_deref(),
        upgrade: client_upgrade.is_some(),
        view: &view,
    };
    let mut routed = match plan::plan(&snap, cx, &facts)? {
        Outcome::Answer(a) => return Ok(answer_response(a)),
        Outcome::Forward(r) => r,
    };
    route_out.route.clone_from(&routed.route);
    if routed.needs_js() {
        let route = routed.route.as_deref();
        let context = crate::js::RouteContext {
            port: cx.port,
            domain: facts.domain,
            client_ip: cx.client_ip_text.clone(),
            server_ip: cx.server_ip.clone(),
            path: Some(facts.path),
            query: facts.query,
            headers: Some(headers0.iter().filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str(), v))).collect()),
            is_tls: cx.tls,
            tls_version: cx.tls_version,
            route,
            rec: &cx.rec,
            target_host: routed.target.host_fn.is_none().then_some(routed.target.host.as_str()),
            target_port: None,
        }
        .to_json();
        let target = std::mem::replace(&mut routed.target, SelectedTarget::fixed(String::new(), 0));
        // Boxed (as the upgrade below): rare paths must not size every request's future.
        routed.target = match Box::pin(crate::js::resolve_target(
            target,
            cx.sh.bridge.as_ref(),
            &cx.sh.js_calls,
            context,
            cx.rec.id,
        ))
        .await
        {
            Ok(t) => t,
            Err((_, why)) => {
                let name = route.map(|r| &*r.name);
                cx.sh.warn_route(name, format!("route {}: {why}", name.unwrap_or("-")));
                return Err(HttpError::TargetFunction);
            }
        };
    }
    if cx.sh.registry.access_log.load().is_some() {
        route_out.backend = Some(format!("{}:{}", routed.target.host, routed.target.port));
    }
    let edits = routed.edits(cx, &facts);
    let path_and_query = routed.path_and_query(&facts).to_owned();
    let upgrade = client_upgrade.is_some();
    // The plan's borrows of the client's headers end here: they go back into the request.
    *req.headers_mut() = headers0;
    // Forwarded request headers: the one rule, the plan's edits, X-Forwarded-*.
    {
        let h = req.headers_mut();
        let ip = cx
            .client_ip_value
            .get_or_init(|| HeaderValue::from_str(&cx.client_ip_text).unwrap_or(HeaderValue::from_static("")));
        headers::edit_request(h, upgrade, &edits, ip, cx.tls, host_raw);
        if host_hv.is_none() {
            // HTTP/2 (`:authority`) or an absolute URI: the backend still gets a Host header.
            if let Some(host) = host_raw.and_then(|v| HeaderValue::from_str(v).ok()) {
                h.insert(header::HOST, host);
            }
        }
    }
    let backends = routed.own_backends().cloned().unwrap_or_else(|| cx.sh.backends.clone());
    let wait = routed.wait();
    let backend_h2 = routed.backend_h2();
    let reencrypt = routed.reencrypt();

    let mut resp = if let Some(client_upgrade) = client_upgrade {
        let limits = routed.http().and_then(|h| h.websocket.as_ref()).map_or_else(ws::WsLimits::default, |w| {
            ws::WsLimits { ping_interval: w.ping_interval, ping_timeout: w.ping_timeout, max_payload: w.max_payload }
        });
        let (parts, _) = req.into_parts();
        Box::pin(upgrade_request(
            parts,
            client_upgrade,
            cx,
            &routed.target,
            reencrypt.then(|| backends.tls_h1.clone()),
            &path_and_query,
            limits,
        ))
        .await?
    } else if let Some(header) = cx.proxy_header(&routed.target) {
        // The backend connection carries this client's address: one of its own, never pooled.
        let t = &routed.target;
        req.headers_mut().remove(header::CONNECTION);
        let authority = host_raw.unwrap_or(&t.host).to_owned();
        let uri = if backend_h2 {
            let scheme = if reencrypt { "https" } else { "http" };
            format!("{scheme}://{authority}{path_and_query}")
        } else {
            path_and_query
        };
        *req.uri_mut() = uri.parse().map_err(|_| HttpError::BadRequest)?;
        *req.version_mut() = if backend_h2 { Version::HTTP_2 } else { Version::HTTP_11 };
        if backend_h2 {
            req.headers_mut().remove(header::HOST);
        }
        let req = req.map(|b| b.map_err(Into::into).boxed());
        let tls = reencrypt.then(|| backends.tls_h1.clone());
        let send = crate::upstream::send_proxied(&cx.sh, t, header, tls, backend_h2, req);
        match tokio::time::timeout(wait, Box::pin(send)).await {
            Err(_) => return Err(HttpError::BackendTimeout),
            Ok(r) => {
                let (mut parts, body) = r?.into_parts();
                headers::strip_hop_by_hop(&mut parts.headers);
                Response::from_parts(parts, body.map_err(BoxError::from).boxed())
            }
        }
    } else if !reencrypt && routed.own_backends().is_none() && !backend_h2 && req.body().is_end_stream() {
        // No body (HTTP/2 GETs, mostly): the fast path's backend connections, no hyper client.
        let (parts, _) = req.into_parts();
        crate::upstream::http1::send_bodyless(
            &cx.sh,
            &routed.target.host,
            routed.target.port,
            &parts,
            &path_and_query,
            wait,
        )
        .await?
    } else {
        let t = &routed.target;
        let authority = if t.host.contains(':') && !t.host.starts_with('[') {
            format!("[{}]:{}", t.host, t.port)
        } else {
            format!("{}:{}", t.host, t.port)
        };
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(if reencrypt { Scheme::HTTPS } else { Scheme::HTTP });
        let authority = Authority::from_maybe_shared(Bytes::from(authority)).map_err(|_| HttpError::BadRequest)?;
        parts.authority = Some(authority.clone());
        parts.path_and_query =
            Some(PathAndQuery::from_maybe_shared(Bytes::from(path_and_query)).map_err(|_| HttpError::BadRequest)?);
        *req.uri_mut() = Uri::from_parts(parts).map_err(|_| HttpError::BadRequest)?;
        *req.version_mut() = if backend_h2 { Version::HTTP_2 } else { Version::HTTP_11 };
        let client = if backend_h2 { &backends.h2 } else { &backends.h1 };
        let req = req.map(|b| b.map_err(Into::into).boxed());
        match tokio::time::timeout(wait, client.request(req)).await {
            Err(_) => return Err(HttpError::BackendTimeout),
            Ok(Err(e)) => {
                cx.sh.debug(|| format!("backend {authority} failed: {e:?}"));
                if e.is_connect() {
                    cx.sh.registry.metrics.backend_connect_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                return Err(HttpError::from_client(&e));
            }
            Ok(Ok(r)) => {
                let (mut parts, body) = r.into_parts();
                headers::strip_hop_by_hop(&mut parts.headers);
                Response::from_parts(parts, body.map_err(BoxError::from).boxed())
            }
        }
    };
    for (n, v) in edits.response {
        resp.headers_mut().insert(n, v);
    }
    Ok(resp)
}

/// Forwards an HTTP/1.1 Upgrade (WebSocket) request over a fresh backend connection and, on
/// `101`, relays both upgraded streams until either side closes.
async fn upgrade_request(
    mut parts: http::request::Parts,
    client_upgrade: hyper::upgrade::OnUpgrade,
    cx: &HttpConn,
    target: &SelectedTarget,
    tls: Option<Arc<rustls::ClientConfig>>,
    path_and_query: &str,
    limits: ws::WsLimits,
) -> Result<Response<ProxyBody>, HttpError> {
    parts.uri = path_and_query.parse().map_err(|_| HttpError::BadRequest)?;
    parts.version = Version::HTTP_11;
    let breq = Request::from_parts(parts, Empty::<Bytes>::new());
    let mut resp = crate::upstream::upgrade(&cx.sh, target, tls, cx.proxy_header(target), breq).await?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (parts, body) = resp.into_parts();
        return Ok(Response::from_parts(parts, body.map_err(BoxError::from).boxed()));
    }
    let backend_upgrade = hyper::upgrade::on(&mut resp);
    let relay: UpgradedRelay = Box::pin(async move {
        let (Ok(c), Ok(b)) = tokio::join!(client_upgrade, backend_upgrade) else {
            return Termination::ClientError;
        };
        let mut c = TokioIo::new(c);
        let mut b = TokioIo::new(b);
        if limits.ping_interval.is_some() || limits.max_payload.is_some() {
            ws::relay(c, b, limits).await;
            Termination::ClientClosed
        } else {
            match tokio::io::copy_bidirectional(&mut c, &mut b).await {
                Ok(_) => Termination::ClientClosed,
                Err(_) => Termination::ClientError,
            }
        }
    });
    *cx.upgraded.lock().unwrap_or_else(|p| p.into_inner()) = Some(relay);
    let (parts, _) = resp.into_parts();
    Ok(Response::from_parts(parts, Empty::new().map_err(|e| match e {}).boxed()))
}

/// Counts bytes both ways on the client connection and notes activity for the idle timer. A
/// connection the fast path hands to hyper first gives back the bytes it already read (and
/// counted): `prefix` from `pos` on.
///
/// On HTTP/2 connections (`batch`) the first write after each completed flush waits one turn of
/// the scheduler: the streams whose backends answered in the same wake-up then add their frames
/// before the connection writes, so one TLS record and one syscall carry several responses
/// (without it, the connection task ran right after each stream and wrote once per response).
struct Counted<IO> {
    inner: IO,
    rec: Arc<ConnRecord>,
    prefix: Vec<u8>,
    pos: usize,
    batch: bool,
    held: bool,
    /// Counts the bytes (false when the stream below counts them on the wire).
    count: bool,
}

impl<IO> Counted<IO> {
    fn new(inner: IO, rec: Arc<ConnRecord>, prefix: Vec<u8>, h2: bool, count: bool) -> Self {
        Counted { inner, rec, prefix, pos: 0, batch: h2, held: false, count }
    }

    /// True when this write should wait one turn: the task is woken at once and, being the
    /// task that is running, goes to the back of the worker's queue.
    fn hold_write(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.batch || self.held {
            return false;
        }
        self.held = true;
        cx.waker().wake_by_ref();
        true
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Counted<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.pos < self.prefix.len() {
            let start = self.pos;
            let n = (self.prefix.len() - start).min(buf.remaining());
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            if self.pos == self.prefix.len() {
                self.prefix = Vec::new();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            if self.count {
                self.rec.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
            }
            self.rec.touch();
        }
        r
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Counted<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.hold_write(cx) {
            return Poll::Pending;
        }
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            if self.count {
                self.rec.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
            }
            self.rec.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.hold_write(cx) {
            return Poll::Pending;
        }
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            if self.count {
                self.rec.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
            }
            self.rec.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        if r.is_ready() {
            self.held = false;
        }
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;

    fn future_size<A, B, C, F: std::future::Future>(_: fn(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    fn future_size2<A, B, F: std::future::Future>(_: fn(A, B) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// What an idle HTTP connection holds beyond its stream: the stream must be stored once
    /// (async fn arguments moved or pinned into locals are stored twice).
    #[test]
    fn idle_connection_state_stays_small() {
        use tokio::net::TcpStream;
        type Tls = tokio_rustls::server::TlsStream<crate::tcp::Wire>;
        let stream = std::mem::size_of::<Tls>();
        let outer = future_size(serve::<Tls>);
        let inner = future_size2(h1::run::<Tls>);
        println!("TlsStream {stream} B; serve future {outer} B + boxed connection future {inner} B");
        assert!(outer <= 512, "serve future is {outer} bytes");
        assert!(inner <= stream + 512, "connection future is {inner} bytes (stream {stream})");
        assert!(future_size2(h1::run::<TcpStream>) <= 768);
        println!("handle future: {} B", future_size2(handle));
    }
}

#[cfg(test)]
mod counted_tests {
    use super::*;
    use crate::conn::{IpLimits, Registry};
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    struct CountWakes(AtomicUsize);
    impl Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// An HTTP/2 connection's first write after a flush waits one turn (woken at once), the
    /// writes after it go through until the next completed flush; other connections never wait.
    #[test]
    fn http2_writes_wait_one_turn_per_flush() {
        let reg = Arc::new(Registry::default());
        let guard = reg
            .open("127.0.0.1".parse().unwrap(), 1, 80, IpLimits { max_per_ip: None, rate_per_minute: None })
            .unwrap();
        let wakes = Arc::new(CountWakes(AtomicUsize::new(0)));
        let waker = std::task::Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut c = Counted::new(Vec::<u8>::new(), guard.rec.clone(), Vec::new(), true, true);
        let mut c = Pin::new(&mut c);
        assert!(c.as_mut().poll_write(&mut cx, b"ab").is_pending());
        assert_eq!(wakes.0.load(Ordering::Relaxed), 1);
        assert!(matches!(c.as_mut().poll_write(&mut cx, b"ab"), Poll::Ready(Ok(2))));
        assert!(matches!(c.as_mut().poll_write(&mut cx, b"cd"), Poll::Ready(Ok(2))));
        assert!(c.as_mut().poll_flush(&mut cx).is_ready());
        assert!(c.as_mut().poll_write(&mut cx, b"ef").is_pending());
        assert_eq!(wakes.0.load(Ordering::Relaxed), 2);
        assert!(matches!(c.as_mut().poll_write(&mut cx, b"ef"), Poll::Ready(Ok(2))));
        assert_eq!(c.inner, b"abcdef");
        assert_eq!(guard.rec.bytes_out.load(Ordering::Relaxed), 6);

        let mut plain = Counted::new(Vec::<u8>::new(), guard.rec.clone(), Vec::new(), false, true);
        assert!(matches!(Pin::new(&mut plain).poll_write(&mut cx, b"gh"), Poll::Ready(Ok(2))));
        assert_eq!(wakes.0.load(Ordering::Relaxed), 2);
    }
}
