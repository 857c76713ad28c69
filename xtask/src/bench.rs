//! `cargo xtask bench [--quick] [options]`: the end-to-end benchmark of the notify path, measured
//! against the bare-HTTP ceiling of the same machine (method and latest results:
//! `docs/performance.md`).
//!
//! It builds the release `herald` and the benchmark examples of `herald-server`, starts a fast
//! fake push service (`bench_upstream`), and for each scenario drives 64 keep-alive connections
//! with wrk for a fixed time: against a bare hyper server (`bench_ceiling`, the ceiling), then
//! against a fresh `herald serve` per scenario (unique events, duplicates, badge-only updates,
//! unique events with a pre-filled dedup table; unique events to a fake FCM over HTTP/2, with
//! its own fake, `bench_fcm`; unique events mailed to a fast SMTP sink, `bench_smtp_sink`; unique
//! events to a fake APNs over HTTP/2, `bench_apns`). It prints a table, checks the targets and
//! writes `target/bench/report.json`. It fails only when the harness breaks or a scenario has
//! errors.

mod procs;
mod report;
mod wrk;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use procs::{Proc, RssSampler, Usage};
use wrk::{Body, Load, Measured};

const USAGE: &str = "usage: cargo xtask bench [--quick] [--duration SECS] [--warmup SECS] \
                     [--rows N] [--connections N] [--only NAME,..] [--store sqlite|postgres] \
                     [--no-build] [--perf]

  --quick          every scenario for 2 s (warm-up 1 s), 200k pre-filled rows: for CI
  --duration SECS  measured time per scenario (default 10)
  --warmup SECS    unmeasured load before each scenario (default 2)
  --rows N         rows pre-filled for the large-table scenario (default 10000000)
  --connections N  keep-alive connections (default 64)
  --only NAMES     run only these of: unique, duplicates, badge_only, unique_filled, fcm,
                   email, apns
                   (the ceiling always runs: every figure is a ratio to it)
  --store postgres also run unique and duplicates on a PostgreSQL store (a throwaway cluster,
                   fsync on, synchronous_commit off like SQLite's NORMAL), with one instance and
                   with two instances on the same database (load split between them), beside
                   the same scenarios on SQLite for comparison
  --no-build       use the release binaries already built
  --perf           record a CPU profile of herald in every herald scenario that runs, with
                   `perf` (target/bench/perf-<scenario>.*); perf's own load lowers the figures";

/// The scenarios, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A bare hyper server answering `{"rejected":[]}`.
    Ceiling,
    /// A new event per request, one WebPush device each.
    Unique,
    /// Every request repeats an already delivered event.
    Duplicates,
    /// Badge-only updates (no event; nothing to deduplicate), delivered to the push service.
    BadgeOnly,
    /// Like `Unique`, with the dedup table pre-filled.
    UniqueFilled,
    /// A new event per request, one FCM device each, to a fake FCM over HTTPS and HTTP/2
    /// (`bench_fcm`) answering 200 at once; the OAuth token is cached after the warm-up.
    Fcm,
    /// A new event per request to one email pusher, mailed over plain SMTP on loopback to a sink
    /// that accepts at once (`bench_smtp_sink`): templates, MIME and the SMTP client's pool.
    Email,
    /// A new event per request, one iOS device each, to a fake APNs over HTTPS and HTTP/2
    /// (`bench_apns`) answering 200 at once; the provider token is signed once and reused.
    Apns,
}

impl Kind {
    const ALL: [Kind; 8] = [
        Kind::Ceiling,
        Kind::Unique,
        Kind::Duplicates,
        Kind::BadgeOnly,
        Kind::UniqueFilled,
        Kind::Fcm,
        Kind::Email,
        Kind::Apns,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Ceiling => "ceiling",
            Kind::Unique => "unique",
            Kind::Duplicates => "duplicates",
            Kind::BadgeOnly => "badge_only",
            Kind::UniqueFilled => "unique_filled",
            Kind::Fcm => "fcm",
            Kind::Email => "email",
            Kind::Apns => "apns",
        }
    }
}

/// Event ids the duplicates scenario cycles over.
const DUPLICATE_SET: u32 = 1000;

#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) quick: bool,
    pub(crate) duration: Duration,
    pub(crate) warmup: Duration,
    pub(crate) rows: u64,
    pub(crate) connections: u32,
    only: Option<Vec<Kind>>,
    build: bool,
    pub(crate) perf: bool,
    pub(crate) store: StoreChoice,
}

/// Which dedup stores the run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StoreChoice {
    /// The default: SQLite only.
    Sqlite,
    /// SQLite and PostgreSQL (one and two instances) for unique and duplicates.
    Postgres,
}

/// How one herald scenario is set up.
#[derive(Debug, Clone)]
struct Setup {
    /// `None`: SQLite in the scenario's data directory.
    store_url: Option<String>,
    /// Herald processes sharing the store; the load is split between them.
    instances: usize,
}

