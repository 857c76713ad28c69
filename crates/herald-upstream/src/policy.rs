//! [`ConnectPolicy`]: a backend's say over which addresses the client may dial.
//!
//! The client resolves a host itself, hands the addresses to the policy and dials only what the
//! policy returns. Judging the very addresses that get dialled (not a separate, earlier lookup)
//! is what makes the check immune to DNS rebinding. WebPush's SSRF guard is such a policy.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// Decides which resolved addresses of a destination may be connected to.
///
/// Called once per new connection (not per request: pooled connections are reused).
pub trait ConnectPolicy: Send + Sync + fmt::Debug + 'static {
    /// Sees the destination and the addresses it resolved to (the address itself when the host
    /// is a literal), in resolver order. Returns the addresses to try, in order, or refuses.
    /// Returning no address refuses too.
    fn allow(
        &self,
        target: &Target<'_>,
        addrs: Vec<SocketAddr>,
    ) -> Result<Vec<SocketAddr>, Refusal>;

    /// Called instead of [`ConnectPolicy::allow`] when the connection goes through a proxy: the
    /// proxy resolves the name, so only the host is known here. Allows by default; a policy
    /// that must see addresses can refuse what it cannot judge.
    fn allow_proxied(&self, target: &Target<'_>) -> Result<(), Refusal> {
        let _ = target;
        Ok(())
    }
}

/// Where a connection is going.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<'a> {
    /// `http` or `https`.
    pub scheme: &'a str,
    /// The host, lowercase; an IPv6 literal without its brackets.
    pub host: &'a str,
    /// The port (the scheme's default when the URL has none).
    pub port: u16,
}

impl Target<'_> {
    /// The host as an address, when it is a literal one.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

/// Why a [`ConnectPolicy`] refused a destination; becomes [`crate::UpstreamError::Refused`].
/// Name the host and the address if useful, never a path (the policy never sees one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(String);

impl Refusal {
    /// A refusal with this reason.
    pub fn new(reason: impl Into<String>) -> Self {
        Refusal(reason.into())
    }

    /// The reason.
    pub fn reason(&self) -> &str {
        &self.0
    }
}
