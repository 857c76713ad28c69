//! The one layer every backend call goes through: per-app concurrency cap, per-attempt deadline,
//! bounded retries with exponential backoff and jitter, `Retry-After`, and upstream metrics.
//!
//! Backends make exactly one upstream attempt per call; everything about "when to try again"
//! lives here, once.

use std::sync::Arc;
use std::time::Duration;

use herald_core::{Backend, DeliveryError, Device, ErrorClass, Notification, Outcome};
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

/// Retry policy, from `[delivery]`.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    max_attempts: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
}

impl RetryPolicy {
    /// From the configuration.
    pub fn new(config: &DeliveryConfig) -> Self {
        RetryPolicy {
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
    pub async fn deliver(
        &self,
        app: &App,
        notification: &Notification,
        device: &Device,
        deadline: Instant,
    ) -> Result<Outcome, LayerError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = {
                let _permit = tokio::time::timeout_at(deadline, app.limiter.acquire())
                    .await
                    .map_err(|_| LayerError::Deadline)?;
                let started = Instant::now();
                let result =
                    tokio::time::timeout_at(deadline, app.backend.deliver(notification, device))
                        .await;
                app.metrics.upstream_seconds.observe(started.elapsed().as_secs_f64());
                result.map_err(|_| LayerError::Deadline)?
            };
            let error = match result {
                Ok(outcome) => return Ok(outcome),
                Err(e) if e.class() == ErrorClass::Transient && attempt < self.max_attempts => e,
                Err(e) => return Err(LayerError::Backend(e)),
            };
            let wait = error.retry_after().unwrap_or_else(|| self.backoff(attempt));
            if Instant::now() + wait >= deadline {
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

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
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
