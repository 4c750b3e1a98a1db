//! The Prometheus text exposition format (version 0.0.4) of the proxy's counters. Labels are
//! bounded: routes (from the configuration), status classes, termination reasons, ports and
//! certificate domains; never client addresses.

use super::View;
use crate::metrics::hist::{self, Histogram};
use std::fmt::Write;
use std::sync::atomic::Ordering;

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// Bucket bounds of the duration histograms, in seconds.
const DURATION_BUCKETS: [f64; 12] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0];

/// A label value with `\`, `"` and line feeds escaped.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

struct Out<'a> {
    text: String,
    prefix: &'a str,
}

impl Out<'_> {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {}{name} {help}", self.prefix);
        let _ = writeln!(self.text, "# TYPE {}{name} {kind}", self.prefix);
    }

    fn line(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        if labels.is_empty() {
            let _ = writeln!(self.text, "{}{name} {value}", self.prefix);
        } else {
            let _ = writeln!(self.text, "{}{name}{{{labels}}} {value}", self.prefix);
        }
    }

    /// A histogram in seconds from one recorded in `unit` per second (1000: ms, 10^6: µs).
    fn histogram(&mut self, name: &str, help: &str, h: &Histogram, unit: f64) {
        self.head(name, "histogram", help);
        let counts = h.snapshot();
        for le in DURATION_BUCKETS {
            let n = hist::count_below(&counts, (le * unit) as u64);
            self.line(&format!("{name}_bucket"), &format!("le=\"{le}\""), n);
        }
        let count: u64 = counts.iter().sum();
        self.line(&format!("{name}_bucket"), "le=\"+Inf\"", count);
        self.line(&format!("{name}_sum"), "", h.sum() as f64 / unit);
        self.line(&format!("{name}_count"), "", count);
    }
}

/// The whole exposition, metric names starting with `prefix`.
pub fn render(view: &View, prefix: &str) -> String {
    let mut o = Out { text: String::with_capacity(8192), prefix };
    let stats = view.registry.stats();
    let m = &view.registry.metrics;
    let snap = view.snapshot.load();

    o.head("connections_active", "gauge", "Open client connections, by route (\"\" before one is chosen).");
    let mut by_route = stats.by_route.clone();
    by_route.sort();
    let routed: u64 = by_route.iter().map(|(_, n)| n).sum();
    for (r, n) in &by_route {
        o.line("connections_active", &format!("route=\"{}\"", esc(r)), n);
    }
    o.line("connections_active", "route=\"\"", stats.active.saturating_sub(routed));

    o.head("connections_total", "counter", "Client connections accepted since the proxy was created.");
    o.line("connections_total", "", stats.total);

    o.head("route_connections_total", "counter", "Connections routed, by route (closed and open).");
    let mut closed = m.route_connections();
    for (r, n) in &by_route {
        *closed.entry(r.as_str().into()).or_default() += n;
    }
    let mut closed: Vec<_> = closed.into_iter().collect();
    closed.sort();
    for (r, n) in closed {
        o.line("route_connections_total", &format!("route=\"{}\"", esc(&r)), n);
    }

    o.head("bytes_total", "counter", "Bytes from clients (in) and to clients (out), wire bytes, by route.");
    let mut totals = m.route_totals();
    totals.sort();
    for (r, i, out) in totals {
        let r = esc(&r);
        o.line("bytes_total", &format!("route=\"{r}\",direction=\"in\""), i);
        o.line("bytes_total", &format!("route=\"{r}\",direction=\"out\""), out);
    }

    o.head(
        "http_requests_total",
        "counter",
        "HTTP requests answered, by route and status class (route \"\": answered before a route forwarded it).",
    );
    let mut per_route: std::collections::BTreeMap<&str, [u64; 5]> = Default::default();
    for r in snap.table.routes() {
        let e = per_route.entry(&r.name).or_default();
        for (i, c) in r.state.http_status.iter().enumerate() {
            e[i] += c.load(Ordering::Relaxed);
        }
    }
    let unrouted: [u64; 5] = std::array::from_fn(|i| m.unrouted_status[i].load(Ordering::Relaxed));
    for (r, counts) in per_route.iter().map(|(r, c)| (*r, c)).chain(std::iter::once(("", &unrouted))) {
        for (i, n) in counts.iter().enumerate() {
            if *n > 0 {
                o.line("http_requests_total", &format!("route=\"{}\",status_class=\"{}\"", esc(r), CLASSES[i]), n);
            }
        }
    }

    o.head("requests_total", "counter", "Requests: HTTP requests on HTTP routes, connections on layer-4 routes.");
    o.line("requests_total", "", m.requests.get());

    o.histogram(
        "http_request_duration_seconds",
        "Time from a request's arrival to the end of its answer.",
        &m.request_duration_us,
        1e6,
    );
    o.histogram("connection_duration_seconds", "Lifetime of closed client connections.", &m.conn_duration_ms, 1e3);

    o.head("tls_handshakes_total", "counter", "TLS handshakes completed on terminating routes.");
    o.line("tls_handshakes_total", "", m.tls_handshakes.load(Ordering::Relaxed));
    o.head("tls_handshake_failures_total", "counter", "TLS handshakes that failed on terminating routes.");
    o.line("tls_handshake_failures_total", "", m.tls_handshake_failures.load(Ordering::Relaxed));
    o.head("backend_connect_errors_total", "counter", "Connections to backends that could not be made.");
    o.line("backend_connect_errors_total", "", m.backend_connect_errors.load(Ordering::Relaxed));

    o.head("access_log_dropped_total", "counter", "Access-log lines dropped because the writer could not keep up.");
    o.line("access_log_dropped_total", "", view.registry.access_log.load().as_ref().map_or(0, |l| l.dropped()));

    o.head("terminations_total", "counter", "Connections ended, by reason.");
    for (reason, n) in &stats.termination_incoming {
        o.line("terminations_total", &format!("reason=\"{}\"", esc(reason)), n);
    }

    o.head("throughput_bytes_per_second", "gauge", "Bytes per second over the last second, by direction.");
    let now = m.throughput(1);
    o.line("throughput_bytes_per_second", "direction=\"in\"", now.bytes_in);
    o.line("throughput_bytes_per_second", "direction=\"out\"", now.bytes_out);

    o.head("listener_up", "gauge", "Ports the proxy listens on (1 each).");
    for p in view.listening_ports() {
        o.line("listener_up", &format!("port=\"{p}\""), 1);
    }

    o.head(
        "certificate_expiry_timestamp_seconds",
        "gauge",
        "When the certificate of a route that terminates TLS expires (Unix time).",
    );
    for (route, c) in view.certificates() {
        if let Some(exp) = c.expires_ms {
            let labels =
                format!("route=\"{}\",domain=\"{}\",source=\"{}\"", esc(&route), esc(&c.domain), esc(&c.source));
            o.line("certificate_expiry_timestamp_seconds", &labels, exp / 1000);
        }
    }
    o.text
}
