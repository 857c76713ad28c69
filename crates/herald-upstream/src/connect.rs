//! How a connection to an upstream is made.
//!
//! Layers, outermost first:
//!
//! - [`Connector`]: the connect timeout over everything below, and the HTTP/2 requirement
//!   (`http2_only` refuses a server that did not pick `h2` by ALPN);
//! - hyper-rustls' `HttpsConnector`: TLS for `https` URLs, with the ALPN list of the HTTP
//!   versions the client speaks;
//! - [`Dialer`]: the per-origin connection cap, then either the proxy tunnel (`CONNECT`) or name
//!   resolution, the [`ConnectPolicy`] and TCP to an address the policy returned.
//!
//! The tunnel is written here rather than taken from hyper-util's `Tunnel`: that one reports no
//! status code for a refusal other than 407, and assumes port 443 for a URL without a port.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{StatusCode, Uri};
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::proxy::matcher::{Intercept, Matcher};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::limit::{PerOrigin, Permit};
use crate::{default_port, BuildError, ConnectPolicy, Refusal, Target, UpstreamConfig};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

/// The longest answer head accepted from a proxy.
const MAX_PROXY_ANSWER: usize = 8 * 1024;

/// Why the connector failed, found again in hyper's error chain by [`crate::error::classify`].
/// Its texts name hosts and addresses, never paths.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectFailure {
    #[error("refused by the connect policy: {0}")]
    Refused(Refusal),
    #[error("no connection within {0:?}")]
    Timeout(Duration),
    #[error("cannot resolve {host}")]
    Resolve { host: String, source: io::Error },
    #[error("cannot connect")]
    Dial(#[source] io::Error),
    #[error("{}", proxy_text(proxy, status, detail))]
    Proxy {
        proxy: String,
        status: Option<StatusCode>,
        detail: &'static str,
        source: Option<BoxError>,
    },
    #[error("the server did not negotiate HTTP/2, which this client requires")]
    NoHttp2,
}

fn proxy_text(proxy: &str, status: &Option<StatusCode>, detail: &str) -> String {
    match status {
        Some(status) => format!("proxy {proxy} answered CONNECT with {status}"),
        None => format!("proxy {proxy}: {detail}"),
    }
}

/// Which destinations go through which proxy.
#[derive(Clone)]
pub(crate) enum ProxyRoute {
    Direct,
    Matched(Arc<Matcher>),
}

impl std::fmt::Debug for ProxyRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the matcher itself: its proxy URLs may hold credentials.
        f.write_str(match self {
            ProxyRoute::Direct => "Direct",
            ProxyRoute::Matched(_) => "Matched(..)",
        })
    }
}

/// Probe destinations used to check, at build time, what the environment's proxies are.
const PROBES: [&str; 2] = ["https://herald.invalid/", "http://herald.invalid/"];

impl ProxyRoute {
    /// From `proxy`/`no_proxy`, or from the environment when `proxy` is unset.
    pub(crate) fn from_config(config: &UpstreamConfig) -> Result<Self, BuildError> {
        match config.proxy().map(str::trim) {
            Some(UpstreamConfig::NO_PROXY) => Ok(ProxyRoute::Direct),
            Some(url) => {
                let invalid = |reason: String| BuildError::Invalid { key: "proxy", reason };
                let uri: Uri = url.parse().map_err(|_| {
                    invalid("is not a URL like \"http://user:pass@proxy.example:3128\"".into())
                })?;
                match uri.scheme_str() {
                    Some("http") => {}
                    Some(other) => {
                        return Err(invalid(format!(
                            "scheme `{other}` is not supported: use an http:// proxy (the \
                             tunnel through it is end-to-end TLS already)"
                        )))
                    }
                    None => {
                        return Err(invalid("needs the scheme, e.g. \"http://proxy:3128\"".into()))
                    }
                }
                if uri.host().is_none_or(str::is_empty) {
                    return Err(invalid("has no host".into()));
                }
                if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
                    return Err(invalid("must not have a path or query".into()));
                }
                let matcher = Matcher::builder()
                    .all(url.to_owned())
                    .no(config.no_proxy().unwrap_or_default());
                Ok(ProxyRoute::Matched(Arc::new(matcher.build())))
            }
            None => {
                if config.no_proxy().is_some() {
                    return Err(BuildError::Invalid {
                        key: "no_proxy",
                        reason: "applies to `proxy` only; with proxies from the environment, \
                                 set NO_PROXY there"
                            .into(),
                    });
                }
                let matcher = Matcher::from_env();
                let mut used = false;
                for probe in PROBES {
                    let probe = Uri::from_static(probe);
                    if let Some(proxy) = matcher.intercept(&probe) {
                        if proxy.uri().scheme_str() != Some("http") {
                            return Err(BuildError::Invalid {
                                key: "HTTPS_PROXY/HTTP_PROXY/ALL_PROXY",
                                reason: format!(
                                    "the environment names proxy {}; only http:// proxies are \
                                     supported (set `proxy` to override)",
                                    crate::origin(proxy.uri())
                                ),
                            });
                        }
                        used = true;
                    }
                }
                Ok(if used { ProxyRoute::Matched(Arc::new(matcher)) } else { ProxyRoute::Direct })
            }
        }
    }

    fn intercept(&self, uri: &Uri) -> Option<Intercept> {
        match self {
            ProxyRoute::Direct => None,
            ProxyRoute::Matched(matcher) => matcher.intercept(uri),
        }
    }

    /// The proxy for an `https` destination that no `NO_PROXY` rule covers, for the log.
    pub(crate) fn describe(&self) -> Option<String> {
        let probe = Uri::from_static(PROBES[0]);
        self.intercept(&probe).map(|proxy| crate::origin(proxy.uri()))
    }
}

