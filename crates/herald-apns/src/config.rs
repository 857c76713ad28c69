//! The configuration section of a `kind = "apns"` app, with its defaults and checks.
//!
//! Two ways to authenticate, chosen by the keys present:
//!
//! - **token** (`key_file` + `key_id` + `team_id` + `topic`): an ES256 provider JWT signed with
//!   the `.p8` key from the developer account;
//! - **certificate** (`certificate_file` + `key_file`, PEM): TLS client authentication; the topic
//!   defaults to the certificate's subject UID.

use std::time::Duration;

use herald_core::config::SecretSource;
use herald_core::BuildError;
use herald_upstream::UpstreamConfig;
use serde::Deserialize;

/// Apple's production host.
pub const PRODUCTION_ENDPOINT: &str = "https://api.push.apple.com";
/// Apple's development (sandbox) host.
pub const SANDBOX_ENDPOINT: &str = "https://api.sandbox.push.apple.com";

/// Configuration of a `kind = "apns"` app.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApnsConfig {
    /// Token auth: the `.p8` signing key (PKCS#8 PEM). Certificate auth: the certificate's private
    /// key (PEM). A file path (relative to the configuration file), `{ file = "…" }` or
    /// `{ env = "VAR" }`.
    pub key_file: SecretSource,
    /// Token auth: the key's id, 10 characters in Apple's accounts (the JWT's `kid`).
    #[serde(default)]
    pub key_id: Option<String>,
    /// Token auth: the developer team's id, 10 characters in Apple's accounts (the JWT's `iss`).
    #[serde(default)]
    pub team_id: Option<String>,
    /// Certificate auth: the client certificate (PEM, leaf first), a file or `{ env = "VAR" }`.
    #[serde(default)]
    pub certificate_file: Option<SecretSource>,
    /// The `apns-topic`: the app's bundle id (with a suffix such as `.voip` for other push
    /// types). Required with token auth; with certificate auth it defaults to the certificate's
    /// UID.
    #[serde(default)]
    pub topic: Option<String>,
    /// Which of Apple's hosts: `production` (the default) or `sandbox`. Not with `endpoint`.
    #[serde(default)]
    pub platform: Option<Platform>,
    /// Any other APNs-speaking host (`https://…`): a test server, a relay.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The `apns-push-type` header; unset: not sent (as Sygnal).
    #[serde(default)]
    pub push_type: Option<PushType>,
    /// The `apns-priority` for each Matrix `prio`.
    #[serde(default)]
    pub priority: PriorityMapping,
    /// The pushkey is the base64 of the device token (Sygnal's convention), sent as hex. `false`
    /// for clients that register the token as hex.
    #[serde(default = "yes")]
    pub convert_device_token_to_hex: bool,
    /// How long APNs keeps a notification for an offline device (`apns-expiration`); unset: the
    /// header is not sent and APNs applies its own policy; `"0s"`: deliver now or never.
    #[serde(default, with = "opt_duration")]
    pub ttl: Option<Duration>,
    /// Send `apns-collapse-id` per room, so that a device shows only a room's latest
    /// notification.
    #[serde(default)]
    pub collapse_per_room: bool,
    /// Put the unread count in `aps.badge`. Off: no badge, and badge-only updates are skipped.
    #[serde(default = "yes")]
    pub send_badge_counts: bool,
    /// Streams Herald opens on one HTTP/2 connection before it opens another (at most
    /// `upstream.max_connections_per_host` connections). HTTP/2 never exceeds the server's own
    /// `MAX_CONCURRENT_STREAMS`: requests beyond it wait on their connection.
    #[serde(default = "default_max_concurrent_streams")]
    pub max_concurrent_streams: usize,
    /// How often an HTTP/2 PING checks the connection, also while idle (a connection whose PING
    /// is not answered within 20 s is closed and replaced).
    #[serde(default = "default_ping_interval", with = "herald_core::config::duration")]
    pub ping_interval: Duration,
    /// The upstream HTTP client's settings (`[apps."…".upstream]`, see `docs/upstream.md`).
    /// `max_connections_per_host` caps the connections to APNs.
    #[serde(default)]
    pub upstream: UpstreamConfig,
}

