//! The dedup store's writer: the one task that owns the write connection.
//!
//! Each turn of its loop does, in this order:
//!
//! 1. take what is queued (waiting only when there is nothing else to do);
//! 2. **group commit**: every queued record in one multi-row `INSERT`, then every reply;
//! 3. **one prune chunk**, if a prune is under way ([`PRUNE_CHUNK`] rows): a large prune is many
//!    turns, so records keep being committed between its chunks instead of waiting behind it;
//! 4. **WAL restart**, when the checkpointer asked for one (see the store's module docs);
//!
//! and on shutdown a **final flush**: records queued up to and just after the shutdown request
//! are committed and answered before the connection closes; a prune under way answers with what
//! it had deleted so far.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::sqlite::SqliteConnection;
use sqlx::Connection;
use tokio::sync::{mpsc, oneshot};

use super::{cutoff, insert_rows, Coordination, BUSY_TIMEOUT_MS};
use crate::store::{unix_now, DedupKey, StoreError};

/// Rows deleted per prune transaction, so pruning never holds the writer for long.
const PRUNE_CHUNK: i64 = 5_000;
/// The connection's busy timeout while the writer restarts the log, in ms.
const RESTART_BUSY_TIMEOUT_MS: u64 = 20;
/// How long the writer waits before trying a restart again that another process held up.
const RESTART_RETRY: Duration = Duration::from_secs(1);

/// What the store asks of its writer.
pub(super) enum WriteCommand {
    /// Record a delivery; answered once committed.
    Record(DedupKey, oneshot::Sender<Result<(), StoreError>>),
    /// Delete expired rows; answered with how many once done.
    Prune(oneshot::Sender<Result<u64, StoreError>>),
    /// Flush and stop.
    Shutdown,
}

type RecordReply = oneshot::Sender<Result<(), StoreError>>;

/// A prune under way: its reply and the rows deleted so far.
struct Prune {
    reply: oneshot::Sender<Result<u64, StoreError>>,
    deleted: u64,
}

/// Owns the write connection (see the module docs).
pub(super) struct Writer {
    conn: SqliteConnection,
    max_batch: usize,
    ttl: Duration,
    prune_chunk: i64,
    coordination: Arc<Coordination>,
    /// After a restart another process held up: when to try again.
    restart_not_before: Option<Instant>,
    /// Records taken from the queue, not yet committed.
    records: Vec<(DedupKey, RecordReply)>,
    prune: Option<Prune>,
    shutting_down: bool,
}

impl Writer {
    pub(super) fn new(
        conn: SqliteConnection,
        max_batch: usize,
        ttl: Duration,
        coordination: Arc<Coordination>,
    ) -> Self {
        Writer {
            conn,
            max_batch,
            ttl,
            prune_chunk: PRUNE_CHUNK,
            coordination,
            restart_not_before: None,
            records: Vec::with_capacity(max_batch),
            prune: None,
            shutting_down: false,
        }
    }

    /// Serves `rx` until shutdown (or until every sender is gone), then closes the connection.
    pub(super) async fn run(mut self, rx: mpsc::Receiver<WriteCommand>) {
        self.serve(rx).await;
        let _ = self.conn.close().await;
    }

    async fn serve(&mut self, mut rx: mpsc::Receiver<WriteCommand>) {
        let mut commands = Vec::with_capacity(self.max_batch);
        loop {
            if self.prune.is_none() && !self.shutting_down {
                if rx.recv_many(&mut commands, self.max_batch).await == 0 {
                    break;
                }
            } else {
                // Keep serving records while a prune is under way, without waiting for them.
                while commands.len() < self.max_batch {
                    match rx.try_recv() {
                        Ok(c) => commands.push(c),
                        Err(_) => break,
                    }
                }
            }
            for command in commands.drain(..) {
                self.take(command);
            }
            self.commit_records().await;
            self.prune_step().await;
            if self.shutting_down && self.prune.is_none() {
                self.flush(&mut rx).await;
                break;
            }
            // Replies are out: a restart now delays only the records queued behind it.
            self.restart_wal_if_due().await;
        }
    }

    fn take(&mut self, command: WriteCommand) {
        match command {
            WriteCommand::Record(key, reply) => self.records.push((key, reply)),
            WriteCommand::Prune(reply) => match self.prune {
                // One prune at a time; a second request shares the first's work.
                Some(_) => drop(reply.send(Ok(0))),
                None => self.prune = Some(Prune { reply, deleted: 0 }),
            },
            WriteCommand::Shutdown => self.shutting_down = true,
        }
    }

