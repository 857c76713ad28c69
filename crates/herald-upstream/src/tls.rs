//! The rustls client configuration: trust roots and the optional client certificate.
//!
//! Roots are always the webpki set (Mozilla's, compiled in), plus `ca_file` for private or test
//! CAs, plus the operating system's store when `system_roots` is on. The provider is ring; ALPN
//! is set later by hyper-rustls from the HTTP versions the client speaks.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use crate::BuildError;

/// A client certificate chain and its private key, both PEM.
#[derive(Clone)]
pub(crate) struct Identity {
    pub(crate) chain_pem: Vec<u8>,
    pub(crate) key_pem: Vec<u8>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Identity(..)")
    }
}

/// Builds the client's TLS configuration (without ALPN).
pub(crate) fn client_config(
    ca_file: Option<&Path>,
    system_roots: bool,
    identity: Option<&Identity>,
) -> Result<ClientConfig, BuildError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        add_ca_file(&mut roots, path)?;
    }
    if system_roots {
        add_system_roots(&mut roots)?;
    }

    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(BuildError::Tls)?
            .with_root_certificates(roots);
    match identity {
        None => Ok(builder.with_no_client_auth()),
        Some(identity) => {
            let chain = CertificateDer::pem_slice_iter(&identity.chain_pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| invalid_identity(format!("cannot read the certificate PEM: {e}")))?;
            if chain.is_empty() {
                return Err(invalid_identity("the certificate PEM holds no certificate".into()));
            }
            let key = PrivateKeyDer::from_pem_slice(&identity.key_pem)
                .map_err(|e| invalid_identity(format!("cannot read the private key PEM: {e}")))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| invalid_identity(format!("certificate and key are not usable: {e}")))
        }
    }
}

fn add_ca_file(roots: &mut RootCertStore, path: &Path) -> Result<(), BuildError> {
    let invalid = |reason: String| BuildError::Invalid { key: "ca_file", reason };
    let pem =
        std::fs::read(path).map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("{} is not a PEM bundle: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(invalid(format!("{} holds no PEM certificate", path.display())));
    }
    for (i, cert) in certs.into_iter().enumerate() {
        roots.add(cert).map_err(|e| {
            invalid(format!(
                "certificate #{} in {} is not a usable trust anchor: {e}",
                i + 1,
                path.display()
            ))
        })?;
    }
    Ok(())
}

fn add_system_roots(roots: &mut RootCertStore) -> Result<(), BuildError> {
    let found = rustls_native_certs::load_native_certs();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found.errors.first().map(|e| format!(": {e}")).unwrap_or_default();
        return Err(BuildError::Invalid {
            key: "system_roots",
            reason: format!("no certificate could be loaded from the system's trust store{why}"),
        });
    }
    tracing::debug!(certificates = added, "trusting the system's certificate store too");
    Ok(())
}

fn invalid_identity(reason: String) -> BuildError {
    BuildError::Invalid { key: "client certificate", reason }
}
