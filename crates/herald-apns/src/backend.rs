//! [`ApnsBackend`]: one notification for one iOS device → one APNs request → an outcome.
//!
//! The request goes through Herald's shared upstream client (`herald-upstream`) over HTTP/2, to
//! Apple's host or the configured `endpoint`; see `connections` for how connections are shared.
//! Headers: `apns-id` (the message's stable id: the same on every retry of one event to one
//! device), `apns-topic`, `apns-priority`, and when configured `apns-push-type`,
//! `apns-expiration` and `apns-collapse-id`; with token auth, `authorization: bearer <JWT>`.
//!
//! One attempt per call, with one exception that is not a retry: a request the server provably
//! did not process (its stream was refused by a graceful GOAWAY or `REFUSED_STREAM`, RFC 9113
//! §8.7) is sent again at once on a fresh connection, within the same timeout.
//!
//! Nothing APNs answers is logged as text; errors carry the status and reason code only.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use a2::{CollapseId, NotificationOptions};
use async_trait::async_trait;
use bytes::Bytes;
use herald_core::config::{SecretError, SecretSource};
use herald_core::redact::PushkeyHash;
use herald_core::{
    AppContext, Backend, BackendFactory, BuildError, CallContext, DeliveryError, Device,
    Notification, Outcome, Priority, Upstream,
};
use herald_upstream::UpstreamError;
use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use prometheus_client::metrics::gauge::Gauge;
use ring::digest::{digest, SHA256};

use crate::classify::{self, Context, Said};
use crate::config::{ApnsConfig, ApnsPriority, AuthMode, PushType};
use crate::connections::{Connections, LaneSettings};
use crate::jwt::{self, Clock, ProviderToken};
use crate::payload::{self, Shrink};
use crate::{cert, token};

const APNS_ID: HeaderName = HeaderName::from_static("apns-id");
const APNS_TOPIC: HeaderName = HeaderName::from_static("apns-topic");
const APNS_PRIORITY: HeaderName = HeaderName::from_static("apns-priority");
const APNS_PUSH_TYPE: HeaderName = HeaderName::from_static("apns-push-type");
const APNS_EXPIRATION: HeaderName = HeaderName::from_static("apns-expiration");
const APNS_COLLAPSE_ID: HeaderName = HeaderName::from_static("apns-collapse-id");

/// How often the certificate's expiry is checked (and warned about) while running.
const EXPIRY_CHECK_EVERY: Duration = Duration::from_secs(6 * 3600);

/// Delivers notifications to iOS devices through APNs, for one app.
pub struct ApnsBackend {
    app_id: String,
    /// `https://host[:port]`, no trailing slash.
    endpoint: String,
    topic: HeaderValue,
    auth: Auth,
    connections: Connections,
    push_type: Option<PushType>,
    priority_high: ApnsPriority,
    priority_low: ApnsPriority,
    convert_device_token_to_hex: bool,
    ttl: Option<Duration>,
    collapse_per_room: bool,
    send_badge_counts: bool,
    max_payload: usize,
    /// APNs has accepted a notification of this app since it was built: its topic and
    /// environment are right (see `classify`).
    accepted_once: AtomicBool,
    expiry_watch: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    clock: Clock,
}

enum Auth {
    Token(Box<ProviderToken>),
    Certificate { not_after: SystemTime },
}

impl std::fmt::Debug for ApnsBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApnsBackend")
            .field("app_id", &self.app_id)
            .field("endpoint", &self.endpoint)
            .field("connections", &self.connections.lanes())
            .finish_non_exhaustive()
    }
}

/// Reads a secret, naming the key on failure (never the value).
fn read_secret(app: &AppContext, key: &str, source: &SecretSource) -> Result<Vec<u8>, BuildError> {
    source.read(&app.config_dir).map_err(|e| match e {
        SecretError::File { path, source } => BuildError::File { key: key.into(), path, source },
        other => BuildError::Credentials {
            key: key.into(),
            message: other.to_string(),
            source: Some(Box::new(other)),
        },
    })
}

