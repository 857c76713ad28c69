//! APNs answers → outcomes: by HTTP status first, then by the `reason` in the error body.
//!
//! Apple adds reasons over time and a2's `ErrorReason` has no catch-all, so a reason a2 does not
//! know fails to parse: the status alone then decides, and the reason label is `"other"`. A body
//! that is not an APNs error body never makes a token dead.
//!
//! | status | reason | result | homeserver sees |
//! |---|---|---|---|
//! | 200 | | delivered | 200 |
//! | 410 | any (with an APNs error body) | token dead | 200, rejected |
//! | 400 | `BadDeviceToken`, `DeviceTokenNotForTopic`, `TopicDisallowed` | token dead once the app's setup is proven (see below), else message refused | 200 |
//! | 400 | `BadTopic`, `MissingTopic` | credentials refused | 502 |
//! | 400 | others, unknown, no body | message refused | 200 |
//! | 401, 403 | any | credentials refused | 502 |
//! | 404, 405 | any (the `endpoint` is not APNs) | credentials refused | 502 |
//! | 413 | | message refused | 200 |
//! | 429, 5xx | | transient (with `Retry-After` when sent) | 502 after retries |
//! | others | | message refused | 200 |
//!
//! The three 400 reasons say the token does not belong to this app and environment. They also
//! answer **every** token of an app whose `topic` or `platform` is wrong, and rejecting would then
//! delete every pusher of the app. So they reject only once APNs has accepted a notification of
//! the app since it was built (its topic and environment are right, and nothing in the process
//! changes them, so the token is wrong); until then the message is refused and logged.

use std::time::SystemTime;

use a2::{ErrorBody, ErrorReason};
use herald_core::{parse_retry_after, DeliveryError, Outcome, Upstream};
use http::header::RETRY_AFTER;
use http::HeaderMap;

/// Reasons Apple documents that a2 0.10 does not parse; labelled by name all the same.
const NEWER_REASONS: [&str; 3] = ["ExpiredToken", "InvalidPushType", "FeatureNotEnabled"];

/// What an error body said.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Said {
    /// An APNs error body with a reason a2 knows.
    Known(ErrorReason),
    /// An APNs error body (`{"reason": "…"}`) with a reason a2 does not know: its label when
    /// Herald knows it ([`NEWER_REASONS`]), else `"other"`.
    Unknown(&'static str),
    /// Not an APNs error body.
    Garbage,
}

impl Said {
    pub(crate) fn parse(body: &[u8]) -> Said {
        #[derive(serde::Deserialize)]
        struct AnyReason {
            reason: String,
        }
        if let Ok(error) = serde_json::from_slice::<ErrorBody>(body) {
            return Said::Known(error.reason);
        }
        match serde_json::from_slice::<AnyReason>(body) {
            Ok(any) => Said::Unknown(
                NEWER_REASONS.iter().find(|r| **r == any.reason).copied().unwrap_or("other"),
            ),
            Err(_) => Said::Garbage,
        }
    }

    /// The reason as a metric label: a2's name for it, or `"other"`.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Said::Known(reason) => reason_label(reason),
            Said::Unknown(label) => label,
            Said::Garbage => "other",
        }
    }
}

/// A static label per reason (the metric's label set stays bounded).
fn reason_label(reason: &ErrorReason) -> &'static str {
    use ErrorReason as R;
    match reason {
        R::BadCollapseId => "BadCollapseId",
        R::BadDeviceToken => "BadDeviceToken",
        R::BadExpirationDate => "BadExpirationDate",
        R::BadMessageId => "BadMessageId",
        R::BadPriority => "BadPriority",
        R::BadTopic => "BadTopic",
        R::DeviceTokenNotForTopic => "DeviceTokenNotForTopic",
        R::DuplicateHeaders => "DuplicateHeaders",
        R::IdleTimeout => "IdleTimeout",
        R::MissingDeviceToken => "MissingDeviceToken",
        R::MissingTopic => "MissingTopic",
        R::PayloadEmpty => "PayloadEmpty",
        R::TopicDisallowed => "TopicDisallowed",
        R::BadCertificate => "BadCertificate",
        R::BadCertificateEnvironment => "BadCertificateEnvironment",
        R::ExpiredProviderToken => "ExpiredProviderToken",
        R::Forbidden => "Forbidden",
        R::InvalidProviderToken => "InvalidProviderToken",
        R::MissingProviderToken => "MissingProviderToken",
        R::BadPath => "BadPath",
        R::MethodNotAllowed => "MethodNotAllowed",
        R::Unregistered => "Unregistered",
        R::PayloadTooLarge => "PayloadTooLarge",
        R::TooManyProviderTokenUpdates => "TooManyProviderTokenUpdates",
        R::TooManyRequests => "TooManyRequests",
        R::InternalServerError => "InternalServerError",
        R::ServiceUnavailable => "ServiceUnavailable",
        R::Shutdown => "Shutdown",
    }
}

