//! The napi-rs binding of smartproxy-native. It only converts types, maps errors and forwards
//! engine events to JavaScript; all proxy logic lives in the `engine` crate.
//!
//! Wire format: options and routes arrive as JSON text produced by the JavaScript facade
//! (`lib/normalize.js`), which replaces functions and RegExps by markers. Errors are thrown with
//! the message `[CODE] text`; the facade moves `CODE` onto `error.code`.

use engine::config::{parse_options, parse_routes, ProxyOptions};
use engine::js::{CallFuture, JsBridge};
use engine::{Event, EventSink, Proxy};
use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};

/// An engine event as JavaScript sees it: `kind` is `log` (with `level` and `message`) or a
/// certificate event (`certificate-issued`, `-renewed`, `-failed`) with its payload as JSON text
/// in `data`.
#[napi(object)]
pub struct NativeEvent {
    pub kind: String,
    pub level: String,
    pub message: String,
    pub data: Option<String>,
}

/// A connection handed to a JavaScript socket handler: claim `fd` with `claimSocket(connId)`.
/// `context` is the route context as JSON text (parsing it in JS is cheaper than building it
/// field by field through N-API).
#[napi(object)]
pub struct NativeSocket {
    pub handler_id: u32,
    pub conn_id: i64,
    pub fd: i32,
    pub context: String,
}

/// A call of a JavaScript function (target host or port): its id and the route context as JSON
/// text, passed as two arguments (no object to build per call).
type NativeCall = FnArgs<(u32, String)>;

type EventFn = ThreadsafeFunction<NativeEvent, (), NativeEvent, Status, false>;
type SocketFn = ThreadsafeFunction<NativeSocket, (), NativeSocket, Status, false>;
/// The callback returns the function's result as JSON text, or a Promise of it when the function
/// is async (sync results skip the Promise round trip).
/// `Either` tries its first type first: a string is checked with one `typeof`, while checking for
/// a Promise first would build and reject a Promise for every plain result.
type CallFn = ThreadsafeFunction<NativeCall, Either<String, Promise<String>>, NativeCall, Status, false>;

/// The engine's JavaScript bridge over two threadsafe functions (released by `stop()`).
struct Bridge {
    socket: SocketFn,
    call: Arc<CallFn>,
}

impl JsBridge for Bridge {
    fn socket(&self, handler: u32, conn_id: u64, fd: i32, context: Value) -> bool {
        let ev = NativeSocket { handler_id: handler, conn_id: conn_id as i64, fd, context: context.to_string() };
        self.socket.call(ev, ThreadsafeFunctionCallMode::NonBlocking) == Status::Ok
    }

    fn call(&self, function: u32, context: Value) -> CallFuture {
        let f = self.call.clone();
        Box::pin(async move {
            let call: NativeCall = (function, context.to_string()).into();
            let text = match f.call_async(call).await.map_err(|e| e.reason.clone())? {
                Either::A(text) => text,
                Either::B(promise) => promise.await.map_err(|e| e.reason.clone())?,
            };
            serde_json::from_str(&text).map_err(|e| format!("function result is not JSON-serialisable: {e}"))
        })
    }
}

/// Forwards engine events to the JavaScript callback given to `start()`. Holding the
/// threadsafe function also keeps Node's event loop alive while the proxy runs, as a listening
/// `net.Server` would; it is released by `stop()`.
#[derive(Default)]
struct JsSink {
    // Cold: set at start, cleared at stop, read per event (log events only, never per byte).
    tsfn: Mutex<Option<Arc<EventFn>>>,
}

impl JsSink {
    fn set(&self, f: Option<EventFn>) {
        *self.tsfn.lock().unwrap_or_else(|p| p.into_inner()) = f.map(Arc::new);
    }
}

impl EventSink for JsSink {
    fn emit(&self, event: Event) {
        let f = self.tsfn.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(f) = f {
            let ev = match event {
                Event::Log { level, message, route, client } => {
                    // Who and where, when the line is about one connection: `data` as JSON.
                    let data = (route.is_some() || client.is_some())
                        .then(|| json!({ "route": route, "client": client }).to_string());
                    NativeEvent { kind: "log".into(), level: level.as_str().into(), message, data }
                }
                Event::Certificate(c) => {
                    let data = json!({
                        "routeName": c.route,
                        "domain": c.domain,
                        "expiryDate": c.expiry_ms,
                        "source": c.source,
                        "error": c.error,
                    });
                    NativeEvent {
                        kind: c.kind.into(),
                        level: "info".into(),
                        message: String::new(),
                        data: Some(data.to_string()),
                    }
                }
            };
            let _ = f.call(ev, ThreadsafeFunctionCallMode::NonBlocking);
        }
    }
}

