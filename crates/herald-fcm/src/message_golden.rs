//! Golden messages: the exact JSON Herald sends FCM for each kind of notification.

use serde_json::{json, Value};

use super::{build, Built};
use crate::config::{FcmConfig, MessageOptions};
use herald_core::{Device, Notification};

fn options(toml_text: &str) -> MessageOptions {
    let config: FcmConfig =
        toml::from_str(&format!("service_account_file = \"sa.json\"\n{toml_text}"))
            .expect("config");
    config.validate().expect("valid")
}

fn notification(fields: Value) -> Notification {
    let mut fields = fields;
    fields["devices"] = json!([]);
    serde_json::from_value(fields).expect("notification")
}

fn device(data: Value) -> Device {
    let mut device = json!({
        "app_id": "im.vector.app.android", "pushkey": "fcm-token-1", "pushkey_ts": 1,
        "tweaks": {"sound": "default"}
    });
    device["data"] = data;
    serde_json::from_value(device).expect("device")
}

/// The body `build` makes, as text.
fn body(n: &Notification, d: &Device, o: &MessageOptions) -> String {
    match build(n, d, o) {
        Built::Send { body, .. } => String::from_utf8(body).expect("UTF-8"),
        other => panic!("expected a message, got {other:?}"),
    }
}

/// The spec's example notification (full format).
fn full() -> Notification {
    notification(json!({
        "event_id": "$3957tyerfgewrf384", "room_id": "!slw48wfj34rtnrf:example.org",
        "type": "m.room.message", "sender": "@exampleuser:matrix.org",
        "sender_display_name": "Major Tom", "room_name": "Mission Control",
        "room_alias": "#exampleroom:matrix.org", "prio": "high",
        "content": {"msgtype": "m.text", "body": "I'm floating in a most peculiar way.",
                    "format": "org.matrix.custom.html", "formatted_body": "<b>floating</b>",
                    "m.relates_to": {"rel_type": "m.thread"}, "count": 3},
        "counts": {"unread": 2, "missed_calls": 1}
    }))
}

#[test]
fn full_message() {
    let got = body(&full(), &device(json!({})), &options(""));
    assert_eq!(
        got,
        concat!(
            r#"{"message":{"token":"fcm-token-1","data":{"#,
            r#""content_body":"I'm floating in a most peculiar way.","#,
            r#""content_format":"org.matrix.custom.html","#,
            r#""content_formatted_body":"<b>floating</b>","content_msgtype":"m.text","#,
            r#""event_id":"$3957tyerfgewrf384","missed_calls":"1","prio":"high","#,
            r##""room_alias":"#exampleroom:matrix.org","room_id":"!slw48wfj34rtnrf:example.org","##,
            r#""room_name":"Mission Control","sender":"@exampleuser:matrix.org","#,
            r#""sender_display_name":"Major Tom","type":"m.room.message","unread":"2"},"#,
            r#""android":{"priority":"high"}}}"#
        )
    );
}

#[test]
fn event_id_only() {
    // What Synapse sends for `format: event_id_only`; the device has no tweaks.
    let n = notification(json!({
        "event_id": "$ev", "room_id": "!room:example.org", "prio": "low",
        "counts": {"unread": 1}
    }));
    let got = body(&n, &device(json!({"format": "event_id_only"})), &options(""));
    assert_eq!(
        got,
        concat!(
            r#"{"message":{"token":"fcm-token-1","data":{"event_id":"$ev","prio":"normal","#,
            r#""room_id":"!room:example.org","unread":"1"},"android":{"priority":"normal"}}}"#
        )
    );
}

#[test]
fn badge_only_with_and_without_zero_badges() {
    let badge = |unread: u64| notification(json!({"counts": {"unread": unread}}));
    let d = device(json!({}));
    assert_eq!(
        body(&badge(5), &d, &options("")),
        r#"{"message":{"token":"fcm-token-1","data":{"prio":"high","unread":"5"},"android":{"priority":"high"}}}"#
    );
    // Sygnal's behaviour: the reset to zero never reaches the app.
    assert!(matches!(build(&badge(0), &d, &options("")), Built::Skip(_)));
    assert_eq!(
        body(&badge(0), &d, &options("send_zero_badge = true")),
        r#"{"message":{"token":"fcm-token-1","data":{"prio":"high","unread":"0"},"android":{"priority":"high"}}}"#
    );
    // Counts off: badge-only updates are skipped, and events carry no counts.
    let off = options("send_badge_counts = false");
    assert!(matches!(build(&badge(5), &d, &off), Built::Skip(_)));
    let n = notification(json!({"event_id": "$e", "counts": {"unread": 5, "missed_calls": 0}}));
    assert_eq!(
        body(&n, &d, &off),
        r#"{"message":{"token":"fcm-token-1","data":{"event_id":"$e","prio":"high"},"android":{"priority":"high"}}}"#
    );
    // A badge-only update as Synapse sends it: empty strings and nulls are absent.
    let n = notification(json!({"id": "", "type": null, "sender": "", "counts": {"unread": 3}}));
    assert_eq!(
        body(&n, &d, &options("")),
        r#"{"message":{"token":"fcm-token-1","data":{"prio":"high","unread":"3"},"android":{"priority":"high"}}}"#
    );
}

