//! Traffic metrics: per-second samples of bytes and requests (whole proxy, per route, per client
//! address), histograms of connection durations and sizes and of request durations, and the
//! counters the Prometheus text shows.
//!
//! Nothing on the data path takes a shared lock: connections count their bytes on their own
//! record (relaxed atomics), requests and histograms go to the recording thread's shard
//! ([`shard`]). Once a second the sampler ([`Metrics::tick`]) takes what every live connection
//! moved since the last tick (`fetch_max` on the record's sampled marks, so bytes are counted once
//! whoever looks first) and what the connections that closed left in their thread's queue
//! ([`Metrics::close`]: no hashing, no shared line). Per-route and per-address series keep
//! the last [`SERIES_SECONDS`] seconds; at most [`MAX_IPS`] addresses have their own series, the
//! rest are summed under [`OTHER_IPS`], so a scan from a million addresses cannot grow memory.

pub mod hist;
pub mod shard;

use crate::conn::{ConnRecord, Registry};
use hist::Histogram;
use shard::{Counter, Padded, SHARDS};
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds of per-route and per-address samples kept (the longest `byRoute`/`byIP` window).
pub const SERIES_SECONDS: u64 = 300;
/// Client addresses with a series of their own.
pub const MAX_IPS: usize = 1024;
/// The key under which the traffic of all other addresses is summed.
pub const OTHER_IPS: &str = "other";
/// Default `metrics.retentionSeconds`.
pub const DEFAULT_RETENTION: usize = 3600;
/// Closed connections a thread's queue holds before the closing thread folds them in itself
/// (bounds the queues when no sampler runs).
const FOLD_AT: usize = 4096;

/// One second of traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    /// Unix time of the second's end, in milliseconds.
    pub at_ms: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub requests: u64,
}

/// Rates over a window, bytes per second.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rate {
    pub bytes_in: f64,
    pub bytes_out: f64,
}

/// The last seconds of one route's or one address's traffic, only seconds that had some.
#[derive(Debug, Default)]
struct Series {
    /// (unix second, in, out)
    seconds: VecDeque<(u64, u64, u64)>,
}

impl Series {
    fn add(&mut self, sec: u64, i: u64, o: u64) {
        match self.seconds.back_mut() {
            Some(last) if last.0 == sec => {
                last.1 += i;
                last.2 += o;
            }
            _ => self.seconds.push_back((sec, i, o)),
        }
    }

    fn trim(&mut self, now: u64) {
        while self.seconds.front().is_some_and(|s| s.0 + SERIES_SECONDS <= now) {
            self.seconds.pop_front();
        }
    }

    /// Bytes in and out of the `window` seconds up to `now` (`now` included).
    fn sum(&self, now: u64, window: u64) -> (u64, u64) {
        self.seconds.iter().rev().take_while(|s| s.0 + window > now).fold((0, 0), |(i, o), s| (i + s.1, o + s.2))
    }
}

/// What a closed connection leaves for the sampler.
#[derive(Debug)]
struct Closing {
    route: Option<Arc<str>>,
    ip: IpAddr,
    bytes_in: u64,
    bytes_out: u64,
}

/// Bytes of connections that closed since the last tick, by route and address.
#[derive(Debug, Default)]
struct Closed {
    bytes_in: u64,
    bytes_out: u64,
    by_route: HashMap<Arc<str>, (u64, u64)>,
    by_ip: HashMap<IpAddr, (u64, u64)>,
}

#[derive(Debug, Default)]
struct State {
    samples: VecDeque<Sample>,
    /// The unix second of the last tick.
    last_sec: u64,
    requests_seen: u64,
    routes: HashMap<Arc<str>, Series>,
    /// Bytes per route since the proxy object was made (Prometheus counters).
    route_totals: HashMap<Arc<str>, (u64, u64)>,
    /// Closed connections per route since the proxy object was made.
    route_connections: HashMap<Arc<str>, u64>,
    ips: HashMap<IpAddr, Series>,
    other_ips: Series,
    closed: Closed,
}

