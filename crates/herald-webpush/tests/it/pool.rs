//! Connection reuse: sends share pooled connections instead of opening one each.

use std::sync::Arc;

use herald_core::Outcome;
use herald_testkit::fake_push::FakePushService;
use serde_json::json;

use crate::{device, message, Setup};

#[tokio::test]
async fn sequential_sends_reuse_a_connection() {
    let fake = FakePushService::start().await;
    let sub = fake.subscribe("/push/a");
    let setup = Setup::new();
    let d = device(&sub, json!({}));
    for _ in 0..20 {
        assert_eq!(setup.deliver(&message("x"), &d).await.expect("delivered"), Outcome::Delivered);
    }
    assert_eq!(fake.received("/push/a").len(), 20);
    // One, give or take a connection returning to the pool just after the next send began.
    assert!(fake.connections_accepted() <= 3, "{} connections", fake.connections_accepted());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_share_connections() {
    const TASKS: usize = 16;
    const EACH: usize = 20;
    let fake = FakePushService::start().await;
    let setup = Arc::new(Setup::new());
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..TASKS {
        let sub = fake.subscribe(&format!("/push/{t}"));
        let setup = Arc::clone(&setup);
        tasks.spawn(async move {
            let d = device(&sub, json!({}));
            for i in 0..EACH {
                let outcome = setup.deliver(&message(&format!("{t}/{i}")), &d).await;
                assert_eq!(outcome.expect("delivered"), Outcome::Delivered);
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
