//! One notification over the wire: what reaches APNs, and what each answer becomes.

use std::time::{Duration, SystemTime};

use herald_apns::{ApnsBackend, PushType};
use herald_core::{AppContext, ErrorClass, Outcome};
use herald_testkit::apns::ApnsAnswer;
use serde_json::json;

use super::*;

#[tokio::test]
async fn the_spec_example_reaches_apns_over_http2_with_apple_headers() {
    let fake = fake().start().await;
    let setup = Setup::new(&fake).await;
    let (bytes, pushkey) = token(0xa1);
    let call = call(1, 9);
    let result = setup.backend.deliver(&call, &message(), &device(&pushkey, json!({}))).await;
    assert_delivered(&result);

    let received = fake.received();
    assert_eq!(received.len(), 1);
    let r = &received[0];
    assert_eq!(r.rejection, None, "the fake's checks passed");
    assert_eq!(r.path, format!("/3/device/{}", hex(&bytes)));
    assert_eq!(r.header("apns-topic"), Some(TOPIC));
    assert_eq!(r.header("apns-priority"), Some("10"));
    assert_eq!(r.apns_id(), Some(call.message_id().to_uuid().as_str()));
    // Not configured: not sent.
    for absent in ["apns-push-type", "apns-expiration", "apns-collapse-id"] {
        assert_eq!(r.header(absent), None, "{absent}");
    }
    let jwt = r.jwt.as_ref().expect("a provider token");
    assert_eq!(
        (jwt.kid.as_str(), jwt.iss.as_str()),
        (test_key().key_id.as_str(), test_key().team_id.as_str())
    );
    assert_eq!(
        std::str::from_utf8(&r.body).expect("utf-8"),
        r#"{"aps":{"alert":{"loc-args":["Major Tom","Mission Control","I'm floating in a most peculiar way."],"loc-key":"MSG_FROM_USER_IN_ROOM_WITH_CONTENT"},"badge":3,"sound":"default"},"event_id":"$3957tyerfgewrf384","room_id":"!slw48wfj34rtnrf:example.org"}"#
    );
}

#[tokio::test]
async fn configured_headers_and_low_priority() {
    let fake = fake().start().await;
    let setup = Setup::with(&fake, |c| {
        c.push_type = Some(PushType::Alert);
        c.ttl = Some(Duration::from_secs(3600));
        c.collapse_per_room = true;
    })
    .await;
    let mut low = message();
    low.prio = herald_core::Priority::Low;
    let before = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).expect("now").as_secs();
    assert_delivered(&setup.deliver(&low, &device(&token(1).1, json!({}))).await);
    let r = &fake.received()[0];
    assert_eq!(r.header("apns-priority"), Some("5"));
    assert_eq!(r.header("apns-push-type"), Some("alert"));
    assert_eq!(r.header("apns-collapse-id"), Some("!slw48wfj34rtnrf:example.org"));
    let expiration: u64 = r.header("apns-expiration").expect("expiration").parse().expect("number");
    assert!((before + 3600..=before + 3602).contains(&expiration), "{expiration}");
}

#[tokio::test]
async fn the_apns_id_is_stable_across_retries_of_one_message() {
    let fake = fake().start().await;
    let setup = Setup::new(&fake).await;
    let d = device(&token(2).1, json!({}));
    fake.script([ApnsAnswer::SERVICE_UNAVAILABLE]);
    let first = setup.backend.deliver(&call(1, 3), &message(), &d).await;
    assert_failed(&first, ErrorClass::Transient, "ServiceUnavailable");
    assert_delivered(&setup.backend.deliver(&call(2, 3), &message(), &d).await);
    assert_delivered(&setup.backend.deliver(&call(1, 4), &message(), &d).await);
    let ids: Vec<String> =
        fake.received().iter().map(|r| r.apns_id().expect("apns-id").to_owned()).collect();
    assert_eq!(ids[0], ids[1], "a retry carries the same apns-id");
    assert_ne!(ids[1], ids[2], "another message has another");
}

