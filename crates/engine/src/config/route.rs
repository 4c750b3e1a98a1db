//! Routes: `match` (ports, domains, client IPs, path, headers, TLS versions) and the
//! `forward` / `socket-handler` action with its targets; validation with the route's name or
//! index and the field path in every error.

use super::reader::{each, join, opt, At, ReadResult};
use super::*;

/// The action of a route: `type: 'forward'` (targets), or `type: 'socket-handler'`
/// (`socket_handler` set, no targets).
#[derive(Debug, Clone)]
pub struct ForwardAction {
    /// `action.socketHandler`: the JavaScript handler that receives the connection's socket.
    pub socket_handler: Option<u32>,
    pub targets: Vec<Target>,
    pub tls: Option<RouteTls>,
    pub http: HttpOptions,
    /// `loadBalancing.algorithm: 'round-robin'` was asked for: rotate among unconditional targets.
    pub balance_targets: bool,
    /// `action.sendProxyProtocol`, when given (else the global option applies).
    pub send_proxy_protocol: Option<SendProxy>,
}

/// `target.port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetPort {
    Fixed(u16),
    /// Use the port the connection arrived on.
    Preserve,
    /// A JavaScript function of the route context (its id in the facade's registry).
    Function(u32),
}

/// A per-target sub-match (`targets[].match`, 20+).
#[derive(Debug, Clone, Default)]
pub struct TargetMatch {
    pub ports: Vec<u16>,
    pub path: Option<PathPattern>,
    pub headers: Vec<HeaderMatcher>,
    /// Upper-cased HTTP methods.
    pub methods: Vec<String>,
}

/// One backend destination; several hosts are used round-robin.
#[derive(Debug, Clone)]
pub struct Target {
    /// Static hosts (round-robin); empty when `host_fn` is set.
    pub hosts: Vec<String>,
    /// `host` as a JavaScript function of the route context.
    pub host_fn: Option<u32>,
    pub port: TargetPort,
    pub priority: f64,
    pub condition: Option<TargetMatch>,
    /// `target.sendProxyProtocol`, when given (else the route's, else the global option).
    pub send_proxy_protocol: Option<SendProxy>,
}

#[derive(Debug, Clone)]
pub enum RouteAction {
    Forward(ForwardAction),
}

/// A validated route.
#[derive(Debug, Clone)]
pub struct Route {
    /// Position in the configuration (ties in priority keep this order).
    pub index: usize,
    pub id: Option<String>,
    pub name: Option<String>,
    pub priority: f64,
    pub enabled: bool,
    pub ports: Vec<PortRange>,
    pub domains: Vec<DomainPattern>,
    pub client_ip: Vec<IpPattern>,
    pub path: Option<PathPattern>,
    pub headers: Vec<HeaderMatcher>,
    pub tls_versions: Vec<TlsVersion>,
    pub action: RouteAction,
    pub security: RouteSecurity,
    /// Hash of the route's whole definition as given (JSON with sorted keys, functions by their
    /// stable ids): the route's identity across `updateRoutes` (see [`crate::state`]).
    pub fingerprint: u64,
}

impl Route {
    /// `route "name" (index 3)` or `route at index 3`, as used in messages.
    pub fn label(&self) -> String {
        route_label(self.name.as_deref(), self.index)
    }
}

pub(super) fn route_label(name: Option<&str>, index: usize) -> String {
    match name {
        Some(n) => format!("route {n:?} (index {index})"),
        None => format!("route at index {index}"),
    }
}

/// Validates an array of routes.
pub fn parse_routes(v: &Value) -> CResult<Vec<Route>> {
    let arr = match v {
        Value::Array(a) => a,
        _ => return Err(ConfigError::Invalid("routes: expected an array of routes".into())),
    };
    arr.iter().enumerate().map(|(i, r)| parse_route(r, i)).collect()
}

/// Validates one route; errors are prefixed with the route's label.
pub fn parse_route(v: &Value, index: usize) -> CResult<Route> {
    let at = At::new(v, "");
    let name = at.get("name").and_then(Value::as_str).map(str::to_owned);
    let label = route_label(name.as_deref(), index);
    parse_route_inner(at, index, name).map_err(|e| match e {
        ConfigError::Invalid(m) => ConfigError::Invalid(format!("{label}: {m}")),
        ConfigError::NotSupported(m) => ConfigError::NotSupported(format!("{m} ({label})")),
    })
}

