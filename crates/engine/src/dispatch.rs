//! Dispatch: the life of one accepted connection (spec §6.5, §7.7), apart from listening.
//!
//! 1. **client address**: the effective client address ([`ClientAddr`]): the TCP peer, or,
//!    from a trusted load balancer (`proxyIPs`), the client its PROXY protocol header names
//!    (read before anything else), so that every later step (per-IP limits, IP rules,
//!    `X-Forwarded-For`, metrics, socket handlers) sees the real client.
//! 2. **admission**: per-IP connection count and rate (`maxConnectionsPerIP`,
//!    `connectionRateLimitPerMinute`), the connection registered on the books.
//! 3. **detection**: peek at the first bytes, only when a route on the port needs them (TLS
//!    ClientHello: SNI, version; HTTP request head: host, path, headers).
//! 4. **plan**: route match, route security (`ipAllowList`/`ipBlockList`, block wins;
//!    `maxConnections`), and what serves the connection: a layer-4 relay to a target, TLS
//!    termination then HTTP, plain HTTP, or a JavaScript socket handler.
//! 5. **relay**: backend connect ([`crate::upstream::connect_tcp`], `connectionTimeout`) and the
//!    byte relay under inactivity and lifetime timers, or the HTTP layer, until either side
//!    closes or the proxy stops.
//!
//! Every exit path records a [`Termination`] on the connection's guard.

use crate::config::{KeepAliveTreatment, ProxyOptions, RouteSecurity, MAX_TIMER_MS};
use crate::conn::{ConnGuard, ConnRecord, IpLimits, Termination};
use crate::context::EngineContext;
use crate::matching::{is_authorized, normalize_ip, Early, MatchInput, SelectedTarget};
use crate::tcp::{self, peek_initial, Initial, PeekError, RelayEnd};
use crate::upstream::ConnectFailure;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// At most this many of the client's queued bytes are sent with an outbound PROXY header.
const FIRST_BYTES_WITH_HEADER: usize = 16 * 1024;

/// TLS alert descriptions sent when a TLS connection is refused.
const ALERT_HANDSHAKE_FAILURE: u8 = 40;
const ALERT_DECODE_ERROR: u8 = 50;
const ALERT_UNRECOGNIZED_NAME: u8 = 112;

/// The client a connection is accounted to.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr {
    pub ip: IpAddr,
    pub port: u16,
}

impl ClientAddr {
    /// The client of a connection accepted from `peer`: the peer itself (IPv4-mapped IPv6
    /// addresses as IPv4), or, when the peer is a trusted load balancer, the client its PROXY
    /// protocol header names (`LOCAL` / `UNKNOWN`: the peer), with that header. With `blind`
    /// (the connection will be relayed without looking at its bytes) the bytes that followed the
    /// header are read with it and returned. `Err`: the header was missing, malformed or too
    /// slow; the connection is closed.
    async fn of(stream: &TcpStream, peer: SocketAddr, o: &ProxyOptions, blind: bool) -> Result<Accepted, Termination> {
        let client = ClientAddr { ip: normalize_ip(peer.ip()), port: peer.port() };
        if !o.accept_proxy_protocol || !o.proxy_ips.iter().any(|p| p.matches(client.ip)) {
            return Ok(Accepted { client, header: None, first: Vec::new() });
        }
        // Boxed: only connections from balancers hold the header's reading state.
        let deadline = Instant::now() + o.initial_data_timeout;
        let (header, first) = Box::pin(tcp::read_proxy_header(stream, deadline, blind)).await.map_err(|e| match e {
            tcp::ProxyHeaderError::Timeout => Termination::ProxyHeaderTimeout,
            tcp::ProxyHeaderError::Closed => Termination::ClientClosedEarly,
            tcp::ProxyHeaderError::Invalid(_) => Termination::ProxyHeaderInvalid,
        })?;
        let client = match header.source {
            crate::proxy_protocol::Source::Tcp { src, .. } => {
                ClientAddr { ip: normalize_ip(src.ip()), port: src.port() }
            }
            crate::proxy_protocol::Source::Local => client,
        };
        Ok(Accepted { client, header: Some(Box::new(header)), first })
    }
}

