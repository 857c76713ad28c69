//! A fake APNs (Apple Push Notification service) on a real socket, for testing the APNs backend.
//!
//! Like Apple's servers it speaks HTTP/2 only, over TLS (a certificate from a [`TestCa`], ALPN
//! `h2` and nothing else), and checks what Apple checks before it accepts a notification:
//!
//! - `POST` to `/3/device/<64 hex digits>`;
//! - token auth: `authorization: bearer <JWT>`, an ES256 JWT whose signature verifies against the
//!   test key ([`ApnsSigningKey`]), with the key's `kid`, the team's `iss`, and an `iat` not older
//!   than an hour (nor in the future); a new token sooner than 20 minutes after the last is
//!   `TooManyProviderTokenUpdates`. Certificate auth: the TLS client certificate must be issued
//!   by the test's [`ApnsCertificateAuthority`] (Apple's WWDR CA stand-in) and be valid;
//! - `apns-topic` present and one of the app's topics; `apns-push-type`, `apns-priority`
//!   (background pushes need 5), `apns-id`, `apns-expiration` and `apns-collapse-id` well formed;
//! - a body of valid JSON, not empty, at most 4096 bytes (5120 for `voip`).
//!
//! Failed checks answer as Apple does (`400 BadDeviceToken`, `403 InvalidProviderToken`, `413
//! PayloadTooLarge` …, as `{"reason": …}`) and are recorded with why. Requests that pass get the
//! next scripted [`ApnsAnswer`] (200 with an `apns-id` once the script is used up), including a
//! GOAWAY, a hang and a dropped connection; the server's `MAX_CONCURRENT_STREAMS` can be set low.
//! Every request is recorded ([`FakeApns::received`]) with the connection it came on, and the
//! most streams seen open at once on one connection is kept.

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};
use rustls::server::WebPkiClientVerifier;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio_rustls::TlsAcceptor;

use crate::tls::{TestCa, ALPN_H2};

/// The largest payload APNs accepts.
pub const MAX_PAYLOAD: usize = 4096;
/// The largest VoIP payload APNs accepts.
pub const MAX_VOIP_PAYLOAD: usize = 5120;
/// The `MAX_CONCURRENT_STREAMS` the fake grants by default (Apple's figure).
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 1000;
/// The test team's id (the JWT's `iss`).
pub const TEAM_ID: &str = "TEAM123456";
/// The test key's id (the JWT's `kid`).
pub const KEY_ID: &str = "KEY1234567";
/// The `apns-push-type` values Apple knows.
pub const PUSH_TYPES: [&str; 9] = [
    "alert",
    "background",
    "location",
    "voip",
    "complication",
    "fileprovider",
    "mdm",
    "liveactivity",
    "pushtotalk",
];

/// How long APNs accepts a provider token.
const TOKEN_LIFETIME: u64 = 3600;
/// APNs refuses a new provider token sooner than this after the last.
const TOKEN_MIN_INTERVAL: u64 = 20 * 60;
/// How long a held answer waits for the others at most (a test that sends fewer fails on its
/// own assertions instead of hanging).
const HOLD_LIMIT: Duration = Duration::from_secs(10);

/// The `UID` attribute, where Apple's push certificates name the topic.
const UID: [u64; 7] = [0, 9, 2342, 19_200_300, 100, 1, 1];

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A provider-token signing key, as the Apple developer account hands it out: a P-256 key in a
/// PKCS#8 `.p8` file, with its key id and team id.
#[derive(Clone)]
pub struct ApnsSigningKey {
    pem: String,
    public_key: Vec<u8>,
    /// The key id (`kid`).
    pub key_id: String,
    /// The team id (`iss`).
    pub team_id: String,
}

impl std::fmt::Debug for ApnsSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApnsSigningKey").field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

impl Default for ApnsSigningKey {
    fn default() -> Self {
        Self::new()
    }
}

impl ApnsSigningKey {
    /// A new key with [`KEY_ID`] and [`TEAM_ID`].
    pub fn new() -> Self {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("a P-256 key");
        ApnsSigningKey {
            pem: key.serialize_pem(),
            public_key: key.public_key_raw().to_vec(),
            key_id: KEY_ID.into(),
            team_id: TEAM_ID.into(),
        }
    }

    /// The `.p8` file's text.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// The uncompressed public key.
    pub fn public_key(&self) -> &[u8] {
        &self.public_key
    }