/// Makes TCP connections (direct or tunnelled), within the per-origin connection cap.
#[derive(Debug, Clone)]
pub(crate) struct Dialer {
    inner: Arc<DialerInner>,
}

#[derive(Debug)]
struct DialerInner {
    policy: Option<Arc<dyn ConnectPolicy>>,
    proxy: ProxyRoute,
    connections: PerOrigin,
    /// Speak HTTP/2 on plain-TCP connections (prior knowledge).
    h2c: bool,
    connect_timeout: Duration,
}

impl Dialer {
    pub(crate) fn new(
        policy: Option<Arc<dyn ConnectPolicy>>,
        proxy: ProxyRoute,
        max_connections_per_origin: usize,
        h2c: bool,
        connect_timeout: Duration,
    ) -> Self {
        Dialer {
            inner: Arc::new(DialerInner {
                policy,
                proxy,
                connections: PerOrigin::new(max_connections_per_origin),
                h2c,
                connect_timeout,
            }),
        }
    }
}

impl tower::Service<Uri> for Dialer {
    type Response = Conn;
    type Error = BoxError;
    type Future = BoxFuture<Conn>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move { inner.connect(uri).await.map_err(|e| Box::new(e) as BoxError) })
    }
}

impl DialerInner {
    async fn connect(&self, uri: Uri) -> Result<Conn, ConnectFailure> {
        let deadline = Instant::now() + self.connect_timeout;
        let scheme = uri.scheme_str().unwrap_or("https");
        let host = uri.host().unwrap_or_default();
        let bare_host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        let bare_host = bare_host.to_ascii_lowercase();
        let port = uri.port_u16().or_else(|| default_port(scheme)).unwrap_or(443);
        let target = Target { scheme, host: &bare_host, port };

        let permit = self.connections.acquire(&crate::origin(&uri)).await;
        let (stream, prefix, via_proxy) = match self.proxy.intercept(&uri) {
            Some(proxy) => {
                if let Some(policy) = &self.policy {
                    policy.allow_proxied(&target).map_err(ConnectFailure::Refused)?;
                }
                let (stream, prefix) = tunnel(&proxy, &target).await?;
                (stream, prefix, true)
            }
            None => (dial(self.policy.as_deref(), &target, deadline).await?, Bytes::new(), false),
        };
        Ok(Conn {
            io: TokioIo::new(stream),
            prefix,
            h2c: self.h2c && scheme == "http",
            via_proxy,
            _permit: permit,
        })
    }
}

