//! The `herald` configuration: a TOML file, then `HERALD_`-prefixed environment overrides, parsed
//! into typed sections and validated before anything starts.
//!
//! Unknown keys are errors everywhere (a typo must not silently fall back to a default), and every
//! message names the key. Apps are a table keyed by app_id (or a glob); the server owns the `kind`
//! and `max_concurrency` keys of an app, the rest is the backend's own typed section.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use herald_core::config::duration;
use serde::Deserialize;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where Herald keeps its state (the default SQLite store). Relative to the working directory.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// HTTP listener and request limits.
    #[serde(default)]
    pub server: ServerConfig,
    /// The dedup store.
    #[serde(default)]
    pub store: StoreConfig,
    /// Retries and caps around every backend.
    #[serde(default)]
    pub delivery: DeliveryConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// The apps, keyed by app_id or app_id glob.
    pub apps: BTreeMap<String, toml::Table>,
    /// The directory of the configuration file, for resolving relative paths in backend sections.
    #[serde(skip)]
    pub config_dir: PathBuf,
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Largest accepted request body, in bytes.
    pub body_limit: usize,
    /// Overall deadline for answering one notify request (all devices, all retries).
    #[serde(with = "duration")]
    pub request_deadline: Duration,
    /// Time a client gets to send a request's headers (slowloris guard).
    #[serde(with = "duration")]
    pub header_read_timeout: Duration,
    /// Time a client gets to send a request's body.
    #[serde(with = "duration")]
    pub body_read_timeout: Duration,
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish.
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 5000)),
            body_limit: 512 * 1024,
            request_deadline: Duration::from_secs(20),
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(25),
        }
    }
}

/// `[store]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Store URL; default `sqlite://<data_dir>/herald.db`.
    pub url: Option<String>,
    /// How long a delivery is remembered. Homeservers give up retrying an event after 24 h.
    #[serde(with = "duration")]
    pub ttl: Duration,
    /// How often expired entries are deleted.
    #[serde(with = "duration")]
    pub prune_interval: Duration,
    /// Most records written in one transaction (group commit).
    pub max_batch: usize,
    /// Recent deliveries remembered in memory, so retries are answered without a store query
    /// (about 60 bytes each; 0 turns the cache off).
    pub recent_cache_entries: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: None,
            ttl: Duration::from_secs(24 * 3600),
            prune_interval: Duration::from_secs(600),
            max_batch: 512,
            recent_cache_entries: 4096,
        }
    }
}

/// `[delivery]`: the one layer every backend is called through.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Attempts per device per request, the first included.
    pub max_attempts: u32,
    /// Backoff before the second attempt; doubles each time, with jitter.
    #[serde(with = "duration")]
    pub initial_backoff: Duration,
    /// Upper bound of one backoff.
    #[serde(with = "duration")]
    pub max_backoff: Duration,
    /// Default cap on concurrent upstream calls per app (an app may set `max_concurrency`).
    pub max_concurrency_per_app: usize,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            max_concurrency_per_app: 512,
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `human` or `json`.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `herald_server=debug,info`. `RUST_LOG` wins if set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: LogFormat::Human, level: "info".into() }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}

/// A configuration that cannot be used; the message names the key.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

const ENV_PREFIX: &str = "HERALD_";
/// Variables with the prefix that are not config overrides.
const ENV_RESERVED: &[&str] = &["HERALD_CONFIG"];

impl Config {
    /// Reads `path`, applies `HERALD_*` overrides from the process environment and validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Self::from_toml(&text, std::env::vars(), dir)
            .map_err(|e| ConfigError(format!("{}: {}", path.display(), e.0)))
    }

    /// Parses configuration text with the given environment (tests pass their own).
    pub fn from_toml(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
        config_dir: PathBuf,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| ConfigError(e.to_string()))?;
        apply_env_overrides(&mut table, env)?;
        let mut config: Config = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| {
                let path = e.path().to_string();
                if path == "." {
                    ConfigError(e.inner().to_string())
                } else {
                    ConfigError(format!("`{path}`: {}", e.inner()))
                }
            })?;
        config.config_dir = config_dir;
        config.validate()?;
        Ok(config)
    }

    /// The store URL, with the default filled in.
    pub fn store_url(&self) -> String {
        match &self.store.url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", self.data_dir.join("herald.db").display()),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        if s.request_deadline.is_zero() || s.request_deadline > Duration::from_secs(55) {
            return Err(ConfigError(
                "`server.request_deadline` must be between 1ms and 55s: homeservers give up after 60s"
                    .into(),
            ));
        }
        if s.body_limit < 1024 {
            return Err(ConfigError("`server.body_limit` must be at least 1024 bytes".into()));
        }
        if self.delivery.max_attempts == 0 {
            return Err(ConfigError("`delivery.max_attempts` must be at least 1".into()));
        }
        if self.delivery.max_concurrency_per_app == 0 {
            return Err(ConfigError(
                "`delivery.max_concurrency_per_app` must be at least 1".into(),
            ));
        }
        if self.store.ttl < Duration::from_secs(60) {
            return Err(ConfigError("`store.ttl` must be at least 1m".into()));
        }
        if self.store.max_batch == 0 || self.store.max_batch > 4096 {
            return Err(ConfigError("`store.max_batch` must be between 1 and 4096".into()));
        }
        if self.apps.is_empty() {
            return Err(ConfigError(
                "no apps configured: add an `[apps.\"<app_id>\"]` table".into(),
            ));
        }
        for (app_id, table) in &self.apps {
            match table.get("kind") {
                Some(toml::Value::String(_)) => {}
                Some(_) => {
                    return Err(ConfigError(format!("`apps.\"{app_id}\".kind` must be a string")))
                }
                None => {
                    return Err(ConfigError(format!(
                        "`apps.\"{app_id}\"`: missing `kind` (e.g. \"log\" or \"webpush\")"
                    )))
                }
            }
            match table.get("max_concurrency") {
                None => {}
                Some(toml::Value::Integer(n)) if *n > 0 => {}
                Some(_) => {
                    return Err(ConfigError(format!(
                        "`apps.\"{app_id}\".max_concurrency` must be a positive integer"
                    )))
                }
            }
        }
        Ok(())
    }
}

