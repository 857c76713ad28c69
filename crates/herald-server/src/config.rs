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
    /// `HERALD_*` environment variables that name no configuration key and were ignored; logged
    /// (names only) at DEBUG once logging is set up.
    #[serde(skip)]
    pub ignored_env: Vec<String>,
}

/// `[server]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
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
    /// Most client connections open at once; unset = derived from the file-descriptor limit
    /// (see [`crate::connections::default_max_connections`]).
    pub max_connections: Option<usize>,
    /// Where to serve `GET /metrics` instead of `listen`; unset = on `listen`. When set, the
    /// notify port answers `/metrics` with 404, so the metrics need not be exposed with it.
    pub metrics_listen: Option<SocketAddr>,
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
            max_connections: None,
            metrics_listen: None,
        }
    }
}

/// `[store]`. Its `Debug` shows the URL without its password.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Store URL; default `sqlite://<data_dir>/herald.db`; `postgres://…` for a store shared by
    /// several instances (feature `postgres`).
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
    /// How long a pushkey an upstream called dead is answered `rejected` without an upstream
    /// call (shared by every instance on the store); 0 turns the cache off.
    #[serde(with = "duration")]
    pub dead_token_ttl: Duration,
    /// How long a claim on a delivery holds before another instance may take it over; unset:
    /// `server.request_deadline` + 10 s. Must outlast the longest delivery.
    #[serde(deserialize_with = "optional_duration")]
    pub claim_lease: Option<Duration>,
    /// PostgreSQL: most connections of the pool.
    pub max_connections: u32,
    /// PostgreSQL: how long opening a connection (or waiting for a free one) may take.
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// PostgreSQL: the longest a statement may run (`statement_timeout`; the client waits a
    /// second more before it gives up on the connection).
    #[serde(with = "duration")]
    pub statement_timeout: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: None,
            ttl: Duration::from_secs(24 * 3600),
            prune_interval: Duration::from_secs(600),
            max_batch: 512,
            recent_cache_entries: 4096,
            dead_token_ttl: Duration::from_secs(3600),
            claim_lease: None,
            max_connections: 10,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(5),
        }
    }
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("url", &self.url.as_deref().map(crate::store::redact_url))
            .field("ttl", &self.ttl)
            .field("prune_interval", &self.prune_interval)
            .field("max_batch", &self.max_batch)
            .field("recent_cache_entries", &self.recent_cache_entries)
            .field("dead_token_ttl", &self.dead_token_ttl)
            .field("claim_lease", &self.claim_lease)
            .field("max_connections", &self.max_connections)
            .field("connect_timeout", &self.connect_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .finish()
    }
}

/// Margin of the default claim lease over `server.request_deadline`: the record after a delivery
/// (retried while the store is briefly away) must land before another instance may take over.
pub const CLAIM_LEASE_MARGIN: Duration = Duration::from_secs(10);

/// A duration that may be absent.
fn optional_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration::deserialize(d).map(Some)
}

/// `[delivery]`: the one layer every backend is called through.
#[derive(Debug, Clone, PartialEq, Deserialize)]
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
    /// Device deliveries in progress at once, across all requests; a device waits (within its
    /// request's deadline) for room. Bounds the memory a burst of big requests can take.
    pub max_in_flight_devices: usize,
    /// Device deliveries in progress at once within one request; the others are not started yet.
    pub max_in_flight_devices_per_request: usize,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            max_concurrency_per_app: 512,
            max_in_flight_devices: 4096,
            max_in_flight_devices_per_request: 64,
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `human` or `json`.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `herald_server=debug,info`. `RUST_LOG` wins if set.
    pub level: String,
    /// One INFO line per notify request (status, device and outcome counts, duration, event id).
    pub access: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: LogFormat::Human, level: "info".into(), access: true }
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

