//! An HTTP `CONNECT` proxy on a real socket, for testing clients' outbound proxy support.
//!
//! It records the head of every request it gets, can demand `Proxy-Authorization: Basic`
//! ([`ConnectProxy::start_with_basic_auth`], answering 407 otherwise), can be told to refuse
//! every tunnel with a status ([`ConnectProxy::refuse_with`]), and otherwise connects to the
//! requested `host:port` and relays bytes both ways; a target it cannot reach gets 502, as real
//! proxies answer. It only ever tunnels to loopback addresses (others get 403), so a test can
//! never make it reach beyond the machine.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// The longest request head the proxy reads.
const MAX_HEAD: usize = 8 * 1024;

/// A running proxy; stops (and drops every tunnel) when dropped.
#[derive(Debug)]
pub struct ConnectProxy {
    addr: SocketAddr,
    state: Arc<State>,
}

/// One request the proxy got, and what it answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyRequest {
    /// The method (`CONNECT` from a well-behaved client).
    pub method: String,
    /// The request target: `host:port` for `CONNECT`.
    pub target: String,
    /// The `Proxy-Authorization` header, if sent.
    pub proxy_authorization: Option<String>,
    /// The status answered (200: the tunnel was opened).
    pub status: u16,
}

#[derive(Debug, Default)]
struct State {
    /// The expected `Proxy-Authorization` value, if any is demanded.
    credentials: Option<String>,
    /// A status to answer every `CONNECT` with instead of tunnelling (0: tunnel).
    refuse: AtomicU16,
    requests: Mutex<Vec<ProxyRequest>>,
    tasks: Mutex<Vec<AbortHandle>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ConnectProxy {
    /// Starts an open proxy on `127.0.0.1` and a free port.
    pub async fn start() -> Self {
        Self::bind(None).await
    }

    /// Starts a proxy that demands `Proxy-Authorization: Basic` with these credentials.
    pub async fn start_with_basic_auth(user: &str, password: &str) -> Self {
        let expected = format!("Basic {}", STANDARD.encode(format!("{user}:{password}")));
        Self::bind(Some(expected)).await
    }

    async fn bind(credentials: Option<String>) -> Self {
        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .expect("bind the proxy on 127.0.0.1");
        let addr = listener.local_addr().expect("the proxy's address");
        let state = Arc::new(State { credentials, ..State::default() });
        let accept_state = Arc::clone(&state);
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let task = tokio::spawn(serve(Arc::clone(&accept_state), stream));
                lock(&accept_state.tasks).push(task.abort_handle());
            }
        });
        lock(&state.tasks).push(accept.abort_handle());
        ConnectProxy { addr, state }
    }

    /// The address the proxy listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://user:password@127.0.0.1:port`.
    pub fn url_with_credentials(&self, user: &str, password: &str) -> String {
        format!("http://{user}:{password}@{}", self.addr)
    }

    /// Answers every following `CONNECT` with `status` instead of opening the tunnel.
    pub fn refuse_with(&self, status: u16) {
        self.state.refuse.store(status, Ordering::SeqCst);
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<ProxyRequest> {
        lock(&self.state.requests).clone()
    }

    /// How many tunnels were opened.
    pub fn tunnels_opened(&self) -> usize {
        lock(&self.state.requests).iter().filter(|r| r.status == 200).count()
    }
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        for task in lock(&self.state.tasks).drain(..) {
            task.abort();
        }
    }
}

async fn serve(state: Arc<State>, mut client: TcpStream) {
    let Some((head, rest)) = read_head(&mut client).await else { return };
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default().to_owned();
    let target = request_line.next().unwrap_or_default().to_owned();
    let proxy_authorization = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("proxy-authorization"))
        .map(|(_, value)| value.trim().to_owned());

    let refuse = state.refuse.load(Ordering::SeqCst);
    let mut upstream = None;
    let status = if method != "CONNECT" {
        405
    } else if state.credentials.is_some() && proxy_authorization != state.credentials {
        407
    } else if refuse != 0 {
        refuse
    } else {
        match loopback_target(&target).await {
            None => 403,
            Some(addr) => match TcpStream::connect(addr).await {
                Ok(stream) => {
                    upstream = Some(stream);
                    200
                }
                Err(_) => 502,
            },
        }
    };
    lock(&state.requests).push(ProxyRequest { method, target, proxy_authorization, status });

    let Some(mut upstream) = upstream else {
        let challenge =
            if status == 407 { "Proxy-Authenticate: Basic realm=\"herald-test\"\r\n" } else { "" };
        let answer = format!(
            "HTTP/1.1 {status} {}\r\n{challenge}Content-Length: 0\r\nConnection: close\r\n\r\n",
            reason(status)
        );
        let _ = client.write_all(answer.as_bytes()).await;
        return;
    };
    if client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await.is_err()
        || upstream.write_all(&rest).await.is_err()
    {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

/// Reads a request head; returns it and the bytes read past it.
async fn read_head(stream: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Some((String::from_utf8_lossy(&buf[..end]).into_owned(), rest));
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
    }
}

/// The target's first address, if every address it resolves to is a loopback one.
async fn loopback_target(target: &str) -> Option<SocketAddr> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(target).await.ok()?.collect();
    if addrs.is_empty() || !addrs.iter().all(|a| a.ip().is_loopback()) {
        return None;
    }
    addrs.first().copied()
}

fn reason(status: u16) -> &'static str {
    match status {
        403 => "Forbidden",
        405 => "Method Not Allowed",
        407 => "Proxy Authentication Required",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Refused",
    }
}
