//! [`UpstreamConfig`]: the operator-facing settings of an upstream client.
//!
//! Every field is optional so that two layers can be merged: a server-wide section and a
//! per-app one ([`UpstreamConfig::layered_over`]); what neither sets takes the documented
//! default. A backend nests it as a table (`#[serde(default)] upstream: UpstreamConfig`), which
//! keeps `deny_unknown_fields` working on both sides — serde cannot combine that attribute with
//! `#[serde(flatten)]`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The settings of an [`crate::UpstreamClient`] as they appear in a configuration file.
///
/// ```toml
/// [apps."org.example.web".upstream]
/// connect_timeout = "5s"
/// request_timeout = "10s"
/// ca_file = "/etc/herald/extra-roots.pem"
/// system_roots = false
/// proxy = "http://user:pass@proxy.internal:3128"   # or "none"; unset: HTTPS_PROXY etc.
/// no_proxy = "push.internal, 10.0.0.0/8"            # only with `proxy`
/// max_connections_per_host = 64
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    #[serde(default, deserialize_with = "opt_duration::deserialize")]
    connect_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "opt_duration::deserialize")]
    request_timeout: Option<Duration>,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default)]
    system_roots: Option<bool>,
    #[serde(default)]
    proxy: Option<String>,
    #[serde(default)]
    no_proxy: Option<String>,
    #[serde(default)]
    max_connections_per_host: Option<usize>,
}

impl UpstreamConfig {
    /// Default time to resolve, connect (through the proxy, if any) and finish the TLS handshake.
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    /// Default time for one request, from the first connect attempt to the end of the answer.
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
    /// Default cap on concurrent requests, and on open connections, per origin.
    pub const DEFAULT_MAX_CONNECTIONS_PER_HOST: usize = 64;
    /// The `proxy` value that disables proxies, including those from the environment.
    pub const NO_PROXY: &'static str = "none";

    /// Fills every setting `self` leaves unset from `fallback` (e.g. a per-app section over the
    /// server-wide one).
    pub fn layered_over(self, fallback: &UpstreamConfig) -> UpstreamConfig {
        UpstreamConfig {
            connect_timeout: self.connect_timeout.or(fallback.connect_timeout),
            request_timeout: self.request_timeout.or(fallback.request_timeout),
            ca_file: self.ca_file.or_else(|| fallback.ca_file.clone()),
            system_roots: self.system_roots.or(fallback.system_roots),
            proxy: self.proxy.or_else(|| fallback.proxy.clone()),
            no_proxy: self.no_proxy.or_else(|| fallback.no_proxy.clone()),
            max_connections_per_host: self
                .max_connections_per_host
                .or(fallback.max_connections_per_host),
        }
    }

    /// Makes a relative `ca_file` relative to `base` (the configuration file's directory).
    pub fn resolve_paths(mut self, base: &Path) -> UpstreamConfig {
        if let Some(path) = &self.ca_file {
            if path.is_relative() {
                self.ca_file = Some(base.join(path));
            }
        }
        self
    }

    /// Sets `connect_timeout`.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// Sets `request_timeout`.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = Some(timeout);
        self
    }

    /// Sets `ca_file`.
    pub fn with_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// Sets `system_roots`.
    pub fn with_system_roots(mut self, enabled: bool) -> Self {
        self.system_roots = Some(enabled);
        self
    }

    /// Sets `proxy` (a URL, or [`Self::NO_PROXY`]).
    pub fn with_proxy(mut self, proxy: impl Into<String>) -> Self {
        self.proxy = Some(proxy.into());
        self
    }

    /// Sets `no_proxy`.
    pub fn with_no_proxy(mut self, no_proxy: impl Into<String>) -> Self {
        self.no_proxy = Some(no_proxy.into());
        self
    }

    /// Sets `max_connections_per_host`.
    pub fn with_max_connections_per_host(mut self, cap: usize) -> Self {
        self.max_connections_per_host = Some(cap);
        self
    }

    /// Time allowed to establish a connection: name resolution, TCP, the proxy's `CONNECT` and
    /// the TLS handshake.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout.unwrap_or(Self::DEFAULT_CONNECT_TIMEOUT)
    }

    /// Time allowed for one request, connecting included, to the end of the answer. Backends
    /// pass the smaller of this and the time left to their own deadline to
    /// [`crate::UpstreamClient::send`].
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout.unwrap_or(Self::DEFAULT_REQUEST_TIMEOUT)
    }

    /// A PEM bundle of extra trust anchors, added to the webpki roots.
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// Whether the operating system's trust store is trusted too.
    pub fn system_roots(&self) -> bool {
        self.system_roots.unwrap_or(false)
    }

    /// The configured proxy: a URL, `"none"`, or unset (the environment decides).
    pub fn proxy(&self) -> Option<&str> {
        self.proxy.as_deref()
    }

    /// Hosts that bypass the configured `proxy` (the `NO_PROXY` syntax).
    pub fn no_proxy(&self) -> Option<&str> {
        self.no_proxy.as_deref()
    }

    /// The cap on concurrent requests and on open connections per origin.
    pub fn max_connections_per_host(&self) -> usize {
        self.max_connections_per_host.unwrap_or(Self::DEFAULT_MAX_CONNECTIONS_PER_HOST)
    }
}

/// `Option<Duration>` in Herald's duration notation.
mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    struct Wrapped(#[serde(with = "herald_core::config::duration")] Duration);

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Option::<Wrapped>::deserialize(d).map(|w| w.map(|Wrapped(d)| d))
    }
}
