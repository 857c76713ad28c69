//! Push-service answers and transport failures → outcomes and error classes (domain.md §4).

use std::time::{Duration, Instant, SystemTime};

use herald_core::{ErrorClass, Outcome, Upstream};
use herald_testkit::fake_push::{Answer, MismatchStyle};
use serde_json::json;

use crate::{assert_refused_with, delivered, device, device_with, fake, message, Setup};

#[tokio::test]
async fn each_answer_maps_to_its_outcome() {
    let fake = fake().await;
    let setup = Setup::new();
    // 401/403 are their own tests: after a 201 from the same origin they mean something else.
    let cases: [(Answer, Result<&str, ErrorClass>); 11] = [
        (Answer::Status(201), Ok("delivered")),
        (Answer::Status(200), Ok("delivered")),
        (Answer::Status(202), Ok("delivered")),
        (Answer::Status(404), Ok("dead")),
        (Answer::Status(410), Ok("dead")),
        (Answer::Status(429), Err(ErrorClass::Transient)),
        (Answer::Status(500), Err(ErrorClass::Transient)),
        (Answer::Status(503), Err(ErrorClass::Transient)),
        (Answer::Status(400), Err(ErrorClass::MessageRefused)),
        (Answer::Status(413), Err(ErrorClass::MessageRefused)),
        (Answer::Status(307), Err(ErrorClass::MessageRefused)),
    ];
    for (i, (answer, expected)) in cases.into_iter().enumerate() {
        let path = format!("/case/{i}");
        let sub = fake.subscribe(&path);
        fake.script(&path, [answer.clone()]);
        let outcome = setup.deliver(&message("x"), &device(&sub, json!({}))).await;
        let got = match &outcome {
            Ok(Outcome::Delivered(_)) => Ok("delivered"),
            Ok(Outcome::TokenDead { .. }) => Ok("dead"),
            Ok(other) => panic!("{answer:?}: unexpected {other:?}"),
            Err(e) => Err(e.class()),
        };
        assert_eq!(got, expected, "{answer:?} → {outcome:?}");
        assert_eq!(
            fake.received(&path).len(),
            1,
            "{answer:?}: exactly one attempt, no redirect followed"
        );
        if let Err(e) = &outcome {
            assert!(e.message().contains("https://127.0.0.1"), "names the origin: {e}");
            assert!(!e.message().contains("/case/"), "never the endpoint path: {e}");
        }
    }
}

#[tokio::test]
async fn retry_after_is_passed_on_in_seconds_and_dates() {
    let fake = fake().await;
    let sub = fake.subscribe("/push/a");
    let setup = Setup::new();
    let d = device(&sub, json!({}));
    fake.script(
        "/push/a",
        [
            Answer::retry_after_secs(429, 7),
            Answer::retry_after_date(503, SystemTime::now() + Duration::from_secs(120)),
            Answer::Status(500),
        ],
    );

    let e = setup.deliver(&message("x"), &d).await.expect_err("429");
    assert_eq!((e.class(), e.retry_after()), (ErrorClass::Transient, Some(Duration::from_secs(7))));
    let e = setup.deliver(&message("x"), &d).await.expect_err("503");
    assert_eq!(e.class(), ErrorClass::Transient);
    let wait = e.retry_after().expect("date parsed");
    assert!(wait > Duration::from_secs(110) && wait <= Duration::from_secs(120), "{wait:?}");
    let e = setup.deliver(&message("x"), &d).await.expect_err("500");
    assert_eq!((e.class(), e.retry_after()), (ErrorClass::Transient, None));
    assert_eq!(setup.deliver(&message("x"), &d).await.expect("script used up"), delivered());
}

#[tokio::test]
async fn a_hanging_push_service_fails_within_the_request_timeout() {
    let fake = fake().await;
    let sub = fake.subscribe("/push/a");
    let setup = Setup::with(|c| c.request_timeout = Duration::from_millis(300));
    let d = device(&sub, json!({}));
    fake.script("/push/a", [Answer::Hang]);
    let started = Instant::now();
    let e = setup.deliver(&message("x"), &d).await.expect_err("hang");
    let took = started.elapsed();
    assert_eq!(e.class(), ErrorClass::Transient, "{e}");
    assert_eq!(e.upstream(), Some(Upstream::no_answer("timeout")));
    assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(2), "{took:?}");
    assert_eq!(fake.received("/push/a").len(), 1, "one attempt");
    assert_eq!(setup.deliver(&message("x"), &d).await.expect("next works"), delivered());
}

