//! FCM's answers → outcomes and error classes, from the JSON error body and not the status alone
//! (Sygnal reads only the status).
//!
//! FCM v1 answers an error with
//! `{"error":{"code":404,"message":"…","status":"NOT_FOUND","details":[{"@type":
//! "type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"UNREGISTERED"}]}}`; a
//! `google.rpc.BadRequest` detail names the offending fields (`message.token`). The table is in
//! `docs/backends/fcm.md`. A body that cannot be read never rejects a token.

use std::time::{Duration, SystemTime};

use herald_core::{parse_retry_after, DeliveryError, Outcome, Upstream};
use herald_upstream::UpstreamResponse;
use http::header::RETRY_AFTER;
use serde::Deserialize;

/// What to do with an answer.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// The result.
    Done(Result<Outcome, DeliveryError>),
    /// 401: the access token was refused. Try once more with a fresh one; if that is refused
    /// too, this is the error.
    Unauthenticated(DeliveryError),
}

/// What an FCM error body says, as labels from a fixed set (never FCM's text).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Said {
    /// The body is a Google API error (`{"error": {…}}`).
    pub(crate) parsed: bool,
    /// `error.status` (`NOT_FOUND`, `INVALID_ARGUMENT`, …).
    pub(crate) status: Option<&'static str>,
    /// The `FcmError` detail's `errorCode`.
    pub(crate) error_code: Option<&'static str>,
    /// The error is about the registration token (`message.token`).
    pub(crate) about_token: bool,
}

/// FCM's message for a token that is not one, when no field violation names it.
const NOT_A_TOKEN: &str = "The registration token is not a valid FCM registration token";

/// Labels of FCM's `errorCode`s and Google's status codes.
const LABELS: [&str; 16] = [
    "UNSPECIFIED_ERROR",
    "INVALID_ARGUMENT",
    "UNREGISTERED",
    "SENDER_ID_MISMATCH",
    "QUOTA_EXCEEDED",
    "UNAVAILABLE",
    "INTERNAL",
    "THIRD_PARTY_AUTH_ERROR",
    "NOT_FOUND",
    "PERMISSION_DENIED",
    "UNAUTHENTICATED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "DEADLINE_EXCEEDED",
    "ABORTED",
    "CANCELLED",
];

fn label(text: &str) -> &'static str {
    LABELS.iter().find(|l| **l == text).copied().unwrap_or("other")
}

impl Said {
    pub(crate) fn parse(body: &[u8]) -> Said {
        #[derive(Deserialize)]
        struct Wire {
            error: WireError,
        }
        #[derive(Deserialize)]
        struct WireError {
            #[serde(default)]
            status: Option<String>,
            #[serde(default)]
            message: Option<String>,
            #[serde(default)]
            details: Vec<Detail>,
        }
        #[derive(Deserialize)]
        struct Detail {
            #[serde(rename = "errorCode", default)]
            error_code: Option<String>,
            #[serde(rename = "fieldViolations", default)]
            field_violations: Vec<FieldViolation>,
        }
        #[derive(Deserialize)]
        struct FieldViolation {
            #[serde(default)]
            field: Option<String>,
        }
        let Ok(wire) = serde_json::from_slice::<Wire>(body) else { return Said::default() };
        let error = wire.error;
        let about_token = error.details.iter().any(|d| {
            d.field_violations.iter().any(|v| v.field.as_deref() == Some("message.token"))
        }) || error.message.as_deref().is_some_and(|m| m.trim() == NOT_A_TOKEN);
        Said {
            parsed: true,
            status: error.status.as_deref().map(label),
            error_code: error.details.iter().find_map(|d| d.error_code.as_deref()).map(label),
            about_token,
        }
    }
}

