//! Maps a device's `app_id` to the configured app.
//!
//! Exact names win; otherwise one [`Glob`] (`*` any run of characters, `?` one character) may
//! match. Two globs that could both match some app_id make routing ambiguous, so
//! [`AppRouter::new`] refuses them at start-up instead of picking one at request time.

use std::collections::HashMap;

use crate::glob::Glob;

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
                    return Err(RoutingError::OverlappingGlobs(other.as_str().to_owned(), key));
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
            .chain(self.globs.iter().map(|(g, v)| (g.as_str(), v)))
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
