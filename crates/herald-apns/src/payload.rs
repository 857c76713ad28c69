//! The JSON payload iOS apps built for Sygnal expect (`shared/reference/payloads.md`, APNs), and
//! shrinking it to APNs' size limit.
//!
//! Two modes:
//!
//! - **event_id_only** (an `event_id` and no `type`: what Synapse sends to pushers with
//!   `format: event_id_only`): the pusher's `default_payload`, shallow, plus top-level `room_id`,
//!   `event_id`, `unread_count` and `missed_calls`; no `aps` unless `default_payload` has one.
//!   Element iOS renders these itself in its notification service extension.
//! - **full**: `aps.alert.loc-key`/`loc-args` from the event (the app's localisation table turns
//!   them into text), `aps.badge`, `aps.sound` from the push rule's `sound` tweak, top-level
//!   `room_id`/`event_id`, on top of `default_payload` when the event has a `type`.
//!   A badge-only update is `{"aps":{"badge":N}}`, also for 0.
//!
//! a2's payload builder is not used: it always writes `"mutable-content":0`, cannot hold the
//! arbitrary `aps` keys a `default_payload` carries (`thread-id`, `interruption-level`), and keeps
//! its alert fields private, so it cannot merge with `default_payload` or shorten texts.
//!
//! Values from `default_payload` are kept as the exact JSON text the client registered
//! ([`RawObject`]): only `aps` and `aps.alert` are opened, so any depth is accepted. Keys are
//! written in sorted order, so a payload is byte-for-byte stable.
//!
//! **Size.** APNs refuses payloads over 4096 bytes (5120 for VoIP). Rather than fail (Sygnal
//! answers 500 when nothing is left to cut), [`Payload::fit`] shortens the longest of
//! `aps.alert` (a string), `aps.alert.body` and `aps.alert.loc-args[i]` on a character boundary,
//! fairly across equally long texts; when the texts are gone, it drops optional fields, largest
//! first: `default_payload`'s own top-level keys, then `aps` keys other than `badge`, `sound`,
//! `content-available` and `mutable-content`, then alert keys other than `loc-key`. It never
//! fails; a payload that still does not fit is sent, and APNs' 413 is a refused message.

use std::borrow::Cow;

use herald_core::raw::lenient_str;
use herald_core::{Device, Notification, RawObject};
use serde_json::value::RawValue;

/// Longest sender or room name put in `loc-args`, in characters (as Sygnal).
const MAX_FIELD_CHARS: usize = 1024;
/// Shown when a notification has no sender at all (as Sygnal).
const NO_SENDER: &str = " ";

/// Top-level keys Herald writes; any other top-level key came from `default_payload`.
const OWN_TOP_KEYS: [&str; 4] = ["room_id", "event_id", "unread_count", "missed_calls"];
/// `aps` keys that change what the device does; kept while fitting.
const ESSENTIAL_APS_KEYS: [&str; 4] = ["badge", "sound", "content-available", "mutable-content"];

/// A payload for one device, before serialising.
#[derive(Debug, Clone)]
pub(crate) struct Payload {
    /// Everything but `aps`.
    top: RawObject,
    /// `aps`, when there is one.
    aps: Option<Aps>,
}

/// The `aps` dictionary, with `alert` opened for editing.
#[derive(Debug, Clone, Default)]
struct Aps {
    /// Every key but `alert`.
    fields: RawObject,
    alert: Option<Alert>,
}

/// `aps.alert`.
#[derive(Debug, Clone)]
enum Alert {
    /// A plain string alert (from `default_payload`).
    Text(String),
    /// A dictionary: `body` and `loc-args` opened (they are what gets shortened).
    Dict { fields: RawObject, body: Option<String>, loc_args: Option<Vec<String>> },
    /// Anything else a `default_payload` put there, kept as sent.
    Other(Box<RawValue>),
}

/// What [`Payload::fit`] gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shrink {
    /// Nothing: it fitted.
    None,
    /// Texts were shortened.
    TextCut,
    /// Texts were emptied and optional fields dropped.
    FieldsDropped,
    /// Even the essentials do not fit: sent anyway, APNs will refuse it.
    StillTooLarge,
}

/// Why no payload can ever be built for a device: the pushkey is rejected.
pub(crate) const BAD_DEFAULT_PAYLOAD: &str = "pusher data `default_payload` is not an object";

