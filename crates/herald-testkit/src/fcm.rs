//! Fake Firebase Cloud Messaging: a Google OAuth token endpoint ([`FakeOauth`]) and the FCM HTTP
//! v1 API ([`FakeFcm`]), on real sockets on 127.0.0.1, serving HTTPS from a [`TestCa`] with HTTP/2
//! (and HTTP/1.1) by ALPN, as Google does.
//!
//! They check what Google checks, so a backend that passes them sends what Google takes:
//!
//! - the token endpoint takes `POST` form `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`
//!   and an `assertion`: a JWT signed RS256 by a service account it knows (the signature checked
//!   with OpenSSL against the account's public key, independently of the backend's `ring`),
//!   `aud` = its own token URI, `iat`/`exp` at most an hour apart and around now, and a `scope`.
//!   It answers `{"access_token", "expires_in", "token_type": "Bearer"}`, or RFC 6749 errors
//!   (`invalid_grant`, …) as Google words them. Tokens are short-lived when asked
//!   ([`FakeOauth::set_lifetime`]), can be revoked early ([`FakeOauth::expire_tokens`]) and
//!   answers can be scripted to fail ([`FakeOauth::script`]) or be slow
//!   ([`FakeOauth::set_latency`]).
//! - the FCM endpoint takes `POST /v1/projects/<id>/messages:send` for its project, with a
//!   bearer token the token endpoint issued for the `firebase.messaging` scope and not expired;
//!   a JSON `message` with only v1 fields, exactly one target, a `data` map whose every value is
//!   a string and whose keys are not reserved, at most 4096 bytes of `data`, a valid
//!   `android.priority`. Failed checks get Google's real error bodies. It records each message
//!   and answers as scripted ([`FakeFcm::script`], real FCM error bodies from [`FcmAnswer`]'s
//!   constructors), else 200 with a message `name`.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{HeaderMap, Method, Request, Response, StatusCode, Version};

use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private, Public};
use openssl::rsa::Rsa;
use openssl::sign::Verifier;
use serde_json::{json, Map, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio_rustls::TlsAcceptor;

use crate::tls::{TestCa, ALPN_H2, ALPN_HTTP1};

/// The OAuth2 scope that lets a token send FCM messages.
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// The grant type of a JWT-bearer assertion (RFC 7523).
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// FCM's limit on a message's `data` (keys and values, UTF-8 bytes).
pub const MAX_DATA_BYTES: usize = 4096;
/// The project id of the service accounts this module makes unless told otherwise.
pub const TEST_PROJECT: &str = "herald-test";
/// The message FCM answers for a token that is not one.
pub const NOT_A_TOKEN: &str = "The registration token is not a valid FCM registration token";

/// Fields of an FCM v1 `Message`.
const MESSAGE_FIELDS: [&str; 10] = [
    "name",
    "data",
    "notification",
    "android",
    "webpush",
    "apns",
    "fcm_options",
    "token",
    "topic",
    "condition",
];
/// Fields of an FCM v1 `AndroidConfig`.
const ANDROID_FIELDS: [&str; 10] = [
    "collapse_key",
    "priority",
    "ttl",
    "restricted_package_name",
    "data",
    "notification",
    "fcm_options",
    "direct_boot_ok",
    "bandwidth_constrained_ok",
    "restricted_satellite_ok",
];

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs()
}

/// The RSA keys of this process's test service accounts: made once (RSA key generation is the
/// slow part), shared by every fake.
fn rsa_key(which: usize) -> &'static PKey<Private> {
    static KEYS: [OnceLock<PKey<Private>>; 2] = [OnceLock::new(), OnceLock::new()];
    KEYS[which].get_or_init(|| {
        let rsa = Rsa::generate(2048).expect("generate an RSA key");
        PKey::from_rsa(rsa).expect("RSA key")
    })
}

/// A service account key file as Google gives it, for a [`FakeOauth`].
#[derive(Clone)]
pub struct TestServiceAccount {
    /// `client_email`.
    pub client_email: String,
    /// `project_id`.
    pub project_id: String,
    /// `private_key_id`.
    pub private_key_id: String,
    /// `private_key`: PKCS#8 PEM.
    pub private_key_pem: String,
    /// `token_uri`: the fake token endpoint.
    pub token_uri: String,
}

impl std::fmt::Debug for TestServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestServiceAccount")
            .field("client_email", &self.client_email)
            .field("project_id", &self.project_id)
            .finish_non_exhaustive()
    }
}

impl TestServiceAccount {
    /// A service account of `project_id` for Google's real token endpoint, which no fake knows:
    /// for configurations that are built and checked but never send.
    pub fn offline(project_id: &str) -> Self {
        let pem = rsa_key(0).private_key_to_pem_pkcs8().expect("PKCS#8 PEM");
        TestServiceAccount {
            client_email: format!("herald@{project_id}.iam.gserviceaccount.com"),
            project_id: project_id.to_owned(),
            private_key_id: format!("{:040x}", 1),
            private_key_pem: String::from_utf8(pem).expect("PEM is text"),
            token_uri: "https://oauth2.googleapis.com/token".to_owned(),
        }
    }

