//! The engine's side of JavaScript in the data path: the [`JsBridge`] the embedder implements
//! (socket handlers, target functions), the hand-over of sockets to JavaScript, route contexts,
//! and resolution of function-valued targets.
//!
//! Socket hand-over: the connection's socket is deregistered from tokio and parked here as an
//! `OwnedFd`; the embedder is told its number. JavaScript first *claims* it ([`Handoffs::claim`]
//! gives up ownership without closing), then wraps it in a `net.Socket`. A socket nobody claims
//! within [`CLAIM_TIMEOUT`] is closed here. Once claimed, only JavaScript closes it, and the
//! connection stays counted as active until it reports the close ([`Handoffs::closed`]).
//! No unsafe code: giving up an `OwnedFd` is safe; only creating one from a number is not, and
//! that happens in libuv.

use crate::conn::{ConnGuard, ConnRecord, Registry, Termination};
use crate::detect::TlsVersion;
use crate::matching::{CompiledRoute, SelectedTarget};
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use serde_json::{json, Map, Value};
use std::future::Future;
use std::os::fd::{IntoRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

pub type CallFuture = Pin<Box<dyn Future<Output = Result<Value, String>> + Send>>;

/// How long a JavaScript function (target host/port) may take.
pub const JS_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a handed-over socket may wait for JavaScript to claim it.
pub const CLAIM_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a worker with nothing else to do polls for a function's result before it sleeps
/// (see [`Calls`]).
pub const SPIN_BUDGET: Duration = Duration::from_micros(250);
/// Calls of a function waited for asleep after its result missed [`SPIN_BUDGET`].
pub const SPIN_BACKOFF: u8 = 8;

/// Implemented by the embedder (the napi binding).
pub trait JsBridge: Send + Sync + 'static {
    /// Offers socket `fd` of connection `conn_id` to handler `handler`. False: not delivered.
    fn socket(&self, handler: u32, conn_id: u64, fd: i32, context: Value) -> bool;
    /// Calls function `function` with a route context; resolves to its (awaited) result.
    fn call(&self, function: u32, context: Value) -> CallFuture;
}

/// Sockets handed to JavaScript: parked until claimed, then counted until closed.
#[derive(Default)]
pub struct Handoffs {
    pending: DashMap<u64, OwnedFd>,
    open: DashMap<u64, Handed>,
}

/// A handed-over connection's books. JavaScript may claim, serve and close a socket before the
/// connection's task gets to [`Handoffs::keep`] its guard (a short exchange on a busy machine),
/// so whichever of the two comes second closes the books.
enum Handed {
    Kept(ConnGuard),
    ClosedFirst { failed: bool },
}

fn termination(failed: bool) -> Termination {
    if failed {
        Termination::HandlerError
    } else {
        Termination::ClientClosed
    }
}

impl Handoffs {
    /// JavaScript takes ownership of the parked socket; `None` if it is gone (expired).
    pub fn claim(&self, conn_id: u64) -> Option<i32> {
        self.pending.remove(&conn_id).map(|(_, fd)| fd.into_raw_fd())
    }

    /// JavaScript closed the socket (`failed`: its handler threw or rejected).
    pub fn closed(&self, conn_id: u64, failed: bool) {
        self.pending.remove(&conn_id);
        let mut guard = match self.open.entry(conn_id) {
            Entry::Vacant(e) => {
                e.insert(Handed::ClosedFirst { failed });
                return;
            }
            Entry::Occupied(e) => match e.remove() {
                Handed::Kept(guard) => guard,
                Handed::ClosedFirst { .. } => return,
            },
        };
        guard.end(termination(failed));
    }

    pub(crate) fn park(&self, conn_id: u64, fd: OwnedFd) {
        self.pending.insert(conn_id, fd);
    }

    /// Closes a parked socket that could not be offered.
    pub(crate) fn discard(&self, conn_id: u64) {
        self.pending.remove(&conn_id);
    }

    /// Keeps a handed-over connection counted until JavaScript closes it (or has closed it).
    pub(crate) fn keep(&self, mut guard: ConnGuard) {
        match self.open.entry(guard.rec.id) {
            Entry::Vacant(e) => {
                e.insert(Handed::Kept(guard));
            }
            Entry::Occupied(e) => {
                if let Handed::ClosedFirst { failed } = e.remove() {
                    guard.end(termination(failed));
                }
            }
        }
    }

