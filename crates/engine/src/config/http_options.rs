//! Route HTTP options: header templates, CORS, URL rewrites, WebSocket options, timeouts, the
//! fixed test response.

use super::reader::{join, opt, At, ReadResult};
use super::*;

/// A header value with `{variable}` templates (`{domain}`, `{clientIp}`, `{path}`, `{routeName}`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderTemplate {
    pub name: http::HeaderName,
    pub value: String,
}

/// `headers.cors`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cors {
    pub allow_origin: Vec<String>,
    pub allow_methods: String,
    pub allow_headers: String,
    pub allow_credentials: bool,
    pub expose_headers: Option<String>,
    pub max_age: Option<u64>,
    /// Answer preflight requests (OPTIONS with Access-Control-Request-Method) here. Default true.
    pub preflight: bool,
}

/// `advanced.urlRewrite`: a regular expression replacement on the request path (or path+query).
#[derive(Debug, Clone)]
pub struct UrlRewrite {
    pub pattern: regex::Regex,
    pub target: String,
    pub global: bool,
    /// Rewrite only the path, keeping the query string.
    pub only_path: bool,
}

/// `advanced.testResponse`: the answer to every request the route takes, given by the proxy
/// itself (no backend is asked).
#[derive(Debug, Clone)]
pub struct TestResponse {
    pub status: http::StatusCode,
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub body: bytes::Bytes,
}

/// WebSocket options of a route (`action.websocket`).
#[derive(Debug, Clone, Default)]
pub struct WebSocketOptions {
    pub enabled: bool,
    /// When non-empty, upgrade requests whose Origin is not listed get 403.
    pub allowed_origins: Vec<String>,
    /// Extra headers on the upgrade request to the backend.
    pub custom_headers: Vec<HeaderTemplate>,
    /// Replaces the request path of upgrade requests.
    pub rewrite_path: Option<String>,
    /// Ping the client this often; close when no pong comes within `ping_timeout`.
    pub ping_interval: Option<Duration>,
    pub ping_timeout: Option<Duration>,
    /// Largest client message (all fragments), in bytes; larger ones close with 1009.
    pub max_payload: Option<u64>,
}

/// Options of the HTTP layer (plain HTTP ports and terminated TLS).
#[derive(Debug, Clone, Default)]
pub struct HttpOptions {
    pub request_headers: Vec<HeaderTemplate>,
    pub response_headers: Vec<HeaderTemplate>,
    pub cors: Option<Cors>,
    /// `action.options.backendProtocol: 'http2'`.
    pub backend_http2: bool,
    /// `action.options.rejectUnauthorized` (ours): verify the backend's certificate when
    /// re-encrypting. Default false, as upstream's HttpProxy did not verify.
    pub verify_backend: bool,
    /// `action.options.ca` (ours): extra PEM roots trusted when verifying the backend.
    pub backend_ca: Vec<rustls::pki_types::CertificateDer<'static>>,
    pub url_rewrite: Option<UrlRewrite>,
    pub websocket: Option<WebSocketOptions>,
    /// `advanced.timeout`: how long to wait for the backend's response headers.
    pub request_timeout: Option<Duration>,
    pub test_response: Option<TestResponse>,
}

pub(super) fn header_templates(at: At) -> ReadResult<Vec<HeaderTemplate>> {
    let obj = at.obj()?;
    obj.iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| {
            let p = join(at.path, k);
            let x = At::new(v, &p);
            let name = http::HeaderName::from_bytes(k.as_bytes()).or_else(|_| x.err("invalid header name"))?;
            let value = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => return x.expected("a string"),
            };
            if value.contains(['\r', '\n']) {
                return x.err("header values must not contain line breaks");
            }
            Ok(HeaderTemplate { name, value })
        })
        .collect()
}

/// `{ status, headers?, body? }`: a final status (200-599), literal header values (the framing
/// fields are the proxy's: `content-length` comes from the body), a text body.
fn parse_test_response(t: At) -> ReadResult<TestResponse> {
    t.obj()?;
    let status = opt(t, "status", |x| {
        let n = x.uint()?;
        match u16::try_from(n).ok().filter(|n| (200..=599).contains(n)).map(http::StatusCode::from_u16) {
            Some(Ok(s)) => Ok(s),
            _ => x.err(format!("a final status 200-599, got {n}")),
        }
    })?
    .map_or_else(|| t.err("status is required"), Ok)?;
    let mut headers = Vec::new();
    if let Some(h) = t.get("headers").filter(|v| !v.is_null()) {
        let path = join(t.path, "headers");
        let at = At::new(h, &path);
        for (k, v) in at.obj()? {
            let p = join(at.path, k);
            let x = At::new(v, &p);
            let name = http::HeaderName::from_bytes(k.as_bytes()).or_else(|_| x.err("invalid header name"))?;
            if name == http::header::CONTENT_LENGTH || crate::http::headers::is_hop_by_hop(name.as_str()) {
                return x.err("set by the proxy (the length comes from body)");
            }
            let value = http::HeaderValue::from_str(x.str()?).or_else(|_| x.err("invalid header value"))?;
            headers.push((name, value));
        }
    }
    let body = opt(t, "body", |x| x.str().map(str::to_owned))?.unwrap_or_default();
    if !body.is_empty() && matches!(status.as_u16(), 204 | 304) {
        return t.err(format!("a {} response has no body", status.as_u16()));
    }
    Ok(TestResponse { status, headers, body: body.into() })
}

