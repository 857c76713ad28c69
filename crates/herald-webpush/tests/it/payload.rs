//! What arrives at the push service: payload JSON, headers, size limit, pusher options.

use herald_core::Outcome;
use herald_webpush::{BadgeUrgency, Urgency};
use serde_json::{json, Value};

use crate::{assert_dead, delivered, device, device_with, fake, message, notification, Setup};

#[tokio::test]
async fn full_message_payload_and_headers() {
    let fake = fake().await;
    let sub = fake.subscribe("/push/a");
    let setup = Setup::new();
    let outcome = setup.deliver(&message("Hello"), &device(&sub, json!({}))).await;
    assert_eq!(outcome.expect("delivered"), delivered());

    let got = fake.received("/push/a");
    assert_eq!(got.len(), 1);
    let push = &got[0];
    assert_eq!(push.rejection, None);
    assert_eq!(
        push.payload.as_ref().expect("decrypted JSON"),
        &json!({
            "event_id": "$ev1", "room_id": "!room:example.org", "type": "m.room.message",
            "sender": "@alice:example.org", "sender_display_name": "Alice", "room_name": "Tea",
            "room_alias": "#tea:example.org", "unread": 3, "missed_calls": 1,
            "content": {"msgtype": "m.text", "body": "Hello", "format": "org.matrix.custom.html"}
        })
    );
    assert_eq!(push.header("content-encoding"), Some("aes128gcm"));
    assert_eq!(push.header("content-type"), Some("application/octet-stream"));
    assert_eq!(push.header("ttl"), Some("900"));
    assert_eq!(push.header("urgency"), Some("normal"));
    assert_eq!(push.header("topic"), None);
    assert!(push.header("authorization").expect("VAPID").starts_with("vapid t="));
}

#[tokio::test]
async fn event_id_only_badge_only_and_invite_payloads() {
    let fake = fake().await;
    let sub = fake.subscribe("/push/a");
    let setup = Setup::new();
    let d = device(&sub, json!({}));

    let event_id_only = notification(json!({
        "event_id": "$ev2", "room_id": "!room:example.org", "prio": "high", "counts": {"unread": 1}
    }));
    let badge_only = notification(json!({
        "event_id": "", "room_id": null, "sender": "", "type": null, "content": null,
        "counts": {"unread": 0, "missed_calls": null}
    }));
    let invite = notification(json!({
        "event_id": "$inv", "room_id": "!new:example.org", "type": "m.room.member",
        "sender": "@bob:example.org", "sender_display_name": "Bob", "room_name": "Plans",
        "membership": "invite", "user_is_target": true,
        "content": {"membership": "invite", "displayname": "Carol"}, "counts": {"unread": 2}
    }));
    for n in [&event_id_only, &badge_only, &invite] {
        assert_eq!(setup.deliver(n, &d).await.expect("delivered"), delivered());
    }

    let payloads: Vec<Value> =
        fake.received("/push/a").into_iter().map(|r| r.payload.expect("decrypted JSON")).collect();
    assert_eq!(
        payloads,
        [
            json!({"event_id": "$ev2", "room_id": "!room:example.org", "unread": 1}),
            json!({"unread": 0}),
            json!({
                "event_id": "$inv", "room_id": "!new:example.org", "type": "m.room.member",
                "sender": "@bob:example.org", "sender_display_name": "Bob", "room_name": "Plans",
                "membership": "invite", "user_is_target": true, "unread": 2,
                "content": {"membership": "invite", "displayname": "Carol"}
            }),
        ]
    );
}