fn parse_options(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        quick: false,
        duration: Duration::from_secs(10),
        warmup: Duration::from_secs(2),
        rows: 10_000_000,
        connections: 64,
        only: None,
        build: true,
        perf: false,
        store: StoreChoice::Sqlite,
    };
    let (mut duration, mut warmup, mut rows) = (None, None, None);
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut number = |name: &str| -> Result<u64, String> {
            args.next()
                .and_then(|v| v.replace('_', "").parse().ok())
                .ok_or_else(|| format!("{name} needs a whole number\n{USAGE}"))
        };
        match arg.as_str() {
            "--quick" => o.quick = true,
            "--duration" => duration = Some(number("--duration")?.max(1)),
            "--warmup" => warmup = Some(number("--warmup")?),
            "--rows" => rows = Some(number("--rows")?),
            "--connections" => o.connections = number("--connections")?.clamp(2, 10_000) as u32,
            "--no-build" => o.build = false,
            "--perf" => o.perf = true,
            "--store" => {
                o.store = match args.next().map(String::as_str) {
                    Some("sqlite") => StoreChoice::Sqlite,
                    Some("postgres") => StoreChoice::Postgres,
                    _ => return Err(format!("--store needs sqlite or postgres\n{USAGE}")),
                }
            }
            "--only" => {
                let list = args.next().ok_or_else(|| format!("--only needs names\n{USAGE}"))?;
                let kinds = list
                    .split(',')
                    .map(|n| {
                        Kind::ALL
                            .into_iter()
                            .find(|k| k.name() == n.trim())
                            .ok_or_else(|| format!("unknown scenario `{n}`\n{USAGE}"))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                o.only = Some(kinds);
            }
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    if o.quick {
        o.duration = Duration::from_secs(2);
        o.warmup = Duration::from_secs(1);
        o.rows = 200_000;
    }
    o.duration = duration.map(Duration::from_secs).unwrap_or(o.duration);
    o.warmup = warmup.map(Duration::from_secs).unwrap_or(o.warmup);
    o.rows = rows.unwrap_or(o.rows);
    Ok(o)
}

/// Everything a scenario needs.
struct Bench {
    options: Options,
    run_dir: PathBuf,
    bench_dir: PathBuf,
    pid_file: PathBuf,
    herald: PathBuf,
    examples: PathBuf,
    wrk: PathBuf,
    script: PathBuf,
    upstream: Upstream,
    ticks: f64,
    /// The throwaway PostgreSQL cluster (`--store postgres`).
    postgres: Option<Postgres>,
}

/// The cluster `bench_postgres` runs, and the databases it made for the scenarios.
struct Postgres {
    proc: Proc,
    /// The URL of database `herald`; scenarios use `bench0` … `bench15` next to it.
    url: String,
    next: std::sync::atomic::AtomicUsize,
}

impl Postgres {
    /// A fresh database's URL: every scenario starts from empty tables.
    fn database(&self) -> Result<String, String> {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n >= 16 {
            return Err("bench_postgres made 16 databases; more scenarios than that".into());
        }
        let base = self.url.rsplit_once('/').map_or(self.url.as_str(), |(b, _)| b);
        Ok(format!("{base}/bench{n}"))
    }
}

/// The running fake push service.
struct Upstream {
    proc: Proc,
    addr: SocketAddr,
    p256dh: String,
    auth: String,
    /// The devices' push endpoint.
    endpoint: String,
}

impl Upstream {
    fn pushes(&self) -> Result<u64, String> {
        let (_, body) = procs::http_get(self.addr, "/stats")?;
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("upstream stats: {e}"))?;
        v["pushes"].as_u64().ok_or_else(|| "upstream stats without pushes".into())
    }
}

/// One scenario's figures.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    pub(crate) kind: Kind,
    /// `sqlite`, `postgres` or `postgres x2` (two instances); empty for the ceiling.
    pub(crate) store: String,
    pub(crate) label: String,
    pub(crate) measured: Measured,
    /// Largest resident set sampled during the measured run, bytes.
    pub(crate) rss_peak: u64,
    /// Largest anonymous part of it (heap, stacks, caches: not the mapped binary), bytes.
    pub(crate) rss_anon_peak: u64,
    /// `VmHWM` at the end (includes start-up and warm-up), bytes.
    pub(crate) rss_hwm: u64,
    /// Largest size of the dedup store's write-ahead log sampled during the measured run, bytes.
    pub(crate) wal_peak: u64,
    /// What the server under test used during the measured run.
    pub(crate) usage: Usage,
    /// What the fake push service used during the measured run.
    pub(crate) upstream_usage: Usage,
    /// Wall time of the measured run, seconds.
    pub(crate) wall: f64,
    /// CPU seconds of wrk (and perf, when profiling) during the measured run.
    pub(crate) load_cpu: f64,
    /// CPU seconds the machine spent on anything else (other processes) during the measured run.
    pub(crate) other_cpu: f64,
    /// Requests the fake push service received during the measured run.
    pub(crate) upstream_pushes: u64,
    /// Herald's device outcomes during the measured run (`herald_notifications_total`).
    pub(crate) herald_outcomes: BTreeMap<String, u64>,
    /// Failed consistency checks (each counts as an error).
    pub(crate) problems: Vec<String>,
    /// Pre-filled rows and how long the fill took.
    pub(crate) fill: Option<(u64, f64)>,
    /// Whether perf was recording (figures are lowered by it).
    pub(crate) profiled: bool,
}

impl Outcome {
    pub(crate) fn errors(&self) -> u64 {
        self.measured.errors() + self.problems.len() as u64
    }

    /// Notifications the server handled during the measured run: its device outcomes, or wrk's
    /// request count where it has none (the ceiling).
    pub(crate) fn notifications(&self) -> u64 {
        let counted: u64 = self.herald_outcomes.values().sum();
        if counted > 0 {
            counted
        } else {
            self.measured.requests
        }
    }

    /// Bytes the server wrote to storage per notification during the measured run.
    pub(crate) fn written_per_notification(&self) -> f64 {
        self.usage.write_bytes as f64 / self.notifications().max(1) as f64
    }

    /// CPU of the server under test per notify request, in microseconds.
    pub(crate) fn cpu_us_per_request(&self) -> f64 {
        (self.usage.user + self.usage.system) * 1e6 / self.measured.requests.max(1) as f64
    }

    /// CPU of the server under test, % of one core.
    pub(crate) fn cpu_percent(&self) -> f64 {
        (self.usage.user + self.usage.system) * 100.0 / self.wall.max(1e-9)
    }
}

