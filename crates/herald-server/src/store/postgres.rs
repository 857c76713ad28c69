//! The shared dedup store: PostgreSQL through sqlx (rustls, no OpenSSL), for several Herald
//! instances behind one load balancer.
//!
//! It owns the claim protocol between instances. A key (event_id, app_id, pushkey) is one row of
//! `herald_dedup`: a *claim* (`delivered = false`, with a random owner id) while an instance
//! delivers it, a *record* (`delivered = true`) once delivered. `expires_at` is the lease's end
//! for a claim and the TTL's end for a record, on the database's clock (instances' clocks never
//! matter). One statement per batch claims every key that has no row or whose row has expired
//! (`INSERT … SELECT FROM UNNEST(…) ON CONFLICT … DO UPDATE … WHERE expires_at <= now
//! RETURNING …`) and says, for the others, whether they were delivered or are held by another
//! instance (and for how long), and whether the device's token is a known dead one. So an
//! instance that dies while holding a claim holds it up only until its lease ends; a released
//! claim (failed delivery) can be claimed at once; a recorded key is never claimed again within
//! the TTL.
//!
//! Every kind of request is batched ([`batch`]): claims, records, releases and lookups each go to
//! a couple of worker tasks that answer whatever has queued with one prepared statement (group
//! commit). The pool is bounded, every statement has a server-side `statement_timeout` and a
//! client-side timeout (a database that stops answering must not hang requests), and pruning
//! deletes expired rows in chunks of [`PRUNE_CHUNK`] on a pool connection, off the hot path.
//!
//! When the database goes away (a restart, a network cut), the store notices on the first failed
//! statement, answers every request at once with an error (dispatch: 503) instead of letting each
//! wait for a connection timeout, and probes the database every [`PROBE_INTERVAL`]; once it
//! answers, a fresh pool replaces the old one (whose connections are all dead) and requests flow
//! again, with no restart. Nothing is lost: a delivery whose record could not be written is
//! answered 503 (dispatch retries the record first), so the homeserver's retry decides.

mod batch;

use std::borrow::Cow;
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, Postgres};
use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;

use self::batch::Batcher;
use super::{
    millis, redact_url, ClaimState, DedupKey, DedupStore, Health, StoreError, Ticket, TokenKey,
};
use crate::metrics::StoreMetrics;

/// Rows deleted per pruning statement: short statements, so pruning never holds locks long.
pub const PRUNE_CHUNK: i64 = 5000;

/// How often the store tries the database again while it is unreachable.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(250);

/// How often the pool gauges are updated.
const GAUGE_INTERVAL: Duration = Duration::from_secs(1);

/// Workers per kind of request that runs on every notification (claims, records). One: the next
/// batch queues up while the statement runs, so batches are as large as the load makes them and
/// PostgreSQL runs fewest statements; two workers measured no faster for one instance on 2 cores
/// and slower for two instances (docs/performance.md).
const WORKERS: usize = 1;

/// The database's clock, in ms since the Unix epoch.
const NOW_MS: &str = "(extract(epoch FROM statement_timestamp()) * 1000)::int8";

/// Tuning of the PostgreSQL store (from `[store]`).
#[derive(Debug, Clone)]
pub struct PostgresStoreOptions {
    /// How long deliveries are remembered.
    pub ttl: Duration,
    /// Most requests answered by one statement.
    pub max_batch: usize,
    /// How long a dead token is remembered (zero: never).
    pub dead_token_ttl: Duration,
    /// How long a claim holds a key before another instance may take it over. Longer than the
    /// longest delivery (`server.request_deadline`), validated by the configuration.
    pub claim_lease: Duration,
    /// Most connections of the pool.
    pub max_connections: u32,
    /// How long a new connection, or a free one from a full pool, may take.
    pub connect_timeout: Duration,
    /// The server-side `statement_timeout`; the client gives up one second later.
    pub statement_timeout: Duration,
}

impl PostgresStoreOptions {
    /// The defaults of `[store]` with these TTL and lease.
    pub fn new(ttl: Duration, claim_lease: Duration) -> Self {
        PostgresStoreOptions {
            ttl,
            max_batch: 512,
            dead_token_ttl: Duration::from_secs(3600),
            claim_lease,
            max_connections: 10,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(5),
        }
    }
}

