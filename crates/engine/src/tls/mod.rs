//! TLS: certificates (PEM → rustls `CertifiedKey` in `pem`, checked at validation time), the
//! certificate store and its per-port SNI resolvers (`store`), the engine's lifetime TLS
//! state ([`TlsContext`]: server configurations, ticket key, session cache), and the client
//! configurations used for re-encryption to backends.
//!
//! `updateRoutes` installs the new routes' certificates in the store; new handshakes use them,
//! established TLS sessions keep theirs, and resumption keeps working across the update.

mod pem;
mod store;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// The crypto provider of the whole engine (ring: fast to build, no C toolchain beyond cc).
pub fn provider() -> Arc<CryptoProvider> {
    static P: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    P.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())).clone()
}

pub use pem::{certified_key, parse_certs, validity_ms, validity_of};
pub use store::{CertStore, PortResolver, SniCerts, StaticCerts};

/// The TLS state of one running engine, made once at `start()`: the certificate store, the
/// session-ticket key (rotated by time inside rustls' ticketer, every 6 hours, never by route
/// updates), the session cache, and one server configuration per terminating port. A route
/// update reuses all of them, so clients resume their sessions across `updateRoutes`.
pub struct TlsContext {
    pub store: Arc<CertStore>,
    ticketer: Option<Arc<dyn rustls::server::ProducesTickets>>,
    sessions: Arc<dyn rustls::server::StoresServerSessions>,
    /// Cold: written when a snapshot is built.
    configs: Mutex<HashMap<u16, Arc<ServerConfig>>>,
}

/// Sessions kept for TLS 1.2 session-id resumption (rustls' default per configuration).
const SESSION_CACHE_SIZE: usize = 256;

impl TlsContext {
    /// `resumption`: session tickets and the session cache (`tlsSessionResumption`).
    pub fn new(resumption: bool) -> Result<Self, String> {
        let (ticketer, sessions): (_, Arc<dyn rustls::server::StoresServerSessions>) = if resumption {
            (
                Some(rustls::crypto::ring::Ticketer::new().map_err(|e| e.to_string())?),
                rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE_SIZE),
            )
        } else {
            (None, Arc::new(rustls::server::NoServerSessionStorage {}))
        };
        Ok(TlsContext { store: Arc::default(), ticketer, sessions, configs: Mutex::default() })
    }

    /// The server configuration of `port` (made on first use, then kept for the engine's life).
    pub fn server_config(&self, port: u16) -> Result<Arc<ServerConfig>, String> {
        let mut configs = self.configs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = configs.get(&port) {
            return Ok(c.clone());
        }
        let resolver = Arc::new(PortResolver { port, store: self.store.clone() });
        let mut cfg = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        cfg.session_storage = self.sessions.clone();
        match &self.ticketer {
            Some(t) => cfg.ticketer = t.clone(),
            None => cfg.send_tls13_tickets = 0,
        }
        let cfg = Arc::new(cfg);
        configs.insert(port, cfg.clone());
        Ok(cfg)
    }
}

/// Accepts any backend certificate (still checking the handshake signatures), as upstream's
/// HttpProxy connected to re-encrypted backends without verification.
#[derive(Debug)]
struct AcceptAnyBackend(Arc<CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyBackend {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Client configuration for re-encryption. `verify`: check the backend's certificate against
/// the Mozilla roots plus `extra_roots`; otherwise accept any certificate.
pub fn client_config(
    verify: bool,
    extra_roots: &[CertificateDer<'static>],
    http2: bool,
) -> Result<Arc<ClientConfig>, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?;
    let mut cfg = if verify {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for c in extra_roots {
            roots.add(c.clone()).map_err(|e| format!("extra root certificate rejected: {e}"))?;
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyBackend(provider())))
            .with_no_client_auth()
    };
    cfg.alpn_protocols = if http2 { vec![b"h2".to_vec()] } else { vec![b"http/1.1".to_vec()] };
    Ok(Arc::new(cfg))
}