/// The upstream client's build error as the app's: it names the key.
fn upstream_build_error(error: herald_upstream::BuildError) -> BuildError {
    match error {
        herald_upstream::BuildError::Invalid { key: "client certificate", reason } => {
            BuildError::invalid("certificate_file", reason)
        }
        herald_upstream::BuildError::Invalid { key, reason } => {
            BuildError::invalid(format!("upstream.{key}"), reason)
        }
        other => BuildError::new(format!("apns: {other}")),
    }
}

#[async_trait]
impl BackendFactory for ApnsBackend {
    const KIND: &'static str = "apns";
    type Config = ApnsConfig;

    async fn build(app: &AppContext, config: ApnsConfig) -> Result<Arc<dyn Backend>, BuildError> {
        Ok(Arc::new(ApnsBackend::new(app, &config, jwt::system_clock())?))
    }
}

impl ApnsBackend {
    fn new(app: &AppContext, config: &ApnsConfig, clock: Clock) -> Result<Self, BuildError> {
        let mode = config.validate()?;
        let key = read_secret(app, "key_file", &config.key_file)?;
        let (auth, topic, identity) = match mode {
            AuthMode::Token { key_id, team_id } => {
                let token = ProviderToken::new(&key, &key_id, &team_id, Arc::clone(&clock))?;
                (Auth::Token(Box::new(token)), config.topic.clone().unwrap_or_default(), None)
            }
            AuthMode::Certificate { certificate } => {
                let chain = read_secret(app, "certificate_file", &certificate)?;
                let facts = cert::read(&chain)?;
                let topic = match (&config.topic, facts.uid) {
                    (Some(topic), _) => topic.clone(),
                    (None, Some(uid)) => uid,
                    (None, None) => {
                        return Err(BuildError::invalid(
                            "topic",
                            "is required: the certificate names no topic (subject UID)",
                        ))
                    }
                };
                let gauge = Gauge::<i64>::default();
                gauge.set(cert::unix_seconds(facts.not_after));
                app.metrics.register(
                    "apns_certificate_expiry_timestamp_seconds",
                    "When the app's APNs client certificate expires (unix time)",
                    gauge,
                );
                cert::log_expiry(&app.app_id, facts.not_after, clock());
                (Auth::Certificate { not_after: facts.not_after }, topic, Some((chain, key)))
            }
        };
        let topic = HeaderValue::from_str(topic.trim())
            .map_err(|_| BuildError::invalid("topic", "is not a valid header value"))?;
        let upstream = config.upstream.clone().resolve_paths(&app.config_dir);
        let connections = Connections::new(LaneSettings {
            upstream,
            identity,
            ping_interval: config.ping_interval,
            streams: config.max_concurrent_streams,
        })
        .map_err(upstream_build_error)?;
        let background = config.push_type == Some(PushType::Background);
        // Apple requires priority 5 (or lower) for background pushes.
        let cap = |p: ApnsPriority| {
            if background && p.value() > 5 {
                ApnsPriority::CONSIDERATE
            } else {
                p
            }
        };
        Ok(ApnsBackend {
            app_id: app.app_id.clone(),
            endpoint: config.endpoint_url().trim_end_matches('/').to_owned(),
            topic,
            auth,
            connections,
            push_type: config.push_type,
            priority_high: cap(config.priority.high),
            priority_low: cap(config.priority.low),
            convert_device_token_to_hex: config.convert_device_token_to_hex,
            ttl: config.ttl,
            collapse_per_room: config.collapse_per_room,
            send_badge_counts: config.send_badge_counts,
            max_payload: PushType::max_payload(config.push_type),
            accepted_once: AtomicBool::new(false),
            expiry_watch: std::sync::Mutex::new(None),
            clock,
        })
    }

    /// Builds the backend with a clock of the test's choosing (provider tokens' `iat` and age).
    #[doc(hidden)]
    pub fn with_clock(
        app: &AppContext,
        config: &ApnsConfig,
        clock: Arc<dyn Fn() -> SystemTime + Send + Sync>,
    ) -> Result<Arc<Self>, BuildError> {
        Ok(Arc::new(ApnsBackend::new(app, config, clock)?))
    }

