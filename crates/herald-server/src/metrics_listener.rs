//! `server.metrics_listen`: `GET /metrics` on an address of its own, so the metrics need not be
//! reachable wherever the notify port is (often the internet, through a proxy).
//!
//! Scrapers are few, so this listener is simpler than the notify one: HTTP/1.1 with the same
//! header-read timeout, at most [`MAX_CONNECTIONS`] connections (more are closed at once: the
//! address may still be reachable by more than the scraper), and it stops with the server.

use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};

use crate::metrics::Metrics;

/// Connections open at once on the metrics address.
pub const MAX_CONNECTIONS: usize = 64;

/// Serves `/metrics` on `listener` until the returned task is aborted; aborting it also ends
/// every connection it opened.
pub fn spawn(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    header_read_timeout: Duration,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let router = crate::http::metrics_router(metrics);
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new()).header_read_timeout(header_read_timeout).keep_alive(true);
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        // Owned here, so that aborting this task drops (and aborts) every connection.
        let mut connections = JoinSet::new();
        let mut warn = crate::connections::WarnEvery::second();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let stream = match accepted {
                        Ok((stream, _)) => stream,
                        Err(e) => {
                            if warn.ready() {
                                tracing::warn!(error = %e, "metrics listener: accept failed");
                            }
                            // Out of descriptors and the like: do not spin.
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        drop(stream);
                        continue;
                    };
                    let service = TowerToHyperService::new(router.clone());
                    let connection = http.serve_connection(TokioIo::new(stream), service);
                    connections.spawn(async move {
                        if let Err(e) = connection.await {
                            tracing::debug!(error = %e, "metrics connection ended with an error");
                        }
                        drop(slot);
                    });
                }
                // Reap finished connections so the set does not grow.
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    })
}
