//! The validated configuration model: [`ProxyOptions`] and [`Route`].
//!
//! Input is the JSON the JavaScript facade produces from the user's `ISmartProxyOptions`
//! (functions replaced by `{"$fn": id}` markers, RegExps by `{"$regex": source, "flags": f}`).
//! [`parse_options`] and [`parse_routes`] turn it into typed values or a [`ConfigError`] that names
//! the route (name, else index) and the field path. Options of the upstream API that this engine
//! does not implement yet are refused with `not supported yet: …`, never silently ignored.
//! Keys upstream never knew are ignored, as upstream's JavaScript ignored them.

mod reader;

use crate::detect::TlsVersion;
use crate::error::ConfigError;
use crate::matching::{DomainPattern, HeaderMatcher, IpPattern, PathPattern, PortRange};
use reader::{each, join, opt, At, ReadResult};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

impl From<String> for ConfigError {
    fn from(s: String) -> Self {
        ConfigError::Invalid(s)
    }
}

type CResult<T> = Result<T, ConfigError>;

/// Largest timer value upstream allows (2^31-1 ms, Node's `setTimeout` limit); larger values are clamped.
pub const MAX_TIMER_MS: u64 = 2_147_483_647;
/// Largest `keepAliveInactivityMultiplier`: a product with the largest timer still fits a
/// `Duration` many times over, and no real deployment idles longer than 1000 × its timeout.
pub const MAX_MULTIPLIER: f64 = 1000.0;
/// Largest `security.rateLimit.window`, in seconds: the largest timer (about 24.8 days).
pub const MAX_WINDOW_SECS: f64 = (MAX_TIMER_MS / 1000) as f64;

/// How connections with keep-alive are timed out (spec §7.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepAliveTreatment {
    /// Normal inactivity timeout and lifetime.
    Standard,
    /// Inactivity timeout × `keep_alive_inactivity_multiplier`, lifetime `extended_keep_alive_lifetime`.
    Extended,
    /// No inactivity timeout and no lifetime cap.
    Immortal,
}

/// A fallback target (`defaults.target`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

/// Engine-wide options with upstream's defaults (spec §2). All durations are milliseconds in JSON.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// Backend connect timeout. Default 30 s.
    pub connection_timeout: Duration,
    /// Wait for the first client bytes when a port needs them for routing. Default 60 s.
    pub initial_data_timeout: Duration,
    /// Idle timeout of connections without keep-alive treatment. Default 1 h.
    pub socket_timeout: Duration,
    /// Accepted for compatibility: this engine times every connection exactly, with no sweep.
    pub inactivity_check_interval: Duration,
    /// Hard cap on connection age. Default 24 h.
    pub max_connection_lifetime: Duration,
    /// Close after this long without bytes in either direction. Default 4 h.
    pub inactivity_timeout: Duration,
    /// How long `stop()` lets connections finish before closing them hard. Default 30 s.
    pub graceful_shutdown_timeout: Duration,
    pub disable_inactivity_check: bool,
    /// ±5 % jitter on inactivity and lifetime timers.
    pub enable_randomized_timeouts: bool,
    /// TCP_NODELAY on both sockets. Default true.
    pub no_delay: bool,
    /// SO_KEEPALIVE on both sockets; such connections get the keep-alive treatment. Default true.
    pub keep_alive: bool,
    pub keep_alive_initial_delay: Duration,
    /// `enableKeepAliveProbes`: probe every second, 10 probes (see [`crate::tcp::SocketOptions`]). Default true.
    pub enable_keep_alive_probes: bool,
    /// Upper bound on bytes buffered before the backend connects. This engine peeks instead of
    /// reading before the backend is connected, so it never buffers any; kept for `settings`.
    pub max_pending_data_size: u64,
    pub keep_alive_treatment: KeepAliveTreatment,
    pub keep_alive_inactivity_multiplier: f64,
    pub extended_keep_alive_lifetime: Duration,
    /// When false, a ClientHello without SNI that tries session resumption gets an alert.
    pub allow_session_ticket: bool,
    /// Concurrent connections per client IP; `None` disables the limit. Default 100.
    pub max_connections_per_ip: Option<u32>,
    /// New connections per client IP per sliding minute; `None` disables. Default 300.
    pub connection_rate_limit_per_minute: Option<u32>,
    pub default_target: Option<HostPort>,
    pub default_security: RouteSecurity,
    /// Keep relaying the other direction after one side half-closes. Default false: when one
    /// side closes, the other is closed once pending bytes are flushed.
    pub enable_half_open: bool,
    pub enable_detailed_logging: bool,
    /// Worker threads of the proxy runtime; default: available parallelism.
    pub worker_threads: Option<usize>,
    /// TLS session resumption (tickets, session cache) for terminated TLS. Default true.
    pub tls_session_resumption: bool,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            connection_timeout: Duration::from_millis(30_000),
            initial_data_timeout: Duration::from_millis(60_000),
            socket_timeout: Duration::from_millis(3_600_000),
            inactivity_check_interval: Duration::from_millis(60_000),
            max_connection_lifetime: Duration::from_millis(86_400_000),
            inactivity_timeout: Duration::from_millis(14_400_000),
            graceful_shutdown_timeout: Duration::from_millis(30_000),
            disable_inactivity_check: false,
            enable_randomized_timeouts: false,
            no_delay: true,
            keep_alive: true,
            keep_alive_initial_delay: Duration::from_millis(10_000),
            enable_keep_alive_probes: true,
            max_pending_data_size: 10 * 1024 * 1024,
            keep_alive_treatment: KeepAliveTreatment::Extended,
            keep_alive_inactivity_multiplier: 6.0,
            extended_keep_alive_lifetime: Duration::from_millis(7 * 86_400_000),
            allow_session_ticket: true,
            max_connections_per_ip: Some(100),
            connection_rate_limit_per_minute: Some(300),
            default_target: None,
            default_security: RouteSecurity::default(),
            enable_half_open: false,
            enable_detailed_logging: false,
            worker_threads: None,
            tls_session_resumption: true,
        }
    }
}

