//! The FCM v1 message for one notification and one device (`../shared/reference/payloads.md`):
//!
//! ```text
//! {"message": {<fcm_options>, "token": "<pushkey>",
//!              "data": {…every value a string…},
//!              "android": {<fcm_options.android>, "priority": "high" | "normal"}}}
//! ```
//!
//! `data`, in order (later entries win a shared key): the pusher's `default_payload`, every value
//! a string (JSON text for numbers, booleans, objects and arrays; FCM refuses anything else,
//! Sygnal's #365); the event's fields, each cut to [`MAX_FIELD_BYTES`]; `content_<key>` for each
//! string value of `content`, cut the same way; `prio`; the counts as strings.
//!
//! The whole `data` object, as JSON text, stays within [`MAX_DATA_BYTES`]: the longest
//! `content_*` values are shortened first, then the longest display fields, then emptied
//! `content_*` keys and the largest `default_payload` entries go. It never fails: `event_id` and
//! `room_id` alone always fit.

use std::borrow::Cow;
use std::collections::BTreeMap;

use herald_core::raw::lenient_str;
use herald_core::{Device, Notification, Priority, RawObject};
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use crate::config::MessageOptions;
use crate::{MAX_DATA_BYTES, MAX_FIELD_BYTES};

/// What to do for one notification and device.
#[derive(Debug)]
pub(crate) enum Built {
    /// Send this body.
    Send {
        /// The request body (`{"message": …}`).
        body: Vec<u8>,
        /// Whether text was shortened to fit.
        shrunk: bool,
    },
    /// Nothing to send; the label says why.
    Skip(&'static str),
    /// The pusher's `default_payload` is not an object: the device can never be served.
    BadDefaultPayload,
}

/// The mark of a cut value.
const ELLIPSIS: &str = "…";

/// Keys FCM refuses in `data` (every message would fail with a 400).
fn reserved(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key == "from" || key == "message_type" || key.starts_with("google") || key.starts_with("gcm")
}

/// Where a `data` entry came from: what may be shortened or dropped to fit, in that order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `default_payload`: dropped whole, largest first, when nothing else is left to cut.
    Default,
    /// A Matrix display field (`sender_display_name`, `room_name`, …): shortened.
    Display,
    /// `content_<key>`: shortened first.
    Content,
    /// `event_id`, `room_id`, `prio`, counts: kept.
    Fixed,
}

#[derive(Debug)]
struct Entry<'a> {
    value: Cow<'a, str>,
    kind: Kind,
}

