//! The 400 rule end to end: only a request that cannot be routed is refused. Everything a room
//! member or an odd homeserver can put into the optional fields is delivered, and error answers
//! never echo what the body contained.

use serde_json::json;

use crate::common::{config, post, TestServer, APP};

fn with_device(fields: &str) -> String {
    format!(
        r#"{{"notification":{{{fields}"devices":[{{"app_id":"{APP}","pushkey":"k","data":{{}}}}]}}}}"#
    )
}

#[tokio::test]
async fn hostile_optional_fields_are_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&config(dir.path(), "")).await;
    let deep = |depth: usize| format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));
    let bodies = [
        // Nested content: 126 levels were a 400 "recursion limit exceeded"; 60,000 would overflow a
        // recursive parser's stack.
        with_device(&format!(r#""event_id":"$deep1","content":{{"body":"x","n":{}}},"#, deep(126))),
        with_device(&format!(r#""event_id":"$deep2","content":{},"#, deep(60_000))),
        format!(
            r#"{{"notification":{{"event_id":"$deep3","devices":[{{"app_id":"{APP}","pushkey":"k","data":{{"default_payload":{}}},"tweaks":{}}}]}}}}"#,
            deep(1000),
            deep(1000)
        ),
        // Lone surrogates in values and keys.
        with_device(
            r#""event_id":"$sur","sender_display_name":"\ud800","content":{"body":"\udc00","\ud800":1},"#,
        ),
        // Numbers as Python and JavaScript homeservers write them.
        format!(
            r#"{{"notification":{{"event_id":"$num","counts":{{"unread":2.0,"missed_calls":-1}},"devices":[{{"app_id":"{APP}","pushkey":"k","pushkey_ts":1905517653.0}}]}}}}"#
        ),
        with_device(
            r#""event_id":"$huge","counts":{"unread":1e400,"missed_calls":18446744073709551616},"#,
        ),
        // Wrong types of optional fields.
        with_device(
            r#""event_id":"$types","prio":5,"content":"x","counts":[],"sender":{},"room_name":false,"#,
        ),
    ];
    for body in &bodies {
        let (status, answer) = post(server.addr, "/_matrix/push/v1/notify", body.clone()).await;
        assert_eq!(
            (status, answer),
            (200, json!({"rejected": []})),
            "{}",
            &body[..body.len().min(200)]
        );
    }
    assert_eq!(server.backend.deliveries_to("k"), bodies.len());
    server.stop().await;
}

#[tokio::test]
async fn bad_requests_name_the_field_and_echo_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&config(dir.path(), "")).await;
    for (body, field) in [
        (
            r#"{"notification":{"devices":[{"app_id":"a","pushkey":{"token":"SECRET"}}]}}"#,
            "notification.devices[0].pushkey",
        ),
        (r#"{"notification":{"data":"SECRET","devices":"SECRET"}}"#, "notification.devices"),
        (r#"{"notification":"SECRET"}"#, "notification"),
        (
            r#"{"notification":{"devices":[{"app_id":"SECRET"}]}}"#,
            "notification.devices[0].pushkey",
        ),
    ] {
        let (status, answer) = post(server.addr, "/_matrix/push/v1/notify", body.to_owned()).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(answer["errcode"], "M_BAD_JSON");
        let error = answer["error"].as_str().unwrap();
        assert!(error.starts_with(field), "{error} should name {field}");
        assert!(!error.contains("SECRET"), "{error} echoes the body");
    }
    server.stop().await;
}
