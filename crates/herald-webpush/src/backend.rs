//! [`WebPushBackend`]: one notification for one browser → one push-service request → an outcome.
//!
//! The backend owns one upstream client (`herald-upstream`: pooled, rustls, the per-origin cap,
//! with the SSRF guard as its connect policy) and the per-origin VAPID JWTs; it makes exactly one
//! attempt per call and never sleeps, because retries and deadlines belong to the server's
//! delivery layer.
//!
//! Nothing a push service answers is logged or put into an error as text: answer bodies echo
//! endpoint paths and tokens. Errors carry the origin, the status and a reason parsed from the
//! body (autopush's `errno`), never the path or the body.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use herald_core::config::SecretSource;
use herald_core::redact::PushkeyHash;
use herald_core::{
    parse_retry_after, AppContext, Backend, BackendFactory, BuildError, CallContext, DeliveryError,
    Device, Notification, Outcome, Priority, Upstream,
};
use herald_upstream::{UpstreamClient, UpstreamError, UpstreamResponse};
use http::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderName, HeaderValue};
use openssl::ec::EcGroup;
use openssl::nid::Nid;

use crate::config::WebPushConfig;
use crate::guard::{EndpointPolicy, Refused};
use crate::origins::{Jwt, Origins};
use crate::payload::{self, Shrink};
use crate::subscription::Subscription;
use crate::vapid::{self, Vapid};

const TTL: HeaderName = HeaderName::from_static("ttl");
const URGENCY: HeaderName = HeaderName::from_static("urgency");
const TOPIC: HeaderName = HeaderName::from_static("topic");
/// Push services answer with a few bytes at most; more is not kept.
const MAX_ANSWER_BYTES: usize = 16 * 1024;
/// A 401/403 from an origin that accepted the same JWT this recently is the subscription's fault
/// (made with another applicationServerKey), not ours.
const RECENT_SUCCESS: Duration = Duration::from_secs(10 * 60);

/// Delivers notifications to browsers through their push services (RFC 8030), for one app.
pub struct WebPushBackend {
    app_id: String,
    client: UpstreamClient,
    policy: Arc<EndpointPolicy>,
    origins: Origins,
    vapid: Vapid,
    /// `herald check-config` with a key that `serve` would create: the key is a throwaway.
    key_pending: bool,
    p256: EcGroup,
    ttl: HeaderValue,
    high_urgency: HeaderValue,
    badge_urgency: HeaderValue,
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

#[async_trait]
impl BackendFactory for WebPushBackend {
    const KIND: &'static str = "webpush";
    type Config = WebPushConfig;

