//! The compiled route table: routes sorted by priority (highest first, ties in configuration
//! order, spec §6.1), indexed by listening port. Built once per `updateRoutes` and shared as an
//! immutable snapshot; the per-connection path only reads it. Each route holds a handle to its
//! runtime state ([`crate::state::RouteState`]: connection count, cursors, rate windows), which
//! belongs to the route-state registry and survives updates that keep the route.

use super::index::PortRoutes;
#[cfg(test)]
use super::normalize_host;
use super::{ports_contain, HeaderMatcher};
use crate::config::{http_only_feature, Route, RouteAction, Target, TargetPort, TlsMode};
use crate::detect::TlsVersion;
use crate::error::ConfigError;
use crate::state::{RouteState, RouteStates};
use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// A route compiled for matching, with the handle of its runtime state.
#[derive(Debug)]
pub struct CompiledRoute {
    pub route: Route,
    /// Matching needs the first bytes (domains, path, headers or TLS version are set).
    pub needs_data: bool,
    /// Targets sorted by priority, highest first.
    targets: Vec<Target>,
    /// [`CompiledRoute::display_name`], shared by the records of its connections.
    pub name: Arc<str>,
    /// Runtime state (owned by the registry, kept across updates that keep the route).
    pub state: Arc<RouteState>,
}

impl CompiledRoute {
    fn new(route: Route, state: Option<Arc<RouteState>>) -> Self {
        let RouteAction::Forward(f) = &route.action;
        let h = &f.http;
        let http_features = !h.request_headers.is_empty()
            || !h.response_headers.is_empty()
            || h.cors.is_some()
            || h.url_rewrite.is_some()
            || h.websocket.is_some()
            || h.request_timeout.is_some()
            || http_only_feature(&route.security, h).is_some();
        let needs_data = !route.domains.is_empty()
            || route.path.is_some()
            || !route.headers.is_empty()
            || !route.tls_versions.is_empty()
            || http_features
            || f.tls.as_ref().is_some_and(|t| t.mode.terminates());
        let mut targets = f.targets.clone();
        // Stable sort: equal priorities keep configuration order.
        targets.sort_by(|a, b| b.priority.total_cmp(&a.priority));
        let name = Arc::from(route.name.clone().unwrap_or_else(|| format!("route-{}", route.index)));
        let state = state.unwrap_or_else(|| Arc::new(RouteState::fresh(&route, targets.len())));
        CompiledRoute { route, needs_data, targets, name, state }
    }

    /// Targets of the route (sorted by priority).
    pub fn target_count(&self) -> usize {
        self.targets.len()
    }

    /// The route's name, or `route-<index>` for unnamed routes (metrics and logs key).
    pub fn display_name(&self) -> String {
        self.name.to_string()
    }

    pub fn tls_mode(&self) -> Option<TlsMode> {
        let RouteAction::Forward(f) = &self.route.action;
        f.tls.as_ref().map(|t| t.mode)
    }

    /// The JavaScript socket handler of a `socket-handler` route.
    pub fn socket_handler(&self) -> Option<u32> {
        self.forward().socket_handler
    }

    /// Whether the route only makes sense per HTTP request ([`http_only_feature`]): a connection
    /// that is not HTTP is never relayed around it.
    pub fn http_only(&self) -> bool {
        http_only_feature(&self.route.security, &self.forward().http).is_some()
    }

    pub fn forward(&self) -> &crate::config::ForwardAction {
        let RouteAction::Forward(f) = &self.route.action;
        f
    }

    /// Whether this route can serve requests of an HTTP connection that is TLS-terminated
    /// (`tls == true`) or plain.
    pub fn serves_http(&self, tls: bool) -> bool {
        match self.tls_mode() {
            None => !tls,
            Some(m) => tls && m.terminates(),
        }
    }
}

/// What the table can decide from the port and client IP alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Early {
    /// This route matches whatever the client sends (index into the table).
    Route(usize),
    /// A route that inspects the first bytes comes first: peek before deciding.
    NeedData,
    /// No route on this port can match this client.
    NoMatch,
}

/// What matching needs from an HTTP request: implemented by the sniffed first request head and
/// by each request the HTTP layer serves.
pub trait HttpView {
    fn method(&self) -> &str;
    /// Path without the query string.
    fn path(&self) -> &str;
    /// First value of a header, by lower-case name.
    fn header(&self, name: &str) -> Option<&str>;
}