    /// Closes a socket JavaScript never claimed (or could not be offered).
    pub(crate) fn expire(&self, conn_id: u64) {
        if self.pending.remove(&conn_id).is_some() {
            if let Some((_, Handed::Kept(mut guard))) = self.open.remove(&conn_id) {
                guard.end(Termination::HandlerError);
            }
        }
    }
}

/// The data of an `IRouteContext` (spec §3.10).
pub struct RouteContext<'a> {
    pub port: u16,
    pub domain: Option<&'a str>,
    pub client_ip: String,
    pub server_ip: String,
    pub path: Option<&'a str>,
    pub query: Option<&'a str>,
    /// Lower-cased names; the first value of a repeated header wins.
    pub headers: Option<Vec<(&'a str, &'a str)>>,
    pub is_tls: bool,
    pub tls_version: Option<TlsVersion>,
    pub route: Option<&'a CompiledRoute>,
    pub rec: &'a ConnRecord,
    pub target_host: Option<&'a str>,
    pub target_port: Option<u16>,
}

impl RouteContext<'_> {
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("port".into(), json!(self.port));
        if let Some(d) = self.domain {
            m.insert("domain".into(), json!(d));
        }
        m.insert("clientIp".into(), json!(self.client_ip));
        m.insert("clientPort".into(), json!(self.rec.client_port));
        if let Some(h) = self.rec.proxied.get() {
            // The client is the one a load balancer's PROXY protocol header named.
            m.insert("proxyProtocol".into(), proxy_header_json(h));
        }
        m.insert("serverIp".into(), json!(self.server_ip));
        if let Some(p) = self.path {
            m.insert("path".into(), json!(p));
        }
        if let Some(q) = self.query {
            m.insert("query".into(), json!(q));
        }
        if let Some(h) = &self.headers {
            let mut hm = Map::new();
            for (k, v) in h {
                hm.entry(k.to_ascii_lowercase()).or_insert_with(|| json!(v));
            }
            m.insert("headers".into(), Value::Object(hm));
        }
        m.insert("isTls".into(), json!(self.is_tls));
        if let Some(v) = self.tls_version {
            m.insert("tlsVersion".into(), json!(v.as_str()));
        }
        if let Some(r) = self.route {
            m.insert("routeName".into(), json!(&*r.name));
            if let Some(id) = &r.route.id {
                m.insert("routeId".into(), json!(id));
            }
        }
        if let Some(h) = self.target_host {
            m.insert("targetHost".into(), json!(h));
        }
        if let Some(p) = self.target_port {
            m.insert("targetPort".into(), json!(p));
        }
        m.insert("timestamp".into(), json!(self.rec.started_ms));
        m.insert("connectionId".into(), json!(self.rec.id.to_string()));
        Value::Object(m)
    }
}

/// `IRouteContext.proxyProtocol`: the header's version, its meaningful TLVs decoded
/// (`alpn`, `authority`; `uniqueId` in hex), and every TLV as `{ type, value }` (hex).
fn proxy_header_json(h: &crate::proxy_protocol::Header) -> Value {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let mut m = Map::new();
    m.insert("version".into(), json!(h.version.as_str()));
    if let Some(a) = h.alpn() {
        m.insert("alpn".into(), json!(String::from_utf8_lossy(a)));
    }
    if let Some(a) = h.authority() {
        m.insert("authority".into(), json!(a));
    }
    if let Some(u) = h.unique_id() {
        m.insert("uniqueId".into(), json!(hex(u)));
    }
    let tlvs: Vec<Value> = h.tlvs.iter().map(|t| json!({ "type": t.kind, "value": hex(&t.value) })).collect();
    m.insert("tlvs".into(), Value::Array(tlvs));
    Value::Object(m)
}

