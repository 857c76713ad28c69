//! The [`Backend`] contract and the vocabulary of delivery outcomes.
//!
//! A backend does one thing: turn a notification for one device into one upstream request, and the
//! upstream's answer into an [`Outcome`] or a classed [`DeliveryError`]. Retries, deadlines,
//! concurrency caps, deduplication and metrics live once, in the server's delivery layer, so a
//! backend must not retry or sleep on its own.
//!
//! The classes map onto what the homeserver is told (see `docs/architecture.md`):
//!
//! | result | homeserver sees |
//! |---|---|
//! | [`Outcome::Delivered`] / [`Outcome::Skipped`] | 200 |
//! | [`Outcome::TokenDead`] | 200, pushkey in `rejected` |
//! | [`ErrorClass::Transient`] (after retries) | 5xx: retry later |
//! | [`ErrorClass::CredentialsRefused`] | 5xx: an operator must act, then a retry succeeds |
//! | [`ErrorClass::MessageRefused`] | 200, not rejected: retrying cannot help |
//!
//! Every answer carries the facts an operator needs ([`Upstream`]: the upstream's status and a short
//! reason code), which the delivery layer counts in `herald_upstream_responses_total`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use serde::de::DeserializeOwned;

use crate::model::{Device, Notification};
use crate::sync::lock;

/// Delivers notifications to one kind of upstream (APNs, FCM, WebPush, email, …).
///
/// One instance serves one configured app and is shared by all requests, so it keeps its
/// connection pool and cached credentials inside.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Delivers `notification` to `device`, making at most one upstream attempt, within
    /// [`CallContext::time_left`].
    async fn deliver(
        &self,
        call: &CallContext,
        notification: &Notification,
        device: &Device,
    ) -> Result<Outcome, DeliveryError>;

    /// Prepares for traffic after start-up (opens an HTTP/2 connection, fetches an OAuth token,
    /// greets the SMTP server). Called once, in the background; a failure is logged and is never
    /// fatal: start-up needs no network.
    async fn warm_up(&self) -> Result<(), DeliveryError> {
        Ok(())
    }

    /// Releases upstream resources (HTTP/2 GOAWAY, SMTP QUIT). Called once on shutdown, after
    /// in-flight deliveries have drained.
    async fn close(&self) {}
}

/// What a backend is told about one delivery attempt.
#[derive(Debug, Clone)]
pub struct CallContext {
    deadline: Instant,
    attempt: u32,
    message_id: MessageId,
}

impl CallContext {
    /// A context for attempt `attempt` (1-based) of the message `message_id`, due by `deadline`.
    pub fn new(deadline: Instant, attempt: u32, message_id: MessageId) -> Self {
        CallContext { deadline, attempt, message_id }
    }

    /// When the homeserver's request must be answered.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Time left to the deadline.
    pub fn time_left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// The timeout for this attempt's upstream call: the backend's own `configured` timeout, but
    /// never past the deadline.
    pub fn timeout(&self, configured: Duration) -> Duration {
        configured.min(self.time_left())
    }

    /// 1 for the first attempt, 2 for the first retry, …
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The message's stable identity: the same on every retry of this (event, app, pushkey).
    pub fn message_id(&self) -> MessageId {
        self.message_id
    }
}

/// A stable 128-bit identity of one message to one device, usable as an upstream idempotency key
/// (APNs `apns-id`, an email `Message-ID`). Derived from (event_id, app, pushkey); badge-only
/// updates, which have no event, get a random one per request.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageId([u8; 16]);

impl MessageId {
    /// From 16 bytes (a hash of the message's identity).
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        MessageId(bytes)
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// As an RFC 9562 UUID (version 8, "custom"): `xxxxxxxx-xxxx-8xxx-yxxx-xxxxxxxxxxxx`.
    pub fn to_uuid(&self) -> String {
        let mut b = self.0;
        b[6] = (b[6] & 0x0f) | 0x80;
        b[8] = (b[8] & 0x3f) | 0x80;
        let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
        format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_uuid())
    }
}

/// What the upstream said, as facts for operators: a status and a short reason code.
///
/// `status` is the protocol's code (HTTP 410, SMTP 550) or 0 when no answer came (connection
/// trouble). `reason` comes from a small fixed set per backend (`"Unregistered"`, `"UNREGISTERED"`,
/// `"5.1.1"`, `"timeout"`, `"other"`), never free text from the upstream: it is a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Upstream {
    /// The protocol's status code; 0 when there was no answer.
    pub status: u16,
    /// A reason code from a bounded set.
    pub reason: &'static str,
}

impl Upstream {
    /// An answer with `status` and `reason`.
    pub const fn new(status: u16, reason: &'static str) -> Self {
        Upstream { status, reason }
    }

