//! Push-service answers and transport failures → outcomes and error classes (domain.md §4).

use std::time::{Duration, Instant, SystemTime};

use herald_core::{ErrorClass, Outcome};
use herald_testkit::fake_push::{Answer, FakePushService};
use serde_json::json;

use crate::{device, device_with, message, Setup};

#[tokio::test]
async fn each_answer_maps_to_its_outcome() {
    let fake = FakePushService::start().await;
    let setup = Setup::new();
    let cases: [(Answer, Result<&str, ErrorClass>); 13] = [
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
        (Answer::Status(401), Err(ErrorClass::CredentialsRefused)),
        (Answer::Status(403), Err(ErrorClass::CredentialsRefused)),
        (Answer::Status(307), Err(ErrorClass::MessageRefused)),
    ];
    for (i, (answer, expected)) in cases.into_iter().enumerate() {
        let path = format!("/case/{i}");
        let sub = fake.subscribe(&path);
        fake.script(&path, [answer.clone()]);
        let outcome = setup.deliver(&message("x"), &device(&sub, json!({}))).await;
        let got = match &outcome {
            Ok(Outcome::Delivered) => Ok("delivered"),
            Ok(Outcome::TokenDead(_)) => Ok("dead"),
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
            assert!(e.message().contains("127.0.0.1"), "names the origin: {e}");
            assert!(!e.message().contains("/case/"), "never the endpoint path: {e}");
        }
    }
}

#[tokio::test]
async fn retry_after_is_passed_on_in_seconds_and_dates() {
    let fake = FakePushService::start().await;
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
    assert_eq!(setup.deliver(&message("x"), &d).await.expect("script used up"), Outcome::Delivered);
}

#[tokio::test]
async fn a_hanging_push_service_fails_within_the_request_timeout() {
    let fake = FakePushService::start().await;
    let sub = fake.subscribe("/push/a");
    let setup = Setup::with(|c| c.request_timeout = Duration::from_millis(300));
    let d = device(&sub, json!({}));
    fake.script("/push/a", [Answer::Hang]);
    let started = Instant::now();
    let e = setup.deliver(&message("x"), &d).await.expect_err("hang");
    let took = started.elapsed();
    assert_eq!(e.class(), ErrorClass::Transient, "{e}");
    assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(2), "{took:?}");
    assert_eq!(fake.received("/push/a").len(), 1, "one attempt");
    assert_eq!(setup.deliver(&message("x"), &d).await.expect("next works"), Outcome::Delivered);
}

#[tokio::test]
async fn a_reset_connection_or_closed_port_is_transient() {
    let fake = FakePushService::start().await;
    let sub = fake.subscribe("/push/a");
    let setup = Setup::new();
    let d = device(&sub, json!({}));
    fake.script("/push/a", [Answer::Reset]);
    let e = setup.deliver(&message("x"), &d).await.expect_err("reset");
    assert_eq!(e.class(), ErrorClass::Transient, "{e}");
    assert_eq!(fake.received("/push/a").len(), 1, "no silent retry of a sent request");
    assert_eq!(setup.deliver(&message("x"), &d).await.expect("next works"), Outcome::Delivered);

    // A port nobody listens on: connection refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let d = device_with(
        &sub.p256dh,
        json!({"endpoint": format!("http://127.0.0.1:{port}/push/a"), "auth": sub.auth}),
        json!({}),
    );
    let e = setup.deliver(&message("x"), &d).await.expect_err("refused");
    assert_eq!(e.class(), ErrorClass::Transient, "{e}");
}

#[tokio::test]
async fn a_subscription_made_with_another_vapid_key_is_a_credentials_problem() {
    let fake = FakePushService::start().await;
    let other = Setup::new();
    let sub = fake.subscribe_restricted("/push/a", &other.public_key());
    let d = device(&sub, json!({}));

    let setup = Setup::new();
    let e = setup.deliver(&message("x"), &d).await.expect_err("403");
    assert_eq!(e.class(), ErrorClass::CredentialsRefused, "{e}");
    assert_eq!(fake.received("/push/a")[0].status, Some(403));

    assert_eq!(other.deliver(&message("x"), &d).await.expect("right key"), Outcome::Delivered);
}
