//! A fake WebPush push service (RFC 8030) on a real socket, for testing the WebPush backend.
//!
//! It checks each request as a real push service would: the VAPID `Authorization` (an ES256 JWT
//! valid against the `k` key, `aud` = the origin it was sent to, `exp` in the future and at most
//! 24 hours ahead, a `sub`), `Content-Encoding: aes128gcm`, `TTL`, and a body of at most 4096
//! bytes; it then decrypts the body with the test subscription's private key and records the
//! plaintext and headers. Answers are scriptable per path (201 by default); failed checks answer
//! 400/401/403/413 and record why.
//!
//! It serves plain HTTP/1.1 ([`FakePushService::start`]) or HTTPS with a certificate from a
//! [`TestCa`] and HTTP/2 and/or HTTP/1.1 chosen by ALPN ([`FakePushService::start_https`]), and
//! records which HTTP version each request came over. A subscription can be restricted to one
//! VAPID key and then answers other keys the way FCM or Mozilla autopush do
//! ([`MismatchStyle`]).

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{HeaderMap, Method, Request, Response, StatusCode, Version};

use openssl::bn::{BigNum, BigNumContext};
use openssl::ec::{EcGroup, EcKey, EcPoint};
use openssl::ecdsa::EcdsaSig;
use openssl::nid::Nid;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio_rustls::TlsAcceptor;

use crate::tls::{TestCa, ALPN_H2, ALPN_HTTP1};

/// The largest body a push service must accept, and the one this fake accepts.
pub const MAX_BODY: usize = 4096;

/// A running fake push service; stops (and drops every connection) when dropped.
#[derive(Debug)]
pub struct FakePushService {
    addr: SocketAddr,
    https: bool,
    state: Arc<State>,
}

/// The HTTP versions an HTTPS fake offers by ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocols {
    /// `h2` and `http/1.1` (as real push services do): clients that offer h2 get it.
    Both,
    /// `http/1.1` only.
    Http1Only,
    /// `h2` only.
    Http2Only,
}

/// How a subscription restricted to one VAPID key answers a request signed with another key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MismatchStyle {
    /// `403` with an empty body.
    Bare,
    /// FCM (Chrome): `403`, `text/plain`, "the VAPID credentials in the authorization header do
    /// not correspond to the credentials used to create the subscriptions."
    Fcm,
    /// Mozilla autopush (Firefox): `401`, JSON with `"errno": 109`.
    Autopush,
}

/// FCM's answer text for a VAPID key mismatch (followed by the endpoint in the real service).
pub const FCM_MISMATCH_TEXT: &str = "the VAPID credentials in the authorization header do not \
     correspond to the credentials used to create the subscriptions.";

/// How the fake answers one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Answer with this status and an empty body (201 is success).
    Status(u16),
    /// Answer with this status and a `Retry-After` header with this value.
    StatusRetryAfter(u16, String),
    /// Answer with this status, `Content-Type` and body.
    WithBody(u16, &'static str, String),
    /// Never answer (the connection stays open until the client gives up).
    Hang,
    /// Drop the connection without answering.
    Reset,
}

impl Answer {
    /// 201 Created: the push service accepted the message.
    pub const CREATED: Answer = Answer::Status(201);

    /// `status` with `Retry-After: <seconds>`.
    pub fn retry_after_secs(status: u16, seconds: u64) -> Self {
        Answer::StatusRetryAfter(status, seconds.to_string())
    }

    /// `status` with `Retry-After: <HTTP-date>`.
    pub fn retry_after_date(status: u16, at: SystemTime) -> Self {
        Answer::StatusRetryAfter(status, httpdate::fmt_http_date(at))
    }
}

/// A browser subscription made at the fake: what a web client would give its pusher.
#[derive(Debug, Clone)]
pub struct TestSubscription {
    /// The path on the fake.
    pub path: String,
    /// The push endpoint URL (`data.endpoint`).
    pub endpoint: String,
    /// The subscription's public key, base64url without padding: the Matrix pushkey.
    pub p256dh: String,
    /// The auth secret, base64url without padding (`data.auth`).
    pub auth: String,
}