    /// Provider tokens signed so far (0 with certificate auth).
    pub fn provider_tokens_signed(&self) -> u64 {
        match &self.auth {
            Auth::Token(token) => token.signed(),
            Auth::Certificate { .. } => 0,
        }
    }

    /// HTTP/2 connections opened so far (lanes; see the `connections` docs).
    pub fn connections(&self) -> usize {
        self.connections.lanes()
    }

    fn reject(&self, device: &Device, why: &str) -> Result<Outcome, DeliveryError> {
        tracing::warn!(
            backend = "apns",
            app = %self.app_id,
            pushkey = %PushkeyHash::of(&device.pushkey),
            reason = why,
            "rejecting APNs pushkey"
        );
        Ok(Outcome::token_dead(Upstream::no_answer("invalid_pushkey"), why))
    }

    fn now_ms(&self) -> u64 {
        (self.clock)().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
    }

    fn context(&self) -> Context {
        Context {
            setup_proven: self.accepted_once.load(Ordering::Relaxed),
            certificate_auth: matches!(self.auth, Auth::Certificate { .. }),
        }
    }

    /// The request's headers (without `authorization`).
    fn headers(&self, call: &CallContext, n: &Notification) -> HeaderMap {
        let apns_id = call.message_id().to_uuid();
        let priority = match n.prio {
            Priority::Low => self.priority_low,
            _ => self.priority_high,
        };
        let expiration = self.ttl.map(|ttl| {
            // `0` means "now or never" to APNs; otherwise an absolute time.
            if ttl.is_zero() {
                0
            } else {
                (self.now_ms() / 1000).saturating_add(ttl.as_secs())
            }
        });
        let collapse = match (&n.room_id, self.collapse_per_room) {
            (Some(room_id), true) => Some(collapse_id(room_id)),
            _ => None,
        };
        // a2's model of the headers; a2 cannot say `complication` or priority 1, which are set
        // from Herald's own types below.
        let options = NotificationOptions {
            apns_id: Some(&apns_id),
            apns_push_type: None,
            apns_expiration: expiration,
            apns_priority: priority.to_a2(),
            apns_topic: None,
            apns_collapse_id: collapse.as_deref().and_then(|c| CollapseId::new(c).ok()),
        };
        let mut headers = HeaderMap::with_capacity(8);
        if let Some(id) = options.apns_id.and_then(|id| HeaderValue::from_str(id).ok()) {
            headers.insert(APNS_ID, id);
        }
        headers.insert(APNS_TOPIC, self.topic.clone());
        let priority = match &options.apns_priority {
            Some(p) => HeaderValue::from_str(&p.to_string()).ok(),
            None => Some(HeaderValue::from(u16::from(priority.value()))),
        };
        if let Some(priority) = priority {
            headers.insert(APNS_PRIORITY, priority);
        }
        if let Some(push_type) = self.push_type {
            headers.insert(APNS_PUSH_TYPE, HeaderValue::from_static(push_type.as_str()));
        }
        if let Some(expiration) = options.apns_expiration {
            headers.insert(APNS_EXPIRATION, HeaderValue::from(expiration));
        }
        if let Some(collapse) =
            options.apns_collapse_id.and_then(|c| HeaderValue::from_str(c.value).ok())
        {
            headers.insert(APNS_COLLAPSE_ID, collapse);
        }
        headers
    }