/// A connection's client, its PROXY protocol header, and the client's bytes read with the header
/// (only when the connection is relayed blind).
struct Accepted {
    client: ClientAddr,
    header: Option<Box<crate::proxy_protocol::Header>>,
    first: Vec<u8>,
}

/// Runs one accepted connection to its end.
pub async fn handle(stream: TcpStream, peer: SocketAddr, port: u16, sh: Arc<EngineContext>) {
    let o = &sh.options;
    // One routing snapshot for the connection's whole plan: whether its bytes may be read with a
    // PROXY header is decided on the same routes that then plan it.
    let snap = sh.snapshot.load_full();
    // Only asked when PROXY headers are accepted at all (no lookup otherwise).
    let blind = o.accept_proxy_protocol
        && snap.table.port_relays_blind(port)
        && !sh.acme.answers_on(port)
        && sh.acme.alpn.is_empty();
    let Accepted { client, header, first } = match ClientAddr::of(&stream, peer, o, blind).await {
        Ok(c) => c,
        Err(reason) => {
            sh.registry.refuse(reason);
            sh.debug_about(None, peer.ip(), || format!("closed {peer} on port {port}: {}", reason.as_str()));
            return;
        }
    };
    let ip = client.ip;
    let limits = IpLimits { max_per_ip: o.max_connections_per_ip, rate_per_minute: o.connection_rate_limit_per_minute };
    let mut guard = match sh.registry.open(ip, client.port, port, limits) {
        Ok(g) => g,
        Err(reason) => {
            sh.debug_about(None, ip, || format!("refused {ip}:{} on port {port}: {}", client.port, reason.as_str()));
            return;
        }
    };
    // The accepted socket already has the socket options: it inherits them from the listener.
    if o.keep_alive {
        guard.rec.keep_alive.store(true, Ordering::Relaxed);
    }
    if let Some(h) = header {
        let _ = guard.rec.proxied.set(h);
    }
    let reason = tokio::select! {
        r = serve(stream, port, ip, &sh, &mut guard, snap, first) => r,
        _ = sh.shutdown.cancelled() => Termination::Shutdown,
    };
    if reason == Termination::HandedOff {
        // JavaScript owns the socket now; the connection stays counted until it closes it.
        let id = guard.rec.id;
        sh.handoffs.keep(guard);
        let handoffs = sh.handoffs.clone();
        tokio::spawn(async move {
            tokio::time::sleep(crate::js::CLAIM_TIMEOUT).await;
            handoffs.expire(id);
        });
        return;
    }
    guard.end(reason);
    sh.debug_about(guard.rec.route_name(), ip, || {
        let r = &guard.rec;
        format!(
            "connection {} from {ip}:{} on port {port} via {} to {} closed: {} (in {} B, out {} B, {} ms)",
            r.id,
            r.client_port,
            r.route_name().unwrap_or("-"),
            r.target().map_or_else(|| "-".to_owned(), |(h, p)| format!("{h}:{p}")),
            reason.as_str(),
            r.bytes_in.load(Ordering::Relaxed),
            r.bytes_out.load(Ordering::Relaxed),
            r.started.elapsed().as_millis()
        )
    });
}

/// What to do with a connection, decided from port, client and (when needed) its first bytes.
enum Plan {
    /// Layer 4: relay bytes to this backend.
    Relay(SelectedTarget),
    /// Terminate TLS with this configuration and serve HTTP.
    Tls { cfg: Arc<rustls::ServerConfig>, sni: Option<String>, version: Option<crate::detect::TlsVersion> },
    /// Plain HTTP served by the HTTP layer.
    Http,
    /// Hand the socket to a JavaScript socket handler, with this route context.
    Socket { handler: u32, context: serde_json::Value },
    /// Complete an ACME TLS-ALPN-01 validation handshake with this configuration, then close.
    AcmeValidation(Arc<rustls::ServerConfig>),
}

