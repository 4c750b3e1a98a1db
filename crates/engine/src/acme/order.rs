//! One ACME order, on instant-acme: account (restored from the store, else created and stored),
//! order, HTTP-01 challenges published to the proxy's responder, validation, finalisation with a
//! fresh ECDSA P-256 key, and the certificate chain.

use super::store::DiskStore;
use super::Acme;
use crate::config::{AcmeChallenge, AcmeSettings};
use bytes::Bytes;
use instant_acme::{
    Account, AuthorizationStatus, BodyWrapper, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};
use std::time::Duration;

/// How long validation and issuance may take before the order counts as failed.
const ORDER_TIMEOUT: Duration = Duration::from_secs(120);

/// An issued certificate.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Why an order failed: the CA's problem (`rate_limited` when it said so), or anything else.
#[derive(Debug, Clone)]
pub struct OrderError {
    pub message: String,
    pub rate_limited: bool,
}

impl From<instant_acme::Error> for OrderError {
    fn from(e: instant_acme::Error) -> Self {
        let rate_limited = matches!(&e, instant_acme::Error::Api(p)
            if p.r#type.as_deref() == Some("urn:ietf:params:acme:error:rateLimited"));
        let message = match &e {
            instant_acme::Error::Api(p) => format!(
                "the CA refused: {} ({})",
                p.detail.as_deref().unwrap_or("no detail"),
                p.r#type.as_deref().unwrap_or("no type")
            ),
            other => {
                // The whole chain: "client error (Connect)" alone says nothing.
                let mut m = other.to_string();
                let mut cur = std::error::Error::source(other);
                while let Some(e) = cur {
                    m.push_str(": ");
                    m.push_str(&e.to_string());
                    cur = e.source();
                }
                m
            }
        };
        OrderError { message, rate_limited }
    }
}

impl From<String> for OrderError {
    fn from(message: String) -> Self {
        OrderError { message, rate_limited: false }
    }
}

/// The HTTP client towards the CA: Mozilla roots plus the configured `directoryCa`.
fn http_client(s: &AcmeSettings) -> Result<Box<dyn instant_acme::HttpClient>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for c in &s.directory_ca {
        roots.add(c.clone()).map_err(|e| format!("acme.directoryCa: {e}"))?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut tcp = hyper_util::client::legacy::connect::HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_connect_timeout(Some(Duration::from_secs(15)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(tcp);
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, BodyWrapper<Bytes>>(https);
    Ok(Box::new(client))
}

/// The store key of an account: its directory and e-mail.
fn account_key(s: &AcmeSettings) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, format!("{}\n{}", s.directory_url, s.email).as_bytes());
    digest.as_ref()[..12].iter().map(|b| format!("{b:02x}")).collect()
}

/// The account for these settings: restored from the store, else created (and stored).
pub async fn account(s: &AcmeSettings, store: &DiskStore) -> Result<Account, OrderError> {
    let key = account_key(s);
    let saved = {
        let (store, key) = (store.clone(), key.clone());
        tokio::task::spawn_blocking(move || store.load_account(&key)).await.ok().flatten()
    };
    if let Some(text) = saved {
        if let Ok(creds) = serde_json::from_str(&text) {
            if let Ok(a) = Account::builder_with_http(http_client(s)?).from_credentials(creds).await {
                return Ok(a);
            }
        }
    }
    let contact = format!("mailto:{}", s.email);
    let (account, creds) = Account::builder_with_http(http_client(s)?)
        .create(
            &NewAccount { contact: &[&contact], terms_of_service_agreed: true, only_return_existing: false },
            s.directory_url.clone(),
            None,
        )
        .await?;
    let text = serde_json::to_string(&creds).map_err(|e| e.to_string())?;
    let store = store.clone();
    // Not fatal when it fails: the account works, and is created again next time.
    let _ = tokio::task::spawn_blocking(move || store.save_account(&key, &text)).await;
    Ok(account)
}

/// What an order published for its validations (withdrawn when it ends, whatever the outcome).
#[derive(Default)]
struct Published {
    tokens: Vec<String>,
    names: Vec<String>,
    /// DNS-01 TXT records: (name, value).
    records: Vec<(String, String)>,
}

/// How long a DNS-01 function may take.
const DNS_CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// Calls `acme.dns01.setRecord` / `removeRecord` with (name, value).
async fn call_dns(acme: &Acme, function: u32, name: &str, value: &str) -> Result<(), String> {
    let bridge = acme.bridge.as_ref().ok_or("DNS-01 needs the JavaScript bridge (acme.dns01 functions)")?;
    let call = bridge.call(function, serde_json::json!({ "$args": [name, value] }));
    match tokio::time::timeout(DNS_CALL_TIMEOUT, call).await {
        Err(_) => Err(format!("the DNS-01 function did not settle within {} s", DNS_CALL_TIMEOUT.as_secs())),
        Ok(r) => r.map(|_| ()),
    }
}

/// Orders a certificate for `domains` with `s`'s challenge, answered through the proxy
/// (`acme`'s HTTP-01 tokens or TLS-ALPN-01 certificates) or the user's DNS-01 functions.
pub async fn order(account: &Account, domains: &[String], s: &AcmeSettings, acme: &Acme) -> Result<Issued, OrderError> {
    let mut published = Published::default();
    let r = order_inner(account, domains, s, acme, &mut published).await;
    if !published.tokens.is_empty() {
        let store = super::DiskStore::new(&s.store);
        for t in &published.tokens {
            acme.tokens.remove(t);
        }
        let tokens = std::mem::take(&mut published.tokens);
        let _ = acme.handle.spawn_blocking(move || tokens.iter().for_each(|t| store.remove_challenge(t))).await;
    }
    for n in published.names {
        acme.alpn.remove(&n);
    }
    if let Some(hooks) = s.dns01 {
        for (name, value) in published.records {
            // Removed also when validation failed; a failure here is logged, not fatal.
            if let Err(why) = call_dns(acme, hooks.remove_record, &name, &value).await {
                acme.warn(format!("acme.dns01.removeRecord({name}) failed: {why}"));
            }
        }
    }
    r
}

async fn order_inner(
    account: &Account,
    domains: &[String],
    s: &AcmeSettings,
    acme: &Acme,
    published: &mut Published,
) -> Result<Issued, OrderError> {
    let challenge = s.challenge;
    let kind = match challenge {
        AcmeChallenge::Http01 => ChallengeType::Http01,
        AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
        AcmeChallenge::Dns01 => ChallengeType::Dns01,
    };
    let ids: Vec<Identifier> = domains.iter().map(|d| Identifier::Dns(d.clone())).collect();
    let mut order = account.new_order(&NewOrder::new(&ids)).await?;
    {
        let mut authorizations = order.authorizations();
        while let Some(a) = authorizations.next().await {
            let mut a = a?;
            match a.status {
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                other => return Err(format!("authorization for {} is {other:?}", a.identifier()).into()),
            }
            let name = a.identifier().to_string();
            // The name without `*.` (a wildcard's TXT record is at the base name).
            let base = match a.identifier().identifier {
                Identifier::Dns(d) => d.clone(),
                other => format!("{other:?}"),
            };
            let mut ch = a
                .challenge(kind.clone())
                .ok_or_else(|| format!("the CA offers no {} challenge for {name}", challenge.as_str()))?;
            let key_auth = ch.key_authorization();
            match challenge {
                AcmeChallenge::Dns01 => {
                    let hooks = s.dns01.ok_or_else(|| "the DNS-01 challenge needs acme.dns01 functions".to_owned())?;
                    let record = format!("_acme-challenge.{base}");
                    let value = key_auth.dns_value();
                    published.records.push((record.clone(), value.clone()));
                    call_dns(acme, hooks.set_record, &record, &value)
                        .await
                        .map_err(|e| format!("acme.dns01.setRecord({record}) failed: {e}"))?;
                }
                AcmeChallenge::TlsAlpn01 => {
                    let cert = super::alpn_validation_cert(&name, key_auth.digest().as_ref())?;
                    acme.alpn.insert(&name, cert);
                    published.names.push(name.clone());
                }
                _ => {
                    acme.tokens.insert(ch.token.clone(), key_auth.as_str().to_owned());
                    published.tokens.push(ch.token.clone());
                    // For the instances sharing the store (behind one load balancer, the CA's
                    // request may reach any of them). A failure only loses that help.
                    let (store, token, answer) =
                        (super::DiskStore::new(&s.store), ch.token.clone(), key_auth.as_str().to_owned());
                    let saved = acme.handle.spawn_blocking(move || store.save_challenge(&token, &answer)).await;
                    if let Ok(Err(e)) = saved {
                        acme.warn(format!("could not publish the HTTP-01 answer in {}: {e}", s.store));
                    }
                }
            }
            ch.set_ready().await?;
        }
    }
    let retry = RetryPolicy::new().initial_delay(Duration::from_millis(250)).backoff(1.5).timeout(ORDER_TIMEOUT);
    let status = order.poll_ready(&retry).await?;
    if status != OrderStatus::Ready {
        return Err(failure_detail(&mut order).await.into());
    }
    let key_pem = order.finalize().await?;
    let cert_pem = order.poll_certificate(&retry).await?;
    Ok(Issued { cert_pem, key_pem })
}

/// Why an order became invalid: the first challenge error the CA reports.
async fn failure_detail(order: &mut instant_acme::Order) -> String {
    let mut authorizations = order.authorizations();
    while let Some(Ok(a)) = authorizations.next().await {
        for c in &a.challenges {
            if let Some(p) = &c.error {
                return format!(
                    "validation of {} failed: {}",
                    a.identifier(),
                    p.detail.as_deref().unwrap_or("no detail from the CA")
                );
            }
        }
    }
    "the order became invalid".into()
}
