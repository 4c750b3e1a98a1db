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
        let end = self.run(path, &mut params)?;
        Some(PathMatch { params, matched: path[..end].to_owned(), remainder: path[end..].to_owned() })
    }

    pub fn matches(&self, path: &str) -> bool {
        self.run(path, &mut Vec::new()).is_some()
    }

    /// Backtracking first: cheap for the usual short paths. A pattern with several captures or
    /// wildcards followed by literals can backtrack polynomially in the path's length (a client
    /// controls the path: "/*/*/x" against 8,000 slashes took 0.4 s, "/*/*/*/x" grows as n³), so
    /// past a step budget linear in the path the same greedy match is computed by
    /// [`match_table`](Self::match_table) in O(tokens × path) instead.
    fn run(&self, s: &str, params: &mut Vec<(String, String)>) -> Option<usize> {
        let mut budget = 16 * (self.tokens.len() + 1) * (s.len() + 16);
        match self.match_from(0, s, 0, params, &mut budget) {
            Ok(end) => end,
            Err(Exhausted) => {
                params.clear();
                self.match_table(s, params)
            }
        }
    }

    /// Returns the end offset of the match starting at `pos` with tokens from `ti` on.
    fn match_from(
        &self,
        ti: usize,
        s: &str,
        pos: usize,
        params: &mut Vec<(String, String)>,
        budget: &mut usize,
    ) -> Result<Option<usize>, Exhausted> {
        *budget = budget.checked_sub(1).ok_or(Exhausted)?;
        let Some(tok) = self.tokens.get(ti) else {
            return Ok((!self.anchored_end || pos == s.len()).then_some(pos));
        };
        match tok {
            Token::Lit(l) => {
                if s[pos..].starts_with(l.as_str()) {
                    self.match_from(ti + 1, s, pos + l.len(), params, budget)
                } else {
                    Ok(None)
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
                    if let Some(end) = self.match_from(ti + 1, s, pos + len, params, budget)? {
                        return Ok(Some(end));
                    }
                    params.truncate(mark);
                }
                Ok(None)
            }
            Token::Wild => {
                for end in (pos..=s.len()).rev() {
                    if !s.is_char_boundary(end) {
                        continue;
                    }
                    if let Some(e) = self.match_from(ti + 1, s, end, params, budget)? {
                        return Ok(Some(e));
                    }
                }
                Ok(None)
            }
        }
    }

    /// The greedy match of [`match_from`](Self::match_from), by dynamic programming over
    /// (token, offset) from the last token back: for each state the overall end of the match and
    /// the offset its token consumed up to (the longest capture or wildcard that lets the rest
    /// match). Then the captures are read off along the chosen offsets.
    fn match_table(&self, s: &str, params: &mut Vec<(String, String)>) -> Option<usize> {
        const NONE: u32 = u32::MAX;
        let n = s.len();
        if n >= NONE as usize {
            return None; // request heads are far smaller
        }
        let width = n + 1;
        // `next[pos]` / `here[pos]`: where the match from the next / this token at `pos` ends
        // (NONE: no match); `to[ti * width + pos]`: the offset token `ti` consumes up to. Offsets
        // inside a UTF-8 sequence never match.
        let mut next: Vec<u32> = (0..=n)
            .map(|pos| if s.is_char_boundary(pos) && (!self.anchored_end || pos == n) { pos as u32 } else { NONE })
            .collect();
        let mut here: Vec<u32> = vec![NONE; width];
        let mut to: Vec<u32> = vec![0; self.tokens.len() * width];
        for (ti, tok) in self.tokens.iter().enumerate().rev() {
            here.fill(NONE);
            let at = |e: usize| (next[e] != NONE).then(|| (e, next[e]));
            // The best (largest) offset found so far, scanning offsets downwards.
            let mut best: Option<(usize, u32)> = None;
            for pos in (0..=n).rev() {
                if !s.is_char_boundary(pos) {
                    continue;
                }
                let found = match tok {
                    Token::Lit(l) => s[pos..].starts_with(l.as_str()).then(|| pos + l.len()).and_then(at),
                    Token::Wild => {
                        // Candidates are every offset from `pos` on; moving down adds `pos`.
                        if best.is_none() {
                            best = at(pos);
                        }
                        best
                    }
                    Token::Param(_) => {
                        // Captures end at or before the segment's end (the next '/'), and hold
                        // at least one character: candidate offsets are pos+1..=segment end.
                        if pos == n || s.as_bytes()[pos] == b'/' {
                            best = None;
                            None
                        } else {
                            // Moving down one character adds one candidate, the offset just
                            // after it; the first that succeeds is the largest and stays best.
                            let e = pos + s[pos..].chars().next().map_or(1, char::len_utf8);
                            if best.is_none() {
                                best = at(e);
                            }
                            best
                        }
                    }
                };
                if let Some((e, x)) = found {
                    to[ti * width + pos] = e as u32;
                    here[pos] = x;
                }
            }
            std::mem::swap(&mut next, &mut here);
        }
        let result = (next[0] != NONE).then_some(next[0] as usize)?;
        let mut pos = 0;
        for (ti, tok) in self.tokens.iter().enumerate() {
            let e = to[ti * width + pos] as usize;
            if let Token::Param(name) = tok {
                params.push((name.clone(), s[pos..e].to_owned()));
            }
            pos = e;
        }
        Some(result)
    }
}

/// The backtracking match ran out of steps.
struct Exhausted;

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
    fn the_table_match_equals_backtracking() {
        let patterns = ["/api/:v/*", "/*/*/x", "/:a:b/*", "*", "/x/", "/u/:id", "/*.js", "/é/:n/*/z", "/:a/:b/:c"];
        let paths = "/api/v1/users/é/x/y.js//z";
        for pat in patterns {
            crate::testutil::mutations(pat.as_bytes(), 300, |pb| {
                let Ok(p) = PathPattern::parse(&String::from_utf8_lossy(pb)) else { return };
                crate::testutil::mutations(paths.as_bytes(), 100, |b| {
                    let path = String::from_utf8_lossy(b);
                    let (mut a, mut t) = (Vec::new(), Vec::new());
                    let slow = p.match_from(0, &path, 0, &mut a, &mut { usize::MAX }).ok().flatten();
                    let fast = p.match_table(&path, &mut t);
                    assert_eq!((slow, &a), (fast, &t), "pattern {:?} path {path:?}", p.as_str());
                    if let Some(m) = p.match_path(&path) {
                        assert_eq!(format!("{}{}", m.matched, m.remainder), path);
                    }
                });
            });
        }
    }

    #[test]
    fn long_paths_do_not_backtrack_for_ever() {
        // Polynomial in the path's length for the backtracking matcher (0.4 s and minutes).
        let cases = [
            ("/*/*/x", "/".repeat(8000), "x"),
            ("/*/*/*/x", "/".repeat(60_000), "x"),
            ("/:a/*/:b/x", "/a".repeat(20_000), "/x"),
        ];
        for (pat, path, tail) in cases {
            let p = PathPattern::parse(pat).unwrap();
            let t = std::time::Instant::now();
            assert!(!p.matches(&path), "{pat}");
            let long = format!("{path}{tail}");
            let m = p.match_path(&long).expect(pat);
            assert_eq!(m.remainder, "");
            assert!(t.elapsed() < std::time::Duration::from_secs(1), "{pat}: {:?}", t.elapsed());
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
