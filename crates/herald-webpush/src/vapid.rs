//! VAPID (RFC 8292): the app server's key, and signing the JWT for a push-service origin.
//!
//! Signing is an ECDSA operation per JWT; a JWT stays valid for hours and names only the push
//! service's origin, so `origins` keeps one per origin and reuses it for [`JWT_REUSE`].

use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use herald_core::config::SecretSource;
use herald_core::BuildError;
use http::HeaderValue;
use web_push::{PartialVapidSignatureBuilder, SubscriptionInfo, VapidSignatureBuilder};

/// How long a signed JWT is valid (RFC 8292 allows at most 24 hours).
const JWT_VALIDITY: Duration = Duration::from_secs(12 * 3600);
/// A JWT is replaced this long before it expires, so that none arrives expired.
const JWT_REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);
/// How long one signed JWT is reused.
pub(crate) const JWT_REUSE: Duration = JWT_VALIDITY.saturating_sub(JWT_REFRESH_MARGIN);

/// The VAPID identity of one app.
pub(crate) struct Vapid {
    key: PartialVapidSignatureBuilder,
    /// The public key, base64url without padding: the `k=` parameter and the web clients'
    /// `applicationServerKey`.
    public_key: String,
    subject: String,
}

impl Vapid {
    /// Loads the key from `source` (a file resolved against `base_dir`, or a variable).
    pub(crate) fn load(
        source: &SecretSource,
        base_dir: &Path,
        subject: String,
    ) -> Result<Self, BuildError> {
        let pem = source.read(base_dir).map_err(|e| {
            let hint = match source.file_path(base_dir) {
                Some(path) => {
                    format!(" (create one with `herald vapid-keygen --out {}`)", path.display())
                }
                None => String::new(),
            };
            BuildError::new(format!("webpush: cannot read `vapid_private_key`: {e}{hint}"))
        })?;
        Self::from_pem(&pem, &source.to_string(), subject)
    }

    /// Loads the key from PEM text; `what` names where it came from, for errors.
    pub(crate) fn from_pem(pem: &[u8], what: &str, subject: String) -> Result<Self, BuildError> {
        let key = parse_key(pem, what)?;
        let public_key = encode_public_key(&key);
        Ok(Vapid { key, public_key, subject })
    }

    /// The public key as web clients need it (`applicationServerKey`).
    pub(crate) fn public_key(&self) -> &str {
        &self.public_key
    }

    /// Signs the `Authorization` header for requests to `origin` (`scheme://host[:port]`).
    pub(crate) fn sign(&self, origin: &str) -> Result<HeaderValue, String> {
        let expires = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|e| format!("system clock before 1970: {e}"))?
            + JWT_VALIDITY;
        // web-push takes the audience from a subscription; an origin is a valid endpoint.
        let info = SubscriptionInfo::new(origin, "", "");
        let mut builder = self.key.clone().add_sub_info(&info);
        builder.add_claim("aud", origin);
        builder.add_claim("sub", self.subject.as_str());
        builder.add_claim("exp", expires.as_secs());
        let signature = builder.build().map_err(|e| format!("cannot sign a VAPID JWT: {e}"))?;
        let value = format!("vapid t={}, k={}", signature.auth_t, self.public_key);
        HeaderValue::try_from(value).map_err(|e| format!("VAPID header: {e}"))
    }
}

fn read_key(path: &Path) -> Result<PartialVapidSignatureBuilder, BuildError> {
    let pem = fs::read(path).map_err(|e| {
        BuildError::new(format!(
            "webpush: cannot read `vapid_private_key` {}: {e} (create one with `herald \
             vapid-keygen --out {}`)",
            path.display(),
            path.display()
        ))
    })?;
    parse_key(&pem, &path.display().to_string())
}

