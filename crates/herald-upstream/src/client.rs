//! [`UpstreamClient`] and its builder: one request, one attempt, one timeout.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::USER_AGENT;
use http::uri::{Authority, Parts};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::connect::{Connector, Dialer, ProxyRoute};
use crate::error::{classify, classify_body};
use crate::limit::PerOrigin;
use crate::tls::{self, Identity};
use crate::{
    default_port, BuildError, ConnectPolicy, UpstreamConfig, UpstreamError,
    DEFAULT_MAX_ANSWER_BYTES, DEFAULT_USER_AGENT,
};

/// Idle pooled connections are closed after this by default; push services and APNs close
/// theirs after a minute or more.
const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(50);

/// A pooled HTTP client for one backend (usually one app): cheap to clone, share it.
#[derive(Clone)]
pub struct UpstreamClient {
    client: Client<Connector, Full<Bytes>>,
    requests: PerOrigin,
    user_agent: HeaderValue,
    max_answer_bytes: usize,
    request_timeout: Duration,
}

impl std::fmt::Debug for UpstreamClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamClient")
            .field("user_agent", &self.user_agent)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

/// What an upstream answered.
#[derive(Debug, Clone)]
pub struct UpstreamResponse {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The body, at most the client's answer limit.
    pub body: Bytes,
    /// Whether the body was longer than the limit and cut there (the rest was not read).
    pub truncated: bool,
    /// The HTTP version spoken.
    pub version: Version,
}

/// Configures an [`UpstreamClient`]; see [`UpstreamClient::builder`].
#[must_use]
pub struct UpstreamClientBuilder {
    config: UpstreamConfig,
    user_agent: Option<String>,
    identity: Option<Identity>,
    policy: Option<Arc<dyn ConnectPolicy>>,
    http2_only: bool,
    http2_prior_knowledge: bool,
    keep_alive: Option<(Duration, Duration)>,
    pool_idle_timeout: Duration,
    max_answer_bytes: usize,
}

impl std::fmt::Debug for UpstreamClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamClientBuilder")
            .field("policy", &self.policy)
            .field("http2_only", &self.http2_only)
            .field("http2_prior_knowledge", &self.http2_prior_knowledge)
            .finish_non_exhaustive()
    }
}

impl UpstreamClientBuilder {
    /// The `User-Agent` sent unless a request sets its own; default `herald/<version>`.
    pub fn user_agent(mut self, user_agent: impl Into<String>) -> Self {
        self.user_agent = Some(user_agent.into());
        self
    }

    /// Presents this client certificate (chain, leaf first) with its private key (PKCS#8,
    /// PKCS#1 or SEC1), both PEM, to servers that ask for one (APNs certificate auth).
    pub fn client_identity(mut self, cert_chain_pem: &[u8], key_pem: &[u8]) -> Self {
        self.identity =
            Some(Identity { chain_pem: cert_chain_pem.to_vec(), key_pem: key_pem.to_vec() });
        self
    }

    /// Lets `policy` judge every destination's resolved addresses before one is dialled.
    pub fn connect_policy(mut self, policy: Arc<dyn ConnectPolicy>) -> Self {
        self.policy = Some(policy);
        self
    }

    /// Speaks HTTP/2 only (APNs, FCM): TLS offers only `h2` by ALPN and a server that does not
    /// pick it is refused ([`UpstreamError::Protocol`], or [`UpstreamError::Tls`] when the
    /// server aborts the handshake); plain `http` URLs get HTTP/2 by prior knowledge.
    pub fn http2_only(mut self) -> Self {
        self.http2_only = true;
        self
    }

    /// Speaks HTTP/2 by prior knowledge (h2c) on plain `http` URLs, for fakes in tests; `https`
    /// URLs still negotiate by ALPN.
    pub fn http2_prior_knowledge(mut self) -> Self {
        self.http2_prior_knowledge = true;
        self
    }

