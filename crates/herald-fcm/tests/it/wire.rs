//! What goes over the wire: the exact request FCM receives, over one HTTP/2 connection, and
//! nothing secret in logs.

use std::sync::Arc;

use futures_util::future::join_all;
use herald_core::Outcome;
use herald_testkit::logs::LogCapture;
use http::Version;
use serde_json::json;

use crate::{android, device, message, Env};

#[tokio::test]
async fn fcm_receives_the_exact_message_over_http2() {
    let env = Env::new().await;
    let result = env.deliver(&message(), &android()).await;
    assert!(matches!(result, Ok(Outcome::Delivered(u)) if u.status == 200), "{result:?}");
    let received = env.fcm.received();
    assert_eq!(received.len(), 1);
    let r = &received[0];
    assert_eq!(r.rejection, None, "the fake's checks passed");
    assert_eq!(r.version, Version::HTTP_2);
    assert_eq!(r.project, herald_testkit::fcm::TEST_PROJECT);
    assert!(r.bearer.as_deref().is_some_and(|b| b.starts_with("ya29.")));
    assert_eq!(
        r.headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(
        r.body_text(),
        concat!(
            r#"{"message":{"token":"fcm-registration-token-1","data":{"#,
            r#""content_body":"I'm floating in a most peculiar way.","content_msgtype":"m.text","#,
            r#""event_id":"$3957tyerfgewrf384","missed_calls":"1","prio":"high","#,
            r##""room_alias":"#exampleroom:matrix.org","room_id":"!slw48wfj34rtnrf:example.org","##,
            r#""room_name":"Mission Control","sender":"@exampleuser:matrix.org","#,
            r#""sender_display_name":"Major Tom","type":"m.room.message","unread":"2"},"#,
            r#""android":{"priority":"high"}}}"#
        )
    );
}

#[tokio::test]
async fn default_payload_numbers_and_objects_are_accepted_by_fcm() {
    // Sygnal's #365: a number in default_payload made FCM answer 400 for every message.
    let env = Env::new().await;
    let d = device(
        "t1",
        json!({"default_payload": {"badge": 1, "silent": true, "cfg": {"a": [1, 2]}, "s": "x"}}),
    );
    env.deliver(&message(), &d).await.expect("delivered");
    let r = &env.fcm.received()[0];
    assert_eq!(r.rejection, None);
    let data = r.data().expect("data");
    assert_eq!(data["badge"], "1");
    assert_eq!(data["silent"], "true");
    assert_eq!(data["cfg"], r#"{"a":[1,2]}"#);
}

#[tokio::test]
async fn fcm_options_reach_fcm_and_pass_its_checks() {
    let env = Env::with(|c| {
        c.fcm_options = serde_json::from_value(json!({
            "android": {"ttl": "600s", "collapse_key": "m", "notification": {"channel_id": "c"}},
            "apns": {"headers": {"apns-priority": "10"}, "payload": {"aps": {"mutable-content": 1}}}
        }))
        .expect("options");
    })
    .await;
    env.deliver(&crate::notification(json!({"event_id": "$e", "prio": "low"})), &android())
        .await
        .expect("delivered");
    let r = &env.fcm.received()[0];
    assert_eq!(r.rejection, None);
    let m = r.message.as_ref().expect("message");
    assert_eq!(
        m["android"],
        json!({"ttl": "600s", "collapse_key": "m", "notification": {"channel_id": "c"}, "priority": "normal"})
    );
    assert_eq!(m["apns"]["payload"]["aps"]["mutable-content"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_share_one_http2_connection() {
    let env = Arc::new(Env::new().await);
    env.deliver(&message(), &android()).await.expect("warm");
    let sends = (0..100).map(|_| {
        let env = Arc::clone(&env);
        tokio::spawn(async move { env.deliver(&message(), &android()).await })
    });
    for result in join_all(sends).await {
        assert!(matches!(result.expect("task"), Ok(Outcome::Delivered(_))));
    }
    assert_eq!(env.fcm.connections_accepted(), 1, "one connection multiplexes every send");
    assert!(env.fcm.received().iter().all(|r| r.version == Version::HTTP_2));
}

#[test]
fn nothing_secret_is_logged() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
    let (logs, _guard) = LogCapture::start_json(tracing::Level::TRACE);
    runtime.block_on(async {
        let env = Env::new().await;
        let pushkey = "secret-registration-token-42";
        let d = device(pushkey, json!({}));
        env.fcm.script([
            herald_testkit::fcm::FcmAnswer::unregistered(),
            herald_testkit::fcm::FcmAnswer::unauthenticated(),
        ]);
        let _ = env.deliver(&message(), &d).await;
        let _ = env.deliver(&message(), &d).await;
        let _ = env.deliver(&message(), &device("", json!({}))).await;
        let text = logs.text();
        assert!(text.contains("rejecting fcm pushkey"), "the capture works: {text}");
        let bearers: Vec<String> =
            env.fcm.received().into_iter().filter_map(|r| r.bearer).collect();
        assert!(!bearers.is_empty());
        for secret in bearers.iter().map(String::as_str).chain([
            pushkey,
            "I'm floating",
            "Major Tom",
            "BEGIN PRIVATE KEY",
            &env.account.private_key_pem[40..80],
        ]) {
            assert!(!text.contains(secret), "{secret:?} was logged:\n{text}");
        }
        assert!(!text.contains("messages:send"), "no URL path in logs");
    });
}
