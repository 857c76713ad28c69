//! `herald import-sygnal`: turns a Sygnal configuration (`sygnal.yaml`) into a Herald one.
//!
//! Carried over: the listen address and port (`http.bind_addresses`, `http.port`), every app of
//! Sygnal's own types — `apns` (certificate or token auth, `platform`, `topic`, `push_type`,
//! `convert_device_token_to_hex`), `gcm` with `api_version: v1` (`project_id`,
//! `service_account_file`, `fcm_options`, `max_connections`) and `webpush`
//! (`vapid_private_key`, `vapid_contact_email`, `ttl`, `max_connections`) — with
//! `inflight_request_limit`, the outbound `proxy` (written into every app, as Sygnal used it for
//! every app), the root log level and the Prometheus listener (`metrics.prometheus`, as
//! `server.metrics_listen`).
//!
//! What Herald has no equivalent for (the legacy GCM API, custom `module.Class` pushkins,
//! OpenTracing/Jaeger, Sentry, Python logging handlers, WebPush's `allowed_endpoints` list of
//! the only push services to reach, unknown keys) is returned as
//! notes, which the output repeats as `#` comments; notes never quote a secret's value (API keys,
//! a proxy's password, a Sentry DSN). A Sygnal file that Sygnal itself would refuse (an unknown
//! app `type`, a token-auth app without `key_id`, …) or that is not YAML is an error naming the
//! key. The result is loaded with [`Config::from_toml`] and its app keys routed with
//! [`AppRouter`] before it is returned, so what `check-config` would refuse for its structure is
//! refused here; files it names (keys, service accounts) are checked by `check-config`.
//!
//! YAML is read with `yaml-rust2`: pure safe Rust, YAML 1.2, a nesting limit (no stack overflow
//! on hostile input), maintained with a stable API. Sygnal reads its file with PyYAML (YAML 1.1),
//! whose booleans include `yes`/`no`/`on`/`off`: boolean options accept those too.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use herald_core::{AppRouter, Glob};
use yaml_rust2::yaml::Hash;
use yaml_rust2::{Yaml, YamlLoader};

use crate::config::limits::MAX_CONCURRENCY;
use crate::config::Config;

/// A Sygnal configuration turned into Herald's.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The Herald configuration (TOML), with the notes as comments.
    pub toml: String,
    /// What could not be carried over, one line each, for stderr. No secret values.
    pub notes: Vec<String>,
    /// How many apps the configuration has.
    pub apps: usize,
}

/// Why a Sygnal configuration cannot be imported; the message names the key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// The file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The Sygnal configuration file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a usable Sygnal configuration.
    #[error("{0}")]
    Invalid(String),
}

fn invalid(message: impl Into<String>) -> ImportError {
    ImportError::Invalid(message.into())
}

/// Reads and imports the Sygnal configuration at `path`.
pub fn import_file(path: &Path) -> Result<Imported, ImportError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ImportError::Read { path: path.to_path_buf(), source })?;
    let name = path
        .file_name()
        .map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
    import_str(&text, &name).map_err(|e| match e {
        ImportError::Invalid(message) => invalid(format!("{}: {message}", path.display())),
        other => other,
    })
}

/// Imports a Sygnal configuration given as text; `source` names it in the output's header.
pub fn import_str(yaml: &str, source: &str) -> Result<Imported, ImportError> {
    let docs =
        YamlLoader::load_from_str(yaml).map_err(|e| invalid(format!("not valid YAML: {e}")))?;
    let root = match docs.as_slice() {
        [] | [Yaml::Null] => {
            return Err(invalid("the file is empty: a Sygnal configuration has at least `apps`"))
        }
        [root] => root,
        _ => return Err(invalid("the file holds several YAML documents; Sygnal reads one")),
    };
    let Yaml::Hash(root) = root else {
        return Err(invalid(
            "not a Sygnal configuration: expected a mapping (`http:`, `apps:`, …)",
        ));
    };
    let root = Section::new(String::new(), root)?;
    let mut import = Importer::default();
    import.run(&root)?;
    import.render(source)
}

/// One YAML mapping with its key path, for typed reads whose errors name the key.
struct Section<'a> {
    path: String,
    entries: Vec<(String, &'a Yaml)>,
}

impl<'a> Section<'a> {
    fn new(path: String, hash: &'a Hash) -> Result<Self, ImportError> {
        let mut entries = Vec::with_capacity(hash.len());
        for (key, value) in hash {
            let key = match key {
                Yaml::String(s) | Yaml::Real(s) => s.clone(),
                Yaml::Integer(i) => i.to_string(),
                Yaml::Boolean(b) => b.to_string(),
                _ => {
                    return Err(invalid(format!(
                        "`{}`: a key must be a string, not a list or a mapping",
                        if path.is_empty() { "(top level)" } else { path.as_str() }
                    )))
                }
            };
            entries.push((key, value));
        }
        Ok(Section { path, entries })
    }

