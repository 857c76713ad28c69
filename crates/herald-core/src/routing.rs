//! Maps a device's `app_id` to the configured app.
//!
//! Exact names win; otherwise one glob pattern (`*` any run of characters, `?` one character) may
//! match. Two globs that could both match some app_id make routing ambiguous, so
//! [`AppRouter::new`] refuses them at start-up instead of picking one at request time.

use std::collections::{HashMap, HashSet};

/// An app_id → app table.
#[derive(Debug)]
pub struct AppRouter<T> {
    exact: HashMap<String, T>,
    globs: Vec<(Glob, T)>,
}

/// A routing table that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoutingError {
    /// Two glob patterns overlap.
    #[error("app patterns `{0}` and `{1}` can both match the same app_id; make them disjoint")]
    OverlappingGlobs(String, String),
    /// A pattern is empty.
    #[error("an app_id pattern is empty")]
    Empty,
}

impl<T> AppRouter<T> {
    /// Builds the table; a key containing `*` or `?` is a glob.
    pub fn new(apps: impl IntoIterator<Item = (String, T)>) -> Result<Self, RoutingError> {
        let mut exact = HashMap::new();
        let mut globs: Vec<(Glob, T)> = Vec::new();
        for (key, app) in apps {
            if key.is_empty() {
                return Err(RoutingError::Empty);
            }
            if Glob::is_glob(&key) {
                let glob = Glob::new(&key);
                if let Some((other, _)) = globs.iter().find(|(g, _)| g.overlaps(&glob)) {
                    return Err(RoutingError::OverlappingGlobs(other.source.clone(), key));
                }
                globs.push((glob, app));
            } else {
                exact.insert(key, app);
            }
        }
        Ok(AppRouter { exact, globs })
    }

    /// The app for `app_id`, if any.
    pub fn route(&self, app_id: &str) -> Option<&T> {
        self.exact
            .get(app_id)
            .or_else(|| self.globs.iter().find(|(g, _)| g.matches(app_id)).map(|(_, app)| app))
    }

    /// Every configured app with its key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &T)> {
        self.exact
            .iter()
            .map(|(k, v)| (k.as_str(), v))
            .chain(self.globs.iter().map(|(g, v)| (g.source.as_str(), v)))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Token {
    Star,
    Any,
    Char(char),
}

/// A compiled `*`/`?` pattern.
#[derive(Debug, Clone)]
struct Glob {
    source: String,
    tokens: Vec<Token>,
}

impl Glob {
    fn is_glob(s: &str) -> bool {
        s.contains(['*', '?'])
    }

    fn new(source: &str) -> Self {
        let mut tokens: Vec<Token> = Vec::with_capacity(source.len());
        for c in source.chars() {
            let t = match c {
                '*' => Token::Star,
                '?' => Token::Any,
                c => Token::Char(c),
            };
            // `**` means the same as `*`, and collapsing keeps matching linear.
            if !(t == Token::Star && tokens.last() == Some(&Token::Star)) {
                tokens.push(t);
            }
        }
        Glob { source: source.to_owned(), tokens }
    }

    fn matches(&self, text: &str) -> bool {
        // Iterative wildcard matching with single-star backtracking: O(len(text) * len(pattern)).
        let text: Vec<char> = text.chars().collect();
        let (mut p, mut t) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while t < text.len() {
            match self.tokens.get(p) {
                Some(Token::Char(c)) if *c == text[t] => (p, t) = (p + 1, t + 1),
                Some(Token::Any) => (p, t) = (p + 1, t + 1),
                Some(Token::Star) => {
                    star = Some((p, t));
                    p += 1;
                }
                _ => match star {
                    Some((sp, st)) => {
                        star = Some((sp, st + 1));
                        (p, t) = (sp + 1, st + 1);
                    }
                    None => return false,
                },
            }
        }
        self.tokens[p..].iter().all(|t| *t == Token::Star)
    }

    /// Whether some string matches both patterns (a search over the product of the two).
    fn overlaps(&self, other: &Glob) -> bool {
        let (a, b) = (&self.tokens, &other.tokens);
        let mut seen = HashSet::new();
        let mut stack = vec![(0usize, 0usize)];
        while let Some((i, j)) = stack.pop() {
            if !seen.insert((i, j)) {
                continue;
            }
            match (a.get(i), b.get(j)) {
                (None, None) => return true,
                (Some(Token::Star), _) | (_, Some(Token::Star)) => {
                    // A star either stops here or absorbs the character the other side matches.
                    if a.get(i) == Some(&Token::Star) {
                        stack.push((i + 1, j));
                        if j < b.len() {
                            stack.push((i, j + 1));
                        }
                    }
                    if b.get(j) == Some(&Token::Star) {
                        stack.push((i, j + 1));
                        if i < a.len() {
                            stack.push((i + 1, j));
                        }
                    }
                }
                (Some(x), Some(y)) => {
                    let compatible = match (x, y) {
                        (Token::Char(c), Token::Char(d)) => c == d,
                        _ => true,
                    };
                    if compatible {
                        stack.push((i + 1, j + 1));
                    }
                }
                _ => {}
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(keys: &[&str]) -> Result<AppRouter<String>, RoutingError> {
        AppRouter::new(keys.iter().map(|k| (k.to_string(), k.to_string())))
    }

    #[test]
    fn exact_beats_glob() {
        let r = router(&["im.vector.app", "im.vector.*"]).unwrap();
        assert_eq!(r.route("im.vector.app").unwrap(), "im.vector.app");
        assert_eq!(r.route("im.vector.app.ios").unwrap(), "im.vector.*");
        assert_eq!(r.route("im.vector"), None);
        assert_eq!(r.route("org.other"), None);
    }

    #[test]
    fn glob_matching() {
        let g = Glob::new("a?c*");
        assert!(g.matches("abc"));
        assert!(g.matches("abcdef"));
        assert!(!g.matches("ac"));
        assert!(Glob::new("*.ios").matches("im.vector.ios"));
        assert!(!Glob::new("*.ios").matches("im.vector.android"));
        assert!(Glob::new("*a*b*").matches("xxaxxbxx"));
        assert!(!Glob::new("*a*b*").matches("xxbxxaxx"));
        assert!(Glob::new("é?").matches("éà"));
    }

    #[test]
    fn overlapping_globs_are_a_config_error() {
        assert!(matches!(
            router(&["im.vector.*", "*.ios"]),
            Err(RoutingError::OverlappingGlobs(_, _))
        ));
        assert!(router(&["a.*", "b.*"]).is_ok());
        assert!(router(&["*.ios", "*.android"]).is_ok());
        assert!(router(&["a?", "?b"]).is_err());
        assert!(router(&["a?", "b?"]).is_ok());
        assert!(router(&["*x*", "*y*"]).is_err());
        assert!(router(&["x*", "*y"]).is_err());
        assert!(router(&["ab*", "ac*"]).is_ok());
    }
}