/// The JavaScript function calls of one running proxy, and how a worker waits for a result.
///
/// A function runs on Node's thread; its result comes back to a tokio worker. A worker that
/// went to sleep waiting must be woken, and waking a thread on an idle vCPU costs 20–60 µs on
/// a small VM (bench/RESULTS.md, `bench/wakeup-rtt.c`), a large part of what a call adds to a
/// connection on an idle machine. So when the proxy has a worker to spare (no other call is
/// out, and no more live connections than worker threads), the waiting worker polls for the
/// result for up to [`SPIN_BUDGET`] instead, giving up its CPU between polls (Node's thread
/// may be waiting for that very CPU). Under load, the condition fails and workers sleep as
/// usual, so polling never takes CPU from other connections. When a function's result does not
/// come within the budget (a slow async function), its next [`SPIN_BACKOFF`] calls are waited
/// for asleep.
pub struct Calls {
    in_flight: AtomicU32,
    /// Per function id modulo its length: calls left to wait for asleep.
    backoff: [AtomicU8; 64],
    /// The proxy's connections, counted when a call decides how to wait.
    registry: Arc<Registry>,
    /// Live connections up to which a worker is to spare: the runtime's worker threads.
    spare_up_to: u64,
}

impl Calls {
    pub fn new(workers: usize, registry: Arc<Registry>) -> Self {
        Calls {
            in_flight: AtomicU32::new(0),
            backoff: std::array::from_fn(|_| AtomicU8::new(0)),
            registry,
            spare_up_to: workers as u64,
        }
    }

    fn backoff(&self, f: u32) -> &AtomicU8 {
        &self.backoff[f as usize % self.backoff.len()]
    }
}

/// Counts a call as in flight until dropped (settled, timed out or cancelled).
struct InFlight<'a>(&'a Calls);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Calls the target's host and port functions, if any (host first; the port function sees the
/// chosen host as `targetHost`). A missing bridge, a throw or rejection, a result of the wrong
/// type or a call slower than [`JS_CALL_TIMEOUT`] fails with `TargetFunctionError`.
pub async fn resolve_target(
    mut t: SelectedTarget,
    bridge: Option<&Arc<dyn JsBridge>>,
    calls: &Calls,
    mut context: Value,
    pick: u64,
) -> Result<SelectedTarget, (Termination, String)> {
    if t.host_fn.is_none() && t.port_fn.is_none() {
        return Ok(t);
    }
    let fail = |m: String| (Termination::TargetFunctionError, m);
    let bridge = bridge.ok_or_else(|| fail("no JavaScript bridge".into()))?;
    if let Some(f) = t.host_fn.take() {
        let v = call(bridge, calls, f, context.clone()).await.map_err(fail)?;
        t.host = match v {
            Value::String(s) if !s.trim().is_empty() => s,
            Value::Array(a) if !a.is_empty() && a.iter().all(|x| x.as_str().is_some_and(|s| !s.trim().is_empty())) => {
                a[(pick % a.len() as u64) as usize].as_str().unwrap_or_default().to_owned()
            }
            other => {
                return Err(fail(format!(
                    "target host function returned {other}, expected a host name or an array of them"
                )))
            }
        };
        if let Value::Object(m) = &mut context {
            m.insert("targetHost".into(), json!(t.host));
        }
    }
    if let Some(f) = t.port_fn.take() {
        let v = call(bridge, calls, f, context).await.map_err(fail)?;
        t.port = match v.as_f64() {
            Some(n) if n.fract() == 0.0 && (1.0..=65535.0).contains(&n) => n as u16,
            _ => return Err(fail(format!("target port function returned {v}, expected an integer 1-65535"))),
        };
    }
    Ok(t)
}

async fn call(bridge: &Arc<dyn JsBridge>, calls: &Calls, f: u32, context: Value) -> Result<Value, String> {
    let alone = calls.in_flight.fetch_add(1, Ordering::Relaxed) == 0;
    let _in_flight = InFlight(calls);
    let backoff = calls.backoff(f);
    let spare = alone && calls.registry.active() <= calls.spare_up_to;
    let spin = spare && backoff.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_err();
    let started = Instant::now();
    let pending = SpinFirst { inner: bridge.call(f, context), until: spin.then(|| started + SPIN_BUDGET) };
    let r = match tokio::time::timeout(JS_CALL_TIMEOUT, pending).await {
        Err(_) => Err(format!("function did not settle within {} s", JS_CALL_TIMEOUT.as_secs())),
        Ok(Err(e)) => Err(format!("function failed: {e}")),
        Ok(Ok(v)) => Ok(v),
    };
    if spin && started.elapsed() > SPIN_BUDGET {
        backoff.store(SPIN_BACKOFF, Ordering::Relaxed);
    }
    r
}

