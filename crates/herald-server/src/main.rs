//! The `herald` command line: `serve`, `check-config`, `reload`, `vapid-keygen`, `import-sygnal`,
//! `send-test`.
//!
//! Exit codes (docs/operations.md): 0 after a clean shutdown or a valid configuration; 2 when the
//! configuration cannot work (unreadable file, bad key, an app that cannot be built); 1 for
//! runtime failures (the store cannot be opened, the address cannot be bound, a background task
//! died while serving). `serve` and `check-config` agree on them.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use herald_server::{BackendRegistry, Config, Server};

/// `herald --version`: the version and the backends compiled into this binary, as the registry
/// knows them (one source of truth: a new backend feature shows here by registering).
fn version() -> String {
    let kinds: Vec<&str> = BackendRegistry::compiled().kinds().collect();
    format!("{} (backends: {})", env!("CARGO_PKG_VERSION"), kinds.join(", "))
}

/// Herald, a Matrix push gateway.
#[derive(Parser)]
#[command(name = "herald", about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Configuration file (TOML).
        #[arg(short, long, env = "HERALD_CONFIG")]
        config: PathBuf,
    },
    /// Validate a configuration without changing anything: build every app (creating no files)
    /// and check that the store can be opened; exit 0, 2 (configuration) or 1 (store).
    CheckConfig {
        /// Configuration file (TOML).
        #[arg(short, long, env = "HERALD_CONFIG")]
        config: PathBuf,
    },
    /// Make the running server re-read its configuration (as SIGHUP does): check the file first,
    /// signal the server whose pid is in <data_dir>/herald.pid and wait for its verdict.
    /// Exit 0 reloaded, 2 the file is invalid (nothing sent), 1 refused or no server running.
    Reload {
        /// Configuration file (TOML): the one the server runs with.
        #[arg(short, long, env = "HERALD_CONFIG")]
        config: PathBuf,
    },
    /// Turn a Sygnal configuration (sygnal.yaml) into a Herald one; what cannot be carried over
    /// is listed on stderr and as comments. Exit 0, or 2 when the file cannot be imported.
    ImportSygnal {
        /// The Sygnal configuration file (YAML).
        sygnal_yaml: PathBuf,
        /// Where to write the Herald configuration (refuses to overwrite); default: stdout.
        #[arg(short, long)]
        out: Option<PathBuf>,
    },
    /// Send one real notification through a configured app and report the upstream's answer.
    /// Exit 0 delivered, 3 rejected (dead token), 4 failed or nothing sent, 2 configuration.
    SendTest {
        /// Configuration file (TOML).
        #[arg(short, long, env = "HERALD_CONFIG")]
        config: PathBuf,
        /// The app_id the device's pusher is registered with.
        #[arg(long)]
        app: String,
        /// The device's pushkey.
        #[arg(long)]
        pushkey: String,
        /// The pusher's data, a JSON object (e.g. WebPush's {"endpoint": …, "auth": …}).
        #[arg(long)]
        data: Option<String>,
        /// The message text (default: "Test notification from Herald").
        #[arg(long)]
        message: Option<String>,
    },
    /// Create a VAPID key pair for a WebPush app and print the applicationServerKey.
    #[cfg(feature = "webpush")]
    VapidKeygen {
        /// Where to write the private key (PEM, mode 0600). Refuses to overwrite.
        #[arg(short, long)]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let matches = Cli::command().version(version()).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herald: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        match cli.command {
            Command::Serve { config } => serve(&config).await,
            Command::CheckConfig { config } => check_config(&config).await,
            Command::Reload { config } => reload(&config).await,
            #[cfg(feature = "webpush")]
            Command::VapidKeygen { out } => vapid_keygen(&out),
            Command::ImportSygnal { sygnal_yaml, out } => {
                import_sygnal(&sygnal_yaml, out.as_deref())
            }
            Command::SendTest { config, app, pushkey, data, message } => {
                let request =
                    herald_server::send_test::SendTest { app_id: app, pushkey, data, message };
                send_test(&config, &request).await
            }
        }
    })
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("herald: invalid configuration: {e}");
        ExitCode::from(2)
    })
}

