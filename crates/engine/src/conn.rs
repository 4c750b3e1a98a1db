//! Connection records and the registry of live connections.
//!
//! Every accepted connection gets a [`ConnRecord`] (id, client, route, byte counters both ways,
//! timestamps, termination reason) held by a [`ConnGuard`] that the connection task owns. Dropping
//! the guard is the one place a connection is accounted as closed, so no exit path can leak a
//! count. The registry also keeps per-client-IP state for `maxConnectionsPerIP` and
//! `connectionRateLimitPerMinute`. Maps are sharded (`DashMap`), touched once at open and once at
//! close, never per byte; byte counters are relaxed atomics owned by the record.

use crate::matching::CompiledRoute;
use dashmap::DashMap;
use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Why a connection ended. Names are the keys of `terminationStats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(usize)]
pub enum Termination {
    ClientClosed,
    BackendClosed,
    ClientError,
    BackendError,
    ConnectRefused,
    ConnectTimeout,
    ConnectFailed,
    NoRoute,
    IpBlocked,
    RouteConnectionLimit,
    IpConnectionLimit,
    RateLimited,
    InitialDataTimeout,
    ClientClosedEarly,
    TlsError,
    SessionTicketRejected,
    InactivityTimeout,
    MaxLifetime,
    Shutdown,
    /// A target host/port function threw, rejected, timed out or returned the wrong type.
    TargetFunctionError,
    /// A socket handler threw or rejected (or never took its socket).
    HandlerError,
    /// The route authenticates or rate-limits HTTP requests, but the connection is not HTTP.
    HttpRequired,
    /// A trusted source (`proxyIPs`) sent a malformed or oversize PROXY protocol header.
    ProxyHeaderInvalid,
    /// A trusted source sent no complete PROXY protocol header within `initialDataTimeout`.
    ProxyHeaderTimeout,
    /// An HTTP connection waited too long for its first request (`httpFirstRequestTimeout`) or
    /// idled too long between requests (`httpKeepAliveTimeout`), or a head took too long.
    HttpIdleTimeout,
    /// Internal: the connection now belongs to a JavaScript socket handler (not a termination).
    HandedOff,
}

impl Termination {
    pub const ALL: [Termination; 26] = [
        Termination::ClientClosed,
        Termination::BackendClosed,
        Termination::ClientError,
        Termination::BackendError,
        Termination::ConnectRefused,
        Termination::ConnectTimeout,
        Termination::ConnectFailed,
        Termination::NoRoute,
        Termination::IpBlocked,
        Termination::RouteConnectionLimit,
        Termination::IpConnectionLimit,
        Termination::RateLimited,
        Termination::InitialDataTimeout,
        Termination::ClientClosedEarly,
        Termination::TlsError,
        Termination::SessionTicketRejected,
        Termination::InactivityTimeout,
        Termination::MaxLifetime,
        Termination::Shutdown,
        Termination::TargetFunctionError,
        Termination::HandlerError,
        Termination::HttpRequired,
        Termination::ProxyHeaderInvalid,
        Termination::ProxyHeaderTimeout,
        Termination::HttpIdleTimeout,
        Termination::HandedOff,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Termination::ClientClosed => "client_closed",
            Termination::BackendClosed => "backend_closed",
            Termination::ClientError => "client_error",
            Termination::BackendError => "backend_error",
            Termination::ConnectRefused => "connection_refused",
            Termination::ConnectTimeout => "connect_timeout",
            Termination::ConnectFailed => "connect_failed",
            Termination::NoRoute => "no_route",
            Termination::IpBlocked => "ip_blocked",
            Termination::RouteConnectionLimit => "route_connection_limit",
            Termination::IpConnectionLimit => "ip_connection_limit",
            Termination::RateLimited => "rate_limited",
            Termination::InitialDataTimeout => "initial_data_timeout",
            Termination::ClientClosedEarly => "client_closed_early",
            Termination::TlsError => "tls_error",
            Termination::SessionTicketRejected => "session_ticket_rejected",
            Termination::ProxyHeaderInvalid => "proxy_protocol_invalid",
            Termination::ProxyHeaderTimeout => "proxy_protocol_timeout",
            Termination::HttpIdleTimeout => "http_idle_timeout",
            Termination::InactivityTimeout => "inactivity_timeout",
            Termination::MaxLifetime => "max_lifetime",
            Termination::Shutdown => "shutdown",
            Termination::TargetFunctionError => "target_function_error",
            Termination::HandlerError => "socket_handler_error",
            Termination::HttpRequired => "http_required",
            Termination::HandedOff => "handed_off",
        }
    }

    /// Whether the backend side caused the end (counted under `terminationStats.outgoing`).
    pub fn is_outgoing(self) -> bool {
        matches!(
            self,
            Termination::BackendClosed
                | Termination::BackendError
                | Termination::ConnectRefused
                | Termination::ConnectTimeout
                | Termination::ConnectFailed
        )
    }
}

/// One connection's record. Shared (`Arc`) between its task and metrics readers.
#[derive(Debug)]
pub struct ConnRecord {
    pub id: u64,
    pub client_ip: IpAddr,
    pub client_port: u16,
    pub local_port: u16,
    pub started: Instant,
    /// Wall-clock start, ms since the epoch (for `IRouteContext.timestamp`).
    pub started_ms: u64,
    /// Client → backend bytes.
    pub bytes_in: AtomicU64,
    /// Backend → client bytes.
    pub bytes_out: AtomicU64,
    /// `bytes_in`/`bytes_out` as far as metrics have counted them (see [`crate::metrics`]).
    pub sampled_in: AtomicU64,
    pub sampled_out: AtomicU64,
    /// Milliseconds after `started` of the last byte in either direction.
    last_activity_ms: AtomicU64,
    pub is_tls: AtomicBool,
    pub keep_alive: AtomicBool,
    /// HTTP requests of this connection being served now (an upgraded one counts until it
    /// closes): while none is, the HTTP idle timeouts apply.
    pub http_in_flight: AtomicU32,
    /// The HTTP layer serves this connection (its requests get access-log lines, not the
    /// connection).
    pub http: AtomicBool,
    /// Some HTTP request of this connection was answered (the keep-alive timeout applies
    /// between requests; before the first, the first-request timeout).
    pub http_served: AtomicBool,
    route: OnceLock<Arc<CompiledRoute>>,
    pub(crate) route_name: OnceLock<Arc<str>>,
    target: OnceLock<(String, u16)>,
    /// The PROXY protocol header the connection came with, when it did (boxed: only such
    /// connections pay for it).
    pub proxied: OnceLock<Box<crate::proxy_protocol::Header>>,
}

/// One HTTP request of a connection, counted as being served until dropped (held until its
/// response body is sent); counted in the metrics, with its duration, once it is a request.
pub struct InFlight {
    rec: Arc<ConnRecord>,
    registry: Arc<Registry>,
    started: Instant,
    request: bool,
    /// The answer's status (0: none yet) and the route that forwarded it.
    status: u16,
    route: Option<Arc<CompiledRoute>>,
    /// What the access log says about it (only while the log is on), and the connection's
    /// byte counts when it started.
    info: Option<Box<crate::access_log::HttpInfo>>,
    bytes_at_start: (u64, u64),
}

impl InFlight {
    /// A request being served.
    pub fn new(rec: &Arc<ConnRecord>, registry: &Arc<Registry>) -> Self {
        let mut f = Self::pending(rec, registry);
        f.is_request();
        f
    }

    /// Bytes of a connection being read that may turn out to be a request ([`Self::is_request`]).
    pub fn pending(rec: &Arc<ConnRecord>, registry: &Arc<Registry>) -> Self {
        rec.http_in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            rec: rec.clone(),
            registry: registry.clone(),
            started: Instant::now(),
            request: false,
            status: 0,
            route: None,
            info: None,
            bytes_at_start: (0, 0),
        }
    }

    /// The status the client gets.
    pub fn set_status(&mut self, status: u16) {
        self.status = status;
    }

    /// The route that forwards the request.
    pub fn set_route(&mut self, route: Option<Arc<CompiledRoute>>) {
        self.route = route;
    }

    /// Whether the access log wants [`Self::describe`] (only then is it worth building).
    pub fn logging(&self) -> bool {
        self.registry.access_log.load().is_some()
    }

    /// What the access log line says about the request; `read_ahead`: bytes of it the
    /// connection already read (its head, when the front end parsed it itself).
    pub fn describe(&mut self, info: crate::access_log::HttpInfo, read_ahead: u64) {
        self.bytes_at_start = (
            self.rec.bytes_in.load(Ordering::Relaxed).saturating_sub(read_ahead),
            self.rec.bytes_out.load(Ordering::Relaxed),
        );
        self.info = Some(Box::new(info));
    }

    /// They are a request: it counts in the metrics (once).
    pub fn is_request(&mut self) {
        if !self.request {
            self.request = true;
            self.registry.metrics.request();
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let rec = &self.rec;
        rec.http_served.store(true, Ordering::Relaxed);
        rec.http_in_flight.fetch_sub(1, Ordering::Relaxed);
        if self.request {
            let m = &self.registry.metrics;
            m.request_duration_us.record(self.started.elapsed().as_micros() as u64);
            let by_class = match &self.route {
                Some(r) => &r.state.http_status,
                None => &m.unrouted_status,
            };
            if let Some(c) = crate::metrics::status_class(self.status) {
                by_class[c].fetch_add(1, Ordering::Relaxed);
            }
            if let (Some(info), Some(log)) = (&self.info, &*self.registry.access_log.load()) {
                let (i0, o0) = self.bytes_at_start;
                log.http(
                    rec.client_ip,
                    self.route.as_ref().map(|r| &*r.name),
                    info,
                    self.status,
                    rec.bytes_in.load(Ordering::Relaxed).saturating_sub(i0),
                    rec.bytes_out.load(Ordering::Relaxed).saturating_sub(o0),
                    self.started.elapsed(),
                );
            }
        }
        // Idle from now on: the keep-alive timeout counts from the end of the answer.
        rec.touch();
    }
}

impl ConnRecord {
    /// Notes activity now (called on every successful read; one relaxed store).
    #[inline]
    pub fn touch(&self) {
        self.last_activity_ms.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    pub fn last_activity(&self) -> Instant {
        self.started + Duration::from_millis(self.last_activity_ms.load(Ordering::Relaxed))
    }

    pub fn route_name(&self) -> Option<&str> {
        self.route_name.get().map(|s| &**s)
    }

    pub fn route_name_arc(&self) -> Option<Arc<str>> {
        self.route_name.get().cloned()
    }

    pub fn target(&self) -> Option<&(String, u16)> {
        self.target.get()
    }

    pub fn set_target(&self, host: String, port: u16) {
        let _ = self.target.set((host, port));
    }
}

#[derive(Debug, Default)]
struct IpState {
    active: u32,
    /// Accept times within the last minute (only kept when the rate limit is on).
    recent: VecDeque<Instant>,
}

/// Per-IP limits applied at accept (spec §7.7 steps 1-2).
#[derive(Debug, Clone, Copy, Default)]
pub struct IpLimits {
    pub max_per_ip: Option<u32>,
    pub rate_per_minute: Option<u32>,
}

const RATE_WINDOW: Duration = Duration::from_secs(60);

/// Live connections, counters and per-IP state of one proxy (kept across restarts, like
/// upstream's ConnectionManager).
#[derive(Debug, Default)]
pub struct Registry {
    next_id: AtomicU64,
    total: AtomicU64,
    /// Live connections (`conns.len()` without visiting the map's shards).
    live: AtomicU64,
    bytes_in_closed: AtomicU64,
    bytes_out_closed: AtomicU64,
    conns: DashMap<u64, Arc<ConnRecord>>,
    per_ip: DashMap<IpAddr, IpState>,
    incoming: [AtomicU64; Termination::ALL.len()],
    outgoing: [AtomicU64; Termination::ALL.len()],
    /// Traffic samples and histograms (fed by the connections of this registry).
    pub metrics: crate::metrics::Metrics,
    /// The access log of the running proxy, when `accessLog` is on.
    pub access_log: arc_swap::ArcSwapOption<crate::access_log::AccessLog>,
}

/// A snapshot for `getStatistics()` and metrics.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub active: u64,
    pub total: u64,
    pub tls: u64,
    pub keep_alive: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub termination_incoming: Vec<(&'static str, u64)>,
    pub termination_outgoing: Vec<(&'static str, u64)>,
    pub by_route: Vec<(String, u64)>,
    pub by_ip: Vec<(IpAddr, u64)>,
}

impl Registry {
    /// Admits a new connection from `ip` against the per-IP limits, then registers it.
    /// A refused connection is still counted in `total` and its reason recorded.
    pub fn open(
        self: &Arc<Self>,
        ip: IpAddr,
        client_port: u16,
        local_port: u16,
        limits: IpLimits,
    ) -> Result<ConnGuard, Termination> {
        self.total.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        {
            let mut st = self.per_ip.entry(ip).or_default();
            if limits.max_per_ip.is_some_and(|max| st.active >= max) {
                drop(st);
                self.record(Termination::IpConnectionLimit);
                return Err(Termination::IpConnectionLimit);
            }
            if let Some(rate) = limits.rate_per_minute {
                while st.recent.front().is_some_and(|t| now.duration_since(*t) >= RATE_WINDOW) {
                    st.recent.pop_front();
                }
                if st.recent.len() >= rate as usize {
                    drop(st);
                    self.record(Termination::RateLimited);
                    return Err(Termination::RateLimited);
                }
                st.recent.push_back(now);
            }
            st.active += 1;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let rec = Arc::new(ConnRecord {
            id,
            client_ip: ip,
            client_port,
            local_port,
            started: now,
            started_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            sampled_in: AtomicU64::new(0),
            sampled_out: AtomicU64::new(0),
            last_activity_ms: AtomicU64::new(0),
            is_tls: AtomicBool::new(false),
            keep_alive: AtomicBool::new(false),
            http_in_flight: AtomicU32::new(0),
            http_served: AtomicBool::new(false),
            http: AtomicBool::new(false),
            route: OnceLock::new(),
            route_name: OnceLock::new(),
            target: OnceLock::new(),
            proxied: OnceLock::new(),
        });
        self.conns.insert(id, rec.clone());
        self.live.fetch_add(1, Ordering::Relaxed);
        Ok(ConnGuard { registry: self.clone(), rec, reason: None })
    }

    /// Counts a connection refused before admission (it never had a record).
    pub fn refuse(&self, t: Termination) {
        self.total.fetch_add(1, Ordering::Relaxed);
        self.record(t);
    }

    fn record(&self, t: Termination) {
        self.incoming[t as usize].fetch_add(1, Ordering::Relaxed);
        if t.is_outgoing() {
            self.outgoing[t as usize].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn active(&self) -> u64 {
        self.live.load(Ordering::Relaxed)
    }

    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Drops per-IP entries with no open connection and no recent accepts (run once a minute).
    pub fn prune_ips(&self) {
        let now = Instant::now();
        self.per_ip.retain(|_, st| {
            while st.recent.front().is_some_and(|t| now.duration_since(*t) >= RATE_WINDOW) {
                st.recent.pop_front();
            }
            st.active > 0 || !st.recent.is_empty()
        });
    }

    /// Calls `f` with every live connection.
    pub fn for_each(&self, mut f: impl FnMut(&ConnRecord)) {
        for c in self.conns.iter() {
            f(c.value());
        }
    }

    /// Number of IPs with state (tests: pruning works).
    pub fn tracked_ips(&self) -> usize {
        self.per_ip.len()
    }

    pub fn stats(&self) -> Stats {
        let mut s = Stats { total: self.total(), ..Default::default() };
        let mut by_route: std::collections::HashMap<String, u64> = Default::default();
        let mut by_ip: std::collections::HashMap<IpAddr, u64> = Default::default();
        s.bytes_in = self.bytes_in_closed.load(Ordering::Relaxed);
        s.bytes_out = self.bytes_out_closed.load(Ordering::Relaxed);
        for c in self.conns.iter() {
            s.active += 1;
            s.tls += c.is_tls.load(Ordering::Relaxed) as u64;
            s.keep_alive += c.keep_alive.load(Ordering::Relaxed) as u64;
            s.bytes_in += c.bytes_in.load(Ordering::Relaxed);
            s.bytes_out += c.bytes_out.load(Ordering::Relaxed);
            if let Some(r) = c.route_name() {
                *by_route.entry(r.to_owned()).or_default() += 1;
            }
            *by_ip.entry(c.client_ip).or_default() += 1;
        }
        for t in Termination::ALL {
            let i = self.incoming[t as usize].load(Ordering::Relaxed);
            if i > 0 {
                s.termination_incoming.push((t.as_str(), i));
            }
            let o = self.outgoing[t as usize].load(Ordering::Relaxed);
            if o > 0 {
                s.termination_outgoing.push((t.as_str(), o));
            }
        }
        s.by_route = by_route.into_iter().collect();
        s.by_ip = by_ip.into_iter().collect();
        s
    }
}

/// Owns one live connection's accounting; dropping it closes the books.
#[derive(Debug)]
pub struct ConnGuard {
    registry: Arc<Registry>,
    pub rec: Arc<ConnRecord>,
    reason: Option<Termination>,
}

impl ConnGuard {
    /// Binds the connection to its route; fails (with the reason recorded) when the route's
    /// `security.maxConnections` is reached.
    pub fn set_route(&mut self, route: &Arc<CompiledRoute>) -> Result<(), Termination> {
        if let Some(max) = route.route.security.max_connections {
            // fetch_update so that two racing connections cannot both take the last slot.
            let active = &route.state.active;
            if active.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).is_err() {
                return Err(Termination::RouteConnectionLimit);
            }
        } else {
            route.state.active.fetch_add(1, Ordering::AcqRel);
        }
        let _ = self.rec.route_name.set(route.name.clone());
        let _ = self.rec.route.set(route.clone());
        Ok(())
    }

    /// Records why the connection ended (the first reason given wins).
    pub fn end(&mut self, reason: Termination) {
        self.reason.get_or_insert(reason);
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let r = &self.registry;
        r.record(self.reason.unwrap_or(Termination::ClientClosed));
        r.bytes_in_closed.fetch_add(self.rec.bytes_in.load(Ordering::Relaxed), Ordering::Relaxed);
        r.bytes_out_closed.fetch_add(self.rec.bytes_out.load(Ordering::Relaxed), Ordering::Relaxed);
        if let Some(route) = self.rec.route.get() {
            route.state.active.fetch_sub(1, Ordering::AcqRel);
        }
        if let Some(mut st) = r.per_ip.get_mut(&self.rec.client_ip) {
            st.active = st.active.saturating_sub(1);
        }
        // Without a rate window the entry can go as soon as its last connection does.
        r.per_ip.remove_if(&self.rec.client_ip, |_, st| st.active == 0 && st.recent.is_empty());
        r.conns.remove(&self.rec.id);
        r.live.fetch_sub(1, Ordering::Relaxed);
        r.metrics.close(&self.rec);
        if !self.rec.http.load(Ordering::Relaxed) {
            if let Some(log) = &*r.access_log.load() {
                let rec = &self.rec;
                log.connection(
                    rec.client_ip,
                    rec.route_name(),
                    rec.target().map(|(h, p)| format!("{h}:{p}")),
                    rec.bytes_in.load(Ordering::Relaxed),
                    rec.bytes_out.load(Ordering::Relaxed),
                    rec.started.elapsed(),
                    self.reason.unwrap_or(Termination::ClientClosed).as_str(),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_accounting() {
        let reg = Arc::new(Registry::default());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let lim = IpLimits { max_per_ip: Some(2), rate_per_minute: Some(3) };
        let a = reg.open(ip, 1, 80, lim).unwrap();
        let b = reg.open(ip, 2, 80, lim).unwrap();
        assert_eq!(reg.open(ip, 3, 80, lim).unwrap_err(), Termination::IpConnectionLimit);
        assert_eq!(reg.active(), 2);
        drop(a);
        let c = reg.open(ip, 4, 80, lim).unwrap();
        drop(b);
        assert_eq!(reg.open(ip, 5, 80, lim).unwrap_err(), Termination::RateLimited);
        drop(c);
        assert_eq!(reg.active(), 0);
        assert_eq!(reg.total(), 5);
        let s = reg.stats();
        assert!(s.termination_incoming.contains(&("rate_limited", 1)));
        assert!(s.termination_incoming.contains(&("client_closed", 3)));
        // The rate window keeps the entry; without limits it goes at once.
        assert_eq!(reg.tracked_ips(), 1);
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        drop(reg.open(other, 1, 80, IpLimits::default()).unwrap());
        assert_eq!(reg.tracked_ips(), 1);
    }
}
