//! The HTTP surface: routes, body limits, request parsing and the exact JSON answers.
//!
//! Bodies are read from bytes whatever the Content-Type (homeservers are not all careful with it).
//! Every error is JSON with a Matrix `errcode`; bad input never gets a 5xx.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use herald_core::model::ParseError;
use herald_core::NotifyRequest;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Serialize;
use tokio::time::Instant;
use tracing::Instrument;

use crate::access_log::NotifySummary;
use crate::dispatch::{Dispatcher, NotifyAnswer};
use crate::metrics::{Metrics, Route};

/// The notify path of the Push Gateway API.
pub const NOTIFY_PATH: &str = "/_matrix/push/v1/notify";

/// Everything a handler needs.
pub struct AppState {
    /// The data path.
    pub dispatcher: Arc<Dispatcher>,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Largest body accepted.
    pub body_limit: usize,
    /// Time allowed to receive a body.
    pub body_read_timeout: Duration,
    /// Deadline for answering one notify request.
    pub request_deadline: Duration,
    /// `log.access`: one INFO line per notify request.
    pub access_log: bool,
    /// Whether this router serves `/metrics` (false when `server.metrics_listen` serves it).
    pub serve_metrics: bool,
}

/// How long `GET /ready` waits for the store: less than a probe's usual timeout (Kubernetes: 1 s
/// by default), so the probe gets a 503 naming the store rather than no answer at all.
pub const READY_STORE_TIMEOUT: Duration = Duration::from_millis(800);

/// Builds the router.
pub fn router(state: Arc<AppState>) -> Router {
    let routes = Router::new()
        .route(NOTIFY_PATH, post(notify))
        .route("/health", get(health))
        .route("/ready", get(ready));
    let routes = if state.serve_metrics { routes.route("/metrics", get(metrics)) } else { routes };
    routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), count_requests))
        .with_state(state)
}

#[derive(Serialize)]
struct MatrixError<'a> {
    errcode: &'a str,
    error: &'a str,
}

#[derive(Serialize)]
struct RejectedBody<'a> {
    rejected: &'a [String],
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A Matrix error response.
pub fn error_response(status: StatusCode, errcode: &str, error: &str) -> Response {
    let body = serde_json::to_vec(&MatrixError { errcode, error }).unwrap_or_default();
    json_response(status, body)
}

fn rejected_response(rejected: &[String]) -> Response {
    if rejected.is_empty() {
        return json_response(StatusCode::OK, br#"{"rejected":[]}"#.to_vec());
    }
    let body = serde_json::to_vec(&RejectedBody { rejected }).unwrap_or_default();
    json_response(StatusCode::OK, body)
}

async fn read_body(state: &AppState, request: Request) -> Result<Bytes, Response> {
    let too_large = || {
        error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "M_TOO_LARGE",
            &format!("request body is larger than {} bytes", state.body_limit),
        )
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > state.body_limit) {
        return Err(too_large());
    }
    let body = Limited::new(request.into_body(), state.body_limit);
    match tokio::time::timeout(state.body_read_timeout, body.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(too_large()),
        Ok(Err(e)) => Err(error_response(
            StatusCode::BAD_REQUEST,
            "M_BAD_JSON",
            &format!("could not read the request body: {e}"),
        )),
        Err(_) => Err(error_response(
            StatusCode::REQUEST_TIMEOUT,
            "M_UNKNOWN",
            "timed out reading the request body",
        )),
    }
}

fn parse_error_response(e: &ParseError) -> Response {
    error_response(StatusCode::BAD_REQUEST, e.kind.errcode(), &e.message)
}

async fn notify(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let mut summary = None;
    let mut response = answer_notify(&state, request, &mut summary).await;
    // For the access log, written by `count_requests` once the status and duration are known.
    if let Some(summary) = summary {
        response.extensions_mut().insert(summary);
    }
    response
}

