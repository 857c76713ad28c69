//! The configuration section of a `kind = "webpush"` app, with its defaults and checks.

use std::path::{Path, PathBuf};
use std::time::Duration;

use herald_core::config::SecretSource;
use herald_core::BuildError;
use herald_upstream::UpstreamConfig;
use serde::Deserialize;

/// Configuration of a `kind = "webpush"` app.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebPushConfig {
    /// The VAPID private key (P-256, SEC1 or PKCS#8 PEM): a file path (relative paths resolve
    /// against the configuration file's directory), `{ file = "…" }`, or `{ env = "VAR" }` for
    /// the PEM text in an environment variable.
    pub vapid_private_key: SecretSource,
    /// Generate the key file (mode 0600) when it does not exist yet, instead of refusing to start.
    /// Only for a key in a file; `herald check-config` checks that it could, and creates nothing.
    #[serde(default)]
    pub create_vapid_key_if_missing: bool,
    /// The VAPID `sub` claim: how a push service can reach the operator. Must start with
    /// `mailto:` or `https:`.
    pub vapid_subject: String,
    /// How long a push service keeps a message for an offline browser (the `TTL` header).
    #[serde(default = "default_ttl", with = "herald_core::config::duration")]
    pub ttl: Duration,
    /// The `Urgency` of high-priority notifications; low-priority ones always go as `low`.
    #[serde(default)]
    pub urgency: Urgency,
    /// The `Urgency` of badge-only updates (no event: a count changed because messages were
    /// read). `low` by default, so that a silent count change does not wake a device.
    #[serde(default)]
    pub badge_urgency: BadgeUrgency,
    /// What the SSRF guard lets through (empty by default): IP addresses and CIDR blocks, e.g.
    /// `"10.1.2.0/24"` or `"[fd00::1]:8443"`, matched against the address connected to (the only
    /// way to reach a non-public address); and host-name globs, e.g. `"push.internal"` or
    /// `"*.corp.example:8080"`, which allow plain `http://` for those names. Each may end in
    /// `:port` (`:*` for any).
    #[serde(default)]
    pub allowed_endpoints: Vec<String>,
    /// A PEM bundle of CA certificates trusted in addition to the webpki roots, for push services
    /// behind an internal CA. Relative paths resolve against the configuration file's directory.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Also trust the operating system's certificate store.
    #[serde(default)]
    pub system_roots: bool,
    /// Time allowed to resolve a push service's name, open a TCP connection (or the proxy's
    /// tunnel) and finish the TLS handshake.
    #[serde(default = "default_connect_timeout", with = "herald_core::config::duration")]
    pub connect_timeout: Duration,
    /// Time allowed for one request to a push service, from the wait for a slot to the end of
    /// the answer.
    #[serde(default = "default_request_timeout", with = "herald_core::config::duration")]
    pub request_timeout: Duration,
    /// Requests in flight, and connections open, per push-service origin at most (so this many
    /// sockets over HTTP/1.1, streams over HTTP/2); also the idle connections kept. A request
    /// waiting for a slot waits within its `request_timeout`.
    #[serde(default = "default_max_connections_per_host")]
    pub max_connections_per_host: usize,
    /// An outbound HTTP proxy for this app (`http://[user:pass@]host:port`, an HTTP `CONNECT`
    /// tunnel), or `"none"`; unset: `HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY`/`NO_PROXY` from the
    /// environment decide (see `docs/upstream.md`).
    #[serde(default)]
    pub proxy: Option<String>,
    /// With `proxy`: hosts that bypass it, in the `NO_PROXY` syntax.
    #[serde(default)]
    pub no_proxy: Option<String>,
    /// The largest encrypted body sent; the message text is shortened to fit. At most 4096, the
    /// size every push service must accept.
    #[serde(default = "default_max_payload_bytes")]
    pub max_payload_bytes: usize,
}

/// The `Urgency` header (RFC 8030) used for high-priority notifications.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Urgency {
    /// `Urgency: normal`, the push services' default.
    #[default]
    Normal,
    /// `Urgency: high`: delivered even when the device saves battery.
    High,
}