impl ProxyOptions {
    /// The defaults as the JSON object the facade merges into `settings` (one source of truth).
    pub fn defaults_json() -> Value {
        let d = ProxyOptions::default();
        let ms = |x: Duration| Value::from(x.as_millis() as u64);
        serde_json::json!({
            "connectionTimeout": ms(d.connection_timeout),
            "initialDataTimeout": ms(d.initial_data_timeout),
            "socketTimeout": ms(d.socket_timeout),
            "inactivityCheckInterval": ms(d.inactivity_check_interval),
            "maxConnectionLifetime": ms(d.max_connection_lifetime),
            "inactivityTimeout": ms(d.inactivity_timeout),
            "gracefulShutdownTimeout": ms(d.graceful_shutdown_timeout),
            "disableInactivityCheck": d.disable_inactivity_check,
            "enableRandomizedTimeouts": d.enable_randomized_timeouts,
            "noDelay": d.no_delay,
            "keepAlive": d.keep_alive,
            "keepAliveInitialDelay": ms(d.keep_alive_initial_delay),
            "enableKeepAliveProbes": d.enable_keep_alive_probes,
            "maxPendingDataSize": d.max_pending_data_size,
            "keepAliveTreatment": "extended",
            "keepAliveInactivityMultiplier": d.keep_alive_inactivity_multiplier,
            "extendedKeepAliveLifetime": ms(d.extended_keep_alive_lifetime),
            "allowSessionTicket": d.allow_session_ticket,
            "maxConnectionsPerIP": d.max_connections_per_ip,
            "connectionRateLimitPerMinute": d.connection_rate_limit_per_minute,
            "enableDetailedLogging": d.enable_detailed_logging,
            "enableHalfOpen": d.enable_half_open,
            "httpProxyPort": 8443,
        })
    }
}

/// Route-level (or `defaults.security`) access rules. IP lists and `maxConnections` apply at
/// layer 4; authentication and rate limiting need HTTP and apply per request.
#[derive(Debug, Clone, Default)]
pub struct RouteSecurity {
    pub ip_allow_list: Vec<IpPattern>,
    pub ip_block_list: Vec<IpPattern>,
    /// Concurrent connections on this route.
    pub max_connections: Option<u32>,
    pub basic_auth: Option<BasicAuth>,
    pub jwt_auth: Option<JwtAuth>,
    pub rate_limit: Option<RateLimit>,
}

impl RouteSecurity {
    /// Whether these rules can only be enforced on HTTP requests.
    pub fn needs_http(&self) -> bool {
        self.basic_auth.is_some() || self.jwt_auth.is_some() || self.rate_limit.is_some()
    }
}

/// `security.basicAuth` (or `authentication: { type: 'basic' }`).
#[derive(Debug, Clone)]
pub struct BasicAuth {
    pub users: Vec<(String, String)>,
    pub realm: String,
    pub exclude_paths: Vec<PathPattern>,
}

/// JWT signature algorithms verified (HMAC; the shared secret is configured).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtAlgorithm {
    Hs256,
    Hs384,
    Hs512,
}

/// `security.jwtAuth` (or `authentication: { type: 'jwt' }`).
#[derive(Debug, Clone)]
pub struct JwtAuth {
    pub secret: String,
    pub algorithm: JwtAlgorithm,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub exclude_paths: Vec<PathPattern>,
}

/// What `security.rateLimit` counts requests by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateLimitKey {
    Ip,
    Path,
    Header(String),
}

/// `security.rateLimit`: at most `max_requests` per `window` per key (sliding window).
#[derive(Debug, Clone)]
pub struct RateLimit {
    pub max_requests: u32,
    pub window: Duration,
    pub key: RateLimitKey,
    pub message: String,
}

/// TLS handling of a forward route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Route by SNI, relay the encrypted bytes unchanged.
    Passthrough,
    /// Terminate TLS here; plain HTTP to the backend.
    Terminate,
    /// Terminate TLS here; TLS again to the backend (SNI = target host).
    TerminateAndReencrypt,
}

impl TlsMode {
    pub fn terminates(self) -> bool {
        !matches!(self, TlsMode::Passthrough)
    }
}

/// `action.tls`: the mode and, for termination, the route's certificate.
#[derive(Debug, Clone)]
pub struct RouteTls {
    pub mode: TlsMode,
    /// Parsed and checked (key matches certificate) at validation time.
    pub certificate: Option<Arc<rustls::sign::CertifiedKey>>,
}

/// A header value with `{variable}` templates (`{domain}`, `{clientIp}`, `{path}`, `{routeName}`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderTemplate {
    pub name: http::HeaderName,
    pub value: String,
}

/// `headers.cors`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cors {
    pub allow_origin: Vec<String>,
    pub allow_methods: String,
    pub allow_headers: String,
    pub allow_credentials: bool,
    pub expose_headers: Option<String>,
    pub max_age: Option<u64>,
    /// Answer preflight requests (OPTIONS with Access-Control-Request-Method) here. Default true.
    pub preflight: bool,
}

/// `advanced.urlRewrite`: a regular expression replacement on the request path (or path+query).
#[derive(Debug, Clone)]
pub struct UrlRewrite {
    pub pattern: regex::Regex,
    pub target: String,
    pub global: bool,
    /// Rewrite only the path, keeping the query string.
    pub only_path: bool,
}

/// WebSocket options of a route (`action.websocket`).
#[derive(Debug, Clone, Default)]
pub struct WebSocketOptions {
    pub enabled: bool,
    /// When non-empty, upgrade requests whose Origin is not listed get 403.
    pub allowed_origins: Vec<String>,
    /// Extra headers on the upgrade request to the backend.
    pub custom_headers: Vec<HeaderTemplate>,
    /// Replaces the request path of upgrade requests.
    pub rewrite_path: Option<String>,
    /// Ping the client this often; close when no pong comes within `ping_timeout`.
    pub ping_interval: Option<Duration>,
    pub ping_timeout: Option<Duration>,
    /// Largest client message (all fragments), in bytes; larger ones close with 1009.
    pub max_payload: Option<u64>,
}

