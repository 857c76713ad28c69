//! What operators see: the metrics an idle and a busy gateway report, and the logs (no colour codes
//! in files and pipes; retried deliveries visible at INFO without pushkeys).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use herald_testkit::logs::LogCapture;
use herald_testkit::notify::message;
use herald_testkit::scripted::Step;

use crate::common::{config, free_addr, get_text, write_config_file, TestServer, APP};

/// Log events of the current thread, as JSON lines, while the guard lives.
///
/// The server's tasks log on the thread that polls them, so a test using this must run on a
/// current-thread runtime (the `#[tokio::test]` default); other tests' servers, on their own
/// threads, never show up here.
pub fn capture_logs() -> (LogCapture, tracing::subscriber::DefaultGuard) {
    LogCapture::start_json(tracing::Level::INFO)
}

/// The value of an unlabelled gauge or counter line.
fn value(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test]
async fn in_flight_counts_notify_requests_only() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&config(dir.path(), "")).await;
    // Idle: the scrape reading the gauge is not a notify request.
    assert_eq!(value(&server.metrics().await, "herald_in_flight_requests"), Some(0.0));

    server.backend.script("slow", [Step::Delay(Duration::from_secs(1), Box::new(Step::Deliver))]);
    let addr = server.addr;
    let request = tokio::spawn(async move {
        crate::common::post(addr, "/_matrix/push/v1/notify", message("$e", APP, "slow").to_string())
            .await
    });
    // Scrape until the notify shows up (it spends a second in the backend).
    let started = std::time::Instant::now();
    let mut seen = None;
    while seen != Some(1.0) && started.elapsed() < Duration::from_secs(1) {
        seen = value(&server.metrics().await, "herald_in_flight_requests");
    }
    assert_eq!(seen, Some(1.0), "one notify in flight");
    assert_eq!(request.await.unwrap().0, 200);
    assert_eq!(value(&server.metrics().await, "herald_in_flight_requests"), Some(0.0));
    server.stop().await;
}

#[tokio::test]
async fn requests_are_counted_by_route() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&config(dir.path(), "")).await;
    assert_eq!(server.notify(&message("$1", APP, "k")).await.0, 200);
    assert_eq!(server.notify(&message("$2", APP, "k")).await.0, 200);
    get_text(server.addr, "/health").await;
    get_text(server.addr, "/no/such/path").await;
    server.metrics().await;
    let m = server.metrics().await;
    for line in [
        r#"herald_http_requests_total{route="notify",status="200"} 2"#,
        r#"herald_http_requests_total{route="health",status="200"} 1"#,
        r#"herald_http_requests_total{route="other",status="404"} 1"#,
        // The first scrape; this one is counted once answered.
        r#"herald_http_requests_total{route="metrics",status="200"} 1"#,
    ] {
        assert!(m.contains(line), "{line} missing from\n{m}");
    }
    // Alerting on `status=~"5.."` sums over routes and still works.
    assert!(m.contains(r#"herald_http_requests_total{route="notify",status="503"} 0"#), "{m}");
    server.stop().await;
}

#[tokio::test]
async fn retried_delivery_is_logged_at_info_without_the_pushkey() {
    let (logs, _guard) = capture_logs();
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&config(dir.path(), "")).await;
    let pushkey = "pushkey-that-must-not-be-logged";
    server.backend.script(pushkey, [Step::Transient(None), Step::Transient(None), Step::Deliver]);
    assert_eq!(server.notify(&message("$retried", APP, pushkey)).await.0, 200);
    // A delivery that worked the first time adds nothing at INFO.
    assert_eq!(server.notify(&message("$once", APP, "k")).await.0, 200);
    server.stop().await;

    let events = logs.events("delivery needed retries");
    assert_eq!(events.len(), 1, "{}", logs.text());
    let event = &events[0];
    assert_eq!(event["level"], "INFO");
    assert_eq!(event["attempts"], 3);
    assert_eq!(event["outcome"], "delivered");
    assert_eq!(event["last_error"], "transient");
    assert!(event["elapsed_ms"].is_u64(), "{event}");
    // The device span says which app and event, and a hash of the pushkey.
    assert_eq!(event["span"]["app"], APP, "{event}");
    assert_eq!(event["span"]["event_id"], "$retried", "{event}");
    let text = logs.text();
    assert!(!text.contains(pushkey), "{text}");
    assert!(!text.contains("scripted: 503"), "upstream text stays out of the log: {text}");
}

/// The real binary's human-format log, written to a pipe, carries no ANSI escape codes.
#[tokio::test]
async fn human_logs_in_a_pipe_have_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let path = write_config_file(dir.path(), addr, "[apps.\"org.example.log\"]\nkind = \"log\"\n");
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    // Read until the server says it is serving (or the pipe closes), off the async runtime.
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stderr).lines() {
            let line = line.unwrap();
            let serving = line.contains("herald is serving");
            lines.push(line);
            if serving {
                break;
            }
        }
        lines
    });
    let lines = tokio::task::spawn_blocking(move || reader.join().unwrap()).await.unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let text = lines.join("\n");
    assert!(text.contains("herald is serving"), "{text}");
    assert!(text.contains(&addr.to_string()), "{text}");
    assert!(!text.contains('\x1b'), "escape codes in a piped log: {text:?}");
}