    /// Sends once, and once more at once if the server provably did not process it.
    async fn send(
        &self,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
        call: &CallContext,
    ) -> Result<herald_upstream::UpstreamResponse, UpstreamError> {
        let stream = self.connections.stream();
        let timeout = call.timeout(self.connections.request_timeout());
        let started = tokio::time::Instant::now();
        let first = stream.client().post(uri.clone(), headers.clone(), body.clone(), timeout).await;
        drop(stream);
        match first {
            Err(e) if unprocessed(&e) => {
                let left = timeout.saturating_sub(started.elapsed());
                if left.is_zero() {
                    return Err(e);
                }
                tracing::debug!(
                    backend = "apns",
                    app = %self.app_id,
                    "APNs refused the stream unprocessed (GOAWAY or REFUSED_STREAM): sending it \
                     on a new connection"
                );
                let stream = self.connections.stream();
                stream.client().post(uri, headers, body, left).await
            }
            other => other,
        }
    }

    /// Maps a request that got no answer onto the outcome classes.
    fn no_answer(&self, error: UpstreamError) -> DeliveryError {
        match error {
            UpstreamError::Tls { .. }
                if matches!(self.auth, Auth::Certificate { .. }) && certificate_refused(&error) =>
            {
                DeliveryError::credentials_refused(format!(
                    "{error:#}: APNs refused the client certificate (`certificate_file`)"
                ))
                .with_upstream(Upstream::no_answer("certificate_refused"))
                .with_source(error)
            }
            error if unprocessed(&error) => DeliveryError::transient(format!("{error:#}"))
                .with_upstream(Upstream::no_answer("refused_stream"))
                .with_source(error),
            error => error.into_delivery_error(),
        }
    }

    /// Logs the certificate's expiry every few hours while the app runs (`build` logged it
    /// already, so the first check is one period from now).
    fn watch_expiry(&self) {
        let Auth::Certificate { not_after } = self.auth else { return };
        let (app, clock) = (self.app_id.clone(), Arc::clone(&self.clock));
        let task = tokio::spawn(async move {
            let first = tokio::time::Instant::now() + EXPIRY_CHECK_EVERY;
            let mut every = tokio::time::interval_at(first, EXPIRY_CHECK_EVERY);
            loop {
                every.tick().await;
                cert::log_expiry(&app, not_after, clock());
            }
        });
        if let Some(old) = herald_core::sync::lock(&self.expiry_watch).replace(task) {
            old.abort();
        }
    }
}