    /// The key file's JSON, with every field Google puts in it.
    pub fn json(&self) -> String {
        json!({
            "type": "service_account",
            "project_id": self.project_id,
            "private_key_id": self.private_key_id,
            "private_key": self.private_key_pem,
            "client_email": self.client_email,
            "client_id": "100000000000000000001",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": self.token_uri,
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "client_x509_cert_url": format!(
                "https://www.googleapis.com/robot/v1/metadata/x509/{}",
                self.client_email.replace('@', "%40")
            ),
            "universe_domain": "googleapis.com"
        })
        .to_string()
    }

    /// Writes the key file to `dir/service-account.json` and returns the path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        let path = dir.join("service-account.json");
        std::fs::write(&path, self.json()).expect("write the service account file");
        path
    }
}

/// How the token endpoint answers one request that passed its checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenAnswer {
    /// Issue a token (the default).
    Grant,
    /// Answer with this status, `Content-Type` and body.
    Status(u16, &'static str, String),
    /// Never answer.
    Hang,
    /// Drop the connection without answering.
    Reset,
}

impl TokenAnswer {
    /// Google's front end when the service is down: 503 with an HTML page.
    pub fn unavailable() -> Self {
        TokenAnswer::Status(
            503,
            "text/html; charset=UTF-8",
            "<!DOCTYPE html><html lang=en><title>Error 503 (Service Unavailable)!!1</title>"
                .to_owned(),
        )
    }

    /// An RFC 6749 error as Google words it (e.g. `invalid_grant`, "Invalid JWT Signature.").
    pub fn oauth_error(status: u16, error: &str, description: &str) -> Self {
        TokenAnswer::Status(
            status,
            "application/json; charset=utf-8",
            json!({"error": error, "error_description": description}).to_string(),
        )
    }
}

/// One request the token endpoint received.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// The assertion's JOSE header, when it could be read.
    pub header: Option<Value>,
    /// The assertion's claims, when they could be read.
    pub claims: Option<Value>,
    /// Why the request failed the checks, if it did.
    pub rejection: Option<String>,
    /// The status answered; `None` for a hang or a reset.
    pub status: Option<u16>,
    /// When it arrived.
    pub at: Instant,
}

/// Tokens a [`FakeOauth`] issued, which its [`FakeFcm`]s accept.
#[derive(Debug, Default)]
pub struct TokenRegistry {
    issued: Mutex<HashMap<String, IssuedToken>>,
}

#[derive(Debug, Clone)]
struct IssuedToken {
    expires: Instant,
    scope: String,
}

impl TokenRegistry {
    /// Whether `token` was issued, for `scope`, and has not expired: `Err` says why not.
    fn check(&self, token: &str) -> Result<IssuedToken, &'static str> {
        let issued = lock(&self.issued).get(token).cloned().ok_or("unknown token")?;
        if Instant::now() >= issued.expires {
            return Err("expired token");
        }
        Ok(issued)
    }
}

/// A fake Google OAuth2 token endpoint; stops when dropped.
pub struct FakeOauth {
    addr: SocketAddr,
    state: Arc<OauthState>,
    tasks: Tasks,
}

impl std::fmt::Debug for FakeOauth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeOauth").field("addr", &self.addr).finish_non_exhaustive()
    }
}

struct OauthState {
    token_uri: String,
    accounts: Mutex<HashMap<String, PKey<Public>>>,
    tokens: Arc<TokenRegistry>,
    script: Mutex<VecDeque<TokenAnswer>>,
    lifetime: Mutex<Duration>,
    latency: Mutex<Duration>,
    requests: Mutex<Vec<TokenRequest>>,
    grants: AtomicUsize,
    accounts_made: AtomicUsize,
}

impl FakeOauth {
    /// Starts the token endpoint on 127.0.0.1 and a free port, serving HTTPS with a certificate
    /// from `ca` (HTTP/2 and HTTP/1.1 by ALPN). Tokens live an hour until told otherwise.
    pub async fn start(ca: &TestCa) -> Self {
        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .expect("bind the fake token endpoint");
        let addr = listener.local_addr().expect("local address");
        let state = Arc::new(OauthState {
            token_uri: format!("https://{addr}/token"),
            accounts: Mutex::default(),
            tokens: Arc::default(),
            script: Mutex::default(),
            lifetime: Mutex::new(Duration::from_secs(3600)),
            latency: Mutex::new(Duration::ZERO),
            requests: Mutex::default(),
            grants: AtomicUsize::new(0),
            accounts_made: AtomicUsize::new(0),
        });
        let handler_state = Arc::clone(&state);
        let handler: Handler = Arc::new(move |request, kill| {
            let state = Arc::clone(&handler_state);
            Box::pin(async move { oauth_handle(&state, request, kill).await })
        });
        let tasks =
            serve(listener, TlsAcceptor::from(ca.server_config(&[ALPN_H2, ALPN_HTTP1])), handler);
        FakeOauth { addr, state, tasks }
    }