/// Options of the HTTP layer (plain HTTP ports and terminated TLS).
#[derive(Debug, Clone, Default)]
pub struct HttpOptions {
    pub request_headers: Vec<HeaderTemplate>,
    pub response_headers: Vec<HeaderTemplate>,
    pub cors: Option<Cors>,
    /// `action.options.backendProtocol: 'http2'`.
    pub backend_http2: bool,
    /// `action.options.rejectUnauthorized` (ours): verify the backend's certificate when
    /// re-encrypting. Default false, as upstream's HttpProxy did not verify.
    pub verify_backend: bool,
    /// `action.options.ca` (ours): extra PEM roots trusted when verifying the backend.
    pub backend_ca: Vec<rustls::pki_types::CertificateDer<'static>>,
    pub url_rewrite: Option<UrlRewrite>,
    pub websocket: Option<WebSocketOptions>,
    /// `advanced.timeout`: how long to wait for the backend's response headers.
    pub request_timeout: Option<Duration>,
}

/// The action of a route: `type: 'forward'` (targets), or `type: 'socket-handler'`
/// (`socket_handler` set, no targets).
#[derive(Debug, Clone)]
pub struct ForwardAction {
    /// `action.socketHandler`: the JavaScript handler that receives the connection's socket.
    pub socket_handler: Option<u32>,
    pub targets: Vec<Target>,
    pub tls: Option<RouteTls>,
    pub http: HttpOptions,
    /// `loadBalancing.algorithm: 'round-robin'` was asked for: rotate among unconditional targets.
    pub balance_targets: bool,
}

/// `target.port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetPort {
    Fixed(u16),
    /// Use the port the connection arrived on.
    Preserve,
    /// A JavaScript function of the route context (its id in the facade's registry).
    Function(u32),
}

/// A per-target sub-match (`targets[].match`, 20+).
#[derive(Debug, Clone, Default)]
pub struct TargetMatch {
    pub ports: Vec<u16>,
    pub path: Option<PathPattern>,
    pub headers: Vec<HeaderMatcher>,
    /// Upper-cased HTTP methods.
    pub methods: Vec<String>,
}

/// One backend destination; several hosts are used round-robin.
#[derive(Debug, Clone)]
pub struct Target {
    /// Static hosts (round-robin); empty when `host_fn` is set.
    pub hosts: Vec<String>,
    /// `host` as a JavaScript function of the route context.
    pub host_fn: Option<u32>,
    pub port: TargetPort,
    pub priority: f64,
    pub condition: Option<TargetMatch>,
}

#[derive(Debug, Clone)]
pub enum RouteAction {
    Forward(ForwardAction),
}

/// A validated route.
#[derive(Debug, Clone)]
pub struct Route {
    /// Position in the configuration (ties in priority keep this order).
    pub index: usize,
    pub id: Option<String>,
    pub name: Option<String>,
    pub priority: f64,
    pub enabled: bool,
    pub ports: Vec<PortRange>,
    pub domains: Vec<DomainPattern>,
    pub client_ip: Vec<IpPattern>,
    pub path: Option<PathPattern>,
    pub headers: Vec<HeaderMatcher>,
    pub tls_versions: Vec<TlsVersion>,
    pub action: RouteAction,
    pub security: RouteSecurity,
    /// Hash of the route's whole definition as given (JSON with sorted keys, functions by their
    /// stable ids): the route's identity across `updateRoutes` (see [`crate::state`]).
    pub fingerprint: u64,
}

impl Route {
    /// `route "name" (index 3)` or `route at index 3`, as used in messages.
    pub fn label(&self) -> String {
        route_label(self.name.as_deref(), self.index)
    }
}

fn route_label(name: Option<&str>, index: usize) -> String {
    match name {
        Some(n) => format!("route {n:?} (index {index})"),
        None => format!("route at index {index}"),
    }
}

/// Top-level options that only pre-v19 configurations used. Upstream's JavaScript ignored them;
/// so do we, with a warning.
const LEGACY_OPTIONS: &[&str] = &[
    "globalPortRanges",
    "forwardAllGlobalRanges",
    "networkProxyPort",
    "domainConfigs",
    "fromPort",
    "toPort",
    "targetIP",
    "port80HandlerConfig",
];

fn ms(at: At) -> ReadResult<Duration> {
    Ok(Duration::from_millis((at.non_negative()? as u64).min(MAX_TIMER_MS)))
}

fn unsupported<T>(what: impl Into<String>) -> CResult<T> {
    Err(ConfigError::NotSupported(what.into()))
}

fn truthy(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Array(a)) => !a.is_empty(),
        Some(_) => true,
    }
}

