//! Error types of the engine, one enum per layer, each with a stable `code()` that the binding
//! copies onto the JavaScript `Error` so that callers can branch on it.

use thiserror::Error;

/// A configuration problem found while validating options or routes.
///
/// Messages name the route (by `name`, else by index) and the field path, e.g.
/// `route "api" (index 2): match.ports[1].to: port must be 1-65535, got 70000`.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// The value is malformed or out of range.
    #[error("{0}")]
    Invalid(String),
    /// The option is part of the upstream API but this engine does not implement it yet.
    #[error("not supported yet: {0}")]
    NotSupported(String),
}

impl ConfigError {
    pub fn code(&self) -> &'static str {
        match self {
            ConfigError::Invalid(_) => "ERR_INVALID_CONFIG",
            ConfigError::NotSupported(_) => "ERR_NOT_SUPPORTED",
        }
    }
}

/// Errors of the proxy lifecycle (start, stop, port management).
#[derive(Debug, Error)]
pub enum EngineError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listening port could not be bound.
    #[error("cannot listen on port {port}: {source}")]
    Bind {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("the proxy is already running")]
    AlreadyRunning,
    #[error("the proxy is not running")]
    NotRunning,
    #[error("cannot create the proxy runtime: {0}")]
    Runtime(std::io::Error),
    #[error("internal error: {0}")]
    Internal(String),
    /// A bad argument to an API call (an unknown route name, say).
    #[error("{0}")]
    InvalidArg(String),
    /// A certificate could not be obtained (the reason from the CA or the store).
    #[error("certificate: {0}")]
    Certificate(String),
}

impl EngineError {
    pub fn code(&self) -> &'static str {
        match self {
            EngineError::Config(c) => c.code(),
            EngineError::Bind { .. } => "ERR_BIND",
            EngineError::AlreadyRunning => "ERR_ALREADY_RUNNING",
            EngineError::NotRunning => "ERR_NOT_RUNNING",
            EngineError::Runtime(_) => "ERR_RUNTIME",
            EngineError::Internal(_) => "ERR_INTERNAL",
            EngineError::InvalidArg(_) => "ERR_INVALID_ARG",
            EngineError::Certificate(_) => "ERR_CERTIFICATE",
        }
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
