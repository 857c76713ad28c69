//! A fake FCM for `cargo xtask bench`'s `fcm` scenario: the testkit's OAuth token endpoint and
//! FCM HTTP v1 endpoint (HTTPS from a test CA, HTTP/2), answering every valid message with 200 at
//! once. They still check what Google checks (the bearer token, the message's shape, string-only
//! `data`), but record nothing, so that they stay cheap.
//!
//! ```text
//! bench_fcm --dir DIR [--threads N] [--max-seconds S]
//! ```
//!
//! It writes `DIR/test-ca.pem` and `DIR/service-account.json` (for project `herald-test`, its
//! `token_uri` the fake token endpoint), then prints one JSON line on stdout: `addr` (a plain
//! HTTP/1.1 stats server: `GET /stats` answers `{"pushes":N,"rejected":R,"token_grants":G,
//! "connections":C}`) and `endpoint` (FCM's base URL for the app's `endpoint`). It exits by itself
//! after `--max-seconds` (default one hour), so a harness that dies cannot leave it running.

use std::convert::Infallible;
use std::error::Error;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_testkit::fcm::{FakeFcm, FakeOauth, TEST_PROJECT};
use herald_testkit::tls::TestCa;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

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
        let oauth = FakeOauth::start(&ca).await;
        oauth.service_account(TEST_PROJECT).write(&options.dir);
        let fcm = Arc::new(FakeFcm::start(&ca, &oauth, TEST_PROJECT).await);
        fcm.set_recording(false);
        let oauth = Arc::new(oauth);

        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await?;
        let hello = serde_json::json!({
            "addr": listener.local_addr()?.to_string(),
            "endpoint": fcm.base_url(),
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
                let (fcm, oauth) = (Arc::clone(&fcm), Arc::clone(&oauth));
                let service = hyper::service::service_fn(move |_: Request<_>| {
                    let body = serde_json::json!({
                        "pushes": fcm.sent_count(),
                        "rejected": fcm.request_count() as u64 - fcm.sent_count(),
                        "token_grants": oauth.grants(),
                        "connections": fcm.connections_accepted(),
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
                eprintln!("bench_fcm: --max-seconds reached; exiting");
            }
        }
        Ok(())
    })
}