impl HttpView for crate::detect::HttpHead {
    fn method(&self) -> &str {
        &self.method
    }
    fn path(&self) -> &str {
        &self.path
    }
    fn header(&self, name: &str) -> Option<&str> {
        crate::detect::HttpHead::header(self, name)
    }
}

/// Everything known about a connection when matching.
#[derive(Clone, Copy)]
pub struct MatchInput<'a> {
    pub port: u16,
    pub client_ip: IpAddr,
    /// SNI for TLS, the Host header (without port) for HTTP; normalised.
    pub domain: Option<&'a str>,
    pub http: Option<&'a (dyn HttpView + Sync)>,
    pub tls_version: Option<TlsVersion>,
}

/// A chosen backend. With `host_fn` / `port_fn` set, that part comes from a JavaScript function
/// of the route context ([`crate::js::resolve_target`]) and the field is a placeholder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectedTarget {
    pub host: String,
    pub port: u16,
    pub host_fn: Option<u32>,
    pub port_fn: Option<u32>,
    /// The target's `sendProxyProtocol`, else its route's; `None`: the global option applies.
    pub send_proxy: Option<crate::config::SendProxy>,
}

impl SelectedTarget {
    pub fn fixed(host: String, port: u16) -> Self {
        SelectedTarget { host, port, host_fn: None, port_fn: None, send_proxy: None }
    }
}

/// The immutable routing snapshot.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Arc<CompiledRoute>>,
    by_port: HashMap<u16, PortRoutes>,
}

impl RouteTable {
    /// Compiles validated routes with fresh runtime state. Disabled routes are left out.
    pub fn new(routes: Vec<Route>) -> Self {
        Self::compile(routes, |_| None)
    }

    /// Compiles validated routes with their states from `states` (kept for unchanged routes,
    /// made by `make` for the others).
    pub fn with_states(
        routes: Vec<Route>,
        states: &RouteStates,
        make: impl FnMut(&Route) -> Result<RouteState, ConfigError>,
    ) -> Result<Self, ConfigError> {
        let routes = Self::enabled_in_order(routes);
        let mut found = states.resolve(&routes, make)?.into_iter();
        Ok(Self::compile(routes, move |_| found.next()))
    }

    fn enabled_in_order(routes: Vec<Route>) -> Vec<Route> {
        let mut routes: Vec<Route> = routes.into_iter().filter(|r| r.enabled).collect();
        routes.sort_by(|a, b| b.priority.total_cmp(&a.priority).then(a.index.cmp(&b.index)));
        routes
    }

    fn compile(routes: Vec<Route>, mut state: impl FnMut(&Route) -> Option<Arc<RouteState>>) -> Self {
        let routes: Vec<Arc<CompiledRoute>> = Self::enabled_in_order(routes)
            .into_iter()
            .map(|r| {
                let s = state(&r);
                Arc::new(CompiledRoute::new(r, s))
            })
            .collect();
        let mut by_port: HashMap<u16, Vec<usize>> = HashMap::new();
        for (i, r) in routes.iter().enumerate() {
            let mut seen = BTreeSet::new();
            for range in &r.route.ports {
                for p in range.iter() {
                    if seen.insert(p) {
                        by_port.entry(p).or_default().push(i);
                    }
                }
            }
        }
        let by_port = by_port.into_iter().map(|(p, all)| (p, PortRoutes::build(all, &routes))).collect();
        RouteTable { routes, by_port }
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    pub fn route(&self, idx: usize) -> &Arc<CompiledRoute> {
        &self.routes[idx]
    }

    pub fn routes(&self) -> &[Arc<CompiledRoute>] {
        &self.routes
    }

    /// Ports the routes listen on, with how many routes use each.
    pub fn port_counts(&self) -> HashMap<u16, usize> {
        self.by_port.iter().map(|(p, v)| (*p, v.all.len())).collect()
    }

    fn candidates(&self, port: u16) -> &[usize] {
        self.by_port.get(&port).map_or(&[], |r| r.all.as_slice())
    }

    /// Whether any route on `port` is a TLS passthrough route (used to answer failures with an alert).
    pub fn port_has_tls(&self, port: u16) -> bool {
        self.by_port.get(&port).is_some_and(|r| r.has_tls)
    }

    /// Whether every route on `port` is decided from port and client IP alone and relays the
    /// connection's bytes untouched, so nothing needs to look at them (ports without routes too).
    pub fn port_relays_blind(&self, port: u16) -> bool {
        self.by_port.get(&port).is_none_or(|r| r.blind_relay)
    }

    /// Decides from port and client IP alone, if possible.
    pub fn early(&self, port: u16, ip: IpAddr) -> Early {
        for &i in self.candidates(port) {
            let r = &self.routes[i];
            if r.needs_data {
                return Early::NeedData;
            }
            if ip_ok(&r.route.client_ip, ip) {
                return Early::Route(i);
            }
        }
        Early::NoMatch
    }

    /// Full match: the first route (in priority order) whose every criterion holds.
    pub fn find(&self, input: &MatchInput) -> Option<usize> {
        let port = self.by_port.get(&input.port)?;
        port.first(input.domain, |i| route_matches(&self.routes[i].route, input))
    }

    /// Per-request match inside an HTTP connection: only routes that serve HTTP on this kind of
    /// connection (terminating routes for TLS, routes without TLS for plain HTTP) are considered.
    pub fn find_http(&self, input: &MatchInput, tls: bool) -> Option<usize> {
        let port = self.by_port.get(&input.port)?;
        port.first(input.domain, |i| self.routes[i].serves_http(tls) && route_matches(&self.routes[i].route, input))
    }

    /// Whether plain HTTP on `port` goes through the HTTP layer: some route there without TLS
    /// needs to look at requests.
    pub fn port_has_plain_http_routes(&self, port: u16) -> bool {
        self.by_port.get(&port).is_some_and(|r| r.plain_http)
    }

    /// Routes of a port in priority order (for building per-port TLS configuration).
    pub fn routes_on_port(&self, port: u16) -> Vec<&Arc<CompiledRoute>> {
        self.candidates(port).iter().map(|&i| &self.routes[i]).collect()
    }

    /// Every port with routes.
    pub fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.by_port.keys().copied()
    }