/// Apple's two environments.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    /// `api.push.apple.com`: apps from the App Store and TestFlight.
    #[default]
    Production,
    /// `api.sandbox.push.apple.com`: development builds.
    Sandbox,
}

/// The `apns-push-type` values. a2's `PushType` lacks `complication`, so this is Herald's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PushType {
    /// A visible notification (alert, sound or badge).
    Alert,
    /// A silent, content-available push (always sent with priority 5, as Apple requires).
    Background,
    /// A location query (`.location-query` topic).
    Location,
    /// A VoIP call (`.voip` topic); payloads may be 5120 bytes.
    Voip,
    /// A watchOS complication update (`.complication` topic).
    Complication,
    /// A File Provider change (`.pushkit.fileprovider` topic).
    Fileprovider,
    /// An MDM check-in request.
    Mdm,
    /// A Live Activity update (`.push-type.liveactivity` topic).
    Liveactivity,
    /// A Push-to-Talk update (`.voip-ptt` topic).
    Pushtotalk,
}

impl PushType {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            PushType::Alert => "alert",
            PushType::Background => "background",
            PushType::Location => "location",
            PushType::Voip => "voip",
            PushType::Complication => "complication",
            PushType::Fileprovider => "fileprovider",
            PushType::Mdm => "mdm",
            PushType::Liveactivity => "liveactivity",
            PushType::Pushtotalk => "pushtotalk",
        }
    }

    /// The largest payload APNs takes for this type.
    pub fn max_payload(push_type: Option<PushType>) -> usize {
        match push_type {
            Some(PushType::Voip) => MAX_VOIP_PAYLOAD,
            _ => MAX_PAYLOAD,
        }
    }
}

/// The largest payload APNs accepts, in bytes.
pub const MAX_PAYLOAD: usize = 4096;
/// The largest VoIP payload APNs accepts, in bytes.
pub const MAX_VOIP_PAYLOAD: usize = 5120;

/// One `apns-priority` value: 10 (now), 5 (power-considerate) or 1 (lowest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApnsPriority(u8);

impl ApnsPriority {
    /// 10: send immediately.
    pub const IMMEDIATE: ApnsPriority = ApnsPriority(10);
    /// 5: when it suits the device's power.
    pub const CONSIDERATE: ApnsPriority = ApnsPriority(5);

    /// The header value.
    pub fn value(self) -> u8 {
        self.0
    }

    /// As a2's `Priority` when it has one (10 and 5).
    pub fn to_a2(self) -> Option<a2::Priority> {
        match self.0 {
            10 => Some(a2::Priority::High),
            5 => Some(a2::Priority::Normal),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for ApnsPriority {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match u8::deserialize(d)? {
            p @ (10 | 5 | 1) => Ok(ApnsPriority(p)),
            other => Err(serde::de::Error::custom(format!(
                "apns-priority {other} does not exist: use 10, 5 or 1"
            ))),
        }
    }
}

/// The `apns-priority` of each Matrix priority: `priority = { high = 10, low = 5 }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriorityMapping {
    /// For `prio: "high"` (and anything not `low`). Default 10.
    #[serde(default = "immediate")]
    pub high: ApnsPriority,
    /// For `prio: "low"`. Default 5.
    #[serde(default = "considerate")]
    pub low: ApnsPriority,
}

impl Default for PriorityMapping {
    fn default() -> Self {
        PriorityMapping { high: ApnsPriority::IMMEDIATE, low: ApnsPriority::CONSIDERATE }
    }
}

fn immediate() -> ApnsPriority {
    ApnsPriority::IMMEDIATE
}

fn considerate() -> ApnsPriority {
    ApnsPriority::CONSIDERATE
}

fn yes() -> bool {
    true
}

/// What APNs grants one connection (Apple raises `MAX_CONCURRENT_STREAMS` to about 1000 once
/// a connection is authenticated).
pub const DEFAULT_MAX_CONCURRENT_STREAMS: usize = 1000;

fn default_max_concurrent_streams() -> usize {
    DEFAULT_MAX_CONCURRENT_STREAMS
}

fn default_ping_interval() -> Duration {
    Duration::from_secs(60)
}

/// How the app authenticates to APNs, after the checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AuthMode {
    /// Provider tokens.
    Token { key_id: String, team_id: String },
    /// A TLS client certificate.
    Certificate { certificate: SecretSource },
}

