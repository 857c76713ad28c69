//! Prometheus metrics, served on `GET /metrics`.
//!
//! Each server instance owns its registry (no global recorder), so tests can run several servers in
//! one process. Per-app counters are resolved once at start-up into [`AppMetrics`], keeping label
//! hashing and allocation off the request path. Backends register their own metrics into a
//! registry per app ([`BackendMetricSet`]), replaced as a whole when a reload rebuilds the apps: a
//! prometheus-client registry cannot unregister, and a rebuilt app must not show twice.

use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use herald_core::sync::lock;
use herald_core::Upstream;

type Labels = Vec<(&'static str, String)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.5 ms … ~16 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// End-to-end notify latency: 1 ms … ~33 s, past the longest `server.request_deadline` (55 s
/// lands in +Inf, which is what a deadline answer is anyway).
fn notify_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// HTTP statuses the server answers with; anything else is counted as `other`.
const STATUSES: [u16; 11] = [200, 400, 404, 405, 408, 413, 414, 431, 502, 503, 504];

/// The part of the HTTP surface a request was for: the `route` label of
/// `herald_http_requests_total`. A fixed set of values, never the raw path, so a scanner probing
/// random paths cannot grow the number of series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The notify path (`/_matrix/push/v1/notify`), whatever the method.
    Notify,
    /// `/health`.
    Health,
    /// `/metrics`.
    Metrics,
    /// `/ready`.
    Ready,
    /// Any other path (answered 404 or 405).
    Other,
    /// A request hyper could not parse, answered before routing (400, 414, 431).
    Malformed,
}

impl Route {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Notify => "notify",
            Route::Health => "health",
            Route::Metrics => "metrics",
            Route::Ready => "ready",
            Route::Other => "other",
            Route::Malformed => "malformed",
        }
    }
}

fn status_label(status: u16) -> String {
    if STATUSES.contains(&status) {
        status.to_string()
    } else {
        "other".to_owned()
    }
}

/// All of one server's metrics.
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    /// The backends' own metrics, one registry per app of the apps serving now.
    backends: Mutex<BTreeMap<String, Arc<Mutex<Registry>>>>,
    /// `herald_config_reloads_total{result}` and `herald_config_last_reload_successful`.
    reloads: Family<Labels, Counter>,
    last_reload_ok: Gauge,
    requests: Family<Labels, Counter>,
    /// The notify route's counters, resolved once: it is the only busy route.
    notify_by_status: Vec<Counter>,
    notify_other: Counter,
    /// `herald_notify_duration_seconds{status}`, resolved like `notify_by_status`.
    notify_seconds: Vec<Histogram>,
    notify_seconds_other: Histogram,
    /// `process_*` metrics: their own registry, because the standard names have no `herald_`
    /// prefix (generic dashboards and alerts look for `process_resident_memory_bytes`).
    process: Registry,
    notifications: Family<Labels, Counter>,
    upstream_seconds: HistogramFamily,
    retries: Family<Labels, Counter>,
    upstream_responses: Family<Labels, Counter>,
    store_seconds: HistogramFamily,
    store_counters: StoreCounters,
    /// Notify requests being handled right now (only notify: a scrape does not count itself).
    pub in_flight: Gauge,
    /// Client connections and the file limit (see `connections.rs`).
    pub connections: ConnectionMetrics,
}

/// Outcomes counted per app in `herald_notifications_total{app, outcome}`.
pub const OUTCOMES: [&str; 11] = [
    "delivered",
    "skipped",
    "rejected",
    // Rejected from the dead-token cache, without an upstream call.
    "rejected_cached",
    "deduplicated",
    "failed_transient",
    "failed_credentials_refused",
    "failed_message_refused",
    "failed_deadline",
    "failed_store",
    "failed_overloaded",
];

/// The registries the backends of one set of apps register their metrics in, one per app;
/// [`Metrics::install_backends`] serves them once those apps serve.
#[derive(Default)]
pub struct BackendMetricSet(BTreeMap<String, Arc<Mutex<Registry>>>);

impl BackendMetricSet {
    /// Where the backend of app `app` registers its metrics (labelled `app`).
    pub fn app(&mut self, app: &str) -> herald_core::BackendMetrics {
        Self::app_in(&mut self.0, app)
    }

    /// A fresh registry for `app` in `registries`, replacing any before.
    fn app_in(
        registries: &mut BTreeMap<String, Arc<Mutex<Registry>>>,
        app: &str,
    ) -> herald_core::BackendMetrics {
        let registry = Arc::new(Mutex::new(Registry::with_prefix("herald")));
        registries.insert(app.to_owned(), registry.clone());
        herald_core::BackendMetrics::new(registry, app)
    }
}

