//! Email runs the behaviour suite (`herald_testkit::behaviour`): each upstream behaviour, played
//! by a real SMTP server (aiosmtpd) with STARTTLS and AUTH, through a real server built from the
//! app's TOML table.

use std::path::Path;

use async_trait::async_trait;
use herald_testkit::behaviour::{
    self, Arrangement, BackendUnderTest, Behaviour, BehaviourAdapter, NoUpstream, Subject,
    TestDevice,
};
use herald_testkit::smtp::{Answer, FakeSmtp, Security, Stage};

use crate::*;

/// More answers than the suite makes attempts: "every request" behaves so.
const EVERY: usize = 8;

struct EmailAdapter;

#[async_trait]
impl BehaviourAdapter for EmailAdapter {
    type Factory = EmailBackend;

    async fn arrange(&self, behaviour: Behaviour, dir: &Path) -> Arrangement {
        let (stage, answer) = match behaviour {
            Behaviour::RetryAfterSeconds
            | Behaviour::RetryAfterDate
            | Behaviour::RetryAfterHuge => {
                return Arrangement::NotApplicable("SMTP has no Retry-After");
            }
            Behaviour::Delivered
            | Behaviour::ConnectionRefused
            | Behaviour::TlsUnknownCa
            | Behaviour::CredentialsRefused => (Stage::Data, None),
            Behaviour::TokenDead => (
                Stage::Rcpt,
                Some(Answer::reply("550 5.1.1 <behaviour@example.org>: User unknown")),
            ),
            // The nearest SMTP equivalents of 500, 502, 503, 504, one per stage.
            Behaviour::TransientStatus(500) => {
                (Stage::Data, Some(Answer::reply("451 4.3.0 Error: queue file write error")))
            }
            Behaviour::TransientStatus(502) => {
                (Stage::Mail, Some(Answer::reply("421 4.3.2 Service shutting down")))
            }
            Behaviour::TransientStatus(503) => {
                (Stage::Rcpt, Some(Answer::reply("450 4.2.1 Mailbox busy")))
            }
            Behaviour::TransientStatus(_) => {
                (Stage::Rcpt, Some(Answer::reply("452 4.3.1 Insufficient system storage")))
            }
            Behaviour::Hang => (Stage::Data, Some(Answer::Hang)),
            Behaviour::ResetMidAnswer => (Stage::Data, Some(Answer::Reset)),
            Behaviour::MessageRefused => {
                (Stage::Data, Some(Answer::reply("552 5.3.4 Message size exceeds fixed limit")))
            }
            // Not the text SMTP promises: a control character and HTML after a code a careless
            // reader would take for "no such user" — after DATA, it is about the message.
            Behaviour::Garbage => {
                (Stage::Data, Some(Answer::reply("554 5.1.1 \u{1}<html><body>Mailbox unavailable")))
            }
            other => unreachable!("a behaviour this adapter does not know yet: {other}"),
        };
        // Its certificate comes from a CA the app was not told to trust.
        let stranger;
        let ca = match behaviour {
            Behaviour::TlsUnknownCa => {
                stranger = TestCa::new();
                &stranger
            }
            _ => test_ca(),
        };
        let fake = FakeSmtp::start(ca, Security::StartTls, Some((USER, PASSWORD))).await;
        if let Some(answer) = answer {
            fake.script(stage, "*", vec![answer; EVERY]).await;
        }
        test_ca().write_pem(dir);
        let password = match behaviour {
            Behaviour::CredentialsRefused => "not the password",
            _ => PASSWORD,
        };
        std::fs::write(dir.join("smtp-password"), password).unwrap();
        let (url, upstream): (String, Box<dyn behaviour::FakeUpstream>) = match behaviour {
            Behaviour::ConnectionRefused => {
                let port = herald_testkit::behaviour::closed_port();
                (format!("smtp://127.0.0.1:{port}?tls=required"), Box::new(NoUpstream))
            }
            _ => (fake.url(), Box::new(fake)),
        };
        Arrangement::Ready(Subject {
            backend: BackendUnderTest::Table(format!(
                r#"
                smtp_url = "{url}"
                from = "Herald <notify@example.org>"
                username = "{USER}"
                password = "smtp-password"
                ca_file = "test-ca.pem"
                allowed_domains = ["example.org"]
                "#
            )),
            device: TestDevice { pushkey: "behaviour@example.org".into(), data: json!({}) },
            upstream,
            keep: None,
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_passes_the_behaviour_suite() {
    behaviour::run("email", &EmailAdapter).await;
}
