//! The proxy lifecycle: `start`, `stop`, `update_routes`, listening-port reference counts.
//!
//! Each `start()` builds the proxy's own multi-threaded tokio runtime; `stop()` closes listeners,
//! closes connections (waiting up to `gracefulShutdownTimeout` for their tasks), then shuts the
//! runtime down on a plain thread, so no proxy thread outlives `stop()`. Lifecycle operations
//! are serialised by an async mutex (a `stop()` issued during `start()` waits for it, then stops).
//! Routes live in an `ArcSwap` snapshot; the connection path never takes these locks.
//!
//! Ports: a port is listened on while (routes using it) + (manual `add_port` calls − `remove_port`
//! calls) > 0. What an update does to ports is computed by [`port_diff`] (pure). `update_routes`
//! binds new ports before swapping the table (so a failed bind changes nothing) and closes
//! unused ones after, waiting until each closed port's socket is gone, so the port is free again
//! when the call returns; open connections are never touched by it.
//!
//! A snapshot is committed in one place (`Proxy::commit`): the certificates of its routes go
//! into the certificate store, then the snapshot is swapped in.

use crate::config::{ProxyOptions, Route};
use crate::conn::{Registry, Stats};
use crate::context::EngineContext;
use crate::error::{EngineError, Result};
use crate::events::{Event, EventSink, LogLevel};
use crate::listener;
use crate::snapshot::Snapshot;
use crate::state::RouteStates;
use arc_swap::ArcSwap;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long runtime shutdown waits for tasks that ignore cancellation (there should be none).
const RUNTIME_SHUTDOWN_GRACE: Duration = Duration::from_millis(500);
/// Period of the per-IP state pruning (upstream prunes its IP map every 60 s).
const PRUNE_INTERVAL: Duration = Duration::from_secs(60);

/// A listening port's reference counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortRefs {
    /// Routes using the port.
    pub routes: usize,
    /// `add_port` calls minus `remove_port` calls (below zero: a route's port closed by hand
    /// until the next route update).
    pub manual: i64,
}

impl PortRefs {
    fn wanted(&self) -> bool {
        self.routes as i64 + self.manual > 0
    }
}

/// What a route update does to the listening ports.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PortDiff {
    /// Ports to bind (sorted).
    pub bind: Vec<u16>,
    /// Ports to close (sorted).
    pub close: Vec<u16>,
    /// The reference counts after the update, for every port that stays or is bound.
    pub refs: BTreeMap<u16, PortRefs>,
}

/// The port changes of a route update: `current` are the bound ports, `route_counts` how many
/// of the new routes use each port. A route update re-opens the routes' ports that
/// `remove_port` had closed (a negative manual count goes back to zero).
pub fn port_diff(current: &BTreeMap<u16, PortRefs>, route_counts: &HashMap<u16, usize>) -> PortDiff {
    let mut d = PortDiff::default();
    for (&port, r) in current {
        let refs = PortRefs { routes: route_counts.get(&port).copied().unwrap_or(0), manual: r.manual.max(0) };
        if refs.wanted() {
            d.refs.insert(port, refs);
        } else {
            d.close.push(port);
        }
    }
    for (&port, &routes) in route_counts {
        if routes > 0 && !current.contains_key(&port) {
            d.bind.push(port);
            d.refs.insert(port, PortRefs { routes, manual: 0 });
        }
    }
    d.bind.sort_unstable();
    d
}

struct PortEntry {
    refs: PortRefs,
    stop: CancellationToken,
    accept: tokio::task::JoinHandle<()>,
}

struct Running {
    rt: Option<Runtime>,
    shared: Arc<EngineContext>,
    ports: BTreeMap<u16, PortEntry>,
}

impl Drop for Running {
    fn drop(&mut self) {
        // Only reached without `stop()` (the embedder dropped a running proxy): never block here.
        if let Some(rt) = self.rt.take() {
            self.shared.shutdown.cancel();
            rt.shutdown_background();
        }
    }
}

/// A route's certificate status (upstream's `ICertStatus`).
#[derive(Debug, Clone)]
pub struct CertificateStatus {
    pub domain: String,
    /// `valid`, `pending`, `expired` or `error`.
    pub status: &'static str,
    pub issued_ms: Option<i64>,
    pub expires_ms: Option<i64>,
    /// `static`, `acme` or `custom`.
    pub source: String,
    pub error: Option<String>,
}

/// Summary for `getStatistics()`.
#[derive(Debug, Clone, Default)]
pub struct ProxyStats {
    pub connections: Stats,
    pub listening_ports: Vec<u16>,
    pub route_count: usize,
}

