//! `configs/herald.service`: the hardening and the paths the docs promise are in the unit, its
//! command lines are ones the real binary accepts, and — where `systemd-analyze` is installed —
//! systemd itself finds nothing to complain about and rates its exposure low.

use std::collections::BTreeMap;
use std::process::Command;

const UNIT: &str = include_str!("../../../../configs/herald.service");
const BINARY: &str = "/usr/local/bin/herald";
const CONFIG: &str = "/etc/herald/herald.toml";

/// `key → values` of one section (repeated keys keep every value, in order).
fn section(name: &str) -> BTreeMap<String, Vec<String>> {
    let mut current = String::new();
    let mut keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in UNIT.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = header.to_owned();
            continue;
        }
        let (key, value) = line.split_once('=').expect("key=value lines");
        if current == name {
            keys.entry(key.trim().to_owned()).or_default().push(value.trim().to_owned());
        }
    }
    keys
}

#[test]
fn the_unit_is_hardened_and_consistent() {
    let service = section("Service");
    let one = |key: &str| -> &str {
        match service.get(key).map(Vec::as_slice) {
            Some([value]) => value,
            other => panic!("[Service] {key}: expected one value, found {other:?}"),
        }
    };
    for (key, value) in [
        ("User", "herald"),
        ("Group", "herald"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("NoNewPrivileges", "yes"),
        ("StateDirectory", "herald"),
        ("ConfigurationDirectory", "herald"),
        ("WorkingDirectory", "/var/lib/herald"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("CapabilityBoundingSet", ""),
        ("MemoryDenyWriteExecute", "yes"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("RestartPreventExitStatus", "2"),
    ] {
        assert_eq!(one(key), value, "[Service] {key}");
    }
    let nofile: u64 = one("LimitNOFILE").parse().expect("a number");
    assert!(nofile >= 4096, "LimitNOFILE={nofile} leaves too few connections");
    // Stopping outlasts the default shutdown grace (25s), so deliveries are recorded.
    let stop = herald_core::config::parse_duration(one("TimeoutStopSec")).unwrap();
    assert!(stop > std::time::Duration::from_secs(25), "TimeoutStopSec={stop:?}");
    assert_eq!(
        service["SystemCallFilter"],
        ["@system-service", "~@privileged"],
        "setrlimit (@resources) must stay allowed: Herald raises its open-files limit"
    );
    // The paths the docs and the header comment name.
    assert_eq!(one("ExecStart"), format!("{BINARY} serve --config {CONFIG}"));
    assert!(UNIT.contains(&format!("install -m 0755 target/release/herald {BINARY}")));
    let ops = include_str!("../../../../docs/operations.md");
    for promised in [BINARY, CONFIG, "/var/lib/herald", "configs/herald.service"] {
        assert!(ops.contains(promised), "docs/operations.md does not mention {promised}");
    }
    assert_eq!(section("Install")["WantedBy"], ["multi-user.target"]);
    assert!(section("Unit")["After"].iter().any(|v| v.contains("network-online.target")));
    systemd_analyze_if_installed();
}

#[tokio::test]
async fn the_binary_accepts_the_units_command_line() {
    // `serve --config FILE` as ExecStart writes it: a missing file is the configuration error
    // (exit 2, which the unit does not restart on), not a usage error (clap's exit 2 too, so
    // the message is what tells them apart).
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("herald.toml");
    let run =
        crate::herald_cli::herald(["serve", "--config", missing.to_str().unwrap()], dir.path())
            .await;
    assert_eq!(run.code, 2, "{}", run.said());
    assert!(run.stderr.contains("invalid configuration"), "{}", run.said());
}

/// Also `systemd-analyze`, when this machine has it: `verify` on the unit with ExecStart
/// pointing at the binary under test (verify insists that the executable exists) must print
/// nothing, and the offline security review must rate the exposure at most 2.0 ("OK").
fn systemd_analyze_if_installed() {
    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("herald.service");
    std::fs::write(&unit, UNIT.replace(BINARY, env!("CARGO_BIN_EXE_herald"))).unwrap();
    let verify = Command::new("systemd-analyze").arg("verify").arg(&unit).output().unwrap();
    let said = String::from_utf8_lossy(&verify.stderr).into_owned()
        + &String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success() && said.trim().is_empty(), "systemd-analyze verify: {said}");

    let version = String::from_utf8_lossy(&version.stdout);
    let major: u32 = version.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
    if major >= 250 {
        // `--offline` arrived in systemd 250; the threshold is the exposure × 10.
        let security = Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--threshold=20", "--no-pager"])
            .arg(&unit)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            security.status.success(),
            "exposure above 2.0: {}",
            String::from_utf8_lossy(&security.stdout)
        );
    }
}
