//! `herald send-test`: one real notification through one configured app, to check a device or
//! an app's credentials without a homeserver.
//!
//! The app is found as the notify endpoint finds it (the `app_id` routed over the configuration's
//! keys, exact first, then globs) and built through the [`BackendRegistry`] as `serve` builds it
//! (so a WebPush app with `create_vapid_key_if_missing` creates its key, as `serve` would). The
//! notification is a fresh event (`$herald-send-test-…`) with the `--message` text as an
//! `m.text` body, the `--data` object as the pusher's `data`, and one unread message; a
//! `"format": "event_id_only"` pusher gets what Synapse sends such pushers (ids and counts only).
//! It makes exactly one upstream attempt — no retries, so the answer shown is the upstream's
//! first — within `server.request_deadline`, and reports the outcome, the upstream's status and
//! reason code, and the time taken. Exit codes ([`Report::exit_code`]): 0 delivered, 3 rejected
//! (the token is dead), 4 anything else (an error of any class, no answer in time, or skipped:
//! nothing was sent), 2 for the configuration or the arguments ([`SendTestError`]).
//!
//! Nothing secret is printed: the report holds the pushkey the operator typed, the upstream's
//! status and reason code, and the backend's error message, which by the [`herald_core::Backend`]
//! contract names no key, token or message content.

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_core::{
    AppContext, AppRouter, Backend, CallContext, DeliveryError, MessageId, NotifyRequest, Outcome,
    Upstream,
};
use serde_json::{json, Value};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::registry::BackendRegistry;
use crate::server::StartError;

/// The text sent when `--message` is not given.
pub const DEFAULT_MESSAGE: &str = "Test notification from Herald";

/// What to send.
#[derive(Debug, Clone)]
pub struct SendTest {
    /// The app_id a client would register its pusher with.
    pub app_id: String,
    /// The device's pushkey.
    pub pushkey: String,
    /// The pusher's `data`, a JSON object (`{"url": …, "format": …, "default_payload": …}`,
    /// WebPush's `{"endpoint": …, "auth": …}`).
    pub data: Option<String>,
    /// The message text; [`DEFAULT_MESSAGE`] when absent.
    pub message: Option<String>,
}

/// Why nothing could be sent: exit code 2.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendTestError {
    /// `--data` is not a JSON object.
    #[error("--data: {0}")]
    Data(String),
    /// No app of the configuration routes this app_id.
    #[error("no app in the configuration matches app_id `{app_id}` (configured: {configured})")]
    UnknownApp {
        /// The app_id asked for.
        app_id: String,
        /// The configured app keys.
        configured: String,
    },
    /// The app cannot be built, or the app keys cannot route.
    #[error(transparent)]
    Start(#[from] StartError),
}

impl SendTestError {
    /// The process exit code: always 2 (the configuration or the arguments).
    pub fn exit_code(&self) -> u8 {
        2
    }
}

/// How the one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendResult {
    /// The upstream accepted the notification.
    Delivered(Upstream),
    /// The backend sent nothing (the reason code says why, e.g. a rate limit).
    Skipped(&'static str),
    /// The token is dead: a homeserver would delete this pusher.
    Rejected {
        /// What answered (status 0 when refused before any request).
        upstream: Upstream,
        /// Why, in the backend's words (no pushkey or token in it).
        detail: String,
    },
    /// The backend failed.
    Failed {
        /// The error class: `transient`, `credentials_refused` or `message_refused`.
        class: &'static str,
        /// What the upstream answered, when the backend knows.
        upstream: Option<Upstream>,
        /// The backend's message (no pushkey, token or content in it).
        message: String,
    },
    /// No answer within `server.request_deadline`.
    TimedOut(Duration),
}

/// The result of `send-test`, for printing.
#[derive(Debug, Clone)]
pub struct Report {
    /// The configuration key of the app that served the app_id.
    pub app_key: String,
    /// Its backend kind.
    pub kind: String,
    /// The test event's id.
    pub event_id: String,
    /// How it ended.
    pub result: SendResult,
    /// From the start of the attempt to its end (the backend built, so without start-up).
    pub elapsed: Duration,
}

impl Report {
    /// 0 delivered, 3 rejected, 4 anything else (failed, timed out, skipped).
    pub fn exit_code(&self) -> u8 {
        match self.result {
            SendResult::Delivered(_) => 0,
            SendResult::Rejected { .. } => 3,
            _ => 4,
        }
    }

