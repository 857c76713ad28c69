//! The WebPush backend behind the whole server: the fake push service's answers become the right
//! HTTP answers to the homeserver, and the spec's example is delivered through `herald serve`.

use std::time::{Duration, Instant};

use herald_testkit::fake_push::{Answer, FakePushService, TestSubscription};
use serde_json::{json, Value};

use crate::common::{config, free_addr, post, write_config_file, HeraldProcess, TestServer};

const WEB_APP: &str = "org.example.web";

fn webpush_app(request_timeout: &str) -> String {
    format!(
        r#"
        [apps."{WEB_APP}"]
        kind = "webpush"
        vapid_private_key = "vapid.pem"
        create_vapid_key_if_missing = true
        vapid_subject = "mailto:ops@example.org"
        allowed_endpoints = ["127.0.0.1:*"]
        request_timeout = "{request_timeout}"
        "#
    )
}

/// The spec's example request, with its device turned into a WebPush subscription.
fn spec_example(event_id: &str, subscription: &TestSubscription) -> Value {
    herald_testkit::notify::message_with_devices(
        event_id,
        vec![json!({
            "app_id": WEB_APP,
            "pushkey": subscription.p256dh,
            "pushkey_ts": 12345678,
            "data": subscription.pusher_data(),
            "tweaks": {"sound": "bing"}
        })],
    )
}

#[tokio::test]
async fn upstream_answers_become_the_right_http_answers() {
    let fake = FakePushService::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&config(dir.path(), &webpush_app("10s"))).await;
    let cases: Vec<(&str, Vec<Answer>, u16, bool)> = vec![
        ("created", vec![Answer::CREATED], 200, false),
        ("gone", vec![Answer::Status(410)], 200, true),
        ("not-found", vec![Answer::Status(404)], 200, true),
        ("throttled", vec![Answer::retry_after_secs(429, 1), Answer::CREATED], 200, false),
        ("down", vec![Answer::Status(500); 4], 502, false),
        ("bad-request", vec![Answer::Status(400)], 200, false),
        ("too-large", vec![Answer::Status(413)], 200, false),
        ("unauthorized", vec![Answer::Status(401)], 502, false),
        ("forbidden", vec![Answer::Status(403)], 502, false),
        ("reset", vec![Answer::Reset; 4], 502, false),
    ];
    for (i, (path, answers, status, rejected)) in cases.into_iter().enumerate() {
        let subscription = fake.subscribe(&format!("/{path}"));
        fake.script(&format!("/{path}"), answers);
        let (got, body) = server.notify(&spec_example(&format!("$e{i}"), &subscription)).await;
        assert_eq!(got, status, "{path}: {body}");
        if status == 200 {
            let expected: Vec<&str> =
                if rejected { vec![subscription.p256dh.as_str()] } else { vec![] };
            assert_eq!(body, json!({ "rejected": expected }), "{path}");
        }
    }
    let throttled = fake.received("/throttled");
    assert_eq!(throttled.len(), 2, "retried once after Retry-After");
    assert!(throttled[1].payload.is_some(), "the retry decrypted");
    assert_eq!(fake.received("/down").len(), 4, "bounded retries");
    server.stop().await;
}

#[tokio::test]
async fn hanging_push_service_fails_inside_the_deadline() {
    let fake = FakePushService::start().await;
    let dir = tempfile::tempdir().unwrap();
    // The per-attempt timeout is longer than the request deadline: the deadline decides.
    let server = TestServer::start(&config(dir.path(), &webpush_app("30s"))).await;
    let subscription = fake.subscribe("/hang");
    fake.script("/hang", [Answer::Hang]);
    let started = Instant::now();
    let (status, _) = server.notify(&spec_example("$hang", &subscription)).await;
    assert_eq!(status, 504);
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    server.stop().await;
}

#[tokio::test]
async fn spec_example_through_herald_serve_is_delivered_once() {
    let fake = FakePushService::start().await;
    let subscription = fake.subscribe("/browser-1");
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let config_path = write_config_file(dir.path(), addr, &webpush_app("10s"));
    let herald = HeraldProcess::spawn(&config_path, addr).await;

    let body = spec_example("$3957tyerfgewrf384", &subscription).to_string();
    let first = post(addr, "/_matrix/push/v1/notify", body.clone()).await;
    let retry = post(addr, "/_matrix/push/v1/notify", body).await;
    herald.kill();

    assert_eq!(first, (200, json!({"rejected": []})));
    assert_eq!(retry, (200, json!({"rejected": []})));
    let received = fake.received("/browser-1");
    assert_eq!(received.len(), 1, "the identical retry was deduplicated");
    let push = &received[0];
    assert_eq!(push.rejection, None);
    let payload = push.payload.as_ref().expect("decrypted JSON");
    assert_eq!(payload["event_id"], "$3957tyerfgewrf384");
    assert_eq!(payload["sender_display_name"], "Major Tom");
    assert_eq!(payload["content"]["body"], "I'm floating in a most peculiar way.");
    assert_eq!(payload["unread"], 2);
    assert_eq!(push.header("content-encoding"), Some("aes128gcm"));
}
