//! A fast SMTP sink for `cargo xtask bench` (the `email` scenario): plain SMTP on 127.0.0.1 that
//! accepts every mail at once and counts it, so the benchmark measures Herald's email path
//! (templates, MIME, the SMTP client and its pool), not a mail server. Not a test fake: the
//! tests use a real SMTP server (`herald_testkit::smtp`).
//!
//! Prints one JSON line, `{"smtp": "127.0.0.1:P", "addr": "127.0.0.1:Q"}`, then serves SMTP on
//! `smtp` and `GET /stats` (`{"pushes": N, "connections": N}`) on `addr`. Exits after
//! `--max-seconds` (default 3600).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Default)]
struct Stats {
    pushes: AtomicU64,
    connections: AtomicU64,
    bytes: AtomicU64,
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut max_seconds = 3600;
    while let Some(arg) = args.next() {
        if arg == "--max-seconds" {
            max_seconds = args.next().and_then(|v| v.parse().ok()).unwrap_or(max_seconds);
        }
    }
    let smtp = TcpListener::bind("127.0.0.1:0").expect("bind smtp");
    let http = TcpListener::bind("127.0.0.1:0").expect("bind stats");
    println!(
        "{{\"smtp\": \"{}\", \"addr\": \"{}\"}}",
        smtp.local_addr().expect("smtp addr"),
        http.local_addr().expect("stats addr")
    );
    let stats = Arc::new(Stats::default());
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(max_seconds));
        std::process::exit(0);
    });
    let for_stats = Arc::clone(&stats);
    std::thread::spawn(move || {
        for stream in http.incoming().flatten() {
            let _ = serve_stats(stream, &for_stats);
        }
    });
    for stream in smtp.incoming().flatten() {
        let stats = Arc::clone(&stats);
        stats.connections.fetch_add(1, Ordering::Relaxed);
        std::thread::spawn(move || {
            let _ = serve_smtp(stream, &stats);
        });
    }
}

fn serve_stats(mut stream: TcpStream, stats: &Stats) -> std::io::Result<()> {
    let mut request = [0u8; 1024];
    let _ = stream.read(&mut request)?;
    let body = format!(
        "{{\"pushes\": {}, \"connections\": {}, \"bytes\": {}}}",
        stats.pushes.load(Ordering::Relaxed),
        stats.connections.load(Ordering::Relaxed),
        stats.bytes.load(Ordering::Relaxed)
    );
    write!(
        stream,
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn serve_smtp(stream: TcpStream, stats: &Stats) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut out = stream.try_clone()?;
    let mut lines = BufReader::new(stream);
    out.write_all(b"220 bench-sink ESMTP\r\n")?;
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let verb = line.get(..4).unwrap_or_default().to_ascii_uppercase();
        match verb.as_str() {
            "EHLO" => out.write_all(b"250-bench-sink\r\n250-PIPELINING\r\n250 8BITMIME\r\n")?,
            "DATA" => {
                out.write_all(b"354 go ahead\r\n")?;
                let mut size = 0u64;
                loop {
                    line.clear();
                    if lines.read_line(&mut line)? == 0 {
                        return Ok(());
                    }
                    if line == ".\r\n" {
                        break;
                    }
                    size += line.len() as u64;
                }
                stats.bytes.fetch_add(size, Ordering::Relaxed);
                stats.pushes.fetch_add(1, Ordering::Relaxed);
                out.write_all(b"250 2.0.0 queued\r\n")?;
            }
            "QUIT" => {
                out.write_all(b"221 bye\r\n")?;
                return Ok(());
            }
            _ => out.write_all(b"250 OK\r\n")?,
        }
    }
}
