//! The notify data path after parsing: for each device, route by app_id → dedup claim → deliver
//! through the [`delivery`](crate::delivery) layer → record → collect `rejected`; then decide the
//! HTTP answer per domain.md §2 (200 + rejected, or a 5xx only when a homeserver retry can help).
//!
//! Deduplication is two layers: [`crate::claims`] coalesces identical deliveries inside this
//! process (the later ones wait for the first's outcome, free), and the store's claim coordinates
//! instances sharing a store (PostgreSQL): the first to claim a key delivers, the others poll with
//! backoff until it is recorded (duplicate), released (claim it themselves) or its lease expires.
//! A record that fails is retried while the claim's lease lasts (the store may be restarting),
//! so a delivery acknowledged during a short outage is still deduplicated everywhere afterwards.
//!
//! The app table can be replaced while serving ([`Dispatcher::replace_apps`], a configuration
//! reload): each request routes all its devices through the table it started with, so requests
//! in flight finish on the apps they began on.
//!
//! Work in flight is bounded twice, so a burst of big requests cannot take unbounded memory: one
//! request runs at most `delivery.max_in_flight_devices_per_request` devices at a time (the others
//! are not even created yet), and all requests together at most `delivery.max_in_flight_devices`
//! (a device waits for room until its request's deadline, then counts as `failed_overloaded`).

use std::collections::HashSet;
use std::sync::Arc;

use arc_swap::ArcSwap;
use futures_util::StreamExt;
use herald_core::redact::PushkeyHash;
use herald_core::{AppRouter, Device, ErrorClass, MessageId, Notification, Outcome};
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::claims::{wait_for_owner, Claim, Claims};
use crate::delivery::{App, DeliveryLayer, LayerError};
use crate::metrics::{AppMetrics, StoreMetrics};
use crate::store::{ClaimState, DedupKey, DedupStore, TokenKey};

/// First wait before asking again for a key another instance holds; doubles up to
/// [`MAX_CLAIM_POLL`]. Waiters are rare (the same event on two instances at once), and the owner
/// usually records within milliseconds.
const FIRST_CLAIM_POLL: std::time::Duration = std::time::Duration::from_millis(10);
/// Longest wait between two claims of a held key.
const MAX_CLAIM_POLL: std::time::Duration = std::time::Duration::from_millis(200);
/// A record is retried (the store may be restarting) until this long before the claim's lease
/// ends; after that another instance may take the key over, so the device is answered 503.
const RECORD_SAFETY: std::time::Duration = std::time::Duration::from_secs(1);

/// What happened to one device.
#[derive(Debug)]
enum DeviceResult {
    Delivered,
    Skipped,
    Duplicate,
    Rejected,
    /// Rejected from the dead-token cache, without an upstream call.
    RejectedCached,
    MessageRefused,
    Failed(Failure),
}

/// Failures that make the homeserver retry, most urgent first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Failure {
    /// The dedup store is unavailable (503).
    Store,
    /// The gateway had no room for the device before the deadline (503).
    Overloaded,
    /// The request deadline passed (504).
    Deadline,
    /// The upstream refused Herald's credentials (502; an operator must act).
    CredentialsRefused,
    /// Transient upstream trouble outlasted the retries (502).
    Transient,
}

impl Failure {
    /// The HTTP status for the homeserver.
    pub fn status(self) -> u16 {
        match self {
            Failure::Store | Failure::Overloaded => 503,
            Failure::Deadline => 504,
            Failure::CredentialsRefused | Failure::Transient => 502,
        }
    }

    /// The `error` text for the homeserver.
    pub fn message(self) -> &'static str {
        match self {
            Failure::Store => "dedup store unavailable; retry later",
            Failure::Overloaded => "gateway busy: too many deliveries in progress; retry later",
            Failure::Deadline => "delivery did not finish within the deadline; retry later",
            Failure::CredentialsRefused => {
                "upstream refused the gateway's credentials; retry later"
            }
            Failure::Transient => "upstream temporarily unavailable; retry later",
        }
    }
}

/// The answer to one notify request.
#[derive(Debug)]
pub enum NotifyAnswer {
    /// 200 with these rejected pushkeys.
    Rejected(Vec<String>),
    /// A 5xx: at least one device failed in a way a retry can fix.
    Failed(Failure),
}

