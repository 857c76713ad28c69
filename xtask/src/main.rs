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

fn ci() -> Result<(), String> {
    cargo(&["fmt", "--all", "--", "--check"])?;
    cargo(&["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"])?;
    cargo(&["test", "--workspace"])?;
    // The server with no optional backend (only `log`): each backend is a Cargo feature, and
    // nothing else notices when code or tests start to need one. Same target dir, so only
    // herald-server and what its features change are rebuilt.
    let bare = ["-p", "herald-server", "--no-default-features"];
    cargo(&[&["clippy"], &bare[..], &["--all-targets", "--", "-D", "warnings"]].concat())?;
    cargo(&[&["test"], &bare[..]].concat())?;
    Ok(())
}