impl ApnsConfig {
    /// Token auth with every optional key at its default.
    pub fn token(
        key_file: impl Into<SecretSource>,
        key_id: impl Into<String>,
        team_id: impl Into<String>,
        topic: impl Into<String>,
    ) -> Self {
        ApnsConfig {
            key_file: key_file.into(),
            key_id: Some(key_id.into()),
            team_id: Some(team_id.into()),
            certificate_file: None,
            topic: Some(topic.into()),
            platform: None,
            endpoint: None,
            push_type: None,
            priority: PriorityMapping::default(),
            convert_device_token_to_hex: true,
            ttl: None,
            collapse_per_room: false,
            send_badge_counts: true,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            ping_interval: default_ping_interval(),
            upstream: UpstreamConfig::default(),
        }
    }

    /// Certificate auth with every optional key at its default.
    pub fn certificate(
        certificate_file: impl Into<SecretSource>,
        key_file: impl Into<SecretSource>,
    ) -> Self {
        ApnsConfig {
            key_id: None,
            team_id: None,
            certificate_file: Some(certificate_file.into()),
            topic: None,
            ..ApnsConfig::token(key_file, "", "", "")
        }
    }

    /// The host notifications go to: `endpoint`, or Apple's host for `platform`.
    pub fn endpoint_url(&self) -> &str {
        match (&self.endpoint, self.platform.unwrap_or_default()) {
            (Some(endpoint), _) => endpoint,
            (None, Platform::Production) => PRODUCTION_ENDPOINT,
            (None, Platform::Sandbox) => SANDBOX_ENDPOINT,
        }
    }

    /// Checks what serde cannot and says how the app authenticates; errors name the key.
    pub(crate) fn validate(&self) -> Result<AuthMode, BuildError> {
        let given = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.trim().is_empty());
        let mode = match &self.certificate_file {
            Some(certificate) => {
                for (key, value) in [("key_id", &self.key_id), ("team_id", &self.team_id)] {
                    if value.is_some() {
                        return Err(BuildError::invalid(
                            key,
                            "is for token auth; this app uses certificate auth \
                             (`certificate_file`): remove one or the other",
                        ));
                    }
                }
                AuthMode::Certificate { certificate: certificate.clone() }
            }
            None => {
                let id = |key: &str, value: &Option<String>| match value.as_deref().map(str::trim) {
                    Some(v) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric()) => {
                        Ok(v.to_owned())
                    }
                    Some(_) => Err(BuildError::invalid(
                        key,
                        "must be the id from the Apple developer account (letters and digits)",
                    )),
                    None => Err(BuildError::invalid(
                        key,
                        "is required for token auth (or give `certificate_file` for certificate \
                         auth)",
                    )),
                };
                let key_id = id("key_id", &self.key_id)?;
                let team_id = id("team_id", &self.team_id)?;
                if !given(&self.topic) {
                    return Err(BuildError::invalid(
                        "topic",
                        "is required for token auth: the app's bundle id, e.g. \"im.vector.app\"",
                    ));
                }
                AuthMode::Token { key_id, team_id }
            }
        };
        if let Some(topic) = &self.topic {
            if topic.trim().is_empty() || http::HeaderValue::from_str(topic).is_err() {
                return Err(BuildError::invalid(
                    "topic",
                    "must be a bundle id like \"com.example.app\"",
                ));
            }
        }
        if self.endpoint.is_some() && self.platform.is_some() {
            return Err(BuildError::invalid(
                "endpoint",
                "give either `platform` or `endpoint`, not both",
            ));
        }
        if let Some(endpoint) = &self.endpoint {
            let uri: http::Uri = endpoint.parse().map_err(|_| {
                BuildError::invalid("endpoint", "is not a URL like \"https://apns.example:443\"")
            })?;
            match uri.scheme_str() {
                Some("https") => {}
                // Plain HTTP/2 (h2c) only reaches test servers; never Apple.
                Some("http") => {}
                _ => {
                    return Err(BuildError::invalid(
                        "endpoint",
                        "must be an https:// URL (or http:// for a test server speaking h2c)",
                    ))
                }
            }
            if uri.host().is_none_or(str::is_empty) {
                return Err(BuildError::invalid("endpoint", "has no host"));
            }
            if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
                return Err(BuildError::invalid(
                    "endpoint",
                    "must be only scheme, host and port: Herald adds /3/device/<token>",
                ));
            }
        }
        if self.max_concurrent_streams == 0 {
            return Err(BuildError::invalid("max_concurrent_streams", "must be at least 1"));
        }
        if self.ping_interval < Duration::from_secs(1) {
            return Err(BuildError::invalid("ping_interval", "must be at least 1s"));
        }
        if let Some(ttl) = self.ttl {
            if ttl > Duration::from_secs(365 * 86_400) {
                return Err(BuildError::invalid("ttl", "must be at most a year"));
            }
        }
        Ok(mode)
    }
}