    /// Writes the key to `dir/AuthKey_<key id>.p8` and returns the path.
    pub fn write_p8(&self, dir: &Path) -> PathBuf {
        let path = dir.join(format!("AuthKey_{}.p8", self.key_id));
        std::fs::write(&path, &self.pem).expect("write the .p8 key");
        path
    }
}

/// A stand-in for Apple's WWDR CA, issuing APNs client certificates (certificate auth).
pub struct ApnsCertificateAuthority {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl std::fmt::Debug for ApnsCertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApnsCertificateAuthority").finish_non_exhaustive()
    }
}

/// An APNs client certificate and its key, PEM.
#[derive(Clone)]
pub struct ApnsClientCertificate {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for ApnsClientCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApnsClientCertificate").finish_non_exhaustive()
    }
}

impl ApnsClientCertificate {
    /// Writes `apns-cert.pem` and `apns-key.pem` into `dir`; returns both paths.
    pub fn write(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let (cert, key) = (dir.join("apns-cert.pem"), dir.join("apns-key.pem"));
        std::fs::write(&cert, &self.cert_pem).expect("write the certificate");
        std::fs::write(&key, &self.key_pem).expect("write the key");
        (cert, key)
    }
}

impl Default for ApnsCertificateAuthority {
    fn default() -> Self {
        Self::new()
    }
}

impl ApnsCertificateAuthority {
    /// A new CA.
    pub fn new() -> Self {
        let key = KeyPair::generate().expect("generate the CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, "Test WWDR CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("self-sign the CA");
        ApnsCertificateAuthority { cert, key }
    }

    /// A push certificate for `topic` (in its subject's UID, as Apple's), valid from a day ago
    /// until `valid_for` from now; with `expired`, it ended a day ago instead.
    pub fn issue(&self, topic: &str, valid_for: Duration, expired: bool) -> ApnsClientCertificate {
        let key = KeyPair::generate().expect("generate a key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CustomDnType(UID.to_vec()), topic);
        params.distinguished_name.push(DnType::CommonName, format!("Apple Push Services: {topic}"));
        params.distinguished_name.push(DnType::OrganizationalUnitName, TEAM_ID);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let epoch = rcgen::date_time_ymd(1970, 1, 1);
        let now = Duration::from_secs(now_secs());
        let day = Duration::from_secs(86_400);
        if expired {
            params.not_before = epoch + now.saturating_sub(30 * day);
            params.not_after = epoch + now.saturating_sub(day);
        } else {
            params.not_before = epoch + now.saturating_sub(day);
            params.not_after = epoch + now + valid_for;
        }
        let cert = params.signed_by(&key, &self.cert, &self.key).expect("sign the certificate");
        ApnsClientCertificate { cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    }

    fn der(&self) -> rustls::pki_types::CertificateDer<'static> {
        self.cert.der().clone()
    }
}

/// How the fake answers one request that passed the checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApnsAnswer {
    /// 200 with the request's `apns-id`.
    Ok,
    /// This status with `{"reason": <reason>}`.
    Error(u16, &'static str),
    /// 410 `Unregistered` with the time the token stopped being valid.
    Unregistered,
    /// This status and reason with a `Retry-After` header of this value.
    RetryAfter(u16, &'static str, String),
    /// This status with exactly this body (not what APNs promises).
    Raw(u16, String),
    /// Never answer: the stream stays open until the client gives up.
    Hang,
    /// Drop the TCP connection without answering.
    Reset,
    /// Reset the stream with `REFUSED_STREAM`: the server did not process it (RFC 9113 §8.7).
    RefusedStream,
    /// Answer this request 200, then shut the connection down gracefully: GOAWAY (`NO_ERROR`),
    /// and after a PING round trip a second GOAWAY with the last stream id received: streams the
    /// client opened after it are refused, and the connection closes once the others are
    /// answered.
    GoAway,
}

impl ApnsAnswer {
    /// 400 `BadDeviceToken`.
    pub const BAD_DEVICE_TOKEN: ApnsAnswer = ApnsAnswer::Error(400, "BadDeviceToken");
    /// 403 `ExpiredProviderToken`.
    pub const EXPIRED_PROVIDER_TOKEN: ApnsAnswer = ApnsAnswer::Error(403, "ExpiredProviderToken");
    /// 403 `InvalidProviderToken`.
    pub const INVALID_PROVIDER_TOKEN: ApnsAnswer = ApnsAnswer::Error(403, "InvalidProviderToken");
    /// 429 `TooManyRequests`.
    pub const TOO_MANY_REQUESTS: ApnsAnswer = ApnsAnswer::Error(429, "TooManyRequests");
    /// 500 `InternalServerError`.
    pub const INTERNAL_SERVER_ERROR: ApnsAnswer = ApnsAnswer::Error(500, "InternalServerError");
    /// 503 `ServiceUnavailable`.
    pub const SERVICE_UNAVAILABLE: ApnsAnswer = ApnsAnswer::Error(503, "ServiceUnavailable");
    /// 413 `PayloadTooLarge`.
    pub const PAYLOAD_TOO_LARGE: ApnsAnswer = ApnsAnswer::Error(413, "PayloadTooLarge");
    /// 400 with a reason Apple might add one day.
    pub const UNKNOWN_REASON: ApnsAnswer = ApnsAnswer::Error(400, "SomethingNewIn2031");
}

/// The claims of a request's provider token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderJwt {
    /// The JWT as sent.
    pub jwt: String,
    /// `kid`.
    pub kid: String,
    /// `iss`.
    pub iss: String,
    /// `iat`, unix seconds.
    pub iat: u64,
}

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct ApnsRequest {
    /// `:path`.
    pub path: String,
    /// The device token from the path, when it was one.
    pub device_token: Option<String>,
    /// The headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
    /// The body as JSON, when it was.
    pub payload: Option<Value>,
    /// The provider token, when one was sent and could be read.
    pub jwt: Option<ProviderJwt>,
    /// Why the request failed the checks, if it did.
    pub rejection: Option<String>,
    /// The status answered; `None` while unanswered, or for a hang, a reset or a refusal.
    pub status: Option<u16>,
    /// Which connection it came on (0 for the first accepted).
    pub connection: usize,
    /// When it arrived (head and body).
    pub at: Instant,
}

impl ApnsRequest {
    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `apns-id` header.
    pub fn apns_id(&self) -> Option<&str> {
        self.header("apns-id")
    }
}

/// How the fake authenticates its clients.
#[derive(Default)]
enum Auth {
    Token {
        key_id: String,
        team_id: String,
        public_key: Vec<u8>,
    },
    #[default]
    Certificate,
}

/// Configures a [`FakeApns`].
pub struct FakeApnsBuilder {
    tls: Arc<rustls::ServerConfig>,
    auth: Auth,
    topics: Vec<String>,
    max_concurrent_streams: u32,
    record: bool,
}

impl std::fmt::Debug for FakeApnsBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeApnsBuilder").field("topics", &self.topics).finish_non_exhaustive()
    }
}

