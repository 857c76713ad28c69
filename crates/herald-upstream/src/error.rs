//! [`UpstreamError`] (one request failed) and [`BuildError`] (the client cannot be built), and
//! the sorting of hyper's, rustls' and the connector's errors into the former.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::time::Duration;

use herald_core::{DeliveryError, Upstream};
use http::StatusCode;

use crate::connect::ConnectFailure;

type BoxError = Box<dyn StdError + Send + Sync>;

/// Why one request to an upstream failed. Every variant names the origin
/// (`scheme://host[:port]`) and nothing more of the URL.
///
/// `Display` is one short sentence; the causes are the [`source`](StdError::source) chain, and
/// `{:#}` prints both on one line.
#[derive(Debug)]
#[non_exhaustive]
pub enum UpstreamError {
    /// No connection within the connect timeout (`connecting`), or no complete answer within
    /// the request timeout.
    Timeout {
        /// The origin.
        origin: String,
        /// The timeout that ran out.
        after: Duration,
        /// Whether it was the connect timeout.
        connecting: bool,
    },
    /// The connection could not be made or was lost: name not resolved, refused, reset, closed
    /// mid-answer.
    Connect {
        /// The origin.
        origin: String,
        /// What failed.
        source: BoxError,
    },
    /// TLS failed: unknown or expired certificate, name mismatch, no common protocol, the
    /// client certificate refused. [`UpstreamError::tls_error`] has rustls' verdict when it is
    /// known as such (an alert the server sends after the handshake, as TLS 1.3 servers do for
    /// a refused client certificate, reaches an HTTP/2 client only as text).
    Tls {
        /// The origin.
        origin: String,
        /// What failed.
        source: BoxError,
    },
    /// The proxy could not be reached or did not open the tunnel.
    Proxy {
        /// The origin the tunnel was for.
        origin: String,
        /// The proxy's origin (never its credentials).
        proxy: String,
        /// The proxy's answer to `CONNECT`, when it gave one (407: credentials missing or wrong).
        status: Option<StatusCode>,
        /// What failed.
        source: BoxError,
    },
    /// The connect policy refused every address of the destination; nothing was dialled.
    Refused {
        /// The origin.
        origin: String,
        /// The policy's reason.
        reason: String,
    },
    /// The upstream answered something that is not HTTP, broke the HTTP/2 protocol, or did not
    /// negotiate HTTP/2 when it was required.
    Protocol {
        /// The origin.
        origin: String,
        /// What was wrong.
        source: BoxError,
    },
    /// The request cannot be sent as given (not an absolute `http`/`https` URL, user info in it).
    InvalidRequest {
        /// The origin, as far as there is one.
        origin: String,
        /// What is wrong.
        reason: &'static str,
    },
}

impl UpstreamError {
    /// The origin the request was for.
    pub fn origin(&self) -> &str {
        match self {
            UpstreamError::Timeout { origin, .. }
            | UpstreamError::Connect { origin, .. }
            | UpstreamError::Tls { origin, .. }
            | UpstreamError::Proxy { origin, .. }
            | UpstreamError::Refused { origin, .. }
            | UpstreamError::Protocol { origin, .. }
            | UpstreamError::InvalidRequest { origin, .. } => origin,
        }
    }

