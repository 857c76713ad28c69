//! Upstreams on real sockets on 127.0.0.1: a well-behaved HTTP server (plain or HTTPS, HTTP/1.1
//! and HTTP/2 by ALPN or by prior knowledge) that records what it saw, and misbehaving raw TCP
//! servers. Certificates come from `herald_testkit::tls::TestCa`.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use herald_upstream::{UpstreamClient, UpstreamConfig};
use http::{Request, Response, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

/// What a [`Server`] answers.
#[derive(Debug, Clone)]
pub(crate) struct Behaviour {
    pub(crate) status: u16,
    pub(crate) body: Bytes,
    /// How long the handler holds each request before answering.
    pub(crate) delay: Duration,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour { status: 200, body: Bytes::from_static(b"ok"), delay: Duration::ZERO }
    }
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub(crate) version: Version,
    pub(crate) path: String,
    pub(crate) user_agent: Option<String>,
    pub(crate) body: Bytes,
    /// The client certificate's DER, when the client presented one.
    pub(crate) client_cert: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) accepted: AtomicUsize,
    pub(crate) handshakes: AtomicUsize,
    in_flight: AtomicUsize,
    pub(crate) max_in_flight: AtomicUsize,
    pub(crate) seen: Mutex<Vec<Seen>>,
    /// Connections the client closed (or that failed), and a signal for each.
    pub(crate) closed: AtomicUsize,
    pub(crate) closing: tokio::sync::Notify,
}

/// A running server; stops when dropped.
pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    pub(crate) stats: Arc<Stats>,
    https: bool,
    _tasks: JoinSet<()>,
}

impl Server {
    /// Plain HTTP; HTTP/1.1, or HTTP/2 when the client starts with the h2 preface.
    pub(crate) async fn plain(behaviour: Behaviour) -> Server {
        Self::start(None, behaviour).await
    }

    /// HTTPS with `config` (its certificate and ALPN list).
    pub(crate) async fn https(config: Arc<rustls::ServerConfig>, behaviour: Behaviour) -> Server {
        Self::start(Some(TlsAcceptor::from(config)), behaviour).await
    }

    async fn start(tls: Option<TlsAcceptor>, behaviour: Behaviour) -> Server {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stats = Arc::new(Stats::default());
        let https = tls.is_some();
        let mut tasks = JoinSet::new();
        let accept_stats = Arc::clone(&stats);
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                accept_stats.accepted.fetch_add(1, Ordering::SeqCst);
                connections.spawn(serve(
                    stream,
                    tls.clone(),
                    behaviour.clone(),
                    Arc::clone(&accept_stats),
                ));
            }
        });
        Server { addr, stats, https, _tasks: tasks }
    }

    /// `scheme://127.0.0.1:port` + `path`.
    pub(crate) fn url(&self, path: &str) -> http::Uri {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.addr).parse().expect("url")
    }

    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.stats.seen.lock().expect("seen").clone()
    }

    pub(crate) fn accepted(&self) -> usize {
        self.stats.accepted.load(Ordering::SeqCst)
    }

    /// Waits until `n` connections have been closed.
    pub(crate) async fn closed(&self, n: usize) {
        loop {
            let closing = self.stats.closing.notified();
            if self.stats.closed.load(Ordering::SeqCst) >= n {
                return;
            }
            closing.await;
        }
    }
}

async fn serve(
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    behaviour: Behaviour,
    stats: Arc<Stats>,
) {
    serve_until_closed(stream, tls, behaviour, Arc::clone(&stats)).await;
    stats.closed.fetch_add(1, Ordering::SeqCst);
    stats.closing.notify_waiters();
}

async fn serve_until_closed(
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    behaviour: Behaviour,
    stats: Arc<Stats>,
) {
    match tls {
        None => serve_http(TokioIo::new(stream), behaviour, stats, false).await,
        Some(acceptor) => {
            // A failed handshake (an untrusted CA, no common ALPN protocol) ends the connection.
            let Ok(stream) = acceptor.accept(stream).await else { return };
            stats.handshakes.fetch_add(1, Ordering::SeqCst);
            let client_cert = stream.get_ref().1.peer_certificates().is_some();
            serve_http(TokioIo::new(stream), behaviour, stats, client_cert).await
        }
    }
}

async fn serve_http<I>(io: I, behaviour: Behaviour, stats: Arc<Stats>, client_cert: bool)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let behaviour = behaviour.clone();
        let stats = Arc::clone(&stats);
        async move {
            let in_flight = stats.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            stats.max_in_flight.fetch_max(in_flight, Ordering::SeqCst);
            let (parts, body) = request.into_parts();
            let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            stats.seen.lock().expect("seen").push(Seen {
                version: parts.version,
                path: parts.uri.path().to_owned(),
                user_agent: parts
                    .headers
                    .get(http::header::USER_AGENT)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
                body,
                client_cert,
            });
            if !behaviour.delay.is_zero() {
                tokio::time::sleep(behaviour.delay).await;
            }
            stats.in_flight.fetch_sub(1, Ordering::SeqCst);
            let mut response = Response::new(Full::new(behaviour.body.clone()));
            *response.status_mut() = http::StatusCode::from_u16(behaviour.status).expect("status");
            Ok::<_, Infallible>(response)
        }
    });
    let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(io, service).await;
}

/// A raw TCP server: for each connection, reads the request head, then writes `answer` and
/// closes the socket (with an RST when `reset`). `answer: None` never writes anything and keeps
/// the connection open.
pub(crate) struct RawServer {
    pub(crate) addr: SocketAddr,
    pub(crate) accepted: Arc<AtomicUsize>,
    _task: JoinSet<()>,
}

impl RawServer {
    pub(crate) async fn start(answer: Option<&'static [u8]>, reset: bool) -> RawServer {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        let mut task = JoinSet::new();
        task.spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let Some(answer) = answer else {
                    held.push(stream);
                    continue;
                };
                let mut head = Vec::new();
                let mut chunk = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = stream.write_all(answer).await;
                if reset {
                    // Linger 0: closing sends an RST instead of a FIN.
                    let _ = stream.set_zero_linger();
                }
                drop(stream);
            }
        });
        RawServer { addr, accepted, _task: task }
    }

    pub(crate) fn url(&self, scheme: &str, path: &str) -> http::Uri {
        format!("{scheme}://{}{path}", self.addr).parse().expect("url")
    }
}

/// A port on 127.0.0.1 with nothing listening.
pub(crate) fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    listener.local_addr().expect("addr")
}

/// Settings for tests: no proxy from the environment, short timeouts.
pub(crate) fn config() -> UpstreamConfig {
    UpstreamConfig::default()
        .with_proxy("none")
        .with_connect_timeout(Duration::from_secs(2))
        .with_request_timeout(Duration::from_secs(5))
}

pub(crate) fn client(config: &UpstreamConfig) -> UpstreamClient {
    UpstreamClient::builder(config).build().expect("client")
}

/// A POST with a small body and a 5 s timeout.
pub(crate) async fn post(
    client: &UpstreamClient,
    uri: http::Uri,
) -> Result<herald_upstream::UpstreamResponse, herald_upstream::UpstreamError> {
    client
        .post(uri, http::HeaderMap::new(), Bytes::from_static(b"payload"), Duration::from_secs(5))
        .await
}
