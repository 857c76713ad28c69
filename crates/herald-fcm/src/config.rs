//! The configuration section of a `kind = "fcm"` app, with its defaults and checks.
//!
//! `fcm_options` is merged into every message, so a key FCM v1 does not know would make every
//! message fail with a 400. Sygnal's users met that for years with options written for the
//! legacy API (`content_available`, `priority`, `time_to_live`, …: Sygnal's #367); Herald refuses
//! them at start-up, naming the v1 field that does the same.

use herald_core::config::SecretSource;
use herald_core::{BuildError, RawObject};
use herald_upstream::UpstreamConfig;
use serde::Deserialize;
use serde_json::{Map, Value};

/// Configuration of a `kind = "fcm"` app.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FcmConfig {
    /// The service account key Google gives as a JSON file (Firebase console → Project settings →
    /// Service accounts → Generate new private key): a path (relative paths resolve against the
    /// configuration file's directory), `{ file = "…" }`, or `{ env = "VAR" }` for the JSON text
    /// in an environment variable.
    pub service_account_file: SecretSource,
    /// The Firebase project to send through; by default the service account's `project_id`.
    #[serde(default)]
    pub project_id: Option<String>,
    /// FCM's base URL; messages go to `<endpoint>/v1/projects/<project_id>/messages:send`.
    #[serde(default = "default_endpoint")]
    pub endpoint: String,
    /// Fields merged into every message (`apns`, `webpush`, `notification`, `fcm_options`), and
    /// an `android` table merged into the message's `android` block (e.g. `ttl`,
    /// `collapse_key`, `notification`). Legacy-API keys are refused.
    #[serde(default)]
    pub fcm_options: Map<String, Value>,
    /// Put the badge counts (`unread`, `missed_calls`) into `data`, and send badge-only updates
    /// (no event). Off: counts are never sent, and badge-only updates are skipped.
    #[serde(default = "yes")]
    pub send_badge_counts: bool,
    /// Send counts of zero too, so that a badge-only update that clears the count (all messages
    /// read) reaches the app. Off (Sygnal's behaviour): a zero count is left out, and an update
    /// with nothing but zero counts is not sent.
    #[serde(default)]
    pub send_zero_badge: bool,
    /// Requests to FCM in flight at once for this app, all multiplexed on one HTTP/2 connection;
    /// more wait for a slot within their timeout.
    #[serde(default = "default_max_concurrent_requests")]
    pub max_concurrent_requests: usize,
    /// The upstream HTTP client's settings (`[apps."…".upstream]`, see `docs/upstream.md`), for
    /// FCM and the OAuth token endpoint alike. `max_connections_per_host` is
    /// `max_concurrent_requests` here.
    #[serde(default)]
    pub upstream: UpstreamConfig,
}

/// Where FCM's HTTP v1 API is.
pub const DEFAULT_ENDPOINT: &str = "https://fcm.googleapis.com";

/// The default of [`FcmConfig::max_concurrent_requests`]: the concurrent streams FCM allows on
/// one HTTP/2 connection.
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 100;

fn default_endpoint() -> String {
    DEFAULT_ENDPOINT.to_owned()
}

fn default_max_concurrent_requests() -> usize {
    DEFAULT_MAX_CONCURRENT_REQUESTS
}

fn yes() -> bool {
    true
}

impl FcmConfig {
    /// A configuration with every optional key at its default.
    pub fn new(service_account_file: impl Into<SecretSource>) -> Self {
        FcmConfig {
            service_account_file: service_account_file.into(),
            project_id: None,
            endpoint: default_endpoint(),
            fcm_options: Map::new(),
            send_badge_counts: true,
            send_zero_badge: false,
            max_concurrent_requests: DEFAULT_MAX_CONCURRENT_REQUESTS,
            upstream: UpstreamConfig::default(),
        }
    }

    /// Checks the values serde cannot, except the service account (read by the backend); each
    /// error names the offending key.
    pub(crate) fn validate(&self) -> Result<MessageOptions, BuildError> {
        if self.send_zero_badge && !self.send_badge_counts {
            return Err(BuildError::invalid(
                "send_zero_badge",
                "needs `send_badge_counts = true` (no counts are sent otherwise)",
            ));
        }
        if self.max_concurrent_requests == 0 {
            return Err(BuildError::invalid("max_concurrent_requests", "must be at least 1"));
        }
        if sets_max_connections(&self.upstream) {
            return Err(BuildError::invalid(
                "upstream.max_connections_per_host",
                "FCM requests share one HTTP/2 connection: set `max_concurrent_requests` instead",
            ));
        }
        if let Some(project_id) = &self.project_id {
            check_project_id(project_id).map_err(|why| BuildError::invalid("project_id", why))?;
        }
        let (base, android) = split_fcm_options(&self.fcm_options)?;
        Ok(MessageOptions {
            base,
            android,
            send_badge_counts: self.send_badge_counts,
            send_zero_badge: self.send_zero_badge,
        })
    }

    /// The upstream client's settings, with the request cap and relative paths resolved.
    pub(crate) fn upstream(&self, config_dir: &std::path::Path) -> UpstreamConfig {
        self.upstream
            .clone()
            .with_max_connections_per_host(self.max_concurrent_requests)
            .resolve_paths(config_dir)
    }
}

