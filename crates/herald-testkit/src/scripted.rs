//! A scriptable in-process backend: each pushkey has a queue of answers; when the queue is empty
//! the backend delivers. It records every attempt and every delivery, so tests can assert exactly
//! how often a device was alerted.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use herald_core::{Backend, CallContext, DeliveryError, Device, Notification, Outcome, Upstream};

/// One scripted answer.
#[derive(Debug, Clone)]
pub enum Step {
    /// Deliver (the default when nothing is scripted).
    Deliver,
    /// The token is dead.
    Dead,
    /// A transient failure, optionally with a Retry-After.
    Transient(Option<Duration>),
    /// Our credentials were refused.
    CredentialsRefused,
    /// The message was refused.
    MessageRefused,
    /// Skip (nothing to send).
    Skip,
    /// Wait, then answer with the inner step.
    Delay(Duration, Box<Step>),
}

/// One call the backend received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The notification's event_id.
    pub event_id: Option<String>,
    /// The device's pushkey.
    pub pushkey: String,
    /// Whether this attempt delivered.
    pub delivered: bool,
    /// The attempt number the delivery layer gave (1 = first).
    pub attempt: u32,
    /// The message id the delivery layer gave: the same on every retry of one message.
    pub message_id: herald_core::MessageId,
}

/// The scriptable backend. Cheap to clone; clones share the script and the records.
#[derive(Debug, Clone, Default)]
pub struct ScriptedBackend {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    scripts: HashMap<String, VecDeque<Step>>,
    attempts: Vec<Attempt>,
}

impl ScriptedBackend {
    /// A backend that delivers everything until scripted otherwise.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues answers for `pushkey`, after any already queued.
    pub fn script(&self, pushkey: &str, steps: impl IntoIterator<Item = Step>) {
        let mut inner = self.lock();
        inner.scripts.entry(pushkey.to_owned()).or_default().extend(steps);
    }

    /// Every attempt so far.
    pub fn attempts(&self) -> Vec<Attempt> {
        self.lock().attempts.clone()
    }

    /// Attempts made for `pushkey`.
    pub fn attempts_to(&self, pushkey: &str) -> usize {
        self.lock().attempts.iter().filter(|a| a.pushkey == pushkey).count()
    }

    /// Successful deliveries to `pushkey`.
    pub fn deliveries_to(&self, pushkey: &str) -> usize {
        self.lock().attempts.iter().filter(|a| a.pushkey == pushkey && a.delivered).count()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Backend for ScriptedBackend {
    async fn deliver(
        &self,
        call: &CallContext,
        notification: &Notification,
        device: &Device,
    ) -> Result<Outcome, DeliveryError> {
        let mut step = self
            .lock()
            .scripts
            .get_mut(&device.pushkey)
            .and_then(VecDeque::pop_front)
            .unwrap_or(Step::Deliver);
        while let Step::Delay(wait, inner) = step {
            tokio::time::sleep(wait).await;
            step = *inner;
        }
        let result = match step {
            Step::Deliver => Ok(Outcome::Delivered(Upstream::new(200, "ok"))),
            Step::Skip => Ok(Outcome::Skipped("scripted skip")),
            Step::Dead => Ok(Outcome::token_dead(Upstream::new(410, "Unregistered"), "scripted")),
            Step::Transient(retry_after) => Err(DeliveryError::transient("scripted: 503")
                .with_upstream(Upstream::new(503, "unavailable"))
                .with_retry_after(retry_after)),
            Step::CredentialsRefused => Err(DeliveryError::credentials_refused("scripted: 403")
                .with_upstream(Upstream::new(403, "bad_credentials"))),
            Step::MessageRefused => Err(DeliveryError::message_refused("scripted: 413")
                .with_upstream(Upstream::new(413, "too_large"))),
            Step::Delay(..) => unreachable!("delays are unwrapped above"),
        };
        self.lock().attempts.push(Attempt {
            event_id: notification.event_id.clone(),
            pushkey: device.pushkey.clone(),
            delivered: matches!(result, Ok(Outcome::Delivered(_))),
            attempt: call.attempt(),
            message_id: call.message_id(),
        });
        result
    }
}
