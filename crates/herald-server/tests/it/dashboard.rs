//! `configs/grafana-dashboard.json` queries only metrics a live server exports: every metric name
//! in every panel's `expr` must have samples on a real `/metrics` page, with labelled series made
//! to exist first (a delivered notification, through an app that answers with a status).

use std::collections::BTreeSet;

use herald_testkit::notify::message;
use serde_json::Value;

use crate::common::{config, TestServer, APP};

const DASHBOARD: &str = include_str!("../../../../configs/grafana-dashboard.json");

/// Every `expr` of every panel, rows' nested panels included.
fn exprs(dashboard: &Value) -> Vec<String> {
    fn walk(panels: &Value, out: &mut Vec<String>) {
        for panel in panels.as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    out.push(expr.to_owned());
                }
            }
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// The metric names an expression uses: `herald_…` and `process_…` identifiers (not inside a
/// longer identifier, so `$__rate_interval` or a label value `xherald_y` do not count).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while !rest.is_empty() {
        let start = ["herald_", "process_"].iter().filter_map(|p| rest.find(p)).min();
        let Some(start) = start else { break };
        let before_ok = !rest[..start].chars().next_back().is_some_and(is_ident);
        let tail = &rest[start..];
        let len = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        if before_ok {
            names.insert(tail[..len].to_owned());
        }
        rest = &tail[len.max(1)..];
    }
    names
}

/// The metrics a dashboard's expressions use that `page` (an OpenMetrics text) has no sample of.
/// `_bucket`, `_sum` and `_count` of a histogram are checked as the histogram itself.
fn missing_metrics(exprs: &[String], page: &str) -> Vec<String> {
    let has_samples = |name: &str| {
        page.lines().any(|l| {
            l.strip_prefix(name).is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
    };
    let histogram = |base: &str| page.lines().any(|l| l == format!("# TYPE {base} histogram"));
    let mut missing = BTreeSet::new();
    for name in exprs.iter().flat_map(|e| metric_names(e)) {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|base| histogram(base)));
        let present = match base {
            Some(base) => has_samples(&format!("{base}_bucket")) && has_samples(&name),
            None => has_samples(&name),
        };
        if !present {
            missing.insert(name);
        }
    }
    missing.into_iter().collect()
}

#[test]
fn names_are_extracted_and_missing_ones_reported() {
    let expr = r#"histogram_quantile(0.99, sum by (le) (rate(herald_notify_duration_seconds_bucket{instance=~"$instance"}[$__rate_interval]))) + process_open_fds + x_herald_not_a_metric"#;
    assert_eq!(
        metric_names(expr).into_iter().collect::<Vec<_>>(),
        ["herald_notify_duration_seconds_bucket", "process_open_fds"]
    );
    let page = "# TYPE herald_notify_duration_seconds histogram\n\
                herald_notify_duration_seconds_bucket{status=\"200\",le=\"0.001\"} 1\n\
                herald_notify_duration_seconds_count{status=\"200\"} 1\n\
                process_open_fds 12\n# EOF\n";
    assert!(missing_metrics(&[expr.to_owned()], page).is_empty());
    // A name the page does not have is reported, and so is a histogram suffix of a counter.
    let made_up = vec![
        "rate(herald_made_up_total[5m])".to_owned(),
        "herald_notify_duration_seconds_count".to_owned(),
        "herald_open_fds".to_owned(),
    ];
    assert_eq!(missing_metrics(&made_up, page), ["herald_made_up_total", "herald_open_fds"]);
}

#[test]
fn the_dashboard_is_an_importable_grafana_dashboard() {
    let dashboard: Value = serde_json::from_str(DASHBOARD).expect("the dashboard is JSON");
    assert!(
        dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "{}",
        dashboard["schemaVersion"]
    );
    let variables = dashboard["templating"]["list"].as_array().expect("templating");
    assert!(
        variables.iter().any(|v| v["name"] == "DS_PROMETHEUS" && v["type"] == "datasource"),
        "a Prometheus data source variable"
    );
    // Every query goes to that data source.
    let mut ids = BTreeSet::new();
    fn check(panels: &Value, ids: &mut BTreeSet<u64>) {
        for panel in panels.as_array().into_iter().flatten() {
            assert!(ids.insert(panel["id"].as_u64().expect("panel id")), "duplicate id {panel}");
            for target in panel["targets"].as_array().into_iter().flatten() {
                assert_eq!(target["datasource"]["uid"], "${DS_PROMETHEUS}", "{target}");
            }
            check(&panel["panels"], ids);
        }
    }
    check(&dashboard["panels"], &mut ids);
}

#[tokio::test]
async fn every_metric_the_dashboard_queries_exists_on_a_live_server() {
    let dashboard: Value = serde_json::from_str(DASHBOARD).unwrap();
    let exprs = exprs(&dashboard);
    let used: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    // The extraction found the dashboard's metrics (an empty set would pass vacuously).
    for expected in [
        "herald_http_requests_total",
        "herald_notify_duration_seconds_bucket",
        "herald_in_flight_requests",
        "herald_notifications_total",
        "herald_upstream_responses_total",
        "herald_store_duration_seconds_bucket",
        "herald_build_info",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
    ] {
        assert!(used.contains(expected), "the dashboard does not query {expected}: {used:?}");
    }

    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&config(dir.path(), "")).await;
    // Labelled series appear once used: a delivery (notifications, upstream responses, store
    // lookup and record) and a notify answer (latency by status).
    assert_eq!(server.notify(&message("$dashboard", APP, "k")).await.0, 200);
    let page = server.metrics().await;
    server.stop().await;
    let missing = missing_metrics(&exprs, &page);
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics /metrics lacks: {missing:?}\n{page}"
    );
}
