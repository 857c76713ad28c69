//! Reloading the configuration while serving (`SIGHUP`, `herald reload`, `systemctl reload`).
//!
//! A reload reads the file again and builds every app from it, each backend with metrics of its
//! own, then warms the new backends up. Only then does it swap the app table: new requests route
//! through the new apps, requests in flight finish on the ones they started with, and the old
//! backends are closed once nothing uses them (or after `server.shutdown_grace`). Every app is
//! rebuilt, changed or not, so that a replaced key or certificate file is read again.
//!
//! `herald reload` finds the running server through the pid file `serve` keeps in `data_dir`
//! ([`PidFile`]), checks the file first (so mistakes show on the operator's terminal), sends the
//! signal and reads the outcome from the server's reload counters ([`request_reload`]).
//!
//! Anything wrong — a file that does not parse, a bad key, an app that cannot be built — refuses
//! the whole reload with an error log, and the configuration in force keeps serving. What a
//! running server cannot change (the listener, the store, logging, `[delivery]`, `data_dir`) is
//! named in a warning and waits for the next restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use herald_core::AppRouter;
use tokio::time::Instant;

use crate::config::{Config, ConfigError};
use crate::delivery::App;
use crate::http::AppState;
use crate::registry::BackendRegistry;
use crate::server::{build_apps_for, StartError};

/// How long the new backends may take to warm up (connect, fetch a token) before the swap; past
/// it they serve anyway and connect on first use, as at start-up.
const WARM_UP_LIMIT: Duration = Duration::from_secs(5);

/// How long a replaced backend gets to close its upstream connections.
const CLOSE_LIMIT: Duration = Duration::from_secs(2);

/// How often a replaced app table is checked for requests still using it.
const RETIRE_POLL: Duration = Duration::from_millis(50);

/// Why a reload was refused; the configuration in force keeps serving.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// The file cannot be read or is not a valid configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// An app cannot be built, or the app keys cannot route.
    #[error(transparent)]
    Apps(#[from] StartError),
}

/// What a successful reload changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Apps that are new.
    pub added: Vec<String>,
    /// Apps whose table changed.
    pub changed: Vec<String>,
    /// Apps that are gone.
    pub removed: Vec<String>,
    /// Apps rebuilt from an unchanged table.
    pub unchanged: usize,
    /// Sections that changed but only take effect at the next restart.
    pub needs_restart: Vec<&'static str>,
}

/// Reloads one running server's configuration from its file.
pub struct Reloader {
    path: PathBuf,
    registry: Arc<BackendRegistry>,
    state: Arc<AppState>,
    /// The configuration in force. Held for the whole reload: reloads run one at a time.
    current: tokio::sync::Mutex<Config>,
}

impl Reloader {
    pub(crate) fn new(
        path: PathBuf,
        registry: Arc<BackendRegistry>,
        state: Arc<AppState>,
        current: Config,
    ) -> Self {
        Reloader { path, registry, state, current: tokio::sync::Mutex::new(current) }
    }

    /// The file reloads read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file again and, when it is valid, serves its apps from now on; logs and counts
    /// the outcome either way.
    pub async fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let mut current = self.current.lock().await;
        let started = Instant::now();
        match self.swap(&current).await {
            Ok((config, report)) => {
                *current = config;
                self.state.metrics.reloaded(true);
                tracing::info!(
                    file = %self.path.display(),
                    added = ?report.added,
                    changed = ?report.changed,
                    removed = ?report.removed,
                    unchanged = report.unchanged,
                    duration_ms = started.elapsed().as_secs_f64() * 1e3,
                    "configuration reloaded"
                );
                if !report.needs_restart.is_empty() {
                    tracing::warn!(
                        sections = ?report.needs_restart,
                        "changes to these sections take effect only after a restart"
                    );
                }
                Ok(report)
            }
            Err(e) => {
                self.state.metrics.reloaded(false);
                tracing::error!(
                    file = %self.path.display(),
                    error = %e,
                    "configuration reload refused; the configuration in force keeps serving"
                );
                Err(e)
            }
        }
    }

    async fn swap(&self, current: &Config) -> Result<(Config, ReloadReport), ReloadError> {
        let config = Config::load(&self.path)?;
        let (apps, backend_metrics) =
            build_apps_for(&config, &self.registry, &self.state.metrics, false).await?;
        warm_up(&apps).await;
        let report = compare(current, &config);
        let old = self.state.dispatcher.replace_apps(apps);
        self.state.metrics.install_backends(backend_metrics);
        tokio::spawn(retire(old, config.server.shutdown_grace));
        Ok((config, report))
    }
}

