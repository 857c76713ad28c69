//! How secrets and device tokens appear in logs: never in clear.
//!
//! A pushkey identifies a device and lets anyone push to it, so logs carry a short, stable hash
//! instead: enough to correlate lines about one device, useless to an attacker.

use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};

/// A short hash of a pushkey for logs and spans (`Display` prints 8 hex digits).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PushkeyHash(u32);

impl PushkeyHash {
    /// Hashes `pushkey`. `DefaultHasher::new()` uses fixed keys, so the value is stable within a
    /// build, which is all log correlation needs.
    pub fn of(pushkey: &str) -> Self {
        let mut h = DefaultHasher::new();
        pushkey.hash(&mut h);
        PushkeyHash(h.finish() as u32)
    }
}

impl fmt::Display for PushkeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

impl fmt::Debug for PushkeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_and_short() {
        let a = PushkeyHash::of("secret-token").to_string();
        assert_eq!(a.len(), 8);
        assert_eq!(a, PushkeyHash::of("secret-token").to_string());
        assert_ne!(a, PushkeyHash::of("other-token").to_string());
        assert!(!a.contains("secret"));
    }
}