    /// Commits every taken record as one statement and answers each.
    async fn commit_records(&mut self) {
        if self.records.is_empty() {
            return;
        }
        let result = write_batch(&mut self.conn, &self.records)
            .await
            .map_err(|e| StoreError::database("committing delivery records", e));
        if let Err(e) = &result {
            tracing::error!(error = %e, rows = self.records.len(), "dedup store write failed");
        }
        for (_, reply) in self.records.drain(..) {
            let _ = reply.send(result.clone());
        }
    }

    /// Deletes one chunk for the prune under way; answers it when nothing expired is left, on an
    /// error, or at shutdown (with what was done: the next start's prune does the rest).
    async fn prune_step(&mut self) {
        let Some(Prune { reply, deleted }) = self.prune.take() else { return };
        match prune_chunk(&mut self.conn, cutoff(self.ttl), self.prune_chunk).await {
            Ok(n) if n as i64 >= self.prune_chunk && !self.shutting_down => {
                self.prune = Some(Prune { reply, deleted: deleted + n })
            }
            Ok(n) => drop(reply.send(Ok(deleted + n))),
            Err(e) => drop(reply.send(Err(StoreError::database("pruning expired records", e)))),
        }
    }

    /// At shutdown: commits whatever raced with the shutdown request.
    async fn flush(&mut self, rx: &mut mpsc::Receiver<WriteCommand>) {
        while let Ok(command) = rx.try_recv() {
            match command {
                WriteCommand::Record(key, reply) => self.records.push((key, reply)),
                // Too late to start one; nothing was deleted.
                WriteCommand::Prune(reply) => drop(reply.send(Ok(0))),
                WriteCommand::Shutdown => {}
            }
        }
        self.commit_records().await;
    }

    /// After a batch, when the checkpointer says the log is due: copy what is left of it and start
    /// it over from the beginning (`RESTART`). Our own lookups pause meanwhile (see
    /// [`Coordination`]). If the checkpointer is copying right now, or another process reads for
    /// longer than the busy timeout, the next batch tries again.
    async fn restart_wal_if_due(&mut self) {
        if !self.coordination.restart_due.load(Ordering::Acquire)
            || self.restart_not_before.is_some_and(|t| Instant::now() < t)
        {
            return;
        }
        let Ok(_checkpoint) = self.coordination.checkpoint.try_lock() else { return };
        let _lookups_paused = self.coordination.lookups.write().await;
        let started = Instant::now();
        // With our reader paused only another process (a backup, an operator's shell) can hold
        // the restart up: give it a moment, not the connection's whole busy timeout, as records
        // and lookups wait meanwhile.
        let restart = async {
            let busy_timeout = |ms: u64| format!("PRAGMA busy_timeout = {ms}");
            sqlx::query(&busy_timeout(RESTART_BUSY_TIMEOUT_MS)).execute(&mut self.conn).await?;
            let result = sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(RESTART)")
                .fetch_one(&mut self.conn)
                .await;
            sqlx::query(&busy_timeout(BUSY_TIMEOUT_MS)).execute(&mut self.conn).await?;
            result
        };
        match restart.await {
            Ok((0, _, _)) => {
                self.coordination.restart_due.store(false, Ordering::Release);
                self.restart_not_before = None;
                tracing::debug!(
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "dedup store: WAL restarted"
                );
            }
            Ok(_) => {
                // Someone else is reading an old snapshot; the log grows until they are done.
                self.restart_not_before = Some(Instant::now() + RESTART_RETRY);
                tracing::debug!("dedup store: WAL restart held up by another reader; retrying");
            }
            Err(e) => {
                self.restart_not_before = Some(Instant::now() + RESTART_RETRY);
                tracing::warn!(error = %e, "dedup store: WAL restart failed");
            }
        }
    }
}

async fn write_batch(
    conn: &mut SqliteConnection,
    records: &[(DedupKey, RecordReply)],
) -> Result<(), sqlx::Error> {
    // One multi-row INSERT is atomic on its own: no BEGIN/COMMIT round trips to the connection's
    // worker thread. Padding to a power of two (repeating the last key, which the upsert absorbs)
    // keeps the number of distinct statements, and so re-preparations, small.
    let padded = records.len().next_power_of_two();
    let keys = (0..padded).map(|i| &records[i.min(records.len() - 1)].0);
    insert_rows(conn, keys, unix_now()).await
}

