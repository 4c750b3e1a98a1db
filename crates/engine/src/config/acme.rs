//! ACME configuration: the global `acme` options (upstream's `IAcmeOptions`, plus
//! `directoryUrl`, `directoryCa` and `challenge`), a route's `action.tls.acme`, and the
//! effective settings of one `certificate: 'auto'` route (route over global over defaults; each
//! default is written once, in [`AcmeOptions::default`]).

use super::reader::{opt, At, ReadResult};
use super::*;
use rustls::pki_types::CertificateDer;

/// Let's Encrypt's production directory (`useProduction: true` / `environment: 'production'`).
pub const LETS_ENCRYPT_PRODUCTION: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt's staging directory (the default, as upstream's).
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";
/// Largest `renewCheckIntervalHours`: a year.
const MAX_CHECK_HOURS: f64 = 24.0 * 366.0;
/// Largest `renewThresholdDays` / `renewBeforeDays`.
const MAX_THRESHOLD_DAYS: f64 = 3650.0;

/// How the CA validates control of a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcmeChallenge {
    Http01,
    TlsAlpn01,
    Dns01,
}

impl AcmeChallenge {
    fn read(a: At) -> ReadResult<Self> {
        match a.str()? {
            "http-01" => Ok(AcmeChallenge::Http01),
            "tls-alpn-01" => Ok(AcmeChallenge::TlsAlpn01),
            "dns-01" => Ok(AcmeChallenge::Dns01),
            other => a.err(format!("unknown challenge type {other:?} (expected 'http-01', 'tls-alpn-01' or 'dns-01')")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AcmeChallenge::Http01 => "http-01",
            AcmeChallenge::TlsAlpn01 => "tls-alpn-01",
            AcmeChallenge::Dns01 => "dns-01",
        }
    }
}

/// The global `acme` options.
#[derive(Debug, Clone)]
pub struct AcmeOptions {
    /// `enabled: false` turns ACME off; `'auto'` routes are then refused. Default true.
    pub enabled: bool,
    /// `email` (or `accountEmail`): the account's contact. No default.
    pub email: Option<String>,
    /// `useProduction` / `environment: 'production'`: Let's Encrypt production instead of staging.
    pub use_production: bool,
    /// `directoryUrl` (ours): any RFC 8555 directory; overrides `useProduction`.
    pub directory_url: Option<String>,
    /// `directoryCa` (ours): PEM roots trusted for the directory's HTTPS, besides the Mozilla roots.
    pub directory_ca: Vec<CertificateDer<'static>>,
    /// `port`: where HTTP-01 challenges are answered. Default 80.
    pub port: u16,
    /// `renewThresholdDays`: renew when fewer days remain. Default 30.
    pub renew_threshold_days: f64,
    /// `autoRenew`: renew without being asked. Default true.
    pub auto_renew: bool,
    /// `certificateStore`: the directory of issued certificates and accounts. Default `./certs`.
    pub certificate_store: String,
    /// `skipConfiguredCerts`: accepted for compatibility (static certificates are never ordered).
    pub skip_configured_certs: bool,
    /// `renewCheckIntervalHours` (fractions honoured). Default 24.
    pub renew_check_interval: Duration,
    /// `challenge` (ours). Default `http-01`.
    pub challenge: AcmeChallenge,
    /// `dns01: { setRecord, removeRecord }` (ours): the JavaScript functions (bridge ids) that
    /// publish and withdraw DNS-01 TXT records.
    pub dns01: Option<Dns01Hooks>,
}

/// The functions of `acme.dns01`, as JavaScript bridge ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dns01Hooks {
    pub set_record: u32,
    pub remove_record: u32,
}

impl Default for AcmeOptions {
    fn default() -> Self {
        AcmeOptions {
            enabled: true,
            email: None,
            use_production: false,
            directory_url: None,
            directory_ca: Vec::new(),
            port: 80,
            renew_threshold_days: 30.0,
            auto_renew: true,
            certificate_store: "./certs".into(),
            skip_configured_certs: false,
            renew_check_interval: Duration::from_secs(24 * 3600),
            challenge: AcmeChallenge::Http01,
            dns01: None,
        }
    }
}

