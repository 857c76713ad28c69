//! The OAuth2 access token FCM requests carry: fetched with the service account's signed
//! assertion from its `token_uri`, through the shared upstream client, and cached.
//!
//! - A token is used until `refresh_at`, a little before it expires (a quarter of its life, at
//!   most five minutes before). After that, one request refreshes it while the others go on with
//!   the old token, which is still valid, so nobody waits at the refresh point.
//! - One fetch at a time: requests that find no usable token wait for the fetch in progress and
//!   take its result (its token, or its error) instead of fetching again. A hundred concurrent
//!   sends after a start, an expiry or a 401 cause one fetch, and an outage of the token endpoint
//!   is not hammered by every waiting request.
//! - FCM's 401 means the token was revoked or expired early: [`TokenSource::invalidate`] drops it
//!   (only if it is still the cached one, so a late 401 cannot drop its successor).
//! - A token endpoint that is down, slow or answers garbage is a transient failure; one that
//!   refuses the assertion (`invalid_grant`: the key was deleted or the clock is wrong) refuses
//!   Herald's credentials. Neither ever rejects a pushkey.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use herald_core::sync::lock;
use herald_core::{parse_retry_after, DeliveryError, Upstream};
use herald_upstream::{UpstreamClient, UpstreamError};
use http::header::{ACCEPT, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde::Deserialize;

use crate::account::ServiceAccount;

/// A token's life is assumed to be this when the endpoint does not say (Google's is an hour).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);
/// At most this long before its expiry a token is refreshed.
const MAX_REFRESH_MARGIN: Duration = Duration::from_secs(300);
/// The longest life Herald believes a token has.
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// The grant type of RFC 7523, form-encoded.
const GRANT: &str = "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=";

/// A cached access token.
pub(crate) struct AccessToken {
    /// `Bearer <token>`, marked sensitive.
    pub(crate) header: HeaderValue,
    /// Which fetch produced it (1, 2, …).
    pub(crate) generation: u64,
    refresh_at: Instant,
    expires_at: Instant,
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken").field("generation", &self.generation).finish_non_exhaustive()
    }
}

/// Why no token could be had. Messages name the token endpoint's origin only.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum TokenError {
    /// No answer, or one that says "later" (5xx, 429), or one that cannot be read.
    #[error("{message}")]
    Unavailable { message: String, reason: &'static str, retry_after: Option<Duration> },
    /// The endpoint refused the assertion: the key, the account or the clock is wrong.
    #[error("{message}")]
    Refused { message: String },
}

impl TokenError {
    /// As a delivery error: FCM never answered, so the status is 0 and the reason says why.
    pub(crate) fn into_delivery_error(self) -> DeliveryError {
        match self {
            TokenError::Unavailable { message, reason, retry_after } => {
                DeliveryError::transient(message)
                    .with_upstream(Upstream::no_answer(reason))
                    .with_retry_after(retry_after)
            }
            TokenError::Refused { message } => DeliveryError::credentials_refused(message)
                .with_upstream(Upstream::no_answer("oauth_refused")),
        }
    }
}

/// The token fetches counted on `/metrics`.
#[derive(Debug, Clone, Default)]
pub(crate) struct TokenMetrics {
    /// `herald_fcm_token_fetches_total`.
    pub(crate) fetches: Counter,
    /// `herald_fcm_token_fetch_failures_total`.
    pub(crate) failures: Counter,
    /// `herald_fcm_token_expiry_timestamp_seconds`: when the cached token expires (unix time).
    pub(crate) expiry: Gauge,
}

/// The access tokens of one service account, for one scope.
pub(crate) struct TokenSource {
    account: ServiceAccount,
    scope: &'static str,
    client: UpstreamClient,
    origin: String,
    cached: Mutex<Option<Arc<AccessToken>>>,
    /// Held by the one fetch in progress.
    fetching: tokio::sync::Mutex<()>,
    /// Fetches finished, successful or not: a waiter that sees it change knows a fetch ended.
    finished: AtomicU64,
    /// The error of the last fetch, for the requests that waited for it.
    last_error: Mutex<Option<TokenError>>,
    metrics: TokenMetrics,
}

impl TokenSource {
    pub(crate) fn new(
        account: ServiceAccount,
        scope: &'static str,
        client: UpstreamClient,
        metrics: TokenMetrics,
    ) -> Self {
        let origin = herald_upstream::origin(&account.token_uri);
        TokenSource {
            account,
            scope,
            client,
            origin,
            cached: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
            finished: AtomicU64::new(0),
            last_error: Mutex::new(None),
            metrics,
        }
    }

    /// The service account.
    pub(crate) fn account(&self) -> &ServiceAccount {
        &self.account
    }

