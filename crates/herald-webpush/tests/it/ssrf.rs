//! The SSRF guard: non-public endpoints are refused unless an address entry allows them; what
//! the URL says rejects the pushkey, what DNS says only drops the message.
//!
//! Only loopback addresses are ever connected to; 10.0.0.1 and 169.254.169.254 are only checked
//! to be refused before any connection is attempted.

use std::net::{Ipv6Addr, SocketAddr};

use herald_testkit::fake_push::FakePushService;
use serde_json::json;

use crate::{assert_dead, assert_refused_with, delivered, device_with, fake, message, Setup};

#[tokio::test]
async fn endpoints_that_are_non_public_by_their_url_are_rejected() {
    let fake = fake().await;
    let sub = fake.subscribe("/push/a");
    let port = fake.addr().port();
    let setup = Setup::with(|c| c.allowed_endpoints.clear());
    let cases = [
        (format!("https://127.0.0.1:{port}/push/a"), "loopback"),
        ("https://10.0.0.1/push/a".to_owned(), "private"),
        ("https://169.254.169.254/latest/meta-data".to_owned(), "link-local"),
        (format!("https://[::1]:{port}/push/a"), "loopback"),
        (format!("https://[::ffff:127.0.0.1]:{port}/push/a"), "loopback"),
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
async fn a_name_that_resolves_to_a_non_public_address_drops_the_message_but_keeps_the_pusher() {
    let fake = fake().await;
    let sub = fake.subscribe("/push/a");
    let port = fake.addr().port();
    // No allow-list; then a host-name entry for the very name: neither unlocks its address.
    for allowed in [vec![], vec!["localhost".to_owned(), "*.localhost:*".to_owned()]] {
        let setup = Setup::with(|c| c.allowed_endpoints = allowed.clone());
        let mut endpoints = vec![format!("https://localhost:{port}/push/a")];
        if !allowed.is_empty() {
            // The name entry allows plain http for the name, still not its address.
            endpoints.push(format!("http://localhost:{port}/push/a"));
        }
        for endpoint in endpoints {
            let d = device_with(
                &sub.p256dh,
                json!({"endpoint": endpoint, "auth": sub.auth}),
                json!({}),
            );
            let outcome = setup.deliver(&message("x"), &d).await;
            // Not TokenDead: a resolver's answer must never make the homeserver delete pushers.
            let text = assert_refused_with(&outcome, "endpoint_refused");
            assert!(text.contains("localhost") && text.contains("loopback"), "{text}");
            assert!(!text.contains("/push/a"), "origin only: {text}");
        }
    }
    assert_eq!(fake.connections_accepted(), 0, "no connection was opened");
}

#[tokio::test]
async fn cidr_entries_reach_non_public_addresses_by_address_and_by_name() {
    let fake = fake().await;
    let sub = fake.subscribe("/push/a");
    let port = fake.addr().port();
    let setup = Setup::with(|c| c.allowed_endpoints = vec!["127.0.0.0/8".into()]);
    for endpoint in [
        format!("https://127.0.0.1:{port}/push/a"),
        // localhost resolves to 127.0.0.1 (allowed) and maybe ::1 (not): the first is used.
        format!("https://localhost:{port}/push/a"),
    ] {
        let d =
            device_with(&sub.p256dh, json!({"endpoint": endpoint, "auth": sub.auth}), json!({}));
        let outcome = setup.deliver(&message("x"), &d).await;
        assert_eq!(outcome.expect(&endpoint), delivered(), "{endpoint}");
    }
    assert_eq!(fake.received("/push/a").len(), 2);
    assert!(fake.received("/push/a").iter().all(|r| r.payload.is_some()));
}

#[tokio::test]
async fn legacy_numeric_hosts_are_rejected_before_any_connection() {
    let fake = fake().await;
    let sub = fake.subscribe("/push/a");
    let port = fake.addr().port();
    // The allow-list covers loopback, so these would reach the fake if they were resolved: today
    // they resolve to 127.0.0.1 and then fail the TLS handshake on every retry.
    let setup = Setup::new();
    for host in ["127.1", "0x7f000001", "2130706433", "0177.0.0.1"] {
        let endpoint = format!("https://{host}:{port}/push/a");
        let d =
            device_with(&sub.p256dh, json!({"endpoint": endpoint, "auth": sub.auth}), json!({}));
        let reason = assert_dead(&setup.deliver(&message("x"), &d).await);
        assert!(reason.contains("numeric address"), "{host}: {reason}");
    }
    let d = device_with(
        &sub.p256dh,
        json!({"endpoint": format!("https://bad-.localhost:{port}/push/a"), "auth": sub.auth}),
        json!({}),
    );
    let reason = assert_dead(&setup.deliver(&message("x"), &d).await);
    assert!(reason.contains("TLS server name"), "{reason}");
    assert_eq!(fake.connections_accepted(), 0);
}

#[tokio::test]
async fn plain_http_is_allowed_per_address_block_and_host_name() {
    // The one plain-HTTP fake of this suite: plain http is only ever for allow-listed endpoints.
    let fake = FakePushService::start().await;
    let sub = fake.subscribe("/push/a");
    let port = fake.addr().port();
    let setup = Setup::with(|c| {
        c.allowed_endpoints = vec!["127.0.0.1:*".into(), "::1".into(), "localhost".into()];
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
        assert_eq!(outcome.expect(endpoint), delivered(), "{endpoint}");
    }
    let got = fake.received("/push/a");
    assert_eq!(got.len(), endpoints.len());
    assert!(got.iter().all(|r| r.rejection.is_none() && r.payload.is_some()));
    assert!(got.iter().all(|r| r.version == http::Version::HTTP_11));

    let fake6 = FakePushService::start_on(SocketAddr::from((Ipv6Addr::LOCALHOST, 0)))
        .await
        .expect("a fake on IPv6 loopback");
    let sub6 = fake6.subscribe("/push/6");
    let endpoint = format!("http://[::1]:{}/push/6", fake6.addr().port());
    let d = device_with(&sub6.p256dh, json!({"endpoint": endpoint, "auth": sub6.auth}), json!({}));
    assert_eq!(setup.deliver(&message("x"), &d).await.expect("[::1]"), delivered());
    assert!(fake6.received("/push/6")[0].payload.is_some());
    let refused = Setup::with(|c| c.allowed_endpoints = vec!["127.0.0.1:*".into()]);
    let d = device_with(
        &sub.p256dh,
        json!({"endpoint": format!("http://[::1]:{port}/push/6"), "auth": sub.auth}),
        json!({}),
    );
    assert!(assert_dead(&refused.deliver(&message("x"), &d).await).contains("plain http"));
}

#[tokio::test]
async fn the_allow_list_is_per_port() {
    let fake = FakePushService::start().await;
    let sub = fake.subscribe("/push/a");
    let port = fake.addr().port();
    let other_port = if port == u16::MAX { port - 1 } else { port + 1 };
    let setup = Setup::with(|c| c.allowed_endpoints = vec![format!("127.0.0.0/8:{other_port}")]);
    let d = device_with(
        &sub.p256dh,
        json!({"endpoint": format!("http://127.0.0.1:{port}/push/a"), "auth": sub.auth}),
        json!({}),
    );
    assert_dead(&setup.deliver(&message("x"), &d).await);
    let setup = Setup::with(|c| c.allowed_endpoints = vec![format!("127.0.0.1:{port}")]);
    assert_eq!(setup.deliver(&message("x"), &d).await.expect("allowed"), delivered());
}
