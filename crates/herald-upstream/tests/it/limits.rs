//! The per-origin cap on concurrent requests and connections.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use herald_upstream::UpstreamClient;

use crate::support::{config, post, Behaviour, Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_to_one_origin_uses_at_most_the_cap() {
    let server =
        Server::plain(Behaviour { delay: Duration::from_millis(10), ..Behaviour::default() }).await;
    let client = Arc::new(
        UpstreamClient::builder(&config().with_max_connections_per_host(4))
            .build()
            .expect("client"),
    );
    let mut burst = tokio::task::JoinSet::new();
    for i in 0..100 {
        let client = Arc::clone(&client);
        let uri = server.url(&format!("/push/{i}"));
        burst.spawn(async move { post(&client, uri).await });
    }
    while let Some(result) = burst.join_next().await {
        assert_eq!(result.expect("task").expect("delivered").status, 200);
    }
    assert_eq!(server.seen().len(), 100);
    let max_in_flight = server.stats.max_in_flight.load(Ordering::SeqCst);
    assert!(server.accepted() <= 4, "{} connections for a cap of 4", server.accepted());
    assert!((2..=4).contains(&max_in_flight), "{max_in_flight} requests at once");
}

#[tokio::test]
async fn the_cap_is_per_origin() {
    let slow =
        Server::plain(Behaviour { delay: Duration::from_secs(30), ..Behaviour::default() }).await;
    let fast = Server::plain(Behaviour::default()).await;
    let client = Arc::new(
        UpstreamClient::builder(&config().with_max_connections_per_host(1))
            .build()
            .expect("client"),
    );
    // One request holds the slow origin's only slot ...
    let holder = tokio::spawn({
        let client = Arc::clone(&client);
        let uri = slow.url("/hold");
        async move { post(&client, uri).await }
    });
    while slow.seen().is_empty() {
        tokio::task::yield_now().await;
    }
    // ... and another origin is not held up by it.
    post(&client, fast.url("/x")).await.expect("other origin");
    holder.abort();
}
