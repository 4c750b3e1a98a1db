//! The engine's side of JavaScript in the data path: the [`JsBridge`] the embedder implements
//! (socket handlers, target functions), the hand-over of sockets to JavaScript, route contexts,
//! and resolution of function-valued targets.
//!
//! Socket hand-over: the connection's socket is deregistered from tokio and parked here as an
//! `OwnedFd`; the embedder is told its number. JavaScript first *claims* it ([`Handoffs::claim`]
//! gives up ownership without closing), then wraps it in a `net.Socket`. A socket nobody claims
//! within [`CLAIM_TIMEOUT`] is closed here. Once claimed, only JavaScript closes it, and the
//! connection stays counted as active until it reports the close ([`Handoffs::closed`]).
//! No unsafe code: giving up an `OwnedFd` is safe; only creating one from a number is not, and
//! that happens in libuv.

use crate::conn::{ConnGuard, ConnRecord, Termination};
use crate::detect::TlsVersion;
use crate::matching::{CompiledRoute, SelectedTarget};
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use serde_json::{json, Map, Value};
use std::future::Future;
use std::os::fd::{IntoRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub type CallFuture = Pin<Box<dyn Future<Output = Result<Value, String>> + Send>>;

/// How long a JavaScript function (target host/port) may take.
pub const JS_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a handed-over socket may wait for JavaScript to claim it.
pub const CLAIM_TIMEOUT: Duration = Duration::from_secs(30);

/// Implemented by the embedder (the napi binding).
pub trait JsBridge: Send + Sync + 'static {
    /// Offers socket `fd` of connection `conn_id` to handler `handler`. False: not delivered.
    fn socket(&self, handler: u32, conn_id: u64, fd: i32, context: Value) -> bool;
    /// Calls function `function` with a route context; resolves to its (awaited) result.
    fn call(&self, function: u32, context: Value) -> CallFuture;
}

/// Sockets handed to JavaScript: parked until claimed, then counted until closed.
#[derive(Default)]
pub struct Handoffs {
    pending: DashMap<u64, OwnedFd>,
    open: DashMap<u64, Handed>,
}

/// A handed-over connection's books. JavaScript may claim, serve and close a socket before the
/// connection's task gets to [`Handoffs::keep`] its guard (a short exchange on a busy machine),
/// so whichever of the two comes second closes the books.
enum Handed {
    Kept(ConnGuard),
    ClosedFirst { failed: bool },
}

fn termination(failed: bool) -> Termination {
    if failed {
        Termination::HandlerError
    } else {
        Termination::ClientClosed
    }
}

impl Handoffs {
    /// JavaScript takes ownership of the parked socket; `None` if it is gone (expired).
    pub fn claim(&self, conn_id: u64) -> Option<i32> {
        self.pending.remove(&conn_id).map(|(_, fd)| fd.into_raw_fd())
    }

    /// JavaScript closed the socket (`failed`: its handler threw or rejected).
    pub fn closed(&self, conn_id: u64, failed: bool) {
        self.pending.remove(&conn_id);
        let mut guard = match self.open.entry(conn_id) {
            Entry::Vacant(e) => {
                e.insert(Handed::ClosedFirst { failed });
                return;
            }
            Entry::Occupied(e) => match e.remove() {
                Handed::Kept(guard) => guard,
                Handed::ClosedFirst { .. } => return,
            },
        };
        guard.end(termination(failed));
    }

    pub(crate) fn park(&self, conn_id: u64, fd: OwnedFd) {
        self.pending.insert(conn_id, fd);
    }

    /// Closes a parked socket that could not be offered.
    pub(crate) fn discard(&self, conn_id: u64) {
        self.pending.remove(&conn_id);
    }

    /// Keeps a handed-over connection counted until JavaScript closes it (or has closed it).
    pub(crate) fn keep(&self, mut guard: ConnGuard) {
        match self.open.entry(guard.rec.id) {
            Entry::Vacant(e) => {
                e.insert(Handed::Kept(guard));
            }
            Entry::Occupied(e) => {
                if let Handed::ClosedFirst { failed } = e.remove() {
                    guard.end(termination(failed));
                }
            }
        }
    }

    /// Closes a socket JavaScript never claimed (or could not be offered).
    pub(crate) fn expire(&self, conn_id: u64) {
        if self.pending.remove(&conn_id).is_some() {
            if let Some((_, Handed::Kept(mut guard))) = self.open.remove(&conn_id) {
                guard.end(Termination::HandlerError);
            }
        }
    }
}

/// The data of an `IRouteContext` (spec §3.10).
pub struct RouteContext<'a> {
    pub port: u16,
    pub domain: Option<&'a str>,
    pub client_ip: String,
    pub server_ip: String,
    pub path: Option<&'a str>,
    pub query: Option<&'a str>,
    /// Lower-cased names; the first value of a repeated header wins.
    pub headers: Option<Vec<(&'a str, &'a str)>>,
    pub is_tls: bool,
    pub tls_version: Option<TlsVersion>,
    pub route: Option<&'a CompiledRoute>,
    pub rec: &'a ConnRecord,
    pub target_host: Option<&'a str>,
    pub target_port: Option<u16>,
}