    /// The token endpoint's URL (`https://127.0.0.1:PORT/token`): a service account's
    /// `token_uri`.
    pub fn token_uri(&self) -> &str {
        &self.state.token_uri
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The tokens it issued, for a [`FakeFcm`] to check.
    pub fn tokens(&self) -> Arc<TokenRegistry> {
        Arc::clone(&self.state.tokens)
    }

    /// A new service account of `project_id` that this endpoint knows.
    pub fn service_account(&self, project_id: &str) -> TestServiceAccount {
        self.account(project_id, 0, 0)
    }

    /// A service account this endpoint knows by its email, but whose key file holds another
    /// key (a deleted and replaced key): its assertions fail the signature check.
    pub fn service_account_with_wrong_key(&self, project_id: &str) -> TestServiceAccount {
        self.account(project_id, 0, 1)
    }

    fn account(&self, project_id: &str, known: usize, written: usize) -> TestServiceAccount {
        let n = self.state.accounts_made.fetch_add(1, Ordering::SeqCst);
        let client_email = format!("herald-{n}@{project_id}.iam.gserviceaccount.com");
        let public_der = rsa_key(known).public_key_to_der().expect("public key");
        let public = PKey::public_key_from_der(&public_der).expect("public key");
        lock(&self.state.accounts).insert(client_email.clone(), public);
        let pem = rsa_key(written).private_key_to_pem_pkcs8().expect("PKCS#8 PEM");
        TestServiceAccount {
            client_email,
            project_id: project_id.to_owned(),
            private_key_id: format!("{:040x}", n + 1),
            private_key_pem: String::from_utf8(pem).expect("PEM is text"),
            token_uri: self.state.token_uri.clone(),
        }
    }

    /// Queues answers for the next requests that pass the checks; then it grants again.
    pub fn script(&self, answers: impl IntoIterator<Item = TokenAnswer>) {
        lock(&self.state.script).extend(answers);
    }

    /// The life (`expires_in`) of the tokens issued from now on.
    pub fn set_lifetime(&self, lifetime: Duration) {
        *lock(&self.state.lifetime) = lifetime;
    }

    /// Delays every answer by `latency` (to make concurrent requests overlap a fetch).
    pub fn set_latency(&self, latency: Duration) {
        *lock(&self.state.latency) = latency;
    }

    /// Revokes every token issued so far: FCM refuses them from now on (401).
    pub fn expire_tokens(&self) {
        let now = Instant::now();
        for token in lock(&self.state.tokens.issued).values_mut() {
            token.expires = token.expires.min(now);
        }
    }

    /// How many tokens it issued.
    pub fn grants(&self) -> usize {
        self.state.grants.load(Ordering::SeqCst)
    }

    /// Every request, oldest first.
    pub fn requests(&self) -> Vec<TokenRequest> {
        lock(&self.state.requests).clone()
    }

    /// How many TCP connections it accepted.
    pub fn connections_accepted(&self) -> usize {
        self.tasks.connections.load(Ordering::SeqCst)
    }
}

async fn oauth_handle(
    state: &OauthState,
    request: Request<Incoming>,
    kill: Arc<Notify>,
) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let body =
        Limited::new(body, 64 * 1024).collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let latency = *lock(&state.latency);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let mut record = TokenRequest {
        header: None,
        claims: None,
        rejection: None,
        status: None,
        at: Instant::now(),
    };
    let answer = match oauth_check(
        state,
        &parts.method,
        parts.uri.path(),
        &parts.headers,
        &body,
        &mut record,
    ) {
        Err((status, error, description)) => {
            record.rejection = Some(format!("{error}: {description}"));
            TokenAnswer::oauth_error(status, error, &description)
        }
        Ok(scope) => match lock(&state.script).pop_front() {
            Some(TokenAnswer::Grant) | None => {
                let lifetime = *lock(&state.lifetime);
                let n = state.grants.fetch_add(1, Ordering::SeqCst);
                let token = format!("ya29.fake-{n}-{}", URL_SAFE_NO_PAD.encode(fastrand_bytes()));
                lock(&state.tokens.issued).insert(
                    token.clone(),
                    IssuedToken { expires: Instant::now() + lifetime, scope },
                );
                TokenAnswer::Status(
                    200,
                    "application/json; charset=utf-8",
                    json!({"access_token": token, "expires_in": lifetime.as_secs(), "token_type": "Bearer"})
                        .to_string(),
                )
            }
            Some(other) => other,
        },
    };
    record.status = match &answer {
        TokenAnswer::Status(s, _, _) => Some(*s),
        _ => None,
    };
    lock(&state.requests).push(record);
    match answer {
        TokenAnswer::Status(status, content_type, body) => {
            respond(status, content_type, body, None)
        }
        TokenAnswer::Grant => respond(500, "text/plain", String::new(), None),
        TokenAnswer::Hang => std::future::pending().await,
        TokenAnswer::Reset => {
            kill.notify_one();
            std::future::pending().await
        }
    }
}

/// 16 bytes that differ per token (not a secret: a fake).
fn fastrand_bytes() -> [u8; 16] {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let t =
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_nanos() as u64;
    let mut out = [0; 16];
    out[..8].copy_from_slice(&n.to_le_bytes());
    out[8..].copy_from_slice(&t.to_le_bytes());
    out
}

