//! The embedded dedup store: one SQLite file through sqlx.
//!
//! Both directions are batched, because each sqlx call costs a round trip to the connection's worker
//! thread that dwarfs the SQLite work itself: lookups go to one reader task that answers every
//! lookup queued up with one `SELECT … IN (…)`, and writes go to one writer task that commits
//! whatever has queued up as one transaction (group commit). Thousands of notifications per second
//! cost a handful of queries and commits, and no request waits on another's lock. WAL with
//! `synchronous = NORMAL` keeps commits off fsync; a crash can lose the last few commits, which at
//! worst lets one retried notification through twice.
//!
//! The write-ahead log is kept bounded. A checkpointer copies it back into the database every
//! 100 ms beside the writer (`PASSIVE`: it never blocks anyone), but that alone never lets the log
//! *restart*: under steady load some lookup is always reading an older snapshot, so the log only
//! grew (1.87 GB in 30 s at 7.5 k notify/s). So once the checkpointer sees the log past
//! [`WAL_RESTART_BYTES`], it flushes the database file (beside the writer: a pass that never
//! reaches the end of the log never syncs it), and the writer then runs a `RESTART` checkpoint
//! after its next batch, on its own connection: it copies and syncs the little written since, our
//! reader pauses for those few milliseconds so SQLite need not wait for old snapshots, and the next
//! commit writes the log from its beginning again, reusing the file. Records and lookups that
//! arrive meanwhile go into the next, larger batch. New databases use 1 KiB pages, which cuts what
//! each notification writes to less than half (see [`PAGE_SIZE`]).
//!
//! The reader, the writer and the checkpointer are supervised: if one of them stops other than
//! through [`DedupStore::close`], [`DedupStore::failed`] says so and the server stops.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, QueryBuilder, Sqlite};
use tokio::sync::{mpsc, oneshot, watch, Mutex};
#[cfg(test)]
use tokio::task::AbortHandle;
use tokio::task::JoinHandle;

use super::{
    millis, supervise, unix_now, unix_now_ms, ClaimState, DedupKey, DedupStore, Health, StoreError,
    Ticket, TokenKey,
};

mod writer;
use writer::{WriteCommand, Writer};

/// How often the checkpointer copies the WAL back into the database. Often, so that little is
/// left to copy when the writer restarts the log (it holds up records and lookups meanwhile).
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(100);

/// Log size past which the log is restarted (see the module docs). At 7.5 k notify/s the log grows
/// by a few MB/s; the file stays within this plus what is written between two checkpointer passes.
pub const WAL_RESTART_BYTES: u64 = 16 << 20;

/// `journal_size_limit`: after a restart, a WAL file larger than this (after a burst the
/// checkpointer could not keep up with) is trimmed back. Not smaller than what steady load needs:
/// truncating a file only for the next commits to grow it again costs more than reusing it.
const WAL_SIZE_LIMIT: u64 = 2 * WAL_RESTART_BYTES;

/// The page size of new databases. A delivery record dirties about one leaf page at a random place
/// in the table, and the WAL holds whole pages: with 1 KiB pages the benchmark writes 3.5 KB per
/// notification (log and database together) instead of 8.2 KB with SQLite's default 4 KiB.
/// Existing databases keep their page size.
const PAGE_SIZE: u32 = 1024;

/// How long a connection waits for a lock another connection holds, in ms.
const BUSY_TIMEOUT_MS: u64 = 5000;

/// Tuning of the SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteStoreOptions {
    /// How long deliveries are remembered.
    pub ttl: Duration,
    /// Most records per transaction.
    pub max_batch: usize,
    /// How long a token an upstream called dead is answered `rejected` without an upstream call
    /// (zero: never).
    pub dead_token_ttl: Duration,
}

/// Lookups answered per query at the most. Batches are padded to a power of two so that sqlx's
/// prepared-statement cache holds a handful of statements, not one per batch size.
const MAX_LOOKUP_BATCH: usize = 256;

enum ReadCommand {
    Lookup(DedupKey, oneshot::Sender<Result<bool, StoreError>>),
    Shutdown,
}

