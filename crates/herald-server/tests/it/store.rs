//! The SQLite dedup store under sustained load: its write-ahead log stays bounded.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_server::store::sqlite::{SqliteStore, SqliteStoreOptions};
use herald_server::store::{DedupKey, DedupStore};

use crate::common::APP;

/// The bound the issue asks for. Unbounded, the log passes it within a few seconds of this load
/// (it grew to 1.87 GB in 30 s at 7.5 k notify/s).
const WAL_LIMIT: u64 = 64 << 20;

/// How long the load is held.
const LOAD: Duration = Duration::from_secs(12);

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// 64 concurrent clients, as a busy homeserver's connections: each records a new delivery and
/// looks up a recorded and an unknown key, in a loop, so that lookups are always reading while the
/// writer commits. The WAL is sampled every 10 ms throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_stays_bounded_under_sustained_load() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("herald.db");
    let wal = dir.path().join("herald.db-wal");
    let options = SqliteStoreOptions {
        ttl: Duration::from_secs(3600),
        max_batch: 512,
        dead_token_ttl: Duration::from_secs(3600),
    };
    let store =
        Arc::new(SqliteStore::open(&format!("sqlite://{}", db.display()), options).await.unwrap());

    let stop = Arc::new(AtomicBool::new(false));
    let recorded = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for client in 0..64 {
        let (store, stop, recorded) = (store.clone(), stop.clone(), recorded.clone());
        clients.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = DedupKey::new(&format!("$load{client}-{i}"), APP, "pushkey");
                store.record_delivered(key).await.unwrap();
                assert!(store.was_delivered(&key).await.unwrap());
                let unknown = DedupKey::new(&format!("$unknown{client}-{i}"), APP, "pushkey");
                assert!(!store.was_delivered(&unknown).await.unwrap());
                recorded.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        }));
    }

    let started = Instant::now();
    let (mut peak, mut samples) = (0, 0);
    while started.elapsed() < LOAD {
        peak = peak.max(file_size(&wal));
        samples += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    peak = peak.max(file_size(&wal));
    let recorded = recorded.load(Ordering::Relaxed);
    let rate = recorded as f64 / started.elapsed().as_secs_f64();
    eprintln!("{recorded} records ({rate:.0}/s); WAL peak {peak} bytes over {samples} samples");

    assert!(
        peak < WAL_LIMIT,
        "the WAL reached {} MB (limit {} MB) after {recorded} records",
        peak >> 20,
        WAL_LIMIT >> 20
    );
    // Every record is there, and the store still answers.
    assert_eq!(store.row_count().await.unwrap(), recorded as i64);
    store.close().await;
    // Closing checkpoints and truncates the log.
    assert_eq!(file_size(&wal), 0);
}
