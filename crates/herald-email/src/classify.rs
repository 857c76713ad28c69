//! What an SMTP answer means for the pusher: the reply code, its enhanced status code (RFC 3463)
//! and — what decides most — the command it answered.
//!
//! A permanent refusal of the *recipient* at `RCPT` (550, 551, 553, or any 5.1.x) is the mail
//! system saying the address does not exist: the token is dead. The same code after `DATA` is
//! about the *message* (content, size, spam policy) and never rejects the pusher. A 5.7.x
//! (security or policy) refusal is never a dead token, wherever it comes: it is the relay's or
//! the receiver's policy about us. Every 4xx is transient. Authentication refused (535) is our
//! credentials.
//!
//! Reason codes come from a fixed set (they are metric labels); nothing the server wrote after
//! the codes is kept, because it often repeats the recipient's address.

use std::io::ErrorKind;

use herald_core::{DeliveryError, Outcome, Upstream};
use lettre::transport::smtp::Error as SmtpError;

/// The step of an SMTP session an answer belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// TCP connect, TLS, the greeting and `EHLO`.
    Connect,
    /// `STARTTLS` and the TLS handshake after it.
    StartTls,
    /// `AUTH`.
    Auth,
    /// `MAIL FROM`.
    Mail,
    /// `RCPT TO`.
    Rcpt,
    /// The `DATA` command.
    Data,
    /// The message, answered after the final `.`.
    Message,
}

impl Stage {
    fn as_str(self) -> &'static str {
        match self {
            Stage::Connect => "connect",
            Stage::StartTls => "STARTTLS",
            Stage::Auth => "AUTH",
            Stage::Mail => "MAIL FROM",
            Stage::Rcpt => "RCPT TO",
            Stage::Data => "DATA",
            Stage::Message => "end of DATA",
        }
    }
}

/// An enhanced status code `class.subject.detail` (RFC 3463).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Enhanced {
    class: u8,
    subject: u16,
    detail: u16,
}

impl Enhanced {
    /// The enhanced code that starts `text` (the server's reply text), if it has one whose class
    /// agrees with `code`.
    pub(crate) fn parse(code: u16, text: &str) -> Option<Enhanced> {
        let word = text.split_whitespace().next()?;
        let mut parts = word.split('.');
        let (class, subject, detail) = (parts.next()?, parts.next()?, parts.next()?);
        let number = |p: &str| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit());
        if parts.next().is_some() || !number(subject) || !number(detail) {
            return None;
        }
        let class: u8 = class.parse().ok()?;
        if u16::from(class) != code / 100 {
            return None;
        }
        Some(Enhanced { class, subject: subject.parse().ok()?, detail: detail.parse().ok()? })
    }

    /// A reason label for the recipient-address codes (`5.1.x`).
    fn address_reason(self) -> &'static str {
        match self.detail {
            0 => "5.1.0",
            1 => "5.1.1",
            2 => "5.1.2",
            3 => "5.1.3",
            6 => "5.1.6",
            10 => "5.1.10",
            _ => "5.1.x",
        }
    }
}