/// A proxy instance. Cheap to create; binds nothing until [`Proxy::start`].
pub struct Proxy {
    events: Arc<dyn EventSink>,
    handoffs: Arc<crate::js::Handoffs>,
    registry: Arc<Registry>,
    snapshot: Arc<ArcSwap<Snapshot>>,
    lifecycle: tokio::sync::Mutex<Option<Running>>,
    /// Mirror of the bound ports for synchronous readers (cold: written by lifecycle operations).
    port_view: Arc<Mutex<Vec<u16>>>,
    /// The running ACME state, for status readers that must not wait for a lifecycle operation
    /// (cold: set by `start`, cleared by `stop`).
    acme_view: Arc<Mutex<Option<Arc<crate::acme::Acme>>>>,
}

impl Proxy {
    pub fn new(events: Arc<dyn EventSink>) -> Self {
        Proxy {
            events,
            handoffs: Arc::default(),
            registry: Arc::new(Registry::default()),
            snapshot: Arc::new(ArcSwap::from_pointee(Snapshot::empty())),
            lifecycle: tokio::sync::Mutex::new(None),
            port_view: Arc::default(),
            acme_view: Arc::default(),
        }
    }

    fn log(&self, level: LogLevel, message: String) {
        self.events.emit(Event::Log { route: None, client: None, level, message });
    }

