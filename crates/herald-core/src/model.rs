//! The notify request body, parsed the way real homeservers (and attackers) send it.
//!
//! Leniency is a requirement, not a convenience. A 400 makes Synapse retry **the same event** for
//! 24 hours while every later notification for that pusher waits behind it, and any room member
//! controls an event's `content`. So the rule (docs/architecture.md) is: **400 only when the
//! request cannot be routed** — the body is not JSON, or has no `notification` object, no `devices`
//! list, or a device without a string `app_id` and `pushkey`. Everything else is read leniently:
//!
//! - optional strings: `null`, `""` and values of any other type are absent;
//! - numbers: integral floats (`2.0`) are integers, out-of-range counts are clamped, anything else
//!   is absent;
//! - `content`, pusher `data` and `tweaks` are [`RawObject`]s: any depth, values kept as raw JSON;
//! - lone UTF-16 surrogate escapes anywhere become U+FFFD; duplicate keys: the last one wins;
//! - unknown fields are ignored; Matrix ids are never validated beyond "is a string".

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::raw::{clamp_huge_numbers, replace_lone_surrogates, Lenient, LenientInt, RawObject};

/// The whole body of `POST /_matrix/push/v1/notify`.
#[derive(Debug, Clone)]
pub struct NotifyRequest {
    /// The notification and the devices to send it to.
    pub notification: Notification,
}

/// Information about the event (or only the badge counts) to push.
#[derive(Debug, Clone, Default)]
pub struct Notification {
    /// The event being notified about; absent (or empty) for badge-only updates.
    pub event_id: Option<String>,
    /// The room the event happened in.
    pub room_id: Option<String>,
    /// The event's `type`, e.g. `m.room.message`.
    pub event_type: Option<String>,
    /// The event's sender.
    pub sender: Option<String>,
    /// The sender's display name in the room.
    pub sender_display_name: Option<String>,
    /// The room's name.
    pub room_name: Option<String>,
    /// An alias to display for the room.
    pub room_alias: Option<String>,
    /// For member events: the membership (`invite`, …). Not in the spec, sent by Synapse.
    pub membership: Option<String>,
    /// True when the receiving user is the subject of a member event.
    pub user_is_target: Option<bool>,
    /// Delivery priority; `high` unless the homeserver says `low`.
    pub prio: Priority,
    /// The event's `content`: its top-level keys, values as sent. Absent unless an object.
    pub content: Option<RawObject>,
    /// Unread counts (the badge).
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

/// Unacknowledged communications of the receiving user.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Unread messages across all rooms: the badge number (0 to [`Counts::MAX`]).
    pub unread: Option<u64>,
    /// Unacknowledged missed calls (0 to [`Counts::MAX`]).
    pub missed_calls: Option<u64>,
}

impl Counts {
    /// Counts above this are clamped: no badge shows more, and every upstream takes it.
    pub const MAX: u64 = i32::MAX as u64;
}

/// One device (pusher) to deliver to.
#[derive(Debug, Clone)]
pub struct Device {
    /// Selects the configured app (and so the backend).
    pub app_id: String,
    /// The device's token; its meaning depends on the backend.
    pub pushkey: String,
    /// When the pushkey was last updated (unix seconds).
    pub pushkey_ts: Option<i64>,
    /// The pusher's `data` minus `url`; backends read their options from it.
    pub data: RawObject,
    /// Presentation tweaks from push rules (`sound`, `highlight`); absent in `event_id_only`.
    pub tweaks: RawObject,
}

impl Device {
    /// A device with no pusher data and no tweaks.
    pub fn new(app_id: impl Into<String>, pushkey: impl Into<String>) -> Self {
        Device {
            app_id: app_id.into(),
            pushkey: pushkey.into(),
            pushkey_ts: None,
            data: RawObject::new(),
            tweaks: RawObject::new(),
        }
    }
}