type OauthRefusal = (u16, &'static str, String);

/// The token endpoint's checks; `Ok` is the granted scope.
fn oauth_check(
    state: &OauthState,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
    record: &mut TokenRequest,
) -> Result<String, OauthRefusal> {
    let invalid_grant = |d: &str| (400, "invalid_grant", d.to_owned());
    if method != Method::POST || path != "/token" {
        return Err((404, "invalid_request", format!("{method} {path} is not the token endpoint")));
    }
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    if !content_type.starts_with("application/x-www-form-urlencoded") {
        return Err((400, "invalid_request", "Content-Type is not a form".into()));
    }
    let form = parse_form(body);
    let grant_type = form.get("grant_type").map(String::as_str).unwrap_or("");
    if grant_type != GRANT_TYPE {
        return Err((400, "unsupported_grant_type", format!("Invalid grant_type: {grant_type}")));
    }
    let assertion = form.get("assertion").ok_or_else(|| {
        (400, "invalid_request", "Missing required parameter: assertion".to_owned())
    })?;
    let mut parts = assertion.split('.');
    let (Some(header), Some(claims), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid_grant("Invalid JWT: not three parts."));
    };
    let decode = |part: &str| {
        URL_SAFE_NO_PAD.decode(part).ok().and_then(|b| serde_json::from_slice::<Value>(&b).ok())
    };
    let header_json = decode(header).ok_or_else(|| invalid_grant("Invalid JWT header."))?;
    let claims_json = decode(claims).ok_or_else(|| invalid_grant("Invalid JWT claims."))?;
    record.header = Some(header_json.clone());
    record.claims = Some(claims_json.clone());
    if header_json["alg"] != "RS256" {
        return Err(invalid_grant("Invalid JWT Signature."));
    }
    let iss = claims_json["iss"].as_str().unwrap_or("");
    let key = lock(&state.accounts)
        .get(iss)
        .cloned()
        .ok_or_else(|| invalid_grant("Invalid grant: account not found"))?;
    let signature =
        URL_SAFE_NO_PAD.decode(signature).map_err(|_| invalid_grant("Invalid JWT Signature."))?;
    let valid = (|| -> Result<bool, openssl::error::ErrorStack> {
        let mut verifier = Verifier::new(MessageDigest::sha256(), &key)?;
        verifier.update(format!("{header}.{claims}").as_bytes())?;
        verifier.verify(&signature)
    })()
    .unwrap_or(false);
    if !valid {
        return Err(invalid_grant("Invalid JWT Signature."));
    }
    if claims_json["aud"] != state.token_uri.as_str() {
        return Err(invalid_grant(&format!(
            "Invalid JWT: Failed audience check. The right audience is {}",
            state.token_uri
        )));
    }
    let now = unix_now();
    let (iat, exp) =
        (claims_json["iat"].as_u64().unwrap_or(0), claims_json["exp"].as_u64().unwrap_or(0));
    if exp <= iat || exp - iat > 3600 || iat > now + 60 || exp < now {
        return Err(invalid_grant(
            "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable \
             timeframe. Check your iat and exp values in the JWT claim.",
        ));
    }
    let scope = claims_json["scope"].as_str().unwrap_or("").trim().to_owned();
    if scope.is_empty() {
        return Err((
            400,
            "invalid_scope",
            "Invalid OAuth scope or ID token audience provided.".into(),
        ));
    }
    Ok(scope)
}