/// `first`: the client's bytes read with its PROXY header (only on ports that relay blind).
async fn serve(
    stream: TcpStream,
    port: u16,
    ip: IpAddr,
    sh: &Arc<EngineContext>,
    guard: &mut ConnGuard,
    snap: Arc<crate::snapshot::Snapshot>,
    first: Vec<u8>,
) -> Termination {
    let o = &sh.options;
    // Boxed: detection and matching state is transient and must not size every connection's
    // long-lived future (idle connections should cost a few hundred bytes of task state).
    let plan = match Box::pin(plan(&stream, port, ip, sh, guard, snap, !first.is_empty())).await {
        Ok(p) => p,
        Err(t) => return t,
    };
    if !first.is_empty() && !matches!(plan, Plan::Relay(_)) {
        // Cannot happen: bytes are read ahead only on ports whose every route relays blind, and
        // the plan uses the same routes. Were it to, those bytes must not be dropped silently.
        return Termination::NoRoute;
    }
    let keep_alive = guard.rec.keep_alive.load(Ordering::Relaxed);
    let (idle, lifetime) = effective_timeouts(o, keep_alive, guard.rec.id);
    let target = match plan {
        Plan::Tls { cfg, sni, version } => {
            let cx =
                http_conn(sh, port, ip, local_ip(&stream), dst(&stream, &guard.rec), true, sni, version, &guard.rec);
            return Box::pin(with_lifetime(
                // The first bytes and the handshake share one `initialDataTimeout`, from accept.
                serve_tls(stream, cfg, cx, idle, Instant::from_std(guard.rec.started) + o.initial_data_timeout),
                &guard.rec,
                lifetime,
            ))
            .await;
        }
        Plan::Http => {
            let cx =
                http_conn(sh, port, ip, local_ip(&stream), dst(&stream, &guard.rec), false, None, None, &guard.rec);
            return Box::pin(with_lifetime(crate::http::serve(stream, cx, idle), &guard.rec, lifetime)).await;
        }
        Plan::Socket { handler, context } => {
            sh.registry.metrics.request();
            return hand_over(stream, handler, context, sh, &guard.rec);
        }
        // Boxed: a rare path must not size every connection's future.
        Plan::AcmeValidation(cfg) => return Box::pin(acme_validation(stream, cfg, o.initial_data_timeout)).await,
        Plan::Relay(t) => t,
    };
    // A layer-4 connection is one request in the metrics (HTTP routes count their requests).
    sh.registry.metrics.request();
    // Boxed: connect state (address resolution, timer) is transient.
    let backend = match Box::pin(crate::upstream::connect_tcp(sh, &target.host, target.port)).await {
        Ok(s) => s,
        Err(ConnectFailure::Timeout) => return Termination::ConnectTimeout,
        Err(ConnectFailure::Refused) => return Termination::ConnectRefused,
        Err(ConnectFailure::Other) => return Termination::ConnectFailed,
    };
    if let Some(version) = target.send_proxy.unwrap_or(o.send_proxy_protocol) {
        // Before any other byte: whom the connection is from, and where it was going.
        let src = SocketAddr::new(ip, guard.rec.client_port);
        let mut out = crate::proxy_protocol::encode(version, src, dst(&stream, &guard.rec));
        // The client's first bytes, when already queued, go in the same segment (one send and
        // one loopback or wire traversal instead of two); a server-first protocol waits for
        // nothing, as nothing is held back.
        // Bytes read with the inbound header are the client's first flight: no second look
        // (it would find nothing, one `recv` more); later bytes go through the relay.
        let n = if first.is_empty() {
            tcp::read_now(&stream, &mut out, FIRST_BYTES_WITH_HEADER)
        } else {
            out.extend_from_slice(&first);
            first.len()
        };
        if n > 0 {
            guard.rec.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
            guard.rec.touch();
        }
        if tcp::write_all(&backend, &out).await.is_err() {
            return Termination::BackendError;
        }
    } else if !first.is_empty() {
        // The client's bytes read with its PROXY header go first.
        guard.rec.bytes_in.fetch_add(first.len() as u64, Ordering::Relaxed);
        guard.rec.touch();
        if tcp::write_all(&backend, &first).await.is_err() {
            return Termination::BackendError;
        }
    }
    guard.rec.set_target(target.host, target.port);
    relay_timed(&stream, &backend, &guard.rec, idle, lifetime, o.enable_half_open).await
}

