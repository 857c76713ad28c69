//! The `DedupStore` contract, one suite run against both engines (SQLite, and a real throwaway
//! PostgreSQL cluster), plus what only a shared store does: claims held by another instance,
//! lease expiry and takeover, exactly one owner per key under concurrent claims.

use std::sync::Arc;
use std::time::Duration;

use herald_server::metrics::Metrics;
use herald_server::store::postgres::{PostgresStore, PostgresStoreOptions};
use herald_server::store::sqlite::{SqliteStore, SqliteStoreOptions};
use herald_server::store::{ClaimState, DedupKey, DedupStore, TokenKey};
use herald_testkit::postgres::TestPostgres;

/// A store under test and what keeps its database alive.
enum Engine {
    Sqlite(Arc<SqliteStore>, #[allow(dead_code)] tempfile::TempDir),
    Postgres(Arc<PostgresStore>, #[allow(dead_code)] TestPostgres),
}

impl Engine {
    fn name(&self) -> &'static str {
        match self {
            Engine::Sqlite(..) => "sqlite",
            Engine::Postgres(..) => "postgres",
        }
    }

    fn store(&self) -> Arc<dyn DedupStore> {
        match self {
            Engine::Sqlite(s, _) => s.clone(),
            Engine::Postgres(s, _) => s.clone(),
        }
    }

    /// (dedup rows, dead-token rows), expired or not.
    async fn rows(&self) -> (i64, i64) {
        match self {
            Engine::Sqlite(s, _) => {
                (s.row_count().await.unwrap(), s.dead_token_count().await.unwrap())
            }
            Engine::Postgres(s, _) => s.row_counts().await.unwrap(),
        }
    }

    async fn close(self) {
        self.store().close().await;
    }
}

fn pg_options(ttl: Duration, dead_token_ttl: Duration, lease: Duration) -> PostgresStoreOptions {
    PostgresStoreOptions { dead_token_ttl, ..PostgresStoreOptions::new(ttl, lease) }
}

async fn engines(ttl: Duration, dead_token_ttl: Duration) -> Vec<Engine> {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/herald.db", dir.path().display());
    let sqlite = SqliteStore::open(&url, SqliteStoreOptions { ttl, max_batch: 64, dead_token_ttl })
        .await
        .unwrap();
    let pg = TestPostgres::start();
    let options = pg_options(ttl, dead_token_ttl, Duration::from_secs(30));
    let postgres = PostgresStore::open(&pg.url(), options, Metrics::new().store()).await.unwrap();
    vec![Engine::Sqlite(Arc::new(sqlite), dir), Engine::Postgres(Arc::new(postgres), pg)]
}

fn key(i: usize) -> DedupKey {
    DedupKey::new(&format!("$event{i}"), "com.example.app", "pushkey")
}

fn token(i: usize) -> TokenKey {
    TokenKey::new("com.example.app", &format!("pushkey{i}"))
}

#[tokio::test]
async fn claim_record_release_on_both_engines() {
    for engine in engines(Duration::from_secs(3600), Duration::from_secs(3600)).await {
        let (name, store) = (engine.name(), engine.store());
        // A new key is claimed; once recorded it is a duplicate everywhere.
        let ClaimState::Claimed(ticket) = store.claim(key(1), token(1)).await.unwrap() else {
            panic!("{name}: a new key must be claimed")
        };
        assert_eq!(ticket.key, key(1));
        store.record_delivered(key(1)).await.unwrap();
        assert_eq!(store.claim(key(1), token(1)).await.unwrap(), ClaimState::Delivered, "{name}");
        assert!(store.was_delivered(&key(1)).await.unwrap(), "{name}");
        // A released claim can be claimed again at once.
        let ClaimState::Claimed(ticket) = store.claim(key(2), token(2)).await.unwrap() else {
            panic!("{name}")
        };
        store.release(ticket).await.unwrap();
        assert!(
            matches!(store.claim(key(2), token(2)).await.unwrap(), ClaimState::Claimed(_)),
            "{name}: released key"
        );
        assert!(!store.was_delivered(&key(2)).await.unwrap(), "{name}: claims are not records");
        engine.close().await;
    }
}

#[tokio::test]
async fn dead_tokens_are_answered_until_they_expire_on_both_engines() {
    for engine in engines(Duration::from_secs(3600), Duration::from_secs(1)).await {
        let (name, store) = (engine.name(), engine.store());
        assert!(!store.is_dead_token(&token(7)).await.unwrap(), "{name}");
        store.record_dead_token(token(7)).await.unwrap();
        assert!(store.is_dead_token(&token(7)).await.unwrap(), "{name}");
        assert!(!store.is_dead_token(&token(8)).await.unwrap(), "{name}: another token");
        assert_eq!(store.claim(key(70), token(7)).await.unwrap(), ClaimState::DeadToken, "{name}");
        // Keyed by app too: the same pushkey under another app is not dead.
        let other_app = TokenKey::new("org.example.other", "pushkey7");
        assert!(!store.is_dead_token(&other_app).await.unwrap(), "{name}");
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert!(!store.is_dead_token(&token(7)).await.unwrap(), "{name}: expired");
        assert!(matches!(store.claim(key(70), token(7)).await.unwrap(), ClaimState::Claimed(_)));
        engine.close().await;
    }
}

#[tokio::test]
async fn pruning_keeps_both_tables_bounded_on_both_engines() {
    for engine in engines(Duration::from_secs(1), Duration::from_secs(1)).await {
        let (name, store) = (engine.name(), engine.store());
        for round in 0..2 {
            for i in 0..300 {
                let i = round * 1000 + i;
                if let ClaimState::Claimed(_) = store.claim(key(i), token(i)).await.unwrap() {
                    store.record_delivered(key(i)).await.unwrap();
                }
                if i % 3 == 0 {
                    store.record_dead_token(token(i)).await.unwrap();
                }
            }
            let (rows, dead) = engine.rows().await;
            assert!(rows >= 300 && dead >= 100, "{name}: {rows} rows, {dead} dead tokens");
            // Everything expires (SQLite keeps whole seconds), and pruning deletes it all.
            tokio::time::sleep(Duration::from_millis(2100)).await;
            let pruned = store.prune_expired().await.unwrap();
            assert_eq!(pruned, 400, "{name}: round {round}");
            assert_eq!(engine.rows().await, (0, 0), "{name}: round {round}");
        }
        engine.close().await;
    }
}

async fn pg_pair(lease: Duration) -> (TestPostgres, PostgresStore, PostgresStore, Metrics) {
    let pg = TestPostgres::start();
    let options = pg_options(Duration::from_secs(3600), Duration::from_secs(3600), lease);
    let a = PostgresStore::open(&pg.url(), options.clone(), Metrics::new().store()).await.unwrap();
    let metrics = Metrics::new();
    let b = PostgresStore::open(&pg.url(), options, metrics.store()).await.unwrap();
    (pg, a, b, metrics)
}

#[tokio::test]
async fn a_claim_is_held_for_others_until_recorded_released_or_expired() {
    let lease = Duration::from_millis(800);
    let (_pg, a, b, b_metrics) = pg_pair(lease).await;
    // Held while A delivers; recorded → duplicate for B.
    let ClaimState::Claimed(_) = a.claim(key(1), token(1)).await.unwrap() else { panic!() };
    match b.claim(key(1), token(1)).await.unwrap() {
        ClaimState::Held { remaining } => assert!(remaining <= lease, "{remaining:?}"),
        other => panic!("{other:?}"),
    }
    a.record_delivered(key(1)).await.unwrap();
    assert_eq!(b.claim(key(1), token(1)).await.unwrap(), ClaimState::Delivered);
    // Released → B claims at once.
    let ClaimState::Claimed(ticket) = a.claim(key(2), token(2)).await.unwrap() else { panic!() };
    a.release(ticket).await.unwrap();
    assert!(matches!(b.claim(key(2), token(2)).await.unwrap(), ClaimState::Claimed(_)));
    // A dies holding key 3: once its lease ends B takes over, and A's late release of its old
    // claim does not free B's.
    let ClaimState::Claimed(stale) = a.claim(key(3), token(3)).await.unwrap() else { panic!() };
    assert!(matches!(b.claim(key(3), token(3)).await.unwrap(), ClaimState::Held { .. }));
    tokio::time::sleep(lease + Duration::from_millis(100)).await;
    assert!(matches!(b.claim(key(3), token(3)).await.unwrap(), ClaimState::Claimed(_)));
    assert!(b_metrics.render().contains("herald_store_lease_takeovers_total 1"));
    a.release(stale).await.unwrap();
    assert!(matches!(a.claim(key(3), token(3)).await.unwrap(), ClaimState::Held { .. }));
    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn concurrent_claims_from_two_instances_have_exactly_one_owner_per_key() {
    let (_pg, a, b, _) = pg_pair(Duration::from_secs(30)).await;
    let (a, b) = (Arc::new(a), Arc::new(b));
    let mut tasks = Vec::new();
    // 100 keys, each claimed 4 times at once (twice per instance, so batches repeat keys too).
    for round in 0..4 {
        for i in 0..100 {
            let store = if round % 2 == 0 { a.clone() } else { b.clone() };
            tasks.push(tokio::spawn(async move { (i, store.claim(key(i), token(i)).await) }));
        }
    }
    let mut owners = vec![0; 100];
    for task in tasks {
        let (i, state) = task.await.unwrap();
        match state.unwrap() {
            ClaimState::Claimed(_) => owners[i] += 1,
            ClaimState::Held { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(owners.iter().all(|n| *n == 1), "{owners:?}");
    a.close().await;
    b.close().await;
}
