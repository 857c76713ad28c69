//! Herald's WebPush backend (`kind = "webpush"`): delivers Matrix notifications to browsers.
//!
//! Follows Sygnal's conventions so existing web clients work unchanged: the pushkey is the
//! subscription's `p256dh` key, the pusher's `data` carries `endpoint` and `auth`, and the payload
//! is the JSON that Sygnal sends. Payloads are encrypted with aes128gcm (RFC 8291) and signed with
//! VAPID (RFC 8292).
//!
//! - [`config`]: the app's configuration section.
//! - `backend`: [`WebPushBackend`], one notification → one push-service request → an outcome.
//! - `subscription`: reading a device's pushkey and pusher data.
//! - `aes128gcm`: RFC 8291 encryption of one message.
//! - `payload`: the JSON payload, shrunk to fit the push services' 4096-byte limit.
//! - `vapid`: the VAPID key, and signing a JWT for a push-service origin.
//! - `origins`: per push-service origin: the VAPID JWT, and when the origin last accepted it.
//! - `guard`: the SSRF guard: the URL pre-check, and the connect policy of the upstream client
//!   (`herald-upstream`), which sends the requests.
//!
//! `docs/backends/webpush.md` explains setup for operators and web clients.

mod aes128gcm;
mod backend;
pub mod config;
pub mod crypto_floor;
mod guard;
mod origins;
mod payload;
mod subscription;
mod vapid;

pub use backend::WebPushBackend;
pub use config::{BadgeUrgency, Urgency, WebPushConfig};
pub use vapid::{generate_vapid_key, vapid_public_key};
