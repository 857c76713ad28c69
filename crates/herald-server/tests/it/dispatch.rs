//! Real-socket tests of the data path with a scripted backend: routing, outcome classes, retries,
//! deadlines, deduplication, the per-app concurrency cap, and a store that fails under the server.

use std::time::{Duration, Instant};

use herald_testkit::notify::{badge, message, message_to};
use herald_testkit::scripted::Step;
use serde_json::json;

use crate::common::{config, outcome_count, TestServer, APP};

async fn server() -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&config(dir.path(), "")).await;
    (server, dir)
}

#[tokio::test]
async fn unknown_app_is_rejected() {
    let (s, _dir) = server().await;
    let (status, body) = s.notify(&message("$e", "org.nobody.knows", "k")).await;
    assert_eq!((status, body), (200, json!({"rejected": ["k"]})));
    s.stop().await;
}

#[tokio::test]
async fn dead_token_is_rejected() {
    let (s, _dir) = server().await;
    s.backend.script("dead", [Step::Dead]);
    let (status, body) = s.notify(&message("$e", APP, "dead")).await;
    assert_eq!((status, body), (200, json!({"rejected": ["dead"]})));
    s.stop().await;
}

#[tokio::test]
async fn transient_is_retried_then_5xx_inside_the_deadline() {
    let (s, _dir) = server().await;
    s.backend.script("flaky", vec![Step::Transient(None); 10]);
    let started = Instant::now();
    let (status, body) = s.notify(&message("$e", APP, "flaky")).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["errcode"], "M_UNKNOWN");
    assert_eq!(s.backend.attempts_to("flaky"), 4, "max_attempts defaults to 4");
    assert!(started.elapsed() < Duration::from_secs(3), "answered inside the 3s deadline");
    // The homeserver's retry succeeds once the upstream recovers.
    s.backend.script("ok-later", [Step::Transient(None), Step::Deliver]);
    let (status, _) = s.notify(&message("$e2", APP, "ok-later")).await;
    assert_eq!(status, 200);
    s.stop().await;
}

#[tokio::test]
async fn retry_after_is_honoured_when_it_fits() {
    let (s, _dir) = server().await;
    s.backend.script("k", [Step::Transient(Some(Duration::from_millis(600))), Step::Deliver]);
    let started = Instant::now();
    let (status, _) = s.notify(&message("$e", APP, "k")).await;
    assert_eq!(status, 200);
    assert!(started.elapsed() >= Duration::from_millis(600), "waited for Retry-After");
    assert_eq!(s.backend.deliveries_to("k"), 1);

    // A Retry-After longer than the deadline: answer 5xx at once, let the homeserver retry.
    s.backend.script("slow", [Step::Transient(Some(Duration::from_secs(60)))]);
    let started = Instant::now();
    let (status, _) = s.notify(&message("$e2", APP, "slow")).await;
    assert_eq!(status, 502);
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(s.backend.attempts_to("slow"), 1);
    s.stop().await;
}

#[tokio::test]
async fn credentials_refused_is_5xx_without_retry() {
    let (s, _dir) = server().await;
    s.backend.script("k", [Step::CredentialsRefused]);
    let (status, body) = s.notify(&message("$e", APP, "k")).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(s.backend.attempts_to("k"), 1);
    s.stop().await;
}

#[tokio::test]
async fn message_refused_is_200_not_rejected() {
    let (s, _dir) = server().await;
    s.backend.script("k", [Step::MessageRefused]);
    let (status, body) = s.notify(&message("$e", APP, "k")).await;
    assert_eq!((status, body), (200, json!({"rejected": []})));
    assert_eq!(s.backend.attempts_to("k"), 1);
    s.stop().await;
}

#[tokio::test]
async fn deadline_gives_504_in_time() {
    let (s, _dir) = server().await;
    s.backend.script("hang", [Step::Delay(Duration::from_secs(30), Box::new(Step::Deliver))]);
    let started = Instant::now();
    let (status, _) = s.notify(&message("$e", APP, "hang")).await;
    assert_eq!(status, 504);
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_secs(3) && elapsed < Duration::from_secs(5), "{elapsed:?}");
    s.stop().await;
}

#[tokio::test]
async fn retry_delivers_only_to_devices_that_missed_it() {
    let (s, _dir) = server().await;
    s.backend.script("flaky", vec![Step::Transient(None); 4]);
    let body = message_to("$e", &[(APP, "good"), (APP, "flaky")]);
    let (status, _) = s.notify(&body).await;
    assert_eq!(status, 502);
    assert_eq!(s.backend.deliveries_to("good"), 1);
    assert_eq!(s.backend.deliveries_to("flaky"), 0);
    // The homeserver retries the same event.
    let (status, body) = s.notify(&body).await;
    assert_eq!((status, body), (200, json!({"rejected": []})));
    assert_eq!(s.backend.deliveries_to("good"), 1, "not alerted twice");
    assert_eq!(s.backend.attempts_to("good"), 1);
    assert_eq!(s.backend.deliveries_to("flaky"), 1);
    s.stop().await;
}