    /// Sends HTTP/2 PINGs every `interval`, also while idle, and closes the connection when one
    /// is not answered within `timeout` (APNs asks for this rather than reconnecting).
    pub fn http2_keep_alive(mut self, interval: Duration, timeout: Duration) -> Self {
        self.keep_alive = Some((interval, timeout));
        self
    }

    /// Closes pooled connections idle for this long (default 50 s).
    pub fn pool_idle_timeout(mut self, timeout: Duration) -> Self {
        self.pool_idle_timeout = timeout;
        self
    }

    /// Keeps at most this much of an answer's body (default 64 KiB); the rest is not read.
    pub fn max_answer_bytes(mut self, limit: usize) -> Self {
        self.max_answer_bytes = limit;
        self
    }

    /// Builds the client: loads the trust roots and the client certificate and checks the proxy
    /// settings. Opens no connection.
    pub fn build(self) -> Result<UpstreamClient, BuildError> {
        let config = &self.config;
        for (key, value) in [
            ("connect_timeout", config.connect_timeout()),
            ("request_timeout", config.request_timeout()),
        ] {
            if value.is_zero() {
                return Err(BuildError::Invalid { key, reason: "must be more than 0".into() });
            }
        }
        let cap = config.max_connections_per_host();
        if cap == 0 {
            return Err(BuildError::Invalid {
                key: "max_connections_per_host",
                reason: "must be at least 1".into(),
            });
        }
        let user_agent = match self.user_agent {
            None => HeaderValue::from_static(DEFAULT_USER_AGENT),
            Some(agent) => HeaderValue::try_from(agent).map_err(|_| BuildError::Invalid {
                key: "user_agent",
                reason: "is not a valid header value".into(),
            })?,
        };

        let tls_config =
            tls::client_config(config.ca_file(), config.system_roots(), self.identity.as_ref())?;
        let proxy = ProxyRoute::from_config(config)?;
        if let Some(proxy) = proxy.describe() {
            tracing::info!(proxy = %proxy, "upstream requests go through a proxy");
        }
        let dialer = Dialer::new(
            self.policy,
            proxy,
            cap,
            self.http2_only || self.http2_prior_knowledge,
            config.connect_timeout(),
        );
        let https =
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls_config).https_or_http();
        let https = if self.http2_only {
            https.enable_http2().wrap_connector(dialer)
        } else {
            https.enable_all_versions().wrap_connector(dialer)
        };
        let connector = Connector::new(https, config.connect_timeout(), self.http2_only);

        let mut client = Client::builder(TokioExecutor::new());
        client
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(self.pool_idle_timeout)
            .pool_max_idle_per_host(cap)
            .http2_only(self.http2_only);
        if let Some((interval, timeout)) = self.keep_alive {
            client
                .http2_keep_alive_interval(interval)
                .http2_keep_alive_timeout(timeout)
                .http2_keep_alive_while_idle(true);
        }
        Ok(UpstreamClient {
            client: client.build(connector),
            requests: PerOrigin::new(cap),
            user_agent,
            max_answer_bytes: self.max_answer_bytes,
            request_timeout: config.request_timeout(),
        })
    }
}

impl UpstreamClient {
    /// Starts configuring a client with these settings.
    pub fn builder(config: &UpstreamConfig) -> UpstreamClientBuilder {
        UpstreamClientBuilder {
            config: config.clone(),
            user_agent: None,
            identity: None,
            policy: None,
            http2_only: false,
            http2_prior_knowledge: false,
            keep_alive: None,
            pool_idle_timeout: DEFAULT_POOL_IDLE_TIMEOUT,
            max_answer_bytes: DEFAULT_MAX_ANSWER_BYTES,
        }
    }

    /// The configured `request_timeout`; pass the smaller of it and the time left to the
    /// caller's deadline to [`UpstreamClient::send`].
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// `POST`s `body` with `headers` to `uri`; see [`UpstreamClient::send`].
    pub async fn post(
        &self,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
        timeout: Duration,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let mut request = Request::new(body);
        *request.method_mut() = Method::POST;
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        self.send(request, timeout).await
    }

