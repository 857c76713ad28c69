//! The SMTP client of one app: a small pool of lettre connections, and one mail transaction per
//! delivery attempt, with each answer classified by the command it answered.
//!
//! Why not lettre's own pooled transport: its `send` reports a refusal without saying whether
//! `RCPT` or the message was refused, and that decides between "the address is dead" and "this
//! message was refused" (`classify`). So this module drives lettre's connection command by
//! command: `MAIL FROM`, `RCPT TO`, `DATA`, the message.
//!
//! Connections are reused (LIFO, so idle ones age out) up to `max_messages_per_connection`,
//! after a refused transaction too (`RSET`), but never after a failure without an answer or a
//! cancelled attempt: such a connection may be mid-command, so it is dropped. A reused
//! connection that the server closed while it was idle fails on `MAIL FROM` before anything was
//! sent; that attempt continues once on a fresh connection (what HTTP clients do with a stale
//! pooled connection), so a server's idle timeout never costs a delivery.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald_core::sync::lock;
use herald_core::{DeliveryError, Outcome, Upstream};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::commands::{Data, Mail, Rcpt, Rset};
use lettre::transport::smtp::extension::{ClientId, Extension, MailParameter};
use lettre::Address;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::Semaphore;

use crate::classify::{self, Stage};
use crate::config::{SmtpUrl, TlsMode};

/// What an attempt ended with when it did not deliver.
type Failed = Result<Outcome, DeliveryError>;

/// After the server refused our login, how long deliveries fail at once instead of logging in
/// again: failed logins lock accounts and get addresses banned (fail2ban and providers alike).
pub(crate) const LOGIN_BACKOFF: Duration = Duration::from_secs(30);

/// One pooled connection.
struct Conn {
    inner: AsyncSmtpConnection,
    /// Messages accepted over it.
    sent: u32,
    /// When it went idle.
    since: Instant,
}

/// How the client reaches and logs in to the mail server.
pub(crate) struct SmtpSettings {
    /// Where.
    pub(crate) url: SmtpUrl,
    /// TLS (for `Implicit` and `StartTls`).
    pub(crate) tls: Option<TlsParameters>,
    /// The `EHLO` name.
    pub(crate) hello: ClientId,
    /// SMTP AUTH.
    pub(crate) credentials: Option<Credentials>,
    /// Connect, TLS and AUTH.
    pub(crate) connect_timeout: Duration,
    /// Idle connections older than this are closed.
    pub(crate) idle_timeout: Duration,
    /// Connections at most.
    pub(crate) max_connections: usize,
    /// Messages per connection at most.
    pub(crate) max_messages: u32,
}

/// The client of one app.
pub(crate) struct SmtpClient {
    settings: SmtpSettings,
    slots: Semaphore,
    idle: Mutex<Vec<Conn>>,
    /// One new connection at a time: a burst after start-up waits for the first login (and
    /// reuses its connection) instead of trying the same password many times at once.
    connecting: tokio::sync::Mutex<()>,
    /// When and how the server last refused our login (see [`LOGIN_BACKOFF`]).
    refused: Mutex<Option<(Instant, DeliveryError)>>,
    /// Connections opened (`herald_email_connections_opened_total`).
    opened: Counter,
}

impl std::fmt::Debug for SmtpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpClient").field("url", &self.settings.url).finish_non_exhaustive()
    }
}

/// A delivered message: the server's 2xx code.
pub(crate) fn delivered(code: u16) -> Outcome {
    Outcome::Delivered(Upstream::new(code, "ok"))
}

impl SmtpClient {
    /// A client; opens nothing yet.
    pub(crate) fn new(settings: SmtpSettings, opened: Counter) -> Arc<Self> {
        Arc::new(SmtpClient {
            slots: Semaphore::new(settings.max_connections),
            idle: Mutex::new(Vec::new()),
            connecting: tokio::sync::Mutex::new(()),
            refused: Mutex::new(None),
            settings,
            opened,
        })
    }

    /// An idle connection (`true`: reused), or a new one.
    async fn get(&self) -> Result<(Conn, bool), Failed> {
        if let Some(conn) = self.take_idle() {
            return Ok((conn, true));
        }
        let _one = self.connecting.lock().await;
        // Another attempt may have opened one meanwhile.
        if let Some(conn) = self.take_idle() {
            return Ok((conn, true));
        }
        self.connect_gated().await.map(|conn| (conn, false))
    }