/// Builds the message for `notification` to `device`.
pub(crate) fn build(
    notification: &Notification,
    device: &Device,
    options: &MessageOptions,
) -> Built {
    let n = notification;
    let counts: Vec<(&'static str, u64)> =
        [("unread", n.counts.unread), ("missed_calls", n.counts.missed_calls)]
            .into_iter()
            .filter_map(|(key, count)| Some((key, count?)))
            .filter(|(_, count)| {
                options.send_badge_counts && (*count > 0 || options.send_zero_badge)
            })
            .collect();
    if n.event_id.is_none() && n.room_id.is_none() && counts.is_empty() {
        return Built::Skip(if options.send_badge_counts {
            "no event and no count to send"
        } else {
            "badge-only update and send_badge_counts is off"
        });
    }
    let default_payload = match device.data.get("default_payload") {
        None => None,
        Some(raw) if raw.get() == "null" => None,
        Some(raw) => match RawObject::parse(raw.get()) {
            Some(object) => Some(object),
            None => return Built::BadDefaultPayload,
        },
    };

    let mut data: BTreeMap<Cow<'_, str>, Entry<'_>> = BTreeMap::new();
    if let Some(payload) = &default_payload {
        for (key, raw) in payload.iter() {
            if reserved(key) || raw.get() == "null" {
                continue;
            }
            // Strings as they are; anything else as its compact JSON text.
            let value = lenient_str(raw).unwrap_or_else(|| compact_json(raw.get()));
            data.insert(Cow::Borrowed(key), Entry { value, kind: Kind::Default });
        }
    }
    let fields: [(&str, &Option<String>, Kind); 8] = [
        ("event_id", &n.event_id, Kind::Fixed),
        ("type", &n.event_type, Kind::Display),
        ("sender", &n.sender, Kind::Display),
        ("room_name", &n.room_name, Kind::Display),
        ("room_alias", &n.room_alias, Kind::Display),
        ("membership", &n.membership, Kind::Display),
        ("sender_display_name", &n.sender_display_name, Kind::Display),
        ("room_id", &n.room_id, Kind::Fixed),
    ];
    for (key, value, kind) in fields {
        if let Some(value) = value {
            data.insert(Cow::Borrowed(key), Entry { value: cut(value, MAX_FIELD_BYTES), kind });
        }
    }
    if let Some(content) = &n.content {
        for (key, raw) in content.iter() {
            if let Some(text) = lenient_str(raw) {
                let value = cut_owned(text, MAX_FIELD_BYTES);
                data.insert(
                    Cow::Owned(format!("content_{key}")),
                    Entry { value, kind: Kind::Content },
                );
            }
        }
    }
    let (prio, android_priority) = match n.prio {
        Priority::Low => ("normal", "normal"),
        Priority::High => ("high", "high"),
    };
    data.insert(Cow::Borrowed("prio"), Entry { value: Cow::Borrowed(prio), kind: Kind::Fixed });
    for (key, count) in counts {
        data.insert(
            Cow::Borrowed(key),
            Entry { value: Cow::Owned(count.to_string()), kind: Kind::Fixed },
        );
    }

    let shrunk = fit(&mut data, MAX_DATA_BYTES);
    let envelope = Envelope {
        message: Message {
            base: &options.base,
            token: &device.pushkey,
            data: Data(&data),
            android: Android { extra: &options.android, priority: android_priority },
        },
    };
    // Strings and raw JSON that was valid when parsed: serialising cannot fail.
    let body = serde_json::to_vec(&envelope).unwrap_or_default();
    Built::Send { body, shrunk }
}

/// `text`, cut to at most `max` bytes on a character boundary with a trailing `…` when longer.
pub(crate) fn cut(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let mut end = max.saturating_sub(ELLIPSIS.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}{ELLIPSIS}", &text[..end]))
}

/// Valid JSON `text` without the whitespace between its tokens (without recursion: any depth).
fn compact_json(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    let (mut in_string, mut escaped) = (false, false);
    let spaced = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    if !bytes.iter().any(|&b| spaced(b)) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
        } else if c.is_ascii() && spaced(c as u8) {
            continue;
        }
        out.push(c);
    }
    Cow::Owned(out)
}

/// Like [`cut`], keeping a borrowed `text` borrowed.
fn cut_owned(text: Cow<'_, str>, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return text;
    }
    Cow::Owned(cut(&text, max).into_owned())
}

/// The length of `text` as a JSON string, quotes included.
fn json_len(text: &str) -> usize {
    let escapes: usize = text
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 1,
            0..=0x1f => 5,
            _ => 0,
        })
        .sum();
    text.len() + escapes + 2
}

/// The length of `data` as a JSON object.
fn data_len(data: &BTreeMap<Cow<'_, str>, Entry<'_>>) -> usize {
    let entries: usize = data.iter().map(|(k, e)| json_len(k) + 1 + json_len(&e.value)).sum();
    2 + entries + data.len().saturating_sub(1)
}

/// Shrinks `data` until its JSON is at most `max` bytes; true when anything changed.
fn fit<'a>(data: &mut BTreeMap<Cow<'a, str>, Entry<'a>>, max: usize) -> bool {
    let mut shrunk = false;
    loop {
        let len = data_len(data);
        if len <= max {
            return shrunk;
        }
        shrunk = true;
        let excess = len - max;
        if shorten_longest(data, Kind::Content, excess)
            || shorten_longest(data, Kind::Display, excess)
        {
            continue;
        }
        // Nothing left to shorten: drop emptied content keys, then the largest default entry,
        // then (never needed with the limits above, but never fail) anything but the ids.
        let victim = data
            .iter()
            .find(|(_, e)| e.kind == Kind::Content)
            .or_else(|| largest(data, |k| k == Kind::Default))
            .or_else(|| largest(data, |k| k != Kind::Fixed))
            .map(|(k, _)| k.clone());
        match victim {
            Some(key) => {
                data.remove(&key);
            }
            None => return shrunk,
        }
    }
}