fn parse_key(pem: &[u8], what: &str) -> Result<PartialVapidSignatureBuilder, BuildError> {
    // The parser's error says nothing about the key's content; it is shown, the PEM never.
    VapidSignatureBuilder::from_pem_no_sub(pem).map_err(|e| {
        BuildError::new(format!(
            "webpush: `vapid_private_key` ({what}) is not a P-256 private key in PEM: {e}"
        ))
    })
}

fn encode_public_key(key: &PartialVapidSignatureBuilder) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.get_public_key())
}

/// Reads the VAPID private key at `path` and returns its public key, base64url without padding:
/// the `applicationServerKey` that web clients pass to `pushManager.subscribe`.
pub fn vapid_public_key(path: &Path) -> Result<String, BuildError> {
    read_key(path).map(|key| encode_public_key(&key))
}

/// Writes a new VAPID private key (P-256, PKCS#8 PEM, mode 0600) to `path` and returns its public
/// key as [`vapid_public_key`] does. Refuses to overwrite an existing file; creates missing parent
/// directories.
pub fn generate_vapid_key(path: &Path) -> Result<String, BuildError> {
    let pem = new_private_key_pem()
        .map_err(|e| BuildError::new(format!("webpush: cannot generate a VAPID key: {e}")))?;
    let fail = |e: std::io::Error| {
        BuildError::new(format!("webpush: cannot write VAPID key {}: {e}", path.display()))
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(fail)?;
    }
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => BuildError::new(format!(
            "webpush: {} already exists; refusing to overwrite a VAPID key (web clients \
             subscribed with it would stop receiving pushes)",
            path.display()
        )),
        _ => fail(e),
    })?;
    if let Err(e) = file.write_all(&pem).and_then(|()| file.sync_all()) {
        drop(file);
        // A half-written key would fail every later start; better no file at all.
        let _ = fs::remove_file(path);
        return Err(fail(e));
    }
    vapid_public_key(path)
}

pub(crate) fn new_private_key_pem() -> Result<Vec<u8>, openssl::error::ErrorStack> {
    use openssl::ec::{EcGroup, EcKey};
    use openssl::nid::Nid;
    use openssl::pkey::PKey;

    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    PKey::from_ec_key(EcKey::generate(&group)?)?.private_key_to_pem_pkcs8()
}

/// Warns when the key file can be read by others than its owner.
pub(crate) fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = fs::metadata(path) {
            let mode = meta.permissions().mode();
            if mode & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    mode = format_args!("{:o}", mode & 0o777),
                    "VAPID private key is readable by other users; chmod 600 it"
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_then_load_and_sign() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/vapid.pem");
        let public = generate_vapid_key(&path).expect("generate");
        assert_eq!(public.len(), 87, "65 bytes in base64url: {public}");
        assert!(public.starts_with('B'), "uncompressed point: {public}");
        assert_eq!(vapid_public_key(&path).expect("read"), public);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let e = generate_vapid_key(&path).expect_err("no overwrite");
        assert!(e.to_string().contains("vapid.pem"), "{e}");
        assert_eq!(vapid_public_key(&path).expect("untouched"), public);

        let source = SecretSource::File(path);
        let vapid =
            Vapid::load(&source, dir.path(), "mailto:ops@example.com".into()).expect("load");
        let a = vapid.sign("https://push.example").expect("sign");
        let c = vapid.sign("https://other.example").expect("sign");
        assert_ne!(a, c);
        let text = a.to_str().expect("ascii");
        assert!(text.starts_with("vapid t="), "{text}");
        assert!(text.ends_with(&format!(", k={public}")), "{text}");
    }

    #[test]
    fn missing_or_bad_key_is_a_build_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nope.pem");
        let e = vapid_public_key(&path).expect_err("missing");
        assert!(e.to_string().contains("vapid-keygen"), "{e}");
        fs::write(&path, "not a key").expect("write");
        let e = vapid_public_key(&path).expect_err("garbage");
        assert!(e.to_string().contains("not a P-256 private key"), "{e}");
    }
}