impl TestSubscription {
    /// Pusher data as a Sygnal-style web client registers it: `{"endpoint": …, "auth": …}`.
    pub fn pusher_data(&self) -> Value {
        serde_json::json!({ "endpoint": self.endpoint, "auth": self.auth })
    }
}

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct ReceivedPush {
    /// The request path.
    pub path: String,
    /// The request headers.
    pub headers: HeaderMap,
    /// The length of the encrypted body.
    pub body_len: usize,
    /// The decrypted body, when it decrypted.
    pub plaintext: Option<Vec<u8>>,
    /// The decrypted body as JSON, when it was JSON.
    pub payload: Option<Value>,
    /// The VAPID credentials, when the `Authorization` header could be read.
    pub vapid: Option<VapidClaims>,
    /// Why the request failed the checks, if it did.
    pub rejection: Option<String>,
    /// The status answered; `None` for [`Answer::Hang`] and [`Answer::Reset`].
    pub status: Option<u16>,
    /// The HTTP version the request came over (`HTTP/2.0` when ALPN chose h2).
    pub version: Version,
    /// When the request (head and body) had arrived.
    pub at: std::time::Instant,
}

impl ReceivedPush {
    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// The VAPID credentials of a request.
#[derive(Debug, Clone, PartialEq)]
pub struct VapidClaims {
    /// The JWT (`t=`), as sent.
    pub jwt: String,
    /// The application server's public key (`k=`), base64url.
    pub key: String,
    /// All claims.
    pub claims: Value,
    /// `aud`.
    pub aud: String,
    /// `sub`.
    pub sub: String,
    /// `exp`, in unix seconds.
    pub exp: u64,
}

#[derive(Debug, Default)]
struct State {
    subscriptions: Mutex<HashMap<String, Keys>>,
    scripts: Mutex<HashMap<String, VecDeque<Answer>>>,
    received: Mutex<Vec<ReceivedPush>>,
    connections: AtomicUsize,
    open: AtomicUsize,
    max_open: AtomicUsize,
    tasks: Mutex<Vec<AbortHandle>>,
    scheme: &'static str,
}

#[derive(Debug, Clone)]
struct Keys {
    private_key: Vec<u8>,
    public_key: Vec<u8>,
    auth: Vec<u8>,
    /// For subscriptions restricted to one VAPID key (RFC 8292 §4.3), and how other keys are
    /// answered.
    application_server_key: Option<(String, MismatchStyle)>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl FakePushService {
    /// Starts the fake on `127.0.0.1` and a free port, speaking plain HTTP/1.1.
    pub async fn start() -> Self {
        Self::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .expect("bind the fake push service on 127.0.0.1")
    }

    /// Starts the fake on `addr` (e.g. `[::1]:0`), speaking plain HTTP/1.1.
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<Self> {
        Self::bind(addr, None).await
    }

    /// Starts the fake on `127.0.0.1` and a free port, speaking HTTPS with a certificate from
    /// `ca` (for `localhost`, `127.0.0.1` and `::1`) and offering `protocols` by ALPN.
    pub async fn start_https(ca: &TestCa, protocols: Protocols) -> Self {
        let alpn: &[&[u8]] = match protocols {
            Protocols::Both => &[ALPN_H2, ALPN_HTTP1],
            Protocols::Http1Only => &[ALPN_HTTP1],
            Protocols::Http2Only => &[ALPN_H2],
        };
        let acceptor = TlsAcceptor::from(ca.server_config(alpn));
        Self::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), Some(acceptor))
            .await
            .expect("bind the fake push service on 127.0.0.1")
    }