#[tokio::test]
async fn pushkeys_as_hex_when_configured() {
    let fake = fake().start().await;
    let setup = Setup::with(&fake, |c| c.convert_device_token_to_hex = false).await;
    let hex_key = "AB".repeat(32);
    assert_delivered(&setup.deliver(&message(), &device(&hex_key, json!({}))).await);
    assert_eq!(fake.received()[0].device_token.as_deref(), Some("ab".repeat(32).as_str()));
}

#[tokio::test]
async fn undecodable_pushkeys_are_rejected_without_a_request() {
    let fake = fake().start().await;
    let setup = Setup::new(&fake).await;
    for pushkey in ["not base64!", ""] {
        let result = setup.deliver(&message(), &device(pushkey, json!({}))).await;
        assert!(
            matches!(result, Ok(Outcome::TokenDead { upstream, .. }) if upstream.status == 0),
            "{result:?}"
        );
    }
    // A default_payload that is not an object: the pusher can never work.
    let result =
        setup.deliver(&message(), &device(&token(3).1, json!({"default_payload": "x"}))).await;
    assert!(matches!(result, Ok(Outcome::TokenDead { .. })), "{result:?}");
    assert_eq!(fake.requests(), 0);
}

#[tokio::test]
async fn nothing_to_send_is_skipped_without_a_request() {
    let fake = fake().start().await;
    let setup = Setup::new(&fake).await;
    let leave = notification(json!({
        "event_id": "$e", "room_id": "!r:x", "type": "m.room.member", "membership": "leave",
        "sender": "@bob:x"
    }));
    let result = setup.deliver(&leave, &device(&token(4).1, json!({}))).await;
    assert!(matches!(result, Ok(Outcome::Skipped(_))), "{result:?}");
    assert_eq!(fake.requests(), 0);
}

