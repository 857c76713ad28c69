//! Several Herald instances on one PostgreSQL store (issue 12), against real throwaway clusters:
//! exactly one delivery per event across instances, lease takeover after an instance dies, an
//! outage of the database (503s, then recovery without a restart and without a duplicate for an
//! acknowledged event), the shared dead-token cache, and the ways a configuration or a database
//! can be wrong (each a clear error, never a panic or a 500, never the password).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_server::store::postgres::{PostgresStore, PostgresStoreOptions};
use herald_testkit::notify;
use herald_testkit::postgres::{TestPostgres, PASSWORD};
use herald_testkit::scripted::{ScriptedBackend, Step};
use serde_json::json;

use crate::common::{config, outcome_count, post, TestServer, APP};

fn store_section(url: &str, extra: &str) -> String {
    format!("[store]\nurl = \"{url}\"\n{extra}\n")
}

/// In-process servers on one database, sharing one scripted backend so deliveries are counted
/// across them.
async fn servers(
    n: usize,
    url: &str,
    backend: &ScriptedBackend,
) -> Vec<(TestServer, tempfile::TempDir)> {
    let mut servers = Vec::new();
    for _ in 0..n {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), &store_section(url, ""));
        servers.push((TestServer::start_with(&cfg, backend.clone()).await, dir));
    }
    servers
}

#[tokio::test]
async fn three_in_process_instances_deliver_each_event_once() {
    let pg = TestPostgres::start();
    let backend = ScriptedBackend::new();
    let servers = servers(3, &pg.url(), &backend).await;
    for round in 0..10 {
        let mut requests = Vec::new();
        for e in 0..10 {
            let event = format!("$e{round}-{e}");
            for (server, _) in &servers {
                let body = notify::message(&event, APP, &format!("key-{event}"));
                let addr = server.addr;
                requests.push(tokio::spawn(async move {
                    post(addr, "/_matrix/push/v1/notify", body.to_string()).await
                }));
            }
        }
        for request in requests {
            let (status, body) = request.await.unwrap();
            assert_eq!(status, 200, "{body}");
        }
    }
    for round in 0..10 {
        for e in 0..10 {
            let pushkey = format!("key-$e{round}-{e}");
            assert_eq!(backend.deliveries_to(&pushkey), 1, "{pushkey}");
        }
    }
    let mut deduplicated = 0;
    for (server, _) in servers {
        deduplicated += outcome_count(&server.metrics().await, APP, "deduplicated");
        server.stop().await;
    }
    assert_eq!(deduplicated, 200);
}

