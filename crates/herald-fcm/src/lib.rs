//! Herald's FCM backend (`kind = "fcm"`): Android (and Firebase iOS) notifications through
//! Firebase Cloud Messaging's HTTP v1 API. FCM's legacy API is shut down; only v1 is spoken.
//!
//! Follows Sygnal's conventions so existing Android apps (Element Android and others) work
//! unchanged, and fixes its known faults: every `data` value is a string (Sygnal's #365), legacy
//! options are refused at start-up instead of failing every message (#367), and errors are read
//! from FCM's JSON error body rather than its status alone.
//!
//! - [`config`]: the app's configuration section, and the checks of `fcm_options`.
//! - `account`: the service account JSON, and the RS256-signed JWT-bearer assertion.
//! - `oauth`: the OAuth2 access token: fetched from the account's `token_uri` through the shared
//!   upstream client, cached, refreshed before it expires, one fetch at a time.
//! - `message`: the FCM v1 message for one notification and device, within FCM's size limit.
//! - `classify`: FCM's answers (status and JSON error body) → outcomes and error classes.
//! - `backend`: [`FcmBackend`], one notification → one FCM request → an outcome.
//!
//! `docs/backends/fcm.md` explains the Firebase console steps, every option, the message format
//! and the error table.

mod account;
mod backend;
mod classify;
pub mod config;
mod message;
mod oauth;

pub use backend::FcmBackend;
pub use config::FcmConfig;

/// The OAuth2 scope Herald asks for: sending FCM messages, nothing else.
pub const FCM_SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

/// FCM's limit on a message's `data`, in bytes: Herald shortens text to stay within it.
pub const MAX_DATA_BYTES: usize = 4096;

/// The longest a Matrix field or a `content_*` value in `data` may be, in UTF-8 bytes, with the
/// `…` that marks a cut.
pub const MAX_FIELD_BYTES: usize = 1024;
