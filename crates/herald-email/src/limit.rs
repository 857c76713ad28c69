//! Per-address limits: at most `max_per_address` mails to one mailbox per `window`, with
//! `governor`'s GCRA: a burst of `max_per_address`, then one more every
//! `window / max_per_address`. A notification over the limit is skipped and counted, never an
//! error: the homeserver must not retry it.
//!
//! Keys are the lower-cased address with an ASCII domain (`address::Recipient::key`), so case or
//! IDN spelling cannot multiply the allowance. Memory stays bounded: keys whose allowance is
//! full again are dropped every [`PRUNE_EVERY`] checks.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

/// Checks between two prunings of recovered keys.
const PRUNE_EVERY: u64 = 4096;

type Keyed<C> =
    RateLimiter<String, DefaultKeyedStateStore<String>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// The limiter of one app.
pub(crate) struct AddressLimit<C: Clock = DefaultClock> {
    limiter: Option<Keyed<C>>,
    checks: AtomicU64,
}

impl<C: Clock> std::fmt::Debug for AddressLimit<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddressLimit").field("on", &self.limiter.is_some()).finish()
    }
}

/// The quota for `max` mails per `window`; `None` when `max` is 0 (no limit).
fn quota(max: u32, window: Duration) -> Option<Quota> {
    let burst = NonZeroU32::new(max)?;
    let period = (window / max).max(Duration::from_nanos(1));
    Some(Quota::with_period(period)?.allow_burst(burst))
}

impl AddressLimit<DefaultClock> {
    /// `max` mails per `window` per address; 0 turns the limit off.
    pub(crate) fn new(max: u32, window: Duration) -> Self {
        Self::with_clock(max, window, DefaultClock::default())
    }
}

impl<C: Clock> AddressLimit<C> {
    /// The same, on `clock` (tests use a fake one).
    pub(crate) fn with_clock(max: u32, window: Duration, clock: C) -> Self {
        let limiter = quota(max, window)
            .map(|q| RateLimiter::new(q, DefaultKeyedStateStore::default(), clock));
        AddressLimit { limiter, checks: AtomicU64::new(0) }
    }

    /// Takes one mail from `key`'s allowance; false when none is left.
    pub(crate) fn allow(&self, key: &str) -> bool {
        let Some(limiter) = &self.limiter else { return true };
        if self.checks.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        limiter.check_key(&key.to_owned()).is_ok()
    }

    /// Addresses currently tracked.
    #[cfg(test)]
    pub(crate) fn tracked(&self) -> usize {
        self.limiter.as_ref().map_or(0, |l| l.len())
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    #[test]
    fn a_burst_of_max_then_one_per_window_share() {
        let clock = FakeRelativeClock::default();
        let limit = AddressLimit::with_clock(5, Duration::from_secs(600), clock.clone());
        let sent = (0..20).filter(|_| limit.allow("a@example.org")).count();
        assert_eq!(sent, 5);
        // Another address has its own allowance.
        assert!(limit.allow("b@example.org"));
        // One more after window / max (2 minutes), not before.
        clock.advance(Duration::from_secs(119));
        assert!(!limit.allow("a@example.org"));
        clock.advance(Duration::from_secs(1));
        assert!(limit.allow("a@example.org"));
        assert!(!limit.allow("a@example.org"));
        // A full window later the whole burst is back.
        clock.advance(Duration::from_secs(600));
        assert_eq!((0..20).filter(|_| limit.allow("a@example.org")).count(), 5);
    }

    #[test]
    fn zero_means_no_limit_and_recovered_keys_are_pruned() {
        let off = AddressLimit::new(0, Duration::from_secs(600));
        assert!((0..100).all(|_| off.allow("a@example.org")));

        let clock = FakeRelativeClock::default();
        let limit = AddressLimit::with_clock(2, Duration::from_secs(10), clock.clone());
        for i in 0..1000 {
            assert!(limit.allow(&format!("user{i}@example.org")));
        }
        assert_eq!(limit.tracked(), 1000);
        clock.advance(Duration::from_secs(11));
        for _ in 0..PRUNE_EVERY {
            limit.allow("busy@example.org");
        }
        assert!(limit.tracked() <= 2, "{} keys left", limit.tracked());
    }
}