/// The metrics of one proxy object (kept across `stop`/`start`, like its connection registry).
#[derive(Debug)]
pub struct Metrics {
    enabled: AtomicBool,
    retention: AtomicUsize,
    /// HTTP requests on HTTP routes, plus connections on layer-4 routes.
    pub requests: Counter,
    /// Connections by lifetime, in milliseconds.
    pub conn_duration_ms: Histogram,
    /// Connections by bytes received from the client, and sent to it.
    pub conn_bytes_in: Histogram,
    pub conn_bytes_out: Histogram,
    /// HTTP requests by time to the end of the answer, in microseconds.
    pub request_duration_us: Histogram,
    pub tls_handshakes: AtomicU64,
    pub tls_handshake_failures: AtomicU64,
    pub backend_connect_errors: AtomicU64,
    /// HTTP answers by status class of requests no route forwarded (refusals, errors).
    pub unrouted_status: [AtomicU64; 5],
    /// Connections closed since they were last folded into `state`, per thread.
    closing: [Padded<Mutex<Vec<Closing>>>; SHARDS],
    state: Mutex<State>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            enabled: AtomicBool::new(true),
            retention: AtomicUsize::new(DEFAULT_RETENTION),
            requests: Counter::default(),
            conn_duration_ms: Histogram::default(),
            conn_bytes_in: Histogram::default(),
            conn_bytes_out: Histogram::default(),
            request_duration_us: Histogram::default(),
            tls_handshakes: AtomicU64::new(0),
            tls_handshake_failures: AtomicU64::new(0),
            backend_connect_errors: AtomicU64::new(0),
            unrouted_status: Default::default(),
            closing: Default::default(),
            state: Mutex::new(State::default()),
        }
    }
}

