//! ACME: certificates for `certificate: 'auto'` routes, ordered, stored, served and renewed by
//! the engine itself, on its own runtime.
//!
//! - [`Acme`] (one per run, in the engine context) knows the current `'auto'` routes, their
//!   certificate status, and the HTTP-01 tokens being validated ([`Http01Tokens`], answered by
//!   the request plan before routing, and on the challenge port by dispatch before any route).
//! - [`Acme::sync`] runs after every route table commit (so every port is bound first): the
//!   certificates already in the store are served at once, missing or due ones are ordered in
//!   the background (at most [`MAX_CONCURRENT_ORDERS`] at a time; one route's failure holds up
//!   no other), and removed routes stop being served.
//! - Orders are single-flight per route, and made under the store's lock so that several
//!   instances sharing a store order once (the others wait and load the result).
//! - A scheduler checks every `renewCheckIntervalHours` which certificates are due (fewer than
//!   `renewThresholdDays` left, or a third of the lifetime for certificates whose whole life is
//!   shorter than that) and retries failures with capped exponential backoff.
//! - Issued certificates go into the certificate store ([`crate::tls::CertStore`]): new
//!   handshakes get them at once, live connections keep theirs.

pub mod order;
pub mod store;

use crate::config::AcmeSettings;
use crate::events::{CertEvent, Event, EventSink, LogLevel};
use crate::tls::CertStore;
use dashmap::DashMap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use store::{DiskStore, Entry};
use tokio_util::sync::CancellationToken;

/// Orders in flight at once (per proxy).
pub const MAX_CONCURRENT_ORDERS: usize = 4;
/// First retry after a failed order; doubled per failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(60);
/// Longest wait between retries (certmagic's 6 hours).
const MAX_BACKOFF: Duration = Duration::from_secs(6 * 3600);
/// After a CA's rate-limit answer, the next try waits at least this long.
const RATE_LIMIT_BACKOFF: Duration = Duration::from_secs(3600);
/// How long an order waits for another instance's lock before giving up (it retries later).
const LOCK_WAIT: Duration = Duration::from_secs(300);
/// The path HTTP-01 validation requests ask for (RFC 8555 §8.3).
pub const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// HTTP-01 tokens being validated: token → key authorization.
#[derive(Default)]
pub struct Http01Tokens {
    map: DashMap<String, String>,
    /// Tokens held (read on every connection of a challenge port: no shard visit).
    count: AtomicUsize,
}

