//! The WebPush backend behind the whole server: the fake push service's answers become the right
//! HTTP answers to the homeserver, and the spec's example is delivered through `herald serve`.
//! The fakes speak HTTPS (HTTP/2 and HTTP/1.1) with a certificate from this run's test CA, which
//! the app trusts through `ca_file`.

use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use herald_testkit::fake_push::{Answer, FakePushService, Protocols, TestSubscription};
use herald_testkit::tls::TestCa;
use serde_json::{json, Value};

use crate::common::{config, free_addr, post, write_config_file, HeraldProcess, TestServer};

const WEB_APP: &str = "org.example.web";

fn test_ca() -> &'static TestCa {
    static CA: OnceLock<TestCa> = OnceLock::new();
    CA.get_or_init(TestCa::new)
}

async fn https_fake() -> FakePushService {
    FakePushService::start_https(test_ca(), Protocols::Both).await
}

/// The app's configuration; writes the test CA next to the configuration (`dir`).
fn webpush_app(dir: &Path, request_timeout: &str) -> String {
    test_ca().write_pem(dir);
    format!(
        r#"
        [apps."{WEB_APP}"]
        kind = "webpush"
        vapid_private_key = "vapid.pem"
        create_vapid_key_if_missing = true
        vapid_subject = "mailto:ops@example.org"
        allowed_endpoints = ["127.0.0.0/8"]
        ca_file = "test-ca.pem"
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
    let fake = https_fake().await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&config(dir.path(), &webpush_app(dir.path(), "10s"))).await;
    let cases: Vec<(&str, Vec<Answer>, u16, bool)> = vec![
        // Before any success on this origin, a 401/403 may be our key for everyone: 5xx.
        ("unauthorized", vec![Answer::Status(401)], 502, false),
        ("forbidden", vec![Answer::Status(403)], 502, false),
        ("created", vec![Answer::CREATED], 200, false),
        ("gone", vec![Answer::Status(410)], 200, true),
        ("not-found", vec![Answer::Status(404)], 200, true),
        ("throttled", vec![Answer::retry_after_secs(429, 1), Answer::CREATED], 200, false),
        ("down", vec![Answer::Status(500); 4], 502, false),
        ("bad-request", vec![Answer::Status(400)], 200, false),
        ("too-large", vec![Answer::Status(413)], 200, false),
        ("reset", vec![Answer::Reset; 4], 502, false),
        // The origin accepted our JWT just now: this subscription was made with another key.
        // Not a dead token (the browser may subscribe again), not our credentials: 200.
        ("stale-key", vec![Answer::Status(403)], 200, false),
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
    assert_eq!(fake.received("/stale-key").len(), 1, "not retried");
    assert!(fake.all_received().iter().all(|r| r.version == http::Version::HTTP_2));
    // Every answer is counted by status and reason, so operators can tell stale subscriptions
    // from our key, and dead tokens from throttling.
    let metrics = server.metrics().await;
    for reason in ["vapid_mismatch", "vapid_refused", "gone", "not_found", "rate_limited", "ok"] {
        assert!(
            metrics.lines().any(|l| l.starts_with("herald_upstream_responses_total")
                && l.contains(&format!(r#"reason="{reason}""#))),
            "{reason} not counted:\n{metrics}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn a_huge_retry_after_answers_502_at_once_without_a_panic() {
    let fake = https_fake().await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&config(dir.path(), &webpush_app(dir.path(), "10s"))).await;
    for (i, (status, value)) in
        [(503, "18446744073709551615"), (429, "99999999999999999999999999")].into_iter().enumerate()
    {
        let path = format!("/huge-{i}");
        let subscription = fake.subscribe(&path);
        fake.script(&path, [Answer::StatusRetryAfter(status, value.to_owned())]);
        let started = Instant::now();
        let (got, body) = server.notify(&spec_example(&format!("$huge{i}"), &subscription)).await;
        // The wait asked for is beyond the request's deadline: answer now, the homeserver
        // retries later. Before, `Instant + Duration` overflowed and the task panicked.
        assert_eq!(got, 502, "{body}");
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        assert_eq!(fake.received(&path).len(), 1, "no retry within the deadline");
    }
    // The server is still fine.
    let ok = fake.subscribe("/ok");
    assert_eq!(server.notify(&spec_example("$ok", &ok)).await.0, 200);
    server.stop().await;
}

#[tokio::test]
async fn what_dns_says_drops_the_message_and_what_the_url_says_rejects_the_pushkey() {
    let fake = https_fake().await;
    let port = fake.addr().port();
    let dir = tempfile::tempdir().unwrap();
    // Only host-name entries: `localhost` may be named but its loopback address is not allowed.
    let app = webpush_app(dir.path(), "10s")
        .replace(r#"allowed_endpoints = ["127.0.0.0/8"]"#, r#"allowed_endpoints = ["localhost"]"#);
    let server = TestServer::start(&config(dir.path(), &app)).await;
    let sub = fake.subscribe("/a");
    let with_endpoint = |endpoint: String| TestSubscription { endpoint, ..sub.clone() };

    // A name that resolves to loopback: refused at connect time, 200 and the pusher is kept.
    let resolved = with_endpoint(format!("https://localhost:{port}/a"));
    let (status, body) = server.notify(&spec_example("$dns", &resolved)).await;
    assert_eq!((status, body), (200, json!({"rejected": []})));

    // What the URL itself says: a literal loopback address and a legacy numeric host.
    for (i, endpoint) in [format!("https://127.0.0.1:{port}/a"), format!("https://127.1:{port}/a")]
        .into_iter()
        .enumerate()
    {
        let literal = with_endpoint(endpoint);
        let (status, body) = server.notify(&spec_example(&format!("$lit{i}"), &literal)).await;
        assert_eq!((status, body), (200, json!({"rejected": [sub.p256dh]})));
    }
    assert_eq!(fake.connections_accepted(), 0);
    let metrics = server.metrics().await;
    assert!(metrics.contains(r#"status="none",reason="endpoint_refused"} 1"#), "{metrics}");
    server.stop().await;
}

#[tokio::test]
async fn hanging_push_service_fails_inside_the_deadline() {
    let fake = https_fake().await;
    let dir = tempfile::tempdir().unwrap();
    // The per-attempt timeout is longer than the request deadline: the deadline decides.
    let server = TestServer::start(&config(dir.path(), &webpush_app(dir.path(), "30s"))).await;
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
    let fake = https_fake().await;
    let subscription = fake.subscribe("/browser-1");
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let config_path = write_config_file(dir.path(), addr, &webpush_app(dir.path(), "10s"));
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

#[tokio::test]
async fn a_push_service_with_an_unknown_ca_is_502_not_rejected() {
    let fake = https_fake().await;
    let dir = tempfile::tempdir().unwrap();
    // Without `ca_file`: only the webpki roots, which do not know the test CA.
    let app = webpush_app(dir.path(), "10s").replace(r#"ca_file = "test-ca.pem""#, "");
    let server = TestServer::start(&config(dir.path(), &app)).await;
    let subscription = fake.subscribe("/untrusted");
    let (status, body) = server.notify(&spec_example("$tls", &subscription)).await;
    // An operator fixes the trust (`ca_file`), and the homeserver's retry then works; the
    // subscription is fine.
    assert_eq!(status, 502, "{body}");
    assert!(fake.all_received().is_empty());
    server.stop().await;
}