    /// The report as `key: value` lines, for stdout.
    pub fn render(&self, request: &SendTest) -> String {
        let upstream = |u: Option<Upstream>| match u {
            Some(Upstream { status: 0, reason }) => format!("none ({reason})"),
            Some(Upstream { status, reason }) => format!("{status} {reason}"),
            None => "not reported by the backend".to_owned(),
        };
        let mut lines = vec![
            format!(
                "app: {} (kind {}, [apps.{}])",
                request.app_id,
                self.kind,
                toml::Value::String(self.app_key.clone())
            ),
            format!("pushkey: {}", request.pushkey),
            format!("event_id: {}", self.event_id),
        ];
        match &self.result {
            SendResult::Delivered(u) => {
                lines.push("outcome: delivered".into());
                lines.push(format!("upstream: {}", upstream(Some(*u))));
            }
            SendResult::Skipped(reason) => {
                lines.push(format!("outcome: skipped ({reason}): nothing was sent"));
            }
            SendResult::Rejected { upstream: u, detail } => {
                lines.push(
                    "outcome: rejected: the token is dead (a homeserver would delete this pusher)"
                        .into(),
                );
                lines.push(format!("upstream: {}", upstream(Some(*u))));
                lines.push(format!("detail: {detail}"));
            }
            SendResult::Failed { class, upstream: u, message } => {
                lines.push(format!("outcome: failed ({class})"));
                lines.push(format!("upstream: {}", upstream(*u)));
                lines.push(format!("error: {message}"));
            }
            SendResult::TimedOut(deadline) => {
                lines.push(format!(
                    "outcome: failed (deadline): no answer within {} (server.request_deadline)",
                    herald_core::config::format_duration(*deadline)
                ));
            }
        }
        lines.push(format!("time: {} ms", self.elapsed.as_millis()));
        let mut text = lines.join("\n");
        text.push('\n');
        text
    }
}

/// Sends one notification to `request.pushkey` through the app of `config` that serves
/// `request.app_id`.
pub async fn send_test(
    config: &Config,
    registry: &BackendRegistry,
    request: &SendTest,
) -> Result<Report, SendTestError> {
    let data = match request.data.as_deref() {
        None => json!({}),
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(data @ Value::Object(_)) => data,
            Ok(_) => {
                return Err(SendTestError::Data("must be a JSON object, like {\"url\": …}".into()))
            }
            Err(e) => return Err(SendTestError::Data(format!("not JSON: {e}"))),
        },
    };
    let router = AppRouter::new(config.apps.keys().map(|key| (key.clone(), key.clone())))
        .map_err(StartError::from)?;
    let key = router.route(&request.app_id).cloned().ok_or_else(|| SendTestError::UnknownApp {
        app_id: request.app_id.clone(),
        configured: config.apps.keys().map(String::as_str).collect::<Vec<_>>().join(", "),
    })?;
    let settings = config.app_settings(&config.apps[&key]);
    let context = AppContext {
        app_id: key.clone(),
        data_dir: config.data_dir.clone(),
        config_dir: config.config_dir.clone(),
        check_only: false,
        metrics: Metrics::new().backend(&key),
    };
    let backend = registry
        .build(&settings.kind, &context, settings.backend)
        .await
        .map_err(|source| StartError::App { app: key.clone(), source })?;

    let event_id = format!("$herald-send-test-{:016x}", fastrand::u64(..));
    let body = notify_body(&event_id, request, &data);
    let parsed = NotifyRequest::from_slice(body.to_string().as_bytes())
        .map_err(|e| SendTestError::Data(e.message))?;
    let notification = parsed.notification;
    let Some(device) = notification.devices.first() else {
        return Err(SendTestError::Data("no device in the test notification".into()));
    };

    let deadline = config.server.request_deadline;
    let started = Instant::now();
    let call = CallContext::new(
        started + deadline,
        1,
        MessageId::from_bytes(fastrand::u128(..).to_le_bytes()),
    );
    let result =
        tokio::time::timeout(deadline, backend.deliver(&call, &notification, device)).await;
    let elapsed = started.elapsed();
    close(backend).await;
    let result = match result {
        Err(_) => SendResult::TimedOut(deadline),
        Ok(Ok(Outcome::Delivered(upstream))) => SendResult::Delivered(upstream),
        Ok(Ok(Outcome::Skipped(reason))) => SendResult::Skipped(reason),
        Ok(Ok(Outcome::TokenDead { upstream, detail })) => {
            SendResult::Rejected { upstream, detail }
        }
        // `Outcome` is non-exhaustive: a new kind of success is reported, not hidden.
        Ok(Ok(other)) => SendResult::Failed {
            class: "other",
            upstream: None,
            message: format!("unexpected outcome {other:?}"),
        },
        Ok(Err(error)) => failed(&error),
    };
    Ok(Report { app_key: key, kind: settings.kind, event_id, result, elapsed })
}