/// A configuration that cannot be used; every message names the file, the key or the variable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The configuration file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// An error in the file named by `path`.
    #[error("{}: {source}", path.display())]
    InFile {
        /// The configuration file.
        path: PathBuf,
        /// What is wrong in it.
        #[source]
        source: Box<ConfigError>,
    },
    /// Not TOML.
    #[error("{0}")]
    Syntax(#[source] toml::de::Error),
    /// A key has a value of the wrong type or form.
    #[error("`{key}`: {source}")]
    Key {
        /// The key's path (`server.listen`).
        key: String,
        /// The parser's complaint.
        #[source]
        source: toml::de::Error,
    },
    /// A value that parses but cannot work; the message names the key.
    #[error("{0}")]
    Invalid(String),
}

impl ConfigError {
    /// A value that cannot work; `message` names the key.
    pub fn invalid(message: impl Into<String>) -> Self {
        ConfigError::Invalid(message.into())
    }
}

const ENV_PREFIX: &str = "HERALD_";
/// Variables with the prefix that are not config overrides.
const ENV_RESERVED: &[&str] = &["HERALD_CONFIG"];

impl Config {
    /// Reads `path`, applies `HERALD_*` overrides from the process environment and validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        // Absolute, so that a path resolved against it stays the same however often it is
        // resolved again (a relative base joined twice would nest: `configs/configs/…`).
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let dir = std::path::absolute(&dir).unwrap_or(dir);
        Self::from_toml(&text, std::env::vars(), dir)
            .map_err(|e| ConfigError::InFile { path: path.to_path_buf(), source: Box::new(e) })
    }

    /// Parses configuration text with the given environment (tests pass their own).
    pub fn from_toml(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
        config_dir: PathBuf,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table = toml::from_str(text).map_err(ConfigError::Syntax)?;
        let ignored_env = apply_env_overrides(&mut table, env)?;
        let mut config: Config = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| {
                let path = e.path().to_string();
                if path == "." {
                    ConfigError::Syntax(e.into_inner())
                } else {
                    ConfigError::Key { key: path, source: e.into_inner() }
                }
            })?;
        config.config_dir = config_dir;
        config.ignored_env = ignored_env;
        config.validate()?;
        Ok(config)
    }

    /// Logs (DEBUG) the `HERALD_*` variables that configure nothing; names only, as values may
    /// be secrets. Call once logging is set up.
    pub fn log_ignored_env(&self) {
        for name in &self.ignored_env {
            tracing::debug!(variable = %name, "ignoring environment variable: no such configuration key");
        }
    }

    /// The claim lease in force: `store.claim_lease`, or `server.request_deadline` + 10 s.
    pub fn claim_lease(&self) -> Duration {
        self.store.claim_lease.unwrap_or(self.server.request_deadline + CLAIM_LEASE_MARGIN)
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
            return Err(ConfigError::invalid(
                "`server.request_deadline` must be between 1ms and 55s: homeservers give up after 60s",
            ));
        }
        self.validate_bounds()?;
        if s.body_limit < 1024 {
            return Err(ConfigError::invalid("`server.body_limit` must be at least 1024 bytes"));
        }
        if self.delivery.max_attempts == 0 {
            return Err(ConfigError::invalid("`delivery.max_attempts` must be at least 1"));
        }
        if self.delivery.max_concurrency_per_app == 0 {
            return Err(ConfigError::invalid(
                "`delivery.max_concurrency_per_app` must be at least 1",
            ));
        }
        if self.delivery.max_in_flight_devices == 0 {
            return Err(ConfigError::invalid(
                "`delivery.max_in_flight_devices` must be at least 1",
            ));
        }
        if self.delivery.max_in_flight_devices_per_request == 0 {
            return Err(ConfigError::invalid(
                "`delivery.max_in_flight_devices_per_request` must be at least 1",
            ));
        }
        if self.server.max_connections == Some(0) {
            return Err(ConfigError::invalid("`server.max_connections` must be at least 1"));
        }
        if self.store.ttl < Duration::from_secs(60) {
            return Err(ConfigError::invalid("`store.ttl` must be at least 1m"));
        }
        if self.store.max_batch == 0 || self.store.max_batch > 4096 {
            return Err(ConfigError::invalid("`store.max_batch` must be between 1 and 4096"));
        }
        if self.apps.is_empty() {
            return Err(ConfigError::invalid(
                "no apps configured: add an `[apps.\"<app_id>\"]` table",
            ));
        }
        for (app_id, table) in &self.apps {
            match table.get("kind") {
                Some(toml::Value::String(_)) => {}
                Some(_) => {
                    return Err(ConfigError::invalid(format!(
                        "`apps.\"{app_id}\".kind` must be a string"
                    )))
                }
                None => {
                    return Err(ConfigError::invalid(format!(
                        "`apps.\"{app_id}\"`: missing `kind` (e.g. \"log\" or \"webpush\")"
                    )))
                }
            }
            match table.get("max_concurrency") {
                None => {}
                Some(toml::Value::Integer(n)) if *n > 0 => {}
                Some(_) => {
                    return Err(ConfigError::invalid(format!(
                        "`apps.\"{app_id}\".max_concurrency` must be a positive integer"
                    )))
                }
            }
        }
        Ok(())
    }
}

