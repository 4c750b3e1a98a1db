//! Domain patterns (spec §6.2): case-insensitive, trimmed, trailing dots ignored; `*` matches any
//! run of characters including dots, and a pattern is anchored at both ends. So `*.example.com`
//! matches `a.b.example.com` but not `example.com`, and `example.*` matches `example.org`.

/// Lower-cases, trims and strips trailing dots, the normal form both patterns and hosts use.
/// Borrows when the name is already lower-case (the common case: no allocation per request).
pub fn normalize_host(host: &str) -> std::borrow::Cow<'_, str> {
    let n = host.trim().trim_end_matches('.');
    if n.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(n.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(n)
    }
}

/// See [`DomainPattern::index_key`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexKey<'a> {
    Exact(&'a str),
    Suffix(&'a str),
}

/// A compiled domain pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainPattern {
    raw: String,
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Any,
    Exact(String),
    /// The pattern split at each `*`: the first part is a prefix, the last a suffix, the middle
    /// parts must appear in order between them.
    Glob(Vec<String>),
}

impl DomainPattern {
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let norm = normalize_host(pattern).into_owned();
        if norm.is_empty() {
            return Err("domain pattern must not be empty".into());
        }
        if let Some(bad) =
            norm.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '*' | '_' | ':' | '[' | ']')))
        {
            return Err(format!("invalid character {bad:?} in domain pattern {pattern:?}"));
        }
        let kind = if norm.chars().all(|c| c == '*') {
            Kind::Any
        } else if norm.contains('*') {
            Kind::Glob(norm.split('*').map(str::to_owned).collect())
        } else {
            Kind::Exact(norm.clone())
        };
        Ok(DomainPattern { raw: norm, kind })
    }

    /// The normalised pattern text.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Whether the pattern contains a wildcard.
    pub fn is_wildcard(&self) -> bool {
        !matches!(self.kind, Kind::Exact(_))
    }

    /// How a domain index can find this pattern's hosts: an exact name, or the suffix (with its
    /// leading dot) of a `*.suffix` pattern, whose hosts end with it at a label boundary.
    /// `None`: no index key (`*`, and other globs), the pattern must be tried on every host.
    pub fn index_key(&self) -> Option<IndexKey<'_>> {
        match &self.kind {
            Kind::Exact(e) => Some(IndexKey::Exact(e)),
            Kind::Glob(parts) => match parts.as_slice() {
                [first, suffix] if first.is_empty() && suffix.starts_with('.') => Some(IndexKey::Suffix(suffix)),
                _ => None,
            },
            Kind::Any => None,
        }
    }

    /// `host` must already be normalised with [`normalize_host`].
    pub fn matches(&self, host: &str) -> bool {
        match &self.kind {
            Kind::Any => true,
            Kind::Exact(e) => e == host,
            Kind::Glob(parts) => glob_match(parts, host),
        }
    }
}

fn glob_match(parts: &[String], s: &str) -> bool {
    let (first, rest) = match parts.split_first() {
        Some(x) => x,
        None => return s.is_empty(),
    };
    let (last, middle) = match rest.split_last() {
        Some(x) => x,
        None => return s == first,
    };
    if s.len() < first.len() + last.len() || !s.starts_with(first.as_str()) || !s.ends_with(last.as_str()) {
        return false;
    }
    let mut window = &s[first.len()..s.len() - last.len()];
    for part in middle {
        match window.find(part.as_str()) {
            Some(i) => window = &window[i + part.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let cases: &[(&str, &str, bool)] = &[
            ("example.com", "example.com", true),
            ("Example.COM.", "example.com", true),
            ("example.com", "www.example.com", false),
            ("*.example.com", "a.example.com", true),
            ("*.example.com", "a.b.example.com", true),
            ("*.example.com", "example.com", false),
            ("*.example.com", "badexample.com", false),
            ("example.*", "example.com", true),
            ("example.*", "example.org", true),
            ("example.*", "www.example.org", false),
            ("*", "anything.at.all", true),
            ("api.*.example.com", "api.eu.example.com", true),
            ("api.*.example.com", "api.example.com", false),
            ("*foo*", "xfooy", true),
            ("a*a", "a", false),
        ];
        for (pat, host, want) in cases {
            let p = DomainPattern::parse(pat).unwrap();
            assert_eq!(p.matches(&normalize_host(host)), *want, "{pat} vs {host}");
        }
    }

    #[test]
    fn index_keys() {
        let key = |p: &str| DomainPattern::parse(p).unwrap().index_key().map(|k| format!("{k:?}"));
        assert_eq!(key("Example.com").as_deref(), Some("Exact(\"example.com\")"));
        assert_eq!(key("*.example.com").as_deref(), Some("Suffix(\".example.com\")"));
        assert_eq!(key("*"), None);
        assert_eq!(key("example.*"), None);
        assert_eq!(key("*example.com"), None);
        assert_eq!(key("*.*.example.com"), None);
    }

    #[test]
    fn rejects_garbage() {
        assert!(DomainPattern::parse("  ").is_err());
        assert!(DomainPattern::parse("exa mple.com").is_err());
        assert!(DomainPattern::parse("a/b").is_err());
    }
}
