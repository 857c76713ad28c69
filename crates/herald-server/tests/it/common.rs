//! Starting servers with a scripted backend, and a small HTTP client.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald_server::{BackendRegistry, Config, Server};
use herald_testkit::scripted::ScriptedBackend;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The app_id served by the scripted backend in every test config.
pub const APP: &str = "com.example.app";

pub fn config(data_dir: &Path, extra: &str) -> Config {
    let text = format!(
        r#"
        data_dir = "{dir}"
        [server]
        listen = "127.0.0.1:0"
        request_deadline = "3s"
        [delivery]
        initial_backoff = "20ms"
        max_backoff = "100ms"
        [apps."{APP}"]
        kind = "scripted"
        [apps."org.example.log"]
        kind = "log"
        {extra}
        "#,
        dir = data_dir.display()
    );
    Config::from_toml(&text, std::iter::empty(), data_dir.to_path_buf()).expect("test config")
}

pub fn registry(backend: &ScriptedBackend) -> BackendRegistry {
    let mut registry = BackendRegistry::compiled();
    let backend = backend.clone();
    registry.register("scripted", move |_, _| Ok(Arc::new(backend.clone())));
    registry
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub backend: ScriptedBackend,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), herald_server::RunError>>>,
}

impl TestServer {
    pub async fn start(config: &Config) -> TestServer {
        Self::start_with(config, ScriptedBackend::new()).await
    }

    pub async fn start_with(config: &Config, backend: ScriptedBackend) -> TestServer {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let server = Server::bind(config, &registry(&backend)).await.expect("server starts");
        let addr = server.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        TestServer { addr, backend, stop: Some(stop), task: Some(task) }
    }

    pub async fn notify(&self, body: &Value) -> (u16, Value) {
        post(self.addr, "/_matrix/push/v1/notify", body.to_string()).await
    }

    pub async fn metrics(&self) -> String {
        get_text(self.addr, "/metrics").await
    }

    /// Triggers graceful shutdown and waits for the server to stop.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("the server stopped cleanly");
        }
    }

    /// Triggers graceful shutdown without waiting.
    pub fn begin_stop(&mut self) -> JoinHandle<Result<(), herald_server::RunError>> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.take().expect("running")
    }
}

pub async fn post(addr: SocketAddr, path: &str, body: String) -> (u16, Value) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let request = hyper::Request::post(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let response = client.request(request).await.expect("request");
    let status = response.status().as_u16();
    assert_eq!(response.headers()["content-type"], "application/json");
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).expect("JSON body"))
}

pub async fn get_text(addr: SocketAddr, path: &str) -> String {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let response = client.get(format!("http://{addr}{path}").parse().unwrap()).await.unwrap();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// The value of `herald_notifications_total{app, outcome}` in a metrics text.
pub fn outcome_count(metrics: &str, app: &str, outcome: &str) -> u64 {
    let needle = format!(r#"herald_notifications_total{{app="{app}",outcome="{outcome}"}} "#);
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&needle))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0)
}

/// A loopback address with a port that was free a moment ago.
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// Writes a config file for the real binary: listens on `addr`, stores under `dir/data`, and
/// serves the app tables in `apps`.
pub fn write_config_file(dir: &Path, addr: SocketAddr, apps: &str) -> std::path::PathBuf {
    let path = dir.join("herald.toml");
    let data = dir.join("data");
    let text = format!("data_dir = \"{}\"\n[server]\nlisten = \"{addr}\"\n{apps}", data.display());
    std::fs::write(&path, text).unwrap();
    path
}

/// The real `herald` binary, serving `config` on `addr`.
pub struct HeraldProcess {
    child: Child,
    pub addr: SocketAddr,
}

impl HeraldProcess {
    pub async fn spawn(config: &Path, addr: SocketAddr) -> HeraldProcess {
        let child = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn herald");
        let started = Instant::now();
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(started.elapsed() < Duration::from_secs(20), "herald did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        HeraldProcess { child, addr }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, and the graceful stop's exit status 0 within the grace period.
    pub fn stop_and_check_exit(mut self) {
        let sent = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status().unwrap();
        assert!(sent.success());
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "herald did not stop");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "herald exited with {status}");
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}