fn to_js(code: &str, msg: impl std::fmt::Display) -> Error {
    Error::new(Status::GenericFailure, format!("[{code}] {msg}"))
}

fn engine_err(e: engine::EngineError) -> Error {
    to_js(e.code(), e)
}

fn config_err(e: engine::ConfigError) -> Error {
    to_js(e.code(), e)
}

fn parse_json(text: &str, what: &str) -> Result<Value> {
    serde_json::from_str(text).map_err(|e| to_js("ERR_INVALID_CONFIG", format!("{what}: not valid JSON: {e}")))
}

fn routes_from(text: &str) -> Result<Vec<engine::config::Route>> {
    parse_routes(&parse_json(text, "routes")?).map_err(config_err)
}

/// The engine's option defaults, merged into `SmartProxy.settings` by the facade.
#[napi]
pub fn engine_defaults() -> Value {
    ProxyOptions::defaults_json()
}

/// The `acme` option defaults, merged into `SmartProxy.settings.acme` when `acme` is given.
#[napi]
pub fn acme_defaults() -> Value {
    engine::config::AcmeOptions::defaults_json()
}

/// One engine proxy instance.
#[napi]
pub struct NativeProxy {
    inner: Arc<Proxy>,
    sink: Arc<JsSink>,
}

#[napi]
impl NativeProxy {
    #[napi(constructor)]
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        let sink = Arc::new(JsSink::default());
        NativeProxy { inner: Arc::new(Proxy::new(sink.clone())), sink }
    }

    /// Validates the configuration and starts listening. Rejects with `[ERR_BIND]` naming the port
    /// when a port cannot be bound, `[ERR_INVALID_CONFIG]` / `[ERR_NOT_SUPPORTED]` for bad routes.
    #[napi]
    #[allow(clippy::type_complexity)] // `on_call` spelled out for the generated binding.d.ts
    pub async fn start(
        &self,
        options_json: String,
        routes_json: String,
        on_event: ThreadsafeFunction<NativeEvent, (), NativeEvent, Status, false>,
        on_socket: ThreadsafeFunction<NativeSocket, (), NativeSocket, Status, false>,
        // Spelled out (not `CallFn`) so that the generated binding.d.ts shows the callback type.
        on_call: ThreadsafeFunction<
            FnArgs<(u32, String)>,
            Either<String, Promise<String>>,
            FnArgs<(u32, String)>,
            Status,
            false,
        >,
    ) -> Result<Vec<String>> {
        let (options, warnings) = parse_options(&parse_json(&options_json, "options")?).map_err(config_err)?;
        let routes = routes_from(&routes_json)?;
        self.sink.set(Some(on_event));
        let bridge: Arc<dyn JsBridge> = Arc::new(Bridge { socket: on_socket, call: Arc::new(on_call) });
        let r = self.inner.start(options, routes, Some(bridge)).await;
        if r.is_err() && !self.inner.is_running() {
            self.sink.set(None);
        }
        r.map_err(engine_err)?;
        Ok(warnings)
    }

    /// Closes listeners and connections and stops the runtime; resolves when its threads are gone.
    #[napi]
    pub async fn stop(&self) -> Result<()> {
        let r = self.inner.stop().await;
        self.sink.set(None);
        r.map_err(engine_err)
    }

    /// Replaces the routes of a running proxy; before `start()` only validates them, against
    /// `options_json` (the options `start()` will get) when given.
    #[napi]
    pub async fn update_routes(&self, routes_json: String, options_json: Option<String>) -> Result<()> {
        let routes = routes_from(&routes_json)?;
        let options = match options_json {
            Some(text) => Some(parse_options(&parse_json(&text, "options")?).map_err(config_err)?.0),
            None => None,
        };
        self.inner.update_routes(routes, options).await.map_err(engine_err)
    }

    /// The certificate status of a route (`ICertStatus` with dates in ms), or null.
    #[napi]
    pub fn certificate_status(&self, route_name: String) -> Option<Value> {
        let s = self.inner.certificate_status(&route_name)?;
        Some(json!({
            "domain": s.domain,
            "status": s.status,
            "issueDate": s.issued_ms,
            "expiryDate": s.expires_ms,
            "source": s.source,
            "error": s.error,
        }))
    }

    /// Orders the certificate of a `certificate: 'auto'` route now; resolves once it is served.
    #[napi]
    pub async fn provision_certificate(&self, route_name: String) -> Result<()> {
        self.inner.provision_certificate(&route_name).await.map_err(engine_err)
    }

    #[napi]
    pub async fn add_listening_port(&self, port: u32) -> Result<()> {
        self.inner.add_port(port_arg(port)?).await.map_err(engine_err)
    }

    #[napi]
    pub async fn remove_listening_port(&self, port: u32) -> Result<()> {
        self.inner.remove_port(port_arg(port)?).await.map_err(engine_err)
    }

    /// Takes ownership of a handed-over socket; returns its fd, or -1 when it is gone.
    #[napi]
    pub fn claim_socket(&self, conn_id: i64) -> i32 {
        self.inner.claim_socket(conn_id as u64).unwrap_or(-1)
    }

    /// Reports that a handed-over socket closed (`failed`: its handler threw or rejected).
    #[napi]
    pub fn socket_closed(&self, conn_id: i64, failed: bool) {
        self.inner.socket_closed(conn_id as u64, failed);
    }

    #[napi]
    pub fn get_listening_ports(&self) -> Vec<u32> {
        self.inner.listening_ports().into_iter().map(u32::from).collect()
    }

    #[napi]
    pub fn is_running(&self) -> bool {
        self.inner.is_running()
    }

    /// One group of `getMetrics()`: `throughput` (rate over `seconds`), `history`, `byRoute`,
    /// `byIP` (windows of `seconds`), `requests`, `percentiles`.
    #[napi]
    pub fn metrics(&self, query: String, seconds: u32) -> Result<Value> {
        let m = self.inner.metrics();
        let secs = u64::from(seconds.max(1));
        let rate = |r: engine::metrics::Rate| json!({ "in": r.bytes_in, "out": r.bytes_out });
        let p = |h: &engine::metrics::hist::Histogram| json!({ "p50": h.quantile(0.5), "p95": h.quantile(0.95), "p99": h.quantile(0.99) });
        Ok(match query.as_str() {
            "throughput" => rate(m.throughput(secs)),
            "history" => m
                .history(secs)
                .iter()
                .map(|s| json!({ "timestamp": s.at_ms, "in": s.bytes_in, "out": s.bytes_out }))
                .collect(),
            "byRoute" => m.by_route(secs).into_iter().map(|(k, r)| json!([&*k, rate(r)])).collect(),
            "byIP" => m.by_ip(secs).into_iter().map(|(k, r)| json!([k, rate(r)])).collect(),
            "requests" => json!({
                "perSecond": m.requests_in(1),
                "perMinute": m.requests_in(60),
                "total": m.requests.get(),
            }),
            "percentiles" => json!({
                "connectionDuration": p(&m.conn_duration_ms),
                "bytesTransferred": { "in": p(&m.conn_bytes_in), "out": p(&m.conn_bytes_out) },
            }),
            other => return Err(to_js("ERR_INVALID_ARG", format!("unknown metrics query {other:?}"))),
        })
    }

    /// The access log reopens its file (log rotation).
    #[napi]
    pub fn reopen_logs(&self) {
        self.inner.reopen_logs();
    }

    /// The Prometheus text exposition of the proxy's counters, metric names starting with `prefix`.
    #[napi]
    pub fn prometheus_metrics(&self, prefix: String) -> String {
        engine::status::prometheus::render(&self.inner.view(), &prefix)
    }

    /// Connection counters and per-route / per-IP breakdowns, as a plain object.
    #[napi]
    pub fn get_statistics(&self) -> Value {
        let s = self.inner.stats();
        let c = &s.connections;
        let map =
            |v: &[(&str, u64)]| v.iter().map(|(k, n)| (k.to_string(), json!(n))).collect::<serde_json::Map<_, _>>();
        json!({
            "activeConnections": c.active,
            "totalConnections": c.total,
            "tlsConnections": c.tls,
            "nonTlsConnections": c.active - c.tls.min(c.active),
            "keepAliveConnections": c.keep_alive,
            "bytesIn": c.bytes_in,
            "bytesOut": c.bytes_out,
            "terminationStats": { "incoming": map(&c.termination_incoming), "outgoing": map(&c.termination_outgoing) },
            "byRoute": c.by_route.iter().map(|(k, n)| json!([k, n])).collect::<Vec<_>>(),
            "byIP": c.by_ip.iter().map(|(k, n)| json!([k.to_string(), n])).collect::<Vec<_>>(),
            "listeningPorts": s.listening_ports,
            "routes": s.route_count,
        })
    }
}

fn port_arg(port: u32) -> Result<u16> {
    u16::try_from(port)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| to_js("ERR_INVALID_ARG", format!("port must be an integer 1-65535, got {port}")))
}

/// The addon's Rust allocations (the engine's per-request headers, buffers and futures) use
/// mimalloc: about 4 % less CPU per proxied HTTP/2 request (7 % of user time) than glibc's
/// malloc, whose bins and frees across threads showed at ~8 % of the proxy's profile. Built with
/// the local-dynamic TLS model (the addon is loaded with dlopen) and lazy arena commit
/// (`.cargo/config.toml`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
