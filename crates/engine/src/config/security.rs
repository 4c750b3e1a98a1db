//! Route security (`security` of a route, and `defaults.security`): IP lists, connection
//! limits, authentication and rate limits.

use super::reader::{each, opt, At, ReadResult};
use super::*;

/// Route-level (or `defaults.security`) access rules. IP lists and `maxConnections` apply at
/// layer 4; authentication and rate limiting need HTTP and apply per request.
#[derive(Debug, Clone, Default)]
pub struct RouteSecurity {
    pub ip_allow_list: Vec<IpPattern>,
    pub ip_block_list: Vec<IpPattern>,
    /// Concurrent connections on this route.
    pub max_connections: Option<u32>,
    pub basic_auth: Option<BasicAuth>,
    pub jwt_auth: Option<JwtAuth>,
    pub rate_limit: Option<RateLimit>,
}

impl RouteSecurity {
    /// Whether these rules can only be enforced on HTTP requests.
    pub fn needs_http(&self) -> bool {
        self.basic_auth.is_some() || self.jwt_auth.is_some() || self.rate_limit.is_some()
    }
}

/// `security.basicAuth` (or `authentication: { type: 'basic' }`).
#[derive(Debug, Clone)]
pub struct BasicAuth {
    pub users: Vec<(String, String)>,
    pub realm: String,
    pub exclude_paths: Vec<PathPattern>,
}

/// JWT signature algorithms verified (HMAC; the shared secret is configured).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtAlgorithm {
    Hs256,
    Hs384,
    Hs512,
}

/// `security.jwtAuth` (or `authentication: { type: 'jwt' }`).
#[derive(Debug, Clone)]
pub struct JwtAuth {
    pub secret: String,
    pub algorithm: JwtAlgorithm,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub exclude_paths: Vec<PathPattern>,
}

/// What `security.rateLimit` counts requests by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateLimitKey {
    Ip,
    Path,
    Header(String),
}

/// `security.rateLimit`: at most `max_requests` per `window` per key (sliding window).
#[derive(Debug, Clone)]
pub struct RateLimit {
    pub max_requests: u32,
    pub window: Duration,
    pub key: RateLimitKey,
    pub message: String,
}