#[tokio::test]
async fn default_payload_is_merged_under_the_event_fields() {
    let fake = fake().await;
    let sub = fake.subscribe("/push/a");
    let setup = Setup::new();
    let d = device(
        &sub,
        json!({"default_payload": {"session_id": "web-1", "event_id": "stale", "nested": {"a": [1]}}}),
    );
    setup.deliver(&message("Hi"), &d).await.expect("delivered");
    let payload = fake.received("/push/a")[0].payload.clone().expect("JSON");
    assert_eq!(payload["session_id"], "web-1");
    assert_eq!(payload["nested"], json!({"a": [1]}));
    assert_eq!(payload["event_id"], "$ev1", "event fields win over default_payload");
    assert_eq!(payload["content"]["body"], "Hi");
}

#[tokio::test]
async fn events_only_skips_badge_updates() {
    let fake = fake().await;
    let sub = fake.subscribe("/push/a");
    let setup = Setup::new();
    let d = device(&sub, json!({"events_only": true}));
    let badge = notification(json!({"counts": {"unread": 0}}));
    let outcome = setup.deliver(&badge, &d).await.expect("not an error");
    assert!(matches!(outcome, Outcome::Skipped(_)), "{outcome:?}");
    assert!(fake.all_received().is_empty(), "nothing sent");
    assert_eq!(fake.connections_accepted(), 0);

    assert_eq!(setup.deliver(&message("Hi"), &d).await.expect("event"), delivered());
    assert_eq!(fake.received("/push/a").len(), 1);
}