    async fn build(
        app: &AppContext,
        config: WebPushConfig,
    ) -> Result<Arc<dyn Backend>, BuildError> {
        let backend = WebPushBackend::new(app, config)?;
        if backend.key_pending {
            tracing::info!(
                backend = "webpush",
                app = %app.app_id,
                "webpush app checked; its VAPID key will be created when `herald serve` starts"
            );
        } else {
            tracing::info!(
                backend = "webpush",
                app = %app.app_id,
                vapid_public_key = %backend.vapid_public_key(),
                "webpush app ready; web clients subscribe with this applicationServerKey"
            );
        }
        Ok(Arc::new(backend))
    }
}

impl WebPushBackend {
    /// Builds the backend: loads (or, when configured, creates) the VAPID key and sets up the
    /// connection pool. Does not log the public key; [`BackendFactory::build`] does.
    ///
    /// With [`AppContext::check_only`] nothing is created: a missing key that
    /// `create_vapid_key_if_missing` would create is only checked to be creatable.
    pub fn new(app: &AppContext, config: WebPushConfig) -> Result<Self, BuildError> {
        config.validate()?;
        let upstream = config.upstream(&app.config_dir);
        let (vapid, key_pending) = load_vapid(
            app,
            &config.vapid_private_key,
            config.create_vapid_key_if_missing,
            config.vapid_subject,
        )?;

        let policy = Arc::new(EndpointPolicy::new(&config.allowed_endpoints)?);
        // Plain http only ever reaches allow-listed endpoints: the pre-check refuses the rest.
        let client = UpstreamClient::builder(&upstream)
            .connect_policy(Arc::clone(&policy) as _)
            .max_answer_bytes(MAX_ANSWER_BYTES)
            .build()
            .map_err(upstream_build_error)?;

        let p256 = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)
            .map_err(|e| BuildError::new(format!("webpush: P-256 unavailable: {e}")))?;
        Ok(WebPushBackend {
            app_id: app.app_id.clone(),
            client,
            policy,
            origins: Origins::new(),
            vapid,
            key_pending,
            p256,
            ttl: HeaderValue::from(config.ttl.as_secs()),
            high_urgency: HeaderValue::from_static(config.urgency.as_str()),
            badge_urgency: HeaderValue::from_static(config.badge_urgency.as_str()),
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
        Ok(Outcome::token_dead(Upstream::no_answer("invalid_subscription"), reason))
    }
}

/// The upstream client's build error as the app's: it names the key (`ca_file`, `proxy`,
/// `max_connections_per_host` …), which is WebPush's key of the same name, or the environment
/// variable.
fn upstream_build_error(error: herald_upstream::BuildError) -> BuildError {
    match error {
        herald_upstream::BuildError::Invalid { key, reason } => BuildError::invalid(key, reason),
        other => BuildError::new(format!("webpush: {other}")),
    }
}

/// Loads the VAPID key, creating it first when configured (not under `check-config`).
fn load_vapid(
    app: &AppContext,
    source: &SecretSource,
    create_if_missing: bool,
    subject: String,
) -> Result<(Vapid, bool), BuildError> {
    // Resolved once against the configuration's directory; absolute from here on.
    let Some(key_path) = source.file_path(&app.config_dir) else {
        return Ok((Vapid::load(source, &app.config_dir, subject)?, false));
    };
    if create_if_missing && !key_path.exists() {
        if app.check_only {
            check_creatable(&key_path)?;
            // A throwaway key in memory, so that the rest of the app is checked too.
            let pem = vapid::new_private_key_pem()
                .map_err(|e| BuildError::new(format!("webpush: cannot generate a key: {e}")))?;
            return Ok((Vapid::from_pem(&pem, "generated", subject)?, true));
        }
        let public_key = vapid::generate_vapid_key(&key_path)?;
        tracing::info!(
            app = %app.app_id,
            path = %key_path.display(),
            vapid_public_key = %public_key,
            "created a new VAPID private key"
        );
    }
    vapid::warn_if_readable_by_others(&key_path);
    let vapid = Vapid::load(&SecretSource::File(key_path), &app.config_dir, subject)?;
    Ok((vapid, false))
}

/// Checks, without writing anything, that `generate_vapid_key` could create `path`: its nearest
/// existing ancestor is a directory this process may write to.
fn check_creatable(path: &Path) -> Result<(), BuildError> {
    let fail = |why: String| {
        BuildError::new(format!(
            "webpush: `vapid_private_key` {} does not exist and cannot be created \
             (`create_vapid_key_if_missing`): {why}",
            path.display()
        ))
    };
    let mut dir = path.parent();
    while let Some(d) = dir {
        let d = if d.as_os_str().is_empty() { Path::new(".") } else { d };
        match std::fs::metadata(d) {
            Ok(meta) if meta.is_dir() => return writable(d).map_err(fail),
            Ok(_) => return Err(fail(format!("{} is not a directory", d.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => dir = d.parent(),
            Err(e) => return Err(fail(format!("{}: {e}", d.display()))),
        }
    }
    Err(fail("no existing parent directory".into()))
}

#[cfg(unix)]
fn writable(dir: &Path) -> Result<(), String> {
    use rustix::fs::{access, Access};
    access(dir, Access::WRITE_OK | Access::EXEC_OK)
        .map_err(|e| format!("directory {} is not writable: {e}", dir.display()))
}

#[cfg(not(unix))]
fn writable(dir: &Path) -> Result<(), String> {
    match std::fs::metadata(dir) {
        Ok(meta) if !meta.permissions().readonly() => Ok(()),
        _ => Err(format!("directory {} is not writable", dir.display())),
    }
}

/// What an answer body says, parsed: never the text itself.
#[derive(Debug, Default, PartialEq, Eq)]
struct Said {
    /// Mozilla autopush's documented error number.
    errno: Option<u16>,
    /// The push service says the subscription was made with another VAPID key.
    key_mismatch: bool,
}

/// FCM's words for a subscription made with another applicationServerKey (domain.md §4).
const FCM_MISMATCH: &str = "do not correspond to the credentials used to create the subscription";
/// Autopush's `errno` for a VAPID public key mismatch.
const AUTOPUSH_KEY_MISMATCH: u16 = 109;

impl Said {
    fn parse(body: &[u8]) -> Self {
        #[derive(serde::Deserialize)]
        struct AutopushError {
            errno: Option<u16>,
        }
        let errno = match body.first() {
            Some(b'{') => serde_json::from_slice::<AutopushError>(body).ok().and_then(|e| e.errno),
            _ => None,
        };
        let text = String::from_utf8_lossy(&body[..body.len().min(1024)]).to_ascii_lowercase();
        let key_mismatch = errno == Some(AUTOPUSH_KEY_MISMATCH) || text.contains(FCM_MISMATCH);
        Said { errno, key_mismatch }
    }

    /// `" (errno 109)"` or nothing: safe to log.
    fn suffix(&self) -> String {
        self.errno.map(|n| format!(" (errno {n})")).unwrap_or_default()
    }
}

/// Maps a push service's answer onto the outcome classes (domain.md §4).
fn classify(answer: &UpstreamResponse, origin: &str, jwt: &Jwt) -> Result<Outcome, DeliveryError> {
    let status = answer.status;
    if status.is_success() {
        jwt.accepted();
        return Ok(Outcome::Delivered(Upstream::new(status.as_u16(), "ok")));
    }
    let said = Said::parse(&answer.body);
    let retry_after = || {
        answer
            .headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()))
    };
    let text = format!("{origin} answered {status}{}", said.suffix());
    let code = status.as_u16();
    let upstream = |reason| Upstream::new(code, reason);
    match status.as_u16() {
        // The subscription expired or was unsubscribed.
        404 => Ok(Outcome::token_dead(upstream("not_found"), text)),
        410 => Ok(Outcome::token_dead(upstream("gone"), text)),
        429 => Err(DeliveryError::transient(text)
            .with_upstream(upstream("rate_limited"))
            .with_retry_after(retry_after())),
        500..=599 => Err(DeliveryError::transient(text)
            .with_upstream(upstream("server_error"))
            .with_retry_after(retry_after())),
        401 | 403 if said.key_mismatch || jwt.accepted_within(RECENT_SUCCESS) => {
            // The origin takes our JWT for other subscriptions (or says so): this one was
            // made with another applicationServerKey. Retrying cannot help, and the pusher
            // may still work once the browser subscribes again, so it is not rejected.
            Err(DeliveryError::message_refused(format!(
                "{text}: the subscription was made with another VAPID key"
            ))
            .with_upstream(upstream("vapid_mismatch")))
        }
        // The origin refuses our JWT for everyone: the operator's key or clock.
        401 | 403 => {
            Err(DeliveryError::credentials_refused(format!("{text}: VAPID credentials refused"))
                .with_upstream(upstream("vapid_refused")))
        }
        300..=399 => {
            Err(DeliveryError::message_refused(format!("{text} (redirects are not followed)"))
                .with_upstream(upstream("redirect")))
        }
        // 400 malformed, 413 too large (cannot happen: bodies are shrunk first), others.
        413 => Err(DeliveryError::message_refused(text).with_upstream(upstream("too_large"))),
        _ => Err(DeliveryError::message_refused(text).with_upstream(upstream("refused"))),
    }
}

/// Maps a request that got no answer onto the outcome classes (`deliver` logs the guard's
/// refusal first). The client's errors name the origin only, never the path.
fn no_answer(error: UpstreamError) -> DeliveryError {
    match error {
        UpstreamError::Refused { .. } => DeliveryError::message_refused(format!("{error}"))
            .with_upstream(Upstream::no_answer("endpoint_refused")),
        // `InvalidRequest` cannot happen (the pre-check); were it not, retrying could not help.
        error => error.into_delivery_error(),
    }
}

#[async_trait]
impl Backend for WebPushBackend {
    async fn deliver(
        &self,
        call: &CallContext,
        notification: &Notification,
        device: &Device,
    ) -> Result<Outcome, DeliveryError> {
        let mut sub = match Subscription::read(device, &self.p256) {
            Ok(sub) => sub,
            Err(reason) => return self.reject(device, reason),
        };
        let endpoint = match self.policy.check_endpoint(&sub.endpoint) {
            Ok(endpoint) => endpoint,
            Err(Refused(reason)) => return self.reject(device, reason),
        };
        let badge_only = notification.is_badge_only();
        if sub.events_only && badge_only {
            return Ok(Outcome::Skipped("badge-only update to an events_only subscription"));
        }

        let mut json = payload::build(notification, sub.default_payload.take());
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

        // A count that changed because messages were read must not wake a device.
        let urgency = match (badge_only, notification.prio) {
            (true, _) => self.badge_urgency.clone(),
            (false, Priority::Low) => HeaderValue::from_static("low"),
            (false, Priority::High) => self.high_urgency.clone(),
        };
        let topic = match (sub.only_last_per_room, &notification.room_id) {
            (true, Some(room_id)) => Some(payload::topic(room_id)),
            _ => None,
        };
        let origin = endpoint.origin;
        let state = self.origins.get(&origin);
        let jwt = match state.jwt(&self.vapid, &origin) {
            Ok(jwt) => jwt,
            Err(e) => {
                return Err(DeliveryError::credentials_refused(e).with_reason("vapid_signing"))
            }
        };
        let mut headers = HeaderMap::with_capacity(6);
        headers.insert(TTL, self.ttl.clone());
        headers.insert(URGENCY, urgency);
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static("aes128gcm"));
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        headers.insert(AUTHORIZATION, jwt.header.clone());
        if let Some(topic) = topic {
            headers.insert(TOPIC, topic);
        }

        // Waiting for one of the origin's slots counts against the request timeout.
        let timeout = call.timeout(self.client.request_timeout());
        match self.client.post(endpoint.uri, headers, body.into(), timeout).await {
            Ok(answer) => {
                let result = classify(&answer, &origin, &jwt);
                if let Err(e) = &result {
                    if e.reason() == Some("vapid_mismatch") {
                        tracing::warn!(
                            backend = "webpush",
                            app = %self.app_id,
                            origin = %origin,
                            pushkey = %PushkeyHash::of(&device.pushkey),
                            status = answer.status.as_u16(),
                            "push service refused our VAPID key for this subscription only; \
                             the browser must subscribe again with this app's key"
                        );
                    }
                }
                result
            }
            Err(UpstreamError::Refused { reason, .. }) => {
                // What DNS said now, not what the subscription says: a split-horizon resolver
                // or a brief hijack must not reject (and so delete) every web pusher. The
                // message is dropped, not retried, and an operator is told.
                tracing::error!(
                    backend = "webpush",
                    app = %self.app_id,
                    origin = %origin,
                    reason = %reason,
                    "push service name resolves only to addresses the SSRF guard refuses; \
                     message dropped, subscription kept"
                );
                Err(DeliveryError::message_refused(format!(
                    "{origin} refused by the SSRF guard: {reason}"
                ))
                .with_upstream(Upstream::no_answer("endpoint_refused")))
            }
            Err(error) => Err(no_answer(error)),
        }
    }
}
