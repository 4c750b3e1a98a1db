//! Certificates for `bench/certs.ts`: `count` self-signed ECDSA P-256 certificates, each with
//! its own key, for `d<i>.bench.test`, written as a JSON list of `{ domain, cert, key }` and as
//! a certificate store (`<store>/r<i>/`, the engine's own layout and writer).
//!
//!   cargo run --example bench_certs -- <count> <json-out> <store-dir>

use engine::acme::store::{DiskStore, Entry};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, count, json_out, store_dir] = &args[..] else {
        return Err("usage: bench_certs <count> <json-out> <store-dir>".into());
    };
    let count: usize = count.parse()?;
    let store = DiskStore::new(store_dir);
    let mut list = Vec::with_capacity(count);
    for i in 0..count {
        let domain = format!("d{i}.bench.test");
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(vec![domain.clone()])?;
        params.not_after = rcgen::date_time_ymd(2099, 1, 1);
        let cert = params.self_signed(&key)?;
        let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
        let (issued_ms, expires_ms) = engine::tls::validity_ms(&cert_pem)?;
        let entry = Entry {
            cert_pem: cert_pem.clone(),
            key_pem: key_pem.clone(),
            domains: vec![domain.clone()],
            issued_ms,
            expires_ms,
            source: "acme".into(),
        };
        store.save(&format!("r{i}"), &entry)?;
        list.push(serde_json::json!({ "domain": domain, "cert": cert_pem, "key": key_pem }));
    }
    std::fs::write(json_out, serde_json::to_string(&list)?)?;
    Ok(())
}
