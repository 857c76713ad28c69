//! The behaviour suite every backend passes: one table of upstream behaviours, each with what the
//! homeserver must be told, run through a real `herald-server` against a backend's own fake
//! upstream (as OpenDAL runs one behaviour suite against every service).
//!
//! A backend crate implements [`BehaviourAdapter`]: for one [`Behaviour`] it starts a fake upstream
//! (real sockets on 127.0.0.1) that behaves so, and returns the app's configuration table (or a
//! built backend) and a device to notify. [`run`] then, per behaviour, starts a `herald_server::Server`
//! in-process ([`SUITE_DEADLINE`], [`SUITE_ATTEMPTS`] attempts, small backoffs), sends a notify
//! request, and checks what a homeserver would see: the HTTP status, the `rejected` list, the outcome
//! in `herald_notifications_total`, how many requests reached the upstream, whether the upstream
//! answered (`herald_upstream_responses_total`), and how long the answer took. So the server's
//! delivery layer and the backend's classification are checked together, the way they run.
//!
//! A backend may declare a behaviour [`Arrangement::NotApplicable`] only with a reason (SMTP has
//! no `Retry-After` date); the suite prints it.

use std::any::Any;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use herald_core::{Backend, BackendFactory};
use herald_server::{BackendRegistry, Config, Server};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

/// The `request_deadline` of the servers the suite starts.
pub const SUITE_DEADLINE: Duration = Duration::from_secs(3);
/// The `delivery.max_attempts` of the servers the suite starts.
pub const SUITE_ATTEMPTS: usize = 3;
/// The `Retry-After` (seconds) of [`Behaviour::RetryAfterSeconds`]: short enough to wait for
/// within [`SUITE_DEADLINE`], long enough that a backoff could not be mistaken for it.
pub const RETRY_AFTER_SECS: u64 = 1;
/// How far ahead the `Retry-After` date of [`Behaviour::RetryAfterDate`] is: past the deadline.
pub const RETRY_AFTER_DATE_AHEAD: Duration = Duration::from_secs(60);
/// The `Retry-After` of [`Behaviour::RetryAfterHuge`]: `u64::MAX` seconds, as push services have
/// been seen to send.
pub const RETRY_AFTER_HUGE: &str = "18446744073709551615";
/// The app_id (and configuration key) of the app under test.
pub const SUITE_APP: &str = "org.example.behaviour";

/// "Answered at once": well before the deadline.
const AT_ONCE: Duration = Duration::from_millis(1500);
/// How late after the deadline a hang may be answered.
const DEADLINE_MARGIN: Duration = Duration::from_secs(1);

/// One way an upstream can behave. What the fake upstream must do is in each variant's doc;
/// "every request" means every request for the device the adapter returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Behaviour {
    /// Every request is accepted.
    Delivered,
    /// Every request is answered "this token is gone for good" (WebPush 410, APNs 410
    /// Unregistered, FCM 404 UNREGISTERED, SMTP 550 5.1.1).
    TokenDead,
    /// Every request is answered with this transient HTTP status (500, 502, 503, 504), or the
    /// protocol's nearest equivalent (SMTP 421/451).
    TransientStatus(u16),
    /// The first request is answered 429 with `Retry-After: `[`RETRY_AFTER_SECS`]; later ones are
    /// accepted.
    RetryAfterSeconds,
    /// The first request is answered 429 with `Retry-After:` an HTTP date
    /// [`RETRY_AFTER_DATE_AHEAD`] from now; later ones are accepted.
    RetryAfterDate,
    /// The first request is answered 429 with `Retry-After: `[`RETRY_AFTER_HUGE`]; later ones are
    /// accepted.
    RetryAfterHuge,
    /// Every request is read and never answered.
    Hang,
    /// Nothing listens at the upstream's address.
    ConnectionRefused,
    /// Every request is read, then the connection drops before the answer is complete.
    ResetMidAnswer,
    /// The upstream's TLS certificate is issued by a CA the backend does not trust.
    TlsUnknownCa,
    /// Every request is answered "your credentials are refused" (a key, certificate or account
    /// the upstream does not accept).
    CredentialsRefused,
    /// Every request is answered "this message is refused" (too large, malformed).
    MessageRefused,
    /// Every request is answered with an error whose body is not what the protocol promises (not
    /// JSON where JSON is promised, truncated, binary): the backend must neither guess a dead token
    /// nor fail on it.
    Garbage,
}