impl FakeApnsBuilder {
    /// Also accepts `topic` (an app may push to `<bundle>.voip` too).
    pub fn topic(mut self, topic: &str) -> Self {
        self.topics.push(topic.to_owned());
        self
    }

    /// Grants each connection at most this many concurrent streams (`SETTINGS_MAX_CONCURRENT_
    /// STREAMS`).
    pub fn max_concurrent_streams(mut self, streams: u32) -> Self {
        self.max_concurrent_streams = streams;
        self
    }

    /// Keeps counts only, not every request (for benchmarks).
    pub fn without_records(mut self) -> Self {
        self.record = false;
        self
    }

    /// Starts the fake on `127.0.0.1` and a free port.
    pub async fn start(self) -> FakeApns {
        self.start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .expect("bind the fake APNs on 127.0.0.1")
    }

    /// Starts the fake on `addr`.
    pub async fn start_on(self, addr: SocketAddr) -> std::io::Result<FakeApns> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            auth: self.auth,
            topics: self.topics,
            max_concurrent_streams: self.max_concurrent_streams,
            record: self.record,
            ..State::default()
        });
        let acceptor = TlsAcceptor::from(self.tls);
        let accept_state = Arc::clone(&state);
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                let index = accept_state.connections.fetch_add(1, Ordering::SeqCst);
                let task =
                    tokio::spawn(serve(Arc::clone(&accept_state), stream, acceptor.clone(), index));
                lock(&accept_state.tasks).push(task.abort_handle());
            }
        });
        lock(&state.tasks).push(accept.abort_handle());
        Ok(FakeApns { addr, state })
    }
}

/// A running fake APNs; stops (and drops every connection) when dropped.
#[derive(Debug)]
pub struct FakeApns {
    addr: SocketAddr,
    state: Arc<State>,
}

