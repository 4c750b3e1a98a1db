//! Runtime state per route that outlives route-table snapshots: open-connection counts
//! (`security.maxConnections`), rate-limit windows, round-robin cursors and the route's own
//! backend clients (connection pools of routes that verify their backends).
//!
//! The registry ([`RouteStates`]) is keyed by route identity and consulted only when a snapshot
//! is built (a cold path, hence the plain mutex). Each compiled route holds a handle to its state,
//! so the connection path never looks anything up.
//!
//! The identity rule, written once here: a route's identity is its whole definition as given
//! (the [`crate::config::Route::fingerprint`] of its JSON, name included) plus its occurrence
//! among routes with the same definition. An `updateRoutes` that keeps a route unchanged, at
//! any position, keeps its counts, windows, cursors and pools. A route whose definition changed
//! in any way (a new limit, a new target) starts with fresh state: its old state stays with the
//! connections that hold it, and is dropped when the last of them ends. A removed route's state
//! is dropped the same way.

use crate::config::Route;
use crate::error::ConfigError;
use crate::http::RateLimiter;
use crate::upstream::Backends;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicUsize};
use std::sync::{Arc, Mutex};

/// The runtime state of one route.
#[derive(Default)]
pub struct RouteState {
    /// Connections currently open on this route (for `security.maxConnections` and metrics).
    pub active: AtomicU32,
    /// Request windows of `security.rateLimit` (when the route has one).
    pub limiter: Option<RateLimiter>,
    /// Round-robin cursor per target (in the compiled route's target order).
    pub cursors: Vec<AtomicUsize>,
    /// Cursor of `loadBalancing: 'round-robin'` among unconditional targets.
    pub balance_cursor: AtomicUsize,
    /// The route's own backend clients, when it verifies backend certificates.
    pub backends: Option<Arc<Backends>>,
    /// HTTP answers by status class (1xx..5xx) since this state was made (Prometheus).
    pub http_status: [std::sync::atomic::AtomicU64; 5],
}

impl std::fmt::Debug for RouteState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteState").field("active", &self.active).finish_non_exhaustive()
    }
}

impl RouteState {
    /// Fresh state for a route with `targets` targets (no backends of its own).
    pub fn fresh(route: &Route, targets: usize) -> Self {
        RouteState {
            limiter: route.security.rate_limit.as_ref().map(|_| RateLimiter::default()),
            cursors: (0..targets).map(|_| AtomicUsize::new(0)).collect(),
            ..Default::default()
        }
    }
}

/// Identity of a route across updates: its definition's fingerprint and its occurrence among
/// routes with the same fingerprint.
type RouteKey = (u64, usize);

/// The registry of route states of one proxy.
#[derive(Default)]
pub struct RouteStates {
    /// Cold: locked only while a snapshot is built.
    by_route: Mutex<HashMap<RouteKey, Arc<RouteState>>>,
}

impl RouteStates {
    /// The states of `routes` (in the given order): kept for unchanged routes, made by `make`
    /// for new or changed ones. Only when every state could be made does the registry forget
    /// the states of routes that are gone, so a refused update changes nothing.
    pub fn resolve<'r>(
        &self,
        routes: impl IntoIterator<Item = &'r Route>,
        mut make: impl FnMut(&Route) -> Result<RouteState, ConfigError>,
    ) -> Result<Vec<Arc<RouteState>>, ConfigError> {
        let mut map = self.by_route.lock().unwrap_or_else(|p| p.into_inner());
        let mut seen: HashMap<u64, usize> = HashMap::new();
        let mut next: HashMap<RouteKey, Arc<RouteState>> = HashMap::new();
        let mut out = Vec::new();
        for r in routes {
            let n = seen.entry(r.fingerprint).or_default();
            let key = (r.fingerprint, *n);
            *n += 1;
            let state = match map.get(&key) {
                Some(s) => s.clone(),
                None => Arc::new(make(r)?),
            };
            next.insert(key, state.clone());
            out.push(state);
        }
        *map = next;
        Ok(out)
    }

    /// Routes with state (tests).
    pub fn len(&self) -> usize {
        self.by_route.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_routes;
    use serde_json::json;
    use std::sync::atomic::Ordering;

    fn routes(v: serde_json::Value) -> Vec<Route> {
        parse_routes(&v).unwrap()
    }

    fn make(r: &Route) -> Result<RouteState, ConfigError> {
        Ok(RouteState::fresh(r, 1))
    }

    #[test]
    fn unchanged_routes_keep_state_changed_ones_start_fresh() {
        let reg = RouteStates::default();
        let a = json!({"name": "a", "match": {"ports": 1}, "action": {"type": "forward", "target": {"host": "h", "port": 2}}});
        let b = json!({"name": "b", "match": {"ports": 3}, "action": {"type": "forward", "target": {"host": "h", "port": 4}}});
        let s1 = reg.resolve(&routes(json!([a, b])), make).unwrap();
        s1[0].active.store(2, Ordering::Relaxed);
        s1[1].active.store(5, Ordering::Relaxed);
        // Same routes in another order, and key order inside the object does not matter.
        let a2 = json!({"action": {"target": {"port": 2, "host": "h"}, "type": "forward"}, "match": {"ports": 1}, "name": "a"});
        let s2 = reg.resolve(&routes(json!([b, a2])), make).unwrap();
        assert!(Arc::ptr_eq(&s2[1], &s1[0]));
        assert!(Arc::ptr_eq(&s2[0], &s1[1]));
        // Route b changes its target: fresh state; a stays.
        let b2 = json!({"name": "b", "match": {"ports": 3}, "action": {"type": "forward", "target": {"host": "h", "port": 5}}});
        let s3 = reg.resolve(&routes(json!([a, b2])), make).unwrap();
        assert!(Arc::ptr_eq(&s3[0], &s1[0]));
        assert_eq!(s3[1].active.load(Ordering::Relaxed), 0);
        // Removed routes leave the registry; their state lives on while held.
        let s4 = reg.resolve(&routes(json!([a])), make).unwrap();
        assert_eq!(reg.len(), 1);
        assert_eq!(s1[1].active.load(Ordering::Relaxed), 5);
        assert!(Arc::ptr_eq(&s4[0], &s1[0]));
    }

    #[test]
    fn identical_routes_get_one_state_each() {
        let reg = RouteStates::default();
        let a = json!({"match": {"ports": 1}, "action": {"type": "forward", "target": {"host": "h", "port": 2}}});
        let s1 = reg.resolve(&routes(json!([a, a])), make).unwrap();
        assert!(!Arc::ptr_eq(&s1[0], &s1[1]));
        let s2 = reg.resolve(&routes(json!([a, a])), make).unwrap();
        assert!(Arc::ptr_eq(&s1[0], &s2[0]) && Arc::ptr_eq(&s1[1], &s2[1]));
    }

    #[test]
    fn a_failed_update_changes_nothing() {
        let reg = RouteStates::default();
        let a = json!({"name": "a", "match": {"ports": 1}, "action": {"type": "forward", "target": {"host": "h", "port": 2}}});
        let b = json!({"name": "b", "match": {"ports": 3}, "action": {"type": "forward", "target": {"host": "h", "port": 4}}});
        let s1 = reg.resolve(&routes(json!([a])), make).unwrap();
        let failed = reg.resolve(&routes(json!([b])), |_| Err(ConfigError::Invalid("no".into())));
        assert!(failed.is_err());
        let s2 = reg.resolve(&routes(json!([a])), make).unwrap();
        assert!(Arc::ptr_eq(&s1[0], &s2[0]));
    }
}
