//! Restarts, pruning and graceful shutdown (which waits for deliveries whose client hung up),
//! supervision of background tasks, and the real `herald` binary killed with SIGKILL.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_core::{Backend, DeliveryError, Device, Notification, Outcome};
use herald_server::store::sqlite::{SqliteStore, SqliteStoreOptions};
use herald_server::store::{DedupKey, DedupStore, StoreError};
use herald_testkit::notify::message;
use herald_testkit::scripted::Step;
use serde_json::json;

use crate::common::{
    config, free_addr, get_text, outcome_count, post, write_config_file, HeraldProcess, TestServer,
    APP,
};

#[tokio::test]
async fn killed_and_restarted_binary_still_deduplicates() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let config_path =
        write_config_file(dir.path(), addr, "[apps.\"org.example.log\"]\nkind = \"log\"\n");
    let body = message("$restart", "org.example.log", "k").to_string();

    let herald = HeraldProcess::spawn(&config_path, addr).await;
    assert_eq!(post(herald.addr, "/_matrix/push/v1/notify", body.clone()).await.0, 200);
    let m = get_text(herald.addr, "/metrics").await;
    assert_eq!(outcome_count(&m, "org.example.log", "delivered"), 1, "{m}");
    herald.kill();

    let herald = HeraldProcess::spawn(&config_path, addr).await;
    assert_eq!(
        post(herald.addr, "/_matrix/push/v1/notify", body).await,
        (200, json!({"rejected": []}))
    );
    let m = get_text(herald.addr, "/metrics").await;
    assert_eq!(outcome_count(&m, "org.example.log", "delivered"), 0, "{m}");
    assert_eq!(outcome_count(&m, "org.example.log", "deduplicated"), 1, "{m}");
    herald.kill();
}

