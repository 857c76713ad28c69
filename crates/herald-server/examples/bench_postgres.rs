//! A throwaway PostgreSQL cluster for `cargo xtask bench --store postgres`, from the same
//! testkit code the tests use (`herald_testkit::postgres`).
//!
//! ```text
//! bench_postgres [--databases N] [--max-seconds S]
//! ```
//!
//! It runs `initdb` into a temporary directory and starts `postgres` on a free loopback port with
//! `fsync = on` and `synchronous_commit = off` (the durability of the SQLite store's WAL with
//! `synchronous = NORMAL`: a crash may lose the last commits, never corrupts), creates databases
//! `bench0` … `bench<N-1>` and prints one JSON line: `{"url", "port", "version"}` (the URL names
//! database `herald`). On SIGTERM or SIGINT, or after `--max-seconds` (default one hour, so a
//! harness that dies cannot leave it running for ever), it stops the cluster and deletes it.

use std::error::Error;
use std::time::Duration;

use herald_testkit::postgres::{find_binaries, Options, TestPostgres};

fn main() -> Result<(), Box<dyn Error>> {
    let (mut databases, mut max_seconds) = (16u32, 3600u64);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || -> Result<u64, String> {
            args.next().and_then(|v| v.parse().ok()).ok_or_else(|| format!("{arg} needs a number"))
        };
        match arg.as_str() {
            "--databases" => databases = value()? as u32,
            "--max-seconds" => max_seconds = value()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let options = Options { fsync: true, synchronous_commit: false, max_connections: 200 };
    let pg = TestPostgres::try_start_with(options)?;
    for n in 0..databases {
        pg.create_database(&format!("bench{n}"));
    }
    let version = find_binaries()
        .and_then(|bin| Some(bin.parent()?.file_name()?.to_string_lossy().into_owned()))
        .unwrap_or_default();
    println!("{}", serde_json::json!({ "url": pg.url(), "port": pg.port(), "version": version }));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
            () = tokio::time::sleep(Duration::from_secs(max_seconds)) => {
                eprintln!("bench_postgres: --max-seconds reached; exiting");
            }
        }
        Ok::<_, std::io::Error>(())
    })?;
    drop(pg);
    Ok(())
}