/// Warms every new backend up at once, for at most [`WARM_UP_LIMIT`]; failures are only logged
/// (the first delivery tries again), as at start-up.
async fn warm_up(apps: &AppRouter<Arc<App>>) {
    let warming = apps.iter().map(|(_, app)| async move {
        match tokio::time::timeout(WARM_UP_LIMIT, app.backend.warm_up()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(app = %app.key, error = %e, "warming up the app failed"),
            Err(_) => tracing::warn!(app = %app.key, "warming up the app is taking long; serving"),
        }
    });
    futures_util::future::join_all(warming).await;
}

/// Closes the backends of a replaced app table once no request uses it any more, or after
/// `limit` (a request cannot outlive the shutdown grace either).
async fn retire(old: Arc<AppRouter<Arc<App>>>, limit: Duration) {
    let since = Instant::now();
    while Arc::strong_count(&old) > 1 && since.elapsed() < limit {
        tokio::time::sleep(RETIRE_POLL).await;
    }
    if Arc::strong_count(&old) > 1 {
        tracing::warn!("replaced apps still in use after {limit:?}; closing their backends");
    }
    let closing = old.iter().map(|(_, app)| async move {
        if tokio::time::timeout(CLOSE_LIMIT, app.backend.close()).await.is_err() {
            tracing::warn!(app = %app.key, "a replaced backend did not close within {CLOSE_LIMIT:?}");
        }
    });
    futures_util::future::join_all(closing).await;
}

