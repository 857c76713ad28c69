//! Connection reuse and the per-origin cap: sends share pooled connections instead of opening
//! one each, and one origin never gets more than `max_connections_per_host` of them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_core::ErrorClass;
use herald_testkit::fake_push::{Answer, FakePushService, Protocols};
use serde_json::json;

use crate::{delivered, device, fake, message, test_ca, Setup};

#[tokio::test]
async fn sequential_sends_reuse_a_connection() {
    let fake = fake().await;
    let sub = fake.subscribe("/push/a");
    let setup = Setup::new();
    let d = device(&sub, json!({}));
    for _ in 0..20 {
        assert_eq!(setup.deliver(&message("x"), &d).await.expect("delivered"), delivered());
    }
    assert_eq!(fake.received("/push/a").len(), 20);
    // One, give or take a connection returning to the pool just after the next send began.
    assert!(fake.connections_accepted() <= 3, "{} connections", fake.connections_accepted());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_share_connections() {
    const TASKS: usize = 16;
    const EACH: usize = 20;
    let fake = fake().await;
    let setup = Arc::new(Setup::new());
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..TASKS {
        let sub = fake.subscribe(&format!("/push/{t}"));
        let setup = Arc::clone(&setup);
        tasks.spawn(async move {
            let d = device(&sub, json!({}));
            for i in 0..EACH {
                let outcome = setup.deliver(&message(&format!("{t}/{i}")), &d).await;
                assert_eq!(outcome.expect("delivered"), delivered());
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("task");
    }
    assert_eq!(fake.all_received().len(), TASKS * EACH);
    let connections = fake.connections_accepted();
    // About one per concurrent sender. A few more appear when a connection returns to the pool
    // just after the next send started dialling, so the bound is loose; one connection per send
    // (no pooling) would be 320.
    assert!(
        connections <= TASKS * EACH / 4,
        "{connections} connections for {} sends",
        TASKS * EACH
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_per_host_caps_the_connections_to_an_http1_origin() {
    const SENDS: usize = 100;
    let fake = FakePushService::start_https(test_ca(), Protocols::Http1Only).await;
    let setup = Arc::new(Setup::with(|c| c.max_connections_per_host = 4));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..SENDS {
        let sub = fake.subscribe(&format!("/push/{i}"));
        let setup = Arc::clone(&setup);
        tasks.spawn(async move { setup.deliver(&message("x"), &device(&sub, json!({}))).await });
    }
    while let Some(done) = tasks.join_next().await {
        assert_eq!(done.expect("task").expect("delivered"), delivered());
    }
    let got = fake.all_received();
    assert_eq!(got.len(), SENDS);
    assert!(got.iter().all(|r| r.version == http::Version::HTTP_11));
    // Before the cap, one HTTP/1.1 connection per concurrent send: about 100.
    assert!(fake.max_open_connections() <= 4, "{} open at once", fake.max_open_connections());
    assert!(fake.connections_accepted() <= 4, "{} connections", fake.connections_accepted());
}

#[tokio::test]
async fn waiting_for_a_slot_counts_against_the_request_timeout() {
    const TIMEOUT: Duration = Duration::from_millis(400);
    let fake = fake().await;
    let hang = fake.subscribe("/push/hang");
    let next = fake.subscribe("/push/next");
    let later = fake.subscribe("/push/later");
    fake.script("/push/hang", [Answer::Hang]);
    fake.script("/push/next", [Answer::Hang]);
    let setup = Arc::new(Setup::with(|c| {
        c.max_connections_per_host = 1;
        c.request_timeout = TIMEOUT;
    }));
    let hanging = {
        let setup = Arc::clone(&setup);
        tokio::spawn(async move { setup.deliver(&message("x"), &device(&hang, json!({}))).await })
    };
    // Wait until the hanging request holds the only slot.
    while fake.received("/push/hang").is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started = Instant::now();
    let e = setup.deliver(&message("x"), &device(&next, json!({}))).await.expect_err("no answer");
    let took = started.elapsed();
    assert_eq!(e.class(), ErrorClass::Transient, "{e}");
    // The wait for the slot (until the hanging request gave up) and the request that followed
    // share one timeout: with a fresh timeout after the wait this takes about twice as long.
    assert!(took >= TIMEOUT && took < TIMEOUT * 7 / 4, "{took:?}");
    let hang_at = fake.received("/push/hang")[0].at;
    for sent in fake.received("/push/next") {
        assert!(sent.at >= hang_at + TIMEOUT * 3 / 4, "sent only once the slot was free");
    }
    assert_eq!(hanging.await.expect("task").expect_err("hang").class(), ErrorClass::Transient);
    // The slot is free again.
    let outcome = setup.deliver(&message("x"), &device(&later, json!({}))).await;
    assert_eq!(outcome.expect("delivered"), delivered());
}
