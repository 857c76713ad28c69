//! Configuration refused at load naming the key, the environment read only for known keys, and
//! `herald check-config`: side-effect free, opening the store, with the exit codes of `serve`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use herald_server::Config;

const MINIMAL: &str = "[apps.\"com.example.app\"]\nkind = \"log\"\n";

fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, String> {
    let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    Config::from_toml(text, env, PathBuf::from(".")).map_err(|e| e.to_string())
}

/// `text` (a section and a key) on top of a minimal configuration must be refused, naming `key`.
#[track_caller]
fn refused(text: &str, key: &str) -> String {
    match load(&format!("{text}\n{MINIMAL}"), &[]) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => {
            assert!(
                e.contains(&format!("`{key}`")),
                "error for\n{text}\ndoes not name `{key}`: {e}"
            );
            e
        }
    }
}

#[test]
fn zero_and_nonsensical_values_are_refused_naming_the_key() {
    for (text, key) in [
        // Zero durations: the pruner panicked, reads timed out at once, retries spun.
        ("[store]\nprune_interval = \"0s\"", "store.prune_interval"),
        ("[store]\nprune_interval = 0", "store.prune_interval"),
        ("[server]\nheader_read_timeout = \"0s\"", "server.header_read_timeout"),
        ("[server]\nbody_read_timeout = \"0ms\"", "server.body_read_timeout"),
        ("[delivery]\ninitial_backoff = \"0s\"", "delivery.initial_backoff"),
        ("[delivery]\nmax_backoff = \"0s\"", "delivery.max_backoff"),
        // Relations between keys.
        ("[delivery]\ninitial_backoff = \"2s\"\nmax_backoff = \"1s\"", "delivery.max_backoff"),
        ("[server]\nrequest_deadline = \"20s\"\nshutdown_grace = \"10s\"", "server.shutdown_grace"),
        // Sizes that cannot be allocated (exit 134 for 1e12 cache entries), or make no sense.
        ("[store]\nrecent_cache_entries = 1000000000000", "store.recent_cache_entries"),
        ("[store]\nmax_batch = 100000", "store.max_batch"),
        ("[server]\nbody_limit = 1073741824", "server.body_limit"),
        ("[store]\nttl = \"100000d\"", "store.ttl"),
        ("[delivery]\nmax_attempts = 1000", "delivery.max_attempts"),
        (
            "[delivery]\nmax_concurrency_per_app = 4611686018427387904",
            "delivery.max_concurrency_per_app",
        ),
        // Not a store this build has.
        ("[store]\nurl = \"mysql://herald@db/herald\"", "store.url"),
        // Log levels that are no level (tracing would read a bare word as a target name).
        ("[log]\nlevel = \"verbose\"", "log.level"),
        ("[log]\nlevel = \"\"", "log.level"),
        ("[log]\nlevel = \"herald_server=loud\"", "log.level"),
        ("[log]\nlevel = \"info,\"", "log.level"),
    ] {
        refused(text, key);
    }
    // What is allowed still loads.
    let c = load(
        &format!(
            "[log]\nlevel = \"herald_server=debug,warn\"\n[delivery]\ninitial_backoff = \"1s\"\n\
             max_backoff = \"1s\"\n[server]\nrequest_deadline = \"20s\"\nshutdown_grace = \"20s\"\n\
             [store]\nrecent_cache_entries = 0\n{MINIMAL}"
        ),
        &[],
    )
    .unwrap();
    assert_eq!(c.log.level, "herald_server=debug,warn");
}