/// A GET on `addr`: the status and the body.
pub async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let response = client.get(format!("http://{addr}{path}").parse().unwrap()).await.unwrap();
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(bytes.to_vec()).unwrap())
}

#[tokio::test]
async fn ready_while_the_store_answers() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&config(dir.path(), "")).await;
    let (status, body) = get(server.addr, "/ready").await;
    assert_eq!(status, 200, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body, serde_json::json!({"status": "ready", "store": "ok", "apps": 2}));
    assert!(server
        .metrics()
        .await
        .contains(r#"herald_http_requests_total{route="ready",status="200"} 1"#));
    server.stop().await;
}

#[tokio::test]
async fn not_ready_when_the_store_is_closed_and_health_stays_ok() {
    use herald_server::store::sqlite::{SqliteStore, SqliteStoreOptions};
    use herald_server::store::DedupStore;
    let (logs, _guard) = capture_logs();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/herald.db", dir.path().display());
    let options = SqliteStoreOptions {
        ttl: Duration::from_secs(3600),
        max_batch: 8,
        dead_token_ttl: Duration::ZERO,
    };
    let store = std::sync::Arc::new(SqliteStore::open(&url, options).await.unwrap());
    let registry = crate::common::registry(&herald_testkit::scripted::ScriptedBackend::new());
    let server =
        herald_server::Server::bind_with_store(&config(dir.path(), ""), &registry, store.clone())
            .await
            .unwrap();
    let addr = server.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    assert_eq!(get(addr, "/ready").await.0, 200);

    store.close().await;
    let (status, body) = get(addr, "/ready").await;
    assert_eq!(status, 503, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["status"], "not_ready");
    assert_eq!(body["not_ready"], serde_json::json!(["store"]));
    assert_eq!(body["store"], "error");
    // Liveness is not readiness: the process is alive and says so.
    assert_eq!(get(addr, "/health").await, (200, r#"{"status":"ok"}"#.to_owned()));
    let warnings = logs.events("not ready: the dedup store does not answer");
    assert_eq!(warnings.len(), 1, "{}", logs.text());
    assert!(warnings[0]["error"].as_str().unwrap().contains("closed"), "{}", warnings[0]);
    let _ = stop.send(());
    running.await.unwrap().unwrap();
}

/// The value of a sample line (`name{labels} value`), exactly as written.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test]
async fn notify_latency_build_info_and_process_metrics_after_requests() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&config(dir.path(), "")).await;
    assert_eq!(server.notify(&message("$a", APP, "k")).await.0, 200);
    server.backend.script("down", std::iter::repeat_n(Step::Transient(None), 4));
    assert_eq!(server.notify(&message("$b", APP, "down")).await.0, 502);
    let (status, _) = crate::common::post(server.addr, "/_matrix/push/v1/notify", "{".into()).await;
    assert_eq!(status, 400);
    let m = server.metrics().await;
    server.stop().await;
    for (series, value) in [
        (r#"herald_notify_duration_seconds_count{status="200"}"#, 1.0),
        (r#"herald_notify_duration_seconds_count{status="502"}"#, 1.0),
        (r#"herald_notify_duration_seconds_count{status="400"}"#, 1.0),
        (r#"herald_notify_duration_seconds_count{status="503"}"#, 0.0),
        (r#"herald_notify_duration_seconds_bucket{le="+Inf",status="200"}"#, 1.0),
        (&format!(r#"herald_build_info{{version="{}"}}"#, env!("CARGO_PKG_VERSION")), 1.0),
        ("herald_in_flight_requests", 0.0),
    ] {
        assert_eq!(sample(&m, series), Some(value), "{series} in\n{m}");
    }
    // A status outside the fixed set would be `other`; no series carries a raw path or input.
    assert!(!m.contains("status=\"{\""), "{m}");
    let rss = value(&m, "process_resident_memory_bytes").expect("RSS");
    assert!(rss > 1e6, "{rss}");
    assert!(value(&m, "process_cpu_seconds_total").is_some_and(|v| v > 0.0), "{m}");
    let (open, max) = (value(&m, "process_open_fds"), value(&m, "process_max_fds"));
    assert!(
        open.zip(max).is_some_and(|(open, max)| open >= 3.0 && max >= open),
        "{open:?} {max:?}"
    );
    let started = value(&m, "process_start_time_seconds").expect("start time");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    assert!(started > 1.6e9 && started <= now.as_secs_f64() + 1.0, "{started}");
}

#[tokio::test]
async fn metrics_listen_moves_metrics_off_the_notify_port() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let mut cfg = cfg;
    cfg.server.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let registry = crate::common::registry(&herald_testkit::scripted::ScriptedBackend::new());
    let server = herald_server::Server::bind(&cfg, &registry).await.unwrap();
    let (addr, metrics_addr) = (server.local_addr(), server.metrics_addr().expect("bound"));
    assert_ne!(addr, metrics_addr);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));

    assert_eq!(
        crate::common::post(addr, "/_matrix/push/v1/notify", message("$m", APP, "k").to_string())
            .await
            .0,
        200
    );
    let (status, body) = get(addr, "/metrics").await;
    assert_eq!(status, 404, "the notify port no longer serves /metrics: {body}");
    assert!(body.contains("M_UNRECOGNIZED"), "{body}");
    // Probes stay on the notify port; the metrics port serves only /metrics.
    assert_eq!(get(addr, "/health").await.0, 200);
    assert_eq!(get(addr, "/ready").await.0, 200);
    for path in ["/health", "/ready", "/_matrix/push/v1/notify"] {
        assert_eq!(get(metrics_addr, path).await.0, 404, "{path} on the metrics port");
    }
    let (status, m) = get(metrics_addr, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(outcome(&m, "delivered"), Some(1.0), "{m}");
    assert!(m.contains(r#"herald_http_requests_total{route="metrics",status="404"} 1"#), "{m}");
    let _ = stop.send(());
    running.await.unwrap().unwrap();
    // It stopped with the server.
    assert!(tokio::net::TcpStream::connect(metrics_addr).await.is_err());
}

fn outcome(m: &str, outcome: &str) -> Option<f64> {
    sample(m, &format!(r#"herald_notifications_total{{app="{APP}",outcome="{outcome}"}}"#))
}

#[tokio::test]
async fn each_notify_request_gets_an_access_line_without_pushkeys() {
    let (logs, _guard) = capture_logs();
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&config(dir.path(), "")).await;
    let (live, dead) = ("pushkey-secret-live", "pushkey-secret-dead");
    server.backend.script(dead, [Step::Dead]);
    let body = serde_json::json!({"notification": {
    "event_id": "$access",
    "content": {"body": "message text that must not be logged"},
    "devices": [
        {"app_id": APP, "pushkey": live},
        {"app_id": APP, "pushkey": dead},
        {"app_id": "org.unknown.app", "pushkey": "pushkey-secret-unknown"},
    ]}});
    assert_eq!(server.notify(&body).await.0, 200);
    // The retry is deduplicated for the live device.
    assert_eq!(server.notify(&message("$access", APP, live)).await.0, 200);
    let (status, _) =
        crate::common::post(server.addr, "/_matrix/push/v1/notify", "[]".into()).await;
    assert_eq!(status, 400);
    server.stop().await;

    let lines = logs.events("notify answered");
    assert_eq!(lines.len(), 3, "{}", logs.text());
    let first = &lines[0];
    assert_eq!(first["level"], "INFO");
    assert_eq!(first["target"], "herald_server::access");
    assert_eq!(first["status"], 200);
    assert_eq!(first["devices"], 3);
    assert_eq!(first["delivered"], 1);
    assert_eq!(first["rejected"], 2, "the dead token and the unknown app: {first}");
    assert_eq!(first["deduplicated"], 0);
    assert_eq!(first["failed"], 0);
    assert_eq!(first["event_id"], "$access");
    assert!(first["duration_ms"].as_f64().is_some_and(|d| d > 0.0), "{first}");
    let retry = &lines[1];
    assert_eq!((retry["devices"].as_u64(), retry["deduplicated"].as_u64()), (Some(1), Some(1)));
    let malformed = &lines[2];
    assert_eq!((malformed["status"].as_u64(), malformed["devices"].as_u64()), (Some(400), Some(0)));
    let text = logs.text();
    for secret in [live, dead, "pushkey-secret-unknown", "message text"] {
        assert!(!text.contains(secret), "{secret} logged: {text}");
    }
}

#[tokio::test]
async fn failed_devices_are_counted_in_the_access_line() {
    let (logs, _guard) = capture_logs();
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&config(dir.path(), "")).await;
    server.backend.script("down", std::iter::repeat_n(Step::Transient(None), 4));
    assert_eq!(server.notify(&message("$down", APP, "down")).await.0, 502);
    server.stop().await;
    let lines = logs.events("notify answered");
    assert_eq!(lines.len(), 1, "{}", logs.text());
    assert_eq!(lines[0]["status"], 502);
    assert_eq!(lines[0]["failed"], 1);
    assert_eq!(lines[0]["delivered"], 0);
}

#[tokio::test]
async fn log_access_false_silences_the_access_log() {
    let (logs, _guard) = capture_logs();
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&config(dir.path(), "[log]\naccess = false\n")).await;
    assert_eq!(server.notify(&message("$quiet", APP, "k")).await.0, 200);
    server.stop().await;
    assert!(logs.events("notify answered").is_empty(), "{}", logs.text());
    // Logging itself is on: the server's other INFO lines are there.
    assert!(!logs.events("herald is serving").is_empty(), "{}", logs.text());
}
