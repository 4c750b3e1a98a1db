//! PEM texts to rustls types: certificate chains and signing keys. A leaf module: it imports
//! nothing else of this crate, so the configuration, the certificate store and (next) the ACME
//! store can all use it.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use std::sync::Arc;

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
    let signing =
        rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| format!("unsupported private key: {e}"))?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|e| format!("the key does not match the certificate ({e})"))?;
    Ok(Arc::new(ck))
}

/// The validity of the first certificate of a PEM chain: (`notBefore`, `notAfter`) in
/// milliseconds since the epoch.
pub fn validity_ms(cert_pem: &str) -> Result<(i64, i64), String> {
    let certs = parse_certs(cert_pem)?;
    validity_of(&certs[0])
}

/// The validity of a DER certificate: (`notBefore`, `notAfter`) in ms since the epoch.
pub fn validity_of(der: &rustls::pki_types::CertificateDer<'_>) -> Result<(i64, i64), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| format!("the certificate does not parse as X.509: {e}"))?;
    let v = cert.validity();
    Ok((v.not_before.timestamp().saturating_mul(1000), v.not_after.timestamp().saturating_mul(1000)))
}