impl std::fmt::Display for Enhanced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// Maps a negative reply (4xx or 5xx) at `stage` onto an outcome.
pub(crate) fn reply(
    stage: Stage,
    code: u16,
    enhanced: Option<Enhanced>,
) -> Result<Outcome, DeliveryError> {
    let said = match enhanced {
        Some(e) => format!("{code} {e}"),
        None => code.to_string(),
    };
    let text = format!("the mail server answered {said} to {}", stage.as_str());
    let up = |reason| Upstream::new(code, reason);
    let transient = |reason| Err(DeliveryError::transient(text.clone()).with_upstream(up(reason)));
    let refused =
        |reason| Err(DeliveryError::message_refused(text.clone()).with_upstream(up(reason)));
    let policy = enhanced.is_some_and(|e| e.subject == 7);
    if code < 500 {
        return match (stage, code) {
            // The server closes the connection (shutting down, too busy, too many connections).
            (_, 421) => transient("service_closing"),
            (Stage::Auth, _) => transient("auth_deferred"),
            (Stage::Mail, _) => transient("sender_deferred"),
            (Stage::Rcpt, _) => transient("rcpt_deferred"),
            (Stage::Connect | Stage::StartTls, _) => transient("greeting"),
            (Stage::Data | Stage::Message, _) => transient("deferred"),
        };
    }
    match stage {
        Stage::Rcpt => {
            let address = enhanced.is_some_and(|e| e.subject == 1);
            match (address, policy, code) {
                (true, _, _) => Ok(Outcome::token_dead(
                    up(enhanced.map_or("5.1.x", Enhanced::address_reason)),
                    format!("{text}: the recipient address does not exist"),
                )),
                // Relay refused, blocked by policy: about us, not the address.
                (_, true, _) => refused("policy"),
                // Classic servers without enhanced codes: no such user, not local, bad mailbox.
                (_, _, 550 | 551 | 553) if enhanced.is_none() => Ok(Outcome::token_dead(
                    up("rcpt_refused"),
                    format!("{text}: the recipient was refused"),
                )),
                // 5.2.x mailbox disabled or full, 5.3.x/5.4.x/5.5.x: not a promise it is gone.
                (_, _, _) if enhanced.is_some_and(|e| e.subject == 2) => refused("mailbox"),
                _ => refused("rcpt_refused"),
            }
        }
        // Our `from` or our session: an operator must act (relay access, sender address).
        Stage::Mail => {
            Err(DeliveryError::credentials_refused(text.clone())
                .with_upstream(up("sender_refused")))
        }
        Stage::Auth => {
            Err(DeliveryError::credentials_refused(text.clone()).with_upstream(up("auth_refused")))
        }
        // A relay that refuses a session (554 greeting, 5xx to EHLO or STARTTLS) is our setup.
        Stage::Connect | Stage::StartTls => {
            Err(DeliveryError::credentials_refused(text.clone()).with_upstream(up("greeting")))
        }
        Stage::Data | Stage::Message => match (code, enhanced) {
            (_, Some(e)) if e.subject == 6 => refused("content"),
            (_, Some(e)) if e.subject == 7 => refused("policy"),
            (552, _) | (_, Some(Enhanced { subject: 3, detail: 4, .. })) => refused("too_large"),
            _ => refused("data_refused"),
        },
    }
}

/// Maps a failed SMTP step onto an outcome: a reply by its code, anything else (no answer)
/// as transient, by what went wrong.
pub(crate) fn error(stage: Stage, e: SmtpError) -> Result<Outcome, DeliveryError> {
    if let Some(code) = e.status() {
        let code = u16::from(code);
        // lettre keeps the reply's text as the error's source; only its first word is read.
        let text = std::error::Error::source(&e).map(ToString::to_string).unwrap_or_default();
        return reply(stage, code, Enhanced::parse(code, &text));
    }
    let (tls, io) = causes(&e);
    let (reason, what) = if e.is_timeout() || io == Some(ErrorKind::TimedOut) {
        ("timeout", "timed out")
    } else if e.is_tls() || tls {
        ("tls", "TLS failed")
    } else if e.is_client() {
        return client(stage, &e);
    } else if e.is_response() {
        // lettre reports a connection closed before a full answer as an incomplete response.
        let closed =
            std::error::Error::source(&e).is_some_and(|s| s.to_string().contains("incomplete"));
        if closed {
            ("closed", "the connection closed before an answer")
        } else {
            ("protocol", "an answer that is not SMTP")
        }
    } else if stage == Stage::Connect && io != Some(ErrorKind::UnexpectedEof) {
        ("connect", "cannot connect")
    } else if matches!(
        io,
        Some(
            ErrorKind::UnexpectedEof
                | ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted
                | ErrorKind::BrokenPipe
        )
    ) {
        ("closed", "the connection closed before an answer")
    } else {
        ("network", "the connection failed")
    };
    let error = DeliveryError::transient(format!("{what} at {}", stage.as_str()))
        .with_upstream(Upstream::no_answer(reason));
    // The cause chain (I/O, TLS) helps operators and holds no content or address; a garbled
    // answer's parse error would quote the server, so it is left out.
    Err(if reason == "protocol" { error } else { error.with_source(e) })
}