/// Validates the top-level options (everything but `routes`). Returns the options and warnings.
pub fn parse_options(v: &Value) -> CResult<(ProxyOptions, Vec<String>)> {
    let at = At::new(v, "");
    at.obj().map_err(|e| ConfigError::Invalid(format!("options: {e}")))?;
    let mut o = ProxyOptions::default();
    let mut warnings = Vec::new();
    let r = (|| -> CResult<()> {
        macro_rules! set {
            ($key:literal, $field:ident, $conv:expr) => {
                if let Some(x) = opt(at, $key, $conv)? {
                    o.$field = x;
                }
            };
        }
        set!("connectionTimeout", connection_timeout, ms);
        set!("initialDataTimeout", initial_data_timeout, ms);
        set!("socketTimeout", socket_timeout, ms);
        set!("inactivityCheckInterval", inactivity_check_interval, ms);
        set!("maxConnectionLifetime", max_connection_lifetime, ms);
        set!("inactivityTimeout", inactivity_timeout, ms);
        set!("gracefulShutdownTimeout", graceful_shutdown_timeout, ms);
        set!("disableInactivityCheck", disable_inactivity_check, |a| a.bool());
        set!("enableRandomizedTimeouts", enable_randomized_timeouts, |a| a.bool());
        set!("noDelay", no_delay, |a| a.bool());
        set!("keepAlive", keep_alive, |a| a.bool());
        set!("keepAliveInitialDelay", keep_alive_initial_delay, ms);
        set!("enableKeepAliveProbes", enable_keep_alive_probes, |a| a.bool());
        set!("maxPendingDataSize", max_pending_data_size, |a| a.uint());
        set!("keepAliveInactivityMultiplier", keep_alive_inactivity_multiplier, |a| a.at_most(MAX_MULTIPLIER, ""));
        set!("extendedKeepAliveLifetime", extended_keep_alive_lifetime, ms);
        set!("allowSessionTicket", allow_session_ticket, |a| a.bool());
        set!("enableHalfOpen", enable_half_open, |a| a.bool());
        set!("enableDetailedLogging", enable_detailed_logging, |a| a.bool());
        set!("tlsSessionResumption", tls_session_resumption, |a| a.bool());
        if let Some(t) = opt(at, "keepAliveTreatment", |a| match a.str()? {
            "standard" => Ok(KeepAliveTreatment::Standard),
            "extended" => Ok(KeepAliveTreatment::Extended),
            "immortal" => Ok(KeepAliveTreatment::Immortal),
            _ => a.err("expected 'standard', 'extended' or 'immortal'"),
        })? {
            o.keep_alive_treatment = t;
        }
        // 0 disables a limit, as upstream's `if (max && count >= max)` does.
        let limit = |a: At| a.uint().map(|n| (n > 0).then(|| n.min(u32::MAX as u64) as u32));
        if let Some(x) = opt(at, "maxConnectionsPerIP", limit)? {
            o.max_connections_per_ip = x;
        }
        if let Some(x) = opt(at, "connectionRateLimitPerMinute", limit)? {
            o.connection_rate_limit_per_minute = x;
        }
        if let Some(n) = opt(at, "workerThreads", |a| a.uint())? {
            o.worker_threads = Some(n.clamp(1, 64) as usize);
        }
        if let Some(d) = at.get("defaults") {
            let d = At::new(d, "defaults");
            d.obj()?;
            o.default_target = opt(d, "target", |t| {
                Ok(HostPort {
                    host: opt(t, "host", |h| h.str().map(str::to_owned))?
                        .map_or_else(|| t.err("host is required"), Ok)?,
                    port: opt(t, "port", |p| p.port())?.map_or_else(|| t.err("port is required"), Ok)?,
                })
            })?;
            if let Some(s) = d.get("security") {
                o.default_security = parse_security(At::new(s, "defaults.security"))?;
            }
            if truthy(d.get("preserveSourceIP")) {
                return unsupported("defaults.preserveSourceIP");
            }
        }
        if truthy(at.get("preserveSourceIP")) {
            return unsupported("preserveSourceIP (transparent source address)");
        }
        if truthy(at.get("acceptProxyProtocol")) {
            return unsupported("PROXY protocol (acceptProxyProtocol)");
        }
        if truthy(at.get("proxyIPs")) {
            return unsupported("PROXY protocol (proxyIPs)");
        }
        if truthy(at.get("sendProxyProtocol")) {
            return unsupported("PROXY protocol (sendProxyProtocol)");
        }
        if at.has("certProvisionFunction") {
            return unsupported("certProvisionFunction");
        }
        if let Some(u) = opt(at, "useHttpProxy", |a| each(a, |p| p.port()))? {
            let _ = u; // Termination is in-process; these ports need no hand-off (README "Compatibility").
        }
        opt(at, "httpProxyPort", |a| a.port())?;
        for key in LEGACY_OPTIONS {
            if at.has(key) {
                warnings.push(format!("option '{key}' belongs to pre-v19 configurations and is ignored; use routes"));
            }
        }
        Ok(())
    })();
    r.map_err(|e| match e {
        ConfigError::Invalid(m) => ConfigError::Invalid(format!("options.{m}")),
        other => other,
    })?;
    Ok((o, warnings))
}

/// Validates an array of routes.
pub fn parse_routes(v: &Value) -> CResult<Vec<Route>> {
    let arr = match v {
        Value::Array(a) => a,
        _ => return Err(ConfigError::Invalid("routes: expected an array of routes".into())),
    };
    arr.iter().enumerate().map(|(i, r)| parse_route(r, i)).collect()
}

/// Validates one route; errors are prefixed with the route's label.
pub fn parse_route(v: &Value, index: usize) -> CResult<Route> {
    let at = At::new(v, "");
    let name = at.get("name").and_then(Value::as_str).map(str::to_owned);
    let label = route_label(name.as_deref(), index);
    parse_route_inner(at, index, name).map_err(|e| match e {
        ConfigError::Invalid(m) => ConfigError::Invalid(format!("{label}: {m}")),
        ConfigError::NotSupported(m) => ConfigError::NotSupported(format!("{m} ({label})")),
    })
}

fn parse_route_inner(at: At, index: usize, name: Option<String>) -> CResult<Route> {
    at.obj().map_err(|_| ConfigError::Invalid("expected a route object".into()))?;
    let m = at.get("match").map_or_else(|| Err(ConfigError::Invalid("match is required".into())), Ok)?;
    let m = At::new(m, "match");
    m.obj()?;
    let a = at.get("action").map_or_else(|| Err(ConfigError::Invalid("action is required".into())), Ok)?;
    let a = At::new(a, "action");
    a.obj()?;

    let ports = match m.get("ports") {
        None => return Err(ConfigError::Invalid("match.ports is required".into())),
        Some(p) => parse_ports(At::new(p, "match.ports"))?,
    };
    let domains = opt(m, "domains", |d| d.parse_each(DomainPattern::parse))?.unwrap_or_default();
    let client_ip = opt(m, "clientIp", |d| d.parse_each(IpPattern::parse))?.unwrap_or_default();
    let path = opt(m, "path", |p| PathPattern::parse(p.str()?).or_else(|e| p.err(e)))?;
    let headers = opt(m, "headers", parse_header_matchers)?.unwrap_or_default();
    let tls_versions = opt(m, "tlsVersion", |t| {
        let list = t.str_or_strs()?;
        list.iter()
            .map(|s| TlsVersion::parse(s).map_or_else(|| t.err(format!("unknown TLS version {s:?}")), Ok))
            .collect()
    })?
    .unwrap_or_default();

    let security = match at.get("security") {
        Some(s) => parse_security(At::new(s, "security"))?,
        None => RouteSecurity::default(),
    };
    let action = parse_action(a, at.get("headers"))?;
    let RouteAction::Forward(f) = &action;
    if security.needs_http() && f.tls.as_ref().is_some_and(|t| t.mode == TlsMode::Passthrough) {
        return Err(ConfigError::Invalid(
            "security: authentication and rate limiting need HTTP, which a 'passthrough' route never sees".into(),
        ));
    }
    Ok(Route {
        index,
        id: opt(at, "id", |x| x.str().map(str::to_owned))?,
        name,
        priority: opt(at, "priority", |x| x.num())?.unwrap_or(0.0),
        enabled: opt(at, "enabled", |x| x.bool())?.unwrap_or(true),
        ports,
        domains,
        client_ip,
        path,
        headers,
        tls_versions,
        action,
        security,
        fingerprint: fingerprint(at.v),
    })
}