/// The payload for `n` to `device`: `Ok(None)` when there is nothing to send (no alert and no
/// badge), `Err` when the pusher's data makes every payload impossible.
pub(crate) fn build(
    n: &Notification,
    device: &Device,
    send_badge_counts: bool,
) -> Result<Option<Payload>, &'static str> {
    let default_payload = match device.data.get("default_payload") {
        // `null` counts as absent, as everywhere in the notify model.
        Some(raw) if raw.get() != "null" => {
            Some(device.data.object("default_payload").ok_or(BAD_DEFAULT_PAYLOAD)?)
        }
        _ => None,
    };
    if n.event_id.is_some() && n.event_type.is_none() {
        return Ok(Some(event_id_only(n, default_payload)));
    }
    Ok(full(n, device, default_payload, send_badge_counts))
}

fn event_id_only(n: &Notification, default_payload: Option<RawObject>) -> Payload {
    let mut top = default_payload.unwrap_or_default();
    let aps = take_aps(&mut top);
    for (key, value) in [("room_id", &n.room_id), ("event_id", &n.event_id)] {
        if let Some(value) = value {
            top.insert_str(key, value);
        }
    }
    for (key, count) in [("unread_count", n.counts.unread), ("missed_calls", n.counts.missed_calls)]
    {
        if let Some(count) = count {
            top.insert(key, &count);
        }
    }
    Payload { top, aps }
}

fn full(
    n: &Notification,
    device: &Device,
    default_payload: Option<RawObject>,
    send_badge_counts: bool,
) -> Option<Payload> {
    let alert = loc_alert(n);
    let badge = match (n.counts.unread, n.counts.missed_calls) {
        _ if !send_badge_counts => None,
        (None, None) => None,
        (unread, missed) => Some(unread.unwrap_or(0).saturating_add(missed.unwrap_or(0))),
    };
    if alert.is_none() && badge.is_none() {
        return None;
    }
    // `default_payload` only for events: a badge-only update is exactly `{"aps":{"badge":N}}`.
    let mut top = match (&n.event_type, default_payload) {
        (Some(_), Some(default_payload)) => default_payload,
        _ => RawObject::new(),
    };
    let mut aps = take_aps(&mut top).unwrap_or_default();
    if let Some((loc_key, loc_args)) = &alert {
        let (mut fields, body) = match aps.alert.take() {
            Some(Alert::Dict { fields, body, .. }) => (fields, body),
            // A string (or stranger) alert from `default_payload` gives way to the event's.
            _ => (RawObject::new(), None),
        };
        fields.insert_str("loc-key", loc_key);
        aps.alert = Some(Alert::Dict { fields, body, loc_args: Some(loc_args.clone()) });
        if let Some(sound) = device.tweaks.str("sound") {
            aps.fields.insert_str("sound", &sound);
        }
        for (key, value) in [("room_id", &n.room_id), ("event_id", &n.event_id)] {
            if let Some(value) = value {
                top.insert_str(key, value);
            }
        }
    }
    if let Some(badge) = badge {
        aps.fields.insert("badge", &badge);
    }
    Some(Payload { top, aps: Some(aps) })
}

/// Removes `aps` from `top` and opens it; an `aps` that is not an object is dropped (APNs
/// requires a dictionary).
fn take_aps(top: &mut RawObject) -> Option<Aps> {
    let raw = top.remove("aps")?;
    let mut fields = RawObject::parse(raw.get())?;
    let alert = fields.remove("alert").map(|raw| open_alert(&raw));
    Some(Aps { fields, alert })
}

fn open_alert(raw: &RawValue) -> Alert {
    if let Some(text) = lenient_str(raw) {
        return Alert::Text(text.into_owned());
    }
    let Some(mut fields) = RawObject::parse(raw.get()) else {
        return Alert::Other(raw.to_owned());
    };
    let body = match fields.str("body") {
        Some(body) => {
            let body = body.into_owned();
            fields.remove("body");
            Some(body)
        }
        None => None,
    };
    let loc_args = match fields.get("loc-args").map(|raw| serde_json::from_str(raw.get())) {
        Some(Ok(args)) => {
            fields.remove("loc-args");
            Some(args)
        }
        // Not an array of strings: kept as sent, never shortened.
        _ => None,
    };
    Alert::Dict { fields, body, loc_args }
}

