//! The payload web clients expect (Sygnal's JSON), encrypted and shrunk to fit the push service.
//!
//! Push services refuse bodies over 4096 bytes. Rather than fail, the message text is shortened:
//! the overhead of the encryption is known, so the cut is computed once from the serialised size
//! instead of trimming and re-encrypting in a loop.

use base64::Engine;
use herald_core::{Notification, RawObject};
use http::HeaderValue;
use sha2::{Digest, Sha256};

use crate::subscription::Subscription;

use crate::aes128gcm::{
    self, HEADER_LEN as ECE_HEADER, PAD_BLOCK as ECE_PAD_BLOCK, TAG_LEN as ECE_TAG,
};

/// Appended to a shortened message so that readers see it was cut.
const ELLIPSIS: char = '…';

/// What a payload gave up to fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shrink {
    /// Nothing: it fitted.
    None,
    /// `content.body` was shortened.
    BodyCut,
    /// An encrypted event's `content.ciphertext` was left out; its small fields (`algorithm`,
    /// `sender_key`, `session_id`, `device_id`) were kept.
    CiphertextDropped,
    /// `content` was left out.
    ContentDropped,
    /// Only the ids, counts, sender and the `default_payload` keys that fit were kept.
    Reduced,
    /// Only the ids and counts (or less) were kept.
    Minimal,
}

/// The fields of an encrypted event's `content` that a client needs to find the session keys,
/// kept when the `ciphertext` cannot fit.
const ENCRYPTED_SMALL_FIELDS: [&str; 4] = ["algorithm", "sender_key", "session_id", "device_id"];
/// The keys [`build`] writes from the notification; any other key came from `default_payload`.
const EVENT_FIELDS: [&str; 12] = [
    "room_id",
    "room_name",
    "room_alias",
    "membership",
    "event_id",
    "sender",
    "sender_display_name",
    "type",
    "user_is_target",
    "unread",
    "missed_calls",
    "content",
];
/// The event fields kept as long as possible.
const IDS_AND_COUNTS: [&str; 4] = ["event_id", "room_id", "unread", "missed_calls"];
/// Kept with the ids and counts while they fit: who sent it.
const SENDER: [&str; 2] = ["sender", "sender_display_name"];

/// Builds the payload: `default_payload`, overridden by the event's fields, the counts, and
/// `content` without `formatted_body` (a browser notification cannot show HTML).
pub(crate) fn build(n: &Notification, default_payload: Option<RawObject>) -> RawObject {
    let mut payload = default_payload.unwrap_or_default();
    let strings = [
        ("room_id", &n.room_id),
        ("room_name", &n.room_name),
        ("room_alias", &n.room_alias),
        ("membership", &n.membership),
        ("event_id", &n.event_id),
        ("sender", &n.sender),
        ("sender_display_name", &n.sender_display_name),
        ("type", &n.event_type),
    ];
    for (key, value) in strings {
        if let Some(value) = value {
            payload.insert_str(key, value);
        }
    }
    if let Some(target) = n.user_is_target {
        payload.insert("user_is_target", &target);
    }
    for (key, count) in [("unread", n.counts.unread), ("missed_calls", n.counts.missed_calls)] {
        if let Some(count) = count {
            payload.insert(key, &count);
        }
    }
    if let Some(content) = &n.content {
        let mut content = content.clone();
        content.remove("formatted_body");
        payload.insert("content", &content);
    }
    payload
}

/// The largest plaintext whose encryption fits in `max_body` bytes.
pub(crate) fn max_plaintext(max_body: usize) -> usize {
    let room = max_body.saturating_sub(ECE_HEADER + ECE_TAG);
    // One byte of the last padding block is the delimiter.
    ((room / ECE_PAD_BLOCK) * ECE_PAD_BLOCK).saturating_sub(1)
}