/// What lies under a lettre error: whether TLS (rustls) failed, and the I/O error's kind.
/// `io::Error` hides its inner error from `source()`, so each one is opened with `get_ref`.
fn causes(e: &SmtpError) -> (bool, Option<ErrorKind>) {
    let (mut tls, mut kind) = (false, None);
    let mut next: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = next {
        tls |= err.is::<rustls::Error>();
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            kind = kind.or(Some(io.kind()));
            if let Some(inner) = io.get_ref() {
                tls |= inner.is::<rustls::Error>();
                next = inner.source();
                continue;
            }
        }
        next = err.source();
    }
    (tls, kind)
}

/// lettre's own refusals: the server lacks something the configuration needs.
fn client(stage: Stage, e: &SmtpError) -> Result<Outcome, DeliveryError> {
    let why = std::error::Error::source(e).map(ToString::to_string).unwrap_or_default();
    match stage {
        // Credentials configured, but no mechanism offered (often: AUTH only after TLS).
        Stage::Auth => Err(DeliveryError::credentials_refused(format!(
            "the mail server offers no AUTH mechanism Herald can use (PLAIN, LOGIN): {why}"
        ))
        .with_upstream(Upstream::no_answer("auth_unavailable"))),
        // `tls=required` and no STARTTLS: a misconfigured relay, or someone stripping it.
        Stage::StartTls | Stage::Connect => Err(DeliveryError::transient(format!(
            "the mail server does not offer STARTTLS, which `smtp_url` requires: {why}"
        ))
        .with_upstream(Upstream::no_answer("starttls_unavailable"))),
        _ => {
            Err(DeliveryError::message_refused(format!("cannot send at {}: {why}", stage.as_str()))
                .with_upstream(Upstream::no_answer("client")))
        }
    }
}

#[cfg(test)]
mod tests {
    use herald_core::ErrorClass;

    use super::*;

    fn at(stage: Stage, code: u16, text: &str) -> Result<Outcome, DeliveryError> {
        reply(stage, code, Enhanced::parse(code, text))
    }

    fn dead(r: &Result<Outcome, DeliveryError>) -> Option<(u16, &'static str)> {
        match r {
            Ok(Outcome::TokenDead { upstream, .. }) => Some((upstream.status, upstream.reason)),
            _ => None,
        }
    }