    /// No answer came: `reason` says why (`"timeout"`, `"connect"`, `"tls"`, …).
    pub const fn no_answer(reason: &'static str) -> Self {
        Upstream { status: 0, reason }
    }
}

/// What became of a delivery that did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The upstream accepted the message.
    Delivered(Upstream),
    /// Nothing needed sending (e.g. a badge update to an `events_only` WebPush device, or a mail
    /// over its rate limit); counts as delivered. The string says why: a label from a fixed set.
    Skipped(&'static str),
    /// The device token is dead for good: the pushkey goes into `rejected` and the homeserver
    /// deletes the pusher. Only for answers that promise the token will never work again, or for
    /// pushkeys that can never be delivered (undecodable, refused by policy).
    TokenDead {
        /// What the upstream said (`status` 0 when the pushkey was refused before any request).
        upstream: Upstream,
        /// Why, for the operator's log: no pushkey, token, URL path or message content.
        detail: String,
    },
}

/// What the delivery layer should do about a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorClass {
    /// Might work if tried again (429, 5xx, connection trouble, timeouts).
    Transient,
    /// The upstream refused *our* credentials; an operator must fix the configuration.
    CredentialsRefused,
    /// The upstream refused this message (too large, malformed); retrying cannot help.
    MessageRefused,
}

impl Outcome {
    /// A dead token: `upstream` says what answered, `detail` why (for logs).
    pub fn token_dead(upstream: Upstream, detail: impl Into<String>) -> Self {
        Outcome::TokenDead { upstream, detail: detail.into() }
    }
}

impl ErrorClass {
    /// A stable label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Transient => "transient",
            ErrorClass::CredentialsRefused => "credentials_refused",
            ErrorClass::MessageRefused => "message_refused",
        }
    }
}

type Source = Arc<dyn std::error::Error + Send + Sync>;

/// A failed delivery, classed so that the delivery layer knows whether to retry.
///
/// The message is for operators' logs: it must not contain pushkeys, tokens, URL paths or message
/// content. The source error (an I/O, TLS or protocol error) is kept for the log's cause chain.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{class}: {message}", class = .class.as_str())]
#[non_exhaustive]
pub struct DeliveryError {
    class: ErrorClass,
    message: String,
    upstream: Option<Upstream>,
    retry_after: Option<Duration>,
    #[source]
    source: Option<Source>,
}

impl DeliveryError {
    /// A failure of the given class.
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        DeliveryError {
            class,
            message: message.into(),
            upstream: None,
            retry_after: None,
            source: None,
        }
    }

    /// A failure that may succeed on retry.
    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Transient, message)
    }

    /// The upstream refused our credentials.
    pub fn credentials_refused(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::CredentialsRefused, message)
    }

    /// The upstream refused the message itself.
    pub fn message_refused(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::MessageRefused, message)
    }

    /// Attaches what the upstream answered.
    pub fn with_upstream(mut self, upstream: Upstream) -> Self {
        self.upstream = Some(upstream);
        self
    }

    /// Attaches the upstream's `Retry-After`.
    pub fn with_retry_after(mut self, retry_after: Option<Duration>) -> Self {
        self.retry_after = retry_after;
        self
    }

    /// Attaches the underlying error.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// The class.
    pub fn class(&self) -> ErrorClass {
        self.class
    }

    /// What the upstream answered, when the backend knows.
    pub fn upstream(&self) -> Option<Upstream> {
        self.upstream
    }

    /// Attaches a reason code (from the backend's fixed set) without an upstream status, or
    /// replaces the reason of the attached answer.
    pub fn with_reason(mut self, reason: &'static str) -> Self {
        let status = self.upstream.map_or(0, |u| u.status);
        self.upstream = Some(Upstream { status, reason });
        self
    }

    /// The reason code, if the backend gave one.
    pub fn reason(&self) -> Option<&'static str> {
        self.upstream.map(|u| u.reason)
    }

    /// The upstream's requested wait before a retry, if it gave one.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The description, without the class.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// What a backend is told about the app it is built for.
#[derive(Clone)]
pub struct AppContext {
    /// The app's key in the configuration (an app_id or a glob).
    pub app_id: String,
    /// The server's data directory (state a backend keeps, e.g. a generated key).
    pub data_dir: PathBuf,
    /// The directory of the configuration file, for resolving relative paths (keys, certs).
    pub config_dir: PathBuf,
    /// True when the app is built only to check the configuration (`herald check-config`): the
    /// backend must validate everything but change nothing (create no files, open no
    /// connections).
    pub check_only: bool,
    /// Where the backend registers its own metrics.
    pub metrics: BackendMetrics,
}

