//! Assembling and running a Herald server: open the store, build every app's backend, bind the
//! listener, serve HTTP/1.1 with a header-read timeout, prune the store in the background, and on
//! shutdown stop accepting, drain in-flight requests and their dispatch tasks up to the grace
//! period and flush the store. A background task that dies (the pruner, the store's) stops the
//! server with an error.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use herald_core::{AppContext, AppRouter, BuildError, RoutingError};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::config::{Config, ConfigError, ServerConfig};
use crate::connections::{AcceptBackoff, Admission, Close, Connections};
use crate::delivery::{App, DeliveryLayer};
use crate::dispatch::{DispatchLimits, Dispatcher};
use crate::http::{router, AppState};
use crate::metrics::{BackendMetricSet, Metrics};
use crate::protocol_errors::{JsonProtocolErrors, MAX_HEADER_BYTES};
use crate::registry::BackendRegistry;
use crate::reload::Reloader;
use crate::store::recent::RecentCache;
use crate::store::sqlite::{SqliteStore, SqliteStoreOptions};
use crate::store::{DedupStore, StoreError};

/// Why the server could not start; the message is for the operator, the cause is its source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration cannot work: exit code 2, as for a bad file.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// An app's backend cannot be built from its section: exit 2.
    #[error("apps.\"{app}\": {source}")]
    App {
        /// The app's key.
        app: String,
        /// The backend's reason.
        #[source]
        source: BuildError,
    },
    /// The app keys cannot route unambiguously: exit 2.
    #[error(transparent)]
    Routing(#[from] RoutingError),
    /// The store cannot be opened: exit 1.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A file Herald keeps in `data_dir` cannot be used (the log-hash key): exit 1.
    #[error("cannot read or create {}: {source}", path.display())]
    State {
        /// The file.
        path: std::path::PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The listen address cannot be bound: exit 1.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// `server.listen`.
        addr: SocketAddr,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

impl StartError {
    /// The process exit code: 2 for configuration errors, 1 for runtime errors.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Config(_) | StartError::App { .. } | StartError::Routing(_) => 2,
            StartError::Store(_) | StartError::State { .. } | StartError::Listen { .. } => 1,
        }
    }
}

/// Why a running server stopped other than by the shutdown signal: a background task it depends
/// on died. The process exits 1.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RunError(pub String);

/// A server that is bound and ready to run.
pub struct Server {
    listener: TcpListener,
    router: axum::Router,
    state: Arc<AppState>,
    config: ServerConfig,
    pruner: JoinHandle<()>,
    stop_pruner: tokio_util::sync::CancellationToken,
    connections: Connections,
    /// `server.metrics_listen`, bound; served from `run`.
    metrics_listener: Option<TcpListener>,
    /// The configuration it was built from, the base of a reload's comparison.
    loaded: Config,
}

/// How long backends get to close their upstream connections on shutdown.
const CLOSE_BACKENDS: std::time::Duration = std::time::Duration::from_secs(2);

/// Builds every app's backend and the router; no I/O beyond what backends do at build time.
pub async fn build_apps(
    config: &Config,
    registry: &BackendRegistry,
    metrics: &Metrics,
) -> Result<AppRouter<Arc<App>>, StartError> {
    let (apps, backend_metrics) = build_apps_for(config, registry, metrics, false).await?;
    metrics.install_backends(backend_metrics);
    Ok(apps)
}

/// Builds every app as `herald check-config` does: backends are told (`AppContext::check_only`)
/// to create nothing, e.g. no missing key file. Returns how many apps there are.
pub async fn check_apps(config: &Config, registry: &BackendRegistry) -> Result<usize, StartError> {
    Ok(build_apps_for(config, registry, &Metrics::new(), true).await?.0.iter().count())
}

/// Builds every app, its backend's metrics in a set of their own (served only once installed, so
/// a reload that fails halfway leaves nothing behind).
pub(crate) async fn build_apps_for(
    config: &Config,
    registry: &BackendRegistry,
    metrics: &Metrics,
    check_only: bool,
) -> Result<(AppRouter<Arc<App>>, BackendMetricSet), StartError> {
    let mut apps = Vec::with_capacity(config.apps.len());
    let mut backend_metrics = BackendMetricSet::default();
    for (key, table) in &config.apps {
        let settings = config.app_settings(table);
        let context = AppContext {
            app_id: key.clone(),
            data_dir: config.data_dir.clone(),
            config_dir: config.config_dir.clone(),
            check_only,
            metrics: backend_metrics.app(key),
        };
        let backend = registry
            .build(&settings.kind, &context, settings.backend)
            .await
            .map_err(|source| StartError::App { app: key.clone(), source })?;
        let app = App {
            key: key.clone(),
            kind: settings.kind,
            backend,
            limiter: Semaphore::new(settings.max_concurrency),
            metrics: metrics.app(key),
        };
        apps.push((key.clone(), Arc::new(app)));
    }
    Ok((AppRouter::new(apps)?, backend_metrics))
}