/// Every numeric key, given a negative, a huge and a fractional number: a clear error naming the
/// key, never a panic or an abort.
#[test]
fn every_numeric_key_refuses_negative_and_huge_numbers() {
    let keys = [
        ("server", "body_limit"),
        ("server", "max_connections"),
        ("server", "request_deadline"),
        ("server", "header_read_timeout"),
        ("server", "body_read_timeout"),
        ("server", "shutdown_grace"),
        ("store", "ttl"),
        ("store", "prune_interval"),
        ("store", "max_batch"),
        ("store", "recent_cache_entries"),
        ("delivery", "max_attempts"),
        ("delivery", "initial_backoff"),
        ("delivery", "max_backoff"),
        ("delivery", "max_concurrency_per_app"),
        ("delivery", "max_in_flight_devices"),
        ("delivery", "max_in_flight_devices_per_request"),
    ];
    for (section, key) in keys {
        for value in ["-1", "9223372036854775807", "1e12", "-1e300", "\"99999999999999999999999d\""]
        {
            refused(&format!("[{section}]\n{key} = {value}"), &format!("{section}.{key}"));
        }
    }
    for value in ["-1", "0", "9223372036854775807", "1e12"] {
        let e =
            load(&format!("[apps.a]\nkind = \"log\"\nmax_concurrency = {value}"), &[]).unwrap_err();
        assert!(e.contains("apps.\"a\".max_concurrency"), "{e}");
    }
}

#[test]
fn only_variables_that_name_a_key_are_read() {
    let c = load(
        MINIMAL,
        &[
            ("HERALD_VERSION", "1.2"),
            ("HERALD_SERVER", "x"),
            ("HERALD_", "x"),
            ("HERALD_LOG__COLOUR", "always"),
            ("HERALD_APPS__X__KIND", "log"),
            ("HERALD_STORE__TTL__EXTRA", "1h"),
            ("HERALD_SERVER__LISTEN", "0.0.0.0:6000"),
            ("HERALD_DATA_DIR", "/var/lib/herald"),
            ("HERALD_CONFIG", "herald.toml"),
        ],
    )
    .unwrap();
    assert_eq!(c.server.listen.port(), 6000);
    assert_eq!(c.data_dir, PathBuf::from("/var/lib/herald"));
    assert!(!c.apps.contains_key("x"));
    let mut ignored = c.ignored_env;
    ignored.sort();
    assert_eq!(
        ignored,
        [
            "HERALD_",
            "HERALD_APPS__X__KIND",
            "HERALD_LOG__COLOUR",
            "HERALD_SERVER",
            "HERALD_STORE__TTL__EXTRA",
            "HERALD_VERSION"
        ]
    );
    // A known key with a bad value is still an error, naming the key.
    let e = load(MINIMAL, &[("HERALD_STORE__PRUNE_INTERVAL", "0s")]).unwrap_err();
    assert!(e.contains("store.prune_interval"), "{e}");
}

fn herald(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
    command.args(args).env_remove("HERALD_CONFIG").env("RUST_LOG", "warn");
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().unwrap()
}

fn check(config: &Path) -> Output {
    herald(&["check-config", "--config", config.to_str().unwrap()], &[])
}

/// `serve` for configurations it refuses before serving (so it exits by itself).
fn serve(config: &Path) -> Output {
    herald(&["serve", "--config", config.to_str().unwrap()], &[])
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every file under `dir` with its length and modification time.
fn snapshot(dir: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                pending.push(entry.path());
            }
            files.push((entry.path(), meta.len(), meta.modified().unwrap()));
        }
    }
    files.sort();
    files
}

#[test]
#[cfg(feature = "webpush")]
fn check_config_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herald.toml");
    // serve would create the data directory, the database and the VAPID key.
    std::fs::write(
        &config,
        "data_dir = \"data\"\n[apps.\"org.example.web\"]\nkind = \"webpush\"\n\
         vapid_private_key = \"keys/vapid.pem\"\ncreate_vapid_key_if_missing = true\n\
         vapid_subject = \"mailto:admin@example.org\"\n",
    )
    .unwrap();
    let before = snapshot(dir.path());
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["check-config", "--config"])
        .arg(&config)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("to be created"), "{}", stderr(&out));
    assert_eq!(snapshot(dir.path()), before, "check-config changed the directory");
}

