//! `herald import-sygnal`: Sygnal configurations written from Sygnal's documented options
//! (sygnal.yaml.sample, docs/applications.md) become Herald configurations that the real
//! binary's `check-config` accepts, with the files they name in place; what has no Herald
//! equivalent is named on stderr and in comments, never with a secret's value; files Sygnal
//! would refuse are refused with exit 2 naming the key.

use std::path::Path;

use herald_server::Config;
use herald_testkit::apns::{ApnsCertificateAuthority, ApnsSigningKey};
use herald_testkit::fcm::TestServiceAccount;

use crate::herald_cli::{herald, Run};

/// Token APNs, certificate APNs, FCM v1, WebPush under a glob, a legacy GCM app, a custom
/// pushkin, a proxy, Prometheus, Jaeger, Sentry and Python logging, as Sygnal documents them.
const SYGNAL_YAML: &str = r#"
log:
  setup:
    version: 1
    formatters:
      normal:
        format: "%(asctime)s [%(process)d] %(levelname)-5s %(name)s %(message)s"
    handlers:
      stderr:
        class: "logging.StreamHandler"
        formatter: "normal"
        stream: "ext://sys.stderr"
    root:
      handlers: ["stderr"]
      level: "WARNING"
    disable_existing_loggers: false
  access:
    x_forwarded_for: false

http:
  bind_addresses: ['0.0.0.0']
  port: 5005

proxy: 'http://user:proxy-s3cret@proxy.example:8080'

metrics:
  prometheus:
    enabled: true
    address: '127.0.0.1'
    port: 8000
  opentracing:
    enabled: true
    implementation: jaeger
    service_name: sygnal
    jaeger:
      sampler:
        type: 'const'
        param: 1
      logging: true
  sentry:
    enabled: true
    dsn: "https://sentry-s3cret@sentry.example.org/1"

apps:
  com.example.myapp.ios:
    type: apns
    certfile: com.example.myApp_prod_APNS.pem
    platform: sandbox
    push_type: alert
    inflight_request_limit: 256

  com.example.myapp2.ios:
    type: apns
    keyfile: AuthKey_KEYID12345.p8
    key_id: KEYID12345
    team_id: TEAMID1234
    topic: com.example.myapp2
    convert_device_token_to_hex: false

  im.vector.app:
    type: gcm
    api_version: v1
    project_id: herald-test
    service_account_file: service-account.json
    max_connections: 20
    inflight_request_limit: 512
    fcm_options:
      android:
        ttl: "3600s"
      apns:
        payload:
          aps:
            content-available: 1
            mutable-content: 1
            alert: ""

  "im.vector.web.*":
    type: webpush
    vapid_private_key: private_key.pem
    vapid_contact_email: push-admin@example.org
    allowed_endpoints:
      - "updates.push.services.mozilla.com"
      - "fcm.googleapis.com"
      - "*.notify.windows.com"
    ttl: 3600
    max_connections: 30

  com.example.legacy.android:
    type: gcm
    api_key: AIza-legacy-s3cret

  com.example.custom:
    type: mycompany.pushkins.CustomPushkin
    some_option: 1
"#;

/// Writes the files the configuration names into `dir`.
async fn write_referenced_files(dir: &Path) {
    let ca = ApnsCertificateAuthority::new();
    let cert = ca.issue("com.example.myapp", std::time::Duration::from_secs(86_400), false);
    // Sygnal's certfile: the certificate and its unencrypted key in one PEM.
    std::fs::write(
        dir.join("com.example.myApp_prod_APNS.pem"),
        format!("{}{}", cert.cert_pem, cert.key_pem),
    )
    .unwrap();
    let mut key = ApnsSigningKey::new();
    key.key_id = "KEYID12345".into();
    key.write_p8(dir);
    TestServiceAccount::offline("herald-test").write(dir);
    let keygen = herald(["vapid-keygen", "--out", "private_key.pem"], dir).await;
    assert_eq!(keygen.code, 0, "{}", keygen.said());
}

fn assert_no_secret(run: &Run) {
    for secret in ["proxy-s3cret", "sentry-s3cret", "AIza-legacy-s3cret"] {
        assert!(!run.stderr.contains(secret), "stderr shows `{secret}`: {}", run.said());
    }
}