#[derive(Default)]
struct State {
    auth: Auth,
    topics: Vec<String>,
    max_concurrent_streams: u32,
    record: bool,
    script: Mutex<VecDeque<ApnsAnswer>>,
    received: Mutex<Vec<ApnsRequest>>,
    requests: AtomicUsize,
    accepted: AtomicUsize,
    connections: AtomicUsize,
    handshakes: AtomicUsize,
    max_streams_seen: AtomicUsize,
    /// The last provider token accepted, and its `iat`.
    last_token: Mutex<Option<(String, u64)>>,
    /// Tokens whose signature verified (verifying each request's would be the fake's hot spot).
    verified: Mutex<HashMap<String, ProviderJwt>>,
    hold: Mutex<Option<Hold>>,
    tasks: Mutex<Vec<AbortHandle>>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State").field("topics", &self.topics).finish_non_exhaustive()
    }
}

/// Answers wait until this many requests wait together.
struct Hold {
    until: usize,
    waiting: usize,
    released: Arc<Notify>,
}

impl FakeApns {
    /// A fake for token auth with `key`, accepting `topic`, serving TLS from `ca`.
    pub fn token(ca: &TestCa, key: &ApnsSigningKey, topic: &str) -> FakeApnsBuilder {
        FakeApnsBuilder {
            tls: ca.server_config(&[ALPN_H2]),
            auth: Auth::Token {
                key_id: key.key_id.clone(),
                team_id: key.team_id.clone(),
                public_key: key.public_key.clone(),
            },
            topics: vec![topic.to_owned()],
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            record: true,
        }
    }