fn migrator() -> Migrator {
    // By hand, as for SQLite: no proc-macro stack; the SQL is embedded in the binary.
    Migrator {
        migrations: Cow::Owned(vec![Migration::new(
            1,
            Cow::Borrowed("dedup"),
            MigrationType::Simple,
            Cow::Borrowed(include_str!("../../migrations/postgres/0001_dedup.sql")),
            false,
        )]),
        ..Migrator::DEFAULT
    }
}

/// What every batch worker shares.
struct Shared {
    /// Replaced by a fresh pool when the database comes back (the old one's connections are
    /// dead); cloning a pool is cloning an `Arc`.
    pool: StdMutex<PgPool>,
    connect: PgConnectOptions,
    options: PostgresStoreOptions,
    metrics: StoreMetrics,
    /// Set when a statement found the database unreachable; cleared by the prober.
    down: AtomicBool,
    /// The URL without its password, for messages.
    shown_url: String,
}

/// The PostgreSQL [`DedupStore`].
pub struct PostgresStore {
    shared: Arc<Shared>,
    claims: Batcher<(DedupKey, TokenKey), ClaimState>,
    records: Batcher<DedupKey, ()>,
    releases: Batcher<Ticket, ()>,
    lookups: Batcher<DedupKey, bool>,
    dead_lookups: Batcher<TokenKey, bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    maintenance: tokio::task::AbortHandle,
    health: watch::Sender<Health>,
}

fn connect_options(
    url: &str,
    options: &PostgresStoreOptions,
) -> Result<PgConnectOptions, StoreError> {
    let shown = redact_url(url);
    let connect = PgConnectOptions::from_str(url).map_err(|e| {
        // sqlx's message names the part that is wrong, never the password.
        StoreError::unavailable(format!("bad store url `{shown}`: {e}"))
    })?;
    Ok(connect
        .application_name("herald")
        .options([("statement_timeout", format!("{}ms", millis(options.statement_timeout)))])
        .disable_statement_logging())
}

fn pool_options(options: &PostgresStoreOptions) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(options.max_connections.max(1))
        .min_connections(0)
        .acquire_timeout(options.connect_timeout)
        .idle_timeout(Some(Duration::from_secs(300)))
        // A ping per acquire would double the round trips of every batch; a dead connection shows
        // up as a failed statement instead, which is detached and starts a probe.
        .test_before_acquire(false)
}

/// Whether `e` means the database (or the path to it) is gone, rather than a statement failing.
fn is_unreachable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // 08: connection exception; 57P0x: shutting down, cannot connect now; 53300: too many
        // connections.
        sqlx::Error::Database(db) => {
            db.code().is_some_and(|c| c.starts_with("08") || c.starts_with("57P") || c == "53300")
        }
        _ => false,
    }
}

impl Shared {
    fn pool(&self) -> PgPool {
        herald_core::sync::lock(&self.pool).clone()
    }

    /// How long the client waits for a statement: the server's timeout, and a second for the
    /// answer to arrive.
    fn query_timeout(&self) -> Duration {
        self.options.statement_timeout + Duration::from_secs(1)
    }

    fn unreachable(&self, what: &str) -> StoreError {
        StoreError::unavailable(format!(
            "{what}: the database at {} is unreachable; retrying in the background",
            self.shown_url
        ))
    }

    fn mark_down(&self, why: &StoreError) {
        if !self.down.swap(true, Ordering::AcqRel) {
            tracing::error!(
                error = %why,
                "dedup store unreachable: answering 503 until it is back"
            );
        }
    }

    async fn acquire(&self, what: &str) -> Result<PoolConnection<Postgres>, StoreError> {
        if self.down.load(Ordering::Acquire) {
            return Err(self.unreachable(what));
        }
        match self.pool().acquire().await {
            Ok(conn) => Ok(conn),
            Err(e) => {
                let unreachable = is_unreachable(&e);
                let e = StoreError::database(format!("{what}: no database connection"), e);
                if unreachable {
                    self.mark_down(&e);
                }
                Err(e)
            }
        }
    }

