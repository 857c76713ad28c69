//! `*`/`?` patterns, written once for every part of Herald that matches names: app routing
//! (`im.vector.*`) and WebPush's host allow-list (`*.corp.example`).
//!
//! `*` matches any run of characters (none included), `?` exactly one; there are no classes and
//! no escapes, because neither app_ids nor host names need them. Matching is linear-ish
//! (single-star backtracking, O(text × pattern) at worst) and never allocates.

use std::collections::HashSet;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Token {
    Star,
    Any,
    Char(char),
}

/// A compiled `*`/`?` pattern.
#[derive(Debug, Clone)]
pub struct Glob {
    source: String,
    tokens: Vec<Token>,
    ignore_ascii_case: bool,
}

impl Glob {
    /// Whether `text` contains a wildcard, i.e. is a pattern rather than a literal name.
    pub fn is_glob(text: &str) -> bool {
        text.contains(['*', '?'])
    }

    /// A case-sensitive pattern (app_ids are compared exactly).
    pub fn new(pattern: &str) -> Self {
        let mut tokens: Vec<Token> = Vec::with_capacity(pattern.len());
        for c in pattern.chars() {
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
        Glob { source: pattern.to_owned(), tokens, ignore_ascii_case: false }
    }

    /// A pattern that ignores ASCII case on both sides (host names: `*.Example.org` matches
    /// `push.example.ORG`). Non-ASCII characters still compare exactly; hosts reach Herald in
    /// their ASCII (punycode) form.
    pub fn ascii_case_insensitive(pattern: &str) -> Self {
        Glob { ignore_ascii_case: true, ..Glob::new(pattern) }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    fn same(&self, a: char, b: char) -> bool {
        a == b || (self.ignore_ascii_case && a.eq_ignore_ascii_case(&b))
    }

    /// Whether `text` matches the whole pattern.
    pub fn matches(&self, text: &str) -> bool {
        // Iterative wildcard matching with single-star backtracking; `t` is a byte offset.
        let (mut p, mut t) = (0, 0);
        // (token after the last star, where in `text` that star's run ends)
        let mut star: Option<(usize, usize)> = None;
        while let Some(c) = text[t..].chars().next() {
            match self.tokens.get(p) {
                Some(Token::Char(d)) if self.same(*d, c) => (p, t) = (p + 1, t + c.len_utf8()),
                Some(Token::Any) => (p, t) = (p + 1, t + c.len_utf8()),
                Some(Token::Star) => {
                    star = Some((p + 1, t));
                    p += 1;
                }
                _ => match star {
                    Some((sp, st)) => {
                        // Let the last star absorb one more character and retry after it.
                        let Some(absorbed) = text[st..].chars().next() else { return false };
                        let st = st + absorbed.len_utf8();
                        star = Some((sp, st));
                        (p, t) = (sp, st);
                    }
                    None => return false,
                },
            }
        }
        self.tokens[p..].iter().all(|t| *t == Token::Star)
    }

    /// Whether some string matches both patterns (a search over the product of the two). Two
    /// routing globs that overlap would make an app_id's app depend on configuration order.
    /// Case is ignored if either pattern ignores it.
    pub fn overlaps(&self, other: &Glob) -> bool {
        let (a, b) = (&self.tokens, &other.tokens);
        let ignore_case = self.ignore_ascii_case || other.ignore_ascii_case;
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
                        (Token::Char(c), Token::Char(d)) => {
                            c == d || (ignore_case && c.eq_ignore_ascii_case(d))
                        }
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

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching() {
        let g = Glob::new("a?c*");
        assert!(g.matches("abc"));
        assert!(g.matches("abcdef"));
        assert!(!g.matches("ac"));
        assert!(Glob::new("*.ios").matches("im.vector.ios"));
        assert!(!Glob::new("*.ios").matches("im.vector.android"));
        assert!(Glob::new("*a*b*").matches("xxaxxbxx"));
        assert!(!Glob::new("*a*b*").matches("xxbxxaxx"));
        assert!(Glob::new("é?").matches("éà"));
        assert!(Glob::new("*à").matches("ééà"));
        assert!(!Glob::new("*à").matches("ééa"));
        assert!(Glob::new("**").matches(""));
        assert!(Glob::new("*").matches("anything"));
        assert!(!Glob::new("?").matches(""));
        assert!(!Glob::new("abc").matches("abcd"));
        // Backtracking has to move past an earlier partial match.
        assert!(Glob::new("*aab").matches("aaab"));
        assert!(Glob::is_glob("a*") && Glob::is_glob("a?") && !Glob::is_glob("a.b"));
        assert_eq!(Glob::new("a*").to_string(), "a*");
    }

    #[test]
    fn case() {
        assert!(!Glob::new("*.Example.org").matches("push.example.org"));
        let g = Glob::ascii_case_insensitive("*.Example.org");
        assert!(g.matches("push.example.org"));
        assert!(g.matches("a.b.EXAMPLE.ORG"));
        assert!(!g.matches("example.org"));
        assert!(Glob::ascii_case_insensitive("push?.x").matches("PUSH1.X"));
        assert_eq!(g.as_str(), "*.Example.org");
    }

    #[test]
    fn overlap() {
        let o = |a: &str, b: &str| Glob::new(a).overlaps(&Glob::new(b));
        assert!(o("im.vector.*", "*.ios"));
        assert!(!o("a.*", "b.*"));
        assert!(!o("*.ios", "*.android"));
        assert!(o("a?", "?b"));
        assert!(!o("a?", "b?"));
        assert!(o("*x*", "*y*"));
        assert!(o("x*", "*y"));
        assert!(!o("ab*", "ac*"));
        assert!(!o("A*", "a*"));
        assert!(Glob::ascii_case_insensitive("A*").overlaps(&Glob::new("a*")));
    }
}