    /// A fake for certificate auth: TLS clients must present a certificate from `client_ca`;
    /// `topic` is the certificate's.
    pub fn certificate(
        ca: &TestCa,
        client_ca: &ApnsCertificateAuthority,
        topic: &str,
    ) -> FakeApnsBuilder {
        let issued = ca.issue_server(&["localhost", "127.0.0.1", "::1"]);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(client_ca.der()).expect("client CA");
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                .build()
                .expect("client verifier");
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![issued.cert_der.clone()], issued.private_key())
            .expect("server certificate");
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        FakeApnsBuilder {
            tls: Arc::new(config),
            auth: Auth::Certificate,
            topics: vec![topic.to_owned()],
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            record: true,
        }
    }

    /// The address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:<port>`: the `endpoint` to configure.
    pub fn base_url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Queues answers for the next requests that pass the checks; then 200 again.
    pub fn script(&self, answers: impl IntoIterator<Item = ApnsAnswer>) {
        lock(&self.state.script).extend(answers);
    }

    /// Makes the next requests wait for their answers until `n` of them wait together (or 10 s
    /// pass), then answers them all: a test sees that many streams open at once.
    pub fn hold_until(&self, n: usize) {
        *lock(&self.state.hold) =
            Some(Hold { until: n, waiting: 0, released: Arc::new(Notify::new()) });
    }

    /// Every request received, oldest first.
    pub fn received(&self) -> Vec<ApnsRequest> {
        lock(&self.state.received).clone()
    }

    /// Requests received (also when not recorded).
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Requests answered 200.
    pub fn accepted(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// TCP connections accepted.
    pub fn connections_accepted(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// TLS handshakes completed (a client the fake refused does not count).
    pub fn handshakes(&self) -> usize {
        self.state.handshakes.load(Ordering::SeqCst)
    }

    /// The most streams seen open at once on one connection.
    pub fn max_concurrent_streams_seen(&self) -> usize {
        self.state.max_streams_seen.load(Ordering::SeqCst)
    }
}

impl Drop for FakeApns {
    fn drop(&mut self) {
        for task in lock(&self.state.tasks).drain(..) {
            task.abort();
        }
    }
}

impl crate::behaviour::FakeUpstream for FakeApns {
    fn requests(&self) -> usize {
        FakeApns::requests(self)
    }
}

/// What a request handler can ask of its connection.
#[derive(Default)]
struct Control {
    go_away: Notify,
    kill: Notify,
    open_streams: AtomicUsize,
}

async fn serve(state: Arc<State>, stream: TcpStream, acceptor: TlsAcceptor, index: usize) {
    // A failed handshake (an unknown client certificate, a client without h2) ends here.
    let Ok(tls) = acceptor.accept(stream).await else { return };
    if tls.get_ref().1.alpn_protocol() != Some(ALPN_H2) {
        return;
    }
    state.handshakes.fetch_add(1, Ordering::SeqCst);
    let Ok(mut connection) = h2::server::Builder::new()
        .max_concurrent_streams(state.max_concurrent_streams)
        .handshake::<_, Bytes>(tls)
        .await
    else {
        return;
    };
    let control = Arc::new(Control::default());
    loop {
        tokio::select! {
            next = connection.accept() => match next {
                Some(Ok((request, respond))) => {
                    let open = control.open_streams.fetch_add(1, Ordering::SeqCst) + 1;
                    state.max_streams_seen.fetch_max(open, Ordering::SeqCst);
                    tokio::spawn(handle(Arc::clone(&state), Arc::clone(&control), request, respond, index));
                }
                // Closed, or broken by the client.
                _ => return,
            },
            () = control.go_away.notified() => {
                // As servers shutting down do (RFC 9113 §6.8): GOAWAY with the highest stream id,
                // a PING round trip, then GOAWAY with the last stream id received. Streams
                // above it are refused; the connection closes once the others are answered
                // (`accept` keeps driving it until then).
                connection.graceful_shutdown();
            }
            () = control.kill.notified() => return,
        }
    }
}

async fn handle(
    state: Arc<State>,
    control: Arc<Control>,
    request: Request<RecvStream>,
    respond: SendResponse<Bytes>,
    connection: usize,
) {
    struct Open(Arc<Control>);
    impl Drop for Open {
        fn drop(&mut self) {
            self.0.open_streams.fetch_sub(1, Ordering::SeqCst);
        }
    }
    let _open = Open(Arc::clone(&control));
    let (parts, mut body) = request.into_parts();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let Ok(chunk) = chunk else { return };
        let _ = body.flow_control().release_capacity(chunk.len());
        if bytes.len() < 64 * 1024 {
            bytes.extend_from_slice(&chunk);
        }
    }
    let body = Bytes::from(bytes);
    state.requests.fetch_add(1, Ordering::SeqCst);
    let mut record = ApnsRequest {
        path: parts.uri.path().to_owned(),
        device_token: None,
        headers: parts.headers.clone(),
        payload: serde_json::from_slice(&body).ok(),
        body: body.clone(),
        jwt: None,
        rejection: None,
        status: None,
        connection,
        at: Instant::now(),
    };
    let answer = match check(&state, &parts.method, &parts.headers, &body, &mut record) {
        Err((status, reason, why)) => {
            record.rejection = Some(why);
            ApnsAnswer::Error(status, reason)
        }
        Ok(()) => lock(&state.script).pop_front().unwrap_or(ApnsAnswer::Ok),
    };
    // Held answers wait for each other (checks passed or not: the streams are open either way).
    let released = {
        let mut hold = lock(&state.hold);
        match hold.as_mut() {
            Some(h) => {
                h.waiting += 1;
                let released = Arc::clone(&h.released);
                if h.waiting >= h.until {
                    released.notify_waiters();
                    *hold = None;
                    None
                } else {
                    Some(released)
                }
            }
            None => None,
        }
    };
    if let Some(released) = released {
        let _ = tokio::time::timeout(HOLD_LIMIT, released.notified()).await;
    }
    let apns_id = parts
        .headers
        .get("apns-id")
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("00000000-0000-4000-8000-000000000000"));
    let (status, reason_body, retry_after) = match answer {
        ApnsAnswer::Ok => (200, None, None),
        ApnsAnswer::GoAway => {
            control.go_away.notify_one();
            (200, None, None)
        }
        ApnsAnswer::Error(status, reason) => {
            (status, Some(serde_json::json!({ "reason": reason }).to_string()), None)
        }
        ApnsAnswer::Unregistered => {
            let at = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
            let body = serde_json::json!({"reason": "Unregistered", "timestamp": at as u64});
            (410, Some(body.to_string()), None)
        }
        ApnsAnswer::RetryAfter(status, reason, value) => {
            (status, Some(serde_json::json!({ "reason": reason }).to_string()), Some(value))
        }
        ApnsAnswer::Raw(status, body) => (status, Some(body), None),
        ApnsAnswer::Hang => {
            record_request(&state, record);
            // Keeps the stream (and `respond`) open until the client resets it or the fake
            // stops.
            let mut respond = respond;
            let _ = std::future::poll_fn(|cx| respond.poll_reset(cx)).await;
            return;
        }
        ApnsAnswer::Reset => {
            record_request(&state, record);
            control.kill.notify_one();
            return;
        }
        ApnsAnswer::RefusedStream => {
            record_request(&state, record);
            let mut respond = respond;
            respond.send_reset(h2::Reason::REFUSED_STREAM);
            return;
        }
    };
    record.status = Some(status);
    if status == 200 {
        state.accepted.fetch_add(1, Ordering::SeqCst);
    }
    record_request(&state, record);
    let mut response = Response::new(());
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    response.headers_mut().insert("apns-id", apns_id);
    if let Some(value) = retry_after.and_then(|v| HeaderValue::try_from(v).ok()) {
        response.headers_mut().insert(http::header::RETRY_AFTER, value);
    }
    if reason_body.is_some() {
        response
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    let mut respond = respond;
    match reason_body {
        None => {
            let _ = respond.send_response(response, true);
        }
        Some(text) => {
            if let Ok(mut stream) = respond.send_response(response, false) {
                let _ = stream.send_data(Bytes::from(text), true);
            }
        }
    }
}