/// Upper bounds of the numeric keys: values past them are mistakes (or would exhaust memory or
/// overflow a clock) rather than tuning. Documented in docs/configuration.md.
pub mod limits {
    use std::time::Duration;

    /// `server.body_limit`: bodies are held in memory whole.
    pub const MAX_BODY_LIMIT: usize = 16 << 20;
    /// `server.header_read_timeout`, `server.body_read_timeout`.
    pub const MAX_READ_TIMEOUT: Duration = Duration::from_secs(600);
    /// `server.shutdown_grace`.
    pub const MAX_SHUTDOWN_GRACE: Duration = Duration::from_secs(3600);
    /// `server.max_connections`: Linux's default ceiling on open files per process (`nr_open`).
    pub const MAX_CONNECTIONS: usize = 1 << 20;
    /// `store.ttl`.
    pub const MAX_TTL: Duration = Duration::from_secs(365 * 86_400);
    /// `store.prune_interval`.
    pub const MIN_PRUNE_INTERVAL: Duration = Duration::from_millis(100);
    /// `store.prune_interval`.
    pub const MAX_PRUNE_INTERVAL: Duration = Duration::from_secs(7 * 86_400);
    /// `store.claim_lease`: at least this much longer than `server.request_deadline`.
    pub const MIN_LEASE_MARGIN: Duration = Duration::from_secs(1);
    /// `store.claim_lease`.
    pub const MAX_CLAIM_LEASE: Duration = Duration::from_secs(3600);
    /// `store.max_connections`.
    pub const MAX_STORE_CONNECTIONS: usize = 1000;
    /// `store.connect_timeout`, `store.statement_timeout`.
    pub const MAX_STORE_TIMEOUT: Duration = Duration::from_secs(300);
    /// `store.recent_cache_entries`: about 60 bytes each, allocated at start, so about 600 MB.
    pub const MAX_RECENT_CACHE_ENTRIES: usize = 10_000_000;
    /// `delivery.max_attempts`.
    pub const MAX_ATTEMPTS: u32 = 100;
    /// `delivery.initial_backoff`, `delivery.max_backoff`: longer than any request deadline.
    pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
    /// Concurrency caps and in-flight budgets (`delivery.max_concurrency_per_app`, an app's
    /// `max_concurrency`, `delivery.max_in_flight_devices[_per_request]`).
    pub const MAX_CONCURRENCY: usize = 1_000_000;
}

/// The levels a `log.level` directive may name.
const LOG_LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];

/// Checks a `log.level` filter: comma-separated directives, each a level (`info`) or
/// `target=level` (`herald_server=debug`). A bare word is refused although tracing would read it
/// as "everything from target <word>": `level = "verbose"` must not silently mean something else.
fn check_log_level(filter: &str) -> Result<(), String> {
    if filter.trim().is_empty() {
        return Err("must not be empty (e.g. \"info\")".into());
    }
    for directive in filter.split(',').map(str::trim) {
        let level = match directive.rsplit_once('=') {
            Some((target, level)) if !target.trim().is_empty() => level,
            _ => directive,
        };
        if !LOG_LEVELS.contains(&level.trim().to_ascii_lowercase().as_str()) {
            return Err(format!(
                "`{directive}` is not a level ({}) or `target=level`",
                LOG_LEVELS.join(", ")
            ));
        }
    }
    tracing_subscriber::EnvFilter::builder().parse(filter).map(drop).map_err(|e| e.to_string())
}

