//! The shipped configuration files stay valid: every key in them is known and every app builds.

use std::path::Path;

use herald_server::metrics::Metrics;
use herald_server::server::build_apps;
use herald_server::{BackendRegistry, Config};

fn repo_file(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(name)
}

fn builds(config: &Config) -> usize {
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    runtime
        .block_on(build_apps(config, &BackendRegistry::compiled(), &Metrics::new()))
        .unwrap()
        .iter()
        .count()
}

// The example has an app of each backend kind.
#[cfg(all(feature = "webpush", feature = "fcm", feature = "email", feature = "apns"))]
#[test]
fn example_config_is_complete_and_valid() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.toml");
    std::fs::copy(repo_file("configs/herald.example.toml"), &path).unwrap();
    herald_webpush::generate_vapid_key(&dir.path().join("vapid.pem")).unwrap();
    let fcm_account = herald_testkit::fcm::TestServiceAccount::offline("my-project");
    std::fs::write(dir.path().join("fcm-service-account.json"), fcm_account.json()).unwrap();
    let apns_key = herald_testkit::apns::ApnsSigningKey::new();
    std::fs::write(dir.path().join("AuthKey_ABC123DEFG.p8"), apns_key.pem()).unwrap();
    let config = Config::load(&path).unwrap();
    assert_eq!(builds(&config), config.apps.len());
    assert!(config.apps.contains_key("org.example.*"));
}

#[test]
fn quickstart_config_builds_and_creates_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let configs = dir.path().join("configs");
    std::fs::create_dir(&configs).unwrap();
    let path = configs.join("quickstart.toml");
    std::fs::copy(repo_file("configs/quickstart.toml"), &path).unwrap();
    let config = Config::load(&path).unwrap();
    assert_eq!(config.server.listen, "127.0.0.1:5000".parse().unwrap());
    assert_eq!(builds(&config), 2);
    assert!(dir.path().join("data/vapid.pem").exists(), "key created next to the store");
}

/// The README's first command, as a new user runs it: a relative `--config` from the checkout.
/// Paths in the file resolve against its directory exactly once (a relative base resolved twice
/// once nested into `configs/configs/…` and the WebPush app could not read the key it created).
#[tokio::test]
async fn quickstart_with_a_relative_config_path_creates_and_reads_its_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("configs")).unwrap();
    std::fs::copy(repo_file("configs/quickstart.toml"), dir.path().join("configs/quickstart.toml"))
        .unwrap();
    // Builds the WebPush app (creating its key) and sends to a pusher without a subscription.
    let run = crate::herald_cli::herald(
        [
            "send-test",
            "--config",
            "configs/quickstart.toml",
            "--app",
            "org.example.web",
            "--pushkey",
            "not-a-subscription",
        ],
        dir.path(),
    )
    .await;
    assert_ne!(run.code, 2, "the app must build: {}", run.said());
    assert!(dir.path().join("data/vapid.pem").is_file(), "{}", run.said());
    assert!(!dir.path().join("configs/configs").exists(), "{}", run.said());
}