/// Encrypts `payload` for `sub` into at most `max_body` bytes, shrinking the payload if needed.
pub(crate) fn encrypt_to_fit(
    payload: &mut RawObject,
    sub: &Subscription<'_>,
    max_body: usize,
) -> Result<(Vec<u8>, Shrink), String> {
    let mut limit = max_plaintext(max_body);
    let mut shrunk = Shrink::None;
    // One pass in practice: the loop only guards against a mistake in the overhead arithmetic.
    for _ in 0..3 {
        let (plaintext, shrink) = fit(payload, limit);
        if shrink != Shrink::None {
            shrunk = shrink;
        }
        let body = aes128gcm::encrypt(&sub.p256dh, &sub.auth, &plaintext)?;
        if body.len() <= max_body {
            return Ok((body, shrunk));
        }
        limit = limit.saturating_sub(body.len() - max_body + ECE_PAD_BLOCK);
    }
    Err(format!("the payload cannot be encrypted into {max_body} bytes"))
}

/// Serialises `payload` into at most `limit` bytes, giving up as little as possible: first the end
/// of `content.body`; then an encrypted event's `ciphertext` (keeping its small fields); then
/// `content`; then everything but the ids, counts, sender and the `default_payload` keys that fit
/// (largest dropped first); then those too.
pub(crate) fn fit(payload: &mut RawObject, limit: usize) -> (Vec<u8>, Shrink) {
    let mut json = payload.to_json();
    if json.len() <= limit {
        return (json, Shrink::None);
    }
    let content = payload.object("content");
    let body = content.as_ref().and_then(|c| c.str("body")).map(|b| b.into_owned());
    if let (Some(mut content), Some(mut body)) = (content, body) {
        // Re-serialise the body first: the excess is measured on how serde_json writes it, which
        // may be shorter than the escapes the homeserver sent.
        content.insert_str("body", &body);
        payload.insert("content", &content);
        json = payload.to_json();
        if json.len() > limit {
            shorten(&mut body, json.len() - limit);
            content.insert_str("body", &body);
            payload.insert("content", &content);
            json = payload.to_json();
        }
        if json.len() <= limit {
            return (json, Shrink::BodyCut);
        }
    }
    if let Some(mut content) = payload.object("content").filter(|c| c.contains_key("ciphertext")) {
        // A client that cannot decrypt from the push can still tell which session the event
        // belongs to and fetch it; the ciphertext is the one large field.
        content.remove("ciphertext");
        payload.insert("content", &content);
        json = payload.to_json();
        if json.len() > limit {
            content.retain(|k| ENCRYPTED_SMALL_FIELDS.contains(&k));
            payload.insert("content", &content);
            json = payload.to_json();
        }
        if json.len() <= limit {
            return (json, Shrink::CiphertextDropped);
        }
    }
    payload.remove("content");
    json = payload.to_json();
    if json.len() <= limit {
        return (json, Shrink::ContentDropped);
    }
    // The last resort. Web clients read keys of `default_payload` (e.g. a session id), so keep
    // those that fit, dropping the largest first.
    payload.retain(|k| {
        IDS_AND_COUNTS.contains(&k) || SENDER.contains(&k) || !EVENT_FIELDS.contains(&k)
    });
    json = payload.to_json();
    if json.len() > limit {
        let mut extra: Vec<(usize, String)> = payload
            .iter()
            .filter(|(k, _)| !EVENT_FIELDS.contains(k))
            .map(|(k, v)| (entry_len(k, v.get()), k.to_owned()))
            .collect();
        extra.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        let mut len = json.len();
        for (size, key) in extra {
            if len <= limit {
                break;
            }
            payload.remove(&key);
            // Exact but for the last comma of an object that becomes empty: checked below.
            len = len.saturating_sub(size);
        }
        json = payload.to_json();
    }
    if json.len() <= limit {
        return (json, Shrink::Reduced);
    }
    payload.retain(|k| IDS_AND_COUNTS.contains(&k));
    json = payload.to_json();
    if json.len() <= limit {
        return (json, Shrink::Minimal);
    }
    // Ids longer than the whole limit: only the counts can still be sent.
    payload.retain(|k| matches!(k, "unread" | "missed_calls"));
    json = payload.to_json();
    if json.len() > limit {
        json = b"{}".to_vec();
    }
    (json, Shrink::Minimal)
}