#[test]
fn invite() {
    let n = notification(json!({
        "event_id": "$invite", "room_id": "!r:example.org", "type": "m.room.member",
        "sender": "@alice:example.org", "sender_display_name": "Alice", "room_name": "Tea",
        "membership": "invite", "user_is_target": true,
        "content": {"membership": "invite", "displayname": "Bob", "is_direct": false},
        "counts": {"unread": 0}
    }));
    assert_eq!(
        body(&n, &device(json!({})), &options("")),
        concat!(
            r#"{"message":{"token":"fcm-token-1","data":{"content_displayname":"Bob","#,
            r#""content_membership":"invite","event_id":"$invite","membership":"invite","#,
            r#""prio":"high","room_id":"!r:example.org","room_name":"Tea","#,
            r#""sender":"@alice:example.org","sender_display_name":"Alice","#,
            r#""type":"m.room.member"},"android":{"priority":"high"}}}"#
        )
    );
}

#[test]
fn default_payload_values_become_strings() {
    // As the homeserver sent it: numbers keep their spelling (`2.50`).
    let d: Device = serde_json::from_str(
        r#"{"app_id": "a", "pushkey": "fcm-token-1", "data": {"default_payload": {
            "n": 42, "f": 2.50, "yes": true, "no": false, "nothing": null, "s": "text",
            "nested": {"a": [1, {"b": "c"}]}, "list": ["x", 2],
            "room_id": "overridden by the event", "from": "reserved", "google.c.a.e": "reserved"
        }}}"#,
    )
    .expect("device");
    let n = notification(json!({"event_id": "$e", "room_id": "!r"}));
    assert_eq!(
        body(&n, &d, &options("")),
        concat!(
            r#"{"message":{"token":"fcm-token-1","data":{"event_id":"$e","f":"2.50","#,
            r#""list":"[\"x\",2]","n":"42","nested":"{\"a\":[1,{\"b\":\"c\"}]}","no":"false","#,
            r#""prio":"high","room_id":"!r","s":"text","yes":"true"},"#,
            r#""android":{"priority":"high"}}}"#
        )
    );
    // Present but not an object: the pusher can never be served.
    let bad = device(json!({"default_payload": "not an object"}));
    assert!(matches!(build(&n, &bad, &options("")), Built::BadDefaultPayload));
}

#[test]
fn fcm_options_with_android_and_apns_blocks() {
    let o = options(
        r#"
        [fcm_options.android]
        ttl = "86400s"
        collapse_key = "matrix"
        notification = { channel_id = "messages" }
        [fcm_options.apns.payload.aps]
        mutable-content = 1
        [fcm_options.fcm_options]
        analytics_label = "herald"
        "#,
    );
    let n = notification(json!({"event_id": "$e", "room_id": "!r", "prio": "low"}));
    assert_eq!(
        body(&n, &device(json!({})), &o),
        concat!(
            r#"{"message":{"apns":{"payload":{"aps":{"mutable-content":1}}},"#,
            r#""fcm_options":{"analytics_label":"herald"},"token":"fcm-token-1","#,
            r#""data":{"event_id":"$e","prio":"normal","room_id":"!r"},"#,
            r#""android":{"collapse_key":"matrix","notification":{"channel_id":"messages"},"#,
            r#""ttl":"86400s","priority":"normal"}}}"#
        )
    );
}