#[tokio::test]
async fn a_documented_sygnal_configuration_imports_and_passes_check_config() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("sygnal.yaml"), SYGNAL_YAML).unwrap();
    write_referenced_files(dir.path()).await;

    let run = herald(["import-sygnal", "sygnal.yaml", "--out", "herald.toml"], dir.path()).await;
    assert_eq!(run.code, 0, "{}", run.said());
    assert_no_secret(&run);
    let text = std::fs::read_to_string(dir.path().join("herald.toml")).unwrap();
    for secret in ["sentry-s3cret", "AIza-legacy-s3cret"] {
        assert!(!text.contains(secret), "the output copies `{secret}`:\n{text}");
    }
    // What cannot be carried over is named on stderr and in the output's comments.
    for unmapped in [
        "com.example.legacy.android",
        "legacy GCM",
        "mycompany.pushkins.CustomPushkin",
        "metrics.opentracing",
        "metrics.sentry",
        "metrics.prometheus",
        "log.setup",
        "allowed_endpoints",
    ] {
        assert!(run.stderr.contains(unmapped), "stderr lacks `{unmapped}`: {}", run.said());
        assert!(
            text.lines().any(|l| l.starts_with('#') && l.contains(unmapped)),
            "no comment names `{unmapped}`:\n{text}"
        );
    }

    // The real binary accepts it, building every app from the files.
    let check = herald(["check-config", "--config", "herald.toml"], dir.path()).await;
    assert_eq!(check.code, 0, "{}\n{text}", check.said());
    assert!(check.stderr.contains("4 apps"), "{}", check.said());

    // And it says what Sygnal said.
    let config = Config::from_toml(&text, std::iter::empty(), dir.path().to_path_buf()).unwrap();
    assert_eq!(config.server.listen, "0.0.0.0:5005".parse().unwrap());
    assert_eq!(config.server.metrics_listen, Some("127.0.0.1:8000".parse().unwrap()));
    assert_eq!(config.log.level, "warn");
    let app = |key: &str| config.apps.get(key).unwrap_or_else(|| panic!("{key}: {text}")).clone();
    let s = |t: &toml::Table, k: &str| t[k].as_str().unwrap().to_owned();

    let cert = app("com.example.myapp.ios");
    assert_eq!(s(&cert, "kind"), "apns");
    assert_eq!(s(&cert, "certificate_file"), "com.example.myApp_prod_APNS.pem");
    assert_eq!(s(&cert, "key_file"), "com.example.myApp_prod_APNS.pem");
    assert_eq!(s(&cert, "platform"), "sandbox");
    assert_eq!(s(&cert, "push_type"), "alert");
    assert_eq!(cert["max_concurrency"].as_integer(), Some(256));
    assert_eq!(
        cert["upstream"]["proxy"].as_str(),
        Some("http://user:proxy-s3cret@proxy.example:8080")
    );

    let token = app("com.example.myapp2.ios");
    assert_eq!(s(&token, "key_file"), "AuthKey_KEYID12345.p8");
    assert_eq!(s(&token, "key_id"), "KEYID12345");
    assert_eq!(s(&token, "team_id"), "TEAMID1234");
    assert_eq!(s(&token, "topic"), "com.example.myapp2");
    assert_eq!(token["convert_device_token_to_hex"].as_bool(), Some(false));
    assert!(token.get("platform").is_none(), "Sygnal's default, production, is Herald's");

    let fcm = app("im.vector.app");
    assert_eq!(s(&fcm, "kind"), "fcm");
    assert_eq!(s(&fcm, "project_id"), "herald-test");
    assert_eq!(s(&fcm, "service_account_file"), "service-account.json");
    assert_eq!(fcm["max_concurrent_requests"].as_integer(), Some(20));
    assert_eq!(fcm["max_concurrency"].as_integer(), Some(512));
    assert_eq!(fcm["fcm_options"]["android"]["ttl"].as_str(), Some("3600s"));
    assert_eq!(
        fcm["fcm_options"]["apns"]["payload"]["aps"]["mutable-content"].as_integer(),
        Some(1)
    );

    let web = app("im.vector.web.*");
    assert_eq!(s(&web, "kind"), "webpush");
    assert_eq!(s(&web, "vapid_private_key"), "private_key.pem");
    assert_eq!(s(&web, "vapid_subject"), "mailto:push-admin@example.org");
    assert_eq!(s(&web, "ttl"), "1h");
    assert_eq!(web["max_connections_per_host"].as_integer(), Some(30));
    assert_eq!(s(&web, "proxy"), "http://user:proxy-s3cret@proxy.example:8080");
    assert!(web.get("allowed_endpoints").is_none(), "Herald's allowed_endpoints mean the opposite");

    assert!(!config.apps.contains_key("com.example.legacy.android"));
    assert!(!config.apps.contains_key("com.example.custom"));
}

