//! The configuration section of a `kind = "email"` app, with its defaults and checks.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use herald_core::config::SecretSource;
use herald_core::BuildError;
use serde::Deserialize;

/// Configuration of a `kind = "email"` app.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// The mail server: `smtps://host:465` (implicit TLS), `smtp://host:587?tls=required`
    /// (STARTTLS, refused when the server does not offer it), or plain `smtp://host:25` — plain
    /// only for a loopback host or with `allow_plaintext`. No credentials in the URL.
    pub smtp_url: String,
    /// The user name for SMTP AUTH (PLAIN or LOGIN); with `password`.
    #[serde(default)]
    pub username: Option<String>,
    /// The SMTP password: a file path, `{ file = "…" }` or `{ env = "VAR" }`; with `username`.
    #[serde(default)]
    pub password: Option<SecretSource>,
    /// The sender: `notify@example.org` or `Example Chat <notify@example.org>`.
    pub from: String,
    /// An optional `Reply-To` mailbox.
    #[serde(default)]
    pub reply_to: Option<String>,
    /// The name sent in `EHLO`; by default the domain of `from`.
    #[serde(default)]
    pub hello_name: Option<String>,
    /// Allow an unencrypted connection to a host that is not a loopback address.
    #[serde(default)]
    pub allow_plaintext: bool,
    /// A PEM bundle of CA certificates trusted in addition to the Mozilla roots (a relay behind
    /// an internal CA). Relative paths resolve against the configuration file's directory.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Also trust the operating system's certificate store.
    #[serde(default)]
    pub system_roots: bool,
    /// Time allowed to connect, finish TLS and log in.
    #[serde(default = "default_connect_timeout", with = "herald_core::config::duration")]
    pub connect_timeout: Duration,
    /// Time allowed for one delivery attempt, from the wait for a connection to the server's
    /// answer to the message (never past the homeserver's request deadline).
    #[serde(default = "default_timeout", with = "herald_core::config::duration")]
    pub timeout: Duration,
    /// Connections to the mail server open at most (and so messages in flight).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// An idle connection older than this is closed instead of reused.
    #[serde(default = "default_idle_timeout", with = "herald_core::config::duration")]
    pub idle_timeout: Duration,
    /// Messages sent over one connection before it is closed and a new one opened (providers
    /// limit this).
    #[serde(default = "default_max_messages_per_connection")]
    pub max_messages_per_connection: u32,
    /// Recipient domains that may receive mail, as globs (`example.org`, `*.example.org`);
    /// empty: any domain (a warning at start-up).
    #[serde(default)]
    pub allowed_domains: Vec<String>,
    /// Mails one address receives at most per `window` (a burst of this many, then one every
    /// `window / max_per_address`); 0 turns the limit off.
    #[serde(default = "default_max_per_address")]
    pub max_per_address: u32,
    /// See `max_per_address`.
    #[serde(default = "default_window", with = "herald_core::config::duration")]
    pub window: Duration,
    /// A directory with templates that replace the shipped ones: `subject.txt`, `body.txt`,
    /// `body.html` (each optional).
    #[serde(default)]
    pub templates_dir: Option<PathBuf>,
    /// A link into a Matrix client, with `{room_id}` and `{event_id}` placeholders, e.g.
    /// `https://app.example.org/#/room/{room_id}/{event_id}`.
    #[serde(default)]
    pub client_url: Option<String>,
    /// An unsubscribe page with an `{address}` placeholder; sets `List-Unsubscribe`.
    #[serde(default)]
    pub unsubscribe_url: Option<String>,
    /// The unsubscribe page takes a POST without a login (RFC 8058): also send
    /// `List-Unsubscribe-Post: List-Unsubscribe=One-Click`.
    #[serde(default)]
    pub unsubscribe_one_click: bool,
    /// Put the message text into mails; when false (or the pusher's `data.include_content` is
    /// false) mails say only who wrote where.
    #[serde(default = "default_true")]
    pub include_content: bool,
    /// Message text longer than this many characters is cut.
    #[serde(default = "default_max_body_chars")]
    pub max_body_chars: usize,
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_max_connections() -> usize {
    4
}

fn default_idle_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_max_messages_per_connection() -> u32 {
    100
}

fn default_max_per_address() -> u32 {
    5
}

fn default_window() -> Duration {
    Duration::from_secs(600)
}

fn default_true() -> bool {
    true
}

fn default_max_body_chars() -> usize {
    1000
}

/// How the connection to the mail server is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// TLS from the first byte (`smtps://`, port 465).
    Implicit,
    /// Plain, then `STARTTLS`, which the server must offer (`smtp://…?tls=required`).
    StartTls,
    /// No TLS at all (`smtp://` without `tls`): loopback or `allow_plaintext` only.
    None,
}

