//! FCM's answers (real error bodies) and transport failures → outcomes, error classes and reason
//! codes (the table in `docs/backends/fcm.md`).

use std::time::{Duration, SystemTime};

use herald_core::{ErrorClass, Outcome, Upstream};
use herald_testkit::fcm::{FcmAnswer, TokenAnswer};

use crate::{android, call, class, message, Env};

/// An answer, and the class and reason code it must become.
type Case = (FcmAnswer, (Result<&'static str, ErrorClass>, &'static str));

#[tokio::test]
async fn every_fcm_error_body_maps_to_its_class_and_reason() {
    let env = Env::new().await;
    let dead = |reason| (Ok("dead"), reason);
    let cases: Vec<Case> = vec![
        (FcmAnswer::Ok, (Ok("delivered"), "ok")),
        (FcmAnswer::unregistered(), dead("UNREGISTERED")),
        (FcmAnswer::invalid_token(), dead("INVALID_TOKEN")),
        (FcmAnswer::not_a_token(), dead("INVALID_TOKEN")),
        (FcmAnswer::sender_id_mismatch(), dead("SENDER_ID_MISMATCH")),
        // A Google NOT_FOUND without FCM's detail still says the token is unknown.
        (
            FcmAnswer::error(404, "NOT_FOUND", "Requested entity was not found.", vec![]),
            dead("NOT_FOUND"),
        ),
        (
            FcmAnswer::invalid_argument("message.data[0].value", "Invalid value"),
            (Err(ErrorClass::MessageRefused), "INVALID_ARGUMENT"),
        ),
        (FcmAnswer::quota_exceeded(), (Err(ErrorClass::Transient), "QUOTA_EXCEEDED")),
        (FcmAnswer::unavailable(), (Err(ErrorClass::Transient), "UNAVAILABLE")),
        (FcmAnswer::internal(), (Err(ErrorClass::Transient), "INTERNAL")),
        (FcmAnswer::html(502), (Err(ErrorClass::Transient), "server_error")),
        (FcmAnswer::html(504), (Err(ErrorClass::Transient), "server_error")),
        (
            FcmAnswer::permission_denied(),
            (Err(ErrorClass::CredentialsRefused), "PERMISSION_DENIED"),
        ),
        (
            FcmAnswer::third_party_auth_error(),
            (Err(ErrorClass::CredentialsRefused), "THIRD_PARTY_AUTH_ERROR"),
        ),
        // Not FCM at all (a wrong `endpoint`): says nothing about the token.
        (FcmAnswer::html(404), (Err(ErrorClass::Transient), "not_found")),
        (FcmAnswer::html(400), (Err(ErrorClass::MessageRefused), "bad_request")),
    ];
    for (answer, (expected, reason)) in cases {
        let before = env.fcm.received().len();
        env.fcm.script([answer.clone()]);
        let result = env.deliver(&message(), &android()).await;
        assert_eq!(class(&result), expected, "{answer:?} → {result:?}");
        let upstream = match &result {
            Ok(Outcome::Delivered(u)) | Ok(Outcome::TokenDead { upstream: u, .. }) => *u,
            Err(e) => e.upstream().expect("every error says what FCM answered"),
            Ok(other) => panic!("{other:?}"),
        };
        assert_eq!(upstream.reason, reason, "{answer:?}");
        assert_ne!(upstream.status, 0, "{answer:?}: FCM answered");
        assert_eq!(env.fcm.received().len(), before + 1, "{answer:?}: one request, not retried");
        if let Err(e) = &result {
            assert!(e.message().contains(&env.fcm.base_url()), "names FCM's origin: {e}");
            assert!(!e.message().contains("fcm-registration-token"), "never the token: {e}");
            assert!(!e.message().contains("projects/"), "never the path: {e}");
        }
    }
    assert_eq!(env.oauth.grants(), 1, "the token was reused throughout");
}