    /// Whether the same request may succeed later. Everything but a policy refusal or an
    /// invalid request: a TLS or proxy failure is the operator's to fix, and then it will.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, UpstreamError::Refused { .. } | UpstreamError::InvalidRequest { .. })
    }

    /// rustls' verdict, for a [`UpstreamError::Tls`] that has it.
    pub fn tls_error(&self) -> Option<&rustls::Error> {
        match self {
            UpstreamError::Tls { source, .. } => find::<rustls::Error>(&**source),
            _ => None,
        }
    }

    /// Whether a timeout ran out.
    pub fn is_timeout(&self) -> bool {
        matches!(self, UpstreamError::Timeout { .. })
    }

    /// A short label for the `reason` of metrics and outcome records: `timeout`, `connect`,
    /// `tls`, `proxy`, `refused`, `protocol` or `invalid_request`.
    pub fn label(&self) -> &'static str {
        match self {
            UpstreamError::Timeout { .. } => "timeout",
            UpstreamError::Connect { .. } => "connect",
            UpstreamError::Tls { .. } => "tls",
            UpstreamError::Proxy { .. } => "proxy",
            UpstreamError::Refused { .. } => "refused",
            UpstreamError::Protocol { .. } => "protocol",
            UpstreamError::InvalidRequest { .. } => "invalid_request",
        }
    }

    /// What a delivery makes of a request that got no answer, unless the backend knows better
    /// (a refused client certificate, a stream the server did not process): transient when the
    /// same request may succeed later ([`Self::is_retryable`]), else the message is refused. The
    /// outcome's reason is [`Self::label`]; the message names the origin only, never the path,
    /// and its causes (`{:#}`: what TLS said about the certificate).
    pub fn into_delivery_error(self) -> DeliveryError {
        let (retryable, label) = (self.is_retryable(), self.label());
        let error = if retryable {
            DeliveryError::transient(format!("{self:#}"))
        } else {
            DeliveryError::message_refused(format!("{self}"))
        };
        error.with_upstream(Upstream::no_answer(label)).with_source(self)
    }
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let summary = match self {
            UpstreamError::Timeout { origin, after, connecting: true } => {
                format!("{origin}: no connection within {}", ms(*after))
            }
            UpstreamError::Timeout { origin, after, connecting: false } => {
                format!("{origin}: no answer within {}", ms(*after))
            }
            UpstreamError::Connect { origin, .. } => format!("{origin}: connection failed"),
            UpstreamError::Tls { origin, .. } => format!("{origin}: TLS failed"),
            UpstreamError::Proxy { origin, proxy, status: Some(status), .. } => {
                format!("{origin}: proxy {proxy} answered CONNECT with {status}")
            }
            UpstreamError::Proxy { origin, proxy, status: None, .. } => {
                format!("{origin}: no tunnel through proxy {proxy}")
            }
            UpstreamError::Refused { origin, reason } => {
                format!("{origin}: refused by the connect policy: {reason}")
            }
            UpstreamError::Protocol { origin, .. } => format!("{origin}: protocol error"),
            UpstreamError::InvalidRequest { origin, reason } => {
                format!("{origin}: invalid request: {reason}")
            }
        };
        if !f.alternate() {
            return f.write_str(&summary);
        }
        // `{:#}`: the causes too, each unless what is written already says it.
        let mut text = summary;
        let mut cause = self.source();
        while let Some(e) = cause {
            let said = e.to_string();
            if !text.contains(&said) {
                text.push_str(": ");
                text.push_str(&said);
            }
            cause = e.source();
        }
        f.write_str(&text)
    }
}

impl StdError for UpstreamError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            UpstreamError::Connect { source, .. }
            | UpstreamError::Proxy { source, .. }
            | UpstreamError::Protocol { source, .. }
            | UpstreamError::Tls { source, .. } => Some(&**source),
            UpstreamError::Timeout { .. }
            | UpstreamError::Refused { .. }
            | UpstreamError::InvalidRequest { .. } => None,
        }
    }
}

/// Why an [`crate::UpstreamClient`] cannot be built. The message names the configuration key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A setting is wrong; `key` is its name in the configuration (or the environment variable,
    /// or "client certificate").
    #[error("`{key}`: {reason}")]
    Invalid {
        /// The configuration key.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the TLS configuration.
    #[error("TLS setup failed: {0}")]
    Tls(#[source] rustls::Error),
}

fn ms(d: Duration) -> String {
    herald_core::config::format_duration(d)
}

/// `error` and its causes, looking inside `io::Error`s too (their `source` skips the error they
/// wrap, which is where hyper-rustls puts rustls' verdict) and inside h2's errors (which have no
/// `source`; a TLS alert after the handshake, e.g. a refused client certificate, is in there).
fn chain<'a>(
    error: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(error), |&e: &&'a (dyn StdError + 'static)| {
        if let Some(inner) = e.downcast_ref::<io::Error>().and_then(|io| io.get_ref()) {
            return Some(inner as &(dyn StdError + 'static));
        }
        if let Some(io) = e.downcast_ref::<h2::Error>().and_then(h2::Error::get_io) {
            return Some(io as &(dyn StdError + 'static));
        }
        e.source()
    })
}

/// The first error of type `T` in `error`'s chain.
pub(crate) fn find<'a, T: StdError + 'static>(
    error: &'a (dyn StdError + 'static),
) -> Option<&'a T> {
    chain(error).find_map(|e| e.downcast_ref::<T>())
}

