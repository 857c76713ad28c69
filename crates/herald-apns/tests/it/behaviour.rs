//! APNs runs the behaviour suite (`herald_testkit::behaviour`): each upstream behaviour, played
//! by the fake APNs over HTTP/2 and TLS, through a real server built from the app's TOML table.

use std::path::Path;
use std::time::SystemTime;

use async_trait::async_trait;
use herald_testkit::apns::ApnsAnswer;
use herald_testkit::behaviour::{
    self, Arrangement, BackendUnderTest, Behaviour, BehaviourAdapter, NoUpstream, Subject,
    TestDevice, RETRY_AFTER_DATE_AHEAD, RETRY_AFTER_HUGE, RETRY_AFTER_SECS, SUITE_APP,
};

use super::*;

/// More answers than the suite makes attempts: "every request" behaves so.
const EVERY: usize = 8;

struct ApnsAdapter;

#[async_trait]
impl BehaviourAdapter for ApnsAdapter {
    type Factory = ApnsBackend;

    async fn arrange(&self, behaviour: Behaviour, dir: &Path) -> Arrangement {
        test_ca().write_pem(dir);
        test_key().write_p8(dir);
        let fake = match behaviour {
            // Its certificate comes from a CA the app was not told to trust.
            Behaviour::TlsUnknownCa => FakeApns::token(&TestCa::new(), test_key(), SUITE_APP),
            _ => FakeApns::token(test_ca(), test_key(), SUITE_APP),
        }
        .start()
        .await;
        let every = |answer: ApnsAnswer| vec![answer; EVERY];
        let answers = match behaviour {
            Behaviour::Delivered | Behaviour::TlsUnknownCa | Behaviour::ConnectionRefused => vec![],
            Behaviour::TokenDead => every(ApnsAnswer::Unregistered),
            Behaviour::TransientStatus(500) => every(ApnsAnswer::INTERNAL_SERVER_ERROR),
            Behaviour::TransientStatus(503) => every(ApnsAnswer::SERVICE_UNAVAILABLE),
            // Not APNs' own, but what a load balancer in front of it answers.
            Behaviour::TransientStatus(status) => every(ApnsAnswer::Raw(status, String::new())),
            Behaviour::RetryAfterSeconds => {
                vec![ApnsAnswer::RetryAfter(429, "TooManyRequests", RETRY_AFTER_SECS.to_string())]
            }
            Behaviour::RetryAfterDate => vec![ApnsAnswer::RetryAfter(
                429,
                "TooManyRequests",
                httpdate::fmt_http_date(SystemTime::now() + RETRY_AFTER_DATE_AHEAD),
            )],
            Behaviour::RetryAfterHuge => {
                vec![ApnsAnswer::RetryAfter(429, "TooManyRequests", RETRY_AFTER_HUGE.to_owned())]
            }
            Behaviour::Hang => every(ApnsAnswer::Hang),
            Behaviour::ResetMidAnswer => every(ApnsAnswer::Reset),
            Behaviour::CredentialsRefused => every(ApnsAnswer::INVALID_PROVIDER_TOKEN),
            Behaviour::MessageRefused => every(ApnsAnswer::PAYLOAD_TOO_LARGE),
            // Promised `{"reason": …}`, got a cut-off page.
            Behaviour::Garbage => every(ApnsAnswer::Raw(400, "{\"reas\u{fffd}<html".to_owned())),
            other => unreachable!("a behaviour this adapter does not know yet: {other}"),
        };
        fake.script(answers);
        let (endpoint, upstream): (String, Box<dyn behaviour::FakeUpstream>) = match behaviour {
            Behaviour::ConnectionRefused => {
                let port = herald_testkit::behaviour::closed_port();
                (format!("https://127.0.0.1:{port}"), Box::new(NoUpstream))
            }
            _ => (fake.base_url(), Box::new(fake)),
        };
        Arrangement::Ready(Subject {
            backend: BackendUnderTest::Table(format!(
                r#"
                key_file = "AuthKey_{key_id}.p8"
                key_id = "{key_id}"
                team_id = "{team_id}"
                topic = "{SUITE_APP}"
                endpoint = "{endpoint}"
                upstream = {{ ca_file = "test-ca.pem" }}
                "#,
                key_id = test_key().key_id,
                team_id = test_key().team_id,
            )),
            device: TestDevice { pushkey: token(0x5a).1, data: json!({}) },
            upstream,
            keep: None,
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apns_passes_the_behaviour_suite() {
    behaviour::run("apns", &ApnsAdapter).await;
}