/// The first of a route's features that exist only per HTTP request (authentication, rate
/// limits, a fixed test response), as the start of an error message; `None` when it has none.
/// A connection to such a route that is not HTTP is never relayed around them.
pub fn http_only_feature(security: &RouteSecurity, http: &HttpOptions) -> Option<&'static str> {
    if security.needs_http() {
        return Some("security: authentication and rate limiting need HTTP");
    }
    if http.test_response.is_some() {
        return Some("action.advanced.testResponse: a fixed answer needs HTTP");
    }
    None
}

pub(super) fn parse_route_inner(at: At, index: usize, name: Option<String>) -> CResult<Route> {
    at.obj().map_err(|_| ConfigError::Invalid("expected a route object".into()))?;
    let m = at.get("match").map_or_else(|| Err(ConfigError::Invalid("match is required".into())), Ok)?;
    let m = At::new(m, "match");
    m.obj()?;
    let a = at.get("action").map_or_else(|| Err(ConfigError::Invalid("action is required".into())), Ok)?;
    let a = At::new(a, "action");
    a.obj()?;

    let ports = match m.get("ports") {
        None => return Err(ConfigError::Invalid("match.ports is required".into())),
        Some(p) => parse_ports(At::new(p, "match.ports"))?,
    };
    let domains = opt(m, "domains", |d| d.parse_each(DomainPattern::parse))?.unwrap_or_default();
    let client_ip = opt(m, "clientIp", |d| d.parse_each(IpPattern::parse))?.unwrap_or_default();
    let path = opt(m, "path", |p| PathPattern::parse(p.str()?).or_else(|e| p.err(e)))?;
    let headers = opt(m, "headers", parse_header_matchers)?.unwrap_or_default();
    let tls_versions = opt(m, "tlsVersion", |t| {
        let list = t.str_or_strs()?;
        list.iter()
            .map(|s| TlsVersion::parse(s).map_or_else(|| t.err(format!("unknown TLS version {s:?}")), Ok))
            .collect()
    })?
    .unwrap_or_default();

    let security = match at.get("security") {
        Some(s) => parse_security(At::new(s, "security"))?,
        None => RouteSecurity::default(),
    };
    let action = parse_action(a, at.get("headers"))?;
    let RouteAction::Forward(f) = &action;
    if f.tls.as_ref().is_some_and(|t| t.mode == TlsMode::Passthrough) {
        if let Some(what) = http_only_feature(&security, &f.http) {
            return Err(ConfigError::Invalid(format!("{what}, which a 'passthrough' route never sees")));
        }
    }
    Ok(Route {
        index,
        id: opt(at, "id", |x| x.str().map(str::to_owned))?,
        name,
        priority: opt(at, "priority", |x| x.num())?.unwrap_or(0.0),
        enabled: opt(at, "enabled", |x| x.bool())?.unwrap_or(true),
        ports,
        domains,
        client_ip,
        path,
        headers,
        tls_versions,
        action,
        security,
        fingerprint: fingerprint(at.v),
    })
}

/// A stable hash of a route's JSON (serde_json keeps object keys sorted, so key order in the
/// user's object does not matter).
pub(super) fn fingerprint(v: &Value) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.to_string().hash(&mut h);
    h.finish()
}

pub(super) fn parse_ports(at: At) -> CResult<Vec<PortRange>> {
    if at.is_function() {
        return unsupported("function-valued match.ports");
    }
    let one = |x: At| -> ReadResult<PortRange> {
        match x.v {
            Value::Number(_) => Ok(PortRange::single(x.port()?)),
            Value::Object(_) => {
                let from = opt(x, "from", |p| p.port())?.map_or_else(|| x.err("range needs 'from'"), Ok)?;
                let to = opt(x, "to", |p| p.port())?.map_or_else(|| x.err("range needs 'to'"), Ok)?;
                if from > to {
                    return x.err(format!("range 'from' ({from}) is greater than 'to' ({to})"));
                }
                Ok(PortRange { from, to })
            }
            _ => x.expected("a port number or a { from, to } range"),
        }
    };
    let list = match at.v {
        Value::Array(_) => each(at, one)?,
        _ => vec![one(at)?],
    };
    if list.is_empty() {
        return Err(ConfigError::Invalid("match.ports: must list at least one port".into()));
    }
    Ok(list)
}

