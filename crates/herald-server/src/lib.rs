//! The `herald` server, as a library so tests and benchmarks can run it in-process.
//!
//! The data path, in module order: [`http`] reads and parses the request (requests hyper itself
//! rejects get their JSON body from [`protocol_errors`]) → [`dispatch`] routes each
//! device by app_id and claims it ([`claims`], [`store`]) → [`delivery`] calls the backend with
//! deadline, retries and caps → [`dispatch`] records and answers. [`config`], [`registry`] and
//! [`server`] assemble it, [`reload`] swaps the apps while serving; [`metrics`] and [`telemetry`] observe it; [`memory`] returns free heap
//! memory to the system after bursts. [`import_sygnal`] and [`send_test`] are the operator
//! commands `herald import-sygnal` and `herald send-test`.

pub mod access_log;
pub mod claims;
pub mod config;
pub mod connections;
pub mod delivery;
pub mod dispatch;
pub mod http;
pub mod import_sygnal;
pub mod memory;
pub mod metrics;
pub mod metrics_listener;
pub mod protocol_errors;
pub mod registry;
pub mod reload;
pub mod send_test;
pub mod server;
pub mod store;
pub mod telemetry;

pub use config::Config;
pub use registry::BackendRegistry;
pub use server::{RunError, Server, StartError};