impl Behaviour {
    /// Every behaviour, in the order the suite runs them.
    pub const ALL: [Behaviour; 16] = [
        Behaviour::Delivered,
        Behaviour::TokenDead,
        Behaviour::TransientStatus(500),
        Behaviour::TransientStatus(502),
        Behaviour::TransientStatus(503),
        Behaviour::TransientStatus(504),
        Behaviour::RetryAfterSeconds,
        Behaviour::RetryAfterDate,
        Behaviour::RetryAfterHuge,
        Behaviour::Hang,
        Behaviour::ConnectionRefused,
        Behaviour::ResetMidAnswer,
        Behaviour::TlsUnknownCa,
        Behaviour::CredentialsRefused,
        Behaviour::MessageRefused,
        Behaviour::Garbage,
    ];

    /// What the homeserver must be told, and what the server must have done.
    pub fn expected(self) -> Expected {
        use Behaviour as B;
        let base = Expected {
            status: 200,
            rejected: false,
            outcome: "delivered",
            upstream_requests: Requests::Exactly(1),
            answered: Some(true),
            timing: Timing::AtOnce,
        };
        let transient = Expected { status: 502, outcome: "failed_transient", ..base };
        let no_answer = Expected { answered: Some(false), ..transient };
        match self {
            B::Delivered => base,
            B::TokenDead => Expected { rejected: true, outcome: "rejected", ..base },
            // Retried up to the attempt limit, then "retry later".
            B::TransientStatus(_) => {
                Expected { upstream_requests: Requests::Exactly(SUITE_ATTEMPTS), ..transient }
            }
            // The wait was honoured (not a 20 ms backoff), then the retry delivered.
            B::RetryAfterSeconds => Expected {
                upstream_requests: Requests::Exactly(2),
                timing: Timing::AtLeast(Duration::from_secs(RETRY_AFTER_SECS)),
                ..base
            },
            // The upstream asked for more time than is left: answered at once, no early retry
            // (which the fake would accept: ignoring the header shows as a 200).
            B::RetryAfterDate | B::RetryAfterHuge => transient,
            // The deadline governs; the homeserver is told in time.
            B::Hang => Expected {
                status: 504,
                outcome: "failed_deadline",
                upstream_requests: Requests::AtLeast(1),
                answered: None,
                timing: Timing::NearDeadline,
                ..base
            },
            B::ConnectionRefused | B::TlsUnknownCa => {
                Expected { upstream_requests: Requests::Exactly(0), ..no_answer }
            }
            B::ResetMidAnswer => {
                Expected { upstream_requests: Requests::Exactly(SUITE_ATTEMPTS), ..no_answer }
            }
            // Not retried: an operator must act; the homeserver retries later.
            B::CredentialsRefused => {
                Expected { outcome: "failed_credentials_refused", ..transient }
            }
            // Dropped: retrying cannot help, and the pusher stays.
            B::MessageRefused | B::Garbage => {
                Expected { outcome: "failed_message_refused", ..base }
            }
        }
    }
}

