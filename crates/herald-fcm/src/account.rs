//! The Google service account: its JSON key file, and the JWT-bearer assertion (RFC 7523) signed
//! with its RSA key (RS256) that the OAuth token endpoint exchanges for an access token.
//!
//! Written here rather than taken from `gcp_auth` or `yup-oauth2` because both send the token
//! request through an HTTP client of their own: the operator's proxy, `ca_file` and timeouts
//! (the shared upstream client's) would not apply to it, and `gcp_auth` also retries with sleeps
//! inside. What remains is small: parse the key, sign one JWT per token fetch.
//!
//! Nothing here ever puts key material into an error or a log line.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use herald_core::RawObject;
use http::Uri;
use ring::rand::SystemRandom;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;

/// How long an assertion is valid: Google's maximum, an hour.
const ASSERTION_LIFETIME: Duration = Duration::from_secs(3600);

/// A service account's credentials, from the JSON key Google gives.
pub(crate) struct ServiceAccount {
    /// `client_email`: the account's identity (not secret; safe to log).
    pub(crate) client_email: String,
    /// `project_id`, when the file has one.
    pub(crate) project_id: Option<String>,
    /// `token_uri`: where assertions are exchanged for access tokens.
    pub(crate) token_uri: Uri,
    /// `token_uri` as the file spells it: the assertion's audience.
    audience: String,
    /// `private_key_id`, sent as the JWT's `kid`.
    key_id: Option<String>,
    key: RsaKeyPair,
    rng: SystemRandom,
}

impl std::fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("client_email", &self.client_email)
            .field("project_id", &self.project_id)
            .field("token_uri", &self.token_uri)
            .finish_non_exhaustive()
    }
}

impl ServiceAccount {
    /// Parses a service account key file. The error says what is wrong without quoting the
    /// file.
    pub(crate) fn parse(json: &[u8]) -> Result<Self, String> {
        let text = std::str::from_utf8(json).map_err(|_| "is not UTF-8 text".to_owned())?;
        let fields = RawObject::parse(text).ok_or_else(|| {
            "is not a JSON object (expected the service account key file Google gives)".to_owned()
        })?;
        let field = |name: &str| -> Option<String> {
            fields.str(name).map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
        };
        let required = |name: &str| {
            field(name).ok_or_else(|| format!("has no `{name}` (is it a service account key?)"))
        };
        match field("type").as_deref() {
            Some("service_account") | None => {}
            Some(other) => {
                return Err(format!(
                    "is a `{other}` credential, not a `service_account` key: create a key for a \
                     service account in the Firebase console (Project settings → Service accounts)"
                ))
            }
        }
        let client_email = required("client_email")?;
        let audience = required("token_uri")?;
        let token_uri: Uri =
            audience.parse().map_err(|_| "has a `token_uri` that is not a URL".to_owned())?;
        if !matches!(token_uri.scheme_str(), Some("https" | "http")) || token_uri.host().is_none() {
            return Err("has a `token_uri` that is not an absolute http(s) URL".into());
        }
        let pem = required("private_key")?;
        let der = PrivateKeyDer::from_pem_slice(pem.as_bytes())
            .map_err(|_| "has a `private_key` that is not a PEM private key".to_owned())?;
        let key = match &der {
            PrivateKeyDer::Pkcs8(der) => RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()),
            PrivateKeyDer::Pkcs1(der) => RsaKeyPair::from_der(der.secret_pkcs1_der()),
            _ => return Err("has a `private_key` that is not an RSA key".into()),
        }
        .map_err(|e| format!("has a `private_key` that is not a usable RSA key ({e})"))?;
        Ok(ServiceAccount {
            client_email,
            project_id: field("project_id"),
            token_uri,
            audience,
            key_id: field("private_key_id"),
            key,
            rng: SystemRandom::new(),
        })
    }

    /// A signed JWT-bearer assertion for `scope`, issued at `now`, valid for an hour, for this
    /// account's token endpoint.
    pub(crate) fn assertion(&self, scope: &str, now: SystemTime) -> Result<String, String> {
        let iat = now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs();
        let mut header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
        if let Some(kid) = &self.key_id {
            header["kid"] = kid.as_str().into();
        }
        let claims = serde_json::json!({
            "iss": self.client_email,
            "scope": scope,
            "aud": self.audience,
            "iat": iat,
            "exp": iat + ASSERTION_LIFETIME.as_secs(),
        });
        let mut jwt = String::with_capacity(1024);
        URL_SAFE_NO_PAD.encode_string(header.to_string(), &mut jwt);
        jwt.push('.');
        URL_SAFE_NO_PAD.encode_string(claims.to_string(), &mut jwt);
        let mut signature = vec![0; self.key.public().modulus_len()];
        self.key.sign(&RSA_PKCS1_SHA256, &self.rng, jwt.as_bytes(), &mut signature).map_err(
            |_| "cannot sign the OAuth assertion with the service account key".to_owned(),
        )?;
        jwt.push('.');
        URL_SAFE_NO_PAD.encode_string(&signature, &mut jwt);
        Ok(jwt)
    }
}
