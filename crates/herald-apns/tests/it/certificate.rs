//! Certificate auth: the client certificate in the TLS handshake, its topic, its expiry.

use std::sync::Mutex;
use std::time::Duration;

use herald_core::BackendMetrics;
use herald_testkit::apns::{ApnsCertificateAuthority, ApnsClientCertificate};
use herald_testkit::logs::LogCapture;
use prometheus_client::registry::Registry;
use serde_json::json;

use super::*;

const CERT_TOPIC: &str = "org.example.certapp";

/// A fake APNs that demands certificates from `client_ca`, and a backend presenting `cert`.
struct CertSetup {
    fake: FakeApns,
    backend: Result<Arc<dyn Backend>, herald_core::BuildError>,
    registry: Arc<Mutex<Registry>>,
    _dir: tempfile::TempDir,
}

async fn cert_setup(
    client_ca: &ApnsCertificateAuthority,
    cert: &ApnsClientCertificate,
    topic: Option<&str>,
) -> CertSetup {
    let fake = FakeApns::certificate(test_ca(), client_ca, CERT_TOPIC)
        .topic("org.example.other")
        .start()
        .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert_path, key_path) = cert.write(dir.path());
    let mut config = ApnsConfig::certificate(cert_path, key_path);
    config.topic = topic.map(str::to_owned);
    config.endpoint = Some(fake.base_url());
    config.upstream = UpstreamConfig::default().with_ca_file(test_ca().write_pem(dir.path()));
    let registry = Arc::new(Mutex::new(Registry::default()));
    let mut app = AppContext::new(APP, dir.path());
    app.metrics = BackendMetrics::new(Arc::clone(&registry), APP);
    let backend = ApnsBackend::build(&app, config).await;
    CertSetup { fake, backend, registry, _dir: dir }
}

fn metrics(registry: &Mutex<Registry>) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry.lock().expect("registry"))
        .expect("encode");
    text
}

#[tokio::test]
async fn delivers_with_the_certificate_and_its_uid_as_the_topic() {
    let client_ca = ApnsCertificateAuthority::new();
    let cert = client_ca.issue(CERT_TOPIC, Duration::from_secs(365 * 86_400), false);
    let s = cert_setup(&client_ca, &cert, None).await;
    let backend = s.backend.expect("build");
    assert_delivered(
        &backend.deliver(&call(1, 1), &message(), &device(&token(1).1, json!({}))).await,
    );
    let r = &s.fake.received()[0];
    assert_eq!(r.rejection, None);
    assert_eq!(r.header("apns-topic"), Some(CERT_TOPIC));
    assert_eq!(r.header("authorization"), None, "no provider token with a certificate");
    // The expiry is exported for alerting.
    let text = metrics(&s.registry);
    let line = text
        .lines()
        // The server's registry adds the `herald_` prefix; this one is the backend's own.
        .find(|l| l.starts_with("apns_certificate_expiry_timestamp_seconds{"))
        .unwrap_or_else(|| panic!("no expiry gauge in\n{text}"));
    assert!(line.contains(&format!("app=\"{APP}\"")), "{line}");
    let expiry: i64 = line.rsplit(' ').next().expect("value").parse().expect("number");
    let in_a_year = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).expect("now").as_secs()
        as i64
        + 365 * 86_400;
    assert!((in_a_year - expiry).abs() < 120, "{expiry} vs {in_a_year}");
}

#[tokio::test]
async fn a_configured_topic_wins_over_the_uid() {
    let client_ca = ApnsCertificateAuthority::new();
    let cert = client_ca.issue(CERT_TOPIC, Duration::from_secs(365 * 86_400), false);
    let s = cert_setup(&client_ca, &cert, Some("org.example.other")).await;
    let backend = s.backend.expect("build");
    assert_delivered(
        &backend.deliver(&call(1, 1), &message(), &device(&token(1).1, json!({}))).await,
    );
    assert_eq!(s.fake.received()[0].header("apns-topic"), Some("org.example.other"));
}

#[test]
fn a_certificate_expiring_within_30_days_is_warned_about() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
    let (logs, _guard) = LogCapture::start_json(tracing::Level::WARN);
    let client_ca = ApnsCertificateAuthority::new();
    let soon = client_ca.issue(CERT_TOPIC, Duration::from_secs(10 * 86_400), false);
    let s = runtime.block_on(cert_setup(&client_ca, &soon, None));
    let backend = s.backend.as_ref().expect("build");
    // The server warms the app up after building it: still one warning, not two.
    runtime.block_on(backend.warm_up()).expect("warm up");
    let warnings =
        logs.events("the APNs client certificate expires soon: renew it (`certificate_file`)");
    assert_eq!(warnings.len(), 1, "{}", logs.text());
    assert_eq!(warnings[0]["days_left"], 9);
    assert_eq!(warnings[0]["app"], APP);
    // A year left: quiet.
    let later = client_ca.issue(CERT_TOPIC, Duration::from_secs(365 * 86_400), false);
    let before = logs.lines().len();
    let _ = runtime.block_on(cert_setup(&client_ca, &later, None));
    assert_eq!(logs.lines().len(), before);
}

#[tokio::test]
async fn an_expired_certificate_fails_as_credentials_without_a_request() {
    let client_ca = ApnsCertificateAuthority::new();
    let expired = client_ca.issue(CERT_TOPIC, Duration::ZERO, true);
    let s = cert_setup(&client_ca, &expired, None).await;
    // The app still starts (other apps must not go down with it); every delivery says why.
    let backend = s.backend.expect("build");
    let result = backend.deliver(&call(1, 1), &message(), &device(&token(1).1, json!({}))).await;
    assert_failed(&result, ErrorClass::CredentialsRefused, "certificate_expired");
    assert_eq!(s.fake.connections_accepted(), 0);
}

#[tokio::test]
async fn a_certificate_apns_refuses_is_credentials_refused() {
    let client_ca = ApnsCertificateAuthority::new();
    // Issued by someone else: the fake's TLS refuses it.
    let stranger =
        ApnsCertificateAuthority::new().issue(CERT_TOPIC, Duration::from_secs(86_400 * 90), false);
    let s = cert_setup(&client_ca, &stranger, None).await;
    let backend = s.backend.expect("build");
    let result = backend.deliver(&call(1, 1), &message(), &device(&token(1).1, json!({}))).await;
    let text = assert_failed(&result, ErrorClass::CredentialsRefused, "certificate_refused");
    assert!(text.contains("`certificate_file`"), "{text}");
    assert_eq!(s.fake.handshakes(), 0);
    assert_eq!(s.fake.requests(), 0);
}

use std::time::SystemTime;
