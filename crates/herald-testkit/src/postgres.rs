//! Throwaway PostgreSQL clusters for tests and benchmarks, from Debian's `postgresql` binaries.
//!
//! [`TestPostgres::start`] runs `initdb` into a temporary directory and starts `postgres` on a free
//! loopback port (and a Unix socket in the same directory), with password authentication over TCP
//! so that URLs carry a password, as in production. The cluster can be stopped and started again
//! on the same data directory ([`TestPostgres::stop`], [`TestPostgres::restart`]) for outage
//! tests, and is stopped and deleted on drop.
//!
//! The binaries are found in `/usr/lib/postgresql/<version>/bin` (the newest version), or in the
//! directory named by `HERALD_TEST_PG_BIN`. Without them, starting panics with what to install:
//! a test must fail, not skip itself. `initdb` and `postgres` refuse to run as root, so as root
//! they run as the unprivileged `nobody` user (the directory is handed over to it).

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The superuser of every test cluster.
pub const USER: &str = "herald";
/// Its password (TCP connections use scram-sha-256).
pub const PASSWORD: &str = "herald-test-secret";
/// The database created in every cluster.
pub const DATABASE: &str = "herald";

/// How a cluster is run.
#[derive(Debug, Clone)]
pub struct Options {
    /// `fsync`: off by default (tests need no durability across a machine crash, and it is much
    /// faster). Benchmarks turn it on to compare fairly with SQLite.
    pub fsync: bool,
    /// `synchronous_commit`.
    pub synchronous_commit: bool,
    /// `max_connections` of the server.
    pub max_connections: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options { fsync: false, synchronous_commit: true, max_connections: 200 }
    }
}

/// A running (or stopped) throwaway cluster.
#[derive(Debug)]
pub struct TestPostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    /// (uid, gid) to run the server binaries as, when we are root.
    run_as: Option<(u32, u32)>,
    options: Options,
}

/// What to tell someone whose machine has no PostgreSQL server binaries.
pub const INSTALL_HINT: &str = "PostgreSQL server binaries (initdb, postgres, pg_ctl) not found \
     in /usr/lib/postgresql/*/bin: install them with `apt-get install postgresql` (Debian/Ubuntu), \
     or set HERALD_TEST_PG_BIN to the directory that holds them";

/// The directory of the newest installed PostgreSQL's binaries, if any.
pub fn find_binaries() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("HERALD_TEST_PG_BIN") {
        let dir = PathBuf::from(dir);
        return dir.join("initdb").is_file().then_some(dir);
    }
    let mut versions: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let version: Vec<u32> =
                name.split('.').map(str::parse).collect::<Result<_, _>>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// The effective user id of this process (from /proc: no libc needed).
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// `nobody`'s uid and gid from /etc/passwd.
fn nobody() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .find(|l| l.starts_with("nobody:"))
        .and_then(|l| {
            let fields: Vec<&str> = l.split(':').collect();
            Some((fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?))
        })
        .unwrap_or((65534, 65534))
}

