//! Handler tests without a socket: every 400/413/404/405 case and the exact JSON bodies.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::common::{config, registry, APP};
use herald_server::Server;
use herald_testkit::scripted::ScriptedBackend;

struct Reply {
    status: StatusCode,
    content_type: String,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

async fn call(request: Request<Body>) -> Reply {
    let dir = tempfile::tempdir().unwrap();
    let backend = ScriptedBackend::new();
    let server = Server::bind(&config(dir.path(), ""), &registry(&backend)).await.unwrap();
    let response = server.router().oneshot(request).await.unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = response.into_body().collect().await.unwrap().to_bytes().to_vec();
    Reply { status, content_type, body }
}

fn notify(body: impl Into<Body>) -> Request<Body> {
    Request::post("/_matrix/push/v1/notify").body(body.into()).unwrap()
}

async fn assert_error(request: Request<Body>, status: u16, errcode: &str, mentions: &str) {
    let reply = call(request).await;
    assert_eq!(reply.status.as_u16(), status, "{}", String::from_utf8_lossy(&reply.body));
    assert_eq!(reply.content_type, "application/json");
    let body = reply.json();
    assert_eq!(body["errcode"], errcode, "{body}");
    let error = body["error"].as_str().expect("error is a string");
    assert!(error.contains(mentions), "`{error}` should mention `{mentions}`");
    assert_eq!(body.as_object().unwrap().len(), 2, "only errcode and error: {body}");
}

#[tokio::test]
async fn not_json_is_m_not_json() {
    assert_error(notify("{not json"), 400, "M_NOT_JSON", "not valid JSON").await;
    assert_error(notify(""), 400, "M_NOT_JSON", "not valid JSON").await;
    assert_error(notify(vec![0xff, 0xfe, 0x00]), 400, "M_NOT_JSON", "not valid JSON").await;
}

#[tokio::test]
async fn wrong_shapes_are_m_bad_json_naming_the_field() {
    assert_error(notify("{}"), 400, "M_BAD_JSON", "notification").await;
    assert_error(notify("[]"), 400, "M_BAD_JSON", "").await;
    assert_error(notify(r#"{"notification":{}}"#), 400, "M_BAD_JSON", "devices").await;
    assert_error(
        notify(r#"{"notification":{"devices":"nope"}}"#),
        400,
        "M_BAD_JSON",
        "notification.devices",
    )
    .await;
    assert_error(
        notify(r#"{"notification":{"devices":[{"pushkey":"k"}]}}"#),
        400,
        "M_BAD_JSON",
        "app_id",
    )
    .await;
    assert_error(
        notify(r#"{"notification":{"devices":[{"app_id":"a","pushkey":null}]}}"#),
        400,
        "M_BAD_JSON",
        "notification.devices[0].pushkey",
    )
    .await;
    // Optional fields of the wrong type are not routing problems: accepted (the 400 rule).
    let reply = call(notify(r#"{"notification":{"counts":{"unread":"many"},"devices":[]}}"#)).await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn oversized_bodies_are_413_json() {
    let big = format!(r#"{{"notification":{{"devices":[],"pad":"{}"}}}}"#, "x".repeat(600 * 1024));
    // Declared by Content-Length …
    let request = Request::post("/_matrix/push/v1/notify")
        .header("content-length", big.len())
        .body(Body::from(big.clone()))
        .unwrap();
    assert_error(request, 413, "M_TOO_LARGE", "larger than").await;
    // … and discovered while reading.
    assert_error(notify(big), 413, "M_TOO_LARGE", "larger than").await;
}

#[tokio::test]
async fn unknown_routes_and_methods_are_json() {
    let get = Request::get("/_matrix/push/v1/notify").body(Body::empty()).unwrap();
    assert_error(get, 405, "M_UNRECOGNIZED", "method").await;
    let other = Request::post("/_matrix/push/v2/notify").body(Body::empty()).unwrap();
    assert_error(other, 404, "M_UNRECOGNIZED", "unrecognized").await;
}

#[tokio::test]
async fn exact_success_bodies() {
    let reply = call(notify(herald_testkit::notify::message("$e1", APP, "k1").to_string())).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.content_type, "application/json");
    assert_eq!(reply.body, br#"{"rejected":[]}"#);

    let reply = call(notify(
        herald_testkit::notify::message("$e1", "org.unknown", "dead/key+1").to_string(),
    ))
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, br#"{"rejected":["dead/key+1"]}"#);

    let reply = call(notify(r#"{"notification":{"devices":[]}}"#)).await;
    assert_eq!(reply.body, br#"{"rejected":[]}"#);

    let reply = call(Request::get("/health").body(Body::empty()).unwrap()).await;
    assert_eq!(reply.json(), json!({"status": "ok"}));
}

#[tokio::test]
async fn content_type_is_not_required() {
    let request = Request::post("/_matrix/push/v1/notify")
        .header("content-type", "text/plain")
        .body(Body::from(herald_testkit::notify::badge(APP, "k", 3).to_string()))
        .unwrap();
    let reply = call(request).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json(), json!({"rejected": []}));
}
