//! The request plan: the one place that decides, per HTTP request, what the proxy does with it.
//! Both HTTP engines (the HTTP/1.1 fast path, which renders the plan as bytes, and the hyper /
//! HTTP/2 path, which renders it into a header map) call [`plan`] and then [`Routed::edits`];
//! neither decides anything of its own. Phases, in order:
//!
//! 0. **ACME** ([`acme_answer`], before [`plan`]: it is async, as it may read the shared
//!    store): an HTTP-01 validation request on a challenge port is answered with its key
//!    authorization, before any route, when this instance or another one sharing its store is
//!    validating that token. The fast path hands such requests to hyper.
//! 1. **route**: the route table by port, host, path, headers and TLS; else `defaults.target`;
//!    else 404.
//! 2. **client rules**: the route's IP allow and block lists (403).
//! 3. **access**: `security.rateLimit` (429 with `Retry-After`), `basicAuth` (401 with a
//!    `Basic` challenge), `jwtAuth` (401 with `Bearer`).
//! 4. **route kind**: a socket-handler route takes whole connections, never a request (404).
//! 5. **synthetic answers**: a CORS preflight is answered here (204); then a route's
//!    `advanced.testResponse` answers every other request, as configured.
//! 6. **WebSocket**: an upgrade on a route whose `websocket.enabled` is false, or from an origin
//!    not in `allowedOrigins`, is refused (403).
//! 7. **target**: the route's target for this request ([`SelectedTarget`]); a host or port
//!    function is left for the caller to resolve (the fast path hands such requests to hyper).
//! 8. **rewrites**: `advanced.urlRewrite`, then the WebSocket `rewritePath` for upgrades.
//! 9. **header edits** ([`Routed::edits`], once the target is known): the route's
//!    `headers.request` (plus WebSocket `customHeaders` on upgrades) and `headers.response`
//!    with their templates expanded, and the CORS response fields.
//!
//! The fixed header rules live next to it in [`super::headers`]: hop-by-hop fields are never
//! forwarded (upgrades keep `Connection`/`Upgrade`), `X-Forwarded-For` joins every client field
//! and appends the client, `X-Forwarded-Proto`/`-Host` are set. A templated request header
//! replaces the client's fields of that name; one whose template expands to something a header
//! cannot hold is dropped, never left with the client's value.

use super::access;
use super::error::HttpError;
use super::headers::{self, TemplateVars};
use super::{Backends, HttpConn};
use crate::config::{HttpOptions, TlsMode, UrlRewrite};
use crate::matching::{is_authorized, CompiledRoute, HttpView, MatchInput, SelectedTarget};
use crate::snapshot::Snapshot;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::StatusCode;
use std::sync::Arc;
use std::time::Duration;

/// Response-header timeout when the route sets no `advanced.timeout`.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(300);

/// What the plan needs to know of a request; both engines fill it from their own parse.
pub struct RequestFacts<'a> {
    pub method: &'a str,
    /// Path and query as the client sent them (origin form).
    pub target: &'a str,
    /// Path without the query.
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// The domain routed on: the host without its port, else the TLS SNI.
    pub domain: Option<&'a str>,
    /// An HTTP/1.1 upgrade (WebSocket) request.
    pub upgrade: bool,
    /// Header lookups (by lower-case name; the first value).
    pub view: &'a (dyn HttpView + Sync),
}

impl RequestFacts<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.view.header(name)
    }
}

/// A response the proxy gives itself.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

impl From<HttpError> for Answer {
    fn from(e: HttpError) -> Self {
        Answer::text(e.status(), Bytes::from_static(e.body().as_bytes()))
    }
}

