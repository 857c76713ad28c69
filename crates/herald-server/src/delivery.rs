//! The one layer every backend call goes through: per-app concurrency cap, per-attempt deadline,
//! bounded retries with exponential backoff and jitter, `Retry-After`, and upstream metrics.
//!
//! Backends make exactly one upstream attempt per call; everything about "when to try again"
//! lives here, once.

use std::sync::Arc;
use std::time::Duration;

use herald_core::{
    Backend, CallContext, DeliveryError, Device, ErrorClass, MessageId, Notification, Outcome,
    Upstream,
};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::config::DeliveryConfig;
use crate::metrics::AppMetrics;

/// One configured app: its backend and the layer's per-app state.
pub struct App {
    /// The configuration key (app_id or glob).
    pub key: String,
    /// The backend kind, for logs.
    pub kind: String,
    /// The backend.
    pub backend: Arc<dyn Backend>,
    /// Caps concurrent upstream calls.
    pub limiter: Semaphore,
    /// Pre-resolved metric handles.
    pub metrics: AppMetrics,
}

/// Why a delivery did not succeed within the layer's budget.
#[derive(Debug)]
pub enum LayerError {
    /// The backend's error, after any retries it allowed.
    Backend(DeliveryError),
    /// The request's deadline passed before an attempt succeeded.
    Deadline,
}

/// What the attempts of one delivery went through, for the retry log line.
#[derive(Default)]
struct Tally {
    attempts: u32,
    /// The class of the last error that was retried.
    last_error: Option<&'static str>,
}

/// The delivery layer around every backend call: the per-app cap (`App::limiter`), the
/// deadline, bounded retries with backoff or `Retry-After`, upstream metrics and the retry log
/// line. Its settings come from `[delivery]`.
#[derive(Debug, Clone)]
pub struct DeliveryLayer {
    max_attempts: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
}

impl DeliveryLayer {
    /// From the configuration.
    pub fn new(config: &DeliveryConfig) -> Self {
        DeliveryLayer {
            max_attempts: config.max_attempts,
            initial_backoff: config.initial_backoff,
            max_backoff: config.max_backoff,
        }
    }