/// The `loc-key` and `loc-args` for a full-mode notification (payloads.md's table).
fn loc_alert(n: &Notification) -> Option<(&'static str, Vec<String>)> {
    let from = || {
        let from = n.sender_display_name.as_deref().or(n.sender.as_deref()).unwrap_or(NO_SENDER);
        cut_chars(from, MAX_FIELD_CHARS)
    };
    let room = || {
        n.room_name.as_deref().or(n.room_alias.as_deref()).map(|r| cut_chars(r, MAX_FIELD_CHARS))
    };
    match n.event_type.as_deref()? {
        "m.room.message" | "m.room.encrypted" => {
            // Content counts only when it has both a `msgtype` and a `body` (strings).
            let content = n.content.as_ref();
            let msgtype = content.and_then(|c| c.str("msgtype"));
            let body = content.and_then(|c| c.str("body"));
            let (is_image, text, action) = match (msgtype.as_deref(), body) {
                (Some("m.emote"), Some(body)) => (false, None, Some(body.into_owned())),
                (Some("m.image"), Some(body)) => (true, Some(body.into_owned()), None),
                (Some(_), Some(body)) => (false, Some(body.into_owned()), None),
                _ => (false, None, None),
            };
            Some(match (room(), is_image, text, action) {
                (Some(room), true, Some(body), _) => {
                    ("IMAGE_FROM_USER_IN_ROOM", vec![from(), body, room])
                }
                (Some(room), false, Some(body), _) => {
                    ("MSG_FROM_USER_IN_ROOM_WITH_CONTENT", vec![from(), room, body])
                }
                (Some(room), _, _, Some(action)) => {
                    ("ACTION_FROM_USER_IN_ROOM", vec![room, from(), action])
                }
                (Some(room), _, _, _) => ("MSG_FROM_USER_IN_ROOM", vec![from(), room]),
                (None, true, Some(body), _) => ("IMAGE_FROM_USER", vec![from(), body]),
                (None, false, Some(body), _) => ("MSG_FROM_USER_WITH_CONTENT", vec![from(), body]),
                (None, _, _, Some(action)) => ("ACTION_FROM_USER", vec![from(), action]),
                (None, _, _, _) => ("MSG_FROM_USER", vec![from()]),
            })
        }
        "m.call.invite" => {
            let sdp = n
                .content
                .as_ref()
                .and_then(|c| c.object("offer"))
                .and_then(|offer| offer.str("sdp").map(Cow::into_owned));
            let video = sdp.is_some_and(|sdp| sdp.contains("m=video"));
            let key = if video { "VIDEO_CALL_FROM_USER" } else { "VOICE_CALL_FROM_USER" };
            Some((key, vec![from()]))
        }
        "m.room.member" => {
            let invited =
                n.user_is_target == Some(true) && n.membership.as_deref() == Some("invite");
            if !invited {
                return None;
            }
            Some(match room() {
                Some(room) => ("USER_INVITE_TO_NAMED_ROOM", vec![from(), room]),
                None => ("USER_INVITE_TO_CHAT", vec![from()]),
            })
        }
        _ => Some(("MSG_FROM_USER", vec![from()])),
    }
}

/// At most `max` characters of `text`.
fn cut_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => text[..end].to_owned(),
        None => text.to_owned(),
    }
}

impl Aps {
    fn to_object(&self) -> RawObject {
        let mut aps = self.fields.clone();
        match &self.alert {
            None => {}
            Some(Alert::Text(text)) => aps.insert_str("alert", text),
            Some(Alert::Other(raw)) => aps.insert_raw("alert", raw.clone()),
            Some(Alert::Dict { fields, body, loc_args }) => {
                let mut alert = fields.clone();
                if let Some(body) = body {
                    alert.insert_str("body", body);
                }
                if let Some(loc_args) = loc_args {
                    alert.insert("loc-args", loc_args);
                }
                aps.insert("alert", &alert);
            }
        }
        aps
    }
}

impl Payload {
    /// The payload as compact JSON, keys sorted.
    pub(crate) fn to_json(&self) -> Vec<u8> {
        match &self.aps {
            None => self.top.to_json(),
            Some(aps) => {
                let mut top = self.top.clone();
                top.insert("aps", &aps.to_object());
                top.to_json()
            }
        }
    }

    /// The texts that may be shortened.
    fn texts_mut(&mut self) -> Vec<&mut String> {
        match self.aps.as_mut().and_then(|aps| aps.alert.as_mut()) {
            Some(Alert::Text(text)) => vec![text],
            Some(Alert::Dict { body, loc_args, .. }) => {
                body.iter_mut().chain(loc_args.iter_mut().flatten()).collect()
            }
            _ => Vec::new(),
        }
    }