async fn serve(path: &std::path::Path) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    herald_server::telemetry::init(&config.log);
    config.log_ignored_env();
    // Caught from here on: SIGHUP's default action would end the process.
    let hangups = hangups();
    let registry = Arc::new(BackendRegistry::compiled());
    let server = match Server::bind(&config, &registry).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot start: {e}");
            eprintln!("herald: cannot start: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    let reloader = server.reloader(std::path::absolute(path).unwrap_or(path.into()), registry);
    tokio::spawn(reload_on_hangup(hangups, reloader));
    let pid_file = match herald_server::reload::PidFile::create(&config.data_dir) {
        Ok(file) => Some(file),
        Err(e) => {
            tracing::warn!(error = %e, "cannot write the pid file: `herald reload` cannot find this server (SIGHUP still works)");
            None
        }
    };
    let result = server.run(shutdown_signal()).await;
    drop(pid_file);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Logged at ERROR when it happened; this line is for whoever reads the exit status.
            eprintln!("herald: stopped: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Everything `serve` checks before it binds, with no side effects: no key files, no data
/// directory, no database created.
async fn check_config(path: &std::path::Path) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let apps = match herald_server::server::check_apps(&config, &BackendRegistry::compiled()).await
    {
        Ok(n) => n,
        Err(e) => {
            eprintln!("herald: invalid configuration: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    let store = match herald_server::server::check_store(&config).await {
        Ok(store) => store,
        Err(e) => {
            eprintln!("herald: the store cannot be opened: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    eprintln!("herald: {} is valid ({apps} apps; store {store})", path.display());
    ExitCode::SUCCESS
}

/// Checks the file as `check-config` does (without the store: a store change needs a restart
/// anyway), then asks the running server to reload it.
async fn reload(path: &std::path::Path) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Err(e) = herald_server::server::check_apps(&config, &BackendRegistry::compiled()).await {
        eprintln!("herald: invalid configuration, nothing reloaded: {e}");
        return ExitCode::from(e.exit_code());
    }
    use herald_server::reload::ReloadOutcome;
    match herald_server::reload::request_reload(&config).await {
        Ok((pid, ReloadOutcome::Reloaded)) => {
            eprintln!("herald: pid {pid} reloaded {}", path.display());
            ExitCode::SUCCESS
        }
        Ok((pid, ReloadOutcome::Refused)) => {
            eprintln!("herald: pid {pid} refused the configuration; its log says why");
            ExitCode::FAILURE
        }
        Ok((pid, ReloadOutcome::Signalled)) => {
            eprintln!(
                "herald: sent SIGHUP to pid {pid}, but its metrics could not be read to confirm; \
                 its log says whether the configuration was reloaded"
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("herald: reload: {e}");
            ExitCode::FAILURE
        }
    }
}

/// SIGHUP, from now on (`None` where there is no such signal).
fn hangups() -> Option<tokio::signal::unix::Signal> {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(e) => {
            tracing::warn!(error = %e, "cannot catch SIGHUP: reloading is not available");
            None
        }
    }
}

/// Reloads the configuration on every SIGHUP (one at a time; the reloader logs the outcome).
async fn reload_on_hangup(
    hangups: Option<tokio::signal::unix::Signal>,
    reloader: herald_server::reload::Reloader,
) {
    let Some(mut hangups) = hangups else { return };
    while hangups.recv().await.is_some() {
        tracing::info!(file = %reloader.path().display(), "SIGHUP received: reloading the configuration");
        let _ = reloader.reload().await;
    }
}

/// Imports a Sygnal configuration: the TOML to `out` (or stdout), the notes to stderr.
fn import_sygnal(sygnal_yaml: &std::path::Path, out: Option<&std::path::Path>) -> ExitCode {
    let imported = match herald_server::import_sygnal::import_file(sygnal_yaml) {
        Ok(imported) => imported,
        Err(e) => {
            eprintln!("herald: cannot import: {e}");
            return ExitCode::from(2);
        }
    };
    for note in &imported.notes {
        eprintln!("herald: import-sygnal: {note}");
    }
    match out {
        None => print!("{}", imported.toml),
        Some(path) => {
            let written =
                std::fs::OpenOptions::new().write(true).create_new(true).open(path).and_then(
                    |mut file| std::io::Write::write_all(&mut file, imported.toml.as_bytes()),
                );
            if let Err(e) = written {
                eprintln!("herald: cannot write {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
            eprintln!(
                "herald: wrote {} ({} apps); check it with: herald check-config --config {}",
                path.display(),
                imported.apps,
                path.display()
            );
        }
    }
    ExitCode::SUCCESS
}

/// Sends one notification and prints the report; the exit code says how it ended.
async fn send_test(
    path: &std::path::Path,
    request: &herald_server::send_test::SendTest,
) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    herald_server::telemetry::init(&config.log);
    match herald_server::send_test::send_test(&config, &BackendRegistry::compiled(), request).await
    {
        Ok(report) => {
            print!("{}", report.render(request));
            ExitCode::from(report.exit_code())
        }
        Err(e) => {
            eprintln!("herald: send-test: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

#[cfg(feature = "webpush")]
fn vapid_keygen(out: &std::path::Path) -> ExitCode {
    match herald_webpush::generate_vapid_key(out) {
        Ok(public_key) => {
            eprintln!("herald: wrote the VAPID private key to {}", out.display());
            eprintln!("herald: give web clients this applicationServerKey:");
            // The key alone on stdout, so scripts can capture it.
            println!("{public_key}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("herald: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}
