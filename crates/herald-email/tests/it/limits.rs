//! Abuse limits: per address, counted, never an error.

use crate::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_20_to_one_address_sends_exactly_the_limit() {
    let fake = fake().await;
    let setup = Arc::new(Setup::with(&fake, |c| c.max_per_address = 5));
    let n = Arc::new(spec_example());
    let burst = (0..20u8).map(|i| {
        let (setup, n) = (Arc::clone(&setup), Arc::clone(&n));
        // The same mailbox, spelt differently: one allowance.
        let address = if i % 2 == 0 { ALICE } else { "Alice@EXAMPLE.org" };
        tokio::spawn(
            async move { setup.backend.deliver(&call(1, [i; 16]), &n, &device(address)).await },
        )
    });
    let mut outcomes = Vec::new();
    for task in burst.collect::<Vec<_>>() {
        outcomes.push(task.await.unwrap().unwrap());
    }
    let sent = outcomes.iter().filter(|o| **o == delivered()).count();
    let limited = outcomes.iter().filter(|o| **o == Outcome::Skipped("rate_limited")).count();
    assert_eq!((sent, limited), (5, 15), "{outcomes:?}");
    assert_eq!(fake.wait_messages(5, Duration::from_secs(5)).await.len(), 5);
    assert_eq!(fake.transactions(), 5);
    assert!(
        setup.metrics().contains(&format!("email_rate_limited_total{{app=\"{APP}\"}} 15")),
        "{}",
        setup.metrics()
    );

    // Another address has its own allowance; a retry of an admitted mail takes none.
    assert_eq!(
        setup.deliver(&spec_example(), &device("bob@example.org")).await.unwrap(),
        delivered()
    );
    let retry = setup.backend.deliver(&call(2, [0; 16]), &n, &device(ALICE)).await;
    assert_eq!(retry.unwrap(), delivered());
}