#[tokio::test]
async fn the_dead_token_cache_is_shared_by_instances() {
    let pg = TestPostgres::start();
    let (a_backend, b_backend) = (ScriptedBackend::new(), ScriptedBackend::new());
    a_backend.script("dead", [Step::Dead]);
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = TestServer::start_with(
        &config(dir_a.path(), &store_section(&pg.url(), "")),
        a_backend.clone(),
    )
    .await;
    let b = TestServer::start_with(
        &config(dir_b.path(), &store_section(&pg.url(), "")),
        b_backend.clone(),
    )
    .await;
    // A hears from its upstream that the token is dead…
    let (status, body) = a.notify(&notify::message("$1", APP, "dead")).await;
    assert_eq!((status, body), (200, json!({"rejected": ["dead"]})));
    // …and B answers the next event and a badge update for it without an upstream call.
    let (status, body) = b.notify(&notify::message("$2", APP, "dead")).await;
    assert_eq!((status, body), (200, json!({"rejected": ["dead"]})));
    let (status, body) = b.notify(&notify::badge(APP, "dead", 3)).await;
    assert_eq!((status, body), (200, json!({"rejected": ["dead"]})));
    assert_eq!(b_backend.attempts_to("dead"), 0);
    let metrics = b.metrics().await;
    assert_eq!(outcome_count(&metrics, APP, "rejected_cached"), 2, "{metrics}");
    assert_eq!(outcome_count(&metrics, APP, "rejected"), 0);
    assert!(metrics.contains("herald_dead_token_hits_total 2"), "{metrics}");
    // An unknown app_id is rejected but never cached; nor is a refused message.
    b_backend.script("refused", [Step::MessageRefused]);
    let (_, body) = b.notify(&notify::message("$3", "org.example.unknown", "other")).await;
    assert_eq!(body, json!({"rejected": ["other"]}));
    let (_, body) = b.notify(&notify::message("$4", APP, "refused")).await;
    assert_eq!(body, json!({"rejected": []}));
    assert_eq!(pg.psql("herald", "SELECT COUNT(*) FROM herald_dead_tokens").unwrap(), "1");
    // The pushkey is not stored in clear.
    let stored =
        pg.psql("herald", "SELECT encode(token, 'escape') FROM herald_dead_tokens").unwrap();
    assert!(!stored.contains("dead"), "{stored}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn the_dead_token_cache_can_be_turned_off() {
    let pg = TestPostgres::start();
    let backend = ScriptedBackend::new();
    backend.script("dead", [Step::Dead, Step::Dead]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &store_section(&pg.url(), "dead_token_ttl = 0"));
    let server = TestServer::start_with(&cfg, backend.clone()).await;
    for event in ["$1", "$2"] {
        let (_, body) = server.notify(&notify::message(event, APP, "dead")).await;
        assert_eq!(body, json!({"rejected": ["dead"]}));
    }
    assert_eq!(backend.attempts_to("dead"), 2, "asked the upstream both times");
    assert_eq!(pg.psql("herald", "SELECT COUNT(*) FROM herald_dead_tokens").unwrap(), "0");
    server.stop().await;
}

/// One "homeserver": sends unique events one after the other, retrying each on any non-200
/// (as Synapse does), until `stop`. Returns the acknowledged events and the statuses seen.
async fn homeserver(
    addr: SocketAddr,
    client: usize,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
) -> (Vec<String>, HashMap<u16, u64>) {
    let mut acknowledged = Vec::new();
    let mut statuses = HashMap::new();
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let event = format!("$c{client}-{i}");
        loop {
            let body = notify::message(&event, APP, &format!("key-{event}"));
            let (status, _) = post(addr, "/_matrix/push/v1/notify", body.to_string()).await;
            sent.fetch_add(1, Ordering::Relaxed);
            *statuses.entry(status).or_default() += 1;
            if status == 200 {
                acknowledged.push(event);
                break;
            }
            assert!([503, 504].contains(&status), "status {status}: never a 500");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        i += 1;
    }
    (acknowledged, statuses)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_under_load_gives_503s_then_recovers_without_a_restart() {
    let pg = Arc::new(TestPostgres::start());
    let backend = ScriptedBackend::new();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &store_section(&pg.url(), "connect_timeout = \"1s\"\nrecent_cache_entries = 0"),
    );
    let server = TestServer::start_with(&cfg, backend.clone()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..16)
        .map(|c| tokio::spawn(homeserver(server.addr, c, stop.clone(), sent.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pg2 = pg.clone();
    tokio::task::spawn_blocking(move || pg2.stop()).await.unwrap();
    let stopped_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pg2 = pg.clone();
    tokio::task::spawn_blocking(move || pg2.restart()).await.unwrap();
    let restarted_at = Instant::now();
    // Recovery: new events are acknowledged again within a few seconds, with no restart.
    let probe = async {
        let mut i = 0;
        loop {
            let body = notify::message(&format!("$probe{i}"), APP, &format!("probe{i}"));
            let (status, _) = post(server.addr, "/_matrix/push/v1/notify", body.to_string()).await;
            if status == 200 {
                return;
            }
            i += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), probe).await.expect("recovered");
    let recovered_after = restarted_at.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acknowledged = Vec::new();
    let mut statuses: HashMap<u16, u64> = HashMap::new();
    for client in clients {
        let (acked, seen) = client.await.unwrap();
        acknowledged.extend(acked);
        for (status, n) in seen {
            *statuses.entry(status).or_default() += n;
        }
    }
    eprintln!(
        "outage test: {} requests, statuses {statuses:?}, {} events acknowledged, recovered \
         {recovered_after:?} after the restart ({:?} after the stop)",
        sent.load(Ordering::Relaxed),
        acknowledged.len(),
        stopped_at.elapsed()
    );
    assert!(statuses.get(&503).copied().unwrap_or(0) > 0, "503s while the store was gone");
    assert!(acknowledged.len() > 100, "{}", acknowledged.len());
    // Every acknowledged event's retry is deduplicated: none is ever delivered again.
    let deliveries = |event: &str| backend.deliveries_to(&format!("key-{event}"));
    let before: Vec<usize> = acknowledged.iter().map(|e| deliveries(e)).collect();
    for event in &acknowledged {
        let body = notify::message(event, APP, &format!("key-{event}"));
        let (status, _) = post(server.addr, "/_matrix/push/v1/notify", body.to_string()).await;
        assert_eq!(status, 200);
    }
    let after: Vec<usize> = acknowledged.iter().map(|e| deliveries(e)).collect();
    assert_eq!(before, after, "an acknowledged event was delivered again");
    // Deliveries before the acknowledgement may repeat (a 503 after a delivery whose record
    // could not be written); count them for the record.
    let repeated = before.iter().filter(|n| **n > 1).count();
    eprintln!("outage test: {repeated} events delivered more than once before acknowledgement");
    assert!(before.iter().all(|n| *n >= 1));
    server.stop().await;
}

#[tokio::test]
async fn a_small_pool_under_load_answers_everything() {
    let pg = TestPostgres::start();
    let backend = ScriptedBackend::new();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &store_section(&pg.url(), "max_connections = 1"));
    let server = TestServer::start_with(&cfg, backend.clone()).await;
    let mut requests = Vec::new();
    for i in 0..300 {
        let body = notify::message(&format!("$e{}", i % 150), APP, "k");
        let addr = server.addr;
        requests.push(tokio::spawn(async move {
            post(addr, "/_matrix/push/v1/notify", body.to_string()).await.0
        }));
    }
    for request in requests {
        assert_eq!(request.await.unwrap(), 200);
    }
    assert_eq!(backend.deliveries_to("k"), 150);
    let metrics = server.metrics().await;
    assert!(metrics.contains("herald_store_pool_connections"), "{metrics}");
    server.stop().await;
}

fn options() -> PostgresStoreOptions {
    PostgresStoreOptions {
        connect_timeout: Duration::from_secs(1),
        ..PostgresStoreOptions::new(Duration::from_secs(3600), Duration::from_secs(30))
    }
}

async fn open_error(url: &str) -> String {
    let metrics = herald_server::metrics::Metrics::new().store();
    match PostgresStore::open(url, options(), metrics).await {
        Ok(_) => panic!("opened {url}"),
        Err(e) => {
            let text = e.to_string();
            assert!(!text.contains(PASSWORD), "the password leaked: {text}");
            assert!(!text.contains("wrong-pw"), "the password leaked: {text}");
            text
        }
    }
}

#[tokio::test]
async fn wrong_databases_are_clear_errors_without_the_password() {
    let pg = TestPostgres::start();
    let wrong_password = pg.url().replace(PASSWORD, "wrong-pw");
    let e = open_error(&wrong_password).await;
    assert!(e.contains("password authentication failed"), "{e}");
    assert!(e.contains("herald:***@127.0.0.1"), "{e}");
    let e = open_error(&pg.url_for("nope")).await;
    assert!(e.contains("\"nope\" does not exist"), "{e}");
    let e = open_error(&format!("postgres://herald:{PASSWORD}@127.0.0.1:notaport/herald")).await;
    assert!(e.contains("bad store url"), "{e}");
    // Nothing listens there.
    let closed = crate::common::free_addr();
    let e = open_error(&format!("postgres://herald:{PASSWORD}@{closed}/herald")).await;
    assert!(e.contains("cannot connect"), "{e}");
}

#[tokio::test]
async fn a_database_that_accepts_but_never_answers_times_out() {
    // Accepts TCP connections and holds them, saying nothing.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let started = Instant::now();
    let e = open_error(&format!("postgres://herald:{PASSWORD}@{addr}/herald")).await;
    assert!(e.contains("no answer within"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    held.abort();
}

#[tokio::test]
async fn store_settings_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    let load = |store: &str| {
        let text = format!(
            "data_dir = \"{}\"\n[server]\nrequest_deadline = \"5s\"\n[store]\n{store}\n\
             [apps.\"{APP}\"]\nkind = \"log\"\n",
            dir.path().display()
        );
        herald_server::Config::from_toml(&text, std::iter::empty(), dir.path().to_path_buf())
    };
    let url = format!("url = \"postgres://herald:{PASSWORD}@db/herald\"");
    for (extra, key) in [
        ("claim_lease = \"0s\"", "store.claim_lease"),
        ("claim_lease = \"5s\"", "store.claim_lease"),
        ("ttl = 0", "store.ttl"),
        ("max_connections = 0", "store.max_connections"),
        ("connect_timeout = 0", "store.connect_timeout"),
        ("statement_timeout = \"10ms\"", "store.statement_timeout"),
        ("dead_token_ttl = \"500ms\"", "store.dead_token_ttl"),
    ] {
        let e = load(&format!("{url}\n{extra}")).unwrap_err().to_string();
        assert!(e.contains(key), "{extra}: {e}");
        assert!(!e.contains(PASSWORD), "{e}");
    }
    // A typo'd scheme is named, without the password.
    let e = load(&format!("url = \"postgress://herald:{PASSWORD}@db/herald\"")).unwrap_err();
    let e = e.to_string();
    assert!(e.contains("store.url") && e.contains("postgress://herald:***@db"), "{e}");
    // The lease defaults to the deadline + 10 s; 0 turns the dead-token cache off.
    let c = load(&format!("{url}\ndead_token_ttl = 0")).unwrap();
    assert_eq!(c.claim_lease(), Duration::from_secs(15));
    let c = load(&format!("{url}\nclaim_lease = \"6s\"")).unwrap();
    assert_eq!(c.claim_lease(), Duration::from_secs(6));
}

#[tokio::test]
async fn check_config_reaches_the_database_and_never_prints_the_password() {
    let pg = TestPostgres::start();
    let dir = tempfile::tempdir().unwrap();
    let write = |url: &str| {
        let path = dir.path().join("herald.toml");
        let text = format!(
            "data_dir = \"{}\"\n[store]\nurl = \"{url}\"\nconnect_timeout = \"2s\"\n\
             [apps.\"{APP}\"]\nkind = \"log\"\n",
            dir.path().join("data").display()
        );
        std::fs::write(&path, text).unwrap();
        path
    };
    let run = |path: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["check-config", "--config"])
            .arg(path)
            .output()
            .unwrap()
    };
    let out = run(&write(&pg.url()));
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("not yet migrated") && !text.contains(PASSWORD), "{text}");
    let out = run(&write(&pg.url().replace(PASSWORD, "wrong-pw")));
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("password authentication failed"), "{text}");
    assert!(!text.contains("wrong-pw"), "{text}");
}