/// `application/x-www-form-urlencoded` pairs (`+` is a space, `%XX` a byte).
fn parse_form(body: &[u8]) -> HashMap<String, String> {
    let decode = |s: &str| -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    match u8::from_str_radix(
                        std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or(""),
                        16,
                    ) {
                        Ok(b) => {
                            out.push(b);
                            i += 2;
                        }
                        Err(_) => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

/// How the FCM endpoint answers one message that passed its checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FcmAnswer {
    /// 200 with the message's `name` (the default).
    Ok,
    /// This status, `Content-Type`, body, and optionally a `Retry-After` header.
    Status {
        /// The status.
        status: u16,
        /// The `Content-Type`.
        content_type: &'static str,
        /// The body.
        body: String,
        /// A `Retry-After` value.
        retry_after: Option<String>,
    },
    /// Never answer.
    Hang,
    /// Drop the connection without answering.
    Reset,
}

/// A Google API error body (`{"error": {"code", "message", "status", "details"}}`).
pub fn google_error(code: u16, status: &str, message: &str, details: Vec<Value>) -> String {
    let mut error = json!({"code": code, "message": message, "status": status});
    if !details.is_empty() {
        error["details"] = Value::Array(details);
    }
    json!({ "error": error }).to_string()
}

/// The `FcmError` detail with `errorCode`.
pub fn fcm_error_detail(error_code: &str) -> Value {
    json!({"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": error_code})
}

/// A `google.rpc.BadRequest` detail naming `field`.
pub fn bad_request_detail(field: &str, description: &str) -> Value {
    json!({
        "@type": "type.googleapis.com/google.rpc.BadRequest",
        "fieldViolations": [{"field": field, "description": description}]
    })
}

impl FcmAnswer {
    /// `status` with a Google error body.
    pub fn error(code: u16, status: &str, message: &str, details: Vec<Value>) -> Self {
        FcmAnswer::Status {
            status: code,
            content_type: "application/json; charset=UTF-8",
            body: google_error(code, status, message, details),
            retry_after: None,
        }
    }

    /// This answer with `Retry-After: value` (seconds or an HTTP date).
    pub fn with_retry_after(self, value: impl Into<String>) -> Self {
        match self {
            FcmAnswer::Status { status, content_type, body, .. } => {
                FcmAnswer::Status { status, content_type, body, retry_after: Some(value.into()) }
            }
            other => other,
        }
    }

    /// 404 `UNREGISTERED`: the app was uninstalled or the token expired.
    pub fn unregistered() -> Self {
        Self::error(
            404,
            "NOT_FOUND",
            "Requested entity was not found.",
            vec![fcm_error_detail("UNREGISTERED")],
        )
    }

    /// 400 `INVALID_ARGUMENT` with a field violation on `message.token` (a malformed token).
    pub fn invalid_token() -> Self {
        Self::error(
            400,
            "INVALID_ARGUMENT",
            "Invalid value at 'message.token' (TYPE_STRING), Invalid registration token",
            vec![
                fcm_error_detail("INVALID_ARGUMENT"),
                bad_request_detail("message.token", "Invalid registration token"),
            ],
        )
    }

    /// 400 `INVALID_ARGUMENT` as FCM answers most invalid tokens: only its message says so.
    pub fn not_a_token() -> Self {
        Self::error(
            400,
            "INVALID_ARGUMENT",
            NOT_A_TOKEN,
            vec![fcm_error_detail("INVALID_ARGUMENT")],
        )
    }

    /// 400 `INVALID_ARGUMENT` about another field of the message.
    pub fn invalid_argument(field: &str, description: &str) -> Self {
        Self::error(
            400,
            "INVALID_ARGUMENT",
            &format!("Invalid value at '{field}', {description}"),
            vec![fcm_error_detail("INVALID_ARGUMENT"), bad_request_detail(field, description)],
        )
    }

    /// 403 `SENDER_ID_MISMATCH`: the token belongs to another project.
    pub fn sender_id_mismatch() -> Self {
        Self::error(
            403,
            "PERMISSION_DENIED",
            "SenderId mismatch",
            vec![fcm_error_detail("SENDER_ID_MISMATCH")],
        )
    }

    /// 429 `QUOTA_EXCEEDED`.
    pub fn quota_exceeded() -> Self {
        Self::error(
            429,
            "RESOURCE_EXHAUSTED",
            "Quota exceeded for quota metric 'Send requests'.",
            vec![fcm_error_detail("QUOTA_EXCEEDED")],
        )
    }

    /// 503 `UNAVAILABLE`.
    pub fn unavailable() -> Self {
        Self::error(
            503,
            "UNAVAILABLE",
            "The service is currently unavailable.",
            vec![fcm_error_detail("UNAVAILABLE")],
        )
    }

    /// 500 `INTERNAL`.
    pub fn internal() -> Self {
        Self::error(
            500,
            "INTERNAL",
            "Internal error encountered.",
            vec![fcm_error_detail("INTERNAL")],
        )
    }

    /// 401 `UNAUTHENTICATED`: the access token is missing, expired or revoked.
    pub fn unauthenticated() -> Self {
        Self::error(
            401,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials. Expected OAuth 2 access token, login \
             cookie or other valid authentication credential.",
            vec![],
        )
    }

    /// 403 `PERMISSION_DENIED`: the account may not send for the project.
    pub fn permission_denied() -> Self {
        Self::error(
            403,
            "PERMISSION_DENIED",
            "Permission 'cloudmessaging.messages.create' denied on resource \
             '//cloudresourcemanager.googleapis.com/projects/herald-test' (or it may not exist).",
            vec![],
        )
    }

    /// 401 `THIRD_PARTY_AUTH_ERROR`: the project's APNs certificate or web push key is invalid.
    pub fn third_party_auth_error() -> Self {
        Self::error(
            401,
            "UNAUTHENTICATED",
            "Auth error from APNS or Web Push Service",
            vec![fcm_error_detail("THIRD_PARTY_AUTH_ERROR")],
        )
    }

    /// Google's front end's HTML error page with `status` (a 502 or 504 on the way).
    pub fn html(status: u16) -> Self {
        FcmAnswer::Status {
            status,
            content_type: "text/html; charset=UTF-8",
            body: format!("<!DOCTYPE html><html lang=en><title>Error {status}!!1</title></html>"),
            retry_after: None,
        }
    }
}

/// One request the FCM endpoint received.
#[derive(Debug, Clone)]
pub struct ReceivedMessage {
    /// The project in the path.
    pub project: String,
    /// The bearer token, as sent.
    pub bearer: Option<String>,
    /// The request headers.
    pub headers: HeaderMap,
    /// The body as sent.
    pub body: Bytes,
    /// The body's `message`, when the body was JSON.
    pub message: Option<Value>,
    /// Why the request failed the checks, if it did.
    pub rejection: Option<String>,
    /// The status answered; `None` for a hang or a reset.
    pub status: Option<u16>,
    /// The HTTP version it came over.
    pub version: Version,
    /// When it arrived.
    pub at: Instant,
}

impl ReceivedMessage {
    /// The body's `message.data`.
    pub fn data(&self) -> Option<&Map<String, Value>> {
        self.message.as_ref()?.get("data")?.as_object()
    }

    /// The body as text.
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A fake FCM HTTP v1 endpoint for one project; stops when dropped.
pub struct FakeFcm {
    addr: SocketAddr,
    state: Arc<FcmState>,
    tasks: Tasks,
}

impl std::fmt::Debug for FakeFcm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeFcm").field("addr", &self.addr).finish_non_exhaustive()
    }
}