    /// [`connect`](Self::connect), unless the server refused our login within
    /// [`LOGIN_BACKOFF`]: then that refusal again, without a new attempt.
    async fn connect_gated(&self) -> Result<Conn, Failed> {
        if let Some((at, refused)) = &*lock(&self.refused) {
            if at.elapsed() < LOGIN_BACKOFF {
                let mut e = DeliveryError::credentials_refused(format!(
                    "{}; Herald logs in again {:?} after the refusal",
                    refused.message(),
                    LOGIN_BACKOFF
                ));
                if let Some(upstream) = refused.upstream() {
                    e = e.with_upstream(upstream);
                }
                return Err(Err(e));
            }
        }
        let result = self.connect().await;
        *lock(&self.refused) = match &result {
            Err(Err(e)) if e.reason() == Some("auth_refused") => Some((Instant::now(), e.clone())),
            _ => None,
        };
        result
    }

    /// Opens a connection: TCP, TLS, greeting, `EHLO`, `STARTTLS`, `AUTH`.
    async fn connect(&self) -> Result<Conn, Failed> {
        let s = &self.settings;
        let host = s.url.host.as_str();
        let implicit = match s.url.tls {
            TlsMode::Implicit => s.tls.clone(),
            TlsMode::StartTls | TlsMode::None => None,
        };
        let step = async {
            let mut conn = match implicit {
                // lettre wraps the socket in TLS itself, and only on a socket it opened.
                Some(tls) => AsyncSmtpConnection::connect_tokio1(
                    (host, s.url.port),
                    Some(s.connect_timeout),
                    &s.hello,
                    Some(tls),
                    None,
                )
                .await
                .map_err(|e| classify::error(Stage::Connect, e))?,
                None => {
                    let tcp = connect_tcp(host, s.url.port).await?;
                    AsyncSmtpConnection::connect_with_transport(Box::new(tcp), &s.hello)
                        .await
                        .map_err(|e| classify::error(Stage::Connect, e))?
                }
            };
            if let (TlsMode::StartTls, Some(tls)) = (s.url.tls, &s.tls) {
                conn.starttls(tls.clone(), &s.hello)
                    .await
                    .map_err(|e| classify::error(Stage::StartTls, e))?;
            }
            if let Some(credentials) = &s.credentials {
                conn.auth(&[Mechanism::Plain, Mechanism::Login], credentials)
                    .await
                    .map_err(|e| classify::error(Stage::Auth, e))?;
            }
            Ok(conn)
        };
        let conn = match tokio::time::timeout(s.connect_timeout, step).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(Err(DeliveryError::transient(format!(
                    "no SMTP session with {host} within connect_timeout ({:?})",
                    s.connect_timeout
                ))
                .with_upstream(Upstream::no_answer("timeout"))))
            }
        };
        self.opened.inc();
        Ok(Conn { inner: conn, sent: 0, since: Instant::now() })
    }

    /// The most recently used idle connection that is young enough.
    fn take_idle(&self) -> Option<Conn> {
        let mut idle = lock(&self.idle);
        while let Some(conn) = idle.pop() {
            if conn.since.elapsed() < self.settings.idle_timeout {
                return Some(conn);
            }
            // Older ones lie below it: they are older still.
            idle.clear();
        }
        None
    }

    fn put_back(&self, mut conn: Conn) {
        if conn.sent >= self.settings.max_messages || conn.inner.has_broken() {
            quit_later(conn);
            return;
        }
        conn.since = Instant::now();
        lock(&self.idle).push(conn);
    }

    /// Opens one connection and keeps it idle, so the first notification does not wait for TLS
    /// and AUTH, and a wrong password shows at start-up.
    pub(crate) async fn warm_up(&self) -> Result<(), DeliveryError> {
        let _slot = self.slots.acquire().await.map_err(|_| closed())?;
        let (conn, _) = self.get().await.map_err(|failed| match failed {
            Err(e) => e,
            Ok(_) => DeliveryError::transient("unexpected outcome while connecting"),
        })?;
        self.put_back(conn);
        Ok(())
    }

    /// One delivery attempt: a connection, then `MAIL FROM`, `RCPT TO`, `DATA` and the message,
    /// all within `timeout`.
    pub(crate) async fn send(
        &self,
        from: &Address,
        to: &Address,
        message: &[u8],
        timeout: Duration,
    ) -> Result<Outcome, DeliveryError> {
        let attempt = async {
            let _slot = self.slots.acquire().await.map_err(|_| Err(closed()))?;
            let (mut conn, mut reused) = self.get().await?;
            loop {
                match self.transaction(&mut conn, from, to, message).await {
                    Ok(code) => {
                        conn.sent += 1;
                        self.put_back(conn);
                        return Ok(delivered(code));
                    }
                    // The server closed it while idle; nothing was sent.
                    Err(Retry::Stale) if reused => {
                        reused = false;
                        conn = self.connect_gated().await?;
                    }
                    Err(Retry::Stale) => {
                        return Err(Err(DeliveryError::transient(
                            "the connection closed at MAIL FROM",
                        )
                        .with_upstream(Upstream::no_answer("closed"))))
                    }
                    Err(Retry::Answered(failed, needs_reset)) => {
                        if !needs_reset || self.reset(&mut conn).await {
                            self.put_back(conn);
                        }
                        return Err(failed);
                    }
                    Err(Retry::Broken(failed)) => return Err(failed),
                }
            }
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(failed)) => failed,
            // Dropping the attempt dropped its connection, whatever state it was in.
            Err(_) => Err(DeliveryError::transient(format!(
                "no answer from the mail server within {timeout:?}"
            ))
            .with_upstream(Upstream::no_answer("timeout"))),
        }
    }

    /// `RSET` after a refused command, so the connection can carry the next transaction.
    async fn reset(&self, conn: &mut Conn) -> bool {
        conn.inner.command(Rset).await.is_ok()
    }

    async fn transaction(
        &self,
        conn: &mut Conn,
        from: &Address,
        to: &Address,
        message: &[u8],
    ) -> Result<u16, Retry> {
        let c = &mut conn.inner;
        let mut params = Vec::new();
        if !(from.to_string().is_ascii() && to.to_string().is_ascii()) {
            if !c.server_info().supports_feature(Extension::SmtpUtfEight) {
                return Err(Retry::Answered(
                    Err(DeliveryError::message_refused(
                        "the address is not ASCII and the mail server does not offer SMTPUTF8",
                    )
                    .with_upstream(Upstream::no_answer("smtputf8"))),
                    false,
                ));
            }
            params.push(MailParameter::SmtpUtfEight);
        }
        match c.command(Mail::new(Some(from.clone()), params)).await {
            Ok(_) => {}
            Err(e) if e.status().is_none() && !e.is_timeout() => return Err(Retry::Stale),
            Err(e) => return Err(answered(Stage::Mail, e)),
        }
        c.command(Rcpt::new(to.clone(), vec![])).await.map_err(|e| answered(Stage::Rcpt, e))?;
        c.command(Data).await.map_err(|e| answered(Stage::Data, e))?;
        match c.message(message).await {
            Ok(response) => Ok(u16::from(response.code())),
            // The transaction is over either way: no RSET needed, the connection stays usable.
            Err(e) => Err(match answered(Stage::Message, e) {
                Retry::Answered(failed, _) => Retry::Answered(failed, false),
                other => other,
            }),
        }
    }

    /// Closes idle connections politely (`QUIT`), within `within`.
    pub(crate) async fn close(&self, within: Duration) {
        self.slots.close();
        let idle: Vec<Conn> = std::mem::take(&mut *lock(&self.idle));
        let quit_all = async {
            for mut conn in idle {
                let _ = conn.inner.quit().await;
            }
        };
        let _ = tokio::time::timeout(within, quit_all).await;
    }
}

