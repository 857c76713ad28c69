//! A bounded in-memory cache of recent deliveries in front of any [`DedupStore`].
//!
//! Retries of an event come soon after the first attempt, so most dedup hits are for keys
//! recorded moments ago. Answering those from memory keeps the store out of the duplicate path.
//! The cache only ever says "delivered" for keys the store has committed (it is filled after
//! `record_delivered` succeeds) and it honours the TTL, so it never answers differently from the
//! store; a cache miss is asked of the store as before.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use herald_core::sync::lock;

use super::{unix_now, ClaimState, DedupKey, DedupStore, StoreError, Ticket, TokenKey};

/// Keys are SHA-256 prefixes already: their first eight bytes are a perfectly good hash.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(word);
        }
    }
}

struct Recent {
    recorded_at: HashMap<DedupKey, i64, BuildHasherDefault<KeyHasher>>,
    order: VecDeque<DedupKey>,
}

/// A [`DedupStore`] with a cache of the `capacity` most recent deliveries.
pub struct RecentCache<S> {
    inner: S,
    recent: Mutex<Recent>,
    capacity: usize,
    ttl_secs: i64,
}

impl<S: DedupStore> RecentCache<S> {
    /// Wraps `inner`; `capacity` 0 disables the cache.
    pub fn new(inner: S, capacity: usize, ttl: Duration) -> Self {
        RecentCache {
            inner,
            recent: Mutex::new(Recent {
                recorded_at: HashMap::with_capacity_and_hasher(capacity, Default::default()),
                order: VecDeque::with_capacity(capacity),
            }),
            capacity,
            ttl_secs: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
        }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    fn remember(&self, key: DedupKey, at: i64) {
        if self.capacity == 0 {
            return;
        }
        let mut recent = lock(&self.recent);
        if recent.recorded_at.insert(key, at).is_none() {
            recent.order.push_back(key);
            if recent.order.len() > self.capacity {
                if let Some(oldest) = recent.order.pop_front() {
                    recent.recorded_at.remove(&oldest);
                }
            }
        }
    }

    fn cached(&self, key: &DedupKey) -> bool {
        if self.capacity == 0 {
            return false;
        }
        let recent = lock(&self.recent);
        recent.recorded_at.get(key).is_some_and(|at| *at > unix_now().saturating_sub(self.ttl_secs))
    }
}

#[async_trait]
impl<S: DedupStore> DedupStore for RecentCache<S> {
    async fn was_delivered(&self, key: &DedupKey) -> Result<bool, StoreError> {
        if self.cached(key) {
            return Ok(true);
        }
        // Store hits are not cached: the store does not say how old the record is, and caching it
        // as "now" could stretch its life past the TTL.
        self.inner.was_delivered(key).await
    }

    async fn record_delivered(&self, key: DedupKey) -> Result<(), StoreError> {
        self.inner.record_delivered(key).await?;
        self.remember(key, unix_now());
        Ok(())
    }

    async fn claim(&self, key: DedupKey, token: TokenKey) -> Result<ClaimState, StoreError> {
        // Only recorded keys are cached, and a record is final within the TTL: answering from
        // memory is exact with a shared store too.
        if self.cached(&key) {
            return Ok(ClaimState::Delivered);
        }
        self.inner.claim(key, token).await
    }

    async fn release(&self, ticket: Ticket) -> Result<(), StoreError> {
        self.inner.release(ticket).await
    }

    async fn is_dead_token(&self, token: &TokenKey) -> Result<bool, StoreError> {
        self.inner.is_dead_token(token).await
    }

    async fn record_dead_token(&self, token: TokenKey) -> Result<(), StoreError> {
        self.inner.record_dead_token(token).await
    }

    async fn prune_expired(&self) -> Result<u64, StoreError> {
        self.inner.prune_expired().await
    }

    async fn close(&self) {
        self.inner.close().await;
    }

    async fn failed(&self) -> String {
        self.inner.failed().await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        // The store's own check: the cache answering proves nothing about the store.
        self.inner.ping().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::{SqliteStore, SqliteStoreOptions};

    #[tokio::test]
    async fn recent_deliveries_are_answered_from_memory_and_evicted_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/d.db", dir.path().display());
        let ttl = Duration::from_secs(3600);
        let inner = SqliteStore::open(
            &url,
            SqliteStoreOptions { ttl, max_batch: 8, dead_token_ttl: Duration::from_secs(3600) },
        )
        .await
        .unwrap();
        let store = RecentCache::new(inner, 2, ttl);
        let keys: Vec<_> = (0..3).map(|i| DedupKey::new(&format!("$e{i}"), "a", "k")).collect();
        for key in &keys {
            store.record_delivered(*key).await.unwrap();
        }
        assert!(!store.cached(&keys[0]), "evicted: capacity is 2");
        assert!(store.cached(&keys[1]) && store.cached(&keys[2]));
        // Evicted keys are still answered, by the store.
        assert!(store.was_delivered(&keys[0]).await.unwrap());
        assert!(!store.was_delivered(&DedupKey::new("$other", "a", "k")).await.unwrap());
        store.close().await;
    }

    #[tokio::test]
    async fn cache_honours_the_ttl() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/d.db", dir.path().display());
        let ttl = Duration::from_secs(60);
        let inner = SqliteStore::open(
            &url,
            SqliteStoreOptions { ttl, max_batch: 8, dead_token_ttl: Duration::from_secs(3600) },
        )
        .await
        .unwrap();
        let store = RecentCache::new(inner, 16, ttl);
        let key = DedupKey::new("$old", "a", "k");
        store.remember(key, unix_now() - 120);
        assert!(!store.cached(&key));
        assert!(!store.was_delivered(&key).await.unwrap());
        store.close().await;
    }
}
