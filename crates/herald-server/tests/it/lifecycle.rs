//! Restarts, pruning and graceful shutdown, including the real `herald` binary killed with SIGKILL.

use std::process::Command;
use std::time::{Duration, Instant};

use herald_server::store::sqlite::{SqliteStore, SqliteStoreOptions};
use herald_server::store::{DedupKey, DedupStore};
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
    let options = SqliteStoreOptions { ttl: Duration::from_secs(3600), max_batch: 64 };
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
    stopping.await.unwrap();
    assert_eq!(server.backend.deliveries_to("slow"), 1);

    // And the delivery was recorded before the store closed.
    let url = format!("sqlite://{}/herald.db", dir.path().display());
    let store = SqliteStore::open(
        &url,
        SqliteStoreOptions { ttl: Duration::from_secs(3600), max_batch: 8 },
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