/// How much delivery work may be in flight, from `[delivery]`.
#[derive(Debug, Clone, Copy)]
pub struct DispatchLimits {
    /// Devices in flight across all requests.
    pub max_in_flight_devices: usize,
    /// Devices in flight within one request.
    pub max_in_flight_devices_per_request: usize,
}

impl DispatchLimits {
    /// From `[delivery]`.
    pub fn from_config(config: &crate::config::DeliveryConfig) -> Self {
        DispatchLimits {
            max_in_flight_devices: config.max_in_flight_devices,
            max_in_flight_devices_per_request: config.max_in_flight_devices_per_request,
        }
    }
}

impl Default for DispatchLimits {
    fn default() -> Self {
        DispatchLimits { max_in_flight_devices: 4096, max_in_flight_devices_per_request: 64 }
    }
}

/// Routes and delivers notifications; shared by all requests.
pub struct Dispatcher {
    router: ArcSwap<AppRouter<Arc<App>>>,
    store: Arc<dyn DedupStore>,
    claims: Claims,
    delivery: DeliveryLayer,
    unknown_app: AppMetrics,
    store_metrics: StoreMetrics,
    /// The global budget of devices in flight (FIFO, so big requests interleave fairly).
    budget: Semaphore,
    per_request: usize,
    /// Notify dispatches running as tasks of their own; shutdown waits for them.
    tasks: TaskTracker,
    /// `store.claim_lease`: how long a record may be retried after the claim.
    claim_lease: std::time::Duration,
    /// Whether the dead-token cache is on (`store.dead_token_ttl` > 0).
    dead_tokens: bool,
}

impl Dispatcher {
    /// Assembles the data path.
    pub fn new(
        router: AppRouter<Arc<App>>,
        store: Arc<dyn DedupStore>,
        delivery: DeliveryLayer,
        unknown_app: AppMetrics,
        store_metrics: StoreMetrics,
    ) -> Self {
        let limits = DispatchLimits::default();
        Dispatcher {
            router: ArcSwap::from_pointee(router),
            store,
            claims: Claims::default(),
            delivery,
            unknown_app,
            store_metrics,
            budget: Semaphore::new(limits.max_in_flight_devices),
            per_request: limits.max_in_flight_devices_per_request,
            tasks: TaskTracker::new(),
            claim_lease: std::time::Duration::from_secs(30),
            dead_tokens: true,
        }
    }

    /// Sets the claim lease (`store.claim_lease`), which bounds how long a record is retried.
    pub fn with_claim_lease(mut self, lease: std::time::Duration) -> Self {
        self.claim_lease = lease;
        self
    }

    /// Turns the dead-token cache on or off (`store.dead_token_ttl` > 0).
    pub fn with_dead_tokens(mut self, on: bool) -> Self {
        self.dead_tokens = on;
        self
    }

    /// Replaces the default in-flight limits.
    pub fn with_limits(mut self, limits: DispatchLimits) -> Self {
        self.budget = Semaphore::new(limits.max_in_flight_devices.max(1));
        self.per_request = limits.max_in_flight_devices_per_request.max(1);
        self
    }

    /// The apps serving new requests now.
    pub fn apps(&self) -> Vec<Arc<App>> {
        self.router.load().iter().map(|(_, app)| app.clone()).collect()
    }

    /// Serves new requests with `apps` from now on; requests in flight finish on the apps they
    /// started with. Returns the table replaced: it is no longer in use once its count of
    /// holders ([`Arc::strong_count`]) is down to the caller's one.
    pub fn replace_apps(&self, apps: AppRouter<Arc<App>>) -> Arc<AppRouter<Arc<App>>> {
        self.router.swap(Arc::new(apps))
    }

    /// The dedup store.
    pub fn store(&self) -> &Arc<dyn DedupStore> {
        &self.store
    }

