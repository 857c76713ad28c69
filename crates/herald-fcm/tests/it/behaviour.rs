//! FCM runs the behaviour suite (`herald_testkit::behaviour`): each upstream behaviour, played by
//! the fake FCM over HTTPS and HTTP/2 with tokens from the fake token endpoint, through a real
//! server built from the app's TOML table.

use std::path::Path;
use std::time::SystemTime;

use async_trait::async_trait;
use herald_fcm::FcmBackend;
use herald_testkit::behaviour::{
    self, Arrangement, BackendUnderTest, Behaviour, BehaviourAdapter, NoUpstream, Subject,
    TestDevice, RETRY_AFTER_DATE_AHEAD, RETRY_AFTER_HUGE, RETRY_AFTER_SECS,
};
use herald_testkit::fcm::{FakeFcm, FakeOauth, FcmAnswer, TEST_PROJECT};
use herald_testkit::tls::TestCa;
use serde_json::json;

use crate::test_ca;

/// More answers than the suite makes attempts: "every request" behaves so.
const EVERY: usize = 8;

/// An FCM error body cut off after the words a careless reader would act on.
const GARBAGE: &str =
    r#"{"error":{"code":404,"status":"NOT_FOUND","details":[{"errorCode":"UNREGISTERED"#;

struct FcmAdapter;

#[async_trait]
impl BehaviourAdapter for FcmAdapter {
    type Factory = FcmBackend;

    async fn arrange(&self, behaviour: Behaviour, dir: &Path) -> Arrangement {
        test_ca().write_pem(dir);
        let oauth = FakeOauth::start(test_ca()).await;
        oauth.service_account(TEST_PROJECT).write(dir);
        let fcm = match behaviour {
            // FCM's certificate comes from a CA the app was not told to trust (the token
            // endpoint's is trusted).
            Behaviour::TlsUnknownCa => FakeFcm::start(&TestCa::new(), &oauth, TEST_PROJECT).await,
            _ => FakeFcm::start(test_ca(), &oauth, TEST_PROJECT).await,
        };
        let every = |answer: FcmAnswer| vec![answer; EVERY];
        let answers = match behaviour {
            Behaviour::Delivered | Behaviour::TlsUnknownCa | Behaviour::ConnectionRefused => vec![],
            Behaviour::TokenDead => every(FcmAnswer::unregistered()),
            Behaviour::TransientStatus(500) => every(FcmAnswer::internal()),
            Behaviour::TransientStatus(503) => every(FcmAnswer::unavailable()),
            // Google's front end answers these with HTML.
            Behaviour::TransientStatus(status) => every(FcmAnswer::html(status)),
            Behaviour::RetryAfterSeconds => {
                vec![FcmAnswer::quota_exceeded().with_retry_after(RETRY_AFTER_SECS.to_string())]
            }
            Behaviour::RetryAfterDate => vec![FcmAnswer::quota_exceeded().with_retry_after(
                httpdate::fmt_http_date(SystemTime::now() + RETRY_AFTER_DATE_AHEAD),
            )],
            Behaviour::RetryAfterHuge => {
                vec![FcmAnswer::quota_exceeded().with_retry_after(RETRY_AFTER_HUGE)]
            }
            Behaviour::Hang => every(FcmAnswer::Hang),
            Behaviour::ResetMidAnswer => every(FcmAnswer::Reset),
            Behaviour::CredentialsRefused => every(FcmAnswer::permission_denied()),
            Behaviour::MessageRefused => {
                every(FcmAnswer::invalid_argument("message.android.ttl", "Invalid duration"))
            }
            Behaviour::Garbage => every(FcmAnswer::Status {
                status: 400,
                content_type: "application/json",
                body: GARBAGE.to_owned(),
                retry_after: None,
            }),
            other => unreachable!("a behaviour this adapter does not know yet: {other}"),
        };
        fcm.script(answers);
        let (endpoint, upstream): (String, Box<dyn behaviour::FakeUpstream>) = match behaviour {
            Behaviour::ConnectionRefused => {
                let port = herald_testkit::behaviour::closed_port();
                (format!("https://127.0.0.1:{port}"), Box::new(NoUpstream))
            }
            _ => (fcm.base_url(), Box::new(fcm)),
        };
        Arrangement::Ready(Subject {
            backend: BackendUnderTest::Table(format!(
                r#"
                service_account_file = "service-account.json"
                endpoint = "{endpoint}"
                upstream = {{ ca_file = "test-ca.pem", request_timeout = "10s" }}
                "#
            )),
            device: TestDevice {
                pushkey: "fcm-registration-token-behaviour".into(),
                data: json!({}),
            },
            upstream,
            keep: Some(Box::new(oauth)),
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fcm_passes_the_behaviour_suite() {
    behaviour::run("fcm", &FcmAdapter).await;
}
