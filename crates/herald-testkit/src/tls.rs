//! A test certificate authority, generated per test run, and TLS server configurations from it.
//!
//! Fake upstreams (push services, APNs, FCM) serve HTTPS with a certificate this CA issued; the
//! code under test trusts the CA through its `ca_file` option ([`TestCa::write_pem`]). So the
//! production TLS path (rustls, ALPN, HTTP/2) runs in tests without any certificate checked into
//! the repository and without OpenSSL. A second `TestCa` is an "unknown CA" for failure tests.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// ALPN protocol ids.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN protocol id of HTTP/1.1.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// A certificate authority made for one test (an ECDSA P-256 key, valid from now on).
pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

/// A certificate issued by a [`TestCa`], with its private key.
#[derive(Clone)]
pub struct Issued {
    /// The certificate, DER.
    pub cert_der: CertificateDer<'static>,
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PKCS#8 DER.
    pub key_der: Vec<u8>,
    /// The private key, PKCS#8 PEM.
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued").finish_non_exhaustive()
    }
}

impl Issued {
    /// The private key for rustls.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl TestCa {
    /// A new CA named "Herald test CA".
    pub fn new() -> Self {
        let key = KeyPair::generate().expect("generate the CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, "Herald test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("self-sign the CA");
        TestCa { cert, key }
    }

    /// The CA certificate, PEM: what a `ca_file` holds.
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// The CA certificate, DER.
    pub fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// Writes the CA certificate to `dir/test-ca.pem` and returns the path.
    pub fn write_pem(&self, dir: &Path) -> PathBuf {
        let path = dir.join("test-ca.pem");
        std::fs::write(&path, self.pem()).expect("write the test CA");
        path
    }

    /// A server certificate for `names` (DNS names, or IP addresses such as `"127.0.0.1"`).
    pub fn issue_server(&self, names: &[&str]) -> Issued {
        self.issue(names, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate (for mutual TLS) with common name `name`.
    pub fn issue_client(&self, name: &str) -> Issued {
        self.issue(&[name], ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Issued {
        let key = KeyPair::generate().expect("generate a key");
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("certificate params");
        if let Some(first) = names.first() {
            params.distinguished_name.push(DnType::CommonName, first.as_str());
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.cert, &self.key).expect("sign the certificate");
        Issued {
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            key_der: key.serialize_der(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A rustls server configuration for `localhost` and `127.0.0.1` (and `::1`) that offers the
    /// ALPN protocols `alpn` in that order of preference (e.g. `&[ALPN_H2, ALPN_HTTP1]`).
    pub fn server_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
        self.server_config_for(&["localhost", "127.0.0.1", "::1"], alpn)
    }

    /// Like [`server_config`](Self::server_config), for other names.
    pub fn server_config_for(&self, names: &[&str], alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
        let issued = self.issue_server(names);
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(vec![issued.cert_der.clone()], issued.private_key())
        .expect("server certificate");
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use rustls::client::danger::ServerCertVerifier;

    #[test]
    fn issued_certificates_verify_against_the_ca_only() {
        let ca = TestCa::new();
        let other = TestCa::new();
        let issued = ca.issue_server(&["localhost", "127.0.0.1"]);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier_for = |ca: &TestCa| {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.der()).expect("root");
            rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                Arc::clone(&provider),
            )
            .build()
            .expect("verifier")
        };
        let now = rustls::pki_types::UnixTime::now();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
        let verify = |ca: &TestCa| {
            verifier_for(ca).verify_server_cert(&issued.cert_der, &[], &name, &[], now).is_ok()
        };
        assert!(verify(&ca));
        assert!(!verify(&other), "an unknown CA is refused");
        assert!(ca.pem().starts_with("-----BEGIN CERTIFICATE-----"));
    }
}

/// What a fake speaks on a connection without TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cleartext {
    /// HTTP/1.1.
    Http1,
    /// HTTP/2 with prior knowledge (h2c).
    H2,
}

/// Serves one accepted connection of a fake with hyper until it ends or `kill` is notified (a
/// fake's "drop the connection" answer): over TLS from `tls`, HTTP/2 or HTTP/1.1 as ALPN chose;
/// without, as `cleartext` says. A failed handshake (a client that does not trust the CA) just
/// ends the connection.
pub(crate) async fn serve_connection<S, B>(
    stream: tokio::net::TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
    cleartext: Cleartext,
    service: S,
    kill: Arc<tokio::sync::Notify>,
) where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B> + Send + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use hyper::server::conn::{http1, http2};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    /// Streams per HTTP/2 connection: more than any test opens at once.
    const MAX_STREAMS: u32 = 1000;
    let stop = kill.notified();
    match tls {
        None if cleartext == Cleartext::H2 => {
            let connection = http2::Builder::new(TokioExecutor::new())
                .max_concurrent_streams(MAX_STREAMS)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! { _ = connection => {}, () = stop => {} }
        }
        None => {
            let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::select! { _ = connection => {}, () = stop => {} }
        }
        Some(acceptor) => {
            let Ok(stream) = acceptor.accept(stream).await else { return };
            let h2 = stream.get_ref().1.alpn_protocol() == Some(ALPN_H2);
            let io = TokioIo::new(stream);
            if h2 {
                let connection = http2::Builder::new(TokioExecutor::new())
                    .max_concurrent_streams(MAX_STREAMS)
                    .serve_connection(io, service);
                tokio::select! { _ = connection => {}, () = stop => {} }
            } else {
                let connection = http1::Builder::new().serve_connection(io, service);
                tokio::select! { _ = connection => {}, () = stop => {} }
            }
        }
    }
}
