//! Herald's one HTTP client for everything it posts to: push services (WebPush), APNs, FCM.
//!
//! Every backend needs the same things from HTTP, so they live here once:
//!
//! - hyper-util's pooled client over rustls (ring; no OpenSSL), HTTP/1.1 and HTTP/2 chosen by
//!   ALPN, or HTTP/2 only ([`UpstreamClientBuilder::http2_only`], for APNs and FCM), or HTTP/2
//!   without TLS by prior knowledge ([`UpstreamClientBuilder::http2_prior_knowledge`], for tests);
//! - trust roots: the webpki roots, plus an optional PEM bundle (`ca_file`) and optionally the
//!   operating system's store (`system_roots`); a client certificate when a backend needs one
//!   ([`UpstreamClientBuilder::client_identity`], APNs certificate auth);
//! - an outbound HTTP proxy (`proxy = "http://user:pass@host:port"`, always an HTTP `CONNECT`
//!   tunnel), or `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` from the environment when unset;
//! - a connect policy hook ([`ConnectPolicy`]) that sees every resolved address before it is
//!   dialled: WebPush's SSRF guard;
//! - a real cap on concurrent requests (and connections) per origin;
//! - one attempt per call, under one timeout covering connect, request and the whole answer,
//!   whose body is read to its end (up to a limit) so the connection goes back to the pool;
//! - typed errors ([`UpstreamError`]) that name the origin only. URL paths and queries carry
//!   push tokens, so neither errors nor logs (DEBUG, origin only) ever contain them.
//!
//! Errors follow the usual Rust convention: `Display` is one short sentence and the causes are
//! in [`std::error::Error::source`]; format with `{:#}` to get the sentence and its causes on one
//! line.
//!
//! The configuration a backend embeds is [`UpstreamConfig`]; `docs/upstream.md` describes it as
//! operators see it.

mod client;
mod config;
mod connect;
mod error;
mod limit;
mod policy;
mod tls;

pub use client::{UpstreamClient, UpstreamClientBuilder, UpstreamResponse};
pub use config::UpstreamConfig;
pub use error::{BuildError, UpstreamError};
pub use policy::{ConnectPolicy, Refusal, Target};

use http::Uri;

/// The default `User-Agent`: `herald/<version>`.
pub const DEFAULT_USER_AGENT: &str = concat!("herald/", env!("CARGO_PKG_VERSION"));

/// The default limit on the answer body kept by [`UpstreamClient::send`] (64 KiB).
pub const DEFAULT_MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The origin of `uri` as RFC 6454 serializes it: `scheme://host[:port]`, lowercase, the port
/// left out when it is the scheme's default. Safe to log: it never holds user info, a path or a
/// query. `"(no origin)"` when the URI has no scheme or host.
pub fn origin(uri: &Uri) -> String {
    match (uri.scheme_str(), uri.host()) {
        (Some(scheme), Some(host)) if !host.is_empty() => {
            let scheme = scheme.to_ascii_lowercase();
            let host = host.to_ascii_lowercase();
            match uri.port_u16() {
                Some(port) if Some(port) != default_port(&scheme) => {
                    format!("{scheme}://{host}:{port}")
                }
                _ => format!("{scheme}://{host}"),
            }
        }
        _ => "(no origin)".to_owned(),
    }
}

/// 80 for `http`, 443 for `https`.
pub(crate) fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        let o = |s: &str| origin(&s.parse().expect("uri"));
        assert_eq!(o("https://Push.Example:443/wpush/v2/token?x=1"), "https://push.example");
        assert_eq!(o("https://push.example:8443/x"), "https://push.example:8443");
        assert_eq!(o("http://127.0.0.1:80/x"), "http://127.0.0.1");
        assert_eq!(o("http://[::1]:9000/x"), "http://[::1]:9000");
        assert_eq!(o("https://user:secret@push.example/x"), "https://push.example");
        assert_eq!(o("/only/a/path"), "(no origin)");
    }
}