    /// Runs `query` on a pooled connection within [`Shared::query_timeout`]. A connection whose
    /// statement failed or timed out is closed rather than returned to the pool: it may be
    /// half-way through a protocol exchange, or dead.
    async fn run<T, F>(&self, what: &str, query: F) -> Result<T, StoreError>
    where
        F: for<'c> FnOnce(
            &'c mut sqlx::PgConnection,
        ) -> futures_util::future::BoxFuture<'c, Result<T, sqlx::Error>>,
    {
        let mut conn = self.acquire(what).await?;
        let result = tokio::time::timeout(self.query_timeout(), query(&mut conn)).await;
        match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                let unreachable = is_unreachable(&e);
                drop(conn.detach());
                let e = StoreError::database(what.to_owned(), e);
                if unreachable {
                    self.mark_down(&e);
                }
                Err(e)
            }
            Err(_) => {
                drop(conn.detach());
                let e = StoreError::unavailable(format!(
                    "{what}: no answer from {} within {:?}",
                    self.shown_url,
                    self.query_timeout()
                ));
                self.mark_down(&e);
                Err(e)
            }
        }
    }
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://user:password@host/db`), migrates it and
    /// starts the batch workers. Errors never contain the password.
    pub async fn open(
        url: &str,
        options: PostgresStoreOptions,
        metrics: StoreMetrics,
    ) -> Result<Self, StoreError> {
        let shown_url = redact_url(url);
        let connect = connect_options(url, &options)?;
        let pool = connect_pool(&connect, &options, &shown_url).await?;
        let migrator = migrator();
        let migrating = migrator.run(&pool);
        match tokio::time::timeout(options.statement_timeout * 6, migrating).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(StoreError::unavailable(format!(
                    "cannot migrate the database at {shown_url}: {e}"
                )))
            }
            Err(_) => {
                return Err(StoreError::unavailable(format!(
                    "migrating the database at {shown_url} took too long (another instance \
                     holding the migration lock?)"
                )))
            }
        }
        let shared = Arc::new(Shared {
            pool: StdMutex::new(pool),
            connect,
            options: options.clone(),
            metrics,
            down: AtomicBool::new(false),
            shown_url,
        });
        let (health, _) = watch::channel(Health::Running);
        let mut tasks = Vec::new();
        let max = options.max_batch.max(1);
        let s = shared.clone();
        let claims = Batcher::spawn(
            "claimer",
            WORKERS,
            max,
            move |batch| claim_batch(s.clone(), batch),
            &health,
            &mut tasks,
        );
        let s = shared.clone();
        let records = Batcher::spawn(
            "writer",
            WORKERS,
            max,
            move |batch| record_batch(s.clone(), batch),
            &health,
            &mut tasks,
        );
        let s = shared.clone();
        let releases = Batcher::spawn(
            "releaser",
            1,
            max,
            move |batch| release_batch(s.clone(), batch),
            &health,
            &mut tasks,
        );
        let s = shared.clone();
        let lookups = Batcher::spawn(
            "reader",
            1,
            max,
            move |batch| lookup_batch(s.clone(), batch),
            &health,
            &mut tasks,
        );
        let s = shared.clone();
        let dead_lookups = Batcher::spawn(
            "dead-token reader",
            1,
            max,
            move |batch| dead_lookup_batch(s.clone(), batch),
            &health,
            &mut tasks,
        );
        let (maintenance_task, maintenance) =
            super::supervise("maintenance task", maintain(shared.clone()), health.clone());
        tasks.push(maintenance_task);
        Ok(PostgresStore {
            shared,
            claims,
            records,
            releases,
            lookups,
            dead_lookups,
            tasks: Mutex::new(tasks),
            maintenance,
            health,
        })
    }

    /// What `herald check-config` does instead of [`PostgresStore::open`]: connects and reads
    /// the schema version, changing nothing. Says what it found.
    pub async fn check(url: &str, options: &PostgresStoreOptions) -> Result<String, StoreError> {
        let shown = redact_url(url);
        let connect = connect_options(url, options)?;
        let mut conn = match tokio::time::timeout(options.connect_timeout, connect.connect()).await
        {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                return Err(StoreError::database(format!("cannot connect to {shown}"), e))
            }
            Err(_) => {
                return Err(StoreError::unavailable(format!(
                    "cannot connect to {shown}: no answer within {:?}",
                    options.connect_timeout
                )))
            }
        };
        let applied: Result<Option<i64>, sqlx::Error> = tokio::time::timeout(
            options.statement_timeout,
            sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
                .fetch_one(&mut conn),
        )
        .await
        .unwrap_or(Err(sqlx::Error::PoolTimedOut));
        let _ = conn.close().await;
        let known = migrator().migrations.iter().map(|m| m.version).max().unwrap_or(0);
        match applied {
            Ok(Some(version)) if version > known => Err(StoreError::unavailable(format!(
                "{shown} was written by a newer Herald (schema version {version}; this one knows {known})"
            ))),
            Ok(_) => Ok(format!("{shown} (existing)")),
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => {
                Ok(format!("{shown} (reachable, not yet migrated)"))
            }
            Err(e) => Err(StoreError::database(format!("cannot read {shown}"), e)),
        }
    }

    /// Rows of the dedup table (claims and records, expired or not) and of the dead-token table;
    /// for tests and diagnostics.
    pub async fn row_counts(&self) -> Result<(i64, i64), StoreError> {
        self.shared
            .run("counting rows", |conn| {
                Box::pin(async move {
                    sqlx::query_as(
                        "SELECT (SELECT COUNT(*) FROM herald_dedup), \
                         (SELECT COUNT(*) FROM herald_dead_tokens)",
                    )
                    .fetch_one(&mut *conn)
                    .await
                })
            })
            .await
    }

    /// Whether the store currently considers the database unreachable.
    pub fn is_down(&self) -> bool {
        self.shared.down.load(Ordering::Acquire)
    }

    /// The pool in use (tests inspect its bounds).
    pub fn pool(&self) -> PgPool {
        self.shared.pool()
    }
}

