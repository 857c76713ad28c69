//! The load: wrk (Debian's `wrk` package) with a Lua script that builds every request's body, so
//! that each request can carry a new event_id.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::procs::Proc;

/// The app_id of the benchmark's devices.
pub(crate) const APP_ID: &str = "org.example.bench";

/// What each request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Body {
    /// A full message notification with a new event_id every request.
    Unique,
    /// A message notification whose event_id cycles over a fixed set of `n`.
    Cycle(u32),
    /// A badge-only update (no event_id; the unread count varies).
    Badge,
}

/// One wrk run.
pub(crate) struct Load<'a> {
    /// Where to send (`http://127.0.0.1:PORT`).
    pub(crate) target: String,
    /// The bodies.
    pub(crate) body: Body,
    /// A tag that makes this run's event ids differ from every other run's.
    pub(crate) tag: &'a str,
    /// The device's pushkey (p256dh) and auth secret, base64url.
    pub(crate) pushkey: &'a str,
    pub(crate) auth: &'a str,
    /// The device's push endpoint.
    pub(crate) endpoint: &'a str,
    /// Open connections, kept alive.
    pub(crate) connections: u32,
    /// wrk threads.
    pub(crate) threads: u32,
    /// How long.
    pub(crate) duration: Duration,
}

/// What wrk measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct Measured {
    pub(crate) requests: u64,
    pub(crate) seconds: f64,
    pub(crate) errors_connect: u64,
    pub(crate) errors_read: u64,
    pub(crate) errors_write: u64,
    pub(crate) errors_timeout: u64,
    /// Answers with a status of 400 or more.
    pub(crate) errors_status: u64,
    pub(crate) p50_ms: f64,
    pub(crate) p90_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
}

impl Measured {
    pub(crate) fn per_second(&self) -> f64 {
        self.requests as f64 / self.seconds.max(1e-9)
    }

    pub(crate) fn errors(&self) -> u64 {
        self.errors_connect
            + self.errors_read
            + self.errors_write
            + self.errors_timeout
            + self.errors_status
    }
}

/// Finds wrk; installs it with apt-get when missing and running as root, else fails naming it.
pub(crate) fn ensure_wrk() -> Result<PathBuf, String> {
    if let Some(path) = which("wrk") {
        return Ok(path);
    }
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).map(|uid| uid == "0"))
        .unwrap_or(false);
    let has_apt = which("apt-get").is_some();
    if !(root && has_apt) {
        return Err(
            "the benchmark needs the load tool `wrk` (Debian/Ubuntu: `sudo apt-get install \
                    wrk`; macOS: `brew install wrk`), then run `cargo xtask bench` again"
                .into(),
        );
    }
    eprintln!("bench: wrk is missing; installing it: apt-get install -y wrk");
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-q", "wrk"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    if !install() {
        eprintln!("bench: apt-get install failed; running apt-get update first");
        let _ = Command::new("apt-get").args(["update", "-q"]).status();
        if !install() {
            return Err("could not install `wrk` with apt-get; install it and run again".into());
        }
    }
    which("wrk").ok_or_else(|| "`wrk` was installed but is not on PATH".into())
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(tool)).find(|p| p.is_file())
}

/// The Lua script: builds each body in `request()`, reports in `done()` as one JSON line.
const SCRIPT: &str = r##"-- Written by `cargo xtask bench`: one notify request per call, with a fresh body.
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