/// What [`measure`] saw.
struct Measurement {
    measured: Measured,
    rss_peak: u64,
    rss_anon_peak: u64,
    wal_peak: u64,
    usage: Usage,
    upstream_usage: Usage,
    wall: f64,
    load_cpu: f64,
    other_cpu: f64,
}

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let options = parse_options(args)?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("xtask is not inside the workspace")?
        .to_path_buf();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| if t.is_absolute() { t } else { root.join(t) })
        .unwrap_or_else(|| root.join("target"));
    let bench_dir = target.join("bench");
    let run_dir = bench_dir.join("run");
    let pid_file = bench_dir.join("pids");
    let release = target.join("release");
    procs::stop_leftovers(&pid_file, &release);

    let wrk = wrk::ensure_wrk()?;
    if options.build {
        crate::cargo(&[
            "build",
            "--release",
            "-p",
            "herald-server",
            "--bin",
            "herald",
            "--example",
            "bench_upstream",
            "--example",
            "bench_ceiling",
            "--example",
            "bench_fill",
            "--example",
            "bench_fcm",
            "--example",
            "bench_apns",
            "--example",
            "bench_postgres",
            "-p",
            "herald-email",
            "--example",
            "bench_smtp_sink",
            "-p",
            "herald-webpush",
            "--example",
            "crypto_floor",
        ])?;
    }
    let herald = release.join("herald");
    let examples = release.join("examples");
    for bin in [herald.clone(), examples.join("bench_upstream"), examples.join("bench_ceiling")] {
        if !bin.is_file() {
            return Err(format!("{} is missing (run without --no-build)", bin.display()));
        }
    }
    if run_dir.exists() {
        std::fs::remove_dir_all(&run_dir)
            .map_err(|e| format!("cannot clear {}: {e}", run_dir.display()))?;
    }
    std::fs::create_dir_all(&run_dir)
        .map_err(|e| format!("cannot create {}: {e}", run_dir.display()))?;
    let script = wrk::write_script(&run_dir)?;

    let upstream = start_upstream(&examples, &pid_file)?;
    let postgres = match options.store {
        StoreChoice::Sqlite => None,
        StoreChoice::Postgres => Some(start_postgres(&examples, &pid_file)?),
    };
    let bench = Bench {
        options,
        run_dir,
        bench_dir,
        pid_file,
        herald,
        examples,
        wrk,
        script,
        upstream,
        ticks: procs::clock_ticks(),
        postgres,
    };
    eprintln!(
        "bench: {} connections, {:?} per scenario after {:?} of warm-up; fake push service on {}",
        bench.options.connections,
        bench.options.duration,
        bench.options.warmup,
        bench.upstream.addr
    );
    let started = Instant::now();
    let floor = crypto_floor(&bench.examples, bench.options.quick);
    let mut outcomes = Vec::new();
    let sqlite = Setup { store_url: None, instances: 1 };
    let mut runs: Vec<(Kind, Setup)> = Vec::new();
    for kind in Kind::ALL {
        let wanted = bench.options.only.as_ref().is_none_or(|only| only.contains(&kind));
        if kind != Kind::Ceiling && !wanted {
            continue;
        }
        match (&bench.postgres, kind) {
            (Some(pg), Kind::Unique | Kind::Duplicates) => {
                runs.push((kind, sqlite.clone()));
                for instances in [1, 2] {
                    runs.push((kind, Setup { store_url: Some(pg.database()?), instances }));
                }
            }
            // The other scenarios are SQLite's (the large table is pre-filled in SQLite).
            (Some(_), _) if kind != Kind::Ceiling => {}
            _ => runs.push((kind, sqlite.clone())),
        }
    }
    for (kind, setup) in runs {
        eprintln!("bench: scenario {} ({}) …", kind.name(), store_label(&setup));
        let outcome = match kind {
            Kind::Ceiling => ceiling(&bench)?,
            _ => herald_scenario(&bench, kind, &setup)?,
        };
        eprintln!(
            "bench:   {:.0} req/s, p99 {:.1} ms, {} errors{}",
            outcome.measured.per_second(),
            outcome.measured.p99_ms,
            outcome.errors(),
            outcome
                .problems
                .iter()
                .map(|p| format!("\n bench:   problem: {p}"))
                .collect::<String>()
        );
        outcomes.push(outcome);
    }
    let elapsed = started.elapsed();
    bench.upstream.proc.stop(Duration::from_secs(2));
    if let Some(pg) = bench.postgres {
        // SIGTERM: it stops the cluster and deletes it.
        pg.proc.stop(Duration::from_secs(30));
    }

    let report = report::Report::new(&bench.options, outcomes, floor, elapsed);
    println!("{}", report.table());
    let json_path = bench.bench_dir.join("report.json");
    std::fs::write(&json_path, report.json())
        .map_err(|e| format!("cannot write {}: {e}", json_path.display()))?;
    println!("report: {}", json_path.display());
    let broken: Vec<String> = report
        .outcomes
        .iter()
        .filter(|o| o.errors() > 0)
        .map(|o| format!("{} ({} errors)", o.kind.name(), o.errors()))
        .collect();
    if broken.is_empty() {
        Ok(())
    } else {
        Err(format!("scenarios with errors: {}", broken.join(", ")))
    }
}

fn start_upstream(examples: &Path, pid_file: &Path) -> Result<Upstream, String> {
    let mut command = Command::new(examples.join("bench_upstream"));
    command.args(["--threads", "1", "--max-seconds", "3600"]).stdout(Stdio::piped());
    let mut proc = Proc::spawn("bench_upstream", &mut command, Some(pid_file))?;
    let line = proc.first_line(Duration::from_secs(10))?;
    let hello: Value =
        serde_json::from_str(&line).map_err(|e| format!("bench_upstream said {line:?}: {e}"))?;
    let text = |k: &str| {
        hello[k].as_str().map(str::to_owned).ok_or_else(|| format!("bench_upstream: no {k}"))
    };
    let addr = text("addr")?.parse().map_err(|e| format!("bench_upstream address: {e}"))?;
    let endpoint = format!("http://{addr}/push/bench");
    Ok(Upstream { addr, p256dh: text("p256dh")?, auth: text("auth")?, endpoint, proc })
}

fn start_postgres(examples: &Path, pid_file: &Path) -> Result<Postgres, String> {
    let mut command = Command::new(examples.join("bench_postgres"));
    command.args(["--databases", "16", "--max-seconds", "7200"]).stdout(Stdio::piped());
    let mut proc = Proc::spawn("bench_postgres", &mut command, Some(pid_file))?;
    let line = proc.first_line(Duration::from_secs(120))?;
    let hello: Value =
        serde_json::from_str(&line).map_err(|e| format!("bench_postgres said {line:?}: {e}"))?;
    let url = hello["url"].as_str().ok_or_else(|| format!("bench_postgres said {line:?}"))?;
    eprintln!("bench: PostgreSQL {} on port {}", hello["version"], hello["port"]);
    Ok(Postgres { url: url.to_owned(), proc, next: std::sync::atomic::AtomicUsize::new(0) })
}

fn store_label(setup: &Setup) -> String {
    match (&setup.store_url, setup.instances) {
        (None, _) => "sqlite".into(),
        (Some(_), 1) => "postgres".into(),
        (Some(_), n) => format!("postgres x{n}"),
    }
}

impl Bench {
    fn load<'a>(&'a self, target: SocketAddr, body: Body, tag: &'a str, d: Duration) -> Load<'a> {
        Load {
            target: format!("http://{target}"),
            body,
            tag,
            pushkey: &self.upstream.p256dh,
            auth: &self.upstream.auth,
            endpoint: &self.upstream.endpoint,
            connections: self.options.connections,
            threads: 2,
            duration: d,
        }
    }

    fn wrk(&self, load: &Load<'_>, log: &str) -> Result<Measured, String> {
        wrk::run(&self.wrk, &self.script, load, &self.run_dir.join(log))
    }
}

fn ceiling(bench: &Bench) -> Result<Outcome, String> {
    let mut command = Command::new(bench.examples.join("bench_ceiling"));
    command.args(["--max-seconds", "3600"]).stdout(Stdio::piped());
    let mut proc = Proc::spawn("bench_ceiling", &mut command, Some(&bench.pid_file))?;
    let line = proc.first_line(Duration::from_secs(10))?;
    let hello: Value =
        serde_json::from_str(&line).map_err(|e| format!("bench_ceiling said {line:?}: {e}"))?;
    let addr: SocketAddr = hello["addr"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("bench_ceiling said {line:?}"))?;
    if !bench.options.warmup.is_zero() {
        let load = bench.load(addr, Body::Unique, "cw", bench.options.warmup);
        bench.wrk(&load, "ceiling.warmup.txt")?;
    }
    let load = bench.load(addr, Body::Unique, "c", bench.options.duration);
    let upstream_pid = bench.upstream.proc.pid();
    let m = measure(bench, &[proc.pid()], upstream_pid, &[load], "ceiling.wrk.txt", None, None)?;
    let rss_hwm = procs::status_kb(proc.pid(), "VmHWM").unwrap_or(0);
    proc.stop(Duration::from_secs(2));
    Ok(Outcome {
        kind: Kind::Ceiling,
        store: String::new(),
        label: "ceiling (bare hyper)".into(),
        measured: m.measured,
        rss_peak: m.rss_peak,
        rss_anon_peak: m.rss_anon_peak,
        rss_hwm,
        wal_peak: m.wal_peak,
        usage: m.usage,
        upstream_usage: m.upstream_usage,
        wall: m.wall,
        load_cpu: m.load_cpu,
        other_cpu: m.other_cpu,
        upstream_pushes: 0,
        herald_outcomes: BTreeMap::new(),
        problems: Vec::new(),
        fill: None,
        profiled: false,
    })
}

