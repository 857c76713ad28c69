//! `herald send-test` end to end: the real binary sends one notification through each backend to
//! its fake upstream (WebPush push service, APNs with token and certificate auth, FCM with its
//! OAuth endpoint, a real SMTP server) and exits 0 when delivered, 3 when the token is dead, 4
//! when the upstream fails (after one attempt, no retries), 2 for the configuration or the
//! arguments; it prints the outcome, the upstream's status and reason and the time, and no
//! secret.

use std::path::Path;
use std::sync::OnceLock;

use herald_testkit::tls::TestCa;

use crate::herald_cli::{herald, Run};

fn test_ca() -> &'static TestCa {
    static CA: OnceLock<TestCa> = OnceLock::new();
    CA.get_or_init(TestCa::new)
}

/// Writes `apps` as `dir/herald.toml` (state in `dir/data`) and the test CA beside it.
fn write_config(dir: &Path, apps: &str) {
    test_ca().write_pem(dir);
    let text = format!("data_dir = \"data\"\n[log]\nlevel = \"warn\"\n{apps}");
    std::fs::write(dir.join("herald.toml"), text).unwrap();
}

async fn send(dir: &Path, app: &str, pushkey: &str, extra: &[&str]) -> Run {
    let mut args = vec!["send-test", "--config", "herald.toml", "--app", app, "--pushkey", pushkey];
    args.extend_from_slice(extra);
    herald(args, dir).await
}

fn assert_reported(run: &Run, code: i32, lines: &[&str]) {
    assert_eq!(run.code, code, "{}", run.said());
    for line in lines {
        assert!(run.stdout.lines().any(|l| l.starts_with(line)), "no `{line}`: {}", run.said());
    }
    assert!(
        run.stdout.lines().any(|l| l.starts_with("time: ") && l.ends_with(" ms")),
        "{}",
        run.said()
    );
}

#[cfg(feature = "webpush")]
#[tokio::test]
async fn webpush_delivered_rejected_and_bad_data() {
    use herald_testkit::fake_push::{Answer, FakePushService, Protocols};

    let fake = FakePushService::start_https(test_ca(), Protocols::Both).await;
    let dir = tempfile::tempdir().unwrap();
    write_config(
        dir.path(),
        r#"
        [apps."org.example.web"]
        kind = "webpush"
        vapid_private_key = "vapid.pem"
        create_vapid_key_if_missing = true
        vapid_subject = "mailto:ops@example.org"
        allowed_endpoints = ["127.0.0.0/8"]
        ca_file = "test-ca.pem"
        "#,
    );
    let browser = fake.subscribe("/browser-1");
    let data = browser.pusher_data().to_string();
    let run = send(
        dir.path(),
        "org.example.web",
        &browser.p256dh,
        &["--data", &data, "--message", "Hello from the test"],
    )
    .await;
    assert_reported(
        &run,
        0,
        &["outcome: delivered", "upstream: 201", "app: org.example.web (kind webpush"],
    );
    let received = fake.received("/browser-1");
    assert_eq!(received.len(), 1, "one notification, one request");
    let payload = received[0].payload.as_ref().expect("decrypted JSON");
    assert_eq!(payload["content"]["body"], "Hello from the test");
    // The VAPID key is never shown.
    let key = std::fs::read_to_string(dir.path().join("vapid.pem")).unwrap();
    assert!(!run.stdout.contains("PRIVATE KEY") && !run.stderr.contains("PRIVATE KEY"));
    assert!(!run.stdout.contains(key.trim()));

    // The push service says the subscription is gone: rejected, exit 3.
    let gone = fake.subscribe("/gone");
    fake.script("/gone", [Answer::Status(410)]);
    let run = send(
        dir.path(),
        "org.example.web",
        &gone.p256dh,
        &["--data", &gone.pusher_data().to_string()],
    )
    .await;
    assert_reported(&run, 3, &["outcome: rejected", "upstream: 410"]);

    // A server error: one attempt, no retries, exit 4.
    let busy = fake.subscribe("/busy");
    fake.script("/busy", [Answer::Status(503), Answer::Status(503)]);
    let run = send(
        dir.path(),
        "org.example.web",
        &busy.p256dh,
        &["--data", &busy.pusher_data().to_string()],
    )
    .await;
    assert_reported(&run, 4, &["outcome: failed (transient)", "upstream: 503"]);
    assert_eq!(fake.received("/busy").len(), 1, "exactly one attempt");

    // Arguments and configuration: exit 2, naming the problem.
    for (args, expected) in
        [(vec!["--data", "{not json"], "--data"), (vec!["--data", "[1, 2]"], "JSON object")]
    {
        let run = send(dir.path(), "org.example.web", &browser.p256dh, &args).await;
        assert_eq!(run.code, 2, "{}", run.said());
        assert!(run.stderr.contains(expected), "{}", run.said());
    }
    let run = send(dir.path(), "org.example.unknown", "pk", &[]).await;
    assert_eq!(run.code, 2, "{}", run.said());
    assert!(run.stderr.contains("org.example.unknown"), "{}", run.said());
    let run = herald(
        ["send-test", "--config", "missing.toml", "--app", "a", "--pushkey", "p"],
        dir.path(),
    )
    .await;
    assert_eq!(run.code, 2, "{}", run.said());
}