/// `smtp_url`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpUrl {
    /// The host name or IP address (without brackets).
    pub host: String,
    /// The port.
    pub port: u16,
    /// The TLS mode.
    pub tls: TlsMode,
}

impl SmtpUrl {
    /// Parses `smtps://host[:port]`, `smtp://host[:port]?tls=required` or `smtp://host[:port]`.
    pub fn parse(text: &str) -> Result<SmtpUrl, String> {
        let uri: http::Uri =
            text.parse().map_err(|_| format!("`{text}` is not a URL like smtps://host:465"))?;
        let scheme = uri.scheme_str().unwrap_or_default().to_ascii_lowercase();
        let authority = uri.authority().ok_or_else(|| format!("`{text}` has no host"))?;
        if authority.as_str().contains('@') {
            return Err("put no credentials in the URL: use `username` and `password`".into());
        }
        if !matches!(uri.path(), "" | "/") {
            return Err(format!("`{text}`: an SMTP URL has no path"));
        }
        let mut tls = match scheme.as_str() {
            "smtps" => TlsMode::Implicit,
            "smtp" => TlsMode::None,
            _ => return Err(format!("`{text}`: the scheme must be smtps or smtp")),
        };
        for pair in uri.query().unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("tls", "required")) if tls == TlsMode::None => tls = TlsMode::StartTls,
                Some(("tls", "required")) => {}
                Some(("tls", other)) => {
                    // `opportunistic` falls back to plain text when STARTTLS is stripped.
                    return Err(format!(
                        "`tls={other}`: only `tls=required` (STARTTLS) is supported; use \
                         smtps:// for implicit TLS"
                    ));
                }
                _ => return Err(format!("`{text}`: unknown parameter `{pair}`")),
            }
        }
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_owned();
        if host.is_empty() {
            return Err(format!("`{text}` has no host"));
        }
        let port = authority.port_u16().unwrap_or(match tls {
            TlsMode::Implicit => 465,
            TlsMode::StartTls => 587,
            TlsMode::None => 25,
        });
        Ok(SmtpUrl { host, port, tls })
    }

    /// Whether the host is a loopback address (or `localhost`), where plain text stays on
    /// the machine.
    pub fn is_loopback(&self) -> bool {
        self.host.eq_ignore_ascii_case("localhost")
            || self.host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }
}

impl EmailConfig {
    /// A configuration with every optional key at its default.
    pub fn new(smtp_url: impl Into<String>, from: impl Into<String>) -> Self {
        EmailConfig {
            smtp_url: smtp_url.into(),
            username: None,
            password: None,
            from: from.into(),
            reply_to: None,
            hello_name: None,
            allow_plaintext: false,
            ca_file: None,
            system_roots: false,
            connect_timeout: default_connect_timeout(),
            timeout: default_timeout(),
            max_connections: default_max_connections(),
            idle_timeout: default_idle_timeout(),
            max_messages_per_connection: default_max_messages_per_connection(),
            allowed_domains: Vec::new(),
            max_per_address: default_max_per_address(),
            window: default_window(),
            templates_dir: None,
            client_url: None,
            unsubscribe_url: None,
            unsubscribe_one_click: false,
            include_content: true,
            max_body_chars: default_max_body_chars(),
        }
    }

