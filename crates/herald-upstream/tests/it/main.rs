//! The upstream client against real servers on 127.0.0.1: TLS and ALPN, HTTP/2, timeouts and
//! broken connections, the per-origin cap, the connect policy, the proxy, and error texts.

mod support;

mod errors;
mod limits;
mod policy;
mod proxy;
mod timeouts;
mod tls;
