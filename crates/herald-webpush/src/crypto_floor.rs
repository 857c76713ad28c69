//! The cryptographic floor of one WebPush message: exactly the RFC 8291 encryption Herald does per
//! delivery (a fresh P-256 key pair and salt, one ECDH, HKDF, AES-128-GCM), on a typical payload.
//! Nothing else a notification costs can go below it; `benches/crypto_floor.rs` (criterion) and
//! `cargo xtask bench` (the `crypto_floor` example, in the same run as the scenarios) measure it.

use ring::agreement;

/// The plaintext Herald encrypts for the benchmark's message notification: the payload
/// `payload.rs` builds from `cargo xtask bench`'s request (same fields, same size).
pub const TYPICAL_PAYLOAD: &str = r##"{"content":{"body":"I'm floating in a most peculiar way.","msgtype":"m.text"},"event_id":"$bench_1_2_123456","missed_calls":1,"room_alias":"#exampleroom:matrix.org","room_id":"!slw48wfj34rtnrf:example.com","room_name":"Mission Control","sender":"@exampleuser:matrix.org","sender_display_name":"Major Tom","type":"m.room.message","unread":2}"##;

/// A subscription to encrypt for: a valid P-256 public key and an auth secret.
pub struct Sample {
    ua_public: [u8; 65],
    auth: [u8; 16],
}

impl Sample {
    /// A fresh subscription key (its private half is dropped: nobody decrypts here).
    pub fn new() -> Sample {
        let rng = ring::rand::SystemRandom::new();
        let private = agreement::EphemeralPrivateKey::generate(&agreement::ECDH_P256, &rng)
            .expect("P-256 key generation");
        let public = private.compute_public_key().expect("P-256 public key");
        let mut ua_public = [0u8; 65];
        ua_public.copy_from_slice(public.as_ref());
        Sample { ua_public, auth: *b"sixteen byte key" }
    }

    /// One complete encryption of `plaintext`, as a delivery does it; the body's length.
    pub fn encrypt(&self, plaintext: &[u8]) -> usize {
        crate::aes128gcm::encrypt(&self.ua_public, &self.auth, plaintext)
            .expect("encryption for a valid key")
            .len()
    }
}

impl Default for Sample {
    fn default() -> Self {
        Sample::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_typical_payload_is_what_herald_builds_for_the_benchmark_request() {
        // The spec's example message, which the benchmark's requests are.
        let request = herald_testkit::notify::message_with_devices("$bench_1_2_123456", vec![]);
        let n: herald_core::Notification =
            serde_json::from_value(request["notification"].clone()).unwrap();
        let built = crate::payload::build(&n, None).to_json();
        assert_eq!(std::str::from_utf8(&built).unwrap(), TYPICAL_PAYLOAD);
        // 128-byte padding blocks, the header and the tag.
        let body = Sample::new().encrypt(TYPICAL_PAYLOAD.as_bytes());
        assert_eq!(body, 86 + 384 + 16);
    }
}
