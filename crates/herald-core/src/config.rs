//! Configuration value formats shared by the server and every backend crate.
//!
//! Durations are written as `"500ms"`, `"20s"`, `"15m"`, `"24h"`, `"7d"` or a bare integer number of
//! seconds, so operators use one notation everywhere. Use with
//! `#[serde(with = "herald_core::config::duration")]`.
//!
//! Secrets (private keys, passwords) are a [`SecretSource`]: a file, or an environment variable, so
//! that operators can keep them out of the configuration file (systemd credentials, Kubernetes
//! secrets mounted as files or passed as variables).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

/// Parses a duration in Herald's notation: a bare integer is seconds; anything else is
/// `humantime`'s (`"500ms"`, `"20s"`, `"15m"`, `"24h"`, `"7d"`, and combinations like `"1h 30m"`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().map(Duration::from_secs).map_err(|e| format!("`{text}`: {e}"));
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("`{text}` is not a duration like \"20s\", \"500ms\" or \"15m\": {e}"))
}

/// Formats a duration in Herald's notation (the shortest exact unit).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        ms if ms % 86_400_000 == 0 && ms > 0 => format!("{}d", ms / 86_400_000),
        ms if ms % 3_600_000 == 0 && ms > 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 && ms > 0 => format!("{}m", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

/// Serde glue for [`Duration`] fields: a string in Herald's notation or an integer of seconds.
pub mod duration {
    use std::time::Duration;

    use serde::{de, Deserializer, Serializer};

    /// Deserializes a duration.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Duration;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a duration such as \"20s\", \"500ms\", \"15m\" or a number of seconds")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
                Ok(Duration::from_secs(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
                u64::try_from(v)
                    .map(Duration::from_secs)
                    .map_err(|_| E::custom("a duration cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                super::parse_duration(v).map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }

    /// Serializes a duration as a string.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_duration(*d))
    }
}

/// Where a backend reads a secret from. In the configuration:
///
/// - `"path"` or `{ file = "path" }`: a file (relative paths resolve against the configuration
///   file's directory);
/// - `{ env = "VAR" }`: the value of an environment variable.
///
/// Neither the value nor any part of it is ever shown: `Debug`, `Display` and the errors of
/// [`read`](Self::read) name only the file or the variable.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// Read from this file.
    File(PathBuf),
    /// Read from this environment variable.
    Env(String),
}

/// A secret that could not be read; names the source, never the value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file could not be read.
    #[error("cannot read file {path}: {source}")]
    File {
        /// The resolved path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The variable is not set, or is empty.
    #[error("environment variable `{0}` is not set or is empty")]
    EnvUnset(String),
    /// The variable is not valid Unicode.
    #[error("environment variable `{0}` is not valid UTF-8")]
    EnvNotUnicode(String),
}

impl SecretSource {
    /// Reads the secret. `base_dir` resolves a relative file path (the configuration file's
    /// directory).
    pub fn read(&self, base_dir: &Path) -> Result<Vec<u8>, SecretError> {
        match self {
            SecretSource::File(_) => {
                let path = self.file_path(base_dir).unwrap_or_default();
                std::fs::read(&path).map_err(|source| SecretError::File { path, source })
            }
            SecretSource::Env(name) => match std::env::var(name) {
                Ok(value) if !value.trim().is_empty() => Ok(value.into_bytes()),
                Ok(_) | Err(std::env::VarError::NotPresent) => {
                    Err(SecretError::EnvUnset(name.clone()))
                }
                Err(std::env::VarError::NotUnicode(_)) => {
                    Err(SecretError::EnvNotUnicode(name.clone()))
                }
            },
        }
    }

    /// The file, resolved against `base_dir`; `None` for an environment variable.
    pub fn file_path(&self, base_dir: &Path) -> Option<PathBuf> {
        match self {
            SecretSource::File(path) if path.is_absolute() => Some(path.clone()),
            SecretSource::File(path) => Some(base_dir.join(path)),
            SecretSource::Env(_) => None,
        }
    }
}

impl From<PathBuf> for SecretSource {
    fn from(path: PathBuf) -> Self {
        SecretSource::File(path)
    }
}

impl From<&Path> for SecretSource {
    fn from(path: &Path) -> Self {
        SecretSource::File(path.to_path_buf())
    }
}

impl From<&str> for SecretSource {
    /// A file path.
    fn from(path: &str) -> Self {
        SecretSource::File(PathBuf::from(path))
    }
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::File(path) => write!(f, "file {}", path.display()),
            SecretSource::Env(name) => write!(f, "environment variable `{name}`"),
        }
    }
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The source only (a path or a variable name), never the secret.
        fmt::Display::fmt(self, f)
    }
}

