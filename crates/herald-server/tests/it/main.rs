//! Integration tests of the `herald` server: one test binary (link once), one module per area.

#![allow(unreachable_pub, missing_docs, clippy::unwrap_used)]

#[cfg(feature = "apns")]
mod apns;
mod common;
mod config_checks;
// The shipped configurations contain a WebPush app.
#[cfg(feature = "webpush")]
mod configs;
mod dashboard;
mod dispatch;
mod edge;
#[cfg(feature = "email")]
mod email;
#[cfg(feature = "fcm")]
mod fcm;
mod handlers;
mod herald_cli;
#[cfg(all(feature = "apns", feature = "fcm", feature = "webpush"))]
mod import_sygnal;
mod leniency;
mod lifecycle;
mod limits;
mod observability;
#[cfg(feature = "postgres")]
mod postgres;
mod reload;
// Through each compiled-in backend that talks to an upstream (`log` has none to test against).
#[cfg(any(feature = "webpush", feature = "apns", feature = "fcm", feature = "email"))]
mod send_test;
mod store;
#[cfg(feature = "postgres")]
mod store_contract;
mod systemd_unit;
#[cfg(feature = "webpush")]
mod webpush;