/// `Option<Duration>` in Herald's duration notation.
mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    struct Wrapped(#[serde(with = "herald_core::config::duration")] Duration);

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Option::<Wrapped>::deserialize(d).map(|w| w.map(|Wrapped(d)| d))
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn parse(toml_like_json: &str) -> Result<ApnsConfig, serde_json::Error> {
        serde_json::from_str(toml_like_json)
    }

    const TOKEN: &str =
        r#""key_file":"AuthKey.p8","key_id":"ABC123DEFG","team_id":"TEAM123456","topic":"im.app""#;

    #[test]
    fn token_auth_defaults() {
        let c = parse(&format!("{{{TOKEN}}}")).expect("minimal token config");
        assert_eq!(
            c.validate().expect("valid"),
            AuthMode::Token { key_id: "ABC123DEFG".into(), team_id: "TEAM123456".into() }
        );
        assert_eq!(c.key_file, SecretSource::File(PathBuf::from("AuthKey.p8")));
        assert_eq!(c.endpoint_url(), "https://api.push.apple.com");
        assert!(c.convert_device_token_to_hex && c.send_badge_counts && !c.collapse_per_room);
        assert_eq!(c.priority, PriorityMapping::default());
        assert_eq!((c.priority.high.value(), c.priority.low.value()), (10, 5));
        assert_eq!(c.push_type, None);
        assert_eq!(c.ttl, None);
        assert_eq!(c.max_concurrent_streams, 1000);
        assert_eq!(c.ping_interval, Duration::from_secs(60));
    }

    #[test]
    fn sandbox_and_production_hosts() {
        let sandbox = parse(&format!(r#"{{{TOKEN},"platform":"sandbox"}}"#)).expect("sandbox");
        assert_eq!(sandbox.endpoint_url(), "https://api.sandbox.push.apple.com");
        let production =
            parse(&format!(r#"{{{TOKEN},"platform":"production"}}"#)).expect("production");
        assert_eq!(production.endpoint_url(), "https://api.push.apple.com");
        let custom =
            parse(&format!(r#"{{{TOKEN},"endpoint":"https://127.0.0.1:8443"}}"#)).expect("custom");
        assert_eq!(custom.endpoint_url(), "https://127.0.0.1:8443");
        custom.validate().expect("an endpoint alone is fine");
        let e = parse(&format!(r#"{{{TOKEN},"platform":"staging"}}"#)).expect_err("no staging");
        assert!(e.to_string().contains("staging"), "{e}");
    }

    #[test]
    fn every_option() {
        let c = parse(&format!(
            r#"{{{TOKEN},"push_type":"voip","priority":{{"high":10,"low":1}},
            "convert_device_token_to_hex":false,"ttl":"1h","collapse_per_room":true,
            "send_badge_counts":false,"max_concurrent_streams":8,"ping_interval":"30s",
            "upstream":{{"request_timeout":"3s","max_connections_per_host":2}}}}"#
        ))
        .expect("full config");
        c.validate().expect("valid");
        assert_eq!(c.push_type, Some(PushType::Voip));
        assert_eq!(PushType::max_payload(c.push_type), 5120);
        assert_eq!(c.priority.low.value(), 1);
        assert!(!c.convert_device_token_to_hex && !c.send_badge_counts && c.collapse_per_room);
        assert_eq!(c.ttl, Some(Duration::from_secs(3600)));
        assert_eq!(c.upstream.request_timeout(), Duration::from_secs(3));
        assert_eq!(c.upstream.max_connections_per_host(), 2);
        let e = parse(&format!(r#"{{{TOKEN},"priority":{{"high":7}}}}"#)).expect_err("7");
        assert!(e.to_string().contains("10, 5 or 1"), "{e}");
        let e = parse(&format!(r#"{{{TOKEN},"push_type":"toast"}}"#)).expect_err("toast");
        assert!(e.to_string().contains("toast"), "{e}");
        let e = parse(&format!(r#"{{{TOKEN},"colour":"red"}}"#)).expect_err("unknown key");
        assert!(e.to_string().contains("colour"), "{e}");
    }

    #[test]
    fn certificate_auth() {
        let c = parse(r#"{"certificate_file":"apns.pem","key_file":{"env":"APNS_KEY"}}"#)
            .expect("certificate config");
        assert_eq!(
            c.validate().expect("valid"),
            AuthMode::Certificate { certificate: SecretSource::File("apns.pem".into()) }
        );
        assert_eq!(c.key_file, SecretSource::Env("APNS_KEY".into()));
        let mixed = parse(r#"{"certificate_file":"a.pem","key_file":"k.pem","key_id":"X"}"#)
            .expect("parses");
        let e = mixed.validate().expect_err("both modes").to_string();
        assert!(e.contains("`key_id`") && e.contains("certificate_file"), "{e}");
    }

    #[test]
    fn refusals_name_the_key() {
        let check =
            |json: &str| parse(json).expect("parses").validate().expect_err(json).to_string();
        let e = check(r#"{"key_file":"k.p8","team_id":"T","topic":"t"}"#);
        assert!(e.contains("`key_id`"), "{e}");
        let e = check(r#"{"key_file":"k.p8","key_id":"K","topic":"t"}"#);
        assert!(e.contains("`team_id`"), "{e}");
        let e = check(r#"{"key_file":"k.p8","key_id":"K","team_id":"T"}"#);
        assert!(e.contains("`topic`"), "{e}");
        let e = check(r#"{"key_file":"k.p8","key_id":"K 1","team_id":"T","topic":"t"}"#);
        assert!(e.contains("`key_id`"), "{e}");
        let e = check(&format!(r#"{{{TOKEN},"platform":"sandbox","endpoint":"https://x"}}"#));
        assert!(e.contains("`endpoint`") && e.contains("not both"), "{e}");
        let e = check(&format!(r#"{{{TOKEN},"endpoint":"https://x/3/device"}}"#));
        assert!(e.contains("`endpoint`"), "{e}");
        let e = check(&format!(r#"{{{TOKEN},"endpoint":"ftp://x"}}"#));
        assert!(e.contains("`endpoint`"), "{e}");
        let e = check(&format!(r#"{{{TOKEN},"max_concurrent_streams":0}}"#));
        assert!(e.contains("`max_concurrent_streams`"), "{e}");
        let e = check(&format!(r#"{{{TOKEN},"ttl":"400d"}}"#));
        assert!(e.contains("`ttl`"), "{e}");
    }
}