/// Real `herald serve` processes on one database, delivering through the WebPush fake (which
/// counts across processes).
#[cfg(feature = "webpush")]
mod processes {
    use std::path::Path;

    use herald_testkit::fake_push::{Answer, FakePushService, TestSubscription};

    use super::*;
    use crate::common::{free_addr, write_config_file, HeraldProcess};

    const WEB_APP: &str = "org.example.web";

    fn spawn_config(
        dir: &Path,
        addr: SocketAddr,
        url: &str,
        server: &str,
        store: &str,
    ) -> std::path::PathBuf {
        let text = format!(
            "{server}\n[store]\nurl = \"{url}\"\n{store}\n[apps.\"{WEB_APP}\"]\nkind = \"webpush\"\n\
             vapid_private_key = \"vapid.pem\"\ncreate_vapid_key_if_missing = true\n\
             vapid_subject = \"mailto:ops@example.org\"\nallowed_endpoints = [\"127.0.0.0/8\"]\n"
        );
        write_config_file(dir, addr, &text)
    }

    fn event(event_id: &str, subscription: &TestSubscription) -> serde_json::Value {
        notify::message_with_devices(
            event_id,
            vec![json!({
                "app_id": WEB_APP,
                "pushkey": subscription.p256dh,
                "data": subscription.pusher_data(),
            })],
        )
    }

