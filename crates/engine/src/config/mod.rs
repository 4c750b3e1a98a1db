//! The validated configuration model: [`ProxyOptions`] and [`Route`].
//!
//! Input is the JSON the JavaScript facade produces from the user's `ISmartProxyOptions`
//! (functions replaced by `{"$fn": id}` markers, RegExps by `{"$regex": source, "flags": f}`).
//! [`parse_options`] and [`parse_routes`] turn it into typed values or a [`ConfigError`] that names
//! the route (name, else index) and the field path. Options of the upstream API that this engine
//! does not implement yet are refused with `not supported yet: …`, never silently ignored.
//! Keys upstream never knew are ignored, as upstream's JavaScript ignored them.

mod acme;
mod http_options;
mod options;
mod reader;
mod route;
mod security;
mod tls;

pub use acme::*;
pub use http_options::*;
pub use options::*;
pub use route::*;
pub use security::*;
pub use tls::*;

use crate::detect::TlsVersion;
use crate::error::ConfigError;
use crate::matching::{DomainPattern, HeaderMatcher, IpPattern, PathPattern, PortRange};
use reader::{At, ReadResult};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

impl From<String> for ConfigError {
    fn from(s: String) -> Self {
        ConfigError::Invalid(s)
    }
}

type CResult<T> = Result<T, ConfigError>;

/// Largest timer value upstream allows (2^31-1 ms, Node's `setTimeout` limit); larger values are clamped.
pub const MAX_TIMER_MS: u64 = 2_147_483_647;
/// Largest `keepAliveInactivityMultiplier`: a product with the largest timer still fits a
/// `Duration` many times over, and no real deployment idles longer than 1000 × its timeout.
pub const MAX_MULTIPLIER: f64 = 1000.0;
/// Largest `security.rateLimit.window`, in seconds: the largest timer (about 24.8 days).
pub const MAX_WINDOW_SECS: f64 = (MAX_TIMER_MS / 1000) as f64;

fn ms(at: At) -> ReadResult<Duration> {
    Ok(Duration::from_millis((at.non_negative()? as u64).min(MAX_TIMER_MS)))
}

fn unsupported<T>(what: impl Into<String>) -> CResult<T> {
    Err(ConfigError::NotSupported(what.into()))
}

/// `sendProxyProtocol` (global, on an action, on a target): the PROXY protocol header backend
/// connections start with; `None` sends none. `true` is v1, as upstream.
pub type SendProxy = Option<crate::proxy_protocol::Version>;

fn read_send_proxy(a: reader::At) -> reader::ReadResult<SendProxy> {
    use crate::proxy_protocol::Version;
    match a.v {
        Value::Bool(true) => Ok(Some(Version::V1)),
        Value::Bool(false) | Value::Null => Ok(None),
        Value::String(s) if s == "v1" => Ok(Some(Version::V1)),
        Value::String(s) if s == "v2" => Ok(Some(Version::V2)),
        _ => a.err("expected true, false, 'v1' or 'v2'"),
    }
}

fn truthy(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Array(a)) => !a.is_empty(),
        Some(_) => true,
    }
}

#[cfg(test)]
mod tests;
