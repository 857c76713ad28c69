//! The email backend behind the whole server: `herald serve` mails the spec's example to a real
//! SMTP server (aiosmtpd, STARTTLS from this run's test CA, AUTH), a homeserver's retry of the
//! same event sends no second mail, a badge-only update sends none, and the abuse limit and the
//! domain list hold end to end.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use herald_testkit::smtp::{FakeSmtp, Security};
use herald_testkit::tls::TestCa;
use serde_json::{json, Value};

use crate::common::{
    config, free_addr, outcome_count, post, write_config_file, HeraldProcess, TestServer,
};

const MAIL_APP: &str = "org.example.email";

fn test_ca() -> &'static TestCa {
    static CA: OnceLock<TestCa> = OnceLock::new();
    CA.get_or_init(TestCa::new)
}

/// A submission server and the app's table; writes the CA and the password file to `dir`.
async fn fake(dir: &Path, extra: &str) -> (FakeSmtp, String) {
    let smtp = FakeSmtp::start(test_ca(), Security::StartTls, Some(("herald", "s3cret"))).await;
    test_ca().write_pem(dir);
    std::fs::write(dir.join("smtp-password"), "s3cret\n").unwrap();
    let app = format!(
        r#"
        [apps."{MAIL_APP}"]
        kind = "email"
        smtp_url = "{}"
        username = "herald"
        password = "smtp-password"
        from = "Example Chat <notify@example.org>"
        ca_file = "test-ca.pem"
        allowed_domains = ["example.org"]
        client_url = "https://app.example.org/#/room/{{room_id}}"
        {extra}
        "#,
        smtp.url()
    );
    (smtp, app)
}

fn spec_example(event_id: &str, address: &str) -> Value {
    herald_testkit::notify::message_with_devices(
        event_id,
        vec![json!({
            "app_id": MAIL_APP, "pushkey": address, "pushkey_ts": 12345678, "data": {},
            "tweaks": {"sound": "bing"}
        })],
    )
}

#[tokio::test]
async fn herald_serve_mails_the_spec_example_once() {
    let dir = tempfile::tempdir().unwrap();
    let (smtp, app) = fake(dir.path(), "").await;
    let addr = free_addr();
    let herald = HeraldProcess::spawn(&write_config_file(dir.path(), addr, &app), addr).await;

    let body = spec_example("$3957tyerfgewrf384", "alice@example.org").to_string();
    let first = post(addr, "/_matrix/push/v1/notify", body.clone()).await;
    let retry = post(addr, "/_matrix/push/v1/notify", body).await;
    let badge = herald_testkit::notify::badge(MAIL_APP, "alice@example.org", 0).to_string();
    let badge = post(addr, "/_matrix/push/v1/notify", badge).await;
    herald.kill();

    assert_eq!(first, (200, json!({"rejected": []})));
    assert_eq!(retry, (200, json!({"rejected": []})));
    assert_eq!(badge, (200, json!({"rejected": []})));
    let messages = smtp.wait_messages(1, Duration::from_secs(5)).await;
    assert_eq!(messages.len(), 1, "the retry was deduplicated, the badge update sent nothing");
    let m = &messages[0];
    assert_eq!(m.rcpt_to, ["alice@example.org"]);
    assert!(m.tls && m.auth.as_deref() == Some("herald"));
    assert_eq!(m.header("Subject"), Some("Major Tom in Mission Control"));
    assert!(m.part("text/plain").unwrap().contains("I'm floating in a most peculiar way."));
    assert!(m
        .part("text/plain")
        .unwrap()
        .contains("https://app.example.org/#/room/!slw48wfj34rtnrf:example.com"));
}

#[tokio::test]
async fn limits_and_refusals_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let (smtp, app) = fake(dir.path(), "max_per_address = 2\nwindow = \"1h\"").await;
    let server = TestServer::start(&config(dir.path(), &app)).await;
    for i in 0..4 {
        let (status, body) =
            server.notify(&spec_example(&format!("$e{i}"), "bob@example.org")).await;
        assert_eq!((status, body), (200, json!({"rejected": []})));
    }
    // Not a plain address, or a domain not on the list: rejected, nothing sent.
    for pushkey in ["bob", "eve@example.net"] {
        let (status, body) = server.notify(&spec_example("$x", pushkey)).await;
        assert_eq!((status, body), (200, json!({ "rejected": [pushkey] })));
    }
    let metrics = server.metrics().await;
    server.stop().await;
    assert_eq!(smtp.wait_messages(2, Duration::from_secs(5)).await.len(), 2);
    assert_eq!(smtp.transactions(), 2);
    assert_eq!(outcome_count(&metrics, MAIL_APP, "delivered"), 2);
    assert_eq!(outcome_count(&metrics, MAIL_APP, "skipped"), 2);
    assert_eq!(outcome_count(&metrics, MAIL_APP, "rejected"), 2);
    assert!(
        metrics.contains(&format!("herald_email_rate_limited_total{{app=\"{MAIL_APP}\"}} 2")),
        "{metrics}"
    );
}
