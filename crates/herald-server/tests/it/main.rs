//! Integration tests of the `herald` server: one test binary (link once), one module per area.

#![allow(unreachable_pub, missing_docs, clippy::unwrap_used)]

mod common;
mod config_checks;
// The shipped configurations contain a WebPush app.
#[cfg(feature = "webpush")]
mod configs;
mod dispatch;
mod edge;
mod handlers;
mod leniency;
mod lifecycle;
mod limits;
mod observability;
#[cfg(feature = "postgres")]
mod postgres;
mod store;
#[cfg(feature = "postgres")]
mod store_contract;
#[cfg(feature = "webpush")]
mod webpush;