#[tokio::test]
async fn truncated_or_garbage_error_bodies_never_reject() {
    let env = Env::new().await;
    let garbage = [
        // Cut off right after the words a careless reader would act on.
        r#"{"error":{"code":404,"status":"NOT_FOUND","details":[{"errorCode":"UNREGISTERED"#,
        r#"{"error":{"code":400,"message":"Invalid value at 'message.token'"#,
        "\u{1}\u{fffd}binary",
        "",
    ];
    for status in [400, 404] {
        for body in garbage {
            env.fcm.script([FcmAnswer::Status {
                status,
                content_type: "application/json",
                body: body.to_owned(),
                retry_after: None,
            }]);
            let result = env.deliver(&message(), &android()).await;
            assert!(
                !matches!(result, Ok(Outcome::TokenDead { .. })),
                "{status} {body:?} rejected the token: {result:?}"
            );
            assert!(result.is_err(), "{status} {body:?}: {result:?}");
        }
    }
}

#[tokio::test]
async fn retry_after_is_passed_on_in_seconds_and_dates() {
    let env = Env::new().await;
    env.fcm.script([
        FcmAnswer::quota_exceeded().with_retry_after("7"),
        FcmAnswer::unavailable().with_retry_after(httpdate::fmt_http_date(
            SystemTime::now() + Duration::from_secs(120),
        )),
        FcmAnswer::quota_exceeded(),
    ]);
    let e = env.deliver(&message(), &android()).await.expect_err("429");
    assert_eq!((e.class(), e.retry_after()), (ErrorClass::Transient, Some(Duration::from_secs(7))));
    let e = env.deliver(&message(), &android()).await.expect_err("503");
    let wait = e.retry_after().expect("a date");
    assert!(wait > Duration::from_secs(110) && wait <= Duration::from_secs(120), "{wait:?}");
    let e = env.deliver(&message(), &android()).await.expect_err("429 without Retry-After");
    assert_eq!((e.class(), e.retry_after()), (ErrorClass::Transient, None));
}

#[tokio::test]
async fn a_401_is_retried_once_with_a_fresh_token_then_refuses_credentials() {
    let env = Env::new().await;
    // One 401 (a token revoked early): the message goes out with a new token.
    env.fcm.script([FcmAnswer::unauthenticated()]);
    let result = env.deliver(&message(), &android()).await;
    assert!(matches!(result, Ok(Outcome::Delivered(_))), "{result:?}");
    let received = env.fcm.received();
    assert_eq!(received.len(), 2);
    assert_ne!(received[0].bearer, received[1].bearer, "the second try has a fresh token");
    assert_eq!(env.oauth.grants(), 2);

    // 401 twice: FCM refuses even a fresh token: the operator's problem, not the device's.
    env.fcm.script([FcmAnswer::unauthenticated(), FcmAnswer::unauthenticated()]);
    let e = env.deliver(&message(), &android()).await.expect_err("refused");
    assert_eq!(e.class(), ErrorClass::CredentialsRefused);
    assert_eq!(e.upstream(), Some(Upstream::new(401, "UNAUTHENTICATED")));
    assert_eq!(env.fcm.received().len(), 4, "exactly one more try, not a loop");
    assert_eq!(env.oauth.grants(), 3);
    // The refused token is not kept: the next message fetches again.
    env.deliver(&message(), &android()).await.expect("delivered");
    assert_eq!(env.oauth.grants(), 4);
}

