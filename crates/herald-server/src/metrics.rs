//! Prometheus metrics, served on `GET /metrics`.
//!
//! Each server instance owns its registry (no global recorder), so tests can run several servers in
//! one process. Per-app counters are resolved once at start-up into [`AppMetrics`], keeping label
//! hashing and allocation off the request path.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.5 ms … ~16 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// HTTP statuses the server answers with; anything else is counted as `other`.
const STATUSES: [u16; 9] = [200, 400, 404, 405, 408, 413, 502, 503, 504];

/// All of one server's metrics.
pub struct Metrics {
    registry: Registry,
    requests_by_status: Vec<Counter>,
    requests_other: Counter,
    notifications: Family<Labels, Counter>,
    upstream_seconds: HistogramFamily,
    retries: Family<Labels, Counter>,
    store_seconds: HistogramFamily,
    /// Notify requests being handled right now.
    pub in_flight: Gauge,
}

/// Outcomes counted per app in `herald_notifications_total{app, outcome}`.
pub const OUTCOMES: [&str; 9] = [
    "delivered",
    "skipped",
    "rejected",
    "deduplicated",
    "failed_transient",
    "failed_credentials_refused",
    "failed_message_refused",
    "failed_deadline",
    "failed_store",
];

/// Pre-resolved handles for one app.
#[derive(Clone)]
pub struct AppMetrics {
    outcomes: [Counter; OUTCOMES.len()],
    /// Upstream call latency (one observation per attempt).
    pub upstream_seconds: Histogram,
    /// Retries after transient failures.
    pub retries: Counter,
}

impl AppMetrics {
    /// Counts one device outcome (a name from [`OUTCOMES`]).
    pub fn count(&self, outcome: &'static str) {
        if let Some(i) = OUTCOMES.iter().position(|o| *o == outcome) {
            self.outcomes[i].inc();
        }
    }
}

/// Store operations timed in `herald_store_duration_seconds{op}`.
#[derive(Clone)]
pub struct StoreMetrics {
    /// Dedup lookups.
    pub lookup: Histogram,
    /// Commits of delivery records.
    pub record: Histogram,
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
        registry.register("http_requests", "HTTP requests answered, by status", requests.clone());
        let requests_by_status = STATUSES
            .iter()
            .map(|s| requests.get_or_create(&vec![("status", s.to_string())]).clone())
            .collect();
        let requests_other = requests.get_or_create(&vec![("status", "other".into())]).clone();
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
        let store_seconds: HistogramFamily = Family::new_with_constructor(latency_histogram);
        registry.register(
            "store_duration_seconds",
            "Latency of dedup store operations",
            store_seconds.clone(),
        );
        let in_flight = Gauge::default();
        registry.register("in_flight_requests", "Notify requests in progress", in_flight.clone());
        Metrics {
            registry,
            requests_by_status,
            requests_other,
            notifications,
            upstream_seconds,
            retries,
            store_seconds,
            in_flight,
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
        AppMetrics { outcomes, upstream_seconds, retries }
    }

    /// Handles for the store.
    pub fn store(&self) -> StoreMetrics {
        // One statement per lookup: a family's guard must be dropped before the next
        // `get_or_create`, which may need the family's write lock.
        let lookup = self.store_seconds.get_or_create(&vec![("op", "lookup".into())]).clone();
        let record = self.store_seconds.get_or_create(&vec![("op", "record".into())]).clone();
        StoreMetrics { lookup, record }
    }

    /// Counts one answered HTTP request.
    pub fn count_status(&self, status: u16) {
        match STATUSES.iter().position(|s| *s == status) {
            Some(i) => self.requests_by_status[i].inc(),
            None => self.requests_other.inc(),
        };
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
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
        m.count_status(200);
        let text = m.render();
        assert!(
            text.contains(r#"herald_notifications_total{app="im.example",outcome="delivered"} 2"#),
            "{text}"
        );
        assert!(text.contains(r#"herald_http_requests_total{status="200"} 1"#), "{text}");
    }
}