/// Runs wrk against the servers of `pids` (one load each, at once) while sampling the first's
/// memory, all of their CPU and bytes written (and the upstream's CPU), and the size of the file
/// `wal` if given; with `profile`, `perf` records the first server meanwhile into
/// `target/bench/perf-<profile>.*`.
fn measure(
    bench: &Bench,
    pids: &[u32],
    upstream_pid: u32,
    loads: &[Load<'_>],
    log: &str,
    profile: Option<&str>,
    wal: Option<PathBuf>,
) -> Result<Measurement, String> {
    let usage_of = |pids: &[u32]| {
        pids.iter().map(|pid| Usage::of(*pid, bench.ticks)).fold(Usage::default(), |a, u| Usage {
            user: a.user + u.user,
            system: a.system + u.system,
            context_switches: a.context_switches + u.context_switches,
            write_bytes: a.write_bytes + u.write_bytes,
        })
    };
    let sampler = RssSampler::new(pids[0], wal);
    let before = usage_of(pids);
    let upstream_before = Usage::of(upstream_pid, bench.ticks);
    let load_before = procs::waited_children_cpu(bench.ticks);
    let (machine_before, _) = procs::machine_cpu(bench.ticks);
    let wall = Instant::now();
    std::thread::scope(|scope| {
        let sampling = scope.spawn(|| sampler.run());
        let profiler = profile.and_then(|name| start_perf(bench, pids[0], loads[0].duration, name));
        let runs: Vec<_> = loads
            .iter()
            .enumerate()
            .map(|(i, load)| {
                let log = if i == 0 { log.to_owned() } else { format!("{log}.{i}") };
                scope.spawn(move || bench.wrk(load, &log))
            })
            .collect();
        let results: Vec<Result<Measured, String>> = runs
            .into_iter()
            .map(|r| r.join().unwrap_or_else(|_| Err("a wrk thread panicked".into())))
            .collect();
        let seconds = wall.elapsed().as_secs_f64();
        let usage = usage_of(pids).since(before);
        let upstream_usage = Usage::of(upstream_pid, bench.ticks).since(upstream_before);
        let load_cpu = procs::waited_children_cpu(bench.ticks) - load_before;
        let machine = procs::machine_cpu(bench.ticks).0 - machine_before;
        sampler.finish();
        if let Some(profiler) = profiler {
            finish_perf(profiler);
        }
        let peaks = sampling.join().unwrap_or_default();
        let ours = usage.user + usage.system + upstream_usage.user + upstream_usage.system;
        let other_cpu = (machine - ours - load_cpu).max(0.0);
        let measured = merge(results)?;
        Ok(Measurement {
            measured,
            rss_peak: peaks.rss,
            rss_anon_peak: peaks.anon,
            wal_peak: peaks.file,
            usage,
            upstream_usage,
            wall: seconds,
            load_cpu,
            other_cpu,
        })
    })
}

/// Several wrk runs at once as one: requests and errors add up, latencies are the worst.
fn merge(results: Vec<Result<Measured, String>>) -> Result<Measured, String> {
    let mut all = Measured::default();
    for m in results {
        let m = m?;
        all.requests += m.requests;
        all.seconds = all.seconds.max(m.seconds);
        all.errors_connect += m.errors_connect;
        all.errors_read += m.errors_read;
        all.errors_write += m.errors_write;
        all.errors_timeout += m.errors_timeout;
        all.errors_status += m.errors_status;
        all.p50_ms = all.p50_ms.max(m.p50_ms);
        all.p90_ms = all.p90_ms.max(m.p90_ms);
        all.p99_ms = all.p99_ms.max(m.p99_ms);
        all.max_ms = all.max_ms.max(m.max_ms);
    }
    Ok(all)
}

fn herald_scenario(bench: &Bench, kind: Kind, setup: &Setup) -> Result<Outcome, String> {
    let options = &bench.options;
    let store = store_label(setup);
    let name = format!("{}-{}", kind.name(), store.replace(' ', ""));
    let dir = bench.run_dir.join(&name);
    let mut fill = None;
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let upstream = ScenarioUpstream::start(bench, kind, &dir)?;
    let pushes = || upstream.pushes();
    let mut heralds = Vec::new();
    let mut addrs = Vec::new();
    let mut logs = Vec::new();
    for i in 0..setup.instances {
        let data = dir.join(format!("data{i}"));
        std::fs::create_dir_all(&data)
            .map_err(|e| format!("cannot create {}: {e}", data.display()))?;
        if kind == Kind::UniqueFilled {
            fill = Some(prefill(bench, &data.join("herald.db"))?);
        }
        let port = procs::free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let config = dir.join(format!("herald{i}.toml"));
        let text = upstream.config(bench, &data, &dir, addr, setup);
        std::fs::write(&config, text)
            .map_err(|e| format!("cannot write {}: {e}", config.display()))?;
        let log_path = dir.join(format!("herald{i}.log"));
        let log = std::fs::File::create(&log_path)
            .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
        let mut command = Command::new(&bench.herald);
        command.arg("serve").arg("--config").arg(&config).stdout(Stdio::null()).stderr(log);
        let mut herald = Proc::spawn("herald", &mut command, Some(&bench.pid_file))?;
        if let Err(e) = procs::wait_ready(&mut herald, addr, "/health", Duration::from_secs(30)) {
            return Err(format!("{e}\n{}", tail(&log_path)));
        }
        heralds.push(herald);
        addrs.push(addr);
        logs.push(log_path);
    }

    let tag = format!("{}{}{}", kind.name(), setup.instances, std::process::id());
    let body = match kind {
        Kind::Duplicates => Body::Cycle(DUPLICATE_SET),
        Kind::BadgeOnly => Body::Badge,
        _ => Body::Unique,
    };
    // Each instance gets its share of the connections; unique events are unique per instance
    // too, duplicates cycle over the same set everywhere (so retries land on other instances).
    let tags: Vec<String> = (0..setup.instances)
        .map(|i| if kind == Kind::Duplicates { tag.clone() } else { format!("{tag}i{i}") })
        .collect();
    fn split<'a>(
        bench: &'a Bench,
        addrs: &[SocketAddr],
        body: Body,
        tags: &'a [String],
        d: Duration,
        pushkey: Option<&'static str>,
    ) -> Vec<Load<'a>> {
        let n = addrs.len() as u32;
        let options = &bench.options;
        addrs
            .iter()
            .zip(tags)
            .map(|(addr, tag)| {
                let mut load = bench.load(*addr, body, tag, d);
                load.connections = (options.connections / n).max(1);
                load.threads = (2 / n).max(1);
                if let Some(pushkey) = pushkey {
                    load.pushkey = pushkey;
                }
                load
            })
            .collect()
    }
    let mut problems = Vec::new();
    // Warm-up: connection pools, allocator, page cache. For duplicates it also delivers the set
    // of events once, so that every measured request is a dedup hit.
    let warmup = match kind {
        Kind::Duplicates => options.warmup.max(Duration::from_secs(1)),
        _ => options.warmup,
    };
    if !warmup.is_zero() {
        let pushes_before = pushes()?;
        // Duplicates prime the very events the measured run repeats.
        let warm_tags: Vec<String> = tags
            .iter()
            .map(|t| if kind == Kind::Duplicates { t.clone() } else { format!("{t}w") })
            .collect();
        let warm_loads = split(bench, &addrs, body, &warm_tags, warmup, upstream.pushkey());
        let pids: Vec<u32> = heralds.iter().map(Proc::pid).collect();
        let warm_log = format!("{name}.warmup.txt");
        let warm = measure(bench, &pids, upstream.pid(), &warm_loads, &warm_log, None, None)?;
        let warm = warm.measured;
        if kind == Kind::Duplicates {
            let delivered = pushes()? - pushes_before;
            if warm.requests < u64::from(DUPLICATE_SET) || delivered != u64::from(DUPLICATE_SET) {
                problems.push(format!(
                    "priming: {} requests over {DUPLICATE_SET} events reached the push service \
                     {delivered} times (expected exactly {DUPLICATE_SET})",
                    warm.requests
                ));
            }
        }
    }

    // Requests wrk left in flight finish first, so that the counters below are the run's alone.
    addrs.iter().for_each(|a| wait_idle(*a));
    let metrics_before = outcomes_of(&addrs);
    let pushes_before = pushes()?;
    let run_loads = split(bench, &addrs, body, &tags, options.duration, upstream.pushkey());
    let profile = options.perf.then_some(name.as_str());
    let wal = setup.store_url.is_none().then(|| dir.join("data0").join("herald.db-wal"));
    let pids: Vec<u32> = heralds.iter().map(Proc::pid).collect();
    let run_log = format!("{name}.wrk.txt");
    let m = measure(bench, &pids, upstream.pid(), &run_loads, &run_log, profile, wal)?;
    let measured = m.measured;
    addrs.iter().for_each(|a| wait_idle(*a));
    let upstream_pushes = pushes()? - pushes_before;
    let metrics_after = outcomes_of(&addrs);
    let rss_hwm = procs::status_kb(pids[0], "VmHWM").unwrap_or(0);

    let mut herald_outcomes = BTreeMap::new();
    match (metrics_before, metrics_after) {
        (Some(before), Some(after)) => {
            for (outcome, n) in after {
                let delta = n - before.get(&outcome).copied().unwrap_or(0);
                if delta > 0 {
                    herald_outcomes.insert(outcome, delta);
                }
            }
            check(kind, &herald_outcomes, upstream_pushes, &measured, &mut problems);
        }
        _ => eprintln!("bench:   herald_notifications_total not found in /metrics; check skipped"),
    }
    for (herald, log_path) in heralds.iter_mut().zip(&logs) {
        if !herald.is_running() {
            problems.push(format!("herald exited during the run\n{}", tail(log_path)));
        }
    }
    for herald in heralds {
        herald.stop(Duration::from_secs(10));
    }
    if let Err(problem) = upstream.check() {
        problems.push(problem);
    }
    upstream.stop();
    if kind == Kind::UniqueFilled {
        // Hundreds of megabytes nobody will look at; the logs stay.
        let _ = std::fs::remove_dir_all(dir.join("data0"));
    }
    let label = match kind {
        Kind::Unique => "unique events".to_owned(),
        Kind::Duplicates => format!("duplicates ({DUPLICATE_SET} events)"),
        Kind::BadgeOnly => "badge-only".to_owned(),
        Kind::Fcm => "FCM unique events".to_owned(),
        Kind::Email => "email unique events".to_owned(),
        Kind::Apns => "APNs unique events".to_owned(),
        _ => format!("unique, {} rows", report::rows_label(options.rows)),
    };
    let label = if bench.postgres.is_some() { format!("{label}, {store}") } else { label };
    Ok(Outcome {
        kind,
        store,
        label,
        measured,
        rss_peak: m.rss_peak,
        rss_anon_peak: m.rss_anon_peak,
        rss_hwm,
        wal_peak: m.wal_peak,
        usage: m.usage,
        upstream_usage: m.upstream_usage,
        wall: m.wall,
        load_cpu: m.load_cpu,
        other_cpu: m.other_cpu,
        upstream_pushes,
        herald_outcomes,
        problems,
        fill,
        profiled: options.perf,
    })
}