    /// Where notify handlers spawn their dispatch, so that shutdown can wait for every one
    /// before it closes the store.
    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    /// Delivers to every device (a bounded number at a time) and decides the answer.
    pub async fn notify(&self, notification: &Notification, deadline: Instant) -> NotifyAnswer {
        let devices = &notification.devices;
        let mut failure: Option<Failure> = None;
        let mut merge = |result: &DeviceResult| {
            if let DeviceResult::Failed(f) = *result {
                failure = Some(failure.map_or(f, |g| g.min(f)));
            }
        };
        let mut rejected = Vec::new();
        // One table for the whole request, held until it is answered (see the module docs).
        let apps = self.router.load_full();
        let apps = &*apps;
        if let [device] = devices.as_slice() {
            // Synapse's case: one device per request; no stream machinery.
            let result = self.device(apps, notification, device, deadline).await;
            merge(&result);
            if matches!(result, DeviceResult::Rejected | DeviceResult::RejectedCached) {
                rejected.push(device.pushkey.clone());
            }
        } else {
            // Futures are created lazily, `per_request` at a time, so a request's memory does
            // not grow with its device count; results are only a flag per device.
            let mut is_rejected = vec![false; devices.len()];
            // Indices, not `&Device`s, into the closure: a reference argument makes the future
            // generic over its lifetime, which `tokio::spawn`'s `Send` check cannot prove.
            let mut results = futures_util::stream::iter(0..devices.len())
                .map(|i| async move {
                    (i, self.device(apps, notification, &devices[i], deadline).await)
                })
                .buffer_unordered(self.per_request);
            while let Some((i, result)) = results.next().await {
                merge(&result);
                is_rejected[i] =
                    matches!(result, DeviceResult::Rejected | DeviceResult::RejectedCached);
            }
            // In request order, each pushkey once.
            let mut seen = HashSet::new();
            for (device, _) in devices.iter().zip(is_rejected).filter(|(_, r)| *r) {
                if seen.insert(device.pushkey.as_str()) {
                    rejected.push(device.pushkey.clone());
                }
            }
        }
        if failure == Some(Failure::Overloaded) {
            // Once per request, not per device: a big request would flood the log.
            tracing::warn!(
                "devices found no room before the deadline (delivery.max_in_flight_devices): 503"
            );
        }
        match failure {
            Some(f) => NotifyAnswer::Failed(f),
            None => NotifyAnswer::Rejected(rejected),
        }
    }

