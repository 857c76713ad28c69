//! What arrives at the mail server: envelope, headers, parts, escaping, the link; TLS modes;
//! connection reuse.

use herald_testkit::smtp::{Answer, FakeSmtp, Security, Stage};

use crate::*;

const WITHIN: Duration = Duration::from_secs(5);

#[tokio::test]
async fn the_spec_example_arrives_over_starttls_with_auth_headers_parts_and_link() {
    let fake = fake().await;
    let setup = Setup::new(&fake);
    let outcome = setup.deliver(&spec_example(), &device(ALICE)).await;
    assert_eq!(outcome.unwrap(), delivered());

    let m = &fake.wait_messages(1, WITHIN).await[0];
    assert_eq!(
        (m.mail_from.as_str(), m.rcpt_to.as_slice()),
        ("notify@example.org", &[ALICE.to_owned()][..])
    );
    assert!(m.tls, "STARTTLS before the message");
    assert_eq!(m.auth.as_deref(), Some(USER));
    let header = |name| m.header(name).unwrap_or_else(|| panic!("no {name}"));
    assert_eq!(header("From"), "Example Chat <notify@example.org>");
    assert_eq!(header("To"), ALICE);
    assert_eq!(header("Reply-To"), "support@example.org");
    assert_eq!(header("Subject"), "Major Tom in Mission Control");
    assert_eq!(header("Auto-Submitted"), "auto-generated");
    let id = MessageId::from_bytes([7; 16]).to_uuid();
    assert_eq!(header("Message-ID"), format!("<{id}@example.org>"));
    assert_eq!(
        header("List-Unsubscribe"),
        "<https://app.example.org/unsubscribe?address=alice@example.org>"
    );
    assert!(m.header("Date").is_some());

    let types: Vec<&str> = m.parts.iter().map(|p| p.content_type.as_str()).collect();
    assert_eq!(types, ["multipart/alternative", "text/plain", "text/html"]);
    let link = "https://app.example.org/#/room/!slw48wfj34rtnrf:example.com/$3957tyerfgewrf384";
    let text = m.part("text/plain").unwrap();
    assert!(
        text.starts_with(
            "Major Tom wrote in Mission Control:\n\nI'm floating in a most peculiar way.\n"
        ),
        "{text}"
    );
    assert!(text.contains(&format!("Open it: {link}")), "{text}");
    let html = m.part("text/html").unwrap();
    assert!(
        html.contains("<strong>Major Tom</strong> wrote in <strong>Mission Control</strong>"),
        "{html}"
    );
    assert!(html.contains("I&#x27;m floating in a most peculiar way."), "{html}");
    // The link, HTML-escaped in the attribute (a browser reads `&#x2f;` as `/`).
    assert!(
        html.contains(&format!("<a href=\"{}\">Open it</a>", link.replace('/', "&#x2f;"))),
        "{html}"
    );
    // Only 7-bit on the wire.
    assert!(m.raw.is_ascii());
}

#[tokio::test]
async fn a_hostile_sender_and_room_arrive_as_text() {
    let fake = fake().await;
    let setup = Setup::new(&fake);
    let n = notification(json!({
        "event_id": "$e", "room_id": "!r:example.org", "type": "m.room.message",
        "sender": "@mallory:example.org",
        "sender_display_name": "<img src=x onerror=alert(1)>",
        "room_name": "Lobby\r\nBcc: everyone@example.org\r\nX-Injected: yes",
        "content": {"msgtype": "m.text", "body": "<script>alert(2)</script>"}
    }));
    setup.deliver(&n, &device(ALICE)).await.unwrap();
    let m = &fake.wait_messages(1, WITHIN).await[0];
    assert_eq!(m.rcpt_to, [ALICE], "no extra recipient");
    assert!(
        m.headers_named("Bcc").is_empty() && m.headers_named("X-Injected").is_empty(),
        "{:?}",
        m.headers
    );
    assert_eq!(
        m.header("Subject").unwrap(),
        "<img src=x onerror=alert(1)> in Lobby Bcc: everyone@example.org X-Injected: yes"
    );
    let html = m.part("text/html").unwrap();
    assert!(!html.contains("<img") && !html.contains("<script"), "{html}");
    assert!(html.contains("&lt;img src=x onerror=alert(1)&gt;"), "{html}");
    assert!(html.contains("&lt;script&gt;alert(2)&lt;&#x2f;script&gt;"), "{html}");
}