#[tokio::test]
async fn bad_config_exits_non_zero_with_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[server]\nlisten = \"nowhere\"\n[apps.a]\nkind = \"log\"\n").unwrap();
    for command in ["serve", "check-config"] {
        let out = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args([command, "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("server.listen"), "{stderr}");
    }
    std::fs::write(&path, "[apps.a]\nkind = \"carrier-pigeon\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("carrier-pigeon"));
    std::fs::write(&path, "[apps.a]\nkind = \"log\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn unusable_store_fails_start() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, "file").unwrap();
    let config = config(dir.path(), "");
    let mut config = config;
    config.store.url = Some(format!("sqlite://{}/sub/herald.db", blocker.display()));
    let registry = crate::common::registry(&herald_testkit::scripted::ScriptedBackend::new());
    let err = herald_server::Server::bind(&config, &registry).await.err().expect("must fail");
    assert!(err.to_string().contains("store"), "{err}");
}

#[tokio::test]
async fn expired_entries_are_pruned_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/herald.db", dir.path().display());
    let options = SqliteStoreOptions {
        ttl: Duration::from_secs(3600),
        max_batch: 64,
        dead_token_ttl: Duration::from_secs(3600),
    };
    let store = SqliteStore::open(&url, options.clone()).await.unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let old: Vec<_> = (0..100).map(|i| DedupKey::new(&format!("$old{i}"), APP, "k")).collect();
    store.insert_at(&old, now as i64 - 7200).await.unwrap();
    store.insert_at(&[DedupKey::new("$new", APP, "k")], now as i64).await.unwrap();
    store.close().await;

    let cfg = config(dir.path(), "[store]\nttl = \"1h\"\nprune_interval = \"200ms\"\n");
    let server = TestServer::start(&cfg).await;
    // An expired entry no longer deduplicates …
    assert_eq!(server.notify(&message("$old0", APP, "k")).await.0, 200);
    assert_eq!(server.backend.deliveries_to("k"), 1);
    // … a fresh one does.
    assert_eq!(server.notify(&message("$new", APP, "k")).await.0, 200);
    assert_eq!(server.backend.deliveries_to("k"), 1);
    tokio::time::sleep(Duration::from_millis(600)).await;
    server.stop().await;

    let store = SqliteStore::open(&url, options).await.unwrap();
    // The 100 old rows are gone; "$new" and the re-delivered "$old0" remain.
    assert_eq!(store.row_count().await.unwrap(), 2);
    assert!(store.was_delivered(&DedupKey::new("$new", APP, "k")).await.unwrap());
    store.close().await;
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(&config(dir.path(), "")).await;
    server
        .backend
        .script("slow", [Step::Delay(Duration::from_millis(800), Box::new(Step::Deliver))]);
    let addr = server.addr;
    let request = tokio::spawn(async move {
        post(addr, "/_matrix/push/v1/notify", message("$slow", APP, "slow").to_string()).await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopping = server.begin_stop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // No new connections once shutdown has begun.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    assert_eq!(request.await.unwrap(), (200, json!({"rejected": []})));
    stopping.await.unwrap().unwrap();
    assert_eq!(server.backend.deliveries_to("slow"), 1);

    // And the delivery was recorded before the store closed.
    let url = format!("sqlite://{}/herald.db", dir.path().display());
    let store = SqliteStore::open(
        &url,
        SqliteStoreOptions {
            ttl: Duration::from_secs(3600),
            max_batch: 8,
            dead_token_ttl: Duration::from_secs(3600),
        },
    )
    .await
    .unwrap();
    assert!(store.was_delivered(&DedupKey::new("$slow", APP, "slow")).await.unwrap());
    store.close().await;
}

#[tokio::test]
async fn slow_header_senders_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), "");
    cfg.server.header_read_timeout = Duration::from_millis(300);
    let server = TestServer::start(&cfg).await;
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(b"POST /_matrix/push/v1/notify HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    // The server closes the connection once the header-read timeout (300ms here) passes.
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "connection still open after 5s");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    server.stop().await;
}

/// A backend that reports when a delivery has started and finishes it only when released.
#[derive(Clone, Default)]
struct Gated {
    started: Arc<tokio::sync::Notify>,
    release: Arc<tokio::sync::Notify>,
}

#[async_trait::async_trait]
impl Backend for Gated {
    async fn deliver(
        &self,
        _: &herald_core::CallContext,
        _: &Notification,
        _: &Device,
    ) -> Result<Outcome, DeliveryError> {
        self.started.notify_one();
        self.release.notified().await;
        Ok(Outcome::Delivered(herald_core::Upstream::new(200, "ok")))
    }
}

/// The value of `herald_in_flight_requests`.
async fn in_flight(addr: std::net::SocketAddr) -> f64 {
    get_text(addr, "/metrics")
        .await
        .lines()
        .find_map(|l| l.strip_prefix("herald_in_flight_requests ")?.trim().parse().ok())
        .expect("herald_in_flight_requests")
}

/// A homeserver hangs up while its notification is being delivered, then the gateway is told to
/// stop: the delivery must still be recorded (the store stays open until it is), or the
/// homeserver's retry would alert the device twice.
#[tokio::test]
async fn shutdown_waits_for_deliveries_whose_client_hung_up() {
    use tokio::io::AsyncWriteExt;
    let (logs, _guard) = crate::observability::capture_logs();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "[apps.\"com.example.gated\"]\nkind = \"gated\"\n");
    let gated = Gated::default();
    let mut registry = crate::common::registry(&herald_testkit::scripted::ScriptedBackend::new());
    let backend = gated.clone();
    registry.register("gated", move |_, _| Ok(Arc::new(backend.clone())));
    let server = herald_server::Server::bind(&cfg, &registry).await.unwrap();
    let addr = server.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut stopping = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));

    let body = message("$hung-up", "com.example.gated", "k").to_string();
    let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST /_matrix/push/v1/notify HTTP/1.1\r\nHost: herald\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    client.write_all(request.as_bytes()).await.unwrap();
    gated.started.notified().await;
    drop(client);
    // The server has seen the hang-up once the request is no longer in flight.
    let deadline = Instant::now() + Duration::from_secs(10);
    while in_flight(addr).await > 0.0 {
        assert!(Instant::now() < deadline, "the hang-up was never noticed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let _ = stop.send(());
    // Either the server says it waits for the delivery (then it may finish), or it stopped without
    // waiting: then the delivery finishes after the store closed, and the record below is missing.
    let stopped_early = loop {
        if !logs.events("waiting for deliveries in flight before closing the store").is_empty() {
            break false;
        }
        if stopping.is_finished() {
            break true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    gated.release.notify_one();
    if stopped_early {
        // Let the orphaned delivery run into the closed store.
        tokio::time::timeout(Duration::from_secs(5), async {
            while logs.lines().iter().all(|l| l["level"] != "ERROR") {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .ok();
    }
    (&mut stopping).await.unwrap().unwrap();

    let errors: Vec<_> = logs.lines().into_iter().filter(|l| l["level"] == "ERROR").collect();
    assert!(errors.is_empty(), "{errors:?}");
    let url = format!("sqlite://{}/herald.db", dir.path().display());
    let options = SqliteStoreOptions {
        ttl: Duration::from_secs(3600),
        max_batch: 8,
        dead_token_ttl: Duration::from_secs(3600),
    };
    let store = SqliteStore::open(&url, options).await.unwrap();
    let key = DedupKey::new("$hung-up", "com.example.gated", "k");
    assert!(store.was_delivered(&key).await.unwrap(), "the delivery was not recorded");
    store.close().await;
}

/// A store around SQLite whose pruning panics, or that reports a dead background task on demand.
struct Faulty {
    inner: SqliteStore,
    panic_on_prune: bool,
    fail: tokio::sync::Notify,
}

#[async_trait::async_trait]
impl DedupStore for Faulty {
    async fn was_delivered(&self, key: &DedupKey) -> Result<bool, StoreError> {
        self.inner.was_delivered(key).await
    }
    async fn record_delivered(&self, key: DedupKey) -> Result<(), StoreError> {
        self.inner.record_delivered(key).await
    }
    async fn prune_expired(&self) -> Result<u64, StoreError> {
        assert!(!self.panic_on_prune, "pruning bug");
        self.inner.prune_expired().await
    }
    async fn close(&self) {
        self.inner.close().await;
    }
    async fn failed(&self) -> String {
        self.fail.notified().await;
        "the dedup store's writer panicked: test".into()
    }
}

async fn faulty(dir: &std::path::Path, panic_on_prune: bool) -> Arc<Faulty> {
    let url = format!("sqlite://{}/herald.db", dir.display());
    let options = SqliteStoreOptions {
        ttl: Duration::from_secs(3600),
        max_batch: 8,
        dead_token_ttl: Duration::from_secs(3600),
    };
    let inner = SqliteStore::open(&url, options).await.unwrap();
    Arc::new(Faulty { inner, panic_on_prune, fail: tokio::sync::Notify::new() })
}

#[tokio::test]
async fn a_dead_pruner_stops_the_server_with_an_error() {
    let (logs, _guard) = crate::observability::capture_logs();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "[store]\nprune_interval = \"100ms\"\n");
    let registry = crate::common::registry(&herald_testkit::scripted::ScriptedBackend::new());
    let store = faulty(dir.path(), true).await;
    let server = herald_server::Server::bind_with_store(&cfg, &registry, store).await.unwrap();
    // Never told to stop: only the dead pruner ends it.
    let result = tokio::time::timeout(Duration::from_secs(10), server.run(std::future::pending()))
        .await
        .expect("the server keeps running without its pruner");
    let why = result.unwrap_err().to_string();
    assert!(why.contains("pruner panicked: pruning bug"), "{why}");
    let errors = logs.events("a background task died: stopping the server");
    assert_eq!(errors.len(), 1, "{}", logs.text());
    assert_eq!(errors[0]["level"], "ERROR");
}

#[tokio::test]
async fn a_dead_store_task_stops_the_server_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let registry = crate::common::registry(&herald_testkit::scripted::ScriptedBackend::new());
    let store = faulty(dir.path(), false).await;
    let server =
        herald_server::Server::bind_with_store(&cfg, &registry, store.clone()).await.unwrap();
    let addr = server.local_addr();
    let running = tokio::spawn(server.run(std::future::pending()));
    assert_eq!(
        post(addr, "/_matrix/push/v1/notify", message("$e", APP, "k").to_string()).await.0,
        200
    );
    store.fail.notify_one();
    let result = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the server keeps running without its store")
        .unwrap();
    assert!(result.unwrap_err().to_string().contains("writer panicked"));
    // It stopped serving.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[test]
fn version_names_the_backends_and_a_missing_backend_names_its_feature() {
    let out = Command::new(env!("CARGO_BIN_EXE_herald")).arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(version.contains("(backends: ") && version.contains("log"), "{version}");

    // A backend Herald has a crate for, but not compiled into this binary: the error says which
    // feature builds it in. With every backend compiled in, an unknown kind lists the known ones.
    let missing = herald_server::registry::KNOWN_KINDS
        .iter()
        .find(|(kind, _)| !version.contains(kind))
        .map(|(kind, _)| *kind);
    let features = [
        ("webpush", cfg!(feature = "webpush")),
        ("apns", cfg!(feature = "apns")),
        ("fcm", cfg!(feature = "fcm")),
        ("email", cfg!(feature = "email")),
    ];
    for (kind, compiled) in features {
        assert_eq!(version.contains(kind), compiled, "{kind}: {version}");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.toml");
    let kind = missing.unwrap_or("gotify");
    std::fs::write(&path, format!("[apps.a]\nkind = \"{kind}\"\n")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    match missing {
        Some(kind) => assert!(stderr.contains(&format!("`{kind}` feature")), "{stderr}"),
        None => assert!(stderr.contains("gotify") && stderr.contains("webpush"), "{stderr}"),
    }
}

/// A backend that records the contract's lifecycle calls and registers a metric of its own.
struct Lifecycle {
    warmed: Arc<tokio::sync::Notify>,
    closed: Arc<std::sync::atomic::AtomicBool>,
    sent: prometheus_client::metrics::counter::Counter,
}

#[async_trait::async_trait]
impl Backend for Lifecycle {
    async fn deliver(
        &self,
        call: &herald_core::CallContext,
        _: &Notification,
        _: &Device,
    ) -> Result<Outcome, DeliveryError> {
        assert!(call.time_left() > Duration::ZERO && call.attempt() == 1);
        self.sent.inc();
        Ok(Outcome::Delivered(herald_core::Upstream::new(200, "ok")))
    }

    async fn warm_up(&self) -> Result<(), DeliveryError> {
        self.warmed.notify_one();
        Ok(())
    }

    async fn close(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test]
async fn backends_are_warmed_up_closed_after_the_drain_and_export_their_own_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let warmed = Arc::new(tokio::sync::Notify::new());
    let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut registry = crate::common::registry(&herald_testkit::scripted::ScriptedBackend::new());
    let (w, c) = (warmed.clone(), closed.clone());
    registry.register("lifecycle", move |app, _| {
        let sent = prometheus_client::metrics::counter::Counter::default();
        app.metrics.register("lifecycle_sent", "Messages the test backend sent", sent.clone());
        Ok(Arc::new(Lifecycle { warmed: w.clone(), closed: c.clone(), sent }))
    });
    let cfg = config(dir.path(), "[apps.\"org.example.life\"]\nkind = \"lifecycle\"\n");
    let server = herald_server::Server::bind(&cfg, &registry).await.unwrap();
    let addr = server.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    tokio::time::timeout(Duration::from_secs(5), warmed.notified()).await.expect("warmed up");
    let body = message("$life", "org.example.life", "k").to_string();
    assert_eq!(post(addr, "/_matrix/push/v1/notify", body).await.0, 200);
    let metrics = get_text(addr, "/metrics").await;
    assert!(
        metrics.contains(r#"herald_lifecycle_sent_total{app="org.example.life"} 1"#),
        "{metrics}"
    );
    assert!(!closed.load(std::sync::atomic::Ordering::SeqCst), "closed while serving");
    let _ = stop.send(());
    running.await.unwrap().unwrap();
    assert!(closed.load(std::sync::atomic::Ordering::SeqCst), "close() was not called");
}
