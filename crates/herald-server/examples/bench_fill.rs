//! Pre-fills a SQLite dedup database with random deliveries, for `cargo xtask bench`'s large-table
//! scenario.
//!
//! ```text
//! bench_fill --db PATH --rows N
//! ```
//!
//! Opens (creating and migrating) the store at `PATH` through [`SqliteStore::open`] and inserts `N`
//! keys that no benchmark request will ever hit, all recorded now (so none has expired), in
//! transactions of [`CHUNK`] rows. Prints `{"rows":N,"seconds":S,"rows_per_second":R}`.

use std::error::Error;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use herald_server::store::sqlite::{SqliteStore, SqliteStoreOptions};
use herald_server::store::{DedupKey, DedupStore};

/// Rows per transaction.
const CHUNK: u64 = 100_000;

fn main() -> Result<(), Box<dyn Error>> {
    let mut db = None;
    let mut rows = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--db" => db = args.next(),
            "--rows" => rows = args.next().and_then(|v| v.parse::<u64>().ok()),
            other => return Err(format!("unknown argument {other}"))?,
        }
    }
    let (Some(db), Some(rows)) = (db, rows) else {
        return Err("usage: bench_fill --db PATH --rows N")?;
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let options = SqliteStoreOptions {
            ttl: Duration::from_secs(24 * 3600),
            max_batch: 512,
            dead_token_ttl: Duration::from_secs(3600),
        };
        let store = SqliteStore::open(&format!("sqlite://{db}"), options).await?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as i64;
        // A per-run salt: keys from one fill never collide with another's, nor with requests.
        let salt = fastrand::u64(..);
        let started = Instant::now();
        let mut done = 0;
        let mut last_report = Instant::now();
        while done < rows {
            let n = CHUNK.min(rows - done);
            let mut keys: Vec<DedupKey> = (done..done + n)
                .map(|i| DedupKey::new(&format!("$fill{salt:x}_{i}"), "bench.fill", "fill"))
                .collect();
            // Sorted, each chunk's inserts walk the B-tree in order instead of at random.
            keys.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            store.insert_at(&keys, now).await?;
            done += n;
            if last_report.elapsed() > Duration::from_secs(10) {
                eprintln!("bench_fill: {done} / {rows} rows, {:.0?}", started.elapsed());
                last_report = Instant::now();
            }
        }
        store.close().await;
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "{}",
            serde_json::json!({
                "rows": rows,
                "seconds": seconds,
                "rows_per_second": rows as f64 / seconds.max(1e-9),
            })
        );
        Ok(())
    })
}
