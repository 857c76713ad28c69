//! Integration tests of the APNs backend against the fake APNs (`herald_testkit::apns`): real
//! sockets on 127.0.0.1, TLS from the test CA, HTTP/2.
//!
//! One test binary with modules, to keep link time down.

mod behaviour;
mod build;
mod certificate;
mod concurrency;
mod delivery;
mod hosts;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine;
use herald_apns::{ApnsBackend, ApnsConfig};
use herald_core::{
    AppContext, Backend, BackendFactory, CallContext, DeliveryError, Device, ErrorClass, MessageId,
    Notification, Outcome,
};
use herald_testkit::apns::{ApnsSigningKey, FakeApns, FakeApnsBuilder};
use herald_testkit::tls::TestCa;
use herald_upstream::UpstreamConfig;
use serde_json::{json, Value};

/// The topic (bundle id) of the test app.
const TOPIC: &str = "org.example.ios";
/// The app's key in the configuration.
const APP: &str = "org.example.ios";

/// The test CA of this run: the fakes' certificates come from it, and backends trust it through
/// `ca_file`.
fn test_ca() -> &'static TestCa {
    static CA: OnceLock<TestCa> = OnceLock::new();
    CA.get_or_init(TestCa::new)
}

/// The app's provider-token key.
fn test_key() -> &'static ApnsSigningKey {
    static KEY: OnceLock<ApnsSigningKey> = OnceLock::new();
    KEY.get_or_init(ApnsSigningKey::new)
}

/// A fake APNs for token auth with the test key and topic.
fn fake() -> FakeApnsBuilder {
    FakeApns::token(test_ca(), test_key(), TOPIC)
}

/// A backend aimed at a fake, and the directory holding its key and the CA.
struct Setup {
    backend: Arc<dyn Backend>,
    _dir: tempfile::TempDir,
}

/// A token-auth configuration aimed at `fake`, trusting the test CA, files in `dir`.
fn config(fake: &FakeApns, dir: &std::path::Path) -> ApnsConfig {
    let key = test_key().write_p8(dir);
    let mut config = ApnsConfig::token(key, &test_key().key_id, &test_key().team_id, TOPIC);
    config.endpoint = Some(fake.base_url());
    config.upstream = UpstreamConfig::default().with_ca_file(test_ca().write_pem(dir));
    config
}

impl Setup {
    async fn new(fake: &FakeApns) -> Self {
        Self::with(fake, |_| {}).await
    }

    async fn with(fake: &FakeApns, adjust: impl FnOnce(&mut ApnsConfig)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = config(fake, dir.path());
        adjust(&mut config);
        let backend = ApnsBackend::build(&AppContext::new(APP, dir.path()), config)
            .await
            .expect("build the backend");
        Setup { backend, _dir: dir }
    }

    async fn deliver(&self, n: &Notification, device: &Device) -> Result<Outcome, DeliveryError> {
        self.backend.deliver(&call(1, 7), n, device).await
    }
}

/// Attempt `attempt` of message `id`, due in 10 s.
fn call(attempt: u32, id: u8) -> CallContext {
    CallContext::new(
        Instant::now() + Duration::from_secs(10),
        attempt,
        MessageId::from_bytes([id; 16]),
    )
}

/// A call for message number `i` (distinct ids).
fn call_n(i: u64) -> CallContext {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&i.to_be_bytes());
    CallContext::new(Instant::now() + Duration::from_secs(10), 1, MessageId::from_bytes(id))
}

/// A device token's bytes and the pushkey an iOS app registers for it (base64).
fn token(seed: u8) -> ([u8; 32], String) {
    let bytes = [seed; 32];
    (bytes, base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A device with this pushkey and pusher data.
fn device(pushkey: &str, data: Value) -> Device {
    device_with(pushkey, data, json!({"sound": "default"}))
}

fn device_with(pushkey: &str, data: Value, tweaks: Value) -> Device {
    let mut device = serde_json::Map::new();
    device.insert("data".into(), data);
    device.insert("tweaks".into(), tweaks);
    device.insert("app_id".into(), APP.into());
    device.insert("pushkey".into(), pushkey.into());
    device.insert("pushkey_ts".into(), 1.into());
    serde_json::from_value(Value::Object(device)).expect("device")
}

/// A notification from the `notification` object of a notify request (without `devices`).
fn notification(fields: Value) -> Notification {
    let mut fields = fields;
    fields["devices"] = json!([]);
    serde_json::from_value(fields).expect("notification")
}

/// The spec's example notification (full format).
fn message() -> Notification {
    notification(json!({
        "event_id": "$3957tyerfgewrf384", "room_id": "!slw48wfj34rtnrf:example.org",
        "type": "m.room.message", "sender": "@exampleuser:matrix.org",
        "sender_display_name": "Major Tom", "room_name": "Mission Control",
        "room_alias": "#exampleroom:matrix.org", "prio": "high",
        "content": {"msgtype": "m.text", "body": "I'm floating in a most peculiar way."},
        "counts": {"unread": 2, "missed_calls": 1}
    }))
}

/// Asserts a failure of this class and reason code; returns its message.
fn assert_failed(
    result: &Result<Outcome, DeliveryError>,
    class: ErrorClass,
    reason: &str,
) -> String {
    match result {
        Err(e) if e.class() == class && e.reason() == Some(reason) => e.message().to_owned(),
        other => panic!("expected {} ({reason}), got {other:?}", class.as_str()),
    }
}

fn assert_delivered(result: &Result<Outcome, DeliveryError>) {
    assert!(matches!(result, Ok(Outcome::Delivered(u)) if u.status == 200), "{result:?}");
}