/// Why a request body could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ParseError {
    /// `M_NOT_JSON` or `M_BAD_JSON`.
    pub kind: ParseErrorKind,
    /// Names the offending field and the expected type, never a value from the body.
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
    /// Parses a request body. The fast path is one serde_json pass; only a failing body is looked
    /// at again: invalid UTF-8 and lone surrogate escapes are repaired and the parse retried, so
    /// that only a body of the wrong shape (or not JSON at all) is an error.
    pub fn from_slice(body: &[u8]) -> Result<Self, ParseError> {
        let first = match serde_json::from_slice(body) {
            Ok(request) => return Ok(request),
            Err(first) => first,
        };
        let repaired = match String::from_utf8_lossy(body) {
            std::borrow::Cow::Owned(text) => Some(text.into_bytes()),
            std::borrow::Cow::Borrowed(_) => None,
        };
        let repaired = match replace_lone_surrogates(repaired.as_deref().unwrap_or(body)) {
            Some(fixed) => Some(fixed),
            None => repaired,
        };
        let repaired = match clamp_huge_numbers(repaired.as_deref().unwrap_or(body)) {
            Some(fixed) => Some(fixed),
            None => repaired,
        };
        let error = match repaired {
            Some(fixed) => match serde_json::from_slice(&fixed) {
                Ok(request) => return Ok(request),
                Err(second) => second,
            },
            None => first,
        };
        Err(Self::explain(&error))
    }

    fn explain(error: &serde_json::Error) -> ParseError {
        use serde_json::error::Category;
        match error.classify() {
            // serde_json's syntax messages name a position, never the text found there.
            Category::Syntax | Category::Eof | Category::Io => ParseError {
                kind: ParseErrorKind::NotJson,
                message: format!("request body is not valid JSON: {error}"),
            },
            // Shape errors come from this module's visitors: a field path and an expected type.
            Category::Data => ParseError {
                kind: ParseErrorKind::BadJson,
                message: error.to_string().split(" at line ").next().unwrap_or("").to_owned(),
            },
        }
    }
}

/// A required field of the wrong type or missing: the only way a JSON body is refused.
fn shape<E: de::Error>(path: fmt::Arguments<'_>, expected: &str) -> E {
    E::custom(format_args!("{path}: expected {expected}"))
}

/// Implements the `visit_*` methods of a visitor that needs a map as errors naming `$path`.
macro_rules! only_a_map {
    ($path:expr, $expected:expr) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Err(shape(format_args!("{}", $path(&self)), $expected))
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Err(shape(format_args!("{}", $path(&self)), $expected))
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Err(shape(format_args!("{}", $path(&self)), $expected))
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Err(shape(format_args!("{}", $path(&self)), $expected))
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Err(shape(format_args!("{}", $path(&self)), $expected))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Err(shape(format_args!("{}", $path(&self)), $expected))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
            Err(shape(format_args!("{}", $path(&self)), $expected))
        }
    };
}

impl<'de> Deserialize<'de> for NotifyRequest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = NotifyRequest;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut notification = None;
                while let Some(key) = map.next_key::<Key>()? {
                    match key.0.as_str() {
                        "notification" => notification = Some(map.next_value::<Notification>()?),
                        _ => drop(map.next_value::<IgnoredAny>()?),
                    }
                }
                let notification =
                    notification.ok_or_else(|| shape(format_args!("notification"), "an object"))?;
                Ok(NotifyRequest { notification })
            }
            only_a_map!(|_: &Self| "request body", "a JSON object");
        }
        d.deserialize_any(V)
    }
}

/// An object key. Owned: keys with escapes cannot be borrowed from the body.
struct Key(String);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Key)
    }
}

