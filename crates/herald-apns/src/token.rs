//! The device token in the request path, from the pushkey.
//!
//! Sygnal's convention, which iOS apps follow: the pushkey is the base64 of the token's bytes, and
//! APNs wants them as hex. Apps that register the hex themselves run with
//! `convert_device_token_to_hex = false`. A pushkey that is neither can never be delivered, so it
//! is rejected without a request.

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::{alphabet, Engine};

/// Apple's tokens are 32 bytes today but documented as variable; this bounds a pushkey.
const MAX_TOKEN_BYTES: usize = 256;

const STANDARD: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);
const URL_SAFE: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The hex device token for `pushkey`; `Err` says why there is none (without quoting it).
pub(crate) fn device_token(pushkey: &str, convert_to_hex: bool) -> Result<String, &'static str> {
    let pushkey = pushkey.trim();
    if convert_to_hex {
        let bytes = STANDARD
            .decode(pushkey)
            .or_else(|_| URL_SAFE.decode(pushkey))
            .map_err(|_| "the pushkey is not base64 (convert_device_token_to_hex is on)")?;
        if bytes.is_empty() || bytes.len() > MAX_TOKEN_BYTES {
            return Err("the pushkey does not decode to a device token");
        }
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut hex = String::with_capacity(2 * bytes.len());
        for b in bytes {
            hex.push(char::from(DIGITS[usize::from(b >> 4)]));
            hex.push(char::from(DIGITS[usize::from(b & 0xf)]));
        }
        Ok(hex)
    } else {
        let hex = pushkey.len() % 2 == 0 && pushkey.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex || pushkey.is_empty() || pushkey.len() > 2 * MAX_TOKEN_BYTES {
            return Err(
                "the pushkey is not a hex device token (convert_device_token_to_hex is off)",
            );
        }
        Ok(pushkey.to_ascii_lowercase())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_pushkeys_become_hex() {
        let bytes: Vec<u8> = (0u8..32).collect();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
        assert_eq!(device_token(&b64, true).as_deref(), Ok(hex.as_str()));
        // Without padding, and URL-safe, as some clients send it.
        assert_eq!(device_token(b64.trim_end_matches('='), true).as_deref(), Ok(hex.as_str()));
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0xfb; 32]);
        assert_eq!(device_token(&url, true), Ok("fb".repeat(32)));
        for bad in ["", "!!!", "a", "=="] {
            assert!(device_token(bad, true).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hex_pushkeys_are_taken_as_given() {
        let hex = "AB".repeat(32);
        assert_eq!(device_token(&hex, false), Ok("ab".repeat(32)));
        for bad in ["", "abc", "zz", "ab cd", &"ab".repeat(300)] {
            assert!(device_token(bad, false).is_err(), "{bad:?}");
        }
    }
}