impl RouteContext<'_> {
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("port".into(), json!(self.port));
        if let Some(d) = self.domain {
            m.insert("domain".into(), json!(d));
        }
        m.insert("clientIp".into(), json!(self.client_ip));
        m.insert("serverIp".into(), json!(self.server_ip));
        if let Some(p) = self.path {
            m.insert("path".into(), json!(p));
        }
        if let Some(q) = self.query {
            m.insert("query".into(), json!(q));
        }
        if let Some(h) = &self.headers {
            let mut hm = Map::new();
            for (k, v) in h {
                hm.entry(k.to_ascii_lowercase()).or_insert_with(|| json!(v));
            }
            m.insert("headers".into(), Value::Object(hm));
        }
        m.insert("isTls".into(), json!(self.is_tls));
        if let Some(v) = self.tls_version {
            m.insert("tlsVersion".into(), json!(v.as_str()));
        }
        if let Some(r) = self.route {
            m.insert("routeName".into(), json!(&*r.name));
            if let Some(id) = &r.route.id {
                m.insert("routeId".into(), json!(id));
            }
        }
        if let Some(h) = self.target_host {
            m.insert("targetHost".into(), json!(h));
        }
        if let Some(p) = self.target_port {
            m.insert("targetPort".into(), json!(p));
        }
        m.insert("timestamp".into(), json!(self.rec.started_ms));
        m.insert("connectionId".into(), json!(self.rec.id.to_string()));
        Value::Object(m)
    }
}

/// Calls the target's host and port functions, if any (host first; the port function sees the
/// chosen host as `targetHost`). A missing bridge, a throw or rejection, a result of the wrong
/// type or a call slower than [`JS_CALL_TIMEOUT`] fails with `TargetFunctionError`.
pub async fn resolve_target(
    mut t: SelectedTarget,
    bridge: Option<&Arc<dyn JsBridge>>,
    mut context: Value,
    pick: u64,
) -> Result<SelectedTarget, (Termination, String)> {
    if t.host_fn.is_none() && t.port_fn.is_none() {
        return Ok(t);
    }
    let fail = |m: String| (Termination::TargetFunctionError, m);
    let bridge = bridge.ok_or_else(|| fail("no JavaScript bridge".into()))?;
    if let Some(f) = t.host_fn.take() {
        let v = call(bridge, f, context.clone()).await.map_err(fail)?;
        t.host = match v {
            Value::String(s) if !s.trim().is_empty() => s,
            Value::Array(a) if !a.is_empty() && a.iter().all(|x| x.as_str().is_some_and(|s| !s.trim().is_empty())) => {
                a[(pick % a.len() as u64) as usize].as_str().unwrap_or_default().to_owned()
            }
            other => {
                return Err(fail(format!(
                    "target host function returned {other}, expected a host name or an array of them"
                )))
            }
        };
        if let Value::Object(m) = &mut context {
            m.insert("targetHost".into(), json!(t.host));
        }
    }
    if let Some(f) = t.port_fn.take() {
        let v = call(bridge, f, context).await.map_err(fail)?;
        t.port = match v.as_f64() {
            Some(n) if n.fract() == 0.0 && (1.0..=65535.0).contains(&n) => n as u16,
            _ => return Err(fail(format!("target port function returned {v}, expected an integer 1-65535"))),
        };
    }
    Ok(t)
}

async fn call(bridge: &Arc<dyn JsBridge>, f: u32, context: Value) -> Result<Value, String> {
    match tokio::time::timeout(JS_CALL_TIMEOUT, bridge.call(f, context)).await {
        Err(_) => Err(format!("function did not settle within {} s", JS_CALL_TIMEOUT.as_secs())),
        Ok(Err(e)) => Err(format!("function failed: {e}")),
        Ok(Ok(v)) => Ok(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::{IpLimits, Registry};

    fn handed(reg: &Arc<Registry>, h: &Handoffs) -> ConnGuard {
        let g = reg.open("10.0.0.1".parse().unwrap(), 1, 80, IpLimits::default()).unwrap();
        h.park(g.rec.id, std::fs::File::open("/dev/null").unwrap().into());
        g
    }

    #[test]
    fn a_handed_over_connection_closes_its_books_whichever_comes_first() {
        let reg = Arc::new(Registry::default());
        let h = Handoffs::default();
        // The connection's task keeps the guard, then JavaScript claims and closes the socket.
        let g = handed(&reg, &h);
        let id = g.rec.id;
        h.keep(g);
        assert_eq!(reg.active(), 1);
        assert!(h.claim(id).is_some());
        h.closed(id, false);
        assert_eq!(reg.active(), 0);
        // JavaScript is faster: it claims, serves and closes before the task keeps the guard.
        let g = handed(&reg, &h);
        let id = g.rec.id;
        assert!(h.claim(id).is_some());
        h.closed(id, true);
        assert_eq!(reg.active(), 1, "the guard is still the task's");
        h.keep(g);
        assert_eq!(reg.active(), 0);
        assert!(h.open.is_empty());
        let s = reg.stats();
        assert!(s.termination_incoming.contains(&("client_closed", 1)), "{:?}", s.termination_incoming);
        assert!(s.termination_incoming.contains(&("socket_handler_error", 1)), "{:?}", s.termination_incoming);
        // Never claimed: expiry closes the books.
        let g = handed(&reg, &h);
        let id = g.rec.id;
        h.keep(g);
        h.expire(id);
        assert_eq!(reg.active(), 0);
    }
}