/// Polls `inner` in a loop, yielding the thread between polls, until it is ready or `until`
/// has passed; then waits for it as any future does. The waker registered by each poll is the
/// task's own, so a result that arrives after the deadline wakes the task as usual.
struct SpinFirst<F> {
    inner: F,
    until: Option<Instant>,
}

impl<F: Future + Unpin> Future for SpinFirst<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        loop {
            if let Poll::Ready(v) = Pin::new(&mut this.inner).poll(cx) {
                return Poll::Ready(v);
            }
            match this.until {
                Some(t) if Instant::now() < t => std::thread::yield_now(),
                _ => {
                    this.until = None;
                    return Poll::Pending;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::IpLimits;
    use std::sync::atomic::{AtomicBool, AtomicUsize};

    fn handed(reg: &Arc<Registry>, h: &Handoffs) -> ConnGuard {
        let g = reg.open("10.0.0.1".parse().unwrap(), 1, 80, IpLimits::default()).unwrap();
        h.park(g.rec.id, std::fs::File::open("/dev/null").unwrap().into());
        g
    }

    #[test]
    fn a_handed_over_connection_closes_its_books_whichever_comes_first() {
        let reg = Arc::new(Registry::default());
        let h = Handoffs::default();
        // The connection's task keeps the guard, then JavaScript claims and closes the socket.
        let g = handed(&reg, &h);
        let id = g.rec.id;
        h.keep(g);
        assert_eq!(reg.active(), 1);
        assert!(h.claim(id).is_some());
        h.closed(id, false);
        assert_eq!(reg.active(), 0);
        // JavaScript is faster: it claims, serves and closes before the task keeps the guard.
        let g = handed(&reg, &h);
        let id = g.rec.id;
        assert!(h.claim(id).is_some());
        h.closed(id, true);
        assert_eq!(reg.active(), 1, "the guard is still the task's");
        h.keep(g);
        assert_eq!(reg.active(), 0);
        assert!(h.open.is_empty());
        let s = reg.stats();
        assert!(s.termination_incoming.contains(&("client_closed", 1)), "{:?}", s.termination_incoming);
        assert!(s.termination_incoming.contains(&("socket_handler_error", 1)), "{:?}", s.termination_incoming);
        // Never claimed: expiry closes the books.
        let g = handed(&reg, &h);
        let id = g.rec.id;
        h.keep(g);
        h.expire(id);
        assert_eq!(reg.active(), 0);
    }

    /// Ready once `flag` is set, without ever registering a waker: only polling finds it.
    struct Flag(Arc<AtomicBool>, Arc<AtomicUsize>);

    impl Future for Flag {
        type Output = ();
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            self.1.fetch_add(1, Ordering::Relaxed);
            if self.0.load(Ordering::Acquire) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    fn set_after(flag: &Arc<AtomicBool>, after: Duration) -> std::thread::JoinHandle<()> {
        let flag = flag.clone();
        std::thread::spawn(move || {
            std::thread::sleep(after);
            flag.store(true, Ordering::Release);
        })
    }

    #[test]
    fn spinning_finds_a_result_within_the_budget_and_gives_up_after_it() {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        // Within the budget: one poll of the task returns the result.
        let (flag, polls) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
        let t = set_after(&flag, Duration::from_millis(5));
        let mut f =
            SpinFirst { inner: Flag(flag, polls.clone()), until: Some(Instant::now() + Duration::from_secs(10)) };
        assert_eq!(Pin::new(&mut f).poll(&mut cx), Poll::Ready(()));
        assert!(polls.load(Ordering::Relaxed) > 1);
        t.join().unwrap();
        // Past the budget: back to the scheduler, and later polls do not spin again.
        let (flag, polls) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
        let started = Instant::now();
        let mut f =
            SpinFirst { inner: Flag(flag.clone(), polls.clone()), until: Some(started + Duration::from_millis(2)) };
        assert_eq!(Pin::new(&mut f).poll(&mut cx), Poll::Pending);
        assert!(started.elapsed() >= Duration::from_millis(2));
        let n = polls.load(Ordering::Relaxed);
        assert_eq!(Pin::new(&mut f).poll(&mut cx), Poll::Pending);
        assert_eq!(polls.load(Ordering::Relaxed), n + 1);
        flag.store(true, Ordering::Release);
        assert_eq!(Pin::new(&mut f).poll(&mut cx), Poll::Ready(()));
        // No deadline: a plain poll.
        let polls = Arc::new(AtomicUsize::new(0));
        let mut f = SpinFirst { inner: Flag(Arc::default(), polls.clone()), until: None };
        assert_eq!(Pin::new(&mut f).poll(&mut cx), Poll::Pending);
        assert_eq!(polls.load(Ordering::Relaxed), 1);
    }

    /// Answers every call with 8080 after `delay`, from another thread.
    struct Delayed(Duration);

    impl JsBridge for Delayed {
        fn socket(&self, _: u32, _: u64, _: i32, _: Value) -> bool {
            false
        }
        fn call(&self, _: u32, _: Value) -> CallFuture {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let delay = self.0;
            std::thread::spawn(move || {
                std::thread::sleep(delay);
                let _ = tx.send(json!(8080));
            });
            Box::pin(async move { rx.await.map_err(|e| e.to_string()) })
        }
    }

    /// Never answers.
    struct Never;

    impl JsBridge for Never {
        fn socket(&self, _: u32, _: u64, _: i32, _: Value) -> bool {
            false
        }
        fn call(&self, _: u32, _: Value) -> CallFuture {
            Box::pin(std::future::pending())
        }
    }

    #[tokio::test]
    async fn a_function_slower_than_the_budget_is_awaited_asleep_for_a_while() {
        let reg = Arc::new(Registry::default());
        let calls = Calls::new(2, reg.clone());
        let target = || SelectedTarget { host: "h".into(), port: 0, host_fn: None, port_fn: Some(3), send_proxy: None };
        let slow: Arc<dyn JsBridge> = Arc::new(Delayed(SPIN_BUDGET * 40));
        let fast: Arc<dyn JsBridge> = Arc::new(Delayed(Duration::ZERO));
        let backoff = |f| Calls::backoff(&calls, f).load(Ordering::Relaxed);
        let t = resolve_target(target(), Some(&slow), &calls, json!({}), 0).await.unwrap();
        assert_eq!(t.port, 8080);
        assert_eq!(backoff(3), SPIN_BACKOFF, "the spin missed");
        assert_eq!(backoff(4), 0, "other functions keep spinning");
        // Busy proxy (more live connections than workers): no spin, the backoff stays.
        let busy: Vec<_> =
            (1..=3).map(|p| reg.open("10.0.0.1".parse().unwrap(), p, 80, IpLimits::default()).unwrap()).collect();
        resolve_target(target(), Some(&fast), &calls, json!({}), 0).await.unwrap();
        assert_eq!(backoff(3), SPIN_BACKOFF);
        drop(busy);
        for left in (0..SPIN_BACKOFF).rev() {
            resolve_target(target(), Some(&slow), &calls, json!({}), 0).await.unwrap();
            assert_eq!(backoff(3), left, "asleep: no new backoff");
        }
        resolve_target(target(), Some(&slow), &calls, json!({}), 0).await.unwrap();
        assert_eq!(backoff(3), SPIN_BACKOFF, "spinning again, and missed again");
        assert_eq!(calls.in_flight.load(Ordering::Relaxed), 0);
        // A call given up (timeout, shutdown) no longer counts as in flight.
        let never: Arc<dyn JsBridge> = Arc::new(Never);
        let pending = resolve_target(target(), Some(&never), &calls, json!({}), 0);
        assert!(tokio::time::timeout(Duration::from_millis(1), pending).await.is_err());
        assert_eq!(calls.in_flight.load(Ordering::Relaxed), 0);
    }
}
