//! Integration tests of the WebPush backend against the fake push service on a real socket.
//!
//! One test binary with modules, to keep link time down.

mod behaviour;
mod build;
mod outcomes;
mod payload;
mod pool;
mod privacy;
mod proxy;
mod ssrf;
mod tls;
mod vapid;

use std::path::Path;
use std::sync::{Arc, OnceLock};

use herald_core::{
    AppContext, Backend, BackendFactory, CallContext, DeliveryError, Device, ErrorClass, MessageId,
    Notification, Outcome, Upstream,
};
use herald_testkit::fake_push::{FakePushService, Protocols, TestSubscription};
use herald_testkit::tls::TestCa;
use herald_webpush::{WebPushBackend, WebPushConfig};
use serde_json::{json, Value};

/// The test CA of this run: the fakes' certificates come from it, and backends trust it through
/// `ca_file`.
fn test_ca() -> &'static TestCa {
    static CA: OnceLock<TestCa> = OnceLock::new();
    CA.get_or_init(TestCa::new)
}

/// A fake push service over HTTPS (HTTP/2 and HTTP/1.1 by ALPN), as real push services are.
async fn fake() -> FakePushService {
    FakePushService::start_https(test_ca(), Protocols::Both).await
}

/// A built backend and the directory holding its VAPID key.
struct Setup {
    backend: Arc<dyn Backend>,
    dir: tempfile::TempDir,
}

impl Setup {
    /// A backend whose key is created on first start, which trusts the test CA and may reach
    /// fakes on 127.0.0.1.
    fn new() -> Self {
        Self::with(|_| {})
    }

    fn with(adjust: impl FnOnce(&mut WebPushConfig)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = WebPushConfig::new("vapid.pem", "mailto:ops@example.org");
        config.create_vapid_key_if_missing = true;
        config.allowed_endpoints = vec!["127.0.0.0/8".to_owned()];
        config.ca_file = Some(test_ca().write_pem(dir.path()));
        adjust(&mut config);
        let backend =
            block_on(WebPushBackend::build(&app(dir.path()), config)).expect("build backend");
        Setup { backend, dir }
    }

    fn public_key(&self) -> String {
        herald_webpush::vapid_public_key(&self.dir.path().join("vapid.pem")).expect("public key")
    }

    async fn deliver(
        &self,
        notification: &Notification,
        device: &Device,
    ) -> Result<Outcome, DeliveryError> {
        let call = CallContext::new(
            std::time::Instant::now() + std::time::Duration::from_secs(30),
            1,
            MessageId::from_bytes([7; 16]),
        );
        self.backend.deliver(&call, notification, device).await
    }
}

fn app(dir: &Path) -> AppContext {
    AppContext::new("org.example.web", dir)
}

/// Runs a WebPush build: it loads keys and sets up the client without waiting on anything, so
/// it completes on its first poll (and tests can build inside their runtime).
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    futures_util::FutureExt::now_or_never(future).expect("the WebPush build never waits")
}

/// What the fake push service's 201 becomes.
fn delivered() -> Outcome {
    Outcome::Delivered(Upstream::new(201, "ok"))
}

/// A notification from the `notification` object of a notify request (without `devices`).
fn notification(fields: Value) -> Notification {
    let mut fields = fields;
    fields["devices"] = json!([]);
    serde_json::from_value(fields).expect("notification")
}

/// A full-format message notification.
fn message(body: &str) -> Notification {
    notification(json!({
        "event_id": "$ev1", "room_id": "!room:example.org", "type": "m.room.message",
        "sender": "@alice:example.org", "sender_display_name": "Alice", "room_name": "Tea",
        "room_alias": "#tea:example.org", "prio": "high",
        "content": {"msgtype": "m.text", "body": body, "format": "org.matrix.custom.html",
            "formatted_body": "<b>Hello</b>"},
        "counts": {"unread": 3, "missed_calls": 1}
    }))
}

/// The device a web client registers for `sub`, with `extra` merged into its pusher data.
fn device(sub: &TestSubscription, extra: Value) -> Device {
    device_with(&sub.p256dh, sub.pusher_data(), extra)
}

fn device_with(pushkey: &str, data: Value, extra: Value) -> Device {
    let mut data = data;
    if let (Some(data), Value::Object(extra)) = (data.as_object_mut(), extra) {
        data.extend(extra);
    }
    serde_json::from_value(json!({
        "app_id": "org.example.web", "pushkey": pushkey, "pushkey_ts": 1, "data": data, "tweaks": {}
    }))
    .expect("device")
}

fn assert_dead(outcome: &Result<Outcome, DeliveryError>) -> String {
    match outcome {
        Ok(Outcome::TokenDead { detail, .. }) => detail.clone(),
        other => panic!("expected TokenDead, got {other:?}"),
    }
}

/// Asserts a "message refused" error (200, not rejected) with this reason code.
fn assert_refused_with(outcome: &Result<Outcome, DeliveryError>, reason: &str) -> String {
    match outcome {
        Err(e) if e.class() == ErrorClass::MessageRefused && e.reason() == Some(reason) => {
            e.message().to_owned()
        }
        other => panic!("expected message refused ({reason}), got {other:?}"),
    }
}
