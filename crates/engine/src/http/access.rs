//! Per-request access rules of the HTTP layer: `basicAuth`, `jwtAuth` (HMAC-signed tokens) and
//! `rateLimit` (a sliding window per key). Routes with these rules are only ever served through
//! the HTTP layer; the connection path refuses them at layer 4 so they cannot be bypassed.

use crate::config::{BasicAuth, JwtAlgorithm, JwtAuth, RateLimit, RateLimitKey};
use dashmap::DashMap;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// Decodes standard or URL-safe base64, with or without padding.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in s.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

fn excluded(patterns: &[crate::matching::PathPattern], path: &str) -> bool {
    patterns.iter().any(|p| p.matches(path))
}

/// Whether the request may pass `basicAuth`.
pub fn basic_ok(a: &BasicAuth, path: &str, authorization: Option<&str>) -> bool {
    if excluded(&a.exclude_paths, path) {
        return true;
    }
    let Some(v) = authorization.and_then(|h| h.strip_prefix("Basic ").or_else(|| h.strip_prefix("basic "))) else {
        return false;
    };
    let Some(decoded) = base64_decode(v.trim()).and_then(|b| String::from_utf8(b).ok()) else {
        return false;
    };
    let Some((user, pass)) = decoded.split_once(':') else { return false };
    // Every user is compared in full (no early exit on the first match).
    a.users.iter().fold(false, |found, (u, p)| {
        found | (ct_eq(u.as_bytes(), user.as_bytes()) & ct_eq(p.as_bytes(), pass.as_bytes()))
    })
}

/// Equality that does not stop at the first differing byte (length is not hidden).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether the request may pass `jwtAuth`: a Bearer token with a valid HMAC signature of the
/// configured algorithm, not expired (`exp`), already valid (`nbf`), and the configured
/// `iss` / `aud`.
pub fn jwt_ok(a: &JwtAuth, path: &str, authorization: Option<&str>, now_secs: u64) -> bool {
    if excluded(&a.exclude_paths, path) {
        return true;
    }
    let Some(token) = authorization.and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
    else {
        return false;
    };
    let mut parts = token.trim().split('.');
    let (Some(h), Some(p), Some(sig), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let (alg_name, alg) = match a.algorithm {
        JwtAlgorithm::Hs256 => ("HS256", ring::hmac::HMAC_SHA256),
        JwtAlgorithm::Hs384 => ("HS384", ring::hmac::HMAC_SHA384),
        JwtAlgorithm::Hs512 => ("HS512", ring::hmac::HMAC_SHA512),
    };
    let Some(header) = base64_decode(h).and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok()) else {
        return false;
    };
    if header.get("alg").and_then(|v| v.as_str()) != Some(alg_name) {
        return false;
    }
    let Some(signature) = base64_decode(sig) else { return false };
    let key = ring::hmac::Key::new(alg, a.secret.as_bytes());
    if ring::hmac::verify(&key, format!("{h}.{p}").as_bytes(), &signature).is_err() {
        return false;
    }
    let Some(claims) = base64_decode(p).and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok()) else {
        return false;
    };
    let num = |k: &str| claims.get(k).and_then(|v| v.as_f64());
    if num("exp").is_some_and(|e| (now_secs as f64) >= e) || num("nbf").is_some_and(|n| (now_secs as f64) < n) {
        return false;
    }
    if let Some(iss) = &a.issuer {
        if claims.get("iss").and_then(|v| v.as_str()) != Some(iss.as_str()) {
            return false;
        }
    }
    if let Some(aud) = &a.audience {
        let ok = match claims.get("aud") {
            Some(serde_json::Value::String(s)) => s == aud,
            Some(serde_json::Value::Array(list)) => list.iter().any(|x| x.as_str() == Some(aud.as_str())),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

/// Sliding-window request counts per key, for one route (kept across route updates by the
/// route-state registry, see [`crate::state`]).
#[derive(Default)]
pub struct RateLimiter {
    hits: DashMap<String, VecDeque<Instant>>,
    /// Key count at which the next sweep runs (0: `RATE_SWEEP_AT`).
    sweep_at: AtomicUsize,
}

/// Keys kept before a sweep drops those with no recent request.
const RATE_SWEEP_AT: usize = 10_000;

impl RateLimiter {
    /// Counts a request under `key`; false when the window is full.
    ///
    /// Keys are the client's choice (`keyBy: 'path'` or a header), so stale ones are swept, and
    /// the sweep is amortised: after one leaves `m` keys, the next runs at `max(10,000, 2m)`
    /// keys, so each sweep's cost is paid by at least as many new keys (it used to sweep on
    /// every request once 10,000 keys were held).
    pub fn allow(&self, rule: &RateLimit, key: String, now: Instant) -> bool {
        let at = self.sweep_at.load(Ordering::Relaxed).max(RATE_SWEEP_AT);
        if self.hits.len() > at {
            self.hits.retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < rule.window));
            self.sweep_at.store(self.hits.len().saturating_mul(2), Ordering::Relaxed);
        }
        let mut q = self.hits.entry(key).or_default();
        while q.front().is_some_and(|t| now.duration_since(*t) >= rule.window) {
            q.pop_front();
        }
        if q.len() >= rule.max_requests as usize {
            return false;
        }
        q.push_back(now);
        true
    }

    /// Keys held (tests).
    pub fn keys(&self) -> usize {
        self.hits.len()
    }
}