function init(args)
  mode, tag, cycle, nthreads = args[1], args[2], tonumber(args[6]), tonumber(args[7])
  local device = '[{"app_id":"APP_ID","pushkey":"' .. args[3] ..
    '","pushkey_ts":12345678,"data":{"endpoint":"' .. args[5] .. '","auth":"' .. args[4] ..
    '"},"tweaks":{"sound":"bing"}}]'
  head = '{"notification":{"event_id":"$'
  tail = '","room_id":"!slw48wfj34rtnrf:example.com","type":"m.room.message",' ..
    '"sender":"@exampleuser:matrix.org","sender_display_name":"Major Tom",' ..
    '"room_name":"Mission Control","room_alias":"#exampleroom:matrix.org","prio":"high",' ..
    '"content":{"msgtype":"m.text","body":"I\'m floating in a most peculiar way."},' ..
    '"counts":{"unread":2,"missed_calls":1},"devices":' .. device .. '}}'
  badge_head = '{"notification":{"event_id":"","room_id":"","sender":null,"prio":"high",' ..
    '"counts":{"unread":'
  badge_tail = '},"devices":' .. device .. '}}'
  counter = 0
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  counter = counter + 1
  local body
  if mode == "unique" then
    body = head .. tag .. "_" .. tid .. "_" .. counter .. tail
  elseif mode == "cycle" then
    body = head .. tag .. "_" .. ((counter * nthreads + tid) % cycle) .. tail
  else
    body = badge_head .. (counter % 100) .. badge_tail
  end
  return wrk.format(nil, nil, nil, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('BENCH_JSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,' ..
    '"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"##;

/// Writes the Lua script into `dir`.
pub(crate) fn write_script(dir: &Path) -> Result<PathBuf, String> {
    let path = dir.join("notify.lua");
    std::fs::write(&path, SCRIPT.replace("APP_ID", APP_ID))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(path)
}

/// Runs wrk once; its whole output goes to `log`.
pub(crate) fn run(
    wrk: &Path,
    script: &Path,
    load: &Load<'_>,
    log: &Path,
) -> Result<Measured, String> {
    let (mode, cycle) = match load.body {
        Body::Unique => ("unique", 1),
        Body::Cycle(n) => ("cycle", n),
        Body::Badge => ("badge", 1),
    };
    let secs = load.duration.as_secs_f64().max(1.0).round() as u64;
    let url = format!("{}/_matrix/push/v1/notify", load.target);
    let mut command = Command::new(wrk);
    command
        .arg(format!("-t{}", load.threads))
        .arg(format!("-c{}", load.connections))
        .arg(format!("-d{secs}s"))
        .args(["--timeout", "10s", "-s"])
        .arg(script)
        .arg(&url)
        .arg("--")
        .args([mode, load.tag, load.pushkey, load.auth, load.endpoint])
        .arg(cycle.to_string())
        .arg(load.threads.to_string())
        .stdout(Stdio::piped());
    let mut proc = Proc::spawn("wrk", &mut command, None)?;
    let mut stdout = proc.take_stdout().ok_or("wrk's stdout is not piped")?;
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    // Bounded: wrk stops by itself after -d; anything much later is a hang.
    let status = proc.wait(Duration::from_secs(secs + 30))?;
    let text = reader.join().map_err(|_| "reading wrk's output failed")?;
    let _ = std::fs::write(log, &text);
    if !status.success() {
        return Err(format!("wrk failed ({status}): {}", text.trim()));
    }
    parse(&text).ok_or_else(|| format!("no result line in wrk's output: {}", text.trim()))
}

fn parse(text: &str) -> Option<Measured> {
    let line = text.lines().find_map(|l| l.strip_prefix("BENCH_JSON "))?;
    let v: Value = serde_json::from_str(line).ok()?;
    let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    let ms = |k: &str| n(k) as f64 / 1000.0;
    Some(Measured {
        requests: n("requests"),
        seconds: n("duration_us") as f64 / 1e6,
        errors_connect: n("connect"),
        errors_read: n("read"),
        errors_write: n("write"),
        errors_timeout: n("timeout"),
        errors_status: n("status"),
        p50_ms: ms("p50_us"),
        p90_ms: ms("p90_us"),
        p99_ms: ms("p99_us"),
        max_ms: ms("max_us"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_result_line() {
        let text = "Running 1s test\nBENCH_JSON {\"requests\":100,\"duration_us\":2000000,\
                    \"connect\":0,\"read\":1,\"write\":0,\"status\":2,\"timeout\":0,\
                    \"p50_us\":1500,\"p90_us\":2000,\"p99_us\":3000,\"max_us\":9000}\n";
        let m = parse(text).unwrap();
        assert_eq!(m.requests, 100);
        assert_eq!(m.per_second(), 50.0);
        assert_eq!(m.errors(), 3);
        assert_eq!(m.p99_ms, 3.0);
    }
}
