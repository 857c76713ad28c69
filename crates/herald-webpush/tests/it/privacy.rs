//! Nothing a push service answers, and no endpoint path, ends up in an error message or a log:
//! answer bodies echo endpoint paths and tokens.

use herald_testkit::fake_push::Answer;
use herald_testkit::logs::LogCapture;
use serde_json::json;

use crate::{device, fake, message, Setup};

#[tokio::test(flavor = "current_thread")]
async fn answer_bodies_and_endpoint_paths_never_reach_errors_or_logs() {
    let logs = LogCapture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(logs.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let fake = fake().await;
    let setup = Setup::new();
    let secret = "SECRET-TOKEN-d41d8cd98f00b204";
    let answers = [
        Answer::WithBody(400, "text/plain", format!("bad request for /wpush/v2/{secret}")),
        Answer::WithBody(413, "text/html", format!("<p>{secret}</p>")),
        Answer::WithBody(500, "application/json", json!({"error": secret}).to_string()),
        Answer::WithBody(503, "text/plain", secret.repeat(20)),
        Answer::WithBody(
            404,
            "application/json",
            json!({"errno": 102, "more": secret}).to_string(),
        ),
        Answer::WithBody(410, "text/plain", secret.to_owned()),
        Answer::WithBody(
            401,
            "application/json",
            json!({"code": 401, "errno": 111, "message": secret}).to_string(),
        ),
        Answer::WithBody(403, "text/plain", format!("forbidden: {secret}")),
        Answer::WithBody(429, "application/json", json!({"errno": 202, "x": secret}).to_string()),
    ];
    let mut texts = Vec::new();
    for (i, answer) in answers.into_iter().enumerate() {
        // The path carries a token-like secret too.
        let path = format!("/wpush/v2/{secret}-{i}");
        let sub = fake.subscribe(&path);
        fake.script(&path, [answer]);
        match setup.deliver(&message("x"), &device(&sub, json!({}))).await {
            Ok(herald_core::Outcome::TokenDead { detail, .. }) => texts.push(detail),
            Ok(other) => panic!("{other:?}"),
            Err(e) => texts.push(e.to_string()),
        }
        assert_eq!(fake.received(&path).len(), 1);
    }
    for text in &texts {
        assert!(!text.contains(secret), "leaked: {text}");
        assert!(!text.contains("/wpush/"), "path leaked: {text}");
        assert!(text.contains("https://127.0.0.1:"), "names the origin: {text}");
    }
    // The parsed, token-free reason is kept.
    assert!(texts[4].contains("errno 102"), "{}", texts[4]);
    assert!(texts[6].contains("errno 111"), "{}", texts[6]);
    assert!(texts[8].contains("429") && texts[8].contains("errno 202"), "{}", texts[8]);

    let logged = logs.text();
    assert!(!logged.contains(secret), "leaked into the logs:\n{logged}");
    assert!(!logged.contains("/wpush/"), "path leaked into the logs:\n{logged}");
}
