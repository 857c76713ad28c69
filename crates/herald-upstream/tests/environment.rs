//! What the client takes from the environment: proxies (`HTTP_PROXY`, `HTTPS_PROXY`,
//! `NO_PROXY`) when `proxy` is unset, and the system's trust store (`SSL_CERT_FILE`) with
//! `system_roots = true`.
//!
//! Its own test binary with a single test: the environment is process-wide, and the other
//! tests must not see these variables.

use std::time::Duration;

use bytes::Bytes;
use herald_testkit::proxy::ConnectProxy;
use herald_testkit::tls::{TestCa, ALPN_HTTP1};
use herald_upstream::{UpstreamClient, UpstreamConfig, UpstreamError};
use http::HeaderMap;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// A tiny HTTP/1.1 server answering 204 to every request on its connections, over TLS with
/// `tls`.
async fn server(tls: Option<TlsAcceptor>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    None => answer(stream).await,
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(stream).await {
                            answer(stream).await;
                        }
                    }
                }
            });
        }
    });
    addr
}

async fn answer(mut stream: impl AsyncRead + AsyncWrite + Unpin) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        // Requests carry a 2-byte body after the head.
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            if buf.len() < end + 4 + 2 {
                break;
            }
            buf.drain(..end + 4 + 2);
            if stream.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await.is_err() {
                return;
            }
        }
    }
}

async fn post(client: &UpstreamClient, url: String) -> Result<u16, UpstreamError> {
    let uri = url.parse().expect("url");
    let response = client
        .post(uri, HeaderMap::new(), Bytes::from_static(b"hi"), Duration::from_secs(5))
        .await?;
    Ok(response.status.as_u16())
}

#[tokio::test]
async fn the_environment() {
    proxies_from_the_environment_when_proxy_is_unset().await;
    system_roots_come_from_the_environment().await;
}

async fn proxies_from_the_environment_when_proxy_is_unset() {
    let proxy = ConnectProxy::start().await;
    let target = server(None).await;
    // Edition 2021: setting the environment is safe; this binary has no other test.
    std::env::set_var("HTTP_PROXY", proxy.url());
    std::env::set_var("HTTPS_PROXY", proxy.url());
    std::env::set_var("NO_PROXY", "localhost");
    std::env::remove_var("REQUEST_METHOD");

    let from_env = UpstreamClient::builder(&UpstreamConfig::default()).build().expect("client");
    assert_eq!(post(&from_env, format!("http://{target}/x")).await.expect("proxied"), 204);
    assert_eq!(proxy.tunnels_opened(), 1);
    assert_eq!(proxy.requests()[0].target, target.to_string());

    // NO_PROXY: localhost goes direct.
    let direct = format!("http://localhost:{}/x", target.port());
    assert_eq!(post(&from_env, direct).await.expect("direct"), 204);
    assert_eq!(proxy.requests().len(), 1, "{:?}", proxy.requests());

    // `proxy = "none"` ignores the environment.
    let none = UpstreamClient::builder(&UpstreamConfig::default().with_proxy("none"))
        .build()
        .expect("client");
    assert_eq!(post(&none, format!("http://{target}/x")).await.expect("direct"), 204);
    assert_eq!(proxy.requests().len(), 1);

    // An explicit `proxy` replaces the environment's, NO_PROXY included.
    let other = ConnectProxy::start().await;
    let explicit = UpstreamClient::builder(&UpstreamConfig::default().with_proxy(other.url()))
        .build()
        .expect("client");
    let via_localhost = format!("http://localhost:{}/x", target.port());
    assert_eq!(post(&explicit, via_localhost).await.expect("proxied"), 204);
    assert_eq!((proxy.requests().len(), other.tunnels_opened()), (1, 1));

    // A proxy scheme the client cannot speak is refused at build time, naming the variable.
    std::env::set_var("HTTPS_PROXY", "socks5://127.0.0.1:1080");
    let error = UpstreamClient::builder(&UpstreamConfig::default()).build().expect_err("socks");
    assert!(error.to_string().contains("HTTPS_PROXY"), "{error}");
    for name in ["HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"] {
        std::env::remove_var(name);
    }
}

/// rustls-native-certs reads `SSL_CERT_FILE` as the system's store, so pointing it at the test
/// CA shows `system_roots = true` trusting the system store (and the default not).
async fn system_roots_come_from_the_environment() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let pem = ca.write_pem(dir.path());
    std::env::set_var("SSL_CERT_FILE", &pem);
    std::env::remove_var("SSL_CERT_DIR");
    let target = server(Some(TlsAcceptor::from(ca.server_config(&[ALPN_HTTP1])))).await;
    let url = format!("https://{target}/x");
    let config = UpstreamConfig::default().with_proxy("none");

    let system =
        UpstreamClient::builder(&config.clone().with_system_roots(true)).build().expect("client");
    assert_eq!(post(&system, url.clone()).await.expect("trusted by the system store"), 204);

    let webpki_only = UpstreamClient::builder(&config).build().expect("client");
    let error = post(&webpki_only, url).await.expect_err("unknown CA");
    assert!(matches!(error, UpstreamError::Tls { .. }), "{error:#}");

    // An empty system store is an error naming the key.
    std::env::set_var("SSL_CERT_FILE", dir.path().join("missing.pem"));
    let error = UpstreamClient::builder(&UpstreamConfig::default().with_system_roots(true))
        .build()
        .expect_err("no system roots");
    assert!(error.to_string().contains("`system_roots`"), "{error}");
}
