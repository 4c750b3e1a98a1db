//! The certificate store: which certificate a TLS-terminating port serves for a server name.
//! It lives apart from the route table so that certificates can change without a route update
//! (ACME issuance and renewal come next) and routes can change without touching live TLS state.
//!
//! - [`StaticCerts`]: the certificates configured on routes, indexed per port (exact names in a
//!   hash map, then wildcard patterns in route priority order, then a route without domains).
//!   Built with each snapshot (pure data), installed when the snapshot is.
//! - [`CertStore`]: the current index behind an `ArcSwap`; a handshake loads it once (no lock).
//! - [`PortResolver`]: the rustls resolver of one port; it reads the store on every handshake,
//!   so a swapped index serves new handshakes at once while established sessions keep theirs.

use crate::config::{RouteAction, TlsMode};
use crate::matching::{normalize_host, CompiledRoute, DomainPattern, RouteTable};
use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::sync::Arc;

/// A certificate of the index: configured on its route, or issued for its route (ACME) and
/// looked up by the route's name in the store's issued certificates.
#[derive(Debug, Clone)]
pub enum CertRef {
    Key(Arc<CertifiedKey>),
    Issued(Arc<str>),
}

/// The certificates of one port's terminating routes.
#[derive(Debug, Default)]
pub struct SniCerts {
    exact: HashMap<String, CertRef>,
    /// `*.suffix` patterns by their suffix (`.example.com`), with their rank in route priority
    /// order: a lookup tries each of the name's suffixes, so it costs the name's label count,
    /// not the number of wildcard routes.
    wildcard_suffix: HashMap<String, (usize, CertRef)>,
    /// Other wildcard patterns (`a*.example.com`, …), with their rank; scanned.
    wildcard: Vec<(usize, DomainPattern, CertRef)>,
    /// Wildcard patterns seen so far (their rank).
    ranks: usize,
    fallback: Option<CertRef>,
}

impl SniCerts {
    /// Precedence: an exact name, then the first wildcard pattern (route priority order), then
    /// the certificate of a route without domains. `None`: the handshake is refused.
    pub fn lookup(&self, sni: Option<&str>) -> Option<CertRef> {
        let found = sni.and_then(|name| {
            let n = normalize_host(name);
            if let Some(c) = self.exact.get(&*n) {
                return Some(c.clone());
            }
            // The best-ranked wildcard: among the suffix patterns the name ends with, and the
            // other patterns that match it.
            let by_suffix = n
                .char_indices()
                .filter(|&(i, c)| c == '.' && i > 0)
                .filter_map(|(i, _)| self.wildcard_suffix.get(&n[i..]))
                .min_by_key(|(rank, _)| *rank);
            let by_scan = self.wildcard.iter().find(|(_, p, _)| p.matches(&n)).map(|(rank, _, c)| (rank, c));
            match (by_suffix, by_scan) {
                (Some((a, ca)), Some((b, cb))) => Some(if a < b { ca.clone() } else { cb.clone() }),
                (Some((_, c)), None) | (None, Some((_, c))) => Some(c.clone()),
                (None, None) => None,
            }
        });
        found.or_else(|| self.fallback.clone())
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard_suffix.is_empty() && self.wildcard.is_empty() && self.fallback.is_none()
    }

    /// Indexes the terminating routes of one port, given in priority order.
    pub fn from_routes(routes: &[&Arc<CompiledRoute>]) -> Self {
        let mut r = SniCerts::default();
        for route in routes {
            let RouteAction::Forward(f) = &route.route.action;
            let Some(tls) = &f.tls else { continue };
            if tls.mode == TlsMode::Passthrough {
                continue;
            }
            let ck = match (&tls.certificate, &tls.acme) {
                (Some(k), _) => CertRef::Key(k.clone()),
                (None, Some(_)) => CertRef::Issued(route.name.clone()),
                (None, None) => continue,
            };
            let ck = &ck;
            if route.route.domains.is_empty() {
                r.fallback.get_or_insert_with(|| ck.clone());
            }
            for d in &route.route.domains {
                if d.is_wildcard() {
                    let rank = r.ranks;
                    r.ranks += 1;
                    let p = d.as_str();
                    match p.strip_prefix('*').filter(|rest| rest.starts_with('.') && !rest.contains('*')) {
                        Some(suffix) => {
                            r.wildcard_suffix.entry(suffix.to_owned()).or_insert_with(|| (rank, ck.clone()));
                        }
                        None => r.wildcard.push((rank, d.clone(), ck.clone())),
                    }
                } else {
                    r.exact.entry(d.as_str().to_owned()).or_insert_with(|| ck.clone());
                }
            }
        }
        r
    }
}

