//! Everything towards backends, in one place: the default and per-route backend clients
//! ([`Backends`]: hyper's HTTP/1.1 and HTTP/2 clients with TLS for re-encryption, and the raw
//! HTTP/1.1 connection pool of [`http1`]), connecting with `connectionTimeout` and the proxy's
//! socket options, and the backend side of upgraded (WebSocket) requests. The layer-4 relay
//! connects through [`connect_tcp`] too. Failures come back as [`HttpError`]s (or the
//! connect's termination reason at layer 4).

pub mod http1;

use crate::config::ProxyOptions;
use crate::context::EngineContext;
use crate::http::{HttpError, ProxyBody};
use crate::matching::SelectedTarget;
use bytes::Bytes;
use http::Request;
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::Response;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;
type BackendClient = Client<Connector, ProxyBody>;

/// Idle pooled backend connections of hyper's clients are closed after this long (hyper's default).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// The most an HTTP/1.1 backend connection of hyper's client reads ahead of its reader (hyper's
/// default is about 400 KiB): what a response waiting for a client that does not read can hold.
const READ_AHEAD: usize = 64 * 1024;

/// Pooled clients to backends: HTTP/1.1 and HTTP/2, each able to speak plain HTTP or TLS.
pub struct Backends {
    /// Idle HTTP/1.1 backend connections of the fast path.
    pub(crate) pool: http1::Pool,
    pub(crate) h1: BackendClient,
    pub(crate) h2: BackendClient,
    pub(crate) tls_h1: Arc<rustls::ClientConfig>,
}

impl Backends {
    /// `verify`: check backend certificates (Mozilla roots + `extra_roots`); else accept any.
    pub fn new(
        verify: bool,
        extra_roots: &[rustls::pki_types::CertificateDer<'static>],
        o: &ProxyOptions,
    ) -> Result<Self, String> {
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(o.no_delay);
        tcp.set_connect_timeout(Some(o.connection_timeout));
        if o.keep_alive {
            tcp.set_keepalive(Some(o.keep_alive_initial_delay.max(Duration::from_secs(1))));
        }
        let tls_h1 = crate::tls::client_config(verify, extra_roots, false)?;
        // hyper-rustls sets ALPN itself (and asserts the config has none).
        let mut bare = (*tls_h1).clone();
        bare.alpn_protocols.clear();
        let c1 = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(bare.clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp.clone());
        let c2 = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(bare)
            .https_or_http()
            .enable_http2()
            .wrap_connector(tcp);
        let mut b1 = Client::builder(TokioExecutor::new());
        b1.pool_idle_timeout(POOL_IDLE_TIMEOUT).pool_timer(TokioTimer::new()).http1_max_buf_size(READ_AHEAD);
        let mut b2 = Client::builder(TokioExecutor::new());
        b2.pool_idle_timeout(POOL_IDLE_TIMEOUT).pool_timer(TokioTimer::new()).http2_only(true);
        Ok(Backends { pool: http1::Pool::default(), h1: b1.build(c1), h2: b2.build(c2), tls_h1 })
    }
}

impl Backends {
    /// Closes the idle pooled backend connections (the proxy is stopping).
    pub fn clear_pool(&self) {
        self.pool.clear();
    }
}

/// Why a layer-4 backend connect failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    Timeout,
    Refused,
    Other,
}