/// Pre-resolved handles for one app.
#[derive(Clone)]
pub struct AppMetrics {
    outcomes: [Counter; OUTCOMES.len()],
    app: String,
    responses_family: Family<Labels, Counter>,
    responses: Arc<Mutex<HashMap<(u16, &'static str), Counter>>>,
    /// Upstream call latency (one observation per attempt).
    pub upstream_seconds: Histogram,
    /// Retries after transient failures.
    pub retries: Counter,
}

impl AppMetrics {
    /// Counts one upstream answer in `herald_upstream_responses_total{app, status, reason}`
    /// (`status="none"` when no answer came). Reasons come from the backends' fixed sets, so the
    /// label set is bounded; each pair's counter is resolved once and then found in a small map.
    pub fn count_response(&self, upstream: Option<Upstream>) {
        let Some(upstream) = upstream else { return };
        let key = (upstream.status, upstream.reason);
        let mut seen = lock(&self.responses);
        let counter = seen.entry(key).or_insert_with(|| {
            let status =
                if upstream.status == 0 { "none".to_owned() } else { upstream.status.to_string() };
            let labels = vec![
                ("app", self.app.clone()),
                ("status", status),
                ("reason", upstream.reason.into()),
            ];
            self.responses_family.get_or_create(&labels).clone()
        });
        counter.inc();
    }

    /// Counts one device outcome (a name from [`OUTCOMES`]), also into the current request's
    /// access-log tally.
    pub fn count(&self, outcome: &'static str) {
        if let Some(i) = OUTCOMES.iter().position(|o| *o == outcome) {
            self.outcomes[i].inc();
            crate::access_log::count(i);
        }
    }
}

/// The store's metrics: operations timed in `herald_store_duration_seconds{op}`, claims and the
/// shared store's connection pool.
#[derive(Clone)]
pub struct StoreMetrics {
    /// Dedup lookups and claims.
    pub lookup: Histogram,
    /// Commits of delivery records.
    pub record: Histogram,
    /// Deliveries that found another instance's claim and waited for it
    /// (`herald_store_claim_waits_total`).
    pub claim_waits: Counter,
    /// Claims taken over after another instance's lease expired
    /// (`herald_store_lease_takeovers_total`).
    pub lease_takeovers: Counter,
    /// Devices answered `rejected` from the dead-token cache (`herald_dead_token_hits_total`).
    pub dead_token_hits: Counter,
    /// Connections of the shared store's pool (`herald_store_pool_connections`).
    pub pool_connections: Gauge,
    /// Of which in use (`herald_store_pool_in_use`).
    pub pool_in_use: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every Herald metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("herald");
        let requests: Family<Labels, Counter> = Family::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route and status",
            requests.clone(),
        );
        let notify = |status: String| {
            requests.get_or_create(&vec![("route", "notify".into()), ("status", status)]).clone()
        };
        let notify_by_status = STATUSES.iter().map(|s| notify(s.to_string())).collect();
        let notify_other = notify("other".into());
        let notify_seconds_family: HistogramFamily = Family::new_with_constructor(notify_histogram);
        registry.register(
            "notify_duration_seconds",
            "Time to answer a notify request, from its head to the answer, by HTTP status",
            notify_seconds_family.clone(),
        );
        let notify_seconds_of =
            |status: String| notify_seconds_family.get_or_create(&vec![("status", status)]).clone();
        let notify_seconds = STATUSES.iter().map(|s| notify_seconds_of(s.to_string())).collect();
        let notify_seconds_other = notify_seconds_of("other".into());
        // `herald_build_info{version} 1`: which version runs where, and when it changed.
        registry.register(
            "build",
            "The running Herald's version",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        let notifications = Family::default();
        registry.register(
            "notifications",
            "Device notifications by app and outcome",
            notifications.clone(),
        );
        let upstream_seconds: HistogramFamily = Family::new_with_constructor(latency_histogram);
        registry.register(
            "upstream_duration_seconds",
            "Latency of upstream delivery attempts, by app",
            upstream_seconds.clone(),
        );
        let retries = Family::default();
        registry.register("retries", "Delivery retries after transient errors", retries.clone());
        let upstream_responses = Family::default();
        registry.register(
            "upstream_responses",
            "Upstream answers by app, status (none: no answer) and the backend's reason code",
            upstream_responses.clone(),
        );
        let store_seconds: HistogramFamily = Family::new_with_constructor(latency_histogram);
        registry.register(
            "store_duration_seconds",
            "Latency of dedup store operations",
            store_seconds.clone(),
        );
        let store_counters = StoreCounters::register(&mut registry);
        let in_flight = Gauge::default();
        registry.register("in_flight_requests", "Notify requests in progress", in_flight.clone());
        let connections = ConnectionMetrics::register(&mut registry);
        let reloads = Family::default();
        registry.register(
            "config_reloads",
            "Configuration reloads (SIGHUP) by result: success or failure",
            reloads.clone(),
        );
        let last_reload_ok = Gauge::default();
        last_reload_ok.set(1);
        registry.register(
            "config_last_reload_successful",
            "1 when the configuration in force is the file's (start-up or last reload succeeded)",
            last_reload_ok.clone(),
        );
        let mut process = Registry::default();
        if let Err(e) =
            kubert_prometheus_process::register(process.sub_registry_with_prefix("process"))
        {
            // Only the process_* series are missing (e.g. no /proc); everything else works.
            tracing::warn!(error = %e, "process metrics are not available");
        }
        Metrics {
            registry: Arc::new(Mutex::new(registry)),
            backends: Mutex::default(),
            reloads,
            last_reload_ok,
            requests,
            notify_by_status,
            notify_other,
            notify_seconds,
            notify_seconds_other,
            process,
            notifications,
            upstream_seconds,
            retries,
            upstream_responses,
            store_seconds,
            store_counters,
            in_flight,
            connections,
        }
    }

