//! Header handling of the HTTP layer: hop-by-hop removal, `X-Forwarded-*`, `{variable}`
//! templates, and CORS.

use crate::config::{Cors, HeaderTemplate};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that describe one hop and are never forwarded (RFC 9110 §7.6.1), plus the legacy
/// `proxy-connection` and `keep-alive`.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Whether `name` is one of the fixed hop-by-hop headers above (any case).
pub fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h.as_str()))
}

/// Whether any of `h`'s fields is one of the fixed hop-by-hop headers (one pass over the map
/// instead of a lookup per name; usually none is there).
fn has_hop_by_hop(h: &HeaderMap) -> bool {
    h.keys().any(|n| HOP_BY_HOP.contains(n))
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    if !has_hop_by_hop(h) {
        return; // no Connection header either, so nothing it names
    }
    let listed: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in listed.iter().chain(HOP_BY_HOP.iter()) {
        h.remove(name);
    }
}

/// Removes the fields HTTP/2 forbids (RFC 9113 §8.2.2): the hop-by-hop ones above except
/// `trailer`, and `te` unless it is `trailers`.
pub fn strip_connection_specific(h: &mut HeaderMap) {
    if !has_hop_by_hop(h) {
        return;
    }
    for name in HOP_BY_HOP.iter().filter(|n| **n != header::TRAILER && **n != header::TE) {
        h.remove(name);
    }
    if h.get(header::TE).is_some_and(|v| v != "trailers") {
        h.remove(header::TE);
    }
}

/// Values available to header templates.
pub struct TemplateVars<'a> {
    pub domain: &'a str,
    pub client_ip: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub method: &'a str,
    pub route_name: &'a str,
    pub route_id: &'a str,
    pub port: u16,
    pub connection_id: u64,
    pub target_host: &'a str,
    pub target_port: u16,
}

/// Expands `{domain}`, `{clientIp}`, `{path}`, `{query}`, `{method}`, `{routeName}`,
/// `{routeId}`, `{port}`, `{connectionId}`, `{timestamp}`, `{targetHost}`, `{targetPort}`.
/// Unknown `{names}` stay as they are.
pub fn expand(template: &str, v: &TemplateVars) -> String {
    if !template.contains('{') {
        return template.to_owned();
    }
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            out.push_str(&rest[open..]);
            return out;
        };
        let name = &after[..close];
        let value: Option<String> = match name {
            "domain" => Some(v.domain.to_owned()),
            "clientIp" => Some(v.client_ip.to_owned()),
            "path" => Some(v.path.to_owned()),
            "query" => Some(v.query.to_owned()),
            "method" => Some(v.method.to_owned()),
            "routeName" => Some(v.route_name.to_owned()),
            "routeId" => Some(v.route_id.to_owned()),
            "port" => Some(v.port.to_string()),
            "connectionId" => Some(v.connection_id.to_string()),
            "targetHost" => Some(v.target_host.to_owned()),
            "targetPort" => Some(v.target_port.to_string()),
            "timestamp" => Some(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis())
                    .to_string(),
            ),
            _ => None,
        };
        match value {
            Some(val) => out.push_str(&val),
            None => {
                out.push('{');
                out.push_str(name);
                out.push('}');
            }
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

/// Sets each templated header (replacing existing values). Values that expand to something a
/// header cannot hold (line breaks from a path, say) are skipped.
pub fn apply_templates(h: &mut HeaderMap, templates: &[HeaderTemplate], v: &TemplateVars) {
    for t in templates {
        if let Ok(val) = HeaderValue::from_str(&expand(&t.value, v)) {
            h.insert(t.name.clone(), val);
        }
    }
}

/// The one `X-Forwarded-For` rule of both HTTP paths: the values of every `X-Forwarded-For`
/// field the client sent (in order, trimmed, empty ones left out), then the client's address,
/// joined by ", ", written into `out`.
pub fn forwarded_for<'a>(out: &mut Vec<u8>, prior: impl Iterator<Item = &'a [u8]>, client_ip: &[u8]) {
    for v in prior {
        let v = v.trim_ascii();
        if !v.is_empty() {
            out.extend_from_slice(v);
            out.extend_from_slice(b", ");
        }
    }
    out.extend_from_slice(client_ip);
}

