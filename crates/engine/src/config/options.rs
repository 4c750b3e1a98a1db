//! Engine-wide options ([`ProxyOptions`]): each option's JSON name, field and reader are
//! listed once (the table in this file); each default is written once, in `Default`.

use super::reader::{each, opt, At};
use super::*;

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
    /// The global `acme` options, when given (defaults for every `'auto'` route).
    pub acme: Option<AcmeOptions>,
    /// `metrics`: sampling and the Prometheus / status listener.
    pub metrics: MetricsOptions,
    /// `accessLog`, when enabled.
    pub access_log: Option<crate::access_log::AccessLogOptions>,
    /// `certProvisionFunction`: the JavaScript function (bridge id) asked first for the
    /// certificate of an `'auto'` route.
    pub cert_provision_fn: Option<u32>,
    /// `certProvisionFallbackToAcme`: when that function throws, order from ACME instead of
    /// failing. Default true.
    pub cert_provision_fallback_to_acme: bool,
    /// `proxyIPs`: the load balancers trusted to send a PROXY protocol header.
    pub proxy_ips: Vec<IpPattern>,
    /// `acceptProxyProtocol`: read that header from them. Default: true when `proxyIPs` is set.
    pub accept_proxy_protocol: bool,
    /// `sendProxyProtocol`: the header backends get unless a route or target says otherwise.
    pub send_proxy_protocol: SendProxy,
    /// `deferAccept` (an extension): listening ports accept a connection once its first bytes
    /// arrived (Linux `TCP_DEFER_ACCEPT`). Default: `acceptProxyProtocol` (balancers send
    /// their header first).
    pub defer_accept: bool,
    /// `httpFirstRequestTimeout`: how long an HTTP connection may wait for its first request
    /// (after the TLS handshake); `None`: `initialDataTimeout`.
    pub http_first_request_timeout: Option<Duration>,
    /// `httpKeepAliveTimeout`: how long an HTTP connection may idle between requests (HTTP/1.1
    /// keep-alive, HTTP/2 without open streams). Default 60 s.
    pub http_keep_alive_timeout: Duration,
    /// `httpHeadersTimeout`: how long a request head may take to arrive once it started. Default 30 s.
    pub http_headers_timeout: Duration,
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
            acme: None,
            metrics: MetricsOptions::default(),
            access_log: None,
            cert_provision_fn: None,
            cert_provision_fallback_to_acme: true,
            proxy_ips: Vec::new(),
            accept_proxy_protocol: false,
            defer_accept: false,
            send_proxy_protocol: None,
            http_first_request_timeout: None,
            http_keep_alive_timeout: Duration::from_millis(60_000),
            http_headers_timeout: Duration::from_millis(30_000),
        }
    }
}

/// Every engine option with a default: its JSON name, its field and its kind, written once.
/// Parsing reads each one; [`ProxyOptions::defaults_json`] shows each default.
macro_rules! engine_options {
    ($($key:literal => $field:ident: $kind:ident,)*) => {
        fn read_table(at: At, o: &mut ProxyOptions) -> CResult<()> {
            $(
                if let Some(x) = opt(at, $key, kind::$kind::read)? {
                    o.$field = x;
                }
            )*
            Ok(())
        }

        fn defaults_table(d: &ProxyOptions, out: &mut serde_json::Map<String, Value>) {
            $(out.insert($key.into(), kind::$kind::json(&d.$field));)*
        }
    };
}