/// The certificates configured on routes, per port.
#[derive(Debug, Default)]
pub struct StaticCerts {
    ports: HashMap<u16, SniCerts>,
}

impl StaticCerts {
    pub fn from_table(table: &RouteTable) -> Self {
        let ports = table
            .ports()
            .filter_map(|p| {
                let certs = SniCerts::from_routes(&table.routes_on_port(p));
                (!certs.is_empty()).then_some((p, certs))
            })
            .collect();
        StaticCerts { ports }
    }

    /// Ports that terminate TLS.
    pub fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.ports.keys().copied()
    }

    pub fn lookup(&self, port: u16, sni: Option<&str>) -> Option<CertRef> {
        self.ports.get(&port)?.lookup(sni)
    }
}

/// Certificates issued for routes (ACME), by route name.
pub type IssuedCerts = HashMap<Arc<str>, Arc<CertifiedKey>>;

/// The engine's current certificates, swapped atomically: those configured on routes (replaced
/// with each route table) and those issued for routes (replaced one route at a time).
#[derive(Debug, Default)]
pub struct CertStore {
    configured: ArcSwap<StaticCerts>,
    issued: ArcSwap<IssuedCerts>,
}

impl CertStore {
    /// Installs the certificates of a new route table (done with the snapshot swap).
    pub fn set_configured(&self, certs: Arc<StaticCerts>) {
        self.configured.store(certs);
    }

    /// Serves `key` for the route `route` from the next handshake on (cold: a copy of the map).
    pub fn set_issued(&self, route: &Arc<str>, key: Arc<CertifiedKey>) {
        self.set_issued_many(vec![(route.clone(), key)]);
    }

    /// [`CertStore::set_issued`] for many routes with one copy of the map (a start-up that
    /// loads thousands of stored certificates must not copy it once per certificate).
    pub fn set_issued_many(&self, keys: Vec<(Arc<str>, Arc<CertifiedKey>)>) {
        if keys.is_empty() {
            return;
        }
        self.issued.rcu(|m| {
            let mut m = IssuedCerts::clone(m);
            m.extend(keys.iter().cloned());
            m
        });
    }

    /// Stops serving the issued certificates of `routes` (one copy of the map, none when no
    /// route has one).
    pub fn remove_issued(&self, routes: &[Arc<str>]) {
        if !routes.iter().any(|r| self.issued.load().contains_key(r)) {
            return;
        }
        self.issued.rcu(|m| {
            let mut m = IssuedCerts::clone(m);
            for r in routes {
                m.remove(r);
            }
            m
        });
    }

    /// The certificate issued for `route`, if any.
    pub fn issued(&self, route: &str) -> Option<Arc<CertifiedKey>> {
        self.issued.load().get(route).cloned()
    }

    /// The certificate for a handshake on `port` naming `sni`. A route whose certificate is not
    /// issued yet gets none (an alert), never another route's.
    pub fn lookup(&self, port: u16, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        match self.configured.load().lookup(port, sni)? {
            CertRef::Key(k) => Some(k),
            CertRef::Issued(route) => self.issued.load().get(&route).cloned(),
        }
    }
}

/// Chooses the certificate of one port's handshakes from the store.
#[derive(Debug)]
pub struct PortResolver {
    pub port: u16,
    pub store: Arc<CertStore>,
}

