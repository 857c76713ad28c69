//! The notify request body, parsed the way real homeservers send it.
//!
//! Leniency is a requirement, not a convenience: Synapse sends `null` or `""` for absent strings in
//! badge-only updates, omits `tweaks` in `event_id_only` mode, and newer room versions have room ids
//! without a server part. Only `notification`, `devices` and each device's `app_id`/`pushkey` are
//! required; unknown fields are ignored; Matrix ids are never validated beyond "is a string".

use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

/// A JSON object, as kept for `content`, `data`, `tweaks` and `default_payload`.
pub type JsonObject = Map<String, Value>;

/// The whole body of `POST /_matrix/push/v1/notify`.
#[derive(Debug, Clone, Deserialize)]
pub struct NotifyRequest {
    /// The notification and the devices to send it to.
    pub notification: Notification,
}

/// Information about the event (or only the badge counts) to push.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Notification {
    /// The event being notified about; absent (or empty) for badge-only updates.
    #[serde(default, deserialize_with = "lenient_string")]
    pub event_id: Option<String>,
    /// The room the event happened in.
    #[serde(default, deserialize_with = "lenient_string")]
    pub room_id: Option<String>,
    /// The event's `type`, e.g. `m.room.message`.
    #[serde(default, rename = "type", deserialize_with = "lenient_string")]
    pub event_type: Option<String>,
    /// The event's sender.
    #[serde(default, deserialize_with = "lenient_string")]
    pub sender: Option<String>,
    /// The sender's display name in the room.
    #[serde(default, deserialize_with = "lenient_string")]
    pub sender_display_name: Option<String>,
    /// The room's name.
    #[serde(default, deserialize_with = "lenient_string")]
    pub room_name: Option<String>,
    /// An alias to display for the room.
    #[serde(default, deserialize_with = "lenient_string")]
    pub room_alias: Option<String>,
    /// For member events: the membership (`invite`, …). Not in the spec, sent by Synapse.
    #[serde(default, deserialize_with = "lenient_string")]
    pub membership: Option<String>,
    /// True when the receiving user is the subject of a member event.
    #[serde(default, deserialize_with = "lenient_bool")]
    pub user_is_target: Option<bool>,
    /// Delivery priority; `high` unless the homeserver says `low`.
    #[serde(default)]
    pub prio: Priority,
    /// The event's `content`, kept as sent.
    #[serde(default, deserialize_with = "lenient_object")]
    pub content: Option<JsonObject>,
    /// Unread counts (the badge).
    #[serde(default, deserialize_with = "lenient_counts")]
    pub counts: Counts,
    /// The devices to deliver to. Required.
    pub devices: Vec<Device>,
}

impl Notification {
    /// The dedup identity of this notification: `None` for badge-only updates, which are
    /// idempotent and must never be deduplicated.
    pub fn dedup_event_id(&self) -> Option<&str> {
        self.event_id.as_deref()
    }

    /// True when this carries only counts (no event): the app should update its badge only.
    pub fn is_badge_only(&self) -> bool {
        self.event_id.is_none()
    }
}

/// The priority of a notification.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Priority {
    /// Deliver promptly (the default).
    #[default]
    High,
    /// May be delayed to save battery.
    Low,
}

impl Priority {
    /// The spec's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Low => "low",
        }
    }
}

impl<'de> Deserialize<'de> for Priority {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Anything but "low" (null, "", a future value) keeps the spec's default.
        let s = lenient_string(d)?;
        Ok(match s.as_deref() {
            Some("low") => Priority::Low,
            _ => Priority::High,
        })
    }
}

/// Unacknowledged communications of the receiving user.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct Counts {
    /// Unread messages across all rooms: the badge number.
    #[serde(default, deserialize_with = "lenient_count")]
    pub unread: Option<u64>,
    /// Unacknowledged missed calls.
    #[serde(default, deserialize_with = "lenient_count")]
    pub missed_calls: Option<u64>,
}

/// One device (pusher) to deliver to.
#[derive(Debug, Clone, Deserialize)]
pub struct Device {
    /// Selects the configured app (and so the backend).
    pub app_id: String,
    /// The device's token; its meaning depends on the backend.
    pub pushkey: String,
    /// When the pushkey was last updated (unix seconds).
    #[serde(default, deserialize_with = "lenient_i64")]
    pub pushkey_ts: Option<i64>,
    /// The pusher's `data` minus `url`; backends read their options from it.
    #[serde(default, deserialize_with = "lenient_map")]
    pub data: JsonObject,
    /// Presentation tweaks from push rules (`sound`, `highlight`); absent in `event_id_only`.
    #[serde(default, deserialize_with = "lenient_map")]
    pub tweaks: JsonObject,
}

/// Why a request body could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ParseError {
    /// `M_NOT_JSON` or `M_BAD_JSON`.
    pub kind: ParseErrorKind,
    /// Human-readable, naming the offending field where there is one.
    pub message: String,
}

/// The two ways a body can be unusable, as Matrix error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseErrorKind {
    /// Not JSON at all.
    NotJson,
    /// JSON, but not of the notify shape.
    BadJson,
}

impl ParseErrorKind {
    /// The Matrix `errcode`.
    pub fn errcode(self) -> &'static str {
        match self {
            ParseErrorKind::NotJson => "M_NOT_JSON",
            ParseErrorKind::BadJson => "M_BAD_JSON",
        }
    }
}

impl NotifyRequest {
    /// Parses a request body. The fast path is a plain serde_json parse; only a failing body is
    /// parsed a second time, with path tracking, to name the offending field.
    pub fn from_slice(body: &[u8]) -> Result<Self, ParseError> {
        match serde_json::from_slice(body) {
            Ok(request) => Ok(request),
            Err(first) => Err(Self::explain(body, &first)),
        }
    }

