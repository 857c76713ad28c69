//! Project chores, run as `cargo xtask <task>` (alias in `.cargo/config.toml`).
//!
//! - `ci`: what CI runs: format check, clippy with warnings denied, every test; then clippy and
//!   the tests of `herald-server` without default features (no backend but `log`).
//! - `bench [--quick]`: the end-to-end benchmark (see `docs/performance.md`).

mod bench;

use std::process::{Command, ExitCode};

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
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("xtask: cargo {}", args.join(" "));
    let status =
        Command::new(cargo).args(args).status().map_err(|e| format!("cannot run cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`cargo {}` failed ({status})", args.join(" ")))
    }
}

/// The backend features of `herald-server`. A new backend crate adds its feature here, and CI
/// then builds, lints and tests the server with it alone.
const BACKEND_FEATURES: &[&str] = &["webpush", "fcm", "email", "apns"];

fn ci() -> Result<(), String> {
    cargo(&["fmt", "--all", "--", "--check"])?;
    // Every feature on: the whole workspace.
    cargo(&["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"])?;
    cargo(&["test", "--workspace"])?;
    // The server with no optional backend (only `log`), then with each backend alone: each is a
    // Cargo feature, and nothing else notices when code or tests start to need another one.
    // Same target dir, so only herald-server and what its features change are rebuilt.
    let alone: Vec<String> = BACKEND_FEATURES.iter().map(|f| f.to_string()).collect();
    let combinations = std::iter::once(None).chain(alone.iter().map(Some));
    for feature in combinations {
        // With one backend there is nothing between "alone" and "all": skip the duplicate run.
        if feature.is_some() && BACKEND_FEATURES.len() == 1 {
            continue;
        }
        let mut args = vec!["-p", "herald-server", "--no-default-features"];
        if let Some(feature) = feature {
            args.extend(["--features", feature.as_str()]);
        }
        cargo(&[&["clippy"], &args[..], &["--all-targets", "--", "-D", "warnings"]].concat())?;
        cargo(&[&["test"], &args[..]].concat())?;
    }
    Ok(())
}