/// A stable hash of a route's JSON (serde_json keeps object keys sorted, so key order in the
/// user's object does not matter).
fn fingerprint(v: &Value) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.to_string().hash(&mut h);
    h.finish()
}

fn parse_ports(at: At) -> CResult<Vec<PortRange>> {
    if at.is_function() {
        return unsupported("function-valued match.ports");
    }
    let one = |x: At| -> ReadResult<PortRange> {
        match x.v {
            Value::Number(_) => Ok(PortRange::single(x.port()?)),
            Value::Object(_) => {
                let from = opt(x, "from", |p| p.port())?.map_or_else(|| x.err("range needs 'from'"), Ok)?;
                let to = opt(x, "to", |p| p.port())?.map_or_else(|| x.err("range needs 'to'"), Ok)?;
                if from > to {
                    return x.err(format!("range 'from' ({from}) is greater than 'to' ({to})"));
                }
                Ok(PortRange { from, to })
            }
            _ => x.expected("a port number or a { from, to } range"),
        }
    };
    let list = match at.v {
        Value::Array(_) => each(at, one)?,
        _ => vec![one(at)?],
    };
    if list.is_empty() {
        return Err(ConfigError::Invalid("match.ports: must list at least one port".into()));
    }
    Ok(list)
}

fn parse_header_matchers(at: At) -> ReadResult<Vec<HeaderMatcher>> {
    let obj = at.obj()?;
    obj.iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| {
            let p = join(at.path, k);
            let x = At::new(v, &p);
            match v {
                Value::String(s) => Ok(HeaderMatcher::exact(k, s)),
                Value::Object(_) if x.has("$regex") => {
                    let src = opt(x, "$regex", |s| s.str())?.unwrap_or_default();
                    let flags = opt(x, "flags", |s| s.str())?.unwrap_or_default();
                    HeaderMatcher::regex(k, src, flags).or_else(|e| x.err(e))
                }
                _ => x.expected("a string or a RegExp"),
            }
        })
        .collect()
}

