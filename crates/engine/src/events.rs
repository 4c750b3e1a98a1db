//! Events the engine reports to its embedder (the napi binding forwards them to JavaScript).
//! Emitting never blocks the data path: sinks must be cheap and non-blocking.

/// Severity of a log event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// A certificate was issued, renewed, or failed (`SmartProxy` emits `kind` with the rest).
#[derive(Debug, Clone)]
pub struct CertEvent {
    /// `certificate-issued`, `certificate-renewed` or `certificate-failed`.
    pub kind: &'static str,
    pub route: String,
    pub domain: String,
    /// `notAfter` of the certificate now served, ms since the epoch.
    pub expiry_ms: Option<i64>,
    /// `acme` or `custom`.
    pub source: String,
    pub error: Option<String>,
}

/// Something worth telling the embedder about.
#[derive(Debug, Clone)]
pub enum Event {
    /// A log line; `route` and `client` when it is about one connection or request.
    Log {
        level: LogLevel,
        message: String,
        route: Option<String>,
        client: Option<String>,
    },
    Certificate(CertEvent),
}

/// Receiver of engine events. Implementations must not block.
pub trait EventSink: Send + Sync + 'static {
    fn emit(&self, event: Event);
}

/// A sink that drops everything (tests, embedders without logging).
pub struct NullSink;

impl EventSink for NullSink {
    fn emit(&self, _event: Event) {}
}