pub(super) fn parse_security(at: At) -> CResult<RouteSecurity> {
    at.obj()?;
    let ips = |key: &str| -> ReadResult<Vec<IpPattern>> {
        Ok(opt(at, key, |d| d.parse_each(IpPattern::parse))?.unwrap_or_default())
    };
    let sec = RouteSecurity {
        ip_allow_list: ips("ipAllowList")?,
        ip_block_list: ips("ipBlockList")?,
        max_connections: opt(at, "maxConnections", |x| x.uint())?
            .filter(|n| *n > 0)
            .map(|n| n.min(u32::MAX as u64) as u32),
        ..Default::default()
    };
    let mut sec = sec;
    let enabled = |v: &Value| v.get("enabled").and_then(Value::as_bool) != Some(false);
    let exclude = |x: At| -> ReadResult<Vec<PathPattern>> {
        Ok(opt(x, "excludePaths", |e| {
            e.str_or_strs()?.iter().map(|p| PathPattern::parse(p).or_else(|m| e.err(m))).collect::<ReadResult<Vec<_>>>()
        })?
        .unwrap_or_default())
    };
    let users = |x: At, key: &str| -> ReadResult<Vec<(String, String)>> {
        let list = opt(x, key, |u| {
            each(u, |e| {
                let name = opt(e, "username", |n| n.str().map(str::to_owned))?
                    .map_or_else(|| e.err("username is required"), Ok)?;
                let pass = opt(e, "password", |n| n.str().map(str::to_owned))?
                    .map_or_else(|| e.err("password is required"), Ok)?;
                Ok((name, pass))
            })
        })?
        .unwrap_or_default();
        if list.is_empty() {
            return x.err(format!("{key}: at least one user is required"));
        }
        Ok(list)
    };
    let algorithm = |x: At| -> ReadResult<JwtAlgorithm> {
        match opt(x, "algorithm", |a| a.str())?.unwrap_or("HS256") {
            "HS256" => Ok(JwtAlgorithm::Hs256),
            "HS384" => Ok(JwtAlgorithm::Hs384),
            "HS512" => Ok(JwtAlgorithm::Hs512),
            other => x.err(format!("algorithm {other:?} is not supported (HS256, HS384, HS512)")),
        }
    };
    if let Some(b) = at.get("basicAuth").filter(|v| enabled(v)) {
        let b = At::new(b, "security.basicAuth");
        sec.basic_auth = Some(BasicAuth {
            users: users(b, "users")?,
            realm: opt(b, "realm", |r| r.str().map(str::to_owned))?.unwrap_or_else(|| "Restricted".into()),
            exclude_paths: exclude(b)?,
        });
    }
    if let Some(j) = at.get("jwtAuth").filter(|v| enabled(v)) {
        let j = At::new(j, "security.jwtAuth");
        let secret =
            opt(j, "secret", |x| x.str().map(str::to_owned))?.map_or_else(|| j.err("secret is required"), Ok)?;
        sec.jwt_auth = Some(JwtAuth {
            secret,
            algorithm: algorithm(j)?,
            issuer: opt(j, "issuer", |x| x.str().map(str::to_owned))?,
            audience: opt(j, "audience", |x| x.str().map(str::to_owned))?,
            exclude_paths: exclude(j)?,
        });
    }
    if let Some(a) = at.get("authentication") {
        let a = At::new(a, "security.authentication");
        match opt(a, "type", |t| t.str())? {
            Some("basic") => {
                sec.basic_auth = Some(BasicAuth {
                    users: users(a, "credentials")?,
                    realm: opt(a, "realm", |r| r.str().map(str::to_owned))?.unwrap_or_else(|| "Restricted".into()),
                    exclude_paths: Vec::new(),
                })
            }
            Some("jwt") => {
                let secret = opt(a, "jwtSecret", |x| x.str().map(str::to_owned))?
                    .map_or_else(|| a.err("jwtSecret is required"), Ok)?;
                sec.jwt_auth = Some(JwtAuth {
                    secret,
                    algorithm: JwtAlgorithm::Hs256,
                    issuer: opt(a, "jwtIssuer", |x| x.str().map(str::to_owned))?,
                    audience: None,
                    exclude_paths: Vec::new(),
                })
            }
            Some(other @ ("digest" | "oauth")) => {
                return unsupported(format!("security.authentication type '{other}'"))
            }
            Some(other) => {
                return Err(ConfigError::Invalid(format!("security.authentication.type: unknown type {other:?}")))
            }
            None => return Err(ConfigError::Invalid("security.authentication.type is required".into())),
        }
    }
    if let Some(r) = at.get("rateLimit").filter(|v| enabled(v)) {
        let r = At::new(r, "security.rateLimit");
        let max = opt(r, "maxRequests", |x| x.uint())?.map_or_else(|| r.err("maxRequests is required"), Ok)?;
        let window = opt(r, "window", |x| x.at_most(MAX_WINDOW_SECS, " seconds"))?
            .map_or_else(|| r.err("window (seconds) is required"), Ok)?;
        let key = match opt(r, "keyBy", |x| x.str())?.unwrap_or("ip") {
            "ip" => RateLimitKey::Ip,
            "path" => RateLimitKey::Path,
            "header" => RateLimitKey::Header(
                opt(r, "headerName", |x| x.str().map(str::to_ascii_lowercase))?
                    .map_or_else(|| r.err("keyBy 'header' needs headerName"), Ok)?,
            ),
            other => return Err(ConfigError::Invalid(format!("security.rateLimit.keyBy: unknown key {other:?}"))),
        };
        if max == 0 || window <= 0.0 {
            return Err(ConfigError::Invalid("security.rateLimit: maxRequests and window must be positive".into()));
        }
        sec.rate_limit = Some(RateLimit {
            max_requests: max.min(u32::MAX as u64) as u32,
            window: Duration::from_secs_f64(window),
            key,
            message: opt(r, "errorMessage", |x| x.str().map(str::to_owned))?
                .unwrap_or_else(|| "Too Many Requests".into()),
        });
    }
    if at.has("allowedIps") || at.has("blockedIps") {
        return Err(ConfigError::Invalid(format!(
            "{}: allowedIps/blockedIps were renamed to ipAllowList/ipBlockList",
            at.path
        )));
    }
    Ok(sec)
}