/// How a transaction failed.
enum Retry {
    /// No answer to `MAIL FROM` on a connection that was idle: try once on a new one.
    Stale,
    /// The server answered no; the connection is reusable, after an `RSET` when `true`.
    Answered(Failed, bool),
    /// No answer (closed, reset, timed out): the connection is dropped.
    Broken(Failed),
}

fn answered(stage: Stage, e: lettre::transport::smtp::Error) -> Retry {
    let replied = e.status().map(u16::from);
    let failed = classify::error(stage, e);
    match replied {
        // 421: the server closes the connection after it.
        Some(421) | None => Retry::Broken(failed),
        Some(_) => Retry::Answered(failed, true),
    }
}

fn closed() -> DeliveryError {
    DeliveryError::transient("the email backend is shutting down").with_reason("closed")
}

/// Says `QUIT` in the background (a connection at its message limit); at most a second.
fn quit_later(mut conn: Conn) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(1), conn.inner.quit()).await;
        });
    }
}

/// A TCP connection to the server with Nagle's algorithm off. lettre's own connect leaves it on,
/// and then each message, written in several pieces, waits for the server's delayed ACK (up to
/// 40 ms on Linux) before its last piece goes out: 350 mails/s over loopback, Herald idle. The
/// caller bounds the time (`connect_timeout` covers the whole session set-up).
async fn connect_tcp(host: &str, port: u16) -> Result<tokio::net::TcpStream, Failed> {
    let failed = |e: std::io::Error| {
        Err(DeliveryError::transient(format!("cannot connect to {host}:{port}"))
            .with_upstream(Upstream::no_answer("connect"))
            .with_source(e))
    };
    let tcp = tokio::net::TcpStream::connect((host, port)).await.map_err(failed)?;
    tcp.set_nodelay(true).map_err(failed)?;
    Ok(tcp)
}