#[cfg(feature = "apns")]
mod apns {
    use base64::Engine;
    use herald_testkit::apns::{ApnsAnswer, ApnsCertificateAuthority, ApnsSigningKey, FakeApns};

    use super::*;

    const TOPIC: &str = "im.vector.app";

    fn pushkey(byte: u8) -> String {
        base64::engine::general_purpose::STANDARD.encode([byte; 32])
    }

    /// A fake APNs for `key` and the app's table pointing at it. Each `send-test` run signs a
    /// new provider token, and (like Apple) the fake refuses a token renewed within 20 minutes
    /// of the last one: every case gets a fake of its own.
    async fn token_fake(dir: &Path, key: &ApnsSigningKey) -> FakeApns {
        let apns = FakeApns::token(test_ca(), key, TOPIC).start().await;
        let p8 = key.write_p8(dir);
        write_config(
            dir,
            &format!(
                r#"
                [apps."im.vector.app.*"]
                kind = "apns"
                key_file = "{}"
                key_id = "{}"
                team_id = "{}"
                topic = "{TOPIC}"
                endpoint = "{}"
                [apps."im.vector.app.*".upstream]
                ca_file = "test-ca.pem"
                "#,
                p8.file_name().unwrap().to_str().unwrap(),
                key.key_id,
                key.team_id,
                apns.base_url()
            ),
        );
        apns
    }

    #[tokio::test]
    async fn token_auth_delivered_rejected_and_failed() {
        let key = ApnsSigningKey::new();
        let dir = tempfile::tempdir().unwrap();

        // A glob key serves the app_id, as for the notify endpoint.
        let apns = token_fake(dir.path(), &key).await;
        let run = send(dir.path(), "im.vector.app.ios", &pushkey(1), &[]).await;
        assert_reported(
            &run,
            0,
            &["outcome: delivered", "upstream: 200", "app: im.vector.app.ios (kind apns"],
        );
        let received = apns.received();
        assert_eq!(received.len(), 1);
        assert_eq!(received[0].rejection, None, "the fake's checks passed");
        let payload = received[0].payload.as_ref().unwrap();
        assert_eq!(payload["aps"]["alert"]["loc-args"][2], "Test notification from Herald");
        assert!(!run.stdout.contains(key.pem().trim()) && !run.stderr.contains("PRIVATE KEY"));

        let apns = token_fake(dir.path(), &key).await;
        apns.script([ApnsAnswer::Unregistered]);
        let run = send(dir.path(), "im.vector.app.ios", &pushkey(2), &[]).await;
        assert_reported(&run, 3, &["outcome: rejected", "upstream: 410 Unregistered"]);

        let apns = token_fake(dir.path(), &key).await;
        apns.script([ApnsAnswer::SERVICE_UNAVAILABLE, ApnsAnswer::SERVICE_UNAVAILABLE]);
        let run = send(dir.path(), "im.vector.app.ios", &pushkey(3), &[]).await;
        assert_reported(&run, 4, &["outcome: failed (transient)", "upstream: 503"]);
        assert_eq!(apns.requests(), 1, "exactly one attempt");

        // Not a device token at all: rejected before any request.
        let apns = token_fake(dir.path(), &key).await;
        let run = send(dir.path(), "im.vector.app.ios", "not a token!", &[]).await;
        assert_reported(&run, 3, &["outcome: rejected", "upstream: none"]);
        assert_eq!(apns.requests(), 0);
    }

