//! Building an app: every mistake is caught at start-up (and by `herald check-config`), naming the
//! key, with no network.

use herald_core::config::SecretSource;
use herald_core::BuildError;

use super::*;

async fn build(config: ApnsConfig, dir: &std::path::Path) -> Result<(), BuildError> {
    ApnsBackend::build(&AppContext::new(APP, dir), config).await.map(drop)
}

fn token_config(dir: &std::path::Path) -> ApnsConfig {
    let key = test_key().write_p8(dir);
    ApnsConfig::token(key, &test_key().key_id, &test_key().team_id, TOPIC)
}

#[tokio::test]
async fn a_missing_key_file_names_the_key_and_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = token_config(dir.path());
    config.key_file = SecretSource::from("nope/AuthKey.p8");
    let e = build(config, dir.path()).await.expect_err("no file").to_string();
    assert!(e.contains("`key_file`") && e.contains("AuthKey.p8"), "{e}");
}

#[tokio::test]
async fn the_key_can_come_from_the_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let variable = "HERALD_APNS_TEST_KEY_8812";
    // Edition 2021, and no other test reads this variable.
    std::env::set_var(variable, test_key().pem());
    let mut config = token_config(dir.path());
    config.key_file = SecretSource::Env(variable.into());
    build(config, dir.path()).await.expect("a key from the environment");
    std::env::remove_var(variable);
}

#[tokio::test]
async fn a_key_that_is_not_a_p8_is_refused_without_showing_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("key.p8");
    let secret = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LXNlY3JldA==\n-----END PRIVATE KEY-----\n";
    std::fs::write(&path, secret).expect("write");
    let mut config = token_config(dir.path());
    config.key_file = SecretSource::File(path);
    let e = build(config, dir.path()).await.expect_err("not P-256").to_string();
    assert!(e.contains("`key_file`") && !e.contains("c2VjcmV0"), "{e}");
}

#[tokio::test]
async fn upstream_settings_are_checked_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = token_config(dir.path());
    config.upstream = UpstreamConfig::default().with_ca_file(dir.path().join("missing-ca.pem"));
    let e = build(config, dir.path()).await.expect_err("no CA file").to_string();
    assert!(e.contains("ca_file"), "{e}");
}

#[tokio::test]
async fn a_certificate_without_uid_needs_a_topic() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A TLS client certificate that is not Apple's: no UID in its subject.
    let plain = test_ca().issue_client("someone");
    std::fs::write(dir.path().join("c.pem"), &plain.cert_pem).expect("write");
    std::fs::write(dir.path().join("k.pem"), &plain.key_pem).expect("write");
    let config = ApnsConfig::certificate("c.pem", "k.pem");
    let e = build(config.clone(), dir.path()).await.expect_err("no topic").to_string();
    assert!(e.contains("`topic`"), "{e}");
    let config = ApnsConfig { topic: Some("org.example.x".into()), ..config };
    build(config, dir.path()).await.expect("with a topic");
}
