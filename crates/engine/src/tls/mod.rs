//! TLS: certificates (PEM → rustls `CertifiedKey`, checked at validation time), the per-port
//! SNI certificate resolver, the server configuration used for termination, and the client
//! configurations used for re-encryption to backends.
//!
//! Certificates belong to the route table snapshot: `updateRoutes` builds new resolvers and new
//! connections use them; established TLS sessions keep theirs.

use crate::config::{RouteAction, TlsMode};
use crate::matching::{normalize_host, CompiledRoute, DomainPattern};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

/// The crypto provider of the whole engine (ring: fast to build, no C toolchain beyond cc).
pub fn provider() -> Arc<CryptoProvider> {
    static P: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    P.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())).clone()
}

/// Parses every certificate in a PEM text.
pub fn parse_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("certificate PEM does not parse: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate found in the PEM text".into());
    }
    Ok(certs)
}

/// Builds a signing identity from PEM certificate chain and key (RSA, ECDSA or Ed25519; PKCS#8,
/// PKCS#1 or SEC1), appending `ca` to the chain. Fails when the key does not belong to the
/// certificate.
pub fn certified_key(cert_pem: &str, key_pem: &str, ca_pem: Option<&str>) -> Result<Arc<CertifiedKey>, String> {
    let mut chain = parse_certs(cert_pem)?;
    if let Some(ca) = ca_pem.filter(|c| !c.trim().is_empty()) {
        chain.extend(parse_certs(ca)?);
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| format!("private key PEM does not parse: {e}"))?;
    let signing = provider().key_provider.load_private_key(key).map_err(|e| format!("unsupported private key: {e}"))?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|e| format!("the key does not match the certificate ({e})"))?;
    Ok(Arc::new(ck))
}

/// Chooses the certificate for a ClientHello among the terminating routes of one port: exact
/// names first, then wildcard patterns in route priority order, then a route without domains.
/// No match (or no SNI and no catch-all route) aborts the handshake with an alert.
#[derive(Debug, Default)]
pub struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: Vec<(DomainPattern, Arc<CertifiedKey>)>,
    fallback: Option<Arc<CertifiedKey>>,
}

impl SniResolver {
    pub fn lookup(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let found = sni.and_then(|name| {
            let n = normalize_host(name);
            self.exact
                .get(&*n)
                .cloned()
                .or_else(|| self.wildcard.iter().find(|(p, _)| p.matches(&n)).map(|(_, c)| c.clone()))
        });
        found.or_else(|| self.fallback.clone())
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty() && self.fallback.is_none()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.lookup(hello.server_name())
    }
}

/// Session resumption of terminated TLS (tickets and the session cache).
#[derive(Debug, Clone, Copy)]
pub struct ServerTlsOptions {
    pub resumption: bool,
}

/// Builds the server configuration of one port from its routes (in priority order).
/// Returns `None` when no route on the port terminates TLS.
pub fn server_config(
    routes: &[&Arc<CompiledRoute>],
    opts: ServerTlsOptions,
) -> Result<Option<Arc<ServerConfig>>, String> {
    let mut r = SniResolver::default();
    for route in routes {
        let RouteAction::Forward(f) = &route.route.action;
        let Some(tls) = &f.tls else { continue };
        if tls.mode == TlsMode::Passthrough {
            continue;
        }
        let Some(ck) = &tls.certificate else { continue };
        if route.route.domains.is_empty() {
            r.fallback.get_or_insert_with(|| ck.clone());
        }
        for d in &route.route.domains {
            if d.is_wildcard() {
                r.wildcard.push((d.clone(), ck.clone()));
            } else {
                r.exact.entry(d.as_str().to_owned()).or_insert_with(|| ck.clone());
            }
        }
    }
    if r.is_empty() {
        return Ok(None);
    }
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(r));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if opts.resumption {
        cfg.ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| e.to_string())?;
    } else {
        cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        cfg.send_tls13_tickets = 0;
    }
    Ok(Some(Arc::new(cfg)))
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
