//! Integration tests of the `herald` server: one test binary (link once), one module per area.

#![allow(unreachable_pub, missing_docs, clippy::unwrap_used)]

mod common;
mod configs;
mod dispatch;
mod handlers;
mod lifecycle;
mod webpush;
