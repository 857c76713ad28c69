//! A real SMTP server for the email backend's tests: Python's `aiosmtpd`, scripted.
//!
//! Herald's SMTP client is tested against an implementation no one here wrote. `aiosmtpd` (pinned
//! with hashes in `smtp/requirements.txt`) is installed on first use into its own virtual
//! environment under `target/herald-testkit/` (`python3 -m venv`, then pip; set
//! `HERALD_TEST_PYTHON` to use another interpreter). `smtp/fake_smtp.py` runs it on 127.0.0.1
//! with STARTTLS (required) or implicit TLS from a [`TestCa`] certificate, AUTH when credentials
//! are given, and answers each stage (`MAIL`, `RCPT`, after the message) as a test scripts. What
//! it received comes back as JSON lines: every message with its headers and parts decoded by
//! Python's `email` package, so assertions do not rest on our own MIME parsing either.
//!
//! One process per [`FakeSmtp`]; it exits when the `FakeSmtp` is dropped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{oneshot, Notify};

use crate::tls::TestCa;

/// The Python script that runs the server.
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/smtp/fake_smtp.py");
/// aiosmtpd and its dependencies, pinned with hashes.
const REQUIREMENTS: &str = include_str!("../smtp/requirements.txt");
/// How long a started server may take to listen.
const START_WITHIN: Duration = Duration::from_secs(30);

/// How the server secures connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// Plain text first; `STARTTLS` required before `MAIL` (submission on port 587).
    StartTls,
    /// TLS from the first byte (port 465).
    Implicit,
    /// No TLS at all (a relay on loopback).
    Plain,
}

/// A stage the server answers, as scripted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// `MAIL FROM`.
    Mail,
    /// `RCPT TO`.
    Rcpt,
    /// After the whole message (the answer to the final `.`).
    Data,
}

impl Stage {
    fn as_str(self) -> &'static str {
        match self {
            Stage::Mail => "mail",
            Stage::Rcpt => "rcpt",
            Stage::Data => "data",
        }
    }
}

/// One scripted answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A reply line such as `550 5.1.1 No such user`.
    Reply(String),
    /// Never answer.
    Hang,
    /// Drop the connection without an answer.
    Reset,
}

impl Answer {
    /// A reply line.
    pub fn reply(line: &str) -> Answer {
        Answer::Reply(line.to_owned())
    }

    fn to_json(&self) -> Value {
        match self {
            Answer::Reply(line) => Value::String(line.clone()),
            Answer::Hang => "hang".into(),
            Answer::Reset => "reset".into(),
        }
    }
}

/// A message the server accepted, as Python's `email` package read it.
#[derive(Debug, Clone)]
pub struct Received {
    /// The envelope sender (`MAIL FROM`).
    pub mail_from: String,
    /// The envelope recipients (`RCPT TO`).
    pub rcpt_to: Vec<String>,
    /// Whether the session was encrypted.
    pub tls: bool,
    /// The login the session authenticated as.
    pub auth: Option<String>,
    /// The headers, in order, values decoded (RFC 2047).
    pub headers: Vec<(String, String)>,
    /// Every MIME part, depth-first (multipart containers included, with empty text).
    pub parts: Vec<Part>,
    /// The message as sent.
    pub raw: Vec<u8>,
}

/// One MIME part of a [`Received`] message.
#[derive(Debug, Clone)]
pub struct Part {
    /// `text/plain`, `multipart/alternative`, …
    pub content_type: String,
    /// The charset parameter.
    pub charset: Option<String>,
    /// `Content-Transfer-Encoding`.
    pub encoding: Option<String>,
    /// The decoded text.
    pub text: String,
}

impl Received {
    /// The value of the first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Every header called `name`.
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The decoded text of the first part of `content_type`.
    pub fn part(&self, content_type: &str) -> Option<&str> {
        self.parts.iter().find(|p| p.content_type == content_type).map(|p| p.text.as_str())
    }
}

#[derive(Default)]
struct State {
    messages: Vec<Received>,
    acks: HashMap<u64, oneshot::Sender<()>>,
}