impl AcmeOptions {
    /// The defaults as the JSON object the facade shows in `settings.acme`.
    pub fn defaults_json() -> Value {
        let d = AcmeOptions::default();
        serde_json::json!({
            "enabled": d.enabled,
            "port": d.port,
            "useProduction": d.use_production,
            "renewThresholdDays": d.renew_threshold_days,
            "autoRenew": d.auto_renew,
            "certificateStore": d.certificate_store,
            "skipConfiguredCerts": d.skip_configured_certs,
            "renewCheckIntervalHours": d.renew_check_interval.as_secs_f64() / 3600.0,
            "challenge": d.challenge.as_str(),
        })
    }
}

/// `action.tls.acme`: a route's own ACME settings (each overrides the global one).
#[derive(Debug, Clone, Default)]
pub struct RouteAcme {
    pub email: Option<String>,
    pub use_production: Option<bool>,
    /// `challengePort`: where this route's HTTP-01 challenges are answered.
    pub challenge_port: Option<u16>,
    /// `renewBeforeDays`.
    pub renew_before_days: Option<f64>,
    pub challenge: Option<AcmeChallenge>,
}

/// The effective ACME settings of one `'auto'` route.
#[derive(Debug, Clone, PartialEq)]
pub struct AcmeSettings {
    pub email: String,
    pub directory_url: String,
    pub directory_ca: Vec<CertificateDer<'static>>,
    pub challenge: AcmeChallenge,
    /// The port HTTP-01 challenges are answered on.
    pub http_port: u16,
    pub renew_before_days: f64,
    pub auto_renew: bool,
    pub store: String,
    pub renew_check_interval: Duration,
    /// The DNS-01 functions (set when the challenge is DNS-01).
    pub dns01: Option<Dns01Hooks>,
}

impl AcmeSettings {
    /// Resolves the settings of an `'auto'` route (`label` names it in errors): an e-mail is
    /// needed, ACME must be enabled, a wildcard name needs DNS-01, and only the challenges this
    /// engine answers are taken.
    pub fn resolve(
        global: Option<&AcmeOptions>,
        route: &RouteAcme,
        domains: &[DomainPattern],
        label: &str,
    ) -> CResult<Self> {
        let default = AcmeOptions::default();
        let g = global.unwrap_or(&default);
        if !g.enabled {
            return Err(ConfigError::Invalid(format!(
                "{label}: action.tls.certificate 'auto' needs ACME, but acme.enabled is false"
            )));
        }
        let Some(email) = route.email.clone().or_else(|| g.email.clone()).filter(|e| !e.trim().is_empty()) else {
            return Err(ConfigError::Invalid(format!(
                "{label}: action.tls.certificate 'auto' needs an e-mail for the ACME account: set acme.email or action.tls.acme.email"
            )));
        };
        if domains.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "{label}: action.tls.certificate 'auto' needs match.domains (the names to order)"
            )));
        }
        let challenge = route.challenge.unwrap_or(g.challenge);
        if let Some(w) = domains.iter().find(|d| d.is_wildcard()) {
            if challenge != AcmeChallenge::Dns01 {
                return Err(ConfigError::Invalid(format!(
                    "{label}: the wildcard domain {:?} can only be validated with the DNS-01 challenge (acme.challenge: 'dns-01' with acme.dns01)",
                    w.as_str()
                )));
            }
        }
        if challenge == AcmeChallenge::Dns01 && g.dns01.is_none() {
            return Err(ConfigError::Invalid(format!(
                "{label}: the DNS-01 challenge needs acme.dns01: {{ setRecord(name, value), removeRecord(name, value) }}"
            )));
        }
        let production = route.use_production.unwrap_or(g.use_production);
        let directory_url = g
            .directory_url
            .clone()
            .unwrap_or_else(|| if production { LETS_ENCRYPT_PRODUCTION } else { LETS_ENCRYPT_STAGING }.to_owned());
        Ok(AcmeSettings {
            email,
            directory_url,
            directory_ca: g.directory_ca.clone(),
            challenge,
            http_port: route.challenge_port.unwrap_or(g.port),
            renew_before_days: route.renew_before_days.unwrap_or(g.renew_threshold_days),
            auto_renew: g.auto_renew,
            store: g.certificate_store.clone(),
            renew_check_interval: g.renew_check_interval,
            dns01: g.dns01.filter(|_| challenge == AcmeChallenge::Dns01),
        })
    }
}