    /// Sends one request and reads the answer, all within `timeout`: waiting for the origin's
    /// cap, connecting (itself bounded by `connect_timeout`), sending, and reading the body to
    /// its end or to the answer limit. One attempt: never retried, never redirected. The URI
    /// must be absolute (`http` or `https`); `Host` and `User-Agent` are added when missing.
    pub async fn send(
        &self,
        request: Request<Bytes>,
        timeout: Duration,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let (mut parts, body) = request.into_parts();
        let origin = crate::origin(&parts.uri);
        parts.uri = normalize(std::mem::take(&mut parts.uri))
            .map_err(|reason| UpstreamError::InvalidRequest { origin: origin.clone(), reason })?;
        let https = parts.uri.scheme_str() == Some("https");
        if !parts.headers.contains_key(USER_AGENT) {
            parts.headers.insert(USER_AGENT, self.user_agent.clone());
        }
        let request = Request::from_parts(parts, Full::new(body));

        let exchange = async {
            let _permit = self.requests.acquire(&origin).await;
            let response =
                self.client.request(request).await.map_err(|e| classify(&origin, https, e))?;
            let (head, body) = response.into_parts();
            let (body, truncated) = read_limited(body, self.max_answer_bytes)
                .await
                .map_err(|e| classify_body(&origin, https, e))?;
            Ok(UpstreamResponse {
                status: head.status,
                headers: head.headers,
                body,
                truncated,
                version: head.version,
            })
        };
        let result = match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(UpstreamError::Timeout { origin, after: timeout, connecting: false }),
        };
        if let Err(error) = &result {
            tracing::debug!(error = %format_args!("{error:#}"), "upstream request failed");
        }
        result
    }
}

/// Checks the URI and writes its authority as the origin does (lowercase, no default port), so
/// that one origin is one pool and one cap.
fn normalize(uri: Uri) -> Result<Uri, &'static str> {
    let scheme = match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("https") => "https",
        Some(s) if s.eq_ignore_ascii_case("http") => "http",
        Some(_) => return Err("the scheme is not http or https"),
        None => return Err("the URL is not absolute"),
    };
    let authority = uri.authority().ok_or("the URL has no host")?;
    if authority.as_str().contains('@') {
        return Err("the URL carries user info");
    }
    let host = authority.host();
    if host.is_empty() {
        return Err("the URL has no host");
    }
    let wanted = match authority.port_u16() {
        Some(port) if Some(port) != default_port(scheme) => {
            format!("{}:{port}", host.to_ascii_lowercase())
        }
        _ => host.to_ascii_lowercase(),
    };
    if authority.as_str() == wanted {
        return Ok(uri);
    }
    let mut parts = Parts::from(uri);
    parts.authority = Some(Authority::try_from(wanted).map_err(|_| "the URL has no valid host")?);
    Uri::from_parts(parts).map_err(|_| "the URL has no valid host")
}

/// Reads `body` to its end or until `limit` bytes; `true` when it was cut.
async fn read_limited(mut body: Incoming, limit: usize) -> Result<(Bytes, bool), hyper::Error> {
    let mut kept = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else { continue };
        let room = limit - kept.len();
        if data.len() > room {
            kept.extend_from_slice(&data[..room]);
            return Ok((kept.freeze(), true));
        }
        kept.extend_from_slice(&data);
    }
    Ok((kept.freeze(), false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_authorities() {
        let n = |s: &str| normalize(s.parse().expect("uri")).map(|u| u.to_string());
        assert_eq!(n("https://Push.Example:443/a?b").as_deref(), Ok("https://push.example/a?b"));
        assert_eq!(n("http://h:8080/").as_deref(), Ok("http://h:8080/"));
        assert_eq!(n("http://[::1]:80/x").as_deref(), Ok("http://[::1]/x"));
        assert_eq!(n("/relative"), Err("the URL is not absolute"));
        assert_eq!(n("ftp://h/x"), Err("the scheme is not http or https"));
        assert_eq!(n("https://u:p@h/x"), Err("the URL carries user info"));
    }
}