engine_options! {
    "connectionTimeout" => connection_timeout: Ms,
    "initialDataTimeout" => initial_data_timeout: Ms,
    "socketTimeout" => socket_timeout: Ms,
    "inactivityCheckInterval" => inactivity_check_interval: Ms,
    "maxConnectionLifetime" => max_connection_lifetime: Ms,
    "inactivityTimeout" => inactivity_timeout: Ms,
    "gracefulShutdownTimeout" => graceful_shutdown_timeout: Ms,
    "disableInactivityCheck" => disable_inactivity_check: Flag,
    "enableRandomizedTimeouts" => enable_randomized_timeouts: Flag,
    "noDelay" => no_delay: Flag,
    "keepAlive" => keep_alive: Flag,
    "keepAliveInitialDelay" => keep_alive_initial_delay: Ms,
    "enableKeepAliveProbes" => enable_keep_alive_probes: Flag,
    "maxPendingDataSize" => max_pending_data_size: Count,
    "keepAliveTreatment" => keep_alive_treatment: Treatment,
    "keepAliveInactivityMultiplier" => keep_alive_inactivity_multiplier: Multiplier,
    "extendedKeepAliveLifetime" => extended_keep_alive_lifetime: Ms,
    "allowSessionTicket" => allow_session_ticket: Flag,
    "maxConnectionsPerIP" => max_connections_per_ip: Limit,
    "connectionRateLimitPerMinute" => connection_rate_limit_per_minute: Limit,
    "enableDetailedLogging" => enable_detailed_logging: Flag,
    "enableHalfOpen" => enable_half_open: Flag,
    "tlsSessionResumption" => tls_session_resumption: Flag,
    "httpKeepAliveTimeout" => http_keep_alive_timeout: Ms,
    "httpHeadersTimeout" => http_headers_timeout: Ms,
}

/// How each kind of option is read from JSON and shown as a default.
mod kind {
    use super::super::{ms, MAX_MULTIPLIER};
    use super::{At, KeepAliveTreatment, ReadResult};
    use serde_json::Value;
    use std::time::Duration;

    /// Milliseconds, clamped to the largest timer.
    pub struct Ms;
    impl Ms {
        pub fn read(a: At) -> ReadResult<Duration> {
            ms(a)
        }
        pub fn json(d: &Duration) -> Value {
            Value::from(d.as_millis() as u64)
        }
    }

    pub struct Flag;
    impl Flag {
        pub fn read(a: At) -> ReadResult<bool> {
            a.bool()
        }
        pub fn json(b: &bool) -> Value {
            Value::from(*b)
        }
    }

    pub struct Count;
    impl Count {
        pub fn read(a: At) -> ReadResult<u64> {
            a.uint()
        }
        pub fn json(n: &u64) -> Value {
            Value::from(*n)
        }
    }

    /// A factor in `0..=MAX_MULTIPLIER`.
    pub struct Multiplier;
    impl Multiplier {
        pub fn read(a: At) -> ReadResult<f64> {
            a.at_most(MAX_MULTIPLIER, "")
        }
        pub fn json(x: &f64) -> Value {
            Value::from(*x)
        }
    }

    /// A per-IP limit; 0 disables it, as upstream's `if (max && count >= max)` does.
    pub struct Limit;
    impl Limit {
        pub fn read(a: At) -> ReadResult<Option<u32>> {
            a.uint().map(|n| (n > 0).then(|| n.min(u32::MAX as u64) as u32))
        }
        pub fn json(n: &Option<u32>) -> Value {
            Value::from(n.unwrap_or(0))
        }
    }

    pub struct Treatment;
    impl Treatment {
        pub fn read(a: At) -> ReadResult<KeepAliveTreatment> {
            match a.str()? {
                "standard" => Ok(KeepAliveTreatment::Standard),
                "extended" => Ok(KeepAliveTreatment::Extended),
                "immortal" => Ok(KeepAliveTreatment::Immortal),
                _ => a.err("expected 'standard', 'extended' or 'immortal'"),
            }
        }
        pub fn json(t: &KeepAliveTreatment) -> Value {
            Value::from(match t {
                KeepAliveTreatment::Standard => "standard",
                KeepAliveTreatment::Extended => "extended",
                KeepAliveTreatment::Immortal => "immortal",
            })
        }
    }
}

