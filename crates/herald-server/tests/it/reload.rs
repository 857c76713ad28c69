//! Reloading the configuration while serving: in-process (which backend served what, and when the
//! replaced one was closed) and through the real binary (SIGHUP under load, `herald reload`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use herald_core::{Backend, CallContext, DeliveryError, Device, Notification, Outcome, Upstream};
use herald_server::reload::Reloader;
use herald_server::{BackendRegistry, Config, Server};

use crate::common::{free_addr, get_text, post, write_config_file, HeraldProcess};

/// One build of the `generation` kind: says which build served a pushkey, takes a second for
/// `slow`, and records whether it was closed while a delivery was running.
struct Generation {
    id: usize,
    log: Arc<Mutex<Vec<(usize, String)>>>,
    running: AtomicUsize,
    closed: Arc<Mutex<Vec<(usize, usize)>>>,
}

#[async_trait]
impl Backend for Generation {
    async fn deliver(
        &self,
        _: &CallContext,
        _: &Notification,
        device: &Device,
    ) -> Result<Outcome, DeliveryError> {
        self.running.fetch_add(1, Ordering::SeqCst);
        if device.pushkey == "slow" {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        self.log.lock().unwrap().push((self.id, device.pushkey.clone()));
        self.running.fetch_sub(1, Ordering::SeqCst);
        Ok(Outcome::Delivered(Upstream::new(200, "ok")))
    }

    async fn close(&self) {
        // (build, deliveries still running when closed)
        self.closed.lock().unwrap().push((self.id, self.running.load(Ordering::SeqCst)));
    }
}

#[derive(Clone, Default)]
struct Generations {
    builds: Arc<AtomicUsize>,
    log: Arc<Mutex<Vec<(usize, String)>>>,
    closed: Arc<Mutex<Vec<(usize, usize)>>>,
}

impl Generations {
    fn registry(&self) -> BackendRegistry {
        let mut registry = BackendRegistry::compiled();
        let this = self.clone();
        registry.register("generation", move |_, _| {
            Ok(Arc::new(Generation {
                id: this.builds.fetch_add(1, Ordering::SeqCst) + 1,
                log: this.log.clone(),
                running: AtomicUsize::new(0),
                closed: this.closed.clone(),
            }))
        });
        registry
    }

    fn served(&self, pushkey: &str) -> Vec<usize> {
        let log = self.log.lock().unwrap();
        log.iter().filter(|(_, k)| k == pushkey).map(|(id, _)| *id).collect()
    }
}

fn notification(event_id: &str, app_id: &str, pushkey: &str) -> String {
    serde_json::json!({"notification": {
        "event_id": event_id,
        "devices": [{"app_id": app_id, "pushkey": pushkey}],
    }})
    .to_string()
}

async fn notify(addr: std::net::SocketAddr, event_id: &str, app_id: &str, key: &str) -> String {
    let (status, body) =
        post(addr, "/_matrix/push/v1/notify", notification(event_id, app_id, key)).await;
    assert_eq!(status, 200, "{body}");
    body.to_string()
}

/// A server in this process, serving `generation` apps, with its reloader.
struct InProcess {
    generations: Generations,
    reloader: Reloader,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), herald_server::RunError>>,
}