pub(super) fn parse_header_matchers(at: At) -> ReadResult<Vec<HeaderMatcher>> {
    let obj = at.obj()?;
    obj.iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| {
            let p = join(at.path, k);
            let x = At::new(v, &p);
            match v {
                Value::String(s) => Ok(HeaderMatcher::exact(k, s)),
                Value::Object(_) if x.has("$regex") => {
                    let src = opt(x, "$regex", |s| s.str())?.unwrap_or_default();
                    let flags = opt(x, "flags", |s| s.str())?.unwrap_or_default();
                    HeaderMatcher::regex(k, src, flags).or_else(|e| x.err(e))
                }
                _ => x.expected("a string or a RegExp"),
            }
        })
        .collect()
}

pub(super) fn parse_action(a: At, route_headers: Option<&Value>) -> CResult<RouteAction> {
    let ty =
        opt(a, "type", |t| t.str())?.map_or_else(|| Err(ConfigError::Invalid("action.type is required".into())), Ok)?;
    let socket_handler = match ty {
        "forward" => None,
        "socket-handler" => {
            let f = a.get("socketHandler").and_then(|v| v.get("$fn")).and_then(Value::as_u64);
            match f {
                Some(id) => Some(id as u32),
                None => {
                    return Err(ConfigError::Invalid(
                        "action.socketHandler: a 'socket-handler' action needs a function".into(),
                    ))
                }
            }
        }
        "redirect" | "block" | "static" => {
            return Err(ConfigError::Invalid(format!(
                "action.type: '{ty}' was removed in 19.5; use a 'socket-handler' route with SocketHandlers"
            )))
        }
        other => return Err(ConfigError::Invalid(format!("action.type: unknown action type {other:?}"))),
    };
    if let Some(engine) = opt(a, "forwardingEngine", |t| t.str())? {
        match engine {
            "node" => {}
            "nftables" => return unsupported("forwardingEngine 'nftables'"),
            other => return Err(ConfigError::Invalid(format!("action.forwardingEngine: unknown engine {other:?}"))),
        }
    }
    if a.has("nftables") {
        return unsupported("action.nftables");
    }
    let send_proxy_protocol = opt(a, "sendProxyProtocol", read_send_proxy)?;
    let balance_targets = check_load_balancing(a, "action.loadBalancing")?;
    if socket_handler.is_some()
        && a.get("tls").and_then(|t| t.get("mode")).and_then(Value::as_str).is_some_and(|m| m != "passthrough")
    {
        return unsupported("TLS termination in front of a socket handler");
    }
    let tls = match a.get("tls") {
        None => None,
        Some(t) => Some(parse_tls(At::new(t, "action.tls"))?),
    };
    if socket_handler.is_none() && a.has("socketHandler") {
        return Err(ConfigError::Invalid("action.socketHandler is only valid with type 'socket-handler'".into()));
    }
    if socket_handler.is_some() {
        let http = parse_http_options(a, route_headers)?;
        return Ok(RouteAction::Forward(ForwardAction {
            socket_handler,
            targets: Vec::new(),
            tls,
            http,
            balance_targets: false,
            send_proxy_protocol,
        }));
    }
    let targets: Vec<Target> = match (a.get("targets"), a.get("target")) {
        (Some(t), _) => {
            let at = At::new(t, "action.targets");
            at.arr()?;
            let mut out = Vec::new();
            for (i, v) in at.arr()?.iter().enumerate() {
                let p = format!("action.targets[{i}]");
                out.push(parse_target(At::new(v, &p))?);
            }
            out
        }
        (None, Some(t)) => vec![parse_target(At::new(t, "action.target"))?],
        (None, None) => Vec::new(),
    };
    if targets.is_empty() {
        return Err(ConfigError::Invalid("action.targets: a 'forward' action needs at least one target".into()));
    }
    let http = parse_http_options(a, route_headers)?;
    let passthrough = tls.as_ref().is_some_and(|t| t.mode == TlsMode::Passthrough);
    if passthrough && (http.cors.is_some() || !http.request_headers.is_empty() || !http.response_headers.is_empty()) {
        return Err(ConfigError::Invalid(
            "headers: header rules need HTTP, which a 'passthrough' route never sees (use 'terminate')".into(),
        ));
    }
    Ok(RouteAction::Forward(ForwardAction {
        socket_handler: None,
        targets,
        tls,
        http,
        balance_targets,
        send_proxy_protocol,
    }))
}

