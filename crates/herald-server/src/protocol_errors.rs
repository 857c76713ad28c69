//! JSON bodies for the errors hyper answers by itself.
//!
//! hyper's HTTP/1 server answers a request it cannot parse without calling the service: 400 for a
//! bad request line, header or `Content-Length`, 414 for an over-long URI, 431 for too many or too
//! large headers — each with an empty body and no `Content-Type`. Every other Herald error is a
//! Matrix JSON error, and a client (or an operator reading a capture) should not need a special case
//! for these. hyper has no hook for parse errors (`http1::Builder` only sets the limits), so
//! [`JsonProtocolErrors`] wraps the connection's socket, recognises hyper's automatic answer on its
//! way out and sends the same status with a JSON body instead. It also counts those answers in
//! `herald_http_requests_total{route="malformed"}`, since no handler ever sees them.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::metrics::{Metrics, Route};

/// Largest request head (request line and headers) accepted; bigger → 431.
///
/// hyper's own bound is its read buffer (about 400 KB), which a homeserver never needs and which
/// every slow connection could hold; a homeserver's notify request head is a few hundred bytes.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Most header lines accepted (hyper's default, stated here so the 431 message can name it).
pub const MAX_HEADERS: usize = 100;

/// A socket whose bodiless protocol-error answers from hyper are rewritten as Matrix JSON errors.
pub struct JsonProtocolErrors<S> {
    inner: S,
    /// A rewritten answer not yet fully handed to `inner`; written before anything else.
    pending: Vec<u8>,
    written: usize,
    metrics: Arc<Metrics>,
}

impl<S> JsonProtocolErrors<S> {
    /// Wraps one accepted connection.
    pub fn new(inner: S, metrics: Arc<Metrics>) -> Self {
        JsonProtocolErrors { inner, pending: Vec::new(), written: 0, metrics }
    }
}

