//! The SSRF guard: non-public endpoints are refused unless allow-listed.
//!
//! Only loopback addresses are ever connected to; 10.0.0.1 and 169.254.169.254 are only checked
//! to be refused before any connection is attempted.

use std::net::{Ipv6Addr, SocketAddr};

use herald_core::Outcome;
use herald_testkit::fake_push::FakePushService;
use serde_json::json;

use crate::{assert_dead, device_with, message, Setup};

#[tokio::test]
async fn non_public_endpoints_are_refused_by_default() {
    let fake = FakePushService::start().await;
    let sub = fake.subscribe("/push/a");
    let port = fake.addr().port();
    let setup = Setup::with(|c| c.allowed_endpoints.clear());
    let cases = [
        (format!("https://127.0.0.1:{port}/push/a"), "loopback"),
        ("https://10.0.0.1/push/a".to_owned(), "private"),
        ("https://169.254.169.254/latest/meta-data".to_owned(), "link-local"),
        (format!("https://[::1]:{port}/push/a"), "loopback"),
        (format!("https://[::ffff:127.0.0.1]:{port}/push/a"), "loopback"),
        // A name passes the URL check; the connector refuses what it resolves to.
        (format!("https://localhost:{port}/push/a"), "resolves to"),
        // Plain http needs the allow-list whatever the address.
        (format!("http://127.0.0.1:{port}/push/a"), "plain http"),
        (format!("http://localhost:{port}/push/a"), "plain http"),
    ];
    for (endpoint, why) in &cases {
        let d =
            device_with(&sub.p256dh, json!({"endpoint": endpoint, "auth": sub.auth}), json!({}));
        let reason = assert_dead(&setup.deliver(&message("x"), &d).await);
        assert!(reason.contains(why), "{endpoint}: {reason}");
        assert!(!reason.contains("/push/a"), "the reason never quotes the path: {reason}");
    }
    assert!(fake.all_received().is_empty());
    assert_eq!(fake.connections_accepted(), 0, "no connection was even opened");
}

#[tokio::test]
async fn allow_listed_endpoints_are_reachable() {
    let fake = FakePushService::start().await;
    let sub = fake.subscribe("/push/a");
    let port = fake.addr().port();
    let setup = Setup::with(|c| {
        c.allowed_endpoints = vec!["127.0.0.1:*".into(), "[::1]:*".into(), "localhost:*".into()];
    });
    let endpoints = [
        format!("http://127.0.0.1:{port}/push/a"),
        format!("http://[::ffff:127.0.0.1]:{port}/push/a"),
        format!("http://localhost:{port}/push/a"),
    ];
    for endpoint in &endpoints {
        let d =
            device_with(&sub.p256dh, json!({"endpoint": endpoint, "auth": sub.auth}), json!({}));
        let outcome = setup.deliver(&message("x"), &d).await;
        assert_eq!(outcome.expect(endpoint), Outcome::Delivered, "{endpoint}");
    }
    let got = fake.received("/push/a");
    assert_eq!(got.len(), endpoints.len());
    assert!(got.iter().all(|r| r.rejection.is_none() && r.payload.is_some()));

    // [::1] needs a fake listening on IPv6 loopback.
    match FakePushService::start_on(SocketAddr::from((Ipv6Addr::LOCALHOST, 0))).await {
        Ok(fake6) => {
            let sub6 = fake6.subscribe("/push/6");
            let endpoint = format!("http://[::1]:{}/push/6", fake6.addr().port());
            let d = device_with(
                &sub6.p256dh,
                json!({"endpoint": endpoint, "auth": sub6.auth}),
                json!({}),
            );
            assert_eq!(setup.deliver(&message("x"), &d).await.expect("[::1]"), Outcome::Delivered);
            assert!(fake6.received("/push/6")[0].payload.is_some());
        }
        // FIXME: hosts without IPv6 loopback cannot run this half.
        Err(e) => eprintln!("skipping [::1]: no IPv6 loopback here ({e})"),
    }
}

#[tokio::test]
async fn the_allow_list_is_per_host_and_port() {
    let fake = FakePushService::start().await;
    let sub = fake.subscribe("/push/a");
    let port = fake.addr().port();
    let setup = Setup::with(|c| {
        c.allowed_endpoints = vec![format!("127.0.0.1:{}", port.checked_add(1).unwrap_or(1))]
    });
    let d = device_with(
        &sub.p256dh,
        json!({"endpoint": format!("http://127.0.0.1:{port}/push/a"), "auth": sub.auth}),
        json!({}),
    );
    assert_dead(&setup.deliver(&message("x"), &d).await);
    let setup = Setup::with(|c| c.allowed_endpoints = vec![format!("127.0.0.1:{port}")]);
    assert_eq!(setup.deliver(&message("x"), &d).await.expect("allowed"), Outcome::Delivered);
}