#[tokio::test]
async fn same_event_twice_delivers_once() {
    let (s, _dir) = server().await;
    let body = message("$same", APP, "k");
    assert_eq!(s.notify(&body).await.0, 200);
    assert_eq!(s.notify(&body).await.0, 200);
    assert_eq!(s.backend.deliveries_to("k"), 1);
    assert_eq!(s.backend.attempts_to("k"), 1);
    // Same event to another device of the same user is a different delivery.
    assert_eq!(s.notify(&message("$same", APP, "k2")).await.0, 200);
    assert_eq!(s.backend.deliveries_to("k2"), 1);
    let metrics = s.metrics().await;
    assert_eq!(outcome_count(&metrics, APP, "deduplicated"), 1);
    s.stop().await;
}

#[tokio::test]
async fn same_event_concurrently_delivers_once() {
    let (s, _dir) = server().await;
    s.backend.script("k", [Step::Delay(Duration::from_millis(400), Box::new(Step::Deliver))]);
    let body = message("$concurrent", APP, "k");
    let (a, b, c) = tokio::join!(s.notify(&body), s.notify(&body), s.notify(&body));
    assert_eq!([a.0, b.0, c.0], [200, 200, 200]);
    assert_eq!(s.backend.attempts_to("k"), 1, "the others waited for the first");
    s.stop().await;
}

#[tokio::test]
async fn concurrent_duplicate_retries_after_owner_fails() {
    let (s, _dir) = server().await;
    // The first attempt fails after a while (all its retries too); the waiting duplicate then
    // tries itself and delivers.
    s.backend.script(
        "k",
        [
            Step::Delay(Duration::from_millis(300), Box::new(Step::CredentialsRefused)),
            Step::Deliver,
        ],
    );
    let body = message("$e", APP, "k");
    let (a, b) = tokio::join!(s.notify(&body), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        s.notify(&body).await
    });
    assert_eq!(a.0, 502);
    assert_eq!(b.0, 200);
    assert_eq!(s.backend.deliveries_to("k"), 1);
    s.stop().await;
}

#[tokio::test]
async fn badge_only_updates_are_never_deduplicated() {
    let (s, _dir) = server().await;
    let body = badge(APP, "k", 0);
    assert_eq!(s.notify(&body).await, (200, json!({"rejected": []})));
    assert_eq!(s.notify(&body).await, (200, json!({"rejected": []})));
    assert_eq!(s.backend.deliveries_to("k"), 2);
    s.stop().await;
}