struct FcmState {
    project: String,
    tokens: Arc<TokenRegistry>,
    script: Mutex<VecDeque<FcmAnswer>>,
    received: Mutex<Vec<ReceivedMessage>>,
    recording: AtomicBool,
    requests: AtomicUsize,
    sent: AtomicU64,
}

impl FakeFcm {
    /// Starts FCM for `project` on 127.0.0.1 and a free port, serving HTTPS with a certificate
    /// from `ca` (HTTP/2 and HTTP/1.1 by ALPN), accepting the tokens `oauth` issues.
    pub async fn start(ca: &TestCa, oauth: &FakeOauth, project: &str) -> Self {
        Self::start_with(ca, oauth.tokens(), project).await
    }

    /// Like [`start`](Self::start), with the tokens of a registry.
    pub async fn start_with(ca: &TestCa, tokens: Arc<TokenRegistry>, project: &str) -> Self {
        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .expect("bind the fake FCM");
        Self::serve_on(listener, Some(ca), tokens, project)
    }

    /// Serves FCM on `listener`: HTTPS from `ca`, or, without one, HTTP/2 by prior knowledge
    /// (h2c, for benchmarks that measure Herald rather than TLS).
    pub fn serve_on(
        listener: TcpListener,
        ca: Option<&TestCa>,
        tokens: Arc<TokenRegistry>,
        project: &str,
    ) -> Self {
        let addr = listener.local_addr().expect("local address");
        let state = Arc::new(FcmState {
            project: project.to_owned(),
            tokens,
            script: Mutex::default(),
            received: Mutex::default(),
            recording: AtomicBool::new(true),
            requests: AtomicUsize::new(0),
            sent: AtomicU64::new(0),
        });
        let handler_state = Arc::clone(&state);
        let handler: Handler = Arc::new(move |request, kill| {
            let state = Arc::clone(&handler_state);
            Box::pin(async move { fcm_handle(&state, request, kill).await })
        });
        let tls = ca.map(|ca| TlsAcceptor::from(ca.server_config(&[ALPN_H2, ALPN_HTTP1])));
        let tasks = match tls {
            Some(tls) => serve(listener, tls, handler),
            None => serve_h2c(listener, handler),
        };
        FakeFcm { addr, state, tasks }
    }

