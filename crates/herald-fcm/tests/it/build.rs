//! Building an app: the service account from a file or the environment, and every mistake named
//! by its key, without quoting the key file.

use herald_core::config::SecretSource;
use herald_core::BuildError;
use herald_testkit::fcm::TEST_PROJECT;
use serde_json::json;

use crate::{android, build, message, Env};

fn error(result: Result<std::sync::Arc<dyn herald_core::Backend>, BuildError>) -> String {
    match result {
        Ok(_) => panic!("expected a build error"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn the_service_account_can_come_from_the_environment() {
    let env = Env::new().await;
    let name = "HERALD_FCM_TEST_SERVICE_ACCOUNT";
    // Edition 2021: setting a variable no other test reads is sound.
    std::env::set_var(name, env.account.json());
    let backend = build(&env.fcm, &env.account, env.dir.path(), |c| {
        c.service_account_file = SecretSource::Env(name.into());
    })
    .expect("builds");
    std::env::remove_var(name);
    backend
        .deliver(&crate::call(std::time::Duration::from_secs(10)), &message(), &android())
        .await
        .expect("delivered");
}

#[tokio::test]
async fn project_id_comes_from_the_account_unless_set() {
    let env = Env::new().await;
    env.deliver(&message(), &android()).await.expect("delivered");
    assert_eq!(env.fcm.received()[0].project, TEST_PROJECT);
    // Another project than the fake's: Google answers 403, credentials refused.
    let other = build(&env.fcm, &env.account, env.dir.path(), |c| {
        c.project_id = Some("someone-else".into());
    })
    .expect("builds");
    let e = other
        .deliver(&crate::call(std::time::Duration::from_secs(10)), &message(), &android())
        .await
        .expect_err("refused");
    assert_eq!(e.class(), herald_core::ErrorClass::CredentialsRefused);
    assert_eq!(env.fcm.received()[1].project, "someone-else");
}

#[tokio::test]
async fn bad_service_account_files_are_named_and_never_quoted() {
    let env = Env::new().await;
    let dir = env.dir.path();
    let secret = &env.account.private_key_pem[60..100];
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        path
    };
    let mut json: serde_json::Value = serde_json::from_str(&env.account.json()).expect("json");
    let cases = [
        (write("missing.json", String::new()).with_file_name("nope.json"), "nope.json"),
        (write("text.json", format!("not json {secret}")), "not a JSON object"),
        (
            write("user.json", json!({"type": "authorized_user", "client_id": "x"}).to_string()),
            "authorized_user",
        ),
        (
            {
                let mut j = json.clone();
                j["private_key"] = format!("-----BEGIN PRIVATE KEY-----\n{secret}\n").into();
                write("badkey.json", j.to_string())
            },
            "private_key",
        ),
        (
            {
                let mut j = json.clone();
                j.as_object_mut().expect("object").remove("client_email");
                write("noemail.json", j.to_string())
            },
            "client_email",
        ),
        (
            {
                let mut j = json.clone();
                j["token_uri"] = "/token".into();
                write("relative.json", j.to_string())
            },
            "token_uri",
        ),
    ];
    for (path, expected) in cases {
        let e = error(build(&env.fcm, &env.account, dir, |c| {
            c.service_account_file = SecretSource::File(path.clone());
        }));
        assert!(e.contains("service_account_file"), "{e}");
        assert!(e.contains(expected), "{expected}: {e}");
        assert!(!e.contains(secret), "quoted the key: {e}");
    }
    json.as_object_mut().expect("object").remove("project_id");
    let path = write("noproject.json", json.to_string());
    let e = error(build(&env.fcm, &env.account, dir, |c| {
        c.service_account_file = SecretSource::File(path.clone());
    }));
    assert!(e.contains("project_id"), "{e}");
    let e = error(build(&env.fcm, &env.account, dir, |c| c.endpoint = "fcm.googleapis.com".into()));
    assert!(e.contains("endpoint"), "{e}");
    let e = error(build(&env.fcm, &env.account, dir, |c| {
        c.upstream = c.upstream.clone().with_ca_file("nope.pem");
    }));
    assert!(e.contains("ca_file"), "{e}");
}

#[tokio::test]
async fn check_only_builds_without_network() {
    let env = Env::new().await;
    let mut app = crate::app(env.dir.path());
    app.check_only = true;
    let config = crate::config(&env.fcm, &env.account, env.dir.path());
    crate::block_on(<herald_fcm::FcmBackend as herald_core::BackendFactory>::build(&app, config))
        .expect("checks");
    assert_eq!((env.oauth.requests().len(), env.oauth.connections_accepted()), (0, 0));
    assert_eq!(env.fcm.connections_accepted(), 0);
}
