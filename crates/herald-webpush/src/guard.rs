//! The SSRF guard: which push endpoints Herald may connect to.
//!
//! Endpoints are URLs chosen by whoever registers a pusher, so a gateway that posts anywhere lets
//! clients probe the operator's internal network. Two checks:
//!
//! - [`EndpointPolicy::check_endpoint`], before anything is encrypted: the scheme (`https`, or
//!   `http` only when allow-listed), no user info, and literal addresses. It gives clear reasons.
//! - [`GuardedConnector`], the HTTP client's connector: it resolves the name itself, drops every
//!   non-public address the allow-list does not cover, and connects only to an address it checked.
//!   Checking the address actually connected to defeats DNS rebinding and names such as
//!   `localhost`; the pre-check alone could not.
//!
//! An allow-listed endpoint (`allowed_endpoints`, globs on `host` or `host:port`, matched against
//! the URL's host or the resolved address) may be plain http and may resolve anywhere.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use herald_core::BuildError;
use http::Uri;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An endpoint the policy refuses: no configuration change short of the allow-list will ever
/// deliver to it, so the device is rejected.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Refused(pub(crate) String);

/// A push endpoint that passed the pre-check.
#[derive(Debug)]
pub(crate) struct Endpoint {
    /// Where to send.
    pub(crate) uri: Uri,
    /// `scheme://host[:port]` (RFC 6454): the VAPID audience, and safe to log.
    pub(crate) origin: String,
}

/// What may be connected to.
#[derive(Debug)]
pub(crate) struct EndpointPolicy {
    allowed: Vec<HostGlob>,
}

impl EndpointPolicy {
    /// Compiles the `allowed_endpoints` patterns.
    pub(crate) fn new(patterns: &[String]) -> Result<Self, BuildError> {
        let allowed = patterns
            .iter()
            .map(|p| {
                let p = p.trim();
                if p.is_empty() || p.contains('/') {
                    Err(BuildError::new(format!(
                        "webpush: `allowed_endpoints` entry `{p}` must be a host or host:port \
                         pattern, without scheme or path"
                    )))
                } else {
                    Ok(HostGlob::new(p))
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(EndpointPolicy { allowed })
    }

    /// Checks an endpoint URL before anything is done for it.
    pub(crate) fn check_endpoint(&self, endpoint: &str) -> Result<Endpoint, Refused> {
        let uri: Uri = endpoint.parse().map_err(|_| Refused("endpoint is not a URL".into()))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(Refused("endpoint scheme is not https".into())),
        };
        let authority = uri.authority().ok_or_else(|| Refused("endpoint has no host".into()))?;
        if authority.as_str().contains('@') {
            return Err(Refused("endpoint carries user info".into()));
        }
        let host = authority.host().to_ascii_lowercase();
        if host.is_empty() {
            return Err(Refused("endpoint has no host".into()));
        }
        let default_port = if https { 443 } else { 80 };
        let port = authority.port_u16().unwrap_or(default_port);
        if port == 0 {
            return Err(Refused("endpoint port is 0".into()));
        }
        let literal = ip_literal(&host);
        let allowed =
            self.allows_host(&host, port) || literal.is_some_and(|ip| self.allows_ip(ip, port));
        if !https && !allowed {
            return Err(Refused(format!(
                "plain http endpoint {host}:{port} is not in allowed_endpoints"
            )));
        }
        if let (Some(ip), false) = (literal, allowed) {
            if let Some(class) = non_public(ip) {
                return Err(Refused(format!("endpoint address {host} is {class}")));
            }
        }
        let scheme = if https { "https" } else { "http" };
        let origin = if port == default_port {
            format!("{scheme}://{host}")
        } else {
            format!("{scheme}://{host}:{port}")
        };
        Ok(Endpoint { uri, origin })
    }

    fn allows_host(&self, host: &str, port: u16) -> bool {
        if self.allowed.is_empty() {
            return false;
        }
        let with_port = format!("{host}:{port}");
        self.allowed.iter().any(|g| g.matches(host) || g.matches(&with_port))
    }

    fn allows_ip(&self, ip: IpAddr, port: u16) -> bool {
        if self.allowed.is_empty() {
            return false;
        }
        let host = match ip.to_canonical() {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("[{v6}]"),
        };
        self.allows_host(&host, port)
    }

    /// Resolves `host` and connects to the first address the policy allows.
    async fn connect(&self, host: &str, port: u16) -> Result<TcpStream, BoxError> {
        let host_allowed = self.allows_host(host, port);
        let addrs: Vec<SocketAddr> = match ip_literal(host) {
            Some(ip) => vec![SocketAddr::new(ip, port)],
            None => tokio::net::lookup_host((host, port))
                .await
                .map_err(|e| format!("cannot resolve {host}: {e}"))?
                .collect(),
        };
        let mut refused = None;
        let mut last_error = None;
        for addr in addrs {
            // `::ffff:127.0.0.1` reaches 127.0.0.1: judge (and dial) the IPv4 address.
            let ip = addr.ip().to_canonical();
            if !host_allowed && !self.allows_ip(ip, port) {
                if let Some(class) = non_public(ip) {
                    refused.get_or_insert_with(|| {
                        format!("{host} resolves to {ip}, which is {class}")
                    });
                    continue;
                }
            }
            match TcpStream::connect(SocketAddr::new(ip, port)).await {
                Ok(stream) => {
                    // Requests are small and answered at once; don't let Nagle delay them.
                    stream.set_nodelay(true)?;
                    return Ok(stream);
                }
                Err(e) => last_error = Some(e),
            }
        }
        match (last_error, refused) {
            (Some(e), _) => Err(e.into()),
            (None, Some(reason)) => Err(Refused(reason).into()),
            (None, None) => Err(format!("{host} resolves to no address").into()),
        }
    }
}

/// The HTTP client's connector: every TCP connection goes through the policy.
#[derive(Debug, Clone)]
pub(crate) struct GuardedConnector {
    policy: Arc<EndpointPolicy>,
    connect_timeout: Duration,
}

impl GuardedConnector {
    pub(crate) fn new(policy: Arc<EndpointPolicy>, connect_timeout: Duration) -> Self {
        GuardedConnector { policy, connect_timeout }
    }
}

impl tower::Service<Uri> for GuardedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let policy = Arc::clone(&self.policy);
        let timeout = self.connect_timeout;
        Box::pin(async move {
            let host = uri.host().ok_or("URL without host")?.to_ascii_lowercase();
            let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
                Some("https") => 443,
                _ => 80,
            });
            match tokio::time::timeout(timeout, policy.connect(&host, port)).await {
                Ok(stream) => Ok(TokioIo::new(stream?)),
                Err(_) => Err(format!("connecting to {host}:{port} took over {timeout:?}").into()),
            }
        })
    }
}