    fn key_path(&self, key: &str) -> String {
        let key = if !key.is_empty()
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            key.to_owned()
        } else {
            format!("\"{}\"", shown(key))
        };
        if self.path.is_empty() {
            key
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// The value of `key`; `null` (`key:` with nothing after it) reads as absent, as in Sygnal.
    fn get(&self, key: &str) -> Option<&'a Yaml> {
        self.entries.iter().rev().find(|(k, _)| k == key).map(|(_, v)| *v).filter(|v| !v.is_null())
    }

    fn section(&self, key: &str) -> Result<Option<Section<'a>>, ImportError> {
        match self.get(key) {
            None => Ok(None),
            Some(Yaml::Hash(hash)) => Section::new(self.key_path(key), hash).map(Some),
            Some(_) => Err(invalid(format!("`{}` must be a mapping", self.key_path(key)))),
        }
    }

    fn string(&self, key: &str) -> Result<Option<String>, ImportError> {
        match self.get(key) {
            None => Ok(None),
            Some(Yaml::String(s) | Yaml::Real(s)) => Ok(Some(s.clone())),
            Some(Yaml::Integer(i)) => Ok(Some(i.to_string())),
            Some(_) => Err(invalid(format!("`{}` must be a string", self.key_path(key)))),
        }
    }

    fn boolean(&self, key: &str) -> Result<Option<bool>, ImportError> {
        match self.get(key) {
            None => Ok(None),
            Some(Yaml::Boolean(b)) => Ok(Some(*b)),
            // PyYAML (YAML 1.1) reads these as booleans.
            Some(Yaml::String(s)) => match s.to_ascii_lowercase().as_str() {
                "true" | "yes" | "on" => Ok(Some(true)),
                "false" | "no" | "off" => Ok(Some(false)),
                _ => Err(invalid(format!("`{}` must be true or false", self.key_path(key)))),
            },
            Some(_) => Err(invalid(format!("`{}` must be true or false", self.key_path(key)))),
        }
    }

    fn integer(&self, key: &str) -> Result<Option<i64>, ImportError> {
        match self.get(key) {
            None => Ok(None),
            Some(Yaml::Integer(i)) => Ok(Some(*i)),
            Some(Yaml::String(s)) if s.trim().parse::<i64>().is_ok() => {
                Ok(s.trim().parse::<i64>().ok())
            }
            Some(_) => Err(invalid(format!("`{}` must be an integer", self.key_path(key)))),
        }
    }

    /// A positive count, at most `max` (larger values are cut to it, with a note).
    fn count(
        &self,
        key: &str,
        max: usize,
        notes: &mut Vec<String>,
    ) -> Result<Option<i64>, ImportError> {
        match self.integer(key)? {
            None => Ok(None),
            Some(n) if n < 1 => {
                Err(invalid(format!("`{}` must be at least 1, not {n}", self.key_path(key))))
            }
            Some(n) if n as u128 > max as u128 => {
                notes.push(format!(
                    "`{}` = {n} is more than Herald allows; cut to {max}",
                    self.key_path(key)
                ));
                Ok(Some(max as i64))
            }
            Some(n) => Ok(Some(n)),
        }
    }

    fn keys(&self) -> impl Iterator<Item = &str> + '_ {
        self.entries.iter().map(|(k, _)| k.as_str())
    }
}

/// A key or value as it may appear in a message or a `#` comment: control characters escaped,
/// so a key with a newline cannot end a comment line.
fn shown(text: &str) -> String {
    text.chars()
        .flat_map(|c| if c.is_control() { c.escape_default().collect::<Vec<_>>() } else { vec![c] })
        .collect()
}