    /// `https://127.0.0.1:PORT` (or `http://` for h2c): an app's `endpoint`.
    pub fn base_url(&self) -> String {
        let scheme = if self.tasks.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Queues answers for the next messages that pass the checks; then it answers 200.
    pub fn script(&self, answers: impl IntoIterator<Item = FcmAnswer>) {
        lock(&self.state.script).extend(answers);
    }

    /// Every request, oldest first.
    pub fn received(&self) -> Vec<ReceivedMessage> {
        lock(&self.state.received).clone()
    }

    /// Stops (or resumes) recording requests; they are still checked and counted.
    pub fn set_recording(&self, on: bool) {
        self.state.recording.store(on, Ordering::SeqCst);
    }

    /// How many requests it received.
    pub fn request_count(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// How many messages it accepted (answered 200).
    pub fn sent_count(&self) -> u64 {
        self.state.sent.load(Ordering::SeqCst)
    }

    /// How many TCP connections it accepted.
    pub fn connections_accepted(&self) -> usize {
        self.tasks.connections.load(Ordering::SeqCst)
    }
}

impl crate::behaviour::FakeUpstream for FakeFcm {
    fn requests(&self) -> usize {
        self.request_count()
    }
}

async fn fcm_handle(
    state: &FcmState,
    request: Request<Incoming>,
    kill: Arc<Notify>,
) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let body =
        Limited::new(body, 256 * 1024).collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    state.requests.fetch_add(1, Ordering::SeqCst);
    let path = parts.uri.path();
    let project = path
        .strip_prefix("/v1/projects/")
        .and_then(|rest| rest.strip_suffix("/messages:send"))
        .unwrap_or("")
        .to_owned();
    let bearer = parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let mut record = ReceivedMessage {
        project: project.clone(),
        bearer: bearer.clone(),
        headers: parts.headers.clone(),
        body: body.clone(),
        message: None,
        rejection: None,
        status: None,
        version: parts.version,
        at: Instant::now(),
    };
    let answer =
        match fcm_check(state, &parts.method, &project, bearer.as_deref(), &body, &mut record) {
            Err((reason, answer)) => {
                record.rejection = Some(reason);
                answer
            }
            Ok(()) => lock(&state.script).pop_front().unwrap_or(FcmAnswer::Ok),
        };
    record.status = match &answer {
        FcmAnswer::Ok => Some(200),
        FcmAnswer::Status { status, .. } => Some(*status),
        FcmAnswer::Hang | FcmAnswer::Reset => None,
    };
    if state.recording.load(Ordering::SeqCst) {
        lock(&state.received).push(record);
    }
    match answer {
        FcmAnswer::Ok => {
            let n = state.sent.fetch_add(1, Ordering::SeqCst);
            let name = format!(
                "projects/{}/messages/0:{n}%{:016x}",
                state.project,
                n.wrapping_mul(0x9e37_79b9_7f4a_7c15)
            );
            respond(
                200,
                "application/json; charset=UTF-8",
                json!({ "name": name }).to_string(),
                None,
            )
        }
        FcmAnswer::Status { status, content_type, body, retry_after } => {
            respond(status, content_type, body, retry_after)
        }
        FcmAnswer::Hang => std::future::pending().await,
        FcmAnswer::Reset => {
            kill.notify_one();
            std::future::pending().await
        }
    }
}

type FcmRefusal = (String, FcmAnswer);

/// What Google checks, in its order; `Err` is why and the answer.
fn fcm_check(
    state: &FcmState,
    method: &Method,
    project: &str,
    bearer: Option<&str>,
    body: &[u8],
    record: &mut ReceivedMessage,
) -> Result<(), FcmRefusal> {
    let invalid = |reason: String, field: &str| {
        let answer = FcmAnswer::error(
            400,
            "INVALID_ARGUMENT",
            &reason,
            vec![bad_request_detail(field, &reason)],
        );
        (reason, answer)
    };
    if method != Method::POST || project.is_empty() {
        return Err(("not POST /v1/projects/<id>/messages:send".into(), FcmAnswer::html(404)));
    }
    let Some(bearer) = bearer else {
        return Err(("no bearer token".into(), FcmAnswer::unauthenticated()));
    };
    let issued =
        state.tokens.check(bearer).map_err(|why| (why.to_owned(), FcmAnswer::unauthenticated()))?;
    if !issued.scope.split(' ').any(|s| s == SCOPE) {
        return Err((
            "the token lacks the firebase.messaging scope".into(),
            FcmAnswer::error(
                403,
                "PERMISSION_DENIED",
                "Request had insufficient authentication scopes.",
                vec![],
            ),
        ));
    }
    if project != state.project {
        return Err((
            format!("project {project} is not {}", state.project),
            FcmAnswer::permission_denied(),
        ));
    }
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return Err(invalid("Invalid JSON payload received.".into(), "message"));
    };
    let Some(message) = request.get("message").and_then(Value::as_object) else {
        return Err(invalid("Invalid JSON payload received: no message object.".into(), "message"));
    };
    record.message = Some(Value::Object(message.clone()));
    if let Some(unknown) = request
        .as_object()
        .and_then(|r| r.keys().find(|k| !["message", "validate_only"].contains(&k.as_str())))
    {
        return Err(invalid(
            format!(
                "Invalid JSON payload received. Unknown name \"{unknown}\": Cannot find field."
            ),
            unknown,
        ));
    }
    if let Some(unknown) = message.keys().find(|k| !MESSAGE_FIELDS.contains(&k.as_str())) {
        return Err(invalid(
            format!("Invalid JSON payload received. Unknown name \"{unknown}\" at 'message': Cannot find field."),
            "message",
        ));
    }
    let targets =
        ["token", "topic", "condition"].iter().filter(|t| message.contains_key(**t)).count();
    if targets != 1 {
        return Err(invalid(
            format!("a message needs exactly one of token, topic, condition; got {targets}"),
            "message",
        ));
    }
    if let Some(token) = message.get("token") {
        match token.as_str() {
            Some(t) if !t.trim().is_empty() && !t.contains(char::is_whitespace) => {}
            _ => {
                return Err(("not a registration token".into(), FcmAnswer::invalid_token()));
            }
        }
    }
    for block in ["notification", "webpush", "apns", "fcm_options"] {
        if message.get(block).is_some_and(|b| !b.is_object()) {
            return Err(invalid(
                format!("Invalid value at 'message.{block}': not an object"),
                &format!("message.{block}"),
            ));
        }
    }
    if let Some(data) = message.get("data") {
        check_data(data, "message.data").map_err(|(reason, field)| invalid(reason, &field))?;
        let size: usize = data
            .as_object()
            .map(|d| d.iter().map(|(k, v)| k.len() + v.as_str().map_or(0, str::len)).sum())
            .unwrap_or(0);
        if size > MAX_DATA_BYTES {
            return Err(invalid(
                format!("Android message is too big: data of {size} bytes"),
                "message.data",
            ));
        }
    }
    if let Some(android) = message.get("android") {
        let Some(android) = android.as_object() else {
            return Err(invalid(
                "Invalid value at 'message.android': not an object".into(),
                "message.android",
            ));
        };
        if let Some(unknown) = android.keys().find(|k| !ANDROID_FIELDS.contains(&k.as_str())) {
            return Err(invalid(
                format!("Invalid JSON payload received. Unknown name \"{unknown}\" at 'message.android': Cannot find field."),
                "message.android",
            ));
        }
        if let Some(priority) = android.get("priority") {
            let ok = priority.as_str().is_some_and(|p| {
                p.eq_ignore_ascii_case("normal") || p.eq_ignore_ascii_case("high")
            });
            if !ok {
                return Err(invalid(
                    format!("Invalid value at 'message.android.priority' ({priority})"),
                    "message.android.priority",
                ));
            }
        }
        if let Some(data) = android.get("data") {
            check_data(data, "message.android.data")
                .map_err(|(reason, field)| invalid(reason, &field))?;
        }
    }
    Ok(())
}