#[test]
fn check_config_reads_an_existing_store_without_changing_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("herald.toml");
    let text = format!("data_dir = \"{}\"\n{MINIMAL}", data.display());
    std::fs::write(&config, &text).unwrap();
    // A store as a stopped server leaves it.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let config = Config::from_toml(&text, std::iter::empty(), dir.path().into()).unwrap();
        let store = herald_server::server::open_store(&config).await.unwrap();
        store.record_delivered(herald_server::store::DedupKey::new("$e", "a", "k")).await.unwrap();
        store.close().await;
    });
    let before = snapshot(dir.path());
    let out = check(&config);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("(existing)"), "{}", stderr(&out));
    assert_eq!(snapshot(dir.path()), before, "check-config changed the store");
}

#[test]
fn check_config_and_serve_agree_on_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herald.toml");
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, "not a directory").unwrap();
    let not_a_db = dir.path().join("not-a-db");
    std::fs::write(&not_a_db, "x".repeat(4096)).unwrap();
    // Every case has its own data directory: serve must not create one where the test runs.
    let data = dir.path().join("data");
    let listen = format!("data_dir = \"{}\"\n[server]\nlisten = \"127.0.0.1:0\"\n", data.display());
    let listen = listen.as_str();
    for (text, code, needle) in [
        // Configuration (2): a bad value, a store this build does not have, an app that cannot
        // be built.
        (format!("{listen}[store]\nprune_interval = \"0s\"\n{MINIMAL}"), 2, "store.prune_interval"),
        (format!("{listen}[store]\nurl = \"mysql://db/herald\"\n{MINIMAL}"), 2, "store.url"),
        (format!("{listen}[apps.a]\nkind = \"carrier-pigeon\"\n"), 2, "carrier-pigeon"),
        // Runtime (1): the store cannot be opened.
        (
            format!(
                "data_dir = \"{}/data\"\n[server]\nlisten = \"127.0.0.1:0\"\n{MINIMAL}",
                blocker.display()
            ),
            1,
            "a-file",
        ),
        (
            format!("{listen}[store]\nurl = \"sqlite://{}\"\n{MINIMAL}", not_a_db.display()),
            1,
            "not-a-db",
        ),
    ] {
        std::fs::write(&config, &text).unwrap();
        for (command, out) in [("check-config", check(&config)), ("serve", serve(&config))] {
            assert_eq!(out.status.code(), Some(code), "{command} with\n{text}\n{}", stderr(&out));
            assert!(stderr(&out).contains(needle), "{command}: {}", stderr(&out));
        }
    }
}

/// `HERALD_VERSION=1.2`, set for something else, stopped start-up ("unknown field"); now it is
/// ignored, named (never its value) in a DEBUG line, and `HERALD_CONFIG` still names the file.
#[test]
fn unrelated_herald_variables_do_not_stop_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let addr = crate::common::free_addr();
    let config = crate::common::write_config_file(
        dir.path(),
        addr,
        "[apps.\"org.example.log\"]\nkind = \"log\"\n",
    );
    let config_str = config.to_str().unwrap();
    let unrelated = [("HERALD_VERSION", "1.2-unrelated"), ("HERALD_API_TOKEN", "hunter2-secret")];
    let out = herald(&["check-config"], &[("HERALD_CONFIG", config_str), unrelated[0]]);
    assert!(out.status.success(), "{}", stderr(&out));

    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("serve")
        .env("HERALD_CONFIG", &config)
        .envs(unrelated)
        .env("RUST_LOG", "herald_server=debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = BufReader::new(child.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in reader.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        let serving = line.contains("herald is serving");
        seen.push(line);
        if serving {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let log = seen.join("\n");
    assert!(log.contains("herald is serving"), "{log}");
    for (variable, value) in unrelated {
        assert!(
            seen.iter().any(|l| l.contains("DEBUG") && l.contains(variable)),
            "no DEBUG line names {variable}:\n{log}"
        );
        assert!(!log.contains(value), "the value of {variable} was logged:\n{log}");
    }
}