impl ProxyOptions {
    /// How long an HTTP connection may wait for its first request.
    pub fn http_first_request_timeout(&self) -> Duration {
        self.http_first_request_timeout.unwrap_or(self.initial_data_timeout)
    }

    /// The defaults as the JSON object the facade merges into `settings` (one source of truth:
    /// the values come from `Default`, the names from the option table).
    pub fn defaults_json() -> Value {
        let mut out = serde_json::Map::new();
        defaults_table(&ProxyOptions::default(), &mut out);
        // Upstream's default for an option whose ports need no hand-off here (see parse_options).
        out.insert("httpProxyPort".into(), Value::from(8443));
        Value::Object(out)
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

/// `metrics` (upstream's `IMetricsConfig`, plus the listener's host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsOptions {
    /// Per-second sampling of throughput and request rates. Default on.
    pub enabled: bool,
    /// Seconds of per-second samples kept. Default 3600.
    pub retention_seconds: usize,
    /// Serve `/metrics` (Prometheus), `/` (the status page) and `/status.json`.
    pub prometheus_enabled: bool,
    /// The listener's port (default 9090) and address (default 127.0.0.1).
    pub prometheus_port: u16,
    pub prometheus_host: String,
    /// Default `/metrics`.
    pub prometheus_path: String,
    /// Metric name prefix. Default `smartproxy_`.
    pub prometheus_prefix: String,
}

impl Default for MetricsOptions {
    fn default() -> Self {
        MetricsOptions {
            enabled: true,
            retention_seconds: crate::metrics::DEFAULT_RETENTION,
            prometheus_enabled: false,
            prometheus_port: 9090,
            prometheus_host: "127.0.0.1".into(),
            prometheus_path: "/metrics".into(),
            prometheus_prefix: "smartproxy_".into(),
        }
    }
}

/// `accessLog: { enabled, path ('-': standard output), format: 'json' | 'combined' }`.
fn parse_access_log(at: At) -> CResult<Option<crate::access_log::AccessLogOptions>> {
    use crate::access_log::{AccessLogOptions, Format};
    at.obj()?;
    let enabled = opt(at, "enabled", |a| a.bool())?.unwrap_or(true);
    let path = opt(at, "path", |a| a.str().map(str::to_owned))?.unwrap_or_else(|| "-".into());
    if path.is_empty() {
        return Err(ConfigError::Invalid("accessLog.path: a file path, or '-' for standard output".into()));
    }
    let format = match opt(at, "format", |a| a.str().map(str::to_owned))?.as_deref() {
        None | Some("json") => Format::Json,
        Some("combined") => Format::Combined,
        Some(other) => {
            return Err(ConfigError::Invalid(format!("accessLog.format: 'json' or 'combined', got {other:?}")))
        }
    };
    Ok(enabled.then_some(AccessLogOptions { path, format }))
}

/// The longest `metrics.retentionSeconds` (a week of per-second samples, 32 bytes each).
const MAX_RETENTION: u64 = 7 * 24 * 3600;

fn parse_metrics_options(at: At) -> CResult<MetricsOptions> {
    at.obj()?;
    let mut m = MetricsOptions::default();
    if let Some(b) = opt(at, "enabled", |a| a.bool())? {
        m.enabled = b;
    }
    if let Some(n) = opt(at, "sampleIntervalMs", |a| a.uint())? {
        if n != 1000 {
            return unsupported("metrics.sampleIntervalMs other than 1000 (samples are per second)");
        }
    }
    if let Some(n) = opt(at, "retentionSeconds", |a| a.uint())? {
        if n == 0 || n > MAX_RETENTION {
            return Err(ConfigError::Invalid(format!("metrics.retentionSeconds: must be 1-{MAX_RETENTION}, got {n}")));
        }
        m.retention_seconds = n as usize;
    }
    // Upstream's tuning switches: percentiles and per-route/IP series are always kept here, and
    // reads are current without a cache.
    for key in ["enableDetailedTracking", "enablePercentiles"] {
        opt(at, key, |a| a.bool())?;
    }
    opt(at, "cacheResultsMs", |a| a.uint())?;
    if let Some(b) = opt(at, "prometheusEnabled", |a| a.bool())? {
        m.prometheus_enabled = b;
    }
    if let Some(p) = opt(at, "prometheusPort", |a| a.port())? {
        m.prometheus_port = p;
    }
    if let Some(h) = opt(at, "prometheusHost", |a| a.str().map(str::to_owned))? {
        if h.parse::<std::net::IpAddr>().is_err() {
            return Err(ConfigError::Invalid(format!("metrics.prometheusHost: expected an IP address, got {h:?}")));
        }
        m.prometheus_host = h;
    }
    if let Some(p) = opt(at, "prometheusPath", |a| a.str().map(str::to_owned))? {
        if !p.starts_with('/') || p == "/" || p == "/status.json" {
            return Err(ConfigError::Invalid(format!(
                "metrics.prometheusPath: must start with / and differ from / and /status.json, got {p:?}"
            )));
        }
        m.prometheus_path = p;
    }
    if let Some(p) = opt(at, "prometheusPrefix", |a| a.str().map(str::to_owned))? {
        let ok = p
            .chars()
            .enumerate()
            .all(|(i, c)| c == '_' || c == ':' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()));
        if !ok {
            return Err(ConfigError::Invalid(format!(
                "metrics.prometheusPrefix: not a valid metric name prefix: {p:?}"
            )));
        }
        m.prometheus_prefix = p;
    }
    Ok(m)
}

