//! The [`Backend`] trait and the vocabulary of delivery outcomes.
//!
//! A backend does one thing: turn a notification for one device into an upstream request, and the
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

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::de::DeserializeOwned;

use crate::model::{Device, Notification};

/// Delivers notifications to one kind of upstream (APNs, FCM, WebPush, email, …).
///
/// One instance serves one configured app and is shared by all requests, so it keeps its
/// connection pool and cached credentials inside.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Delivers `notification` to `device`, making at most one upstream attempt.
    async fn deliver(
        &self,
        notification: &Notification,
        device: &Device,
    ) -> Result<Outcome, DeliveryError>;
}

/// What became of a delivery that did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream accepted the message.
    Delivered,
    /// Nothing needed sending (e.g. a badge update to an `events_only` WebPush device); counts as
    /// delivered. The string says why, for logs.
    Skipped(&'static str),
    /// The device token is dead for good: the pushkey goes into `rejected` and the homeserver
    /// deletes the pusher. Only for answers that promise the token will never work again.
    TokenDead(String),
}

/// What the delivery layer should do about a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// Might work if tried again (429, 5xx, connection trouble, timeouts).
    Transient,
    /// The upstream refused *our* credentials; an operator must fix the configuration.
    CredentialsRefused,
    /// The upstream refused this message (too large, malformed); retrying cannot help.
    MessageRefused,
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

/// A failed delivery, classed so that the delivery layer knows whether to retry.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{class}: {message}", class = .class.as_str())]
pub struct DeliveryError {
    class: ErrorClass,
    message: String,
    retry_after: Option<Duration>,
    reason: Option<&'static str>,
}

impl DeliveryError {
    /// A failure of the given class.
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        DeliveryError { class, message: message.into(), retry_after: None, reason: None }
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

    /// Attaches the upstream's `Retry-After`.
    pub fn with_retry_after(mut self, retry_after: Option<Duration>) -> Self {
        self.retry_after = retry_after;
        self
    }

    /// Attaches a short, stable reason code for metrics (e.g. `vapid_mismatch`): one of a small
    /// fixed set per backend, never text from the upstream.
    pub fn with_reason(mut self, reason: &'static str) -> Self {
        self.reason = Some(reason);
        self
    }

    /// The reason code, if the backend gave one.
    pub fn reason(&self) -> Option<&'static str> {
        self.reason
    }

    /// The class.
    pub fn class(&self) -> ErrorClass {
        self.class
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
#[derive(Debug, Clone)]
pub struct AppContext {
    /// The app's key in the configuration (an app_id or a glob).
    pub app_id: String,
    /// The server's data directory; relative paths in backend configs resolve against the
    /// configuration file's directory, not this.
    pub data_dir: PathBuf,
    /// The directory of the configuration file, for resolving relative paths (keys, certs).
    pub config_dir: PathBuf,
    /// True when the app is built only to check the configuration (`herald check-config`): the
    /// backend must validate everything but change nothing (create no key files, open no
    /// connections).
    pub check_only: bool,
}

impl AppContext {
    /// Resolves a path from a backend config against the configuration file's directory.
    pub fn resolve_path(&self, path: &std::path::Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.config_dir.join(path)
        }
    }
}

/// A backend that cannot be built from its configuration.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BuildError(pub String);

impl BuildError {
    /// A build error with a message that names the offending key.
    pub fn new(message: impl fmt::Display) -> Self {
        BuildError(message.to_string())
    }
}

/// Builds a backend from its typed configuration section.
///
/// Each backend crate implements this once; `herald-server` registers the factories that are
/// compiled in (one Cargo feature per backend crate).
pub trait BackendFactory: Send + Sync + 'static {
    /// The `kind` value that selects this backend in an app's configuration.
    const KIND: &'static str;
    /// The backend's configuration section (everything in the app table except the keys the
    /// server owns). Should use `#[serde(deny_unknown_fields)]`.
    type Config: DeserializeOwned;

    /// Builds the backend for one app.
    fn build(app: &AppContext, config: Self::Config) -> Result<Arc<dyn Backend>, BuildError>;
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