/// Detection, matching, security and target selection (spec §6.5, §7.7 steps 3-4).
async fn plan(
    client: &TcpStream,
    port: u16,
    ip: IpAddr,
    sh: &EngineContext,
    guard: &mut ConnGuard,
    snap: Arc<crate::snapshot::Snapshot>,
    read_ahead: bool,
) -> Result<Plan, Termination> {
    let table = &snap.table;
    let o = &sh.options;
    let mut input = MatchInput { port, client_ip: ip, domain: None, http: None, tls_version: None };
    let initial;
    let mut is_tls = false;
    let mut first_http_keep_alive = false;
    let mut looks_http = false;
    let mut initial_http: Option<&crate::detect::HttpHead> = None;
    // An HTTP-01 challenge port looks at every connection's first bytes, so that no route (a
    // redirect, a socket handler, a layer-4 forward) swallows the CA's request, whichever
    // instance sharing the store ordered.
    let acme_port = sh.acme.answers_on(port);
    // Likewise, while TLS-ALPN-01 validations are out, ClientHellos are looked at on every port.
    // Bytes read ahead with a PROXY header: the port relays blind (on these routes), so the
    // decision is the table's alone (an ACME validation that started meanwhile cannot claim
    // them).
    let early =
        if (acme_port || !sh.acme.alpn.is_empty()) && !read_ahead { Early::NeedData } else { table.early(port, ip) };
    let idx = match early {
        Early::Route(i) => Some(i),
        Early::NoMatch => None,
        Early::NeedData => {
            let deadline = Instant::from_std(guard.rec.started) + o.initial_data_timeout;
            initial = match peek_initial(client, deadline).await {
                Ok(i) => i,
                Err(PeekError::Timeout) => return Err(Termination::InitialDataTimeout),
                Err(PeekError::Closed) => return Err(Termination::ClientClosedEarly),
                Err(PeekError::MalformedTls) => {
                    send_alert(client, ALERT_DECODE_ERROR).await;
                    return Err(Termination::TlsError);
                }
            };
            match &initial {
                Initial::Tls(h) => {
                    if let Some(cfg) = sh.acme.alpn.validation_config(h.sni.as_deref(), &h.alpn) {
                        return Ok(Plan::AcmeValidation(cfg));
                    }
                    is_tls = true;
                    if !o.allow_session_ticket && h.sni.is_none() && h.resumption {
                        send_alert(client, ALERT_HANDSHAKE_FAILURE).await;
                        return Err(Termination::SessionTicketRejected);
                    }
                    input.domain = h.sni.as_deref();
                    input.tls_version = h.version;
                }
                Initial::Http(h) if acme_port && h.path.starts_with(crate::acme::CHALLENGE_PREFIX) => {
                    // The HTTP layer answers it (the request plan's first step).
                    return Ok(Plan::Http);
                }
                Initial::Http(h) => {
                    looks_http = true;
                    initial_http = Some(h);
                    first_http_keep_alive = h.keep_alive;
                    input.domain = h.host.as_deref();
                    input.http = Some(h);
                }
                Initial::MalformedHttp => looks_http = true,
                Initial::Other => {}
            }
            table.find(&input)
        }
    };
    guard.rec.keep_alive.store(o.keep_alive || first_http_keep_alive, Ordering::Relaxed);

    // A socket-handler route: the connection goes to JavaScript, bytes still unread.
    if let Some((route, handler)) = idx.map(|i| table.route(i)).and_then(|r| r.socket_handler().map(|h| (r, h))) {
        guard.rec.is_tls.store(is_tls, Ordering::Relaxed);
        if !check_security(&route.route.security, ip) {
            return Err(Termination::IpBlocked);
        }
        guard.set_route(route)?;
        let context = connection_context(client, &input, initial_http, is_tls, Some(route), &guard.rec, None);
        return Ok(Plan::Socket { handler, context });
    }

    // TLS terminated here: the HTTP layer routes each request.
    if let Some(route) = idx.map(|i| table.route(i)).filter(|r| is_tls && r.tls_mode().is_some_and(|m| m.terminates()))
    {
        guard.rec.is_tls.store(true, Ordering::Relaxed);
        if !check_security(&route.route.security, ip) {
            return Err(Termination::IpBlocked);
        }
        guard.set_route(route)?;
        let Some(cfg) = snap.tls.get(&port).cloned() else {
            send_alert(client, ALERT_UNRECOGNIZED_NAME).await;
            return Err(Termination::TlsError);
        };
        if route.forward().tls.as_ref().is_some_and(|t| t.acme.is_some())
            && sh.tls.store.lookup(port, input.domain).is_none()
        {
            // An 'auto' route whose certificate is not issued yet: the same alert as an unknown
            // name, never another route's certificate.
            send_alert(client, ALERT_UNRECOGNIZED_NAME).await;
            return Err(Termination::TlsError);
        }
        return Ok(Plan::Tls { cfg, sni: input.domain.map(str::to_owned), version: input.tls_version });
    }

    // Plain HTTP on a port whose routes look at requests: the HTTP layer routes each request.
    // The route's IP rules are the request plan's here: a refused client gets a 403 answer
    // (each request of the connection is routed, and checked, on its own).
    if looks_http && !is_tls && table.port_has_plain_http_routes(port) {
        if let Some(route) = idx.map(|i| table.route(i)) {
            guard.set_route(route)?;
        }
        return Ok(Plan::Http);
    }

    let target = match idx {
        Some(i) => {
            let route = table.route(i);
            if route.http_only() {
                // Authentication, rate limits and a fixed answer only exist per HTTP request:
                // never relay around them.
                return Err(Termination::HttpRequired);
            }
            is_tls |= route.tls_mode().is_some();
            guard.rec.is_tls.store(is_tls, Ordering::Relaxed);
            if !check_security(&route.route.security, ip) {
                return Err(Termination::IpBlocked);
            }
            guard.set_route(route)?;
            match table.select_target(i, &input) {
                Some(t) => t,
                None => return Err(refuse_no_route(client, is_tls, input.domain.is_some()).await),
            }
        }
        None => match &o.default_target {
            Some(d) => {
                guard.rec.is_tls.store(is_tls, Ordering::Relaxed);
                if !check_security(&o.default_security, ip) {
                    return Err(Termination::IpBlocked);
                }
                SelectedTarget::fixed(d.host.clone(), d.port)
            }
            None => return Err(refuse_no_route(client, is_tls, input.domain.is_some()).await),
        },
    };
    if target.host_fn.is_none() && target.port_fn.is_none() {
        return Ok(Plan::Relay(target));
    }
    let known_host = target.host_fn.is_none().then_some(target.host.as_str());
    let context = connection_context(
        client,
        &input,
        initial_http,
        is_tls,
        idx.map(|i| &**table.route(i)),
        &guard.rec,
        known_host,
    );
    match crate::js::resolve_target(target, sh.bridge.as_ref(), &sh.js_calls, context, guard.rec.id).await {
        Ok(t) => Ok(Plan::Relay(t)),
        Err((t, why)) => {
            let name = idx.map(|i| table.route(i).name.to_string());
            sh.warn_route(name.as_deref(), format!("route {}: {why}", name.as_deref().unwrap_or_default()));
            Err(t)
        }
    }
}

