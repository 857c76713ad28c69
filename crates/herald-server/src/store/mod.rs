//! The dedup store: which (event_id, app_id, pushkey) triples were already delivered, which are
//! being delivered right now (claims with a lease), and which pushkeys an upstream called dead.
//!
//! The [`DedupStore`] trait is what dispatch talks to; [`sqlite::SqliteStore`] is the embedded
//! default (one instance per file: its claims are the in-process ones); `postgres::PostgresStore`
//! (feature `postgres`) is shared by several instances and keeps claims in the database;
//! [`recent::RecentCache`] answers dedup hits for recent deliveries from memory in front of any
//! store. Concurrent identical requests inside one process are coalesced by [`crate::claims`]
//! before they reach the store, whatever the engine.

#[cfg(feature = "postgres")]
pub mod postgres;
pub mod recent;
pub mod sqlite;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle};

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

/// The identity of a device token for the dead-token cache: a 128-bit hash of (app_id, pushkey).
///
/// Unkeyed (unlike the log hash, [`herald_core::redact::PushkeyHash`]) because every instance
/// sharing a store must compute the same value; domain-separated from [`DedupKey`] so the two
/// never collide. The pushkey itself is never stored.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenKey([u8; 16]);

impl TokenKey {
    /// Hashes (app_id, pushkey), length-prefixed, under a fixed domain tag.
    pub fn new(app_id: &str, pushkey: &str) -> Self {
        let mut h = Sha256::new();
        h.update(b"herald dead token v1");
        for part in [app_id, pushkey] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        let digest = h.finalize();
        let mut key = [0u8; 16];
        key.copy_from_slice(&digest[..16]);
        TokenKey(key)
    }

    /// The raw bytes, as stored.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &self.0[..4] {
            write!(f, "{b:02x}")?;
        }
        f.write_str("…")
    }
}

/// Proof of a claim: what [`DedupStore::release`] needs to give exactly this claim back (a claim
/// that expired and was taken over by another instance is not released by its old owner).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    /// The claimed key.
    pub key: DedupKey,
    /// A random id of this claim (0 for stores whose claims live in this process only).
    pub owner: i64,
}

/// What a claim found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimState {
    /// The caller owns the key until its lease ends: deliver, then
    /// [`DedupStore::record_delivered`] or [`DedupStore::release`].
    Claimed(Ticket),
    /// Already delivered within the TTL.
    Delivered,
    /// Another instance holds a claim on the key; ask again later, no later than `remaining`
    /// (when its lease ends).
    Held {
        /// Time left on the other instance's lease, as the database's clock sees it.
        remaining: Duration,
    },
    /// The device's token was recently called dead by an upstream: answer `rejected`.
    DeadToken,
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

/// Remembers delivered notifications for a TTL, coordinates deliveries in flight with claims, and
/// remembers dead tokens.
///
/// The protocol dispatch follows for one key: [`claim`](DedupStore::claim); on
/// [`ClaimState::Claimed`] deliver, then [`record_delivered`](DedupStore::record_delivered) on
/// success or [`release`](DedupStore::release) on failure; on [`ClaimState::Held`] wait and claim
/// again. The defaults suit a store used by one process only (its claims are the in-process ones
/// of [`crate::claims`]): a claim is a lookup, a release does nothing, and no token is ever dead.
#[async_trait]
pub trait DedupStore: Send + Sync + 'static {
    /// True when `key` was recorded within the TTL.
    async fn was_delivered(&self, key: &DedupKey) -> Result<bool, StoreError>;
    /// Records a successful delivery (ending the claim on it, if any); returns once it is
    /// committed.
    async fn record_delivered(&self, key: DedupKey) -> Result<(), StoreError>;
    /// Claims `key` for delivery, unless it was delivered already, another instance holds it, or
    /// `token` is a known dead token.
    async fn claim(&self, key: DedupKey, token: TokenKey) -> Result<ClaimState, StoreError> {
        let _ = token;
        Ok(if self.was_delivered(&key).await? {
            ClaimState::Delivered
        } else {
            ClaimState::Claimed(Ticket { key, owner: 0 })
        })
    }
    /// Gives a claim back after a failed delivery, so that a retry anywhere may claim it at once.
    async fn release(&self, ticket: Ticket) -> Result<(), StoreError> {
        let _ = ticket;
        Ok(())
    }
    /// True when an upstream called `token` dead within `store.dead_token_ttl`.
    async fn is_dead_token(&self, token: &TokenKey) -> Result<bool, StoreError> {
        let _ = token;
        Ok(false)
    }
    /// Remembers that an upstream called `token` dead (for `store.dead_token_ttl`; nothing when
    /// that is 0).
    async fn record_dead_token(&self, token: TokenKey) -> Result<(), StoreError> {
        let _ = token;
        Ok(())
    }
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