impl<'de> Deserialize<'de> for Notification {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Notification;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut n = Notification::default();
                let mut devices = None;
                while let Some(key) = map.next_key::<Key>()? {
                    let string = |map: &mut A| map.next_value::<Lenient<Option<String>>>();
                    match key.0.as_str() {
                        "event_id" => n.event_id = string(&mut map)?.0,
                        "room_id" => n.room_id = string(&mut map)?.0,
                        "type" => n.event_type = string(&mut map)?.0,
                        "sender" => n.sender = string(&mut map)?.0,
                        "sender_display_name" => n.sender_display_name = string(&mut map)?.0,
                        "room_name" => n.room_name = string(&mut map)?.0,
                        "room_alias" => n.room_alias = string(&mut map)?.0,
                        "membership" => n.membership = string(&mut map)?.0,
                        "user_is_target" => {
                            n.user_is_target = map.next_value::<Lenient<Option<bool>>>()?.0
                        }
                        // Anything but "low" (null, "", a future value) keeps the default.
                        "prio" => {
                            n.prio = match string(&mut map)?.0.as_deref() {
                                Some("low") => Priority::Low,
                                _ => Priority::High,
                            }
                        }
                        "content" => n.content = map.next_value::<Lenient<Option<RawObject>>>()?.0,
                        "counts" => n.counts = map.next_value::<Lenient<Counts>>()?.0,
                        "devices" => devices = Some(map.next_value::<Devices>()?.0),
                        _ => drop(map.next_value::<IgnoredAny>()?),
                    }
                }
                n.devices =
                    devices.ok_or_else(|| shape(format_args!("notification.devices"), "a list"))?;
                Ok(n)
            }
            only_a_map!(|_: &Self| "notification", "an object");
        }
        d.deserialize_any(V)
    }
}

/// `notification.devices`: a list of device objects.
struct Devices(Vec<Device>);

impl<'de> Deserialize<'de> for Devices {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Devices;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut devices = Vec::with_capacity(seq.size_hint().unwrap_or(1).min(1024));
                while let Some(device) = seq.next_element_seed(DeviceAt(devices.len()))? {
                    devices.push(device);
                }
                Ok(Devices(devices))
            }
            fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
                Err(shape(format_args!("notification.devices"), "a list"))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Err(shape(format_args!("notification.devices"), "a list"))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Err(shape(format_args!("notification.devices"), "a list"))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Err(shape(format_args!("notification.devices"), "a list"))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Err(shape(format_args!("notification.devices"), "a list"))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Err(shape(format_args!("notification.devices"), "a list"))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Err(shape(format_args!("notification.devices"), "a list"))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Device {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de::DeserializeSeed::deserialize(DeviceAt(0), d)
    }
}

/// Deserialises the device at index `.0`, so errors can name it.
struct DeviceAt(usize);

impl<'de> de::DeserializeSeed<'de> for DeviceAt {
    type Value = Device;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Device, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for DeviceAt {
    type Value = Device;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Device, A::Error> {
        let i = self.0;
        let (mut app_id, mut pushkey) = (None, None);
        let mut device = Device::new("", "");
        while let Some(key) = map.next_key::<Key>()? {
            match key.0.as_str() {
                "app_id" => app_id = map.next_value::<Required>()?.0,
                "pushkey" => pushkey = map.next_value::<Required>()?.0,
                "pushkey_ts" => {
                    device.pushkey_ts =
                        map.next_value::<LenientInt<{ i64::MIN }, { i64::MAX }>>()?.0
                }
                "data" => device.data = map.next_value::<Lenient<RawObject>>()?.0,
                "tweaks" => device.tweaks = map.next_value::<Lenient<RawObject>>()?.0,
                _ => drop(map.next_value::<IgnoredAny>()?),
            }
        }
        let required = |value: Option<String>, name: &str| {
            value.ok_or_else(|| shape(format_args!("notification.devices[{i}].{name}"), "a string"))
        };
        device.app_id = required(app_id, "app_id")?;
        device.pushkey = required(pushkey, "pushkey")?;
        Ok(device)
    }
    only_a_map!(|v: &Self| format!("notification.devices[{}]", v.0), "an object");
}

/// A required string: any other type reads as missing, which the caller reports with its path.
struct Required(Option<String>);

impl<'de> Deserialize<'de> for Required {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Option<String>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Some(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Some(v))
            }
            crate::raw::skip_map_as_absent!();
            crate::raw::skip_seq_as_absent!();
            crate::raw::absent_otherwise!(
                visit_bool(bool),
                visit_i64(i64),
                visit_u64(u64),
                visit_f64(f64)
            );
        }
        d.deserialize_any(V).map(Required)
    }
}

