//! Building the backend: the VAPID key file and configuration checks.

use herald_webpush::{generate_vapid_key, vapid_public_key, WebPushBackend, WebPushConfig};

use crate::app;

#[test]
fn the_key_is_created_on_first_start_when_configured() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = WebPushConfig::new("keys/vapid.pem", "mailto:ops@example.org");
    config.create_vapid_key_if_missing = true;
    let backend = WebPushBackend::new(&app(dir.path()), config.clone()).expect("build");
    let path = dir.path().join("keys/vapid.pem");
    assert!(path.exists(), "resolved against config_dir");
    let public = vapid_public_key(&path).expect("readable");
    assert_eq!(backend.vapid_public_key(), public);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // A second start reuses the key.
    let again = WebPushBackend::new(&app(dir.path()), config).expect("build");
    assert_eq!(again.vapid_public_key(), public);
}

#[test]
fn a_missing_key_is_a_build_error_unless_creation_is_configured() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = WebPushConfig::new("vapid.pem", "mailto:ops@example.org");
    let e = WebPushBackend::new(&app(dir.path()), config).expect_err("no key");
    assert!(e.to_string().contains("vapid_private_key"), "{e}");
    assert!(e.to_string().contains("vapid-keygen"), "{e}");
    assert!(!dir.path().join("vapid.pem").exists());
}

#[test]
fn keygen_writes_a_key_the_backend_loads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("vapid.pem");
    let public = generate_vapid_key(&path).expect("generate");
    assert!(generate_vapid_key(&path).is_err(), "never overwrites");
    let config = WebPushConfig::new(&path, "https://example.org/contact");
    let backend = WebPushBackend::new(&app(dir.path()), config).expect("absolute path");
    assert_eq!(backend.vapid_public_key(), public);
}

#[test]
fn config_errors_name_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    generate_vapid_key(&dir.path().join("vapid.pem")).expect("generate");
    let config = WebPushConfig::new("vapid.pem", "ops@example.org");
    let e = WebPushBackend::new(&app(dir.path()), config).expect_err("subject");
    assert!(e.to_string().contains("vapid_subject"), "{e}");
    let mut config = WebPushConfig::new("vapid.pem", "mailto:ops@example.org");
    config.allowed_endpoints = vec!["https://push.example/".into()];
    let e = WebPushBackend::new(&app(dir.path()), config).expect_err("pattern");
    assert!(e.to_string().contains("allowed_endpoints"), "{e}");
}
