//! In-process coordination of identical deliveries that are in flight at the same time.
//!
//! When a homeserver retries while the first attempt is still running (its 60 s timeout fired, or
//! two requests race), the second must not deliver again: it waits for the first's outcome. The
//! first to [`Claims::claim`] a key owns it; later claimants get a receiver that reports whether
//! the owner delivered. If the owner fails (or is dropped), a waiter claims the key itself.

use std::collections::HashMap;
use std::sync::Mutex;

use herald_core::sync::lock;
use tokio::sync::watch;

use crate::store::DedupKey;

/// The table of keys being delivered right now.
#[derive(Default)]
pub struct Claims {
    in_flight: Mutex<HashMap<DedupKey, watch::Receiver<Option<bool>>>>,
}

/// The result of a claim.
pub enum Claim<'a> {
    /// This caller delivers; report the outcome through the guard.
    Owner(ClaimGuard<'a>),
    /// Someone else is delivering; wait with [`wait_for_owner`].
    Wait(watch::Receiver<Option<bool>>),
}

/// Held by the owner of a key while it delivers.
pub struct ClaimGuard<'a> {
    claims: &'a Claims,
    key: DedupKey,
    outcome: Option<watch::Sender<Option<bool>>>,
}

impl Claims {
    /// Claims `key`, or joins the owner's outcome.
    pub fn claim(&self, key: DedupKey) -> Claim<'_> {
        let mut map = lock(&self.in_flight);
        if let Some(rx) = map.get(&key) {
            return Claim::Wait(rx.clone());
        }
        let (tx, rx) = watch::channel(None);
        map.insert(key, rx);
        Claim::Owner(ClaimGuard { claims: self, key, outcome: Some(tx) })
    }

    /// Keys in flight; for tests.
    pub fn len(&self) -> usize {
        lock(&self.in_flight).len()
    }

    /// True when nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ClaimGuard<'_> {
    /// Publishes the outcome (`true` = delivered and recorded) and releases the key.
    pub fn finish(mut self, delivered: bool) {
        self.release(Some(delivered));
    }

    fn release(&mut self, outcome: Option<bool>) {
        // Remove before publishing, so a waiter that sees "not delivered" and claims again finds
        // the key free.
        lock(&self.claims.in_flight).remove(&self.key);
        if let (Some(tx), Some(outcome)) = (self.outcome.take(), outcome) {
            let _ = tx.send(Some(outcome));
        }
    }
}

impl Drop for ClaimGuard<'_> {
    fn drop(&mut self) {
        if self.outcome.is_some() {
            // Dropped without an outcome (cancelled): waiters see the sender vanish and retry.
            self.release(None);
        }
    }
}

/// Waits for the owner's outcome: `true` if it delivered, `false` if the caller should try to
/// claim the key itself.
pub async fn wait_for_owner(mut rx: watch::Receiver<Option<bool>>) -> bool {
    match rx.wait_for(Option::is_some).await {
        Ok(outcome) => outcome.unwrap_or(false),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn second_claim_waits_for_first() {
        let claims = Claims::default();
        let key = DedupKey::new("$e", "a", "k");
        let Claim::Owner(guard) = claims.claim(key) else { panic!("first claim must own") };
        let Claim::Wait(rx) = claims.claim(key) else { panic!("second claim must wait") };
        let waiter = tokio::spawn(wait_for_owner(rx));
        guard.finish(true);
        assert!(waiter.await.unwrap());
        assert!(claims.is_empty());
    }

    #[tokio::test]
    async fn dropped_owner_frees_the_key() {
        let claims = Claims::default();
        let key = DedupKey::new("$e", "a", "k");
        let Claim::Owner(guard) = claims.claim(key) else { panic!() };
        let Claim::Wait(rx) = claims.claim(key) else { panic!() };
        drop(guard);
        assert!(!wait_for_owner(rx).await);
        assert!(matches!(claims.claim(key), Claim::Owner(_)));
    }
}
