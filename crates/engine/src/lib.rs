//! smartproxy-native engine: everything that moves bytes, with no knowledge of Node.js.
//!
//! Data flows one way: [`config`] (options and routes validated from the JSON the binding hands
//! over) → [`snapshot::Snapshot`] (the compiled [`matching::RouteTable`] and the routes'
//! certificates, built once per update) → the connection tasks of [`dispatch`] and [`http`],
//! which only ever see compiled data. Runtime state lives outside snapshots: the running
//! engine's [`context`], per-route [`state`], the certificate store in [`tls`]. [`proxy`] owns
//! the lifecycle and the ports. The binding crate (`src/` at the workspace root) converts types
//! and maps errors; it owns no proxy logic. `docs/architecture.md` walks through it all.
// Denied everywhere; `listener::sockopt` is the one module that allows it (one setsockopt).
#![deny(unsafe_code)]

pub mod access_log;
pub mod acme;
pub mod config;
pub mod conn;
pub mod context;
pub mod detect;
pub mod dispatch;
pub mod error;
pub mod events;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod http;
pub mod js;
pub mod listener;
pub mod matching;
pub mod metrics;
pub mod proxy;
pub mod proxy_protocol;
pub mod snapshot;
pub mod state;
pub mod status;
pub mod tcp;
#[cfg(test)]
mod testutil;
mod timer;
pub mod tls;
pub mod upstream;

pub use error::{ConfigError, EngineError};
pub use events::{Event, EventSink, LogLevel};
pub use proxy::Proxy;