/// Device outcomes summed over several instances.
fn outcomes_of(addrs: &[SocketAddr]) -> Option<BTreeMap<String, u64>> {
    let mut all = BTreeMap::new();
    for addr in addrs {
        for (outcome, n) in herald_outcomes(*addr)? {
            *all.entry(outcome).or_insert(0) += n;
        }
    }
    Some(all)
}

/// What the device outcomes and the push service's count must be for each scenario.
fn check(
    kind: Kind,
    outcomes: &BTreeMap<String, u64>,
    pushes: u64,
    measured: &Measured,
    problems: &mut Vec<String>,
) {
    let expected = if kind == Kind::Duplicates { "deduplicated" } else { "delivered" };
    for (outcome, n) in outcomes {
        if outcome != expected {
            problems.push(format!("{n} device outcomes `{outcome}` (expected only `{expected}`)"));
        }
    }
    let counted = outcomes.get(expected).copied().unwrap_or(0);
    // wrk does not count the requests still in flight when it stops.
    if counted < measured.requests {
        problems.push(format!(
            "herald counted {counted} `{expected}` for {} requests",
            measured.requests
        ));
    }
    let expected_pushes = if kind == Kind::Duplicates { 0 } else { counted };
    if pushes != expected_pushes {
        problems
            .push(format!("the push service received {pushes} pushes; expected {expected_pushes}"));
    }
}