    /// Sygnal's `certfile` (certificate and key in one PEM), as `import-sygnal` maps it:
    /// `certificate_file` and `key_file` both name it, and Apple's TLS handshake accepts it.
    #[tokio::test]
    async fn certificate_auth_from_one_combined_pem() {
        let client_ca = ApnsCertificateAuthority::new();
        let cert = client_ca.issue(TOPIC, std::time::Duration::from_secs(86_400), false);
        let apns = FakeApns::certificate(test_ca(), &client_ca, TOPIC).start().await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("apns.pem"), format!("{}{}", cert.cert_pem, cert.key_pem))
            .unwrap();
        write_config(
            dir.path(),
            &format!(
                r#"
                [apps."im.vector.app.ios"]
                kind = "apns"
                certificate_file = "apns.pem"
                key_file = "apns.pem"
                endpoint = "{}"
                [apps."im.vector.app.ios".upstream]
                ca_file = "test-ca.pem"
                "#,
                apns.base_url()
            ),
        );
        let run = send(dir.path(), "im.vector.app.ios", &pushkey(7), &[]).await;
        assert_reported(&run, 0, &["outcome: delivered", "upstream: 200"]);
        assert_eq!(apns.received()[0].header("apns-topic"), Some(TOPIC));
    }
}

#[cfg(feature = "fcm")]
#[tokio::test]
async fn fcm_delivered_and_rejected_with_a_token_from_the_fake_oauth() {
    use herald_testkit::fcm::{FakeFcm, FakeOauth, FcmAnswer, TEST_PROJECT};

    let oauth = FakeOauth::start(test_ca()).await;
    let fcm = FakeFcm::start(test_ca(), &oauth, TEST_PROJECT).await;
    let dir = tempfile::tempdir().unwrap();
    let account = oauth.service_account(TEST_PROJECT);
    account.write(dir.path());
    write_config(
        dir.path(),
        &format!(
            r#"
            [apps."im.vector.app.android"]
            kind = "fcm"
            service_account_file = "service-account.json"
            endpoint = "{}"
            [apps."im.vector.app.android".upstream]
            ca_file = "test-ca.pem"
            "#,
            fcm.base_url()
        ),
    );
    let run = send(dir.path(), "im.vector.app.android", "fcm-token-1", &["--message", "Hi"]).await;
    assert_reported(&run, 0, &["outcome: delivered", "upstream: 200"]);
    let received = fcm.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].rejection, None, "FCM's checks passed");
    assert_eq!(received[0].data().unwrap()["content_body"], "Hi");
    assert_eq!(oauth.grants(), 1);
    let secret = account.private_key_pem.lines().nth(1).unwrap();
    assert!(!run.stdout.contains(secret) && !run.stderr.contains(secret));
    assert!(!run.stdout.contains("ya29.") && !run.stderr.contains("ya29."), "no access token");

    fcm.script([FcmAnswer::unregistered()]);
    let run = send(dir.path(), "im.vector.app.android", "fcm-token-2", &[]).await;
    assert_reported(&run, 3, &["outcome: rejected", "upstream: 404"]);
}

#[cfg(feature = "email")]
#[tokio::test]
async fn email_delivered_and_rejected_through_a_real_smtp_server() {
    use herald_testkit::smtp::{FakeSmtp, Security};

    let smtp =
        FakeSmtp::start(test_ca(), Security::StartTls, Some(("herald", "smtp-s3cret"))).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("smtp-password"), "smtp-s3cret\n").unwrap();
    write_config(
        dir.path(),
        &format!(
            r#"
            [apps."org.example.email"]
            kind = "email"
            smtp_url = "{}"
            username = "herald"
            password = "smtp-password"
            from = "Example Chat <notify@example.org>"
            ca_file = "test-ca.pem"
            allowed_domains = ["example.org"]
            "#,
            smtp.url()
        ),
    );
    let run = send(
        dir.path(),
        "org.example.email",
        "alice@example.org",
        &["--message", "Mail from send-test"],
    )
    .await;
    assert_reported(&run, 0, &["outcome: delivered", "upstream: 250"]);
    let messages = smtp.wait_messages(1, std::time::Duration::from_secs(5)).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].rcpt_to, ["alice@example.org"]);
    assert!(messages[0].part("text/plain").unwrap().contains("Mail from send-test"));
    assert!(!run.stdout.contains("smtp-s3cret") && !run.stderr.contains("smtp-s3cret"));

    // A domain the app does not mail: rejected without a transaction.
    let run = send(dir.path(), "org.example.email", "eve@example.net", &[]).await;
    assert_reported(&run, 3, &["outcome: rejected"]);
    assert_eq!(smtp.transactions(), 1);
}