    /// Serialises the payload into at most `limit` bytes if it can, giving up as little as
    /// possible (see the module docs). Never fails.
    pub(crate) fn fit(&mut self, limit: usize) -> (Vec<u8>, Shrink) {
        let mut json = self.to_json();
        if json.len() <= limit {
            return (json, Shrink::None);
        }
        // Lengths are as serialised (escapes included). Each round cuts at least one character,
        // so this ends.
        while json.len() > limit {
            let excess = json.len() - limit;
            let mut texts = self.texts_mut();
            let lengths: Vec<usize> = texts.iter().map(|t| encoded_len(t)).collect();
            let Some(&longest) = lengths.iter().max().filter(|&&l| l > 0) else {
                break;
            };
            let ties = lengths.iter().filter(|&&l| l == longest).count();
            let second = lengths.iter().copied().filter(|&l| l < longest).max().unwrap_or(0);
            // Down to the next longest text at most, so equally long texts are cut equally;
            // the excess is shared among the tied ones.
            let target = if ties > 1 {
                longest.saturating_sub(excess.div_ceil(ties))
            } else {
                longest.saturating_sub(excess).max(second)
            };
            if let Some(i) = lengths.iter().position(|&l| l == longest) {
                truncate_encoded(&mut *texts[i], target);
            }
            json = self.to_json();
        }
        if json.len() <= limit {
            return (json, Shrink::TextCut);
        }
        self.drop_optional(limit);
        let json = self.to_json();
        let shrink =
            if json.len() <= limit { Shrink::FieldsDropped } else { Shrink::StillTooLarge };
        (json, shrink)
    }

    /// Drops optional fields, the largest first wherever they are, until the payload fits.
    fn drop_optional(&mut self, limit: usize) {
        #[derive(Clone, Copy)]
        enum Level {
            Top,
            Aps,
            Alert,
        }
        let size = |k: &str, v: &RawValue| k.len() + v.get().len();
        let mut candidates: Vec<(usize, Level, String)> = self
            .top
            .iter()
            .filter(|(k, _)| !OWN_TOP_KEYS.contains(k))
            .map(|(k, v)| (size(k, v), Level::Top, k.to_owned()))
            .collect();
        if let Some(aps) = &self.aps {
            candidates.extend(
                aps.fields
                    .iter()
                    .filter(|(k, _)| !ESSENTIAL_APS_KEYS.contains(k))
                    .map(|(k, v)| (size(k, v), Level::Aps, k.to_owned())),
            );
            if let Some(Alert::Dict { fields, .. }) = &aps.alert {
                candidates.extend(
                    fields
                        .iter()
                        .filter(|(k, _)| *k != "loc-key")
                        .map(|(k, v)| (size(k, v), Level::Alert, k.to_owned())),
                );
            }
        }
        candidates.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.2.cmp(&b.2)));
        for (_, level, key) in candidates {
            if self.to_json().len() <= limit {
                return;
            }
            match (level, self.aps.as_mut()) {
                (Level::Top, _) => {
                    self.top.remove(&key);
                }
                (Level::Aps, Some(aps)) => {
                    aps.fields.remove(&key);
                }
                (Level::Alert, Some(aps)) => {
                    if let Some(Alert::Dict { fields, .. }) = &mut aps.alert {
                        fields.remove(&key);
                    }
                }
                (_, None) => {}
            }
        }
    }
}

/// The length of `text` as serde_json writes it inside a string.
fn encoded_len(text: &str) -> usize {
    text.chars().map(encoded_char_len).sum()
}

fn encoded_char_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