/// The rate-limit key of a request.
pub fn rate_key(rule: &RateLimit, client_ip: &str, path: &str, header: impl Fn(&str) -> Option<String>) -> String {
    match &rule.key {
        RateLimitKey::Ip => client_ip.to_owned(),
        RateLimitKey::Path => path.to_owned(),
        RateLimitKey::Header(name) => header(name).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn b64url(b: &[u8]) -> String {
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut s = String::new();
        for chunk in b.chunks(3) {
            let n = (u32::from(chunk[0]) << 16)
                | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
                | u32::from(*chunk.get(2).unwrap_or(&0));
            for i in 0..(chunk.len() + 1) {
                s.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        s
    }

    fn token(secret: &str, claims: &str) -> String {
        let h = b64url(br#"{"alg":"HS256","typ":"JWT"}"#);
        let p = b64url(claims.as_bytes());
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
        let sig = ring::hmac::sign(&key, format!("{h}.{p}").as_bytes());
        format!("{h}.{p}.{}", b64url(sig.as_ref()))
    }

    #[test]
    fn base64_roundtrip() {
        assert_eq!(base64_decode("dXNlcjpwYXNz").unwrap(), b"user:pass");
        assert_eq!(base64_decode("dXNlcjpwYXNzMQ==").unwrap(), b"user:pass1");
        assert!(base64_decode("not base64!").is_none());
    }

    #[test]
    fn basic_and_jwt() {
        let b = BasicAuth {
            users: vec![("user".into(), "pass".into())],
            realm: "r".into(),
            exclude_paths: vec![crate::matching::PathPattern::parse("/public/*").unwrap()],
        };
        assert!(basic_ok(&b, "/", Some("Basic dXNlcjpwYXNz")));
        assert!(!basic_ok(&b, "/", Some("Basic dXNlcjpwYXNzMQ==")));
        assert!(!basic_ok(&b, "/", None));
        assert!(basic_ok(&b, "/public/x", None));
        let j = JwtAuth {
            secret: "s3cret".into(),
            algorithm: JwtAlgorithm::Hs256,
            issuer: Some("me".into()),
            audience: Some("api".into()),
            exclude_paths: vec![],
        };
        let good = token("s3cret", r#"{"iss":"me","aud":["api"],"exp":2000000000}"#);
        assert!(jwt_ok(&j, "/", Some(&format!("Bearer {good}")), 1_900_000_000));
        assert!(!jwt_ok(&j, "/", Some(&format!("Bearer {good}")), 2_000_000_001), "expired");
        assert!(
            !jwt_ok(&j, "/", Some(&format!("Bearer {}", token("other", r#"{"iss":"me","aud":"api"}"#))), 0),
            "bad signature"
        );
        assert!(
            !jwt_ok(&j, "/", Some(&format!("Bearer {}", token("s3cret", r#"{"iss":"you","aud":"api"}"#))), 0),
            "issuer"
        );
        assert!(!jwt_ok(&j, "/", Some("Bearer a.b"), 0));
    }

    #[test]
    fn rate_window() {
        let rule =
            RateLimit { max_requests: 2, window: Duration::from_secs(60), key: RateLimitKey::Ip, message: "x".into() };
        let r = RateLimiter::default();
        let t = Instant::now();
        assert!(r.allow(&rule, "a".into(), t));
        assert!(r.allow(&rule, "a".into(), t));
        assert!(!r.allow(&rule, "a".into(), t));
        assert!(r.allow(&rule, "b".into(), t));
        assert!(r.allow(&rule, "a".into(), t + Duration::from_secs(61)));
    }

    /// A flood of distinct keys triggers a bounded number of sweeps (not one per request), and
    /// a sweep keeps the keys still inside their window.
    #[test]
    fn sweeps_are_amortised() {
        let rule = RateLimit {
            max_requests: 5,
            window: Duration::from_secs(10),
            key: RateLimitKey::Path,
            message: "x".into(),
        };
        let r = RateLimiter::default();
        let t = Instant::now();
        for i in 0..30_000 {
            assert!(r.allow(&rule, format!("/p{i}"), t));
        }
        // All keys are recent: sweeps keep them, and the next sweep waits for twice as many.
        assert_eq!(r.keys(), 30_000);
        assert!(r.sweep_at.load(Ordering::Relaxed) >= 20_000);
        // Later, the old keys are stale: the next sweep drops them.
        let later = t + Duration::from_secs(11);
        for i in 0..40_001 {
            r.allow(&rule, format!("/q{i}"), later);
        }
        assert!(r.keys() < 45_000, "{}", r.keys());
    }
}
