//! The embedded dedup store: one SQLite file through sqlx.
//!
//! Both directions are batched, because each sqlx call costs a round trip to the connection's worker
//! thread that dwarfs the SQLite work itself: lookups go to one reader task that answers every
//! lookup queued up with one `SELECT … IN (…)`, and writes go to one writer task that commits
//! whatever has queued up as one transaction (group commit). Thousands of notifications per second
//! cost a handful of queries and commits, and no request waits on another's lock. WAL with
//! `synchronous = NORMAL` keeps commits off fsync; a crash can lose the last few commits, which at
//! worst lets one retried notification through twice.

use std::borrow::Cow;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, QueryBuilder, Sqlite};
use tokio::sync::{mpsc, oneshot, Mutex};
use tokio::task::JoinHandle;

use super::{unix_now, DedupKey, DedupStore, StoreError};

/// How often the WAL is copied back into the database.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// Rows deleted per prune transaction, so pruning never holds the writer for long.
const PRUNE_CHUNK: i64 = 5_000;

/// Tuning of the SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteStoreOptions {
    /// How long deliveries are remembered.
    pub ttl: Duration,
    /// Most records per transaction.
    pub max_batch: usize,
}

/// Lookups answered per query at the most. Batches are padded to a power of two so that sqlx's
/// prepared-statement cache holds a handful of statements, not one per batch size.
const MAX_LOOKUP_BATCH: usize = 256;

enum ReadCommand {
    Lookup(DedupKey, oneshot::Sender<Result<bool, String>>),
    Shutdown,
}

enum WriteCommand {
    Record(DedupKey, oneshot::Sender<Result<(), String>>),
    Prune(oneshot::Sender<Result<u64, String>>),
    Shutdown,
}

/// The SQLite [`DedupStore`].
pub struct SqliteStore {
    /// For occasional queries (diagnostics, bulk inserts); the hot path uses `reader`/`writer`.
    pool: SqlitePool,
    reader: mpsc::Sender<ReadCommand>,
    writer: mpsc::Sender<WriteCommand>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    checkpointer: JoinHandle<()>,
}

