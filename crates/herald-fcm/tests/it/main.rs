//! Integration tests of the FCM backend against the fake token endpoint and the fake FCM (real
//! sockets on 127.0.0.1, TLS from the test CA, HTTP/2).
//!
//! One test binary with modules, to keep link time down.

mod behaviour;
mod build;
mod oauth;
mod outcomes;
mod wire;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use herald_core::{
    AppContext, Backend, CallContext, DeliveryError, Device, ErrorClass, MessageId, Notification,
    Outcome,
};
use herald_fcm::{FcmBackend, FcmConfig};
use herald_testkit::fcm::{FakeFcm, FakeOauth, TestServiceAccount, TEST_PROJECT};
use herald_testkit::tls::TestCa;
use serde_json::{json, Value};

/// The test CA of this run: the fakes' certificates come from it, and backends trust it through
/// `upstream.ca_file`.
fn test_ca() -> &'static TestCa {
    static CA: OnceLock<TestCa> = OnceLock::new();
    CA.get_or_init(TestCa::new)
}

/// A token endpoint, an FCM for [`TEST_PROJECT`], a service account file, and a backend built
/// for them.
struct Env {
    oauth: FakeOauth,
    fcm: FakeFcm,
    account: TestServiceAccount,
    backend: Arc<dyn Backend>,
    dir: tempfile::TempDir,
}

impl Env {
    async fn new() -> Self {
        Self::with(|_| {}).await
    }

    async fn with(adjust: impl FnOnce(&mut FcmConfig)) -> Self {
        let oauth = FakeOauth::start(test_ca()).await;
        let fcm = FakeFcm::start(test_ca(), &oauth, TEST_PROJECT).await;
        let account = oauth.service_account(TEST_PROJECT);
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = build(&fcm, &account, dir.path(), adjust).expect("build the backend");
        Env { oauth, fcm, account, backend, dir }
    }

    async fn deliver(&self, n: &Notification, d: &Device) -> Result<Outcome, DeliveryError> {
        self.backend.deliver(&call(Duration::from_secs(30)), n, d).await
    }
}

/// A configuration aimed at `fcm`, trusting the test CA, with `account` written to `dir`.
fn config(fcm: &FakeFcm, account: &TestServiceAccount, dir: &std::path::Path) -> FcmConfig {
    let mut config = FcmConfig::new(account.write(dir));
    config.endpoint = fcm.base_url();
    config.upstream = herald_upstream::UpstreamConfig::default()
        .with_ca_file(test_ca().write_pem(dir))
        .with_request_timeout(Duration::from_secs(5));
    config
}

fn build(
    fcm: &FakeFcm,
    account: &TestServiceAccount,
    dir: &std::path::Path,
    adjust: impl FnOnce(&mut FcmConfig),
) -> Result<Arc<dyn Backend>, herald_core::BuildError> {
    let mut config = config(fcm, account, dir);
    adjust(&mut config);
    block_on(<FcmBackend as herald_core::BackendFactory>::build(&app(dir), config))
}

fn app(dir: &std::path::Path) -> AppContext {
    AppContext::new("im.vector.app.android", dir)
}

/// Runs a build: it reads files and sets up clients without waiting on anything, so it
/// completes on its first poll.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    futures_util::FutureExt::now_or_never(future).expect("the FCM build never waits")
}

fn call(time: Duration) -> CallContext {
    CallContext::new(Instant::now() + time, 1, MessageId::from_bytes([9; 16]))
}

/// A notification from the `notification` object of a notify request (without `devices`).
fn notification(fields: Value) -> Notification {
    let mut fields = fields;
    fields["devices"] = json!([]);
    serde_json::from_value(fields).expect("notification")
}

/// The spec's example notification.
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

/// An Android device with this FCM registration token and pusher data.
fn device(pushkey: &str, data: Value) -> Device {
    let mut device = json!({
        "app_id": "im.vector.app.android", "pushkey": pushkey, "pushkey_ts": 1,
        "tweaks": {"sound": "default"}
    });
    device["data"] = data;
    serde_json::from_value(device).expect("device")
}

fn android() -> Device {
    device("fcm-registration-token-1", json!({}))
}

/// The class of a result, for tables: `Ok("delivered" | "dead" | "skipped")` or the error class.
fn class(result: &Result<Outcome, DeliveryError>) -> Result<&'static str, ErrorClass> {
    match result {
        Ok(Outcome::Delivered(_)) => Ok("delivered"),
        Ok(Outcome::TokenDead { .. }) => Ok("dead"),
        Ok(Outcome::Skipped(_)) => Ok("skipped"),
        Ok(other) => panic!("unexpected outcome {other:?}"),
        Err(e) => Err(e.class()),
    }
}