/// Resolves the target, lets the policy judge the addresses and connects to one it returned.
async fn dial(
    policy: Option<&dyn ConnectPolicy>,
    target: &Target<'_>,
    deadline: Instant,
) -> Result<TcpStream, ConnectFailure> {
    let addrs: Vec<SocketAddr> = match target.ip() {
        Some(ip) => vec![SocketAddr::new(ip, target.port)],
        None => tokio::net::lookup_host((target.host, target.port))
            .await
            .map_err(|source| ConnectFailure::Resolve { host: target.host.to_owned(), source })?
            .collect(),
    };
    let addrs = match policy {
        Some(policy) => {
            let allowed = policy.allow(target, addrs).map_err(ConnectFailure::Refused)?;
            if allowed.is_empty() {
                return Err(ConnectFailure::Refused(Refusal::new(format!(
                    "no address of {} is allowed",
                    target.host
                ))));
            }
            allowed
        }
        None => addrs,
    };
    if addrs.is_empty() {
        return Err(ConnectFailure::Resolve {
            host: target.host.to_owned(),
            source: io::Error::new(io::ErrorKind::NotFound, "no address"),
        });
    }
    // Each address gets an equal share of the time left, so one that swallows SYNs does not use
    // up the whole connect timeout.
    let mut last_error = None;
    for (i, addr) in addrs.iter().enumerate() {
        let left = addrs.len() - i;
        let share = deadline.saturating_duration_since(Instant::now())
            / u32::try_from(left).unwrap_or(u32::MAX);
        match tokio::time::timeout(share, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                // Requests are small and answered at once; Nagle would only delay them.
                stream.set_nodelay(true).map_err(ConnectFailure::Dial)?;
                return Ok(stream);
            }
            Ok(Err(e)) => last_error = Some(e),
            Err(_) => {
                last_error = Some(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connecting to {addr} timed out"),
                ))
            }
        }
    }
    Err(ConnectFailure::Dial(
        last_error.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address")),
    ))
}

/// Opens an HTTP `CONNECT` tunnel through `proxy` to `target`. Returns the stream and any bytes
/// that arrived after the proxy's answer (they belong to the tunnelled connection).
async fn tunnel(
    proxy: &Intercept,
    target: &Target<'_>,
) -> Result<(TcpStream, Bytes), ConnectFailure> {
    let proxy_uri = proxy.uri();
    let proxy_origin = crate::origin(proxy_uri);
    let fail = |status: Option<StatusCode>, detail: &'static str, source: Option<BoxError>| {
        ConnectFailure::Proxy { proxy: proxy_origin.clone(), status, detail, source }
    };
    if proxy_uri.scheme_str() != Some("http") {
        return Err(fail(None, "only http:// proxies are supported", None));
    }
    let proxy_host = proxy_uri.host().unwrap_or_default();
    let proxy_host =
        proxy_host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(proxy_host);
    let proxy_port = proxy_uri.port_u16().unwrap_or(80);
    let mut stream = TcpStream::connect((proxy_host, proxy_port))
        .await
        .map_err(|e| fail(None, "cannot connect to the proxy", Some(e.into())))?;
    stream.set_nodelay(true).map_err(|e| fail(None, "socket error", Some(e.into())))?;

    let authority = if target.host.contains(':') {
        format!("[{}]:{}", target.host, target.port)
    } else {
        format!("{}:{}", target.host, target.port)
    };
    let mut head = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n").into_bytes();
    if let Some(credentials) = proxy.basic_auth() {
        head.extend_from_slice(b"Proxy-Authorization: ");
        head.extend_from_slice(credentials.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    stream
        .write_all(&head)
        .await
        .map_err(|e| fail(None, "the proxy connection failed", Some(e.into())))?;

    let mut answer = Vec::with_capacity(256);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| fail(None, "the proxy connection failed", Some(e.into())))?;
        if n == 0 {
            return Err(fail(None, "the proxy closed the connection without answering", None));
        }
        answer.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&answer) {
            Ok(httparse::Status::Complete(len)) => {
                let code = response.code.unwrap_or_default();
                if (200..300).contains(&code) {
                    return Ok((stream, Bytes::copy_from_slice(&answer[len..])));
                }
                return Err(fail(StatusCode::from_u16(code).ok(), "refused the tunnel", None));
            }
            Ok(httparse::Status::Partial) if answer.len() < MAX_PROXY_ANSWER => {}
            Ok(httparse::Status::Partial) => {
                return Err(fail(None, "the proxy's answer head is too long", None))
            }
            Err(e) => return Err(fail(None, "the proxy's answer is not HTTP", Some(e.into()))),
        }
    }
}

/// One TCP connection to an upstream (or to a proxy, tunnelled), holding its origin's
/// connection permit until it is closed.
#[derive(Debug)]
pub(crate) struct Conn {
    io: TokioIo<TcpStream>,
    /// Bytes read past the proxy's answer, served before the socket's.
    prefix: Bytes,
    h2c: bool,
    via_proxy: bool,
    _permit: Permit,
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        // Only plain connections are marked: hyper-rustls marks TLS ones by their ALPN.
        if self.h2c {
            Connected::new().negotiated_h2()
        } else {
            Connected::new()
        }
    }
}