/// Connects to a backend within `connectionTimeout`, with the proxy's socket options.
pub async fn connect_tcp(sh: &EngineContext, host: &str, port: u16) -> Result<TcpStream, ConnectFailure> {
    let r = connect_tcp_inner(sh, host, port).await;
    if r.is_err() {
        sh.registry.metrics.backend_connect_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    r
}

async fn connect_tcp_inner(sh: &EngineContext, host: &str, port: u16) -> Result<TcpStream, ConnectFailure> {
    match tokio::time::timeout(sh.options.connection_timeout, TcpStream::connect((host, port))).await {
        Err(_) => Err(ConnectFailure::Timeout),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Err(ConnectFailure::Refused),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::TimedOut => Err(ConnectFailure::Timeout),
        Ok(Err(e)) => {
            sh.debug(|| format!("connect to {host}:{port} failed: {e}"));
            Err(ConnectFailure::Other)
        }
        Ok(Ok(s)) => {
            crate::tcp::apply(&s, sh.socket_options());
            Ok(s)
        }
    }
}

/// [`connect_tcp`] for HTTP: failures as [`HttpError`]s.
pub(crate) async fn connect(sh: &EngineContext, host: &str, port: u16) -> Result<TcpStream, HttpError> {
    connect_tcp(sh, host, port).await.map_err(|f| match f {
        ConnectFailure::Timeout => HttpError::ConnectTimeout,
        ConnectFailure::Refused | ConnectFailure::Other => HttpError::BackendUnreachable,
    })
}

/// A PROXY protocol header for a backend connection: its version, the client, and the address
/// the client connected to.
#[derive(Debug, Clone, Copy)]
pub struct ProxyHeader {
    pub version: crate::proxy_protocol::Version,
    pub src: std::net::SocketAddr,
    pub dst: std::net::SocketAddr,
}

/// [`connect`], then the PROXY protocol header when one is given, before any other byte.
pub(crate) async fn connect_with(
    sh: &EngineContext,
    host: &str,
    port: u16,
    header: Option<ProxyHeader>,
) -> Result<TcpStream, HttpError> {
    let tcp = connect(sh, host, port).await?;
    if let Some(h) = header {
        let bytes = crate::proxy_protocol::encode(h.version, h.src, h.dst);
        crate::tcp::write_all(&tcp, &bytes).await.map_err(|_| HttpError::BackendUnreachable)?;
    }
    Ok(tcp)
}

/// A backend connection of its own (not pooled): TCP, the PROXY header if any, TLS when `tls`
/// is given (re-encryption). Backend connections that carry a client's PROXY header are never
/// shared with other clients: each request of such a route gets one of these.
async fn own_connection(
    sh: &EngineContext,
    target: &SelectedTarget,
    header: Option<ProxyHeader>,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<Box<dyn Io>, HttpError> {
    let tcp = connect_with(sh, &target.host, target.port, header).await?;
    match tls {
        Some(cfg) => {
            let name =
                rustls::pki_types::ServerName::try_from(target.host.clone()).map_err(|_| HttpError::BackendBroken)?;
            let stream =
                tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await.map_err(|_| HttpError::BackendBroken)?;
            Ok(Box::new(stream))
        }
        None => Ok(Box::new(tcp)),
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// Sends an upgrade request (WebSocket) on a fresh backend connection, over TLS when `tls` is
/// given (re-encryption), after a PROXY header when one is given, and returns the backend's
/// answer (a `101` carries the upgrade).
pub(crate) async fn upgrade(
    sh: &EngineContext,
    target: &SelectedTarget,
    tls: Option<Arc<rustls::ClientConfig>>,
    header: Option<ProxyHeader>,
    req: Request<Empty<Bytes>>,
) -> Result<Response<Incoming>, HttpError> {
    let io = own_connection(sh, target, header, tls).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(|_| HttpError::BackendBroken)?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    sender.send_request(req).await.map_err(|_| HttpError::BackendBroken)
}

/// Sends one request on a backend connection of its own that starts with `header` (HTTP/1.1,
/// or HTTP/2 when `h2`), over TLS when `tls` is given.
pub(crate) async fn send_proxied(
    sh: &EngineContext,
    target: &SelectedTarget,
    header: ProxyHeader,
    tls: Option<Arc<rustls::ClientConfig>>,
    h2: bool,
    req: Request<ProxyBody>,
) -> Result<Response<Incoming>, HttpError> {
    let tls = match (tls, h2) {
        (Some(cfg), true) => {
            let mut c = (*cfg).clone();
            c.alpn_protocols = vec![b"h2".to_vec()];
            Some(Arc::new(c))
        }
        (tls, _) => tls,
    };
    let io = TokioIo::new(own_connection(sh, target, Some(header), tls).await?);
    if h2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|_| HttpError::BackendBroken)?;
        tokio::spawn(conn);
        sender.send_request(req).await.map_err(|_| HttpError::BackendBroken)
    } else {
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(io).await.map_err(|_| HttpError::BackendBroken)?;
        tokio::spawn(conn);
        sender.send_request(req).await.map_err(|_| HttpError::BackendBroken)
    }
}
