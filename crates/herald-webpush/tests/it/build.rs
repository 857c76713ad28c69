//! Building the backend: the VAPID key (file or environment), `check-config` without side
//! effects, and configuration checks.

use herald_core::config::SecretSource;
use herald_core::{AppContext, BackendFactory};
use herald_webpush::{generate_vapid_key, vapid_public_key, WebPushBackend, WebPushConfig};

use crate::{app, block_on, test_ca};

fn check_only(dir: &std::path::Path) -> AppContext {
    AppContext { check_only: true, ..app(dir) }
}

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
    // The glob that used to let `10.1.2.attacker.example` through: refused, with its migration.
    let mut config = WebPushConfig::new("vapid.pem", "mailto:ops@example.org");
    config.allowed_endpoints = vec!["push.internal".into(), "10.1.2.*".into()];
    let e = WebPushBackend::new(&app(dir.path()), config).expect_err("address glob").to_string();
    assert!(e.contains("`10.1.2.*`") && e.contains("10.1.2.0/24"), "{e}");
    let mut config = WebPushConfig::new("vapid.pem", "mailto:ops@example.org");
    config.ca_file = Some("nope.pem".into());
    let e = WebPushBackend::new(&app(dir.path()), config).expect_err("ca_file").to_string();
    assert!(e.contains("ca_file") && e.contains("nope.pem"), "{e}");
}

#[test]
fn check_config_creates_no_key_but_checks_that_it_could() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = WebPushConfig::new("keys/vapid.pem", "mailto:ops@example.org");
    config.create_vapid_key_if_missing = true;
    config.ca_file = Some(test_ca().write_pem(dir.path()));
    block_on(WebPushBackend::build(&check_only(dir.path()), config.clone())).expect("checks out");
    assert!(!dir.path().join("keys").exists(), "no directory created");
    assert!(!dir.path().join("keys/vapid.pem").exists(), "no key created");

    // A key that could not be created fails the check as it would fail `serve`.
    std::fs::write(dir.path().join("file"), "").expect("write");
    let mut blocked = config.clone();
    blocked.vapid_private_key = SecretSource::File("file/vapid.pem".into());
    let e = WebPushBackend::new(&check_only(dir.path()), blocked.clone()).expect_err("blocked");
    assert!(e.to_string().contains("not a directory"), "{e}");
    assert!(WebPushBackend::new(&app(dir.path()), blocked).is_err(), "serve fails too");

    // Without the option, a missing key is an error for check-config too.
    config.create_vapid_key_if_missing = false;
    let e = WebPushBackend::new(&check_only(dir.path()), config.clone()).expect_err("missing");
    assert!(e.to_string().contains("vapid_private_key"), "{e}");

    // `serve` creates it; then check-config loads it (and still writes nothing).
    config.create_vapid_key_if_missing = true;
    let served = WebPushBackend::new(&app(dir.path()), config.clone()).expect("serve");
    let checked = WebPushBackend::new(&check_only(dir.path()), config).expect("check");
    assert_eq!(served.vapid_public_key(), checked.vapid_public_key());
}

#[test]
fn the_key_can_come_from_an_environment_variable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("vapid.pem");
    let public = generate_vapid_key(&path).expect("generate");
    let pem = std::fs::read_to_string(&path).expect("read");
    std::fs::remove_file(&path).expect("remove");
    let var = "HERALD_WEBPUSH_TEST_VAPID_PEM";
    // Edition 2021; no other test reads this variable.
    std::env::set_var(var, &pem);
    let mut config = WebPushConfig::new("unused", "mailto:ops@example.org");
    config.vapid_private_key = SecretSource::Env(var.into());
    let backend = WebPushBackend::new(&app(dir.path()), config.clone()).expect("from env");
    assert_eq!(backend.vapid_public_key(), public);

    std::env::set_var(var, "not a key");
    let e = WebPushBackend::new(&app(dir.path()), config.clone()).expect_err("garbage").to_string();
    assert!(e.contains(var) && !e.contains("not a key"), "names the variable, not the value: {e}");
    std::env::remove_var(var);
    let e = WebPushBackend::new(&app(dir.path()), config).expect_err("unset").to_string();
    assert!(e.contains(var) && e.contains("not set"), "{e}");
}
