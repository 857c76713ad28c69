//! The embedded dedup store: one SQLite file through sqlx.
//!
//! Reads go through a small pool. Writes go through one writer task that owns its own connection
//! and commits whatever has queued up as one transaction (group commit), so thousands of deliveries
//! per second cost a handful of commits and no request waits on another's lock. WAL with
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

enum WriteCommand {
    Record(DedupKey, oneshot::Sender<Result<(), String>>),
    Prune(oneshot::Sender<Result<u64, String>>),
    Shutdown,
}

/// The SQLite [`DedupStore`].
pub struct SqliteStore {
    reads: SqlitePool,
    writer: mpsc::Sender<WriteCommand>,
    writer_task: Mutex<Option<JoinHandle<()>>>,
    ttl_secs: i64,
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
        let reads = SqlitePoolOptions::new()
            .max_connections(4)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(connect.clone())
            .await
            .map_err(|e| StoreError(format!("cannot open {url}: {e}")))?;
        migrator().run(&reads).await.map_err(|e| StoreError(format!("migrating {url}: {e}")))?;
        let conn = connect.connect().await?;
        let (writer, rx) = mpsc::channel(options.max_batch * 8);
        let task = tokio::spawn(run_writer(conn, rx, options.max_batch, options.ttl));
        Ok(SqliteStore {
            reads,
            writer,
            writer_task: Mutex::new(Some(task)),
            ttl_secs: options.ttl.as_secs() as i64,
        })
    }

    /// Number of rows (expired or not); for tests and diagnostics.
    pub async fn row_count(&self) -> Result<i64, StoreError> {
        let (n,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM delivered").fetch_one(&self.reads).await?;
        Ok(n)
    }

    /// Inserts a record with an explicit timestamp (seconds since the epoch); for tests of expiry
    /// and for pre-filling benchmark databases.
    pub async fn insert_at(&self, keys: &[DedupKey], recorded_at: i64) -> Result<(), StoreError> {
        let mut tx = self.reads.begin().await?;
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
        let row = sqlx::query("SELECT 1 FROM delivered WHERE key = ?1 AND recorded_at > ?2")
            .bind(&key.as_bytes()[..])
            .bind(unix_now() - self.ttl_secs)
            .fetch_optional(&self.reads)
            .await?;
        Ok(row.is_some())
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
        let _ = self.writer.send(WriteCommand::Shutdown).await;
        if let Some(task) = self.writer_task.lock().await.take() {
            let _ = task.await;
        }
        self.reads.close().await;
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
    let mut tx = conn.begin().await?;
    insert_rows(&mut tx, records.iter().map(|(k, _)| k), unix_now()).await?;
    tx.commit().await
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