impl Urgency {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Urgency::Normal => "normal",
            Urgency::High => "high",
        }
    }
}

/// The `Urgency` header (RFC 8030 §5.3) used for badge-only updates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BadgeUrgency {
    /// `very-low`: delivered only when the device is on power and Wi-Fi.
    VeryLow,
    /// `low` (the default): delivered on power or Wi-Fi.
    #[default]
    Low,
    /// `normal`.
    Normal,
    /// `high`: wakes the device.
    High,
}

impl BadgeUrgency {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            BadgeUrgency::VeryLow => "very-low",
            BadgeUrgency::Low => "low",
            BadgeUrgency::Normal => "normal",
            BadgeUrgency::High => "high",
        }
    }
}

/// The largest body that every push service must accept (RFC 8030 §7.2).
pub(crate) const PUSH_SERVICE_MAX_BODY: usize = 4096;
/// Below this, a body cannot hold an encrypted notification worth sending.
const MIN_PAYLOAD_BYTES: usize = 512;

fn default_ttl() -> Duration {
    Duration::from_secs(15 * 60)
}

fn default_connect_timeout() -> Duration {
    UpstreamConfig::DEFAULT_CONNECT_TIMEOUT
}

fn default_request_timeout() -> Duration {
    UpstreamConfig::DEFAULT_REQUEST_TIMEOUT
}

fn default_max_connections_per_host() -> usize {
    UpstreamConfig::DEFAULT_MAX_CONNECTIONS_PER_HOST
}

fn default_max_payload_bytes() -> usize {
    PUSH_SERVICE_MAX_BODY
}

impl WebPushConfig {
    /// A configuration with every optional key at its default.
    pub fn new(vapid_private_key: impl Into<PathBuf>, vapid_subject: impl Into<String>) -> Self {
        WebPushConfig {
            vapid_private_key: SecretSource::File(vapid_private_key.into()),
            create_vapid_key_if_missing: false,
            vapid_subject: vapid_subject.into(),
            ttl: default_ttl(),
            urgency: Urgency::default(),
            badge_urgency: BadgeUrgency::default(),
            allowed_endpoints: Vec::new(),
            ca_file: None,
            system_roots: false,
            connect_timeout: default_connect_timeout(),
            request_timeout: default_request_timeout(),
            max_connections_per_host: default_max_connections_per_host(),
            proxy: None,
            no_proxy: None,
            max_payload_bytes: default_max_payload_bytes(),
        }
    }

    /// Checks the values serde cannot; each error names the offending key.
    pub(crate) fn validate(&self) -> Result<(), BuildError> {
        if !(self.vapid_subject.starts_with("mailto:") || self.vapid_subject.starts_with("https:"))
        {
            return Err(BuildError::new(format!(
                "webpush: `vapid_subject` must start with `mailto:` or `https:`, got `{}`",
                self.vapid_subject
            )));
        }
        if !(MIN_PAYLOAD_BYTES..=PUSH_SERVICE_MAX_BODY).contains(&self.max_payload_bytes) {
            return Err(BuildError::new(format!(
                "webpush: `max_payload_bytes` must be between {MIN_PAYLOAD_BYTES} and \
                 {PUSH_SERVICE_MAX_BODY}, got {}",
                self.max_payload_bytes
            )));
        }
        if self.create_vapid_key_if_missing
            && matches!(self.vapid_private_key, SecretSource::Env(_))
        {
            return Err(BuildError::new(
                "webpush: `create_vapid_key_if_missing` needs `vapid_private_key` in a file, \
                 not an environment variable",
            ));
        }
        if u32::try_from(self.ttl.as_secs()).is_err() {
            return Err(BuildError::new("webpush: `ttl` is too long"));
        }
        Ok(())
    }

