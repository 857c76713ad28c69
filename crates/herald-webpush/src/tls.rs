//! The TLS client configuration for upstream HTTPS: rustls (ring), the webpki roots, plus an
//! optional PEM bundle of the operator's own CAs (`ca_file`) for internal push services.
//!
//! Self-contained on purpose (no WebPush types): it is the part a shared upstream client will
//! take over as is.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

/// A client configuration trusting the webpki roots and the certificates in `ca_file`. ALPN is
/// left empty for the HTTP connector to fill in. Errors name `ca_file` and the file.
pub(crate) fn client_config(ca_file: Option<&Path>) -> Result<ClientConfig, String> {
    let mut roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    if let Some(path) = ca_file {
        add_pem_bundle(&mut roots, path)?;
    }
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))
        .map(|builder| builder.with_root_certificates(roots).with_no_client_auth())
}

/// Adds every certificate of the PEM file at `path` to `roots`; a file without any is an error.
fn add_pem_bundle(roots: &mut RootCertStore, path: &Path) -> Result<(), String> {
    let fail = |e: &dyn std::fmt::Display| format!("`ca_file` {}: {e}", path.display());
    let mut added = 0;
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| fail(&e))? {
        let cert = cert.map_err(|e| fail(&e))?;
        roots.add(cert).map_err(|e| fail(&format!("a certificate is not usable as a CA: {e}")))?;
        added += 1;
    }
    if added == 0 {
        return Err(fail(&"holds no PEM certificate"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_files_are_added_or_refused_naming_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = client_config(None).expect("webpki roots only");
        let webpki = base.alpn_protocols.len();
        assert_eq!(webpki, 0, "ALPN is the connector's business");

        let ca = herald_testkit::tls::TestCa::new();
        let path = ca.write_pem(dir.path());
        client_config(Some(&path)).expect("a PEM CA");

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificates here\n").expect("write");
        let e = client_config(Some(&empty)).expect_err("no certificate");
        assert!(e.contains("ca_file") && e.contains("empty.pem"), "{e}");

        let e = client_config(Some(&dir.path().join("missing.pem"))).expect_err("missing");
        assert!(e.contains("ca_file") && e.contains("missing.pem"), "{e}");
    }
}
