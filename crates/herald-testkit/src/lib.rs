//! Test helpers for Herald, used as a dev-dependency only.
//!
//! - [`apns`]: a fake APNs on a real socket: HTTP/2 over TLS, provider-token or client-certificate
//!   checks as Apple does them, scripted answers (GOAWAY, hangs, a low `MAX_CONCURRENT_STREAMS`).
//! - [`behaviour`]: the behaviour suite every backend passes, through a real server, against the
//!   backend's own fake upstream.
//! - [`scripted`]: a backend whose answers a test scripts per pushkey, and which records what it
//!   delivered, for testing the server's dispatch, retry and dedup behaviour.
//! - [`fake_push`]: a WebPush push service on a real socket that verifies VAPID, decrypts
//!   aes128gcm bodies and answers as scripted.
//! - [`fcm`]: a fake Google OAuth token endpoint and FCM HTTP v1 endpoint that verify the
//!   JWT-bearer assertion, the bearer token and the message as Google does.
//! - [`notify`]: builders for notify request bodies as real homeservers send them.
//! - [`postgres`]: throwaway PostgreSQL clusters (initdb + postgres in a temporary directory) from
//!   Debian's binaries, which can be stopped and restarted for outage tests.
//! - [`proxy`]: an HTTP `CONNECT` proxy, for testing outbound proxy support.
//! - [`smtp`]: a real SMTP server (Python's aiosmtpd, in a venv under `target/`), scripted, for
//!   the email backend.
//! - [`tls`]: a test certificate authority generated per run, for fakes that serve HTTPS.

pub mod apns;
pub mod behaviour;
pub mod fake_push;
pub mod fcm;
pub mod logs;
pub mod notify;
pub mod postgres;
pub mod proxy;
pub mod scripted;
pub mod smtp;
pub mod tls;
