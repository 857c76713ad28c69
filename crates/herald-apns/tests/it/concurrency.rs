//! Many notifications at once: streams multiplexed on one HTTP/2 connection, a further one only
//! when the streams are used up, and GOAWAY in the middle of a load.

use std::collections::HashMap;

use futures_util::StreamExt;
use herald_testkit::apns::ApnsAnswer;
use serde_json::json;

use super::*;

/// Sends `n` notifications (distinct messages) with at most `parallel` in flight.
async fn send_many(
    setup: &Arc<Setup>,
    n: u64,
    parallel: usize,
) -> Vec<Result<Outcome, DeliveryError>> {
    let d = device(&token(0x42).1, json!({}));
    futures_util::stream::iter(0..n)
        .map(|i| {
            let (setup, d) = (Arc::clone(setup), d.clone());
            async move { setup.backend.deliver(&call_n(i), &message(), &d).await }
        })
        .buffer_unordered(parallel)
        .collect()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_sends_share_one_connection() {
    let fake = fake().start().await;
    // The fake answers nothing until 200 streams are open together.
    fake.hold_until(200);
    let setup = Arc::new(Setup::new(&fake).await);
    let results = send_many(&setup, 200, 200).await;
    assert!(results.iter().all(|r| matches!(r, Ok(Outcome::Delivered(_)))), "{results:?}");
    assert_eq!(fake.connections_accepted(), 1);
    assert_eq!(fake.max_concurrent_streams_seen(), 200);
    assert_eq!(fake.accepted(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_granting_few_streams_is_respected() {
    // APNs may grant fewer streams than Herald's budget: HTTP/2 queues the rest on the
    // connection; nothing fails and the server never sees more than it granted.
    let fake = fake().max_concurrent_streams(3).start().await;
    let setup = Arc::new(Setup::new(&fake).await);
    let results = send_many(&setup, 60, 60).await;
    assert!(results.iter().all(|r| matches!(r, Ok(Outcome::Delivered(_)))), "{results:?}");
    assert_eq!(fake.accepted(), 60);
    assert!(fake.max_concurrent_streams_seen() <= 3, "{}", fake.max_concurrent_streams_seen());
    assert_eq!(fake.connections_accepted(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_further_connection_opens_only_when_the_streams_are_used_up() {
    let fake = fake().max_concurrent_streams(4).start().await;
    // 12 streams open together: three connections of four.
    fake.hold_until(12);
    let setup = Arc::new(Setup::with(&fake, |c| c.max_concurrent_streams = 4).await);
    let results = send_many(&setup, 12, 12).await;
    assert!(results.iter().all(|r| matches!(r, Ok(Outcome::Delivered(_)))), "{results:?}");
    assert_eq!(fake.connections_accepted(), 3);
    let mut per_connection: HashMap<usize, usize> = HashMap::new();
    for r in fake.received() {
        *per_connection.entry(r.connection).or_default() += 1;
    }
    assert!(per_connection.values().all(|&n| n == 4), "{per_connection:?}");
    // Below the budget, one connection is enough again: the first is reused.
    let before = fake.connections_accepted();
    let results = send_many(&setup, 20, 4).await;
    assert!(results.iter().all(|r| matches!(r, Ok(Outcome::Delivered(_)))));
    assert_eq!(fake.connections_accepted(), before);
}

/// APNs sends GOAWAY while streams are in flight: every notification is still delivered, none
/// twice. Streams above the GOAWAY's last stream id were not processed and go again on a new
/// connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_mid_load_loses_and_duplicates_nothing() {
    let fake = fake().start().await;
    let mut script = vec![ApnsAnswer::Ok; 100];
    script.push(ApnsAnswer::GoAway);
    script.extend(vec![ApnsAnswer::Ok; 150]);
    script.push(ApnsAnswer::GoAway);
    fake.script(script);
    let setup = Arc::new(Setup::new(&fake).await);
    let results = send_many(&setup, 500, 48).await;
    let failed: Vec<_> =
        results.iter().filter(|r| !matches!(r, Ok(Outcome::Delivered(_)))).collect();
    assert!(failed.is_empty(), "{failed:?}");
    eprintln!("goaway: {} requests, {} connections", fake.requests(), fake.connections_accepted());
    assert!(fake.connections_accepted() >= 3, "GOAWAY closed two connections");
    let mut acknowledged: HashMap<String, usize> = HashMap::new();
    for r in fake.received().iter().filter(|r| r.status == Some(200)) {
        *acknowledged.entry(r.apns_id().expect("apns-id").to_owned()).or_default() += 1;
    }
    assert_eq!(acknowledged.len(), 500, "every notification acknowledged");
    assert!(acknowledged.values().all(|&n| n == 1), "none acknowledged twice");
}