fn largest<'m, 'a>(
    data: &'m BTreeMap<Cow<'a, str>, Entry<'a>>,
    kind: impl Fn(Kind) -> bool,
) -> Option<(&'m Cow<'a, str>, &'m Entry<'a>)> {
    data.iter().filter(|(_, e)| kind(e.kind)).max_by_key(|(k, e)| json_len(k) + json_len(&e.value))
}

/// Shortens the longest non-empty value of `kind` by about `excess` bytes, but not below the
/// next longest (so the longest are shortened first and evenly). False when none is left.
fn shorten_longest(
    data: &mut BTreeMap<Cow<'_, str>, Entry<'_>>,
    kind: Kind,
    excess: usize,
) -> bool {
    let mut lengths: Vec<usize> = data
        .values()
        .filter(|e| e.kind == kind && !e.value.is_empty())
        .map(|e| e.value.len())
        .collect();
    lengths.sort_unstable_by(|a, b| b.cmp(a));
    let Some(&longest) = lengths.first() else { return false };
    let next = lengths.get(1).copied().unwrap_or(0);
    // Several equally long: each takes its share of the cut.
    let ties = lengths.iter().filter(|&&l| l == longest).count();
    let excess = excess.div_ceil(ties);
    let Some(entry) = data
        .values_mut()
        .find(|e| e.kind == kind && !e.value.is_empty() && e.value.len() == longest)
    else {
        return false;
    };
    // Without the ellipsis a previous cut left; a cut always makes it strictly shorter.
    let text = entry.value.strip_suffix(ELLIPSIS).unwrap_or(&entry.value);
    let floor = if ties > 1 { 0 } else { next.saturating_sub(ELLIPSIS.len()) };
    let keep = text.len().saturating_sub(excess + ELLIPSIS.len()).max(floor);
    let keep = keep.min(longest.saturating_sub(ELLIPSIS.len() + 1));
    entry.value = if keep == 0 {
        Cow::Borrowed("")
    } else {
        let mut end = keep;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        Cow::Owned(format!("{}{ELLIPSIS}", &text[..end]))
    };
    true
}

#[derive(Serialize)]
struct Envelope<'a> {
    message: Message<'a>,
}

#[derive(Serialize)]
struct Message<'a> {
    #[serde(flatten)]
    base: &'a RawObject,
    token: &'a str,
    data: Data<'a, 'a>,
    android: Android<'a>,
}

#[derive(Serialize)]
struct Android<'a> {
    #[serde(flatten)]
    extra: &'a RawObject,
    priority: &'static str,
}

struct Data<'m, 'a>(&'m BTreeMap<Cow<'a, str>, Entry<'a>>);

impl Serialize for Data<'_, '_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, entry) in self.0 {
            map.serialize_entry(key, &entry.value)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_on_character_boundaries() {
        assert_eq!(cut("short", 1024), "short");
        let ascii = "a".repeat(2000);
        let c = cut(&ascii, 1024);
        assert_eq!(c.len(), 1024);
        assert!(c.ends_with('…'));
        // "é" is 2 bytes: 1021 bytes of room hold 510 of them.
        let accents = "é".repeat(600);
        let c = cut(&accents, 1024);
        assert_eq!(c, format!("{}…", "é".repeat(510)));
        assert_eq!(c.len(), 1023);
        assert_eq!(cut(&"a".repeat(1024), 1024).len(), 1024, "exactly the limit is kept");
    }

    #[test]
    fn json_is_compacted_outside_strings() {
        assert_eq!(compact_json("[1,2]"), "[1,2]");
        assert_eq!(compact_json("{ \"a b\" :\n [1, \"x \\\" y\"] }"), "{\"a b\":[1,\"x \\\" y\"]}");
        assert!(matches!(compact_json("{\"a\":1}"), Cow::Borrowed(_)));
        let deep = format!("{}1{}", "[ ".repeat(100_000), "]".repeat(100_000));
        assert_eq!(compact_json(&deep).len(), 200_001);
    }

    #[test]
    fn json_lengths_count_escapes() {
        for s in ["", "plain", "quote\"back\\slash", "line\nbreak\ttab", "\u{1}ctl", "é😀"] {
            assert_eq!(json_len(s), serde_json::to_string(s).unwrap().len(), "{s:?}");
        }
    }
}

#[cfg(test)]
#[path = "message_golden.rs"]
mod golden;
