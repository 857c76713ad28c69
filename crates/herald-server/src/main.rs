//! The `herald` command line: `serve`, `check-config`, `vapid-keygen`.
//!
//! Exit codes (docs/operations.md): 0 after a clean shutdown or a valid configuration; 2 when the
//! configuration cannot work (unreadable file, bad key, an app that cannot be built); 1 for
//! runtime failures (the store cannot be opened, the address cannot be bound, a background task
//! died while serving). `serve` and `check-config` agree on them.

use std::path::PathBuf;
use std::process::ExitCode;

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
            #[cfg(feature = "webpush")]
            Command::VapidKeygen { out } => vapid_keygen(&out),
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
    let server = match Server::bind(&config, &BackendRegistry::compiled()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot start: {e}");
            eprintln!("herald: cannot start: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    match server.run(shutdown_signal()).await {
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