fn days(a: At) -> ReadResult<f64> {
    a.at_most(MAX_THRESHOLD_DAYS, " days")
}

/// Parses the global `acme` object.
pub(super) fn parse_acme_options(a: At) -> CResult<AcmeOptions> {
    a.obj()?;
    let mut o = AcmeOptions::default();
    if let Some(e) = opt(a, "enabled", |x| x.bool())? {
        o.enabled = e;
    }
    o.email =
        opt(a, "email", |x| x.str().map(str::to_owned))?.or(opt(a, "accountEmail", |x| x.str().map(str::to_owned))?);
    if let Some(p) = opt(a, "useProduction", |x| x.bool())? {
        o.use_production = p;
    }
    if let Some(env) = opt(a, "environment", |x| match x.str()? {
        "production" => Ok(true),
        "staging" => Ok(false),
        other => x.err(format!("expected 'production' or 'staging', got {other:?}")),
    })? {
        o.use_production = env;
    }
    o.directory_url = opt(a, "directoryUrl", |x| {
        let u = x.str()?;
        if !(u.starts_with("https://") || u.starts_with("http://")) {
            return x.err(format!("expected an http(s) URL, got {u:?}"));
        }
        Ok(u.to_owned())
    })?;
    if let Some(pem) = opt(a, "directoryCa", |x| x.str().map(str::to_owned))? {
        o.directory_ca =
            crate::tls::parse_certs(&pem).map_err(|e| ConfigError::Invalid(format!("acme.directoryCa: {e}")))?;
    }
    if let Some(p) = opt(a, "port", |x| x.port())? {
        o.port = p;
    }
    if let Some(d) = opt(a, "renewThresholdDays", days)? {
        o.renew_threshold_days = d;
    }
    if let Some(r) = opt(a, "autoRenew", |x| x.bool())? {
        o.auto_renew = r;
    }
    if let Some(s) = opt(a, "certificateStore", |x| x.str().map(str::to_owned))? {
        o.certificate_store = s;
    }
    if let Some(s) = opt(a, "skipConfiguredCerts", |x| x.bool())? {
        o.skip_configured_certs = s;
    }
    if let Some(h) = opt(a, "renewCheckIntervalHours", |x| x.at_most(MAX_CHECK_HOURS, " hours"))? {
        if h <= 0.0 {
            return Err(ConfigError::Invalid("acme.renewCheckIntervalHours: must be positive".into()));
        }
        o.renew_check_interval = Duration::from_secs_f64(h * 3600.0);
    }
    if let Some(c) = opt(a, "challenge", AcmeChallenge::read)? {
        o.challenge = c;
    }
    if let Some(d) = a.get("dns01").filter(|v| !v.is_null()) {
        let d = At::new(d, "acme.dns01");
        d.obj()?;
        let f = |k: &str| -> CResult<u32> {
            d.get(k)
                .and_then(|v| v.get("$fn"))
                .and_then(Value::as_u64)
                .map(|id| id as u32)
                .ok_or_else(|| ConfigError::Invalid(format!("acme.dns01.{k}: expected a function")))
        };
        o.dns01 = Some(Dns01Hooks { set_record: f("setRecord")?, remove_record: f("removeRecord")? });
    }
    Ok(o)
}

/// Parses a route's `action.tls.acme`.
pub(super) fn parse_route_acme(a: At) -> CResult<RouteAcme> {
    a.obj()?;
    Ok(RouteAcme {
        email: opt(a, "email", |x| x.str().map(str::to_owned))?,
        use_production: opt(a, "useProduction", |x| x.bool())?,
        challenge_port: opt(a, "challengePort", |x| x.port())?,
        renew_before_days: opt(a, "renewBeforeDays", days)?,
        challenge: opt(a, "challenge", AcmeChallenge::read)?,
    })
}
