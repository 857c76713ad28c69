//! Provider authentication tokens (token auth): an ES256 JWT with `kid` (key id), `iss` (team
//! id) and `iat`, signed with the `.p8` key.
//!
//! APNs refuses a token older than an hour (`ExpiredProviderToken`) and a new one sooner than 20
//! minutes after the last (`TooManyProviderTokenUpdates`), so one token is signed, shared by every
//! stream of every connection, and replaced after [`REFRESH_AFTER`]. Replacing takes the write
//! lock, so under any concurrency exactly one request signs and the others take its token.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use herald_core::BuildError;
use http::HeaderValue;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;

/// A token's age when it is replaced: past APNs' 20-minute minimum, well before its one-hour
/// maximum (so a clock some minutes off does not matter).
pub(crate) const REFRESH_AFTER: Duration = Duration::from_secs(40 * 60);
/// APNs refuses a new token sooner than this after the last.
pub(crate) const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(20 * 60);

/// Where the time comes from (tests move it).
pub(crate) type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// The system clock.
pub(crate) fn system_clock() -> Clock {
    Arc::new(SystemTime::now)
}

/// Signs and caches the app's provider token.
pub(crate) struct ProviderToken {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    /// `base64url({"alg":"ES256","kid":…})`.
    header: String,
    team_id: String,
    cached: RwLock<Option<Cached>>,
    clock: Clock,
    signed: AtomicU64,
}

#[derive(Clone)]
struct Cached {
    /// `bearer <jwt>`.
    authorization: HeaderValue,
    issued_at: SystemTime,
}

impl std::fmt::Debug for ProviderToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key or a token.
        f.debug_struct("ProviderToken").field("team_id", &self.team_id).finish_non_exhaustive()
    }
}

impl ProviderToken {
    /// From the `.p8` file's PEM text.
    pub(crate) fn new(
        pem: &[u8],
        key_id: &str,
        team_id: &str,
        clock: Clock,
    ) -> Result<Self, BuildError> {
        let invalid = |message: &str, source: Option<Box<dyn std::error::Error + Send + Sync>>| {
            BuildError::Credentials { key: "key_file".into(), message: message.into(), source }
        };
        let der =
            match PrivateKeyDer::from_pem_slice(pem) {
                Ok(PrivateKeyDer::Pkcs8(der)) => der,
                Ok(_) => return Err(invalid(
                    "is not a PKCS#8 key (\"BEGIN PRIVATE KEY\"): use the .p8 file from the Apple \
                     developer account as it is",
                    None,
                )),
                Err(e) => return Err(invalid(
                    "holds no PEM private key: use the .p8 file from the Apple developer account",
                    Some(Box::new(e)),
                )),
            };
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            der.secret_pkcs8_der(),
            &rng,
        )
        .map_err(|e| invalid("is not a P-256 key (APNs signs with ES256)", Some(Box::new(e))))?;
        let header = serde_json::json!({"alg": "ES256", "kid": key_id}).to_string();
        Ok(ProviderToken {
            key,
            rng,
            header: URL_SAFE_NO_PAD.encode(header),
            team_id: team_id.to_owned(),
            cached: RwLock::new(None),
            clock,
            signed: AtomicU64::new(0),
        })
    }

    /// The `authorization` header: the cached token, or a new one when it is due.
    pub(crate) fn authorization(&self) -> Result<HeaderValue, String> {
        let now = (self.clock)();
        let fresh = |cached: &Option<Cached>| {
            cached.as_ref().filter(|c| age(c.issued_at, now) < REFRESH_AFTER).cloned()
        };
        if let Some(cached) = fresh(&self.cached.read().unwrap_or_else(PoisonError::into_inner)) {
            return Ok(cached.authorization);
        }
        let mut slot = self.cached.write().unwrap_or_else(PoisonError::into_inner);
        // Another request may have signed while this one waited for the lock.
        if let Some(cached) = fresh(&slot) {
            return Ok(cached.authorization);
        }
        let cached = self.sign(now)?;
        *slot = Some(cached.clone());
        Ok(cached.authorization)
    }

    /// APNs called the token expired: sign a new one next time, unless it is younger than APNs'
    /// minimum interval (then the clock is wrong and a new token would not help).
    pub(crate) fn expired(&self) {
        let now = (self.clock)();
        let mut slot = self.cached.write().unwrap_or_else(PoisonError::into_inner);
        if slot.as_ref().is_some_and(|c| age(c.issued_at, now) >= MIN_REFRESH_INTERVAL) {
            *slot = None;
        }
    }

    /// How many tokens were signed.
    pub(crate) fn signed(&self) -> u64 {
        self.signed.load(Ordering::Relaxed)
    }

    fn sign(&self, now: SystemTime) -> Result<Cached, String> {
        let iat = now.duration_since(UNIX_EPOCH).map_err(|_| "the clock is before 1970")?.as_secs();
        let claims = serde_json::json!({"iss": self.team_id, "iat": iat}).to_string();
        let signing_input = format!("{}.{}", self.header, URL_SAFE_NO_PAD.encode(claims));
        let signature = self
            .key
            .sign(&self.rng, signing_input.as_bytes())
            .map_err(|_| "cannot sign the provider token")?;
        let jwt = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()));
        let mut authorization = HeaderValue::try_from(format!("bearer {jwt}"))
            .map_err(|_| "the provider token is not a header value")?;
        authorization.set_sensitive(true);
        self.signed.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(iat, "signed a new APNs provider token");
        Ok(Cached { authorization, issued_at: now })
    }
}