/// Gives the socket to JavaScript: deregistered from tokio, parked until the handler claims it.
fn hand_over(
    stream: TcpStream,
    handler: u32,
    context: serde_json::Value,
    sh: &EngineContext,
    rec: &ConnRecord,
) -> Termination {
    let Some(bridge) = &sh.bridge else {
        return Termination::HandlerError;
    };
    let std = match stream.into_std() {
        Ok(s) => s,
        Err(_) => return Termination::ClientError,
    };
    let fd = std::os::fd::OwnedFd::from(std);
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    sh.handoffs.park(rec.id, fd);
    if bridge.socket(handler, rec.id, raw, context) {
        Termination::HandedOff
    } else {
        // Not delivered: the parked socket is closed here.
        sh.handoffs.discard(rec.id);
        Termination::HandlerError
    }
}

/// An ACME TLS-ALPN-01 validation: the handshake with the validation certificate, then close
/// (the CA only checks the certificate).
async fn acme_validation(stream: TcpStream, cfg: Arc<rustls::ServerConfig>, timeout: Duration) -> Termination {
    match tokio::time::timeout(timeout, tokio_rustls::TlsAcceptor::from(cfg).accept(stream)).await {
        Ok(Ok(mut tls)) => {
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
            Termination::ClientClosed
        }
        Ok(Err(_)) => Termination::TlsError,
        Err(_) => Termination::InitialDataTimeout,
    }
}