/// What the app knows when it classifies an answer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Context {
    /// APNs has accepted a notification of the app since it was built.
    pub(crate) setup_proven: bool,
    /// The app uses certificate auth (words the operator's hint).
    pub(crate) certificate_auth: bool,
}

/// Maps an APNs answer onto the outcome classes. Messages hold the status and reason only:
/// never the body, the token or the payload.
pub(crate) fn classify(
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
    context: Context,
) -> Result<Outcome, DeliveryError> {
    if (200..300).contains(&status) {
        return Ok(Outcome::Delivered(Upstream::new(status, "ok")));
    }
    let said = Said::parse(body);
    let reason = said.label();
    let upstream = Upstream::new(status, reason);
    let text = format!("APNs answered {status} {reason}");
    let retry_after = || {
        headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()))
    };
    use ErrorReason as R;
    match status {
        // Only Unregistered and ExpiredToken come with 410; a 410 without an APNs error body
        // (a proxy's page?) proves nothing about the token.
        410 if said != Said::Garbage => {
            Ok(Outcome::token_dead(upstream, "the device token is no longer active for the topic"))
        }
        400 => match &said {
            Said::Known(R::BadDeviceToken | R::DeviceTokenNotForTopic | R::TopicDisallowed) => {
                if context.setup_proven {
                    Ok(Outcome::token_dead(
                        upstream,
                        "the device token does not belong to this app's topic and environment",
                    ))
                } else {
                    Err(DeliveryError::message_refused(format!(
                        "{text}: not rejecting the pushkey until this app has had a notification \
                         accepted (if every device gets this, check `topic` and `platform`)"
                    ))
                    .with_upstream(upstream))
                }
            }
            Said::Known(R::BadTopic | R::MissingTopic) => {
                Err(DeliveryError::credentials_refused(format!("{text}: check the app's `topic`"))
                    .with_upstream(upstream))
            }
            _ => Err(DeliveryError::message_refused(text).with_upstream(upstream)),
        },
        401 | 403 => {
            let hint = if context.certificate_auth {
                "check `certificate_file`/`key_file` (expired? revoked? wrong environment?)"
            } else {
                "check `key_file`, `key_id`, `team_id` and the system clock"
            };
            Err(DeliveryError::credentials_refused(format!("{text}: {hint}"))
                .with_upstream(upstream))
        }
        // APNs has one path and one method: a 404 or 405 says the `endpoint` is not APNs (a
        // relay's prefix, a wrong host). Every notification would be lost, so it is the operator's
        // to fix (502 and an error log), not a message to drop.
        404 | 405 => {
            Err(DeliveryError::credentials_refused(format!("{text}: is `endpoint` an APNs host?"))
                .with_upstream(upstream))
        }
        413 => Err(DeliveryError::message_refused(text).with_upstream(Upstream::new(
            status,
            if reason == "other" { "PayloadTooLarge" } else { reason },
        ))),
        429 | 500..=599 => Err(DeliveryError::transient(text)
            .with_upstream(upstream)
            .with_retry_after(retry_after())),
        _ => Err(DeliveryError::message_refused(text).with_upstream(upstream)),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use herald_core::ErrorClass;

    use super::*;

    const PROVEN: Context = Context { setup_proven: true, certificate_auth: false };
    const FRESH: Context = Context { setup_proven: false, certificate_auth: false };

    fn answer(status: u16, body: &str, context: Context) -> Result<Outcome, DeliveryError> {
        classify(status, &HeaderMap::new(), body.as_bytes(), context)
    }

    fn class(result: &Result<Outcome, DeliveryError>) -> &'static str {
        match result {
            Ok(Outcome::Delivered(_)) => "delivered",
            Ok(Outcome::TokenDead { .. }) => "dead",
            Ok(_) => "other outcome",
            Err(e) => e.class().as_str(),
        }
    }

    fn reason(result: &Result<Outcome, DeliveryError>) -> &'static str {
        match result {
            Ok(Outcome::Delivered(u)) | Ok(Outcome::TokenDead { upstream: u, .. }) => u.reason,
            Err(e) => e.reason().unwrap_or("none"),
            Ok(_) => "none",
        }
    }

    #[test]
    fn status_first_then_reason() {
        let cases: &[(u16, &str, &str, &str)] = &[
            (200, "", "delivered", "ok"),
            (410, r#"{"reason":"Unregistered","timestamp":1700000000000}"#, "dead", "Unregistered"),
            (410, r#"{"reason":"ExpiredToken"}"#, "dead", "ExpiredToken"),
            (400, r#"{"reason":"BadDeviceToken"}"#, "dead", "BadDeviceToken"),
            (400, r#"{"reason":"DeviceTokenNotForTopic"}"#, "dead", "DeviceTokenNotForTopic"),
            (400, r#"{"reason":"TopicDisallowed"}"#, "dead", "TopicDisallowed"),
            (400, r#"{"reason":"BadTopic"}"#, "credentials_refused", "BadTopic"),
            (400, r#"{"reason":"MissingTopic"}"#, "credentials_refused", "MissingTopic"),
            (400, r#"{"reason":"BadPriority"}"#, "message_refused", "BadPriority"),
            (400, r#"{"reason":"SomethingApple2031"}"#, "message_refused", "other"),
            (400, "<html>bad request</html>", "message_refused", "other"),
            (
                403,
                r#"{"reason":"ExpiredProviderToken"}"#,
                "credentials_refused",
                "ExpiredProviderToken",
            ),
            (
                403,
                r#"{"reason":"InvalidProviderToken"}"#,
                "credentials_refused",
                "InvalidProviderToken",
            ),
            (
                403,
                r#"{"reason":"MissingProviderToken"}"#,
                "credentials_refused",
                "MissingProviderToken",
            ),
            (
                403,
                r#"{"reason":"BadCertificateEnvironment"}"#,
                "credentials_refused",
                "BadCertificateEnvironment",
            ),
            (403, r#"{"reason":"NewCredentialsProblem"}"#, "credentials_refused", "other"),
            (413, r#"{"reason":"PayloadTooLarge"}"#, "message_refused", "PayloadTooLarge"),
            (413, "", "message_refused", "PayloadTooLarge"),
            (429, r#"{"reason":"TooManyRequests"}"#, "transient", "TooManyRequests"),
            (
                429,
                r#"{"reason":"TooManyProviderTokenUpdates"}"#,
                "transient",
                "TooManyProviderTokenUpdates",
            ),
            (500, r#"{"reason":"InternalServerError"}"#, "transient", "InternalServerError"),
            (503, r#"{"reason":"ServiceUnavailable"}"#, "transient", "ServiceUnavailable"),
            (503, r#"{"reason":"Shutdown"}"#, "transient", "Shutdown"),
            (502, "Bad Gateway", "transient", "other"),
            (405, r#"{"reason":"MethodNotAllowed"}"#, "credentials_refused", "MethodNotAllowed"),
            (404, "", "credentials_refused", "other"),
        ];
        for (status, body, want_class, want_reason) in cases {
            let result = answer(*status, body, PROVEN);
            assert_eq!(class(&result), *want_class, "{status} {body}");
            assert_eq!(reason(&result), *want_reason, "{status} {body}");
            if let Err(e) = &result {
                assert_eq!(e.upstream().map(|u| u.status), Some(*status));
                // Never the body's text in the message.
                assert!(!e.message().contains("html") && !e.message().contains("Gateway"));
            }
        }
    }

    #[test]
    fn a_garbage_410_is_no_proof_of_a_dead_token() {
        let result = answer(410, "Gone", PROVEN);
        assert_eq!(class(&result), "message_refused");
    }

    #[test]
    fn token_reasons_of_400_reject_only_once_the_setup_is_proven() {
        for reason in ["BadDeviceToken", "DeviceTokenNotForTopic", "TopicDisallowed"] {
            let body = format!(r#"{{"reason":"{reason}"}}"#);
            let fresh = answer(400, &body, FRESH);
            let e = fresh.as_ref().expect_err("not rejected on a fresh app");
            assert_eq!(e.class(), ErrorClass::MessageRefused);
            assert!(e.message().contains("`topic`"), "{}", e.message());
            assert_eq!(class(&answer(400, &body, PROVEN)), "dead");
        }
        // 410 needs no proof.
        assert_eq!(class(&answer(410, r#"{"reason":"Unregistered"}"#, FRESH)), "dead");
    }

    #[test]
    fn retry_after_is_passed_on() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, http::HeaderValue::from_static("7"));
        let e = classify(429, &headers, br#"{"reason":"TooManyRequests"}"#, PROVEN)
            .expect_err("transient");
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
    }

    #[test]
    fn the_credentials_hint_fits_the_auth_mode() {
        let token = answer(403, r#"{"reason":"InvalidProviderToken"}"#, PROVEN).expect_err("403");
        assert!(token.message().contains("`key_id`"), "{}", token.message());
        let cert = Context { setup_proven: true, certificate_auth: true };
        let e = answer(403, r#"{"reason":"BadCertificate"}"#, cert).expect_err("403");
        assert!(e.message().contains("`certificate_file`"), "{}", e.message());
    }
}