fn parse_security(at: At) -> CResult<RouteSecurity> {
    at.obj()?;
    let ips = |key: &str| -> ReadResult<Vec<IpPattern>> {
        Ok(opt(at, key, |d| d.parse_each(IpPattern::parse))?.unwrap_or_default())
    };
    let sec = RouteSecurity {
        ip_allow_list: ips("ipAllowList")?,
        ip_block_list: ips("ipBlockList")?,
        max_connections: opt(at, "maxConnections", |x| x.uint())?
            .filter(|n| *n > 0)
            .map(|n| n.min(u32::MAX as u64) as u32),
        ..Default::default()
    };
    let mut sec = sec;
    let enabled = |v: &Value| v.get("enabled").and_then(Value::as_bool) != Some(false);
    let exclude = |x: At| -> ReadResult<Vec<PathPattern>> {
        Ok(opt(x, "excludePaths", |e| {
            e.str_or_strs()?.iter().map(|p| PathPattern::parse(p).or_else(|m| e.err(m))).collect::<ReadResult<Vec<_>>>()
        })?
        .unwrap_or_default())
    };
    let users = |x: At, key: &str| -> ReadResult<Vec<(String, String)>> {
        let list = opt(x, key, |u| {
            each(u, |e| {
                let name = opt(e, "username", |n| n.str().map(str::to_owned))?
                    .map_or_else(|| e.err("username is required"), Ok)?;
                let pass = opt(e, "password", |n| n.str().map(str::to_owned))?
                    .map_or_else(|| e.err("password is required"), Ok)?;
                Ok((name, pass))
            })
        })?
        .unwrap_or_default();
        if list.is_empty() {
            return x.err(format!("{key}: at least one user is required"));
        }
        Ok(list)
    };
    let algorithm = |x: At| -> ReadResult<JwtAlgorithm> {
        match opt(x, "algorithm", |a| a.str())?.unwrap_or("HS256") {
            "HS256" => Ok(JwtAlgorithm::Hs256),
            "HS384" => Ok(JwtAlgorithm::Hs384),
            "HS512" => Ok(JwtAlgorithm::Hs512),
            other => x.err(format!("algorithm {other:?} is not supported (HS256, HS384, HS512)")),
        }
    };
    if let Some(b) = at.get("basicAuth").filter(|v| enabled(v)) {
        let b = At::new(b, "security.basicAuth");
        sec.basic_auth = Some(BasicAuth {
            users: users(b, "users")?,
            realm: opt(b, "realm", |r| r.str().map(str::to_owned))?.unwrap_or_else(|| "Restricted".into()),
            exclude_paths: exclude(b)?,
        });
    }
    if let Some(j) = at.get("jwtAuth").filter(|v| enabled(v)) {
        let j = At::new(j, "security.jwtAuth");
        let secret =
            opt(j, "secret", |x| x.str().map(str::to_owned))?.map_or_else(|| j.err("secret is required"), Ok)?;
        sec.jwt_auth = Some(JwtAuth {
            secret,
            algorithm: algorithm(j)?,
            issuer: opt(j, "issuer", |x| x.str().map(str::to_owned))?,
            audience: opt(j, "audience", |x| x.str().map(str::to_owned))?,
            exclude_paths: exclude(j)?,
        });
    }
    if let Some(a) = at.get("authentication") {
        let a = At::new(a, "security.authentication");
        match opt(a, "type", |t| t.str())? {
            Some("basic") => {
                sec.basic_auth = Some(BasicAuth {
                    users: users(a, "credentials")?,
                    realm: opt(a, "realm", |r| r.str().map(str::to_owned))?.unwrap_or_else(|| "Restricted".into()),
                    exclude_paths: Vec::new(),
                })
            }
            Some("jwt") => {
                let secret = opt(a, "jwtSecret", |x| x.str().map(str::to_owned))?
                    .map_or_else(|| a.err("jwtSecret is required"), Ok)?;
                sec.jwt_auth = Some(JwtAuth {
                    secret,
                    algorithm: JwtAlgorithm::Hs256,
                    issuer: opt(a, "jwtIssuer", |x| x.str().map(str::to_owned))?,
                    audience: None,
                    exclude_paths: Vec::new(),
                })
            }
            Some(other @ ("digest" | "oauth")) => {
                return unsupported(format!("security.authentication type '{other}'"))
            }
            Some(other) => {
                return Err(ConfigError::Invalid(format!("security.authentication.type: unknown type {other:?}")))
            }
            None => return Err(ConfigError::Invalid("security.authentication.type is required".into())),
        }
    }
    if let Some(r) = at.get("rateLimit").filter(|v| enabled(v)) {
        let r = At::new(r, "security.rateLimit");
        let max = opt(r, "maxRequests", |x| x.uint())?.map_or_else(|| r.err("maxRequests is required"), Ok)?;
        let window = opt(r, "window", |x| x.at_most(MAX_WINDOW_SECS, " seconds"))?
            .map_or_else(|| r.err("window (seconds) is required"), Ok)?;
        let key = match opt(r, "keyBy", |x| x.str())?.unwrap_or("ip") {
            "ip" => RateLimitKey::Ip,
            "path" => RateLimitKey::Path,
            "header" => RateLimitKey::Header(
                opt(r, "headerName", |x| x.str().map(str::to_ascii_lowercase))?
                    .map_or_else(|| r.err("keyBy 'header' needs headerName"), Ok)?,
            ),
            other => return Err(ConfigError::Invalid(format!("security.rateLimit.keyBy: unknown key {other:?}"))),
        };
        if max == 0 || window <= 0.0 {
            return Err(ConfigError::Invalid("security.rateLimit: maxRequests and window must be positive".into()));
        }
        sec.rate_limit = Some(RateLimit {
            max_requests: max.min(u32::MAX as u64) as u32,
            window: Duration::from_secs_f64(window),
            key,
            message: opt(r, "errorMessage", |x| x.str().map(str::to_owned))?
                .unwrap_or_else(|| "Too Many Requests".into()),
        });
    }
    if at.has("allowedIps") || at.has("blockedIps") {
        return Err(ConfigError::Invalid(format!(
            "{}: allowedIps/blockedIps were renamed to ipAllowList/ipBlockList",
            at.path
        )));
    }
    Ok(sec)
}

fn parse_action(a: At, route_headers: Option<&Value>) -> CResult<RouteAction> {
    let ty =
        opt(a, "type", |t| t.str())?.map_or_else(|| Err(ConfigError::Invalid("action.type is required".into())), Ok)?;
    let socket_handler = match ty {
        "forward" => None,
        "socket-handler" => {
            let f = a.get("socketHandler").and_then(|v| v.get("$fn")).and_then(Value::as_u64);
            match f {
                Some(id) => Some(id as u32),
                None => {
                    return Err(ConfigError::Invalid(
                        "action.socketHandler: a 'socket-handler' action needs a function".into(),
                    ))
                }
            }
        }
        "redirect" | "block" | "static" => {
            return Err(ConfigError::Invalid(format!(
                "action.type: '{ty}' was removed in 19.5; use a 'socket-handler' route with SocketHandlers"
            )))
        }
        other => return Err(ConfigError::Invalid(format!("action.type: unknown action type {other:?}"))),
    };
    if let Some(engine) = opt(a, "forwardingEngine", |t| t.str())? {
        match engine {
            "node" => {}
            "nftables" => return unsupported("forwardingEngine 'nftables'"),
            other => return Err(ConfigError::Invalid(format!("action.forwardingEngine: unknown engine {other:?}"))),
        }
    }
    if a.has("nftables") {
        return unsupported("action.nftables");
    }
    if truthy(a.get("sendProxyProtocol")) {
        return unsupported("PROXY protocol (action.sendProxyProtocol)");
    }
    let balance_targets = check_load_balancing(a, "action.loadBalancing")?;
    if socket_handler.is_some()
        && a.get("tls").and_then(|t| t.get("mode")).and_then(Value::as_str).is_some_and(|m| m != "passthrough")
    {
        return unsupported("TLS termination in front of a socket handler");
    }
    let tls = match a.get("tls") {
        None => None,
        Some(t) => Some(parse_tls(At::new(t, "action.tls"))?),
    };
    if socket_handler.is_none() && a.has("socketHandler") {
        return Err(ConfigError::Invalid("action.socketHandler is only valid with type 'socket-handler'".into()));
    }
    if socket_handler.is_some() {
        let http = parse_http_options(a, route_headers)?;
        return Ok(RouteAction::Forward(ForwardAction {
            socket_handler,
            targets: Vec::new(),
            tls,
            http,
            balance_targets: false,
        }));
    }
    let targets: Vec<Target> = match (a.get("targets"), a.get("target")) {
        (Some(t), _) => {
            let at = At::new(t, "action.targets");
            at.arr()?;
            let mut out = Vec::new();
            for (i, v) in at.arr()?.iter().enumerate() {
                let p = format!("action.targets[{i}]");
                out.push(parse_target(At::new(v, &p))?);
            }
            out
        }
        (None, Some(t)) => vec![parse_target(At::new(t, "action.target"))?],
        (None, None) => Vec::new(),
    };
    if targets.is_empty() {
        return Err(ConfigError::Invalid("action.targets: a 'forward' action needs at least one target".into()));
    }
    let http = parse_http_options(a, route_headers)?;
    let passthrough = tls.as_ref().is_some_and(|t| t.mode == TlsMode::Passthrough);
    if passthrough && (http.cors.is_some() || !http.request_headers.is_empty() || !http.response_headers.is_empty()) {
        return Err(ConfigError::Invalid(
            "headers: header rules need HTTP, which a 'passthrough' route never sees (use 'terminate')".into(),
        ));
    }
    Ok(RouteAction::Forward(ForwardAction { socket_handler: None, targets, tls, http, balance_targets }))
}

