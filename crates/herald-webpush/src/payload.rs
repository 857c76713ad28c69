//! The payload web clients expect (Sygnal's JSON), encrypted and shrunk to fit the push service.
//!
//! Push services refuse bodies over 4096 bytes. Rather than fail, the message text is shortened:
//! the overhead of the encryption is known, so the cut is computed once from the serialised size
//! instead of trimming and re-encrypting in a loop.

use base64::Engine;
use herald_core::model::JsonObject;
use herald_core::Notification;
use http::HeaderValue;
use serde_json::Value;
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
    /// `content` was left out.
    ContentDropped,
    /// Only the ids and counts were kept.
    Minimal,
}

/// Builds the payload: `default_payload`, overridden by the event's fields, the counts, and
/// `content` without `formatted_body` (a browser notification cannot show HTML).
pub(crate) fn build(n: &Notification, default_payload: Option<&JsonObject>) -> JsonObject {
    let mut payload = default_payload.cloned().unwrap_or_default();
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
            payload.insert(key.to_owned(), Value::String(value.clone()));
        }
    }
    if let Some(target) = n.user_is_target {
        payload.insert("user_is_target".to_owned(), Value::Bool(target));
    }
    for (key, count) in [("unread", n.counts.unread), ("missed_calls", n.counts.missed_calls)] {
        if let Some(count) = count {
            payload.insert(key.to_owned(), Value::from(count));
        }
    }
    if let Some(content) = &n.content {
        let mut content = content.clone();
        content.remove("formatted_body");
        payload.insert("content".to_owned(), Value::Object(content));
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
    payload: &mut JsonObject,
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
/// of `content.body`, then `content`, then everything but the ids and counts.
pub(crate) fn fit(payload: &mut JsonObject, limit: usize) -> (Vec<u8>, Shrink) {
    let mut json = to_json(payload);
    if json.len() <= limit {
        return (json, Shrink::None);
    }
    let body = match payload.get_mut("content") {
        Some(Value::Object(content)) => match content.get_mut("body") {
            Some(Value::String(body)) => Some(body),
            _ => None,
        },
        _ => None,
    };
    if let Some(body) = body {
        shorten(body, json.len() - limit);
        json = to_json(payload);
        if json.len() <= limit {
            return (json, Shrink::BodyCut);
        }
    }
    payload.remove("content");
    json = to_json(payload);
    if json.len() <= limit {
        return (json, Shrink::ContentDropped);
    }
    payload.retain(|k, _| matches!(k.as_str(), "event_id" | "room_id" | "unread" | "missed_calls"));
    json = to_json(payload);
    if json.len() <= limit {
        return (json, Shrink::Minimal);
    }
    // Ids longer than the whole limit: only the counts can still be sent.
    payload.retain(|k, _| matches!(k.as_str(), "unread" | "missed_calls"));
    json = to_json(payload);
    if json.len() > limit {
        json = b"{}".to_vec();
    }
    (json, Shrink::Minimal)
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

fn to_json(payload: &JsonObject) -> Vec<u8> {
    // Serialising a map of JSON values cannot fail.
    serde_json::to_vec(payload).unwrap_or_else(|_| b"{}".to_vec())
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
    use serde_json::json;

    fn object(v: Value) -> JsonObject {
        match v {
            Value::Object(o) => o,
            _ => panic!("not an object"),
        }
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
                    json!({"room_id": "!r", "content": {"body": text, "msgtype": "m.text"}}),
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
        let mut p = object(json!({"event_id": "$e", "content": {"body": "hi", "other": big}}));
        let (json, shrink) = fit(&mut p, 383);
        assert_eq!(shrink, Shrink::ContentDropped);
        assert_eq!(
            serde_json::from_slice::<Value>(&json).expect("json"),
            json!({"event_id": "$e"})
        );

        let mut p = object(json!({"event_id": "$e", "unread": 1, "room_name": big}));
        let (json, shrink) = fit(&mut p, 383);
        assert_eq!(shrink, Shrink::Minimal);
        assert_eq!(
            serde_json::from_slice::<Value>(&json).expect("json"),
            json!({"event_id": "$e", "unread": 1})
        );

        let mut p = object(json!({"event_id": big, "unread": 1}));
        let (json, _) = fit(&mut p, 383);
        assert_eq!(serde_json::from_slice::<Value>(&json).expect("json"), json!({"unread": 1}));
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