/// What the message builder takes from the configuration.
#[derive(Debug, Clone, Default)]
pub(crate) struct MessageOptions {
    /// `fcm_options` without `android`: merged at the base of `message`.
    pub(crate) base: RawObject,
    /// `fcm_options.android`: merged into `message.android`.
    pub(crate) android: RawObject,
    pub(crate) send_badge_counts: bool,
    pub(crate) send_zero_badge: bool,
}

/// Whether `upstream` sets `max_connections_per_host` itself (its fields are private; a value
/// that does not come from the fallback is the table's own).
fn sets_max_connections(upstream: &UpstreamConfig) -> bool {
    let with = |n| {
        upstream
            .clone()
            .layered_over(&UpstreamConfig::default().with_max_connections_per_host(n))
            .max_connections_per_host()
    };
    with(1) == with(2)
}

/// A Firebase project id as it goes into the URL path: letters, digits, `-`, `.`, `_` and `:`
/// (older domain-scoped ids are `example.com:project`).
pub(crate) fn check_project_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 100 {
        return Err("must be 1 to 100 characters".into());
    }
    if !id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':')) {
        return Err(format!("`{id}` is not a project id (letters, digits, `-`, `.`, `_`, `:`)"));
    }
    Ok(())
}

/// Fields of an FCM v1 `Message` that an app may set through `fcm_options`.
const MESSAGE_FIELDS: [&str; 5] = ["notification", "android", "webpush", "apns", "fcm_options"];

/// Fields of the message Herald sets for every device.
const HERALD_FIELDS: [(&str, &str); 5] = [
    ("token", "Herald sends each message to its device's `token`"),
    ("topic", "Herald sends each message to its device's `token`, not to a topic"),
    ("condition", "Herald sends each message to its device's `token`, not to a condition"),
    ("data", "Herald builds `data` from the notification and the pusher's `default_payload`"),
    ("name", "`name` is FCM's answer, not part of a request"),
];

/// Legacy (pre-v1) keys and what v1 has instead.
const LEGACY: [(&str, &str); 15] = [
    ("content_available", "`apns = { payload = { aps = { \"content-available\" = 1 } } }`"),
    ("mutable_content", "`apns = { payload = { aps = { \"mutable-content\" = 1 } } }`"),
    (
        "priority",
        "Herald sets `android.priority` from the notification's `prio`; for iOS, \
         `apns = { headers = { \"apns-priority\" = \"10\" } }`",
    ),
    (
        "time_to_live",
        "`android = { ttl = \"3600s\" }` (and `apns.headers.\"apns-expiration\"` for iOS)",
    ),
    (
        "collapse_key",
        "`android = { collapse_key = \"…\" }` (and `apns.headers.\"apns-collapse-id\"` for iOS)",
    ),
    ("restricted_package_name", "`android = { restricted_package_name = \"…\" }`"),
    ("delay_while_idle", "nothing: FCM v1 removed it"),
    ("dry_run", "nothing in a message: v1's `validate_only` is a request field"),
    ("to", "nothing: Herald sends each message to its device's `token`"),
    ("registration_ids", "nothing: Herald sends each message to its device's `token`"),
    ("notification_key", "nothing: Herald sends each message to its device's `token`"),
    ("sound", "`android = { notification = { sound = \"…\" } }` (iOS: `apns.payload.aps.sound`)"),
    ("click_action", "`android = { notification = { click_action = \"…\" } }`"),
    ("android_channel_id", "`android = { notification = { channel_id = \"…\" } }`"),
    ("icon", "`android = { notification = { icon = \"…\" } }`"),
];

/// Legacy keys inside `android`, and what v1 has instead.
const LEGACY_ANDROID: [(&str, &str); 4] = [
    ("priority", "nothing: Herald sets `android.priority` from the notification's `prio`"),
    ("time_to_live", "`ttl = \"3600s\"`"),
    ("delay_while_idle", "nothing: FCM v1 removed it"),
    ("content_available", "nothing on Android; iOS: `apns.payload.aps.\"content-available\"`"),
];

/// Checks `fcm_options` and splits it into the message's base and its `android` block.
fn split_fcm_options(options: &Map<String, Value>) -> Result<(RawObject, RawObject), BuildError> {
    let key = |k: &str| format!("fcm_options.{k}");
    let mut base = RawObject::new();
    let mut android = RawObject::new();
    for (name, value) in options {
        if let Some((_, instead)) = LEGACY.iter().find(|(legacy, _)| legacy == name) {
            return Err(BuildError::invalid(
                key(name),
                format!("is a legacy FCM API option that FCM v1 refuses; use {instead}"),
            ));
        }
        if let Some((_, why)) = HERALD_FIELDS.iter().find(|(field, _)| field == name) {
            return Err(BuildError::invalid(key(name), format!("cannot be set: {why}")));
        }
        if !MESSAGE_FIELDS.contains(&name.as_str()) {
            return Err(BuildError::invalid(
                key(name),
                format!(
                    "is not a field of an FCM v1 message (the options may set {})",
                    MESSAGE_FIELDS.join(", ")
                ),
            ));
        }
        let Value::Object(fields) = value else {
            return Err(BuildError::invalid(key(name), "must be a table"));
        };
        if name == "android" {
            for (field, value) in fields {
                if let Some((_, instead)) = LEGACY_ANDROID.iter().find(|(l, _)| l == field) {
                    return Err(BuildError::invalid(
                        format!("fcm_options.android.{field}"),
                        format!("is not an FCM v1 option here; use {instead}"),
                    ));
                }
                if field == "data" {
                    check_string_map(value)
                        .map_err(|why| BuildError::invalid("fcm_options.android.data", why))?;
                }
                android.insert(field.clone(), value);
            }
        } else {
            base.insert(name.clone(), value);
        }
    }
    Ok((base, android))
}