/// Completes the TLS handshake (bounded by `initialDataTimeout`), then serves HTTP on it.
async fn serve_tls(
    stream: TcpStream,
    cfg: Arc<rustls::ServerConfig>,
    cx: Arc<crate::http::HttpConn>,
    idle: Option<Duration>,
    handshake_deadline: Instant,
) -> Termination {
    // Boxed: the handshake state (the TLS stream in the making) must not stay in the
    // connection's future once the handshake is done.
    let accept = Box::pin(tokio::time::timeout_at(
        handshake_deadline,
        tokio_rustls::TlsAcceptor::from(cfg).accept(crate::tcp::Wire::new(stream, cx.rec.clone())),
    ));
    // The stream leaves the handshake's result before the await below (a match scrutinee would
    // keep the whole result, stream included, in this future).
    let metrics = &cx.sh.registry.metrics;
    let tls = match accept.await {
        Err(_) => return Termination::InitialDataTimeout,
        Ok(Err(_)) => {
            metrics.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
            return Termination::TlsError;
        }
        Ok(Ok(tls)) => tls,
    };
    metrics.tls_handshakes.fetch_add(1, Ordering::Relaxed);
    crate::http::serve(tls, cx, idle).await
}

/// The route context of a connection decided at layer 4 (socket handlers, target functions).
fn connection_context(
    client: &TcpStream,
    input: &MatchInput,
    http: Option<&crate::detect::HttpHead>,
    is_tls: bool,
    route: Option<&crate::matching::CompiledRoute>,
    rec: &ConnRecord,
    target_host: Option<&str>,
) -> serde_json::Value {
    crate::js::RouteContext {
        port: input.port,
        domain: input.domain,
        client_ip: input.client_ip.to_string(),
        server_ip: local_ip(client),
        path: http.map(|h| h.path.as_str()),
        query: http.and_then(|h| h.query.as_deref()),
        headers: http.map(|h| h.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()),
        is_tls,
        tls_version: input.tls_version,
        route,
        rec,
        target_host,
        target_port: None,
    }
    .to_json()
}

