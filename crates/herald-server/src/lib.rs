//! The `herald` server, as a library so tests and benchmarks can run it in-process.
//!
//! The data path, in module order: [`http`] reads and parses the request → [`dispatch`] routes each
//! device by app_id and claims it ([`claims`], [`store`]) → [`delivery`] calls the backend with
//! deadline, retries and caps → [`dispatch`] records and answers. [`config`], [`registry`] and
//! [`server`] assemble it; [`metrics`] and [`telemetry`] observe it.

pub mod claims;
pub mod config;
pub mod delivery;
pub mod dispatch;
pub mod http;
pub mod metrics;
pub mod registry;
pub mod server;
pub mod store;
pub mod telemetry;

pub use config::Config;
pub use registry::BackendRegistry;
pub use server::{Server, StartError};