fn parse_tls(t: At) -> CResult<RouteTls> {
    t.obj()?;
    let mode = match opt(t, "mode", |m| m.str())? {
        Some("passthrough") => TlsMode::Passthrough,
        Some("terminate") => TlsMode::Terminate,
        Some("terminate-and-reencrypt") => TlsMode::TerminateAndReencrypt,
        Some(other) => return Err(ConfigError::Invalid(format!("action.tls.mode: unknown mode {other:?}"))),
        None => return Err(ConfigError::Invalid("action.tls.mode is required".into())),
    };
    for key in ["versions", "ciphers", "honorCipherOrder", "sessionTimeout", "acme"] {
        if mode.terminates() && t.has(key) {
            return unsupported(format!("action.tls.{key}"));
        }
    }
    let certificate = match (mode.terminates(), t.get("certificate")) {
        (false, _) => None, // passthrough never uses a certificate (upstream ignores one)
        (true, None) => return unsupported("TLS termination without a certificate (certificate 'auto' / ACME)"),
        (true, Some(Value::String(s))) if s == "auto" => {
            return unsupported("certificate 'auto' (ACME)");
        }
        (true, Some(c)) => {
            let c = At::new(c, "action.tls.certificate");
            c.obj()?;
            let read = |pem_key: &str, file_key: &str| -> ReadResult<String> {
                if let Some(pem) = opt(c, pem_key, |x| x.str().map(str::to_owned))? {
                    return Ok(pem);
                }
                match opt(c, file_key, |x| x.str().map(str::to_owned))? {
                    Some(path) => std::fs::read_to_string(&path)
                        .map_err(|e| format!("action.tls.certificate.{file_key}: cannot read {path:?}: {e}")),
                    None => c.err(format!("needs '{pem_key}' (PEM) or '{file_key}'")),
                }
            };
            let cert = read("cert", "certFile")?;
            let key = read("key", "keyFile")?;
            let ca = opt(c, "ca", |x| x.str().map(str::to_owned))?;
            let ck = crate::tls::certified_key(&cert, &key, ca.as_deref())
                .map_err(|e| ConfigError::Invalid(format!("action.tls.certificate: {e}")))?;
            Some(ck)
        }
    };
    Ok(RouteTls { mode, certificate })
}

fn header_templates(at: At) -> ReadResult<Vec<HeaderTemplate>> {
    let obj = at.obj()?;
    obj.iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| {
            let p = join(at.path, k);
            let x = At::new(v, &p);
            let name = http::HeaderName::from_bytes(k.as_bytes()).or_else(|_| x.err("invalid header name"))?;
            let value = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => return x.expected("a string"),
            };
            if value.contains(['\r', '\n']) {
                return x.err("header values must not contain line breaks");
            }
            Ok(HeaderTemplate { name, value })
        })
        .collect()
}

