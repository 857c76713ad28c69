//! The APNs backend behind the whole server: `herald serve` delivers the spec's example to the
//! fake APNs over HTTP/2 and TLS from this run's test CA with a provider token, a homeserver's
//! retry is deduplicated, APNs's answers become the right HTTP answers to the homeserver, and
//! `herald check-config` refuses an app that cannot authenticate.

use std::path::Path;
use std::sync::OnceLock;

use base64::Engine;
use herald_testkit::apns::{ApnsAnswer, ApnsSigningKey, FakeApns};
use herald_testkit::tls::TestCa;
use serde_json::{json, Value};

use crate::common::{config, free_addr, post, write_config_file, HeraldProcess, TestServer};

const IOS_APP: &str = "im.vector.app.ios";
const TOPIC: &str = "im.vector.app";

fn test_ca() -> &'static TestCa {
    static CA: OnceLock<TestCa> = OnceLock::new();
    CA.get_or_init(TestCa::new)
}

fn test_key() -> &'static ApnsSigningKey {
    static KEY: OnceLock<ApnsSigningKey> = OnceLock::new();
    KEY.get_or_init(ApnsSigningKey::new)
}

/// The fake APNs and the app's table; writes the CA and the `.p8` key to `dir`.
async fn fake(dir: &Path) -> (FakeApns, String) {
    let apns = FakeApns::token(test_ca(), test_key(), TOPIC).start().await;
    test_ca().write_pem(dir);
    let key = test_key().write_p8(dir);
    let app = format!(
        r#"
        [apps."{IOS_APP}"]
        kind = "apns"
        key_file = "{key}"
        key_id = "{key_id}"
        team_id = "{team_id}"
        topic = "{TOPIC}"
        endpoint = "{endpoint}"
        [apps."{IOS_APP}".upstream]
        ca_file = "test-ca.pem"
        "#,
        key = key.file_name().unwrap().to_str().unwrap(),
        key_id = test_key().key_id,
        team_id = test_key().team_id,
        endpoint = apns.base_url(),
    );
    (apns, app)
}

/// A device token as iOS hands it to the app, base64 as Element iOS registers it.
fn pushkey(byte: u8) -> (String, String) {
    let token = [byte; 32];
    let hex: String = token.iter().map(|b| format!("{b:02x}")).collect();
    (base64::engine::general_purpose::STANDARD.encode(token), hex)
}

/// The spec's example request, to an iOS device.
fn spec_example(event_id: &str, pushkey: &str) -> Value {
    herald_testkit::notify::message_with_devices(
        event_id,
        vec![json!({
            "app_id": IOS_APP,
            "pushkey": pushkey,
            "pushkey_ts": 12345678,
            "data": {},
            "tweaks": {"sound": "bing"}
        })],
    )
}

#[tokio::test]
async fn herald_serve_delivers_the_spec_example_over_http2_and_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (apns, app) = fake(dir.path()).await;
    let addr = free_addr();
    let config_path = write_config_file(dir.path(), addr, &app);
    let herald = HeraldProcess::spawn(&config_path, addr).await;

    let (key, hex) = pushkey(0xa1);
    let body = spec_example("$3957tyerfgewrf384", &key).to_string();
    let first = post(addr, "/_matrix/push/v1/notify", body.clone()).await;
    let retry = post(addr, "/_matrix/push/v1/notify", body).await;
    herald.kill();

    assert_eq!(first, (200, json!({"rejected": []})));
    assert_eq!(retry, (200, json!({"rejected": []})));
    let received = apns.received();
    assert_eq!(received.len(), 1, "the identical retry was deduplicated");
    let request = &received[0];
    assert_eq!(request.rejection, None, "the fake's checks passed");
    assert_eq!(request.path, format!("/3/device/{hex}"));
    assert_eq!(request.header("apns-topic"), Some(TOPIC));
    let jwt = request.jwt.as_ref().expect("a provider token");
    assert_eq!(jwt.iss, test_key().team_id);
    let payload = request.payload.as_ref().expect("JSON");
    assert_eq!(payload["event_id"], "$3957tyerfgewrf384");
    // unread (2) + missed_calls (1), as Sygnal counts the badge.
    assert_eq!(payload["aps"]["badge"], 3);
    assert_eq!(payload["aps"]["alert"]["loc-key"], "MSG_FROM_USER_IN_ROOM_WITH_CONTENT");
    // `tweaks.sound` is the sound the user chose.
    assert_eq!(payload["aps"]["sound"], "bing");
}

#[tokio::test]
async fn apns_answers_become_the_right_http_answers() {
    let dir = tempfile::tempdir().unwrap();
    let (apns, app) = fake(dir.path()).await;
    let server = TestServer::start(&config(dir.path(), &app)).await;
    // (name, answers, HTTP status, rejected)
    let cases: Vec<(&str, Vec<ApnsAnswer>, u16, bool)> = vec![
        ("delivered", vec![ApnsAnswer::Ok], 200, false),
        ("unregistered", vec![ApnsAnswer::Unregistered], 200, true),
        // After a 200 proved the topic and platform right, BadDeviceToken means this token.
        ("bad-token", vec![ApnsAnswer::BAD_DEVICE_TOKEN], 200, true),
        ("too-large", vec![ApnsAnswer::PAYLOAD_TOO_LARGE], 200, false),
        ("unknown-reason", vec![ApnsAnswer::UNKNOWN_REASON], 200, false),
        (
            "busy-then-ok",
            vec![ApnsAnswer::RetryAfter(429, "TooManyRequests", "1".into()), ApnsAnswer::Ok],
            200,
            false,
        ),
        ("down", vec![ApnsAnswer::SERVICE_UNAVAILABLE; 8], 502, false),
        ("key-refused", vec![ApnsAnswer::INVALID_PROVIDER_TOKEN; 2], 502, false),
    ];
    for (i, (name, answers, status, rejected)) in cases.into_iter().enumerate() {
        apns.script(answers);
        let (key, _) = pushkey(i as u8);
        let (got, body) = server.notify(&spec_example(&format!("$e{i}"), &key)).await;
        assert_eq!(got, status, "{name}: {body}");
        if status == 200 {
            let expected: Vec<&str> = if rejected { vec![key.as_str()] } else { vec![] };
            assert_eq!(body, json!({ "rejected": expected }), "{name}");
        }
    }
    // A pushkey that is no device token is rejected without a request.
    let requests = apns.requests();
    let (got, body) = server.notify(&spec_example("$garbage", "not a token!")).await;
    assert_eq!((got, body), (200, json!({"rejected": ["not a token!"]})));
    assert_eq!(apns.requests(), requests);

    let metrics = server.metrics().await;
    for reason in ["Unregistered", "BadDeviceToken", "TooManyRequests", "ok"] {
        assert!(
            metrics.lines().any(|l| l.starts_with("herald_upstream_responses_total")
                && l.contains(&format!(r#"reason="{reason}""#))),
            "{reason} not counted:\n{metrics}"
        );
    }
    server.stop().await;
}

#[test]
fn check_config_refuses_an_app_without_a_way_to_authenticate() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config_file(
        dir.path(),
        free_addr(),
        &format!(
            r#"
            [apps."{IOS_APP}"]
            kind = "apns"
            key_file = "AuthKey.p8"
            topic = "{TOPIC}"
            "#
        ),
    );
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(IOS_APP), "names the app: {stderr}");
    assert!(stderr.contains("key_id") || stderr.contains("certificate_file"), "{stderr}");
}