impl Http01Tokens {
    pub fn insert(&self, token: String, key_authorization: String) {
        if self.map.insert(token, key_authorization).is_none() {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn remove(&self, token: &str) {
        if self.map.remove(token).is_some() {
            self.count.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The key authorization for `token`, when this instance's order published it.
    pub fn get(&self, token: &str) -> Option<String> {
        if self.is_empty() {
            return None;
        }
        self.map.get(token).map(|v| v.clone())
    }

    pub fn is_empty(&self) -> bool {
        self.count.load(Ordering::Relaxed) == 0
    }
}

/// TLS-ALPN-01 validation certificates (RFC 8737), by name: served to ClientHellos that offer
/// only the `acme-tls/1` protocol, through their own server configuration.
pub struct AlpnCerts {
    map: Arc<DashMap<String, Arc<rustls::sign::CertifiedKey>>>,
    count: AtomicUsize,
    /// Made on first use; `None` if rustls refused it (the validation then fails, nothing else).
    config: std::sync::OnceLock<Option<Arc<rustls::ServerConfig>>>,
}

/// The ALPN protocol of TLS-ALPN-01 validations.
pub const ACME_TLS_ALPN: &str = "acme-tls/1";

#[derive(Debug)]
struct AlpnResolver(Arc<DashMap<String, Arc<rustls::sign::CertifiedKey>>>);

impl rustls::server::ResolvesServerCert for AlpnResolver {
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let name = crate::matching::normalize_host(hello.server_name()?);
        self.0.get(&*name).map(|c| c.clone())
    }
}

impl Default for AlpnCerts {
    fn default() -> Self {
        AlpnCerts { map: Arc::default(), count: AtomicUsize::new(0), config: std::sync::OnceLock::new() }
    }
}

impl AlpnCerts {
    pub fn insert(&self, name: &str, key: Arc<rustls::sign::CertifiedKey>) {
        if self.map.insert(name.to_ascii_lowercase(), key).is_none() {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn remove(&self, name: &str) {
        if self.map.remove(&name.to_ascii_lowercase()).is_some() {
            self.count.fetch_sub(1, Ordering::Relaxed);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.count.load(Ordering::Relaxed) == 0
    }

    /// The server configuration for a ClientHello that offers `alpn` naming `sni`, when it is a
    /// TLS-ALPN-01 validation of a name being validated.
    pub fn validation_config(&self, sni: Option<&str>, alpn: &[String]) -> Option<Arc<rustls::ServerConfig>> {
        if self.is_empty() || !alpn.iter().any(|p| p == ACME_TLS_ALPN) {
            return None;
        }
        let name = crate::matching::normalize_host(sni?);
        if !self.map.contains_key(&*name) {
            return None;
        }
        self.config
            .get_or_init(|| {
                let mut cfg = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
                    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                    .ok()?
                    .with_no_client_auth()
                    .with_cert_resolver(Arc::new(AlpnResolver(self.map.clone())));
                cfg.alpn_protocols = vec![ACME_TLS_ALPN.as_bytes().to_vec()];
                cfg.send_tls13_tickets = 0;
                Some(Arc::new(cfg))
            })
            .clone()
    }
}

/// The validation certificate of TLS-ALPN-01 for `name` (RFC 8737 §3): self-signed, the name as
/// its only SAN, the SHA-256 of the key authorization in the critical `acmeIdentifier` extension.
pub fn alpn_validation_cert(name: &str, key_auth_digest: &[u8]) -> Result<Arc<rustls::sign::CertifiedKey>, String> {
    if key_auth_digest.len() != 32 {
        return Err("the key authorization digest is not 32 bytes".into());
    }
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).map_err(|e| e.to_string())?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(key_auth_digest)];
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    // Built directly: the usual key-match check parses the certificate with webpki, which
    // refuses the critical acmeIdentifier extension (both were made together just above).
    let der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signing = rustls::crypto::ring::sign::any_supported_type(&der).map_err(|e| e.to_string())?;
    Ok(Arc::new(rustls::sign::CertifiedKey::new(vec![cert.der().clone()], signing)))
}

/// An `'auto'` route as ACME sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoRoute {
    /// The route's name (the store's directory and the certificate store's key).
    pub name: Arc<str>,
    /// The names to order, in the route's order.
    pub domains: Vec<String>,
    pub settings: AcmeSettings,
}

/// The state of a route's certificate (upstream's `ICertStatus.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertState {
    Valid,
    Pending,
    Expired,
    Error,
}

impl CertState {
    pub fn as_str(self) -> &'static str {
        match self {
            CertState::Valid => "valid",
            CertState::Pending => "pending",
            CertState::Expired => "expired",
            CertState::Error => "error",
        }
    }
}

/// A route's certificate status.
#[derive(Debug, Clone)]
pub struct CertStatus {
    pub domain: String,
    pub state: CertState,
    pub issued_ms: Option<i64>,
    pub expires_ms: Option<i64>,
    /// `acme` or `custom` (`static` is reported by the proxy for configured certificates).
    pub source: String,
    pub error: Option<String>,
    /// Failed attempts since the last success, and when the next may run.
    failures: u32,
    retry_at: Option<Instant>,
}

impl CertStatus {
    fn pending(route: &AutoRoute) -> Self {
        CertStatus {
            domain: route.domains.first().cloned().unwrap_or_default(),
            state: CertState::Pending,
            issued_ms: None,
            expires_ms: None,
            source: "acme".into(),
            error: None,
            failures: 0,
            retry_at: None,
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Whether a certificate valid from `issued` to `expires` (ms) is due for renewal at `now`:
/// fewer than `threshold_days` left; a certificate whose whole lifetime is not longer than the
/// threshold renews at a third of its lifetime left instead (no renewal loop for short-lived
/// certificates).
pub fn renewal_due(issued: i64, expires: i64, now: i64, threshold_days: f64) -> bool {
    let threshold = (threshold_days * 86_400_000.0) as i64;
    let lifetime = expires - issued;
    let left = expires - now;
    if lifetime <= threshold {
        left < lifetime / 3
    } else {
        left < threshold
    }
}

fn backoff(failures: u32) -> Duration {
    FIRST_BACKOFF.saturating_mul(1u32 << failures.saturating_sub(1).min(16)).min(MAX_BACKOFF)
}

/// The outcome of an order in flight, as its waiters see it (`None` until it ends).
type OrderOutcome = tokio::sync::watch::Receiver<Option<Result<(), String>>>;

/// The ACME state of one running engine.
pub struct Acme {
    pub tokens: Http01Tokens,
    pub alpn: AlpnCerts,
    handle: tokio::runtime::Handle,
    shutdown: CancellationToken,
    certs: Arc<CertStore>,
    events: Arc<dyn EventSink>,
    /// Cold (route updates, orders, status calls): the current `'auto'` routes.
    routes: Mutex<HashMap<Arc<str>, Arc<AutoRoute>>>,
    /// Cold: status per route.
    status: Mutex<HashMap<Arc<str>, CertStatus>>,
    /// Cold: orders in flight, per route; waiters subscribe.
    inflight: Mutex<HashMap<Arc<str>, OrderOutcome>>,
    limit: tokio::sync::Semaphore,
    /// Accounts by (directory, e-mail), created once.
    accounts: tokio::sync::Mutex<HashMap<String, instant_acme::Account>>,
    wake: tokio::sync::Notify,
    /// Ports that answer HTTP-01 challenges, with the stores whose published answers they
    /// serve (read per connection on those ports: no lock).
    http_ports: arc_swap::ArcSwap<Vec<(u16, Arc<str>)>>,
    /// `certProvisionFunction` and how to call it, when configured.
    provision: Option<CustomProvision>,
    /// The JavaScript bridge (DNS-01 functions), when the embedder has one.
    bridge: Option<Arc<dyn crate::js::JsBridge>>,
}

/// `certProvisionFunction`: asked first, through the JavaScript bridge, for each certificate.
pub struct CustomProvision {
    pub bridge: Arc<dyn crate::js::JsBridge>,
    pub function: u32,
    /// `certProvisionFallbackToAcme`.
    pub fallback_to_acme: bool,
}

/// How long `certProvisionFunction` may take.
const PROVISION_CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// What `certProvisionFunction` answered.
enum Provided {
    /// A certificate (`source: 'custom'`) and its signing identity.
    Cert(Entry, Arc<rustls::sign::CertifiedKey>),
    /// `'http01'`: use ACME.
    Acme,
}

impl Acme {
    pub fn new(
        handle: tokio::runtime::Handle,
        shutdown: CancellationToken,
        certs: Arc<CertStore>,
        events: Arc<dyn EventSink>,
        provision: Option<CustomProvision>,
        bridge: Option<Arc<dyn crate::js::JsBridge>>,
    ) -> Arc<Self> {
        let acme = Arc::new(Acme {
            tokens: Http01Tokens::default(),
            alpn: AlpnCerts::default(),
            handle: handle.clone(),
            shutdown,
            certs,
            events,
            routes: Mutex::default(),
            status: Mutex::default(),
            inflight: Mutex::default(),
            limit: tokio::sync::Semaphore::new(MAX_CONCURRENT_ORDERS),
            accounts: tokio::sync::Mutex::default(),
            wake: tokio::sync::Notify::new(),
            http_ports: arc_swap::ArcSwap::default(),
            provision,
            bridge,
        });
        handle.spawn(acme.clone().schedule());
        acme
    }

    fn log(&self, level: LogLevel, message: String) {
        self.events.emit(Event::Log { route: None, client: None, level, message });
    }

    pub(crate) fn warn(&self, message: String) {
        self.log(LogLevel::Warn, message);
    }

    /// Whether `port` is an HTTP-01 challenge port: its validation requests are answered before
    /// any route, by this instance or, through the shared store, for another one.
    pub fn answers_on(&self, port: u16) -> bool {
        self.http_ports.load().iter().any(|(p, _)| *p == port)
    }

    /// The answer to an HTTP-01 validation request for `path` on `port`: a token of this
    /// instance's orders, else one another instance sharing the port's store published there
    /// (several instances behind one load balancer; read on the blocking pool).
    pub async fn http01_answer(&self, port: u16, path: &str) -> Option<String> {
        let token = path.strip_prefix(CHALLENGE_PREFIX)?;
        if !self.answers_on(port) {
            return None;
        }
        if let Some(answer) = self.tokens.get(token) {
            return Some(answer);
        }
        if !store::is_token(token) {
            return None;
        }
        let stores: Vec<Arc<str>> =
            self.http_ports.load().iter().filter(|(p, _)| *p == port).map(|(_, s)| s.clone()).collect();
        let token = token.to_owned();
        self.handle
            .spawn_blocking(move || stores.iter().find_map(|s| DiskStore::new(&**s).load_challenge(&token)))
            .await
            .ok()
            .flatten()
    }

    /// Installs the `'auto'` routes of a newly committed route table: stored certificates are
    /// served before this returns; missing and due ones are ordered in the background.
    pub async fn sync(self: &Arc<Self>, routes: Vec<Arc<AutoRoute>>) {
        let mut ports: Vec<(u16, Arc<str>)> = routes
            .iter()
            .filter(|r| r.settings.challenge == crate::config::AcmeChallenge::Http01)
            .map(|r| (r.settings.http_port, Arc::from(r.settings.store.as_str())))
            .collect();
        ports.sort_unstable();
        ports.dedup();
        self.http_ports.store(Arc::new(ports));
        let (fresh, gone) = {
            let mut current = self.routes.lock().unwrap_or_else(|p| p.into_inner());
            let fresh: Vec<Arc<AutoRoute>> =
                routes.iter().filter(|r| current.get(&r.name).is_none_or(|c| c != *r)).cloned().collect();
            let next: HashMap<Arc<str>, Arc<AutoRoute>> = routes.iter().map(|r| (r.name.clone(), r.clone())).collect();
            let gone: Vec<Arc<str>> = current.keys().filter(|k| !next.contains_key(*k)).cloned().collect();
            *current = next;
            (fresh, gone)
        };
        // Removed routes stop being served, and so do changed ones (other names must not keep
        // a certificate for the old ones; the store may hold theirs, loaded below).
        self.certs.remove_issued(&gone.iter().cloned().chain(fresh.iter().map(|r| r.name.clone())).collect::<Vec<_>>());
        {
            let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
            for name in &gone {
                status.remove(name);
            }
            for r in &fresh {
                status.insert(r.name.clone(), CertStatus::pending(r));
            }
        }
        let loaded = {
            let fresh = fresh.clone();
            self.handle
                .spawn_blocking(move || {
                    fresh
                        .iter()
                        .map(|r| (r.clone(), DiskStore::new(&r.settings.store).load(&r.name)))
                        .collect::<Vec<_>>()
                })
                .await
                .unwrap_or_default()
        };
        let mut usable = Vec::new();
        for (route, entry) in loaded {
            match entry {
                Ok(Some((e, key))) if covers(&e, &route.domains) => usable.push((route, e, key)),
                Ok(_) => {}
                Err(why) => self.log(
                    LogLevel::Warn,
                    format!("certificate store entry of route {:?} is unusable, ordering anew: {why}", route.name),
                ),
            }
        }
        self.certs.set_issued_many(usable.iter().map(|(r, _, k)| (r.name.clone(), k.clone())).collect());
        for (route, e, _) in &usable {
            self.record(route, e, None);
        }
        for r in fresh {
            if self.needs_order(&r, now_ms()) {
                let me = self.clone();
                self.handle.spawn(async move {
                    let _ = me.ensure(r, false).await;
                });
            }
        }
        self.wake.notify_one();
    }

    fn needs_order(&self, r: &AutoRoute, now: i64) -> bool {
        let status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        let Some(s) = status.get(&r.name) else { return true };
        match (s.issued_ms, s.expires_ms) {
            (Some(i), Some(e)) => renewal_due(i, e, now, r.settings.renew_before_days),
            _ => true,
        }
    }

    /// Serves `e` for `route` and records its status.
    fn install(&self, route: &AutoRoute, e: &Entry, key: Arc<rustls::sign::CertifiedKey>, event: Option<&'static str>) {
        self.certs.set_issued(&route.name, key);
        self.record(route, e, event);
    }

    /// Records the status of the certificate `e` now served for `route`, and tells the embedder
    /// (`event`).
    fn record(&self, route: &AutoRoute, e: &Entry, event: Option<&'static str>) {
        let state = if e.expires_ms <= now_ms() { CertState::Expired } else { CertState::Valid };
        let domain = route.domains.first().cloned().unwrap_or_default();
        self.status.lock().unwrap_or_else(|p| p.into_inner()).insert(
            route.name.clone(),
            CertStatus {
                domain: domain.clone(),
                state,
                issued_ms: Some(e.issued_ms),
                expires_ms: Some(e.expires_ms),
                source: e.source.clone(),
                error: None,
                failures: 0,
                retry_at: None,
            },
        );
        if let Some(kind) = event {
            self.events.emit(Event::Certificate(CertEvent {
                kind,
                route: route.name.to_string(),
                domain,
                expiry_ms: Some(e.expires_ms),
                source: e.source.clone(),
                error: None,
            }));
        }
    }

    fn record_failure(&self, route: &AutoRoute, err: &order::OrderError) {
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        let s = status.entry(route.name.clone()).or_insert_with(|| CertStatus::pending(route));
        s.failures += 1;
        let mut wait = backoff(s.failures);
        if err.rate_limited {
            wait = wait.max(RATE_LIMIT_BACKOFF);
        }
        s.retry_at = Some(Instant::now() + wait);
        s.state = CertState::Error;
        s.error = Some(err.message.clone());
        let expiry = s.expires_ms;
        drop(status);
        self.log(
            LogLevel::Warn,
            format!(
                "certificate for route {:?} failed ({}); next try in {} s",
                route.name,
                err.message,
                wait.as_secs()
            ),
        );
        self.events.emit(Event::Certificate(CertEvent {
            kind: "certificate-failed",
            route: route.name.to_string(),
            domain: route.domains.first().cloned().unwrap_or_default(),
            expiry_ms: expiry,
            source: "acme".into(),
            error: Some(err.message.clone()),
        }));
        self.wake.notify_one();
    }

    /// The status of an `'auto'` route's certificate.
    pub fn status(&self, route: &str) -> Option<CertStatus> {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).get(route).cloned()
    }

    /// The current `'auto'` route called `name`.
    pub fn route(&self, name: &str) -> Option<Arc<AutoRoute>> {
        self.routes.lock().unwrap_or_else(|p| p.into_inner()).get(name).cloned()
    }

    /// Orders (or, unless `force`, loads or keeps) the certificate of `route`. One order per
    /// route at a time: a second caller waits for the first one's outcome.
    pub async fn ensure(self: Arc<Self>, route: Arc<AutoRoute>, force: bool) -> Result<(), String> {
        let (tx, mine) = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            match inflight.get(&route.name) {
                Some(rx) => (None, rx.clone()),
                None => {
                    let (tx, rx) = tokio::sync::watch::channel(None);
                    inflight.insert(route.name.clone(), rx.clone());
                    (Some(tx), rx)
                }
            }
        };
        let Some(tx) = tx else {
            let mut rx = mine;
            let r = rx.wait_for(Option::is_some).await.map(|v| v.clone());
            return match r {
                Ok(Some(r)) => r,
                _ => Err("the order was cancelled".into()),
            };
        };
        let result = tokio::select! {
            r = self.clone().run_order(route.clone(), force) => r,
            _ = self.shutdown.cancelled() => Err(order::OrderError::from("the proxy stopped".to_owned())),
        };
        self.inflight.lock().unwrap_or_else(|p| p.into_inner()).remove(&route.name);
        let out = match &result {
            Ok(()) => Ok(()),
            Err(e) => {
                if !self.shutdown.is_cancelled() {
                    self.record_failure(&route, e);
                }
                Err(e.message.clone())
            }
        };
        let _ = tx.send(Some(out.clone()));
        out
    }

    async fn run_order(self: Arc<Self>, route: Arc<AutoRoute>, force: bool) -> Result<(), order::OrderError> {
        let _permit = self.limit.acquire().await.map_err(|e| e.to_string())?;
        let store = DiskStore::new(&route.settings.store);
        let had = self.status(&route.name).and_then(|s| s.expires_ms);
        // The store's lock: one order per route across the instances sharing the store.
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            let (s, name) = (store.clone(), route.name.clone());
            let locked = self
                .handle
                .spawn_blocking(move || s.try_lock(&name))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("certificate store lock: {e}"))?;
            if locked {
                break;
            }
            // Another instance is ordering: take its result when it has one.
            tokio::time::sleep(Duration::from_secs(1)).await;
            if let Some((e, key)) = self.load_newer(&store, &route, if force { had } else { None }).await {
                self.install(&route, &e, key, None);
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("another instance holds the order lock of route {:?}", route.name).into());
            }
        }
        let refresher = {
            let (s, name) = (store.clone(), route.name.clone());
            self.handle.spawn(async move {
                loop {
                    tokio::time::sleep(store::LOCK_REFRESH).await;
                    let (s, name) = (s.clone(), name.clone());
                    let _ = tokio::task::spawn_blocking(move || s.refresh_lock(&name)).await;
                }
            })
        };
        let r = self.order_locked(&store, &route, force, had).await;
        refresher.abort();
        let (s, name) = (store.clone(), route.name.clone());
        let _ = self.handle.spawn_blocking(move || s.unlock(&name)).await;
        r
    }

    /// A stored entry for `route` that covers its names and is newer than `than` (any, when
    /// `None`) and not due.
    async fn load_newer(
        &self,
        store: &DiskStore,
        route: &AutoRoute,
        than: Option<i64>,
    ) -> Option<(Entry, Arc<rustls::sign::CertifiedKey>)> {
        let (s, name) = (store.clone(), route.name.clone());
        let (e, key) = self.handle.spawn_blocking(move || s.load(&name)).await.ok()?.ok()??;
        let fresh = covers(&e, &route.domains)
            && than.is_none_or(|t| e.expires_ms > t)
            && !renewal_due(e.issued_ms, e.expires_ms, now_ms(), route.settings.renew_before_days);
        fresh.then_some((e, key))
    }

    async fn order_locked(
        &self,
        store: &DiskStore,
        route: &AutoRoute,
        force: bool,
        had: Option<i64>,
    ) -> Result<(), order::OrderError> {
        // Under the lock, the store may already hold what another instance just ordered.
        if let Some((e, key)) = self.load_newer(store, route, if force { had } else { None }).await {
            self.install(route, &e, key, None);
            return Ok(());
        }
        if let Some(p) = &self.provision {
            match self.call_provision(p, route).await {
                Ok(Provided::Cert(entry, key)) => return self.keep(store, route, entry, key, had).await,
                Ok(Provided::Acme) => {}
                Err(why) if p.fallback_to_acme => self.log(
                    LogLevel::Warn,
                    format!("certProvisionFunction failed for route {:?} ({why}); ordering from ACME", route.name),
                ),
                Err(why) => return Err(format!("certProvisionFunction failed: {why}").into()),
            }
        }
        let account = {
            let key = format!("{}\n{}", route.settings.directory_url, route.settings.email);
            let mut accounts = self.accounts.lock().await;
            match accounts.get(&key) {
                Some(a) => a.clone(),
                None => {
                    let a = order::account(&route.settings, store).await?;
                    accounts.insert(key, a.clone());
                    a
                }
            }
        };
        let issued = order::order(&account, &route.domains, &route.settings, self).await?;
        let (issued_ms, expires_ms) = crate::tls::validity_ms(&issued.cert_pem)?;
        let entry = Entry {
            cert_pem: issued.cert_pem,
            key_pem: issued.key_pem,
            domains: route.domains.clone(),
            issued_ms,
            expires_ms,
            source: "acme".into(),
        };
        let key = crate::tls::certified_key(&entry.cert_pem, &entry.key_pem, None)?;
        self.keep(store, route, entry, key, had).await
    }

    /// Asks `certProvisionFunction` for the certificate of `route` (its first name, as upstream).
    async fn call_provision(&self, p: &CustomProvision, route: &AutoRoute) -> Result<Provided, String> {
        let domain = route.domains.first().cloned().unwrap_or_default();
        let call = p.bridge.call(p.function, serde_json::Value::String(domain));
        let v = match tokio::time::timeout(PROVISION_CALL_TIMEOUT, call).await {
            Err(_) => return Err(format!("it did not settle within {} s", PROVISION_CALL_TIMEOUT.as_secs())),
            Ok(r) => r?,
        };
        if v.as_str() == Some("http01") {
            return Ok(Provided::Acme);
        }
        let field = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
        let (Some(cert_pem), Some(key_pem)) = (field("publicKey"), field("privateKey")) else {
            return Err("it returned neither a certificate object (publicKey, privateKey) nor 'http01'".into());
        };
        let key = crate::tls::certified_key(&cert_pem, &key_pem, None)?;
        let (issued_ms, expires_ms) = crate::tls::validity_ms(&cert_pem)?;
        Ok(Provided::Cert(
            Entry { cert_pem, key_pem, domains: route.domains.clone(), issued_ms, expires_ms, source: "custom".into() },
            key,
        ))
    }

    /// Stores and serves a new certificate of `route`, and tells the embedder.
    async fn keep(
        &self,
        store: &DiskStore,
        route: &AutoRoute,
        entry: Entry,
        key: Arc<rustls::sign::CertifiedKey>,
        had: Option<i64>,
    ) -> Result<(), order::OrderError> {
        let (s, name, e) = (store.clone(), route.name.clone(), entry.clone());
        let saved = self.handle.spawn_blocking(move || s.save(&name, &e)).await.map_err(|e| e.to_string())?;
        if let Err(e) = saved {
            // Served anyway; the next start orders again.
            self.log(LogLevel::Warn, format!("could not store the certificate of route {:?}: {e}", route.name));
        }
        self.install(
            route,
            &entry,
            key,
            Some(if had.is_some() { "certificate-renewed" } else { "certificate-issued" }),
        );
        Ok(())
    }

    /// The renewal loop: wakes every `renewCheckIntervalHours` (the shortest of the routes'),
    /// when a retry is due, or when routes change.
    async fn schedule(self: Arc<Self>) {
        loop {
            let now = Instant::now();
            let (mut wake_at, due) = {
                let routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
                let status = self.status.lock().unwrap_or_else(|p| p.into_inner());
                let interval = routes.values().map(|r| r.settings.renew_check_interval).min();
                let mut wake_at = interval.map(|i| now + i);
                let mut due = Vec::new();
                for r in routes.values() {
                    let s = status.get(&r.name);
                    match s.and_then(|s| s.retry_at) {
                        Some(at) if at <= now => due.push(r.clone()),
                        Some(at) => wake_at = Some(wake_at.map_or(at, |w| w.min(at))),
                        None => {}
                    }
                }
                (wake_at, due)
            };
            for r in due {
                let me = self.clone();
                self.handle.spawn(async move {
                    let _ = me.ensure(r, false).await;
                });
            }
            if wake_at.is_some_and(|w| w <= now) {
                wake_at = Some(now + Duration::from_secs(1));
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = self.wake.notified() => continue,
                _ = crate::timer::sleep_until_opt(wake_at.map(tokio::time::Instant::from_std)) => {}
            }
            // A check: renew what is due (routes with autoRenew).
            let now_wall = now_ms();
            let routes: Vec<Arc<AutoRoute>> =
                self.routes.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
            for r in routes {
                let retrying = self.status(&r.name).is_some_and(|s| s.retry_at.is_some());
                if r.settings.auto_renew && !retrying && self.needs_order(&r, now_wall) {
                    let me = self.clone();
                    self.handle.spawn(async move {
                        let _ = me.ensure(r, false).await;
                    });
                }
            }
        }
    }
}