impl AppContext {
    /// A context for tests and tools: metrics go to a registry of their own.
    pub fn new(app_id: impl Into<String>, dir: &Path) -> Self {
        let app_id = app_id.into();
        AppContext {
            metrics: BackendMetrics::new(Arc::default(), &app_id),
            app_id,
            data_dir: dir.to_path_buf(),
            config_dir: dir.to_path_buf(),
            check_only: false,
        }
    }

    /// Resolves a path from a backend config against the configuration file's directory.
    pub fn resolve_path(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.config_dir.join(path)
        }
    }
}

impl fmt::Debug for AppContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppContext")
            .field("app_id", &self.app_id)
            .field("check_only", &self.check_only)
            .finish_non_exhaustive()
    }
}

/// A backend's door into the server's metrics registry: metrics registered here appear on
/// `/metrics` as `herald_<backend>_<name>{app="<key>"}` (e.g. the APNs certificate expiry).
#[derive(Clone)]
pub struct BackendMetrics {
    registry: Arc<Mutex<prometheus_client::registry::Registry>>,
    app: String,
}

impl BackendMetrics {
    /// Metrics of app `app`, registered in `registry`.
    pub fn new(registry: Arc<Mutex<prometheus_client::registry::Registry>>, app: &str) -> Self {
        BackendMetrics { registry, app: app.to_owned() }
    }

    /// Registers `metric` as `herald_<name>` with the label `app`. `name` should start with the
    /// backend kind (`apns_certificate_expiry_seconds`).
    pub fn register(
        &self,
        name: &str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        let mut registry = lock(&self.registry);
        registry
            .sub_registry_with_label(("app".into(), self.app.clone().into()))
            .register(name, help, metric);
    }
}

/// Why a backend cannot be built from its configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A configuration value is wrong; `key` names it.
    #[error("`{key}`: {message}")]
    Invalid {
        /// The key, relative to the app's table.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A file the configuration names cannot be read or used.
    #[error("`{key}`: cannot use {path}: {source}")]
    File {
        /// The key naming the file.
        key: String,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Credentials (a key, a certificate, a service account) do not parse or are unusable.
    #[error("`{key}`: {message}")]
    Credentials {
        /// The key naming the credentials.
        key: String,
        /// What is wrong, never the secret itself.
        message: String,
        /// The parser's error.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// Anything else, as a message naming the key.
    #[error("{0}")]
    Other(String),
}

impl BuildError {
    /// A build error with a message that names the offending key.
    pub fn new(message: impl fmt::Display) -> Self {
        BuildError::Other(message.to_string())
    }

    /// `key` has a wrong value.
    pub fn invalid(key: impl Into<String>, message: impl fmt::Display) -> Self {
        BuildError::Invalid { key: key.into(), message: message.to_string() }
    }
}

/// Builds a backend from its typed configuration section.
///
/// Each backend crate implements this once; `herald-server` registers the factories that are
/// compiled in (one Cargo feature per backend crate). Building loads and validates every
/// credential, so `herald check-config` catches them, but needs no network (see
/// [`Backend::warm_up`]).
#[async_trait]
pub trait BackendFactory: Send + Sync + 'static {
    /// The `kind` value that selects this backend in an app's configuration.
    const KIND: &'static str;
    /// The backend's configuration section (everything in the app table except the keys the
    /// server owns). Should use `#[serde(deny_unknown_fields)]`.
    type Config: DeserializeOwned + Send;

    /// Builds the backend for one app.
    async fn build(app: &AppContext, config: Self::Config) -> Result<Arc<dyn Backend>, BuildError>;
}

/// The longest `Retry-After` Herald takes from an upstream. Longer values (a push service can send
/// `18446744073709551615`) are cut to this; the delivery layer then compares the wait with the time
/// left to the request's deadline.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Parses an HTTP `Retry-After` value: delta-seconds or an HTTP-date (relative to `now`), at most
/// [`MAX_RETRY_AFTER`].
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = if value.bytes().all(|b| b.is_ascii_digit()) && !value.is_empty() {
        // Any run of digits is a number of seconds, however long.
        value.parse::<u64>().map_or(MAX_RETRY_AFTER, Duration::from_secs)
    } else {
        let at = httpdate::parse_http_date(value).ok()?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(parse_retry_after(&later, now), Some(Duration::from_secs(30)));
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("18446744073709551615", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("99999999999999999999999999", now), Some(MAX_RETRY_AFTER));
        let far = httpdate::fmt_http_date(now + Duration::from_secs(10 * 365 * 86400));
        assert_eq!(parse_retry_after(&far, now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("-5", now), None);
    }

    #[test]
    fn error_display_names_class() {
        let e = DeliveryError::transient("503 from upstream")
            .with_retry_after(Some(Duration::from_secs(2)));
        assert_eq!(e.to_string(), "transient: 503 from upstream");
        assert_eq!(e.retry_after(), Some(Duration::from_secs(2)));
    }
}