    /// Handles for one app (label `app` = the configured key, never a request's app_id).
    pub fn app(&self, app: &str) -> AppMetrics {
        let outcomes = OUTCOMES.map(|outcome| {
            self.notifications
                .get_or_create(&vec![("app", app.to_owned()), ("outcome", outcome.to_owned())])
                .clone()
        });
        let upstream_seconds =
            self.upstream_seconds.get_or_create(&vec![("app", app.to_owned())]).clone();
        let retries = self.retries.get_or_create(&vec![("app", app.to_owned())]).clone();
        AppMetrics {
            outcomes,
            app: app.to_owned(),
            responses_family: self.upstream_responses.clone(),
            responses: Arc::default(),
            upstream_seconds,
            retries,
        }
    }

    /// Handles for the store.
    pub fn store(&self) -> StoreMetrics {
        // One statement per lookup: a family's guard must be dropped before the next
        // `get_or_create`, which may need the family's write lock.
        let lookup = self.store_seconds.get_or_create(&vec![("op", "lookup".into())]).clone();
        let record = self.store_seconds.get_or_create(&vec![("op", "record".into())]).clone();
        let c = self.store_counters.clone();
        StoreMetrics {
            lookup,
            record,
            claim_waits: c.claim_waits,
            lease_takeovers: c.lease_takeovers,
            dead_token_hits: c.dead_token_hits,
            pool_connections: c.pool_connections,
            pool_in_use: c.pool_in_use,
        }
    }

    /// Times one answered notify request in `herald_notify_duration_seconds{status}`.
    pub fn observe_notify(&self, status: u16, seconds: f64) {
        match STATUSES.iter().position(|s| *s == status) {
            Some(i) => self.notify_seconds[i].observe(seconds),
            None => self.notify_seconds_other.observe(seconds),
        }
    }

    /// Counts one answered HTTP request.
    pub fn count_request(&self, route: Route, status: u16) {
        if route == Route::Notify {
            match STATUSES.iter().position(|s| *s == status) {
                Some(i) => self.notify_by_status[i].inc(),
                None => self.notify_other.inc(),
            };
        } else {
            // Rare (scrapes, health checks, strays): resolving the labels here costs nothing.
            let labels =
                vec![("route", route.as_str().to_owned()), ("status", status_label(status))];
            self.requests.get_or_create(&labels).inc();
        }
    }

    /// Where the backend of app `app` registers its own metrics, served at once (replacing those
    /// of an app of that name). Builds of a whole set of apps use [`BackendMetricSet`] instead.
    pub fn backend(&self, app: &str) -> herald_core::BackendMetrics {
        BackendMetricSet::app_in(&mut lock(&self.backends), app)
    }

    /// Serves `set` as the backends' metrics from now on, dropping those of the apps before.
    pub fn install_backends(&self, set: BackendMetricSet) {
        *lock(&self.backends) = set.0;
    }

    /// Counts a configuration reload.
    pub fn reloaded(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.reloads.get_or_create(&vec![("result", result.to_owned())]).inc();
        self.last_reload_ok.set(i64::from(ok));
    }

    /// Notify requests answered so far, whatever the status.
    pub fn notify_requests_served(&self) -> u64 {
        self.notify_by_status.iter().chain([&self.notify_other]).map(Counter::get).sum()
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        // Writing to a String cannot fail.
        let _ = encode_registry(&mut out, &lock(&self.registry));
        let backends: Vec<_> = lock(&self.backends).values().cloned().collect();
        for registry in backends {
            let _ = encode_registry(&mut out, &lock(&registry));
        }
        // The process collector reads /proc: outside every lock.
        let _ = encode_registry(&mut out, &self.process);
        let _ = encode_eof(&mut out);
        out
    }
}