/// The bytes `"key":value,` takes in a serialised object.
fn entry_len(key: &str, raw_value: &str) -> usize {
    let key_len: usize = key.chars().map(escaped_len).sum();
    key_len + 2 + 1 + raw_value.len() + 1
}

/// Cuts the end of `body` so that its JSON form shrinks by at least `excess` bytes, on a character
/// boundary, and marks the cut with an ellipsis. Empties it when it cannot shrink enough.
fn shorten(body: &mut String, excess: usize) {
    let needed = excess + ELLIPSIS.len_utf8();
    let mut removed = 0;
    let mut cut_at = body.len();
    for (at, c) in body.char_indices().rev() {
        if removed >= needed {
            break;
        }
        removed += escaped_len(c);
        cut_at = at;
    }
    if removed < needed {
        body.clear();
    } else {
        body.truncate(cut_at);
        body.push(ELLIPSIS);
    }
}

/// The bytes serde_json writes for `c` inside a string.
fn escaped_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\u{8}' | '\u{c}' | '\n' | '\r' | '\t' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

/// The `Topic` for a room: push services replace a stored message with a newer one of the same
/// topic. Topics are at most 32 base64url characters, so the room id is hashed.
pub(crate) fn topic(room_id: &str) -> HeaderValue {
    let digest = Sha256::digest(room_id.as_bytes());
    let mut text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest);
    text.truncate(32);
    HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static("room"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn object(v: &Value) -> RawObject {
        RawObject::parse(&v.to_string()).expect("an object")
    }

    #[test]
    fn plaintext_limit_matches_ece_padding() {
        assert_eq!(max_plaintext(4096), 3967);
        assert_eq!(max_plaintext(512), 383);
        let (key, auth) = ece::generate_keypair_and_auth_secret().expect("keys");
        let components = key.raw_components().expect("raw");
        for n in [1, 126, 127, 128, 383, 3000, 3967] {
            let body = ece::encrypt(components.public_key(), &auth, &vec![b'a'; n]).expect("enc");
            let expected = ECE_HEADER + ECE_TAG + (n + 1).div_ceil(ECE_PAD_BLOCK) * ECE_PAD_BLOCK;
            assert_eq!(body.len(), expected, "plaintext of {n}");
        }
        let body = ece::encrypt(components.public_key(), &auth, &[b'a'; 3967]).expect("enc");
        assert!(body.len() <= 4096);
        let body = ece::encrypt(components.public_key(), &auth, &[b'a'; 3968]).expect("enc");
        assert!(body.len() > 4096);
    }

    #[test]
    fn cut_is_computed_exactly() {
        let texts = [
            "a".repeat(10_000),
            "é🎉".repeat(3_000),
            "\"quoted\"\n\t\\".repeat(1_000),
            "\u{1}\u{2}x".repeat(2_000),
        ];
        for text in texts {
            for limit in [383, 1000, 3967] {
                let mut p = object(
                    &json!({"room_id": "!r", "content": {"body": text, "msgtype": "m.text"}}),
                );
                let (json, shrink) = fit(&mut p, limit);
                assert_eq!(shrink, Shrink::BodyCut);
                assert!(json.len() <= limit, "{} > {limit}", json.len());
                // Exact: at most one character more than needed was cut (a 6-byte escape).
                assert!(json.len() + 6 >= limit, "{} much less than {limit}", json.len());
                let v: Value = serde_json::from_slice(&json).expect("valid JSON");
                let body = v["content"]["body"].as_str().expect("body");
                assert!(body.ends_with(ELLIPSIS));
                assert!(text.starts_with(body.trim_end_matches(ELLIPSIS)));
                assert_eq!(v["content"]["msgtype"], "m.text");
            }
        }
    }

    #[test]
    fn gives_up_in_order_and_never_overflows() {
        let big = "x".repeat(5000);
        let mut p = object(&json!({"event_id": "$e", "content": {"body": "hi", "other": big}}));
        let (json, shrink) = fit(&mut p, 383);
        assert_eq!(shrink, Shrink::ContentDropped);
        assert_eq!(
            serde_json::from_slice::<Value>(&json).expect("json"),
            json!({"event_id": "$e"})
        );

        let mut p = object(&json!({"event_id": "$e", "unread": 1, "room_name": big}));
        let (json, shrink) = fit(&mut p, 383);
        assert_eq!(shrink, Shrink::Reduced);
        assert_eq!(
            serde_json::from_slice::<Value>(&json).expect("json"),
            json!({"event_id": "$e", "unread": 1})
        );

        let mut p = object(&json!({"event_id": "$e", "unread": 1, "sender": big}));
        let (json, shrink) = fit(&mut p, 383);
        assert_eq!(shrink, Shrink::Minimal);
        assert_eq!(
            serde_json::from_slice::<Value>(&json).expect("json"),
            json!({"event_id": "$e", "unread": 1})
        );

        let mut p = object(&json!({"event_id": big, "unread": 1}));
        let (json, _) = fit(&mut p, 383);
        assert_eq!(serde_json::from_slice::<Value>(&json).expect("json"), json!({"unread": 1}));
    }

    #[test]
    fn encrypted_events_keep_their_small_content_fields() {
        let small = json!({"algorithm": "m.megolm.v1.aes-sha2", "sender_key": "sk",
            "session_id": "sid", "device_id": "DEV"});
        let mut content = small.clone();
        content["ciphertext"] = json!("c".repeat(5000));
        let mut p =
            object(&json!({"event_id": "$e", "type": "m.room.encrypted", "content": content}));
        let (json, shrink) = fit(&mut p, 383);
        assert_eq!(shrink, Shrink::CiphertextDropped);
        assert_eq!(
            serde_json::from_slice::<Value>(&json).expect("json"),
            json!({"event_id": "$e", "type": "m.room.encrypted", "content": small})
        );

        // Other large fields beside the ciphertext go too; the small fields stay.
        content["relates"] = json!("r".repeat(5000));
        let mut p = object(&json!({"event_id": "$e", "content": content}));
        let (json, shrink) = fit(&mut p, 383);
        assert_eq!(shrink, Shrink::CiphertextDropped);
        assert_eq!(
            serde_json::from_slice::<Value>(&json).expect("json"),
            json!({"event_id": "$e", "content": small})
        );
    }

    #[test]
    fn the_last_resort_keeps_the_sender_and_the_default_payload_keys_that_fit() {
        let mut p = object(&json!({
            "event_id": "$e", "room_id": "!r", "unread": 2, "sender": "@a:x",
            "sender_display_name": "A", "room_name": "x".repeat(200), "type": "m.room.message",
            "session_id": "web-1", "huge": "h".repeat(3000), "big": "b".repeat(300),
            "content": {"body": "hi", "other": "o".repeat(3000)}
        }));
        let (json, shrink) = fit(&mut p, 383);
        assert_eq!(shrink, Shrink::Reduced);
        assert!(json.len() <= 383, "{}", json.len());
        assert_eq!(
            serde_json::from_slice::<Value>(&json).expect("json"),
            json!({"event_id": "$e", "room_id": "!r", "unread": 2, "sender": "@a:x",
                "sender_display_name": "A", "session_id": "web-1"}),
            "the largest default_payload keys went first, the small one stayed"
        );

        // Every limit: never over, always valid JSON.
        for limit in (2..600).step_by(7) {
            let mut p = object(&json!({
                "event_id": "$e", "sender": "@a:x", "k1": "v".repeat(100), "k2": [1, 2, 3],
                "k\"3": "w".repeat(40), "unread": 1
            }));
            let (json, _) = fit(&mut p, limit);
            assert!(json.len() <= limit.max(2), "{limit}: {}", json.len());
            serde_json::from_slice::<Value>(&json).expect("valid JSON");
        }
    }

    #[test]
    fn topics_are_short_base64url_and_per_room() {
        let a = topic("!a:example.org");
        assert_eq!(a.len(), 32);
        assert!(a
            .to_str()
            .expect("ascii")
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(a, topic("!a:example.org"));
        assert_ne!(a, topic("!b:example.org"));
    }
}