impl Read for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl Write for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
}

/// The client's connector: TLS over the [`Dialer`], under the connect timeout.
#[derive(Debug, Clone)]
pub(crate) struct Connector {
    https: HttpsConnector<Dialer>,
    connect_timeout: Duration,
    require_h2: bool,
}

impl Connector {
    pub(crate) fn new(
        https: HttpsConnector<Dialer>,
        connect_timeout: Duration,
        require_h2: bool,
    ) -> Self {
        Connector { https, connect_timeout, require_h2 }
    }
}

impl tower::Service<Uri> for Connector {
    type Response = MaybeHttpsStream<Conn>;
    type Error = BoxError;
    type Future = BoxFuture<MaybeHttpsStream<Conn>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.https.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let origin = crate::origin(&uri);
        let connecting = self.https.call(uri);
        let (timeout, require_h2) = (self.connect_timeout, self.require_h2);
        Box::pin(async move {
            let stream = match tokio::time::timeout(timeout, connecting).await {
                Ok(stream) => stream?,
                Err(_) => return Err(Box::new(ConnectFailure::Timeout(timeout)) as BoxError),
            };
            let (tls, h2, via_proxy) = match &stream {
                MaybeHttpsStream::Https(tls) => {
                    let (tcp, session) = tls.inner().get_ref();
                    (true, session.alpn_protocol() == Some(b"h2"), tcp.inner().via_proxy)
                }
                MaybeHttpsStream::Http(conn) => (false, conn.h2c, conn.via_proxy),
            };
            if require_h2 && !h2 {
                return Err(Box::new(ConnectFailure::NoHttp2) as BoxError);
            }
            tracing::debug!(origin = %origin, tls, http2 = h2, via_proxy, "upstream connection open");
            Ok(stream)
        })
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    /// Bytes the proxy sends right behind its `200` belong to the tunnelled connection.
    #[tokio::test]
    async fn bytes_after_the_proxy_answer_are_kept() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let proxy = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut byte = [0u8; 1];
                stream.read_exact(&mut byte).await.expect("read");
                head.push(byte[0]);
            }
            stream.write_all(b"HTTP/1.1 200 OK\r\n\r\nearly bytes").await.expect("write");
            String::from_utf8(head).expect("utf-8")
        });
        let matcher = Matcher::builder().all(format!("http://u:p@{addr}")).build();
        let intercept = matcher.intercept(&Uri::from_static("https://x.example/")).expect("proxy");
        let target = Target { scheme: "https", host: "x.example", port: 443 };
        let (_stream, prefix) = tunnel(&intercept, &target).await.expect("tunnel");
        let head = proxy.await.expect("proxy task");
        assert!(head.starts_with("CONNECT x.example:443 HTTP/1.1\r\nHost: x.example:443\r\n"));
        assert!(head.contains("Proxy-Authorization: Basic dTpw\r\n"), "{head}");
        // The prefix may hold all of it or a part, depending on how the proxy's write was split.
        assert!(b"early bytes".starts_with(&prefix), "{prefix:?}");
    }

    #[test]
    fn proxy_settings_are_checked() {
        let err = |proxy: &str| {
            ProxyRoute::from_config(&UpstreamConfig::default().with_proxy(proxy))
                .expect_err(proxy)
                .to_string()
        };
        assert!(err("socks5://proxy:1080").contains("`proxy`"));
        assert!(err("https://proxy:3128").contains("http:// proxy"));
        assert!(err("proxy:3128").contains("`proxy`"));
        assert!(err("http://proxy:3128/path").contains("path"));
        assert!(err("not a url at all").contains("not a URL"));
        let no_proxy_alone = UpstreamConfig::default().with_no_proxy("internal");
        let e = ProxyRoute::from_config(&no_proxy_alone).expect_err("no_proxy without proxy");
        assert!(e.to_string().contains("`no_proxy`"), "{e}");
        let ok = UpstreamConfig::default().with_proxy("http://user:secret@proxy.example:3128");
        let route = ProxyRoute::from_config(&ok).expect("valid");
        assert_eq!(route.describe().as_deref(), Some("http://proxy.example:3128"));
        assert!(!format!("{route:?}").contains("secret"));
        let none = UpstreamConfig::default().with_proxy("none").with_no_proxy("x");
        assert!(matches!(ProxyRoute::from_config(&none), Ok(ProxyRoute::Direct)));
    }
}
