//! Which host a notification goes to: Apple's production or sandbox host, or `endpoint`.
//!
//! Apple's hosts are not reachable from tests, so a CONNECT proxy (which records the host it is
//! asked for and refuses the tunnel) shows where the backend went.

use herald_apns::Platform;
use herald_testkit::proxy::ConnectProxy;
use serde_json::json;

use super::*;

async fn connect_target(platform: Option<Platform>) -> String {
    let proxy = ConnectProxy::start().await;
    proxy.refuse_with(503);
    let dir = tempfile::tempdir().expect("tempdir");
    let key = test_key().write_p8(dir.path());
    let mut config = ApnsConfig::token(key, &test_key().key_id, &test_key().team_id, TOPIC);
    config.platform = platform;
    config.upstream = UpstreamConfig::default().with_proxy(proxy.url());
    let backend =
        ApnsBackend::build(&AppContext::new(APP, dir.path()), config).await.expect("build");
    let result = backend.deliver(&call(1, 1), &message(), &device(&token(1).1, json!({}))).await;
    assert_failed(&result, ErrorClass::Transient, "proxy");
    let requests = proxy.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].method, "CONNECT");
    requests[0].target.clone()
}

#[tokio::test]
async fn production_by_default_and_sandbox_when_asked() {
    assert_eq!(connect_target(None).await, "api.push.apple.com:443");
    assert_eq!(connect_target(Some(Platform::Production)).await, "api.push.apple.com:443");
    assert_eq!(connect_target(Some(Platform::Sandbox)).await, "api.sandbox.push.apple.com:443");
}

#[tokio::test]
async fn an_endpoint_is_used_as_given() {
    let fake = fake().start().await;
    let setup = Setup::new(&fake).await;
    assert_delivered(&setup.deliver(&message(), &device(&token(2).1, json!({}))).await);
    assert_eq!(fake.requests(), 1);
}
