//! [`WebPushBackend`]: one notification for one browser → one push-service request → an outcome.
//!
//! The backend owns one pooled HTTP client (hyper, rustls, the SSRF-guarded connector) and the
//! VAPID JWT cache; it makes exactly one attempt per call and never sleeps, because retries and
//! deadlines belong to the server's delivery layer.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use herald_core::redact::PushkeyHash;
use herald_core::{
    parse_retry_after, AppContext, Backend, BackendFactory, BuildError, DeliveryError, Device,
    Notification, Outcome, Priority,
};
use http::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderName, HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use openssl::ec::EcGroup;
use openssl::nid::Nid;

use crate::config::WebPushConfig;
use crate::guard::{EndpointPolicy, GuardedConnector, Refused};
use crate::payload::{self, Shrink};
use crate::subscription::Subscription;
use crate::vapid::{self, Vapid};

const TTL: HeaderName = HeaderName::from_static("ttl");
const URGENCY: HeaderName = HeaderName::from_static("urgency");
const TOPIC: HeaderName = HeaderName::from_static("topic");
/// Push services answer with a few bytes at most; more is read only to keep the connection.
const MAX_ANSWER_BYTES: usize = 16 * 1024;
/// Idle pooled connections are closed after this; push services close theirs after about a minute.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(50);

type HttpClient = Client<HttpsConnector<GuardedConnector>, Full<Bytes>>;

/// Delivers notifications to browsers through their push services (RFC 8030), for one app.
pub struct WebPushBackend {
    app_id: String,
    client: HttpClient,
    policy: Arc<EndpointPolicy>,
    vapid: Vapid,
    p256: EcGroup,
    ttl: HeaderValue,
    high_urgency: HeaderValue,
    request_timeout: Duration,
    max_body: usize,
}

impl std::fmt::Debug for WebPushBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebPushBackend")
            .field("app_id", &self.app_id)
            .field("vapid_public_key", &self.vapid.public_key())
            .finish_non_exhaustive()
    }
}

impl BackendFactory for WebPushBackend {
    const KIND: &'static str = "webpush";
    type Config = WebPushConfig;

    fn build(app: &AppContext, config: WebPushConfig) -> Result<Arc<dyn Backend>, BuildError> {
        let backend = WebPushBackend::new(app, config)?;
        tracing::info!(
            backend = "webpush",
            app = %app.app_id,
            vapid_public_key = %backend.vapid_public_key(),
            "webpush app ready; web clients subscribe with this applicationServerKey"
        );
        Ok(Arc::new(backend))
    }
}

impl WebPushBackend {
    /// Builds the backend: loads (or, when configured, creates) the VAPID key and sets up the
    /// connection pool. Does not log the public key; [`BackendFactory::build`] does.
    pub fn new(app: &AppContext, config: WebPushConfig) -> Result<Self, BuildError> {
        config.validate()?;
        let key_path = app.resolve_path(&config.vapid_private_key);
        if config.create_vapid_key_if_missing && !key_path.exists() {
            let public_key = vapid::generate_vapid_key(&key_path)?;
            tracing::info!(
                app = %app.app_id,
                path = %key_path.display(),
                vapid_public_key = %public_key,
                "created a new VAPID private key"
            );
        }
        vapid::warn_if_readable_by_others(&key_path);
        let vapid = Vapid::load(&key_path, config.vapid_subject)?;

        let policy = Arc::new(EndpointPolicy::new(&config.allowed_endpoints)?);
        let connector = GuardedConnector::new(Arc::clone(&policy), config.connect_timeout);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
            .map_err(|e| BuildError::new(format!("webpush: TLS setup failed: {e}")))?
            // Plain http only ever reaches allow-listed endpoints: the policy checks first.
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(connector);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(config.max_connections_per_host)
            .build(https);

        let p256 = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)
            .map_err(|e| BuildError::new(format!("webpush: P-256 unavailable: {e}")))?;
        Ok(WebPushBackend {
            app_id: app.app_id.clone(),
            client,
            policy,
            vapid,
            p256,
            ttl: HeaderValue::from(config.ttl.as_secs()),
            high_urgency: HeaderValue::from_static(config.urgency.as_str()),
            request_timeout: config.request_timeout,
            max_body: config.max_payload_bytes,
        })
    }

    /// The VAPID public key, base64url without padding: the `applicationServerKey` web clients
    /// pass to `pushManager.subscribe`.
    pub fn vapid_public_key(&self) -> &str {
        self.vapid.public_key()
    }

    fn reject(&self, device: &Device, reason: String) -> Result<Outcome, DeliveryError> {
        tracing::warn!(
            backend = "webpush",
            app = %self.app_id,
            pushkey = %PushkeyHash::of(&device.pushkey),
            reason = %reason,
            "rejecting webpush subscription"
        );
        Ok(Outcome::TokenDead(reason))
    }

    async fn send(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<Answer, hyper_util::client::legacy::Error> {
        let response = self.client.request(request).await?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        // Reading the (tiny) answer to its end returns the connection to the pool.
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Ok(Answer { status, retry_after, body })
    }
}

