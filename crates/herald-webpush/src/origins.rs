//! What WebPush keeps per push-service origin (`https://fcm.googleapis.com`): the VAPID JWT
//! signed for it, and when that JWT last worked. (The cap on requests and connections per origin
//! is the upstream client's.)
//!
//! One map, looked up once per delivery, so the hot path costs one short lock and a hash lookup.
//! Origins come from clients' subscriptions, so the map is bounded: when it is full, origins that
//! no delivery holds are evicted. What can stay beyond the bound is limited by the deliveries in
//! flight.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use http::HeaderValue;

use crate::vapid::{Vapid, JWT_REUSE};

/// Origins kept before idle ones are evicted.
const MAX_ORIGINS: usize = 1024;

/// The per-origin state of one app.
#[derive(Debug)]
pub(crate) struct Origins {
    map: Mutex<HashMap<Box<str>, Arc<Origin>>>,
}

/// One push-service origin.
#[derive(Debug)]
pub(crate) struct Origin {
    jwt: Mutex<Option<Arc<Jwt>>>,
}

/// A signed VAPID `Authorization` header, and whether the origin accepted it recently.
#[derive(Debug)]
pub(crate) struct Jwt {
    /// `vapid t=…, k=…`.
    pub(crate) header: HeaderValue,
    signed_at: Instant,
    /// Milliseconds after `signed_at` of the last 2xx answer to a request that carried this JWT,
    /// plus one; 0 when there was none.
    last_success: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The maps hold no invariant a panicking holder could break.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Origins {
    /// No origin yet.
    pub(crate) fn new() -> Self {
        Origins { map: Mutex::new(HashMap::new()) }
    }

    /// The state of `origin` (`scheme://host[:port]`), created on first use.
    pub(crate) fn get(&self, origin: &str) -> Arc<Origin> {
        let mut map = lock(&self.map);
        if let Some(found) = map.get(origin) {
            return Arc::clone(found);
        }
        if map.len() >= MAX_ORIGINS {
            map.retain(|_, o| o.in_use());
        }
        let created = Arc::new(Origin { jwt: Mutex::new(None) });
        map.insert(origin.into(), Arc::clone(&created));
        created
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.map).len()
    }
}

impl Origin {
    /// The JWT for this origin: the cached one, or a new one signed by `vapid`.
    pub(crate) fn jwt(&self, vapid: &Vapid, origin: &str) -> Result<Arc<Jwt>, String> {
        let now = Instant::now();
        if let Some(jwt) = lock(&self.jwt).as_ref().filter(|j| now < j.signed_at + JWT_REUSE) {
            return Ok(Arc::clone(jwt));
        }
        // Signed outside the lock: two requests racing for a new JWT both sign, which is cheaper
        // than making them wait; the last one stays.
        let jwt = Arc::new(Jwt {
            header: vapid.sign(origin)?,
            signed_at: now,
            last_success: AtomicU64::new(0),
        });
        *lock(&self.jwt) = Some(Arc::clone(&jwt));
        Ok(jwt)
    }

    /// True while a delivery (or anyone else) holds this origin.
    fn in_use(self: &Arc<Self>) -> bool {
        Arc::strong_count(self) > 1
    }
}

impl Jwt {
    /// Records that the origin accepted a request carrying this JWT.
    pub(crate) fn accepted(&self) {
        let ms = u64::try_from(self.signed_at.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.last_success.store(ms + 1, Ordering::Relaxed);
    }

    /// Whether the origin accepted this JWT within `window` before now.
    pub(crate) fn accepted_within(&self, window: Duration) -> bool {
        match self.last_success.load(Ordering::Relaxed) {
            0 => false,
            ms => {
                let at = self.signed_at + Duration::from_millis(ms - 1);
                at.elapsed() <= window
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_shared_and_bounded() {
        let origins = Origins::new();
        let a = origins.get("https://a.example");
        assert!(Arc::ptr_eq(&a, &origins.get("https://a.example")));
        for i in 0..MAX_ORIGINS + 10 {
            drop(origins.get(&format!("https://o{i}.example")));
        }
        assert!(origins.len() <= MAX_ORIGINS, "{}", origins.len());
        // The one in use survived the evictions.
        assert!(Arc::ptr_eq(&a, &origins.get("https://a.example")));
    }

    #[test]
    fn success_is_tracked_per_jwt() {
        let jwt = Jwt {
            header: HeaderValue::from_static("vapid t=x, k=y"),
            signed_at: Instant::now(),
            last_success: AtomicU64::new(0),
        };
        assert!(!jwt.accepted_within(Duration::from_secs(600)));
        jwt.accepted();
        assert!(jwt.accepted_within(Duration::from_secs(600)));
    }
}