    async fn instances(
        n: usize,
        url: &str,
        server: &str,
        store: &str,
    ) -> Vec<(HeraldProcess, tempfile::TempDir)> {
        let mut out = Vec::new();
        for _ in 0..n {
            let dir = tempfile::tempdir().unwrap();
            let addr = free_addr();
            let config = spawn_config(dir.path(), addr, url, server, store);
            out.push((HeraldProcess::spawn(&config, addr).await, dir));
        }
        out
    }

    #[tokio::test]
    async fn three_processes_deliver_each_of_100_events_exactly_once() {
        let pg = TestPostgres::start();
        let fake = FakePushService::start().await;
        let subscription = fake.subscribe("/push/alice");
        let heralds = instances(3, &pg.url(), "", "").await;
        // Ten events at a time, each sent to all three instances at once.
        for batch in 0..10 {
            let mut requests = Vec::new();
            for e in 0..10 {
                let body = event(&format!("$e{batch}-{e}"), &subscription).to_string();
                for (herald, _) in &heralds {
                    let (addr, body) = (herald.addr, body.clone());
                    requests.push(tokio::spawn(async move {
                        post(addr, "/_matrix/push/v1/notify", body).await
                    }));
                }
            }
            for request in requests {
                let (status, body) = request.await.unwrap();
                assert_eq!((status, body), (200, json!({"rejected": []})));
            }
        }
        let mut per_event: HashMap<String, usize> = HashMap::new();
        for push in fake.received("/push/alice") {
            let payload = push.payload.expect("decrypted");
            *per_event.entry(payload["event_id"].as_str().unwrap().to_owned()).or_default() += 1;
        }
        assert_eq!(per_event.len(), 100);
        assert!(per_event.values().all(|n| *n == 1), "{per_event:?}");
        for (herald, _) in heralds {
            herald.kill();
        }
    }