    /// Waits for room in the global budget, but not past `deadline`. `None`: the deadline
    /// passed while waiting (room that frees up only at the deadline is no use either).
    async fn room(&self, deadline: Instant) -> Option<SemaphorePermit<'_>> {
        if let Ok(permit) = self.budget.try_acquire() {
            return Some(permit);
        }
        let permit = tokio::time::timeout_at(deadline, self.budget.acquire()).await.ok()?.ok()?;
        (Instant::now() < deadline).then_some(permit)
    }

    async fn device(
        &self,
        apps: &AppRouter<Arc<App>>,
        n: &Notification,
        device: &Device,
        deadline: Instant,
    ) -> DeviceResult {
        let Some(app) = apps.route(&device.app_id) else {
            self.unknown_app.count("rejected");
            tracing::info!(
                app_id = %device.app_id,
                pushkey = %PushkeyHash::of(&device.pushkey),
                "unknown app_id: pushkey rejected"
            );
            return DeviceResult::Rejected;
        };
        if Instant::now() >= deadline {
            // A device of a big request whose turn came only after the deadline.
            app.metrics.count("failed_deadline");
            return DeviceResult::Failed(Failure::Deadline);
        }
        // Held until the device is done (claimed, delivered, recorded).
        let Some(_room) = self.room(deadline).await else {
            app.metrics.count("failed_overloaded");
            return DeviceResult::Failed(Failure::Overloaded);
        };
        let span = tracing::info_span!(
            "device",
            app = %app.key,
            event_id = n.event_id.as_deref().unwrap_or(""),
            pushkey = %PushkeyHash::of(&device.pushkey),
        );
        let result = match n.dedup_event_id() {
            None => {
                // Badge-only updates are never deduplicated; their message id only has to stay
                // the same across this request's retries.
                let id = MessageId::from_bytes(fastrand::u128(..).to_le_bytes());
                self.deliver_badge(app, n, device, id, deadline).instrument(span.clone()).await
            }
            Some(event_id) => {
                let key = DedupKey::new(event_id, &device.app_id, &device.pushkey);
                self.deliver_once(app, n, device, key, deadline).instrument(span.clone()).await
            }
        };
        app.metrics.count(match &result {
            DeviceResult::Delivered => "delivered",
            DeviceResult::Skipped => "skipped",
            DeviceResult::Duplicate => "deduplicated",
            DeviceResult::Rejected => "rejected",
            DeviceResult::RejectedCached => "rejected_cached",
            DeviceResult::MessageRefused => "failed_message_refused",
            DeviceResult::Failed(Failure::Transient) => "failed_transient",
            DeviceResult::Failed(Failure::CredentialsRefused) => "failed_credentials_refused",
            DeviceResult::Failed(Failure::Deadline) => "failed_deadline",
            DeviceResult::Failed(Failure::Store) => "failed_store",
            DeviceResult::Failed(Failure::Overloaded) => "failed_overloaded",
        });
        result
    }

    /// A badge-only update: no dedup, but a known dead token is answered without an upstream call.
    async fn deliver_badge(
        &self,
        app: &App,
        n: &Notification,
        device: &Device,
        id: MessageId,
        deadline: Instant,
    ) -> DeviceResult {
        let token = TokenKey::new(&device.app_id, &device.pushkey);
        if self.dead_tokens {
            match tokio::time::timeout_at(deadline, self.store.is_dead_token(&token)).await {
                Ok(Ok(true)) => return self.rejected_from_cache(),
                Ok(Ok(false)) => {}
                // The cache only saves an upstream call: deliver without it.
                Ok(Err(e)) => tracing::warn!(error = %e, "dead-token lookup failed; delivering"),
                Err(_) => return DeviceResult::Failed(Failure::Deadline),
            }
        }
        let result = self.deliver(app, n, device, id, deadline).await;
        if matches!(result, DeviceResult::Rejected) {
            self.remember_dead(token).await;
        }
        result
    }

    fn rejected_from_cache(&self) -> DeviceResult {
        self.store_metrics.dead_token_hits.inc();
        tracing::debug!("known dead token: pushkey rejected without an upstream call");
        DeviceResult::RejectedCached
    }

    /// Remembers a token the upstream called dead. Only `Outcome::TokenDead` gets here: an
    /// unknown app_id or a policy refusal is never cached.
    async fn remember_dead(&self, token: TokenKey) {
        if !self.dead_tokens {
            return;
        }
        if let Err(e) = self.store.record_dead_token(token).await {
            // The pushkey is rejected anyway; only the next upstream call is not saved.
            tracing::warn!(error = %e, "could not remember the dead token");
        }
    }

    /// Delivers unless already delivered. Identical deliveries in this process wait for the
    /// first ([`Claims`]); the first claims the key in the store, which on a shared store may
    /// find another instance delivering it: then it polls until that one records (duplicate),
    /// releases (claim it) or its lease ends (take it over).
    async fn deliver_once(
        &self,
        app: &App,
        n: &Notification,
        device: &Device,
        key: DedupKey,
        deadline: Instant,
    ) -> DeviceResult {
        let token = TokenKey::new(&device.app_id, &device.pushkey);
        loop {
            let guard = match self.claims.claim(key) {
                Claim::Owner(guard) => guard,
                Claim::Wait(rx) => {
                    match tokio::time::timeout_at(deadline, wait_for_owner(rx)).await {
                        Ok(true) => return DeviceResult::Duplicate,
                        Ok(false) => continue, // the owner failed: try ourselves
                        Err(_) => return DeviceResult::Failed(Failure::Deadline),
                    }
                }
            };
            let mut poll = FIRST_CLAIM_POLL;
            let mut waited = false;
            let (ticket, claimed_at) = loop {
                let started = std::time::Instant::now();
                let claimed = tokio::time::timeout_at(deadline, self.store.claim(key, token)).await;
                self.store_metrics.lookup.observe(started.elapsed().as_secs_f64());
                match claimed {
                    Ok(Ok(ClaimState::Claimed(ticket))) => break (ticket, started),
                    Ok(Ok(ClaimState::Delivered)) => {
                        guard.finish(true);
                        return DeviceResult::Duplicate;
                    }
                    Ok(Ok(ClaimState::DeadToken)) => {
                        guard.finish(false);
                        return self.rejected_from_cache();
                    }
                    Ok(Ok(ClaimState::Held { remaining })) => {
                        if !waited {
                            waited = true;
                            self.store_metrics.claim_waits.inc();
                            tracing::debug!(
                                lease_remaining_ms = remaining.as_millis() as u64,
                                "another instance is delivering this: waiting for it"
                            );
                        }
                        // Never past the other's lease, nor our deadline; jitter spreads the
                        // waiters of one key.
                        let wait = poll
                            .min(remaining.max(FIRST_CLAIM_POLL))
                            .mul_f64(0.8 + 0.4 * fastrand::f64());
                        if Instant::now() + wait >= deadline {
                            tokio::time::sleep_until(deadline).await;
                            return DeviceResult::Failed(Failure::Deadline);
                        }
                        tokio::time::sleep(wait).await;
                        poll = (poll * 2).min(MAX_CLAIM_POLL);
                    }
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "dedup claim failed");
                        return DeviceResult::Failed(Failure::Store);
                    }
                    Err(_) => return DeviceResult::Failed(Failure::Deadline),
                }
            };
            let id = MessageId::from_bytes(*key.as_bytes());
            let result = self.deliver(app, n, device, id, deadline).await;
            if !matches!(result, DeviceResult::Delivered | DeviceResult::Skipped) {
                if matches!(result, DeviceResult::Rejected) {
                    self.remember_dead(token).await;
                }
                // Not delivered: a retry, here or on another instance, may claim it at once.
                if let Err(e) = self.store.release(ticket).await {
                    tracing::warn!(error = %e, "could not release a claim; it expires with its lease");
                }
                guard.finish(false);
                return result;
            }
            // Not bounded by the request deadline: the message is out, so the record must land or
            // a retry would alert twice. It is retried while the store is away (a PostgreSQL
            // restart), until shortly before the lease ends: after that another instance may
            // take the key over, and waiting longer would only delay the answer.
            let give_up = claimed_at + self.claim_lease.saturating_sub(RECORD_SAFETY);
            // Delivered but not remembered: still a success (the user got it); a retry of this
            // same event may alert twice, which beats a lost notification. Logged as an error.
            self.record(key, give_up).await;
            guard.finish(true);
            return result;
        }
    }

    /// Records `key`, retrying with backoff until `give_up` (then logs an error).
    async fn record(&self, key: DedupKey, give_up: std::time::Instant) {
        let mut backoff = std::time::Duration::from_millis(50);
        let mut attempts = 0u32;
        loop {
            let started = std::time::Instant::now();
            let recorded = self.store.record_delivered(key).await;
            self.store_metrics.record.observe(started.elapsed().as_secs_f64());
            attempts += 1;
            match recorded {
                Ok(()) => {
                    if attempts > 1 {
                        tracing::info!(attempts, "delivery recorded after the store came back");
                    }
                    return;
                }
                Err(e) if std::time::Instant::now() + backoff >= give_up => {
                    tracing::error!(
                        error = %e,
                        attempts,
                        "delivered but could not record in dedup store"
                    );
                    return;
                }
                Err(e) => {
                    if attempts == 1 {
                        tracing::warn!(error = %e, "could not record a delivery yet; retrying");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(1));
                }
            }
        }
    }

    async fn deliver(
        &self,
        app: &App,
        n: &Notification,
        device: &Device,
        message_id: MessageId,
        deadline: Instant,
    ) -> DeviceResult {
        match self.delivery.deliver(app, n, device, message_id, deadline).await {
            Ok(Outcome::Delivered(_)) => {
                tracing::debug!("delivered");
                DeviceResult::Delivered
            }
            Ok(Outcome::Skipped(why)) => {
                tracing::debug!(reason = why, "skipped");
                DeviceResult::Skipped
            }
            Ok(Outcome::TokenDead { upstream, detail }) => {
                tracing::info!(
                    status = upstream.status,
                    reason = upstream.reason,
                    detail = %detail,
                    "token dead: pushkey rejected"
                );
                DeviceResult::Rejected
            }
            // An outcome added to herald-core after this server was written: nothing failed, and
            // only `TokenDead` may ever reject a pushkey.
            Ok(_) => DeviceResult::Skipped,
            Err(LayerError::Deadline) => {
                tracing::warn!("request deadline passed before delivery succeeded");
                DeviceResult::Failed(Failure::Deadline)
            }
            Err(LayerError::Backend(e)) => match e.class() {
                ErrorClass::CredentialsRefused => {
                    tracing::error!(
                        backend = %app.kind,
                        error = %e.message(),
                        "upstream refused Herald's credentials: fix the app's configuration"
                    );
                    DeviceResult::Failed(Failure::CredentialsRefused)
                }
                ErrorClass::MessageRefused => {
                    tracing::warn!(error = %e.message(), "upstream refused the message; dropped");
                    DeviceResult::MessageRefused
                }
                // A class added later is treated as the safe one: the homeserver retries.
                // (`Transient`, and any class added later)
                _ => {
                    tracing::warn!(error = %e.message(), "transient upstream failure after retries");
                    DeviceResult::Failed(Failure::Transient)
                }
            },
        }
    }
}