/// Where a herald scenario's app delivers: the shared fake push service, or a fake of the
/// scenario's own, started before herald and stopped after it.
enum ScenarioUpstream<'a> {
    /// The shared WebPush push service (`bench_upstream`); the webpush scenarios.
    Shared(&'a Upstream),
    /// A fake FCM and token endpoint (`bench_fcm`).
    Fcm(FakeFcm),
    /// An SMTP sink (`bench_smtp_sink`).
    Email(SmtpSink),
    /// A fake APNs (`bench_apns`).
    Apns(FakeApns),
}

impl<'a> ScenarioUpstream<'a> {
    /// Starts `kind`'s own fake, if it has one; it may write its files into `dir`.
    fn start(bench: &'a Bench, kind: Kind, dir: &Path) -> Result<Self, String> {
        Ok(match kind {
            Kind::Fcm => ScenarioUpstream::Fcm(start_fcm(bench, dir)?),
            Kind::Email => ScenarioUpstream::Email(start_sink(bench)?),
            Kind::Apns => ScenarioUpstream::Apns(start_apns(bench, dir)?),
            _ => ScenarioUpstream::Shared(&bench.upstream),
        })
    }

    /// What it accepted so far (pushes, messages, mails).
    fn pushes(&self) -> Result<u64, String> {
        match self {
            ScenarioUpstream::Shared(upstream) => upstream.pushes(),
            ScenarioUpstream::Fcm(fcm) => fcm.stats.pushes(),
            ScenarioUpstream::Email(sink) => sink.stats.pushes(),
            ScenarioUpstream::Apns(apns) => apns.stats.pushes(),
        }
    }

    fn proc(&self) -> &Proc {
        match self {
            ScenarioUpstream::Shared(upstream) => &upstream.proc,
            ScenarioUpstream::Fcm(fcm) => &fcm.proc,
            ScenarioUpstream::Email(sink) => &sink.proc,
            ScenarioUpstream::Apns(apns) => &apns.proc,
        }
    }

    /// Its process, whose CPU the report counts as the upstream's.
    fn pid(&self) -> u32 {
        self.proc().pid()
    }

    /// Herald's configuration: one app for the benchmark's app_id, delivering here.
    fn config(
        &self,
        bench: &Bench,
        data: &Path,
        dir: &Path,
        addr: SocketAddr,
        setup: &Setup,
    ) -> String {
        let text = match self {
            ScenarioUpstream::Shared(_) => {
                return herald_config(data, &bench.run_dir.join("vapid.pem"), addr, setup)
            }
            ScenarioUpstream::Fcm(fcm) => fcm_config(data, dir, &fcm.endpoint, addr),
            ScenarioUpstream::Email(sink) => email_config(data, sink.smtp, addr),
            ScenarioUpstream::Apns(apns) => apns_config(data, dir, apns, addr),
        };
        match &setup.store_url {
            Some(url) => format!("{text}\n[store]\nurl = '{url}'\n"),
            None => text,
        }
    }

    /// The device's pushkey when it is not the shared push service's p256dh.
    fn pushkey(&self) -> Option<&'static str> {
        match self {
            ScenarioUpstream::Shared(_) | ScenarioUpstream::Fcm(_) => None,
            // An email pusher's pushkey is an address.
            ScenarioUpstream::Email(_) => Some(EMAIL_PUSHKEY),
            ScenarioUpstream::Apns(_) => Some(APNS_PUSHKEY),
        }
    }

    /// The fake's own checks, after the run.
    fn check(&self) -> Result<(), String> {
        match self {
            ScenarioUpstream::Shared(_) => Ok(()),
            ScenarioUpstream::Fcm(fcm) => fcm.check(),
            ScenarioUpstream::Email(sink) => sink.check(),
            ScenarioUpstream::Apns(apns) => apns.check(),
        }
    }

    /// Stops the scenario's own fake; the shared one runs on.
    fn stop(self) {
        let proc = match self {
            ScenarioUpstream::Shared(_) => return,
            ScenarioUpstream::Fcm(fcm) => fcm.proc,
            ScenarioUpstream::Email(sink) => sink.proc,
            ScenarioUpstream::Apns(apns) => apns.proc,
        };
        proc.stop(Duration::from_secs(2));
    }
}

fn herald_config(data: &Path, vapid: &Path, addr: SocketAddr, setup: &Setup) -> String {
    let store = match &setup.store_url {
        Some(url) => format!("\n[store]\nurl = '{url}'\n"),
        None => String::new(),
    };
    format!(
        r#"# Written by `cargo xtask bench`.
data_dir = '{data}'

[server]
listen = "{addr}"
{store}
[log]
level = "warn"

[apps."{app}"]
kind = "webpush"
vapid_private_key = '{vapid}'
create_vapid_key_if_missing = true
vapid_subject = "mailto:bench@example.org"
allowed_endpoints = ["127.0.0.1:*"]
"#,
        data = data.display(),
        vapid = vapid.display(),
        app = wrk::APP_ID,
    )
}

/// The stats server of a scenario's own fake (`GET /stats`: JSON with at least `pushes`).
struct Stats {
    /// The fake's program, for messages.
    name: &'static str,
    addr: SocketAddr,
}

impl Stats {
    fn get(&self) -> Result<Value, String> {
        let (_, body) = procs::http_get(self.addr, "/stats")?;
        serde_json::from_str(&body).map_err(|e| format!("{} stats: {e}", self.name))
    }

    /// What the fake accepted (pushes, messages, mails).
    fn pushes(&self) -> Result<u64, String> {
        self.get()?["pushes"].as_u64().ok_or_else(|| format!("{} stats without pushes", self.name))
    }
}

/// The running fake FCM of the fcm scenario (`bench_fcm`).
struct FakeFcm {
    proc: Proc,
    /// Its stats server.
    stats: Stats,
    /// FCM's base URL.
    endpoint: String,
}

impl FakeFcm {
    /// Every message passed FCM's checks, over one connection, with one token fetched.
    fn check(&self) -> Result<(), String> {
        let stats = self.stats.get()?;
        let n = |k: &str| stats[k].as_u64().unwrap_or(u64::MAX);
        if n("rejected") != 0 || n("token_grants") != 1 || n("connections") != 1 {
            return Err(format!(
                "fake FCM: expected no refused message, one token, one connection: {stats}"
            ));
        }
        Ok(())
    }
}

fn start_fcm(bench: &Bench, dir: &Path) -> Result<FakeFcm, String> {
    let mut command = Command::new(bench.examples.join("bench_fcm"));
    command
        .arg("--dir")
        .arg(dir)
        .args(["--threads", "1", "--max-seconds", "3600"])
        .stdout(Stdio::piped());
    let mut proc = Proc::spawn("bench_fcm", &mut command, Some(&bench.pid_file))?;
    let line = proc.first_line(Duration::from_secs(20))?;
    let hello: Value =
        serde_json::from_str(&line).map_err(|e| format!("bench_fcm said {line:?}: {e}"))?;
    let addr = hello["addr"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("bench_fcm said {line:?}"))?;
    let endpoint = hello["endpoint"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("bench_fcm said {line:?}"))?;
    Ok(FakeFcm { proc, stats: Stats { name: "bench_fcm", addr }, endpoint })
}