    /// The settings of the upstream HTTP client (`herald-upstream`), with relative paths
    /// resolved against `config_dir`. The client's build checks them, naming the key.
    pub(crate) fn upstream(&self, config_dir: &Path) -> UpstreamConfig {
        let mut upstream = UpstreamConfig::default()
            .with_system_roots(self.system_roots)
            .with_connect_timeout(self.connect_timeout)
            .with_request_timeout(self.request_timeout)
            .with_max_connections_per_host(self.max_connections_per_host);
        if let Some(ca_file) = &self.ca_file {
            upstream = upstream.with_ca_file(ca_file);
        }
        if let Some(proxy) = &self.proxy {
            upstream = upstream.with_proxy(proxy);
        }
        if let Some(no_proxy) = &self.no_proxy {
            upstream = upstream.with_no_proxy(no_proxy);
        }
        upstream.resolve_paths(config_dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<WebPushConfig, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn defaults_and_notation() {
        let c = parse(r#"{"vapid_private_key":"k.pem","vapid_subject":"mailto:a@b.c"}"#)
            .expect("minimal config");
        assert_eq!(c.ttl, Duration::from_secs(900));
        assert_eq!(c.urgency, Urgency::Normal);
        assert_eq!(c.badge_urgency, BadgeUrgency::Low);
        assert_eq!(c.vapid_private_key, SecretSource::File("k.pem".into()));
        assert_eq!(c.ca_file, None);
        assert_eq!(c.max_payload_bytes, 4096);
        assert!(!c.create_vapid_key_if_missing);
        assert!(c.allowed_endpoints.is_empty());
        c.validate().expect("valid");

        let c = parse(
            r#"{"vapid_private_key":{"env":"VAPID_PEM"},"vapid_subject":"https://x","ttl":"1h",
            "urgency":"high","badge_urgency":"very-low","request_timeout":"500ms",
            "allowed_endpoints":["a:*"],"ca_file":"ca.pem","proxy":"http://p:3128",
            "no_proxy":"push.internal","system_roots":true,"max_connections_per_host":8}"#,
        )
        .expect("full config");
        assert_eq!(c.vapid_private_key, SecretSource::Env("VAPID_PEM".into()));
        assert_eq!(c.ttl, Duration::from_secs(3600));
        assert_eq!(c.urgency, Urgency::High);
        assert_eq!(c.badge_urgency, BadgeUrgency::VeryLow);
        assert_eq!(c.ca_file, Some(PathBuf::from("ca.pem")));
        assert_eq!(c.request_timeout, Duration::from_millis(500));

        // The flat keys are the upstream client's settings.
        let u = c.upstream(Path::new("/etc/herald"));
        assert_eq!(u.ca_file(), Some(Path::new("/etc/herald/ca.pem")));
        assert_eq!(u.request_timeout(), Duration::from_millis(500));
        assert_eq!(u.connect_timeout(), Duration::from_secs(5));
        assert_eq!((u.proxy(), u.no_proxy()), (Some("http://p:3128"), Some("push.internal")));
        assert!(u.system_roots());
        assert_eq!(u.max_connections_per_host(), 8);
    }

    #[test]
    fn refusals_name_the_key() {
        let e = parse(r#"{"vapid_private_key":"k","vapid_subject":"a","colour":"red"}"#)
            .expect_err("unknown key");
        assert!(e.to_string().contains("colour"), "{e}");
        let e = parse(r#"{"vapid_private_key":"k","vapid_subject":"a","urgency":"low"}"#)
            .expect_err("low is not for high prio");
        assert!(e.to_string().contains("low"), "{e}");

        let e = WebPushConfig::new("k", "admin@example.com").validate().expect_err("no scheme");
        assert!(e.to_string().contains("vapid_subject"), "{e}");
        let mut c = WebPushConfig::new("k", "mailto:admin@example.com");
        c.max_payload_bytes = 5000;
        assert!(c.validate().expect_err("too big").to_string().contains("max_payload_bytes"));
        c.max_payload_bytes = 4096;
        c.vapid_private_key = SecretSource::Env("K".into());
        c.create_vapid_key_if_missing = true;
        let e = c.validate().expect_err("cannot create a variable").to_string();
        assert!(e.contains("create_vapid_key_if_missing"), "{e}");
    }
}