#[tokio::test]
async fn without_out_the_configuration_goes_to_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "apps:\n  com.example.app.*:\n    type: webpush\n    vapid_private_key: k.pem\n    \
                vapid_contact_email: a@example.org\n";
    std::fs::write(dir.path().join("sygnal.yaml"), yaml).unwrap();
    let run = herald(["import-sygnal", "sygnal.yaml"], dir.path()).await;
    assert_eq!(run.code, 0, "{}", run.said());
    let config = Config::from_toml(&run.stdout, std::iter::empty(), dir.path().into()).unwrap();
    // Sygnal's defaults: 127.0.0.1, port 5000.
    assert_eq!(config.server.listen, "127.0.0.1:5000".parse().unwrap());
    assert_eq!(config.apps["com.example.app.*"]["kind"].as_str(), Some("webpush"));
    // The glob's different reading is pointed out.
    assert!(run.stderr.contains("pattern"), "{}", run.said());
    // An existing file is never overwritten.
    std::fs::write(dir.path().join("herald.toml"), "keep").unwrap();
    let again = herald(["import-sygnal", "sygnal.yaml", "--out", "herald.toml"], dir.path()).await;
    assert_eq!(again.code, 1, "{}", again.said());
    assert_eq!(std::fs::read_to_string(dir.path().join("herald.toml")).unwrap(), "keep");
}

#[tokio::test]
async fn files_that_cannot_be_imported_exit_2_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &str, &str); 8] = [
        ("garbage.yaml", "apps: [unclosed\n  - {", "not valid YAML"),
        ("list.yaml", "- apps\n", "expected a mapping"),
        ("empty.yaml", "", "empty"),
        ("unknown-type.yaml", "apps:\n  a.b:\n    type: mqtt\n", "unknown type `mqtt`"),
        ("no-key-id.yaml", "apps:\n  a.b:\n    type: apns\n    keyfile: k.p8\n    team_id: T\n    topic: t\n", "key_id"),
        ("bad-port.yaml", "http:\n  port: 99999\napps:\n  a.b:\n    type: gcm\n", "http.port"),
        (
            "overlapping.yaml",
            "apps:\n  'a.*':\n    type: webpush\n    vapid_private_key: k\n    vapid_contact_email: e@x\n  \
             '*.b':\n    type: webpush\n    vapid_private_key: k\n    vapid_contact_email: e@x\n",
            "can both match",
        ),
        ("only-legacy.yaml", "apps:\n  a.b:\n    type: gcm\n    api_key: AIza-legacy-s3cret\n", "no app could be imported"),
    ];
    for (file, yaml, expected) in cases {
        std::fs::write(dir.path().join(file), yaml).unwrap();
        let out = format!("{file}.toml");
        let run = herald(["import-sygnal", file, "--out", &out], dir.path()).await;
        assert_eq!(run.code, 2, "{file}: {}", run.said());
        assert!(run.stderr.contains(expected), "{file}: {}", run.said());
        assert!(!run.stderr.contains("AIza-legacy-s3cret"), "{file}: {}", run.said());
        assert!(!run.stderr.contains("panicked"), "{file}: {}", run.said());
        assert!(!dir.path().join(&out).exists(), "{file}: nothing is written");
    }
    let missing = herald(["import-sygnal", "missing.yaml"], dir.path()).await;
    assert_eq!(missing.code, 2, "{}", missing.said());
    assert!(missing.stderr.contains("missing.yaml"), "{}", missing.said());
}