    #[tokio::test]
    async fn an_instance_killed_holding_a_claim_is_taken_over_once_its_lease_ends() {
        let pg = TestPostgres::start();
        let fake = FakePushService::start().await;
        let subscription = fake.subscribe("/push/bob");
        // The first push hangs (the instance is killed meanwhile); the next is accepted.
        fake.script("/push/bob", [Answer::Hang]);
        let server = "request_deadline = \"2s\"\nshutdown_grace = \"2s\"";
        let lease = Duration::from_secs(4);
        let mut heralds = instances(2, &pg.url(), server, "claim_lease = \"4s\"").await.into_iter();
        let (a, _dir_a) = heralds.next().unwrap();
        let (b, _dir_b) = heralds.next().unwrap();
        let body = event("$held", &subscription).to_string();
        let (a_addr, a_body) = (a.addr, body.clone());
        let hung =
            tokio::spawn(async move { post(a_addr, "/_matrix/push/v1/notify", a_body).await });
        let started = Instant::now();
        while fake.received("/push/bob").is_empty() {
            assert!(started.elapsed() < Duration::from_secs(5), "A never pushed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let claimed_at = Instant::now();
        a.kill();
        hung.abort();
        // The homeserver retries on B: refused (504) while A's lease holds, delivered after.
        let mut answers = Vec::new();
        loop {
            let (status, _) = post(b.addr, "/_matrix/push/v1/notify", body.clone()).await;
            answers.push(status);
            if status == 200 {
                break;
            }
            assert_eq!(status, 504, "{answers:?}");
            assert!(claimed_at.elapsed() < Duration::from_secs(20), "{answers:?}");
        }
        assert!(
            claimed_at.elapsed() >= lease - Duration::from_millis(200),
            "{:?}",
            claimed_at.elapsed()
        );
        let pushes = fake.received("/push/bob");
        assert_eq!(pushes.len(), 2, "one hung, one delivered");
        assert_eq!(pushes[1].status, Some(201));
        // And a further retry is a duplicate.
        let (status, _) = post(b.addr, "/_matrix/push/v1/notify", body).await;
        assert_eq!(status, 200);
        assert_eq!(fake.received("/push/bob").len(), 2);
        let metrics = crate::common::get_text(b.addr, "/metrics").await;
        assert!(metrics.contains("herald_store_lease_takeovers_total 1"), "{metrics}");
        assert!(metrics.contains("herald_store_claim_waits_total"), "{metrics}");
        b.kill();
    }
}