/// The address the client connected to: the one its PROXY protocol header named, else this
/// socket's.
fn dst(s: &TcpStream, rec: &ConnRecord) -> SocketAddr {
    if let Some(crate::proxy_protocol::Source::Tcp { dst, .. }) = rec.proxied.get().map(|h| h.source) {
        return SocketAddr::new(normalize_ip(dst.ip()), dst.port());
    }
    s.local_addr()
        .map(|a| SocketAddr::new(normalize_ip(a.ip()), a.port()))
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
}

fn local_ip(s: &TcpStream) -> String {
    s.local_addr().map(|a| normalize_ip(a.ip()).to_string()).unwrap_or_default()
}

#[allow(clippy::too_many_arguments)]
fn http_conn(
    sh: &Arc<EngineContext>,
    port: u16,
    ip: IpAddr,
    server_ip: String,
    dst: SocketAddr,
    tls: bool,
    sni: Option<String>,
    tls_version: Option<crate::detect::TlsVersion>,
    rec: &Arc<ConnRecord>,
) -> Arc<crate::http::HttpConn> {
    Arc::new(crate::http::HttpConn {
        sh: sh.clone(),
        port,
        client_ip: ip,
        client_ip_text: ip.to_string(),
        client_ip_value: Default::default(),
        server_ip,
        dst,
        tls,
        sni,
        tls_version,
        rec: rec.clone(),
        upgraded: Default::default(),
    })
}

/// Bounds an HTTP connection by the connection lifetime.
async fn with_lifetime(
    serve: impl std::future::Future<Output = Termination>,
    rec: &ConnRecord,
    lifetime: Option<Duration>,
) -> Termination {
    let life_at = lifetime.map(|l| Instant::from_std(rec.started) + l);
    tokio::select! {
        t = serve => t,
        _ = crate::timer::sleep_until_opt(life_at) => Termination::MaxLifetime,
    }
}

fn check_security(sec: &RouteSecurity, ip: IpAddr) -> bool {
    is_authorized(ip, &sec.ip_allow_list, &sec.ip_block_list)
}

async fn refuse_no_route(client: &TcpStream, is_tls: bool, had_sni: bool) -> Termination {
    if is_tls {
        send_alert(client, if had_sni { ALERT_UNRECOGNIZED_NAME } else { ALERT_HANDSHAKE_FAILURE }).await;
    }
    Termination::NoRoute
}

/// Consumes what the client sent so far, answers with a fatal TLS alert and sends FIN, so the
/// client reads the alert instead of a reset.
async fn send_alert(client: &TcpStream, description: u8) {
    {
        // Scoped so that the buffer is not held across the await below (it would size the future).
        let mut scratch = [0u8; 4096];
        while let Ok(n) = client.try_read(&mut scratch) {
            if n == 0 {
                break;
            }
        }
    }
    let alert = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, description];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = client.writable().await;
        let _ = client.try_write(&alert);
    })
    .await;
    tcp::shutdown_write(client);
}

/// Idle and lifetime limits for a connection (spec §7.6). `None` means no limit. Zero disables
/// a limit too. With `enableRandomizedTimeouts`, ±5 % jitter (derived from the connection id).
pub fn effective_timeouts(o: &ProxyOptions, keep_alive: bool, id: u64) -> (Option<Duration>, Option<Duration>) {
    let (idle, life) = match (keep_alive, o.keep_alive_treatment) {
        (true, KeepAliveTreatment::Immortal) => (None, None),
        (true, KeepAliveTreatment::Extended) => (
            Some(o.inactivity_timeout.mul_f64(o.keep_alive_inactivity_multiplier.max(1.0))),
            Some(o.extended_keep_alive_lifetime),
        ),
        (true, KeepAliveTreatment::Standard) => (Some(o.inactivity_timeout), Some(o.max_connection_lifetime)),
        (false, _) => (Some(o.inactivity_timeout.min(o.socket_timeout)), Some(o.max_connection_lifetime)),
    };
    let idle = if o.disable_inactivity_check { None } else { idle };
    let adjust = |d: Option<Duration>, salt: u64| {
        d.filter(|d| !d.is_zero()).map(|d| {
            let d = if o.enable_randomized_timeouts {
                // Spread in [-5 %, +5 %] from a cheap hash of the id, deterministic per connection.
                let h = id.wrapping_add(salt).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11;
                let frac = (h % 10_001) as f64 / 10_000.0; // 0..=1
                d.mul_f64(0.95 + 0.10 * frac)
            } else {
                d
            };
            d.min(Duration::from_millis(MAX_TIMER_MS))
        })
    };
    (adjust(idle, 1), adjust(life, 2))
}

