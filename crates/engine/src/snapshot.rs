//! The immutable routing snapshot swapped by `updateRoutes`: the compiled route table, the TLS
//! server configuration of each port with terminating routes (certificates chosen by SNI).
//! Runtime state (counts, windows, cursors, a route's own backend pools) is not here: routes
//! hold handles to it, and it lives in the route-state registry ([`crate::state`]). New connections (and new requests on
//! open HTTP connections) load the current snapshot; nothing on the data path locks.

use crate::acme::AutoRoute;
use crate::config::{AcmeSettings, ProxyOptions, Route, RouteAction};
use crate::error::ConfigError;
use crate::matching::RouteTable;
use crate::state::{RouteState, RouteStates};
use crate::tls::{StaticCerts, TlsContext};
use crate::upstream::Backends;
use std::collections::HashMap;
use std::sync::Arc;

pub struct Snapshot {
    pub table: RouteTable,
    /// Server TLS configuration per port that has terminating routes (the engine's lifetime
    /// configurations: see [`crate::tls::TlsContext`]).
    pub tls: HashMap<u16, Arc<rustls::ServerConfig>>,
    /// The certificates configured on these routes, installed in the certificate store when
    /// this snapshot is.
    pub certs: Arc<StaticCerts>,
    /// The `certificate: 'auto'` routes with their effective ACME settings.
    pub acme: Vec<Arc<AutoRoute>>,
}

impl Snapshot {
    pub fn empty() -> Self {
        Snapshot { table: RouteTable::default(), tls: HashMap::new(), certs: Arc::default(), acme: Vec::new() }
    }

    /// Compiles `routes`, taking each route's runtime state from `states` (see [`crate::state`]).
    pub fn build(
        routes: Vec<Route>,
        o: &ProxyOptions,
        states: &RouteStates,
        tls_cx: &TlsContext,
    ) -> Result<Self, ConfigError> {
        let table = RouteTable::with_states(routes, states, |r| {
            let RouteAction::Forward(f) = &r.action;
            let mut st = RouteState::fresh(r, f.targets.len());
            let h = &f.http;
            if h.verify_backend || !h.backend_ca.is_empty() {
                let b = Backends::new(h.verify_backend, &h.backend_ca, o)
                    .map_err(|e| ConfigError::Invalid(format!("{}: backend TLS: {e}", r.label())))?;
                st.backends = Some(Arc::new(b));
            }
            Ok(st)
        })?;
        for r in table.routes() {
            let f = r.forward();
            if f.socket_handler.is_some() && f.send_proxy_protocol.flatten().is_some() {
                return Err(ConfigError::Invalid(format!(
                    "{}: action.sendProxyProtocol: a socket-handler route has no backend to send it to",
                    r.route.label()
                )));
            }
        }
        let certs = Arc::new(StaticCerts::from_table(&table));
        let mut tls = HashMap::new();
        for port in certs.ports() {
            let cfg = tls_cx
                .server_config(port)
                .map_err(|e| ConfigError::Invalid(format!("TLS configuration of port {port}: {e}")))?;
            tls.insert(port, cfg);
        }
        let acme = table
            .routes()
            .iter()
            .filter_map(|r| {
                let RouteAction::Forward(f) = &r.route.action;
                let ra = f.tls.as_ref()?.acme.as_ref()?;
                Some(AcmeSettings::resolve(o.acme.as_ref(), ra, &r.route.domains, &r.route.label()).map(|settings| {
                    Arc::new(AutoRoute {
                        name: r.name.clone(),
                        domains: r.route.domains.iter().map(|d| d.as_str().to_owned()).collect(),
                        settings,
                    })
                }))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Snapshot { table, tls, certs, acme })
    }
}

impl Snapshot {
    /// The listening ports this snapshot needs: its routes' ports, and the HTTP-01 challenge
    /// ports of its `'auto'` routes (listened on while such routes exist; TLS-ALPN-01 needs
    /// only the routes' own TLS ports).
    pub fn port_counts(&self) -> HashMap<u16, usize> {
        let mut counts = self.table.port_counts();
        for r in self.acme.iter().filter(|r| r.settings.challenge == crate::config::AcmeChallenge::Http01) {
            *counts.entry(r.settings.http_port).or_default() += 1;
        }
        counts
    }
}
