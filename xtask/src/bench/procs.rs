//! Child processes of the benchmark and what `/proc` says about them: start, stop (always, also on
//! errors), peak RSS, CPU time; plus a tiny HTTP/1.0 GET for readiness and stats.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A started child process; killed (and reaped) when dropped, so no error path leaves one behind.
pub(crate) struct Proc {
    name: String,
    child: Child,
    pid_file: Option<PathBuf>,
}

impl Proc {
    /// Starts `command` with stdin closed. Its pid is appended to `pid_file`, so that a later run
    /// can stop it if this harness is killed before it could.
    pub(crate) fn spawn(
        name: &str,
        command: &mut Command,
        pid_file: Option<&Path>,
    ) -> Result<Proc, String> {
        let child = command
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {name} ({:?}): {e}", command.get_program()))?;
        if let Some(file) = pid_file {
            let line = format!("{} {}\n", child.id(), name);
            let _ = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(file)
                .and_then(|mut f| f.write_all(line.as_bytes()));
        }
        Ok(Proc { name: name.to_owned(), child, pid_file: pid_file.map(Path::to_path_buf) })
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads the first line the child prints on its stdout (it must have been piped), waiting at
    /// most `timeout`.
    pub(crate) fn first_line(&mut self, timeout: Duration) -> Result<String, String> {
        let stdout: ChildStdout = self
            .child
            .stdout
            .take()
            .ok_or_else(|| format!("{}: stdout is not piped", self.name))?;
        let (tx, rx) = std::sync::mpsc::channel();
        // The reader thread ends when the child closes stdout or exits.
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let result = reader.read_line(&mut line).map(|_| line);
            let _ = tx.send(result);
            // Keep draining so that the child never blocks on a full pipe.
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        match rx.recv_timeout(timeout) {
            Ok(Ok(line)) if !line.trim().is_empty() => Ok(line.trim().to_owned()),
            Ok(Ok(_)) => Err(format!("{} exited without printing its address", self.name)),
            Ok(Err(e)) => Err(format!("reading {}'s output: {e}", self.name)),
            Err(_) => Err(format!("{} printed nothing within {timeout:?}", self.name)),
        }
    }

    /// True while the process runs.
    pub(crate) fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Asks the process to stop (SIGTERM), waits up to `grace`, then kills it.
    pub(crate) fn stop(mut self, grace: Duration) {
        if self.is_running() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.pid().to_string()])
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + grace;
            while self.is_running() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // Drop kills it if it is still there.
    }

    /// Waits for the process to exit by itself, at most `timeout` (then kills it).
    pub(crate) fn wait(mut self, timeout: Duration) -> Result<std::process::ExitStatus, String> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) if Instant::now() >= deadline => {
                    return Err(format!("{} still running after {timeout:?}; killed", self.name))
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => return Err(format!("waiting for {}: {e}", self.name)),
            }
        }
    }

    /// Reads the whole stdout (it must have been piped) after the process exited.
    pub(crate) fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        if let Some(file) = &self.pid_file {
            forget_pid(file, self.child.id());
        }
    }
}

fn forget_pid(file: &Path, pid: u32) {
    if let Ok(text) = std::fs::read_to_string(file) {
        let prefix = format!("{pid} ");
        let kept: String =
            text.lines().filter(|l| !l.starts_with(&prefix)).map(|l| format!("{l}\n")).collect();
        let _ = std::fs::write(file, kept);
    }
}

/// Stops processes a previous, killed run of the harness left behind: the pids it recorded in
/// `pid_file`, and only those whose executable is still one of ours (under `bin_dir`).
pub(crate) fn stop_leftovers(pid_file: &Path, bin_dir: &Path) {
    let Ok(text) = std::fs::read_to_string(pid_file) else { return };
    for line in text.lines() {
        let Some(pid) = line.split_whitespace().next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        if exe.starts_with(bin_dir) {
            eprintln!(
                "bench: stopping {} (pid {pid}) left over from an earlier run",
                exe.display()
            );
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
    }
    let _ = std::fs::remove_file(pid_file);
}

/// A free TCP port on 127.0.0.1 (free when asked; the caller binds it right away).
pub(crate) fn free_port() -> Result<u16, String> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| format!("cannot bind 127.0.0.1: {e}"))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

/// `GET path` over HTTP/1.0; the status and the body.
pub(crate) fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let timeout = Duration::from_secs(5);
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    // One write: `write!` on the stream itself would send each piece of the format in its own
    // segment, and a server that reads once, answers and closes (`bench_smtp_sink`) then leaves
    // the rest unread, which resets the connection before its answer is read.
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut text = String::new();
    stream.read_to_string(&mut text).map_err(|e| e.to_string())?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("not an HTTP answer from {addr}{path}"))?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}

