//! Certificate auth: the client certificate's topic (subject UID) and expiry.
//!
//! Apple's push certificates name the app's bundle id in the subject's UID attribute
//! (`UID=com.example.app, CN=Apple Push Services: com.example.app, …`), which is the default
//! topic. They expire after a year, and an expired one fails every request: the expiry is exported
//! as a gauge and warned about [`WARN_AHEAD`] before (Sygnal's `sygnal_client_cert_expiry`; an
//! unnoticed expiry was behind Sygnal's 5 GB backlog, its #117).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald_core::BuildError;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use x509_cert::der::Decode;
use x509_cert::Certificate;

/// How long before the expiry the warnings start.
pub(crate) const WARN_AHEAD: Duration = Duration::from_secs(30 * 86_400);

/// The `UID` attribute (RFC 4519, `0.9.2342.19200300.100.1.1`).
const UID_OID: &str = "0.9.2342.19200300.100.1.1";

/// What Herald reads from the client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CertificateFacts {
    /// The subject's UID: the default topic.
    pub(crate) uid: Option<String>,
    /// The end of its validity.
    pub(crate) not_after: SystemTime,
}

/// Reads the leaf (first) certificate of a PEM chain.
pub(crate) fn read(pem: &[u8]) -> Result<CertificateFacts, BuildError> {
    let invalid = |message: String, source: Option<Box<dyn std::error::Error + Send + Sync>>| {
        BuildError::Credentials { key: "certificate_file".into(), message, source }
    };
    let leaf = CertificateDer::pem_slice_iter(pem)
        .next()
        .ok_or_else(|| invalid("holds no PEM certificate".into(), None))?
        .map_err(|e| invalid("is not a PEM certificate".into(), Some(Box::new(e))))?;
    let cert = Certificate::from_der(&leaf)
        .map_err(|e| invalid("is not an X.509 certificate".into(), Some(Box::new(e))))?;
    let tbs = cert.tbs_certificate();
    let uid = tbs
        .subject()
        .iter()
        .find(|attr| attr.oid.to_string() == UID_OID)
        .and_then(|attr| std::str::from_utf8(attr.value.value()).ok())
        .map(|uid| uid.trim().to_owned())
        .filter(|uid| !uid.is_empty());
    Ok(CertificateFacts { uid, not_after: tbs.validity().not_after.to_system_time() })
}

/// Seconds since the epoch, for the gauge.
pub(crate) fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// How the expiry stands at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// More than [`WARN_AHEAD`] left.
    Fine,
    /// Expires within [`WARN_AHEAD`]: this much is left.
    Soon(Duration),
    /// Expired.
    Expired,
}

pub(crate) fn expiry(not_after: SystemTime, now: SystemTime) -> Expiry {
    match not_after.duration_since(now) {
        Err(_) => Expiry::Expired,
        Ok(left) if left.is_zero() => Expiry::Expired,
        Ok(left) if left <= WARN_AHEAD => Expiry::Soon(left),
        Ok(_) => Expiry::Fine,
    }
}

/// Logs the expiry when it is near or past (a warning, an error once expired).
pub(crate) fn log_expiry(app: &str, not_after: SystemTime, now: SystemTime) {
    match expiry(not_after, now) {
        Expiry::Fine => {}
        Expiry::Soon(left) => tracing::warn!(
            app = %app,
            days_left = left.as_secs() / 86_400,
            expires_at = unix_seconds(not_after),
            "the APNs client certificate expires soon: renew it (`certificate_file`)"
        ),
        Expiry::Expired => tracing::error!(
            app = %app,
            expired_at = unix_seconds(not_after),
            "the APNs client certificate has expired: every notification of this app fails \
             until it is renewed (`certificate_file`)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_states() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let day = Duration::from_secs(86_400);
        assert_eq!(expiry(now + 31 * day, now), Expiry::Fine);
        assert_eq!(expiry(now + 10 * day, now), Expiry::Soon(10 * day));
        assert_eq!(expiry(now, now), Expiry::Expired);
        assert_eq!(expiry(now - day, now), Expiry::Expired);
        assert_eq!(unix_seconds(now), 1_800_000_000);
        assert_eq!(unix_seconds(UNIX_EPOCH - Duration::from_secs(5)), -5);
    }

    #[test]
    fn garbage_is_named() {
        let e = read(b"nothing").expect_err("no PEM").to_string();
        assert!(e.contains("`certificate_file`") && e.contains("no PEM"), "{e}");
        let e = read(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
            .expect_err("not X.509")
            .to_string();
        assert!(e.contains("X.509"), "{e}");
    }
}
