//! Which backend kinds this binary can build, in one visible place.
//!
//! Each backend crate is a Cargo feature of `herald-server`; [`BackendRegistry::compiled`]
//! registers exactly the ones compiled in. Tests register their own (scripted) backends.

use std::collections::BTreeMap;
use std::sync::Arc;

use herald_core::log_backend::LogBackend;
use herald_core::{AppContext, Backend, BackendFactory, BuildError};

type BuildFn =
    Box<dyn Fn(&AppContext, toml::Table) -> Result<Arc<dyn Backend>, BuildError> + Send + Sync>;

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
        registry
    }

    /// Registers a backend crate's factory under its `KIND`.
    pub fn register_factory<F: BackendFactory>(&mut self) {
        self.register(F::KIND, |app, table| {
            let config: F::Config = serde_path_to_error::deserialize(toml::Value::Table(table))
                .map_err(|e| match e.path().to_string().as_str() {
                    "." => BuildError::new(e.inner()),
                    path => BuildError::new(format_args!("`{path}`: {}", e.inner())),
                })?;
            F::build(app, config)
        });
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
        self.kinds.insert(kind, Box::new(build));
    }

    /// Builds the backend for one app.
    pub fn build(
        &self,
        kind: &str,
        app: &AppContext,
        section: toml::Table,
    ) -> Result<Arc<dyn Backend>, BuildError> {
        match self.kinds.get(kind) {
            Some(build) => build(app, section),
            None => Err(BuildError::new(format_args!(
                "unknown kind `{kind}`; this binary has: {}",
                self.kinds.keys().copied().collect::<Vec<_>>().join(", ")
            ))),
        }
    }
}
