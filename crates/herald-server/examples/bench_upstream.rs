//! A fast fake push service for `cargo xtask bench`: answers every POST with 201 at once, without
//! checking VAPID or decrypting, so that it is never the bottleneck of a benchmark.
//!
//! ```text
//! bench_upstream [--threads N] [--max-seconds S]
//! ```
//!
//! On start it prints one JSON line on stdout: the address it listens on (127.0.0.1, a free port)
//! and one browser subscription (`p256dh`, `auth`, both base64url) for the benchmark's devices.
//! Herald encrypts for that key for real; this service only counts the bodies. `GET /stats`
//! answers `{"pushes":N,"connections":M}`. It exits by itself after `--max-seconds` (default one
//! hour), so a harness that dies cannot leave it running for ever.

use std::convert::Infallible;
use std::error::Error;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_testkit::fake_push::FakePushService;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

#[derive(Default)]
struct Stats {
    pushes: AtomicU64,
    connections: AtomicU64,
}

struct Options {
    threads: usize,
    max_seconds: u64,
}

fn options() -> Result<Options, String> {
    let mut options = Options { threads: 1, max_seconds: 3600 };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| format!("{name} needs a number"))
        };
        match arg.as_str() {
            "--threads" => options.threads = value("--threads")?.max(1) as usize,
            "--max-seconds" => options.max_seconds = value("--max-seconds")?,
            other => return Err(format!("unknown argument {other}")),
        }
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
        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await?;
        // The testkit's fake push service makes valid subscription keys; only the keys are used.
        let keys = FakePushService::start().await.subscribe("/push/bench");
        let hello = serde_json::json!({
            "addr": listener.local_addr()?.to_string(),
            "p256dh": keys.p256dh,
            "auth": keys.auth,
        });
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{hello}")?;
        stdout.flush()?;
        drop(stdout);

        let stats = Arc::new(Stats::default());
        let serve = async {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                stats.connections.fetch_add(1, Ordering::Relaxed);
                let stats = Arc::clone(&stats);
                let service =
                    hyper::service::service_fn(move |request| answer(Arc::clone(&stats), request));
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        };
        tokio::select! {
            () = serve => {}
            () = tokio::time::sleep(Duration::from_secs(options.max_seconds)) => {
                eprintln!("bench_upstream: --max-seconds reached; exiting");
            }
        }
        Ok(())
    })
}

async fn answer(
    stats: Arc<Stats>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.method() == Method::GET && request.uri().path() == "/stats" {
        let body = format!(
            r#"{{"pushes":{},"connections":{}}}"#,
            stats.pushes.load(Ordering::Relaxed),
            stats.connections.load(Ordering::Relaxed)
        );
        return Ok(Response::new(Full::new(Bytes::from(body))));
    }
    // Read the (at most 4 KiB) body so that the connection can be reused.
    let _ = Limited::new(request.into_body(), 64 * 1024).collect().await;
    stats.pushes.fetch_add(1, Ordering::Relaxed);
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::CREATED;
    Ok(response)
}