#[tokio::test]
async fn badge_only_and_event_id_only_payloads_on_the_wire() {
    let fake = fake().start().await;
    let setup = Setup::new(&fake).await;
    let badge = notification(json!({"counts": {"unread": 0}}));
    assert_delivered(&setup.deliver(&badge, &device(&token(5).1, json!({}))).await);
    let element = json!({"format": "event_id_only", "default_payload": {"aps": {
        "mutable-content": 1, "content-available": 1,
        "alert": {"loc-key": "SINGLE_UNREAD", "loc-args": []}}}});
    let event_id_only = notification(json!({
        "event_id": "$e1", "room_id": "!r:example.org", "prio": "high",
        "counts": {"unread": 1}
    }));
    assert_delivered(
        &setup.deliver(&event_id_only, &device_with(&token(5).1, element, json!({}))).await,
    );
    let bodies: Vec<String> = fake
        .received()
        .iter()
        .map(|r| String::from_utf8(r.body.to_vec()).expect("utf-8"))
        .collect();
    assert_eq!(bodies[0], r#"{"aps":{"badge":0}}"#);
    assert_eq!(
        bodies[1],
        r#"{"aps":{"alert":{"loc-args":[],"loc-key":"SINGLE_UNREAD"},"content-available":1,"mutable-content":1},"event_id":"$e1","room_id":"!r:example.org","unread_count":1}"#
    );
}

#[tokio::test]
async fn a_long_message_is_shortened_to_fit_and_accepted() {
    let fake = fake().start().await;
    let setup = Setup::new(&fake).await;
    let mut n = message();
    let body = "ü".repeat(3000);
    n.content = Some(
        herald_core::RawObject::parse(&json!({"msgtype": "m.text", "body": body}).to_string())
            .expect("object"),
    );
    assert_delivered(&setup.deliver(&n, &device(&token(6).1, json!({}))).await);
    let r = &fake.received()[0];
    assert!(r.body.len() <= 4096 && r.body.len() > 4090, "{}", r.body.len());
    let payload = r.payload.as_ref().expect("json");
    let cut = payload["aps"]["alert"]["loc-args"][2].as_str().expect("body");
    assert!(body.starts_with(cut));
}

#[tokio::test]
async fn each_answer_maps_to_its_outcome() {
    let fake = fake().start().await;
    let setup = Setup::new(&fake).await;
    let d = device(&token(7).1, json!({}));
    // Before any 200, BadDeviceToken might be the app's topic or platform: not rejected.
    fake.script([ApnsAnswer::BAD_DEVICE_TOKEN]);
    let early = setup.deliver(&message(), &d).await;
    let text = assert_failed(&early, ErrorClass::MessageRefused, "BadDeviceToken");
    assert!(text.contains("`platform`"), "{text}");
    assert_delivered(&setup.deliver(&message(), &d).await);

    let dead = |result: &Result<Outcome, _>, reason: &str| {
        assert!(
            matches!(result, Ok(Outcome::TokenDead { upstream, .. }) if upstream.reason == reason),
            "{reason}: {result:?}"
        )
    };
    fake.script([ApnsAnswer::Unregistered]);
    dead(&setup.deliver(&message(), &d).await, "Unregistered");
    fake.script([ApnsAnswer::BAD_DEVICE_TOKEN]);
    dead(&setup.deliver(&message(), &d).await, "BadDeviceToken");

    let cases = [
        (
            ApnsAnswer::EXPIRED_PROVIDER_TOKEN,
            ErrorClass::CredentialsRefused,
            "ExpiredProviderToken",
        ),
        (
            ApnsAnswer::INVALID_PROVIDER_TOKEN,
            ErrorClass::CredentialsRefused,
            "InvalidProviderToken",
        ),
        (ApnsAnswer::Error(400, "BadTopic"), ErrorClass::CredentialsRefused, "BadTopic"),
        (ApnsAnswer::TOO_MANY_REQUESTS, ErrorClass::Transient, "TooManyRequests"),
        (ApnsAnswer::INTERNAL_SERVER_ERROR, ErrorClass::Transient, "InternalServerError"),
        (ApnsAnswer::SERVICE_UNAVAILABLE, ErrorClass::Transient, "ServiceUnavailable"),
        (ApnsAnswer::PAYLOAD_TOO_LARGE, ErrorClass::MessageRefused, "PayloadTooLarge"),
        (ApnsAnswer::UNKNOWN_REASON, ErrorClass::MessageRefused, "other"),
        (ApnsAnswer::Raw(400, "\u{1}<html>oops".into()), ErrorClass::MessageRefused, "other"),
        (ApnsAnswer::Raw(410, "Gone".into()), ErrorClass::MessageRefused, "other"),
        (
            ApnsAnswer::RetryAfter(429, "TooManyRequests", "2".into()),
            ErrorClass::Transient,
            "TooManyRequests",
        ),
    ];
    for (answer, class, reason) in cases {
        fake.script([answer.clone()]);
        let result = setup.deliver(&message(), &d).await;
        let text = assert_failed(&result, class, reason);
        assert!(!text.contains("html") && !text.contains(&token(7).1), "{text}");
        if let ApnsAnswer::RetryAfter(..) = answer {
            assert_eq!(result.expect_err("429").retry_after(), Some(Duration::from_secs(2)));
        }
    }
    assert!(fake.received().iter().all(|r| r.rejection.is_none()));
}

#[tokio::test]
async fn a_hung_stream_times_out_as_transient() {
    let fake = fake().start().await;
    let setup = Setup::with(&fake, |c| {
        c.upstream = c.upstream.clone().with_request_timeout(Duration::from_millis(300));
    })
    .await;
    fake.script([ApnsAnswer::Hang]);
    let started = std::time::Instant::now();
    let result = setup.deliver(&message(), &device(&token(8).1, json!({}))).await;
    assert_failed(&result, ErrorClass::Transient, "timeout");
    assert!(started.elapsed() < Duration::from_secs(2));
    // The connection is still good for the next one.
    assert_delivered(&setup.deliver(&message(), &device(&token(8).1, json!({}))).await);
    assert_eq!(fake.connections_accepted(), 1);
}

#[tokio::test]
async fn a_dropped_connection_is_transient_and_replaced() {
    let fake = fake().start().await;
    let setup = Setup::new(&fake).await;
    fake.script([ApnsAnswer::Reset]);
    let result = setup.deliver(&message(), &device(&token(9).1, json!({}))).await;
    let e = result.as_ref().expect_err("no answer");
    assert_eq!(e.class(), ErrorClass::Transient, "{e:?}");
    assert_eq!(e.upstream().map(|u| u.status), Some(0));
    assert_delivered(&setup.deliver(&message(), &device(&token(9).1, json!({}))).await);
    assert_eq!(fake.connections_accepted(), 2);
}

/// A stream the server refused unprocessed (`REFUSED_STREAM`) is sent again at once: that is no
/// retry, nothing was delivered.
#[tokio::test]
async fn a_refused_stream_is_sent_again_at_once() {
    let fake = fake().start().await;
    let setup = Setup::new(&fake).await;
    fake.script([ApnsAnswer::RefusedStream]);
    assert_delivered(&setup.deliver(&message(), &device(&token(12).1, json!({}))).await);
    let received = fake.received();
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].status, None, "refused, not answered");
    assert_eq!(received[1].status, Some(200));
    assert_eq!(received[0].apns_id(), received[1].apns_id());
    // Refused twice in a row: the second refusal is the caller's to retry.
    fake.script([ApnsAnswer::RefusedStream, ApnsAnswer::RefusedStream]);
    let result = setup.deliver(&message(), &device(&token(12).1, json!({}))).await;
    assert_failed(&result, ErrorClass::Transient, "refused_stream");
    assert_eq!(fake.requests(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_provider_token_serves_a_thousand_sends() {
    let fake = fake().start().await;
    let setup = Arc::new(Setup::new(&fake).await);
    let d = device(&token(10).1, json!({}));
    let sends = futures_util::stream::iter(0..1000u64).map(|i| {
        let (setup, d) = (Arc::clone(&setup), d.clone());
        async move { setup.backend.deliver(&call_n(i), &message(), &d).await }
    });
    let results: Vec<_> = futures_util::StreamExt::buffer_unordered(sends, 64).collect().await;
    assert!(results.iter().all(|r| matches!(r, Ok(Outcome::Delivered(_)))));
    let received = fake.received();
    assert_eq!(received.len(), 1000);
    let tokens: std::collections::HashSet<&str> =
        received.iter().map(|r| r.jwt.as_ref().expect("jwt").jwt.as_str()).collect();
    assert_eq!(tokens.len(), 1, "one JWT for every stream");
    assert_eq!(fake.connections_accepted(), 1);
}

/// The provider token is replaced once it is 40 minutes old, and the new one is accepted (APNs
/// takes a new token 20 minutes or more after the last).
#[tokio::test]
async fn the_provider_token_is_refreshed_after_its_age() {
    use std::sync::Mutex;
    let fake = fake().start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    // The backend's clock starts 45 minutes ago (APNs takes tokens up to an hour old).
    let now = Arc::new(Mutex::new(SystemTime::now() - Duration::from_secs(45 * 60)));
    let clock = {
        let now = Arc::clone(&now);
        Arc::new(move || *now.lock().expect("clock"))
    };
    let backend = ApnsBackend::with_clock(
        &AppContext::new(APP, dir.path()),
        &config(&fake, dir.path()),
        clock,
    )
    .expect("build");
    let d = device(&token(11).1, json!({}));
    for i in 0..3 {
        assert_delivered(&backend.deliver(&call_n(i), &message(), &d).await);
    }
    *now.lock().expect("clock") += Duration::from_secs(39 * 60);
    assert_delivered(&backend.deliver(&call_n(3), &message(), &d).await);
    assert_eq!(backend.provider_tokens_signed(), 1, "39 minutes old: still in use");
    *now.lock().expect("clock") += Duration::from_secs(60);
    assert_delivered(&backend.deliver(&call_n(4), &message(), &d).await);
    assert_eq!(backend.provider_tokens_signed(), 2, "40 minutes old: replaced");
    let received = fake.received();
    let jwts: Vec<&herald_testkit::apns::ProviderJwt> =
        received.iter().map(|r| r.jwt.as_ref().expect("jwt")).collect();
    assert!(jwts[..4].iter().all(|j| j.jwt == jwts[0].jwt));
    assert_ne!(jwts[4].jwt, jwts[0].jwt);
    assert_eq!(jwts[4].iat - jwts[0].iat, 40 * 60);
    assert!(received.iter().all(|r| r.status == Some(200)));
}

use futures_util::StreamExt as _;
