//! Herald's email backend (`kind = "email"`): Matrix notifications as mail, over SMTP.
//!
//! The pushkey of an email pusher is the recipient's address; the pusher's `data` may carry
//! `include_content: false` (say who wrote where, not what). Each notification becomes one
//! multipart (plain text + HTML) mail rendered from templates that ship with the crate and can be
//! replaced per app; everything from the notification is treated as untrusted.
//!
//! - [`config`]: the app's configuration section, and `smtp_url`.
//! - `backend`: [`EmailBackend`], the factory and one delivery.
//! - `address`: the pushkey as a recipient, and `allowed_domains`.
//! - `limit`: the per-address limit (`governor`).
//! - `message`: the template context, the templates (`minijinja`) and the MIME message
//!   (`lettre`).
//! - `smtp`: the connection pool and one SMTP transaction per attempt.
//! - `classify`: an SMTP answer and the command it answered → an outcome.
//!
//! `docs/backends/email.md` explains setup for operators.

mod address;
mod backend;
mod classify;
pub mod config;
mod limit;
mod message;
mod smtp;

pub use backend::EmailBackend;
pub use config::EmailConfig;