impl Config {
    /// Zero, nonsensical and unallocatable values, each refused naming its key.
    fn validate_bounds(&self) -> Result<(), ConfigError> {
        use limits::*;
        fn fail(key: &str, why: impl std::fmt::Display) -> Result<(), ConfigError> {
            Err(ConfigError::invalid(format!("`{key}` {why}")))
        }
        fn range<T: PartialOrd + Copy>(
            key: &str,
            value: T,
            min: T,
            max: T,
            show: impl Fn(&T) -> String,
        ) -> Result<(), ConfigError> {
            if value < min || value > max {
                return fail(key, format!("must be between {} and {}", show(&min), show(&max)));
            }
            Ok(())
        }
        let d = |d: &Duration| herald_core::config::format_duration(*d);
        let n = |n: &usize| n.to_string();
        let ms = Duration::from_millis(1);
        let (s, st, dl) = (&self.server, &self.store, &self.delivery);
        range("server.body_limit", s.body_limit, 1024, MAX_BODY_LIMIT, n)?;
        range("server.header_read_timeout", s.header_read_timeout, ms, MAX_READ_TIMEOUT, d)?;
        range("server.body_read_timeout", s.body_read_timeout, ms, MAX_READ_TIMEOUT, d)?;
        if s.shutdown_grace < s.request_deadline {
            return fail(
                "server.shutdown_grace",
                format!(
                    "({}) must be at least `server.request_deadline` ({}): deliveries in flight \
                     at shutdown need that long to finish and be recorded",
                    d(&s.shutdown_grace),
                    d(&s.request_deadline)
                ),
            );
        }
        range("server.shutdown_grace", s.shutdown_grace, ms, MAX_SHUTDOWN_GRACE, d)?;
        if let Some(max) = s.max_connections {
            range("server.max_connections", max, 1, MAX_CONNECTIONS, n)?;
        }
        range("store.ttl", st.ttl, Duration::from_secs(60), MAX_TTL, d)?;
        range(
            "store.prune_interval",
            st.prune_interval,
            MIN_PRUNE_INTERVAL,
            MAX_PRUNE_INTERVAL,
            d,
        )?;
        range("store.max_batch", st.max_batch, 1, 4096, n)?;
        range(
            "store.recent_cache_entries",
            st.recent_cache_entries,
            0,
            MAX_RECENT_CACHE_ENTRIES,
            n,
        )?;
        if let Some(url) = &st.url {
            let shown = crate::store::redact_url(url);
            if crate::store::is_postgres_url(url) {
                if !cfg!(feature = "postgres") {
                    return fail(
                        "store.url",
                        format!(
                            "`{shown}`: this build has no PostgreSQL support (built without the \
                             `postgres` feature); use a sqlite:// URL"
                        ),
                    );
                }
            } else if !url.starts_with("sqlite:") {
                return fail(
                    "store.url",
                    format!("`{shown}` is not supported: use sqlite://PATH or postgres://…"),
                );
            }
        }
        if !st.dead_token_ttl.is_zero() {
            range("store.dead_token_ttl", st.dead_token_ttl, Duration::from_secs(1), MAX_TTL, d)?;
        }
        if let Some(lease) = st.claim_lease {
            let min = s.request_deadline + MIN_LEASE_MARGIN;
            if lease < min {
                return fail(
                    "store.claim_lease",
                    format!(
                        "({}) must be at least `server.request_deadline` ({}) + {}: a claim must \
                         outlast the longest delivery, or another instance could deliver it again",
                        d(&lease),
                        d(&s.request_deadline),
                        d(&MIN_LEASE_MARGIN)
                    ),
                );
            }
            range("store.claim_lease", lease, min, MAX_CLAIM_LEASE, d)?;
        }
        range("store.max_connections", st.max_connections as usize, 1, MAX_STORE_CONNECTIONS, n)?;
        let (lo, hi) = (Duration::from_millis(100), MAX_STORE_TIMEOUT);
        range("store.connect_timeout", st.connect_timeout, lo, hi, d)?;
        range("store.statement_timeout", st.statement_timeout, lo, hi, d)?;
        range("delivery.max_attempts", dl.max_attempts, 1, MAX_ATTEMPTS, |n| n.to_string())?;
        range("delivery.initial_backoff", dl.initial_backoff, ms, MAX_BACKOFF, d)?;
        if dl.max_backoff < dl.initial_backoff {
            return fail(
                "delivery.max_backoff",
                format!(
                    "({}) must be at least `delivery.initial_backoff` ({})",
                    d(&dl.max_backoff),
                    d(&dl.initial_backoff)
                ),
            );
        }
        range("delivery.max_backoff", dl.max_backoff, ms, MAX_BACKOFF, d)?;
        range(
            "delivery.max_concurrency_per_app",
            dl.max_concurrency_per_app,
            1,
            MAX_CONCURRENCY,
            n,
        )?;
        range("delivery.max_in_flight_devices", dl.max_in_flight_devices, 1, MAX_CONCURRENCY, n)?;
        range(
            "delivery.max_in_flight_devices_per_request",
            dl.max_in_flight_devices_per_request,
            1,
            MAX_CONCURRENCY,
            n,
        )?;
        for (app_id, table) in &self.apps {
            if let Some(toml::Value::Integer(max)) = table.get("max_concurrency") {
                let key = format!("apps.\"{app_id}\".max_concurrency");
                range(&key, *max, 1, MAX_CONCURRENCY as i64, |n| n.to_string())?;
            }
        }
        if let Err(why) = check_log_level(&self.log.level) {
            return fail("log.level", why);
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

/// `HERALD_SERVER__LISTEN=0.0.0.0:5000` sets `server.listen`; `__` separates the section from the
/// key. Values are read as TOML scalars when they parse as one (`5`, `true`), else as strings.
/// Only variables that name a known key are read: `HERALD_VERSION=1.2`, set for something else
/// entirely, must not stop the gateway. The others are returned (names only) for a DEBUG log.
fn apply_env_overrides(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<String>, ConfigError> {
    let mut ignored = Vec::new();
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else { continue };
        if ENV_RESERVED.contains(&name.as_str()) {
            continue;
        }
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        let Some((section, key)) = env_key(&path) else {
            ignored.push(name);
            continue;
        };
        let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .filter(|v| !v.is_table())
            .unwrap_or_else(|| toml::Value::String(raw.clone()));
        let node = match section {
            None => &mut *table,
            Some(section) => table
                .entry(section)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .ok_or_else(|| {
                    ConfigError::invalid(format!(
                        "{name}: `{section}` is not a table in the configuration"
                    ))
                })?,
        };
        node.insert(key.to_owned(), value);
    }
    Ok(ignored)
}

/// The configuration key an environment path names, as (section, key), if it names one: a
/// top-level scalar (`data_dir`) or a key of one of the sections. App tables are keyed by app_ids
/// with dots, which variable names cannot spell.
fn env_key(path: &[String]) -> Option<(Option<&'static str>, &'static str)> {
    let sections: [(&'static str, &'static [&'static str]); 4] = [
        ("server", field_names::<ServerConfig>()),
        ("store", field_names::<StoreConfig>()),
        ("delivery", field_names::<DeliveryConfig>()),
        ("log", field_names::<LogConfig>()),
    ];
    match path {
        [key] => field_names::<Config>()
            .iter()
            .find(|k| **k == key && **k != "apps" && sections.iter().all(|(s, _)| s != *k))
            .map(|k| (None, *k)),
        [section, key] => sections
            .iter()
            .find(|(s, _)| s == section)
            .and_then(|(s, keys)| keys.iter().find(|k| **k == key).map(|k| (Some(*s), *k))),
        _ => None,
    }
}

/// The keys serde accepts for `T`: the field list its derived `Deserialize` hands to
/// `deserialize_struct`, so the environment never needs a hand-kept copy of the key names.
fn field_names<T: serde::de::DeserializeOwned>() -> &'static [&'static str] {
    use serde::de::{self, Visitor};

    struct FieldNames<'a>(&'a mut &'static [&'static str]);

    impl<'de> de::Deserializer<'de> for FieldNames<'_> {
        type Error = de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("only the field names were wanted"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }

    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(FieldNames(&mut fields));
    fields
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
        assert!(e.to_string().contains("server.listen"), "{e}");
        let e = load(&format!("{MINIMAL}\n[server]\nlisen = \"x\""), &[]).unwrap_err();
        assert!(e.to_string().contains("lisen"), "{e}");
        let e = load(&format!("{MINIMAL}\n[store]\nttl = \"5 parsecs\""), &[]).unwrap_err();
        assert!(e.to_string().contains("store.ttl"), "{e}");
        let e = load("[apps.a]\nmax_concurrency = 3", &[]).unwrap_err();
        assert!(e.to_string().contains("kind"), "{e}");
        let e = load("", &[]).unwrap_err();
        assert!(e.to_string().contains("apps"), "{e}");
        let e = load(MINIMAL, &[("HERALD_SERVER__REQUEST_DEADLINE", "90s")]).unwrap_err();
        assert!(e.to_string().contains("request_deadline"), "{e}");
    }

    #[test]
    fn resource_bounds() {
        let c = load(MINIMAL, &[]).unwrap();
        assert_eq!(c.server.max_connections, None, "derived from the file limit at start");
        assert_eq!(c.delivery.max_in_flight_devices, 4096);
        assert_eq!(c.delivery.max_in_flight_devices_per_request, 64);
        for (key, env) in [
            ("server.max_connections", "HERALD_SERVER__MAX_CONNECTIONS"),
            ("delivery.max_in_flight_devices", "HERALD_DELIVERY__MAX_IN_FLIGHT_DEVICES"),
            (
                "delivery.max_in_flight_devices_per_request",
                "HERALD_DELIVERY__MAX_IN_FLIGHT_DEVICES_PER_REQUEST",
            ),
        ] {
            let e = load(MINIMAL, &[(env, "0")]).unwrap_err();
            assert!(e.to_string().contains(key), "{e}");
        }
        let c = load(MINIMAL, &[("HERALD_SERVER__MAX_CONNECTIONS", "100")]).unwrap();
        assert_eq!(c.server.max_connections, Some(100));
    }

    #[test]
    fn observability_keys() {
        let c = load(MINIMAL, &[]).unwrap();
        assert_eq!(c.server.metrics_listen, None, "metrics on the notify port by default");
        assert!(c.log.access, "the access log is on by default");
        let c = load(
            MINIMAL,
            &[("HERALD_SERVER__METRICS_LISTEN", "127.0.0.1:9100"), ("HERALD_LOG__ACCESS", "false")],
        )
        .unwrap();
        assert_eq!(c.server.metrics_listen, Some("127.0.0.1:9100".parse().unwrap()));
        assert!(!c.log.access);
        let e = load(&format!("{MINIMAL}\n[server]\nmetrics_listen = \"nope\""), &[]).unwrap_err();
        assert!(e.to_string().contains("server.metrics_listen"), "{e}");
    }

    #[test]
    fn debug_output_hides_the_store_password() {
        // Built without PostgreSQL the URL is refused, and the refusal hides the password too.
        let url = [("HERALD_STORE__URL", "postgres://herald:s3cret@db/herald")];
        let shown = match load(MINIMAL, &url) {
            Ok(c) => format!("{c:?}"),
            Err(e) => e.to_string(),
        };
        assert!(!shown.contains("s3cret") && shown.contains("herald:***@db"), "{shown}");
    }
}