/// `now - then`, zero when the clock went back.
fn age(then: SystemTime, now: SystemTime) -> Duration {
    now.duration_since(then).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use ring::signature::{KeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};

    use super::*;

    /// A P-256 PKCS#8 key as the Apple developer account hands it out, and its public key.
    fn p8() -> (String, Vec<u8>) {
        let rng = SystemRandom::new();
        let der =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("generate");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der.as_ref(), &rng)
            .expect("parse");
        let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
        let lines: Vec<&str> =
            b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).expect("ascii")).collect();
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            lines.join("\n")
        );
        (pem, pair.public_key().as_ref().to_vec())
    }

    fn decode(jwt: &str, public_key: &[u8]) -> (serde_json::Value, serde_json::Value) {
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let signature = URL_SAFE_NO_PAD.decode(parts[2]).expect("base64");
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, public_key)
            .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
            .expect("the signature verifies");
        let json = |p: &str| {
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).expect("b64")).expect("json")
        };
        (json(parts[0]), json(parts[1]))
    }

    struct TestClock(Mutex<SystemTime>);

    impl TestClock {
        fn new(at: SystemTime) -> Arc<Self> {
            Arc::new(TestClock(Mutex::new(at)))
        }
        fn advance(&self, by: Duration) {
            *self.0.lock().expect("clock") += by;
        }
        fn clock(self: &Arc<Self>) -> Clock {
            let this = Arc::clone(self);
            Arc::new(move || *this.0.lock().expect("clock"))
        }
    }

    fn jwt(token: &ProviderToken) -> String {
        let header = token.authorization().expect("signs");
        header.to_str().expect("ascii").strip_prefix("bearer ").expect("bearer").to_owned()
    }

    #[test]
    fn signs_es256_with_kid_iss_iat() {
        let (pem, public) = p8();
        let start = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let clock = TestClock::new(start);
        let token = ProviderToken::new(pem.as_bytes(), "KEY1234567", "TEAM123456", clock.clock())
            .expect("a .p8 key");
        let (header, claims) = decode(&jwt(&token), &public);
        assert_eq!(header, serde_json::json!({"alg": "ES256", "kid": "KEY1234567"}));
        assert_eq!(claims, serde_json::json!({"iss": "TEAM123456", "iat": 1_800_000_000u64}));
        assert!(token.authorization().expect("header").is_sensitive());
    }

    #[test]
    fn reused_until_its_age_then_refreshed_once() {
        let (pem, public) = p8();
        let clock = TestClock::new(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
        let token = ProviderToken::new(pem.as_bytes(), "K", "T", clock.clock()).expect("key");
        let first = jwt(&token);
        for _ in 0..1000 {
            assert_eq!(jwt(&token), first);
        }
        clock.advance(REFRESH_AFTER - Duration::from_secs(1));
        assert_eq!(jwt(&token), first, "still fresh just before its age");
        clock.advance(Duration::from_secs(1));
        let second = jwt(&token);
        assert_ne!(second, first);
        let (_, claims) = decode(&second, &public);
        assert_eq!(claims["iat"], 1_800_000_000u64 + REFRESH_AFTER.as_secs());
        assert_eq!(token.signed(), 2);
        // Between APNs' bounds.
        assert!(REFRESH_AFTER >= MIN_REFRESH_INTERVAL && REFRESH_AFTER < Duration::from_secs(3600));
    }

    #[test]
    fn one_refresh_at_a_time_under_concurrency() {
        let (pem, _) = p8();
        let clock = TestClock::new(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
        let token =
            Arc::new(ProviderToken::new(pem.as_bytes(), "K", "T", clock.clock()).expect("key"));
        let tokens: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..16).map(|_| s.spawn(|| jwt(&token))).collect();
            handles.into_iter().map(|h| h.join().expect("thread")).collect()
        });
        assert!(tokens.windows(2).all(|w| w[0] == w[1]), "every thread got the same token");
        assert_eq!(token.signed(), 1);
        clock.advance(REFRESH_AFTER);
        std::thread::scope(|s| {
            for _ in 0..16 {
                s.spawn(|| jwt(&token));
            }
        });
        assert_eq!(token.signed(), 2, "one refresh for 16 concurrent callers");
    }

    #[test]
    fn expired_answers_refresh_only_past_the_minimum_interval() {
        let (pem, _) = p8();
        let clock = TestClock::new(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
        let token = ProviderToken::new(pem.as_bytes(), "K", "T", clock.clock()).expect("key");
        let first = jwt(&token);
        token.expired();
        assert_eq!(jwt(&token), first, "a 0-minute-old token is not replaced: the clock is off");
        clock.advance(MIN_REFRESH_INTERVAL);
        token.expired();
        assert_ne!(jwt(&token), first);
    }

    #[test]
    fn bad_keys_name_the_key() {
        let err = |pem: &str| {
            ProviderToken::new(pem.as_bytes(), "K", "T", system_clock()).expect_err(pem).to_string()
        };
        assert!(err("not a pem").contains("`key_file`"));
        // An RSA-sized blob or a PKCS#1 key: not what Apple gives out.
        let pkcs1 = "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n";
        assert!(err(pkcs1).contains("PKCS#8"));
        let junk = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert!(err(junk).contains("P-256"));
    }
}