impl<'de> Deserialize<'de> for SecretSource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = SecretSource;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a file path, { file = "path" } or { env = "VARIABLE" }"#)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SecretSource, E> {
                if v.trim().is_empty() {
                    return Err(E::custom("the path is empty"));
                }
                Ok(SecretSource::File(PathBuf::from(v)))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SecretSource, A::Error> {
                let Some(key) = map.next_key::<String>()? else {
                    return Err(de::Error::custom(r#"expected `file = "path"` or `env = "VAR"`"#));
                };
                let value: String = map.next_value()?;
                if map.next_key::<String>()?.is_some() {
                    return Err(de::Error::custom("give either `file` or `env`, not both"));
                }
                if value.trim().is_empty() {
                    return Err(de::Error::custom(format!("`{key}` is empty")));
                }
                match key.as_str() {
                    "file" => Ok(SecretSource::File(PathBuf::from(value))),
                    "env" => Ok(SecretSource::Env(value)),
                    other => Err(de::Error::unknown_field(other, &["file", "env"])),
                }
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        // Every value `format_duration` writes reads back as itself.
        for d in [1, 500, 1500, 20_000, 900_000, 86_400_000, 7 * 86_400_000] {
            let d = Duration::from_millis(d);
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
        }
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("20s").unwrap(), Duration::from_secs(20));
        assert_eq!(parse_duration("20").unwrap(), Duration::from_secs(20));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86400));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(7 * 86400));
        assert_eq!(parse_duration(" 1h 30m ").unwrap(), Duration::from_secs(5400));
        for bad in ["5 parsecs", "", "-3", "20x", "s", "99999999999999999999"] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.contains(bad.trim()), "{bad}: {e}");
        }
        assert_eq!(format_duration(Duration::from_secs(900)), "15m");
        assert_eq!(format_duration(Duration::from_secs(86400)), "1d");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    }

    fn secret(json: &str) -> Result<SecretSource, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn secret_sources_parse_from_a_path_a_file_or_a_variable() {
        assert_eq!(secret(r#""k.pem""#).unwrap(), SecretSource::File("k.pem".into()));
        assert_eq!(secret(r#"{"file": "/k.pem"}"#).unwrap(), SecretSource::File("/k.pem".into()));
        assert_eq!(secret(r#"{"env": "KEY"}"#).unwrap(), SecretSource::Env("KEY".into()));
        assert!(secret(r#"{"env": "A", "file": "b"}"#).unwrap_err().contains("not both"));
        assert!(secret(r#"{"vault": "x"}"#).unwrap_err().contains("vault"));
        assert!(secret(r#"{}"#).unwrap_err().contains("env"));
        assert!(secret(r#""""#).unwrap_err().contains("empty"));
        assert!(secret("3").is_err());
        // Inside a section, as a backend config holds it.
        #[derive(Deserialize)]
        struct C {
            key: SecretSource,
        }
        let c: C = serde_json::from_value(serde_json::json!({"key": {"env": "K"}})).unwrap();
        assert_eq!(c.key, SecretSource::Env("K".into()));
    }

    #[test]
    fn secrets_are_read_from_files_and_variables_and_never_shown() {
        let dir = std::env::temp_dir().join(format!("herald-secret-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("k.pem"), "file-secret-value").unwrap();
        let file = SecretSource::from("k.pem");
        assert_eq!(file.read(&dir).unwrap(), b"file-secret-value");
        assert_eq!(file.file_path(&dir), Some(dir.join("k.pem")));
        let missing = SecretSource::from("nope.pem").read(&dir).unwrap_err().to_string();
        assert!(missing.contains("nope.pem"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();

        let name = "HERALD_TEST_SECRET_SOURCE_31337";
        // Edition 2021: setting a variable no other test reads is sound.
        std::env::set_var(name, "env-secret-value");
        let env = SecretSource::Env(name.into());
        assert_eq!(env.read(&dir).unwrap(), b"env-secret-value");
        assert_eq!(env.file_path(&dir), None);
        let shown = format!("{env} {env:?}");
        assert!(shown.contains(name) && !shown.contains("env-secret-value"), "{shown}");
        std::env::remove_var(name);
        let unset = env.read(&dir).unwrap_err().to_string();
        assert!(unset.contains(name) && unset.contains("not set"), "{unset}");
    }
}
