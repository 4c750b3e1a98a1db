//! The proxy lifecycle: `start`, `stop`, `update_routes`, listening-port reference counts.
//!
//! Each `start()` builds the proxy's own multi-threaded tokio runtime; `stop()` closes listeners,
//! closes connections (waiting up to `gracefulShutdownTimeout` for their tasks), then shuts the
//! runtime down on a plain thread, so no proxy thread outlives `stop()`. Lifecycle operations
//! are serialised by an async mutex (a `stop()` issued during `start()` waits for it, then stops).
//! Routes live in an `ArcSwap` snapshot; the connection path never takes these locks.
//!
//! Ports: a port is listened on while (routes using it) + (manual `add_port` calls − `remove_port`
//! calls) > 0. `update_routes` binds new ports before swapping the table (so a failed bind
//! changes nothing) and closes unused ones after; open connections are never touched by it.

use crate::config::{ProxyOptions, Route};
use crate::conn::{Registry, Stats};
use crate::error::{EngineError, Result};
use crate::events::{Event, EventSink, LogLevel};
use crate::listener::{self, Shared};
use crate::snapshot::Snapshot;
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

struct PortEntry {
    routes: usize,
    manual: i64,
    stop: CancellationToken,
}

impl PortEntry {
    fn wanted(&self) -> bool {
        self.routes as i64 + self.manual > 0
    }
}

struct Running {
    rt: Option<Runtime>,
    shared: Arc<Shared>,
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
    port_view: Mutex<Vec<u16>>,
}

impl Proxy {
    pub fn new(events: Arc<dyn EventSink>) -> Self {
        Proxy {
            events,
            handoffs: Arc::default(),
            registry: Arc::new(Registry::default()),
            snapshot: Arc::new(ArcSwap::from_pointee(Snapshot::empty())),
            lifecycle: tokio::sync::Mutex::new(None),
            port_view: Mutex::new(Vec::new()),
        }
    }

    fn log(&self, level: LogLevel, message: String) {
        self.events.emit(Event::Log { level, message });
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
        let snap = Arc::new(Snapshot::build(routes, &options)?);
        let backends = crate::http::Backends::new(false, &[], &options).map_err(EngineError::Internal)?;
        let shared = Arc::new(Shared {
            snapshot: self.snapshot.clone(),
            bridge,
            js_calls: crate::js::Calls::new(rt.metrics().num_workers(), self.registry.clone()),
            handoffs: self.handoffs.clone(),
            backends: Arc::new(backends),
            options: Arc::new(options),
            registry: self.registry.clone(),
            events: self.events.clone(),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
        });
        let mut run = Running { rt: Some(rt), shared, ports: BTreeMap::new() };
        let wanted = snap.table.port_counts();
        if let Err(e) = self.apply_ports(&mut run, &snap, wanted) {
            Self::shutdown_runtime(run).await;
            return Err(e);
        }
        let registry = self.registry.clone();
        let shutdown = run.shared.shutdown.clone();
        if let Some(rt) = &run.rt {
            rt.spawn(async move {
                let mut tick = tokio::time::interval(PRUNE_INTERVAL);
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tick.tick() => registry.prune_ips(),
                    }
                }
            });
        }
        *lc = Some(run);
        Ok(())
    }

    /// Binds ports newly wanted, swaps in `table`, then closes ports no longer wanted.
    /// `route_counts` gives, per port, how many routes use it. On a bind failure nothing changes.
    fn apply_ports(&self, run: &mut Running, snap: &Arc<Snapshot>, route_counts: HashMap<u16, usize>) -> Result<()> {
        let rt = run.rt.as_ref().ok_or_else(|| EngineError::Internal("runtime missing".into()))?;
        let mut fresh = Vec::new();
        {
            let _ctx = rt.enter();
            let mut to_bind: Vec<u16> = route_counts.keys().copied().filter(|p| !run.ports.contains_key(p)).collect();
            to_bind.sort_unstable();
            for port in to_bind {
                match listener::bind(port, run.shared.socket_options()) {
                    Ok(l) => fresh.push((port, l)),
                    // Dropping `fresh` closes what this call bound so far.
                    Err(source) => return Err(EngineError::Bind { port, source }),
                }
            }
        }
        self.snapshot.store(snap.clone());
        for (port, l) in fresh {
            let stop = CancellationToken::new();
            rt.spawn(listener::accept_loop(l, port, run.shared.clone(), stop.clone()));
            run.ports.insert(port, PortEntry { routes: 0, manual: 0, stop });
        }
        for (port, e) in run.ports.iter_mut() {
            e.routes = route_counts.get(port).copied().unwrap_or(0);
            // A route update re-establishes the routes' ports that remove_port had closed.
            e.manual = e.manual.max(0);
        }
        self.close_unwanted(run);
        Ok(())
    }

    fn close_unwanted(&self, run: &mut Running) {
        run.ports.retain(|_, e| {
            if e.wanted() {
                true
            } else {
                e.stop.cancel();
                false
            }
        });
        *self.port_view.lock().unwrap_or_else(|p| p.into_inner()) = run.ports.keys().copied().collect();
    }

    /// Replaces the route table. Before `start()`, only validates (the caller keeps the routes).
    pub async fn update_routes(&self, routes: Vec<Route>) -> Result<()> {
        let mut lc = self.lifecycle.lock().await;
        match lc.as_mut() {
            // Not running: validate only (certificates included); start() builds the real snapshot.
            None => Snapshot::build(routes, &ProxyOptions::default()).map(|_| ()).map_err(EngineError::from),
            Some(run) => {
                let snap = Arc::new(Snapshot::build(routes, &run.shared.options)?);
                let counts = snap.table.port_counts();
                self.apply_ports(run, &snap, counts)
            }
        }
    }

    /// Listens on `port` in addition to the routes' ports (reference-counted).
    pub async fn add_port(&self, port: u16) -> Result<()> {
        let mut lc = self.lifecycle.lock().await;
        let run = lc.as_mut().ok_or(EngineError::NotRunning)?;
        if let Some(e) = run.ports.get_mut(&port) {
            e.manual += 1;
            return Ok(());
        }
        let rt = run.rt.as_ref().ok_or_else(|| EngineError::Internal("runtime missing".into()))?;
        let l = {
            let _ctx = rt.enter();
            listener::bind(port, run.shared.socket_options()).map_err(|source| EngineError::Bind { port, source })?
        };
        let stop = CancellationToken::new();
        rt.spawn(listener::accept_loop(l, port, run.shared.clone(), stop.clone()));
        run.ports.insert(port, PortEntry { routes: 0, manual: 1, stop });
        self.close_unwanted(run);
        Ok(())
    }

    /// Drops one reference to `port`; the listener closes when none is left.
    pub async fn remove_port(&self, port: u16) -> Result<()> {
        let mut lc = self.lifecycle.lock().await;
        let run = lc.as_mut().ok_or(EngineError::NotRunning)?;
        if let Some(e) = run.ports.get_mut(&port) {
            // May go below zero: removing a route's port closes it until the next route update.
            e.manual -= 1;
        }
        self.close_unwanted(run);
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
        for e in run.ports.values() {
            e.stop.cancel();
        }
        run.ports.clear();
        *self.port_view.lock().unwrap_or_else(|p| p.into_inner()) = Vec::new();
        run.shared.shutdown.cancel();
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