/// An FCM app for the benchmark's app_id; `bench_fcm` wrote the CA and the service account to
/// `dir`.
fn fcm_config(data: &Path, dir: &Path, endpoint: &str, addr: SocketAddr) -> String {
    format!(
        r#"# Written by `cargo xtask bench`.
data_dir = '{data}'

[server]
listen = "{addr}"

[log]
level = "warn"

[apps."{app}"]
kind = "fcm"
service_account_file = '{account}'
endpoint = "{endpoint}"

[apps."{app}".upstream]
ca_file = '{ca}'
"#,
        data = data.display(),
        account = dir.join("service-account.json").display(),
        ca = dir.join("test-ca.pem").display(),
        app = wrk::APP_ID,
    )
}

/// The pushkey of the email scenario's pusher.
const EMAIL_PUSHKEY: &str = "bench@example.org";
/// The email app's connection pool: mails in flight at most.
const EMAIL_CONNECTIONS: u64 = 16;

/// The running SMTP sink of the email scenario (`bench_smtp_sink`).
struct SmtpSink {
    proc: Proc,
    /// Its stats server.
    stats: Stats,
    /// Its SMTP port.
    smtp: SocketAddr,
}

impl SmtpSink {
    /// The pool held: connections were reused (at most `max_connections`, plus one per 100 mails
    /// for `max_messages_per_connection`).
    fn check(&self) -> Result<(), String> {
        let stats = self.stats.get()?;
        let (connections, pushes) = (
            stats["connections"].as_u64().unwrap_or(u64::MAX),
            stats["pushes"].as_u64().unwrap_or(0),
        );
        if connections > EMAIL_CONNECTIONS + pushes / 100 + 1 {
            return Err(format!(
                "SMTP sink: {connections} connections for {pushes} mails: {stats}"
            ));
        }
        Ok(())
    }
}

fn start_sink(bench: &Bench) -> Result<SmtpSink, String> {
    let mut command = Command::new(bench.examples.join("bench_smtp_sink"));
    command.args(["--max-seconds", "3600"]).stdout(Stdio::piped());
    let mut proc = Proc::spawn("bench_smtp_sink", &mut command, Some(&bench.pid_file))?;
    let line = proc.first_line(Duration::from_secs(10))?;
    let hello: Value =
        serde_json::from_str(&line).map_err(|e| format!("bench_smtp_sink said {line:?}: {e}"))?;
    let addr = |k: &str| {
        hello[k]
            .as_str()
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| format!("bench_smtp_sink said {line:?}"))
    };
    Ok(SmtpSink {
        stats: Stats { name: "bench_smtp_sink", addr: addr("addr")? },
        smtp: addr("smtp")?,
        proc,
    })
}

/// An email app for the benchmark's app_id, mailing the sink over plain SMTP (loopback), with
/// no per-address limit (every request goes to one address).
fn email_config(data: &Path, smtp: SocketAddr, addr: SocketAddr) -> String {
    format!(
        r#"# Written by `cargo xtask bench`.
data_dir = '{data}'

[server]
listen = "{addr}"

[log]
level = "warn"

[apps."{app}"]
kind = "email"
smtp_url = "smtp://{smtp}"
from = "Herald bench <bench@example.org>"
allowed_domains = ["example.org"]
max_per_address = 0
max_connections = {EMAIL_CONNECTIONS}
client_url = "https://app.example.org/#/room/{{room_id}}/{{event_id}}"
"#,
        data = data.display(),
        app = wrk::APP_ID,
    )
}

/// The pushkey of the apns scenario's device: an iOS device token (32 bytes, `a0`…`bf`) in
/// base64, as iOS apps register it; Herald sends it as 64 hex digits.
const APNS_PUSHKEY: &str = "oKGio6SlpqeoqaqrrK2ur7CxsrO0tba3uLm6u7y9vr8=";

/// The running fake APNs of the apns scenario (`bench_apns`).
struct FakeApns {
    proc: Proc,
    /// Its stats server.
    stats: Stats,
    /// The fake's base URL.
    endpoint: String,
    /// The provider token's key id and team id, and the app's topic.
    key_id: String,
    team_id: String,
    topic: String,
}

impl FakeApns {
    /// Every notification passed APNs's checks, all as streams of one HTTP/2 connection (64 in
    /// flight at most, far below the fake's `MAX_CONCURRENT_STREAMS` of 1000).
    fn check(&self) -> Result<(), String> {
        let stats = self.stats.get()?;
        let n = |k: &str| stats[k].as_u64().unwrap_or(u64::MAX);
        if n("rejected") != 0 || n("connections") != 1 {
            return Err(format!(
                "fake APNs: expected no refused notification, one connection: {stats}"
            ));
        }
        Ok(())
    }
}

fn start_apns(bench: &Bench, dir: &Path) -> Result<FakeApns, String> {
    let mut command = Command::new(bench.examples.join("bench_apns"));
    command
        .arg("--dir")
        .arg(dir)
        .args(["--threads", "1", "--max-seconds", "3600"])
        .stdout(Stdio::piped());
    let mut proc = Proc::spawn("bench_apns", &mut command, Some(&bench.pid_file))?;
    let line = proc.first_line(Duration::from_secs(20))?;
    let hello: Value =
        serde_json::from_str(&line).map_err(|e| format!("bench_apns said {line:?}: {e}"))?;
    let text = |k: &str| {
        hello[k].as_str().map(str::to_owned).ok_or_else(|| format!("bench_apns said {line:?}"))
    };
    let addr = text("addr")?.parse().map_err(|e| format!("bench_apns address: {e}"))?;
    Ok(FakeApns {
        stats: Stats { name: "bench_apns", addr },
        endpoint: text("endpoint")?,
        key_id: text("key_id")?,
        team_id: text("team_id")?,
        topic: text("topic")?,
        proc,
    })
}

/// An APNs app (token auth) for the benchmark's app_id; `bench_apns` wrote the CA and the `.p8`
/// key to `dir`.
fn apns_config(data: &Path, dir: &Path, apns: &FakeApns, addr: SocketAddr) -> String {
    format!(
        r#"# Written by `cargo xtask bench`.
data_dir = '{data}'

[server]
listen = "{addr}"

[log]
level = "warn"

[apps."{app}"]
kind = "apns"
key_file = '{key}'
key_id = "{key_id}"
team_id = "{team_id}"
topic = "{topic}"
endpoint = "{endpoint}"

[apps."{app}".upstream]
ca_file = '{ca}'
"#,
        data = data.display(),
        key = dir.join("apns-key.p8").display(),
        key_id = apns.key_id,
        team_id = apns.team_id,
        topic = apns.topic,
        endpoint = apns.endpoint,
        ca = dir.join("test-ca.pem").display(),
        app = wrk::APP_ID,
    )
}

