//! Assembling and running a Herald server: open the store, build every app's backend, bind the
//! listener, serve HTTP/1.1 with a header-read timeout, prune the store in the background, and on
//! shutdown stop accepting, drain in-flight requests up to the grace period and flush the store.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use herald_core::{AppContext, AppRouter};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::config::{Config, ServerConfig};
use crate::delivery::{App, RetryPolicy};
use crate::dispatch::Dispatcher;
use crate::http::{router, AppState};
use crate::metrics::Metrics;
use crate::registry::BackendRegistry;
use crate::store::recent::RecentCache;
use crate::store::sqlite::{SqliteStore, SqliteStoreOptions};
use crate::store::DedupStore;

/// Why the server could not start; the message is for the operator.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartError(pub String);

/// A server that is bound and ready to run.
pub struct Server {
    listener: TcpListener,
    router: axum::Router,
    state: Arc<AppState>,
    config: ServerConfig,
    pruner: JoinHandle<()>,
}

/// Builds every app's backend and the router; no I/O beyond what backends do at build time.
pub fn build_apps(
    config: &Config,
    registry: &BackendRegistry,
    metrics: &Metrics,
) -> Result<AppRouter<Arc<App>>, StartError> {
    let mut apps = Vec::with_capacity(config.apps.len());
    for (key, table) in &config.apps {
        let settings = config.app_settings(table);
        let context = AppContext {
            app_id: key.clone(),
            data_dir: config.data_dir.clone(),
            config_dir: config.config_dir.clone(),
        };
        let backend = registry
            .build(&settings.kind, &context, settings.backend)
            .map_err(|e| StartError(format!("apps.\"{key}\": {e}")))?;
        let app = App {
            key: key.clone(),
            kind: settings.kind,
            backend,
            limiter: Semaphore::new(settings.max_concurrency),
            metrics: metrics.app(key),
        };
        apps.push((key.clone(), Arc::new(app)));
    }
    AppRouter::new(apps).map_err(|e| StartError(e.to_string()))
}

/// Opens the store named by the configuration.
pub async fn open_store(config: &Config) -> Result<Arc<dyn DedupStore>, StartError> {
    let url = config.store_url();
    if url.starts_with("sqlite:") {
        let options =
            SqliteStoreOptions { ttl: config.store.ttl, max_batch: config.store.max_batch };
        let store =
            SqliteStore::open(&url, options).await.map_err(|e| StartError(e.to_string()))?;
        Ok(Arc::new(RecentCache::new(store, config.store.recent_cache_entries, config.store.ttl)))
    } else {
        Err(StartError(format!(
            "`store.url`: unsupported store `{url}`; this build supports sqlite:// URLs"
        )))
    }
}

impl Server {
    /// Opens the store, builds the apps and binds the listener.
    pub async fn bind(config: &Config, registry: &BackendRegistry) -> Result<Server, StartError> {
        let metrics = Arc::new(Metrics::new());
        let apps = build_apps(config, registry, &metrics)?;
        let store = open_store(config).await?;
        let dispatcher = Arc::new(Dispatcher::new(
            apps,
            store.clone(),
            RetryPolicy::new(&config.delivery),
            metrics.app("_unknown"),
            metrics.store(),
        ));
        let state = Arc::new(AppState {
            dispatcher,
            metrics,
            body_limit: config.server.body_limit,
            body_read_timeout: config.server.body_read_timeout,
            request_deadline: config.server.request_deadline,
        });
        let listener = TcpListener::bind(config.server.listen)
            .await
            .map_err(|e| StartError(format!("cannot listen on {}: {e}", config.server.listen)))?;
        let pruner = tokio::spawn(prune_periodically(store, config.store.prune_interval));
        Ok(Server {
            listener,
            router: router(state.clone()),
            state,
            config: config.server.clone(),
            pruner,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.config.listen)
    }

    /// The router, for tests that call handlers without a socket.
    pub fn router(&self) -> axum::Router {
        self.router.clone()
    }

    /// Serves until `shutdown` resolves, then drains in-flight requests (up to the grace period)
    /// and closes the store.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(self.config.header_read_timeout)
            .keep_alive(true);
        let graceful = GracefulShutdown::new();
        tracing::info!(listen = %self.local_addr(), "herald is serving");
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _peer)) => {
                        let _ = stream.set_nodelay(true);
                        let service = TowerToHyperService::new(self.router.clone());
                        let connection = http.serve_connection(TokioIo::new(stream), service);
                        let connection = graceful.watch(connection);
                        tokio::spawn(async move {
                            if let Err(e) = connection.await {
                                tracing::debug!(error = %e, "connection ended with an error");
                            }
                        });
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                },
                () = &mut shutdown => break,
            }
        }
        drop(self.listener);
        let in_flight = self.state.metrics.in_flight.get();
        tracing::info!(in_flight, grace = ?self.config.shutdown_grace, "shutting down: draining");
        if tokio::time::timeout(self.config.shutdown_grace, graceful.shutdown()).await.is_err() {
            tracing::warn!("grace period over; closing remaining connections");
        }
        self.pruner.abort();
        self.state.dispatcher.store().close().await;
        tracing::info!("stopped");
    }
}

async fn prune_periodically(store: Arc<dyn DedupStore>, every: std::time::Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match store.prune_expired().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "pruned expired dedup entries"),
            Err(e) => tracing::warn!(error = %e, "pruning the dedup store failed"),
        }
    }
}