#[tokio::test]
async fn a_reset_connection_or_closed_port_is_transient() {
    let fake = fake().await;
    let sub = fake.subscribe("/push/a");
    let setup = Setup::new();
    let d = device(&sub, json!({}));
    fake.script("/push/a", [Answer::Reset]);
    let e = setup.deliver(&message("x"), &d).await.expect_err("reset");
    assert_eq!(e.class(), ErrorClass::Transient, "{e}");
    assert_eq!(e.upstream(), Some(Upstream::no_answer("connect")));
    assert_eq!(fake.received("/push/a").len(), 1, "no silent retry of a sent request");
    assert_eq!(setup.deliver(&message("x"), &d).await.expect("next works"), delivered());

    // A port nobody listens on: connection refused.
    let port = herald_testkit::behaviour::closed_port();
    let d = device_with(
        &sub.p256dh,
        json!({"endpoint": format!("http://127.0.0.1:{port}/push/a"), "auth": sub.auth}),
        json!({}),
    );
    let e = setup.deliver(&message("x"), &d).await.expect_err("refused");
    assert_eq!(e.class(), ErrorClass::Transient, "{e}");
    assert_eq!(e.upstream(), Some(Upstream::no_answer("connect")));
    assert!(!e.message().contains("/push/a"), "origin only: {e}");
}

#[tokio::test]
async fn a_huge_retry_after_is_capped_not_a_panic() {
    let fake = fake().await;
    let sub = fake.subscribe("/push/a");
    let setup = Setup::new();
    fake.script(
        "/push/a",
        [
            Answer::StatusRetryAfter(503, "18446744073709551615".into()),
            Answer::StatusRetryAfter(429, "99999999999999999999999".into()),
        ],
    );
    let d = device(&sub, json!({}));
    for _ in 0..2 {
        let e = setup.deliver(&message("x"), &d).await.expect_err("transient");
        assert_eq!(e.class(), ErrorClass::Transient);
        assert_eq!(e.retry_after(), Some(herald_core::backend::MAX_RETRY_AFTER));
    }
}

#[tokio::test]
async fn vapid_refused_for_everyone_is_a_credentials_problem() {
    let fake = fake().await;
    let setup = Setup::new();
    for status in [401, 403] {
        let path = format!("/push/{status}");
        let sub = fake.subscribe(&path);
        fake.script(&path, [Answer::Status(status)]);
        let e = setup.deliver(&message("x"), &device(&sub, json!({}))).await.expect_err("refused");
        assert_eq!(e.class(), ErrorClass::CredentialsRefused, "{e}");
        assert_eq!(e.reason(), Some("vapid_refused"));
    }
}

#[tokio::test]
async fn a_subscription_made_with_another_key_is_refused_while_others_accept_our_jwt() {
    let fake = fake().await;
    let other = Setup::new();
    let stale = fake.subscribe_restricted("/push/stale", &other.public_key());
    let fresh = fake.subscribe("/push/fresh");
    let setup = Setup::new();

    // No success on this origin yet: a bare 403 could be our key for everyone.
    let e = setup.deliver(&message("x"), &device(&stale, json!({}))).await.expect_err("403");
    assert_eq!(e.class(), ErrorClass::CredentialsRefused, "{e}");
    assert_eq!(fake.received("/push/stale")[0].status, Some(403));

    // Once the origin has accepted our JWT, the same 403 is that subscription's fault: the
    // message is dropped (200, not rejected), and nothing is retried.
    let ok = setup.deliver(&message("x"), &device(&fresh, json!({}))).await;
    assert_eq!(ok.expect("fresh subscription"), delivered());
    let outcome = setup.deliver(&message("x"), &device(&stale, json!({}))).await;
    let text = assert_refused_with(&outcome, "vapid_mismatch");
    assert!(text.contains("https://127.0.0.1") && !text.contains("/push/"), "{text}");
    assert_eq!(fake.received("/push/stale").len(), 2);

    // The subscription works with the key it was made with.
    let right = other.deliver(&message("x"), &device(&stale, json!({}))).await;
    assert_eq!(right.expect("right key"), delivered());
}

#[tokio::test]
async fn fcm_and_autopush_mismatch_answers_are_recognised_without_a_recent_success() {
    let fake = fake().await;
    let other = Setup::new();
    for (style, status) in [(MismatchStyle::Fcm, 403), (MismatchStyle::Autopush, 401)] {
        let path = format!("/push/{style:?}");
        let sub = fake.subscribe_restricted_as(&path, &other.public_key(), style);
        // A fresh backend: the origin never accepted its JWT, so only the answer tells.
        let setup = Setup::new();
        let outcome = setup.deliver(&message("x"), &device(&sub, json!({}))).await;
        let text = assert_refused_with(&outcome, "vapid_mismatch");
        assert_eq!(fake.received(&path)[0].status, Some(status));
        // Neither answer's text (FCM's echoes the endpoint) is repeated.
        assert!(!text.contains(&path) && !text.contains("correspond"), "{text}");
        if style == MismatchStyle::Autopush {
            assert!(text.contains("errno 109"), "the parsed reason: {text}");
        }
    }
}
