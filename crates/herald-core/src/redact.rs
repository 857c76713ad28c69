//! How device tokens appear in logs: never in clear, and not reversible by a dictionary.
//!
//! A pushkey identifies a device and lets anyone push to it (and an email pusher's pushkey is an
//! address), so logs carry a short keyed hash instead: HMAC-SHA-256 under a per-installation secret,
//! cut to 48 bits. Lines about one device correlate; without the secret, guessing candidate
//! pushkeys and hashing them finds nothing. The server installs the secret from `data_dir` at start
//! ([`load_or_create_key`], [`install_key`]); until then (tests, tools) a random per-process key is
//! used, so a hash is never unkeyed.

use std::fmt;
use std::io::{self, Write};
use std::path::Path;
use std::sync::OnceLock;

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// Length of the secret, in bytes.
const KEY_LEN: usize = 32;

static KEY: OnceLock<hmac::Key> = OnceLock::new();

/// Installs the secret that keys every [`PushkeyHash`]. The first call wins (one per process);
/// returns false when a key was already in use.
pub fn install_key(secret: &[u8]) -> bool {
    KEY.set(hmac::Key::new(hmac::HMAC_SHA256, secret)).is_ok()
}

fn key() -> &'static hmac::Key {
    KEY.get_or_init(|| {
        let mut secret = [0u8; KEY_LEN];
        // The system RNG does not fail on supported platforms; a zero key is still keyed per build.
        let _ = SystemRandom::new().fill(&mut secret);
        hmac::Key::new(hmac::HMAC_SHA256, &secret)
    })
}

/// Reads the secret at `path`, or creates it (32 random bytes, hex, mode 0600) when the file does
/// not exist.
pub fn load_or_create_key(path: &Path) -> io::Result<Vec<u8>> {
    match std::fs::read_to_string(path) {
        Ok(text) => decode_hex(text.trim()).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not a hex secret; delete it to make a new one", path.display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let mut secret = [0u8; KEY_LEN];
            SystemRandom::new()
                .fill(&mut secret)
                .map_err(|_| io::Error::other("the system random generator failed"))?;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(path)?;
            let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
            file.write_all(format!("{hex}\n").as_bytes())?;
            file.sync_all()?;
            Ok(secret.to_vec())
        }
        Err(e) => Err(e),
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() < 32 || text.len() % 2 != 0 {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// A short keyed hash of a pushkey for logs and spans (`Display` prints 12 hex digits).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PushkeyHash([u8; 6]);

impl PushkeyHash {
    /// Hashes `pushkey` under the installation's secret.
    pub fn of(pushkey: &str) -> Self {
        let tag = hmac::sign(key(), pushkey.as_bytes());
        let mut short = [0u8; 6];
        short.copy_from_slice(&tag.as_ref()[..6]);
        PushkeyHash(short)
    }
}

impl fmt::Display for PushkeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
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
    fn stable_short_and_keyed() {
        let a = PushkeyHash::of("secret-token").to_string();
        assert_eq!(a.len(), 12);
        assert_eq!(a, PushkeyHash::of("secret-token").to_string());
        assert_ne!(a, PushkeyHash::of("other-token").to_string());
        // Not the unkeyed digest of the pushkey: a dictionary of pushkeys does not reverse it.
        let unkeyed = ring::digest::digest(&ring::digest::SHA256, b"secret-token");
        let unkeyed: String = unkeyed.as_ref()[..6].iter().map(|b| format!("{b:02x}")).collect();
        assert_ne!(a, unkeyed);
    }

    #[test]
    fn secret_file_is_created_once_and_private() {
        let dir = std::env::temp_dir().join(format!("herald-redact-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("log-key");
        let _ = std::fs::remove_file(&path);
        let first = load_or_create_key(&path).expect("created");
        assert_eq!(first.len(), KEY_LEN);
        assert_eq!(load_or_create_key(&path).expect("read back"), first);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("metadata").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "not hex").expect("overwrite");
        assert!(load_or_create_key(&path).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
