//! Route TLS (`action.tls`): mode and certificates, parsed into rustls keys at validation.

use super::reader::{opt, At, ReadResult};
use super::*;

/// TLS handling of a forward route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Route by SNI, relay the encrypted bytes unchanged.
    Passthrough,
    /// Terminate TLS here; plain HTTP to the backend.
    Terminate,
    /// Terminate TLS here; TLS again to the backend (SNI = target host).
    TerminateAndReencrypt,
}

impl TlsMode {
    pub fn terminates(self) -> bool {
        !matches!(self, TlsMode::Passthrough)
    }
}

/// `action.tls`: the mode and, for termination, the route's certificate.
#[derive(Debug, Clone)]
pub struct RouteTls {
    pub mode: TlsMode,
    /// Parsed and checked (key matches certificate) at validation time.
    pub certificate: Option<Arc<rustls::sign::CertifiedKey>>,
    /// `certificate: 'auto'`: the route's certificate comes from ACME, with these route-level
    /// settings (`action.tls.acme`, empty when not given).
    pub acme: Option<RouteAcme>,
}

pub(super) fn parse_tls(t: At) -> CResult<RouteTls> {
    t.obj()?;
    let mode = match opt(t, "mode", |m| m.str())? {
        Some("passthrough") => TlsMode::Passthrough,
        Some("terminate") => TlsMode::Terminate,
        Some("terminate-and-reencrypt") => TlsMode::TerminateAndReencrypt,
        Some(other) => return Err(ConfigError::Invalid(format!("action.tls.mode: unknown mode {other:?}"))),
        None => return Err(ConfigError::Invalid("action.tls.mode is required".into())),
    };
    for key in ["versions", "ciphers", "honorCipherOrder", "sessionTimeout"] {
        if mode.terminates() && t.has(key) {
            return unsupported(format!("action.tls.{key}"));
        }
    }
    let mut acme = None;
    let certificate = match (mode.terminates(), t.get("certificate")) {
        (false, _) => None, // passthrough never uses a certificate (upstream ignores one)
        (true, None) => {
            return Err(ConfigError::Invalid(
                "action.tls.certificate is required to terminate TLS: a certificate object, or 'auto' (ACME)".into(),
            ))
        }
        (true, Some(Value::String(s))) if s == "auto" => {
            acme = Some(match t.get("acme") {
                Some(a) => parse_route_acme(At::new(a, "action.tls.acme"))?,
                None => RouteAcme::default(),
            });
            None
        }
        (true, Some(c)) => {
            let c = At::new(c, "action.tls.certificate");
            c.obj()?;
            let read = |pem_key: &str, file_key: &str| -> ReadResult<String> {
                if let Some(pem) = opt(c, pem_key, |x| x.str().map(str::to_owned))? {
                    return Ok(pem);
                }
                match opt(c, file_key, |x| x.str().map(str::to_owned))? {
                    Some(path) => std::fs::read_to_string(&path)
                        .map_err(|e| format!("action.tls.certificate.{file_key}: cannot read {path:?}: {e}")),
                    None => c.err(format!("needs '{pem_key}' (PEM) or '{file_key}'")),
                }
            };
            let cert = read("cert", "certFile")?;
            let key = read("key", "keyFile")?;
            let ca = opt(c, "ca", |x| x.str().map(str::to_owned))?;
            let ck = crate::tls::certified_key(&cert, &key, ca.as_deref())
                .map_err(|e| ConfigError::Invalid(format!("action.tls.certificate: {e}")))?;
            Some(ck)
        }
    };
    Ok(RouteTls { mode, certificate, acme })
}