fn record_request(state: &State, record: ApnsRequest) {
    if state.record {
        lock(&state.received).push(record);
    }
}

/// A failed check: status, APNs reason, and why (for the test's eyes).
type Refusal = (u16, &'static str, String);

/// Apple's checks, in order.
fn check(
    state: &State,
    method: &Method,
    headers: &HeaderMap,
    body: &[u8],
    record: &mut ApnsRequest,
) -> Result<(), Refusal> {
    if method != Method::POST {
        return Err((405, "MethodNotAllowed", format!("method {method}")));
    }
    let Some(token) = record.path.strip_prefix("/3/device/") else {
        return Err((404, "BadPath", format!("path {} is not /3/device/<token>", record.path)));
    };
    if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err((400, "BadDeviceToken", "the device token is not 64 hex digits".into()));
    }
    record.device_token = Some(token.to_owned());
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());

    if let Auth::Token { key_id, team_id, public_key } = &state.auth {
        let Some(authorization) = text("authorization") else {
            return Err((403, "MissingProviderToken", "no authorization header".into()));
        };
        let Some(jwt) =
            authorization.strip_prefix("bearer ").or_else(|| authorization.strip_prefix("Bearer "))
        else {
            return Err((
                403,
                "MissingProviderToken",
                "authorization is not a bearer token".into(),
            ));
        };
        let claims =
            verify(state, jwt, public_key).map_err(|why| (403, "InvalidProviderToken", why))?;
        record.jwt = Some(claims.clone());
        if claims.kid != *key_id {
            return Err((403, "InvalidProviderToken", format!("kid {:?} is not ours", claims.kid)));
        }
        if claims.iss != *team_id {
            return Err((403, "InvalidProviderToken", format!("iss {:?} is not ours", claims.iss)));
        }
        let now = now_secs();
        if claims.iat > now + 60 {
            return Err((403, "InvalidProviderToken", "iat is in the future".into()));
        }
        if now.saturating_sub(claims.iat) > TOKEN_LIFETIME {
            return Err((403, "ExpiredProviderToken", "iat is more than an hour ago".into()));
        }
        let mut last = lock(&state.last_token);
        match last.as_ref() {
            Some((last_jwt, _)) if *last_jwt == claims.jwt => {}
            Some((_, last_iat)) if claims.iat < last_iat + TOKEN_MIN_INTERVAL => {
                return Err((
                    429,
                    "TooManyProviderTokenUpdates",
                    "a new token less than 20 minutes after the last".into(),
                ));
            }
            _ => *last = Some((claims.jwt.clone(), claims.iat)),
        }
    }

    let push_type = text("apns-push-type");
    match text("apns-topic") {
        None => return Err((400, "MissingTopic", "no apns-topic".into())),
        Some(topic) if !state.topics.iter().any(|t| t == topic) => {
            return Err((400, "TopicDisallowed", format!("topic {topic:?} is not this app's")));
        }
        Some(_) => {}
    }
    if let Some(push_type) = push_type {
        if !PUSH_TYPES.contains(&push_type) {
            return Err((400, "InvalidPushType", format!("apns-push-type {push_type:?}")));
        }
    }
    if let Some(priority) = text("apns-priority") {
        let allowed: &[&str] =
            if push_type == Some("background") { &["5", "1"] } else { &["10", "5", "1"] };
        if !allowed.contains(&priority) {
            return Err((400, "BadPriority", format!("apns-priority {priority:?}")));
        }
    }
    if let Some(id) = text("apns-id") {
        if !is_uuid(id) {
            return Err((400, "BadMessageId", "apns-id is not a UUID".into()));
        }
    }
    if let Some(expiration) = text("apns-expiration") {
        if expiration.parse::<u64>().is_err() {
            return Err((400, "BadExpirationDate", "apns-expiration is not a number".into()));
        }
    }
    if let Some(collapse) = headers.get("apns-collapse-id") {
        if collapse.len() > 64 {
            return Err((400, "BadCollapseId", "apns-collapse-id is over 64 bytes".into()));
        }
    }
    let limit = if push_type == Some("voip") { MAX_VOIP_PAYLOAD } else { MAX_PAYLOAD };
    if body.is_empty() {
        return Err((400, "PayloadEmpty", "no body".into()));
    }
    if body.len() > limit {
        return Err((413, "PayloadTooLarge", format!("{} bytes, over {limit}", body.len())));
    }
    if !matches!(serde_json::from_slice::<Value>(body), Ok(Value::Object(_))) {
        // Not a reason Apple documents: the fake's own word for a malformed body.
        return Err((400, "BadPayload", "the body is not a JSON object".into()));
    }
    Ok(())
}