/// Keys the pushkey hashes in logs with this installation's secret (`<data_dir>/log-key`, created
/// on first start), so that log hashes are stable across restarts and useless without the file.
fn install_log_key(data_dir: &std::path::Path) -> Result<(), StartError> {
    let path = data_dir.join("log-key");
    std::fs::create_dir_all(data_dir)
        .and_then(|()| herald_core::redact::load_or_create_key(&path))
        .map(|secret| {
            herald_core::redact::install_key(&secret);
        })
        .map_err(|source| StartError::State { path: path.clone(), source })
}

/// Opens the store named by the configuration (with its own metrics, for tests and tools).
pub async fn open_store(config: &Config) -> Result<Arc<dyn DedupStore>, StartError> {
    open_store_with(config, Metrics::new().store()).await
}

/// Opens the store named by the configuration, reporting into `metrics`: SQLite or PostgreSQL by
/// the URL's scheme, behind the recent-delivery cache.
pub async fn open_store_with(
    config: &Config,
    metrics: crate::metrics::StoreMetrics,
) -> Result<Arc<dyn DedupStore>, StartError> {
    let (ttl, entries) = (config.store.ttl, config.store.recent_cache_entries);
    match store_engine(config)? {
        Engine::Sqlite(url) => {
            let options = SqliteStoreOptions {
                ttl,
                max_batch: config.store.max_batch,
                dead_token_ttl: config.store.dead_token_ttl,
            };
            let _ = metrics;
            let store = SqliteStore::open(&url, options).await?;
            Ok(Arc::new(RecentCache::new(store, entries, ttl)))
        }
        #[cfg(feature = "postgres")]
        Engine::Postgres(url) => {
            let store = crate::store::postgres::PostgresStore::open(
                &url,
                postgres_options(config),
                metrics,
            )
            .await?;
            Ok(Arc::new(RecentCache::new(store, entries, ttl)))
        }
    }
}

/// The PostgreSQL store's options from `[store]` (and the lease from the request deadline).
#[cfg(feature = "postgres")]
pub fn postgres_options(config: &Config) -> crate::store::postgres::PostgresStoreOptions {
    let st = &config.store;
    crate::store::postgres::PostgresStoreOptions {
        ttl: st.ttl,
        max_batch: st.max_batch,
        dead_token_ttl: st.dead_token_ttl,
        claim_lease: config.claim_lease(),
        max_connections: st.max_connections,
        connect_timeout: st.connect_timeout,
        statement_timeout: st.statement_timeout,
    }
}

/// What `herald check-config` does instead of [`open_store`]: whether it would succeed, without
/// creating or changing anything. Says what it found.
pub async fn check_store(config: &Config) -> Result<String, StartError> {
    match store_engine(config)? {
        Engine::Sqlite(url) => Ok(SqliteStore::check(&url).await?),
        #[cfg(feature = "postgres")]
        Engine::Postgres(url) => {
            Ok(crate::store::postgres::PostgresStore::check(&url, &postgres_options(config))
                .await?)
        }
    }
}

enum Engine {
    Sqlite(String),
    #[cfg(feature = "postgres")]
    Postgres(String),
}

fn store_engine(config: &Config) -> Result<Engine, StartError> {
    let url = config.store_url();
    if url.starts_with("sqlite:") {
        return Ok(Engine::Sqlite(url));
    }
    #[cfg(feature = "postgres")]
    if crate::store::is_postgres_url(&url) {
        return Ok(Engine::Postgres(url));
    }
    // Config::validate refuses this already; kept for configurations built in code.
    Err(StartError::Config(ConfigError::invalid(format!(
        "`store.url`: unsupported store `{}`",
        crate::store::redact_url(&url)
    ))))
}

impl Server {
    /// Opens the store, builds the apps and binds the listener.
    pub async fn bind(config: &Config, registry: &BackendRegistry) -> Result<Server, StartError> {
        Self::assemble(config, registry, None).await
    }

    /// Like [`Server::bind`] with a store the caller opened (another [`DedupStore`]; tests).
    pub async fn bind_with_store(
        config: &Config,
        registry: &BackendRegistry,
        store: Arc<dyn DedupStore>,
    ) -> Result<Server, StartError> {
        Self::assemble(config, registry, Some(store)).await
    }

