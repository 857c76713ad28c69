//! The FCM backend behind the whole server: `herald serve` delivers the spec's example to the
//! fake FCM with a token from the fake token endpoint, FCM's answers become the right HTTP
//! answers to the homeserver, and `herald check-config` refuses legacy options. The fakes speak
//! HTTPS with HTTP/2 from this run's test CA, which the app trusts through `upstream.ca_file`.

use std::path::Path;
use std::sync::OnceLock;

use herald_testkit::fcm::{FakeFcm, FakeOauth, FcmAnswer, TokenAnswer, TEST_PROJECT};
use herald_testkit::tls::TestCa;
use serde_json::{json, Value};

use crate::common::{config, free_addr, post, write_config_file, HeraldProcess, TestServer};

const ANDROID_APP: &str = "im.vector.app.android";

fn test_ca() -> &'static TestCa {
    static CA: OnceLock<TestCa> = OnceLock::new();
    CA.get_or_init(TestCa::new)
}

/// The token endpoint, FCM, and the app's table; writes the CA and the service account to `dir`.
async fn fakes(dir: &Path) -> (FakeOauth, FakeFcm, String) {
    let oauth = FakeOauth::start(test_ca()).await;
    let fcm = FakeFcm::start(test_ca(), &oauth, TEST_PROJECT).await;
    test_ca().write_pem(dir);
    oauth.service_account(TEST_PROJECT).write(dir);
    let app = format!(
        r#"
        [apps."{ANDROID_APP}"]
        kind = "fcm"
        service_account_file = "service-account.json"
        endpoint = "{}"
        [apps."{ANDROID_APP}".upstream]
        ca_file = "test-ca.pem"
        "#,
        fcm.base_url()
    );
    (oauth, fcm, app)
}

/// The spec's example request, to an Android device.
fn spec_example(event_id: &str, pushkey: &str) -> Value {
    herald_testkit::notify::message_with_devices(
        event_id,
        vec![json!({
            "app_id": ANDROID_APP,
            "pushkey": pushkey,
            "pushkey_ts": 12345678,
            "data": {},
            "tweaks": {"sound": "bing"}
        })],
    )
}

#[tokio::test]
async fn herald_serve_delivers_the_spec_example_with_a_token_from_the_fake() {
    let dir = tempfile::tempdir().unwrap();
    let (oauth, fcm, app) = fakes(dir.path()).await;
    let addr = free_addr();
    let config_path = write_config_file(dir.path(), addr, &app);
    let herald = HeraldProcess::spawn(&config_path, addr).await;

    let body = spec_example("$3957tyerfgewrf384", "fcm-token-1").to_string();
    let first = post(addr, "/_matrix/push/v1/notify", body.clone()).await;
    let retry = post(addr, "/_matrix/push/v1/notify", body).await;
    herald.kill();

    assert_eq!(first, (200, json!({"rejected": []})));
    assert_eq!(retry, (200, json!({"rejected": []})));
    let received = fcm.received();
    assert_eq!(received.len(), 1, "the identical retry was deduplicated");
    let message = &received[0];
    assert_eq!(message.rejection, None, "FCM's checks passed");
    assert_eq!(message.version, http::Version::HTTP_2);
    let data = message.data().expect("data");
    assert_eq!(data["event_id"], "$3957tyerfgewrf384");
    assert_eq!(data["sender_display_name"], "Major Tom");
    assert_eq!(data["content_body"], "I'm floating in a most peculiar way.");
    assert_eq!(data["unread"], "2");
    assert_eq!(message.message.as_ref().unwrap()["token"], "fcm-token-1");
    // The token came from the fake endpoint (fetched at start-up by the warm-up, or for the
    // first message: once either way).
    assert_eq!(oauth.grants(), 1);
    assert!(message.bearer.as_deref().unwrap().starts_with("ya29.fake-"));
}

#[tokio::test]
async fn fcm_answers_become_the_right_http_answers() {
    let dir = tempfile::tempdir().unwrap();
    let (oauth, fcm, app) = fakes(dir.path()).await;
    let server = TestServer::start(&config(dir.path(), &app)).await;
    let cases: Vec<(&str, Vec<FcmAnswer>, u16, bool)> = vec![
        ("delivered", vec![FcmAnswer::Ok], 200, false),
        ("unregistered", vec![FcmAnswer::unregistered()], 200, true),
        ("not-a-token", vec![FcmAnswer::not_a_token()], 200, true),
        ("mismatch", vec![FcmAnswer::sender_id_mismatch()], 200, true),
        ("bad-ttl", vec![FcmAnswer::invalid_argument("message.android.ttl", "bad")], 200, false),
        (
            "quota",
            vec![FcmAnswer::quota_exceeded().with_retry_after("1"), FcmAnswer::Ok],
            200,
            false,
        ),
        ("down", vec![FcmAnswer::unavailable(); 4], 502, false),
        ("denied", vec![FcmAnswer::permission_denied()], 502, false),
        ("expired", vec![FcmAnswer::unauthenticated(), FcmAnswer::Ok], 200, false),
    ];
    for (i, (name, answers, status, rejected)) in cases.into_iter().enumerate() {
        fcm.script(answers);
        let pushkey = format!("token-{name}");
        let (got, body) = server.notify(&spec_example(&format!("$e{i}"), &pushkey)).await;
        assert_eq!(got, status, "{name}: {body}");
        if status == 200 {
            let expected: Vec<&str> = if rejected { vec![pushkey.as_str()] } else { vec![] };
            assert_eq!(body, json!({ "rejected": expected }), "{name}");
        }
    }
    // The token endpoint down: "later", never "rejected".
    oauth.expire_tokens();
    oauth.script(vec![TokenAnswer::unavailable(); 8]);
    let (got, body) = server.notify(&spec_example("$oauth-down", "token-x")).await;
    assert_eq!(got, 502, "{body}");
    let metrics = server.metrics().await;
    for reason in ["UNREGISTERED", "INVALID_TOKEN", "SENDER_ID_MISMATCH", "QUOTA_EXCEEDED", "ok"] {
        assert!(
            metrics.lines().any(|l| l.starts_with("herald_upstream_responses_total")
                && l.contains(&format!(r#"reason="{reason}""#))),
            "{reason} not counted:\n{metrics}"
        );
    }
    assert!(metrics.contains("herald_fcm_token_fetches_total{"), "{metrics}");
    server.stop().await;
}

#[test]
fn check_config_refuses_legacy_fcm_options() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("sa.json"), "{}").unwrap();
    let path = write_config_file(
        dir.path(),
        free_addr(),
        &format!(
            r#"
            [apps."{ANDROID_APP}"]
            kind = "fcm"
            service_account_file = "sa.json"
            [apps."{ANDROID_APP}".fcm_options]
            content_available = true
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
    assert!(stderr.contains("fcm_options.content_available"), "{stderr}");
    assert!(stderr.contains("content-available"), "names the v1 field: {stderr}");
}
