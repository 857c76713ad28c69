//! [`PerOrigin`]: at most N holders per origin at once, waiting in arrival order.
//!
//! The client uses two: one caps requests in flight (so a burst queues instead of opening a
//! socket per request), one caps open connections (hyper's pool may open a connection for a
//! request that then gets an idle one, so the request cap alone does not bound sockets).
//! Entries exist only while held or awaited, so endpoints chosen by strangers (WebPush) cannot
//! grow the map without bound.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A per-origin counting limit.
#[derive(Debug, Clone)]
pub(crate) struct PerOrigin {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cap: usize,
    origins: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl Inner {
    fn origins(&self) -> MutexGuard<'_, HashMap<String, Arc<Semaphore>>> {
        // The map stays consistent even if a holder panicked: every update is one call.
        self.origins.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One unit of an origin's limit, given back when dropped.
#[derive(Debug)]
pub(crate) struct Permit {
    permit: Option<OwnedSemaphorePermit>,
    origin: String,
    owner: Arc<Inner>,
}

impl PerOrigin {
    /// At most `cap` (at least 1) holders per origin.
    pub(crate) fn new(cap: usize) -> Self {
        PerOrigin { inner: Arc::new(Inner { cap: cap.max(1), origins: Mutex::default() }) }
    }

    /// Waits for a unit of `origin`'s limit.
    pub(crate) async fn acquire(&self, origin: &str) -> Permit {
        let semaphore = Arc::clone(
            self.inner
                .origins()
                .entry(origin.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(self.inner.cap))),
        );
        let permit = semaphore.acquire_owned().await.expect("these semaphores are never closed");
        Permit { permit: Some(permit), origin: origin.to_owned(), owner: Arc::clone(&self.inner) }
    }

    /// How many origins have an entry (held or awaited).
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.inner.origins().len()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        drop(self.permit.take());
        let mut origins = self.owner.origins();
        // Only the map's own reference left: nobody holds or awaits this origin. New acquirers
        // clone under this lock, so the count cannot grow while it is held.
        if origins.get(&self.origin).is_some_and(|s| Arc::strong_count(s) == 1) {
            origins.remove(&self.origin);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::task::{Context, Waker};

    use super::*;

    #[tokio::test]
    async fn caps_per_origin_and_forgets_idle_origins() {
        let limit = PerOrigin::new(2);
        let a1 = limit.acquire("https://a").await;
        let a2 = limit.acquire("https://a").await;
        // Another origin is not affected by a's limit.
        let b = limit.acquire("https://b").await;
        let mut third = Box::pin(limit.acquire("https://a"));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(third.as_mut().poll(&mut cx).is_pending(), "a third holder got in while two held");
        drop(a1);
        let a3 = third.await;
        drop((a2, a3, b));
        assert_eq!(limit.tracked(), 0, "idle origins are forgotten");
    }
}