    /// Chooses the backend of a route for this connection (spec §3.4): the first target, by
    /// priority, whose `match` holds; else the first target without `match`. Hosts rotate.
    pub fn select_target(&self, idx: usize, input: &MatchInput) -> Option<SelectedTarget> {
        let r = &self.routes[idx];
        let pick = r
            .targets
            .iter()
            .position(|t| t.condition.as_ref().is_some_and(|c| target_condition_holds(c, input)))
            .or_else(|| {
                if r.forward().balance_targets {
                    // loadBalancing 'round-robin': rotate among the unconditional targets.
                    let free: Vec<usize> = (0..r.targets.len()).filter(|&i| r.targets[i].condition.is_none()).collect();
                    (!free.is_empty())
                        .then(|| free[r.state.balance_cursor.fetch_add(1, Ordering::Relaxed) % free.len()])
                } else {
                    r.targets.iter().position(|t| t.condition.is_none())
                }
            })?;
        let t = &r.targets[pick];
        let host = match t.hosts.len() {
            0 => String::new(),
            1 => t.hosts[0].clone(),
            n => {
                let turn = r.state.cursors.get(pick).map_or(0, |c| c.fetch_add(1, Ordering::Relaxed));
                t.hosts[turn % n].clone()
            }
        };
        let (port, port_fn) = match t.port {
            TargetPort::Fixed(p) => (p, None),
            TargetPort::Preserve => (input.port, None),
            TargetPort::Function(f) => (0, Some(f)),
        };
        let send_proxy = t.send_proxy_protocol.or(r.forward().send_proxy_protocol);
        Some(SelectedTarget { host, port, host_fn: t.host_fn, port_fn, send_proxy })
    }
}

fn ip_ok(patterns: &[super::IpPattern], ip: IpAddr) -> bool {
    patterns.is_empty() || patterns.iter().any(|p| p.matches(ip))
}

fn headers_ok(matchers: &[HeaderMatcher], http: Option<&(dyn HttpView + Sync)>) -> bool {
    if matchers.is_empty() {
        return true;
    }
    let Some(h) = http else { return false };
    matchers.iter().all(|m| m.matches(|n| h.header(n)))
}