impl<S: AsyncWrite + Unpin> JsonProtocolErrors<S> {
    /// Writes out the rewritten answer, if any.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.pending.len() {
            let n =
                ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        Poll::Ready(Ok(()))
    }

    /// If `chunk` is hyper's automatic error answer, takes it over and returns how many bytes of
    /// the caller's data that consumed.
    fn take_over(&mut self, chunk: &[u8], cx: &mut Context<'_>) -> Option<io::Result<usize>> {
        let (status, replacement) = rewrite(chunk)?;
        self.metrics.count_request(Route::Malformed, status);
        self.pending = replacement;
        self.written = 0;
        // Start writing now; whatever does not fit yet goes out on the flush hyper does next
        // (the waker is registered either way).
        match self.poll_drain(cx) {
            Poll::Ready(Err(e)) => Some(Err(e)),
            Poll::Ready(Ok(())) | Poll::Pending => Some(Ok(chunk.len())),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for JsonProtocolErrors<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for JsonProtocolErrors<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        if let Some(result) = this.take_over(buf, cx) {
            return Poll::Ready(result);
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        // hyper hands an automatic answer over as one buffer (a head and no body).
        let mut non_empty = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(only), None) = (non_empty.next(), non_empty.next()) {
            if let Some(result) = this.take_over(only, cx) {
                return Poll::Ready(result);
            }
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// The Matrix error for each status hyper answers by itself.
fn matrix_error(status: u16) -> Option<(&'static str, String)> {
    Some(match status {
        400 => (
            "M_UNKNOWN",
            "malformed HTTP request (request line, a header or Content-Length)".to_owned(),
        ),
        414 => ("M_TOO_LARGE", "request URI is too long".to_owned()),
        431 => (
            "M_TOO_LARGE",
            format!(
                "request headers are too large (at most {MAX_HEADERS} headers and \
                 {MAX_HEADER_BYTES} bytes)"
            ),
        ),
        _ => return None,
    })
}

/// Recognises hyper's automatic answer — exactly one response head, status 400/414/431,
/// `content-length: 0` and no `content-type` — and returns its status and a replacement with a
/// JSON body. Herald's own answers always carry a `content-type`, so they never match. Unless a
/// client pipelines requests (no homeserver does), hyper has flushed the previous answer before it
/// parses the next request, so the automatic answer is written on its own; a pipelined bad request
/// may still get hyper's empty body.
fn rewrite(chunk: &[u8]) -> Option<(u16, Vec<u8>)> {
    // Cheapest checks first: this runs on every write of every response.
    if !(chunk.starts_with(b"HTTP/1.1 ") || chunk.starts_with(b"HTTP/1.0 ")) {
        return None;
    }
    let status: u16 = std::str::from_utf8(chunk.get(9..12)?).ok()?.parse().ok()?;
    let (errcode, error) = matrix_error(status)?;
    let end = chunk.windows(4).position(|w| w == b"\r\n\r\n")?;
    if end + 4 != chunk.len() {
        return None; // a body or a further response follows: not an automatic answer
    }
    let head = std::str::from_utf8(&chunk[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let mut kept = Vec::new();
    let mut empty_body = false;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        if name.eq_ignore_ascii_case("content-type") {
            return None;
        }
        if name.eq_ignore_ascii_case("content-length") {
            empty_body = value.trim() == "0";
        } else {
            kept.push(line);
        }
    }
    if !empty_body {
        return None;
    }
    let body = serde_json::json!({ "errcode": errcode, "error": error }).to_string();
    let mut out = String::with_capacity(head.len() + body.len() + 64);
    out.push_str(status_line);
    out.push_str("\r\n");
    for line in kept {
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("content-type: application/json\r\n");
    out.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    out.push_str(&body);
    Some((status, out.into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    const HYPER_431: &[u8] =
        b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\n\
        content-length: 0\r\ndate: Mon, 23 Nov 2026 08:59:15 GMT\r\n\r\n";

    fn split(bytes: &[u8]) -> (String, serde_json::Value) {
        let text = std::str::from_utf8(bytes).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        (head.to_owned(), serde_json::from_str(body).unwrap())
    }

    #[test]
    fn hypers_answer_gets_a_json_body() {
        let (status, out) = rewrite(HYPER_431).unwrap();
        assert_eq!(status, 431);
        let (head, body) = split(&out);
        assert!(head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"), "{head}");
        assert!(head.contains("\r\nconnection: close"), "{head}");
        assert!(head.contains("\r\ndate: Mon, 23 Nov 2026"), "{head}");
        assert!(head.contains("\r\ncontent-type: application/json"), "{head}");
        let length = format!("\r\ncontent-length: {}", body.to_string().len());
        assert!(head.contains(&length), "{head}");
        assert_eq!(head.matches("content-length").count(), 1, "{head}");
        assert_eq!(body["errcode"], "M_TOO_LARGE");
    }

    #[test]
    fn herald_answers_are_left_alone() {
        // Our own 400 has a content-type and a body.
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n\
            content-length: 2\r\n\r\n{}";
        assert!(rewrite(ours).is_none());
        let head_only = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n\
            content-length: 2\r\n\r\n";
        assert!(rewrite(head_only).is_none());
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        assert!(rewrite(ok).is_none());
        assert!(rewrite(b"{\"errcode\":\"HTTP/1.1 400 \"}").is_none());
        assert!(rewrite(b"HTTP/1.1 4").is_none());
        assert!(rewrite(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n").is_none());
    }

    /// A writer that accepts at most `step` bytes per call and is not ready every other call.
    struct Trickle {
        out: Vec<u8>,
        step: usize,
        ready: bool,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.ready = !self.ready;
            if !self.ready {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let n = buf.len().min(self.step);
            self.out.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn partial_writes_deliver_the_whole_answer_in_order() {
        let metrics = Arc::new(Metrics::new());
        let trickle = Trickle { out: Vec::new(), step: 7, ready: false };
        let mut io = JsonProtocolErrors::new(trickle, metrics.clone());
        io.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok")
            .await
            .unwrap();
        io.write_all(HYPER_431).await.unwrap();
        io.shutdown().await.unwrap();
        let out = String::from_utf8(io.inner.out.clone()).unwrap();
        let (first, second) = out.split_at(out.find("HTTP/1.1 431").unwrap());
        assert!(first.ends_with("\r\n\r\nok"), "{first}");
        let (_, body) = split(second.as_bytes());
        assert_eq!(body["errcode"], "M_TOO_LARGE");
        assert!(
            metrics
                .render()
                .contains(r#"herald_http_requests_total{route="malformed",status="431"} 1"#),
            "{}",
            metrics.render()
        );
    }
}