impl Answer {
    fn text(status: StatusCode, body: Bytes) -> Self {
        Answer {
            status,
            headers: vec![(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"))],
            body,
        }
    }
}

/// The outcome of [`plan`].
pub enum Outcome {
    /// Answer the request here.
    Answer(Answer),
    /// Forward it.
    Forward(Routed),
}

/// A request that goes to a backend.
pub struct Routed {
    /// `None`: `defaults.target`.
    pub route: Option<Arc<CompiledRoute>>,
    /// The backend; its host or port may still be a function to call.
    pub target: SelectedTarget,
    /// The path and query after rewrites; `None` keeps the client's.
    pub path_and_query: Option<String>,
    /// Whether the response gets CORS fields (the route answers CORS and the origin is allowed).
    cors: bool,
}

/// The header edits of a forwarded request (phase 9).
#[derive(Debug, Default)]
pub struct Edits {
    /// Request fields the proxy sets (replacing the client's fields of these names); `None`: a
    /// template that expanded to an invalid value, the field is dropped.
    pub request: Vec<(HeaderName, Option<HeaderValue>)>,
    /// Response fields the proxy sets (replacing the backend's).
    pub response: Vec<(HeaderName, HeaderValue)>,
}

impl Edits {
    /// Whether a client request field of this name is replaced by the proxy's.
    pub fn replaces(&self, name: &str) -> bool {
        self.request.iter().any(|(n, _)| name.eq_ignore_ascii_case(n.as_str()))
    }

    /// Whether a backend response field of this name is replaced by the proxy's.
    pub fn replaces_response(&self, name: &[u8]) -> bool {
        self.response.iter().any(|(n, _)| name.eq_ignore_ascii_case(n.as_str().as_bytes()))
    }
}

/// Whether phase 0 applies: a request for an HTTP-01 answer on a challenge port.
pub fn is_acme_validation(cx: &HttpConn, path: &str) -> bool {
    path.starts_with(crate::acme::CHALLENGE_PREFIX) && cx.sh.acme.answers_on(cx.port)
}

/// Phase 0: the answer to an ACME HTTP-01 validation, before any route (a redirect route must
/// not swallow it); `None` lets the plan go on.
pub async fn acme_answer(cx: &HttpConn, path: &str) -> Option<Answer> {
    if !is_acme_validation(cx, path) {
        return None;
    }
    let key_authorization = cx.sh.acme.http01_answer(cx.port, path).await?;
    Some(Answer::text(StatusCode::OK, Bytes::from(key_authorization)))
}

/// Phases 1 to 9 (see the module header).
pub fn plan(snap: &Snapshot, cx: &HttpConn, req: &RequestFacts) -> Result<Outcome, HttpError> {
    let input = MatchInput {
        port: cx.port,
        client_ip: cx.client_ip,
        domain: req.domain,
        http: Some(req.view),
        tls_version: cx.tls_version,
    };
    // 1-2: route and client rules.
    let (route, target) = match snap.table.find_http(&input, cx.tls) {
        Some(i) => {
            let route = snap.table.route(i).clone();
            let sec = &route.route.security;
            if !is_authorized(cx.client_ip, &sec.ip_allow_list, &sec.ip_block_list) {
                return Err(HttpError::Forbidden);
            }
            // 3: access.
            if let Some(refused) = check_access(&route, cx, req) {
                return Ok(Outcome::Answer(refused));
            }
            // 4: route kind.
            if route.socket_handler().is_some() {
                return Err(HttpError::NoRoute);
            }
            // 7 (computed here, used below): the target.
            let target = snap.table.select_target(i, &input).ok_or(HttpError::NoRoute)?;
            (Some(route), target)
        }
        None => {
            let d = cx.sh.options.default_target.as_ref().ok_or(HttpError::NoRoute)?;
            let sec = &cx.sh.options.default_security;
            if !is_authorized(cx.client_ip, &sec.ip_allow_list, &sec.ip_block_list) {
                return Err(HttpError::Forbidden);
            }
            (None, SelectedTarget::fixed(d.host.clone(), d.port))
        }
    };
    let http = route.as_deref().map(|r| &r.forward().http);
    let cors = http.and_then(|h| h.cors.as_ref());
    // Looked up only when a rule reads it (a scan of the request's fields).
    let origin = if cors.is_some() || req.upgrade { req.header("origin") } else { None };
    // 5: CORS preflight.
    if let Some(c) = cors {
        if c.preflight && req.method == "OPTIONS" && req.header("access-control-request-method").is_some() {
            let mut headers = Vec::new();
            headers::cors_fields(&mut headers, c, origin, true);
            return Ok(Outcome::Answer(Answer { status: StatusCode::NO_CONTENT, headers, body: Bytes::new() }));
        }
    }
    // 5: the route's fixed answer.
    if let Some(t) = http.and_then(|h| h.test_response.as_ref()) {
        return Ok(Outcome::Answer(Answer { status: t.status, headers: t.headers.clone(), body: t.body.clone() }));
    }
    // 6 and 8: WebSocket checks and rewrites.
    let mut path_and_query = http.and_then(|h| h.url_rewrite.as_ref()).map(|rw| rewrite_url(rw, req.target));
    if req.upgrade {
        if let Some(ws) = http.and_then(|h| h.websocket.as_ref()) {
            if !ws.enabled {
                return Err(HttpError::Forbidden);
            }
            if !ws.allowed_origins.is_empty()
                && !origin.is_some_and(|o| ws.allowed_origins.iter().any(|a| a == o || a == "*"))
            {
                return Err(HttpError::Forbidden);
            }
            if let Some(p) = &ws.rewrite_path {
                path_and_query = Some(p.clone());
            }
        }
    }
    let cors = cors.is_some_and(|c| headers::cors_origin(c, origin).is_some());
    Ok(Outcome::Forward(Routed { route, target, path_and_query, cors }))
}

impl Routed {
    /// The route's HTTP options (none for `defaults.target`).
    pub fn http(&self) -> Option<&HttpOptions> {
        self.route.as_deref().map(|r| &r.forward().http)
    }

    /// The target's host or port is a function still to be called.
    pub fn needs_js(&self) -> bool {
        self.target.host_fn.is_some() || self.target.port_fn.is_some()
    }

    /// TLS to the backend (`terminate-and-reencrypt`).
    pub fn reencrypt(&self) -> bool {
        self.route.as_deref().and_then(|r| r.tls_mode()) == Some(TlsMode::TerminateAndReencrypt)
    }

    /// HTTP/2 to the backend (`backendProtocol: 'http2'`).
    pub fn backend_h2(&self) -> bool {
        self.http().is_some_and(|h| h.backend_http2)
    }

    /// The route's own backend clients (routes that verify backend certificates).
    pub fn own_backends(&self) -> Option<&Arc<Backends>> {
        self.route.as_deref().and_then(|r| r.state.backends.as_ref())
    }

    /// How long the backend may take to start its response: `advanced.timeout`, else 300 s.
    pub fn wait(&self) -> Duration {
        self.http().and_then(|h| h.request_timeout).unwrap_or(DEFAULT_RESPONSE_TIMEOUT)
    }

    /// The path and query sent to the backend.
    pub fn path_and_query<'a>(&'a self, req: &'a RequestFacts) -> &'a str {
        self.path_and_query.as_deref().unwrap_or(req.target)
    }

    /// Phase 9: the header edits, once the target is known.
    pub fn edits(&self, cx: &HttpConn, req: &RequestFacts) -> Edits {
        let mut e = Edits::default();
        let Some(route) = self.route.as_deref() else { return e };
        let h = &route.forward().http;
        if h.request_headers.is_empty() && h.response_headers.is_empty() && !self.cors && !req.upgrade {
            return e;
        }
        let vars = TemplateVars {
            domain: req.domain.unwrap_or(""),
            client_ip: &cx.client_ip_text,
            path: req.path,
            query: req.query.unwrap_or(""),
            method: req.method,
            route_name: &route.name,
            route_id: route.route.id.as_deref().unwrap_or(""),
            port: cx.port,
            connection_id: cx.rec.id,
            target_host: &self.target.host,
            target_port: self.target.port,
        };
        let ws_headers = h.websocket.as_ref().filter(|_| req.upgrade).map_or(&[][..], |w| &w.custom_headers[..]);
        for t in h.request_headers.iter().chain(ws_headers) {
            let value = HeaderValue::from_str(&headers::expand(&t.value, &vars)).ok();
            match e.request.iter_mut().find(|(n, _)| *n == t.name) {
                Some(slot) => slot.1 = value,
                None => e.request.push((t.name.clone(), value)),
            }
        }
        for t in &h.response_headers {
            if let Ok(v) = HeaderValue::from_str(&headers::expand(&t.value, &vars)) {
                e.response.retain(|(n, _)| *n != t.name);
                e.response.push((t.name.clone(), v));
            }
        }
        if self.cors {
            if let Some(c) = &h.cors {
                headers::cors_fields(&mut e.response, c, req.header("origin"), false);
            }
        }
        e
    }
}

/// Phase 3: the route's rate limit and authentication; `Some(answer)` refuses the request.
fn check_access(route: &CompiledRoute, cx: &HttpConn, req: &RequestFacts) -> Option<Answer> {
    let sec = &route.route.security;
    if let (Some(rule), Some(limiter)) = (&sec.rate_limit, &route.state.limiter) {
        let key = access::rate_key(rule, &cx.client_ip_text, req.path, |n| req.header(n).map(str::to_owned));
        if !limiter.allow(rule, key, std::time::Instant::now()) {
            let mut a = Answer::text(StatusCode::TOO_MANY_REQUESTS, Bytes::from(rule.message.clone()));
            a.headers.push((header::RETRY_AFTER, HeaderValue::from(rule.window.as_secs().max(1))));
            return Some(a);
        }
    }
    if sec.basic_auth.is_none() && sec.jwt_auth.is_none() {
        return None;
    }
    let authorization = req.header("authorization");
    let unauthorized = |challenge: HeaderValue| {
        let mut a = Answer::text(StatusCode::UNAUTHORIZED, Bytes::from_static(b"Unauthorized\n"));
        a.headers.push((header::WWW_AUTHENTICATE, challenge));
        a
    };
    if let Some(b) = &sec.basic_auth {
        if !access::basic_ok(b, req.path, authorization) {
            let realm = format!("Basic realm=\"{}\"", b.realm.replace('"', ""));
            return Some(unauthorized(
                HeaderValue::from_str(&realm).unwrap_or(HeaderValue::from_static("Basic realm=\"proxy\"")),
            ));
        }
    }
    if let Some(j) = &sec.jwt_auth {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if !access::jwt_ok(j, req.path, authorization, now) {
            return Some(unauthorized(HeaderValue::from_static("Bearer")));
        }
    }
    None
}

/// `advanced.urlRewrite` applied to a request's path and query.
pub fn rewrite_url(rw: &UrlRewrite, path_and_query: &str) -> String {
    let (subject, tail) = match (rw.only_path, path_and_query.split_once('?')) {
        (true, Some((p, q))) => (p, Some(q)),
        _ => (path_and_query, None),
    };
    let replaced = if rw.global {
        rw.pattern.replace_all(subject, rw.target.as_str())
    } else {
        rw.pattern.replace(subject, rw.target.as_str())
    };
    let mut out = String::with_capacity(replaced.len() + tail.map_or(0, |t| t.len() + 2));
    if !replaced.starts_with('/') {
        out.push('/');
    }
    out.push_str(&replaced);
    if let Some(q) = tail {
        out.push('?');
        out.push_str(q);
    }
    out
}