/// The index of a status class (`1xx` → 0 … `5xx` → 4).
pub fn status_class(status: u16) -> Option<usize> {
    (100..600).contains(&status).then(|| usize::from(status / 100 - 1))
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Folds closed connections into the books: the per-route connection counter, and their bytes
/// into the next sample.
fn fold(st: &mut State, batch: Vec<Closing>) {
    for c in batch {
        if let Some(r) = &c.route {
            *st.route_connections.entry(r.clone()).or_default() += 1;
        }
        if c.bytes_in == 0 && c.bytes_out == 0 {
            continue;
        }
        let closed = &mut st.closed;
        closed.bytes_in += c.bytes_in;
        closed.bytes_out += c.bytes_out;
        let e = closed.by_route.entry(c.route.unwrap_or_else(|| Arc::from(""))).or_default();
        e.0 += c.bytes_in;
        e.1 += c.bytes_out;
        let e = closed.by_ip.entry(c.ip).or_default();
        e.0 += c.bytes_in;
        e.1 += c.bytes_out;
    }
}

/// What a record moved since it was last looked at (each byte reported once).
fn take_delta(rec: &ConnRecord) -> (u64, u64) {
    let i = rec.bytes_in.load(Ordering::Relaxed);
    let o = rec.bytes_out.load(Ordering::Relaxed);
    let pi = rec.sampled_in.fetch_max(i, Ordering::Relaxed);
    let po = rec.sampled_out.fetch_max(o, Ordering::Relaxed);
    (i.saturating_sub(pi), o.saturating_sub(po))
}

impl Metrics {
    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// `metrics.enabled` and `metrics.retentionSeconds` of the running configuration.
    pub fn configure(&self, enabled: bool, retention_seconds: usize) {
        self.enabled.store(enabled, Ordering::Relaxed);
        self.retention.store(retention_seconds.max(1), Ordering::Relaxed);
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Counts one request (an HTTP request, or a layer-4 connection).
    #[inline]
    pub fn request(&self) {
        self.requests.add(1);
    }

    /// A connection leaves: its size and age go to the histograms, its route and its bytes not
    /// yet sampled to its thread's queue for the next sample (with metrics off only its route,
    /// for the per-route connection counter).
    pub fn close(&self, rec: &ConnRecord) {
        let (bytes_in, bytes_out) = if self.enabled() {
            self.conn_duration_ms.record(rec.started.elapsed().as_millis() as u64);
            self.conn_bytes_in.record(rec.bytes_in.load(Ordering::Relaxed));
            self.conn_bytes_out.record(rec.bytes_out.load(Ordering::Relaxed));
            take_delta(rec)
        } else {
            (0, 0)
        };
        let route = rec.route_name_arc();
        if route.is_none() && bytes_in == 0 && bytes_out == 0 {
            return;
        }
        let mut q = lock(&self.closing[shard::index()].0);
        q.push(Closing { route, ip: rec.client_ip, bytes_in, bytes_out });
        if q.len() >= FOLD_AT {
            let batch = std::mem::take(&mut *q);
            drop(q);
            fold(&mut self.lock(), batch);
        }
    }

    /// Moves every thread's queue of closed connections into `st`.
    fn fold_closing(&self, st: &mut State) {
        for q in &self.closing {
            let batch = std::mem::take(&mut *lock(&q.0));
            fold(st, batch);
        }
    }

    /// Takes one second's sample from the live connections and those that closed.
    pub fn tick(&self, registry: &Registry) {
        if !self.enabled() {
            return;
        }
        let at_ms = now_ms();
        self.tick_at(registry, at_ms);
    }

    fn tick_at(&self, registry: &Registry, at_ms: u64) {
        let sec = at_ms / 1000;
        let mut live: Vec<(Option<Arc<str>>, IpAddr, u64, u64)> = Vec::new();
        registry.for_each(|rec| {
            let (i, o) = take_delta(rec);
            if i > 0 || o > 0 {
                live.push((rec.route_name_arc(), rec.client_ip, i, o));
            }
        });
        let requests = self.requests.get();
        let retention = self.retention.load(Ordering::Relaxed);
        let mut st = self.lock();
        let st = &mut *st;
        self.fold_closing(st);
        let closed = std::mem::take(&mut st.closed);
        let mut sample = Sample {
            at_ms,
            bytes_in: closed.bytes_in,
            bytes_out: closed.bytes_out,
            requests: requests - st.requests_seen.min(requests),
        };
        st.requests_seen = requests;
        let unrouted: Arc<str> = Arc::from("");
        // Totals by route count every byte once (connections without a route under ""); series
        // exist for routes and addresses.
        let total = |st: &mut State, route: &Option<Arc<str>>, i: u64, o: u64| {
            let t = st.route_totals.entry(route.clone().unwrap_or_else(|| unrouted.clone())).or_default();
            t.0 += i;
            t.1 += o;
        };
        let series = |st: &mut State, route: Option<Arc<str>>, ip: Option<IpAddr>, i: u64, o: u64| {
            if let Some(r) = route.filter(|r| !r.is_empty()) {
                st.routes.entry(r).or_default().add(sec, i, o);
            }
            if let Some(ip) = ip {
                if let Some(s) = st.ips.get_mut(&ip) {
                    s.add(sec, i, o);
                } else if st.ips.len() < MAX_IPS {
                    st.ips.entry(ip).or_default().add(sec, i, o);
                } else {
                    st.other_ips.add(sec, i, o);
                }
            }
        };
        for (r, (i, o)) in closed.by_route {
            let r = Some(r);
            total(st, &r, i, o);
            series(st, r, None, i, o);
        }
        for (ip, (i, o)) in closed.by_ip {
            series(st, None, Some(ip), i, o);
        }
        for (r, ip, i, o) in live {
            sample.bytes_in += i;
            sample.bytes_out += o;
            total(st, &r, i, o);
            series(st, r, Some(ip), i, o);
        }
        st.samples.push_back(sample);
        while st.samples.len() > retention {
            st.samples.pop_front();
        }
        st.last_sec = sec;
        for s in st.routes.values_mut() {
            s.trim(sec);
        }
        st.routes.retain(|_, s| !s.seconds.is_empty());
        for s in st.ips.values_mut() {
            s.trim(sec);
        }
        st.ips.retain(|_, s| !s.seconds.is_empty());
        st.other_ips.trim(sec);
    }

    /// Bytes per second over the last `seconds` seconds (the window's bytes divided by its
    /// length, also while the proxy has been up for less).
    pub fn throughput(&self, seconds: u64) -> Rate {
        let seconds = seconds.max(1);
        let st = self.lock();
        let (i, o) = st
            .samples
            .iter()
            .rev()
            .take(seconds as usize)
            .fold((0u64, 0u64), |(i, o), s| (i + s.bytes_in, o + s.bytes_out));
        Rate { bytes_in: i as f64 / seconds as f64, bytes_out: o as f64 / seconds as f64 }
    }

    /// The samples of the last `seconds` seconds, oldest first.
    pub fn history(&self, seconds: u64) -> Vec<Sample> {
        let st = self.lock();
        let n = st.samples.len().min(seconds as usize);
        st.samples.iter().skip(st.samples.len() - n).copied().collect()
    }

    /// Requests in the last `seconds` seconds.
    pub fn requests_in(&self, seconds: u64) -> u64 {
        self.lock().samples.iter().rev().take(seconds as usize).map(|s| s.requests).sum()
    }

    /// Rates per route over the last `window` seconds (at most [`SERIES_SECONDS`]).
    pub fn by_route(&self, window: u64) -> Vec<(Arc<str>, Rate)> {
        let window = window.clamp(1, SERIES_SECONDS);
        let st = self.lock();
        st.routes
            .iter()
            .map(|(r, s)| (r.clone(), rate(s.sum(st.last_sec, window), window)))
            .filter(|(_, r)| r.bytes_in > 0.0 || r.bytes_out > 0.0)
            .collect()
    }

    /// Rates per client address over the last `window` seconds; the addresses beyond
    /// [`MAX_IPS`] are summed under [`OTHER_IPS`].
    pub fn by_ip(&self, window: u64) -> Vec<(String, Rate)> {
        let window = window.clamp(1, SERIES_SECONDS);
        let st = self.lock();
        let mut out: Vec<(String, Rate)> = st
            .ips
            .iter()
            .map(|(ip, s)| (ip.to_string(), rate(s.sum(st.last_sec, window), window)))
            .filter(|(_, r)| r.bytes_in > 0.0 || r.bytes_out > 0.0)
            .collect();
        let other = rate(st.other_ips.sum(st.last_sec, window), window);
        if other.bytes_in > 0.0 || other.bytes_out > 0.0 {
            out.push((OTHER_IPS.to_owned(), other));
        }
        out
    }

    /// Bytes per route since the proxy object was made (sampled once a second); connections
    /// without a route under "".
    pub fn route_totals(&self) -> Vec<(Arc<str>, u64, u64)> {
        self.lock().route_totals.iter().map(|(r, (i, o))| (r.clone(), *i, *o)).collect()
    }

    /// Closed connections per route since the proxy object was made.
    pub fn route_connections(&self) -> HashMap<Arc<str>, u64> {
        let mut st = self.lock();
        self.fold_closing(&mut st);
        st.route_connections.clone()
    }

    /// Addresses with a series of their own (tests).
    pub fn tracked_ips(&self) -> usize {
        self.lock().ips.len()
    }
}

fn rate((i, o): (u64, u64), window: u64) -> Rate {
    Rate { bytes_in: i as f64 / window as f64, bytes_out: o as f64 / window as f64 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::IpLimits;

    #[test]
    fn bytes_are_counted_once_whether_sampled_live_or_at_close() {
        let reg = Arc::new(Registry::default());
        let m = &reg.metrics;
        let g = reg.open("10.0.0.1".parse().unwrap(), 1, 80, IpLimits::default()).unwrap();
        g.rec.bytes_in.fetch_add(1000, Ordering::Relaxed);
        g.rec.bytes_out.fetch_add(50, Ordering::Relaxed);
        m.tick_at(&reg, 10_000);
        g.rec.bytes_in.fetch_add(500, Ordering::Relaxed);
        drop(g); // closes: its last 500 bytes wait for the next tick
        m.tick_at(&reg, 11_000);
        m.tick_at(&reg, 12_000);
        let h = m.history(10);
        assert_eq!(h.iter().map(|s| (s.bytes_in, s.bytes_out)).collect::<Vec<_>>(), [(1000, 50), (500, 0), (0, 0)]);
        assert_eq!(m.throughput(1), Rate { bytes_in: 0.0, bytes_out: 0.0 });
        assert_eq!(m.throughput(3).bytes_in, 500.0);
        // A window longer than the run divides by the window.
        assert_eq!(m.throughput(10).bytes_in, 150.0);
        assert_eq!(m.by_ip(3), vec![("10.0.0.1".to_owned(), Rate { bytes_in: 500.0, bytes_out: 50.0 / 3.0 })]);
        assert_eq!(m.conn_bytes_in.count(), 1);
    }

    #[test]
    fn addresses_beyond_the_cap_are_summed() {
        let reg = Arc::new(Registry::default());
        let m = &reg.metrics;
        let mut guards = Vec::new();
        for i in 0..(MAX_IPS as u32 + 100) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            let g = reg.open(ip, 1, 80, IpLimits::default()).unwrap();
            g.rec.bytes_in.fetch_add(10, Ordering::Relaxed);
            guards.push(g);
        }
        m.tick_at(&reg, 5_000);
        assert_eq!(m.tracked_ips(), MAX_IPS);
        let by = m.by_ip(1);
        assert_eq!(by.len(), MAX_IPS + 1);
        let other = by.iter().find(|(k, _)| k == OTHER_IPS).unwrap().1;
        assert_eq!(other.bytes_in, 1000.0);
        // Quiet addresses leave after the series window.
        drop(guards);
        m.tick_at(&reg, 5_000 + SERIES_SECONDS * 1000 + 1000);
        assert_eq!(m.tracked_ips(), 0);
    }

    /// Closes on many threads without a sampler: queues stay bounded, every close is counted,
    /// and with metrics off nothing but the route's connection count is kept.
    #[test]
    fn closes_are_counted_and_queues_stay_bounded() {
        let reg = Arc::new(Registry::default());
        reg.metrics.configure(false, 10);
        let route: Arc<str> = Arc::from("r");
        let threads: Vec<_> = (0..3)
            .map(|t| {
                let (reg, route) = (reg.clone(), route.clone());
                std::thread::spawn(move || {
                    for i in 0..3000u32 {
                        let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + t * 10_000 + i));
                        let g = reg.open(ip, 1, 80, IpLimits::default()).unwrap();
                        let _ = g.rec.route_name.set(route.clone());
                        g.rec.bytes_in.fetch_add(7, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        let m = &reg.metrics;
        assert!(m.closing.iter().all(|q| lock(&q.0).len() < FOLD_AT));
        assert_eq!(m.route_connections().get("r"), Some(&9000));
        assert_eq!(m.conn_bytes_in.count(), 0);
        assert!(lock(&m.state).closed.by_ip.is_empty());
        // On: the bytes and sizes are kept.
        m.configure(true, 10);
        let g = reg.open("10.9.9.9".parse().unwrap(), 1, 80, IpLimits::default()).unwrap();
        g.rec.bytes_in.fetch_add(5, Ordering::Relaxed);
        drop(g);
        m.tick_at(&reg, 1_000);
        assert_eq!(m.history(1)[0].bytes_in, 5);
        assert_eq!(m.conn_bytes_in.count(), 1);
    }
}