    async fn bind(addr: SocketAddr, tls: Option<TlsAcceptor>) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let https = tls.is_some();
        let state =
            Arc::new(State { scheme: if https { "https" } else { "http" }, ..State::default() });
        let accept_state = Arc::clone(&state);
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                accept_state.connections.fetch_add(1, Ordering::SeqCst);
                let task = tokio::spawn(serve(Arc::clone(&accept_state), stream, tls.clone()));
                lock(&accept_state.tasks).push(task.abort_handle());
            }
        });
        lock(&state.tasks).push(accept.abort_handle());
        Ok(FakePushService { addr, https, state })
    }

    /// The address the fake listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://host:port` or `https://host:port`, the fake's origin.
    pub fn base_url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Subscribes a new browser at `path` (e.g. `"/push/alice"`): a fresh P-256 key pair and
    /// 16-byte auth secret.
    pub fn subscribe(&self, path: &str) -> TestSubscription {
        self.subscribe_inner(path, None)
    }

    /// Like [`subscribe`](Self::subscribe), but the subscription only accepts requests signed
    /// with this VAPID public key (base64url); others get a bare 403.
    pub fn subscribe_restricted(
        &self,
        path: &str,
        application_server_key: &str,
    ) -> TestSubscription {
        self.subscribe_restricted_as(path, application_server_key, MismatchStyle::Bare)
    }

    /// Like [`subscribe_restricted`](Self::subscribe_restricted), answering other keys as
    /// `style` says.
    pub fn subscribe_restricted_as(
        &self,
        path: &str,
        application_server_key: &str,
        style: MismatchStyle,
    ) -> TestSubscription {
        self.subscribe_inner(path, Some((application_server_key.to_owned(), style)))
    }

    fn subscribe_inner(
        &self,
        path: &str,
        application_server_key: Option<(String, MismatchStyle)>,
    ) -> TestSubscription {
        assert!(path.starts_with('/'), "paths start with /");
        let (key, auth) = ece::generate_keypair_and_auth_secret().expect("generate P-256 keys");
        let components = key.raw_components().expect("raw key components");
        let keys = Keys {
            private_key: components.private_key().to_vec(),
            public_key: components.public_key().to_vec(),
            auth: auth.to_vec(),
            application_server_key,
        };
        let subscription = TestSubscription {
            path: path.to_owned(),
            endpoint: format!("{}{path}", self.base_url()),
            p256dh: URL_SAFE_NO_PAD.encode(&keys.public_key),
            auth: URL_SAFE_NO_PAD.encode(&keys.auth),
        };
        lock(&self.state.subscriptions).insert(path.to_owned(), keys);
        subscription
    }

    /// Queues answers for the next requests to `path` that pass the checks; once they are used
    /// up, the fake answers 201.
    pub fn script(&self, path: &str, answers: impl IntoIterator<Item = Answer>) {
        lock(&self.state.scripts).entry(path.to_owned()).or_default().extend(answers);
    }

    /// The requests received at `path`, oldest first.
    pub fn received(&self, path: &str) -> Vec<ReceivedPush> {
        lock(&self.state.received).iter().filter(|r| r.path == path).cloned().collect()
    }

    /// Every request received, oldest first.
    pub fn all_received(&self) -> Vec<ReceivedPush> {
        lock(&self.state.received).clone()
    }

    /// How many TCP connections the fake has accepted.
    pub fn connections_accepted(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// The most connections that were open at the same time.
    pub fn max_open_connections(&self) -> usize {
        self.state.max_open.load(Ordering::SeqCst)
    }
}

impl Drop for FakePushService {
    fn drop(&mut self) {
        for task in lock(&self.state.tasks).drain(..) {
            task.abort();
        }
    }
}

/// Counts a connection as open while it lives.
struct OpenGuard(Arc<State>);