fn migrator() -> Migrator {
    // Built by hand rather than with `migrate!` to keep sqlx's proc-macro stack out of the build;
    // the SQL is still embedded in the binary.
    Migrator {
        migrations: Cow::Owned(vec![Migration::new(
            1,
            Cow::Borrowed("delivered"),
            MigrationType::Simple,
            Cow::Borrowed(include_str!("../../migrations/0001_delivered.sql")),
            false,
        )]),
        ..Migrator::DEFAULT
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `url` (`sqlite://path/to/file.db`) and migrates it.
    pub async fn open(url: &str, options: SqliteStoreOptions) -> Result<Self, StoreError> {
        let connect = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError(format!("bad store url `{url}`: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .pragma("temp_store", "memory")
            .disable_statement_logging();
        if let Some(dir) = Path::new(connect.get_filename()).parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(|e| {
                    StoreError(format!("cannot create store directory {}: {e}", dir.display()))
                })?;
            }
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .acquire_timeout(Duration::from_secs(5))
            // Only for occasional queries: a small page cache keeps memory for the hot path.
            .connect_with(connect.clone().pragma("cache_size", "-256"))
            .await
            .map_err(|e| StoreError(format!("cannot open {url}: {e}")))?;
        migrator().run(&pool).await.map_err(|e| StoreError(format!("migrating {url}: {e}")))?;
        let (reader, read_rx) = mpsc::channel(MAX_LOOKUP_BATCH * 8);
        let (writer, write_rx) = mpsc::channel(options.max_batch * 8);
        let read_task = tokio::spawn(run_reader(connect.connect().await?, read_rx, options.ttl));
        // The writer never checkpoints: a checkpoint copies WAL pages back into the database and
        // syncs it, which on a large table with random keys took most of the writer's time and
        // capped throughput. The checkpointer does it beside the writer instead.
        let write_conn = connect.clone().pragma("wal_autocheckpoint", "0").connect().await?;
        let write_task =
            tokio::spawn(run_writer(write_conn, write_rx, options.max_batch, options.ttl));
        // The pool's one connection is otherwise idle: checkpoints need no connection of their own.
        let checkpoint_task = tokio::spawn(run_checkpointer(pool.clone()));
        Ok(SqliteStore {
            pool,
            reader,
            writer,
            tasks: Mutex::new(vec![read_task, write_task]),
            checkpointer: checkpoint_task,
        })
    }

    /// Number of rows (expired or not); for tests and diagnostics.
    pub async fn row_count(&self) -> Result<i64, StoreError> {
        let (n,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM delivered").fetch_one(&self.pool).await?;
        Ok(n)
    }

    /// Inserts a record with an explicit timestamp (seconds since the epoch); for tests of expiry
    /// and for pre-filling benchmark databases.
    pub async fn insert_at(&self, keys: &[DedupKey], recorded_at: i64) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for chunk in keys.chunks(500) {
            insert_rows(&mut tx, chunk.iter(), recorded_at).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

#[async_trait]
impl DedupStore for SqliteStore {
    async fn was_delivered(&self, key: &DedupKey) -> Result<bool, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.reader
            .send(ReadCommand::Lookup(*key, tx))
            .await
            .map_err(|_| StoreError("store is closed".into()))?;
        rx.await.map_err(|_| StoreError("store reader stopped".into()))?.map_err(StoreError)
    }

    async fn record_delivered(&self, key: DedupKey) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .send(WriteCommand::Record(key, tx))
            .await
            .map_err(|_| StoreError("store is closed".into()))?;
        rx.await.map_err(|_| StoreError("store writer stopped".into()))?.map_err(StoreError)
    }

    async fn prune_expired(&self) -> Result<u64, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .send(WriteCommand::Prune(tx))
            .await
            .map_err(|_| StoreError("store is closed".into()))?;
        rx.await.map_err(|_| StoreError("store writer stopped".into()))?.map_err(StoreError)
    }

    async fn close(&self) {
        let _ = self.reader.send(ReadCommand::Shutdown).await;
        let _ = self.writer.send(WriteCommand::Shutdown).await;
        for task in self.tasks.lock().await.drain(..) {
            let _ = task.await;
        }
        self.checkpointer.abort();
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&self.pool).await {
            tracing::warn!(error = %e, "final checkpoint of the dedup store failed");
        }
        self.pool.close().await;
    }
}

async fn insert_rows<'k>(
    conn: &mut SqliteConnection,
    keys: impl Iterator<Item = &'k DedupKey>,
    recorded_at: i64,
) -> Result<(), sqlx::Error> {
    let mut q: QueryBuilder<'_, Sqlite> =
        QueryBuilder::new("INSERT INTO delivered (key, recorded_at) ");
    q.push_values(keys, |mut row, key| {
        row.push_bind(key.as_bytes().to_vec()).push_bind(recorded_at);
    });
    q.push(" ON CONFLICT(key) DO UPDATE SET recorded_at = excluded.recorded_at");
    q.build().execute(&mut *conn).await?;
    Ok(())
}

/// Copies the WAL back into the database every second, without blocking the writer or readers
/// (`PASSIVE`), so the WAL stays small while the writer never pays for checkpoints itself.
async fn run_checkpointer(pool: SqlitePool) {
    let mut ticker = tokio::time::interval(CHECKPOINT_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&pool).await {
            tracing::warn!(error = %e, "dedup store checkpoint failed");
        }
    }
}

