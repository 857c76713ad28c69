//! A fake APNs for `cargo xtask bench`'s `apns` scenario: the testkit's fake APNs (HTTPS from a
//! test CA, HTTP/2 only), answering every valid notification with 200 at once. It still checks
//! what Apple checks (the provider token's ES256 signature, once per token, its `kid`, `iss` and
//! age, the topic, the device token, the payload), but records nothing, so that it stays cheap.
//!
//! ```text
//! bench_apns --dir DIR [--threads N] [--max-seconds S]
//! ```
//!
//! It writes `DIR/test-ca.pem` and `DIR/apns-key.p8` (a provider-token signing key), then prints
//! one JSON line on stdout: `addr` (a plain HTTP/1.1 stats server: `GET /stats` answers
//! `{"pushes":N,"rejected":R,"connections":C}`), `endpoint` (the fake's base URL for the app's
//! `endpoint`), and the `key_id`, `team_id` and `topic` the app must use. It exits by itself
//! after `--max-seconds` (default one hour), so a harness that dies cannot leave it running.

use std::convert::Infallible;
use std::error::Error;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_testkit::apns::{ApnsSigningKey, FakeApns};
use herald_testkit::tls::TestCa;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// The app's topic (bundle id).
const TOPIC: &str = "org.example.bench";

struct Options {
    dir: PathBuf,
    threads: usize,
    max_seconds: u64,
}

fn options() -> Result<Options, String> {
    let mut options = Options { dir: PathBuf::new(), threads: 1, max_seconds: 3600 };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = |name: &str| {
            args.next()
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| format!("{name} needs a number"))
        };
        match arg.as_str() {
            "--threads" => options.threads = number("--threads")?.max(1) as usize,
            "--max-seconds" => options.max_seconds = number("--max-seconds")?,
            "--dir" => options.dir = args.next().map(PathBuf::from).ok_or("--dir needs a path")?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if options.dir.as_os_str().is_empty() {
        return Err("--dir is required".into());
    }
    Ok(options)
}

fn main() -> Result<(), Box<dyn Error>> {
    let options = options()?;
    let runtime = if options.threads == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(options.threads)
            .enable_all()
            .build()?
    };
    runtime.block_on(async {
        std::fs::create_dir_all(&options.dir)?;
        let ca = TestCa::new();
        ca.write_pem(&options.dir);
        let key = ApnsSigningKey::new();
        std::fs::write(options.dir.join("apns-key.p8"), key.pem())?;
        let apns = Arc::new(FakeApns::token(&ca, &key, TOPIC).without_records().start().await);

        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await?;
        let hello = serde_json::json!({
            "addr": listener.local_addr()?.to_string(),
            "endpoint": apns.base_url(),
            "key_id": key.key_id,
            "team_id": key.team_id,
            "topic": TOPIC,
        });
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{hello}")?;
        stdout.flush()?;
        drop(stdout);

        let serve = async {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let apns = Arc::clone(&apns);
                let service = hyper::service::service_fn(move |_: Request<_>| {
                    let (requests, accepted) = (apns.requests(), apns.accepted());
                    let body = serde_json::json!({
                        "pushes": accepted,
                        "rejected": requests.saturating_sub(accepted),
                        "connections": apns.connections_accepted(),
                    });
                    async move {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body.to_string()))))
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        };
        tokio::select! {
            () = serve => {}
            () = tokio::time::sleep(Duration::from_secs(options.max_seconds)) => {
                eprintln!("bench_apns: --max-seconds reached; exiting");
            }
        }
        Ok(())
    })
}