/// The server-owned keys of one app table, and the rest for the backend.
#[derive(Debug, Clone)]
pub struct AppSettings {
    /// The backend kind.
    pub kind: String,
    /// Concurrency cap for this app.
    pub max_concurrency: usize,
    /// The backend's own section.
    pub backend: toml::Table,
}

impl Config {
    /// Splits an app table into server-owned keys and the backend section.
    pub fn app_settings(&self, table: &toml::Table) -> AppSettings {
        let mut backend = table.clone();
        let kind = match backend.remove("kind") {
            Some(toml::Value::String(kind)) => kind,
            _ => String::new(), // validate() already refused this
        };
        let max_concurrency = match backend.remove("max_concurrency") {
            Some(toml::Value::Integer(n)) => usize::try_from(n).unwrap_or(1),
            _ => self.delivery.max_concurrency_per_app,
        };
        AppSettings { kind, max_concurrency, backend }
    }
}

/// `HERALD_SERVER__LISTEN=0.0.0.0:5000` sets `server.listen`; `__` separates levels. Values are
/// read as TOML scalars when they parse as one (`5`, `true`), else as strings.
fn apply_env_overrides(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else { continue };
        if ENV_RESERVED.contains(&name.as_str()) || rest.is_empty() {
            continue;
        }
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .filter(|v| !v.is_table())
            .unwrap_or_else(|| toml::Value::String(raw.clone()));
        let (last, parents) = path.split_last().unwrap_or((&path[0], &[]));
        let mut node = &mut *table;
        for key in parents {
            let entry =
                node.entry(key.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            node = entry.as_table_mut().ok_or_else(|| {
                ConfigError(format!("{name}: `{key}` is not a table in the configuration"))
            })?;
        }
        node.insert(last.clone(), value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [apps."com.example.app"]
        kind = "log"
    "#;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_toml(
            text,
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
            PathBuf::from("."),
        )
    }

    #[test]
    fn defaults() {
        let c = load(MINIMAL, &[]).unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:5000".parse().unwrap());
        assert_eq!(c.server.request_deadline, Duration::from_secs(20));
        assert_eq!(c.store.ttl, Duration::from_secs(86400));
        assert_eq!(c.store_url(), "sqlite://data/herald.db");
        let app = c.app_settings(&c.apps["com.example.app"]);
        assert_eq!(app.kind, "log");
        assert_eq!(app.max_concurrency, 512);
        assert!(app.backend.is_empty());
    }

    #[test]
    fn env_overrides() {
        let c = load(
            MINIMAL,
            &[
                ("HERALD_SERVER__LISTEN", "0.0.0.0:6000"),
                ("HERALD_SERVER__REQUEST_DEADLINE", "5s"),
                ("HERALD_DELIVERY__MAX_ATTEMPTS", "2"),
                ("HERALD_CONFIG", "ignored.toml"),
                ("OTHER", "x"),
            ],
        )
        .unwrap();
        assert_eq!(c.server.listen.port(), 6000);
        assert_eq!(c.server.request_deadline, Duration::from_secs(5));
        assert_eq!(c.delivery.max_attempts, 2);
    }

    #[test]
    fn errors_name_the_key() {
        let e = load(&format!("{MINIMAL}\n[server]\nlisten = \"nope\""), &[]).unwrap_err();
        assert!(e.0.contains("server.listen"), "{e}");
        let e = load(&format!("{MINIMAL}\n[server]\nlisen = \"x\""), &[]).unwrap_err();
        assert!(e.0.contains("lisen"), "{e}");
        let e = load(&format!("{MINIMAL}\n[store]\nttl = \"5 parsecs\""), &[]).unwrap_err();
        assert!(e.0.contains("store.ttl"), "{e}");
        let e = load("[apps.a]\nmax_concurrency = 3", &[]).unwrap_err();
        assert!(e.0.contains("kind"), "{e}");
        let e = load("", &[]).unwrap_err();
        assert!(e.0.contains("apps"), "{e}");
        let e = load(MINIMAL, &[("HERALD_SERVER__REQUEST_DEADLINE", "90s")]).unwrap_err();
        assert!(e.0.contains("request_deadline"), "{e}");
    }
}