    fn class(r: &Result<Outcome, DeliveryError>) -> (ErrorClass, u16, &'static str) {
        match r {
            Err(e) => {
                let u = e.upstream().expect("upstream");
                (e.class(), u.status, u.reason)
            }
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn enhanced_codes() {
        assert_eq!(
            Enhanced::parse(550, "5.1.1 <a@b>: user unknown").map(|e| e.to_string()),
            Some("5.1.1".into())
        );
        assert_eq!(Enhanced::parse(550, "4.1.1 wrong class"), None);
        assert_eq!(Enhanced::parse(550, "User unknown"), None);
        assert_eq!(Enhanced::parse(550, "5.1 short"), None);
        assert_eq!(Enhanced::parse(550, "5.1.1.1 long"), None);
        assert_eq!(Enhanced::parse(550, ""), None);
        assert_eq!(
            Enhanced::parse(451, "4.3.0 try later").map(|e| e.to_string()),
            Some("4.3.0".into())
        );
    }

    #[test]
    fn recipients_refused_for_good_are_dead_tokens() {
        assert_eq!(
            dead(&at(Stage::Rcpt, 550, "5.1.1 <a@b>: Recipient address rejected")),
            Some((550, "5.1.1"))
        );
        assert_eq!(dead(&at(Stage::Rcpt, 553, "5.1.3 bad address syntax")), Some((553, "5.1.3")));
        assert_eq!(dead(&at(Stage::Rcpt, 554, "5.1.10 null MX")), Some((554, "5.1.10")));
        assert_eq!(dead(&at(Stage::Rcpt, 550, "5.1.9 other")), Some((550, "5.1.x")));
        // Without enhanced codes: 550, 551, 553.
        for code in [550, 551, 553] {
            assert_eq!(
                dead(&at(Stage::Rcpt, code, "No such user here")),
                Some((code, "rcpt_refused"))
            );
        }
    }

    #[test]
    fn policy_mailbox_and_message_refusals_never_reject() {
        let policy = at(Stage::Rcpt, 554, "5.7.1 <a@b>: Relay access denied");
        assert_eq!(class(&policy), (ErrorClass::MessageRefused, 554, "policy"));
        let policy = at(Stage::Rcpt, 550, "5.7.1 blocked by spam policy");
        assert_eq!(class(&policy), (ErrorClass::MessageRefused, 550, "policy"));
        assert_eq!(
            class(&at(Stage::Rcpt, 552, "5.2.2 mailbox full")),
            (ErrorClass::MessageRefused, 552, "mailbox")
        );
        assert_eq!(
            class(&at(Stage::Rcpt, 554, "Transaction failed")),
            (ErrorClass::MessageRefused, 554, "rcpt_refused")
        );
        // The same codes after DATA are about the message, never the address.
        for (code, text, reason) in [
            (550, "5.1.1 user unknown", "data_refused"),
            (554, "5.6.0 content rejected", "content"),
            (552, "5.3.4 message too big", "too_large"),
            (552, "too big", "too_large"),
            (550, "5.7.1 spam", "policy"),
            (554, "\u{1}<html> 5.1.1", "data_refused"),
        ] {
            assert_eq!(
                class(&at(Stage::Message, code, text)),
                (ErrorClass::MessageRefused, code, reason),
                "{code} {text}"
            );
        }
        assert_eq!(
            class(&at(Stage::Data, 554, "5.5.1 no valid recipients")).0,
            ErrorClass::MessageRefused
        );
    }

    #[test]
    fn transient_and_ours() {
        assert_eq!(
            class(&at(Stage::Rcpt, 452, "4.5.3 too many recipients")),
            (ErrorClass::Transient, 452, "rcpt_deferred")
        );
        assert_eq!(
            class(&at(Stage::Rcpt, 450, "4.2.1 mailbox busy")),
            (ErrorClass::Transient, 450, "rcpt_deferred")
        );
        assert_eq!(
            class(&at(Stage::Message, 451, "4.3.0 try later")),
            (ErrorClass::Transient, 451, "deferred")
        );
        assert_eq!(
            class(&at(Stage::Mail, 421, "4.3.2 shutting down")),
            (ErrorClass::Transient, 421, "service_closing")
        );
        assert_eq!(
            class(&at(Stage::Auth, 454, "4.7.0 try later")),
            (ErrorClass::Transient, 454, "auth_deferred")
        );
        assert_eq!(
            class(&at(Stage::Auth, 535, "5.7.8 bad credentials")),
            (ErrorClass::CredentialsRefused, 535, "auth_refused")
        );
        assert_eq!(
            class(&at(Stage::Mail, 553, "5.7.1 sender not owned")),
            (ErrorClass::CredentialsRefused, 553, "sender_refused")
        );
        assert_eq!(
            class(&at(Stage::Connect, 554, "no service")),
            (ErrorClass::CredentialsRefused, 554, "greeting")
        );
    }

    #[test]
    fn messages_name_codes_never_server_text() {
        let r = at(Stage::Rcpt, 550, "5.1.1 <alice@example.org>: Recipient address rejected");
        let Ok(Outcome::TokenDead { detail, .. }) = r else { panic!() };
        assert_eq!(
            detail,
            "the mail server answered 550 5.1.1 to RCPT TO: the recipient address does not exist"
        );
        let e = at(Stage::Message, 554, "5.6.0 <alice@example.org> content").unwrap_err();
        assert!(!e.message().contains("alice"), "{}", e.message());
    }
}
