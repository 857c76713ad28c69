//! The configuration section of a `kind = "webpush"` app, with its defaults and checks.

use std::path::PathBuf;
use std::time::Duration;

use herald_core::BuildError;
use serde::Deserialize;

/// Configuration of a `kind = "webpush"` app.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebPushConfig {
    /// PEM file holding the VAPID private key (P-256, SEC1 or PKCS#8). Relative paths resolve
    /// against the configuration file's directory.
    pub vapid_private_key: PathBuf,
    /// Generate the key file (mode 0600) when it does not exist yet, instead of refusing to start.
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
    /// Endpoints that may be plain `http://` or resolve to non-public addresses: globs (`*`, `?`)
    /// on `host` or `host:port`, e.g. `"push.internal:*"` or `"[::1]:8443"`. Empty by default.
    #[serde(default)]
    pub allowed_endpoints: Vec<String>,
    /// Time allowed to resolve a push service's name and open a TCP connection.
    #[serde(default = "default_connect_timeout", with = "herald_core::config::duration")]
    pub connect_timeout: Duration,
    /// Time allowed for one request to a push service, from sending to the end of the answer.
    #[serde(default = "default_request_timeout", with = "herald_core::config::duration")]
    pub request_timeout: Duration,
    /// Idle keep-alive connections kept per push-service host.
    #[serde(default = "default_max_connections_per_host")]
    pub max_connections_per_host: usize,
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

/// The largest body that every push service must accept (RFC 8030 §7.2).
pub(crate) const PUSH_SERVICE_MAX_BODY: usize = 4096;
/// Below this, a body cannot hold an encrypted notification worth sending.
const MIN_PAYLOAD_BYTES: usize = 512;

fn default_ttl() -> Duration {
    Duration::from_secs(15 * 60)
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_max_connections_per_host() -> usize {
    64
}

fn default_max_payload_bytes() -> usize {
    PUSH_SERVICE_MAX_BODY
}

impl WebPushConfig {
    /// A configuration with every optional key at its default.
    pub fn new(vapid_private_key: impl Into<PathBuf>, vapid_subject: impl Into<String>) -> Self {
        WebPushConfig {
            vapid_private_key: vapid_private_key.into(),
            create_vapid_key_if_missing: false,
            vapid_subject: vapid_subject.into(),
            ttl: default_ttl(),
            urgency: Urgency::default(),
            allowed_endpoints: Vec::new(),
            connect_timeout: default_connect_timeout(),
            request_timeout: default_request_timeout(),
            max_connections_per_host: default_max_connections_per_host(),
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
        if u32::try_from(self.ttl.as_secs()).is_err() {
            return Err(BuildError::new("webpush: `ttl` is too long"));
        }
        for (key, value) in
            [("connect_timeout", self.connect_timeout), ("request_timeout", self.request_timeout)]
        {
            if value.is_zero() {
                return Err(BuildError::new(format!("webpush: `{key}` must be more than 0")));
            }
        }
        Ok(())
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
        assert_eq!(c.max_payload_bytes, 4096);
        assert!(!c.create_vapid_key_if_missing);
        assert!(c.allowed_endpoints.is_empty());
        c.validate().expect("valid");

        let c = parse(
            r#"{"vapid_private_key":"k.pem","vapid_subject":"https://x","ttl":"1h",
            "urgency":"high","request_timeout":"500ms","allowed_endpoints":["a:*"]}"#,
        )
        .expect("full config");
        assert_eq!(c.ttl, Duration::from_secs(3600));
        assert_eq!(c.urgency, Urgency::High);
        assert_eq!(c.request_timeout, Duration::from_millis(500));
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
        c.request_timeout = Duration::ZERO;
        assert!(c.validate().expect_err("zero").to_string().contains("request_timeout"));
    }
}