#[tokio::test]
async fn the_message_id_is_stable_across_retries_and_differs_between_messages() {
    let fake = fake().await;
    let setup = Setup::new(&fake);
    let (n, d) = (spec_example(), device(ALICE));
    for (attempt, id) in [(1, [1; 16]), (2, [1; 16]), (1, [2; 16])] {
        setup.backend.deliver(&call(attempt, id), &n, &d).await.unwrap();
    }
    let ids: Vec<String> = fake
        .wait_messages(3, WITHIN)
        .await
        .iter()
        .map(|m| m.header("Message-ID").unwrap().to_owned())
        .collect();
    assert_eq!(ids[0], ids[1]);
    assert_ne!(ids[0], ids[2]);
}

#[tokio::test]
async fn implicit_tls_works_and_connections_are_reused() {
    let fake = FakeSmtp::start(test_ca(), Security::Implicit, Some((USER, PASSWORD))).await;
    let setup = Setup::new(&fake);
    assert!(fake.url().starts_with("smtps://"));
    for _ in 0..4 {
        assert_eq!(setup.deliver(&spec_example(), &device(ALICE)).await.unwrap(), delivered());
    }
    // A refused recipient is RSET, and the connection carries on.
    fake.script(Stage::Rcpt, "bob@example.org", vec![Answer::reply("452 4.2.2 Mailbox full")])
        .await;
    let r = setup.deliver(&spec_example(), &device("bob@example.org")).await;
    assert_failed(&r, ErrorClass::Transient, 452, "rcpt_deferred");
    setup.deliver(&spec_example(), &device(ALICE)).await.unwrap();
    let messages = fake.wait_messages(5, WITHIN).await;
    assert!(messages.iter().all(|m| m.tls));
    assert_eq!((fake.connections(), fake.auth_successes()), (1, 1), "one connection, one login");
    assert!(
        setup.metrics().contains(&format!("email_connections_opened_total{{app=\"{APP}\"}} 1")),
        "{}",
        setup.metrics()
    );
}

#[tokio::test]
async fn a_connection_closed_while_idle_is_replaced_without_losing_the_mail() {
    let fake = fake().await;
    let setup = Setup::new(&fake);
    setup.deliver(&spec_example(), &device(ALICE)).await.unwrap();
    // The server drops the pooled connection at the next MAIL FROM, before anything is sent.
    fake.script(Stage::Mail, "*", vec![Answer::Reset]).await;
    assert_eq!(setup.deliver(&spec_example(), &device(ALICE)).await.unwrap(), delivered());
    assert_eq!(fake.wait_messages(2, WITHIN).await.len(), 2);
    assert_eq!(fake.connections(), 2);
}

#[tokio::test]
async fn warm_up_logs_in_once_and_the_first_mail_uses_that_connection() {
    let fake = fake().await;
    let setup = Setup::new(&fake);
    setup.backend.warm_up().await.unwrap();
    assert_eq!((fake.connections(), fake.auth_successes()), (1, 1));
    setup.deliver(&spec_example(), &device(ALICE)).await.unwrap();
    assert_eq!(fake.connections(), 1);
    setup.backend.close().await;
}

#[tokio::test]
async fn plain_smtp_on_loopback_without_auth() {
    let fake = FakeSmtp::start(test_ca(), Security::Plain, None).await;
    let setup = Setup::with(&fake, |c| {
        c.username = None;
        c.password = None;
        c.ca_file = None;
    });
    assert_eq!(setup.deliver(&spec_example(), &device(ALICE)).await.unwrap(), delivered());
    let m = &fake.wait_messages(1, WITHIN).await[0];
    assert!(!m.tls && m.auth.is_none());
}