/// Owns a read connection: answers all queued lookups with one query per batch.
async fn run_reader(
    mut conn: SqliteConnection,
    mut rx: mpsc::Receiver<ReadCommand>,
    ttl: Duration,
) {
    let mut commands = Vec::with_capacity(MAX_LOOKUP_BATCH);
    let mut lookups: Vec<(DedupKey, oneshot::Sender<Result<bool, String>>)> =
        Vec::with_capacity(MAX_LOOKUP_BATCH);
    let mut shutting_down = false;
    while !shutting_down && rx.recv_many(&mut commands, MAX_LOOKUP_BATCH).await > 0 {
        for command in commands.drain(..) {
            match command {
                ReadCommand::Lookup(key, reply) => lookups.push((key, reply)),
                ReadCommand::Shutdown => shutting_down = true,
            }
        }
        if lookups.is_empty() {
            continue;
        }
        let cutoff = unix_now() - ttl.as_secs() as i64;
        match lookup_batch(&mut conn, &lookups, cutoff).await {
            Ok(found) => {
                for (key, reply) in lookups.drain(..) {
                    let _ = reply.send(Ok(found.contains(key.as_bytes())));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "dedup store lookup failed");
                let e = e.to_string();
                for (_, reply) in lookups.drain(..) {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
    let _ = conn.close().await;
}

/// The keys among `lookups` recorded after `cutoff`.
async fn lookup_batch(
    conn: &mut SqliteConnection,
    lookups: &[(DedupKey, oneshot::Sender<Result<bool, String>>)],
    cutoff: i64,
) -> Result<Vec<[u8; 16]>, sqlx::Error> {
    // Pad with the last key up to a power of two (see MAX_LOOKUP_BATCH).
    let padded = lookups.len().next_power_of_two();
    let mut q: QueryBuilder<'_, Sqlite> =
        QueryBuilder::new("SELECT key FROM delivered WHERE recorded_at > ");
    q.push_bind(cutoff).push(" AND key IN (");
    let mut list = q.separated(", ");
    for i in 0..padded {
        let (key, _) = &lookups[i.min(lookups.len() - 1)];
        list.push_bind(key.as_bytes().to_vec());
    }
    q.push(")");
    let rows: Vec<(Vec<u8>,)> = q.build_query_as().fetch_all(&mut *conn).await?;
    Ok(rows.into_iter().filter_map(|(key,)| key.try_into().ok()).collect())
}

/// Owns the write connection: drains queued records into one transaction at a time, and runs
/// prunes in small chunks between batches.
async fn run_writer(
    mut conn: SqliteConnection,
    mut rx: mpsc::Receiver<WriteCommand>,
    max_batch: usize,
    ttl: Duration,
) {
    let mut commands = Vec::with_capacity(max_batch);
    let mut records: Vec<(DedupKey, oneshot::Sender<Result<(), String>>)> =
        Vec::with_capacity(max_batch);
    // A prune in progress: its reply and the rows deleted so far.
    let mut prune: Option<(oneshot::Sender<Result<u64, String>>, u64)> = None;
    let mut shutting_down = false;
    loop {
        if prune.is_none() && !shutting_down {
            if rx.recv_many(&mut commands, max_batch).await == 0 {
                break;
            }
        } else {
            // Keep serving records while a prune is under way, without waiting for them.
            while commands.len() < max_batch {
                match rx.try_recv() {
                    Ok(c) => commands.push(c),
                    Err(_) => break,
                }
            }
        }
        for command in commands.drain(..) {
            match command {
                WriteCommand::Record(key, reply) => records.push((key, reply)),
                WriteCommand::Prune(reply) => match prune {
                    // One prune at a time; a second request shares the first's work.
                    Some(_) => drop(reply.send(Ok(0))),
                    None => prune = Some((reply, 0)),
                },
                WriteCommand::Shutdown => shutting_down = true,
            }
        }
        if !records.is_empty() {
            let result = write_batch(&mut conn, &records).await.map_err(|e| e.to_string());
            if let Err(e) = &result {
                tracing::error!(error = %e, rows = records.len(), "dedup store write failed");
            }
            for (_, reply) in records.drain(..) {
                let _ = reply.send(result.clone());
            }
        }
        if let Some((reply, deleted)) = prune.take() {
            let cutoff = unix_now() - ttl.as_secs() as i64;
            match prune_chunk(&mut conn, cutoff).await {
                Ok(n) if n as i64 >= PRUNE_CHUNK && !shutting_down => {
                    prune = Some((reply, deleted + n))
                }
                Ok(n) => drop(reply.send(Ok(deleted + n))),
                Err(e) => drop(reply.send(Err(e.to_string()))),
            }
        }
        if shutting_down && prune.is_none() {
            // Flush anything that raced with the shutdown request, then stop.
            while let Ok(WriteCommand::Record(key, reply)) = rx.try_recv() {
                records.push((key, reply));
            }
            if !records.is_empty() {
                let result = write_batch(&mut conn, &records).await.map_err(|e| e.to_string());
                for (_, reply) in records.drain(..) {
                    let _ = reply.send(result.clone());
                }
            }
            break;
        }
    }
    let _ = conn.close().await;
}

async fn write_batch(
    conn: &mut SqliteConnection,
    records: &[(DedupKey, oneshot::Sender<Result<(), String>>)],
) -> Result<(), sqlx::Error> {
    // One multi-row INSERT is atomic on its own: no BEGIN/COMMIT round trips to the connection's
    // worker thread. Padding to a power of two (repeating the last key, which the upsert absorbs)
    // keeps the number of distinct statements, and so re-preparations, small.
    let padded = records.len().next_power_of_two();
    let keys = (0..padded).map(|i| &records[i.min(records.len() - 1)].0);
    insert_rows(conn, keys, unix_now()).await
}

async fn prune_chunk(conn: &mut SqliteConnection, cutoff: i64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM delivered WHERE key IN \
         (SELECT key FROM delivered WHERE recorded_at <= ?1 LIMIT ?2)",
    )
    .bind(cutoff)
    .bind(PRUNE_CHUNK)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn open(dir: &tempfile::TempDir) -> SqliteStore {
        let url = format!("sqlite://{}/sub/dedup.db", dir.path().display());
        SqliteStore::open(
            &url,
            SqliteStoreOptions { ttl: Duration::from_secs(3600), max_batch: 64 },
        )
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn records_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let key = DedupKey::new("$e", "app", "key");
        let store = open(&dir).await;
        assert!(!store.was_delivered(&key).await.unwrap());
        store.record_delivered(key).await.unwrap();
        assert!(store.was_delivered(&key).await.unwrap());
        store.close().await;
        let store = open(&dir).await;
        assert!(store.was_delivered(&key).await.unwrap());
        assert!(!store.was_delivered(&DedupKey::new("$e", "app", "other")).await.unwrap());
        store.close().await;
    }

    #[tokio::test]
    async fn concurrent_records_are_group_committed() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(open(&dir).await);
        let mut tasks = Vec::new();
        for i in 0..500 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store.record_delivered(DedupKey::new(&format!("$e{i}"), "a", "k")).await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(store.row_count().await.unwrap(), 500);
        store.close().await;
    }

    #[tokio::test]
    async fn concurrent_lookups_are_answered_per_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(open(&dir).await);
        let present: Vec<_> =
            (0..300).map(|i| DedupKey::new(&format!("$p{i}"), "a", "k")).collect();
        store.insert_at(&present, unix_now()).await.unwrap();
        let mut tasks = Vec::new();
        // 600 lookups in flight at once: several padded batches mixing hits and misses.
        for (i, hit) in present.iter().enumerate() {
            for (key, expected) in
                [(*hit, true), (DedupKey::new(&format!("$absent{i}"), "a", "k"), false)]
            {
                let store = store.clone();
                tasks.push(tokio::spawn(async move {
                    assert_eq!(store.was_delivered(&key).await.unwrap(), expected, "{key:?}");
                }));
            }
        }
        for t in tasks {
            t.await.unwrap();
        }
        store.close().await;
        assert!(store.was_delivered(&present[0]).await.is_err(), "closed store refuses");
    }

    #[tokio::test]
    async fn expired_entries_do_not_count_and_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
        let old: Vec<_> =
            (0..12_000).map(|i| DedupKey::new(&format!("$old{i}"), "a", "k")).collect();
        store.insert_at(&old, unix_now() - 7200).await.unwrap();
        let fresh = DedupKey::new("$fresh", "a", "k");
        store.record_delivered(fresh).await.unwrap();
        assert!(!store.was_delivered(&old[0]).await.unwrap(), "expired entry still counts");
        assert_eq!(store.prune_expired().await.unwrap(), 12_000);
        assert_eq!(store.row_count().await.unwrap(), 1);
        assert!(store.was_delivered(&fresh).await.unwrap());
        store.close().await;
    }

    #[test]
    fn keys_are_unambiguous() {
        assert_ne!(DedupKey::new("ab", "c", "d"), DedupKey::new("a", "bc", "d"));
        assert_eq!(DedupKey::new("a", "b", "c"), DedupKey::new("a", "b", "c"));
    }
}
