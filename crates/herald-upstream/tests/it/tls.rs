//! Trust roots, ALPN, HTTP/2 and client certificates.

use std::sync::Arc;

use herald_testkit::tls::{TestCa, ALPN_H2, ALPN_HTTP1};
use herald_upstream::{UpstreamClient, UpstreamError, DEFAULT_USER_AGENT};
use http::Version;
use rustls::pki_types::CertificateDer;

use crate::support::{client, config, post, Behaviour, Server};

fn trusting(ca: &TestCa, dir: &tempfile::TempDir) -> herald_upstream::UpstreamConfig {
    config().with_ca_file(ca.write_pem(dir.path()))
}

#[tokio::test]
async fn ca_file_trusts_the_test_ca_and_h2_is_negotiated() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let server =
        Server::https(ca.server_config(&[ALPN_H2, ALPN_HTTP1]), Behaviour::default()).await;
    let client = client(&trusting(&ca, &dir));

    let response = post(&client, server.url("/push/abc")).await.expect("delivered");
    assert_eq!(response.status, 200);
    assert_eq!(response.version, Version::HTTP_2, "h2 is chosen when the server offers it");
    assert_eq!(&response.body[..], b"ok");
    assert!(!response.truncated);
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].version, Version::HTTP_2);
    assert_eq!(seen[0].path, "/push/abc");
    assert_eq!(&seen[0].body[..], b"payload");
    assert_eq!(seen[0].user_agent.as_deref(), Some(DEFAULT_USER_AGENT));
    assert!(DEFAULT_USER_AGENT.starts_with("herald/"));
}

#[tokio::test]
async fn without_the_ca_the_handshake_fails_as_tls() {
    let ca = TestCa::new();
    let server =
        Server::https(ca.server_config(&[ALPN_H2, ALPN_HTTP1]), Behaviour::default()).await;
    // Only the webpki roots: the test CA is unknown.
    let client = client(&config());

    let error = post(&client, server.url("/push/abc")).await.expect_err("untrusted");
    assert!(matches!(error, UpstreamError::Tls { .. }), "not a TLS error: {error:#}");
    assert!(
        matches!(
            error.tls_error(),
            Some(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer))
        ),
        "{error:#}"
    );
    assert!(error.is_retryable(), "an operator fixes TLS; then it works");
    assert!(server.seen().is_empty());

    // Another CA's bundle does not help either.
    let other = TestCa::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let error = post(&crate::support::client(&trusting(&other, &dir)), server.url("/x"))
        .await
        .expect_err("untrusted");
    assert!(matches!(error, UpstreamError::Tls { .. }), "{error:#}");
}

#[tokio::test]
async fn an_http1_only_server_gets_http1() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::https(ca.server_config(&[ALPN_HTTP1]), Behaviour::default()).await;
    let response = post(&client(&trusting(&ca, &dir)), server.url("/")).await.expect("ok");
    assert_eq!(response.version, Version::HTTP_11);
    assert_eq!(server.seen()[0].version, Version::HTTP_11);
}

#[tokio::test]
async fn http2_only_refuses_a_server_without_h2() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let h2_only = |dir: &tempfile::TempDir| {
        UpstreamClient::builder(&trusting(&ca, dir)).http2_only().build().expect("client")
    };

    // The server lists only http/1.1: it aborts the handshake (no_application_protocol).
    let http1 = Server::https(ca.server_config(&[ALPN_HTTP1]), Behaviour::default()).await;
    let error = post(&h2_only(&dir), http1.url("/")).await.expect_err("no h2");
    assert!(matches!(error, UpstreamError::Tls { .. }), "{error:#}");
    assert!(http1.seen().is_empty());

    // The server does no ALPN at all: the handshake succeeds, the client refuses to go on.
    let no_alpn = Server::https(ca.server_config(&[]), Behaviour::default()).await;
    let error = post(&h2_only(&dir), no_alpn.url("/")).await.expect_err("no h2");
    assert!(matches!(error, UpstreamError::Protocol { .. }), "{error:#}");
    assert!(format!("{error:#}").contains("HTTP/2"), "{error:#}");
    assert!(no_alpn.seen().is_empty(), "nothing was sent over HTTP/1.1");

    // A server offering h2 is fine.
    let both = Server::https(ca.server_config(&[ALPN_H2, ALPN_HTTP1]), Behaviour::default()).await;
    let response = post(&h2_only(&dir), both.url("/")).await.expect("h2");
    assert_eq!(response.version, Version::HTTP_2);
}

