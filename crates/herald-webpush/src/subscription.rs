//! Reads a browser's push subscription from a device, the way Sygnal does.
//!
//! The pushkey is the subscription's `p256dh` key; the pusher's `data` carries `endpoint` and
//! `auth`, plus the options `default_payload`, `events_only` and `only_last_per_room`. A device
//! whose subscription cannot be read can never be delivered to, so the caller rejects it.

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::{alphabet, Engine};
use std::borrow::Cow;

use herald_core::raw::lenient_str;
use herald_core::{Device, RawObject};
use openssl::bn::BigNumContext;
use openssl::ec::{EcGroup, EcPoint};

/// Length of an uncompressed P-256 point (RFC 8291 §3.1: `0x04 || x || y`).
const P256DH_LEN: usize = 65;
/// Length of the auth secret (RFC 8291 §3.2).
const AUTH_LEN: usize = 16;

/// Browsers send base64url without padding; some clients pad, some use the standard alphabet.
const URL_SAFE_ANY_PADDING: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);
const STANDARD_ANY_PADDING: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// One device's subscription, borrowed from the request.
#[derive(Debug)]
pub(crate) struct Subscription<'a> {
    /// The push service URL chosen by the browser.
    pub(crate) endpoint: Cow<'a, str>,
    /// The browser's public key.
    pub(crate) p256dh: [u8; P256DH_LEN],
    /// The shared auth secret.
    pub(crate) auth: [u8; AUTH_LEN],
    /// Merged into every payload (event fields win).
    pub(crate) default_payload: Option<RawObject>,
    /// Skip badge-only updates.
    pub(crate) events_only: bool,
    /// Send a `Topic` per room, so that the push service keeps only the newest message.
    pub(crate) only_last_per_room: bool,
}

impl<'a> Subscription<'a> {
    /// Reads the subscription; `Err` says why it is unusable (without quoting any secret).
    pub(crate) fn read(device: &'a Device, p256: &EcGroup) -> Result<Self, String> {
        let data = &device.data;
        let endpoint = match data.get("endpoint").map(lenient_str) {
            Some(Some(s)) if !s.is_empty() => s,
            Some(_) => return Err("pusher data `endpoint` is not a URL string".into()),
            None => return Err("pusher data has no `endpoint`".into()),
        };
        let auth = match data.get("auth").map(lenient_str) {
            Some(Some(s)) => decode::<AUTH_LEN>(&s)
                .ok_or_else(|| format!("pusher data `auth` is not {AUTH_LEN} bytes of base64"))?,
            Some(None) => return Err("pusher data `auth` is not a string".into()),
            None => return Err("pusher data has no `auth`".into()),
        };
        let p256dh = decode::<P256DH_LEN>(&device.pushkey)
            .ok_or_else(|| format!("pushkey is not a {P256DH_LEN}-byte p256dh key in base64url"))?;
        // Checked here, not left to the encryption, so that a failing encryption is never
        // mistaken for a dead subscription.
        let on_curve = BigNumContext::new()
            .and_then(|mut ctx| EcPoint::from_bytes(p256, &p256dh, &mut ctx))
            .is_ok();
        if p256dh[0] != 0x04 || !on_curve {
            return Err("pushkey is not an uncompressed P-256 point".into());
        }
        // Present but not an object (`null` counts as absent): the client registered a pusher no
        // payload can be built for, the same for every notification.
        let default_payload = match data.get("default_payload") {
            Some(raw) if raw.get() != "null" => Some(
                data.object("default_payload")
                    .ok_or("pusher data `default_payload` is not an object")?,
            ),
            _ => None,
        };
        Ok(Subscription {
            endpoint,
            p256dh,
            auth,
            default_payload,
            events_only: data.bool("events_only") == Some(true),
            only_last_per_room: data.bool("only_last_per_room") == Some(true),
        })
    }
}

fn decode<const N: usize>(text: &str) -> Option<[u8; N]> {
    let text = text.trim();
    let bytes =
        URL_SAFE_ANY_PADDING.decode(text).or_else(|_| STANDARD_ANY_PADDING.decode(text)).ok()?;
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::nid::Nid;

    fn p256dh() -> String {
        let (key, _) = ece::generate_keypair_and_auth_secret().expect("keys");
        let raw = key.raw_components().expect("raw");
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw.public_key())
    }

    fn device(pushkey: &str, data: &serde_json::Value) -> Device {
        let mut device = Device::new("a", pushkey);
        device.data = RawObject::parse(&data.to_string()).expect("an object");
        device
    }

    fn read(device: &Device) -> Result<Subscription<'_>, String> {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("group");
        Subscription::read(device, &group)
    }

    #[test]
    fn reads_sygnal_style_data() {
        let d = device(
            &p256dh(),
            &serde_json::json!({"endpoint": "https://push.example/x", "auth": "xS03Fj5ErfTNH_l9WHE9Ig",
                "events_only": true, "default_payload": {"a": 1}}),
        );
        let s = read(&d).expect("valid");
        assert_eq!(s.endpoint, "https://push.example/x");
        assert!(s.events_only);
        assert!(!s.only_last_per_room);
        assert_eq!(s.default_payload.expect("object").get("a").map(|v| v.get()), Some("1"));
        assert_eq!(s.p256dh[0], 4);
    }

    #[test]
    fn accepts_padding_and_standard_alphabet() {
        let padded = format!("{}=", p256dh());
        let d = device(
            &padded,
            &serde_json::json!({"endpoint": "https://p/x", "auth": "xS03Fj5ErfTNH/l9WHE9Ig=="}),
        );
        read(&d).expect("padded and standard alphabet");
    }

    fn other_last_char(key: &str) -> String {
        let (head, last) = key.split_at(key.len() - 1);
        format!("{head}{}", if last == "A" { "E" } else { "A" })
    }

    #[test]
    fn unusable_subscriptions_say_why() {
        let key = p256dh();
        let key = key.as_str();
        let ok_data =
            serde_json::json!({"endpoint": "https://p/x", "auth": "xS03Fj5ErfTNH_l9WHE9Ig"});
        let cases = [
            (device(key, &serde_json::json!({"auth": "xS03Fj5ErfTNH_l9WHE9Ig"})), "no `endpoint`"),
            (device(key, &serde_json::json!({"endpoint": 3, "auth": "x"})), "`endpoint`"),
            (device(key, &serde_json::json!({"endpoint": "https://p/x"})), "no `auth`"),
            (
                device(
                    key,
                    &serde_json::json!({"endpoint": "https://p/x",
                        "auth": "xS03Fj5ErfTNH_l9WHE9Ig", "default_payload": [1]}),
                ),
                "`default_payload` is not an object",
            ),
            (device(key, &serde_json::json!({"endpoint": "https://p/x", "auth": "abc"})), "`auth`"),
            (device("short", &ok_data), "pushkey"),
            (device(&key.replacen('B', "C", 1), &ok_data), "P-256 point"),
            // Another y: the last character holds its lowest bits (always change it: one key in
            // 16 already ends in `A`).
            (device(&other_last_char(key), &ok_data), "P-256 point"),
        ];
        for (d, why) in &cases {
            let e = read(d).expect_err("unusable");
            assert!(e.contains(why), "{e} should mention {why}");
        }
    }
}