fn failed(error: &DeliveryError) -> SendResult {
    SendResult::Failed {
        class: error.class().as_str(),
        upstream: error.upstream(),
        message: error.message().to_owned(),
    }
}

/// Lets the backend close its upstream connections (HTTP/2 GOAWAY, SMTP QUIT), briefly.
async fn close(backend: Arc<dyn Backend>) {
    let _ = tokio::time::timeout(Duration::from_secs(2), backend.close()).await;
}

/// The notify request a homeserver would send for a fresh message event to this one device.
fn notify_body(event_id: &str, request: &SendTest, data: &Value) -> Value {
    let pushkey_ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let device = json!({
        "app_id": request.app_id,
        "pushkey": request.pushkey,
        "pushkey_ts": pushkey_ts,
        "data": data,
        "tweaks": {},
    });
    let room_id = "!herald-send-test:herald.invalid";
    if data_format(&device) == Some("event_id_only") {
        // What Synapse sends a pusher registered with `"format": "event_id_only"`.
        return json!({"notification": {
            "event_id": event_id,
            "room_id": room_id,
            "counts": {"unread": 1},
            "prio": "high",
            "devices": [device],
        }});
    }
    json!({"notification": {
        "event_id": event_id,
        "room_id": room_id,
        "type": "m.room.message",
        "sender": "@herald:herald.invalid",
        "sender_display_name": "Herald",
        "room_name": "Herald send-test",
        "content": {
            "msgtype": "m.text",
            "body": request.message.as_deref().unwrap_or(DEFAULT_MESSAGE),
        },
        "counts": {"unread": 1},
        "prio": "high",
        "devices": [device],
    }})
}

fn data_format(device: &Value) -> Option<&str> {
    device.get("data")?.get("format")?.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(data: Option<&str>) -> SendTest {
        SendTest {
            app_id: "org.example.log".into(),
            pushkey: "pk".into(),
            data: data.map(str::to_owned),
            message: Some("hello".into()),
        }
    }

    #[test]
    fn the_notification_is_a_message_or_event_id_only_as_the_pusher_asks() {
        let full = notify_body("$e", &request(None), &json!({}));
        assert_eq!(full["notification"]["content"]["body"], "hello");
        assert_eq!(full["notification"]["type"], "m.room.message");
        let ids = notify_body("$e", &request(None), &json!({"format": "event_id_only"}));
        assert_eq!(ids["notification"]["event_id"], "$e");
        assert!(ids["notification"].get("content").is_none());
        assert!(ids["notification"].get("type").is_none());
    }

    #[tokio::test]
    async fn errors_are_configuration_errors() {
        let config = Config::from_toml(
            "[apps.\"org.example.log\"]\nkind = \"log\"\n",
            std::iter::empty(),
            ".".into(),
        )
        .unwrap();
        let registry = BackendRegistry::compiled();
        for (data, expected) in [(Some("[1]"), "JSON object"), (Some("{nope"), "not JSON")] {
            let e = send_test(&config, &registry, &request(data)).await.unwrap_err();
            assert!(e.to_string().contains(expected), "{e}");
            assert_eq!(e.exit_code(), 2);
        }
        let mut unknown = request(None);
        unknown.app_id = "org.other".into();
        let e = send_test(&config, &registry, &unknown).await.unwrap_err();
        assert!(e.to_string().contains("org.other"), "{e}");

        let report = send_test(&config, &registry, &request(None)).await.unwrap();
        assert_eq!(report.exit_code(), 0);
        assert!(report.render(&request(None)).contains("outcome: delivered"));
    }
}
