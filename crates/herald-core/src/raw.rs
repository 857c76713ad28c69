//! JSON objects kept as raw text: how Herald holds the parts of a request that anyone can write.
//!
//! Any room member controls an event's `content`, and pusher `data` comes from clients. Parsing
//! them into `serde_json::Value` would impose serde_json's recursion limit (a `content` nested 129
//! levels deep would make the whole request a 400, and Synapse would retry that event for a day
//! while every later notification of the pusher waits) and a recursive `Drop`. So a
//! [`RawObject`] parses only the top level of an object: its keys, with each value kept as the
//! exact JSON text that was sent ([`RawValue`]). Skipping a value is iterative in serde_json, so any
//! depth is accepted and nothing recurses. A backend parses only the values it reads, leniently.
//!
//! Strings are read with [`lenient_str`]: a lone UTF-16 surrogate escape (`"\ud800"`), which is
//! valid JSON text but no valid string, becomes U+FFFD instead of an error.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::value::RawValue;

/// A JSON object whose values are kept as raw JSON text. Keys are unique (the last one sent wins)
/// and iterate in sorted order.
#[derive(Clone, Default)]
pub struct RawObject(BTreeMap<String, Box<RawValue>>);

impl RawObject {
    /// An empty object.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses the top level of the object in `json`; `None` when `json` is not a JSON object.
    pub fn parse(json: &str) -> Option<Self> {
        let mut de = serde_json::Deserializer::from_str(json);
        let object = <Lenient<Option<RawObject>> as de::Deserialize>::deserialize(&mut de).ok()?.0;
        de.end().ok()?;
        object
    }

    /// The raw value of `key`.
    pub fn get(&self, key: &str) -> Option<&RawValue> {
        self.0.get(key).map(Box::as_ref)
    }

    /// The value of `key` when it is a string (lone surrogates replaced); `None` for other types.
    pub fn str(&self, key: &str) -> Option<Cow<'_, str>> {
        self.get(key).and_then(lenient_str)
    }

    /// The value of `key` when it is `true` or `false`.
    pub fn bool(&self, key: &str) -> Option<bool> {
        match self.get(key)?.get() {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        }
    }

    /// The value of `key` when it is an object, its top level parsed.
    pub fn object(&self, key: &str) -> Option<RawObject> {
        self.get(key).and_then(|raw| RawObject::parse(raw.get()))
    }

    /// True when the value of `key` is an object.
    pub fn is_object(&self, key: &str) -> bool {
        self.get(key).is_some_and(|raw| raw.get().starts_with('{'))
    }

    /// Sets `key` to a raw value.
    pub fn insert_raw(&mut self, key: impl Into<String>, value: Box<RawValue>) {
        self.0.insert(key.into(), value);
    }

    /// Sets `key` to a string.
    pub fn insert_str(&mut self, key: impl Into<String>, value: &str) {
        self.insert_raw(key, to_raw(&value));
    }

    /// Sets `key` to any serialisable value (numbers, booleans, objects).
    pub fn insert<T: Serialize + ?Sized>(&mut self, key: impl Into<String>, value: &T) {
        self.insert_raw(key, to_raw(value));
    }

    /// Removes `key`, returning its raw value.
    pub fn remove(&mut self, key: &str) -> Option<Box<RawValue>> {
        self.0.remove(key)
    }

    /// Keeps only the entries for which `keep` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.0.retain(|k, _| keep(k));
    }

    /// True when `key` is present.
    pub fn contains_key(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are no keys.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The entries, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &RawValue)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_ref()))
    }

    /// Adds every entry of `other` whose key is not present yet (`self` wins).
    pub fn merge_missing(&mut self, other: &RawObject) {
        for (key, value) in &other.0 {
            if !self.0.contains_key(key) {
                self.0.insert(key.clone(), value.clone());
            }
        }
    }

    /// The object as compact JSON text.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising strings and already-valid raw JSON cannot fail.
        serde_json::to_vec(self).unwrap_or_else(|_| b"{}".to_vec())
    }
}

/// Serialises a value that cannot fail to serialise (strings, numbers, [`RawObject`]s).
fn to_raw<T: Serialize + ?Sized>(value: &T) -> Box<RawValue> {
    // Unreachable for the types Herald inserts; the default (`null`) keeps the object valid.
    serde_json::value::to_raw_value(value).unwrap_or_default()
}

impl PartialEq for RawObject {
    /// Equal when the same keys hold the same JSON text (`1.0` and `1` differ).
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len()
            && self.0.iter().zip(&other.0).all(|((k, v), (l, w))| k == l && v.get() == w.get())
    }
}

impl fmt::Debug for RawObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keys only: values are user content and secrets (auth secrets, message text).
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl Serialize for RawObject {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in &self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

/// Reads a raw JSON value as a string: `None` unless it is a string. Borrows when the string has
/// no escapes; a lone surrogate escape becomes U+FFFD.
pub fn lenient_str(raw: &RawValue) -> Option<Cow<'_, str>> {
    let text = raw.get();
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    if !inner.contains('\\') {
        return Some(Cow::Borrowed(inner));
    }
    match serde_json::from_str::<String>(text) {
        Ok(s) => Some(Cow::Owned(s)),
        Err(_) => {
            let fixed = replace_lone_surrogates(text.as_bytes())?;
            serde_json::from_slice::<String>(&fixed).ok().map(Cow::Owned)
        }
    }
}

