//! Micro-benchmark of the SQLite dedup store, the part of the notify path that touches disk.
//!
//! - `claim/*`: dedup claims per second, i.e. `was_delivered` lookups (hits and misses, one at a
//!   time and 64 concurrent), and the in-process claim plus lookup as dispatch does it.
//! - `record/*`: records per second, one at a time (every record its own transaction: no
//!   batching) and many concurrent ones (the writer's group commit puts them in one transaction).
//!
//! ```text
//! cargo bench -p herald-server --bench dedup_store
//! cargo bench -p herald-server --bench dedup_store -- record --measurement-time 5
//! ```
//!
//! Criterion's `thrpt` line is the rate (elements are lookups or records). The database lives in
//! a temporary directory on the same disk as the system's temp dir.

#![allow(missing_docs)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use herald_server::claims::{Claim, Claims};
use herald_server::store::sqlite::{SqliteStore, SqliteStoreOptions};
use herald_server::store::{DedupKey, DedupStore};

/// Rows in the table while lookups are measured.
const PRESENT: usize = 100_000;
/// Distinct keys the record benchmarks cycle through (later rounds are upserts).
const RECORD_KEYS: usize = 1 << 20;

fn runtime() -> tokio::runtime::Runtime {
    // Two workers, like `herald serve` on the 2-core reference machine.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn keys(prefix: &str, n: usize) -> Vec<DedupKey> {
    (0..n)
        .map(|i| DedupKey::new(&format!("${prefix}{i}"), "org.example.bench", "pushkey"))
        .collect()
}

async fn open(dir: &tempfile::TempDir) -> Arc<SqliteStore> {
    let url = format!("sqlite://{}/herald.db", dir.path().display());
    let options = SqliteStoreOptions {
        ttl: Duration::from_secs(24 * 3600),
        max_batch: 512,
        dead_token_ttl: Duration::from_secs(3600),
    };
    Arc::new(SqliteStore::open(&url, options).await.expect("open the store"))
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

fn claims(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("temp dir");
    let store = rt.block_on(open(&dir));
    let present = keys("present", PRESENT);
    rt.block_on(store.insert_at(&present, now())).expect("pre-fill");
    let absent = keys("absent", PRESENT);
    let next = AtomicUsize::new(0);
    let pick = |set: &[DedupKey]| set[next.fetch_add(1, Ordering::Relaxed) % set.len()];

    let mut group = c.benchmark_group("claim");
    group.throughput(Throughput::Elements(1));
    group.bench_function("lookup_hit", |b| {
        b.to_async(&rt).iter(|| {
            let key = pick(&present);
            let store = &store;
            async move { assert!(store.was_delivered(&key).await.expect("lookup")) }
        })
    });
    group.bench_function("lookup_miss", |b| {
        b.to_async(&rt).iter(|| {
            let key = pick(&absent);
            let store = &store;
            async move { assert!(!store.was_delivered(&key).await.expect("lookup")) }
        })
    });
    let in_flight = Claims::default();
    group.bench_function("claim_and_lookup_miss", |b| {
        b.to_async(&rt).iter(|| {
            let key = pick(&absent);
            let (store, in_flight) = (&store, &in_flight);
            async move {
                let Claim::Owner(guard) = in_flight.claim(key) else { panic!("no contention") };
                assert!(!store.was_delivered(&key).await.expect("lookup"));
                guard.finish(false);
            }
        })
    });
    group.throughput(Throughput::Elements(64));
    group.bench_function("lookup_miss_64_concurrent", |b| {
        b.to_async(&rt).iter(|| {
            let batch: Vec<DedupKey> = (0..64).map(|_| pick(&absent)).collect();
            let store = &store;
            async move {
                let lookups = batch.iter().map(|key| store.was_delivered(key));
                for seen in futures_util::future::join_all(lookups).await {
                    assert!(!seen.expect("lookup"));
                }
            }
        })
    });
    group.finish();
    rt.block_on(store.close());
}

fn records(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("temp dir");
    let store = rt.block_on(open(&dir));
    let pool = keys("record", RECORD_KEYS);
    let next = AtomicUsize::new(0);
    let pick = || pool[next.fetch_add(1, Ordering::Relaxed) % pool.len()];

    let mut group = c.benchmark_group("record");
    group.throughput(Throughput::Elements(1));
    group.bench_function("one_at_a_time", |b| {
        b.to_async(&rt).iter(|| {
            let key = pick();
            let store = &store;
            async move { store.record_delivered(key).await.expect("record") }
        })
    });
    for n in [64u64, 512] {
        group.throughput(Throughput::Elements(n));
        group.bench_function(format!("group_commit_{n}_concurrent"), |b| {
            b.to_async(&rt).iter(|| {
                let batch: Vec<DedupKey> = (0..n).map(|_| pick()).collect();
                let store = &store;
                async move {
                    let writes = batch.into_iter().map(|key| store.record_delivered(key));
                    for written in futures_util::future::join_all(writes).await {
                        written.expect("record");
                    }
                }
            })
        });
    }
    group.finish();
    rt.block_on(store.close());
}

criterion_group! {
    name = benches;
    // Short by default (the whole run takes about a minute); criterion's own flags override.
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = claims, records
}
criterion_main!(benches);