/// Sets `X-Forwarded-For` from the client's fields (`prior`) and the client (`client_ip`, the
/// address as a header value; see [`forwarded_for`]), and `X-Forwarded-Proto` / `-Host`.
pub fn add_forwarded<'a>(
    h: &mut HeaderMap,
    mut prior: impl ExactSizeIterator<Item = &'a HeaderValue>,
    client_ip: &HeaderValue,
    https: bool,
    host: Option<&str>,
) {
    let xff = HeaderName::from_static("x-forwarded-for");
    let value = if prior.len() > 0 {
        let mut v = Vec::new();
        forwarded_for(&mut v, prior.by_ref().map(HeaderValue::as_bytes), client_ip.as_bytes());
        HeaderValue::from_bytes(&v).ok()
    } else {
        Some(client_ip.clone())
    };
    if let Some(v) = value {
        h.insert(xff, v);
    }
    h.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static(if https { "https" } else { "http" }),
    );
    if let Some(host) = host.and_then(|x| HeaderValue::from_str(x).ok()) {
        h.insert(HeaderName::from_static("x-forwarded-host"), host);
    }
}

/// The `Access-Control-Allow-Origin` value for a request's `Origin`, if allowed.
pub fn cors_origin(c: &Cors, origin: Option<&str>) -> Option<String> {
    if c.allow_origin.iter().any(|o| o == "*") {
        // With credentials, browsers reject `*`: echo the origin instead.
        return Some(match (c.allow_credentials, origin) {
            (true, Some(o)) => o.to_owned(),
            _ => "*".to_owned(),
        });
    }
    origin.filter(|o| c.allow_origin.iter().any(|a| a == o)).map(str::to_owned)
}

/// The CORS response fields for an allowed origin (none for another origin), added to `out`
/// (replacing fields of the same names).
pub fn cors_fields(out: &mut Vec<(HeaderName, HeaderValue)>, c: &Cors, origin: Option<&str>, preflight: bool) {
    let Some(allowed) = cors_origin(c, origin) else { return };
    let mut set = |name: HeaderName, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            out.retain(|(n, _)| *n != name);
            out.push((name, v));
        }
    };
    set(header::ACCESS_CONTROL_ALLOW_ORIGIN, &allowed);
    if allowed != "*" {
        set(header::VARY, "Origin");
    }
    if c.allow_credentials {
        set(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true");
    }
    if let Some(e) = &c.expose_headers {
        set(header::ACCESS_CONTROL_EXPOSE_HEADERS, e);
    }
    if preflight {
        set(header::ACCESS_CONTROL_ALLOW_METHODS, &c.allow_methods);
        set(header::ACCESS_CONTROL_ALLOW_HEADERS, &c.allow_headers);
        if let Some(m) = c.max_age {
            set(header::ACCESS_CONTROL_MAX_AGE, &m.to_string());
        }
    }
}

/// Request fields the proxy writes itself on both paths (`X-Forwarded-*`).
const FORWARDED: [&str; 3] = ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"];

/// The one rule of both HTTP paths for a client's request field: it goes to the backend unless
/// it is hop-by-hop or named by the request's `Connection` fields (`listed`), or is one of the
/// `X-Forwarded-*` fields the proxy writes itself. An upgrade keeps `Connection` and `Upgrade`
/// (the backend must see what is asked). Framing fields are each path's own business.
pub fn request_field_kept(name: &str, upgrade: bool, listed: &[&str]) -> bool {
    if upgrade && (name.eq_ignore_ascii_case("connection") || name.eq_ignore_ascii_case("upgrade")) {
        return true;
    }
    !is_hop_by_hop(name)
        && !listed.iter().any(|l| name.eq_ignore_ascii_case(l))
        && !FORWARDED.iter().any(|f| name.eq_ignore_ascii_case(f))
}

/// The tokens of `Connection` field values (the names of fields for this hop only).
pub fn connection_tokens<'a>(values: impl Iterator<Item = &'a [u8]>) -> Vec<&'a str> {
    values
        .flat_map(|v| std::str::from_utf8(v).unwrap_or("").split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect()
}

