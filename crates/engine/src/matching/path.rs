//! Path patterns (spec §6.3). `:name` captures one segment (no `/`), `*` matches anything
//! including `/`, everything else is literal. Patterns are anchored at the start, and at the end
//! only when they contain no `*`, no `:` and do not end with `/`: `/api/users` is exact, while
//! `/api/` and `/users/:id` match as prefixes. Captures and wildcards are greedy, as the
//! regex upstream builds is.

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Lit(String),
    Param(String),
    Wild,
}

/// A compiled path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    raw: String,
    tokens: Vec<Token>,
    anchored_end: bool,
}

/// The result of a successful match.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PathMatch {
    pub params: Vec<(String, String)>,
    /// The part of the path the pattern consumed.
    pub matched: String,
    /// What follows the matched part (empty for exact matches).
    pub remainder: String,
}

impl PathPattern {
    pub fn parse(pattern: &str) -> Result<Self, String> {
        if pattern.is_empty() {
            return Err("path pattern must not be empty".into());
        }
        let mut tokens = Vec::new();
        let mut lit = String::new();
        let mut chars = pattern.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '*' => {
                    if !lit.is_empty() {
                        tokens.push(Token::Lit(std::mem::take(&mut lit)));
                    }
                    if tokens.last() != Some(&Token::Wild) {
                        tokens.push(Token::Wild);
                    }
                }
                ':' if chars.peek().is_some_and(|n| n.is_ascii_alphanumeric() || *n == '_') => {
                    if !lit.is_empty() {
                        tokens.push(Token::Lit(std::mem::take(&mut lit)));
                    }
                    let mut name = String::new();
                    while let Some(&n) = chars.peek() {
                        if n.is_ascii_alphanumeric() || n == '_' {
                            name.push(n);
                            chars.next();
                        } else {
                            break;
                        }
                    }
                    tokens.push(Token::Param(name));
                }
                _ => lit.push(c),
            }
        }
        if !lit.is_empty() {
            tokens.push(Token::Lit(lit));
        }
        let anchored_end = !pattern.contains('*') && !pattern.contains(':') && !pattern.ends_with('/');
        Ok(PathPattern { raw: pattern.to_owned(), tokens, anchored_end })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Matches the path component of a request target (no query string).
    pub fn match_path(&self, path: &str) -> Option<PathMatch> {
        let mut params = Vec::new();
        let end = self.match_from(0, path, 0, &mut params)?;
        Some(PathMatch { params, matched: path[..end].to_owned(), remainder: path[end..].to_owned() })
    }

    pub fn matches(&self, path: &str) -> bool {
        let mut params = Vec::new();
        self.match_from(0, path, 0, &mut params).is_some()
    }

    /// Returns the end offset of the match starting at `pos` with tokens from `ti` on.
    fn match_from(&self, ti: usize, s: &str, pos: usize, params: &mut Vec<(String, String)>) -> Option<usize> {
        let Some(tok) = self.tokens.get(ti) else {
            return (!self.anchored_end || pos == s.len()).then_some(pos);
        };
        match tok {
            Token::Lit(l) => {
                if s[pos..].starts_with(l.as_str()) {
                    self.match_from(ti + 1, s, pos + l.len(), params)
                } else {
                    None
                }
            }
            Token::Param(name) => {
                let seg_len = s[pos..].find('/').unwrap_or(s.len() - pos);
                // Greedy: try the longest capture first, at least one character.
                for len in (1..=seg_len).rev() {
                    if !s.is_char_boundary(pos + len) {
                        continue;
                    }
                    let mark = params.len();
                    params.push((name.clone(), s[pos..pos + len].to_owned()));
                    if let Some(end) = self.match_from(ti + 1, s, pos + len, params) {
                        return Some(end);
                    }
                    params.truncate(mark);
                }
                None
            }
            Token::Wild => {
                for end in (pos..=s.len()).rev() {
                    if !s.is_char_boundary(end) {
                        continue;
                    }
                    if let Some(e) = self.match_from(ti + 1, s, end, params) {
                        return Some(e);
                    }
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let cases: &[(&str, &str, bool)] = &[
            ("/api/users", "/api/users", true),
            ("/api/users", "/api/users/1", false),
            ("/api/users", "/api/user", false),
            ("/api/", "/api/anything/deep", true),
            ("/api/", "/api", false),
            ("/api/*", "/api/x/y", true),
            ("/api/*", "/api/", true),
            ("/api/*", "/apix", false),
            ("/users/:id", "/users/42", true),
            ("/users/:id", "/users/42/posts", true),
            ("/users/:id", "/users/", false),
            ("/users/:id/posts", "/users/42/posts", true),
            ("/users/:id/posts", "/users/42/comments", false),
            ("*", "/whatever", true),
            ("/a.b", "/axb", false),
            ("/files/*.png", "/files/a/b.png", true),
            ("/files/*.png", "/files/a/b.jpg", false),
        ];
        for (pat, path, want) in cases {
            let p = PathPattern::parse(pat).unwrap();
            assert_eq!(p.matches(path), *want, "{pat} vs {path}");
        }
    }

    #[test]
    fn params_and_remainder() {
        let p = PathPattern::parse("/users/:id").unwrap();
        let m = p.match_path("/users/42/posts").unwrap();
        assert_eq!(m.params, vec![("id".to_string(), "42".to_string())]);
        assert_eq!(m.matched, "/users/42");
        assert_eq!(m.remainder, "/posts");

        let p = PathPattern::parse("/api/").unwrap();
        let m = p.match_path("/api/v1/x").unwrap();
        assert_eq!(m.matched, "/api/");
        assert_eq!(m.remainder, "v1/x");

        let p = PathPattern::parse("/:a/:b").unwrap();
        let m = p.match_path("/x/y").unwrap();
        assert_eq!(m.params, vec![("a".into(), "x".into()), ("b".into(), "y".into())]);
    }
}
