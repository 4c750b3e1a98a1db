//! What operators read: the Prometheus text ([`prometheus`]), `/status.json`, and the listener
//! that serves them ([`server`]). A [`View`] holds shared handles to the proxy's registry,
//! snapshot, ACME state and ports, so readers never wait for a lifecycle operation.

pub mod prometheus;
pub mod server;

use crate::conn::Registry;
use crate::proxy::CertificateStatus;
use crate::snapshot::Snapshot;
use arc_swap::ArcSwap;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};

#[derive(Clone)]
pub struct View {
    pub registry: Arc<Registry>,
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub acme: Arc<Mutex<Option<Arc<crate::acme::Acme>>>>,
    pub ports: Arc<Mutex<Vec<u16>>>,
}

/// The running routes, the first of each name (names may repeat).
fn first_by_name(snap: &Snapshot) -> Vec<&Arc<crate::matching::CompiledRoute>> {
    let mut seen = std::collections::HashSet::new();
    snap.table.routes().iter().filter(|r| seen.insert(r.name.clone())).collect()
}

fn now_ms() -> i64 {
    crate::metrics::now_ms() as i64
}

impl View {
    pub fn listening_ports(&self) -> Vec<u16> {
        self.ports.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The status of a route's certificate: an `'auto'` route's from ACME, a configured
    /// certificate's from its X.509 validity. `None`: no running route of that name terminates TLS.
    pub fn certificate_status(&self, route: &str) -> Option<CertificateStatus> {
        let acme = self.acme.lock().unwrap_or_else(|p| p.into_inner()).clone()?;
        if let Some(s) = acme.status(route) {
            return Some(CertificateStatus {
                domain: s.domain,
                status: s.state.as_str(),
                issued_ms: s.issued_ms,
                expires_ms: s.expires_ms,
                source: s.source,
                error: s.error,
            });
        }
        let snap = self.snapshot.load();
        let r = snap.table.routes().iter().find(|r| &*r.name == route)?;
        let key = r.forward().tls.as_ref()?.certificate.as_ref()?;
        let (issued, expires) = crate::tls::validity_of(key.cert.first()?).ok()?;
        Some(CertificateStatus {
            domain: r.route.domains.first().map(|d| d.as_str().to_owned()).unwrap_or_default(),
            status: if expires <= now_ms() { "expired" } else { "valid" },
            issued_ms: Some(issued),
            expires_ms: Some(expires),
            source: "static".into(),
            error: None,
        })
    }

    /// The certificates of every running route that terminates TLS, by route name.
    pub fn certificates(&self) -> Vec<(String, CertificateStatus)> {
        first_by_name(&self.snapshot.load())
            .into_iter()
            .filter_map(|r| self.certificate_status(&r.name).map(|c| (r.name.to_string(), c)))
            .collect()
    }

    /// `/status.json`: listeners, routes with live connections and rates, the last minutes of
    /// traffic, top client addresses, termination reasons, certificates.
    pub fn status_json(&self) -> Value {
        let stats = self.registry.stats();
        let m = &self.registry.metrics;
        let rates: std::collections::HashMap<String, crate::metrics::Rate> =
            m.by_route(10).into_iter().map(|(k, r)| (k.to_string(), r)).collect();
        let active: std::collections::HashMap<&str, u64> =
            stats.by_route.iter().map(|(k, n)| (k.as_str(), *n)).collect();
        let snap = self.snapshot.load();
        let routes: Vec<Value> = first_by_name(&snap)
            .into_iter()
            .map(|r| {
                let rate = rates.get(&*r.name).copied().unwrap_or_default();
                json!({
                    "name": &*r.name,
                    "ports": r.route.ports.iter().map(|p| if p.from == p.to { p.from.to_string() } else { format!("{}-{}", p.from, p.to) }).collect::<Vec<_>>(),
                    "domains": r.route.domains.iter().map(|d| d.as_str()).collect::<Vec<_>>(),
                    "active": active.get(&*r.name).copied().unwrap_or(0),
                    "in": rate.bytes_in,
                    "out": rate.bytes_out,
                })
            })
            .collect();
        let mut ips = stats.by_ip.clone();
        ips.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
        ips.truncate(10);
        let history: Vec<Value> =
            m.history(300).iter().map(|s| json!([s.at_ms, s.bytes_in, s.bytes_out, s.requests])).collect();
        let now = m.throughput(1);
        let certificates: Vec<Value> = self
            .certificates()
            .into_iter()
            .map(|(route, c)| {
                json!({ "route": route, "domain": c.domain, "status": c.status, "source": c.source,
                        "expires": c.expires_ms, "error": c.error })
            })
            .collect();
        json!({
            "time": now_ms(),
            "listeners": self.listening_ports(),
            "connections": { "active": stats.active, "total": stats.total },
            "bytes": { "in": stats.bytes_in, "out": stats.bytes_out },
            "throughput": { "in": now.bytes_in, "out": now.bytes_out },
            "requests": { "total": m.requests.get(), "perSecond": m.requests_in(1) },
            "routes": routes,
            "topIPs": ips.iter().map(|(ip, n)| json!({ "ip": ip.to_string(), "count": n })).collect::<Vec<_>>(),
            "terminations": stats.termination_incoming.iter().map(|(k, n)| (k.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "history": history,
            "certificates": certificates,
        })
    }
}