    /// The wait before attempt `attempt + 1`: exponential, capped, with "equal jitter" (half
    /// fixed, half random) so synchronized failures spread out without collapsing to zero.
    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self.initial_backoff.saturating_mul(1u32 << (attempt - 1).min(16));
        let base = exp.min(self.max_backoff);
        let half = base / 2;
        half + half.mul_f64(fastrand::f64())
    }

    /// Delivers through `app` with retries, never past `deadline`.
    ///
    /// A delivery that needed more than one attempt is logged at INFO however it ended (attempts,
    /// total time, the class of the last error): at DEBUG, an upstream that answers slowly or
    /// fails once in a while would otherwise be invisible. The error's class only — its message
    /// can carry upstream text.
    pub async fn deliver(
        &self,
        app: &App,
        notification: &Notification,
        device: &Device,
        message_id: MessageId,
        deadline: Instant,
    ) -> Result<Outcome, LayerError> {
        let started = Instant::now();
        let mut tally = Tally::default();
        let result =
            self.attempts(app, notification, device, message_id, deadline, &mut tally).await;
        if tally.attempts > 1 {
            let outcome = match &result {
                Ok(Outcome::Delivered(_)) => "delivered",
                Ok(Outcome::Skipped(_)) => "skipped",
                Ok(Outcome::TokenDead { .. }) => "token_dead",
                Ok(_) => "other",
                Err(LayerError::Deadline) => "deadline",
                Err(LayerError::Backend(e)) => e.class().as_str(),
            };
            tracing::info!(
                attempts = tally.attempts,
                elapsed_ms = started.elapsed().as_millis() as u64,
                last_error = tally.last_error.unwrap_or("none"),
                outcome,
                "delivery needed retries"
            );
        }
        result
    }

    async fn attempts(
        &self,
        app: &App,
        notification: &Notification,
        device: &Device,
        message_id: MessageId,
        deadline: Instant,
        tally: &mut Tally,
    ) -> Result<Outcome, LayerError> {
        loop {
            tally.attempts += 1;
            let attempt = tally.attempts;
            let result = {
                let _permit = tokio::time::timeout_at(deadline, app.limiter.acquire())
                    .await
                    .map_err(|_| LayerError::Deadline)?;
                let started = Instant::now();
                // The backend sees the deadline as it is; `std` instants, as herald-core has no
                // tokio.
                let call = CallContext::new(deadline.into_std(), attempt, message_id);
                let result = tokio::time::timeout_at(
                    deadline,
                    app.backend.deliver(&call, notification, device),
                )
                .await;
                app.metrics.upstream_seconds.observe(started.elapsed().as_secs_f64());
                result.map_err(|_| LayerError::Deadline)?
            };
            app.metrics.count_response(match &result {
                Ok(Outcome::Delivered(upstream) | Outcome::TokenDead { upstream, .. }) => {
                    Some(*upstream)
                }
                Ok(_) => None,
                Err(e) => Some(e.upstream().unwrap_or(Upstream::no_answer("unspecified"))),
            });
            let error = match result {
                Ok(outcome) => return Ok(outcome),
                // Backends time their calls out at the deadline (`CallContext::timeout`): a
                // transient failure there is the deadline passing, whichever timer fired first.
                Err(e) if e.class() == ErrorClass::Transient && Instant::now() >= deadline => {
                    return Err(LayerError::Deadline)
                }
                Err(e) if e.class() == ErrorClass::Transient && attempt < self.max_attempts => e,
                Err(e) => return Err(LayerError::Backend(e)),
            };
            tally.last_error = Some(error.class().as_str());
            let wait = error.retry_after().unwrap_or_else(|| self.backoff(attempt));
            // `checked_add`: a wait is bounded (MAX_RETRY_AFTER) but never trusted to fit an Instant.
            if Instant::now().checked_add(wait).is_none_or(|at| at >= deadline) {
                // The upstream asked for (or backoff needs) more time than is left: answer now
                // and let the homeserver's own retry come back later.
                return Err(LayerError::Backend(error));
            }
            tracing::debug!(attempt, wait_ms = wait.as_millis() as u64, error = %error, "retrying");
            app.metrics.retries.inc();
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use herald_testkit::logs::LogCapture;
    use herald_testkit::scripted::{ScriptedBackend, Step};

    #[tokio::test]
    async fn retried_deliveries_are_logged_at_info() {
        let (logs, _guard) = LogCapture::start_json(tracing::Level::INFO);

        let backend = ScriptedBackend::new();
        backend.script("secret-pushkey-1", [Step::Transient(None), Step::Deliver]);
        backend.script("secret-pushkey-2", vec![Step::Transient(None); 3]);
        let app = App {
            key: "app".into(),
            kind: "scripted".into(),
            backend: Arc::new(backend.clone()),
            limiter: Semaphore::new(4),
            metrics: crate::metrics::Metrics::new().app("app"),
        };
        let layer = DeliveryLayer {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
        };
        let deliver = |pushkey: &str| {
            let body = herald_testkit::notify::message("$e", "app", pushkey);
            let n = herald_core::NotifyRequest::from_slice(body.to_string().as_bytes())
                .unwrap()
                .notification;
            let (app, layer) = (&app, &layer);
            let id = MessageId::from_bytes(
                *crate::store::DedupKey::new("$e", "app", pushkey).as_bytes(),
            );
            async move {
                let deadline = Instant::now() + Duration::from_secs(5);
                layer.deliver(app, &n, &n.devices[0], id, deadline).await
            }
        };

        // First time right: nothing at INFO.
        assert!(matches!(deliver("first-time").await, Ok(Outcome::Delivered(_))));
        assert!(logs.lines().is_empty(), "{:?}", logs.lines());

        assert!(matches!(deliver("secret-pushkey-1").await, Ok(Outcome::Delivered(_))));
        // The backend saw attempts 1 and 2 of one message: the same id, usable upstream as an
        // idempotency key (APNs apns-id).
        let calls: Vec<_> = backend
            .attempts()
            .into_iter()
            .filter(|a| a.pushkey == "secret-pushkey-1")
            .map(|a| (a.attempt, a.message_id))
            .collect();
        let id = calls[0].1;
        assert_eq!(calls, vec![(1, id), (2, id)]);
        assert!(matches!(deliver("secret-pushkey-2").await, Err(LayerError::Backend(_))));
        let lines = logs.lines();
        assert_eq!(lines.len(), 2, "{lines:?}");
        for (line, attempts, outcome) in [(&lines[0], 2, "delivered"), (&lines[1], 3, "transient")]
        {
            assert_eq!(line["level"], "INFO", "{line}");
            assert_eq!(line["message"], "delivery needed retries", "{line}");
            assert_eq!(line["attempts"], attempts, "{line}");
            assert_eq!(line["outcome"], outcome, "{line}");
            assert_eq!(line["last_error"], "transient", "{line}");
            assert!(line["elapsed_ms"].is_u64(), "{line}");
        }
        let text = logs.text();
        assert!(!text.contains("secret-pushkey"), "pushkeys are never logged: {text}");
        assert!(!text.contains("scripted: 503"), "upstream text is never logged: {text}");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = DeliveryLayer {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        };
        for _ in 0..100 {
            let b1 = p.backoff(1);
            assert!(b1 >= Duration::from_millis(50) && b1 <= Duration::from_millis(100), "{b1:?}");
            let b3 = p.backoff(3);
            assert!(b3 >= Duration::from_millis(200) && b3 <= Duration::from_millis(400), "{b3:?}");
            assert!(p.backoff(30) <= Duration::from_secs(1));
        }
    }
}