/// The address in a URL host, IPv6 in brackets as URLs write it.
fn ip_literal(host: &str) -> Option<IpAddr> {
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    bare.parse().ok()
}

/// Why `ip` is not a public unicast address, or `None` when it is.
pub(crate) fn non_public(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => non_public_v4(v4),
        IpAddr::V6(v6) => non_public_v6(v6),
    }
}

fn non_public_v4(ip: Ipv4Addr) -> Option<&'static str> {
    Some(match ip.octets() {
        [0, ..] => "unspecified",
        [127, ..] => "loopback",
        [10, ..] | [172, 16..=31, ..] | [192, 168, ..] => "private",
        [169, 254, ..] => "link-local",
        [100, 64..=127, ..] => "shared address space (CGNAT)",
        [192, 0, 0, _] | [198, 18..=19, ..] => "reserved",
        [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _] => "reserved for documentation",
        [224..=239, ..] => "multicast",
        [240..=255, ..] => "reserved",
        _ => return None,
    })
}

fn non_public_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return non_public_v4(v4);
    }
    let s = ip.segments();
    Some(match s {
        [0, 0, 0, 0, 0, 0, 0, 0] => "unspecified",
        [0, 0, 0, 0, 0, 0, 0, 1] => "loopback",
        // NAT64 (RFC 6052): the IPv4 address in the last 32 bits is what gets reached.
        [0x64, 0xff9b, 0, 0, 0, 0, a, b] => {
            return non_public_v4(Ipv4Addr::from((u32::from(a) << 16) | u32::from(b)))
        }
        // 6to4 (RFC 3056): likewise, in bits 16..48.
        [0x2002, a, b, ..] => {
            return non_public_v4(Ipv4Addr::from((u32::from(a) << 16) | u32::from(b)))
        }
        [a, ..] if a & 0xfe00 == 0xfc00 => "private (unique local)",
        [a, ..] if a & 0xffc0 == 0xfe80 => "link-local",
        [a, ..] if a & 0xffc0 == 0xfec0 => "private (site-local)",
        [a, ..] if a & 0xff00 == 0xff00 => "multicast",
        [0x2001, 0xdb8, ..] => "reserved for documentation",
        // 2001::/23: IETF protocol assignments (Teredo, benchmarking, ORCHID …).
        [0x2001, b, ..] if b < 0x200 => "reserved",
        // Global unicast is 2000::/3; everything else (IPv4-compatible, discard …) is special.
        [a, ..] if a & 0xe000 != 0x2000 => "reserved",
        _ => return None,
    })
}

/// A case-insensitive `*`/`?` pattern on `host` or `host:port`.
#[derive(Debug)]
struct HostGlob(Vec<char>);

impl HostGlob {
    fn new(pattern: &str) -> Self {
        HostGlob(pattern.to_ascii_lowercase().chars().collect())
    }

