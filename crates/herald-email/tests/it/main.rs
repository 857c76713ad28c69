//! Integration tests of the email backend against a real SMTP server (aiosmtpd, scripted) on
//! 127.0.0.1, with STARTTLS or implicit TLS from the test CA and AUTH.
//!
//! One test binary with modules, to keep link time down.

#![allow(clippy::unwrap_used)]

mod behaviour;
mod delivery;
mod limits;
mod outcomes;

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use herald_core::backend::BackendMetrics;
use herald_core::{
    AppContext, Backend, CallContext, DeliveryError, Device, ErrorClass, MessageId, Notification,
    Outcome, Upstream,
};
use herald_email::{EmailBackend, EmailConfig};
use herald_testkit::smtp::{FakeSmtp, Security};
use herald_testkit::tls::TestCa;
use serde_json::{json, Value};

/// The app_id of the app under test.
const APP: &str = "org.example.email";
/// The login the fakes require.
const USER: &str = "herald";
const PASSWORD: &str = "correct horse battery staple";
/// The recipient of most tests.
const ALICE: &str = "alice@example.org";

/// The test CA of this run.
fn test_ca() -> &'static TestCa {
    static CA: OnceLock<TestCa> = OnceLock::new();
    CA.get_or_init(TestCa::new)
}

/// A submission server: STARTTLS required, AUTH required.
async fn fake() -> FakeSmtp {
    FakeSmtp::start(test_ca(), Security::StartTls, Some((USER, PASSWORD))).await
}

/// A built backend, its directory, and its metrics registry.
struct Setup {
    backend: Arc<dyn Backend>,
    registry: Arc<Mutex<prometheus_client::registry::Registry>>,
    _dir: tempfile::TempDir,
}

impl Setup {
    /// A backend aimed at `fake`, trusting the test CA, logging in with the right password.
    fn new(fake: &FakeSmtp) -> Self {
        Self::with(fake, |_| {})
    }

    fn with(fake: &FakeSmtp, adjust: impl FnOnce(&mut EmailConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = config(fake, dir.path(), adjust);
        let registry = Arc::default();
        let backend = EmailBackend::new(&app(dir.path(), &registry), &config)
            .unwrap_or_else(|e| panic!("build: {e}"));
        Setup { backend: Arc::new(backend), registry, _dir: dir }
    }

    async fn deliver(&self, n: &Notification, device: &Device) -> Result<Outcome, DeliveryError> {
        self.backend.deliver(&call(1, [7; 16]), n, device).await
    }

    /// The backend's metrics, as OpenMetrics text.
    fn metrics(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry.lock().unwrap())
            .unwrap();
        text
    }
}

/// The configuration of an app aimed at `fake`: the password in a file, the test CA as
/// `ca_file`, a client link and an unsubscribe link.
fn config(fake: &FakeSmtp, dir: &Path, adjust: impl FnOnce(&mut EmailConfig)) -> EmailConfig {
    std::fs::write(dir.join("smtp-password"), format!("{PASSWORD}\n")).unwrap();
    let mut c = EmailConfig::new(fake.url(), "Example Chat <notify@example.org>");
    c.username = Some(USER.into());
    c.password = Some("smtp-password".into());
    c.ca_file = Some(test_ca().write_pem(dir));
    c.reply_to = Some("support@example.org".into());
    c.allowed_domains = vec!["example.org".into(), "*.example.org".into()];
    c.client_url = Some("https://app.example.org/#/room/{room_id}/{event_id}".into());
    c.unsubscribe_url = Some("https://app.example.org/unsubscribe?address={address}".into());
    adjust(&mut c);
    c
}

fn app(dir: &Path, registry: &Arc<Mutex<prometheus_client::registry::Registry>>) -> AppContext {
    AppContext {
        metrics: BackendMetrics::new(Arc::clone(registry), APP),
        ..AppContext::new(APP, dir)
    }
}

/// Attempt `attempt` of the message `id`, due in 30 s.
fn call(attempt: u32, id: [u8; 16]) -> CallContext {
    CallContext::new(Instant::now() + Duration::from_secs(30), attempt, MessageId::from_bytes(id))
}

/// A notification from the `notification` object of a notify request (without `devices`).
fn notification(fields: Value) -> Notification {
    let mut fields = fields;
    fields["devices"] = json!([]);
    let body = json!({ "notification": fields }).to_string();
    herald_core::NotifyRequest::from_slice(body.as_bytes()).unwrap().notification
}

/// The spec's example notification.
fn spec_example() -> Notification {
    notification(json!({
        "event_id": "$3957tyerfgewrf384", "room_id": "!slw48wfj34rtnrf:example.com",
        "type": "m.room.message", "sender": "@exampleuser:matrix.org",
        "sender_display_name": "Major Tom", "room_name": "Mission Control",
        "room_alias": "#exampleroom:matrix.org", "prio": "high",
        "content": {"msgtype": "m.text", "body": "I'm floating in a most peculiar way."},
        "counts": {"unread": 2, "missed_calls": 1}
    }))
}

/// An email pusher for `address`.
fn device(address: &str) -> Device {
    Device::new(APP, address)
}

fn delivered() -> Outcome {
    Outcome::Delivered(Upstream::new(250, "ok"))
}

/// Asserts a failure of `class` with `status` and `reason`.
fn assert_failed(
    result: &Result<Outcome, DeliveryError>,
    class: ErrorClass,
    status: u16,
    reason: &str,
) {
    match result {
        Err(e)
            if e.class() == class
                && e.upstream().map(|u| (u.status, u.reason)) == Some((status, reason)) => {}
        other => panic!("expected {class:?} {status} {reason}, got {other:?}"),
    }
}

/// Asserts a dead token with `status` and `reason`.
fn assert_dead(result: &Result<Outcome, DeliveryError>, status: u16, reason: &str) {
    match result {
        Ok(Outcome::TokenDead { upstream, .. })
            if upstream.status == status && upstream.reason == reason => {}
        other => panic!("expected a dead token ({status} {reason}), got {other:?}"),
    }
}
