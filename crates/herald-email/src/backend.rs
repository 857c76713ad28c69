//! [`EmailBackend`]: one notification for one address → one SMTP transaction → an outcome.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use herald_core::redact::PushkeyHash;
use herald_core::{
    AppContext, Backend, BackendFactory, BuildError, CallContext, DeliveryError, Device,
    Notification, Outcome, Upstream,
};
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, CertificateStore, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use prometheus_client::metrics::counter::Counter;

use crate::address::{self, DomainPolicy};
use crate::config::{EmailConfig, SmtpUrl, TlsMode};
use crate::limit::AddressLimit;
use crate::message::{self, ContextOptions, Sender, Templates, Unsubscribe, UrlTemplate};
use crate::smtp::{SmtpClient, SmtpSettings};

/// How long `close` waits for the mail server to answer `QUIT`s.
const CLOSE_WITHIN: Duration = Duration::from_secs(2);

/// The email backend of one app (`kind = "email"`).
pub struct EmailBackend {
    app_id: String,
    client: Arc<SmtpClient>,
    sender: Sender,
    templates: Templates,
    context: ContextOptions,
    unsubscribe: Option<(UrlTemplate, bool)>,
    domains: DomainPolicy,
    limit: AddressLimit,
    timeout: Duration,
    rate_limited: Counter,
}

impl std::fmt::Debug for EmailBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmailBackend").field("app_id", &self.app_id).finish_non_exhaustive()
    }
}

#[async_trait]
impl BackendFactory for EmailBackend {
    const KIND: &'static str = "email";
    type Config = EmailConfig;

    async fn build(app: &AppContext, config: EmailConfig) -> Result<Arc<dyn Backend>, BuildError> {
        Ok(Arc::new(EmailBackend::new(app, &config)?))
    }
}

impl EmailBackend {
    /// Builds the backend: checks every option, reads the password, the CA file and the
    /// templates. Opens no connection (see `warm_up`) and creates nothing.
    pub fn new(app: &AppContext, config: &EmailConfig) -> Result<EmailBackend, BuildError> {
        let url = config.validate()?;
        let from: Mailbox = config.from.parse().map_err(|e| {
            BuildError::invalid("from", format!("`{}` is not a mailbox: {e}", config.from))
        })?;
        let id_domain = idna::domain_to_ascii(from.email.domain())
            .map_err(|_| BuildError::invalid("from", "the domain is not valid"))?;
        let reply_to = match &config.reply_to {
            Some(text) => Some(text.parse::<Mailbox>().map_err(|e| {
                BuildError::invalid("reply_to", format!("`{text}` is not a mailbox: {e}"))
            })?),
            None => None,
        };
        let hello = config.hello_name.clone().unwrap_or_else(|| id_domain.clone());
        if hello.is_empty() || hello.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(BuildError::invalid("hello_name", "not a host name"));
        }
        let credentials = match (&config.username, &config.password) {
            (Some(user), Some(source)) => {
                let secret = source.read(&app.config_dir).map_err(|e| BuildError::Credentials {
                    key: "password".into(),
                    message: e.to_string(),
                    source: Some(Box::new(e)),
                })?;
                let secret = String::from_utf8(secret).map_err(|_| BuildError::Credentials {
                    key: "password".into(),
                    message: format!("the password from {source} is not UTF-8"),
                    source: None,
                })?;
                // Files end with a line break that is not part of the password.
                let secret = secret.trim_end_matches(['\n', '\r']).to_owned();
                Some(Credentials::new(user.clone(), secret))
            }
            _ => None,
        };
        let tls = tls_parameters(app, config, &url)?;
        let domains = DomainPolicy::new(&config.allowed_domains)
            .map_err(|e| BuildError::invalid("allowed_domains", e))?;
        if domains.allows_any() {
            tracing::warn!(
                backend = "email",
                app = %app.app_id,
                "allowed_domains is empty: mail goes to any domain a pusher names; list the \
                 domains your users have"
            );
        }
        let templates_dir = config.templates_dir.as_deref().map(|d| app.resolve_path(d));
        let templates =
            Templates::load(templates_dir.as_deref()).map_err(|e| match templates_dir {
                Some(_) => BuildError::invalid("templates_dir", e),
                None => BuildError::new(format!("email: the shipped templates fail: {e}")),
            })?;
        let client_url = match &config.client_url {
            Some(text) => Some(
                UrlTemplate::new(text, &["room_id", "event_id"], &["https://", "http://"])
                    .map_err(|e| BuildError::invalid("client_url", e))?,
            ),
            None => None,
        };
        let unsubscribe = match &config.unsubscribe_url {
            Some(text) => {
                let t = UrlTemplate::new(text, &["address"], &["https://", "http://", "mailto:"])
                    .map_err(|e| BuildError::invalid("unsubscribe_url", e))?;
                if config.unsubscribe_one_click
                    && !text.to_ascii_lowercase().starts_with("https://")
                {
                    return Err(BuildError::invalid(
                        "unsubscribe_one_click",
                        "one-click unsubscribing (RFC 8058) needs an https:// unsubscribe_url",
                    ));
                }
                Some((t, config.unsubscribe_one_click))
            }
            None if config.unsubscribe_one_click => {
                return Err(BuildError::invalid("unsubscribe_one_click", "needs unsubscribe_url"))
            }
            None => None,
        };