    fn matches(&self, text: &str) -> bool {
        // Iterative wildcard matching with single-star backtracking.
        let pattern = &self.0;
        let text: Vec<char> = text.chars().collect();
        let (mut p, mut t) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while t < text.len() {
            match pattern.get(p) {
                Some('*') => {
                    star = Some((p, t));
                    p += 1;
                }
                Some(c) if *c == '?' || *c == text[t] => (p, t) = (p + 1, t + 1),
                _ => match star {
                    Some((sp, st)) => {
                        star = Some((sp, st + 1));
                        (p, t) = (sp + 1, st + 1);
                    }
                    None => return false,
                },
            }
        }
        pattern[p..].iter().all(|c| *c == '*')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(patterns: &[&str]) -> EndpointPolicy {
        EndpointPolicy::new(&patterns.iter().map(|p| p.to_string()).collect::<Vec<_>>())
            .expect("patterns")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn classifies_addresses() {
        for (addr, class) in [
            ("127.0.0.1", "loopback"),
            ("10.0.0.1", "private"),
            ("172.31.255.1", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local"),
            ("100.64.0.1", "shared address space (CGNAT)"),
            ("0.0.0.0", "unspecified"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "reserved"),
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:10.1.2.3", "private"),
            ("fd00::1", "private (unique local)"),
            ("fe80::1", "link-local"),
            ("ff02::1", "multicast"),
            ("64:ff9b::a9fe:a9fe", "link-local"),
            ("2002:7f00:1::", "loopback"),
            ("2001:db8::1", "reserved for documentation"),
            ("2001::1", "reserved"),
            ("::127.0.0.1", "reserved"),
        ] {
            assert_eq!(non_public(ip(addr)), Some(class), "{addr}");
        }
        for addr in [
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2a00:1450:4001::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert_eq!(non_public(ip(addr)), None, "{addr}");
        }
    }

    #[test]
    fn pre_check_refuses_with_reasons() {
        let p = policy(&[]);
        let refused = |url: &str| p.check_endpoint(url).expect_err(url).0;
        assert!(refused("ftp://push.example/x").contains("scheme"));
        assert!(refused("/relative").contains("scheme"));
        assert!(refused("not a url").contains("not a URL"));
        assert!(refused("http://push.example/x").contains("plain http"));
        assert!(refused("https://user:pw@push.example/x").contains("user info"));
        assert!(refused("https://127.0.0.1/x").contains("loopback"));
        assert!(refused("https://10.0.0.1/x").contains("private"));
        assert!(refused("https://169.254.169.254/latest").contains("link-local"));
        assert!(refused("https://[::1]:8443/x").contains("loopback"));
        assert!(refused("https://[::ffff:127.0.0.1]/x").contains("loopback"));
        // A name passes the pre-check; the connector judges what it resolves to.
        p.check_endpoint("https://localhost/x").expect("names are resolved later");
    }

    #[test]
    fn origins_omit_default_ports() {
        let p = policy(&["127.0.0.1:*"]);
        let e = p.check_endpoint("https://Push.Example:443/wpush/v2/abc?x=1").expect("ok");
        assert_eq!(e.origin, "https://push.example");
        let e = p.check_endpoint("https://push.example:8443/x").expect("ok");
        assert_eq!(e.origin, "https://push.example:8443");
        let e = p.check_endpoint("http://127.0.0.1:9000/x").expect("allowed");
        assert_eq!(e.origin, "http://127.0.0.1:9000");
    }

    #[test]
    fn allow_list_matches_host_port_and_addresses() {
        let p = policy(&["127.0.0.1:*", "[::1]:8443", "*.internal", "10.0.0.1"]);
        assert!(p.check_endpoint("http://127.0.0.1:1234/x").is_ok());
        assert!(p.check_endpoint("http://[::ffff:127.0.0.1]:1234/x").is_ok(), "canonical form");
        assert!(p.check_endpoint("https://[::1]:8443/x").is_ok());
        assert!(p.check_endpoint("https://[::1]:8444/x").is_err(), "other port");
        assert!(p.check_endpoint("http://push.internal/x").is_ok());
        assert!(p.check_endpoint("http://PUSH.INTERNAL:81/x").is_ok());
        assert!(p.check_endpoint("https://10.0.0.1/x").is_ok(), "pattern without port: any port");
        assert!(p.check_endpoint("https://10.0.0.2/x").is_err());
        assert!(p.allows_ip(ip("127.0.0.1"), 80));
        assert!(p.allows_ip(ip("::ffff:127.0.0.1"), 80));
        assert!(!p.allows_ip(ip("127.0.0.2"), 80));
        assert!(EndpointPolicy::new(&["https://x".to_string()]).is_err());
    }

    #[test]
    fn globs() {
        let g = HostGlob::new("*.Example.org:?43");
        assert!(g.matches("push.example.org:443"));
        assert!(g.matches("a.b.example.org:843"));
        assert!(!g.matches("example.org:443"));
        assert!(!g.matches("push.example.org:4430"));
        assert!(HostGlob::new("*").matches("anything:1"));
    }
}
