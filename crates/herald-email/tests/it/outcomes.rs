//! Every answer of a real SMTP server → its outcome, and the refusals made before any
//! connection.

use herald_testkit::smtp::{Answer, FakeSmtp, Security, Stage};

use crate::*;

#[tokio::test]
async fn a_recipient_refused_at_rcpt_is_a_dead_token_and_the_connection_carries_on() {
    let fake = fake().await;
    let setup = Setup::new(&fake);
    let gone = "gone@example.org";
    fake.script(
        Stage::Rcpt,
        gone,
        vec![Answer::reply(
            "550 5.1.1 <gone@example.org>: Recipient address rejected: User unknown",
        )],
    )
    .await;
    let r = setup.deliver(&spec_example(), &device(gone)).await;
    assert_dead(&r, 550, "5.1.1");
    let Ok(Outcome::TokenDead { detail, .. }) = r else { unreachable!() };
    assert!(!detail.contains("gone@"), "no address in the detail: {detail}");
    assert_eq!(setup.deliver(&spec_example(), &device(ALICE)).await.unwrap(), delivered());
    assert_eq!(fake.connections(), 1);
}

#[tokio::test]
async fn a_policy_refusal_at_rcpt_is_not_a_dead_token() {
    let fake = fake().await;
    let setup = Setup::new(&fake);
    fake.script(
        Stage::Rcpt,
        ALICE,
        vec![Answer::reply("554 5.7.1 <alice@example.org>: Relay access denied")],
    )
    .await;
    let r = setup.deliver(&spec_example(), &device(ALICE)).await;
    assert_failed(&r, ErrorClass::MessageRefused, 554, "policy");
}

#[tokio::test]
async fn a_451_is_transient_and_the_retry_delivers() {
    let fake = fake().await;
    let setup = Setup::new(&fake);
    fake.script(Stage::Data, "*", vec![Answer::reply("451 4.3.0 Try again later")]).await;
    let (n, d) = (spec_example(), device(ALICE));
    let first = setup.backend.deliver(&call(1, [3; 16]), &n, &d).await;
    assert_failed(&first, ErrorClass::Transient, 451, "deferred");
    let second = setup.backend.deliver(&call(2, [3; 16]), &n, &d).await;
    assert_eq!(second.unwrap(), delivered());
    assert_eq!(fake.wait_messages(1, Duration::from_secs(5)).await.len(), 1);
    assert_eq!(fake.transactions(), 2);
}

#[tokio::test]
async fn refused_credentials_are_ours_and_show_at_warm_up() {
    let fake = fake().await;
    // The right user with a wrong password: rewrite the password file.
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&fake, dir.path(), |_| {});
    std::fs::write(dir.path().join("smtp-password"), "wrong\n").unwrap();
    c.password = Some("smtp-password".into());
    let registry = Arc::default();
    let wrong = EmailBackend::new(&app(dir.path(), &registry), &c).unwrap();
    let r = wrong.deliver(&call(1, [1; 16]), &spec_example(), &device(ALICE)).await;
    assert_failed(&r, ErrorClass::CredentialsRefused, 535, "auth_refused");
    // Within LOGIN_BACKOFF the refusal is repeated without another login (no lockout).
    let e = wrong.warm_up().await.unwrap_err();
    assert_eq!((e.class(), e.reason()), (ErrorClass::CredentialsRefused, Some("auth_refused")));
    assert_eq!(e.upstream().map(|u| u.status), Some(535));
    assert!(!e.to_string().contains("wrong"), "{e}");
    let again = wrong.deliver(&call(2, [1; 16]), &spec_example(), &device(ALICE)).await;
    assert_failed(&again, ErrorClass::CredentialsRefused, 535, "auth_refused");
    assert_eq!(fake.auth_failures(), 1);
    assert!(fake.messages().is_empty());
}

#[tokio::test]
async fn a_message_refused_after_data_is_dropped_and_never_rejects() {
    let fake = fake().await;
    let setup = Setup::new(&fake);
    fake.script(
        Stage::Data,
        "*",
        vec![
            Answer::reply("552 5.3.4 Message size exceeds fixed limit"),
            Answer::reply("554 5.6.0 Message content rejected"),
            // A careless reader would see 5.1.1 here; after DATA it is about the message.
            Answer::reply("550 5.1.1 \u{1}<html>mailbox unavailable"),
        ],
    )
    .await;
    let r = setup.deliver(&spec_example(), &device(ALICE)).await;
    assert_failed(&r, ErrorClass::MessageRefused, 552, "too_large");
    let r = setup.deliver(&spec_example(), &device(ALICE)).await;
    assert_failed(&r, ErrorClass::MessageRefused, 554, "content");
    let r = setup.deliver(&spec_example(), &device(ALICE)).await;
    assert_failed(&r, ErrorClass::MessageRefused, 550, "data_refused");
    // The transactions ended cleanly: the same connection delivers the next mail.
    assert_eq!(setup.deliver(&spec_example(), &device(ALICE)).await.unwrap(), delivered());
    assert_eq!(fake.connections(), 1);
}

