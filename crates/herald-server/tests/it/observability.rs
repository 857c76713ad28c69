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