/// Opens a pool and one connection, within the connect timeout, with messages that say which
/// database (without the password) and what went wrong.
async fn connect_pool(
    connect: &PgConnectOptions,
    options: &PostgresStoreOptions,
    shown_url: &str,
) -> Result<PgPool, StoreError> {
    // sqlx retries refused connections until its acquire timeout; ours says what happened.
    let connecting = pool_options(options).connect_with(connect.clone());
    match tokio::time::timeout(options.connect_timeout + Duration::from_millis(500), connecting)
        .await
    {
        Ok(Ok(pool)) => Ok(pool),
        Ok(Err(sqlx::Error::PoolTimedOut)) | Err(_) => Err(StoreError::unavailable(format!(
            "cannot connect to {shown_url}: no answer within {:?} (is PostgreSQL running and \
             reachable there?)",
            options.connect_timeout
        ))),
        Ok(Err(e)) => Err(StoreError::database(format!("cannot connect to {shown_url}"), e)),
    }
}

/// Updates the pool gauges, and while the database is unreachable probes it; once it answers,
/// swaps in a fresh pool and lets requests through again.
async fn maintain(shared: Arc<Shared>) {
    let mut gauges = tokio::time::interval(GAUGE_INTERVAL);
    let mut probe = tokio::time::interval(PROBE_INTERVAL);
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = gauges.tick() => {
                let pool = shared.pool();
                let size = i64::from(pool.size());
                let idle = i64::try_from(pool.num_idle()).unwrap_or(0);
                shared.metrics.pool_connections.set(size);
                shared.metrics.pool_in_use.set((size - idle).max(0));
            }
            _ = probe.tick(), if shared.down.load(Ordering::Acquire) => {
                let connecting = shared.connect.connect();
                let answer = tokio::time::timeout(shared.options.connect_timeout, async {
                    let mut conn = connecting.await?;
                    sqlx::query("SELECT 1").execute(&mut conn).await?;
                    conn.close().await
                })
                .await;
                if let Ok(Ok(())) = answer {
                    let fresh = pool_options(&shared.options).connect_lazy_with(shared.connect.clone());
                    let old = std::mem::replace(&mut *herald_core::sync::lock(&shared.pool), fresh);
                    shared.down.store(false, Ordering::Release);
                    tracing::warn!(database = %shared.shown_url, "dedup store reachable again");
                    // Its connections are dead; closing waits for those still checked out.
                    tokio::spawn(async move { old.close().await });
                }
            }
        }
    }
}

