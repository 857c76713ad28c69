//! The outbound proxy: CONNECT tunnels, credentials, `no_proxy`, refusals.

use herald_testkit::proxy::ConnectProxy;
use herald_testkit::tls::{TestCa, ALPN_H2, ALPN_HTTP1};
use herald_upstream::UpstreamError;
use http::{StatusCode, Version};

use crate::support::{client, closed_port, config, post, Behaviour, Server};

#[tokio::test]
async fn requests_go_through_the_proxy_end_to_end_tls() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let server =
        Server::https(ca.server_config(&[ALPN_H2, ALPN_HTTP1]), Behaviour::default()).await;
    let proxy = ConnectProxy::start().await;
    let client = client(&config().with_ca_file(ca.write_pem(dir.path())).with_proxy(proxy.url()));

    for _ in 0..3 {
        let response = post(&client, server.url("/push/abc")).await.expect("through the proxy");
        assert_eq!(response.status, 200);
        assert_eq!(response.version, Version::HTTP_2, "ALPN runs inside the tunnel");
    }
    let requests = proxy.requests();
    assert_eq!(requests.len(), 1, "one tunnel, reused: {requests:?}");
    assert_eq!(requests[0].method, "CONNECT");
    assert_eq!(requests[0].target, server.addr.to_string());
    assert_eq!(requests[0].proxy_authorization, None);
    assert_eq!(server.seen().len(), 3);
}

#[tokio::test]
async fn plain_http_goes_through_the_tunnel_too() {
    let server = Server::plain(Behaviour::default()).await;
    let proxy = ConnectProxy::start().await;
    let client = client(&config().with_proxy(proxy.url()));
    let uri: http::Uri = format!("http://localhost:{}/x", server.addr.port()).parse().expect("url");
    post(&client, uri).await.expect("through the proxy");
    // The port is always explicit in CONNECT, also the scheme's default one.
    assert_eq!(proxy.requests()[0].target, format!("localhost:{}", server.addr.port()));
}

#[tokio::test]
async fn credentials_in_the_proxy_url_are_sent() {
    let server = Server::plain(Behaviour::default()).await;
    let proxy = ConnectProxy::start_with_basic_auth("herald", "s3cret").await;

    let good = client(&config().with_proxy(proxy.url_with_credentials("herald", "s3cret")));
    post(&good, server.url("/x")).await.expect("authorized");
    // base64("herald:s3cret")
    assert_eq!(
        proxy.requests()[0].proxy_authorization.as_deref(),
        Some("Basic aGVyYWxkOnMzY3JldA==")
    );

    let wrong = client(&config().with_proxy(proxy.url_with_credentials("herald", "wrong-pw")));
    let error = post(&wrong, server.url("/x")).await.expect_err("407");
    let UpstreamError::Proxy { status, proxy: shown, .. } = &error else { panic!("{error:#}") };
    assert_eq!(*status, Some(StatusCode::PROXY_AUTHENTICATION_REQUIRED));
    assert_eq!(*shown, proxy.url());
    assert!(error.is_retryable());
    let text = format!("{error:#} {error:?}");
    assert!(!text.contains("wrong-pw") && !text.contains("herald:"), "{text}");

    let none = client(&config().with_proxy(proxy.url()));
    let error = post(&none, server.url("/x")).await.expect_err("407");
    assert!(matches!(error, UpstreamError::Proxy { status: Some(s), .. } if s == 407), "{error:#}");
    assert_eq!(server.seen().len(), 1, "only the authorized request got through");
}

#[tokio::test]
async fn no_proxy_hosts_bypass_the_proxy() {
    let server = Server::plain(Behaviour::default()).await;
    let proxy = ConnectProxy::start().await;
    let client = client(&config().with_proxy(proxy.url()).with_no_proxy("localhost, 10.0.0.0/8"));

    let direct: http::Uri =
        format!("http://localhost:{}/x", server.addr.port()).parse().expect("url");
    post(&client, direct).await.expect("direct");
    assert!(proxy.requests().is_empty(), "{:?}", proxy.requests());

    post(&client, server.url("/x")).await.expect("proxied");
    assert_eq!(proxy.tunnels_opened(), 1);
}

#[tokio::test]
async fn a_proxy_refusing_the_tunnel_is_a_proxy_error() {
    let proxy = ConnectProxy::start().await;
    let client = client(&config().with_proxy(proxy.url()));

    // The target is unreachable from the proxy: 502.
    let target = closed_port();
    let error = post(&client, format!("https://{target}/secret").parse().expect("url"))
        .await
        .expect_err("502");
    assert!(
        matches!(&error, UpstreamError::Proxy { status: Some(s), .. } if *s == StatusCode::BAD_GATEWAY),
        "{error:#}"
    );
    assert_eq!(
        error.to_string(),
        format!("https://{target}: proxy {} answered CONNECT with 502 Bad Gateway", proxy.url())
    );

    // A proxy policy refusal: 403.
    proxy.refuse_with(403);
    let server = Server::plain(Behaviour::default()).await;
    let error = post(&client, server.url("/x")).await.expect_err("403");
    assert!(
        matches!(&error, UpstreamError::Proxy { status: Some(s), .. } if *s == 403),
        "{error:#}"
    );
    assert!(server.seen().is_empty());

    // No proxy listening at all.
    let gone = client_with_proxy(&format!("http://{}", closed_port()));
    let error = post(&gone, server.url("/x")).await.expect_err("no proxy");
    assert!(matches!(&error, UpstreamError::Proxy { status: None, .. }), "{error:#}");
    assert!(error.is_retryable());
}

fn client_with_proxy(url: &str) -> herald_upstream::UpstreamClient {
    client(&config().with_proxy(url))
}
