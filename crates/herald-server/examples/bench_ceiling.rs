//! The ceiling for `cargo xtask bench`: a bare hyper HTTP/1.1 server that reads each request's body
//! and answers `{"rejected":[]}`, doing nothing else. No gateway can be faster on the same machine
//! and load, so every Herald figure is given as a ratio to this one.
//!
//! ```text
//! bench_ceiling [--threads N] [--max-seconds S]
//! ```
//!
//! It runs on tokio's multi-threaded runtime (one worker per core unless `--threads` says
//! otherwise), as `herald serve` does, listens on 127.0.0.1 and a free port, and prints
//! `{"addr":"127.0.0.1:PORT"}` on stdout once it is ready. It exits by itself after
//! `--max-seconds` (default one hour).

use std::convert::Infallible;
use std::error::Error;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

const ANSWER: &[u8] = br#"{"rejected":[]}"#;

fn main() -> Result<(), Box<dyn Error>> {
    let mut threads = 0usize;
    let mut max_seconds = 3600u64;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().and_then(|v| v.parse::<u64>().ok());
        match (arg.as_str(), value) {
            ("--threads", Some(n)) => threads = n as usize,
            ("--max-seconds", Some(n)) => max_seconds = n,
            _ => {
                return Err(format!("bad argument {arg} (expected --threads N, --max-seconds S)"))?
            }
        }
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if threads > 0 {
        builder.worker_threads(threads);
    }
    builder.enable_all().build()?.block_on(async {
        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await?;
        let hello = serde_json::json!({ "addr": listener.local_addr()?.to_string() });
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
                let _ = stream.set_nodelay(true);
                let service = hyper::service::service_fn(answer);
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        };
        tokio::select! {
            () = serve => {}
            () = tokio::time::sleep(Duration::from_secs(max_seconds)) => {
                eprintln!("bench_ceiling: --max-seconds reached; exiting");
            }
        }
        Ok(())
    })
}

async fn answer(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    // Read the body, as any gateway must.
    let _ = Limited::new(request.into_body(), 512 * 1024).collect().await;
    let mut response = Response::new(Full::new(Bytes::from_static(ANSWER)));
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}