/// What a push service said.
struct Answer {
    status: StatusCode,
    retry_after: Option<Duration>,
    body: Bytes,
}

impl Answer {
    /// Maps the answer onto the outcome classes (domain.md §4).
    fn classify(&self, origin: &str) -> Result<Outcome, DeliveryError> {
        let status = self.status;
        let said = || {
            let text = String::from_utf8_lossy(&self.body);
            let text: String = text.chars().filter(|c| !c.is_control()).take(200).collect();
            if text.trim().is_empty() {
                format!("{origin} answered {status}")
            } else {
                format!("{origin} answered {status}: {}", text.trim())
            }
        };
        match status.as_u16() {
            200..=299 => Ok(Outcome::Delivered),
            // The subscription expired or was unsubscribed. The body is left out: nothing in it
            // would change that, and some services echo the subscription token.
            404 | 410 => Ok(Outcome::TokenDead(format!("{origin} answered {status}"))),
            429 | 500..=599 => {
                Err(DeliveryError::transient(said()).with_retry_after(self.retry_after))
            }
            // Bad or mismatched VAPID credentials: the operator's key, not the device.
            401 | 403 => Err(DeliveryError::credentials_refused(said())),
            300..=399 => {
                tracing::warn!(
                    backend = "webpush",
                    origin,
                    %status,
                    "push service answered with a redirect; redirects are not followed"
                );
                Err(DeliveryError::message_refused(format!(
                    "{} (redirects are not followed)",
                    said()
                )))
            }
            // 400 malformed, 413 too large (cannot happen: bodies are shrunk first), others.
            _ => Err(DeliveryError::message_refused(said())),
        }
    }
}

/// Whether the HTTP client failed because the guard refused every address.
fn refusal(error: &hyper_util::client::legacy::Error) -> Option<&Refused> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(e) = source {
        if let Some(refused) = e.downcast_ref::<Refused>() {
            return Some(refused);
        }
        source = e.source();
    }
    None
}

/// The error and its causes on one line (hyper's top-level messages alone say little).
fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

#[async_trait]
impl Backend for WebPushBackend {
    async fn deliver(
        &self,
        notification: &Notification,
        device: &Device,
    ) -> Result<Outcome, DeliveryError> {
        let sub = match Subscription::read(device, &self.p256) {
            Ok(sub) => sub,
            Err(reason) => return self.reject(device, reason),
        };
        let endpoint = match self.policy.check_endpoint(sub.endpoint) {
            Ok(endpoint) => endpoint,
            Err(Refused(reason)) => return self.reject(device, reason),
        };
        if sub.events_only && notification.is_badge_only() {
            return Ok(Outcome::Skipped("badge-only update to an events_only subscription"));
        }

        let mut json = payload::build(notification, sub.default_payload);
        let (body, shrink) = payload::encrypt_to_fit(&mut json, &sub, self.max_body)
            .map_err(DeliveryError::message_refused)?;
        if shrink != Shrink::None {
            tracing::debug!(
                backend = "webpush",
                app = %self.app_id,
                pushkey = %PushkeyHash::of(&device.pushkey),
                shrink = ?shrink,
                "payload shortened to fit {} bytes",
                self.max_body
            );
        }
        let authorization = self
            .vapid
            .authorization(&endpoint.origin)
            .map_err(DeliveryError::credentials_refused)?;

        let urgency = match notification.prio {
            Priority::Low => HeaderValue::from_static("low"),
            Priority::High => self.high_urgency.clone(),
        };
        let mut request = Request::post(endpoint.uri)
            .header(TTL, self.ttl.clone())
            .header(URGENCY, urgency)
            .header(CONTENT_ENCODING, HeaderValue::from_static("aes128gcm"))
            .header(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"))
            .header(AUTHORIZATION, authorization);
        if sub.only_last_per_room {
            if let Some(room_id) = &notification.room_id {
                request = request.header(TOPIC, payload::topic(room_id));
            }
        }
        let request = request.body(Full::new(Bytes::from(body))).map_err(|e| {
            DeliveryError::message_refused(format!("cannot build the request: {e}"))
        })?;

        let origin = endpoint.origin;
        match tokio::time::timeout(self.request_timeout, self.send(request)).await {
            Ok(Ok(answer)) => answer.classify(&origin),
            Ok(Err(error)) => match refusal(&error) {
                Some(Refused(reason)) => self.reject(device, reason.clone()),
                None => Err(DeliveryError::transient(format!(
                    "request to {origin} failed: {}",
                    describe(&error)
                ))),
            },
            Err(_) => Err(DeliveryError::transient(format!(
                "no answer from {origin} within {:?}",
                self.request_timeout
            ))),
        }
    }
}
