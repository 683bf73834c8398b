//! The example systemd unit for `kube-free watch` (`examples/systemd/kube-free-watch.service`):
//! `systemd-analyze verify` accepts it without a warning, and its hardening is what the README
//! promises. systemd need not be running: `verify` only loads unit files (systemd-analyze comes
//! from Debian's `systemd` package, which the README's test command installs).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

const UNIT_NAME: &str = "kube-free-watch.service";
const UNIT: &str = include_str!("../examples/systemd/kube-free-watch.service");
const EXEC_START: &str = "/usr/local/bin/kube-free watch --repo ${KUBE_FREE_REPO} --rev main \
     --listen 127.0.0.1:9420 --webhook-secret-file /etc/kube-free/webhook-secret";

/// The unit as `verify` can check it here: ExecStart names the binary this build made (verify
/// fails on a binary that does not exist), everything else unchanged.
fn testable(unit: &str) -> String {
    let exe = env!("CARGO_BIN_EXE_kube-free");
    assert!(!exe.contains('"'), "binary path {exe:?}");
    let mut found = 0;
    let text: Vec<String> = unit
        .lines()
        .map(
            |line| match line.strip_prefix("ExecStart=/usr/local/bin/kube-free ") {
                Some(args) => {
                    found += 1;
                    format!("ExecStart=\"{exe}\" {args}")
                }
                None => line.to_owned(),
            },
        )
        .collect();
    assert_eq!(found, 1, "one ExecStart of /usr/local/bin/kube-free");
    text.join("\n") + "\n"
}

/// Runs `systemd-analyze verify` on `unit` written to a temporary directory; its exit status and
/// the lines it printed about this unit (warnings included).
fn verify(unit: &str) -> (bool, Vec<String>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(UNIT_NAME);
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["--man=no", "verify"])
        .arg(&path)
        .env("SYSTEMD_LOG_COLOR", "0")
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run systemd-analyze ({e}): apt-get install -y systemd");
        });
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let about_unit = all
        .lines()
        .filter(|l| l.contains(UNIT_NAME) || l.contains(&*path.to_string_lossy()))
        .map(str::to_owned)
        .collect();
    (out.status.success(), about_unit, all)
}

/// `Key=value` settings of the unit, every value of a key in order (comments and sections skipped).
fn settings(unit: &str) -> BTreeMap<&str, Vec<&str>> {
    let mut map: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for line in unit.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with('[') {
            continue;
        }
        let (key, value) = line.split_once('=').expect("a Key=value line");
        map.entry(key).or_default().push(value);
    }
    map
}

#[test]
fn systemd_analyze_verify_accepts_the_unit_without_warnings() {
    let (ok, about_unit, all) = verify(&testable(UNIT));
    assert!(ok, "systemd-analyze verify failed:\n{all}");
    assert!(
        about_unit.is_empty(),
        "systemd-analyze verify warned about the unit:\n{all}"
    );
}

#[test]
fn the_check_catches_a_warning_and_a_missing_binary() {
    // An unknown key is only a warning (exit 0): the lines about the unit must catch it.
    let typo = testable(UNIT).replace("ProtectHome=yes", "ProtectHome=yes\nProtectHomes=yes");
    let (_, about_unit, all) = verify(&typo);
    assert!(
        about_unit.iter().any(|l| l.contains("ProtectHomes")),
        "no warning for an unknown key:\n{all}"
    );
    // The unit as shipped names /usr/local/bin/kube-free, absent here: verify fails.
    if !Path::new("/usr/local/bin/kube-free").exists() {
        let (ok, _, all) = verify(UNIT);
        assert!(!ok, "verify passed a missing binary:\n{all}");
    }
}

#[test]
fn the_unit_runs_watch_as_its_own_user_with_hardening() {
    let s = settings(UNIT);
    let one = |key: &str| -> &str {
        match s.get(key).map(Vec::as_slice) {
            Some([value]) => value,
            other => panic!("{key}: expected one value, found {other:?}"),
        }
    };
    assert_eq!(one("ExecStart"), EXEC_START);
    assert_eq!(one("EnvironmentFile"), "/etc/kube-free/watch.env");
    assert!(s["Environment"].contains(&"KUBE_FREE_CACHE_DIR=/var/cache/kube-free"));
    for (key, value) in [
        ("User", "kube-free"),
        ("Group", "kube-free"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("StateDirectory", "kube-free"),
        ("CacheDirectory", "kube-free"),
        ("Restart", "on-failure"),
        ("RestartSec", "5s"),
        ("KillSignal", "SIGTERM"),
        ("TimeoutStopSec", "10min"),
    ] {
        assert_eq!(one(key), value, "{key}");
    }
    // Writable: the state and cache directories (by StateDirectory=/CacheDirectory=), nothing else.
    for paths in s.get("ReadWritePaths").into_iter().flatten() {
        for path in paths.split_whitespace() {
            let path = path.trim_start_matches('-');
            assert!(
                path.starts_with("/var/lib/kube-free") || path.starts_with("/var/cache/kube-free"),
                "ReadWritePaths={path}"
            );
        }
    }
}