#[tokio::test]
async fn a_failing_token_endpoint_is_transient_and_never_rejects() {
    let env = Env::new().await;
    env.oauth.script([
        TokenAnswer::unavailable(),
        TokenAnswer::Status(200, "application/json", "{\"access_token\":".to_owned()),
        TokenAnswer::Reset,
        TokenAnswer::Status(429, "text/plain", "slow down".to_owned()),
    ]);
    for (expected_reason, what) in [
        ("oauth_unavailable", "503"),
        ("oauth_garbage", "a cut-off grant"),
        ("oauth_connect", "a reset"),
        ("oauth_unavailable", "429"),
    ] {
        let e = env.deliver(&message(), &android()).await.expect_err(what);
        assert_eq!(e.class(), ErrorClass::Transient, "{what}: {e}");
        assert_eq!(e.upstream(), Some(Upstream::no_answer(expected_reason)), "{what}");
        assert!(e.message().contains(&format!("https://{}", env.oauth.addr())), "{what}: {e}");
    }
    assert!(env.fcm.received().is_empty(), "nothing reached FCM without a token");
    // The endpoint is back.
    env.deliver(&message(), &android()).await.expect("delivered");
}

#[tokio::test]
async fn a_hanging_token_endpoint_fails_within_the_callers_time() {
    let env = Env::new().await;
    env.oauth.script([TokenAnswer::Hang]);
    let started = std::time::Instant::now();
    let e = env
        .backend
        .deliver(&call(Duration::from_millis(600)), &message(), &android())
        .await
        .expect_err("no token");
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    assert_eq!(e.class(), ErrorClass::Transient);
    assert_eq!(e.upstream(), Some(Upstream::no_answer("oauth_timeout")));
}

#[tokio::test]
async fn a_refused_service_account_refuses_credentials() {
    let env = Env::new().await;
    env.oauth.script([TokenAnswer::oauth_error(400, "invalid_grant", "Invalid JWT Signature.")]);
    let e = env.deliver(&message(), &android()).await.expect_err("refused");
    assert_eq!(e.class(), ErrorClass::CredentialsRefused);
    assert_eq!(e.upstream(), Some(Upstream::no_answer("oauth_refused")));
    assert!(e.message().contains("invalid_grant"), "{e}");
    assert!(e.message().contains(&env.account.client_email), "names the account: {e}");
    assert!(!e.message().contains("Invalid JWT"), "never the endpoint's own text: {e}");
}

#[tokio::test]
async fn fcm_hanging_or_unreachable_is_transient() {
    let env = Env::new().await;
    env.fcm.script([FcmAnswer::Hang]);
    let started = std::time::Instant::now();
    let e = env
        .backend
        .deliver(&call(Duration::from_millis(700)), &message(), &android())
        .await
        .expect_err("hang");
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    assert_eq!(
        (e.class(), e.upstream()),
        (ErrorClass::Transient, Some(Upstream::no_answer("timeout")))
    );

    env.fcm.script([FcmAnswer::Reset]);
    let e = env.deliver(&message(), &android()).await.expect_err("reset");
    assert_eq!(e.class(), ErrorClass::Transient);
    assert_eq!(e.upstream().map(|u| u.status), Some(0));
}

#[tokio::test]
async fn unusable_pushkeys_and_pusher_data_are_rejected_without_a_request() {
    let env = Env::new().await;
    let result = env.deliver(&message(), &crate::device("", serde_json::json!({}))).await;
    assert!(
        matches!(result, Ok(Outcome::TokenDead { upstream, .. }) if upstream == Upstream::no_answer("invalid_token"))
    );
    let bad = crate::device("t", serde_json::json!({"default_payload": [1, 2]}));
    let result = env.deliver(&message(), &bad).await;
    assert!(
        matches!(result, Ok(Outcome::TokenDead { upstream, .. }) if upstream == Upstream::no_answer("invalid_default_payload")),
        "{result:?}"
    );
    // A badge reset to zero is not sent (Sygnal's behaviour, the default).
    let reset = crate::notification(serde_json::json!({"counts": {"unread": 0}}));
    assert!(matches!(env.deliver(&reset, &android()).await, Ok(Outcome::Skipped(_))));
    assert!(env.fcm.received().is_empty());
    assert_eq!(env.oauth.grants(), 0, "no token fetched for nothing");
}