impl fmt::Display for Behaviour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Behaviour::Delivered => f.write_str("delivered"),
            Behaviour::TokenDead => f.write_str("dead token"),
            Behaviour::TransientStatus(s) => write!(f, "transient status {s}"),
            Behaviour::RetryAfterSeconds => write!(f, "429 Retry-After: {RETRY_AFTER_SECS}"),
            Behaviour::RetryAfterDate => f.write_str("429 Retry-After: <HTTP date past deadline>"),
            Behaviour::RetryAfterHuge => write!(f, "429 Retry-After: {RETRY_AFTER_HUGE}"),
            Behaviour::Hang => f.write_str("hang past the deadline"),
            Behaviour::ConnectionRefused => f.write_str("connection refused"),
            Behaviour::ResetMidAnswer => f.write_str("connection reset mid-answer"),
            Behaviour::TlsUnknownCa => f.write_str("TLS: unknown CA"),
            Behaviour::CredentialsRefused => f.write_str("credentials refused"),
            Behaviour::MessageRefused => f.write_str("message refused"),
            Behaviour::Garbage => f.write_str("garbage answer body"),
        }
    }
}

/// What the suite checks for one behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    /// The HTTP status of the notify answer.
    pub status: u16,
    /// Whether the device's pushkey is in `rejected`.
    pub rejected: bool,
    /// The `outcome` counted once in `herald_notifications_total`.
    pub outcome: &'static str,
    /// Requests that reached the fake upstream.
    pub upstream_requests: Requests,
    /// Whether the upstream answered, as counted in `herald_upstream_responses_total`: `true`,
    /// every response has a status; `false`, every one is `status="none"`; `None`, not checked.
    pub answered: Option<bool>,
    /// How long the notify answer may take.
    pub timing: Timing,
}

/// How many requests the fake upstream must have seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requests {
    /// Exactly this many.
    Exactly(usize),
    /// At least this many.
    AtLeast(usize),
}

/// A bound on the time to the notify answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timing {
    /// Well before the deadline.
    AtOnce,
    /// At least this long (a wait was honoured), and before the deadline.
    AtLeast(Duration),
    /// At the deadline: not before it by much, not after it by more than a margin.
    NearDeadline,
}

/// The fake upstream of one behaviour, as the suite sees it.
pub trait FakeUpstream: Send + Sync {
    /// Requests that reached it (HTTP requests, SMTP transactions).
    fn requests(&self) -> usize;
}

impl FakeUpstream for crate::fake_push::FakePushService {
    fn requests(&self) -> usize {
        self.all_received().len()
    }
}

/// No upstream at all ([`Behaviour::ConnectionRefused`]).
#[derive(Debug)]
pub struct NoUpstream;

/// A loopback port nobody listens on (it was free a moment ago): connecting to it is refused.
pub fn closed_port() -> u16 {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    closed.local_addr().expect("its address").port()
}

impl FakeUpstream for NoUpstream {
    fn requests(&self) -> usize {
        0
    }
}

/// The backend under test, as an operator configures it or already built.
pub enum BackendUnderTest {
    /// The app's table without `kind` (`kind` is the factory's `KIND`), as TOML text: built by
    /// the adapter's factory inside the server, as `herald serve` would. Keys only, no `[table]`
    /// headers (they would start a new top-level table): nested tables go inline. Relative paths
    /// resolve against the directory given to [`BehaviourAdapter::arrange`].
    Table(String),
    /// A backend the adapter built itself.
    Built(Arc<dyn Backend>),
}

impl fmt::Debug for BackendUnderTest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendUnderTest::Table(table) => f.debug_tuple("Table").field(table).finish(),
            BackendUnderTest::Built(_) => f.write_str("Built(..)"),
        }
    }
}

/// The device the suite notifies: a pusher's `pushkey` and `data` as the homeserver sends them
/// (the `app_id` is [`SUITE_APP`]).
#[derive(Debug, Clone)]
pub struct TestDevice {
    /// The pushkey.
    pub pushkey: String,
    /// The pusher's `data` object.
    pub data: Value,
}

/// What an adapter arranged for one behaviour.
pub struct Subject {
    /// The backend.
    pub backend: BackendUnderTest,
    /// The device to notify.
    pub device: TestDevice,
    /// The fake upstream; dropped (stopped) after the behaviour is checked.
    pub upstream: Box<dyn FakeUpstream>,
    /// Anything else that must live as long as the behaviour runs (a second fake, a proxy).
    pub keep: Option<Box<dyn Any + Send + Sync>>,
}