    /// Starts listening on every port of `routes`. Fails (binding nothing) if any port cannot be bound.
    pub async fn start(
        &self,
        options: ProxyOptions,
        routes: Vec<Route>,
        bridge: Option<Arc<dyn crate::js::JsBridge>>,
    ) -> Result<()> {
        let mut lc = self.lifecycle.lock().await;
        if lc.is_some() {
            return Err(EngineError::AlreadyRunning);
        }
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if let Some(n) = options.worker_threads {
            b.worker_threads(n);
        }
        let rt = b.thread_name("smartproxy-rt").enable_all().build().map_err(EngineError::Runtime)?;
        let backends = crate::upstream::Backends::new(false, &[], &options).map_err(EngineError::Internal)?;
        let tls = crate::tls::TlsContext::new(options.tls_session_resumption).map_err(EngineError::Internal)?;
        let shutdown = CancellationToken::new();
        let provision = match (options.cert_provision_fn, &bridge) {
            (Some(function), Some(b)) => Some(crate::acme::CustomProvision {
                bridge: b.clone(),
                function,
                fallback_to_acme: options.cert_provision_fallback_to_acme,
            }),
            _ => None,
        };
        let acme = crate::acme::Acme::new(
            rt.handle().clone(),
            shutdown.clone(),
            tls.store.clone(),
            self.events.clone(),
            provision,
            bridge.clone(),
        );
        let shared = Arc::new(EngineContext {
            snapshot: self.snapshot.clone(),
            bridge,
            js_calls: crate::js::Calls::new(rt.metrics().num_workers(), self.registry.clone()),
            handoffs: self.handoffs.clone(),
            backends: Arc::new(backends),
            options: Arc::new(options),
            registry: self.registry.clone(),
            route_states: Default::default(),
            tls,
            acme,
            events: self.events.clone(),
            shutdown,
            tracker: TaskTracker::new(),
        });
        let mut run = Running { rt: Some(rt), shared, ports: BTreeMap::new() };
        // The metrics listener is bound first: a port in use fails `start()` before anything else.
        let m = &run.shared.options.metrics;
        let status =
            match m.prometheus_enabled.then(|| crate::status::server::bind(&m.prometheus_host, m.prometheus_port)) {
                Some(Err(source)) => {
                    run.shared.shutdown.cancel();
                    let port = m.prometheus_port;
                    Self::shutdown_runtime(run).await;
                    return Err(EngineError::Bind { port, source });
                }
                Some(Ok(l)) => Some(l),
                None => None,
            };
        let built = Snapshot::build(routes, &run.shared.options, &run.shared.route_states, &run.shared.tls);
        let applied = match built {
            Ok(snap) => {
                let snap = Arc::new(snap);
                self.apply(&mut run, snap.clone()).await.map(|()| snap)
            }
            Err(e) => Err(e.into()),
        };
        let snap = match applied {
            Ok(s) => s,
            Err(e) => {
                run.shared.shutdown.cancel();
                Self::shutdown_runtime(run).await;
                return Err(e);
            }
        };
        // Every port is bound: stored certificates are served now, missing ones ordered.
        run.shared.acme.sync(snap.acme.clone()).await;
        let registry = self.registry.clone();
        let shutdown = run.shared.shutdown.clone();
        let m = &run.shared.options.metrics;
        registry.metrics.configure(m.enabled, m.retention_seconds);
        if let Some(a) = &run.shared.options.access_log {
            match crate::access_log::AccessLog::start(a, self.events.clone()) {
                Ok(log) => registry.access_log.store(Some(Arc::new(log))),
                Err(e) => self.events.emit(Event::Log {
                    route: None,
                    client: None,
                    level: crate::events::LogLevel::Error,
                    message: format!("access log: cannot start its writer: {e}"),
                }),
            }
        }
        if let (Some(rt), Some(listener)) = (&run.rt, status) {
            let settings = crate::status::server::Settings {
                path: m.prometheus_path.clone(),
                prefix: m.prometheus_prefix.clone(),
            };
            rt.spawn(crate::status::server::serve(listener, self.view(), settings, shutdown.clone()));
        }
        if let Some(rt) = &run.rt {
            rt.spawn(async move {
                let mut prune = tokio::time::interval(PRUNE_INTERVAL);
                // One metrics sample per second, taken at the turn of the wall-clock second.
                let to_next = 1000 - crate::metrics::now_ms() % 1000;
                let start = tokio::time::Instant::now() + Duration::from_millis(to_next);
                let mut sample = tokio::time::interval_at(start, Duration::from_secs(1));
                sample.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = prune.tick() => registry.prune_ips(),
                        _ = sample.tick() => registry.metrics.tick(&registry),
                    }
                }
            });
        }
        *self.acme_view.lock().unwrap_or_else(|p| p.into_inner()) = Some(run.shared.acme.clone());
        *lc = Some(run);
        Ok(())
    }

    /// Binds the ports `snap` newly needs, commits it, then closes the ports no longer wanted
    /// (waiting until their sockets are closed). On a bind failure nothing changes.
    async fn apply(&self, run: &mut Running, snap: Arc<Snapshot>) -> Result<()> {
        let current: BTreeMap<u16, PortRefs> = run.ports.iter().map(|(p, e)| (*p, e.refs)).collect();
        let diff = port_diff(&current, &snap.port_counts());
        let rt = run.rt.as_ref().ok_or_else(|| EngineError::Internal("runtime missing".into()))?;
        let mut fresh = Vec::new();
        {
            let _ctx = rt.enter();
            for &port in &diff.bind {
                match listener::bind(port, run.shared.socket_options(), run.shared.options.defer_accept) {
                    Ok(l) => fresh.push((port, l)),
                    // Dropping `fresh` closes what this call bound so far.
                    Err(source) => return Err(EngineError::Bind { port, source }),
                }
            }
        }
        self.commit(&run.shared, snap);
        for (port, l) in fresh {
            let stop = CancellationToken::new();
            let accept = rt.spawn(listener::accept_loop(l, port, run.shared.clone(), stop.clone()));
            run.ports.insert(port, PortEntry { refs: PortRefs::default(), stop, accept });
        }
        for (port, refs) in diff.refs {
            if let Some(e) = run.ports.get_mut(&port) {
                e.refs = refs;
            }
        }
        Self::close_ports(run, &diff.close).await;
        self.publish_ports(run);
        Ok(())
    }

    /// Makes `snap` the current configuration: its certificates, then its route table.
    fn commit(&self, cx: &EngineContext, snap: Arc<Snapshot>) {
        cx.tls.store.set_configured(snap.certs.clone());
        self.snapshot.store(snap);
    }

    /// Stops the accept loops of `ports` and waits until each has dropped its socket.
    async fn close_ports(run: &mut Running, ports: &[u16]) {
        let mut closing = Vec::new();
        for port in ports {
            if let Some(e) = run.ports.remove(port) {
                e.stop.cancel();
                closing.push(e.accept);
            }
        }
        for task in closing {
            let _ = task.await;
        }
    }

    fn publish_ports(&self, run: &Running) {
        *self.port_view.lock().unwrap_or_else(|p| p.into_inner()) = run.ports.keys().copied().collect();
    }

    /// Replaces the route table. Before `start()`, only validates (the caller keeps the routes),
    /// against `options` (the ones `start()` will get) when given.
    pub async fn update_routes(&self, routes: Vec<Route>, options: Option<ProxyOptions>) -> Result<()> {
        let mut lc = self.lifecycle.lock().await;
        match lc.as_mut() {
            // Not running: validate only (certificates included); start() builds the real snapshot.
            None => {
                let o = options.unwrap_or_default();
                let tls = crate::tls::TlsContext::new(false).map_err(EngineError::Internal)?;
                Snapshot::build(routes, &o, &RouteStates::default(), &tls).map(|_| ()).map_err(EngineError::from)
            }
            Some(run) => {
                let snap =
                    Arc::new(Snapshot::build(routes, &run.shared.options, &run.shared.route_states, &run.shared.tls)?);
                self.apply(run, snap.clone()).await?;
                // After the commit: new 'auto' routes are ordered, removed ones stop being served.
                run.shared.acme.sync(snap.acme.clone()).await;
                Ok(())
            }
        }
    }

    /// The status of a route's certificate: an `'auto'` route's from ACME, a configured
    /// certificate's from its X.509 validity. `None`: no running route of that name terminates TLS.
    pub fn certificate_status(&self, route: &str) -> Option<CertificateStatus> {
        self.view().certificate_status(route)
    }

    /// What the status listener and `getPrometheusMetrics()` read: shared handles, no lock held.
    pub fn view(&self) -> crate::status::View {
        crate::status::View {
            registry: self.registry.clone(),
            snapshot: self.snapshot.clone(),
            acme: self.acme_view.clone(),
            ports: self.port_view.clone(),
        }
    }

    /// Orders the certificate of an `'auto'` route now (`provisionCertificate` /
    /// `renewCertificate`); resolves when it is served, fails with the reason.
    pub async fn provision_certificate(&self, route: &str) -> Result<()> {
        let (acme, auto, handle) = {
            let lc = self.lifecycle.lock().await;
            let run = lc.as_ref().ok_or(EngineError::NotRunning)?;
            let rt = run.rt.as_ref().ok_or_else(|| EngineError::Internal("runtime missing".into()))?;
            let auto = run.shared.acme.route(route).ok_or_else(|| {
                EngineError::InvalidArg(format!("route {route:?} has no certificate: 'auto' (ACME) to order"))
            })?;
            (run.shared.acme.clone(), auto, rt.handle().clone())
        };
        match handle.spawn(acme.ensure(auto, true)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(why)) => Err(EngineError::Certificate(why)),
            Err(_) => Err(EngineError::Certificate("the order was cancelled".into())),
        }
    }

    /// Listens on `port` in addition to the routes' ports (reference-counted).
    pub async fn add_port(&self, port: u16) -> Result<()> {
        let mut lc = self.lifecycle.lock().await;
        let run = lc.as_mut().ok_or(EngineError::NotRunning)?;
        if let Some(e) = run.ports.get_mut(&port) {
            e.refs.manual += 1;
            return Ok(());
        }
        let rt = run.rt.as_ref().ok_or_else(|| EngineError::Internal("runtime missing".into()))?;
        let l = {
            let _ctx = rt.enter();
            listener::bind(port, run.shared.socket_options(), run.shared.options.defer_accept)
                .map_err(|source| EngineError::Bind { port, source })?
        };
        let stop = CancellationToken::new();
        let accept = rt.spawn(listener::accept_loop(l, port, run.shared.clone(), stop.clone()));
        run.ports.insert(port, PortEntry { refs: PortRefs { routes: 0, manual: 1 }, stop, accept });
        self.publish_ports(run);
        Ok(())
    }

    /// Drops one reference to `port`; the listener closes when none is left.
    pub async fn remove_port(&self, port: u16) -> Result<()> {
        let mut lc = self.lifecycle.lock().await;
        let run = lc.as_mut().ok_or(EngineError::NotRunning)?;
        let mut close = Vec::new();
        if let Some(e) = run.ports.get_mut(&port) {
            // May go below zero: removing a route's port closes it until the next route update.
            e.refs.manual -= 1;
            if !e.refs.wanted() {
                close.push(port);
            }
        }
        Self::close_ports(run, &close).await;
        self.publish_ports(run);
        Ok(())
    }

    /// JavaScript takes ownership of a handed-over socket (see [`crate::js::Handoffs`]).
    pub fn claim_socket(&self, conn_id: u64) -> Option<i32> {
        self.handoffs.claim(conn_id)
    }

    /// JavaScript closed a handed-over socket.
    pub fn socket_closed(&self, conn_id: u64, failed: bool) {
        self.handoffs.closed(conn_id, failed);
    }

    pub fn listening_ports(&self) -> Vec<u16> {
        self.port_view.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn is_running(&self) -> bool {
        self.lifecycle.try_lock().map_or(true, |g| g.is_some())
    }

    /// Makes the access log reopen its file (after a rotation moved it away).
    pub fn reopen_logs(&self) {
        if let Some(log) = &*self.registry.access_log.load() {
            log.reopen();
        }
    }

    /// Traffic samples, histograms and counters (kept across `stop`/`start`).
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.registry.metrics
    }

    pub fn stats(&self) -> ProxyStats {
        ProxyStats {
            connections: self.registry.stats(),
            listening_ports: self.listening_ports(),
            route_count: self.snapshot.load().table.len(),
        }
    }

    /// Stops listening, closes all connections, and shuts the runtime down. Idempotent.
    pub async fn stop(&self) -> Result<()> {
        let mut lc = self.lifecycle.lock().await;
        let Some(mut run) = lc.take() else {
            return Ok(());
        };
        let all: Vec<u16> = run.ports.keys().copied().collect();
        Self::close_ports(&mut run, &all).await;
        *self.port_view.lock().unwrap_or_else(|p| p.into_inner()) = Vec::new();
        *self.acme_view.lock().unwrap_or_else(|p| p.into_inner()) = None;
        run.shared.shutdown.cancel();
        // The writer drains its queue and ends once the last connection let go of it.
        self.registry.access_log.store(None);
        run.shared.tracker.close();
        let grace = run.shared.options.graceful_shutdown_timeout;
        if tokio::time::timeout(grace, run.shared.tracker.wait()).await.is_err() {
            self.log(
                LogLevel::Warn,
                format!("{} connections did not close within gracefulShutdownTimeout", run.shared.tracker.len()),
            );
        }
        // Idle keep-alive connections to backends close now, not when the last handle goes.
        run.shared.backends.clear_pool();
        Self::shutdown_runtime(run).await;
        Ok(())
    }

    /// Shuts the runtime down off the async context (dropping a runtime inside one panics).
    async fn shutdown_runtime(mut run: Running) {
        let Some(rt) = run.rt.take() else { return };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new().name("smartproxy-stop".into()).spawn(move || {
            rt.shutdown_timeout(RUNTIME_SHUTDOWN_GRACE);
            let _ = tx.send(());
        });
        if spawned.is_ok() {
            let _ = rx.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(routes: usize, manual: i64) -> PortRefs {
        PortRefs { routes, manual }
    }

    #[test]
    fn port_diff_binds_new_closes_unused_and_keeps_manual_ports() {
        let current: BTreeMap<u16, PortRefs> =
            [(80, refs(1, 0)), (81, refs(2, 0)), (82, refs(0, 1)), (83, refs(1, -1)), (84, refs(1, 2))].into();
        let wanted: HashMap<u16, usize> = [(81, 1), (83, 1), (90, 2), (91, 0)].into();
        let d = port_diff(&current, &wanted);
        assert_eq!(d.bind, vec![90], "new route ports are bound; a zero count is not a use");
        assert_eq!(d.close, vec![80], "ports without routes or manual references close");
        assert_eq!(d.refs.get(&81), Some(&refs(1, 0)));
        assert_eq!(d.refs.get(&82), Some(&refs(0, 1)), "manual ports stay without routes");
        assert_eq!(d.refs.get(&83), Some(&refs(1, 0)), "a route update re-opens a port closed by hand");
        assert_eq!(d.refs.get(&84), Some(&refs(0, 2)));
        assert_eq!(d.refs.get(&90), Some(&refs(2, 0)));
        assert!(!d.refs.contains_key(&80) && !d.refs.contains_key(&91));
        // Nothing changes when the wanted ports are the bound ones.
        let same: HashMap<u16, usize> = [(80, 1), (81, 2), (83, 1), (84, 1)].into();
        let d = port_diff(&current, &same);
        assert!(d.bind.is_empty() && d.close.is_empty());
    }

    /// Removing a port and adding it back at once works: the first update has closed the
    /// socket by the time it returns (it used to fail now and then with "address in use").
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_removed_port_is_free_when_the_update_returns() {
        let route = |port: u16| {
            crate::config::parse_routes(&serde_json::json!([{"match": {"ports": port},
                "action": {"type": "forward", "target": {"host": "127.0.0.1", "port": 9}}}]))
            .unwrap()
        };
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap().port();
        let l2 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let b = l2.local_addr().unwrap().port();
        drop((l, l2));
        let p = Proxy::new(Arc::new(crate::events::NullSink));
        p.start(ProxyOptions::default(), route(a), None).await.unwrap();
        let both = |x, y| {
            let mut r = route(x);
            r.extend(route(y));
            r
        };
        for i in 0..100 {
            p.update_routes(both(a, b), None).await.unwrap_or_else(|e| panic!("update {i} (add): {e}"));
            p.update_routes(route(a), None).await.unwrap_or_else(|e| panic!("update {i} (remove): {e}"));
            // Free for anyone else too.
            drop(std::net::TcpListener::bind(("0.0.0.0", b)).unwrap_or_else(|e| panic!("update {i}: {e}")));
        }
        p.stop().await.unwrap();
    }
}