/// A running scripted SMTP server.
pub struct FakeSmtp {
    port: u16,
    security: Security,
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
    stdin: tokio::sync::Mutex<ChildStdin>,
    next_id: std::sync::atomic::AtomicU64,
    _child: Child,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for FakeSmtp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeSmtp").field("port", &self.port).finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl FakeSmtp {
    /// Starts a server with `security`, its certificate issued by `ca` for `localhost` and
    /// `127.0.0.1`, requiring AUTH as `credentials` when given.
    ///
    /// # Panics
    /// When aiosmtpd cannot be installed or the server does not start: the test cannot run.
    pub async fn start(ca: &TestCa, security: Security, credentials: Option<(&str, &str)>) -> Self {
        let python = python().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let issued = ca.issue_server(&["localhost", "127.0.0.1"]);
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert, &issued.cert_pem).expect("write cert");
        std::fs::write(&key, &issued.key_pem).expect("write key");
        let mode = match security {
            Security::StartTls => "starttls",
            Security::Implicit => "implicit",
            Security::Plain => "plain",
        };
        let counts = dir.path().join("counts.json");
        let config = json!({
            "mode": mode, "cert": cert, "key": key, "counts": counts,
            "user": credentials.map(|c| c.0), "password": credentials.map(|c| c.1),
        });
        let mut child = Command::new(&python)
            .arg(SCRIPT)
            .arg(config.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut stderr = child.stderr.take().expect("stderr");
        let first = tokio::time::timeout(START_WITHIN, stdout.next_line()).await;
        let port = match first {
            Ok(Ok(Some(ref line))) => serde_json::from_str::<Value>(line)
                .ok()
                .and_then(|v| v["port"].as_u64())
                .and_then(|p| u16::try_from(p).ok()),
            _ => None,
        };
        let Some(port) = port else {
            let mut errors = String::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(2), stderr.read_to_string(&mut errors))
                    .await;
            panic!("the fake SMTP server did not start: {first:?}\n{errors}");
        };
        // Python's warnings (a client that hung up mid-command) are not the test's business.
        tokio::spawn(async move {
            let mut sink = Vec::new();
            let _ = stderr.read_to_end(&mut sink).await;
        });
        let state = Arc::new(Mutex::new(State::default()));
        let changed = Arc::new(Notify::new());
        tokio::spawn(read_events(stdout, Arc::clone(&state), Arc::clone(&changed)));
        FakeSmtp {
            port,
            security,
            state,
            changed,
            stdin: tokio::sync::Mutex::new(stdin),
            next_id: std::sync::atomic::AtomicU64::new(1),
            _child: child,
            dir,
        }
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The `smtp_url` that reaches this server by `host` (`127.0.0.1` or `localhost`).
    pub fn url_for(&self, host: &str) -> String {
        match self.security {
            Security::StartTls => format!("smtp://{host}:{}?tls=required", self.port),
            Security::Implicit => format!("smtps://{host}:{}", self.port),
            Security::Plain => format!("smtp://{host}:{}", self.port),
        }
    }

    /// The `smtp_url` that reaches this server on 127.0.0.1.
    pub fn url(&self) -> String {
        self.url_for("127.0.0.1")
    }