/// Validates the top-level options (everything but `routes`). Returns the options and warnings.
pub fn parse_options(v: &Value) -> CResult<(ProxyOptions, Vec<String>)> {
    let at = At::new(v, "");
    at.obj().map_err(|e| ConfigError::Invalid(format!("options: {e}")))?;
    let mut o = ProxyOptions::default();
    let mut warnings = Vec::new();
    let r = (|| -> CResult<()> {
        read_table(at, &mut o)?;
        if let Some(a) = at.get("acme") {
            o.acme = Some(parse_acme_options(At::new(a, "acme"))?);
        }
        if let Some(a) = at.get("accessLog").filter(|v| !v.is_null()) {
            o.access_log = parse_access_log(At::new(a, "accessLog"))?;
        }
        if let Some(m) = at.get("metrics").filter(|v| !v.is_null()) {
            o.metrics = parse_metrics_options(At::new(m, "metrics"))?;
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
        o.proxy_ips = opt(at, "proxyIPs", |a| a.parse_each(IpPattern::parse))?.unwrap_or_default();
        let accept = opt(at, "acceptProxyProtocol", |a| a.bool())?;
        if accept == Some(true) && o.proxy_ips.is_empty() {
            return Err(ConfigError::Invalid(
                "acceptProxyProtocol: a PROXY protocol header is only read from trusted addresses; list the load balancers in proxyIPs".into(),
            ));
        }
        o.accept_proxy_protocol = accept.unwrap_or(!o.proxy_ips.is_empty());
        o.defer_accept = opt(at, "deferAccept", |a| a.bool())?.unwrap_or(o.accept_proxy_protocol);
        o.send_proxy_protocol = opt(at, "sendProxyProtocol", read_send_proxy)?.flatten();
        o.http_first_request_timeout = opt(at, "httpFirstRequestTimeout", ms)?;
        if let Some(f) = at.get("certProvisionFunction").filter(|v| !v.is_null()) {
            let Some(id) = f.get("$fn").and_then(Value::as_u64) else {
                return Err(ConfigError::Invalid("certProvisionFunction: expected a function".into()));
            };
            o.cert_provision_fn = Some(id as u32);
        }
        if let Some(b) = opt(at, "certProvisionFallbackToAcme", |a| a.bool())? {
            o.cert_provision_fallback_to_acme = b;
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
