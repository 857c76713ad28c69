//! The outbound proxy (`proxy`): deliveries go through an HTTP `CONNECT` tunnel, a refused
//! tunnel is a transient failure, and the SSRF guard still refuses what it can judge by name.

use herald_core::ErrorClass;
use herald_testkit::proxy::ConnectProxy;
use herald_webpush::{WebPushBackend, WebPushConfig};
use serde_json::json;

use crate::{app, assert_refused_with, delivered, device, device_with, fake, message, Setup};

#[tokio::test]
async fn deliveries_go_through_the_configured_proxy_end_to_end_tls() {
    let fake = fake().await;
    let proxy = ConnectProxy::start_with_basic_auth("herald", "s3cret").await;
    let sub = fake.subscribe("/push/a");
    let setup = Setup::with(|c| c.proxy = Some(proxy.url_with_credentials("herald", "s3cret")));
    let d = device(&sub, json!({}));
    for _ in 0..3 {
        assert_eq!(setup.deliver(&message("x"), &d).await.expect("delivered"), delivered());
    }
    let requests = proxy.requests();
    // One tunnel, reused by the pool; the proxy saw host and port only, never the path.
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].method, "CONNECT");
    assert_eq!(requests[0].target, format!("127.0.0.1:{}", fake.addr().port()));
    assert_eq!(requests[0].status, 200);
    assert!(requests[0].proxy_authorization.is_some(), "credentials from the URL are sent");
    let got = fake.received("/push/a");
    assert_eq!(got.len(), 3);
    assert!(got.iter().all(|r| r.payload.is_some() && r.rejection.is_none()));
}

#[tokio::test]
async fn a_proxy_that_refuses_the_tunnel_is_a_transient_proxy_failure() {
    let fake = fake().await;
    let proxy = ConnectProxy::start().await;
    proxy.refuse_with(403);
    let sub = fake.subscribe("/push/a");
    let setup = Setup::with(|c| c.proxy = Some(proxy.url()));
    let e = setup.deliver(&message("x"), &device(&sub, json!({}))).await.expect_err("refused");
    assert_eq!(e.class(), ErrorClass::Transient, "{e}");
    assert_eq!(e.reason(), Some("proxy"));
    assert!(e.message().contains("403"), "the proxy's answer: {e}");
    assert!(!e.message().contains("/push/a"), "origin only: {e}");
    assert!(fake.all_received().is_empty());
}

#[tokio::test]
async fn through_a_proxy_the_guard_still_refuses_localhost_names() {
    let fake = fake().await;
    let proxy = ConnectProxy::start().await;
    let sub = fake.subscribe("/push/a");
    let port = fake.addr().port();
    let setup = Setup::with(|c| {
        c.allowed_endpoints.clear();
        c.proxy = Some(proxy.url());
    });
    for host in ["localhost", "push.localhost"] {
        let endpoint = format!("https://{host}:{port}/push/a");
        let d =
            device_with(&sub.p256dh, json!({"endpoint": endpoint, "auth": sub.auth}), json!({}));
        // The proxy would resolve the name to its own loopback: dropped, the pusher kept.
        let text = assert_refused_with(&setup.deliver(&message("x"), &d).await, "endpoint_refused");
        assert!(text.contains(host) && text.contains("loopback"), "{text}");
    }
    assert!(proxy.requests().is_empty(), "nothing was asked of the proxy");
}

#[test]
fn an_unusable_proxy_setting_fails_the_build_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (proxy, no_proxy, key) in [
        (Some("socks5://proxy.internal:1080"), None, "proxy"),
        (Some("not a url"), None, "proxy"),
        (None, Some("push.internal"), "no_proxy"),
    ] {
        let mut config = WebPushConfig::new("vapid.pem", "mailto:ops@example.org");
        config.create_vapid_key_if_missing = true;
        config.proxy = proxy.map(str::to_owned);
        config.no_proxy = no_proxy.map(str::to_owned);
        let e = WebPushBackend::new(&app(dir.path()), config).expect_err(key).to_string();
        assert!(e.contains(&format!("`{key}`")), "{e}");
    }
}
