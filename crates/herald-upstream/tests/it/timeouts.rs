//! Timeouts, refused and broken connections, answers that are not HTTP, the answer limit.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald_upstream::{UpstreamClient, UpstreamError};
use http::HeaderMap;

use crate::support::{client, closed_port, config, post, Behaviour, RawServer, Server};

#[tokio::test]
async fn a_server_that_never_answers_times_out_the_request() {
    let silent = RawServer::start(None, false).await;
    let client = client(&config());
    let started = Instant::now();
    let error = client
        .post(silent.url("http", "/x"), HeaderMap::new(), Bytes::new(), Duration::from_millis(300))
        .await
        .expect_err("no answer");
    let elapsed = started.elapsed();
    assert!(
        matches!(error, UpstreamError::Timeout { connecting: false, after, .. } if after == Duration::from_millis(300)),
        "{error:#}"
    );
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(2),
        "{elapsed:?}"
    );
    assert!(error.is_retryable() && error.is_timeout());
    assert_eq!(error.to_string(), format!("http://{}: no answer within 300ms", silent.addr));
}

#[tokio::test]
async fn a_handshake_that_never_completes_times_out_the_connect() {
    // Accepts TCP, never speaks TLS.
    let silent = RawServer::start(None, false).await;
    let config = config().with_connect_timeout(Duration::from_millis(200));
    let client = client(&config);
    let started = Instant::now();
    let error = client
        .post(silent.url("https", "/x"), HeaderMap::new(), Bytes::new(), Duration::from_secs(5))
        .await
        .expect_err("no handshake");
    assert!(matches!(error, UpstreamError::Timeout { connecting: true, .. }), "{error:#}");
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    assert!(error.is_retryable());
}

#[tokio::test]
async fn nothing_listening_is_a_connect_error() {
    let addr = closed_port();
    let error = post(&client(&config()), format!("http://{addr}/x").parse().expect("url"))
        .await
        .expect_err("refused");
    assert!(matches!(error, UpstreamError::Connect { .. }), "{error:#}");
    assert!(error.is_retryable());
    assert!(format!("{error:#}").to_lowercase().contains("refused"), "{error:#}");
}

#[tokio::test]
async fn an_unresolvable_name_is_a_connect_error() {
    let error = post(&client(&config()), "https://no-such-host.invalid/x".parse().expect("url"))
        .await
        .expect_err("no such host");
    assert!(matches!(error, UpstreamError::Connect { .. }), "{error:#}");
    assert!(format!("{error:#}").contains("cannot resolve no-such-host.invalid"), "{error:#}");
}

#[tokio::test]
async fn a_reset_mid_answer_is_a_retryable_connection_error() {
    let server = RawServer::start(
        Some(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nonly a few bytes"),
        true,
    )
    .await;
    let error = post(&client(&config()), server.url("http", "/x")).await.expect_err("reset");
    assert!(
        matches!(error, UpstreamError::Connect { .. } | UpstreamError::Protocol { .. }),
        "{error:#}"
    );
    assert!(error.is_retryable());
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);

    // Closed (FIN) before the promised length: the same.
    let server = RawServer::start(
        Some(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nonly a few bytes"),
        false,
    )
    .await;
    let error = post(&client(&config()), server.url("http", "/x")).await.expect_err("cut");
    assert!(matches!(error, UpstreamError::Connect { .. }), "{error:#}");
}

#[tokio::test]
async fn an_answer_that_is_not_http_is_a_protocol_error() {
    let server = RawServer::start(Some(b"SSH-2.0-OpenSSH_9.6\r\n\r\n"), false).await;
    let error = post(&client(&config()), server.url("http", "/x")).await.expect_err("garbage");
    assert!(matches!(error, UpstreamError::Protocol { .. }), "{error:#}");
    assert!(error.is_retryable());
}

#[tokio::test]
async fn the_answer_body_is_kept_up_to_the_limit() {
    let big = Bytes::from(vec![b'x'; 100 * 1024]);
    let server = Server::plain(Behaviour { body: big.clone(), ..Behaviour::default() }).await;
    let response = post(&client(&config()), server.url("/x")).await.expect("answer");
    assert!(response.truncated);
    assert_eq!(response.body.len(), herald_upstream::DEFAULT_MAX_ANSWER_BYTES);

    let small_limit =
        UpstreamClient::builder(&config()).max_answer_bytes(10).build().expect("client");
    let response = post(&small_limit, server.url("/x")).await.expect("answer");
    assert!(response.truncated);
    assert_eq!(&response.body[..], b"xxxxxxxxxx");

    let exact = Server::plain(Behaviour {
        body: Bytes::from_static(b"0123456789"),
        ..Behaviour::default()
    })
    .await;
    let response = post(&small_limit, exact.url("/x")).await.expect("answer");
    assert!(!response.truncated, "a body of exactly the limit is whole");
    assert_eq!(&response.body[..], b"0123456789");
}

#[tokio::test]
async fn connections_are_reused() {
    let server = Server::plain(Behaviour::default()).await;
    let client = client(&config());
    for _ in 0..5 {
        post(&client, server.url("/x")).await.expect("ok");
    }
    assert_eq!(server.accepted(), 1, "the body is read to its end, so the connection is pooled");
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_pool_idle_timeout() {
    let server = Server::plain(Behaviour::default()).await;
    let client = UpstreamClient::builder(&config())
        .pool_idle_timeout(Duration::from_millis(200))
        .build()
        .expect("client");
    let started = Instant::now();
    post(&client, server.url("/x")).await.expect("ok");
    tokio::time::timeout(Duration::from_secs(5), server.closed(1))
        .await
        .expect("the idle connection is closed");
    assert!(started.elapsed() >= Duration::from_millis(200), "{:?}", started.elapsed());
    post(&client, server.url("/x")).await.expect("ok");
    assert_eq!(server.accepted(), 2, "a new connection after the idle one was closed");
}

/// hyper panics ("You must supply a timer") when PINGs are on and the client has no timer.
#[tokio::test]
async fn http2_keep_alive_keeps_working() {
    let server = Server::plain(Behaviour::default()).await;
    let client = UpstreamClient::builder(&config())
        .http2_prior_knowledge()
        .http2_keep_alive(Duration::from_millis(50), Duration::from_secs(1))
        .build()
        .expect("client");
    post(&client, server.url("/x")).await.expect("ok");
    // Idle for a few PING intervals: the server answers the PINGs and the connection stays.
    tokio::time::sleep(Duration::from_millis(200)).await;
    post(&client, server.url("/x")).await.expect("ok");
    assert_eq!(server.accepted(), 1);
    assert_eq!(server.stats.closed.load(Ordering::SeqCst), 0);
}