    async fn assemble(
        config: &Config,
        registry: &BackendRegistry,
        store: Option<Arc<dyn DedupStore>>,
    ) -> Result<Server, StartError> {
        install_log_key(&config.data_dir)?;
        let metrics = Arc::new(Metrics::new());
        let connections = open_connections(config, &metrics);
        let apps = build_apps(config, registry, &metrics).await?;
        let store = match store {
            Some(store) => store,
            None => open_store_with(config, metrics.store()).await?,
        };
        let dispatcher = Arc::new(
            Dispatcher::new(
                apps,
                store.clone(),
                DeliveryLayer::new(&config.delivery),
                metrics.app("_unknown"),
                metrics.store(),
            )
            .with_limits(DispatchLimits::from_config(&config.delivery))
            .with_claim_lease(config.claim_lease())
            .with_dead_tokens(!config.store.dead_token_ttl.is_zero()),
        );
        let state = Arc::new(AppState {
            dispatcher,
            metrics,
            body_limit: config.server.body_limit,
            body_read_timeout: config.server.body_read_timeout,
            request_deadline: config.server.request_deadline,
            access_log: config.log.access,
            serve_metrics: config.server.metrics_listen.is_none(),
        });
        let listener = TcpListener::bind(config.server.listen)
            .await
            .map_err(|source| StartError::Listen { addr: config.server.listen, source })?;
        let metrics_listener = match config.server.metrics_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Listen { addr, source })?,
            ),
            None => None,
        };
        let stop_pruner = tokio_util::sync::CancellationToken::new();
        let pruner = tokio::spawn(prune_periodically(
            store,
            config.store.prune_interval,
            stop_pruner.clone(),
        ));
        Ok(Server {
            listener,
            router: router(state.clone()),
            state,
            config: config.server.clone(),
            pruner,
            stop_pruner,
            connections,
            metrics_listener,
            loaded: config.clone(),
        })
    }

    /// The bound `server.metrics_listen` address, if one is configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.config.listen)
    }

    /// What reloads this server's apps from `path` (the file it was configured from), building
    /// them with `registry`. Call [`Reloader::reload`] on `SIGHUP`.
    pub fn reloader(&self, path: PathBuf, registry: Arc<BackendRegistry>) -> Reloader {
        Reloader::new(path, registry, self.state.clone(), self.loaded.clone())
    }

    /// The router, for tests that call handlers without a socket.
    pub fn router(&self) -> axum::Router {
        self.router.clone()
    }

    /// Serves until `shutdown` resolves, then drains in-flight requests and the dispatches they
    /// started (up to the grace period) and closes the store. Also stops, with an error, when a
    /// background task it depends on (the pruner, the store's) dies.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(self.config.header_read_timeout)
            .max_header_size(MAX_HEADER_BYTES)
            .keep_alive(true);
        // Tells every connection to finish its request in progress and close.
        let (stop_connections, stopping) = tokio::sync::watch::channel(());
        let mut backoff = AcceptBackoff::default();
        let mut refusals = crate::connections::WarnEvery::second();
        tracing::info!(listen = %self.local_addr(), "herald is serving");
        let trimmer = crate::memory::spawn_trimmer(self.state.metrics.clone());
        // Serves through the drain (the in-flight gauge falling is worth a scrape), stops at the end.
        let metrics_server = self.metrics_listener.map(|listener| {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(metrics_listen = %addr, "serving /metrics on its own address");
            }
            crate::metrics_listener::spawn(
                listener,
                self.state.metrics.clone(),
                self.config.header_read_timeout,
            )
        });
        // Warm-up needs the network, which start-up must not: it runs beside serving, and a
        // failure is only logged (the first delivery tries again).
        for app in self.state.dispatcher.apps() {
            tokio::spawn(async move {
                if let Err(e) = app.backend.warm_up().await {
                    tracing::warn!(app = %app.key, error = %e, "warming up the app failed");
                }
            });
        }
        // A dead pruner would let the table grow forever, a dead store task fail every request:
        // either stops the server like a signal, and the process exits non-zero.
        let failure = std::sync::OnceLock::new();
        let store = self.state.dispatcher.store().clone();
        let pruner = self.pruner;
        let shutdown = async {
            let why = tokio::select! {
                () = shutdown => return,
                why = store.failed() => why,
                ended = pruner => crate::store::task_ended("pruner", ended),
            };
            tracing::error!(error = %why, "a background task died: stopping the server");
            let _ = failure.set(why);
        };
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _peer)) => {
                        backoff.reset();
                        let admitted = match self.connections.admit() {
                            Admission::Admitted(admitted) => admitted,
                            Admission::Refused => {
                                // Every connection is busy: a quick close lets the client retry
                                // instead of waiting unanswered.
                                drop(stream);
                                if refusals.ready() {
                                    tracing::warn!(
                                        since_last_warning = refusals.take_suppressed(),
                                        "at server.max_connections with every connection busy: refusing new connections"
                                    );
                                }
                                continue;
                            }
                        };
                        let _ = stream.set_nodelay(true);
                        let service = TowerToHyperService::new(admitted.track(self.router.clone()));
                        let io = JsonProtocolErrors::new(stream, self.state.metrics.clone());
                        let connection = http.serve_connection(TokioIo::new(io), service);
                        let mut stopping = stopping.clone();
                        tokio::spawn(async move {
                            tokio::pin!(connection);
                            let result = tokio::select! {
                                result = connection.as_mut() => result,
                                close = admitted.close_requested() => match close {
                                    // Never started a request: nothing to finish.
                                    Close::Now => return,
                                    Close::Graceful => {
                                        connection.as_mut().graceful_shutdown();
                                        connection.await
                                    }
                                },
                                _ = stopping.changed() => {
                                    connection.as_mut().graceful_shutdown();
                                    connection.await
                                }
                            };
                            if let Err(e) = result {
                                tracing::debug!(error = %e, "connection ended with an error");
                            }
                        });
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off (growing, bounded)
                        // instead of spinning, and free a descriptor held by an idle client.
                        if crate::connections::is_out_of_files(&e) {
                            self.connections.close_one_idle();
                        }
                        let wait = backoff.failed(&e);
                        tokio::select! {
                            () = tokio::time::sleep(wait) => {}
                            () = &mut shutdown => break,
                        }
                    }
                },
                () = &mut shutdown => break,
            }
        }
        drop(self.listener);
        trimmer.abort();
        let in_flight = self.state.metrics.in_flight.get();
        tracing::info!(in_flight, grace = ?self.config.shutdown_grace, "shutting down: draining");
        let grace_end = tokio::time::Instant::now()
            .checked_add(self.config.shutdown_grace)
            .unwrap_or_else(tokio::time::Instant::now);
        let _ = stop_connections.send(());
        if tokio::time::timeout(self.config.shutdown_grace, self.connections.closed())
            .await
            .is_err()
        {
            tracing::warn!("grace period over; closing remaining connections");
        }
        // Dispatches run as tasks of their own, so that a homeserver hanging up cannot cancel one
        // between "sent" and "recorded"; they must also finish before the store closes, or their
        // records fail and the homeserver's retry alerts twice.
        let dispatches = self.state.dispatcher.tasks();
        dispatches.close();
        if !dispatches.is_empty() {
            tracing::info!(
                dispatches = dispatches.len(),
                "waiting for deliveries in flight before closing the store"
            );
        }
        if tokio::time::timeout_at(grace_end, dispatches.wait()).await.is_err() {
            tracing::warn!(
                dispatches = dispatches.len(),
                "grace period over with deliveries still running; their records may fail"
            );
        }
        // Between two passes: a pass cancelled inside a store query can cost the store a pool
        // connection (see `store::close_pool`). One still running is waited for by the close.
        self.stop_pruner.cancel();
        // Upstream connections go after the deliveries that used them (HTTP/2 GOAWAY, SMTP QUIT).
        let apps = self.state.dispatcher.apps();
        let closing = apps.iter().map(|app| app.backend.close());
        if tokio::time::timeout(CLOSE_BACKENDS, futures_util::future::join_all(closing))
            .await
            .is_err()
        {
            tracing::warn!("backends did not close within {CLOSE_BACKENDS:?}");
        }
        store.close().await;
        if let Some(metrics_server) = metrics_server {
            metrics_server.abort();
        }
        tracing::info!("stopped");
        match failure.get() {
            Some(why) => Err(RunError(why.clone())),
            None => Ok(()),
        }
    }
}