/// One statement claims every claimable key of the batch and reports on the others (see the
/// module docs). The final `SELECT` reads the table as it was before the statement, so a
/// claimed key whose old row was an unrecorded claim is a takeover of an expired lease.
const CLAIM_SQL: &str = "\
WITH input AS (
    SELECT k, o, t FROM UNNEST($1::bytea[], $2::int8[], $3::bytea[]) AS u(k, o, t)
), clock AS (
    SELECT (extract(epoch FROM statement_timestamp()) * 1000)::int8 AS now_ms
), dead AS (
    SELECT i.k FROM input i
    JOIN herald_dead_tokens d ON d.token = i.t
    WHERE d.expires_at > (SELECT now_ms FROM clock)
), claimed AS (
    INSERT INTO herald_dedup AS h (key, delivered, expires_at, owner)
    SELECT i.k, false, (SELECT now_ms FROM clock) + $4, i.o FROM input i
    WHERE NOT EXISTS (SELECT 1 FROM dead WHERE dead.k = i.k)
    ORDER BY i.k
    ON CONFLICT (key) DO UPDATE
        SET delivered = false, expires_at = EXCLUDED.expires_at, owner = EXCLUDED.owner
        WHERE h.expires_at <= (SELECT now_ms FROM clock)
    RETURNING h.key
)
SELECT i.k, c.key IS NOT NULL AS claimed, x.k IS NOT NULL AS dead, old.delivered,
       old.expires_at - clock.now_ms AS remaining_ms
FROM input i CROSS JOIN clock
LEFT JOIN claimed c ON c.key = i.k
LEFT JOIN dead x ON x.k = i.k
LEFT JOIN herald_dedup old ON old.key = i.k";

type ClaimRow = (Vec<u8>, bool, bool, Option<bool>, Option<i64>);

async fn claim_batch(
    shared: Arc<Shared>,
    batch: Vec<(DedupKey, TokenKey)>,
) -> Result<Vec<ClaimState>, StoreError> {
    // A statement may not claim one row twice: each key once, with a fresh owner id. In key
    // order, as every statement that locks several rows does: two instances' batches then lock
    // their common rows in the same order and never deadlock.
    let mut first: HashMap<DedupKey, usize> = HashMap::with_capacity(batch.len());
    let (mut keys, mut owners, mut tokens) = (Vec::new(), Vec::new(), Vec::new());
    let dead_tokens = !shared.options.dead_token_ttl.is_zero();
    let mut sorted: Vec<&(DedupKey, TokenKey)> = batch.iter().collect();
    sorted.sort_unstable_by_key(|(key, _)| *key.as_bytes());
    for (key, token) in sorted {
        if first.contains_key(key) {
            continue;
        }
        first.insert(*key, keys.len());
        keys.push(key.as_bytes().to_vec());
        owners.push(fastrand::i64(1..));
        // An empty token never matches: the cache is off for this instance.
        tokens.push(if dead_tokens { token.as_bytes().to_vec() } else { Vec::new() });
    }
    let lease = millis(shared.options.claim_lease);
    let owners_sent = owners.clone();
    let rows: Vec<ClaimRow> = shared
        .run("claiming deliveries", move |conn| {
            Box::pin(async move {
                sqlx::query_as(CLAIM_SQL)
                    .bind(keys)
                    .bind(owners)
                    .bind(tokens)
                    .bind(lease)
                    .fetch_all(&mut *conn)
                    .await
            })
        })
        .await?;
    let mut states: HashMap<[u8; 16], ClaimState> = HashMap::with_capacity(rows.len());
    for (key, claimed, dead, old_delivered, remaining_ms) in rows {
        let Ok(key) = <[u8; 16]>::try_from(key) else { continue };
        let state = if dead {
            ClaimState::DeadToken
        } else if claimed {
            if old_delivered == Some(false) {
                shared.metrics.lease_takeovers.inc();
                tracing::info!("took over a claim whose lease expired (its instance died?)");
            }
            let index = first.get(&DedupKey(key)).copied().unwrap_or(0);
            ClaimState::Claimed(Ticket { key: DedupKey(key), owner: owners_sent[index] })
        } else if old_delivered == Some(true) {
            ClaimState::Delivered
        } else {
            // Held by another instance; a row committed after this statement's snapshot has no
            // `old` row here: ask again soon.
            let remaining = remaining_ms.unwrap_or(0).max(0);
            ClaimState::Held { remaining: Duration::from_millis(remaining as u64) }
        };
        states.insert(key, state);
    }
    let mut seen = std::collections::HashSet::with_capacity(batch.len());
    Ok(batch
        .iter()
        .map(|(key, _)| {
            let state = states
                .get(key.as_bytes())
                .copied()
                .unwrap_or(ClaimState::Held { remaining: Duration::ZERO });
            match state {
                // The same key twice in one batch: only the first caller owns it.
                ClaimState::Claimed(_) if !seen.insert(*key) => {
                    ClaimState::Held { remaining: shared.options.claim_lease }
                }
                state => state,
            }
        })
        .collect())
}

