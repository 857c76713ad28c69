//! The `log` backend: a dry run that logs what it would send and always delivers.
//!
//! Compiled in always, so an operator can try a configuration (routing, dedup, retries, metrics)
//! before wiring real upstream credentials.

use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;

use crate::backend::{
    AppContext, Backend, BackendFactory, BuildError, CallContext, DeliveryError, Outcome, Upstream,
};
use crate::model::{Device, Notification};
use crate::redact::PushkeyHash;

/// Configuration of a `kind = "log"` app.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Also log the event's content (message text). Off by default: it is user data.
    #[serde(default)]
    pub include_content: bool,
}

/// Logs each notification at INFO and reports it delivered.
#[derive(Debug)]
pub struct LogBackend {
    app_id: String,
    include_content: bool,
}

#[async_trait]
impl BackendFactory for LogBackend {
    const KIND: &'static str = "log";
    type Config = LogConfig;

    async fn build(app: &AppContext, config: LogConfig) -> Result<Arc<dyn Backend>, BuildError> {
        Ok(Arc::new(LogBackend {
            app_id: app.app_id.clone(),
            include_content: config.include_content,
        }))
    }
}

#[async_trait]
impl Backend for LogBackend {
    async fn deliver(
        &self,
        _call: &CallContext,
        notification: &Notification,
        device: &Device,
    ) -> Result<Outcome, DeliveryError> {
        let content = if self.include_content {
            notification
                .content
                .as_ref()
                .map(|c| String::from_utf8_lossy(&c.to_json()).into_owned())
        } else {
            None
        };
        tracing::info!(
            backend = "log",
            app = %self.app_id,
            event_id = notification.event_id.as_deref().unwrap_or(""),
            pushkey = %PushkeyHash::of(&device.pushkey),
            event_type = notification.event_type.as_deref().unwrap_or(""),
            unread = notification.counts.unread,
            content = content.map(tracing::field::display),
            "would deliver notification"
        );
        Ok(Outcome::Delivered(Upstream::no_answer("dry_run")))
    }
}