fn free_port() -> u16 {
    TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl TestPostgres {
    /// Starts a cluster with the default [`Options`]; panics (naming what to install) when the
    /// binaries are missing, or with the server's log when it does not start.
    pub fn start() -> Self {
        Self::start_with(Options::default())
    }

    /// Starts a cluster; see [`TestPostgres::start`].
    pub fn start_with(options: Options) -> Self {
        match Self::try_start_with(options) {
            Ok(pg) => pg,
            Err(e) => panic!("{e}"),
        }
    }

    /// Starts a cluster, or says why it cannot.
    pub fn try_start_with(options: Options) -> Result<Self, String> {
        let bin = find_binaries().ok_or_else(|| INSTALL_HINT.to_owned())?;
        let dir = tempfile::Builder::new()
            .prefix("herald-pg-")
            .tempdir()
            .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
        let run_as = (effective_uid() == Some(0)).then(nobody);
        let password_file = dir.path().join("password");
        std::fs::write(&password_file, PASSWORD)
            .map_err(|e| format!("cannot write {}: {e}", password_file.display()))?;
        if let Some((uid, gid)) = run_as {
            for path in [dir.path(), &password_file] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid))
                    .map_err(|e| format!("cannot hand {} to nobody: {e}", path.display()))?;
            }
        }
        let mut pg = TestPostgres { dir, bin, port: 0, run_as, options };
        let data = pg.data_dir();
        let initdb = pg
            .command("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", USER, "-E", "UTF8", "--locale=C", "--no-sync"])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .arg(format!("--pwfile={}", password_file.display()))
            .output()
            .map_err(|e| format!("cannot run initdb: {e}"))?;
        check("initdb", &initdb)?;
        // A port taken between our probe and the server's bind: try another.
        let mut last = String::new();
        for _ in 0..5 {
            pg.port = free_port();
            match pg.start_server() {
                Ok(()) => {
                    pg.psql("postgres", &format!("CREATE DATABASE {DATABASE}"))?;
                    return Ok(pg);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_file(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// A command for one of the server binaries, as the unprivileged user when we are root.
    fn command(&self, name: &str) -> Command {
        let mut command = Command::new(self.bin.join(name));
        command.current_dir(self.dir.path()).stdin(Stdio::null());
        if let Some((uid, gid)) = self.run_as {
            use std::os::unix::process::CommandExt;
            // std drops the supplementary groups when it changes the uid.
            command.uid(uid).gid(gid);
        }
        command
    }

    fn start_server(&self) -> Result<(), String> {
        let on = |b: bool| if b { "on" } else { "off" };
        let server_options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={dir} \
             -c fsync={fsync} -c synchronous_commit={sync} -c full_page_writes={fsync} \
             -c max_connections={max} -c log_min_messages=warning",
            port = self.port,
            dir = self.dir.path().display(),
            fsync = on(self.options.fsync),
            sync = on(self.options.synchronous_commit),
            max = self.options.max_connections,
        );
        let started = self
            .command("pg_ctl")
            .args(["start", "-w", "-t", "60", "-D"])
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.log_file())
            .args(["-o", &server_options])
            .output()
            .map_err(|e| format!("cannot run pg_ctl: {e}"))?;
        check("pg_ctl start", &started).map_err(|e| format!("{e}\n{}", self.log_tail()))
    }

    /// The URL of the test database, with the password (`postgres://herald:…@127.0.0.1:PORT/herald`).
    pub fn url(&self) -> String {
        self.url_for(DATABASE)
    }

    /// The URL of database `name` in this cluster.
    pub fn url_for(&self, name: &str) -> String {
        format!("postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{name}", self.port)
    }

    /// The TCP port the server listens on (the same across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates database `name` and returns its URL.
    pub fn create_database(&self, name: &str) -> String {
        if let Err(e) = self.psql("postgres", &format!("CREATE DATABASE {name}")) {
            panic!("{e}");
        }
        self.url_for(name)
    }

    /// Runs `sql` in database `db` with psql over the Unix socket; returns its output (tuples
    /// only, unaligned).
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.dir.path())
            .args(["-p", &self.port.to_string(), "-U", USER, "-d", db, "-c", sql])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run psql: {e}"))?;
        check("psql", &out)?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Stops the server (fast shutdown: connections are cut), keeping the data directory.
    pub fn stop(&self) {
        let out = self
            .command("pg_ctl")
            .args(["stop", "-w", "-t", "60", "-m", "fast", "-D"])
            .arg(self.data_dir())
            .output();
        match out {
            Ok(out) => {
                if let Err(e) = check("pg_ctl stop", &out) {
                    panic!("{e}\n{}", self.log_tail());
                }
            }
            Err(e) => panic!("cannot run pg_ctl: {e}"),
        }
    }

    /// Starts the server again on the same data directory and port.
    pub fn restart(&self) {
        if let Err(e) = self.start_server() {
            panic!("{e}");
        }
    }

    /// The data directory (for tests that look at files).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_file()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!("--- postgres log ---\n{}", lines[lines.len().saturating_sub(20)..].join("\n"))
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        // Immediate: nothing in a throwaway cluster is worth a checkpoint.
        let _ = self
            .command("pg_ctl")
            .args(["stop", "-w", "-t", "30", "-m", "immediate", "-D"])
            .arg(self.data_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn check(what: &str, out: &Output) -> Result<(), String> {
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_starts_stops_and_restarts_on_the_same_data() {
        let pg = TestPostgres::start();
        pg.psql(DATABASE, "CREATE TABLE t (x int); INSERT INTO t VALUES (42)").unwrap();
        pg.stop();
        assert!(pg.psql(DATABASE, "SELECT 1").is_err(), "stopped");
        pg.restart();
        assert_eq!(pg.psql(DATABASE, "SELECT x FROM t").unwrap(), "42");
        assert!(pg.url().contains(&format!(":{}/", pg.port())));
        let data = pg.dir().to_path_buf();
        drop(pg);
        assert!(!data.exists(), "removed on drop");
    }
}