        let opened = Counter::default();
        app.metrics.register(
            "email_connections_opened",
            "SMTP connections opened to the mail server",
            opened.clone(),
        );
        let rate_limited = Counter::default();
        app.metrics.register(
            "email_rate_limited",
            "Notifications not mailed because their address was over max_per_address",
            rate_limited.clone(),
        );
        let client = SmtpClient::new(
            SmtpSettings {
                url,
                tls,
                hello: ClientId::Domain(hello),
                credentials,
                connect_timeout: config.connect_timeout,
                idle_timeout: config.idle_timeout,
                max_connections: config.max_connections,
                max_messages: config.max_messages_per_connection,
            },
            opened,
        );
        Ok(EmailBackend {
            app_id: app.app_id.clone(),
            client,
            sender: Sender { from, reply_to, id_domain },
            templates,
            context: ContextOptions {
                include_content: config.include_content,
                max_body_chars: config.max_body_chars,
                client_url,
            },
            unsubscribe,
            domains,
            limit: AddressLimit::new(config.max_per_address, config.window),
            timeout: config.timeout,
            rate_limited,
        })
    }

    fn reject(&self, device: &Device, reason: &'static str, detail: &str) -> Outcome {
        tracing::warn!(
            backend = "email",
            app = %self.app_id,
            pushkey = %PushkeyHash::of(&device.pushkey),
            reason,
            "rejecting email pusher: {detail}"
        );
        Outcome::token_dead(Upstream::no_answer(reason), detail)
    }
}

/// TLS for `smtps://` and `?tls=required`: the Mozilla roots, plus `ca_file`, plus the system
/// store with `system_roots`.
fn tls_parameters(
    app: &AppContext,
    config: &EmailConfig,
    url: &SmtpUrl,
) -> Result<Option<TlsParameters>, BuildError> {
    if url.tls == TlsMode::None {
        return Ok(None);
    }
    let mut builder =
        TlsParameters::builder(url.host.clone()).certificate_store(CertificateStore::WebpkiRoots);
    if let Some(ca_file) = &config.ca_file {
        let path = app.resolve_path(ca_file);
        let pem = std::fs::read(&path).map_err(|source| BuildError::File {
            key: "ca_file".into(),
            path: path.clone(),
            source,
        })?;
        if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
            return Err(BuildError::invalid(
                "ca_file",
                format!("{} has no PEM certificate", path.display()),
            ));
        }
        let certificate = Certificate::from_pem(&pem)
            .map_err(|e| BuildError::invalid("ca_file", format!("{}: {e}", path.display())))?;
        builder = builder.add_root_certificate(certificate);
    }
    if config.system_roots {
        let found = rustls_native_certs::load_native_certs();
        if found.certs.is_empty() {
            return Err(BuildError::invalid("system_roots", "the system has no CA certificates"));
        }
        for der in found.certs {
            if let Ok(certificate) = Certificate::from_der(der.to_vec()) {
                builder = builder.add_root_certificate(certificate);
            }
        }
    }
    builder
        .build_rustls()
        .map(Some)
        .map_err(|e| BuildError::invalid("smtp_url", format!("cannot set up TLS: {e}")))
}

#[async_trait]
impl Backend for EmailBackend {
    async fn deliver(
        &self,
        call: &CallContext,
        notification: &Notification,
        device: &Device,
    ) -> Result<Outcome, DeliveryError> {
        // A count that changed because messages were read is no reason for a mail.
        if notification.is_badge_only() {
            return Ok(Outcome::Skipped("badge_only"));
        }
        let recipient = match address::parse(&device.pushkey) {
            Ok(recipient) => recipient,
            Err(reason) => {
                return Ok(self.reject(device, reason, "the pushkey is not a plain email address"))
            }
        };
        if !self.domains.allows(&recipient) {
            return Ok(self.reject(
                device,
                "domain_not_allowed",
                "the address's domain is not in allowed_domains",
            ));
        }
        // One mail from the allowance per notification: the first attempt takes it, retries of
        // the same delivery do not take more.
        if call.attempt() <= 1 && !self.limit.allow(&recipient.key) {
            self.rate_limited.inc();
            tracing::debug!(
                backend = "email",
                app = %self.app_id,
                pushkey = %PushkeyHash::of(&device.pushkey),
                "address over max_per_address; mail skipped"
            );
            return Ok(Outcome::Skipped("rate_limited"));
        }

        let unsubscribe = self.unsubscribe.as_ref().and_then(|(t, one_click)| {
            let url = t.expand(&[("address", Some(recipient.address.as_ref()))])?;
            Some(Unsubscribe { url, one_click: *one_click })
        });
        let context = message::context(
            notification,
            device,
            &self.context,
            unsubscribe.as_ref().map(|u| u.url.clone()),
        );
        let rendered = self.templates.render(&context).map_err(|e| {
            DeliveryError::message_refused(format!("a template failed: {e}"))
                .with_reason("template")
        })?;
        let message_id = call.message_id().to_uuid();
        let mime = message::mime(
            &rendered,
            &self.sender,
            &recipient.address,
            &message_id,
            unsubscribe.as_ref(),
        )
        .map_err(|e| DeliveryError::message_refused(e).with_reason("build"))?;
        let timeout = call.timeout(self.timeout);
        self.client.send(&self.sender.from.email, &recipient.address, &mime, timeout).await
    }

    async fn warm_up(&self) -> Result<(), DeliveryError> {
        self.client.warm_up().await
    }

    async fn close(&self) {
        self.client.close(CLOSE_WITHIN).await;
    }
}
