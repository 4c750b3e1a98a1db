//! HTTP header conditions (`match.headers`): a string means equality, a regular expression
//! (passed from JavaScript as its source and flags) is tested against the value.
//! Header names compare case-insensitively; the first value of a repeated header is used,
//! as upstream's context builder does.

use regex::{Regex, RegexBuilder};

#[derive(Debug, Clone)]
pub enum HeaderValuePattern {
    Exact(String),
    Regex(Regex),
}

/// One compiled `name: pattern` condition.
#[derive(Debug, Clone)]
pub struct HeaderMatcher {
    /// Lower-cased header name.
    pub name: String,
    pub pattern: HeaderValuePattern,
}

impl HeaderMatcher {
    pub fn exact(name: &str, value: &str) -> Self {
        HeaderMatcher { name: name.to_ascii_lowercase(), pattern: HeaderValuePattern::Exact(value.to_owned()) }
    }

    /// Compiles a JavaScript `RegExp` given as `source` and `flags`.
    pub fn regex(name: &str, source: &str, flags: &str) -> Result<Self, String> {
        let mut b = RegexBuilder::new(source);
        for f in flags.chars() {
            match f {
                'i' => b.case_insensitive(true),
                'm' => b.multi_line(true),
                's' => b.dot_matches_new_line(true),
                // g, y, u and d do not change what `test()` accepts for one value.
                'g' | 'y' | 'u' | 'd' => &mut b,
                other => return Err(format!("unsupported RegExp flag {other:?}")),
            };
        }
        let re = b.build().map_err(|e| format!("invalid regular expression /{source}/: {e}"))?;
        Ok(HeaderMatcher { name: name.to_ascii_lowercase(), pattern: HeaderValuePattern::Regex(re) })
    }

    /// `lookup` returns the first value of a header given its lower-cased name.
    pub fn matches<'a>(&self, lookup: impl Fn(&str) -> Option<&'a str>) -> bool {
        match (lookup(&self.name), &self.pattern) {
            (None, _) => false,
            (Some(v), HeaderValuePattern::Exact(e)) => v == e,
            (Some(v), HeaderValuePattern::Regex(re)) => re.is_match(v),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let headers = [("x-env", "prod"), ("user-agent", "Mozilla/5.0 curl")];
        let lookup = |n: &str| headers.iter().find(|(k, _)| *k == n).map(|(_, v)| *v);
        assert!(HeaderMatcher::exact("X-Env", "prod").matches(lookup));
        assert!(!HeaderMatcher::exact("x-env", "Prod").matches(lookup));
        assert!(!HeaderMatcher::exact("x-missing", "prod").matches(lookup));
        assert!(HeaderMatcher::regex("user-agent", "CURL", "i").unwrap().matches(lookup));
        assert!(!HeaderMatcher::regex("user-agent", "^curl", "").unwrap().matches(lookup));
        assert!(HeaderMatcher::regex("x", "(", "").is_err());
    }
}