async fn answer_notify(
    state: &AppState,
    request: Request,
    summary: &mut Option<NotifySummary>,
) -> Response {
    let body = match read_body(state, request).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let notification = match NotifyRequest::from_slice(&body) {
        Ok(r) => r.notification,
        Err(e) => {
            tracing::info!(error = %e.message, "malformed notify request");
            return parse_error_response(&e);
        }
    };
    // The parsed request holds what is needed; the raw body (up to `body_limit`) need not live
    // for the whole delivery: under a burst of big requests that is most of the memory.
    drop(body);
    let tally = Arc::new(crate::access_log::Tally::default());
    *summary = Some(NotifySummary::new(
        notification.event_id.as_deref(),
        notification.devices.len(),
        Some(tally.clone()),
    ));
    if notification.devices.is_empty() {
        return rejected_response(&[]);
    }
    let deadline = Instant::now() + state.request_deadline;
    let span = tracing::info_span!(
        "notify",
        event_id = notification.event_id.as_deref().unwrap_or(""),
        devices = notification.devices.len(),
    );
    let dispatcher = state.dispatcher.clone();
    // A task of its own, so a homeserver that hangs up mid-delivery cannot cancel it halfway
    // between "sent upstream" and "recorded": the retry it will send must find the record.
    // Tracked, so that shutdown waits for it before closing the store.
    let dispatch = async move { dispatcher.notify(&notification, deadline).await };
    let task =
        state.dispatcher.tasks().spawn(crate::access_log::scope(tally, dispatch).instrument(span));
    match task.await {
        Ok(NotifyAnswer::Rejected(rejected)) => rejected_response(&rejected),
        Ok(NotifyAnswer::Failed(failure)) => error_response(
            StatusCode::from_u16(failure.status()).unwrap_or(StatusCode::BAD_GATEWAY),
            "M_UNKNOWN",
            failure.message(),
        ),
        Err(e) => {
            // A panicking backend: a bug, but the homeserver should retry rather than drop.
            tracing::error!(error = %e, "notify task failed");
            error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "M_UNKNOWN",
                "internal error; retry later",
            )
        }
    }
}

async fn health() -> Response {
    json_response(StatusCode::OK, br#"{"status":"ok"}"#.to_vec())
}

/// Readiness: 200 when the store answers within [`READY_STORE_TIMEOUT`]. Every app is built by
/// then: the server does not start when one cannot be (exit 2), so a serving server has them all.
async fn ready(State(state): State<Arc<AppState>>) -> Response {
    let apps = state.dispatcher.apps().len();
    let pinged = tokio::time::timeout(READY_STORE_TIMEOUT, state.dispatcher.store().ping()).await;
    // The body names what is not ready but not why in detail (an error can carry a file path, and
    // the notify port may be public): the WARN line has the whole story.
    let store = match pinged {
        Ok(Ok(())) => "ok",
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "not ready: the dedup store does not answer");
            "error"
        }
        Err(_) => {
            tracing::warn!(
                timeout = ?READY_STORE_TIMEOUT,
                "not ready: the dedup store did not answer in time"
            );
            "timeout"
        }
    };
    let (status, body) = if store == "ok" {
        (StatusCode::OK, serde_json::json!({"status": "ready", "store": store, "apps": apps}))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({
                "status": "not_ready",
                "not_ready": ["store"],
                "store": store,
                "apps": apps,
            }),
        )
    };
    json_response(status, body.to_string().into_bytes())
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    render_metrics(&state.metrics)
}

fn render_metrics(metrics: &Metrics) -> Response {
    let mut response = metrics.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

async fn not_found() -> Response {
    error_response(StatusCode::NOT_FOUND, "M_UNRECOGNIZED", "unrecognized request")
}

async fn method_not_allowed() -> Response {
    error_response(StatusCode::METHOD_NOT_ALLOWED, "M_UNRECOGNIZED", "method not allowed")
}

/// The `route` label for a request path.
fn route_of(path: &str) -> Route {
    match path {
        NOTIFY_PATH => Route::Notify,
        "/health" => Route::Health,
        "/metrics" => Route::Metrics,
        "/ready" => Route::Ready,
        _ => Route::Other,
    }
}

async fn count_requests(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    struct InFlight<'a>(&'a Metrics);
    impl Drop for InFlight<'_> {
        fn drop(&mut self) {
            self.0.in_flight.dec();
        }
    }
    let route = route_of(request.uri().path());
    // Only notify requests are "in flight": a scrape counting itself would make an idle
    // gateway read 1.
    let _in_flight = (route == Route::Notify).then(|| {
        state.metrics.in_flight.inc();
        InFlight(&state.metrics)
    });
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    state.metrics.count_request(route, status);
    if route == Route::Notify {
        let elapsed = started.elapsed();
        state.metrics.observe_notify(status, elapsed.as_secs_f64());
        if state.access_log {
            crate::access_log::log(status, elapsed, response.extensions().get::<NotifySummary>());
        }
    }
    response
}

/// The router of `server.metrics_listen`: `/metrics` only, everything else 404 (the notify
/// port keeps `/health` and `/ready`, which should check the port that carries the traffic).
pub fn metrics_router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_only))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(metrics.clone(), count_metrics_requests))
        .with_state(metrics)
}

async fn metrics_only(State(metrics): State<Arc<Metrics>>) -> Response {
    render_metrics(&metrics)
}

async fn count_metrics_requests(
    State(metrics): State<Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let route = if request.uri().path() == "/metrics" { Route::Metrics } else { Route::Other };
    let response = next.run(request).await;
    metrics.count_request(route, response.status().as_u16());
    response
}