async fn record_batch(shared: Arc<Shared>, batch: Vec<DedupKey>) -> Result<Vec<()>, StoreError> {
    let n = batch.len();
    let mut keys: Vec<[u8; 16]> = batch.iter().map(|k| *k.as_bytes()).collect();
    keys.sort_unstable();
    keys.dedup();
    let keys: Vec<Vec<u8>> = keys.iter().map(|k| k.to_vec()).collect();
    let ttl = millis(shared.options.ttl);
    // A record is final, whoever holds the claim: the message is out.
    let sql = format!(
        "INSERT INTO herald_dedup AS h (key, delivered, expires_at, owner) \
         SELECT k, true, {NOW_MS} + $2, NULL FROM UNNEST($1::bytea[]) AS u(k) ORDER BY k \
         ON CONFLICT (key) DO UPDATE SET delivered = true, expires_at = EXCLUDED.expires_at, \
         owner = NULL"
    );
    shared
        .run("committing delivery records", move |conn| {
            Box::pin(async move {
                sqlx::query(&sql).bind(keys).bind(ttl).execute(&mut *conn).await.map(drop)
            })
        })
        .await
        .inspect_err(|e| tracing::error!(error = %e, rows = n, "dedup store write failed"))?;
    Ok(vec![(); n])
}

async fn release_batch(shared: Arc<Shared>, batch: Vec<Ticket>) -> Result<Vec<()>, StoreError> {
    let n = batch.len();
    // In key order (see `claim_batch`).
    let mut sorted: Vec<&Ticket> = batch.iter().collect();
    sorted.sort_unstable_by_key(|t| *t.key.as_bytes());
    let keys: Vec<Vec<u8>> = sorted.iter().map(|t| t.key.as_bytes().to_vec()).collect();
    let owners: Vec<i64> = sorted.iter().map(|t| t.owner).collect();
    shared
        .run("releasing claims", move |conn| {
            Box::pin(async move {
                sqlx::query(
                    "DELETE FROM herald_dedup h USING UNNEST($1::bytea[], $2::int8[]) AS u(k, o) \
                     WHERE h.key = u.k AND h.owner = u.o AND NOT h.delivered",
                )
                .bind(keys)
                .bind(owners)
                .execute(&mut *conn)
                .await
                .map(drop)
            })
        })
        .await?;
    Ok(vec![(); n])
}

async fn lookup_batch(shared: Arc<Shared>, batch: Vec<DedupKey>) -> Result<Vec<bool>, StoreError> {
    let keys: Vec<Vec<u8>> = batch.iter().map(|k| k.as_bytes().to_vec()).collect();
    let sql = format!(
        "SELECT key FROM herald_dedup WHERE key = ANY($1) AND delivered AND expires_at > {NOW_MS}"
    );
    let found: Vec<(Vec<u8>,)> = shared
        .run("looking up deliveries", move |conn| {
            Box::pin(async move { sqlx::query_as(&sql).bind(keys).fetch_all(&mut *conn).await })
        })
        .await?;
    let found: std::collections::HashSet<Vec<u8>> = found.into_iter().map(|(k,)| k).collect();
    Ok(batch.iter().map(|k| found.contains(k.as_bytes().as_slice())).collect())
}