/// Replaces every `\uXXXX` escape of an unpaired UTF-16 surrogate inside JSON strings with
/// `\ufffd` (the same length). Returns `None` when there was none, so callers know that retrying
/// a parse cannot help.
pub fn replace_lone_surrogates(json: &[u8]) -> Option<Vec<u8>> {
    fn unit_at(json: &[u8], at: usize) -> Option<u16> {
        // `\uXXXX` starting at `at`.
        if json.get(at) != Some(&b'\\') || json.get(at + 1) != Some(&b'u') {
            return None;
        }
        let hex = std::str::from_utf8(json.get(at + 2..at + 6)?).ok()?;
        u16::from_str_radix(hex, 16).ok()
    }
    let is_high = |u: u16| (0xD800..0xDC00).contains(&u);
    let is_low = |u: u16| (0xDC00..0xE000).contains(&u);
    let mut out: Option<Vec<u8>> = None;
    let (mut i, mut in_string) = (0, false);
    while i < json.len() {
        match json[i] {
            b'"' => in_string = !in_string,
            b'\\' if in_string => {
                if let Some(unit) = unit_at(json, i) {
                    let paired = is_high(unit) && unit_at(json, i + 6).is_some_and(is_low);
                    if paired {
                        i += 12;
                        continue;
                    }
                    if is_high(unit) || is_low(unit) {
                        let out = out.get_or_insert_with(|| json.to_vec());
                        out[i..i + 6].copy_from_slice(b"\\ufffd");
                    }
                    i += 6;
                    continue;
                }
                // Any other escape is two bytes; skipping both keeps `\"` inside the string.
                i += 2;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// Replaces every number literal outside strings that is too large for an `f64` (`1e400`, valid
/// JSON that serde_json refuses) with the largest finite one of the same sign. Returns `None` when
/// there was none.
pub fn clamp_huge_numbers(json: &[u8]) -> Option<Vec<u8>> {
    let mut out: Option<Vec<u8>> = None;
    let (mut i, mut copied, mut in_string) = (0, 0, false);
    while i < json.len() {
        match json[i] {
            b'"' => in_string = !in_string,
            b'\\' if in_string => i += 1,
            b'-' | b'0'..=b'9' if !in_string => {
                let end = json[i..]
                    .iter()
                    .position(|b| !matches!(b, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
                    .map_or(json.len(), |n| i + n);
                let literal = std::str::from_utf8(&json[i..end]).unwrap_or("");
                if literal.parse::<f64>().is_ok_and(f64::is_infinite) {
                    let out = out.get_or_insert_with(|| Vec::with_capacity(json.len()));
                    out.extend_from_slice(&json[copied..i]);
                    out.extend_from_slice(if json[i] == b'-' { b"-1e308" } else { b"1e308" });
                    copied = end;
                }
                i = end;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    let mut out = out?;
    out.extend_from_slice(&json[copied..]);
    Some(out)
}

/// A value read leniently: whatever JSON type was sent, never an error for the type.
pub(crate) struct Lenient<T>(pub(crate) T);

/// Consumes the rest of a sequence without recursion (each element is skipped iteratively).
pub(crate) fn skip_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

/// Consumes the rest of a map without recursion.
pub(crate) fn skip_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

/// Implements every scalar `visit_*` a lenient visitor does not care about as "absent" (the
/// value's `Default`), plus `null`.
macro_rules! absent_otherwise {
    ($($method:ident($ty:ty)),*) => {
        $(fn $method<E: de::Error>(self, _: $ty) -> Result<Self::Value, E> { Ok(Default::default()) })*
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> { Ok(Default::default()) }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> { Ok(Default::default()) }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
    };
}
pub(crate) use absent_otherwise;

/// A list, read as "absent": skipped iteratively, whatever its depth.
macro_rules! skip_seq_as_absent {
    () => {
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
            crate::raw::skip_seq(seq).map(|()| Default::default())
        }
    };
}
pub(crate) use skip_seq_as_absent;

/// An object, read as "absent": skipped iteratively, whatever its depth.
macro_rules! skip_map_as_absent {
    () => {
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            crate::raw::skip_map(map).map(|()| Default::default())
        }
    };
}
pub(crate) use skip_map_as_absent;

impl<'de> de::Deserialize<'de> for Lenient<Option<RawObject>> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Option<RawObject>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut object = BTreeMap::new();
                while let Some(key) = map.next_key::<String>()? {
                    let value: Box<RawValue> = map.next_value()?;
                    object.insert(key, value);
                }
                Ok(Some(RawObject(object)))
            }
            skip_seq_as_absent!();
            absent_otherwise!(
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

impl<'de> de::Deserialize<'de> for Lenient<RawObject> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Lenient::<Option<RawObject>>::deserialize(d).map(|o| Lenient(o.0.unwrap_or_default()))
    }
}

impl<'de> de::Deserialize<'de> for Lenient<Option<String>> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Option<String>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok((!v.is_empty()).then(|| v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok((!v.is_empty()).then_some(v))
            }
            skip_map_as_absent!();
            skip_seq_as_absent!();
            absent_otherwise!(visit_bool(bool), visit_i64(i64), visit_u64(u64), visit_f64(f64));
        }
        d.deserialize_any(V).map(Lenient)
    }
}

impl<'de> de::Deserialize<'de> for Lenient<Option<bool>> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Option<bool>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(Some(v))
            }
            skip_map_as_absent!();
            skip_seq_as_absent!();
            absent_otherwise!(visit_i64(i64), visit_u64(u64), visit_f64(f64), visit_str(&str));
        }
        d.deserialize_any(V).map(Lenient)
    }
}