#[tokio::test]
async fn a_server_that_hangs_is_given_up_at_the_attempts_timeout() {
    let fake = fake().await;
    let setup = Setup::new(&fake);
    fake.script(Stage::Data, "*", vec![Answer::Hang]).await;
    let started = Instant::now();
    let deadline = CallContext::new(
        Instant::now() + Duration::from_millis(700),
        1,
        MessageId::from_bytes([1; 16]),
    );
    let r = setup.backend.deliver(&deadline, &spec_example(), &device(ALICE)).await;
    let took = started.elapsed();
    assert_failed(&r, ErrorClass::Transient, 0, "timeout");
    assert!(took >= Duration::from_millis(650) && took < Duration::from_secs(2), "{took:?}");
    // The hung connection was dropped, not pooled: the next mail opens a new one.
    assert_eq!(setup.deliver(&spec_example(), &device(ALICE)).await.unwrap(), delivered());
    assert_eq!(fake.connections(), 2);
}

#[tokio::test]
async fn a_connection_reset_before_the_answer_is_transient() {
    let fake = fake().await;
    let setup = Setup::new(&fake);
    fake.script(Stage::Data, "*", vec![Answer::Reset]).await;
    let r = setup.deliver(&spec_example(), &device(ALICE)).await;
    assert_failed(&r, ErrorClass::Transient, 0, "closed");
}

#[tokio::test]
async fn no_server_and_an_unknown_ca_are_transient() {
    let port = herald_testkit::behaviour::closed_port();
    let fake = fake().await;
    let setup =
        Setup::with(&fake, |c| c.smtp_url = format!("smtp://127.0.0.1:{port}?tls=required"));
    let r = setup.deliver(&spec_example(), &device(ALICE)).await;
    assert_failed(&r, ErrorClass::Transient, 0, "connect");

    let stranger =
        FakeSmtp::start(&TestCa::new(), Security::StartTls, Some((USER, PASSWORD))).await;
    let setup = Setup::new(&stranger);
    let r = setup.deliver(&spec_example(), &device(ALICE)).await;
    assert_failed(&r, ErrorClass::Transient, 0, "tls");
    assert_eq!(stranger.transactions() + stranger.auth_failures() + stranger.auth_successes(), 0);
}

#[tokio::test]
async fn starttls_required_but_not_offered_sends_nothing() {
    let plain = FakeSmtp::start(test_ca(), Security::Plain, Some((USER, PASSWORD))).await;
    let setup = Setup::with(&plain, |c| c.smtp_url = format!("{}?tls=required", plain.url()));
    let r = setup.deliver(&spec_example(), &device(ALICE)).await;
    assert_failed(&r, ErrorClass::Transient, 0, "starttls_unavailable");
    assert_eq!(
        plain.transactions() + plain.auth_failures() + plain.auth_successes(),
        0,
        "no password in clear"
    );
}

#[tokio::test]
async fn pushkeys_that_are_no_address_or_outside_allowed_domains_are_rejected_unsent() {
    let fake = fake().await;
    let setup = Setup::new(&fake);
    for bad in
        ["not an address", "alice@[127.0.0.1]", "Alice <alice@example.org>", "root@localhost"]
    {
        assert_dead(&setup.deliver(&spec_example(), &device(bad)).await, 0, "invalid_address");
    }
    assert_dead(
        &setup.deliver(&spec_example(), &device("eve@example.net")).await,
        0,
        "domain_not_allowed",
    );
    assert_eq!(
        setup.deliver(&spec_example(), &device("bob@mail.example.org")).await.unwrap(),
        delivered()
    );
    assert_eq!(fake.transactions(), 1);
}

#[tokio::test]
async fn badge_only_updates_never_send_mail() {
    let fake = fake().await;
    let setup = Setup::new(&fake);
    let badge = notification(json!({"event_id": "", "room_id": "", "counts": {"unread": 3}}));
    assert_eq!(
        setup.deliver(&badge, &device(ALICE)).await.unwrap(),
        Outcome::Skipped("badge_only")
    );
    assert_eq!(fake.connections(), 0);
}

#[tokio::test(flavor = "current_thread")]
async fn logs_never_hold_the_address_or_the_server_text() {
    let (logs, _guard) = herald_testkit::logs::LogCapture::start_json(tracing::Level::TRACE);
    let fake = fake().await;
    let setup = Setup::new(&fake);
    fake.script(
        Stage::Rcpt,
        "*",
        vec![Answer::reply("550 5.1.1 <secret-person@example.org> unknown")],
    )
    .await;
    let r = setup.deliver(&spec_example(), &device("secret-person@example.org")).await;
    assert_dead(&r, 550, "5.1.1");
    let _ = setup.deliver(&spec_example(), &device("secret-person@example.net")).await;
    let text = logs.text();
    assert!(text.contains("rejecting email pusher"), "{text}");
    assert!(!text.contains("secret-person"), "{text}");
    assert!(!text.contains("floating"), "{text}");
}
