//! Resource bounds (issue 7 §2): devices in flight per request and in total, the connection cap
//! with idle-first eviction, the raised open-files limit, and accept errors that neither spin nor
//! flood the log. Real sockets on 127.0.0.1; the file-limit tests run the real binary.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use herald_core::{Backend, DeliveryError, Device, Notification, Outcome};
use herald_server::{BackendRegistry, Config, Server};
use herald_testkit::notify::{message, message_to};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::common::{free_addr, get_text, outcome_count, post, write_config_file};

const APP: &str = "com.example.counted";

/// A backend that counts the calls in progress (and the most ever at once) and every delivery
/// per pushkey. Pushkeys starting with `hang` never answer (the deadline ends them).
#[derive(Clone)]
struct Counting {
    delay: Duration,
    now: Arc<watch::Sender<usize>>,
    max: Arc<AtomicUsize>,
    delivered: Arc<Mutex<HashMap<String, usize>>>,
}

impl Counting {
    fn new(delay: Duration) -> Self {
        Counting {
            delay,
            now: Arc::new(watch::channel(0).0),
            max: Arc::default(),
            delivered: Arc::default(),
        }
    }

    fn max(&self) -> usize {
        self.max.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` calls are in progress at once.
    async fn in_progress(&self, n: usize) {
        let mut rx = self.now.subscribe();
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|now| *now >= n))
            .await
            .expect("calls in progress")
            .unwrap();
    }

    fn deliveries(&self) -> HashMap<String, usize> {
        self.delivered.lock().unwrap().clone()
    }
}

struct InProgress(Arc<watch::Sender<usize>>);

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

#[async_trait]
impl Backend for Counting {
    async fn deliver(
        &self,
        _call: &herald_core::CallContext,
        _notification: &Notification,
        device: &Device,
    ) -> Result<Outcome, DeliveryError> {
        let mut now = 0;
        self.now.send_modify(|n| {
            *n += 1;
            now = *n;
        });
        let _in_progress = InProgress(self.now.clone());
        self.max.fetch_max(now, Ordering::SeqCst);
        if device.pushkey.starts_with("hang") {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(self.delay).await;
        *self.delivered.lock().unwrap().entry(device.pushkey.clone()).or_default() += 1;
        Ok(Outcome::Delivered(herald_core::Upstream::new(200, "ok")))
    }
}

fn config(dir: &std::path::Path, server: &str, delivery: &str) -> Config {
    let deadline =
        if server.contains("request_deadline") { "" } else { r#"request_deadline = "3s""# };
    let text = format!(
        r#"
        data_dir = "{dir}"
        [server]
        listen = "127.0.0.1:0"
        {deadline}
        {server}
        [delivery]
        initial_backoff = "20ms"
        max_backoff = "100ms"
        {delivery}
        [apps."{APP}"]
        kind = "counting"
        "#,
        dir = dir.display()
    );
    Config::from_toml(&text, std::iter::empty(), dir.to_path_buf()).expect("test config")
}

struct Running {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), herald_server::RunError>>,
}

impl Running {
    async fn start(config: &Config, backend: &Counting) -> Running {
        let mut registry = BackendRegistry::compiled();
        let backend = backend.clone();
        registry.register("counting", move |_, _| Ok(Arc::new(backend.clone())));
        let server = Server::bind(config, &registry).await.expect("server starts");
        let addr = server.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        Running { addr, stop: Some(stop), task }
    }

    async fn notify(&self, body: &Value) -> (u16, Value) {
        post(self.addr, "/_matrix/push/v1/notify", body.to_string()).await
    }

    async fn stop(mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        self.task.await.unwrap().unwrap();
    }
}

fn devices(prefix: &str, n: usize) -> Vec<(String, String)> {
    (0..n).map(|i| (APP.to_owned(), format!("{prefix}{i}"))).collect()
}

fn body(event_id: &str, devices: &[(String, String)]) -> Value {
    let refs: Vec<(&str, &str)> = devices.iter().map(|(a, k)| (a.as_str(), k.as_str())).collect();
    message_to(event_id, &refs)
}

fn assert_each_delivered_once(backend: &Counting, devices: &[(String, String)]) {
    let delivered = backend.deliveries();
    for (_, pushkey) in devices {
        assert_eq!(delivered.get(pushkey), Some(&1), "{pushkey} delivered exactly once");
    }
}

#[tokio::test]
async fn one_request_runs_a_bounded_number_of_devices_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Counting::new(Duration::from_millis(10));
    let config = config(dir.path(), "", "max_in_flight_devices_per_request = 5");
    let s = Running::start(&config, &backend).await;
    let devices = devices("k", 100);
    let (status, answer) = s.notify(&body("$big", &devices)).await;
    assert_eq!((status, answer), (200, json!({"rejected": []})));
    assert_eq!(backend.max(), 5, "at most 5 devices of one request at once, and 5 used");
    assert_each_delivered_once(&backend, &devices);
    s.stop().await;
}

#[tokio::test]
async fn all_requests_share_the_global_budget() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Counting::new(Duration::from_millis(10));
    let config = config(dir.path(), "", "max_in_flight_devices = 8");
    let s = Running::start(&config, &backend).await;
    let a = devices("a", 60);
    let b = devices("b", 60);
    let (body_a, body_b) = (body("$a", &a), body("$b", &b));
    let (ra, rb) = tokio::join!(s.notify(&body_a), s.notify(&body_b));
    assert_eq!(ra.0, 200, "{:?}", ra.1);
    assert_eq!(rb.0, 200, "{:?}", rb.1);
    assert_eq!(backend.max(), 8, "two big requests together never exceed the budget");
    assert_each_delivered_once(&backend, &a);
    assert_each_delivered_once(&backend, &b);
    s.stop().await;
}

#[tokio::test]
async fn rejected_pushkeys_keep_request_order_and_come_once() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Counting::new(Duration::ZERO);
    let config = config(dir.path(), "", "max_in_flight_devices_per_request = 2");
    let s = Running::start(&config, &backend).await;
    // Unknown app_ids are rejected at once, known devices finish later, two at a time.
    let devices = [
        ("org.unknown", "z"),
        (APP, "ok1"),
        ("org.unknown", "a"),
        ("org.unknown", "z"),
        (APP, "ok2"),
        ("org.unknown", "m"),
    ];
    let (status, answer) = s.notify(&message_to("$r", &devices)).await;
    assert_eq!((status, answer), (200, json!({"rejected": ["z", "a", "m"]})));
    s.stop().await;
}

#[tokio::test]
async fn a_request_without_room_before_its_deadline_gets_503() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Counting::new(Duration::ZERO);
    let config = config(dir.path(), r#"request_deadline = "1s""#, "max_in_flight_devices = 2");
    let s = Running::start(&config, &backend).await;

    // Two devices hold the whole budget until the deadline; four wait for room in vain.
    let started = Instant::now();
    let (status, answer) = s.notify(&body("$busy", &devices("hang", 6))).await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["errcode"], "M_UNKNOWN");
    assert!(started.elapsed() < Duration::from_secs(2), "answered at the deadline");
    let metrics = get_text(s.addr, "/metrics").await;
    assert_eq!(outcome_count(&metrics, APP, "failed_overloaded"), 4, "{metrics}");
    assert_eq!(outcome_count(&metrics, APP, "failed_deadline"), 2, "{metrics}");

    // A device that finds the budget full waits for room inside its own deadline: room freed
    // by another request's deadline comes in time, and it is delivered.
    let hold = tokio::spawn({
        let addr = s.addr;
        let body = body("$hold", &devices("hang-again", 2)).to_string();
        async move { post(addr, "/_matrix/push/v1/notify", body).await }
    });
    backend.in_progress(2).await;
    // Half-way through the holder's deadline: the room it frees comes with half a second left.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let (status, _) = s.notify(&message("$patient", APP, "patient")).await;
    assert_eq!(status, 200);
    assert!(started.elapsed() > Duration::from_millis(300), "it waited for room");
    assert_eq!(hold.await.unwrap().0, 504);
    assert_eq!(backend.deliveries().get("patient"), Some(&1));
    s.stop().await;
}

/// A raw keep-alive HTTP/1.1 client connection.
struct Raw(TcpStream);

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        Raw(TcpStream::connect(addr).await.unwrap())
    }

    /// Sends a request and reads the answer; `None` if the server closed the connection.
    async fn request(&mut self, method: &str, path: &str, body: &str) -> Option<u16> {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: herald\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        self.0.write_all(head.as_bytes()).await.ok()?;
        self.0.write_all(body.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        loop {
            let mut chunk = [0u8; 4096];
            let n = self.0.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf);
            let Some(end) = text.find("\r\n\r\n") else { continue };
            let length: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase().strip_prefix("content-length: ").map(str::to_owned)
                })
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return text.get(9..12).and_then(|s| s.parse().ok());
            }
        }
    }

    /// True if the server closes the connection within `within` (EOF or reset).
    async fn closed_within(&mut self, within: Duration) -> bool {
        let mut byte = [0u8; 1];
        match tokio::time::timeout(within, self.0.read(&mut byte)).await {
            Ok(Ok(0)) | Ok(Err(_)) => true,
            Ok(Ok(_)) | Err(_) => false,
        }
    }
}

fn notify_body(event_id: &str, pushkey: &str) -> String {
    message(event_id, APP, pushkey).to_string()
}

const NOTIFY: &str = "/_matrix/push/v1/notify";

#[tokio::test]
async fn idle_keep_alive_connections_make_room_for_a_new_client() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Counting::new(Duration::ZERO);
    let s = Running::start(&config(dir.path(), "max_connections = 3", ""), &backend).await;
    let mut idle = Vec::new();
    for i in 0..3 {
        let mut c = Raw::connect(s.addr).await;
        assert_eq!(
            c.request("POST", NOTIFY, &notify_body(&format!("$idle{i}"), "k")).await,
            Some(200)
        );
        idle.push(c);
    }
    // At the cap, every connection idle: a new client is served at once...
    let started = Instant::now();
    let mut newcomer = Raw::connect(s.addr).await;
    assert_eq!(newcomer.request("POST", NOTIFY, &notify_body("$new", "k")).await, Some(200));
    assert!(started.elapsed() < Duration::from_secs(1));
    // ...because the connection idle longest was closed; the others still work.
    assert!(idle[0].closed_within(Duration::from_secs(2)).await, "oldest idle connection closed");
    assert_eq!(idle[2].request("GET", "/health", "").await, Some(200));
    assert_eq!(newcomer.request("GET", "/health", "").await, Some(200));
    let mut scrape = Raw::connect(s.addr).await; // closes idle[1], idle longest now
    assert_eq!(scrape.request("GET", "/health", "").await, Some(200));
    assert!(idle[1].closed_within(Duration::from_secs(2)).await);
    s.stop().await;
}

#[tokio::test]
async fn silent_connections_do_not_lock_out_a_new_client() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Counting::new(Duration::ZERO);
    let s = Running::start(&config(dir.path(), "max_connections = 3", ""), &backend).await;
    // Connected, never sent a byte (within header_read_timeout, 10 s).
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(Raw::connect(s.addr).await);
    }
    let mut served = Vec::new();
    for i in 0..3 {
        let started = Instant::now();
        let mut c = Raw::connect(s.addr).await;
        assert_eq!(
            c.request("POST", NOTIFY, &notify_body(&format!("$n{i}"), "k")).await,
            Some(200)
        );
        assert!(started.elapsed() < Duration::from_secs(1));
        served.push(c); // kept open: the next newcomer must close a silent one, idle longer
    }
    for c in &mut silent {
        assert!(c.closed_within(Duration::from_secs(2)).await, "silent connection closed");
    }
    s.stop().await;
}

#[tokio::test]
async fn with_every_connection_busy_a_new_client_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Counting::new(Duration::ZERO);
    let config = config(dir.path(), "max_connections = 2\nrequest_deadline = \"2s\"", "");
    let s = Running::start(&config, &backend).await;
    let mut busy = Vec::new();
    for i in 0..2 {
        let mut c = Raw::connect(s.addr).await;
        busy.push(tokio::spawn(async move {
            let status = c.request("POST", NOTIFY, &notify_body(&format!("$b{i}"), "hang")).await;
            (status, c)
        }));
    }
    backend.in_progress(2).await;
    // Refused quickly (closed), not left waiting in the accept queue until a slot frees.
    let started = Instant::now();
    let mut refused = Raw::connect(s.addr).await;
    let answer = tokio::time::timeout(
        Duration::from_secs(1),
        refused.request("POST", NOTIFY, &notify_body("$refused", "k")),
    )
    .await
    .expect("not left hanging");
    assert_eq!(answer, None, "closed without an answer");
    assert!(started.elapsed() < Duration::from_secs(1));
    // The busy ones finish (504 at their deadline) and the gateway serves new clients again.
    for task in busy {
        let (status, _) = task.await.unwrap();
        assert_eq!(status, Some(504));
    }
    let metrics = get_text(s.addr, "/metrics").await;
    assert!(
        metrics.contains(r#"herald_connections_closed_total{reason="refused"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("herald_connections_max 2"), "{metrics}");
    assert_eq!(backend.deliveries().get("k"), None, "the refused request did nothing");
    s.stop().await;
}

/// The text of a log line without terminal colour codes.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ parameters final-byte
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The real binary, started through bash with extra `ulimit` commands, stderr captured.
struct Process {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Process {
    fn spawn(ulimit: &str, config: &std::path::Path) -> Process {
        let mut child = Command::new("bash")
            .arg("-c")
            .arg(format!("{ulimit}; exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_herald"))
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn herald");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Process { child, lines }
    }

    /// Waits for a log line containing `needle`.
    fn wait_for_line(&self, needle: &str, within: Duration) -> String {
        let until = Instant::now() + within;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if strip_ansi(&line).contains(needle) => return strip_ansi(&line),
                Ok(_) => {}
                Err(e) => panic!("no log line with {needle:?}: {e}"),
            }
        }
    }

    /// Log lines containing `needle` that arrive within `window`.
    fn count_lines(&self, needle: &str, window: Duration) -> usize {
        let until = Instant::now() + window;
        let mut count = 0;
        while let Ok(line) =
            self.lines.recv_timeout(until.saturating_duration_since(Instant::now()))
        {
            count += usize::from(line.contains(needle));
        }
        count
    }

    /// User + system CPU time so far.
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wait_until_serving(addr: SocketAddr) {
    let started = Instant::now();
    loop {
        if let Ok(mut c) = TcpStream::connect(addr).await.map(Raw) {
            if c.request("GET", "/health", "").await == Some(200) {
                return;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(20), "herald did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn metric(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("{name} missing from\n{metrics}"))
        .trim()
        .parse()
        .unwrap()
}

const LOG_APP: &str = "[apps.\"org.example.log\"]\nkind = \"log\"\n";

#[tokio::test]
async fn a_low_soft_file_limit_is_raised_to_the_hard_limit() {
    let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
    let low = 256.min(hard / 2);
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let config = write_config_file(dir.path(), addr, LOG_APP);
    let herald = Process::spawn(&format!("ulimit -Sn {low}"), &config);
    let line = herald.wait_for_line("open-files limit", Duration::from_secs(20));
    assert!(
        line.contains(&format!("soft={hard}")) && line.contains(&format!("before={low}")),
        "{line}"
    );
    wait_until_serving(addr).await;
    let metrics = get_text(addr, "/metrics").await;
    assert_eq!(metric(&metrics, "herald_open_files_limit"), hard);
    let expected = herald_server::connections::default_max_connections(hard) as u64;
    assert_eq!(metric(&metrics, "herald_connections_max"), expected);
}

#[tokio::test]
async fn out_of_file_descriptors_neither_spins_nor_floods_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    // A cap far above what the descriptors allow, so accept itself fails (EMFILE).
    let apps = format!("max_connections = 10000\n{LOG_APP}");
    let config = write_config_file(dir.path(), addr, &apps);
    let herald = Process::spawn("ulimit -n 64", &config);
    wait_until_serving(addr).await;
    // Connections that keep a request in progress: a body that never completes.
    let mut clients = Vec::new();
    for _ in 0..80 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(
            b"POST /_matrix/push/v1/notify HTTP/1.1\r\nhost: h\r\ncontent-length: 100\r\n\r\n{",
        )
        .await
        .unwrap();
        clients.push(c);
    }
    herald.wait_for_line("accept failed", Duration::from_secs(10));
    let cpu_before = herald.cpu();
    let warnings = herald.count_lines("accept failed", Duration::from_secs(3));
    let cpu = herald.cpu() - cpu_before;
    assert!(warnings <= 4, "{warnings} accept warnings in 3 s: at most one a second");
    assert!(cpu < Duration::from_millis(600), "{cpu:?} of CPU in 3 s while out of descriptors");
    // Not starved either: once descriptors free up, new clients are served within the backoff.
    drop(clients);
    let started = Instant::now();
    let (status, _) =
        post(addr, NOTIFY, message("$after", "org.example.log", "k").to_string()).await;
    assert_eq!(status, 200);
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
}
