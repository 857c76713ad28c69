//! Herald's APNs backend (`kind = "apns"`): delivers Matrix notifications to iOS apps.
//!
//! Follows Sygnal's conventions so that existing iOS apps (Element and others) work unchanged: the
//! pushkey is the base64 of the device token, the payload is what `payload` documents (with
//! `default_payload` from the pusher's data merged in), and errors are classified as
//! `shared/reference/payloads.md` says. Requests go over HTTP/2 through Herald's shared upstream
//! client (`herald-upstream`), to Apple's hosts or any configured `endpoint`.
//!
//! The `a2` crate provides the APNs data model used here (`NotificationOptions`, `Priority`,
//! `CollapseId`, `ErrorBody`/`ErrorReason`); its client cannot be aimed at another host and its
//! payload builder cannot express Sygnal's payloads, so neither is used.
//!
//! - [`config`]: the app's configuration section.
//! - `backend`: [`ApnsBackend`], one notification → one APNs request → an outcome.
//! - `token`: the device token in the request path, from the pushkey.
//! - `payload`: the JSON payload, shortened to fit APNs' limit.
//! - `classify`: APNs' answers → outcomes, status first.
//! - `jwt`: the provider token (token auth), signed once and shared.
//! - `cert`: the client certificate's topic and expiry (certificate auth).
//! - `connections`: HTTP/2 connections, each multiplexing many streams.
//!
//! `docs/backends/apns.md` explains setup for operators.

mod backend;
mod cert;
mod classify;
pub mod config;
mod connections;
mod jwt;
mod payload;
mod token;

pub use backend::ApnsBackend;
pub use config::{ApnsConfig, ApnsPriority, Platform, PriorityMapping, PushType};
