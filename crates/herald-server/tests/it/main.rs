//! Integration tests of the `herald` server: one test binary (link once), one module per area.

#![allow(unreachable_pub, missing_docs, clippy::unwrap_used)]

#[cfg(feature = "apns")]
mod apns;
mod common;
mod config_checks;
// The shipped configurations contain a WebPush app.
#[cfg(feature = "webpush")]
mod configs;
mod dispatch;
mod edge;
#[cfg(feature = "email")]
mod email;
#[cfg(feature = "fcm")]
mod fcm;
mod handlers;
mod leniency;
mod lifecycle;
mod limits;
mod observability;
mod store;
#[cfg(feature = "webpush")]
mod webpush;