    /// Parses `smtp_url` and checks the values serde cannot; each error names the key.
    pub(crate) fn validate(&self) -> Result<SmtpUrl, BuildError> {
        let url = SmtpUrl::parse(&self.smtp_url).map_err(|e| BuildError::invalid("smtp_url", e))?;
        if url.tls == TlsMode::None && !url.is_loopback() && !self.allow_plaintext {
            return Err(BuildError::invalid(
                "smtp_url",
                format!(
                    "plain SMTP to {} would send mail and the password readable on the network; \
                     use smtps:// or ?tls=required, or set `allow_plaintext = true`",
                    url.host
                ),
            ));
        }
        match (&self.username, &self.password) {
            (Some(_), None) => return Err(BuildError::invalid("password", "`username` needs it")),
            (None, Some(_)) => return Err(BuildError::invalid("username", "`password` needs it")),
            (Some(u), Some(_)) if u.is_empty() || u.chars().any(char::is_control) => {
                return Err(BuildError::invalid("username", "empty, or has control characters"))
            }
            _ => {}
        }
        if self.max_connections == 0 {
            return Err(BuildError::invalid("max_connections", "must be at least 1"));
        }
        if self.max_messages_per_connection == 0 {
            return Err(BuildError::invalid("max_messages_per_connection", "must be at least 1"));
        }
        if self.max_per_address > 0 && self.window.is_zero() {
            return Err(BuildError::invalid("window", "must be longer than 0"));
        }
        for (key, d) in [("timeout", self.timeout), ("connect_timeout", self.connect_timeout)] {
            if d.is_zero() {
                return Err(BuildError::invalid(key, "must be longer than 0"));
            }
        }
        if !(64..=100_000).contains(&self.max_body_chars) {
            return Err(BuildError::invalid("max_body_chars", "must be between 64 and 100000"));
        }
        Ok(url)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn url(text: &str) -> Result<SmtpUrl, String> {
        SmtpUrl::parse(text)
    }

    #[test]
    fn smtp_urls() {
        let u = url("smtps://mail.example.org").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.tls), ("mail.example.org", 465, TlsMode::Implicit));
        let u = url("smtp://mail.example.org:2587?tls=required").unwrap();
        assert_eq!((u.port, u.tls), (2587, TlsMode::StartTls));
        let u = url("smtp://mail.example.org?tls=required").unwrap();
        assert_eq!(u.port, 587);
        let u = url("smtp://[::1]:2525").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.tls), ("::1", 2525, TlsMode::None));
        assert!(u.is_loopback());
        assert!(url("smtp://127.0.0.2").unwrap().is_loopback());
        assert!(url("smtp://LOCALHOST").unwrap().is_loopback());
        assert!(!url("smtp://mail.example.org").unwrap().is_loopback());

        assert!(url("smtp://user:pw@mail.example.org").unwrap_err().contains("credentials"));
        assert!(url("smtp://h?tls=opportunistic").unwrap_err().contains("tls=required"));
        assert!(url("https://h").unwrap_err().contains("scheme"));
        assert!(url("smtp://h/path").unwrap_err().contains("path"));
        assert!(url("smtp://h?x=1").unwrap_err().contains("x=1"));
        assert!(url("not a url").is_err());
    }

    fn parse(json: serde_json::Value) -> Result<EmailConfig, String> {
        serde_json::from_value(json).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_notation() {
        let c = parse(json!({"smtp_url": "smtps://mail.example.org", "from": "n@example.org"}))
            .unwrap();
        assert_eq!(c.timeout, Duration::from_secs(10));
        assert_eq!(c.connect_timeout, Duration::from_secs(5));
        assert_eq!((c.max_per_address, c.window), (5, Duration::from_secs(600)));
        assert_eq!((c.max_connections, c.max_messages_per_connection), (4, 100));
        assert!(c.include_content && !c.allow_plaintext && c.allowed_domains.is_empty());
        assert_eq!(c.validate().unwrap().tls, TlsMode::Implicit);

        let c = parse(json!({
            "smtp_url": "smtp://mail.example.org?tls=required", "from": "n@example.org",
            "username": "herald", "password": {"env": "SMTP_PASSWORD"}, "window": "1h",
            "max_per_address": 3, "allowed_domains": ["example.org", "*.example.org"],
            "timeout": "500ms"
        }))
        .unwrap();
        assert_eq!(c.password, Some(SecretSource::Env("SMTP_PASSWORD".into())));
        assert_eq!((c.window, c.max_per_address), (Duration::from_secs(3600), 3));
        assert_eq!(c.timeout, Duration::from_millis(500));
        assert_eq!(c.allowed_domains.len(), 2);
        c.validate().unwrap();
    }

    #[test]
    fn refusals_name_the_key() {
        let e =
            parse(json!({"smtp_url": "smtps://h", "from": "a@b.c", "colour": "red"})).unwrap_err();
        assert!(e.contains("colour"), "{e}");

        let check = |adjust: fn(&mut EmailConfig)| {
            let mut c = EmailConfig::new("smtps://mail.example.org", "n@example.org");
            adjust(&mut c);
            c.validate().unwrap_err().to_string()
        };
        let e = check(|c| c.smtp_url = "smtp://mail.example.org".into());
        assert!(e.contains("smtp_url") && e.contains("allow_plaintext"), "{e}");
        let e = check(|c| c.username = Some("u".into()));
        assert!(e.contains("password"), "{e}");
        let e = check(|c| c.password = Some(SecretSource::Env("P".into())));
        assert!(e.contains("username"), "{e}");
        let e = check(|c| c.max_connections = 0);
        assert!(e.contains("max_connections"), "{e}");
        let e = check(|c| c.window = Duration::ZERO);
        assert!(e.contains("window"), "{e}");
        let e = check(|c| c.max_body_chars = 10);
        assert!(e.contains("max_body_chars"), "{e}");

        // Plain text is fine on loopback, and anywhere once allowed.
        let mut c = EmailConfig::new("smtp://127.0.0.1:2525", "n@example.org");
        assert_eq!(c.validate().unwrap().tls, TlsMode::None);
        c.smtp_url = "smtp://relay.internal".into();
        c.allow_plaintext = true;
        c.validate().unwrap();
    }
}