/// The store's counters and gauges, registered once.
#[derive(Clone, Default)]
struct StoreCounters {
    claim_waits: Counter,
    lease_takeovers: Counter,
    dead_token_hits: Counter,
    pool_connections: Gauge,
    pool_in_use: Gauge,
}

impl StoreCounters {
    fn register(registry: &mut Registry) -> Self {
        let c = StoreCounters::default();
        registry.register(
            "store_claim_waits",
            "Deliveries that found another instance's claim on their key and waited for it",
            c.claim_waits.clone(),
        );
        registry.register(
            "store_lease_takeovers",
            "Claims taken over because another instance's lease expired before it recorded or released",
            c.lease_takeovers.clone(),
        );
        registry.register(
            "dead_token_hits",
            "Devices answered rejected from the dead-token cache, without an upstream call",
            c.dead_token_hits.clone(),
        );
        registry.register(
            "store_pool_connections",
            "Open connections of the shared (PostgreSQL) store's pool",
            c.pool_connections.clone(),
        );
        registry.register(
            "store_pool_in_use",
            "Connections of the shared store's pool running a query",
            c.pool_in_use.clone(),
        );
        c
    }
}

/// Client connections: `herald_connections`, `herald_connections_max`,
/// `herald_connections_closed_total{reason}` and `herald_open_files_limit`.
#[derive(Clone, Default)]
pub struct ConnectionMetrics {
    /// Open client connections.
    pub open: Gauge,
    /// `server.max_connections` in force.
    pub max: Gauge,
    /// The soft RLIMIT_NOFILE after start-up raised it.
    pub file_limit: Gauge,
    /// Idle keep-alive connections closed to make room for a new client.
    pub idle_closed: Counter,
    /// New connections closed at once: at the cap with every connection busy.
    pub refused: Counter,
}

impl ConnectionMetrics {
    fn register(registry: &mut Registry) -> Self {
        let m = ConnectionMetrics::default();
        registry.register("connections", "Open client connections", m.open.clone());
        registry.register("connections_max", "server.max_connections in force", m.max.clone());
        registry.register(
            "open_files_limit",
            "Soft open-files limit (RLIMIT_NOFILE) after start-up raised it",
            m.file_limit.clone(),
        );
        let closed: Family<Labels, Counter> = Family::default();
        registry.register(
            "connections_closed",
            "Connections Herald closed at server.max_connections: idle ones to make room, new ones refused when all were busy",
            closed.clone(),
        );
        let idle_closed = closed.get_or_create(&vec![("reason", "idle".into())]).clone();
        let refused = closed.get_or_create(&vec![("reason", "refused".into())]).clone();
        ConnectionMetrics { idle_closed, refused, ..m }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts() {
        let m = Metrics::new();
        let app = m.app("im.example");
        app.count("delivered");
        app.count("delivered");
        m.count_request(Route::Notify, 200);
        m.count_request(Route::Notify, 418);
        m.count_request(Route::Metrics, 200);
        m.count_request(Route::Metrics, 200);
        m.count_request(Route::Other, 404);
        let text = m.render();
        assert!(
            text.contains(r#"herald_notifications_total{app="im.example",outcome="delivered"} 2"#),
            "{text}"
        );
        for line in [
            r#"herald_http_requests_total{route="notify",status="200"} 1"#,
            r#"herald_http_requests_total{route="notify",status="other"} 1"#,
            r#"herald_http_requests_total{route="notify",status="503"} 0"#,
            r#"herald_http_requests_total{route="metrics",status="200"} 2"#,
            r#"herald_http_requests_total{route="other",status="404"} 1"#,
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        // Quiet routes have no series until they are used.
        assert!(!text.contains(r#"route="health""#), "{text}");
        assert!(text.ends_with("# EOF\n"), "one EOF, at the end: {text}");
        assert_eq!(text.matches("# EOF").count(), 1, "{text}");
    }

    #[test]
    fn notify_latency_build_info_and_process_metrics() {
        let m = Metrics::new();
        m.observe_notify(200, 0.003);
        m.observe_notify(418, 0.5);
        let text = m.render();
        for line in [
            r#"herald_notify_duration_seconds_count{status="200"} 1"#,
            r#"herald_notify_duration_seconds_count{status="other"} 1"#,
            r#"herald_notify_duration_seconds_count{status="503"} 0"#,
            &format!(r#"herald_build_info{{version="{}"}} 1"#, env!("CARGO_PKG_VERSION")),
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        #[cfg(target_os = "linux")]
        for name in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_max_fds ",
            "process_start_time_seconds ",
        ] {
            assert!(text.lines().any(|l| l.starts_with(name)), "{name} missing from\n{text}");
        }
    }
}