/// Maps FCM's answer onto the outcome classes; `origin` names FCM in messages.
pub(crate) fn classify(answer: &UpstreamResponse, origin: &str) -> Verdict {
    let status = answer.status.as_u16();
    if answer.status.is_success() {
        return Verdict::Done(Ok(Outcome::Delivered(Upstream::new(status, "ok"))));
    }
    let said = Said::parse(&answer.body);
    let code = said.error_code.filter(|c| *c != "other");
    let text = format!(
        "{origin} answered {status}{}",
        match (code, said.status) {
            (Some(code), _) => format!(" {code}"),
            (None, Some(s)) => format!(" {s}"),
            (None, None) if said.parsed => String::new(),
            (None, None) => " (not an FCM error body)".to_owned(),
        }
    );
    let up = |reason| Upstream::new(status, reason);
    let dead = |reason, why: &str| {
        Verdict::Done(Ok(Outcome::token_dead(up(reason), format!("{text}: {why}"))))
    };
    let transient = |reason| {
        Verdict::Done(Err(DeliveryError::transient(text.clone())
            .with_upstream(up(reason))
            .with_retry_after(retry_after(answer))))
    };
    let credentials = |reason, why: &str| {
        Verdict::Done(Err(
            DeliveryError::credentials_refused(format!("{text}: {why}")).with_upstream(up(reason))
        ))
    };
    let refused = |reason| {
        Verdict::Done(Err(DeliveryError::message_refused(text.clone()).with_upstream(up(reason))))
    };

    // FCM's own error code says most; it is checked before the status.
    match code {
        Some("UNREGISTERED") => {
            return dead("UNREGISTERED", "the app was uninstalled or the token expired")
        }
        Some("SENDER_ID_MISMATCH") => {
            return dead("SENDER_ID_MISMATCH", "the token belongs to another Firebase project")
        }
        Some("THIRD_PARTY_AUTH_ERROR") => {
            return credentials(
                "THIRD_PARTY_AUTH_ERROR",
                "the APNs certificate or key (or web push key) in the Firebase project is invalid",
            )
        }
        Some("QUOTA_EXCEEDED") => return transient("QUOTA_EXCEEDED"),
        Some("UNAVAILABLE") => return transient("UNAVAILABLE"),
        Some("INTERNAL") => return transient("INTERNAL"),
        _ => {}
    }
    match status {
        401 => Verdict::Unauthenticated(
            DeliveryError::credentials_refused(format!(
                "{text}: FCM refused a fresh access token of the service account"
            ))
            .with_upstream(up("UNAUTHENTICATED")),
        ),
        403 => credentials(
            "PERMISSION_DENIED",
            "the service account may not send for this project (role Firebase Cloud Messaging \
             API Admin, API enabled, right project_id?)",
        ),
        // A Google error that says the token is not there; a 404 from something that is not
        // FCM (a wrong `endpoint`) says nothing about the token.
        404 if said.status == Some("NOT_FOUND") => dead("NOT_FOUND", "FCM does not know the token"),
        404 => transient("not_found"),
        400 if said.about_token => {
            dead("INVALID_TOKEN", "the token is not a valid FCM registration token")
        }
        400 if said.parsed => refused("INVALID_ARGUMENT"),
        400 => refused("bad_request"),
        413 => refused("too_large"),
        429 => transient("QUOTA_EXCEEDED"),
        500..=599 => transient(match status {
            500 => "INTERNAL",
            503 => "UNAVAILABLE",
            _ => "server_error",
        }),
        _ => refused("refused"),
    }
}

/// The answer's `Retry-After` (seconds or an HTTP date).
fn retry_after(answer: &UpstreamResponse) -> Option<Duration> {
    answer
        .headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_read_into_labels() {
        let said = Said::parse(
            br#"{"error":{"code":404,"message":"Requested entity was not found.","status":"NOT_FOUND",
            "details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"UNREGISTERED"}]}}"#,
        );
        assert_eq!(
            said,
            Said {
                parsed: true,
                status: Some("NOT_FOUND"),
                error_code: Some("UNREGISTERED"),
                about_token: false
            }
        );
        let said = Said::parse(
            br#"{"error":{"code":400,"message":"The registration token is not a valid FCM registration token",
            "status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"INVALID_ARGUMENT"}]}}"#,
        );
        assert!(said.about_token);
        let said = Said::parse(
            br#"{"error":{"code":400,"status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations":[{"field":"message.data[0].value","description":"Invalid value"}]}]}}"#,
        );
        assert!(said.parsed && !said.about_token);
        assert_eq!(Said::parse(br#"{"error":{"status":"SOMETHING_NEW"}}"#).status, Some("other"));
        // Cut off after the interesting part: not read at all.
        assert_eq!(
            Said::parse(
                br#"{"error":{"code":404,"status":"NOT_FOUND","details":[{"errorCode":"UNREG"#
            ),
            Said::default()
        );
        assert_eq!(Said::parse(b"<html>502</html>"), Said::default());
    }
}