async fn dead_lookup_batch(
    shared: Arc<Shared>,
    batch: Vec<TokenKey>,
) -> Result<Vec<bool>, StoreError> {
    let tokens: Vec<Vec<u8>> = batch.iter().map(|t| t.as_bytes().to_vec()).collect();
    let sql = format!(
        "SELECT token FROM herald_dead_tokens WHERE token = ANY($1) AND expires_at > {NOW_MS}"
    );
    let found: Vec<(Vec<u8>,)> = shared
        .run("looking up dead tokens", move |conn| {
            Box::pin(async move { sqlx::query_as(&sql).bind(tokens).fetch_all(&mut *conn).await })
        })
        .await?;
    let found: std::collections::HashSet<Vec<u8>> = found.into_iter().map(|(k,)| k).collect();
    Ok(batch.iter().map(|t| found.contains(t.as_bytes().as_slice())).collect())
}

/// Deletes up to [`PRUNE_CHUNK`] expired rows of `table`; rows another instance is deleting
/// right now are skipped, not waited for.
async fn prune_chunk(
    shared: &Shared,
    table: &'static str,
    key: &'static str,
) -> Result<u64, StoreError> {
    let sql = format!(
        "DELETE FROM {table} WHERE {key} IN (SELECT {key} FROM {table} \
         WHERE expires_at <= {NOW_MS} LIMIT {PRUNE_CHUNK} FOR UPDATE SKIP LOCKED)"
    );
    shared
        .run("pruning expired rows", move |conn| {
            Box::pin(async move {
                sqlx::query(&sql).execute(&mut *conn).await.map(|done| done.rows_affected())
            })
        })
        .await
}

#[async_trait]
impl DedupStore for PostgresStore {
    async fn was_delivered(&self, key: &DedupKey) -> Result<bool, StoreError> {
        self.lookups.call(*key).await
    }

    async fn record_delivered(&self, key: DedupKey) -> Result<(), StoreError> {
        self.records.call(key).await
    }

    async fn claim(&self, key: DedupKey, token: TokenKey) -> Result<ClaimState, StoreError> {
        self.claims.call((key, token)).await
    }

    async fn release(&self, ticket: Ticket) -> Result<(), StoreError> {
        self.releases.call(ticket).await
    }

    async fn is_dead_token(&self, token: &TokenKey) -> Result<bool, StoreError> {
        if self.shared.options.dead_token_ttl.is_zero() {
            return Ok(false);
        }
        self.dead_lookups.call(*token).await
    }

    async fn record_dead_token(&self, token: TokenKey) -> Result<(), StoreError> {
        let ttl = millis(self.shared.options.dead_token_ttl);
        if ttl == 0 {
            return Ok(());
        }
        // Rare (one per dead pushkey per TTL): not batched.
        let sql = format!(
            "INSERT INTO herald_dead_tokens (token, expires_at) VALUES ($1, {NOW_MS} + $2) \
             ON CONFLICT (token) DO UPDATE SET expires_at = EXCLUDED.expires_at"
        );
        let token = token.as_bytes().to_vec();
        self.shared
            .run("recording a dead token", move |conn| {
                Box::pin(async move {
                    sqlx::query(&sql).bind(token).bind(ttl).execute(&mut *conn).await.map(drop)
                })
            })
            .await
    }

    async fn prune_expired(&self) -> Result<u64, StoreError> {
        // Chunk after chunk until nothing expired is left: each statement is short, and runs on
        // one pool connection beside the hot path's.
        let mut deleted = 0;
        for (table, key) in [("herald_dedup", "key"), ("herald_dead_tokens", "token")] {
            loop {
                let n = prune_chunk(&self.shared, table, key).await?;
                deleted += n;
                if n < PRUNE_CHUNK as u64 {
                    break;
                }
                tokio::task::yield_now().await;
            }
        }
        Ok(deleted)
    }

    async fn failed(&self) -> String {
        let mut health = self.health.subscribe();
        loop {
            if let Health::Failed(why) = &*health.borrow_and_update() {
                return why.clone();
            }
            if health.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    async fn close(&self) {
        self.health.send_if_modified(|h| match h {
            Health::Running => {
                *h = Health::Closing;
                true
            }
            Health::Closing | Health::Failed(_) => false,
        });
        // Records first: they must land.
        self.records.shutdown();
        self.claims.shutdown();
        self.releases.shutdown();
        self.lookups.shutdown();
        self.dead_lookups.shutdown();
        self.maintenance.abort();
        for task in self.tasks.lock().await.drain(..) {
            let _ = task.await;
        }
        super::close_pool(&self.shared.pool()).await;
    }
}