impl<'de> Deserialize<'de> for Lenient<Counts> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Counts;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Counts, A::Error> {
                type Count = LenientInt<0, { Counts::MAX as i64 }>;
                let mut counts = Counts::default();
                while let Some(key) = map.next_key::<Key>()? {
                    let count = match key.0.as_str() {
                        "unread" => &mut counts.unread,
                        "missed_calls" => &mut counts.missed_calls,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    *count = map.next_value::<Count>()?.0.map(|n| n as u64);
                }
                Ok(counts)
            }
            crate::raw::skip_seq_as_absent!();
            crate::raw::absent_otherwise!(
                visit_bool(bool),
                visit_i64(i64),
                visit_u64(u64),
                visit_f64(f64),
                visit_str(&str)
            );
        }
        d.deserialize_any(V).map(Lenient)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<NotifyRequest, ParseError> {
        NotifyRequest::from_slice(s.as_bytes())
    }

    fn one_device(notification_fields: &str) -> Notification {
        let body = format!(
            r#"{{"notification":{{{notification_fields}"devices":[{{"app_id":"a","pushkey":"k"}}]}}}}"#
        );
        parse(&body).unwrap_or_else(|e| panic!("{body}: {e}")).notification
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
        assert_eq!(n.devices[0].tweaks.str("sound").as_deref(), Some("bing"));
        assert_eq!(n.devices[0].pushkey_ts, Some(12345678));
        assert_eq!(n.content.unwrap().str("msgtype").as_deref(), Some("m.text"));
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
    fn content_of_any_depth() {
        for depth in [126, 129, 10_000, 200_000] {
            let deep = format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));
            let n =
                one_device(&format!(r#""event_id":"$e","content":{{"body":"hi","x":{deep}}},"#));
            assert_eq!(n.content.unwrap().str("body").as_deref(), Some("hi"), "depth {depth}");
            // Deep values anywhere else are ignored, not refused.
            let n = one_device(&format!(r#""sender":{deep},"unknown":{deep},"counts":{deep},"#));
            assert_eq!(n.sender, None);
        }
        let deep_array = format!("{}{}", "[".repeat(300_000), "]".repeat(300_000));
        let body = format!(
            r#"{{"notification":{{"devices":[{{"app_id":"a","pushkey":"k","data":{{"d":{deep_array}}},"tweaks":{deep_array}}}]}}}}"#
        );
        let n = parse(&body).unwrap().notification;
        assert!(n.devices[0].data.contains_key("d"));
    }

    #[test]
    fn lone_surrogates_anywhere() {
        let n = one_device(
            r#""event_id":"$e\ud800","sender_display_name":"Tom \udc00","\ud800key":1,
            "content":{"body":"x\ud800y","\udfffk":"v"},"#,
        );
        assert_eq!(n.event_id.as_deref(), Some("$e\u{fffd}"));
        assert_eq!(n.sender_display_name.as_deref(), Some("Tom \u{fffd}"));
        assert_eq!(n.content.unwrap().str("body").as_deref(), Some("x\u{fffd}y"));
        let r = parse(r#"{"notification":{"devices":[{"app_id":"a\ud800","pushkey":"\udbff"}]}}"#)
            .unwrap();
        assert_eq!(r.notification.devices[0].pushkey, "\u{fffd}");
        // Invalid UTF-8 bytes are replaced too.
        let mut body = br#"{"notification":{"sender":"x"#.to_vec();
        body.extend([0xff, 0xfe]);
        body.extend(br#"","devices":[]}}"#);
        let n = NotifyRequest::from_slice(&body).unwrap().notification;
        assert_eq!(n.sender.as_deref(), Some("x\u{fffd}\u{fffd}"));
    }

    #[test]
    fn numbers_are_coerced_or_dropped() {
        let body = r#"{"notification":{"counts":{"unread":2.0,"missed_calls":-1},
            "devices":[{"app_id":"a","pushkey":"k","pushkey_ts":1905517653.0}]}}"#;
        let n = parse(body).unwrap().notification;
        assert_eq!(n.counts, Counts { unread: Some(2), missed_calls: Some(0) });
        assert_eq!(n.devices[0].pushkey_ts, Some(1_905_517_653));
        for (count, expected) in [
            ("1e300", Some(Counts::MAX)),
            ("99999999999999999999999", Some(Counts::MAX)),
            ("-1e300", Some(0)),
            ("2.5", None),
            ("\"3\"", None),
            ("[1]", None),
            ("{}", None),
            ("true", None),
            ("18446744073709551615", Some(Counts::MAX)),
        ] {
            let n = one_device(&format!(r#""counts":{{"unread":{count}}},"#));
            assert_eq!(n.counts.unread, expected, "{count}");
        }
    }

    #[test]
    fn wrong_types_of_optional_fields_are_absent() {
        let n = one_device(
            r#""event_id":5,"room_id":[],"type":{},"sender":true,"prio":7,"content":"text",
            "counts":"many","user_is_target":"yes","room_name":1.5,"#,
        );
        assert_eq!((n.event_id, n.room_id, n.event_type, n.sender), (None, None, None, None));
        assert_eq!(n.prio, Priority::High);
        assert!(n.content.is_none());
        assert_eq!(n.counts, Counts::default());
        assert_eq!(n.user_is_target, None);
        // Duplicate keys: the last one wins.
        let n = one_device(r#""event_id":"$1","event_id":"$2","#);
        assert_eq!(n.event_id.as_deref(), Some("$2"));
    }

    #[test]
    fn not_json_and_bad_json_are_told_apart() {
        let e = parse("{nope").unwrap_err();
        assert_eq!(e.kind, ParseErrorKind::NotJson);
        let e = parse("").unwrap_err();
        assert_eq!(e.kind, ParseErrorKind::NotJson);
        for (body, message) in [
            (r#"{"notification":{}}"#, "notification.devices: expected a list"),
            (r#"{}"#, "notification: expected an object"),
            (r#"{"notification":null}"#, "notification: expected an object"),
            (r#"{"notification":"x"}"#, "notification: expected an object"),
            (r#"[1]"#, "request body: expected a JSON object"),
            (r#""SECRET""#, "request body: expected a JSON object"),
            (r#"{"notification":{"devices":{}}}"#, "notification.devices: expected a list"),
            (r#"{"notification":{"devices":null}}"#, "notification.devices: expected a list"),
            (
                r#"{"notification":{"devices":[{"app_id":"a","pushkey":"k"},"SECRET"]}}"#,
                "notification.devices[1]: expected an object",
            ),
            (
                r#"{"notification":{"devices":[{"app_id":"a","pushkey":3}]}}"#,
                "notification.devices[0].pushkey: expected a string",
            ),
            (
                r#"{"notification":{"devices":[{"pushkey":"SECRET"}]}}"#,
                "notification.devices[0].app_id: expected a string",
            ),
        ] {
            let e = parse(body).unwrap_err();
            assert_eq!(e.kind, ParseErrorKind::BadJson, "{body}");
            assert_eq!(e.message, message, "{body}");
        }
    }

    #[test]
    fn errors_never_echo_values() {
        for body in [
            r#"{"notification":{"devices":[{"app_id":"a","pushkey":{"SECRET":1}}]}}"#,
            r#"{"notification":{"data":"SECRET","devices":"SECRET"}}"#,
            r#"{"notification":"SECRET"}"#,
            r#"{"notification":{"devices":["SECRET"]}}"#,
            r#"{"notification":{"devices":[]}, "SECRET"}"#,
            r#"{"notification":{"devices":[]}} SECRET"#,
        ] {
            let e = parse(body).unwrap_err();
            assert!(!e.message.contains("SECRET"), "{body}: {}", e.message);
        }
    }

    /// A small deterministic generator (xorshift), so the corpus is the same on every run.
    struct Gen(u64);

    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn pick<'a>(&mut self, options: &[&'a str]) -> &'a str {
            options[(self.next() % options.len() as u64) as usize]
        }

        /// Any JSON value, of the kinds attackers and odd homeservers send.
        fn value(&mut self, depth: u32) -> String {
            match self.next() % 12 {
                0 => "null".into(),
                1 => self.pick(&["true", "false"]).into(),
                2 => self
                    .pick(&["0", "-1", "2.0", "2.5", "1e400", "-0", "18446744073709551616"])
                    .into(),
                3 => self
                    .pick(&[r#""""#, r#""x""#, r#""\ud800""#, r#""\udc00\ud800""#, r#""é\n\"""#])
                    .into(),
                4 if depth < 4 => {
                    let n = self.next() % 4;
                    let items: Vec<String> = (0..n).map(|_| self.value(depth + 1)).collect();
                    format!("[{}]", items.join(","))
                }
                5 if depth < 4 => {
                    let n = self.next() % 4;
                    let items: Vec<String> = (0..n)
                        .map(|_| {
                            let key = self.pick(&["a", "body", "\\ud800", "event_id", "msgtype"]);
                            format!(r#""{key}":{}"#, self.value(depth + 1))
                        })
                        .collect();
                    format!("{{{}}}", items.join(","))
                }
                6 => format!("{}{}", "[".repeat(200), "]".repeat(200)),
                _ => r#""$ev""#.into(),
            }
        }
    }

    /// The 400 rule, tested on generated bodies: every optional field gets values of every type;
    /// a body is refused exactly when it cannot be routed.
    #[test]
    fn generated_corpus_is_refused_only_when_unroutable() {
        const OPTIONAL: [&str; 13] = [
            "event_id",
            "room_id",
            "type",
            "sender",
            "sender_display_name",
            "room_name",
            "room_alias",
            "membership",
            "user_is_target",
            "prio",
            "content",
            "counts",
            "zzz_unknown",
        ];
        let mut g = Gen(0x9e37_79b9_7f4a_7c15);
        let (mut accepted, mut refused) = (0, 0);
        for _ in 0..5_000 {
            let mut fields = Vec::new();
            for key in OPTIONAL {
                if g.next() % 2 == 0 {
                    fields.push(format!(r#""{key}":{}"#, g.value(0)));
                }
            }
            // Devices: usually routable; sometimes a device of the wrong shape.
            let routable = g.next() % 5 != 0;
            let mut device = vec![
                format!(r#""data":{}"#, g.value(0)),
                format!(r#""tweaks":{}"#, g.value(0)),
                format!(r#""pushkey_ts":{}"#, g.value(0)),
            ];
            if routable {
                device.push(r#""app_id":"a""#.into());
                device.push(r#""pushkey":"k\ud800""#.into());
            } else {
                let bad = g.pick(&["1", "null", "[]", "{}", "true"]);
                device.push(format!(r#""app_id":{bad}"#));
                device.push(r#""pushkey":"k""#.into());
            }
            fields.push(format!(r#""devices":[{{{}}}]"#, device.join(",")));
            let body = format!(r#"{{"notification":{{{}}}}}"#, fields.join(","));
            match parse(&body) {
                Ok(r) => {
                    assert!(routable, "accepted an unroutable body: {body}");
                    assert_eq!(r.notification.devices[0].app_id, "a");
                    accepted += 1;
                }
                Err(e) => {
                    assert!(!routable, "refused a routable body ({e}): {body}");
                    assert_eq!(e.message, "notification.devices[0].app_id: expected a string");
                    refused += 1;
                }
            }
        }
        assert!(accepted > 3_000 && refused > 500, "{accepted} accepted, {refused} refused");
    }
}
