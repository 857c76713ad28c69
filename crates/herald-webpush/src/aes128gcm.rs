//! RFC 8291 message encryption (`Content-Encoding: aes128gcm`, RFC 8188), with `ring`.
//!
//! Why not `ece::encrypt`, which the `web-push` crate uses: with OpenSSL 3, most of its cost is key
//! conversion around the elliptic-curve work (about 40 % of Herald's CPU per WebPush message in the
//! benchmark, see docs/performance.md). This is the same construction — a fresh P-256 key pair and
//! salt per message, one record, padded the way `ece` pads — and the tests check it against `ece`'s
//! decryption, as the fake push service does on every delivery.

use ring::{aead, agreement, hkdf, rand};

/// Salt (16) + record size (4) + key id length (1) + the sender's public key (65).
pub(crate) const HEADER_LEN: usize = 16 + 4 + 1 + 65;
/// The AES-GCM tag.
pub(crate) const TAG_LEN: usize = 16;
/// The plaintext plus its delimiter byte is padded up to a multiple of this (as `ece` does).
pub(crate) const PAD_BLOCK: usize = 128;
/// The record size announced in the header: one record holds the whole message.
const RECORD_SIZE: u32 = 4096;

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// Encrypts `plaintext` for the subscription with public key `ua_public` (uncompressed P-256) and
/// auth secret `auth`.
pub(crate) fn encrypt(
    ua_public: &[u8; 65],
    auth: &[u8; 16],
    plaintext: &[u8],
) -> Result<Vec<u8>, String> {
    use ring::rand::SecureRandom;
    let fail = |what: &str| format!("encryption failed: {what}");
    let rng = rand::SystemRandom::new();
    let private = agreement::EphemeralPrivateKey::generate(&agreement::ECDH_P256, &rng)
        .map_err(|_| fail("key generation"))?;
    let public = private.compute_public_key().map_err(|_| fail("public key"))?;
    let as_public = public.as_ref();
    let mut salt = [0u8; 16];
    rng.fill(&mut salt).map_err(|_| fail("salt"))?;

    let peer = agreement::UnparsedPublicKey::new(&agreement::ECDH_P256, ua_public);
    let (cek, nonce) = agreement::agree_ephemeral(private, &peer, |ecdh_secret| {
        // RFC 8291 §3.3: IKM = HKDF(auth, ecdh_secret, "WebPush: info\0" || ua_public || as_public)
        let key_info = [b"WebPush: info\0".as_slice(), ua_public.as_slice(), as_public];
        let mut ikm = [0u8; 32];
        hkdf::Salt::new(hkdf::HKDF_SHA256, auth)
            .extract(ecdh_secret)
            .expand(&key_info, Len(32))
            .and_then(|okm| okm.fill(&mut ikm))?;
        // RFC 8188 §2.2/2.3: CEK and nonce from the per-message salt.
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &salt).extract(&ikm);
        let mut cek = [0u8; 16];
        let mut nonce = [0u8; 12];
        prk.expand(&[b"Content-Encoding: aes128gcm\0"], Len(16))
            .and_then(|okm| okm.fill(&mut cek))?;
        prk.expand(&[b"Content-Encoding: nonce\0"], Len(12))
            .and_then(|okm| okm.fill(&mut nonce))?;
        Ok::<_, ring::error::Unspecified>((cek, nonce))
    })
    .map_err(|_| fail("the subscription's key is not a valid P-256 point"))?
    .map_err(|_| fail("key derivation"))?;

    let padded = plaintext.len() + PAD_BLOCK - plaintext.len() % PAD_BLOCK;
    let mut body = Vec::with_capacity(HEADER_LEN + padded + TAG_LEN);
    body.extend_from_slice(&salt);
    body.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    body.push(65);
    body.extend_from_slice(as_public);
    let mut record = Vec::with_capacity(padded + TAG_LEN);
    record.extend_from_slice(plaintext);
    record.push(2); // the last (and only) record's delimiter
    record.resize(padded, 0);
    let key = aead::LessSafeKey::new(
        aead::UnboundKey::new(&aead::AES_128_GCM, &cek).map_err(|_| fail("content key"))?,
    );
    key.seal_in_place_append_tag(
        aead::Nonce::assume_unique_for_key(nonce),
        aead::Aad::empty(),
        &mut record,
    )
    .map_err(|_| fail("sealing"))?;
    body.extend_from_slice(&record);
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ece_decrypts_what_we_encrypt() {
        let (key, auth) = ece::generate_keypair_and_auth_secret().expect("keys");
        let components = key.raw_components().expect("raw");
        let public: [u8; 65] = components.public_key().try_into().expect("65 bytes");
        for n in [0usize, 1, 126, 127, 128, 1000, 3967] {
            let plaintext: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
            let body = encrypt(&public, &auth, &plaintext).expect("encrypt");
            assert_eq!(body.len(), HEADER_LEN + TAG_LEN + (n + 1).div_ceil(PAD_BLOCK) * PAD_BLOCK);
            let decrypted = ece::decrypt(&components, &auth, &body).expect("ece decrypts");
            assert_eq!(decrypted, plaintext, "plaintext of {n} bytes");
        }
    }

    #[test]
    fn every_message_has_its_own_key_and_salt() {
        let (key, auth) = ece::generate_keypair_and_auth_secret().expect("keys");
        let public: [u8; 65] =
            key.raw_components().expect("raw").public_key().try_into().expect("65 bytes");
        let a = encrypt(&public, &auth, b"same").expect("encrypt");
        let b = encrypt(&public, &auth, b"same").expect("encrypt");
        assert_ne!(a[..16], b[..16], "salt");
        assert_ne!(a[21..86], b[21..86], "sender key");
    }

    #[test]
    fn invalid_subscription_key_is_an_error() {
        let mut bad = [0u8; 65];
        bad[0] = 4;
        assert!(encrypt(&bad, &[0; 16], b"x").is_err());
    }
}