impl OpenGuard {
    fn new(state: &Arc<State>) -> Self {
        let open = state.open.fetch_add(1, Ordering::SeqCst) + 1;
        state.max_open.fetch_max(open, Ordering::SeqCst);
        OpenGuard(Arc::clone(state))
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn serve(state: Arc<State>, stream: TcpStream, tls: Option<TlsAcceptor>) {
    let _open = OpenGuard::new(&state);
    let kill = Arc::new(Notify::new());
    let service_kill = Arc::clone(&kill);
    let service = hyper::service::service_fn(move |request| {
        handle(Arc::clone(&state), request, Arc::clone(&service_kill))
    });
    // `Answer::Reset` drops the connection (and so closes the socket) mid-request.
    crate::tls::serve_connection(stream, tls, crate::tls::Cleartext::Http1, service, kill).await;
}

async fn handle(
    state: Arc<State>,
    request: Request<Incoming>,
    kill: Arc<Notify>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body =
        Limited::new(body, 64 * 1024).collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let path = parts.uri.path().to_owned();
    let mut record = ReceivedPush {
        path: path.clone(),
        headers: parts.headers.clone(),
        body_len: body.len(),
        plaintext: None,
        payload: None,
        vapid: None,
        rejection: None,
        status: None,
        version: parts.version,
        at: std::time::Instant::now(),
    };
    // HTTP/2 carries the host in the `:authority` pseudo-header, which hyper puts in the URI.
    let host = match parts.headers.get(hyper::header::HOST).and_then(|v| v.to_str().ok()) {
        Some(host) => host.to_owned(),
        None => parts.uri.authority().map(|a| a.to_string()).unwrap_or_default(),
    };
    let answer =
        match check(&state, &parts.method, &parts.headers, &path, &body, &mut record, &host) {
            Err(Refusal { status, reason, answer }) => {
                record.rejection = Some(reason);
                answer.unwrap_or(Answer::Status(status))
            }
            Ok(()) => lock(&state.scripts)
                .get_mut(&path)
                .and_then(VecDeque::pop_front)
                .unwrap_or(Answer::CREATED),
        };
    record.status = match &answer {
        Answer::Status(s) | Answer::StatusRetryAfter(s, _) | Answer::WithBody(s, _, _) => Some(*s),
        Answer::Hang | Answer::Reset => None,
    };
    lock(&state.received).push(record);
    let (status, retry_after, body) = match answer {
        Answer::Status(s) => (s, None, None),
        Answer::StatusRetryAfter(s, value) => (s, Some(value), None),
        Answer::WithBody(s, content_type, body) => (s, None, Some((content_type, body))),
        Answer::Hang => std::future::pending().await,
        Answer::Reset => {
            kill.notify_one();
            std::future::pending().await
        }
    };
    let mut response = Response::new(Full::new(Bytes::new()));
    if let Some((content_type, body)) = body {
        *response.body_mut() = Full::new(Bytes::from(body));
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Some(value) = retry_after.and_then(|v| HeaderValue::try_from(v).ok()) {
        response.headers_mut().insert(hyper::header::RETRY_AFTER, value);
    }
    Ok(response)
}

/// A failed check: the status to answer, why, and the whole answer when it is not a bare status.
struct Refusal {
    status: u16,
    reason: String,
    answer: Option<Answer>,
}

impl From<(u16, String)> for Refusal {
    fn from((status, reason): (u16, String)) -> Self {
        Refusal { status, reason, answer: None }
    }
}

/// The checks of a real push service, in its order; `Err` says what to answer and why.
fn check(
    state: &State,
    method: &Method,
    headers: &HeaderMap,
    path: &str,
    body: &[u8],
    record: &mut ReceivedPush,
    host: &str,
) -> Result<(), Refusal> {
    if method != Method::POST {
        return Err((405, format!("method {method} is not POST")).into());
    }
    let keys = lock(&state.subscriptions)
        .get(path)
        .cloned()
        .ok_or_else(|| Refusal::from((404, format!("no subscription at {path}"))))?;
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());

    let authorization = text("authorization").ok_or((401, "no Authorization".to_owned()))?;
    let (jwt, key) = parse_vapid_header(authorization).map_err(|e| (401, e))?;
    let claims = verify_jwt(&jwt, &key).map_err(|e| (401, e))?;
    let claim_str = |name: &str| claims.get(name).and_then(Value::as_str).unwrap_or("").to_owned();
    let vapid = VapidClaims {
        jwt,
        key,
        aud: claim_str("aud"),
        sub: claim_str("sub"),
        exp: claims.get("exp").and_then(Value::as_u64).unwrap_or(0),
        claims: claims.clone(),
    };
    record.vapid = Some(vapid.clone());
    let origin = format!("{}://{host}", state.scheme);
    if vapid.aud != origin {
        return Err((401, format!("aud {:?} is not this origin {origin:?}", vapid.aud)).into());
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs();
    if vapid.exp <= now || vapid.exp > now + 24 * 3600 {
        return Err((401, format!("exp {} not within 24h from now ({now})", vapid.exp)).into());
    }
    if vapid.sub.is_empty() {
        return Err((401, "no sub claim".to_owned()).into());
    }
    if let Some((expected, style)) = &keys.application_server_key {
        if *expected != vapid.key {
            let reason = "VAPID key is not the one the subscription was made with".to_owned();
            let answer = match style {
                MismatchStyle::Bare => Answer::Status(403),
                // The real FCM appends the endpoint to the text, so a client that logs the
                // body leaks it: the backend must not.
                MismatchStyle::Fcm => Answer::WithBody(
                    403,
                    "text/plain; charset=utf-8",
                    format!("{FCM_MISMATCH_TEXT}\n{}{path}\n", state.scheme),
                ),
                MismatchStyle::Autopush => Answer::WithBody(
                    401,
                    "application/json",
                    serde_json::json!({
                        "code": 401, "errno": 109, "error": "Unauthorized",
                        "message": "VAPID public key mismatch",
                        "more_info": format!("http://autopush.example{path}")
                    })
                    .to_string(),
                ),
            };
            let status = match style {
                MismatchStyle::Autopush => 401,
                _ => 403,
            };
            return Err(Refusal { status, reason, answer: Some(answer) });
        }
    }

    if text("content-encoding") != Some("aes128gcm") {
        return Err((400, "Content-Encoding is not aes128gcm".to_owned()).into());
    }
    if text("ttl").and_then(|t| t.trim().parse::<u64>().ok()).is_none() {
        return Err((400, "no valid TTL".to_owned()).into());
    }
    if body.len() > MAX_BODY {
        return Err((413, format!("body of {} bytes is over {MAX_BODY}", body.len())).into());
    }
    let components = ece::EcKeyComponents::new(keys.private_key, keys.public_key);
    let plaintext = ece::decrypt(&components, &keys.auth, body)
        .map_err(|e| (400, format!("cannot decrypt: {e}")))?;
    record.payload = serde_json::from_slice(&plaintext).ok();
    record.plaintext = Some(plaintext);
    Ok(())
}

/// Reads `vapid t=<jwt>, k=<key>` (parameters in any order).
fn parse_vapid_header(value: &str) -> Result<(String, String), String> {
    let (scheme, params) = value.trim().split_once(' ').ok_or("Authorization is not vapid")?;
    if !scheme.eq_ignore_ascii_case("vapid") {
        return Err(format!("Authorization scheme {scheme:?} is not vapid"));
    }
    let (mut t, mut k) = (None, None);
    for param in params.split(',') {
        match param.trim().split_once('=') {
            Some(("t", v)) => t = Some(v.trim().to_owned()),
            Some(("k", v)) => k = Some(v.trim().to_owned()),
            _ => {}
        }
    }
    Ok((t.ok_or("vapid without t=")?, k.ok_or("vapid without k=")?))
}

/// Checks an ES256 JWT against the uncompressed P-256 public key `key` and returns its claims.
fn verify_jwt(jwt: &str, key: &str) -> Result<Value, String> {
    let b64 = |part: &str| URL_SAFE_NO_PAD.decode(part).map_err(|e| format!("JWT base64: {e}"));
    let mut parts = jwt.split('.');
    let (Some(header), Some(claims), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("JWT is not three parts".to_owned());
    };
    let header_json: Value =
        serde_json::from_slice(&b64(header)?).map_err(|e| format!("JWT header: {e}"))?;
    if header_json["alg"] != "ES256" {
        return Err(format!("JWT alg is {}, not ES256", header_json["alg"]));
    }
    let signature = b64(signature)?;
    if signature.len() != 64 {
        return Err("ES256 signature is not 64 bytes".to_owned());
    }
    let key = URL_SAFE_NO_PAD.decode(key).map_err(|e| format!("k base64: {e}"))?;
    let valid = (|| -> Result<bool, openssl::error::ErrorStack> {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
        let mut ctx = BigNumContext::new()?;
        let point = EcPoint::from_bytes(&group, &key, &mut ctx)?;
        let public = EcKey::from_public_key(&group, &point)?;
        let r = BigNum::from_slice(&signature[..32])?;
        let s = BigNum::from_slice(&signature[32..])?;
        let digest = openssl::sha::sha256(format!("{header}.{claims}").as_bytes());
        EcdsaSig::from_private_components(r, s)?.verify(&digest, &public)
    })()
    .map_err(|e| format!("k is not a P-256 key: {e}"))?;
    if !valid {
        return Err("JWT signature does not verify against k".to_owned());
    }
    serde_json::from_slice(&b64(claims)?).map_err(|e| format!("JWT claims: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vapid_header_parsing() {
        let (t, k) = parse_vapid_header("vapid t=a.b.c, k=KEY").expect("valid");
        assert_eq!((t.as_str(), k.as_str()), ("a.b.c", "KEY"));
        let (t, k) = parse_vapid_header("Vapid k=KEY,t=a.b.c").expect("any order");
        assert_eq!((t.as_str(), k.as_str()), ("a.b.c", "KEY"));
        assert!(parse_vapid_header("Bearer x").is_err());
        assert!(parse_vapid_header("vapid t=a.b.c").is_err());
    }

    #[test]
    fn jwt_signed_by_openssl_verifies() {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("group");
        let key = EcKey::generate(&group).expect("key");
        let mut ctx = BigNumContext::new().expect("ctx");
        let public = key
            .public_key()
            .to_bytes(&group, openssl::ec::PointConversionForm::UNCOMPRESSED, &mut ctx)
            .expect("point");
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","typ":"JWT"}"#);
        let claims = URL_SAFE_NO_PAD.encode(br#"{"aud":"http://x","exp":1,"sub":"mailto:a@b"}"#);
        let digest = openssl::sha::sha256(format!("{header}.{claims}").as_bytes());
        let sig = EcdsaSig::sign(&digest, &key).expect("sign");
        let mut raw = sig.r().to_vec_padded(32).expect("r");
        raw.extend(sig.s().to_vec_padded(32).expect("s"));
        let jwt = format!("{header}.{claims}.{}", URL_SAFE_NO_PAD.encode(&raw));
        let k = URL_SAFE_NO_PAD.encode(&public);
        let claims = verify_jwt(&jwt, &k).expect("valid");
        assert_eq!(claims["aud"], "http://x");
        let tampered = jwt.replacen(".", ".e30", 1);
        assert!(verify_jwt(&tampered, &k).is_err());
    }
}