/// Whether a stored entry was ordered for exactly (at least) these names.
fn covers(e: &Entry, domains: &[String]) -> bool {
    domains.iter().all(|d| e.domains.iter().any(|x| x.eq_ignore_ascii_case(d)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_windows() {
        let day = 86_400_000i64;
        // 90-day certificate, 30-day threshold: due when fewer than 30 days are left.
        assert!(!renewal_due(0, 90 * day, 59 * day, 30.0));
        assert!(renewal_due(0, 90 * day, 61 * day, 30.0));
        // 6-day certificate: the threshold is longer than its life, so a third of it is left.
        assert!(!renewal_due(0, 6 * day, 3 * day, 30.0));
        assert!(renewal_due(0, 6 * day, 4 * day + 1, 30.0));
        // Expired is due.
        assert!(renewal_due(0, 90 * day, 91 * day, 30.0));
    }

    #[test]
    fn backoff_is_capped_exponential() {
        assert_eq!(backoff(1), Duration::from_secs(60));
        assert_eq!(backoff(2), Duration::from_secs(120));
        assert_eq!(backoff(5), Duration::from_secs(960));
        assert_eq!(backoff(30), MAX_BACKOFF);
    }

    #[test]
    fn alpn_validation_certificates_carry_the_digest() {
        let digest = [7u8; 32];
        let ck = alpn_validation_cert("a.test", &digest).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(ck.cert[0].as_ref()).unwrap();
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("the acmeIdentifier extension (final OID)");
        assert!(ext.critical);
        assert!(ext.value.ends_with(&digest));
        let a = AlpnCerts::default();
        a.insert("A.test", ck);
        let alpn = vec![ACME_TLS_ALPN.to_owned()];
        assert!(a.validation_config(Some("a.test"), &alpn).is_some());
        assert!(a.validation_config(Some("a.test"), &["h2".to_owned()]).is_none(), "other clients are unaffected");
        assert!(a.validation_config(Some("b.test"), &alpn).is_none());
        a.remove("a.test");
        assert!(a.is_empty());
    }

    #[test]
    fn tokens_answer_only_their_own() {
        let t = Http01Tokens::default();
        assert_eq!(t.get("abc"), None);
        t.insert("abc".into(), "abc.thumb".into());
        assert_eq!(t.get("abc").as_deref(), Some("abc.thumb"));
        assert_eq!(t.get("abd"), None);
        t.remove("abc");
        assert!(t.is_empty());
    }
}