#[tokio::test]
async fn h2c_by_prior_knowledge() {
    let server = Server::plain(Behaviour::default()).await;
    let h2c = UpstreamClient::builder(&config()).http2_prior_knowledge().build().expect("client");
    let response = post(&h2c, server.url("/x")).await.expect("h2c");
    assert_eq!(response.version, Version::HTTP_2);
    assert_eq!(server.seen()[0].version, Version::HTTP_2);

    // Without it, plain http is HTTP/1.1.
    let response = post(&client(&config()), server.url("/x")).await.expect("h1");
    assert_eq!(response.version, Version::HTTP_11);
}

#[tokio::test]
async fn the_client_certificate_is_presented_when_configured() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let issued = ca.issue_server(&["localhost", "127.0.0.1"]);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der()).expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .expect("client verifier");
    let mut server_config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![CertificateDer::clone(&issued.cert_der)], issued.private_key())
        .expect("server config");
    server_config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
    let server = Server::https(Arc::new(server_config), Behaviour::default()).await;

    // Without a certificate the server refuses the handshake.
    let error = post(&client(&trusting(&ca, &dir)), server.url("/")).await.expect_err("no cert");
    // TLS 1.3: the alert comes after the client's handshake is done, inside HTTP/2.
    assert!(matches!(error, UpstreamError::Tls { .. }), "{error:#}");
    assert!(format!("{error:#}").contains("CertificateRequired"), "{error:#}");
    assert!(server.seen().is_empty());

    let identity = ca.issue_client("herald-client");
    let with_cert = UpstreamClient::builder(&trusting(&ca, &dir))
        .client_identity(identity.cert_pem.as_bytes(), identity.key_pem.as_bytes())
        .build()
        .expect("client");
    let response = post(&with_cert, server.url("/")).await.expect("mTLS");
    assert_eq!(response.status, 200);
    assert!(server.seen()[0].client_cert);
}

#[tokio::test]
async fn bad_tls_settings_are_build_errors_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let build = |config: &herald_upstream::UpstreamConfig| {
        UpstreamClient::builder(config).build().expect_err("invalid").to_string()
    };
    let missing = dir.path().join("missing.pem");
    let error = build(&config().with_ca_file(&missing));
    assert!(error.contains("`ca_file`") && error.contains("missing.pem"), "{error}");

    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").expect("write");
    let error = build(&config().with_ca_file(&garbage));
    assert!(error.contains("`ca_file`") && error.contains("no PEM certificate"), "{error}");

    let ca = TestCa::new();
    let identity = ca.issue_client("c");
    let error = UpstreamClient::builder(&config())
        .client_identity(identity.cert_pem.as_bytes(), b"no key here")
        .build()
        .expect_err("no key")
        .to_string();
    assert!(error.contains("client certificate"), "{error}");

    let error = build(&config().with_max_connections_per_host(0));
    assert!(error.contains("`max_connections_per_host`"), "{error}");
    let error = build(&config().with_proxy("socks5://127.0.0.1:1080"));
    assert!(error.contains("`proxy`"), "{error}");
}

#[test]
fn the_configuration_reads_from_toml_and_layers() {
    let app: herald_upstream::UpstreamConfig = toml::from_str(
        r#"
        request_timeout = "3s"
        proxy = "http://proxy.internal:3128"
        no_proxy = "push.internal"
        "#,
    )
    .expect("app section");
    let global: herald_upstream::UpstreamConfig = toml::from_str(
        r#"
        connect_timeout = "500ms"
        request_timeout = 20
        ca_file = "roots.pem"
        system_roots = true
        max_connections_per_host = 8
        "#,
    )
    .expect("global section");
    let merged = app.layered_over(&global).resolve_paths(std::path::Path::new("/etc/herald"));
    assert_eq!(merged.connect_timeout(), std::time::Duration::from_millis(500));
    assert_eq!(merged.request_timeout(), std::time::Duration::from_secs(3), "the app wins");
    assert_eq!(merged.ca_file(), Some(std::path::Path::new("/etc/herald/roots.pem")));
    assert!(merged.system_roots());
    assert_eq!(merged.proxy(), Some("http://proxy.internal:3128"));
    assert_eq!(merged.no_proxy(), Some("push.internal"));
    assert_eq!(merged.max_connections_per_host(), 8);

    let defaults = herald_upstream::UpstreamConfig::default();
    assert_eq!(defaults.connect_timeout(), std::time::Duration::from_secs(5));
    assert_eq!(defaults.request_timeout(), std::time::Duration::from_secs(10));
    assert_eq!(defaults.max_connections_per_host(), 64);
    assert!(!defaults.system_roots());

    let typo = toml::from_str::<herald_upstream::UpstreamConfig>("proxi = \"none\"");
    assert!(typo.expect_err("unknown key").to_string().contains("proxi"));
}
