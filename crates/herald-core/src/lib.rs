//! The heart of Herald, shared by the server and every backend crate.
//!
//! - [`model`]: the notify request as homeservers really send it, parsed leniently.
//! - [`raw`]: [`RawObject`], the raw-JSON objects that hold `content` and pusher `data`.
//! - [`backend`]: the small [`Backend`] trait every upstream implements, and the outcome classes
//!   (delivered / token dead / transient / credentials refused / message refused).
//! - [`glob`]: the one `*`/`?` [`Glob`] matcher (routing, WebPush's host allow-list).
//! - [`routing`]: mapping a device's `app_id` to the configured app, exact names first, then globs.
//! - [`log_backend`]: the always-compiled dry-run backend.
//! - [`config`]: value notations (durations) shared by every configuration section.
//! - [`redact`]: how pushkeys appear in logs (a short hash, never the key).
//! - [`sync`]: the poison-tolerant [`sync::lock`].

pub mod backend;
pub mod config;
pub mod glob;
pub mod log_backend;
pub mod model;
pub mod raw;
pub mod redact;
pub mod routing;
pub mod sync;

pub use backend::{
    parse_retry_after, AppContext, Backend, BackendFactory, BackendMetrics, BuildError,
    CallContext, DeliveryError, ErrorClass, MessageId, Outcome, Upstream,
};
pub use glob::Glob;
pub use model::{Counts, Device, Notification, NotifyRequest, ParseError, Priority};
pub use raw::RawObject;
pub use routing::{AppRouter, RoutingError};
