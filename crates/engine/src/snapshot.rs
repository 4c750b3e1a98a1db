//! The immutable routing snapshot swapped by `updateRoutes`: the compiled route table, the TLS
//! server configuration of each port with terminating routes (certificates chosen by SNI), and
//! backend clients for routes that verify their backends. New connections (and new requests on
//! open HTTP connections) load the current snapshot; nothing on the data path locks.

use crate::config::{ProxyOptions, Route};
use crate::error::ConfigError;
use crate::http::Backends;
use crate::matching::RouteTable;
use crate::tls::{server_config, ServerTlsOptions};
use std::collections::HashMap;
use std::sync::Arc;

pub struct Snapshot {
    pub table: RouteTable,
    /// Server TLS configuration per port that has terminating routes.
    pub tls: HashMap<u16, Arc<rustls::ServerConfig>>,
    /// Per route (table order): its own backend clients when it verifies backend certificates.
    pub backends: Vec<Option<Arc<Backends>>>,
    /// Per route (table order): the rate limiter of routes with `security.rateLimit`.
    pub limiters: Vec<Option<Arc<crate::http::RateLimiter>>>,
}

impl Snapshot {
    pub fn empty() -> Self {
        Snapshot { table: RouteTable::default(), tls: HashMap::new(), backends: Vec::new(), limiters: Vec::new() }
    }

    pub fn build(routes: Vec<Route>, o: &ProxyOptions) -> Result<Self, ConfigError> {
        let table = RouteTable::new(routes);
        let mut tls = HashMap::new();
        let opts = ServerTlsOptions { resumption: o.tls_session_resumption };
        for port in table.ports() {
            if let Some(cfg) = server_config(&table.routes_on_port(port), opts)
                .map_err(|e| ConfigError::Invalid(format!("TLS configuration of port {port}: {e}")))?
            {
                tls.insert(port, cfg);
            }
        }
        let backends = table
            .routes()
            .iter()
            .map(|r| {
                let h = &r.forward().http;
                if h.verify_backend || !h.backend_ca.is_empty() {
                    Backends::new(h.verify_backend, &h.backend_ca, o)
                        .map(|b| Some(Arc::new(b)))
                        .map_err(|e| ConfigError::Invalid(format!("{}: backend TLS: {e}", r.route.label())))
                } else {
                    Ok(None)
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let limiters = table
            .routes()
            .iter()
            .map(|r| r.route.security.rate_limit.as_ref().map(|_| Arc::new(crate::http::RateLimiter::default())))
            .collect();
        Ok(Snapshot { table, tls, backends, limiters })
    }
}
