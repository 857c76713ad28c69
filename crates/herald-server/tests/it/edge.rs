//! The HTTP edge over raw TCP: requests hyper cannot parse get a Matrix JSON error like every other
//! error, and a client that stalls mid-body gets a JSON 408.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{config, TestServer};

/// One HTTP response read off a raw socket.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.split("\r\n").skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// Asserts a Matrix JSON error with this status and errcode, framed by its Content-Length.
    fn assert_json_error(&self, status: u16, errcode: &str) {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.header("content-type"), Some("application/json"), "{}", self.head);
        let length: usize = self.header("content-length").expect("content-length").parse().unwrap();
        assert_eq!(length, self.body.len());
        let body: Value = serde_json::from_slice(&self.body).expect("JSON body");
        assert_eq!(body["errcode"], errcode, "{body}");
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{body}");
        assert_eq!(body.as_object().unwrap().len(), 2, "{body}");
    }
}

/// Reads one response (head, then exactly Content-Length bytes of body) from `stream`.
async fn read_response(stream: &mut TcpStream) -> RawResponse {
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8(buf[..end].to_vec()).unwrap();
                let length = head
                    .split("\r\n")
                    .find_map(|l| {
                        let (n, v) = l.split_once(':')?;
                        n.eq_ignore_ascii_case("content-length").then(|| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0usize);
                if buf.len() >= end + 4 + length {
                    let body = buf[end + 4..end + 4 + length].to_vec();
                    let status = head[9..12].parse().unwrap();
                    return RawResponse { status, head, body };
                }
            }
            let n = stream.read(&mut chunk).await.expect("read");
            assert!(n > 0, "connection closed after {:?}", String::from_utf8_lossy(&buf));
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read).await.expect("an answer within 5 s")
}

/// Sends `request` (from its own task: the server may answer and close before it has read it
/// all) and reads the answer.
async fn exchange(addr: SocketAddr, request: Vec<u8>) -> RawResponse {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let sender = tokio::spawn(async move {
        // Errors are expected once the server has answered and closed.
        let _ = writer.write_all(&request).await;
        writer
    });
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), reader.read_to_end(&mut buf)).await;
    let _ = sender.await;
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(&buf)));
    let head = String::from_utf8(buf[..end].to_vec()).unwrap();
    let status = head[9..12].parse().unwrap();
    RawResponse { status, head, body: buf[end + 4..].to_vec() }
}

const NOTIFY_HEAD: &str = "POST /_matrix/push/v1/notify HTTP/1.1\r\nHost: herald\r\n";

#[tokio::test]
async fn requests_hyper_cannot_parse_get_json_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&config(dir.path(), "")).await;

    let many_headers: String = (0..200).map(|i| format!("X-Header-{i}: v\r\n")).collect();
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "200 headers",
            format!("{NOTIFY_HEAD}{many_headers}Content-Length: 2\r\n\r\n{{}}"),
            431,
            "M_TOO_LARGE",
        ),
        (
            "a 100 KB header",
            format!("{NOTIFY_HEAD}X-Big: {}\r\nContent-Length: 2\r\n\r\n{{}}", "a".repeat(100_000)),
            431,
            "M_TOO_LARGE",
        ),
        (
            "a 70 KB URI",
            format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(70_000)),
            431,
            "M_TOO_LARGE",
        ),
        ("a garbage request line", "GARBAGE\r\n\r\n".into(), 400, "M_UNKNOWN"),
        ("a bad method", "P@ST / HTTP/1.1\r\nHost: x\r\n\r\n".into(), 400, "M_UNKNOWN"),
        (
            "Content-Length: abc",
            format!("{NOTIFY_HEAD}Content-Length: abc\r\n\r\n{{}}"),
            400,
            "M_UNKNOWN",
        ),
        (
            "two different Content-Lengths",
            format!("{NOTIFY_HEAD}Content-Length: 2\r\nContent-Length: 3\r\n\r\n{{}}"),
            400,
            "M_UNKNOWN",
        ),
    ];
    for (what, request, status, errcode) in cases {
        let response = exchange(server.addr, request.into_bytes()).await;
        eprintln!("{what}: {}", response.head.lines().next().unwrap_or_default());
        response.assert_json_error(status, errcode);
    }
    let metrics = server.metrics().await;
    for line in [
        r#"herald_http_requests_total{route="malformed",status="431"} 3"#,
        r#"herald_http_requests_total{route="malformed",status="400"} 4"#,
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_bad_request_after_a_good_one_on_the_same_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&config(dir.path(), "")).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let body = herald_testkit::notify::badge("org.example.log", "k", 1).to_string();
    let good = format!("{NOTIFY_HEAD}Content-Length: {}\r\n\r\n{body}", body.len());
    stream.write_all(good.as_bytes()).await.unwrap();
    let first = read_response(&mut stream).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.body, br#"{"rejected":[]}"#, "Herald's own answers pass untouched");
    stream.write_all(b"GET /health HTTP/1.1\r\nContent-Length: x\r\n\r\n").await.unwrap();
    read_response(&mut stream).await.assert_json_error(400, "M_UNKNOWN");
    server.stop().await;
}

#[tokio::test]
async fn a_stalled_body_gets_a_json_408() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), "");
    cfg.server.body_read_timeout = Duration::from_millis(300);
    let server = TestServer::start(&cfg).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    // Headers and half of the declared body, then nothing.
    let body = herald_testkit::notify::message("$stall", crate::common::APP, "k").to_string();
    let half = &body[..body.len() / 2];
    let request = format!("{NOTIFY_HEAD}Content-Length: {}\r\n\r\n{half}", body.len());
    let started = Instant::now();
    stream.write_all(request.as_bytes()).await.unwrap();
    let response = read_response(&mut stream).await;
    let elapsed = started.elapsed();
    response.assert_json_error(408, "M_UNKNOWN");
    assert!(elapsed >= Duration::from_millis(300), "answered before the timeout: {elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    assert_eq!(server.backend.attempts().len(), 0, "nothing was delivered");
    let metrics = server.metrics().await;
    let line = r#"herald_http_requests_total{route="notify",status="408"} 1"#;
    assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    server.stop().await;
}