/// Cuts `text` so that it serialises to at most `max_encoded` bytes, on a character boundary.
fn truncate_encoded(text: &mut String, max_encoded: usize) {
    let mut used = 0;
    for (i, c) in text.char_indices() {
        used += encoded_char_len(c);
        if used > max_encoded {
            text.truncate(i);
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use herald_core::{Counts, Priority};
    use serde_json::json;

    use super::*;

    fn raw(value: &serde_json::Value) -> RawObject {
        RawObject::parse(&value.to_string()).expect("an object")
    }

    #[allow(clippy::needless_pass_by_value)] // The tests build the values in place.
    fn device(data: serde_json::Value, tweaks: serde_json::Value) -> Device {
        let mut device = Device::new("im.app", "pk");
        device.data = raw(&data);
        device.tweaks = raw(&tweaks);
        device
    }

    /// A message event as Synapse sends it in full format.
    #[allow(clippy::needless_pass_by_value)] // The tests build the values in place.
    fn message(content: serde_json::Value) -> Notification {
        Notification {
            event_id: Some("$event".into()),
            room_id: Some("!room:example.org".into()),
            event_type: Some("m.room.message".into()),
            sender: Some("@alice:example.org".into()),
            sender_display_name: Some("Alice".into()),
            room_name: Some("Lunch".into()),
            prio: Priority::High,
            content: Some(raw(&content)),
            counts: Counts { unread: Some(2), missed_calls: None },
            ..Notification::default()
        }
    }

    /// The payload's exact JSON text.
    fn golden(n: &Notification, d: &Device) -> String {
        let payload = build(n, d, true).expect("buildable").expect("something to send");
        String::from_utf8(payload.to_json()).expect("utf-8")
    }

    fn plain() -> Device {
        device(json!({}), json!({}))
    }

    #[test]
    fn loc_key_table_with_a_room() {
        let text = message(json!({"msgtype": "m.text", "body": "Hi!"}));
        assert_eq!(
            golden(&text, &plain()),
            r#"{"aps":{"alert":{"loc-args":["Alice","Lunch","Hi!"],"loc-key":"MSG_FROM_USER_IN_ROOM_WITH_CONTENT"},"badge":2},"event_id":"$event","room_id":"!room:example.org"}"#
        );
        let image = message(json!({"msgtype": "m.image", "body": "cat.png"}));
        assert_eq!(
            golden(&image, &plain()),
            r#"{"aps":{"alert":{"loc-args":["Alice","cat.png","Lunch"],"loc-key":"IMAGE_FROM_USER_IN_ROOM"},"badge":2},"event_id":"$event","room_id":"!room:example.org"}"#
        );
        let emote = message(json!({"msgtype": "m.emote", "body": "waves"}));
        assert_eq!(
            golden(&emote, &plain()),
            r#"{"aps":{"alert":{"loc-args":["Lunch","Alice","waves"],"loc-key":"ACTION_FROM_USER_IN_ROOM"},"badge":2},"event_id":"$event","room_id":"!room:example.org"}"#
        );
        // No body (or no msgtype, or not strings): the content does not count.
        for content in [json!({}), json!({"body": "x"}), json!({"msgtype": "m.text", "body": 7})] {
            assert_eq!(
                golden(&message(content), &plain()),
                r#"{"aps":{"alert":{"loc-args":["Alice","Lunch"],"loc-key":"MSG_FROM_USER_IN_ROOM"},"badge":2},"event_id":"$event","room_id":"!room:example.org"}"#
            );
        }
        // An encrypted event reads the same way (Synapse sends what it can see).
        let mut encrypted = message(json!({"algorithm": "m.megolm.v1.aes-sha2"}));
        encrypted.event_type = Some("m.room.encrypted".into());
        assert_eq!(
            golden(&encrypted, &plain()),
            r#"{"aps":{"alert":{"loc-args":["Alice","Lunch"],"loc-key":"MSG_FROM_USER_IN_ROOM"},"badge":2},"event_id":"$event","room_id":"!room:example.org"}"#
        );
        // The alias stands in for a missing name.
        let mut aliased = message(json!({"msgtype": "m.text", "body": "Hi!"}));
        aliased.room_name = None;
        aliased.room_alias = Some("#lunch:example.org".into());
        assert_eq!(
            golden(&aliased, &plain()),
            r##"{"aps":{"alert":{"loc-args":["Alice","#lunch:example.org","Hi!"],"loc-key":"MSG_FROM_USER_IN_ROOM_WITH_CONTENT"},"badge":2},"event_id":"$event","room_id":"!room:example.org"}"##
        );
    }

    #[test]
    fn loc_key_table_without_a_room() {
        let no_room = |content| Notification { room_name: None, ..message(content) };
        let cases = [
            (
                json!({"msgtype": "m.text", "body": "Hi!"}),
                r#"["Alice","Hi!"],"loc-key":"MSG_FROM_USER_WITH_CONTENT""#,
            ),
            (
                json!({"msgtype": "m.image", "body": "cat.png"}),
                r#"["Alice","cat.png"],"loc-key":"IMAGE_FROM_USER""#,
            ),
            (
                json!({"msgtype": "m.emote", "body": "waves"}),
                r#"["Alice","waves"],"loc-key":"ACTION_FROM_USER""#,
            ),
            (json!({"msgtype": "m.text"}), r#"["Alice"],"loc-key":"MSG_FROM_USER""#),
        ];
        for (content, alert) in cases {
            assert_eq!(
                golden(&no_room(content), &plain()),
                format!(
                    r#"{{"aps":{{"alert":{{"loc-args":{alert}}},"badge":2}},"event_id":"$event","room_id":"!room:example.org"}}"#
                )
            );
        }
    }

    #[test]
    fn sender_falls_back_to_the_id_then_a_space_and_names_are_cut() {
        let mut n = message(json!({}));
        n.sender_display_name = None;
        assert!(golden(&n, &plain()).contains(r#"["@alice:example.org","Lunch"]"#));
        n.sender = None;
        assert!(golden(&n, &plain()).contains(r#"[" ","Lunch"]"#));
        n.sender_display_name = Some("é".repeat(2000));
        n.room_name = Some("r".repeat(1500));
        let json: serde_json::Value = serde_json::from_str(&golden(&n, &plain())).expect("json");
        let args = json["aps"]["alert"]["loc-args"].as_array().expect("args");
        assert_eq!(args[0].as_str().expect("from").chars().count(), 1024);
        assert_eq!(args[1].as_str().expect("room").chars().count(), 1024);
    }

    #[test]
    fn call_invites_voice_and_video() {
        let call = |sdp: &str| Notification {
            event_type: Some("m.call.invite".into()),
            content: Some(raw(&json!({"call_id": "c1", "offer": {"type": "offer", "sdp": sdp}}))),
            ..message(json!({}))
        };
        let video = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n";
        assert_eq!(
            golden(&call(video), &plain()),
            r#"{"aps":{"alert":{"loc-args":["Alice"],"loc-key":"VIDEO_CALL_FROM_USER"},"badge":2},"event_id":"$event","room_id":"!room:example.org"}"#
        );
        assert_eq!(
            golden(&call("v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"), &plain()),
            r#"{"aps":{"alert":{"loc-args":["Alice"],"loc-key":"VOICE_CALL_FROM_USER"},"badge":2},"event_id":"$event","room_id":"!room:example.org"}"#
        );
    }

    #[test]
    fn invites_and_other_member_events() {
        let member = |target: Option<bool>, membership: &str| Notification {
            event_type: Some("m.room.member".into()),
            membership: Some(membership.into()),
            user_is_target: target,
            content: Some(raw(&json!({"membership": membership}))),
            ..message(json!({}))
        };
        assert_eq!(
            golden(&member(Some(true), "invite"), &plain()),
            r#"{"aps":{"alert":{"loc-args":["Alice","Lunch"],"loc-key":"USER_INVITE_TO_NAMED_ROOM"},"badge":2},"event_id":"$event","room_id":"!room:example.org"}"#
        );
        let unnamed = Notification { room_name: None, ..member(Some(true), "invite") };
        assert_eq!(
            golden(&unnamed, &plain()),
            r#"{"aps":{"alert":{"loc-args":["Alice"],"loc-key":"USER_INVITE_TO_CHAT"},"badge":2},"event_id":"$event","room_id":"!room:example.org"}"#
        );
        // Not an invite of this user: no alert, only the badge (and no ids).
        for n in [member(Some(false), "invite"), member(None, "invite"), member(Some(true), "join")]
        {
            assert_eq!(golden(&n, &plain()), r#"{"aps":{"badge":2}}"#);
        }
        // ... and with no counts, nothing to send.
        let quiet = Notification { counts: Counts::default(), ..member(Some(true), "leave") };
        assert!(matches!(build(&quiet, &plain(), true), Ok(None)));
    }

    #[test]
    fn other_event_types_are_a_message_from_the_sender() {
        let n = Notification { event_type: Some("m.sticker".into()), ..message(json!({})) };
        assert_eq!(
            golden(&n, &plain()),
            r#"{"aps":{"alert":{"loc-args":["Alice"],"loc-key":"MSG_FROM_USER"},"badge":2},"event_id":"$event","room_id":"!room:example.org"}"#
        );
    }

    #[test]
    fn badge_only_updates() {
        for (unread, missed, badge) in
            [(Some(0), None, 0), (Some(3), Some(2), 5), (None, Some(1), 1)]
        {
            let n = Notification {
                counts: Counts { unread, missed_calls: missed },
                ..Notification::default()
            };
            // default_payload is not merged into badge updates.
            let d = device(json!({"default_payload": {"aps": {"mutable-content": 1}}}), json!({}));
            assert_eq!(golden(&n, &d), format!(r#"{{"aps":{{"badge":{badge}}}}}"#));
        }
        assert!(matches!(build(&Notification::default(), &plain(), true), Ok(None)));
        // Badges off: a badge-only update has nothing to send; a message has no badge.
        let n = Notification {
            counts: Counts { unread: Some(1), missed_calls: None },
            ..Notification::default()
        };
        assert!(matches!(build(&n, &plain(), false), Ok(None)));
        let m = build(&message(json!({})), &plain(), false).expect("ok").expect("alert");
        assert!(!String::from_utf8(m.to_json()).expect("utf-8").contains("badge"));
    }

    /// Element iOS's pusher: event_id_only with its own `aps`.
    #[test]
    fn event_id_only_with_element_ios_default_payload() {
        let element = device(
            json!({
                "format": "event_id_only",
                "default_payload": {"aps": {
                    "mutable-content": 1,
                    "content-available": 1,
                    "alert": {"loc-key": "SINGLE_UNREAD", "loc-args": []}
                }}
            }),
            json!({}),
        );
        let n = Notification {
            event_id: Some("$event".into()),
            room_id: Some("!room:example.org".into()),
            counts: Counts { unread: Some(3), missed_calls: Some(1) },
            ..Notification::default()
        };
        assert_eq!(
            golden(&n, &element),
            r#"{"aps":{"alert":{"loc-args":[],"loc-key":"SINGLE_UNREAD"},"content-available":1,"mutable-content":1},"event_id":"$event","missed_calls":1,"room_id":"!room:example.org","unread_count":3}"#
        );
        // Without default_payload: no aps at all; absent counts are left out.
        let bare = Notification { counts: Counts { unread: Some(0), missed_calls: None }, ..n };
        assert_eq!(
            golden(&bare, &plain()),
            r#"{"event_id":"$event","room_id":"!room:example.org","unread_count":0}"#
        );
    }

    #[test]
    fn default_payload_merges_under_full_notifications() {
        let d = device(
            json!({"default_payload": {
                "aps": {"alert": {"title": "New message"}, "thread-id": "t1", "sound": "app.caf"},
                "custom": {"deep": [1, {"x": null}]},
                "room_id": "overwritten"
            }}),
            json!({"sound": "default"}),
        );
        assert_eq!(
            golden(&message(json!({"msgtype": "m.text", "body": "Hi!"})), &d),
            r#"{"aps":{"alert":{"loc-args":["Alice","Lunch","Hi!"],"loc-key":"MSG_FROM_USER_IN_ROOM_WITH_CONTENT","title":"New message"},"badge":2,"sound":"default","thread-id":"t1"},"custom":{"deep":[1,{"x":null}]},"event_id":"$event","room_id":"!room:example.org"}"#
        );
        // A string alert gives way to the event's; a non-object `aps` is replaced.
        let d = device(json!({"default_payload": {"aps": {"alert": "Hello"}}}), json!({}));
        assert_eq!(
            golden(&message(json!({})), &d),
            r#"{"aps":{"alert":{"loc-args":["Alice","Lunch"],"loc-key":"MSG_FROM_USER_IN_ROOM"},"badge":2},"event_id":"$event","room_id":"!room:example.org"}"#
        );
        let d = device(json!({"default_payload": {"aps": 5}}), json!({}));
        assert_eq!(
            golden(&message(json!({})), &d),
            r#"{"aps":{"alert":{"loc-args":["Alice","Lunch"],"loc-key":"MSG_FROM_USER_IN_ROOM"},"badge":2},"event_id":"$event","room_id":"!room:example.org"}"#
        );
    }

    #[test]
    fn sound_tweak_becomes_aps_sound() {
        let d = device(json!({}), json!({"sound": "ring.caf", "highlight": true}));
        assert_eq!(
            golden(&message(json!({})), &d),
            r#"{"aps":{"alert":{"loc-args":["Alice","Lunch"],"loc-key":"MSG_FROM_USER_IN_ROOM"},"badge":2,"sound":"ring.caf"},"event_id":"$event","room_id":"!room:example.org"}"#
        );
        // Not a string: ignored.
        let d = device(json!({}), json!({"sound": true}));
        assert!(!golden(&message(json!({})), &d).contains("sound"));
    }

    #[test]
    fn a_default_payload_that_is_not_an_object_rejects_the_device() {
        for bad in [json!("text"), json!([1]), json!(3)] {
            let d = device(json!({"default_payload": bad}), json!({}));
            assert!(matches!(build(&message(json!({})), &d, true), Err(BAD_DEFAULT_PAYLOAD)));
        }
        // `null` is absent.
        let d = device(json!({"default_payload": null}), json!({}));
        assert!(build(&message(json!({})), &d, true).expect("ok").is_some());
    }

    fn fitted(n: &Notification, d: &Device, limit: usize) -> (serde_json::Value, Shrink, usize) {
        let mut payload = build(n, d, true).expect("ok").expect("some");
        let (json, shrink) = payload.fit(limit);
        let value = serde_json::from_slice(&json).expect("valid JSON after fitting");
        (value, shrink, json.len())
    }

    #[test]
    fn long_bodies_are_cut_on_a_character_boundary() {
        // Multibyte characters straddle every possible boundary: 1-, 2-, 3- and 4-byte ones.
        for filler in ["a", "é", "€", "🎉"] {
            let body = filler.repeat(5000);
            let n = message(json!({"msgtype": "m.text", "body": body}));
            let (json, shrink, len) = fitted(&n, &plain(), 4096);
            assert_eq!(shrink, Shrink::TextCut, "{filler}");
            assert!(len <= 4096 && len > 4096 - 4, "{filler}: {len} bytes");
            let cut = json["aps"]["alert"]["loc-args"][2].as_str().expect("body");
            assert!(body.starts_with(cut) && cut.chars().all(|c| c.to_string() == filler));
            // Everything else is intact.
            assert_eq!(json["aps"]["alert"]["loc-args"][0], "Alice");
            assert_eq!(json["event_id"], "$event");
        }
        // Escapes count as written: quotes take two bytes each.
        let n = message(json!({"msgtype": "m.text", "body": "\"".repeat(5000)}));
        let (_, shrink, len) = fitted(&n, &plain(), 4096);
        assert_eq!(shrink, Shrink::TextCut);
        assert!((4094..=4096).contains(&len), "{len}");
        // VoIP pushes may be larger.
        let n = message(json!({"msgtype": "m.text", "body": "x".repeat(5000)}));
        let (_, _, len) = fitted(&n, &plain(), 5120);
        assert!(len <= 5120 && len > 5000, "{len}");
    }

    #[test]
    fn equally_long_texts_are_cut_fairly() {
        let mut n = message(json!({"msgtype": "m.text", "body": "b".repeat(3000)}));
        n.sender_display_name = Some("s".repeat(1024));
        n.room_name = Some("r".repeat(1024));
        let (json, _, len) = fitted(&n, &plain(), 2048);
        assert!(len <= 2048, "{len}");
        let args: Vec<usize> = json["aps"]["alert"]["loc-args"]
            .as_array()
            .expect("args")
            .iter()
            .map(|a| a.as_str().expect("text").len())
            .collect();
        let (min, max) = (args.iter().min().expect("min"), args.iter().max().expect("max"));
        assert!(max - min <= 2, "{args:?}");
    }

    #[test]
    fn a_string_alert_or_alert_body_from_default_payload_is_cut_too() {
        let d = device(json!({"default_payload": {"aps": {"alert": "x".repeat(6000)}}}), json!({}));
        let n = Notification {
            event_id: Some("$e".into()),
            room_id: Some("!r".into()),
            ..Notification::default()
        };
        let (json, shrink, len) = fitted(&n, &d, 4096);
        assert_eq!(shrink, Shrink::TextCut);
        assert!(len <= 4096);
        assert!(json["aps"]["alert"].as_str().expect("text").len() > 4000);
        let d = device(
            json!({"default_payload": {"aps": {"alert": {"body": "y".repeat(6000), "title": "T"}}}}),
            json!({}),
        );
        let (json, _, len) = fitted(&n, &d, 4096);
        assert!(len <= 4096);
        assert_eq!(json["aps"]["alert"]["title"], "T");
    }

    #[test]
    fn when_texts_are_gone_optional_fields_go_and_it_never_fails() {
        let d = device(
            json!({"default_payload": {
                "aps": {"mutable-content": 1, "category": "c".repeat(3000),
                        "alert": {"loc-key": "K", "title": "t".repeat(2000)}},
                "big": "b".repeat(3000),
                "small": 1
            }}),
            json!({}),
        );
        let n = Notification {
            event_id: Some("$e".into()),
            room_id: Some("!r".into()),
            ..Notification::default()
        };
        let (json, shrink, len) = fitted(&n, &d, 4096);
        assert_eq!(shrink, Shrink::FieldsDropped);
        assert!(len <= 4096, "{len}");
        // The largest went first; what fits stays.
        assert!(json.get("big").is_none());
        assert_eq!(json["small"], 1);
        assert_eq!(json["aps"]["mutable-content"], 1);
        assert_eq!(json["event_id"], "$e");
        // Impossible: ids alone are too large. Sent anyway, unchanged ids.
        let huge = Notification { room_id: Some("!".repeat(5000)), ..n };
        let (json, shrink, _) = fitted(&huge, &plain(), 4096);
        assert_eq!(shrink, Shrink::StillTooLarge);
        assert_eq!(json["room_id"].as_str().map(str::len), Some(5000));
    }

    #[test]
    fn small_payloads_are_left_alone() {
        let (_, shrink, _) =
            fitted(&message(json!({"body": "x", "msgtype": "m.text"})), &plain(), 4096);
        assert_eq!(shrink, Shrink::None);
    }
}