/// What changed between two configurations.
fn compare(old: &Config, new: &Config) -> ReloadReport {
    let mut report = ReloadReport::default();
    for (key, table) in &new.apps {
        match old.apps.get(key) {
            None => report.added.push(key.clone()),
            Some(before) if before != table => report.changed.push(key.clone()),
            Some(_) => report.unchanged += 1,
        }
    }
    report.removed = old.apps.keys().filter(|k| !new.apps.contains_key(*k)).cloned().collect();
    let sections: [(&'static str, bool); 5] = [
        ("server", old.server != new.server),
        ("store", old.store != new.store),
        ("log", old.log != new.log),
        ("delivery", old.delivery != new.delivery),
        ("data_dir", old.data_dir != new.data_dir),
    ];
    report.needs_restart =
        sections.into_iter().filter(|(_, changed)| *changed).map(|(name, _)| name).collect();
    report
}

/// `<data_dir>/herald.pid`: which process serves with this data directory, for `herald reload`.
/// Removed when the server stops (if it is still ours).
pub struct PidFile {
    path: PathBuf,
}

/// The pid file's name in `data_dir`.
pub const PID_FILE: &str = "herald.pid";

impl PidFile {
    /// Writes this process's id. A file left by a killed server is replaced.
    pub fn create(data_dir: &Path) -> std::io::Result<PidFile> {
        let path = data_dir.join(PID_FILE);
        std::fs::write(&path, format!("{}\n", std::process::id()))?;
        Ok(PidFile { path })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let ours = std::fs::read_to_string(&self.path)
            .is_ok_and(|text| text.trim() == std::process::id().to_string());
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// How long `herald reload` waits for the server to report the outcome.
const OUTCOME_WAIT: Duration = Duration::from_secs(30);

/// What `herald reload` found out.
#[derive(Debug, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The server counted a successful reload.
    Reloaded,
    /// The server refused the file (its log says why).
    Refused,
    /// Signalled, but the server's metrics could not be read: see its log.
    Signalled,
}

/// Why `herald reload` could not ask a server to reload.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    /// No pid file, or one that does not name a running Herald.
    #[error("no running herald found through {path}: {why}")]
    NotRunning {
        /// The pid file.
        path: PathBuf,
        /// What was wrong.
        why: String,
    },
    /// The process exists but cannot be signalled (another user's).
    #[error("cannot signal pid {pid}: {source}")]
    Signal {
        /// The server's pid.
        pid: i32,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

/// Sends `SIGHUP` to the server serving with `config`'s data directory and waits for it to
/// report the outcome on its metrics endpoint.
pub async fn request_reload(config: &Config) -> Result<(i32, ReloadOutcome), SignalError> {
    let path = config.data_dir.join(PID_FILE);
    let not_running = |why: String| SignalError::NotRunning { path: path.clone(), why };
    let text = std::fs::read_to_string(&path).map_err(|e| not_running(e.to_string()))?;
    let pid: i32 = text.trim().parse().map_err(|_| not_running("not a process id".into()))?;
    let process = rustix::process::Pid::from_raw(pid)
        .ok_or_else(|| not_running("not a process id".into()))?;
    // Only a Herald: a pid file left by a killed server may name an unrelated process by now.
    match std::fs::read_to_string(format!("/proc/{pid}/comm")) {
        Ok(comm) if comm.trim() != "herald" => {
            return Err(not_running(format!("pid {pid} is `{}`, not herald", comm.trim())));
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(not_running(format!("no process {pid}")));
        }
        // No /proc (another OS): the signal below still fails for a dead pid.
        Err(_) => {}
    }
    let metrics = metrics_address(config);
    let before = reload_counts(metrics).await;
    rustix::process::kill_process(process, rustix::process::Signal::HUP)
        .map_err(|e| SignalError::Signal { pid, source: e.into() })?;
    let Some((ok_before, failed_before)) = before else {
        return Ok((pid, ReloadOutcome::Signalled));
    };
    let since = Instant::now();
    while since.elapsed() < OUTCOME_WAIT {
        tokio::time::sleep(Duration::from_millis(50)).await;
        match reload_counts(metrics).await {
            Some((ok, _)) if ok > ok_before => return Ok((pid, ReloadOutcome::Reloaded)),
            Some((_, failed)) if failed > failed_before => {
                return Ok((pid, ReloadOutcome::Refused));
            }
            _ => {}
        }
    }
    Ok((pid, ReloadOutcome::Signalled))
}

/// Where the server serves `/metrics`, as a local client reaches it.
fn metrics_address(config: &Config) -> std::net::SocketAddr {
    let mut addr = config.server.metrics_listen.unwrap_or(config.server.listen);
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    addr
}

/// `herald_config_reloads_total` for success and failure, read with a bounded HTTP/1.0 GET.
async fn reload_counts(addr: std::net::SocketAddr) -> Option<(u64, u64)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: herald\r\n\r\n").await.ok()?;
        let mut body = Vec::new();
        // A metrics page is a few hundred KB at most; more is not a Herald.
        stream.take(8 << 20).read_to_end(&mut body).await.ok()?;
        Some(body)
    };
    let body = tokio::time::timeout(Duration::from_secs(5), fetch).await.ok()??;
    let text = String::from_utf8_lossy(&body);
    if !text.starts_with("HTTP/1.") || !text.contains("herald_config_last_reload_successful") {
        return None;
    }
    let count = |result: &str| {
        let needle = format!("herald_config_reloads_total{{result=\"{result}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(&needle)?.trim().parse().ok()).unwrap_or(0)
    };
    Some((count("success"), count("failure")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::from_toml(text, std::iter::empty(), PathBuf::from("/tmp")).unwrap()
    }

    #[test]
    fn the_report_names_apps_by_change_and_sections_that_need_a_restart() {
        let old = config(
            r#"
            [apps.keep]
            kind = "log"
            [apps.edit]
            kind = "log"
            [apps.drop]
            kind = "log"
            "#,
        );
        let new = config(
            r#"
            [server]
            listen = "127.0.0.1:9999"
            [log]
            level = "debug"
            [apps.keep]
            kind = "log"
            [apps.edit]
            kind = "log"
            max_concurrency = 3
            [apps.new]
            kind = "log"
            "#,
        );
        let report = compare(&old, &new);
        assert_eq!(
            report,
            ReloadReport {
                added: vec!["new".into()],
                changed: vec!["edit".into()],
                removed: vec!["drop".into()],
                unchanged: 1,
                needs_restart: vec!["server", "log"],
            }
        );
        assert_eq!(compare(&new, &new).needs_restart, Vec::<&str>::new());
    }
}
