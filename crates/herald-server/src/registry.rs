//! Which backend kinds this binary can build, in one visible place.
//!
//! Each backend crate is a Cargo feature of `herald-server`; [`BackendRegistry::compiled`]
//! registers exactly the ones compiled in. Tests register their own (scripted) backends.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use herald_core::log_backend::LogBackend;
use herald_core::{AppContext, Backend, BackendFactory, BuildError};

/// What building one backend returns: its factory's future.
pub type BuildFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Arc<dyn Backend>, BuildError>> + Send + 'a>>;

type BuildFn = Box<dyn for<'a> Fn(&'a AppContext, toml::Table) -> BuildFuture<'a> + Send + Sync>;

/// Backend kinds Herald has crates for, with the Cargo feature of `herald-server` that compiles
/// each in: a configuration naming one that is not compiled in is told which feature it needs.
pub const KNOWN_KINDS: [(&str, &str); 4] =
    [("webpush", "webpush"), ("apns", "apns"), ("fcm", "fcm"), ("email", "email")];

/// Maps a `kind` to a function building that backend from its config section.
#[derive(Default)]
pub struct BackendRegistry {
    kinds: BTreeMap<&'static str, BuildFn>,
}

impl BackendRegistry {
    /// Every backend compiled into this binary.
    pub fn compiled() -> Self {
        let mut registry = BackendRegistry::default();
        registry.register_factory::<LogBackend>();
        #[cfg(feature = "webpush")]
        registry.register_factory::<herald_webpush::WebPushBackend>();
        #[cfg(feature = "apns")]
        registry.register_factory::<herald_apns::ApnsBackend>();
        #[cfg(feature = "email")]
        registry.register_factory::<herald_email::EmailBackend>();
        #[cfg(feature = "fcm")]
        registry.register_factory::<herald_fcm::FcmBackend>();
        registry
    }

    /// Registers a backend crate's factory under its `KIND`.
    pub fn register_factory<F: BackendFactory>(&mut self) {
        self.kinds.insert(
            F::KIND,
            Box::new(|app, table| {
                Box::pin(async move {
                    let config: F::Config = serde_path_to_error::deserialize(toml::Value::Table(
                        table,
                    ))
                    .map_err(|e| match e.path().to_string().as_str() {
                        "." => BuildError::new(e.inner()),
                        path => BuildError::new(format_args!("`{path}`: {}", e.inner())),
                    })?;
                    F::build(app, config).await
                })
            }),
        );
    }

    /// Registers a build function for `kind` (tests use this to inject backends).
    pub fn register(
        &mut self,
        kind: &'static str,
        build: impl Fn(&AppContext, toml::Table) -> Result<Arc<dyn Backend>, BuildError>
            + Send
            + Sync
            + 'static,
    ) {
        self.kinds.insert(
            kind,
            Box::new(move |app, table| {
                let built = build(app, table);
                Box::pin(async move { built })
            }),
        );
    }

    /// The kinds compiled in, in order.
    pub fn kinds(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.kinds.keys().copied()
    }

    /// Builds the backend for one app.
    pub async fn build(
        &self,
        kind: &str,
        app: &AppContext,
        section: toml::Table,
    ) -> Result<Arc<dyn Backend>, BuildError> {
        match self.kinds.get(kind) {
            Some(build) => build(app, section).await,
            None => Err(self.unknown(kind)),
        }
    }

    fn unknown(&self, kind: &str) -> BuildError {
        let compiled = self.kinds().collect::<Vec<_>>().join(", ");
        match KNOWN_KINDS.iter().find(|(known, _)| *known == kind) {
            Some((_, feature)) => BuildError::new(format_args!(
                "kind `{kind}` is not compiled into this binary (it has: {compiled}); build \
                 herald with the `{feature}` feature: cargo build -p herald-server --features \
                 {feature}"
            )),
            None => {
                BuildError::new(format_args!("unknown kind `{kind}`; this binary has: {compiled}"))
            }
        }
    }
}