#[tokio::test]
async fn metrics_show_outcomes() {
    let (s, _dir) = server().await;
    s.backend.script("dead", [Step::Dead]);
    s.backend.script("refused", [Step::MessageRefused]);
    s.backend.script("flaky", vec![Step::Transient(None); 4]);
    s.notify(&message("$1", APP, "ok")).await;
    s.notify(&message("$1", APP, "ok")).await;
    s.notify(&message("$2", APP, "dead")).await;
    s.notify(&message("$3", APP, "refused")).await;
    s.notify(&message("$4", APP, "flaky")).await;
    s.notify(&message("$5", "org.unknown", "x")).await;
    let m = s.metrics().await;
    assert_eq!(outcome_count(&m, APP, "delivered"), 1, "{m}");
    assert_eq!(outcome_count(&m, APP, "deduplicated"), 1);
    assert_eq!(outcome_count(&m, APP, "rejected"), 1);
    assert_eq!(outcome_count(&m, APP, "failed_message_refused"), 1);
    assert_eq!(outcome_count(&m, APP, "failed_transient"), 1);
    assert_eq!(outcome_count(&m, "_unknown", "rejected"), 1);
    assert!(m.contains(r#"herald_http_requests_total{route="notify",status="200"} 5"#), "{m}");
    assert!(m.contains(r#"herald_http_requests_total{route="notify",status="502"} 1"#), "{m}");
    assert!(m.contains(r#"herald_retries_total{app="com.example.app"} 3"#), "{m}");
    assert!(m.contains("herald_upstream_duration_seconds_bucket"), "{m}");
    assert!(m.contains("herald_store_duration_seconds_count{op=\"lookup\"}"), "{m}");
    assert!(m.contains("herald_in_flight_requests"), "{m}");
    s.stop().await;
}

/// A backend that counts how many calls are inside it at once.
#[derive(Default)]
struct Concurrency {
    now: std::sync::atomic::AtomicUsize,
    max: std::sync::atomic::AtomicUsize,
    calls: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl herald_core::Backend for Concurrency {
    async fn deliver(
        &self,
        _: &herald_core::CallContext,
        _: &herald_core::Notification,
        _: &herald_core::Device,
    ) -> Result<herald_core::Outcome, herald_core::DeliveryError> {
        use std::sync::atomic::Ordering::SeqCst;
        let inside = self.now.fetch_add(1, SeqCst) + 1;
        self.max.fetch_max(inside, SeqCst);
        // An upstream that takes a while, so calls overlap unless something holds them back.
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.now.fetch_sub(1, SeqCst);
        self.calls.fetch_add(1, SeqCst);
        Ok(herald_core::Outcome::Delivered(herald_core::Upstream::new(200, "ok")))
    }
}

#[tokio::test]
async fn per_app_max_concurrency_caps_upstream_calls() {
    use std::sync::atomic::Ordering::SeqCst;
    use std::sync::Arc;
    const CAPPED: &str = "com.example.capped";
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &format!("[apps.\"{CAPPED}\"]\nkind = \"concurrency\"\nmax_concurrency = 3\n"),
    );
    let backend = Arc::new(Concurrency::default());
    let mut registry = crate::common::registry(&herald_testkit::scripted::ScriptedBackend::new());
    let shared = backend.clone();
    registry.register("concurrency", move |_, _| Ok(shared.clone()));
    let server = herald_server::Server::bind(&cfg, &registry).await.unwrap();
    let addr = server.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));

    // Four requests of six devices each, all at once: 24 calls that could all overlap.
    let requests = (0..4).map(|r| {
        let devices: Vec<(String, String)> =
            (0..6).map(|d| (CAPPED.to_owned(), format!("k{r}-{d}"))).collect();
        let devices: Vec<(&str, &str)> =
            devices.iter().map(|(a, k)| (a.as_str(), k.as_str())).collect();
        let body = message_to(&format!("$cap{r}"), &devices).to_string();
        crate::common::post(addr, "/_matrix/push/v1/notify", body)
    });
    for (status, body) in futures_util::future::join_all(requests).await {
        assert_eq!((status, body), (200, json!({"rejected": []})));
    }
    assert_eq!(backend.calls.load(SeqCst), 24);
    assert_eq!(
        backend.max.load(SeqCst),
        3,
        "at most max_concurrency calls at once, and the cap is reached"
    );
    let _ = stop.send(());
    running.await.unwrap().unwrap();
}

/// A second connection to a running server's SQLite store, to break it for real.
async fn store_connection(dir: &std::path::Path) -> sqlx::SqliteConnection {
    use sqlx::Connection;
    sqlx::SqliteConnection::connect(&format!("sqlite://{}/herald.db", dir.display())).await.unwrap()
}

#[tokio::test]
async fn store_unavailable_is_503_and_recovers() {
    let (s, dir) = server().await;
    assert_eq!(s.notify(&message("$before", APP, "k")).await.0, 200);
    // The table disappears under the running server: every lookup now fails.
    let mut db = store_connection(dir.path()).await;
    sqlx::query("ALTER TABLE delivered RENAME TO delivered_away").execute(&mut db).await.unwrap();

    let (status, body) = s.notify(&message("$during", APP, "k")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["errcode"], "M_UNKNOWN");
    assert_eq!(s.backend.attempts_to("k"), 1, "nothing is sent when dedup cannot be checked");
    // Badge updates are never deduplicated, so they do not need the store.
    assert_eq!(s.notify(&badge(APP, "k", 1)).await.0, 200);

    sqlx::query("ALTER TABLE delivered_away RENAME TO delivered").execute(&mut db).await.unwrap();
    assert_eq!(s.notify(&message("$during", APP, "k")).await, (200, json!({"rejected": []})));
    let m = s.metrics().await;
    assert_eq!(outcome_count(&m, APP, "failed_store"), 1, "{m}");
    assert!(m.contains(r#"herald_http_requests_total{route="notify",status="503"} 1"#), "{m}");
    s.stop().await;
}

#[tokio::test]
async fn delivered_but_not_recorded_is_200_with_an_error_log() {
    let (logs, _guard) = crate::observability::capture_logs();
    let dir = tempfile::tempdir().unwrap();
    // The record is retried until shortly before the claim's lease ends: keep that short.
    let s = TestServer::start(&config(dir.path(), "[store]\nclaim_lease = \"4s\"")).await;
    // Every write to the store now fails (as on a full disk); lookups still work.
    let mut db = store_connection(dir.path()).await;
    sqlx::query(
        "CREATE TRIGGER refuse_writes BEFORE INSERT ON delivered \
         BEGIN SELECT RAISE(ABORT, 'database or disk is full (test)'); END",
    )
    .execute(&mut db)
    .await
    .unwrap();

    // The user got the notification: the homeserver must not retry it.
    let (status, body) = s.notify(&message("$unrecorded", APP, "k")).await;
    assert_eq!((status, body), (200, json!({"rejected": []})));
    assert_eq!(s.backend.deliveries_to("k"), 1);
    s.stop().await;

    let errors: Vec<_> = logs
        .lines()
        .into_iter()
        .filter(|l| l["level"] == "ERROR" && l["message"].as_str().unwrap().contains("record"))
        .collect();
    assert!(!errors.is_empty(), "no ERROR about the failed record in\n{}", logs.text());
    assert!(errors.iter().any(|e| e["span"]["event_id"] == "$unrecorded"), "{errors:?}");
}