async fn prune_chunk(
    conn: &mut SqliteConnection,
    cutoff: i64,
    chunk: i64,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM delivered WHERE key IN \
         (SELECT key FROM delivered WHERE recorded_at <= ?1 LIMIT ?2)",
    )
    .bind(cutoff)
    .bind(chunk)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected())
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use sqlx::sqlite::SqliteConnectOptions;
    use sqlx::ConnectOptions;
    use tokio::sync::oneshot::error::TryRecvError;

    use super::super::{SqliteStore, SqliteStoreOptions};
    use super::*;
    use crate::store::DedupStore;

    const TTL: Duration = Duration::from_secs(3600);

    /// A migrated database with `expired` expired rows, the store that made it (idle from here
    /// on: its writer never writes), and a writer under test on a connection of its own.
    async fn writer(
        dir: &tempfile::TempDir,
        expired: usize,
        max_batch: usize,
        prune_chunk: i64,
    ) -> (SqliteStore, Writer) {
        let url = format!("sqlite://{}/dedup.db", dir.path().display());
        let store = SqliteStore::open(
            &url,
            SqliteStoreOptions {
                ttl: TTL,
                max_batch: 64,
                dead_token_ttl: Duration::from_secs(3600),
            },
        )
        .await
        .unwrap();
        let keys: Vec<_> =
            (0..expired).map(|i| DedupKey::new("$old", "app", &i.to_string())).collect();
        store.insert_at(&keys, unix_now() - 2 * TTL.as_secs() as i64).await.unwrap();
        let conn = SqliteConnectOptions::from_str(&url).unwrap().connect().await.unwrap();
        let mut writer = Writer::new(conn, max_batch, TTL, Arc::new(Coordination::default()));
        writer.prune_chunk = prune_chunk;
        (store, writer)
    }

    fn key(i: usize) -> DedupKey {
        DedupKey::new("$new", "app", &i.to_string())
    }

    #[tokio::test]
    async fn records_keep_being_committed_while_a_large_prune_runs() {
        let dir = tempfile::tempdir().unwrap();
        // 100 chunks of prune work.
        let (store, writer) = writer(&dir, 1000, 64, 10).await;
        let (tx, rx) = mpsc::channel(64);
        let (prune_tx, mut prune_rx) = oneshot::channel();
        tx.send(WriteCommand::Prune(prune_tx)).await.unwrap();
        let task = tokio::spawn(writer.run(rx));
        // Each record is taken at the latest on the turn after it is queued, and each turn runs
        // one chunk: five records are committed within ten chunks, long before the prune ends.
        for i in 0..5 {
            let (reply, committed) = oneshot::channel();
            tx.send(WriteCommand::Record(key(i), reply)).await.unwrap();
            committed.await.unwrap().unwrap();
            assert!(matches!(prune_rx.try_recv(), Err(TryRecvError::Empty)), "record {i}");
            assert!(store.was_delivered(&key(i)).await.unwrap());
        }
        assert_eq!(prune_rx.await.unwrap().unwrap(), 1000);
        assert_eq!(store.row_count().await.unwrap(), 5);
        tx.send(WriteCommand::Shutdown).await.unwrap();
        task.await.unwrap();
        store.close().await;
    }

    #[tokio::test]
    async fn records_queued_at_shutdown_are_committed() {
        let dir = tempfile::tempdir().unwrap();
        let (store, writer) = writer(&dir, 1000, 2, 10).await;
        let (tx, rx) = mpsc::channel(64);
        let mut replies = Vec::new();
        let mut record = |i: usize| {
            let (reply, committed) = oneshot::channel();
            replies.push(committed);
            WriteCommand::Record(key(i), reply)
        };
        // With batches of two, the shutdown request is taken while a prune is under way, together
        // with a record; a late prune request and two more records race with it. Every record
        // is committed.
        let (prune_tx, prune_rx) = oneshot::channel();
        let (late_prune_tx, late_prune_rx) = oneshot::channel();
        for command in [
            WriteCommand::Prune(prune_tx),
            record(0),
            WriteCommand::Shutdown,
            record(1),
            WriteCommand::Prune(late_prune_tx),
            record(2),
            record(3),
        ] {
            tx.send(command).await.unwrap();
        }
        writer.run(rx).await;
        for (i, committed) in replies.into_iter().enumerate() {
            assert!(committed.await.unwrap().is_ok(), "record {i}");
            assert!(store.was_delivered(&key(i)).await.unwrap(), "record {i}");
        }
        // The prune under way stops at shutdown and says what it did; one asked for after the
        // shutdown request does nothing.
        let pruned = prune_rx.await.unwrap().unwrap();
        assert!((10..1000).contains(&pruned), "{pruned}");
        assert!(matches!(late_prune_rx.await.unwrap(), Ok(0)));
        assert_eq!(store.row_count().await.unwrap(), 1000 - pruned as i64 + 4);
        store.close().await;
    }
}
