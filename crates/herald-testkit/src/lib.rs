//! Test helpers for Herald, used as a dev-dependency only.
//!
//! - [`behaviour`]: the behaviour suite every backend passes, through a real server, against the
//!   backend's own fake upstream.
//! - [`scripted`]: a backend whose answers a test scripts per pushkey, and which records what it
//!   delivered, for testing the server's dispatch, retry and dedup behaviour.
//! - [`fake_push`]: a WebPush push service on a real socket that verifies VAPID, decrypts
//!   aes128gcm bodies and answers as scripted.
//! - [`notify`]: builders for notify request bodies as real homeservers send them.
//! - [`postgres`]: throwaway PostgreSQL clusters (initdb + postgres in a temporary directory) from
//!   Debian's binaries, which can be stopped and restarted for outage tests.
//! - [`proxy`]: an HTTP `CONNECT` proxy, for testing outbound proxy support.
//! - [`tls`]: a test certificate authority generated per run, for fakes that serve HTTPS.

pub mod behaviour;
pub mod fake_push;
pub mod logs;
pub mod notify;
pub mod postgres;
pub mod proxy;
pub mod scripted;
pub mod tls;
