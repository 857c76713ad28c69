//! [`FcmBackend`]: one notification for one device → one FCM v1 request → an outcome.
//!
//! The backend owns two clients of the shared upstream crate built from the app's `upstream`
//! settings: one speaking HTTP/2 only to FCM (one connection multiplexes every request, up to
//! `max_concurrent_requests`), one for the OAuth token endpoint. It makes one attempt per call
//! and never sleeps; the one exception to "one request" is FCM's 401, after which the cached
//! token is dropped and the message sent once more with a fresh token (an expired or revoked
//! token is not the operator's fault).
//!
//! Nothing FCM answers is logged or put into an error as text: only its status and labels from
//! a fixed set.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use herald_core::redact::PushkeyHash;
use herald_core::{
    AppContext, Backend, BackendFactory, BuildError, CallContext, DeliveryError, Device,
    Notification, Outcome, Upstream,
};
use herald_upstream::{UpstreamClient, UpstreamError};
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Uri};

use crate::account::ServiceAccount;
use crate::classify::{classify, Verdict};
use crate::config::{check_project_id, FcmConfig, MessageOptions};
use crate::message::{self, Built};
use crate::oauth::{AccessToken, TokenMetrics, TokenSource};
use crate::FCM_SCOPE;

/// FCM's answers are small JSON objects; more is not kept.
const MAX_ANSWER_BYTES: usize = 16 * 1024;

/// Delivers notifications to Android (and Firebase iOS) apps through FCM HTTP v1, for one app.
pub struct FcmBackend {
    app_id: String,
    client: UpstreamClient,
    send_uri: Uri,
    origin: String,
    tokens: Arc<TokenSource>,
    message: MessageOptions,
    project_id: String,
}

impl std::fmt::Debug for FcmBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FcmBackend")
            .field("app_id", &self.app_id)
            .field("project_id", &self.project_id)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl BackendFactory for FcmBackend {
    const KIND: &'static str = "fcm";
    type Config = FcmConfig;

    async fn build(app: &AppContext, config: FcmConfig) -> Result<Arc<dyn Backend>, BuildError> {
        let backend = FcmBackend::new(app, &config)?;
        tracing::info!(
            backend = "fcm",
            app = %app.app_id,
            project_id = %backend.project_id,
            service_account = %backend.tokens.account().client_email,
            "fcm app ready"
        );
        Ok(Arc::new(backend))
    }
}

impl FcmBackend {
    /// Builds the backend: reads and checks the service account, the options and the client
    /// settings. Opens no connection and fetches no token (that is [`Backend::warm_up`]).
    pub fn new(app: &AppContext, config: &FcmConfig) -> Result<Self, BuildError> {
        let message = config.validate()?;
        let key = "service_account_file";
        let json = config.service_account_file.read(&app.config_dir).map_err(|e| {
            BuildError::Credentials {
                key: key.into(),
                message: e.to_string(),
                source: Some(Box::new(e)),
            }
        })?;
        let account = ServiceAccount::parse(&json).map_err(|why| BuildError::Credentials {
            key: key.into(),
            message: format!("{}: {why}", config.service_account_file),
            source: None,
        })?;
        let project_id = match (&config.project_id, &account.project_id) {
            (Some(id), _) => id.clone(),
            (None, Some(id)) => {
                check_project_id(id).map_err(|why| {
                    BuildError::invalid(key, format!("the service account's `project_id`: {why}"))
                })?;
                id.clone()
            }
            (None, None) => {
                return Err(BuildError::invalid(
                    "project_id",
                    "is not set and the service account file has none",
                ))
            }
        };
        let send_uri = send_uri(&config.endpoint, &project_id)
            .map_err(|why| BuildError::invalid("endpoint", why))?;

        let upstream = config.upstream(&app.config_dir);
        let client = UpstreamClient::builder(&upstream)
            .http2_only()
            .max_answer_bytes(MAX_ANSWER_BYTES)
            .build()
            .map_err(upstream_build_error)?;
        let token_client = UpstreamClient::builder(&upstream)
            .max_answer_bytes(MAX_ANSWER_BYTES)
            .build()
            .map_err(upstream_build_error)?;

        let metrics = TokenMetrics::default();
        app.metrics.register(
            "fcm_token_fetches",
            "OAuth access token fetches from the service account's token endpoint",
            metrics.fetches.clone(),
        );
        app.metrics.register(
            "fcm_token_fetch_failures",
            "OAuth access token fetches that failed",
            metrics.failures.clone(),
        );
        app.metrics.register(
            "fcm_token_expiry_timestamp_seconds",
            "When the cached OAuth access token expires (unix time; 0 before the first fetch)",
            metrics.expiry.clone(),
        );
        let tokens = Arc::new(TokenSource::new(account, FCM_SCOPE, token_client, metrics));
        Ok(FcmBackend {
            app_id: app.app_id.clone(),
            origin: herald_upstream::origin(&send_uri),
            client,
            send_uri,
            tokens,
            message,
            project_id,
        })
    }