/// The SQLite [`DedupStore`].
pub struct SqliteStore {
    /// For occasional queries (diagnostics, bulk inserts); the hot path uses `reader`/`writer`.
    pool: SqlitePool,
    reader: mpsc::Sender<ReadCommand>,
    writer: mpsc::Sender<WriteCommand>,
    /// The reader's, the writer's and the checkpointer's supervisors, awaited on close.
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Lets tests end the checkpointer as a crash would; `close` stops it between passes instead.
    #[cfg(test)]
    checkpointer: AbortHandle,
    health: watch::Sender<Health>,
    wal_path: PathBuf,
    /// The dead-token table, mirrored in memory: one process owns a SQLite file, so the mirror is
    /// exact and the hot path never queries for it. Token → expiry, ms since the epoch.
    dead_tokens: std::sync::Mutex<std::collections::HashMap<TokenKey, i64>>,
    dead_token_ttl: Duration,
}

/// What the writer's log restart needs from the other tasks. A restart can only finish once no
/// lookup is reading an old snapshot, and SQLite's own waiting for that (the busy handler) sleeps
/// in steps of 1, 2, 5, 10 … ms; pausing our reader instead costs exactly the lookup in progress.
#[derive(Default)]
struct Coordination {
    /// Held (shared) by the reader for each lookup query, exclusively by a log restart.
    lookups: tokio::sync::RwLock<()>,
    /// One checkpoint at a time: SQLite refuses a second one at once, without waiting.
    checkpoint: Mutex<()>,
    /// Set by the checkpointer when the log has passed [`WAL_RESTART_BYTES`]: the writer restarts
    /// it after its next batch, while little is left to copy.
    restart_due: AtomicBool,
}