/// The relay under the idle and lifetime limits, with one timer for both. The idle part is
/// lazy: the timer fires at `last activity + idle` as last known and re-arms from the record,
/// instead of being reset on every byte.
async fn relay_timed(
    client: &TcpStream,
    backend: &TcpStream,
    rec: &ConnRecord,
    idle: Option<Duration>,
    lifetime: Option<Duration>,
    half_open: bool,
) -> Termination {
    let relay = tcp::relay(client, backend, rec, half_open);
    tokio::pin!(relay);
    let life_at = lifetime.map(|l| Instant::from_std(rec.started) + l);
    let mut idle_at = idle.map(|d| Instant::now() + d);
    loop {
        let wake = match (idle_at, life_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        tokio::select! {
            end = &mut relay => return match end {
                RelayEnd::ClientClosed => Termination::ClientClosed,
                RelayEnd::BackendClosed => Termination::BackendClosed,
                RelayEnd::ClientError => Termination::ClientError,
                RelayEnd::BackendError => Termination::BackendError,
            },
            _ = crate::timer::sleep_until_opt(wake) => {
                let now = Instant::now();
                if life_at.is_some_and(|l| l <= now) {
                    return Termination::MaxLifetime;
                }
                if let Some(d) = idle {
                    match crate::timer::idle_deadline(rec, d, now) {
                        Some(next) => idle_at = Some(next),
                        None => return Termination::InactivityTimeout,
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    fn future_size<A, B, C, D, E, F: std::future::Future>(_: fn(A, B, C, D, E) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// A terminated connection's own future holds no handshake state once it serves HTTP.
    #[test]
    fn tls_connection_future_stays_small() {
        let size = future_size(serve_tls);
        println!("serve_tls future: {size} bytes");
        assert!(size <= 512, "serve_tls future is {size} bytes");
    }

    use super::*;

    #[test]
    fn timeouts_by_treatment() {
        let mut o = ProxyOptions::default();
        let h = Duration::from_secs(3600);
        assert_eq!(effective_timeouts(&o, false, 1), (Some(h), Some(Duration::from_secs(86_400))));
        assert_eq!(effective_timeouts(&o, true, 1), (Some(4 * h * 6), Some(Duration::from_secs(7 * 86_400))));
        o.keep_alive_treatment = KeepAliveTreatment::Immortal;
        assert_eq!(effective_timeouts(&o, true, 1), (None, None));
        o.keep_alive_treatment = KeepAliveTreatment::Standard;
        assert_eq!(effective_timeouts(&o, true, 1), (Some(4 * h), Some(Duration::from_secs(86_400))));
        o.disable_inactivity_check = true;
        assert_eq!(effective_timeouts(&o, true, 1).0, None);
        o.disable_inactivity_check = false;
        o.enable_randomized_timeouts = true;
        for id in 0..200 {
            let (i, _) = effective_timeouts(&o, true, id);
            let i = i.unwrap().as_secs_f64();
            assert!((4.0 * 3600.0 * 0.95..=4.0 * 3600.0 * 1.05).contains(&i), "{i}");
        }
    }
}