/// One app table of the output.
struct AppOut {
    key: String,
    kind: &'static str,
    /// `#` lines at the top of the table.
    comments: Vec<String>,
    /// `key = value`, with an optional trailing comment.
    entries: Vec<(&'static str, toml::Value, Option<String>)>,
    /// `[apps."…".upstream]` entries.
    upstream: Vec<(&'static str, toml::Value)>,
}

impl AppOut {
    fn new(key: &str, kind: &'static str) -> Self {
        AppOut {
            key: key.to_owned(),
            kind,
            comments: Vec::new(),
            entries: Vec::new(),
            upstream: Vec::new(),
        }
    }

    fn set(&mut self, key: &'static str, value: impl Into<toml::Value>) {
        self.entries.push((key, value.into(), None));
    }

    fn set_noted(&mut self, key: &'static str, value: impl Into<toml::Value>, comment: &str) {
        self.entries.push((key, value.into(), Some(comment.to_owned())));
    }
}

#[derive(Default)]
struct Importer {
    listen: Option<SocketAddr>,
    /// Sygnal's Prometheus listener, as `server.metrics_listen`.
    metrics_listen: Option<SocketAddr>,
    log_level: Option<&'static str>,
    proxy: Option<String>,
    apps: Vec<AppOut>,
    /// Lines for the output's header and stderr: what was not carried over.
    notes: Vec<String>,
    /// Comments for the `[server]` table.
    server_comments: Vec<String>,
}

const TOP_LEVEL: [&str; 7] = ["http", "apps", "proxy", "metrics", "log", "database", "db"];

impl Importer {
    fn run(&mut self, root: &Section<'_>) -> Result<(), ImportError> {
        for key in root.keys() {
            if !TOP_LEVEL.contains(&key) {
                self.notes.push(format!("`{}`: not a Sygnal option; not carried over", shown(key)));
            }
        }
        self.proxy = root.string("proxy")?;
        self.http(root.section("http")?)?;
        self.log(root.section("log")?)?;
        self.metrics(root.section("metrics")?)?;
        for key in ["database", "db"] {
            if root.get(key).is_some() {
                self.notes.push(format!(
                    "`{key}`: Sygnal's database (used only by the legacy GCM API) is not needed; \
                     Herald keeps its deduplication store in `data_dir`"
                ));
            }
        }
        let apps = root.section("apps")?.ok_or_else(|| {
            invalid("no `apps`: a Sygnal configuration needs at least one app (Sygnal refuses to start without)")
        })?;
        for key in apps.keys().map(str::to_owned).collect::<Vec<_>>() {
            let Some(section) = apps.section(&key)? else {
                self.notes.push(format!("`{}` is empty; skipped", apps.key_path(&key)));
                continue;
            };
            self.app(&key, &section)?;
        }
        if self.apps.is_empty() {
            return Err(invalid(format!(
                "no app could be imported:\n  - {}",
                self.notes.join("\n  - ")
            )));
        }
        Ok(())
    }

    /// `http.bind_addresses` (default `['127.0.0.1']`) and `http.port` (default 5000).
    fn http(&mut self, http: Option<Section<'_>>) -> Result<(), ImportError> {
        let mut port = 5000u16;
        let mut addresses: Vec<IpAddr> = vec![IpAddr::from([127, 0, 0, 1])];
        if let Some(http) = http {
            for key in http.keys() {
                if !matches!(key, "port" | "bind_addresses") {
                    self.notes.push(format!(
                        "`{}`: not a Sygnal option; not carried over",
                        http.key_path(key)
                    ));
                }
            }
            if let Some(p) = http.integer("port")? {
                port = u16::try_from(p)
                    .map_err(|_| invalid(format!("`http.port`: {p} is not a port (0 to 65535)")))?;
            }
            let list: Vec<&Yaml> = match http.get("bind_addresses") {
                None => vec![],
                Some(Yaml::Array(list)) => list.iter().collect(),
                Some(one @ Yaml::String(_)) => vec![one],
                Some(_) => {
                    return Err(invalid("`http.bind_addresses` must be a list of addresses"))
                }
            };
            if http.get("bind_addresses").is_some() {
                addresses.clear();
                for item in list {
                    let Some(text) = item.as_str() else {
                        return Err(invalid("`http.bind_addresses` must be a list of addresses"));
                    };
                    let ip = text
                        .trim()
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .parse::<IpAddr>()
                        .map_err(|_| {
                            invalid(format!(
                                "`http.bind_addresses`: `{}` is not an IP address",
                                shown(text)
                            ))
                        })?;
                    addresses.push(ip);
                }
                if addresses.is_empty() {
                    return Err(invalid(
                        "`http.bind_addresses` is empty: Sygnal would listen nowhere",
                    ));
                }
            }
        }
        let any4 = addresses.iter().any(|a| *a == IpAddr::from([0, 0, 0, 0]));
        let any6 = addresses.iter().any(|a| *a == IpAddr::from(Ipv6Addr::UNSPECIFIED));
        let chosen = if any4 && any6 {
            self.server_comments.push(
                "Sygnal listened on 0.0.0.0 and ::; Herald listens on one address: [::] also \
                 accepts IPv4 where net.ipv6.bindv6only is 0 (Linux's default)"
                    .into(),
            );
            IpAddr::from(Ipv6Addr::UNSPECIFIED)
        } else {
            addresses[0]
        };
        let others: Vec<String> = addresses
            .iter()
            .filter(|a| **a != chosen && !(any4 && any6))
            .map(ToString::to_string)
            .collect();
        if !others.is_empty() {
            self.notes.push(format!(
                "`http.bind_addresses`: Herald listens on one address ({chosen}); not also on {}",
                others.join(", ")
            ));
        }
        self.listen = Some(SocketAddr::new(chosen, port));
        Ok(())
    }

    /// The root level of Python's logging `dictConfig`; handlers and formatters do not carry
    /// over (Herald logs to stderr).
    fn log(&mut self, log: Option<Section<'_>>) -> Result<(), ImportError> {
        let Some(log) = log else { return Ok(()) };
        if let Some(setup) = log.section("setup")? {
            let level = setup.section("root")?.and_then(|root| root.string("level").ok().flatten());
            self.log_level = match level.as_deref().map(str::to_ascii_uppercase).as_deref() {
                Some("DEBUG") => Some("debug"),
                Some("INFO") => Some("info"),
                Some("WARNING" | "WARN") => Some("warn"),
                Some("ERROR" | "CRITICAL" | "FATAL") => Some("error"),
                _ => None,
            };
            if setup.keys().any(|k| k != "version") {
                self.notes.push(
                    "`log.setup` (Python logging handlers, formatters, files): Herald logs to \
                     stderr (journald under systemd); `[log] format = \"json\"` writes JSON lines. \
                     Only the root level is carried over"
                        .into(),
                );
            }
        }
        if log.get("access").is_some() {
            self.notes.push("`log.access` (access log, x_forwarded_for): not carried over".into());
        }
        for key in log.keys() {
            if !matches!(key, "setup" | "access") {
                self.notes.push(format!(
                    "`{}`: not a Sygnal option; not carried over",
                    log.key_path(key)
                ));
            }
        }
        Ok(())
    }

    fn metrics(&mut self, metrics: Option<Section<'_>>) -> Result<(), ImportError> {
        let Some(metrics) = metrics else { return Ok(()) };
        for key in metrics.keys() {
            let Some(section) = metrics.section(key)? else { continue };
            let enabled = section.boolean("enabled")?.unwrap_or(false);
            match key {
                "prometheus" => {
                    let address = section.string("address")?.unwrap_or_else(|| "127.0.0.1".into());
                    let port = section.integer("port")?.unwrap_or(8000);
                    if enabled {
                        let addr = format!("{address}:{port}");
                        let bracketed = format!("[{address}]:{port}");
                        match addr.parse().or_else(|_| bracketed.parse()) {
                            Ok(addr) => {
                                self.metrics_listen = Some(addr);
                                self.notes.push(
                                    "`metrics.prometheus`: carried over as `server.metrics_listen`; \
                                     the metrics are named herald_* instead of sygnal_*: update \
                                     dashboards and alerts"
                                        .into(),
                                );
                            }
                            Err(_) => self.notes.push(format!(
                                "`metrics.prometheus`: the address {}:{port} is not an IP address \
                                 and port; not carried over: Herald serves /metrics on \
                                 `server.listen` unless `server.metrics_listen` is set",
                                shown(&address)
                            )),
                        }
                    }
                }
                "opentracing" if enabled => self.notes.push(
                    "`metrics.opentracing` (Jaeger): Herald exports no traces; not carried over"
                        .into(),
                ),
                "sentry" if enabled => self.notes.push(
                    "`metrics.sentry`: Herald does not report to Sentry; not carried over (the DSN \
                     is not copied)"
                        .into(),
                ),
                "opentracing" | "sentry" => {}
                other => self.notes.push(format!(
                    "`{}`: not a Sygnal option; not carried over",
                    metrics.key_path(other)
                )),
            }
        }
        Ok(())
    }

    fn app(&mut self, key: &str, app: &Section<'_>) -> Result<(), ImportError> {
        if key.trim().is_empty() {
            return Err(invalid("`apps`: an app id is empty"));
        }
        let kind = app.string("type")?.ok_or_else(|| {
            invalid(format!("`{}`: missing `type` (apns, gcm or webpush)", app.path))
        })?;
        let mut out = match kind.as_str() {
            "apns" => self.apns(key, app)?,
            "gcm" => match self.gcm(key, app)? {
                Some(out) => out,
                None => return Ok(()),
            },
            "webpush" => self.webpush(key, app)?,
            custom if custom.contains('.') => {
                self.notes.push(format!(
                    "`{}`: the custom pushkin `{}` cannot be imported: Herald has no plugin \
                     pushkins; configure this app by hand with one of Herald's kinds (apns, fcm, \
                     webpush, email, log). App skipped",
                    app.path,
                    shown(custom)
                ));
                return Ok(());
            }
            other => {
                return Err(invalid(format!(
                    "`{}.type`: unknown type `{}`: Sygnal's own are apns, gcm and webpush (a \
                     custom pushkin is written `module.Class`)",
                    app.path,
                    shown(other)
                )))
            }
        };
        if let Some(limit) =
            app.count("inflight_request_limit", MAX_CONCURRENCY, &mut self.notes)?
        {
            out.set_noted(
                "max_concurrency",
                limit,
                "Sygnal's inflight_request_limit; Herald queues deliveries past it (within the \
                 request deadline) instead of failing them",
            );
        }
        if Glob::is_glob(key) {
            self.notes.push(format!(
                "`{}`: a pattern. Sygnal read `*` as one or more of any character anywhere in \
                 the app_id (a regex search); Herald matches the whole app_id, `*` being any run \
                 of characters, `?` one character",
                app.path
            ));
        }
        self.apps.push(out);
        Ok(())
    }

    fn unknown_keys(&mut self, app: &Section<'_>, known: &[&str]) {
        for key in app.keys() {
            if key != "type" && key != "inflight_request_limit" && !known.contains(&key) {
                self.notes.push(format!(
                    "`{}`: not an option of Sygnal's pushkin that Herald knows; not carried over",
                    app.key_path(key)
                ));
            }
        }
    }

    fn required(app: &Section<'_>, key: &str, why: &str) -> Result<String, ImportError> {
        app.string(key)?
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| invalid(format!("`{}` is required {why}", app.key_path(key))))
    }

    fn apns(&mut self, key: &str, app: &Section<'_>) -> Result<AppOut, ImportError> {
        self.unknown_keys(
            app,
            &[
                "platform",
                "certfile",
                "keyfile",
                "key_id",
                "team_id",
                "topic",
                "push_type",
                "convert_device_token_to_hex",
            ],
        );
        let mut out = AppOut::new(key, "apns");
        if let Some(certfile) = app.string("certfile")? {
            // Sygnal hands `certfile` to aioapns as one PEM holding the certificate and its
            // key; Herald reads the certificate and the key from the same file.
            out.set("certificate_file", certfile.clone());
            out.set_noted(
                "key_file",
                certfile,
                "Sygnal's certfile holds the certificate and its unencrypted key",
            );
            for ignored in ["keyfile", "key_id", "team_id", "topic"] {
                if app.get(ignored).is_some() {
                    self.notes.push(format!(
                        "`{}`: Sygnal ignores it with `certfile` (certificate auth; the topic is \
                         the certificate's UID), and so does this configuration",
                        app.key_path(ignored)
                    ));
                }
            }
        } else if app.get("keyfile").is_some() {
            let why = "for token auth (`keyfile`); Sygnal refuses to start without it too";
            out.set("key_file", Self::required(app, "keyfile", why)?);
            out.set("key_id", Self::required(app, "key_id", why)?);
            out.set("team_id", Self::required(app, "team_id", why)?);
            out.set("topic", Self::required(app, "topic", why)?);
        } else {
            return Err(invalid(format!(
                "`{}`: neither `certfile` nor `keyfile`: an APNs app needs one (Sygnal refuses to \
                 start without)",
                app.path
            )));
        }
        match app.string("platform")?.as_deref() {
            None => {}
            Some("production" | "prod") => out.set("platform", "production"),
            Some("sandbox") => out.set("platform", "sandbox"),
            Some(other) => {
                return Err(invalid(format!(
                    "`{}`: `{}` is not production or sandbox",
                    app.key_path("platform"),
                    shown(other)
                )))
            }
        }
        if let Some(push_type) = app.string("push_type")? {
            // Sygnal's set; Herald knows each of them (and more).
            const SYGNAL: [&str; 6] =
                ["alert", "background", "voip", "complication", "fileprovider", "mdm"];
            if !SYGNAL.contains(&push_type.as_str()) {
                return Err(invalid(format!(
                    "`{}`: `{}` is not one of {}",
                    app.key_path("push_type"),
                    shown(&push_type),
                    SYGNAL.join(", ")
                )));
            }
            out.set("push_type", push_type);
        }
        if let Some(hex) = app.boolean("convert_device_token_to_hex")? {
            out.set("convert_device_token_to_hex", hex);
        }
        if let Some(proxy) = &self.proxy {
            out.upstream.push(("proxy", proxy.clone().into()));
        }
        Ok(out)
    }

    /// `None` when the app uses the legacy API, which cannot be imported (noted).
    fn gcm(&mut self, key: &str, app: &Section<'_>) -> Result<Option<AppOut>, ImportError> {
        self.unknown_keys(
            app,
            &[
                "api_key",
                "api_version",
                "project_id",
                "service_account_file",
                "fcm_options",
                "max_connections",
            ],
        );
        match app.string("api_version")?.as_deref() {
            Some("v1") => {}
            None | Some("legacy") => {
                self.notes.push(format!(
                    "`{}`: the legacy GCM API (`api_key`, Sygnal's default without `api_version: \
                     v1`) cannot be imported: Google has shut it down. Create a service account \
                     key (Firebase console, Project settings, Service accounts) and configure the \
                     app as kind = \"fcm\" with service_account_file. App skipped",
                    app.path
                ));
                return Ok(None);
            }
            Some(other) => {
                return Err(invalid(format!(
                    "`{}`: `{}` is not v1 or legacy",
                    app.key_path("api_version"),
                    shown(other)
                )))
            }
        }
        if app.get("api_key").is_some() {
            self.notes.push(format!(
                "`{}`: unused with api_version v1 (by Sygnal too); not copied",
                app.key_path("api_key")
            ));
        }
        let mut out = AppOut::new(key, "fcm");
        let why = "with api_version v1; Sygnal refuses to start without it too";
        out.set("service_account_file", Self::required(app, "service_account_file", why)?);
        out.set("project_id", Self::required(app, "project_id", why)?);
        if let Some(n) = app.count("max_connections", MAX_CONCURRENCY, &mut self.notes)? {
            out.set_noted(
                "max_concurrent_requests",
                n,
                "Sygnal's max_connections: requests in flight, here on one HTTP/2 connection",
            );
        }
        if let Some(options) = app.section("fcm_options")? {
            let table = self.fcm_options(&options)?;
            if !table.is_empty() {
                out.set("fcm_options", toml::Value::Table(table));
            }
        }
        if let Some(proxy) = &self.proxy {
            out.upstream.push(("proxy", proxy.clone().into()));
        }
        Ok(Some(out))
    }

    /// `fcm_options` is merged into every FCM v1 message by Sygnal and Herald alike; top-level
    /// keys that are not fields of a v1 message made FCM refuse every message under Sygnal
    /// (and Herald refuses them at start), so they are left out, with a note.
    fn fcm_options(&mut self, options: &Section<'_>) -> Result<toml::Table, ImportError> {
        const V1_FIELDS: [&str; 5] = ["notification", "android", "webpush", "apns", "fcm_options"];
        let mut table = toml::Table::new();
        for (key, value) in &options.entries {
            let path = options.key_path(key);
            if !V1_FIELDS.contains(&key.as_str()) {
                self.notes.push(format!(
                    "`{path}`: not a field of an FCM v1 message (FCM refused every message with \
                     it); not carried over: see docs/backends/fcm.md for the v1 equivalent"
                ));
                continue;
            }
            if let Some(value) = self.toml_value(&path, value)? {
                table.insert(key.clone(), value);
            }
        }
        Ok(table)
    }

    /// A YAML value as TOML; `null`s, which TOML cannot write, are left out with a note.
    fn toml_value(&mut self, path: &str, value: &Yaml) -> Result<Option<toml::Value>, ImportError> {
        Ok(Some(match value {
            Yaml::Null => {
                self.notes.push(format!("`{path}`: null has no TOML form; left out"));
                return Ok(None);
            }
            Yaml::Boolean(b) => toml::Value::Boolean(*b),
            Yaml::Integer(i) => toml::Value::Integer(*i),
            Yaml::Real(r) => match r.parse::<f64>() {
                Ok(f) if f.is_finite() => toml::Value::Float(f),
                _ => toml::Value::String(r.clone()),
            },
            Yaml::String(s) => toml::Value::String(s.clone()),
            Yaml::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    if let Some(v) = self.toml_value(&format!("{path}[{i}]"), item)? {
                        out.push(v);
                    }
                }
                toml::Value::Array(out)
            }
            Yaml::Hash(hash) => {
                let section = Section::new(path.to_owned(), hash)?;
                let mut table = toml::Table::new();
                for (key, item) in &section.entries {
                    if let Some(v) = self.toml_value(&section.key_path(key), item)? {
                        table.insert(key.clone(), v);
                    }
                }
                toml::Value::Table(table)
            }
            Yaml::Alias(_) | Yaml::BadValue => {
                return Err(invalid(format!("`{path}`: a value that cannot be read")))
            }
        }))
    }

    fn webpush(&mut self, key: &str, app: &Section<'_>) -> Result<AppOut, ImportError> {
        self.unknown_keys(
            app,
            &[
                "vapid_private_key",
                "vapid_contact_email",
                "allowed_endpoints",
                "ttl",
                "max_connections",
            ],
        );
        let mut out = AppOut::new(key, "webpush");
        let why = "for a WebPush app; Sygnal refuses to start without it too";
        out.set("vapid_private_key", Self::required(app, "vapid_private_key", why)?);
        let contact = Self::required(app, "vapid_contact_email", why)?;
        // Sygnal sends `sub: mailto:<vapid_contact_email>`.
        let subject = if contact.starts_with("mailto:") || contact.starts_with("https:") {
            contact
        } else {
            format!("mailto:{contact}")
        };
        out.set_noted("vapid_subject", subject, "from Sygnal's vapid_contact_email");
        if let Some(ttl) = app.integer("ttl")? {
            let secs = u32::try_from(ttl).map_err(|_| {
                invalid(format!("`{}`: {ttl} is not a number of seconds", app.key_path("ttl")))
            })?;
            out.set("ttl", herald_core::config::format_duration(Duration::from_secs(secs.into())));
        }
        if let Some(n) = app.count("max_connections", MAX_CONCURRENCY, &mut self.notes)? {
            out.set_noted(
                "max_connections_per_host",
                n,
                "Sygnal's max_connections was one cap for all push services; Herald's is per \
                 push service",
            );
        }
        if let Some(proxy) = &self.proxy {
            out.set("proxy", proxy.clone());
        }
        match app.get("allowed_endpoints") {
            None => {}
            Some(Yaml::Array(list)) => {
                let entries: Vec<String> =
                    list.iter().filter_map(Yaml::as_str).map(|s| format!("{s:?}")).collect();
                self.notes.push(format!(
                    "`{}`: Sygnal reached only the push services listed; Herald has no such list \
                     (its SSRF guard refuses non-public addresses instead, and its own \
                     allowed_endpoints only lets more through). Not carried over",
                    app.key_path("allowed_endpoints")
                ));
                out.comments.push(format!(
                    "Sygnal's allowed_endpoints (the only push services it reached) were [{}]; \
                     Herald reaches any public push service. List an internal push service's \
                     address block (\"10.1.2.0/24\") in allowed_endpoints to reach it",
                    shown(&entries.join(", "))
                ));
            }
            Some(_) => {
                return Err(invalid(format!(
                    "`{}` must be a list",
                    app.key_path("allowed_endpoints")
                )))
            }
        }
        Ok(out)
    }

    fn render(mut self, source: &str) -> Result<Imported, ImportError> {
        let listen = self.listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 5000)));
        let mut text = String::new();
        let line = |text: &mut String, s: &str| {
            text.push_str(s);
            text.push('\n');
        };
        line(
            &mut text,
            &format!(
                "# Herald configuration imported from Sygnal's {} by `herald import-sygnal` \
                 (Herald {}).",
                shown(source),
                env!("CARGO_PKG_VERSION")
            ),
        );
        line(&mut text, "# Check it: herald check-config --config <this file>");
        line(
            &mut text,
            "# Relative paths (keys, certificates, service accounts) resolve against this file's \
             directory; Sygnal resolved them against its working directory.",
        );
        line(
            &mut text,
            "# Every option, with its default: configs/herald.example.toml; migrating: \
             docs/operations.md.",
        );
        if !self.notes.is_empty() {
            line(&mut text, "#");
            line(&mut text, "# Not carried over from Sygnal, or different in Herald:");
            for note in &self.notes {
                line(&mut text, &format!("# - {}", shown(note)));
            }
        }
        line(&mut text, "");
        line(
            &mut text,
            "# The deduplication store (SQLite) and state; relative to the working directory.",
        );
        line(&mut text, "data_dir = \"data\"");
        line(&mut text, "");
        line(&mut text, "[server]");
        for comment in &self.server_comments {
            line(&mut text, &format!("# {}", shown(comment)));
        }
        line(&mut text, &format!("listen = {}", toml::Value::String(listen.to_string())));
        match self.metrics_listen {
            Some(metrics) => {
                line(
                    &mut text,
                    "# GET /metrics, on a listener of its own (Sygnal's Prometheus one).",
                );
                line(
                    &mut text,
                    &format!("metrics_listen = {}", toml::Value::String(metrics.to_string())),
                );
            }
            None => line(&mut text, "# Metrics: GET /metrics on `listen`."),
        }
        if let Some(level) = self.log_level {
            line(&mut text, "");
            line(&mut text, "[log]");
            line(&mut text, &format!("level = \"{level}\""));
        }
        for app in &self.apps {
            let table = format!("apps.{}", toml::Value::String(app.key.clone()));
            line(&mut text, "");
            line(&mut text, &format!("[{table}]"));
            for comment in &app.comments {
                line(&mut text, &format!("# {}", shown(comment)));
            }
            line(&mut text, &format!("kind = \"{}\"", app.kind));
            for (key, value, comment) in &app.entries {
                match comment {
                    Some(c) => line(&mut text, &format!("{key} = {value}   # {}", shown(c))),
                    None => line(&mut text, &format!("{key} = {value}")),
                }
            }
            if !app.upstream.is_empty() {
                line(&mut text, &format!("[{table}.upstream]"));
                for (key, value) in &app.upstream {
                    line(&mut text, &format!("{key} = {value}"));
                }
            }
        }
        // What check-config would refuse for its structure is refused here, naming the cause.
        Config::from_toml(&text, std::iter::empty(), PathBuf::from(".")).map_err(|e| {
            invalid(format!("the imported configuration would not load in Herald: {e}"))
        })?;
        AppRouter::new(self.apps.iter().map(|a| (a.key.clone(), ()))).map_err(|e| {
            invalid(format!(
                "apps: {e} (Sygnal rejected app_ids that matched both as ambiguous; Herald \
                 refuses such patterns at start)"
            ))
        })?;
        let notes = std::mem::take(&mut self.notes);
        Ok(Imported { toml: text, notes, apps: self.apps.len() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn import(yaml: &str) -> Result<Imported, ImportError> {
        import_str(yaml, "sygnal.yaml")
    }

    const APP: &str = "apps:\n  a.b:\n    type: webpush\n    vapid_private_key: k.pem\n    \
                       vapid_contact_email: ops@example.org\n";

    fn listen(yaml: &str) -> SocketAddr {
        let out = import(&format!("{yaml}\n{APP}")).unwrap();
        Config::from_toml(&out.toml, std::iter::empty(), ".".into()).unwrap().server.listen
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(listen(""), "127.0.0.1:5000".parse().unwrap());
        assert_eq!(listen("http:\n  port: '5001'"), "127.0.0.1:5001".parse().unwrap());
        assert_eq!(
            listen("http:\n  bind_addresses: ['0.0.0.0', '::']\n  port: 8008"),
            "[::]:8008".parse().unwrap()
        );
        assert_eq!(listen("http:\n  bind_addresses: ['::1']"), "[::1]:5000".parse().unwrap());
        let out =
            import(&format!("http:\n  bind_addresses: ['10.0.0.1', '10.0.0.2']\n{APP}")).unwrap();
        assert!(out.notes.iter().any(|n| n.contains("10.0.0.2")), "{:?}", out.notes);
        let e = import(&format!("http:\n  bind_addresses: ['localhost']\n{APP}")).unwrap_err();
        assert!(e.to_string().contains("http.bind_addresses"), "{e}");
    }

    #[test]
    fn pyyaml_booleans_and_vapid_subjects() {
        let yaml = "apps:\n  a.ios:\n    type: apns\n    certfile: c.pem\n    \
                    convert_device_token_to_hex: no\n    platform: prod\n  w.b:\n    type: webpush\n    \
                    vapid_private_key: k.pem\n    vapid_contact_email: mailto:ops@example.org\n";
        let out = import(yaml).unwrap();
        let config = Config::from_toml(&out.toml, std::iter::empty(), ".".into()).unwrap();
        assert_eq!(config.apps["a.ios"]["convert_device_token_to_hex"].as_bool(), Some(false));
        assert_eq!(config.apps["a.ios"]["platform"].as_str(), Some("production"));
        assert_eq!(config.apps["w.b"]["vapid_subject"].as_str(), Some("mailto:ops@example.org"));
    }

    #[test]
    fn hostile_input_is_an_error_not_a_crash() {
        let deep = format!("apps: {}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(import(&deep).is_err());
        let newline_key =
            "apps:\n  \"a\\n[server]\":\n    type: custom.Thing\n  b.c:\n    type: webpush\n    \
                           vapid_private_key: k\n    vapid_contact_email: e@x\n";
        let out = import(newline_key).unwrap();
        // The key's newline is escaped in the comment, so the TOML still loads as written.
        assert!(out.toml.contains("a\\n[server]"), "{}", out.toml);
        assert!(import("apps:\n  a.b:\n    type: [1]\n").is_err());
        assert!(import("apps: 3\n").is_err());
    }
}