#[test]
fn multibyte_fields_are_cut_at_1024_bytes() {
    // 600 × "é" (1200 bytes) → 510 of them and "…": 1023 bytes, on a character boundary.
    let long = "é".repeat(600);
    let emoji = "😀".repeat(300); // 1200 bytes → 255 × 4 + "…" = 1023 bytes
    let n = notification(json!({
        "event_id": "$e", "room_id": "!r", "room_name": long, "sender_display_name": "Bob",
        "content": {"body": emoji, "msgtype": "m.text"}
    }));
    let got = body(&n, &device(json!({})), &options(""));
    let v: Value = serde_json::from_str(&got).expect("JSON");
    let data = &v["message"]["data"];
    let room_name = data["room_name"].as_str().expect("string");
    assert_eq!(room_name, format!("{}…", "é".repeat(510)));
    assert_eq!(room_name.len(), 1023);
    let content = data["content_body"].as_str().expect("string");
    assert_eq!(content, format!("{}…", "😀".repeat(255)));
    // Exactly 1024 bytes is kept as it is.
    let exact = "a".repeat(1024);
    let n = notification(json!({"event_id": "$e", "sender": exact}));
    let got = body(&n, &device(json!({})), &options(""));
    assert!(got.contains(&format!("\"sender\":\"{exact}\"")));
}

/// `data`'s size as FCM counts it, and as JSON text.
fn data_sizes(body: &str) -> (usize, usize) {
    let v: Value = serde_json::from_str(body).expect("JSON");
    let data = v["message"]["data"].as_object().expect("data").clone();
    let fcm = data.iter().map(|(k, v)| k.len() + v.as_str().expect("string").len()).sum();
    (fcm, serde_json::to_string(&data).expect("JSON").len())
}

#[test]
fn oversized_messages_shrink_the_longest_content_first() {
    let n = notification(json!({
        "event_id": "$e", "room_id": "!r", "room_name": "Tea", "sender": "@a:b",
        "content": {
            "body": "b".repeat(1500), "formatted_body": "f".repeat(1500),
            "a": "a".repeat(1500), "b": "x".repeat(1500), "msgtype": "m.text"
        }
    }));
    let got = body(&n, &device(json!({})), &options(""));
    let (fcm, json_len) = data_sizes(&got);
    assert!(json_len <= 4096 && fcm <= 4096, "{json_len} {fcm}");
    let v: Value = serde_json::from_str(&got).expect("JSON");
    let data = &v["message"]["data"];
    // Short fields are untouched; the four long ones were cut evenly.
    assert_eq!(
        (data["content_msgtype"].as_str(), data["room_name"].as_str()),
        (Some("m.text"), Some("Tea"))
    );
    let lens: Vec<usize> = ["content_body", "content_formatted_body", "content_a", "content_b"]
        .iter()
        .map(|k| data[k].as_str().expect("kept").len())
        .collect();
    let (min, max) = (lens.iter().min().unwrap(), lens.iter().max().unwrap());
    assert!(max - min <= 8, "cut evenly: {lens:?}");
    assert!(*min > 900, "no more than needed: {lens:?}");
    assert!(data["content_body"].as_str().unwrap().ends_with('…'));
}

#[test]
fn nothing_is_too_big_to_send() {
    // Every field at its 1024-byte limit, escapes that double the JSON, a huge default payload.
    let quote = "\"".repeat(2000);
    let n = notification(json!({
        "event_id": "$e".repeat(600), "room_id": "!r".repeat(600), "type": quote,
        "sender": quote, "sender_display_name": quote, "room_name": quote,
        "room_alias": quote, "membership": quote,
        "content": {"body": quote, "x": quote}, "counts": {"unread": 7}
    }));
    let d = device(json!({"default_payload": {"big": "p".repeat(5000), "small": "kept?"}}));
    let got = body(&n, &d, &options(""));
    let (fcm, json_len) = data_sizes(&got);
    assert!(json_len <= 4096 && fcm <= 4096, "{json_len} {fcm}");
    let v: Value = serde_json::from_str(&got).expect("JSON");
    let data = &v["message"]["data"];
    // The ids, the priority and the count always survive.
    assert_eq!(data["event_id"].as_str().map(str::len), Some(1024));
    assert_eq!(data["room_id"].as_str().map(str::len), Some(1024));
    assert_eq!((data["prio"].as_str(), data["unread"].as_str()), (Some("high"), Some("7")));
    assert!(data.get("big").is_none(), "the largest default entry goes");
}

#[test]
fn nothing_to_send_is_skipped() {
    let n = notification(json!({"counts": {}}));
    assert!(matches!(build(&n, &device(json!({})), &options("")), Built::Skip(_)));
}
