//! The running engine's context: what every connection of one run shares and what outlives
//! route updates (options, the connection registry, per-route runtime state, TLS state, the
//! JavaScript bridge, the default backend clients, shutdown and task tracking). The listener,
//! the dispatch of connections and the HTTP layer read it; only [`crate::proxy`] makes one.

use crate::config::ProxyOptions;
use crate::conn::Registry;
use crate::events::{Event, EventSink, LogLevel};
use crate::snapshot::Snapshot;
use crate::state::RouteStates;
use crate::tcp::SocketOptions;
use crate::tls::TlsContext;
use arc_swap::ArcSwap;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// State shared by all connections of one running proxy.
pub struct EngineContext {
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    /// JavaScript callbacks (socket handlers, target functions), when the embedder has them.
    pub bridge: Option<Arc<dyn crate::js::JsBridge>>,
    /// Target function calls in flight, and how their results are awaited.
    pub js_calls: crate::js::Calls,
    /// Sockets handed to JavaScript (kept by the proxy across runs).
    pub handoffs: Arc<crate::js::Handoffs>,
    /// Backend clients for routes without their own (no certificate verification).
    pub backends: Arc<crate::upstream::Backends>,
    pub options: Arc<ProxyOptions>,
    pub registry: Arc<Registry>,
    /// Per-route runtime state, kept across route updates.
    pub route_states: RouteStates,
    /// Certificates, ticket key, session cache and server configurations, for the run's life.
    pub tls: TlsContext,
    /// Certificates of `'auto'` routes: orders, HTTP-01 answers, status, renewal.
    pub acme: Arc<crate::acme::Acme>,
    pub events: Arc<dyn EventSink>,
    /// Cancelled by `stop()`: every connection closes.
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
}

impl EngineContext {
    pub fn log_warn(&self, message: String) {
        self.events.emit(Event::Log { route: None, client: None, level: LogLevel::Warn, message });
    }

    /// Socket options for both sides of a connection, from the proxy options.
    pub fn socket_options(&self) -> SocketOptions {
        let o = &self.options;
        SocketOptions {
            no_delay: o.no_delay,
            keep_alive: o.keep_alive.then_some(o.keep_alive_initial_delay),
            probes: o.enable_keep_alive_probes,
        }
    }

    /// A debug line about one connection: its route and client go with it.
    pub(crate) fn debug_about(&self, route: Option<&str>, client: std::net::IpAddr, f: impl FnOnce() -> String) {
        if self.options.enable_detailed_logging {
            self.events.emit(Event::Log {
                level: LogLevel::Debug,
                message: f(),
                route: route.map(str::to_owned),
                client: Some(client.to_string()),
            });
        }
    }

    /// A warning about a route.
    pub(crate) fn warn_route(&self, route: Option<&str>, message: String) {
        self.events.emit(Event::Log { level: LogLevel::Warn, message, route: route.map(str::to_owned), client: None });
    }

    pub(crate) fn debug(&self, f: impl FnOnce() -> String) {
        if self.options.enable_detailed_logging {
            self.events.emit(Event::Log { route: None, client: None, level: LogLevel::Debug, message: f() });
        }
    }
}