impl ResolvesServerCert for PortResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.store.lookup(self.port, hello.server_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_routes;
    use serde_json::json;

    fn cert(name: &str) -> (String, String) {
        let k = rcgen::KeyPair::generate().unwrap();
        let c = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap().self_signed(&k).unwrap();
        (c.pem(), k.serialize_pem())
    }

    fn route(
        name: &str,
        domains: serde_json::Value,
        priority: i32,
        (cert, key): &(String, String),
    ) -> serde_json::Value {
        json!({"name": name, "priority": priority, "match": {"ports": 443, "domains": domains},
            "action": {"type": "forward", "target": {"host": "h", "port": 1},
                "tls": {"mode": "terminate", "certificate": {"cert": cert, "key": key}}}})
    }

    fn served(store: &StaticCerts, sni: Option<&str>) -> Option<Vec<u8>> {
        match store.lookup(443, sni)? {
            CertRef::Key(c) => Some(c.cert[0].to_vec()),
            CertRef::Issued(_) => None,
        }
    }

    /// Exact names win over wildcards whatever the route priority; among wildcards the route
    /// priority decides; a route without domains is the fallback, also for a missing SNI.
    #[test]
    fn sni_precedence_exact_wildcard_fallback() {
        let (exact, wild, wild_low, any) = (cert("a.example.com"), cert("*.example.com"), cert("*.com"), cert("x"));
        let glob = cert("b*.example.com");
        let routes = parse_routes(&json!([
            route("glob", json!("b*.example.com"), 20, &glob),
            route("wild", json!("*.example.com"), 10, &wild),
            route("wild-low", json!("*.com"), 5, &wild_low),
            route("exact", json!("a.example.com"), 0, &exact),
            route("any", json!(null), -1, &any),
        ]))
        .unwrap();
        let table = RouteTable::new(routes);
        let s = StaticCerts::from_table(&table);
        let der = |c: &(String, String)| parse_pem(&c.0);
        assert_eq!(served(&s, Some("a.example.com")), Some(der(&exact)));
        assert_eq!(served(&s, Some("A.Example.COM.")), Some(der(&exact)), "names are normalised");
        assert_eq!(served(&s, Some("b.example.com")), Some(der(&glob)), "a higher-priority glob wins");
        assert_eq!(served(&s, Some("c.example.com")), Some(der(&wild)));
        assert_eq!(served(&s, Some("deep.c.example.com")), Some(der(&wild)), "any depth");
        assert_eq!(served(&s, Some("other.com")), Some(der(&wild_low)));
        assert_eq!(served(&s, Some("nothing.org")), Some(der(&any)));
        assert_eq!(served(&s, None), Some(der(&any)));
        assert_eq!(s.lookup(444, Some("a.example.com")).map(|_| ()), None, "other ports serve nothing");
        // Without a catch-all route, unknown names and a missing SNI get nothing (an alert).
        let routes = parse_routes(&json!([route("exact", json!("a.example.com"), 0, &exact)])).unwrap();
        let s = StaticCerts::from_table(&RouteTable::new(routes));
        assert_eq!(served(&s, Some("b.example.com")), None);
        assert_eq!(served(&s, None), None);
    }

    #[test]
    fn the_store_swaps_certificates_for_new_lookups() {
        let (a, b) = (cert("a.test"), cert("a.test"));
        let build = |c: &(String, String)| {
            let routes = parse_routes(&json!([route("r", json!("a.test"), 0, c)])).unwrap();
            Arc::new(StaticCerts::from_table(&RouteTable::new(routes)))
        };
        let store = Arc::new(CertStore::default());
        assert!(store.lookup(443, Some("a.test")).is_none());
        store.set_configured(build(&a));
        let first = store.lookup(443, Some("a.test")).unwrap();
        store.set_configured(build(&b));
        let second = store.lookup(443, Some("a.test")).unwrap();
        assert_ne!(first.cert[0], second.cert[0]);
    }

    /// An `'auto'` route's names are served its issued certificate once there is one, and
    /// nothing before (not the catch-all route's certificate).
    #[test]
    fn issued_certificates_are_served_by_route() {
        let (fallback, issued) = (cert("x"), cert("auto.test"));
        let routes = parse_routes(&json!([
            {"name": "auto", "match": {"ports": 443, "domains": "auto.test"},
             "action": {"type": "forward", "target": {"host": "h", "port": 1}, "tls": {"mode": "terminate", "certificate": "auto"}}},
            route("any", json!(null), -1, &fallback),
        ]))
        .unwrap();
        let store = CertStore::default();
        store.set_configured(Arc::new(StaticCerts::from_table(&RouteTable::new(routes))));
        assert!(store.lookup(443, Some("auto.test")).is_none(), "not issued yet: no certificate");
        assert!(store.lookup(443, Some("other.test")).is_some(), "the catch-all serves other names");
        let key = crate::tls::certified_key(&issued.0, &issued.1, None).unwrap();
        store.set_issued(&Arc::from("auto"), key.clone());
        assert_eq!(store.lookup(443, Some("auto.test")).unwrap().cert[0], key.cert[0]);
        store.remove_issued(&[Arc::from("auto")]);
        assert!(store.lookup(443, Some("auto.test")).is_none());
    }

    fn parse_pem(pem: &str) -> Vec<u8> {
        super::super::pem::parse_certs(pem).unwrap()[0].to_vec()
    }
}