impl InProcess {
    /// Writes the config file (`apps` on `addr`) and serves it; returns the file too.
    async fn start(dir: &Path, addr: std::net::SocketAddr, apps: &str) -> (InProcess, PathBuf) {
        let path = write_config_file(dir, addr, apps);
        let config = Config::load(&path).unwrap();
        let generations = Generations::default();
        let registry = Arc::new(generations.registry());
        let server = Server::bind(&config, &registry).await.unwrap();
        let reloader = server.reloader(path.clone(), registry);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        (InProcess { generations, reloader, stop, task }, path)
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

const ACCEPTED: &str = r#"{"rejected":[]}"#;

#[tokio::test]
async fn in_flight_requests_finish_on_the_old_app_which_is_closed_after_them() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let apps = r#"
[apps."com.example.a"]
kind = "generation"
"#;
    let (server, _) = InProcess::start(dir.path(), addr, apps).await;
    let (generations, reloader) = (&server.generations, &server.reloader);

    // A delivery that takes a second is in flight on build 1 …
    let slow = tokio::spawn(notify(addr, "$slow", "com.example.a", "slow"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    // … when a reload changes the app and adds another.
    let changed =
        format!("{apps}max_concurrency = 7\n[apps.\"com.example.b\"]\nkind = \"generation\"\n");
    write_config_file(dir.path(), addr, &changed);
    let report = reloader.reload().await.expect("reload");
    assert_eq!(report.added, ["com.example.b"]);
    assert_eq!(report.changed, ["com.example.a"]);
    assert!(report.needs_restart.is_empty(), "{report:?}");

    // New requests go to the new builds (2 and 3, in key order) at once.
    assert_eq!(notify(addr, "$new-a", "com.example.a", "fast-a").await, ACCEPTED);
    assert_eq!(notify(addr, "$new-b", "com.example.b", "fast-b").await, ACCEPTED);
    assert_eq!(generations.served("fast-a"), [2]);
    assert_eq!(generations.served("fast-b"), [3]);
    assert!(generations.closed.lock().unwrap().is_empty(), "build 1 closed while in use");

    // The slow one finishes on build 1, which is closed only after it.
    assert_eq!(slow.await.unwrap(), ACCEPTED);
    assert_eq!(generations.served("slow"), [1]);
    let started = Instant::now();
    while generations.closed.lock().unwrap().is_empty() {
        assert!(started.elapsed() < Duration::from_secs(5), "build 1 never closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(*generations.closed.lock().unwrap(), [(1, 0)], "closed once, idle");

    // The same event again is still deduplicated across the reload.
    let _ = notify(addr, "$slow", "com.example.a", "slow").await;
    assert_eq!(generations.served("slow"), [1]);
    server.stop().await;
}

#[tokio::test]
async fn an_invalid_configuration_is_refused_and_the_old_one_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let apps = "[apps.\"com.example.a\"]\nkind = \"generation\"\n";
    let (server, path) = InProcess::start(dir.path(), addr, apps).await;
    let (generations, reloader) = (&server.generations, &server.reloader);

    for (broken, expected) in [
        ("data_dir = [", "TOML"),
        ("[apps.\"com.example.a\"]\nkind = \"nonesuch\"\n", "unknown kind `nonesuch`"),
        (
            "[apps.\"com.example.a\"]\nkind = \"generation\"\nmax_concurrency = 0\n",
            "max_concurrency",
        ),
    ] {
        std::fs::write(&path, broken).unwrap();
        let error = reloader.reload().await.expect_err(broken).to_string();
        assert!(error.contains(expected), "{broken}: {error}");
        assert_eq!(
            notify(addr, &format!("${}", fastrand::u64(..)), "com.example.a", "k").await,
            ACCEPTED
        );
    }
    let metrics = get_text(addr, "/metrics").await;
    assert!(metrics.contains("herald_config_reloads_total{result=\"failure\"} 3"), "{metrics}");
    assert!(metrics.contains("herald_config_last_reload_successful 0"), "{metrics}");
    // Build 1 served everything: the refused reloads replaced nothing.
    assert!(generations.served("k").iter().all(|id| *id == 1));
    assert!(generations.closed.lock().unwrap().is_empty());

    // A listener change is applied to the apps and named as needing a restart.
    let moved = write_config_file(dir.path(), free_addr(), apps);
    assert_eq!(moved, path);
    let report = reloader.reload().await.expect("valid again");
    assert_eq!(report.needs_restart, ["server"]);
    assert_eq!(report.unchanged, 1);
    let metrics = get_text(addr, "/metrics").await;
    assert!(metrics.contains("herald_config_last_reload_successful 1"), "{metrics}");
    server.stop().await;
}

/// A client that sends notifications back to back until told to stop; counts what it got.
#[derive(Default)]
struct Load {
    stop: AtomicBool,
    ok: AtomicUsize,
    /// Anything but a 200: a dropped or refused request.
    bad: Mutex<Vec<String>>,
    /// The added app's answers: rejected before the reload, accepted after.
    added_accepted: AtomicUsize,
    added_rejected: AtomicUsize,
}

async fn run_load(load: Arc<Load>, addr: std::net::SocketAddr, worker: usize) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let mut n = 0;
    while !load.stop.load(Ordering::Relaxed) {
        n += 1;
        // Every other request goes to the app the reload adds.
        let app = if n % 2 == 0 { "org.example.added" } else { "org.example.log" };
        let body = notification(&format!("$w{worker}-{n}"), app, &format!("key-{worker}"));
        let request = hyper::Request::post(format!("http://{addr}/_matrix/push/v1/notify"))
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .unwrap();
        let answer = async {
            let response = client.request(request).await.map_err(|e| e.to_string())?;
            let status = response.status().as_u16();
            let body = http_body_util::BodyExt::collect(response.into_body())
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>((status, String::from_utf8_lossy(&body).into_owned()))
        };
        match answer.await {
            Ok((200, body)) => {
                load.ok.fetch_add(1, Ordering::Relaxed);
                if app == "org.example.added" {
                    let counter =
                        if body == ACCEPTED { &load.added_accepted } else { &load.added_rejected };
                    counter.fetch_add(1, Ordering::Relaxed);
                } else if body != ACCEPTED {
                    load.bad.lock().unwrap().push(format!("{app}: {body}"));
                }
            }
            Ok((status, body)) => load.bad.lock().unwrap().push(format!("{status}: {body}")),
            Err(e) => load.bad.lock().unwrap().push(e),
        }
    }
}

fn reloads(metrics: &str, result: &str) -> u64 {
    let needle = format!("herald_config_reloads_total{{result=\"{result}\"}} ");
    metrics.lines().find_map(|l| l.strip_prefix(&needle)?.trim().parse().ok()).unwrap_or(0)
}

async fn wait_for_reloads(addr: std::net::SocketAddr, result: &str, count: u64) {
    let started = Instant::now();
    while reloads(&get_text(addr, "/metrics").await, result) < count {
        assert!(started.elapsed() < Duration::from_secs(10), "no {result} reload counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn herald(args: &[&str], config: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("run herald");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

const ONE_APP: &str = "[apps.\"org.example.log\"]\nkind = \"log\"\n";
const TWO_APPS: &str =
    "[apps.\"org.example.log\"]\nkind = \"log\"\n[apps.\"org.example.added\"]\nkind = \"log\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_adds_an_app_under_load_and_drops_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let path = write_config_file(dir.path(), addr, ONE_APP);
    let server = HeraldProcess::spawn(&path, addr).await;
    let load = Arc::new(Load::default());
    let workers: Vec<_> = (0..16).map(|w| tokio::spawn(run_load(load.clone(), addr, w))).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(load.added_rejected.load(Ordering::Relaxed) > 0, "the app is unknown at first");

    write_config_file(dir.path(), addr, TWO_APPS);
    let killed = Command::new("kill").args(["-HUP", &server.pid().to_string()]).status().unwrap();
    assert!(killed.success());
    wait_for_reloads(addr, "success", 1).await;
    let accepted_at_reload = load.added_accepted.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    load.stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }

    let bad = load.bad.lock().unwrap();
    assert!(
        bad.is_empty(),
        "{} of {} requests failed: {:?}",
        bad.len(),
        load.ok.load(Ordering::Relaxed),
        &bad[..bad.len().min(5)]
    );
    assert!(load.ok.load(Ordering::Relaxed) > 100, "too little load to mean anything");
    assert!(
        load.added_accepted.load(Ordering::Relaxed) > accepted_at_reload,
        "the added app delivers after the reload"
    );
    server.stop_and_check_exit();
}

#[tokio::test]
async fn herald_reload_checks_the_file_signals_the_server_and_reports_its_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let path = write_config_file(dir.path(), addr, ONE_APP);
    let server = HeraldProcess::spawn(&path, addr).await;
    let pid_file = dir.path().join("data/herald.pid");
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap().trim(), server.pid().to_string());

    write_config_file(dir.path(), addr, TWO_APPS);
    let (code, err) = tokio::task::spawn_blocking({
        let path = path.clone();
        move || herald(&["reload"], &path)
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("reloaded"), "{err}");
    let answer = notify(addr, "$after", "org.example.added", "k").await;
    assert_eq!(answer, ACCEPTED);

    // A file the command itself finds invalid is not sent: exit 2, nothing counted.
    write_config_file(dir.path(), addr, "[apps.\"org.example.added\"]\nkind = \"nonesuch\"\n");
    let (code, err) = herald(&["reload"], &path);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("nothing reloaded"), "{err}");
    assert_eq!(reloads(&get_text(addr, "/metrics").await, "failure"), 0);

    // The server refuses what it cannot build even when signalled directly, and keeps serving.
    std::fs::write(&path, "data_dir = [").unwrap();
    let killed = Command::new("kill").args(["-HUP", &server.pid().to_string()]).status().unwrap();
    assert!(killed.success());
    wait_for_reloads(addr, "failure", 1).await;
    assert_eq!(notify(addr, "$still", "org.example.added", "k").await, ACCEPTED);

    server.stop_and_check_exit();
    assert!(!pid_file.exists(), "the pid file is removed on a clean stop");
    // No server: exit 1, saying so.
    write_config_file(dir.path(), addr, ONE_APP);
    let (code, err) = herald(&["reload"], &path);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no running herald"), "{err}");
}