fn migrator() -> Migrator {
    // Built by hand rather than with `migrate!` to keep sqlx's proc-macro stack out of the build;
    // the SQL is still embedded in the binary.
    let migration = |version, name, sql| {
        Migration::new(
            version,
            Cow::Borrowed(name),
            MigrationType::Simple,
            Cow::Borrowed(sql),
            false,
        )
    };
    Migrator {
        migrations: Cow::Owned(vec![
            migration(1, "delivered", include_str!("../../migrations/sqlite/0001_delivered.sql")),
            migration(
                2,
                "dead tokens",
                include_str!("../../migrations/sqlite/0002_dead_tokens.sql"),
            ),
        ]),
        ..Migrator::DEFAULT
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `url` (`sqlite://path/to/file.db`) and migrates it.
    pub async fn open(url: &str, options: SqliteStoreOptions) -> Result<Self, StoreError> {
        let connect = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::database(format!("bad store url `{url}`"), e))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_millis(BUSY_TIMEOUT_MS))
            .pragma("temp_store", "memory")
            .pragma("journal_size_limit", WAL_SIZE_LIMIT.to_string())
            .page_size(PAGE_SIZE)
            .disable_statement_logging();
        let file = Path::new(connect.get_filename()).to_path_buf();
        if let Some(dir) = file.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(|e| {
                    StoreError::io(format!("cannot create store directory {}", dir.display()), e)
                })?;
            }
        }
        // (An in-memory database has none: its size then reads as 0.)
        let wal_path = wal_path_of(&file);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .acquire_timeout(Duration::from_secs(5))
            // Only for occasional queries: a small page cache keeps memory for the hot path.
            .connect_with(connect.clone().pragma("cache_size", "-256"))
            .await
            .map_err(|e| StoreError::database(format!("cannot open {url}"), e))?;
        migrator()
            .run(&pool)
            .await
            .map_err(|e| StoreError::database(format!("migrating {url}"), sqlx::Error::from(e)))?;
        let dead: Vec<(Vec<u8>, i64)> =
            sqlx::query_as("SELECT token, expires_at FROM dead_tokens WHERE expires_at > ?1")
                .bind(unix_now_ms())
                .fetch_all(&pool)
                .await
                .map_err(|e| StoreError::database("reading dead tokens", e))?;
        let dead_tokens = dead
            .into_iter()
            .filter_map(|(token, at)| Some((TokenKey(token.try_into().ok()?), at)))
            .collect();
        let (page_size,): (i64,) = sqlx::query_as("PRAGMA page_size").fetch_one(&pool).await?;
        let (reader, read_rx) = mpsc::channel(MAX_LOOKUP_BATCH * 8);
        let (writer, write_rx) = mpsc::channel(options.max_batch * 8);
        let (health, _) = watch::channel(Health::Running);
        let coordination = Arc::new(Coordination::default());
        let read_conn = connect.connect().await?;
        // The writer never runs the automatic checkpoint: a checkpoint copies WAL pages back into
        // the database and syncs it, which on a large table with random keys took most of the
        // writer's time and capped throughput. The checkpointer does that beside the writer; the
        // writer only restarts the log once it has grown (see the module docs).
        let write_conn = connect.clone().pragma("wal_autocheckpoint", "0").connect().await?;
        let reader_task = run_reader(read_conn, read_rx, options.ttl, coordination.clone());
        let (read_task, _) = supervise("reader", reader_task, health.clone());
        let writer_task =
            Writer::new(write_conn, options.max_batch, options.ttl, coordination.clone());
        let (write_task, _) = supervise("writer", writer_task.run(write_rx), health.clone());
        // The pool's one connection is otherwise idle: checkpoints need no connection of their own.
        let page_size = u64::try_from(page_size).unwrap_or(u64::from(PAGE_SIZE));
        // Only for fsync (see run_checkpointer). It stays open as long as the checkpointer: closing
        // any descriptor of the file drops this process's POSIX locks on it, SQLite's included,
        // so it must not be opened and closed per use.
        let db_file = std::fs::File::open(&file).ok().map(Arc::new);
        let checkpointer_task =
            run_checkpointer(pool.clone(), page_size, db_file, coordination, health.subscribe());
        #[cfg_attr(not(test), allow(unused_variables))]
        let (checkpoint_task, checkpointer) =
            supervise("checkpointer", checkpointer_task, health.clone());
        Ok(SqliteStore {
            pool,
            reader,
            writer,
            tasks: Mutex::new(vec![read_task, write_task, checkpoint_task]),
            #[cfg(test)]
            checkpointer,
            health,
            wal_path,
            dead_tokens: std::sync::Mutex::new(dead_tokens),
            dead_token_ttl: options.dead_token_ttl,
        })
    }

    /// What `herald check-config` does instead of [`SqliteStore::open`]: finds out whether `open`
    /// would succeed, writing nothing. An existing database is opened read-only and must be a
    /// SQLite file this version can use, writable, in a writable directory (for its `-wal` and
    /// `-shm` files); a missing one needs its nearest existing directory to be writable (`open`
    /// creates the rest). Says what it found.
    pub async fn check(url: &str) -> Result<String, StoreError> {
        let connect = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::database(format!("bad store url `{url}`"), e))?;
        let file = Path::new(connect.get_filename()).to_path_buf();
        if file.as_os_str() == ":memory:" {
            return Ok("in-memory database".into());
        }
        let dir = match file.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        match std::fs::metadata(&file) {
            Ok(meta) if meta.is_file() => {}
            Ok(_) => {
                return Err(StoreError::unavailable(format!("{} is not a file", file.display())))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let existing = dir.ancestors().find(|a| a.exists()).unwrap_or(Path::new("."));
                if !existing.is_dir() {
                    return Err(StoreError::unavailable(format!(
                        "cannot create {}: {} is not a directory",
                        file.display(),
                        existing.display()
                    )));
                }
                writable_dir(existing).map_err(|e| {
                    StoreError::unavailable(format!("cannot create {}: {e}", file.display()))
                })?;
                return Ok(format!("{} (to be created)", file.display()));
            }
            Err(e) => return Err(StoreError::io(format!("cannot open {}", file.display()), e)),
        }
        // Opening for writing checks permissions and read-only mounts without changing a byte.
        std::fs::OpenOptions::new().read(true).write(true).open(&file).map_err(|e| {
            StoreError::io(format!("cannot open {} for writing", file.display()), e)
        })?;
        writable_dir(&dir)
            .map_err(|e| StoreError::unavailable(format!("cannot open {}: {e}", file.display())))?;
        // Read-only, and `immutable` (no lock files) unless the -wal and -shm files are there
        // already (a running or crashed server): then SQLite reads through them, creating nothing.
        let running = wal_path_of(&file).exists() && shm_path_of(&file).exists();
        let mut conn = connect
            .read_only(true)
            .immutable(!running)
            .disable_statement_logging()
            .connect()
            .await
            .map_err(|e| StoreError::database(format!("cannot open {}", file.display()), e))?;
        let applied: Result<Option<i64>, sqlx::Error> =
            sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
                .fetch_one(&mut conn)
                .await;
        let tables: Result<i64, sqlx::Error> =
            sqlx::query_scalar("SELECT COUNT(*) FROM sqlite_master").fetch_one(&mut conn).await;
        let _ = conn.close().await;
        let known = migrator().migrations.iter().map(|m| m.version).max().unwrap_or(0);
        match (applied, tables) {
            (Ok(Some(version)), _) if version > known => Err(StoreError::unavailable(format!(
                "{} was written by a newer Herald (schema version {version}; this one knows {known})",
                file.display()
            ))),
            (Ok(_), _) => Ok(format!("{} (existing)", file.display())),
            // An empty file, or a database Herald has not migrated yet: `open` migrates it.
            (Err(_), Ok(_)) => Ok(format!("{} (existing, not yet migrated)", file.display())),
            (Err(e), Err(_)) => {
                Err(StoreError::database(format!("cannot read {}", file.display()), e))
            }
        }
    }

    fn dead_token_known(&self, token: &TokenKey) -> bool {
        if self.dead_token_ttl.is_zero() {
            return false;
        }
        let dead = herald_core::sync::lock(&self.dead_tokens);
        dead.get(token).is_some_and(|expires_at| *expires_at > unix_now_ms())
    }

    /// Deletes expired dead tokens, from memory and from the table (in chunks: it runs beside
    /// the writer on the pool's connection).
    async fn prune_dead_tokens(&self) -> Result<u64, StoreError> {
        let now = unix_now_ms();
        herald_core::sync::lock(&self.dead_tokens).retain(|_, expires_at| *expires_at > now);
        let mut deleted = 0;
        loop {
            let done = sqlx::query(
                "DELETE FROM dead_tokens WHERE token IN \
                 (SELECT token FROM dead_tokens WHERE expires_at <= ?1 LIMIT 5000)",
            )
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(|e| StoreError::database("pruning dead tokens", e))?;
            deleted += done.rows_affected();
            if done.rows_affected() < 5000 {
                return Ok(deleted);
            }
        }
    }

    /// Rows of the dead-token table (expired or not); for tests and diagnostics.
    pub async fn dead_token_count(&self) -> Result<i64, StoreError> {
        let (n,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM dead_tokens").fetch_one(&self.pool).await?;
        Ok(n)
    }

    /// The write-ahead log's current size in bytes (0 when there is none); for tests and
    /// diagnostics.
    pub fn wal_size(&self) -> u64 {
        file_size(&self.wal_path)
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
            .map_err(|_| StoreError::unavailable("store is closed"))?;
        rx.await.map_err(|_| StoreError::unavailable("store reader stopped"))?
    }

    async fn record_delivered(&self, key: DedupKey) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .send(WriteCommand::Record(key, tx))
            .await
            .map_err(|_| StoreError::unavailable("store is closed"))?;
        rx.await.map_err(|_| StoreError::unavailable("store writer stopped"))?
    }

    async fn claim(&self, key: DedupKey, token: TokenKey) -> Result<ClaimState, StoreError> {
        // Claims in flight are `crate::claims`' (one process per file): a claim is a lookup.
        if self.dead_token_known(&token) {
            return Ok(ClaimState::DeadToken);
        }
        Ok(if self.was_delivered(&key).await? {
            ClaimState::Delivered
        } else {
            ClaimState::Claimed(Ticket { key, owner: 0 })
        })
    }

    async fn is_dead_token(&self, token: &TokenKey) -> Result<bool, StoreError> {
        Ok(self.dead_token_known(token))
    }

    async fn record_dead_token(&self, token: TokenKey) -> Result<(), StoreError> {
        if self.dead_token_ttl.is_zero() {
            return Ok(());
        }
        let expires_at = unix_now_ms().saturating_add(millis(self.dead_token_ttl));
        // Rare (one per dead pushkey per TTL): on the pool's connection, beside the writer.
        sqlx::query(
            "INSERT INTO dead_tokens (token, expires_at) VALUES (?1, ?2) \
             ON CONFLICT(token) DO UPDATE SET expires_at = excluded.expires_at",
        )
        .bind(token.as_bytes().to_vec())
        .bind(expires_at)
        .execute(&self.pool)
        .await
        .map_err(|e| StoreError::database("recording a dead token", e))?;
        herald_core::sync::lock(&self.dead_tokens).insert(token, expires_at);
        Ok(())
    }

    async fn prune_expired(&self) -> Result<u64, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .send(WriteCommand::Prune(tx))
            .await
            .map_err(|_| StoreError::unavailable("store is closed"))?;
        let deleted = rx.await.map_err(|_| StoreError::unavailable("store writer stopped"))??;
        Ok(deleted + self.prune_dead_tokens().await?)
    }

    async fn failed(&self) -> String {
        let mut health = self.health.subscribe();
        loop {
            if let Health::Failed(why) = &*health.borrow_and_update() {
                return why.clone();
            }
            if health.changed().await.is_err() {
                // The store is being dropped: nothing more can fail.
                return std::future::pending().await;
            }
        }
    }

    /// A lookup through the reader (the path notifications take), after checking that no
    /// background task has stopped: a dead writer fails every record, though lookups still work.
    async fn ping(&self) -> Result<(), StoreError> {
        match &*self.health.borrow() {
            Health::Running => {}
            Health::Closing => return Err(StoreError::unavailable("store is closed")),
            Health::Failed(why) => return Err(StoreError::unavailable(why.clone())),
        }
        self.was_delivered(&DedupKey::new("", "", "")).await.map(drop)
    }

    async fn close(&self) {
        self.health.send_if_modified(|h| match h {
            Health::Running => {
                *h = Health::Closing;
                true
            }
            Health::Closing | Health::Failed(_) => false,
        });
        let _ = self.reader.send(ReadCommand::Shutdown).await;
        let _ = self.writer.send(WriteCommand::Shutdown).await;
        // The checkpointer sees `Closing` and stops between two passes. Aborting it instead could
        // cancel it inside a pool query, and sqlx then never gets the pool's one connection back:
        // the final checkpoint timed out and `pool.close()` waited forever (a hung shutdown).
        for task in self.tasks.lock().await.drain(..) {
            let _ = task.await;
        }
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&self.pool).await {
            tracing::warn!(error = %e, "final checkpoint of the dedup store failed");
        }
        super::close_pool(&self.pool).await;
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