impl fmt::Debug for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subject")
            .field("backend", &self.backend)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

/// An adapter's answer for one behaviour.
#[derive(Debug)]
pub enum Arrangement {
    /// Run it.
    Ready(Subject),
    /// The behaviour cannot happen with this protocol; the reason is printed.
    NotApplicable(&'static str),
}

/// How a backend crate runs the suite: it arranges its own fake upstream per behaviour.
#[async_trait]
pub trait BehaviourAdapter: Send + Sync {
    /// The backend's factory: [`BackendUnderTest::Table`] is built by it.
    type Factory: BackendFactory;

    /// Starts a fake upstream that behaves as `behaviour` and returns the backend and device
    /// aimed at it. `dir` is the configuration directory (and data directory) of the server the
    /// suite starts: write key or CA files there.
    async fn arrange(&self, behaviour: Behaviour, dir: &Path) -> Arrangement;
}

/// What became of one behaviour.
#[derive(Debug)]
pub enum Verdict {
    /// Every check held.
    Passed {
        /// Time to the notify answer.
        took: Duration,
    },
    /// The adapter declared it not applicable, with this reason.
    NotApplicable(&'static str),
    /// These checks failed.
    Failed(Vec<String>),
}

/// Runs every behaviour of [`Behaviour::ALL`] against `adapter`, prints one line per behaviour,
/// and panics listing every failed check. `name` names the backend in the output.
pub async fn run<A: BehaviourAdapter>(name: &str, adapter: &A) {
    let mut failures = Vec::new();
    let (mut passed, mut skipped) = (0, 0);
    for behaviour in Behaviour::ALL {
        match check(adapter, behaviour).await {
            Verdict::Passed { took } => {
                passed += 1;
                println!("behaviour suite [{name}] {behaviour}: ok ({} ms)", took.as_millis());
            }
            Verdict::NotApplicable(reason) => {
                skipped += 1;
                println!("behaviour suite [{name}] {behaviour}: not applicable: {reason}");
            }
            Verdict::Failed(problems) => {
                println!("behaviour suite [{name}] {behaviour}: FAILED");
                failures.extend(problems.into_iter().map(|p| format!("{behaviour}: {p}")));
            }
        }
    }
    println!(
        "behaviour suite [{name}]: {passed} passed, {skipped} not applicable, {} failed checks",
        failures.len()
    );
    assert!(failures.is_empty(), "behaviour suite [{name}] failed:\n  {}", failures.join("\n  "));
}

/// Runs one behaviour: arranges it, notifies through a fresh server, checks [`Behaviour::expected`].
pub async fn check<A: BehaviourAdapter>(adapter: &A, behaviour: Behaviour) -> Verdict {
    let dir = tempfile::tempdir().expect("tempdir");
    let subject = match adapter.arrange(behaviour, dir.path()).await {
        Arrangement::Ready(subject) => subject,
        Arrangement::NotApplicable(reason) => return Verdict::NotApplicable(reason),
    };
    let server = match SuiteServer::start::<A::Factory>(dir.path(), &subject.backend).await {
        Ok(server) => server,
        Err(e) => return Verdict::Failed(vec![format!("the server did not start: {e}")]),
    };
    let expected = behaviour.expected();
    let body = notify_body(&subject.device);
    let started = Instant::now();
    // A server that never answers fails the check instead of hanging the suite.
    let limit = SUITE_DEADLINE + DEADLINE_MARGIN * 5;
    let answer =
        tokio::time::timeout(limit, post(server.addr, "/_matrix/push/v1/notify", body)).await;
    let took = started.elapsed();
    let mut problems = Vec::new();
    match answer {
        Err(_) => problems.push(format!("no notify answer within {limit:?}")),
        Ok(Err(e)) => problems.push(format!("notify request failed: {e}")),
        Ok(Ok((status, body))) => {
            let metrics = get_text(server.addr, "/metrics").await.unwrap_or_default();
            check_answer(&expected, status, &body, &subject.device, &mut problems);
            check_metrics(&expected, &metrics, &mut problems);
            check_timing(expected.timing, took, &mut problems);
            check_requests(expected.upstream_requests, subject.upstream.requests(), &mut problems);
        }
    }
    server.stop().await;
    drop(subject);
    if problems.is_empty() {
        Verdict::Passed { took }
    } else {
        Verdict::Failed(problems)
    }
}

fn check_answer(
    expected: &Expected,
    status: u16,
    body: &Value,
    device: &TestDevice,
    problems: &mut Vec<String>,
) {
    if status != expected.status {
        problems.push(format!("HTTP {status} (body {body}), expected {}", expected.status));
    }
    if status == 200 {
        let rejected = body["rejected"].as_array().cloned().unwrap_or_default();
        let listed = rejected.iter().any(|p| p.as_str() == Some(device.pushkey.as_str()));
        if listed != expected.rejected || rejected.len() > usize::from(expected.rejected) {
            let want = if expected.rejected { "[the pushkey]" } else { "[]" };
            problems.push(format!("`rejected` is {} entries, expected {want}", rejected.len()));
        }
    } else if body["errcode"].as_str().is_none() {
        problems.push(format!("the {status} answer has no Matrix errcode: {body}"));
    }
}

fn check_metrics(expected: &Expected, metrics: &str, problems: &mut Vec<String>) {
    let outcomes: Vec<(String, u64)> = samples(metrics, "herald_notifications_total")
        .filter(|(labels, n)| *n > 0 && labels.contains(&format!(r#"app="{SUITE_APP}""#)))
        .collect();
    let want = format!(r#"outcome="{}""#, expected.outcome);
    match outcomes.as_slice() {
        [(labels, 1)] if labels.contains(&want) => {}
        other => problems.push(format!(
            "herald_notifications_total counted {other:?}, expected {} once",
            expected.outcome
        )),
    }
    let Some(answered) = expected.answered else { return };
    let responses: Vec<(String, u64)> = samples(metrics, "herald_upstream_responses_total")
        .filter(|(labels, n)| *n > 0 && labels.contains(&format!(r#"app="{SUITE_APP}""#)))
        .collect();
    let mismatched: Vec<&(String, u64)> =
        responses.iter().filter(|(l, _)| l.contains(r#"status="none""#) == answered).collect();
    if responses.is_empty() || !mismatched.is_empty() {
        let want = if answered { "a status" } else { r#"status="none""# };
        problems.push(format!(
            "herald_upstream_responses_total is {responses:?}, expected every response with {want}"
        ));
    }
}

fn check_timing(timing: Timing, took: Duration, problems: &mut Vec<String>) {
    let fine = match timing {
        Timing::AtOnce => took < AT_ONCE,
        Timing::AtLeast(wait) => took >= wait && took < SUITE_DEADLINE,
        Timing::NearDeadline => {
            took + Duration::from_millis(100) >= SUITE_DEADLINE
                && took <= SUITE_DEADLINE + DEADLINE_MARGIN
        }
    };
    if !fine {
        problems.push(format!("answered after {took:?}, expected {timing:?}"));
    }
}

fn check_requests(expected: Requests, got: usize, problems: &mut Vec<String>) {
    let fine = match expected {
        Requests::Exactly(n) => got == n,
        Requests::AtLeast(n) => got >= n,
    };
    if !fine {
        problems.push(format!("the upstream got {got} requests, expected {expected:?}"));
    }
}

/// `(labels, value)` of each sample of `family` in an OpenMetrics text.
fn samples<'a>(metrics: &'a str, family: &'a str) -> impl Iterator<Item = (String, u64)> + 'a {
    metrics.lines().filter_map(move |line| {
        let rest = line.strip_prefix(family)?.strip_prefix('{')?;
        let (labels, value) = rest.split_once("} ")?;
        Some((labels.to_owned(), value.trim().parse().ok()?))
    })
}

/// The spec's example notification, to `device` of [`SUITE_APP`].
fn notify_body(device: &TestDevice) -> String {
    crate::notify::message_with_devices(
        "$behaviour-suite-event",
        vec![json!({
            "app_id": SUITE_APP,
            "pushkey": device.pushkey,
            "pushkey_ts": 12345678,
            "data": device.data,
            "tweaks": {"sound": "bing"}
        })],
    )
    .to_string()
}

/// A `herald_server::Server` serving the app under test on 127.0.0.1.
struct SuiteServer {
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), herald_server::RunError>>,
}

/// The `kind` a [`BackendUnderTest::Built`] backend is registered under.
const BUILT_KIND: &str = "behaviour-under-test";

impl SuiteServer {
    async fn start<F: BackendFactory>(
        dir: &Path,
        backend: &BackendUnderTest,
    ) -> Result<Self, String> {
        let mut registry = BackendRegistry::default();
        let app_table = match backend {
            BackendUnderTest::Table(table) => {
                registry.register_factory::<F>();
                format!("kind = \"{}\"\n{table}", F::KIND)
            }
            BackendUnderTest::Built(built) => {
                let built = Arc::clone(built);
                registry.register(BUILT_KIND, move |_, _| Ok(Arc::clone(&built)));
                format!("kind = \"{BUILT_KIND}\"")
            }
        };
        let text = format!(
            r#"
            data_dir = "{dir}"
            [server]
            listen = "127.0.0.1:0"
            request_deadline = "{deadline}ms"
            [delivery]
            max_attempts = {SUITE_ATTEMPTS}
            initial_backoff = "20ms"
            max_backoff = "100ms"
            [apps."{SUITE_APP}"]
            {app_table}
            "#,
            dir = dir.display(),
            deadline = SUITE_DEADLINE.as_millis(),
        );
        let config = Config::from_toml(&text, std::iter::empty(), dir.to_path_buf())
            .map_err(|e| format!("config: {e}"))?;
        let server = Server::bind(&config, &registry).await.map_err(|e| e.to_string())?;
        let addr = server.local_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        Ok(SuiteServer { addr, stop, task })
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        match self.task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("the server did not stop cleanly: {e}"),
            Err(e) => panic!("the server task failed: {e}"),
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn post(addr: SocketAddr, path: &str, body: String) -> Result<(u16, Value), BoxError> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let request = hyper::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))?;
    let response = client.request(request).await?;
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await?.to_bytes();
    Ok((status, serde_json::from_slice(&bytes)?))
}

async fn get_text(addr: SocketAddr, path: &str) -> Result<String, BoxError> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let response = client.get(format!("http://{addr}{path}").parse()?).await?;
    let bytes = response.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8(bytes.to_vec())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_behaviour_has_one_expectation_and_a_name() {
        let names: std::collections::HashSet<String> =
            Behaviour::ALL.iter().map(ToString::to_string).collect();
        assert_eq!(names.len(), Behaviour::ALL.len(), "names are distinct");
        for behaviour in Behaviour::ALL {
            let e = behaviour.expected();
            assert_eq!(e.rejected, behaviour == Behaviour::TokenDead, "{behaviour}");
            // A 5xx means "retry later": never for a dropped message or a dead token.
            assert_eq!(
                e.status == 200,
                !e.outcome.starts_with("failed_") || e.outcome == "failed_message_refused",
                "{behaviour}"
            );
        }
    }

    use crate::scripted::{ScriptedBackend, Step};

    impl FakeUpstream for ScriptedBackend {
        fn requests(&self) -> usize {
            self.attempts().len()
        }
    }

    /// Plays each behaviour with the scripted backend: `steps` says what it answers.
    struct Scripted(fn(Behaviour) -> Vec<Step>);

    #[async_trait]
    impl BehaviourAdapter for Scripted {
        type Factory = herald_core::log_backend::LogBackend;

        async fn arrange(&self, behaviour: Behaviour, _dir: &Path) -> Arrangement {
            let backend = ScriptedBackend::new();
            backend.script("pk", (self.0)(behaviour));
            Arrangement::Ready(Subject {
                backend: BackendUnderTest::Built(Arc::new(backend.clone())),
                device: TestDevice { pushkey: "pk".into(), data: json!({}) },
                upstream: Box::new(backend),
                keep: None,
            })
        }
    }

    fn right(behaviour: Behaviour) -> Vec<Step> {
        match behaviour {
            Behaviour::TokenDead => vec![Step::Dead],
            Behaviour::TransientStatus(_) => vec![Step::Transient(None); SUITE_ATTEMPTS],
            Behaviour::RetryAfterSeconds => vec![Step::Transient(Some(Duration::from_secs(1)))],
            Behaviour::CredentialsRefused => vec![Step::CredentialsRefused],
            Behaviour::MessageRefused => vec![Step::MessageRefused],
            _ => vec![],
        }
    }

    #[tokio::test]
    async fn a_backend_that_answers_right_passes_and_one_that_does_not_fails() {
        let passes = [
            Behaviour::Delivered,
            Behaviour::TokenDead,
            Behaviour::TransientStatus(503),
            Behaviour::RetryAfterSeconds,
            Behaviour::CredentialsRefused,
            Behaviour::MessageRefused,
        ];
        for behaviour in passes {
            let verdict = check(&Scripted(right), behaviour).await;
            assert!(matches!(verdict, Verdict::Passed { .. }), "{behaviour}: {verdict:?}");
        }
        // Delivering everything: the dead token is not rejected, the failure not retried.
        for behaviour in [Behaviour::TokenDead, Behaviour::TransientStatus(503)] {
            let Verdict::Failed(problems) = check(&Scripted(|_| vec![]), behaviour).await else {
                panic!("{behaviour}: a backend that always delivers passed");
            };
            assert!(
                problems.iter().any(|p| p.contains("herald_notifications_total")),
                "{problems:?}"
            );
        }
        let Verdict::Failed(problems) = check(&Scripted(|_| vec![]), Behaviour::TokenDead).await
        else {
            unreachable!()
        };
        assert!(problems.iter().any(|p| p.contains("`rejected`")), "{problems:?}");
        // A dead token answered "message refused": the pusher would never be deleted.
        let wrong =
            |b| if b == Behaviour::TokenDead { vec![Step::MessageRefused] } else { right(b) };
        assert!(matches!(check(&Scripted(wrong), Behaviour::TokenDead).await, Verdict::Failed(_)));
        // A Retry-After ignored (retried after a backoff instead) is caught by the time bound.
        let eager = |b| match b {
            Behaviour::RetryAfterSeconds => vec![Step::Transient(None)],
            b => right(b),
        };
        let Verdict::Failed(problems) = check(&Scripted(eager), Behaviour::RetryAfterSeconds).await
        else {
            panic!("an ignored Retry-After passed");
        };
        assert!(problems.iter().any(|p| p.contains("answered after")), "{problems:?}");
    }

    #[test]
    fn samples_are_read_per_family() {
        let text = "herald_notifications_total{app=\"a\",outcome=\"delivered\"} 2\n\
                    herald_notifications_total_created{app=\"a\"} 1.5\n\
                    herald_upstream_responses_total{app=\"a\",status=\"none\",reason=\"connect\"} 3\n";
        let got: Vec<_> = samples(text, "herald_notifications_total").collect();
        assert_eq!(got, vec![(r#"app="a",outcome="delivered""#.to_owned(), 2)]);
        let got: Vec<_> = samples(text, "herald_upstream_responses_total").collect();
        assert_eq!(got.len(), 1);
    }
}