    /// Queues `answers` for `stage` and recipient `rcpt` (`"*"`: any), and waits until the
    /// server has them.
    pub async fn script(&self, stage: Stage, rcpt: &str, answers: Vec<Answer>) {
        let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.state).acks.insert(id, tx);
        let answers: Vec<Value> = answers.iter().map(Answer::to_json).collect();
        let line = json!({"id": id, "script": {"stage": stage.as_str(), "rcpt": rcpt, "answers": answers}});
        let mut stdin = self.stdin.lock().await;
        stdin.write_all(format!("{line}\n").as_bytes()).await.expect("script the fake");
        stdin.flush().await.expect("script the fake");
        drop(stdin);
        tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .expect("the fake SMTP server took the script")
            .expect("the fake SMTP server is running");
    }

    /// Messages accepted so far.
    pub fn messages(&self) -> Vec<Received> {
        lock(&self.state).messages.clone()
    }

    /// Waits until at least `n` messages were accepted (at most `within`) and returns them all.
    ///
    /// # Panics
    /// When fewer arrive in time.
    pub async fn wait_messages(&self, n: usize, within: Duration) -> Vec<Received> {
        let wait = async {
            loop {
                let notified = self.changed.notified();
                if lock(&self.state).messages.len() >= n {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(within, wait).await.is_err() {
            panic!("{} messages arrived within {within:?}, expected {n}", self.messages().len());
        }
        self.messages()
    }

    /// A counter of the server's: written before each reply, so exact once a reply was seen.
    fn count(&self, name: &str) -> usize {
        let path = self.dir.path().join("counts.json");
        let Ok(text) = std::fs::read_to_string(path) else { return 0 };
        serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v[name].as_u64())
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(0)
    }

    /// `MAIL FROM` commands received: transactions begun.
    pub fn transactions(&self) -> usize {
        self.count("transactions")
    }

    /// Refused AUTH attempts.
    pub fn auth_failures(&self) -> usize {
        self.count("auth_failures")
    }

    /// Successful AUTHs (one per connection).
    pub fn auth_successes(&self) -> usize {
        self.count("auth_successes")
    }

    /// Connections accepted.
    pub fn connections(&self) -> usize {
        self.count("connections")
    }
}

impl crate::behaviour::FakeUpstream for FakeSmtp {
    /// Delivery attempts that reached the server: transactions begun (`MAIL FROM`), plus AUTHs
    /// refused (an attempt that ends before `MAIL FROM`).
    fn requests(&self) -> usize {
        self.transactions() + self.auth_failures()
    }
}

async fn read_events(
    mut stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
) {
    while let Ok(Some(line)) = stdout.next_line().await {
        let Ok(event) = serde_json::from_str::<Value>(&line) else { continue };
        {
            let mut s = lock(&state);
            if let Some(id) = event["ack"].as_u64() {
                if let Some(tx) = s.acks.remove(&id) {
                    let _ = tx.send(());
                }
            }
            if event["event"] == "message" {
                s.messages.push(received(&event));
            }
        }
        changed.notify_waiters();
    }
}

fn received(event: &Value) -> Received {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    Received {
        mail_from: text(&event["from"]),
        rcpt_to: event["to"].as_array().into_iter().flatten().map(text).collect(),
        tls: event["tls"] == true,
        auth: event["auth"].as_str().map(str::to_owned),
        headers: event["headers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|h| (text(&h[0]), text(&h[1])))
            .collect(),
        parts: event["parts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| Part {
                content_type: text(&p["type"]),
                charset: p["charset"].as_str().map(str::to_owned),
                encoding: p["encoding"].as_str().map(str::to_owned),
                text: text(&p["text"]),
            })
            .collect(),
        raw: base64::engine::general_purpose::STANDARD
            .decode(text(&event["raw"]))
            .unwrap_or_default(),
    }
}

/// The virtual environment's Python, created (once per machine, per requirements) on first use.
async fn python() -> PathBuf {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    if let Some(ready) = PYTHON.get() {
        return ready.clone().unwrap_or_else(|e| panic!("{e}"));
    }
    // Creating it blocks for seconds, once: off the runtime's workers.
    let made = tokio::task::spawn_blocking(|| PYTHON.get_or_init(ensure_venv).clone())
        .await
        .expect("venv task");
    made.unwrap_or_else(|e| panic!("{e}"))
}

/// `target/herald-testkit/aiosmtpd-<hash of the requirements>/bin/python`, installing it when
/// missing. Safe against other test processes doing the same: each builds in a directory of its
/// own and renames it into place.
fn ensure_venv() -> Result<PathBuf, String> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let hash = REQUIREMENTS
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    let base = target.join("herald-testkit");
    let venv = base.join(format!("aiosmtpd-{hash:016x}"));
    let python = venv.join("bin").join("python");
    if python.exists() {
        return Ok(python);
    }
    std::fs::create_dir_all(&base).map_err(|e| format!("cannot create {}: {e}", base.display()))?;
    let building = base.join(format!("building-{}-{hash:016x}", std::process::id()));
    let _ = std::fs::remove_dir_all(&building);
    let interpreter = std::env::var("HERALD_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let run = |cmd: &mut std::process::Command, what: &str| -> Result<(), String> {
        let out = cmd.output().map_err(|e| format!("{what}: cannot run: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{what} failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    };
    let setup = "the email tests need Python 3 with venv and pip (Debian: apt-get install \
                 python3 python3-venv; or set HERALD_TEST_PYTHON) and access to PyPI once";
    run(
        std::process::Command::new(&interpreter).args(["-m", "venv"]).arg(&building),
        &format!("{interpreter} -m venv ({setup})"),
    )?;
    let requirements = building.join("requirements.txt");
    std::fs::write(&requirements, REQUIREMENTS).map_err(|e| e.to_string())?;
    run(
        std::process::Command::new(building.join("bin").join("python"))
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
            .args(["--no-input", "--require-hashes", "-r"])
            .arg(&requirements),
        &format!("pip install aiosmtpd ({setup})"),
    )?;
    match std::fs::rename(&building, &venv) {
        Ok(()) => {}
        // Another process finished first: use theirs.
        Err(_) if python.exists() => {
            let _ = std::fs::remove_dir_all(&building);
        }
        Err(e) => return Err(format!("cannot move the venv into {}: {e}", venv.display())),
    }
    Ok(python)
}