    /// The configured timeout of one token request.
    pub(crate) fn request_timeout(&self) -> Duration {
        self.client.request_timeout()
    }

    /// A usable token, fetching one when there is none, waiting at most `timeout` in all.
    pub(crate) async fn token(&self, timeout: Duration) -> Result<Arc<AccessToken>, TokenError> {
        let started = Instant::now();
        let cached = lock(&self.cached).clone();
        if let Some(token) = cached {
            let now = Instant::now();
            if now < token.refresh_at {
                return Ok(token);
            }
            if now < token.expires_at {
                // Due for refresh but still valid: one request refreshes, the rest use it.
                let Ok(_fetching) = self.fetching.try_lock() else { return Ok(token) };
                if let Some(newer) = self.fresh() {
                    return Ok(newer);
                }
                return match self.fetch(timeout).await {
                    Ok(fresh) => Ok(fresh),
                    Err(e) => {
                        tracing::warn!(
                            backend = "fcm",
                            error = %e,
                            "refreshing the FCM access token failed; the current one is used \
                             until it expires"
                        );
                        Ok(token)
                    }
                };
            }
        }
        let seen = self.finished.load(Ordering::SeqCst);
        let waited = tokio::time::timeout(timeout, self.fetching.lock()).await;
        let Ok(_fetching) = waited else {
            return Err(TokenError::Unavailable {
                message: format!(
                    "no FCM access token within {}: the token endpoint {} is slow",
                    herald_core::config::format_duration(timeout),
                    self.origin
                ),
                reason: "oauth_timeout",
                retry_after: None,
            });
        };
        if self.finished.load(Ordering::SeqCst) != seen {
            // A fetch ended while this request waited: take its result.
            if let Some(token) = self.usable() {
                return Ok(token);
            }
            if let Some(e) = lock(&self.last_error).clone() {
                return Err(e);
            }
        }
        if let Some(token) = self.usable() {
            return Ok(token);
        }
        self.fetch(timeout.saturating_sub(started.elapsed())).await
    }

    /// Drops `used` from the cache if it is still the cached token (FCM answered 401 to it).
    pub(crate) fn invalidate(&self, used: &AccessToken) {
        let mut cached = lock(&self.cached);
        if cached.as_ref().is_some_and(|t| t.generation == used.generation) {
            *cached = None;
        }
    }

    /// The cached token if it needs no refresh yet.
    fn fresh(&self) -> Option<Arc<AccessToken>> {
        lock(&self.cached).clone().filter(|t| Instant::now() < t.refresh_at)
    }

    /// The cached token if it has not expired.
    fn usable(&self) -> Option<Arc<AccessToken>> {
        lock(&self.cached).clone().filter(|t| Instant::now() < t.expires_at)
    }

    /// Fetches a token (the caller holds `fetching`), caches it and records the result.
    async fn fetch(&self, timeout: Duration) -> Result<Arc<AccessToken>, TokenError> {
        self.metrics.fetches.inc();
        let result = self.request(timeout).await;
        match &result {
            Ok(token) => {
                *lock(&self.cached) = Some(Arc::clone(token));
                *lock(&self.last_error) = None;
            }
            Err(e) => {
                self.metrics.failures.inc();
                *lock(&self.last_error) = Some(e.clone());
            }
        }
        self.finished.fetch_add(1, Ordering::SeqCst);
        result
    }