/// Waits until `GET path` answers 200, polling; fails after `timeout` or when `proc` exits.
pub(crate) fn wait_ready(
    proc: &mut Proc,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok((200, _)) = http_get(addr, path) {
            return Ok(());
        }
        if !proc.is_running() {
            return Err(format!("{} exited before it was ready (see its log above)", proc.name));
        }
        if Instant::now() >= deadline {
            return Err(format!("{} was not ready on {addr} within {timeout:?}", proc.name));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What a process has used so far: CPU seconds in user and kernel mode, context switches, bytes
/// written to storage.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Usage {
    pub(crate) user: f64,
    pub(crate) system: f64,
    /// Voluntary and involuntary, summed over the live threads.
    pub(crate) context_switches: u64,
    /// `write_bytes` of `/proc/<pid>/io`: bytes the process caused to be sent to the storage layer
    /// (counted when a page is dirtied, so a page rewritten before writeback counts once; socket
    /// writes do not count).
    pub(crate) write_bytes: u64,
}

impl Usage {
    /// Reads `/proc/<pid>/stat`, `/proc/<pid>/io` and every `/proc/<pid>/task/*/status`; zeros if
    /// it is gone.
    pub(crate) fn of(pid: u32, ticks_per_second: f64) -> Usage {
        let (user, system) = cpu_seconds(pid, ticks_per_second).unwrap_or((0.0, 0.0));
        let mut context_switches = 0;
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for task in tasks.flatten() {
                let status =
                    std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
                context_switches += status
                    .lines()
                    .filter(|l| l.contains("ctxt_switches:"))
                    .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                    .sum::<u64>();
            }
        }
        Usage { user, system, context_switches, write_bytes: io_field(pid, "write_bytes") }
    }

    /// What was used between `earlier` and `self`.
    pub(crate) fn since(self, earlier: Usage) -> Usage {
        Usage {
            user: self.user - earlier.user,
            system: self.system - earlier.system,
            context_switches: self.context_switches.saturating_sub(earlier.context_switches),
            write_bytes: self.write_bytes.saturating_sub(earlier.write_bytes),
        }
    }
}

/// A counter of `/proc/<pid>/io` (`write_bytes`, `rchar`, …); 0 when unreadable.
fn io_field(pid: u32, key: &str) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    io.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// CPU seconds used by this process's children that have exited and been waited for (wrk, once a
/// run is over), from `/proc/self/stat`.
pub(crate) fn waited_children_cpu(ticks_per_second: f64) -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let Some(close) = stat.rfind(')') else { return 0.0 };
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    // cutime and cstime are fields 16 and 17 of the whole line, 14 and 15 after the name.
    let n = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (n(13) + n(14)) / ticks_per_second
}

/// The whole machine's CPU time from `/proc/stat`, in seconds: (busy, total), all cores.
pub(crate) fn machine_cpu(ticks_per_second: f64) -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else { return (0.0, 0.0) };
    let v: Vec<f64> = line.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let get = |i: usize| v.get(i).copied().unwrap_or(0.0);
    let idle = get(3) + get(4);
    let total: f64 = (0..8).map(get).sum();
    ((total - idle) / ticks_per_second, total / ticks_per_second)
}

/// CPU time a process has used in user and in kernel mode, in seconds.
fn cpu_seconds(pid: u32, ticks_per_second: f64) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after its closing parenthesis are plain.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime / ticks_per_second, stime / ticks_per_second))
}

/// A `kB` line of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in bytes.
pub(crate) fn status_kb(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key) && l[key.len()..].starts_with(':'))?;
    let kb: u64 = line[key.len() + 1..].trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

/// Clock ticks per second for `/proc/<pid>/stat` (`getconf CLK_TCK`; 100 on Linux in practice).
pub(crate) fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Samples a process's resident memory (and optionally the size of a file, such as the dedup
/// store's write-ahead log) while a measurement runs.
pub(crate) struct RssSampler {
    stop: AtomicBool,
    pid: u32,
    file: Option<PathBuf>,
}

/// The largest values [`RssSampler::run`] saw, in bytes.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Peaks {
    pub(crate) rss: u64,
    /// `RssAnon`: the resident set without file-backed pages (the mapped binary, libraries).
    pub(crate) anon: u64,
    /// Of the sampled file; 0 when none was given or it never existed.
    pub(crate) file: u64,
}

impl RssSampler {
    /// A sampler of `pid`, and of the size of `file` if given.
    pub(crate) fn new(pid: u32, file: Option<PathBuf>) -> Self {
        RssSampler { stop: AtomicBool::new(false), pid, file }
    }

    /// Samples every 50 ms until [`RssSampler::finish`]; returns the largest values.
    pub(crate) fn run(&self) -> Peaks {
        let mut peaks = Peaks::default();
        loop {
            let stopping = self.stop.load(Ordering::Relaxed);
            peaks.rss = peaks.rss.max(status_kb(self.pid, "VmRSS").unwrap_or(0));
            peaks.anon = peaks.anon.max(status_kb(self.pid, "RssAnon").unwrap_or(0));
            if let Some(file) = &self.file {
                let size = std::fs::metadata(file).map_or(0, |m| m.len());
                peaks.file = peaks.file.max(size);
            }
            if stopping {
                return peaks;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Ends [`RssSampler::run`].
    pub(crate) fn finish(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
