//! The production TLS path: rustls with the webpki roots plus `ca_file`, HTTP/2 or HTTP/1.1 by
//! ALPN, against fakes with certificates from this run's test CA.

use std::sync::Arc;

use herald_core::ErrorClass;
use herald_testkit::fake_push::{FakePushService, Protocols};
use herald_testkit::tls::TestCa;
use http::Version;
use serde_json::json;

use crate::{delivered, device, message, test_ca, Setup};

#[tokio::test]
async fn h2_is_negotiated_when_offered_and_http1_otherwise() {
    let setup = Setup::new();
    for (protocols, version) in [
        (Protocols::Both, Version::HTTP_2),
        (Protocols::Http2Only, Version::HTTP_2),
        (Protocols::Http1Only, Version::HTTP_11),
    ] {
        let fake = FakePushService::start_https(test_ca(), protocols).await;
        let sub = fake.subscribe("/push/a");
        assert!(sub.endpoint.starts_with("https://127.0.0.1:"), "{}", sub.endpoint);
        let d = device(&sub, json!({}));
        for _ in 0..3 {
            let outcome = setup.deliver(&message("x"), &d).await;
            assert_eq!(outcome.expect("delivered"), delivered(), "{protocols:?}");
        }
        let got = fake.received("/push/a");
        assert!(got.iter().all(|r| r.version == version), "{protocols:?}: {:?}", got[0].version);
        assert!(got.iter().all(|r| r.payload.is_some() && r.rejection.is_none()));
        assert_eq!(got[0].vapid.as_ref().expect("vapid").aud, fake.base_url(), "https audience");
        let agent = concat!("herald/", env!("CARGO_PKG_VERSION"));
        assert!(got.iter().all(|r| r.header("user-agent") == Some(agent)), "the client's agent");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_share_one_http2_connection() {
    let fake = FakePushService::start_https(test_ca(), Protocols::Both).await;
    let setup = Arc::new(Setup::new());
    let sub = fake.subscribe("/push/a");
    let d = device(&sub, json!({}));
    setup.deliver(&message("first"), &d).await.expect("delivered");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..40 {
        let (setup, d) = (Arc::clone(&setup), d.clone());
        tasks.spawn(async move { setup.deliver(&message(&i.to_string()), &d).await });
    }
    while let Some(done) = tasks.join_next().await {
        assert_eq!(done.expect("task").expect("delivered"), delivered());
    }
    assert_eq!(fake.received("/push/a").len(), 41);
    assert_eq!(fake.connections_accepted(), 1, "streams on one HTTP/2 connection");
}

#[tokio::test]
async fn a_certificate_from_an_unknown_ca_is_a_transient_failure() {
    let fake = FakePushService::start_https(test_ca(), Protocols::Both).await;
    let sub = fake.subscribe("/push/a");
    let d = device(&sub, json!({}));
    // Without `ca_file` (webpki roots only), and with another CA in it.
    let dir = tempfile::tempdir().expect("tempdir");
    let stranger = TestCa::new().write_pem(dir.path());
    let setups =
        [Setup::with(|c| c.ca_file = None), Setup::with(|c| c.ca_file = Some(stranger.clone()))];
    for setup in &setups {
        let e = setup.deliver(&message("x"), &d).await.expect_err("untrusted");
        // Not a dead subscription: an operator fixes the trust, then the retry works.
        assert_eq!(e.class(), ErrorClass::Transient, "{e}");
        assert!(e.message().contains("certificate"), "says why: {e}");
        assert_eq!(e.reason(), Some("tls"));
        assert!(!e.message().contains("/push/a"), "origin only: {e}");
    }
    assert!(fake.all_received().is_empty(), "nothing was sent over an untrusted connection");
    assert!(fake.connections_accepted() >= 2, "the handshakes were tried");
}