/// Sorts an error of hyper-util's client (connecting or exchanging the request) for a request
/// to `origin` (over TLS when `https`).
pub(crate) fn classify(
    origin: &str,
    https: bool,
    error: hyper_util::client::legacy::Error,
) -> UpstreamError {
    let origin = origin.to_owned();
    if let Some(failure) = find::<ConnectFailure>(&error) {
        return match failure {
            ConnectFailure::Refused(refusal) => {
                UpstreamError::Refused { origin, reason: refusal.reason().to_owned() }
            }
            ConnectFailure::Timeout(after) => {
                UpstreamError::Timeout { origin, after: *after, connecting: true }
            }
            ConnectFailure::Proxy { proxy, status, .. } => UpstreamError::Proxy {
                origin,
                proxy: proxy.clone(),
                status: *status,
                source: Box::new(error),
            },
            ConnectFailure::NoHttp2 => UpstreamError::Protocol { origin, source: Box::new(error) },
            ConnectFailure::Resolve { .. } | ConnectFailure::Dial(_) => {
                UpstreamError::Connect { origin, source: Box::new(error) }
            }
        };
    }
    if let Some(tls) = find::<rustls::Error>(&error) {
        return UpstreamError::Tls { origin, source: Box::new(tls.clone()) };
    }
    if https && is_tls_layer_failure(&error) {
        return UpstreamError::Tls { origin, source: Box::new(error) };
    }
    if error.is_connect() || is_connection_loss(&error) {
        UpstreamError::Connect { origin, source: Box::new(error) }
    } else {
        UpstreamError::Protocol { origin, source: Box::new(error) }
    }
}

/// Sorts an error reading the answer's body.
pub(crate) fn classify_body(origin: &str, https: bool, error: hyper::Error) -> UpstreamError {
    let origin = origin.to_owned();
    if let Some(tls) = find::<rustls::Error>(&error) {
        return UpstreamError::Tls { origin, source: Box::new(tls.clone()) };
    }
    if https && is_tls_layer_failure(&error) {
        return UpstreamError::Tls { origin, source: Box::new(error) };
    }
    if is_connection_loss(&error) {
        UpstreamError::Connect { origin, source: Box::new(error) }
    } else {
        UpstreamError::Protocol { origin, source: Box::new(error) }
    }
}

/// Whether an I/O error of the kind tokio-rustls gives every TLS failure is in the chain. h2
/// keeps only the kind and text of an I/O error, so on HTTP/2 this is all that is left of a
/// rustls error; on a TLS connection nothing else produces that kind.
fn is_tls_layer_failure(error: &(dyn StdError + 'static)) -> bool {
    chain(error)
        .filter_map(|e| e.downcast_ref::<io::Error>())
        .any(|e| e.kind() == io::ErrorKind::InvalidData)
}

/// Whether the connection broke (as opposed to carrying something that is not HTTP).
fn is_connection_loss(error: &(dyn StdError + 'static)) -> bool {
    if find::<hyper::Error>(error)
        .is_some_and(|e| e.is_incomplete_message() || e.is_closed() || e.is_canceled())
    {
        return true;
    }
    chain(error).filter_map(|e| e.downcast_ref::<io::Error>()).any(|e| {
        matches!(
            e.kind(),
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::UnexpectedEof
                | io::ErrorKind::NotConnected
        )
    })
}
