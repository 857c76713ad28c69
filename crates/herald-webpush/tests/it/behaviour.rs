//! WebPush runs the behaviour suite (`herald_testkit::behaviour`): each upstream behaviour, played
//! by the fake push service over HTTPS, through a real server built from the app's TOML table.

use std::path::Path;
use std::time::SystemTime;

use async_trait::async_trait;
use herald_testkit::behaviour::{
    self, Arrangement, BackendUnderTest, Behaviour, BehaviourAdapter, NoUpstream, Subject,
    TestDevice, RETRY_AFTER_DATE_AHEAD, RETRY_AFTER_HUGE, RETRY_AFTER_SECS,
};
use herald_testkit::fake_push::{Answer, FakePushService, Protocols};
use herald_testkit::tls::TestCa;
use herald_webpush::WebPushBackend;

use crate::{fake, test_ca};

/// More answers than the suite makes attempts: "every request" behaves so.
const EVERY: usize = 8;

/// An error body where a push service promises JSON (autopush's `{"code", "errno", …}`): cut off
/// after a key a careless reader would act on.
const GARBAGE: &str = "{\"code\": 401, \"errno\": 109, \"message\": \"\u{fffd}\u{1}<html";

struct WebPushAdapter;

#[async_trait]
impl BehaviourAdapter for WebPushAdapter {
    type Factory = WebPushBackend;

    async fn arrange(&self, behaviour: Behaviour, dir: &Path) -> Arrangement {
        test_ca().write_pem(dir);
        let fake = match behaviour {
            // Its certificate comes from a CA the app was not told to trust.
            Behaviour::TlsUnknownCa => {
                FakePushService::start_https(&TestCa::new(), Protocols::Both).await
            }
            _ => fake().await,
        };
        let sub = fake.subscribe("/push/behaviour");
        let every = |answer: Answer| vec![answer; EVERY];
        let answers = match behaviour {
            Behaviour::Delivered | Behaviour::TlsUnknownCa | Behaviour::ConnectionRefused => vec![],
            Behaviour::TokenDead => every(Answer::Status(410)),
            Behaviour::TransientStatus(status) => every(Answer::Status(status)),
            Behaviour::RetryAfterSeconds => vec![Answer::retry_after_secs(429, RETRY_AFTER_SECS)],
            Behaviour::RetryAfterDate => {
                vec![Answer::retry_after_date(429, SystemTime::now() + RETRY_AFTER_DATE_AHEAD)]
            }
            Behaviour::RetryAfterHuge => {
                vec![Answer::StatusRetryAfter(429, RETRY_AFTER_HUGE.to_owned())]
            }
            Behaviour::Hang => every(Answer::Hang),
            Behaviour::ResetMidAnswer => every(Answer::Reset),
            // A fresh backend has had no 201 from this origin: a 401 is our VAPID key.
            Behaviour::CredentialsRefused => every(Answer::Status(401)),
            Behaviour::MessageRefused => every(Answer::Status(413)),
            Behaviour::Garbage => {
                every(Answer::WithBody(400, "application/json", GARBAGE.to_owned()))
            }
            other => unreachable!("a behaviour this adapter does not know yet: {other}"),
        };
        fake.script(&sub.path, answers);
        let mut data = sub.pusher_data();
        let upstream: Box<dyn behaviour::FakeUpstream> = match behaviour {
            Behaviour::ConnectionRefused => {
                let port = herald_testkit::behaviour::closed_port();
                data["endpoint"] = format!("https://127.0.0.1:{port}/push/behaviour").into();
                Box::new(NoUpstream)
            }
            _ => Box::new(fake),
        };
        Arrangement::Ready(Subject {
            backend: BackendUnderTest::Table(
                r#"
                vapid_private_key = "vapid.pem"
                create_vapid_key_if_missing = true
                vapid_subject = "mailto:ops@example.org"
                allowed_endpoints = ["127.0.0.0/8"]
                ca_file = "test-ca.pem"
                request_timeout = "10s"
                "#
                .to_owned(),
            ),
            device: TestDevice { pushkey: sub.p256dh, data },
            upstream,
            keep: None,
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webpush_passes_the_behaviour_suite() {
    behaviour::run("webpush", &WebPushAdapter).await;
}