/// `apns-collapse-id` for a room: the room id when it fits APNs' 64 bytes, else its SHA-256.
fn collapse_id(room_id: &str) -> String {
    if room_id.len() <= 64 && HeaderValue::from_str(room_id).is_ok() {
        return room_id.to_owned();
    }
    digest(&SHA256, room_id.as_bytes()).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The `h2` errors in `error`'s causes.
fn h2_errors<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a h2::Error> {
    std::iter::successors(Some(error), |e| e.source()).filter_map(|e| e.downcast_ref::<h2::Error>())
}

/// Whether the server said it did not process the request: its stream was above a graceful
/// GOAWAY's last stream id, or reset with `REFUSED_STREAM`.
fn unprocessed(error: &UpstreamError) -> bool {
    h2_errors(error).any(|e| {
        e.is_remote()
            && ((e.is_go_away() && e.reason() == Some(h2::Reason::NO_ERROR))
                || (e.is_reset() && e.reason() == Some(h2::Reason::REFUSED_STREAM)))
    })
}

/// Whether a TLS failure is the server refusing our client certificate (its alert), as opposed
/// to our refusing its certificate.
fn certificate_refused(error: &UpstreamError) -> bool {
    use rustls::AlertDescription as A;
    const REFUSALS: [&str; 9] = [
        "BadCertificate",
        "UnknownCA",
        "CertificateExpired",
        "CertificateRevoked",
        "CertificateUnknown",
        "UnsupportedCertificate",
        "CertificateRequired",
        "AccessDenied",
        // TLS 1.3: the certificate's signature (or the key's proof) did not verify.
        "DecryptError",
    ];
    if let Some(rustls::Error::AlertReceived(alert)) = error.tls_error() {
        return matches!(
            alert,
            A::BadCertificate
                | A::CertificateExpired
                | A::CertificateRevoked
                | A::CertificateUnknown
                | A::UnsupportedCertificate
                | A::CertificateRequired
                | A::AccessDenied
                | A::UnknownCA
                | A::DecryptError
        );
    }
    // TLS 1.3 servers refuse a client certificate after the handshake; over HTTP/2 only the
    // alert's text reaches the client.
    let text = format!("{error:#}");
    text.contains("received fatal alert") && REFUSALS.iter().any(|r| text.contains(r))
}

#[async_trait]
impl Backend for ApnsBackend {
    async fn deliver(
        &self,
        call: &CallContext,
        notification: &Notification,
        device: &Device,
    ) -> Result<Outcome, DeliveryError> {
        let token = match token::device_token(&device.pushkey, self.convert_device_token_to_hex) {
            Ok(token) => token,
            Err(why) => return self.reject(device, why),
        };
        let mut payload = match payload::build(notification, device, self.send_badge_counts) {
            Ok(Some(payload)) => payload,
            Ok(None) => return Ok(Outcome::Skipped("nothing to send")),
            Err(why) => return self.reject(device, why),
        };
        let (body, shrink) = payload.fit(self.max_payload);
        if shrink != Shrink::None {
            tracing::debug!(
                backend = "apns",
                app = %self.app_id,
                pushkey = %PushkeyHash::of(&device.pushkey),
                shrink = ?shrink,
                bytes = body.len(),
                "payload shortened to fit {} bytes",
                self.max_payload
            );
        }
        let mut headers = self.headers(call, notification);
        match &self.auth {
            Auth::Token(token) => match token.authorization() {
                Ok(authorization) => {
                    headers.insert(http::header::AUTHORIZATION, authorization);
                }
                Err(e) => {
                    return Err(DeliveryError::credentials_refused(e).with_reason("signing"));
                }
            },
            Auth::Certificate { not_after } => {
                if cert::expiry(*not_after, (self.clock)()) == cert::Expiry::Expired {
                    return Err(DeliveryError::credentials_refused(
                        "the APNs client certificate has expired: renew `certificate_file`",
                    )
                    .with_reason("certificate_expired"));
                }
            }
        }
        let uri: Uri = match format!("{}/3/device/{token}", self.endpoint).parse() {
            Ok(uri) => uri,
            // The endpoint was checked and the token is hex: cannot happen.
            Err(_) => return self.reject(device, "the device token makes no valid URL"),
        };
        let answer = match self.send(uri, headers, Bytes::from(body), call).await {
            Ok(answer) => answer,
            Err(error) => return Err(self.no_answer(error)),
        };
        let status = answer.status.as_u16();
        let result = classify::classify(status, &answer.headers, &answer.body, self.context());
        match &result {
            Ok(Outcome::Delivered(_)) => {
                self.accepted_once.store(true, Ordering::Relaxed);
            }
            Err(_) if status == 403 => {
                if let (Auth::Token(token), Said::Known(a2::ErrorReason::ExpiredProviderToken)) =
                    (&self.auth, Said::parse(&answer.body))
                {
                    token.expired();
                }
            }
            _ => {}
        }
        result
    }

    async fn warm_up(&self) -> Result<(), DeliveryError> {
        self.watch_expiry();
        if let Auth::Token(token) = &self.auth {
            // Signs the first token now rather than on the first notification.
            token
                .authorization()
                .map_err(|e| DeliveryError::credentials_refused(e).with_reason("signing"))?;
        }
        Ok(())
    }

    async fn close(&self) {
        if let Some(task) = herald_core::sync::lock(&self.expiry_watch).take() {
            task.abort();
        }
        self.connections.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collapse_ids_fit_apns_limit() {
        assert_eq!(collapse_id("!room:example.org"), "!room:example.org");
        let long = format!("!{}:example.org", "x".repeat(80));
        let id = collapse_id(&long);
        assert_eq!(id.len(), 64);
        assert!(CollapseId::new(&id).is_ok());
        assert_eq!(id, collapse_id(&long), "stable");
        assert_ne!(collapse_id("!a\u{7}:x").as_str(), "!a\u{7}:x");
    }
}