#[tokio::test]
async fn topic_per_room_with_only_last_per_room() {
    let fake = fake().await;
    let sub = fake.subscribe("/push/a");
    let setup = Setup::new();
    let plain = device(&sub, json!({}));
    let last_only = device(&sub, json!({"only_last_per_room": true}));
    let other_room = notification(json!({"event_id": "$x", "room_id": "!other:example.org"}));

    setup.deliver(&message("1"), &plain).await.expect("delivered");
    setup.deliver(&message("2"), &last_only).await.expect("delivered");
    setup.deliver(&message("3"), &last_only).await.expect("delivered");
    setup.deliver(&other_room, &last_only).await.expect("delivered");

    let topics: Vec<Option<String>> =
        fake.received("/push/a").iter().map(|r| r.header("topic").map(str::to_owned)).collect();
    assert_eq!(topics[0], None);
    let topic = topics[1].clone().expect("topic with only_last_per_room");
    assert!(topic.len() <= 32);
    assert!(topic.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{topic}");
    assert!(!topic.contains("room"), "the room id is hashed");
    assert_eq!(topics[2].as_deref(), Some(topic.as_str()), "same room, same topic");
    assert_ne!(topics[3].as_deref(), Some(topic.as_str()), "other room, other topic");
}

#[tokio::test]
async fn urgency_follows_prio_and_config() {
    let fake = fake().await;
    let sub = fake.subscribe("/push/a");
    let d = device(&sub, json!({}));
    let low = notification(json!({"event_id": "$l", "room_id": "!r", "prio": "low"}));

    let normal = Setup::new();
    normal.deliver(&low, &d).await.expect("delivered");
    let high = Setup::with(|c| {
        c.urgency = Urgency::High;
        c.ttl = std::time::Duration::from_secs(60);
    });
    high.deliver(&message("x"), &d).await.expect("delivered");
    high.deliver(&low, &d).await.expect("delivered");

    let got = fake.received("/push/a");
    let urgency: Vec<_> = got.iter().map(|r| r.header("urgency").unwrap_or("")).collect();
    assert_eq!(urgency, ["low", "high", "low"]);
    assert_eq!(got[1].header("ttl"), Some("60"));
}

#[tokio::test]
async fn badge_only_updates_go_out_with_low_urgency_unless_configured() {
    let fake = fake().await;
    let sub = fake.subscribe("/push/a");
    let d = device(&sub, json!({}));
    // Badge-only: no event, prio high (the default) as Synapse sends it after a read receipt.
    let badge = notification(json!({"counts": {"unread": 0}, "prio": "high"}));

    let high = Setup::with(|c| c.urgency = Urgency::High);
    high.deliver(&badge, &d).await.expect("delivered");
    high.deliver(&message("x"), &d).await.expect("delivered");
    let explicit = Setup::with(|c| {
        c.urgency = Urgency::High;
        c.badge_urgency = BadgeUrgency::VeryLow;
    });
    explicit.deliver(&badge, &d).await.expect("delivered");
    let loud = Setup::with(|c| c.badge_urgency = BadgeUrgency::High);
    loud.deliver(&badge, &d).await.expect("delivered");

    let urgency: Vec<String> = fake
        .received("/push/a")
        .iter()
        .map(|r| r.header("urgency").unwrap_or("").to_owned())
        .collect();
    assert_eq!(urgency, ["low", "high", "very-low", "high"]);
}

/// An encrypted event as Synapse sends it (`content` of an `m.room.encrypted` event).
fn encrypted(ciphertext_len: usize) -> herald_core::Notification {
    notification(json!({
        "event_id": "$enc", "room_id": "!room:example.org", "type": "m.room.encrypted",
        "sender": "@alice:example.org", "sender_display_name": "Alice", "prio": "high",
        "content": {
            "algorithm": "m.megolm.v1.aes-sha2", "sender_key": "c0vJm6Cu9HFbAsWb8sBK/pn4jUPDZuA",
            "session_id": "ZgfmOyMy9cWqnBJsI4T1uXzg3nW6Xb8YQ0x8Y3V8o0", "device_id": "ABCDEFGHIJ",
            "ciphertext": "A".repeat(ciphertext_len)
        },
        "counts": {"unread": 4}
    }))
}

#[tokio::test]
async fn an_encrypted_event_too_large_keeps_its_session_fields() {
    let fake = fake().await;
    let sub = fake.subscribe("/push/a");
    let setup = Setup::new();
    let d = device(&sub, json!({}));
    setup.deliver(&encrypted(200), &d).await.expect("small: unchanged");
    setup.deliver(&encrypted(6000), &d).await.expect("large: ciphertext dropped");

    let got = fake.received("/push/a");
    assert_eq!(got[0].payload.as_ref().expect("json")["content"]["ciphertext"], "A".repeat(200));
    let push = &got[1];
    assert!(push.body_len <= 4096, "{}", push.body_len);
    // Golden plaintext: everything but the ciphertext, byte for byte.
    let plaintext = String::from_utf8(push.plaintext.clone().expect("decrypted")).expect("utf-8");
    assert_eq!(
        plaintext,
        concat!(
            r#"{"content":{"algorithm":"m.megolm.v1.aes-sha2","device_id":"ABCDEFGHIJ","#,
            r#""sender_key":"c0vJm6Cu9HFbAsWb8sBK/pn4jUPDZuA","#,
            r#""session_id":"ZgfmOyMy9cWqnBJsI4T1uXzg3nW6Xb8YQ0x8Y3V8o0"},"#,
            r#""event_id":"$enc","room_id":"!room:example.org","sender":"@alice:example.org","#,
            r#""sender_display_name":"Alice","type":"m.room.encrypted","unread":4}"#
        )
    );
}

#[tokio::test]
async fn a_huge_default_payload_keeps_the_sender_and_the_keys_that_fit() {
    let fake = fake().await;
    let sub = fake.subscribe("/push/a");
    let setup = Setup::new();
    let d = device(
        &sub,
        json!({"default_payload": {
            "session_id": "web-1", "cs_token": "t0k", "blob": "b".repeat(3900),
            "bigger_blob": "c".repeat(4000), "settings": {"sound": true}
        }}),
    );
    setup.deliver(&message("Hello"), &d).await.expect("delivered");
    let push = fake.received("/push/a").pop().expect("received");
    assert!(push.body_len <= 4096, "{}", push.body_len);
    let plaintext = String::from_utf8(push.plaintext.expect("decrypted")).expect("utf-8");
    // Golden plaintext: ids, counts, sender, and the small default_payload keys; the two blobs
    // went, the largest first, and the room's names and content with them.
    assert_eq!(
        plaintext,
        concat!(
            r#"{"cs_token":"t0k","event_id":"$ev1","missed_calls":1,"room_id":"!room:example.org","#,
            r#""sender":"@alice:example.org","sender_display_name":"Alice","session_id":"web-1","#,
            r#""settings":{"sound":true},"unread":3}"#
        )
    );

    // One blob alone fits once the content is gone: the smaller one stays.
    let d = device(
        &sub,
        json!({"default_payload": {"session_id": "web-1", "blob": "b".repeat(3000),
            "bigger_blob": "c".repeat(3500)}}),
    );
    setup.deliver(&message("Hello"), &d).await.expect("delivered");
    let payload = fake.received("/push/a").pop().expect("received").payload.expect("json");
    assert_eq!(payload["blob"], "b".repeat(3000));
    assert_eq!(payload["session_id"], "web-1");
    assert!(payload.get("bigger_blob").is_none() && payload.get("content").is_none());
}

#[tokio::test]
async fn a_10kb_message_is_cut_to_fit_and_decrypts() {
    let fake = fake().await;
    let sub = fake.subscribe("/push/a");
    let d = device(&sub, json!({}));
    // Multi-byte characters and characters JSON escapes, so the cut must respect both.
    let body: String = "Grüße \"quoted\" 🎉\n".repeat(600);
    assert!(body.len() > 10_000);

    for (max, setup) in [(4096, Setup::new()), (1024, Setup::with(|c| c.max_payload_bytes = 1024))]
    {
        assert_eq!(setup.deliver(&message(&body), &d).await.expect("delivered"), delivered());
        let push = fake.received("/push/a").pop().expect("received");
        assert_eq!(push.rejection, None);
        assert!(push.body_len <= max, "{} > {max}", push.body_len);
        assert!(push.body_len > max - 256, "cut far more than needed: {}", push.body_len);
        let payload = push.payload.expect("decrypts to JSON");
        let cut = payload["content"]["body"].as_str().expect("body");
        assert!(cut.ends_with('…'), "marked as cut");
        assert!(body.starts_with(cut.trim_end_matches('…')), "a prefix, cut on a char boundary");
        assert_eq!(payload["room_name"], "Tea", "other fields intact");
        assert_eq!(payload["content"]["msgtype"], "m.text");
    }
}

#[tokio::test]
async fn padded_keys_are_accepted() {
    let fake = fake().await;
    let sub = fake.subscribe("/push/a");
    let setup = Setup::new();
    let d = device_with(
        &format!("{}=", sub.p256dh),
        json!({"endpoint": sub.endpoint, "auth": format!("{}==", sub.auth)}),
        json!({}),
    );
    assert_eq!(setup.deliver(&message("x"), &d).await.expect("delivered"), delivered());
    assert!(fake.received("/push/a")[0].payload.is_some());
}

#[tokio::test]
async fn malformed_subscriptions_are_rejected_without_sending() {
    let fake = fake().await;
    let sub = fake.subscribe("/push/a");
    let setup = Setup::new();
    let cases = [
        device_with(&sub.p256dh, json!({"auth": sub.auth}), json!({})),
        device_with(&sub.p256dh, json!({"endpoint": sub.endpoint}), json!({})),
        device_with(&sub.p256dh, json!({"endpoint": sub.endpoint, "auth": "c2hvcnQ"}), json!({})),
        device_with("not-a-key", sub.pusher_data(), json!({})),
        device_with(
            &sub.p256dh,
            json!({"endpoint": "ftp://push.example/x", "auth": sub.auth}),
            json!({}),
        ),
        device_with(&sub.p256dh, json!({"endpoint": "not a url", "auth": sub.auth}), json!({})),
    ];
    for d in &cases {
        assert_dead(&setup.deliver(&message("x"), d).await);
    }
    assert!(fake.all_received().is_empty());
    assert_eq!(fake.connections_accepted(), 0);
}