fn prefill(bench: &Bench, db: &Path) -> Result<(u64, f64), String> {
    let rows = bench.options.rows;
    eprintln!("bench:   pre-filling the dedup table with {rows} rows …");
    let mut command = Command::new(bench.examples.join("bench_fill"));
    command.arg("--db").arg(db).args(["--rows", &rows.to_string()]).stdout(Stdio::piped());
    let mut proc = Proc::spawn("bench_fill", &mut command, Some(&bench.pid_file))?;
    // About 100k rows/s at worst; bounded all the same.
    let line = proc.first_line(Duration::from_secs(120 + rows / 20_000))?;
    let status = proc.wait(Duration::from_secs(30))?;
    if !status.success() {
        return Err(format!("bench_fill failed ({status})"));
    }
    let v: Value =
        serde_json::from_str(&line).map_err(|e| format!("bench_fill said {line}: {e}"))?;
    let seconds = v["seconds"].as_f64().unwrap_or(0.0);
    eprintln!("bench:   filled {rows} rows in {seconds:.1} s");
    Ok((rows, seconds))
}

/// `herald_notifications_total` summed over apps, by outcome; `None` when /metrics lacks it.
fn herald_outcomes(addr: SocketAddr) -> Option<BTreeMap<String, u64>> {
    let (status, text) = procs::http_get(addr, "/metrics").ok()?;
    if status != 200 {
        return None;
    }
    let mut outcomes = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("herald_notifications_total{")) {
        let outcome = line.split("outcome=\"").nth(1).and_then(|r| r.split('"').next())?;
        let n: f64 = line.rsplit(' ').next()?.parse().ok()?;
        *outcomes.entry(outcome.to_owned()).or_insert(0) += n as u64;
    }
    (!outcomes.is_empty()).then_some(outcomes)
}

/// Waits (at most 10 s) until herald's counters are final: no request in flight when herald
/// exports the gauge, and the device outcome totals unchanged across 200 ms (a slow backend,
/// such as email at a few hundred mails a second, finishes wrk's last requests well after wrk
/// stops; reading the counters earlier splits a delivery's push and its outcome between runs).
fn wait_idle(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let total = || herald_outcomes(addr).map(|o| o.values().sum::<u64>());
    let in_flight = || {
        procs::http_get(addr, "/metrics").ok().and_then(|(_, text)| {
            text.lines()
                .find(|l| l.starts_with("herald_in_flight_requests "))
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        })
    };
    let mut last = total();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        let now = total();
        // The scrape itself is not a notify request.
        if now == last && in_flight().is_none_or(|n| n <= 0.0) {
            return;
        }
        last = now;
    }
}

/// The last lines of a log file, for error messages.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(20);
    format!("--- {} (last lines) ---\n{}", path.display(), lines[start..].join("\n"))
}

/// A `perf record` of herald during the measured run.
struct Profiler {
    proc: Proc,
    data: PathBuf,
    name: String,
}

fn start_perf(bench: &Bench, pid: u32, duration: Duration, name: &str) -> Option<Profiler> {
    let data = bench.bench_dir.join(format!("perf-{name}.data"));
    let mut command = Command::new("perf");
    // cpu-clock: works in VMs without hardware counters. DWARF call graphs: the release profile
    // keeps line tables but no frame pointers.
    command
        .args(["record", "-e", "cpu-clock", "-F", "499", "--call-graph", "dwarf,16384", "-p"])
        .arg(pid.to_string())
        .arg("-o")
        .arg(&data)
        .args(["--", "sleep"])
        .arg(duration.as_secs().to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    match Proc::spawn("perf", &mut command, None) {
        Ok(proc) => Some(Profiler { proc, data, name: name.to_owned() }),
        Err(e) => {
            eprintln!("bench:   --perf: {e} (install perf: Debian `linux-perf`)");
            None
        }
    }
}

fn finish_perf(profiler: Profiler) {
    if let Err(e) = profiler.proc.wait(Duration::from_secs(60)) {
        eprintln!("bench:   perf: {e}");
        return;
    }
    // Self time by function, then inclusive time (what each call tree costs).
    let views: [(&str, &[&str]); 2] = [
        ("self", &["--no-children", "--sort", "dso,symbol", "--percent-limit", "0.3"]),
        ("children", &["--children", "--sort", "symbol", "--percent-limit", "1"]),
    ];
    for (view, args) in views {
        let path = profiler.data.with_file_name(format!("perf-{}.{view}.txt", profiler.name));
        let output = Command::new("perf")
            .args(["report", "--stdio", "-g", "none"])
            .args(args)
            .arg("-i")
            .arg(&profiler.data)
            .stderr(Stdio::null())
            .output();
        match output {
            Ok(out) if out.status.success() => {
                // perf pads every line to its longest symbol; generic Rust names are very long.
                let text: String = String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                    .map(|l| format!("{}\n", l.chars().take(200).collect::<String>().trim_end()))
                    .collect();
                let _ = std::fs::write(&path, text);
                eprintln!("bench:   profile: {}", path.display());
            }
            _ => eprintln!("bench:   perf report failed; raw profile: {}", profiler.data.display()),
        }
    }
}

/// The cryptographic floor of one WebPush message in this run, in CPU µs (the `crypto_floor`
/// example: one thread, nothing else of Herald's running). `None`, with a warning, if it cannot
/// be measured: the report then shows no ratios to it.
fn crypto_floor(examples: &Path, quick: bool) -> Option<f64> {
    let seconds = if quick { "0.5" } else { "3" };
    let run = Command::new(examples.join("crypto_floor")).args(["--seconds", seconds]).output();
    let floor = run.ok().filter(|o| o.status.success()).and_then(|o| {
        let line: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
        line["microseconds_per_message"].as_f64()
    });
    match floor {
        Some(us) => eprintln!("bench: cryptographic floor of a WebPush message: {us:.1} µs"),
        None => eprintln!("bench: WARNING: the cryptographic floor could not be measured"),
    }
    floor
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        let args = |s: &str| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        let o = parse_options(&args("--quick")).unwrap();
        assert_eq!((o.duration.as_secs(), o.rows), (2, 200_000));
        let o = parse_options(&args("--quick --duration 5 --only unique,badge_only")).unwrap();
        assert_eq!(o.duration.as_secs(), 5);
        assert_eq!(o.only, Some(vec![Kind::Unique, Kind::BadgeOnly]));
        let o = parse_options(&args("--only apns,fcm,email")).unwrap();
        assert_eq!(o.only, Some(vec![Kind::Apns, Kind::Fcm, Kind::Email]));
        assert!(parse_options(&args("--only nope")).is_err());
        assert!(parse_options(&args("--rows")).is_err());
    }
}