/// Raises the open-files limit and sizes the connection table from it.
fn open_connections(config: &Config, metrics: &Metrics) -> Connections {
    use crate::connections::{default_max_connections, raise_nofile_limit, FD_HEADROOM};
    let limit = raise_nofile_limit();
    if let Some(limit) = limit {
        metrics.connections.file_limit.set(i64::try_from(limit.soft).unwrap_or(i64::MAX));
    }
    let max = match (config.server.max_connections, limit) {
        (Some(max), Some(limit)) => {
            if max as u64 > limit.soft.saturating_sub(FD_HEADROOM) {
                tracing::warn!(
                    max_connections = max,
                    open_files_limit = limit.soft,
                    "server.max_connections leaves fewer than {FD_HEADROOM} descriptors for upstream connections and the store"
                );
            }
            max
        }
        (Some(max), None) => max,
        (None, Some(limit)) => default_max_connections(limit.soft),
        (None, None) => crate::connections::MAX_DEFAULT_CONNECTIONS,
    };
    tracing::info!(max_connections = max, "client connection cap");
    Connections::new(max, metrics.connections.clone())
}

async fn prune_periodically(
    store: Arc<dyn DedupStore>,
    every: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = stop.cancelled() => return,
        }
        match store.prune_expired().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "pruned expired dedup entries"),
            Err(e) => tracing::warn!(error = %e, "pruning the dedup store failed"),
        }
    }
}