fn route_matches(r: &Route, input: &MatchInput) -> bool {
    if !ports_contain(&r.ports, input.port) || !ip_ok(&r.client_ip, input.client_ip) {
        return false;
    }
    if !r.domains.is_empty() {
        // A route with domains never matches a connection without one (spec §6.2).
        match input.domain {
            Some(d) if r.domains.iter().any(|p| p.matches(d)) => {}
            _ => return false,
        }
    }
    if let Some(p) = &r.path {
        match input.http {
            Some(h) if p.matches(h.path()) => {}
            _ => return false,
        }
    }
    if !r.tls_versions.is_empty() {
        match input.tls_version {
            Some(v) if r.tls_versions.contains(&v) => {}
            _ => return false,
        }
    }
    headers_ok(&r.headers, input.http)
}

fn target_condition_holds(c: &crate::config::TargetMatch, input: &MatchInput) -> bool {
    if !c.ports.is_empty() && !c.ports.contains(&input.port) {
        return false;
    }
    if let Some(p) = &c.path {
        if !input.http.is_some_and(|h| p.matches(h.path())) {
            return false;
        }
    }
    if !c.methods.is_empty() && !input.http.is_some_and(|h| c.methods.iter().any(|m| m == h.method())) {
        return false;
    }
    headers_ok(&c.headers, input.http)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_routes;
    use crate::detect::{parse_http_head, HttpHead};
    use serde_json::json;

    fn table(v: serde_json::Value) -> RouteTable {
        RouteTable::new(parse_routes(&v).unwrap())
    }

    fn input<'a>(port: u16, domain: Option<&'a str>, http: Option<&'a HttpHead>) -> MatchInput<'a> {
        let http = http.map(|h| h as &(dyn HttpView + Sync));
        MatchInput { port, client_ip: "10.0.0.1".parse().unwrap(), domain, http, tls_version: None }
    }

    fn name(t: &RouteTable, i: Option<usize>) -> Option<String> {
        i.map(|i| t.route(i).display_name())
    }

    /// The domain index of a port with many routes finds exactly what a scan of them finds:
    /// exact names, `*.suffix`, other globs, `*`, no domains, several domains per route,
    /// priorities that interleave them, and hosts in any case with a trailing dot.
    #[test]
    fn domain_index_agrees_with_a_scan() {
        let patterns: &[&[&str]] = &[
            &["a.test"],
            &["*.a.test"],
            &["b.a.test", "c.test"],
            &["*"],
            &[],
            &["x.*"],
            &["*.b.a.test"],
            &["api.*.test"],
            &["C.test"],
            &["*.test"],
            &["d.test", "*.d.test"],
            &["*a.test"],
        ];
        let mut routes = Vec::new();
        for n in 0..60usize {
            let domains = patterns[n % patterns.len()];
            let mut m = json!({"ports": 443});
            if !domains.is_empty() {
                m["domains"] = json!(domains);
            }
            if n % 7 == 3 {
                m["path"] = json!("/only");
            }
            routes.push(json!({"name": format!("r{n}"), "priority": (n * 37) % 11, "match": m,
                "action": {"type": "forward", "target": {"host": "h", "port": 1}}}));
        }
        let t = table(json!(routes));
        assert!(t.by_port[&443].all.len() >= 16);
        let hosts = [
            "a.test",
            "A.TEST.",
            "z.a.test",
            "b.a.test",
            "q.b.a.test",
            "c.test",
            "x.org",
            "api.eu.test",
            "d.test",
            "e.d.test",
            "ba.test",
            "test",
            "other",
            ".a.test",
            "a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q.r.test",
        ];
        let heads: Vec<HttpHead> = ["/only", "/"]
            .iter()
            .map(|p| parse_http_head(format!("GET {p} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).unwrap())
            .collect();
        for host in hosts.iter().map(|h| Some(normalize_host(h).into_owned())).chain([None]) {
            for head in heads.iter().map(Some).chain([None]) {
                let inp = input(443, host.as_deref(), head);
                let scan = t.candidates(443).iter().copied().find(|&i| route_matches(&t.routes[i].route, &inp));
                assert_eq!(name(&t, t.find(&inp)), name(&t, scan), "host {host:?}, path {:?}", head.map(|h| h.path()));
            }
        }
    }

    #[test]
    fn priority_then_order() {
        let t = table(json!([
            {"name": "low", "match": {"ports": 80}, "action": {"type": "forward", "target": {"host": "a", "port": 1}}},
            {"name": "high", "priority": 10, "match": {"ports": [80, 81]}, "action": {"type": "forward", "target": {"host": "b", "port": 1}}},
            {"name": "tie", "priority": 10, "match": {"ports": 80}, "action": {"type": "forward", "target": {"host": "c", "port": 1}}},
            {"name": "off", "enabled": false, "priority": 99, "match": {"ports": 80}, "action": {"type": "forward", "target": {"host": "d", "port": 1}}},
        ]));
        assert_eq!(name(&t, t.find(&input(80, None, None))).as_deref(), Some("high"));
        assert_eq!(t.early(80, "1.2.3.4".parse().unwrap()), Early::Route(0));
        assert_eq!(t.early(82, "1.2.3.4".parse().unwrap()), Early::NoMatch);
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn domains_paths_headers() {
        let t = table(json!([
            {"name": "api", "match": {"ports": 80, "domains": "example.com", "path": "/api/*"}, "action": {"type": "forward", "target": {"host": "api", "port": 1}}},
            {"name": "beta", "match": {"ports": 80, "domains": ["example.com"], "headers": {"x-beta": {"$regex": "^(1|yes)$", "flags": "i"}}}, "action": {"type": "forward", "target": {"host": "beta", "port": 1}}},
            {"name": "wild", "match": {"ports": 80, "domains": "*.example.com"}, "action": {"type": "forward", "target": {"host": "w", "port": 1}}},
            {"name": "any", "match": {"ports": 80}, "action": {"type": "forward", "target": {"host": "any", "port": 1}}},
        ]));
        assert_eq!(t.early(80, "1.1.1.1".parse().unwrap()), Early::NeedData);
        let api = parse_http_head(b"GET /api/x HTTP/1.1\r\nHost: example.com\r\n\r\n").unwrap();
        let beta = parse_http_head(b"GET / HTTP/1.1\r\nHost: example.com\r\nX-Beta: YES\r\n\r\n").unwrap();
        let plain = parse_http_head(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n").unwrap();
        assert_eq!(name(&t, t.find(&input(80, Some("example.com"), Some(&api)))).as_deref(), Some("api"));
        assert_eq!(name(&t, t.find(&input(80, Some("example.com"), Some(&beta)))).as_deref(), Some("beta"));
        assert_eq!(name(&t, t.find(&input(80, Some("example.com"), Some(&plain)))).as_deref(), Some("any"));
        assert_eq!(name(&t, t.find(&input(80, Some("a.example.com"), None))).as_deref(), Some("wild"));
        assert_eq!(name(&t, t.find(&input(80, None, None))).as_deref(), Some("any"));
    }

    #[test]
    fn client_ip_and_tls_version() {
        let t = table(json!([
            {"name": "lan", "match": {"ports": 443, "clientIp": ["192.168.*.*"], "tlsVersion": ["TLSv1.3"]}, "action": {"type": "forward", "target": {"host": "x", "port": 1}}},
        ]));
        let mut i = input(443, None, None);
        i.client_ip = "192.168.1.1".parse().unwrap();
        assert_eq!(t.find(&i), None);
        i.tls_version = Some(TlsVersion::Tls13);
        assert_eq!(t.find(&i), Some(0));
        i.client_ip = "10.1.1.1".parse().unwrap();
        assert_eq!(t.find(&i), None);
    }

    #[test]
    fn targets_round_robin_preserve_and_match() {
        let t = table(json!([
            {"match": {"ports": [{"from": 9000, "to": 9002}]}, "action": {"type": "forward", "targets": [
                {"host": ["h1", "h2", "h3"], "port": "preserve"},
                {"host": "posts", "port": 7, "priority": 5, "match": {"path": "/posts/*", "method": ["get"]}},
                {"host": "ported", "port": 8, "match": {"ports": [9002]}}
            ]}},
        ]));
        let i = input(9001, None, None);
        let hosts: Vec<String> = (0..4).map(|_| t.select_target(0, &i).unwrap().host).collect();
        assert_eq!(hosts, ["h1", "h2", "h3", "h1"]);
        assert_eq!(t.select_target(0, &i).unwrap().port, 9001);
        let get = parse_http_head(b"GET /posts/1 HTTP/1.1\r\n\r\n").unwrap();
        let post = parse_http_head(b"POST /posts/1 HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(
            t.select_target(0, &input(9001, None, Some(&get))).unwrap(),
            SelectedTarget::fixed("posts".into(), 7)
        );
        assert_ne!(t.select_target(0, &input(9001, None, Some(&post))).unwrap().host, "posts");
        assert_eq!(t.select_target(0, &input(9002, None, None)).unwrap().host, "ported");
        assert_eq!(t.port_counts().len(), 3);
    }
}