/// How long closing a store's pool may wait for connections still checked out.
const CLOSE_POOL: Duration = Duration::from_secs(5);

/// Closes `pool`, waiting at most [`CLOSE_POOL`] for connections still checked out: a connection
/// sqlx never gets back (a query cancelled at the wrong moment) must not hang shutdown.
pub(crate) async fn close_pool<DB: sqlx::Database>(pool: &sqlx::Pool<DB>) {
    if tokio::time::timeout(CLOSE_POOL, pool.close()).await.is_err() {
        tracing::warn!(
            checked_out = pool.size().saturating_sub(u32::try_from(pool.num_idle()).unwrap_or(0)),
            "closing the dedup store: connections still in use after {CLOSE_POOL:?}; leaving them"
        );
    }
}

/// Whether the background tasks are still doing their job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Health {
    Running,
    /// [`DedupStore::close`] was called: tasks ending now is expected.
    Closing,
    /// A task stopped on its own; why.
    Failed(String),
}

/// Spawns `task` and a supervisor that reports in `health` if it ends while the store is running
/// (returns, panics or is cancelled). The supervisor's handle completes when the task has ended;
/// the abort handle cancels the task itself.
pub(crate) fn supervise(
    name: &'static str,
    task: impl Future<Output = ()> + Send + 'static,
    health: watch::Sender<Health>,
) -> (JoinHandle<()>, AbortHandle) {
    let task = tokio::spawn(task);
    let abort = task.abort_handle();
    let supervisor = tokio::spawn(async move {
        let why = task_ended(&format!("dedup store's {name}"), task.await);
        health.send_if_modified(|h| match h {
            Health::Running => {
                *h = Health::Failed(why);
                true
            }
            Health::Closing | Health::Failed(_) => false,
        });
    });
    (supervisor, abort)
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

/// Milliseconds since the Unix epoch.
pub(crate) fn unix_now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_millis() as i64
}

/// A duration in whole milliseconds, saturating.
pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// `url` with its password (userinfo or a `password=` parameter) replaced by `***`, for logs and
/// error messages: a database URL may carry the password and must never be printed with it.
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_owned();
    // userinfo: scheme://user:password@host
    if let Some(scheme_end) = out.find("://") {
        let rest_start = scheme_end + 3;
        let authority_end =
            out[rest_start..].find(['/', '?', '#']).map_or(out.len(), |i| rest_start + i);
        if let Some(at) = out[rest_start..authority_end].rfind('@') {
            let userinfo = &out[rest_start..rest_start + at];
            if let Some(colon) = userinfo.find(':') {
                let start = rest_start + colon + 1;
                out.replace_range(start..rest_start + at, "***");
            }
        }
    }
    // query parameters: ?password=…&…
    if let Some(q) = out.find('?') {
        let (head, query) = out.split_at(q + 1);
        let query: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        out = format!("{head}{}", query.join("&"));
    }
    out
}

/// Whether `url` names a PostgreSQL database.
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
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

    #[test]
    fn urls_are_printed_without_their_password() {
        for (url, shown) in [
            ("postgres://herald:s3cret@db:5432/herald", "postgres://herald:***@db:5432/herald"),
            (
                "postgres://herald:p%40ss@db/h?sslmode=require",
                "postgres://herald:***@db/h?sslmode=require",
            ),
            ("postgresql://db/h?user=u&password=s3cret", "postgresql://db/h?user=u&password=***"),
            ("postgres://u:a@b@db/h", "postgres://u:***@db/h"),
            ("postgres://herald@db/herald", "postgres://herald@db/herald"),
            ("sqlite://data/herald.db", "sqlite://data/herald.db"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn token_keys_differ_from_dedup_keys_and_by_app() {
        let t = TokenKey::new("app", "k");
        assert_ne!(t, TokenKey::new("app2", "k"));
        assert_ne!(t.as_bytes(), DedupKey::new("", "app", "k").as_bytes());
    }
}