    /// The Firebase project messages are sent through.
    pub fn project_id(&self) -> &str {
        &self.project_id
    }

    /// Posts `body` with `token`, within the call's time.
    async fn send(
        &self,
        call: &CallContext,
        token: &AccessToken,
        body: Bytes,
    ) -> Result<herald_upstream::UpstreamResponse, DeliveryError> {
        let mut headers = HeaderMap::with_capacity(2);
        headers.insert(AUTHORIZATION, token.header.clone());
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
        let timeout = call.timeout(self.client.request_timeout());
        self.client
            .post(self.send_uri.clone(), headers, body, timeout)
            .await
            .map_err(UpstreamError::into_delivery_error)
    }

    async fn token(&self, call: &CallContext) -> Result<Arc<AccessToken>, DeliveryError> {
        let timeout = call.timeout(self.tokens.request_timeout());
        self.tokens.token(timeout).await.map_err(|e| e.into_delivery_error())
    }

    fn reject(&self, device: &Device, reason: &'static str, detail: &str) -> Outcome {
        tracing::warn!(
            backend = "fcm",
            app = %self.app_id,
            pushkey = %PushkeyHash::of(&device.pushkey),
            reason,
            "rejecting fcm pushkey: {detail}"
        );
        Outcome::token_dead(Upstream::no_answer(reason), detail)
    }
}

/// `<endpoint>/v1/projects/<project_id>/messages:send`.
fn send_uri(endpoint: &str, project_id: &str) -> Result<Uri, String> {
    let base: Uri = endpoint.parse().map_err(|_| format!("`{endpoint}` is not a URL"))?;
    if !matches!(base.scheme_str(), Some("https" | "http")) || base.host().is_none() {
        return Err(format!("`{endpoint}` is not an absolute http(s) URL"));
    }
    if base.query().is_some() {
        return Err(format!("`{endpoint}` has a query"));
    }
    let uri = format!("{}/v1/projects/{project_id}/messages:send", endpoint.trim_end_matches('/'));
    uri.parse().map_err(|_| format!("`{uri}` is not a URL"))
}

/// The upstream client's build error as the app's, naming the key inside `upstream`.
fn upstream_build_error(error: herald_upstream::BuildError) -> BuildError {
    match error {
        herald_upstream::BuildError::Invalid { key, reason } => {
            BuildError::invalid(format!("upstream.{key}"), reason)
        }
        other => BuildError::new(format!("fcm: {other}")),
    }
}

#[async_trait]
impl Backend for FcmBackend {
    async fn deliver(
        &self,
        call: &CallContext,
        notification: &Notification,
        device: &Device,
    ) -> Result<Outcome, DeliveryError> {
        if device.pushkey.trim().is_empty() {
            return Ok(self.reject(device, "invalid_token", "the pushkey is empty"));
        }
        let (body, shrunk) = match message::build(notification, device, &self.message) {
            Built::Send { body, shrunk } => (Bytes::from(body), shrunk),
            Built::Skip(why) => return Ok(Outcome::Skipped(why)),
            Built::BadDefaultPayload => {
                return Ok(self.reject(
                    device,
                    "invalid_default_payload",
                    "the pusher's `default_payload` is not a JSON object",
                ))
            }
        };
        if shrunk {
            tracing::debug!(
                backend = "fcm",
                app = %self.app_id,
                pushkey = %PushkeyHash::of(&device.pushkey),
                "data shortened to fit FCM's {} bytes",
                crate::MAX_DATA_BYTES
            );
        }
        let token = self.token(call).await?;
        let answer = self.send(call, &token, body.clone()).await?;
        match classify(&answer, &self.origin) {
            Verdict::Done(result) => result,
            Verdict::Unauthenticated(_) => {
                // Expired early or revoked: drop it (unless another request already did) and
                // try once with a fresh one.
                self.tokens.invalidate(&token);
                let fresh = self.token(call).await?;
                let answer = self.send(call, &fresh, body).await?;
                match classify(&answer, &self.origin) {
                    Verdict::Done(result) => result,
                    Verdict::Unauthenticated(refused) => {
                        self.tokens.invalidate(&fresh);
                        Err(refused)
                    }
                }
            }
        }
    }

    async fn warm_up(&self) -> Result<(), DeliveryError> {
        // An access token before the first notification needs one.
        let timeout = self.tokens.request_timeout();
        self.tokens.token(timeout).await.map(drop).map_err(|e| e.into_delivery_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_uris() {
        let u = |e: &str| send_uri(e, "herald-test").map(|u| u.to_string());
        assert_eq!(
            u("https://fcm.googleapis.com").as_deref(),
            Ok("https://fcm.googleapis.com/v1/projects/herald-test/messages:send")
        );
        assert_eq!(
            u("https://127.0.0.1:8443/").as_deref(),
            Ok("https://127.0.0.1:8443/v1/projects/herald-test/messages:send")
        );
        assert!(u("fcm.googleapis.com").is_err());
        assert!(u("ftp://x").is_err());
        assert!(u("https://x/?a=b").is_err());
    }
}