    async fn request(&self, timeout: Duration) -> Result<Arc<AccessToken>, TokenError> {
        let unavailable = |message: String, reason| TokenError::Unavailable {
            message,
            reason,
            retry_after: None,
        };
        let assertion = self
            .account
            .assertion(self.scope, SystemTime::now())
            .map_err(|message| TokenError::Refused { message })?;
        let mut body = String::with_capacity(GRANT.len() + assertion.len());
        body.push_str(GRANT);
        // A JWT is base64url and dots: nothing in it needs form-encoding.
        body.push_str(&assertion);
        let mut headers = HeaderMap::with_capacity(2);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/x-www-form-urlencoded"));
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));

        let sent = Instant::now();
        let answer = self
            .client
            .post(self.account.token_uri.clone(), headers, Bytes::from(body), timeout)
            .await
            .map_err(|e| {
                let reason = match &e {
                    UpstreamError::Timeout { .. } => "oauth_timeout",
                    UpstreamError::Tls { .. } => "oauth_tls",
                    UpstreamError::Proxy { .. } => "oauth_proxy",
                    _ => "oauth_connect",
                };
                unavailable(format!("FCM access token: {e:#}"), reason)
            })?;
        let status = answer.status;
        if status.is_success() {
            let granted = parse_grant(&answer.body).ok_or_else(|| {
                unavailable(
                    format!(
                        "FCM access token: the token endpoint {} answered {status} without a \
                         usable bearer token",
                        self.origin
                    ),
                    "oauth_garbage",
                )
            })?;
            let lifetime = granted.lifetime.min(MAX_LIFETIME);
            let margin = (lifetime / 4).min(MAX_REFRESH_MARGIN);
            let generation = self.finished.load(Ordering::SeqCst) + 1;
            let expires = SystemTime::now() + lifetime;
            let unix = expires.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs();
            self.metrics.expiry.set(i64::try_from(unix).unwrap_or(i64::MAX));
            tracing::debug!(
                backend = "fcm",
                generation,
                lifetime_s = lifetime.as_secs(),
                "fetched an FCM access token"
            );
            return Ok(Arc::new(AccessToken {
                header: granted.header,
                generation,
                refresh_at: sent + lifetime - margin,
                expires_at: sent + lifetime,
            }));
        }
        let code = status.as_u16();
        let oauth_error = parse_oauth_error(&answer.body);
        match (code, oauth_error) {
            (400..=403, Some(error)) => Err(TokenError::Refused {
                message: format!(
                    "FCM access token: the token endpoint {} refused the service account {} \
                     ({code} {error}): is the key deleted or disabled, or the clock wrong?",
                    self.origin, self.account.client_email
                ),
            }),
            _ => Err(TokenError::Unavailable {
                message: format!(
                    "FCM access token: the token endpoint {} answered {status}",
                    self.origin
                ),
                reason: if code == 429 || code >= 500 {
                    "oauth_unavailable"
                } else {
                    "oauth_other"
                },
                retry_after: answer
                    .headers
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, SystemTime::now())),
            }),
        }
    }
}

/// A token endpoint's successful answer.
struct Granted {
    header: HeaderValue,
    lifetime: Duration,
}

fn parse_grant(body: &[u8]) -> Option<Granted> {
    #[derive(Deserialize)]
    struct Answer {
        access_token: String,
        #[serde(default)]
        token_type: Option<String>,
        #[serde(default)]
        expires_in: Option<serde_json::Number>,
    }
    let answer: Answer = serde_json::from_slice(body).ok()?;
    if answer.token_type.as_deref().is_some_and(|t| !t.eq_ignore_ascii_case("bearer")) {
        return None;
    }
    let token = answer.access_token.trim();
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    let mut header = HeaderValue::try_from(format!("Bearer {token}")).ok()?;
    header.set_sensitive(true);
    let lifetime = match answer.expires_in.and_then(|n| n.as_f64()) {
        Some(secs) if secs.is_finite() && secs > 0.0 => {
            Duration::from_secs_f64(secs.min(MAX_LIFETIME.as_secs_f64()))
        }
        Some(_) => Duration::ZERO,
        None => DEFAULT_LIFETIME,
    };
    Some(Granted { header, lifetime })
}

/// The `error` of an RFC 6749 error answer, when it is one of the standard codes (a label, never
/// the endpoint's text).
fn parse_oauth_error(body: &[u8]) -> Option<&'static str> {
    #[derive(Deserialize)]
    struct Answer {
        error: String,
    }
    let answer: Answer = serde_json::from_slice(body).ok()?;
    [
        "invalid_grant",
        "invalid_client",
        "unauthorized_client",
        "invalid_scope",
        "invalid_request",
        "unsupported_grant_type",
        "access_denied",
    ]
    .into_iter()
    .find(|code| *code == answer.error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_are_read_strictly() {
        let g =
            parse_grant(br#"{"access_token":"ya29.abc","expires_in":3599,"token_type":"Bearer"}"#)
                .expect("grant");
        assert_eq!(g.lifetime, Duration::from_secs(3599));
        assert!(g.header.is_sensitive());
        assert_eq!(g.header.to_str().unwrap(), "Bearer ya29.abc");
        let g = parse_grant(br#"{"access_token":"t"}"#).expect("defaults");
        assert_eq!(g.lifetime, DEFAULT_LIFETIME);
        assert!(parse_grant(br#"{"access_token":"t","token_type":"MAC"}"#).is_none());
        assert!(parse_grant(br#"{"access_token":"a b"}"#).is_none());
        assert!(parse_grant(br#"{"access_token":""}"#).is_none());
        assert!(parse_grant(b"<html>").is_none());
        assert_eq!(
            parse_grant(br#"{"access_token":"t","expires_in":0}"#).unwrap().lifetime,
            Duration::ZERO
        );
    }

    #[test]
    fn oauth_errors_are_labels() {
        assert_eq!(
            parse_oauth_error(
                br#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#
            ),
            Some("invalid_grant")
        );
        assert_eq!(parse_oauth_error(br#"{"error":"something new"}"#), None);
        assert_eq!(parse_oauth_error(b"Service Unavailable"), None);
    }
}