/// FCM refuses a `data` map with a value that is not a string.
fn check_string_map(value: &Value) -> Result<(), String> {
    let Value::Object(map) = value else { return Err("must be a table".into()) };
    match map.iter().find(|(_, v)| !v.is_string()) {
        Some((k, _)) => Err(format!("`{k}` must be a string: FCM takes only strings in `data`")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<FcmConfig, String> {
        toml::from_str(toml_text).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults() {
        let c = parse(r#"service_account_file = "sa.json""#).expect("minimal");
        assert_eq!(c.service_account_file, SecretSource::File("sa.json".into()));
        assert_eq!(c.endpoint, "https://fcm.googleapis.com");
        assert_eq!(c.project_id, None);
        assert!(c.send_badge_counts && !c.send_zero_badge);
        assert_eq!(c.max_concurrent_requests, 100);
        let options = c.validate().expect("valid");
        assert!(options.base.is_empty() && options.android.is_empty());
        let upstream = c.upstream(std::path::Path::new("/etc/herald"));
        assert_eq!(upstream.max_connections_per_host(), 100);
    }

    #[test]
    fn fcm_options_split_into_base_and_android() {
        let c = parse(
            r#"
            service_account_file = { env = "FCM_SA" }
            project_id = "herald-test"
            [fcm_options.android]
            ttl = "3600s"
            collapse_key = "room"
            [fcm_options.apns.headers]
            "apns-priority" = "10"
            "#,
        )
        .expect("parses");
        let o = c.validate().expect("valid");
        assert_eq!(
            String::from_utf8(o.base.to_json()).unwrap(),
            r#"{"apns":{"headers":{"apns-priority":"10"}}}"#
        );
        assert_eq!(
            String::from_utf8(o.android.to_json()).unwrap(),
            r#"{"collapse_key":"room","ttl":"3600s"}"#
        );
    }

    fn refused(toml_text: &str) -> String {
        let c = parse(&format!("service_account_file = \"sa.json\"\n{toml_text}")).expect("parses");
        c.validate().expect_err("refused").to_string()
    }

    #[test]
    fn legacy_options_are_refused_naming_the_v1_field() {
        for (text, names) in [
            (
                "fcm_options = { content_available = true }",
                ["content_available", "content-available"],
            ),
            ("fcm_options = { mutable_content = true }", ["mutable_content", "mutable-content"]),
            ("fcm_options = { priority = \"high\" }", ["fcm_options.priority", "android.priority"]),
            ("fcm_options = { time_to_live = 60 }", ["time_to_live", "android = { ttl"]),
            (
                "fcm_options = { collapse_key = \"x\" }",
                ["collapse_key", "android = { collapse_key"],
            ),
            ("fcm_options = { android = { priority = \"high\" } }", ["android.priority", "prio"]),
            ("fcm_options = { android = { time_to_live = 5 } }", ["android.time_to_live", "ttl"]),
        ] {
            let e = refused(text);
            for name in names {
                assert!(e.contains(name), "{text}: {e}");
            }
        }
    }

    #[test]
    fn fields_herald_sets_and_unknown_fields_are_refused() {
        assert!(refused("fcm_options = { token = \"x\" }").contains("fcm_options.token"));
        assert!(refused("fcm_options = { data = { a = \"b\" } }").contains("default_payload"));
        let e = refused("fcm_options = { colour = { a = 1 } }");
        assert!(e.contains("fcm_options.colour") && e.contains("apns"), "{e}");
        assert!(refused("fcm_options = { apns = 3 }").contains("must be a table"));
        let e = refused("fcm_options = { android = { data = { n = 1 } } }");
        assert!(e.contains("android.data") && e.contains("`n`"), "{e}");
        let e = refused("send_badge_counts = false\nsend_zero_badge = true");
        assert!(e.contains("send_zero_badge"), "{e}");
        assert!(refused("max_concurrent_requests = 0").contains("max_concurrent_requests"));
        let e = refused("upstream = { max_connections_per_host = 8 }");
        assert!(e.contains("max_concurrent_requests"), "{e}");
        assert!(refused("project_id = \"a/b\"").contains("project_id"));
        let e =
            parse("service_account_file = \"sa.json\"\napi_key = \"legacy\"").expect_err("unknown");
        assert!(e.contains("api_key"), "{e}");
    }
}