pub(super) fn parse_http_options(a: At, route_headers: Option<&Value>) -> CResult<HttpOptions> {
    let mut h = HttpOptions::default();
    if let Some(rh) = route_headers {
        let rh = At::new(rh, "headers");
        rh.obj()?;
        h.request_headers = opt(rh, "request", header_templates)?.unwrap_or_default();
        h.response_headers = opt(rh, "response", header_templates)?.unwrap_or_default();
        h.cors = opt(rh, "cors", |c| -> ReadResult<Option<Cors>> {
            c.obj()?;
            if opt(c, "enabled", |x| x.bool())? != Some(true) {
                return Ok(None);
            }
            Ok(Some(Cors {
                allow_origin: opt(c, "allowOrigin", |x| x.str_or_strs())?
                    .map(|v| v.into_iter().map(str::to_owned).collect())
                    .unwrap_or_else(|| vec!["*".to_owned()]),
                allow_methods: opt(c, "allowMethods", |x| x.str().map(str::to_owned))?
                    .unwrap_or_else(|| "GET, POST, PUT, DELETE, PATCH, OPTIONS".into()),
                allow_headers: opt(c, "allowHeaders", |x| x.str().map(str::to_owned))?
                    .unwrap_or_else(|| "Content-Type, Authorization".into()),
                allow_credentials: opt(c, "allowCredentials", |x| x.bool())?.unwrap_or(false),
                expose_headers: opt(c, "exposeHeaders", |x| x.str().map(str::to_owned))?,
                max_age: opt(c, "maxAge", |x| x.uint())?,
                preflight: opt(c, "preflight", |x| x.bool())?.unwrap_or(true),
            }))
        })?
        .flatten();
    }
    if let Some(adv) = a.get("advanced") {
        let adv = At::new(adv, "action.advanced");
        adv.obj()?;
        if adv.has("staticFiles") {
            return unsupported("action.advanced.staticFiles");
        }
        h.test_response = opt(adv, "testResponse", parse_test_response)?;
        h.request_timeout = opt(adv, "timeout", ms)?.filter(|d| !d.is_zero());
        if let Some(extra) = opt(adv, "headers", header_templates)? {
            h.request_headers.extend(extra);
        }
        h.url_rewrite = opt(adv, "urlRewrite", |u| -> ReadResult<UrlRewrite> {
            u.obj()?;
            let pattern = opt(u, "pattern", |x| x.str())?.map_or_else(|| u.err("pattern is required"), Ok)?;
            let target =
                opt(u, "target", |x| x.str().map(str::to_owned))?.map_or_else(|| u.err("target is required"), Ok)?;
            let flags = opt(u, "flags", |x| x.str())?.unwrap_or("");
            let re = regex::RegexBuilder::new(pattern)
                .case_insensitive(flags.contains('i'))
                .build()
                .or_else(|e| u.err(format!("invalid pattern: {e}")))?;
            // JavaScript replacement syntax `$1` matches the regex crate's, except `$<name>`.
            Ok(UrlRewrite {
                pattern: re,
                target: target.replace("$<", "${").replace('>', "}"),
                global: flags.contains('g'),
                only_path: opt(u, "onlyRewritePath", |x| x.bool())?.unwrap_or(false),
            })
        })?;
    }
    if let Some(o) = a.get("options") {
        let o = At::new(o, "action.options");
        match opt(o, "backendProtocol", |x| x.str())? {
            None | Some("http1") => {}
            Some("http2") => h.backend_http2 = true,
            Some(other) => {
                return Err(ConfigError::Invalid(format!("action.options.backendProtocol: unknown protocol {other:?}")))
            }
        }
        h.verify_backend = opt(o, "rejectUnauthorized", |x| x.bool())?.unwrap_or(false);
        if let Some(ca) = opt(o, "ca", |x| x.str().map(str::to_owned))? {
            h.backend_ca =
                crate::tls::parse_certs(&ca).map_err(|e| ConfigError::Invalid(format!("action.options.ca: {e}")))?;
        }
    }
    if let Some(w) = a.get("websocket") {
        let w = At::new(w, "action.websocket");
        w.obj()?;
        for key in ["authenticateRequest", "enableCompression"] {
            if w.has(key) {
                return unsupported(format!("action.websocket.{key}"));
            }
        }
        h.websocket = Some(WebSocketOptions {
            enabled: opt(w, "enabled", |x| x.bool())?.unwrap_or(true),
            allowed_origins: opt(w, "allowedOrigins", |x| x.str_or_strs())?
                .unwrap_or_default()
                .into_iter()
                .map(str::to_owned)
                .collect(),
            custom_headers: opt(w, "customHeaders", header_templates)?.unwrap_or_default(),
            rewrite_path: opt(w, "rewritePath", |x| x.str().map(str::to_owned))?,
            ping_interval: opt(w, "pingInterval", ms)?.filter(|d| !d.is_zero()),
            ping_timeout: opt(w, "pingTimeout", ms)?.filter(|d| !d.is_zero()),
            max_payload: opt(w, "maxPayloadSize", |x| x.uint())?.filter(|n| *n > 0),
        });
    }
    Ok(h)
}