fn is_uuid(id: &str) -> bool {
    let groups: Vec<&str> = id.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Verifies an ES256 JWT against `public_key` (once per token) and reads its claims.
fn verify(state: &State, jwt: &str, public_key: &[u8]) -> Result<ProviderJwt, String> {
    if let Some(claims) = lock(&state.verified).get(jwt) {
        return Ok(claims.clone());
    }
    let b64 = |part: &str| URL_SAFE_NO_PAD.decode(part).map_err(|e| format!("JWT base64: {e}"));
    let parts: Vec<&str> = jwt.split('.').collect();
    let [header, claims, signature] = parts.as_slice() else {
        return Err("the JWT is not three parts".into());
    };
    let header: Value =
        serde_json::from_slice(&b64(header)?).map_err(|e| format!("JWT header: {e}"))?;
    if header["alg"] != "ES256" {
        return Err(format!("alg is {}, not ES256", header["alg"]));
    }
    let signing_input = &jwt[..jwt.rfind('.').unwrap_or(0)];
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, public_key)
        .verify(signing_input.as_bytes(), &b64(signature)?)
        .map_err(|_| "the signature does not verify against the team's key".to_owned())?;
    let claims: Value =
        serde_json::from_slice(&b64(claims)?).map_err(|e| format!("JWT claims: {e}"))?;
    let parsed = ProviderJwt {
        jwt: jwt.to_owned(),
        kid: header["kid"].as_str().unwrap_or_default().to_owned(),
        iss: claims["iss"].as_str().unwrap_or_default().to_owned(),
        iat: claims["iat"].as_u64().ok_or("no numeric iat")?,
    };
    let mut verified = lock(&state.verified);
    if verified.len() > 1000 {
        verified.clear();
    }
    verified.insert(jwt.to_owned(), parsed.clone());
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids() {
        assert!(is_uuid("123e4567-e89b-12d3-a456-426655440000"));
        assert!(!is_uuid("123e4567e89b12d3a456426655440000"));
        assert!(!is_uuid("123e4567-e89b-12d3-a456-42665544000g"));
    }

    #[test]
    fn signing_keys_verify_their_own_jwts_only() {
        let key = ApnsSigningKey::new();
        let other = ApnsSigningKey::new();
        let pair = KeyPair::from_pem(key.pem()).expect("pem");
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","kid":"KEY1234567"}"#);
        let claims = URL_SAFE_NO_PAD.encode(br#"{"iss":"TEAM123456","iat":1}"#);
        let input = format!("{header}.{claims}");
        let rng = ring::rand::SystemRandom::new();
        let signer = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &pair.serialize_der(),
            &rng,
        )
        .expect("pkcs8");
        let signature = signer.sign(&rng, input.as_bytes()).expect("sign");
        let jwt = format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()));
        let state = State::default();
        let claims = verify(&state, &jwt, key.public_key()).expect("valid");
        assert_eq!(
            (claims.kid.as_str(), claims.iss.as_str(), claims.iat),
            ("KEY1234567", "TEAM123456", 1)
        );
        assert!(verify(&State::default(), &jwt, other.public_key()).is_err());
    }
}