/// Entries recorded at or before this second have expired.
fn cutoff(ttl: Duration) -> i64 {
    unix_now().saturating_sub(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX))
}

fn wal_path_of(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

fn shm_path_of(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-shm");
    PathBuf::from(name)
}

/// Whether files can be created in `dir` (permissions, read-only mounts), without creating one.
fn writable_dir(dir: &Path) -> Result<(), String> {
    #[cfg(unix)]
    {
        use rustix::fs::{access, Access};
        access(dir, Access::WRITE_OK | Access::EXEC_OK)
            .map_err(|e| format!("{} is not writable: {e}", dir.display()))
    }
    #[cfg(not(unix))]
    {
        match std::fs::metadata(dir) {
            Ok(m) if m.permissions().readonly() => Err(format!("{} is read-only", dir.display())),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("{}: {e}", dir.display())),
        }
    }
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Copies the WAL back into the database every [`CHECKPOINT_INTERVAL`], without blocking the
/// writer or readers (`PASSIVE`), and tells the writer when the log is due for a restart.
async fn run_checkpointer(
    pool: SqlitePool,
    page_size: u64,
    db_file: Option<Arc<std::fs::File>>,
    coordination: Arc<Coordination>,
    mut health: watch::Receiver<Health>,
) {
    let mut ticker = tokio::time::interval(CHECKPOINT_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Stops only here, between passes, never inside a query (see `close`).
        tokio::select! {
            _ = ticker.tick() => {}
            _ = health.wait_for(|h| *h != Health::Running) => return,
        }
        let pass = {
            let _checkpoint = coordination.checkpoint.lock().await;
            sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(PASSIVE)")
                .fetch_one(&pool)
                .await
        };
        let frames = match pass {
            // (busy, frames in the log, frames copied)
            Ok((_, frames, _)) => u64::try_from(frames).unwrap_or(0),
            Err(e) => {
                tracing::warn!(error = %e, "dedup store checkpoint failed");
                continue;
            }
        };
        if frames * page_size < WAL_RESTART_BYTES
            || coordination.restart_due.load(Ordering::Acquire)
        {
            continue;
        }
        // A pass that does not reach the end of the log (there is always a newer commit under
        // load) copies pages into the database without syncing it, so the restart would have to
        // flush everything copied since the last one, tens of ms with records and lookups held
        // up. Flush it here instead, beside them; the restart then syncs only what came after.
        if let Some(file) = &db_file {
            let file = Arc::clone(file);
            match tokio::task::spawn_blocking(move || file.sync_data()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "dedup store: syncing the database failed")
                }
                Err(e) => tracing::warn!(error = %e, "dedup store: syncing the database failed"),
            }
        }
        coordination.restart_due.store(true, Ordering::Release);
    }
}