    fn explain(body: &[u8], first: &serde_json::Error) -> ParseError {
        use serde_json::error::Category;
        if matches!(first.classify(), Category::Syntax | Category::Eof | Category::Io) {
            return ParseError {
                kind: ParseErrorKind::NotJson,
                message: format!("request body is not valid JSON: {first}"),
            };
        }
        let mut de = serde_json::Deserializer::from_slice(body);
        let message = match serde_path_to_error::deserialize::<_, NotifyRequest>(&mut de) {
            Err(err) if err.path().iter().next().is_some() => {
                format!("{}: {}", err.path(), err.inner())
            }
            _ => first.to_string(),
        };
        ParseError { kind: ParseErrorKind::BadJson, message }
    }
}

fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    Ok(s.filter(|s| !s.is_empty()))
}

fn lenient_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    Option::deserialize(d)
}

fn lenient_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Option::deserialize(d)
}

fn lenient_count<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Option::deserialize(d)
}

fn lenient_object<'de, D: Deserializer<'de>>(d: D) -> Result<Option<JsonObject>, D::Error> {
    Option::deserialize(d)
}

fn lenient_map<'de, D: Deserializer<'de>>(d: D) -> Result<JsonObject, D::Error> {
    Ok(Option::deserialize(d)?.unwrap_or_default())
}

fn lenient_counts<'de, D: Deserializer<'de>>(d: D) -> Result<Counts, D::Error> {
    Ok(Option::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<NotifyRequest, ParseError> {
        NotifyRequest::from_slice(s.as_bytes())
    }

    #[test]
    fn spec_example_parses() {
        let r = parse(
            r##"{"notification":{"event_id":"$3957tyerfgewrf384","room_id":"!slw48wfj34rtnrf:example.com",
            "type":"m.room.message","sender":"@exampleuser:matrix.org","sender_display_name":"Major Tom",
            "room_name":"Mission Control","room_alias":"#exampleroom:matrix.org","prio":"high",
            "content":{"msgtype":"m.text","body":"I'm floating in a most peculiar way."},
            "counts":{"unread":2,"missed_calls":1},
            "devices":[{"app_id":"org.matrix.matrixConsole.ios","pushkey":"V2h5IG9uIGVhcnRoIGRpZCB5b3UgZGVjb2RlIHRoaXM/",
            "pushkey_ts":12345678,"data":{},"tweaks":{"sound":"bing"}}]}}"##,
        )
        .unwrap();
        let n = r.notification;
        assert_eq!(n.event_id.as_deref(), Some("$3957tyerfgewrf384"));
        assert_eq!(n.event_type.as_deref(), Some("m.room.message"));
        assert_eq!(n.prio, Priority::High);
        assert_eq!(n.counts, Counts { unread: Some(2), missed_calls: Some(1) });
        assert_eq!(n.devices[0].tweaks["sound"], "bing");
        assert_eq!(n.content.unwrap()["msgtype"], "m.text");
    }

    #[test]
    fn badge_only_with_nulls_and_empty_strings() {
        let r = parse(
            r#"{"notification":{"event_id":"","room_id":null,"sender":"","type":null,"prio":null,
            "content":null,"counts":{"unread":0,"missed_calls":null},"unknown_field":[1,2],
            "devices":[{"app_id":"a","pushkey":"k","pushkey_ts":null,"data":null,"tweaks":null}]}}"#,
        )
        .unwrap();
        let n = r.notification;
        assert!(n.is_badge_only());
        assert_eq!(n.dedup_event_id(), None);
        assert_eq!(n.prio, Priority::High);
        assert_eq!(n.counts.unread, Some(0));
        assert!(n.devices[0].data.is_empty());
    }

    #[test]
    fn minimal_event_id_only_and_low_prio() {
        let r = parse(
            r#"{"notification":{"event_id":"$e","room_id":"!roomwithoutserver","prio":"low",
            "devices":[{"app_id":"a","pushkey":"k"}]}}"#,
        )
        .unwrap();
        assert_eq!(r.notification.prio, Priority::Low);
        assert_eq!(r.notification.room_id.as_deref(), Some("!roomwithoutserver"));
        assert!(r.notification.devices[0].tweaks.is_empty());
    }

    #[test]
    fn not_json_and_bad_json_are_told_apart() {
        let e = parse("{nope").unwrap_err();
        assert_eq!(e.kind, ParseErrorKind::NotJson);
        let e = parse("").unwrap_err();
        assert_eq!(e.kind, ParseErrorKind::NotJson);
        let e = parse(r#"{"notification":{}}"#).unwrap_err();
        assert_eq!(e.kind, ParseErrorKind::BadJson);
        assert!(e.message.contains("devices"), "{}", e.message);
        let e = parse(r#"{}"#).unwrap_err();
        assert!(e.message.contains("notification"), "{}", e.message);
        let e = parse(r#"{"notification":{"devices":[{"app_id":"a","pushkey":3}]}}"#).unwrap_err();
        assert_eq!(e.kind, ParseErrorKind::BadJson);
        assert!(e.message.starts_with("notification.devices[0].pushkey"), "{}", e.message);
        let e = parse(r#"{"notification":{"devices":{}}}"#).unwrap_err();
        assert!(e.message.starts_with("notification.devices"), "{}", e.message);
        let e = parse(r#"[1]"#).unwrap_err();
        assert_eq!(e.kind, ParseErrorKind::BadJson);
    }
}
