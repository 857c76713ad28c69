//! Project chores, run as `cargo xtask <task>` (alias in `.cargo/config.toml`).
//!
//! - `ci`: what CI runs: format check, clippy with warnings denied, every test; then clippy and
//!   the tests of `herald-server` without default features (no backend but `log`, SQLite only),
//!   and clippy (which compiles the tests) with each optional feature alone. A test run that
//!   outlasts its limit is killed and fails the task. The PostgreSQL tests need Debian's `postgresql`
//!   binaries: installed first when missing and running as root on Debian, else named.
//! - `bench [--quick]`: the end-to-end benchmark (see `docs/performance.md`).

mod bench;

use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("bench") => bench::run(&args[1..]),
        _ => {
            eprintln!("usage: cargo xtask <ci | bench [--quick]>");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `cargo` with `args`, failing with a message naming the step.
pub(crate) fn cargo(args: &[&str]) -> Result<(), String> {
    cargo_within(args, None)
}

/// How long the tests of one `cargo test` may run once built. The whole suite takes a few
/// minutes; a test that hangs must fail the run, naming itself, long before CI's own limit.
const TEST_RUN_LIMIT: Duration = Duration::from_secs(15 * 60);

/// Builds the tests of `args` (unlimited: a cold build is slow), then runs them within
/// [`TEST_RUN_LIMIT`].
fn cargo_test(args: &[&str]) -> Result<(), String> {
    cargo(&[&["test"], args, &["--no-run"]].concat())?;
    cargo_within(&[&["test"], args].concat(), Some(TEST_RUN_LIMIT))
}

/// Runs `cargo` with `args`; with a `limit`, kills it and everything it started (its process
/// group) once the limit is over.
fn cargo_within(args: &[&str], limit: Option<Duration>) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("xtask: cargo {}", args.join(" "));
    let started = Instant::now();
    let mut command = Command::new(cargo);
    command.args(args);
    if limit.is_some() {
        // Its own group, so that the test binaries it runs go with it.
        command.process_group(0);
    }
    let mut child = command.spawn().map_err(|e| format!("cannot run cargo: {e}"))?;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| format!("waiting for cargo: {e}"))? {
            break status;
        }
        if limit.is_some_and(|limit| started.elapsed() > limit) {
            let _ = Command::new("kill").args(["-KILL", &format!("-{}", child.id())]).status();
            let _ = child.wait();
            return Err(format!(
                "`cargo {}` still running after {:?}: a test hangs (the last one named \
                 \"has been running for over 60 seconds\" above)",
                args.join(" "),
                started.elapsed()
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("xtask: took {:.0?}", started.elapsed());
    if status.success() {
        Ok(())
    } else {
        Err(format!("`cargo {}` failed ({status})", args.join(" ")))
    }
}

/// The optional features of `herald-server`: each backend, and the PostgreSQL store. A new
/// backend crate adds its feature here, and CI then builds, lints and tests the server with it
/// alone.
const BACKEND_FEATURES: &[&str] = &["webpush", "fcm", "email", "apns", "postgres"];

/// Makes sure the PostgreSQL server binaries the tests start clusters from are there: installs
/// Debian's `postgresql` package when they are missing and we are root on Debian, else says what
/// to install (the tests would fail, naming it too).
fn ensure_postgres() -> Result<(), String> {
    let installed = || {
        std::fs::read_dir("/usr/lib/postgresql")
            .map(|dirs| dirs.filter_map(Result::ok).any(|d| d.path().join("bin/initdb").is_file()))
            .unwrap_or(false)
    };
    if installed() || std::env::var_os("HERALD_TEST_PG_BIN").is_some() {
        return Ok(());
    }
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(str::to_owned))
        .is_some_and(|l| l.split_whitespace().nth(2) == Some("0"));
    let debian = std::path::Path::new("/etc/debian_version").exists();
    if !(root && debian) {
        return Err("the PostgreSQL store's tests need PostgreSQL's server binaries: install \
             them (Debian/Ubuntu: `apt-get install postgresql`), or set HERALD_TEST_PG_BIN to their directory"
            .into());
    }
    eprintln!("xtask: installing postgresql (apt-get) for the PostgreSQL store's tests");
    for args in [&["update", "-qq"][..], &["install", "-y", "-qq", "postgresql"][..]] {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map_err(|e| format!("cannot run apt-get: {e}"))?;
        if !status.success() {
            return Err(format!("`apt-get {}` failed ({status})", args.join(" ")));
        }
    }
    if installed() {
        Ok(())
    } else {
        Err("apt-get installed postgresql, but no /usr/lib/postgresql/*/bin/initdb".into())
    }
}

fn ci() -> Result<(), String> {
    let started = Instant::now();
    cargo(&["fmt", "--all", "--", "--check"])?;
    ensure_postgres()?;
    // Every feature on: the whole workspace.
    cargo(&["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"])?;
    cargo_test(&["--workspace"])?;
    // The server with no optional backend (only `log`), then with each backend alone: each is a
    // Cargo feature, and nothing else notices when code or tests start to need another one.
    // Clippy with `--all-targets` compiles the tests of every combination; the tests run again
    // only for the smallest server (they are the same tests, and CI time is finite).
    // Same target dir, so only herald-server and what its features change are rebuilt.
    let alone: Vec<String> = BACKEND_FEATURES.iter().map(|f| f.to_string()).collect();
    let combinations = std::iter::once(None).chain(alone.iter().map(Some));
    for feature in combinations {
        let mut args = vec!["-p", "herald-server", "--no-default-features"];
        if let Some(feature) = feature {
            args.extend(["--features", feature.as_str()]);
        }
        cargo(&[&["clippy"], &args[..], &["--all-targets", "--", "-D", "warnings"]].concat())?;
        if feature.is_none() {
            cargo_test(&args)?;
        }
    }
    eprintln!("xtask: ci passed in {:.0?}", started.elapsed());
    Ok(())
}