/// A JSON number as an integer: integral floats (`2.0`, `1905517653.0`) are accepted, values out of
/// `[min, max]` are clamped, anything else (fractions, non-numbers) is absent.
pub(crate) struct LenientInt<const MIN: i64, const MAX: i64>(pub(crate) Option<i64>);

impl<'de, const MIN: i64, const MAX: i64> de::Deserialize<'de> for LenientInt<MIN, MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<const MIN: i64, const MAX: i64>;
        impl<'de, const MIN: i64, const MAX: i64> Visitor<'de> for V<MIN, MAX> {
            type Value = Option<i64>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Some(v.clamp(MIN, MAX)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Some(i64::try_from(v).unwrap_or(i64::MAX).clamp(MIN, MAX)))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                // Huge numbers (1e300, or integers past u64) arrive as floats: clamp them too.
                if !v.is_finite() || v.fract() != 0.0 {
                    return Ok(None);
                }
                Ok(Some((v.clamp(MIN as f64, MAX as f64)) as i64))
            }
            skip_map_as_absent!();
            skip_seq_as_absent!();
            absent_otherwise!(visit_bool(bool), visit_str(&str));
        }
        d.deserialize_any(V::<MIN, MAX>).map(LenientInt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_values_raw_at_any_depth() {
        let deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
        let text = format!(r#"{{"body":"hi","deep":{deep},"n":2.50,"o":{{"a":true}}}}"#);
        let o = RawObject::parse(&text).expect("object");
        assert_eq!(o.str("body").as_deref(), Some("hi"));
        assert_eq!(o.get("deep").map(|r| r.get().len()), Some(deep.len()));
        assert_eq!(o.get("n").map(RawValue::get), Some("2.50"), "numbers kept as sent");
        assert_eq!(o.object("o").and_then(|o| o.bool("a")), Some(true));
        assert_eq!(o.str("n"), None);
        // Serialises back to the same values.
        let json = String::from_utf8(o.to_json()).expect("UTF-8");
        assert!(json.contains(&deep));
        assert_eq!(RawObject::parse(&json).expect("valid JSON"), o);
        assert!(RawObject::parse("[1]").is_none());
        assert!(RawObject::parse("{").is_none());
    }

    #[test]
    fn strings_with_escapes_and_lone_surrogates() {
        let o = RawObject::parse(
            r#"{"a":"x\ny","b":"\ud800!","c":"\ud83d\ude00","d":"\udc00\\ud800"}"#,
        )
        .expect("object");
        assert!(matches!(o.str("a"), Some(Cow::Owned(s)) if s == "x\ny"));
        assert_eq!(o.str("b").as_deref(), Some("\u{fffd}!"));
        assert_eq!(o.str("c").as_deref(), Some("😀"));
        // An escaped backslash followed by "ud800" is text, not an escape.
        assert_eq!(o.str("d").as_deref(), Some("\u{fffd}\\ud800"));
    }

    #[test]
    fn surrogate_replacement_is_string_aware() {
        assert_eq!(replace_lone_surrogates(br#"{"a":"\ud83d\ude00"}"#), None);
        assert_eq!(
            replace_lone_surrogates(br#"{"\udfff":"\ud800\ud800\udc00"}"#).as_deref(),
            Some(br#"{"\ufffd":"\ufffd\ud800\udc00"}"#.as_slice())
        );
        assert_eq!(replace_lone_surrogates(br#"{"a":"\\ud800"}"#), None);
    }

    #[test]
    fn huge_numbers_are_clamped_outside_strings() {
        assert_eq!(clamp_huge_numbers(br#"{"a":1e30,"b":"1e400"}"#), None);
        assert_eq!(
            clamp_huge_numbers(br#"{"a":1e400,"b":"\"1e400","c":[-2E+999]}"#).as_deref(),
            Some(br#"{"a":1e308,"b":"\"1e400","c":[-1e308]}"#.as_slice())
        );
    }

    #[test]
    fn debug_hides_values() {
        let o = RawObject::parse(r#"{"auth":"SECRET"}"#).expect("object");
        assert_eq!(format!("{o:?}"), r#"{"auth"}"#);
    }
}