/// A `data` map: an object of strings, no reserved key.
fn check_data(data: &Value, at: &str) -> Result<(), (String, String)> {
    let Some(map) = data.as_object() else {
        return Err((format!("Invalid value at '{at}': not a map"), at.to_owned()));
    };
    for (i, (key, value)) in map.iter().enumerate() {
        if !value.is_string() {
            // Google's words for Sygnal's #365.
            return Err((
                format!("Invalid value at '{at}[{i}].value' (TYPE_STRING), {value}"),
                format!("{at}[{i}].value"),
            ));
        }
        let lower = key.to_ascii_lowercase();
        if lower == "from"
            || lower == "message_type"
            || lower.starts_with("google")
            || lower.starts_with("gcm")
        {
            return Err((format!("Invalid data key: {key} is reserved"), format!("{at}[{i}].key")));
        }
    }
    Ok(())
}

fn respond(
    status: u16,
    content_type: &'static str,
    body: String,
    retry_after: Option<String>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Some(value) = retry_after.and_then(|v| HeaderValue::try_from(v).ok()) {
        response.headers_mut().insert(hyper::header::RETRY_AFTER, value);
    }
    response
}

type Handler = Arc<
    dyn Fn(
            Request<Incoming>,
            Arc<Notify>,
        ) -> Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>>
        + Send
        + Sync,
>;

/// The accept loop and connection tasks of a fake; aborted when dropped.
struct Tasks {
    handles: Arc<Mutex<Vec<AbortHandle>>>,
    connections: Arc<AtomicUsize>,
    tls: bool,
}

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in lock(&self.handles).drain(..) {
            task.abort();
        }
    }
}

fn serve(listener: TcpListener, tls: TlsAcceptor, handler: Handler) -> Tasks {
    spawn_accept(listener, Some(tls), handler)
}

fn serve_h2c(listener: TcpListener, handler: Handler) -> Tasks {
    spawn_accept(listener, None, handler)
}

fn spawn_accept(listener: TcpListener, tls: Option<TlsAcceptor>, handler: Handler) -> Tasks {
    let handles: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
    let connections: Arc<AtomicUsize> = Arc::default();
    let tasks = Tasks {
        handles: Arc::clone(&handles),
        connections: Arc::clone(&connections),
        tls: tls.is_some(),
    };
    let accept_handles = Arc::clone(&handles);
    let accept = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            connections.fetch_add(1, Ordering::SeqCst);
            let task = tokio::spawn(connection(stream, tls.clone(), Arc::clone(&handler)));
            let mut handles = lock(&accept_handles);
            handles.retain(|h| !h.is_finished());
            handles.push(task.abort_handle());
        }
    });
    lock(&handles).push(accept.abort_handle());
    tasks
}

async fn connection(stream: TcpStream, tls: Option<TlsAcceptor>, handler: Handler) {
    let _ = stream.set_nodelay(true);
    let kill = Arc::new(Notify::new());
    let service_kill = Arc::clone(&kill);
    let service = hyper::service::service_fn(move |request| {
        let response = handler(request, Arc::clone(&service_kill));
        async move { Ok::<_, Infallible>(response.await) }
    });
    crate::tls::serve_connection(stream, tls, crate::tls::Cleartext::H2, service, kill).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_decode() {
        let form = parse_form(b"grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=a.b.c&x=1+2%");
        assert_eq!(form["grant_type"], GRANT_TYPE);
        assert_eq!(form["assertion"], "a.b.c");
        assert_eq!(form["x"], "1 2%");
    }

    #[test]
    fn data_must_be_strings_and_not_reserved() {
        assert!(check_data(&json!({"a": "1"}), "message.data").is_ok());
        let (reason, field) = check_data(&json!({"a": "1", "b": 2}), "message.data").unwrap_err();
        assert_eq!(field, "message.data[1].value");
        assert!(reason.contains("TYPE_STRING"), "{reason}");
        assert!(check_data(&json!({"from": "x"}), "message.data").is_err());
        assert!(check_data(&json!({"google.x": "x"}), "message.data").is_err());
    }
}