/// Returns whether targets should be balanced (round-robin asked for explicitly).
pub(super) fn check_load_balancing(a: At, what: &str) -> CResult<bool> {
    if let Some(lb) = a.get("loadBalancing") {
        let algo = lb.get("algorithm").and_then(Value::as_str).unwrap_or("round-robin");
        if algo != "round-robin" {
            return unsupported(format!("{what}.algorithm '{algo}'"));
        }
        if lb.get("healthCheck").is_some_and(|v| !v.is_null()) {
            return unsupported(format!("{what}.healthCheck"));
        }
        return Ok(true);
    }
    Ok(false)
}

pub(super) fn parse_target(t: At) -> CResult<Target> {
    t.obj()?;
    let mut host_fn = None;
    let hosts = match t.get("host") {
        None => return Err(ConfigError::Invalid(format!("{}.host is required", t.path))),
        Some(h) if h.get("$fn").is_some() => {
            host_fn = h.get("$fn").and_then(Value::as_u64).map(|n| n as u32);
            Vec::new()
        }
        Some(h) => {
            let p = join(t.path, "host");
            let h = At::new(h, &p);
            let list = h.str_or_strs()?;
            if list.is_empty() || list.iter().any(|s| s.trim().is_empty()) {
                return Err(ConfigError::Invalid(format!("{p}: host must be a non-empty string or array of them")));
            }
            list.iter().map(|s| s.trim().to_owned()).collect()
        }
    };
    let port = match t.get("port") {
        None => return Err(ConfigError::Invalid(format!("{}.port is required", t.path))),
        Some(Value::String(s)) if s == "preserve" => TargetPort::Preserve,
        Some(p) => {
            let path = join(t.path, "port");
            let p = At::new(p, &path);
            match p.get("$fn").and_then(Value::as_u64) {
                Some(id) => TargetPort::Function(id as u32),
                None => TargetPort::Fixed(p.port()?),
            }
        }
    };
    for key in ["tls", "headers", "advanced"] {
        if truthy(t.get(key)) {
            return unsupported(format!("{}.{key} (per-target override)", t.path));
        }
    }
    let send_proxy_protocol = opt(t, "sendProxyProtocol", read_send_proxy)?;
    for key in ["websocket", "loadBalancing"] {
        if truthy(t.get(key)) {
            return unsupported(format!("{}.{key} (per-target override)", t.path));
        }
    }
    let condition = opt(t, "match", |m| -> ReadResult<TargetMatch> {
        m.obj()?;
        Ok(TargetMatch {
            ports: opt(m, "ports", |p| match p.v {
                Value::Array(_) => each(p, |x| x.port()),
                _ => Ok(vec![p.port()?]),
            })?
            .unwrap_or_default(),
            path: opt(m, "path", |p| PathPattern::parse(p.str()?).or_else(|e| p.err(e)))?,
            headers: opt(m, "headers", parse_header_matchers)?.unwrap_or_default(),
            methods: opt(m, "method", |x| x.str_or_strs())?
                .unwrap_or_default()
                .iter()
                .map(|s| s.to_ascii_uppercase())
                .collect(),
        })
    })?;
    if t.get("match").is_some_and(|m| m.get("$fn").is_some()) {
        return unsupported("function-valued target match");
    }
    let priority = opt(t, "priority", |x| x.num())?.unwrap_or(0.0);
    Ok(Target { hosts, host_fn, port, priority, condition, send_proxy_protocol })
}