/// Owns a read connection: answers all queued lookups with one query per batch.
async fn run_reader(
    mut conn: SqliteConnection,
    mut rx: mpsc::Receiver<ReadCommand>,
    ttl: Duration,
    coordination: Arc<Coordination>,
) {
    let mut commands = Vec::with_capacity(MAX_LOOKUP_BATCH);
    let mut lookups: Vec<(DedupKey, oneshot::Sender<Result<bool, StoreError>>)> =
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
        let cutoff = cutoff(ttl);
        let found = {
            let _reading = coordination.lookups.read().await;
            lookup_batch(&mut conn, &lookups, cutoff).await
        };
        match found {
            Ok(found) => {
                for (key, reply) in lookups.drain(..) {
                    let _ = reply.send(Ok(found.contains(key.as_bytes())));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "dedup store lookup failed");
                let e = StoreError::database("looking up deliveries", e);
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
    lookups: &[(DedupKey, oneshot::Sender<Result<bool, StoreError>>)],
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

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;

    async fn open(dir: &tempfile::TempDir) -> SqliteStore {
        let url = format!("sqlite://{}/sub/dedup.db", dir.path().display());
        SqliteStore::open(
            &url,
            SqliteStoreOptions {
                ttl: Duration::from_secs(3600),
                max_batch: 64,
                dead_token_ttl: Duration::from_secs(3600),
            },
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

    #[tokio::test]
    async fn a_connection_that_never_comes_back_does_not_hang_close() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
        // What a query cancelled at the wrong moment can do to sqlx's pool.
        std::mem::forget(store.pool.acquire().await.unwrap());
        // The final checkpoint waits out the acquire timeout (5 s), the pool close its own (5 s).
        tokio::time::timeout(Duration::from_secs(15), store.close()).await.expect("close hung");
        assert_eq!(*store.health.borrow(), Health::Closing, "the tasks stopped as asked");
    }

    #[tokio::test]
    async fn a_background_task_that_dies_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
        assert!(store.failed().now_or_never().is_none(), "healthy");
        // Cancel the real checkpointer task, as a panic or an abort would end it.
        store.checkpointer.abort();
        let why = tokio::time::timeout(Duration::from_secs(10), store.failed()).await.unwrap();
        assert!(why.contains("checkpointer"), "{why}");
        store.close().await;
    }

    #[tokio::test]
    async fn a_panicking_task_is_reported_with_its_message() {
        let (health, mut watch) = watch::channel(Health::Running);
        let (supervisor, _) = supervise("writer", async { panic!("disk on fire") }, health.clone());
        supervisor.await.unwrap();
        match &*watch.borrow_and_update() {
            Health::Failed(why) => {
                assert!(why.contains("writer panicked: disk on fire"), "{why}")
            }
            other => panic!("{other:?}"),
        }
        // A task that returns on its own counts too.
        let (health, watch) = watch::channel(Health::Running);
        supervise("reader", async {}, health.clone()).0.await.unwrap();
        assert!(matches!(&*watch.borrow(), Health::Failed(why) if why.contains("reader stopped")));
    }

    #[tokio::test]
    async fn closing_is_not_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
        store.record_delivered(DedupKey::new("$e", "a", "k")).await.unwrap();
        store.close().await;
        // Every task has ended by now (close awaits them), and none of that counts as failing.
        assert!(store.failed().now_or_never().is_none());
        assert_eq!(*store.health.borrow(), Health::Closing);
    }

    #[test]
    fn keys_are_unambiguous() {
        assert_ne!(DedupKey::new("ab", "c", "d"), DedupKey::new("a", "bc", "d"));
        assert_eq!(DedupKey::new("a", "b", "c"), DedupKey::new("a", "b", "c"));
    }
}