/// Applies [`request_field_kept`] and the plan's edits to a header map (the hyper and HTTP/2
/// path), then writes `X-Forwarded-*` (see [`add_forwarded`]). `host` is the authority as sent.
pub fn edit_request(
    h: &mut HeaderMap,
    upgrade: bool,
    edits: &super::plan::Edits,
    client_ip: &HeaderValue,
    https: bool,
    host: Option<&str>,
) {
    let listed: Vec<String> = if h.contains_key(header::CONNECTION) {
        connection_tokens(h.get_all(header::CONNECTION).iter().map(HeaderValue::as_bytes))
            .into_iter()
            .map(str::to_ascii_lowercase)
            .collect()
    } else {
        Vec::new()
    };
    let listed: Vec<&str> = listed.iter().map(String::as_str).filter(|l| !(upgrade && *l == "upgrade")).collect();
    let xff: Vec<HeaderValue> = h.get_all("x-forwarded-for").iter().cloned().collect();
    let drop: Vec<HeaderName> = h
        .keys()
        .filter(|n| !request_field_kept(n.as_str(), upgrade, &listed) || edits.replaces(n.as_str()))
        .cloned()
        .collect();
    for n in drop {
        h.remove(n);
    }
    add_forwarded(h, xff.iter(), client_ip, https, host);
    for (n, v) in &edits.request {
        if let Some(v) = v {
            h.insert(n.clone(), v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> TemplateVars<'static> {
        TemplateVars {
            domain: "example.com",
            client_ip: "10.0.0.1",
            path: "/a",
            query: "x=1",
            method: "GET",
            route_name: "web",
            route_id: "r1",
            port: 443,
            connection_id: 7,
            target_host: "backend",
            target_port: 8080,
        }
    }

    #[test]
    fn templates() {
        assert_eq!(
            expand("{domain}|{clientIp}|{path}?{query}|{routeName}|{port}", &vars()),
            "example.com|10.0.0.1|/a?x=1|web|443"
        );
        assert_eq!(expand("{unknown} {domain", &vars()), "{unknown} {domain");
        assert_eq!(expand("plain", &vars()), "plain");
    }

    #[test]
    fn hop_by_hop() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        h.insert(HeaderName::from_static("x-secret"), HeaderValue::from_static("1"));
        h.insert(HeaderName::from_static("keep-alive"), HeaderValue::from_static("timeout=5"));
        h.insert(header::HOST, HeaderValue::from_static("a"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::HOST));
    }

    #[test]
    fn forwarded_and_cors() {
        let mut h = HeaderMap::new();
        let prior = [HeaderValue::from_static("1.1.1.1")];
        add_forwarded(&mut h, prior.iter(), &HeaderValue::from_static("2.2.2.2"), true, Some("example.com"));
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2");
        assert_eq!(h["x-forwarded-proto"], "https");
        let c = Cors {
            allow_origin: vec!["https://a.test".into()],
            allow_methods: "GET".into(),
            allow_headers: "X".into(),
            preflight: true,
            ..Default::default()
        };
        let mut r = Vec::new();
        cors_fields(&mut r, &c, Some("https://b.test"), false);
        assert!(r.is_empty());
        cors_fields(&mut r, &c, Some("https://a.test"), true);
        let get = |n: HeaderName| r.iter().find(|(k, _)| *k == n).map(|(_, v)| v.clone());
        assert_eq!(get(header::ACCESS_CONTROL_ALLOW_ORIGIN).unwrap(), "https://a.test");
        assert_eq!(get(header::ACCESS_CONTROL_ALLOW_METHODS).unwrap(), "GET");
    }

    /// The one request-field rule: hop-by-hop and listed fields go, `X-Forwarded-*` are the
    /// proxy's, upgrades keep `Connection` and `Upgrade`.
    #[test]
    fn request_fields() {
        let listed = ["x-secret"];
        assert!(request_field_kept("host", false, &listed));
        assert!(request_field_kept("Content-Length", false, &listed));
        assert!(!request_field_kept("Connection", false, &listed));
        assert!(!request_field_kept("keep-alive", false, &listed));
        assert!(!request_field_kept("X-Secret", false, &listed));
        assert!(!request_field_kept("X-Forwarded-For", false, &listed));
        assert!(request_field_kept("connection", true, &listed));
        assert!(request_field_kept("upgrade", true, &listed));
        assert!(!request_field_kept("upgrade", false, &listed));
        assert_eq!(connection_tokens([&b"keep-alive, X-A"[..], b" ,b"].into_iter()), vec!["keep-alive", "X-A", "b"]);
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        h.insert(HeaderName::from_static("x-secret"), HeaderValue::from_static("1"));
        h.insert(HeaderName::from_static("x-templated"), HeaderValue::from_static("client"));
        h.insert(HeaderName::from_static("x-broken"), HeaderValue::from_static("client"));
        h.append("x-forwarded-for", HeaderValue::from_static("1.1.1.1"));
        h.append("x-forwarded-for", HeaderValue::from_static("2.2.2.2"));
        h.insert(header::HOST, HeaderValue::from_static("a"));
        let edits = super::super::plan::Edits {
            request: vec![
                (HeaderName::from_static("x-templated"), Some(HeaderValue::from_static("proxy"))),
                (HeaderName::from_static("x-broken"), None),
            ],
            response: vec![],
        };
        edit_request(&mut h, false, &edits, &HeaderValue::from_static("9.9.9.9"), false, Some("a"));
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 9.9.9.9");
        assert_eq!(h["x-templated"], "proxy");
        assert!(!h.contains_key("x-broken") && !h.contains_key("x-secret") && !h.contains_key(header::CONNECTION));
        assert_eq!(h[header::HOST], "a");
    }
}
