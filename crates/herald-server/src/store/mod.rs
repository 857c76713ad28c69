//! The dedup store: which (event_id, app_id, pushkey) triples were already delivered.
//!
//! The [`DedupStore`] trait is what dispatch talks to; [`sqlite::SqliteStore`] is the embedded
//! default; [`recent::RecentCache`] answers dedup hits for recent deliveries from memory in front of
//! any store. A PostgreSQL store for multi-instance deployments implements the same trait.
//! Concurrent identical requests inside one process are coordinated by [`crate::claims`], not here.

pub mod recent;
pub mod sqlite;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::sync::Arc;

use async_trait::async_trait;
use sha2::{Digest, Sha256};

/// The identity of one delivery: a 128-bit hash of (event_id, app_id, pushkey).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct DedupKey([u8; 16]);

impl DedupKey {
    /// Hashes the triple, length-prefixing each part so that no two triples share an encoding.
    pub fn new(event_id: &str, app_id: &str, pushkey: &str) -> Self {
        let mut h = Sha256::new();
        for part in [event_id, app_id, pushkey] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        let digest = h.finalize();
        let mut key = [0u8; 16];
        key.copy_from_slice(&digest[..16]);
        DedupKey(key)
    }

    /// The raw bytes, as stored.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl std::fmt::Debug for DedupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &self.0[..4] {
            write!(f, "{b:02x}")?;
        }
        f.write_str("…")
    }
}

/// The store could not answer; dispatch reports 503 so the homeserver retries.
///
/// Messages say what Herald was doing ("cannot open /var/lib/herald/herald.db") and then the
/// cause, which is also the error's `source()` for code that walks the chain: logs and the
/// operator's terminal get the whole story from `Display` alone.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database refused or failed (one error may answer a whole batch, so it is shared).
    #[error("dedup store: {context}: {source}")]
    Database {
        /// What Herald was doing.
        context: String,
        /// sqlx's error.
        #[source]
        source: Arc<sqlx::Error>,
    },
    /// A file or directory of the store could not be used.
    #[error("dedup store: {context}: {source}")]
    Io {
        /// What Herald was doing, naming the path.
        context: String,
        /// The operating system's error.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The store cannot serve for a reason of its own (closed, a task stopped, a file it cannot
    /// use).
    #[error("dedup store: {0}")]
    Unavailable(String),
}

impl StoreError {
    /// A database error, with what Herald was doing.
    pub fn database(context: impl Into<String>, source: impl Into<Arc<sqlx::Error>>) -> Self {
        StoreError::Database { context: context.into(), source: source.into() }
    }

    /// A file-system error, with what Herald was doing.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        StoreError::Io { context: context.into(), source: Arc::new(source) }
    }

    /// The store cannot serve.
    pub fn unavailable(why: impl Into<String>) -> Self {
        StoreError::Unavailable(why.into())
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::database("query failed", e)
    }
}

/// Remembers delivered notifications for a TTL.
#[async_trait]
pub trait DedupStore: Send + Sync + 'static {
    /// True when `key` was recorded within the TTL.
    async fn was_delivered(&self, key: &DedupKey) -> Result<bool, StoreError>;
    /// Records a successful delivery; returns once it is committed.
    async fn record_delivered(&self, key: DedupKey) -> Result<(), StoreError>;
    /// Deletes entries older than the TTL; returns how many.
    async fn prune_expired(&self) -> Result<u64, StoreError>;
    /// Finishes pending writes and closes.
    async fn close(&self);
    /// Resolves, with the reason, once the store can no longer work because one of its
    /// background tasks stopped (returned, panicked or was cancelled) other than through
    /// [`DedupStore::close`]; never resolves while the store is healthy. The server stops on it.
    async fn failed(&self) -> String {
        std::future::pending().await
    }
    /// Whether the store answers right now (`GET /ready`): by default, one lookup of a key no
    /// delivery has (the empty triple: requests without an event_id are never recorded), through
    /// the same path notifications take. The caller bounds it with a timeout.
    async fn ping(&self) -> Result<(), StoreError> {
        self.was_delivered(&DedupKey::new("", "", "")).await.map(drop)
    }
}

/// Why a background task ended, for the error that stops the server: every end is unexpected.
pub(crate) fn task_ended(name: &str, ended: Result<(), tokio::task::JoinError>) -> String {
    match ended {
        Ok(()) => format!("the {name} stopped unexpectedly"),
        Err(e) if e.is_panic() => {
            let payload = e.into_panic();
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".into());
            format!("the {name} panicked: {message}")
        }
        Err(_) => format!("the {name} was cancelled"),
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_say_what_was_done_and_keep_the_cause() {
        use std::error::Error;
        let e = StoreError::io("cannot open /x/herald.db", std::io::Error::other("disk on fire"));
        assert_eq!(e.to_string(), "dedup store: cannot open /x/herald.db: disk on fire");
        assert_eq!(e.source().map(ToString::to_string).as_deref(), Some("disk on fire"));
        let e = StoreError::database("committing delivery records", sqlx::Error::PoolTimedOut);
        assert!(e.source().is_some(), "{e}");
        assert!(StoreError::unavailable("store is closed").source().is_none());
    }
}