fn parse_http_options(a: At, route_headers: Option<&Value>) -> CResult<HttpOptions> {
    let mut h = HttpOptions::default();
    if let Some(rh) = route_headers {
        let rh = At::new(rh, "headers");
        rh.obj()?;
        h.request_headers = opt(rh, "request", header_templates)?.unwrap_or_default();
        h.response_headers = opt(rh, "response", header_templates)?.unwrap_or_default();
        h.cors = opt(rh, "cors", |c| -> ReadResult<Option<Cors>> {
            c.obj()?;
            if opt(c, "enabled", |x| x.bool())? != Some(true) {
                return Ok(None);
            }
            Ok(Some(Cors {
                allow_origin: opt(c, "allowOrigin", |x| x.str_or_strs())?
                    .map(|v| v.into_iter().map(str::to_owned).collect())
                    .unwrap_or_else(|| vec!["*".to_owned()]),
                allow_methods: opt(c, "allowMethods", |x| x.str().map(str::to_owned))?
                    .unwrap_or_else(|| "GET, POST, PUT, DELETE, PATCH, OPTIONS".into()),
                allow_headers: opt(c, "allowHeaders", |x| x.str().map(str::to_owned))?
                    .unwrap_or_else(|| "Content-Type, Authorization".into()),
                allow_credentials: opt(c, "allowCredentials", |x| x.bool())?.unwrap_or(false),
                expose_headers: opt(c, "exposeHeaders", |x| x.str().map(str::to_owned))?,
                max_age: opt(c, "maxAge", |x| x.uint())?,
                preflight: opt(c, "preflight", |x| x.bool())?.unwrap_or(true),
            }))
        })?
        .flatten();
    }
    if let Some(adv) = a.get("advanced") {
        let adv = At::new(adv, "action.advanced");
        adv.obj()?;
        for key in ["staticFiles", "testResponse"] {
            if adv.has(key) {
                return unsupported(format!("action.advanced.{key}"));
            }
        }
        h.request_timeout = opt(adv, "timeout", ms)?.filter(|d| !d.is_zero());
        if let Some(extra) = opt(adv, "headers", header_templates)? {
            h.request_headers.extend(extra);
        }
        h.url_rewrite = opt(adv, "urlRewrite", |u| -> ReadResult<UrlRewrite> {
            u.obj()?;
            let pattern = opt(u, "pattern", |x| x.str())?.map_or_else(|| u.err("pattern is required"), Ok)?;
            let target =
                opt(u, "target", |x| x.str().map(str::to_owned))?.map_or_else(|| u.err("target is required"), Ok)?;
            let flags = opt(u, "flags", |x| x.str())?.unwrap_or("");
            let re = regex::RegexBuilder::new(pattern)
                .case_insensitive(flags.contains('i'))
                .build()
                .or_else(|e| u.err(format!("invalid pattern: {e}")))?;
            // JavaScript replacement syntax `$1` matches the regex crate's, except `$<name>`.
            Ok(UrlRewrite {
                pattern: re,
                target: target.replace("$<", "${").replace('>', "}"),
                global: flags.contains('g'),
                only_path: opt(u, "onlyRewritePath", |x| x.bool())?.unwrap_or(false),
            })
        })?;
    }
    if let Some(o) = a.get("options") {
        let o = At::new(o, "action.options");
        match opt(o, "backendProtocol", |x| x.str())? {
            None | Some("http1") => {}
            Some("http2") => h.backend_http2 = true,
            Some(other) => {
                return Err(ConfigError::Invalid(format!("action.options.backendProtocol: unknown protocol {other:?}")))
            }
        }
        h.verify_backend = opt(o, "rejectUnauthorized", |x| x.bool())?.unwrap_or(false);
        if let Some(ca) = opt(o, "ca", |x| x.str().map(str::to_owned))? {
            h.backend_ca =
                crate::tls::parse_certs(&ca).map_err(|e| ConfigError::Invalid(format!("action.options.ca: {e}")))?;
        }
    }
    if let Some(w) = a.get("websocket") {
        let w = At::new(w, "action.websocket");
        w.obj()?;
        for key in ["authenticateRequest", "enableCompression"] {
            if w.has(key) {
                return unsupported(format!("action.websocket.{key}"));
            }
        }
        h.websocket = Some(WebSocketOptions {
            enabled: opt(w, "enabled", |x| x.bool())?.unwrap_or(true),
            allowed_origins: opt(w, "allowedOrigins", |x| x.str_or_strs())?
                .unwrap_or_default()
                .into_iter()
                .map(str::to_owned)
                .collect(),
            custom_headers: opt(w, "customHeaders", header_templates)?.unwrap_or_default(),
            rewrite_path: opt(w, "rewritePath", |x| x.str().map(str::to_owned))?,
            ping_interval: opt(w, "pingInterval", ms)?.filter(|d| !d.is_zero()),
            ping_timeout: opt(w, "pingTimeout", ms)?.filter(|d| !d.is_zero()),
            max_payload: opt(w, "maxPayloadSize", |x| x.uint())?.filter(|n| *n > 0),
        });
    }
    Ok(h)
}

/// Returns whether targets should be balanced (round-robin asked for explicitly).
fn check_load_balancing(a: At, what: &str) -> CResult<bool> {
    if let Some(lb) = a.get("loadBalancing") {
        let algo = lb.get("algorithm").and_then(Value::as_str).unwrap_or("round-robin");
        if algo != "round-robin" {
            return unsupported(format!("{what}.algorithm '{algo}'"));
        }
        if lb.get("healthCheck").is_some_and(|v| !v.is_null()) {
            return unsupported(format!("{what}.healthCheck"));
        }
        return Ok(true);
    }
    Ok(false)
}

fn parse_target(t: At) -> CResult<Target> {
    t.obj()?;
    let mut host_fn = None;
    let hosts = match t.get("host") {
        None => return Err(ConfigError::Invalid(format!("{}.host is required", t.path))),
        Some(h) if h.get("$fn").is_some() => {
            host_fn = h.get("$fn").and_then(Value::as_u64).map(|n| n as u32);
            Vec::new()
        }
        Some(h) => {
            let p = join(t.path, "host");
            let h = At::new(h, &p);
            let list = h.str_or_strs()?;
            if list.is_empty() || list.iter().any(|s| s.trim().is_empty()) {
                return Err(ConfigError::Invalid(format!("{p}: host must be a non-empty string or array of them")));
            }
            list.iter().map(|s| s.trim().to_owned()).collect()
        }
    };
    let port = match t.get("port") {
        None => return Err(ConfigError::Invalid(format!("{}.port is required", t.path))),
        Some(Value::String(s)) if s == "preserve" => TargetPort::Preserve,
        Some(p) => {
            let path = join(t.path, "port");
            let p = At::new(p, &path);
            match p.get("$fn").and_then(Value::as_u64) {
                Some(id) => TargetPort::Function(id as u32),
                None => TargetPort::Fixed(p.port()?),
            }
        }
    };
    for key in ["tls", "headers", "advanced"] {
        if truthy(t.get(key)) {
            return unsupported(format!("{}.{key} (per-target override)", t.path));
        }
    }
    if truthy(t.get("sendProxyProtocol")) {
        return unsupported(format!("PROXY protocol ({}.sendProxyProtocol)", t.path));
    }
    for key in ["websocket", "loadBalancing"] {
        if truthy(t.get(key)) {
            return unsupported(format!("{}.{key} (per-target override)", t.path));
        }
    }
    let condition = opt(t, "match", |m| -> ReadResult<TargetMatch> {
        m.obj()?;
        Ok(TargetMatch {
            ports: opt(m, "ports", |p| match p.v {
                Value::Array(_) => each(p, |x| x.port()),
                _ => Ok(vec![p.port()?]),
            })?
            .unwrap_or_default(),
            path: opt(m, "path", |p| PathPattern::parse(p.str()?).or_else(|e| p.err(e)))?,
            headers: opt(m, "headers", parse_header_matchers)?.unwrap_or_default(),
            methods: opt(m, "method", |x| x.str_or_strs())?
                .unwrap_or_default()
                .iter()
                .map(|s| s.to_ascii_uppercase())
                .collect(),
        })
    })?;
    if t.get("match").is_some_and(|m| m.get("$fn").is_some()) {
        return unsupported("function-valued target match");
    }
    Ok(Target { hosts, host_fn, port, priority: opt(t, "priority", |x| x.num())?.unwrap_or(0.0), condition })
}

#[cfg(test)]
mod tests;
