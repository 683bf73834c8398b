//! The audit log and `kube-free history` on this machine, through the real binary: the demo app
//! behind a HAProxy of the test's own (`transport: local`: the balancer host is this machine, its
//! `state_dir` the stage's). 1.0.0, then 2.0.0, then a version that never gets ready (rolled
//! back): `history` and `history --output json` list them newest first, with the commits of the
//! repository and who ran them; `audit.log` is its owner's only; a run that finds nothing to do
//! adds no line; a gate, a suspension and a watcher's pass add theirs; a torn line is skipped with
//! a warning; unknown names are refused before any host is read. The lines themselves are tested
//! on the fakes (`src/reconcile/tests/audit.rs`), the append command on this machine's `sh`
//! (`src/drivers/files.rs`).

mod common;
use common::*;
use std::os::unix::fs::PermissionsExt;

/// `user@hostname` as kube-free says who ran it.
fn who() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let host = host.split_whitespace().next().unwrap().to_owned();
    let user = ["USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| {
            let out = std::process::Command::new("id")
                .arg("-un")
                .output()
                .unwrap();
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        });
    format!("{user}@{host}")
}

/// A watcher, killed when dropped.
struct Watcher(std::process::Child);

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl LocalStage {
    /// The lines of the balancer host's audit log.
    fn audit_lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.state.join("audit.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

#[test]
fn history_lists_past_rollouts_from_the_audit_log() {
    let s = LocalStage::new(&["flock"]);
    let one = s.commit("1.0.0", "blue-green");
    s.run(&["reconcile", "--once"]).code(0);
    let two = s.commit("2.0.0", "blue-green");
    s.run(&["reconcile", "--once"]).code(0);
    assert_eq!(s.audit_lines().len(), 2);
    // In sync: a run that does nothing adds no line.
    s.run(&["reconcile", "--once"])
        .code(0)
        .stdout_has("in sync");
    assert_eq!(s.audit_lines().len(), 2);

    // 3.0.0 never gets ready (within 2s): rolled back, quarantined.
    let broken = s
        .yaml("3.0.0", "blue-green")
        .replace("--version {version}", "--version {version} --never-ready")
        .replace("deadline: 20s", "deadline: 2s");
    s.repo.write("kube-free.yaml", broken);
    let three = s.repo.commit("demo 3.0.0, never ready");
    s.run(&["reconcile", "--once"])
        .code(1)
        .stderr_has("rolled back");
    assert!(s.serving().contains("2.0.0"), "{}", s.serving());
    assert_eq!(s.audit_lines().len(), 3);
    // Quarantined: the next run does nothing (exit 1), and adds no line either.
    s.run(&["reconcile", "--once"])
        .code(1)
        .stderr_has("quarantined");
    assert_eq!(s.audit_lines().len(), 3);
    let mode = std::fs::metadata(s.state.join("audit.log"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");

    let me = who();
    let run = s.run(&["history"]);
    run.code(0);
    let table: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(table.len(), 4, "{}", run.stdout);
    for word in [
        "TIME", "ENV", "APP", "VERSION", "STRATEGY", "RESULT", "DURATION", "COMMIT", "WHO",
    ] {
        assert!(table[0].contains(word), "{}", table[0]);
    }
    for (row, (version, result, commit)) in table[1..].iter().zip([
        ("3.0.0", "rolled-back", &three),
        ("2.0.0", "succeeded", &two),
        ("1.0.0", "succeeded", &one),
    ]) {
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells.len(), 9, "{row}");
        assert_eq!(
            [cells[1], cells[2], cells[3], cells[4], cells[5]],
            ["local", "demo", version, "blue-green", result],
            "{row}"
        );
        assert_eq!(cells[7], &commit[..12], "{row}");
        assert_eq!(cells[8], me, "{row}");
        assert!(cells[0].ends_with('Z') && cells[0].contains('T'), "{row}");
    }

    let run = s.run(&["history", "demo", "--env", "local", "--output", "json"]);
    run.code(0);
    let rows: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 3, "{}", run.stdout);
    for (row, (version, from, result, commit)) in rows.iter().zip([
        ("3.0.0", Some("2.0.0"), "rolled-back", &three),
        ("2.0.0", Some("1.0.0"), "succeeded", &two),
        ("1.0.0", None, "succeeded", &one),
    ]) {
        assert_eq!(row["env"], "local", "{row}");
        assert_eq!(row["app"], "demo", "{row}");
        assert_eq!(row["version"], version, "{row}");
        assert_eq!(row["from"].as_str(), from, "{row}");
        assert_eq!(row["strategy"], "blue-green", "{row}");
        assert_eq!(row["result"], result, "{row}");
        assert_eq!(
            row["outcome"],
            if result == "succeeded" {
                "converged"
            } else {
                result
            },
            "{row}"
        );
        assert_eq!(row["commit"], commit.as_str(), "{row}");
        assert_eq!(row["who"], me.as_str(), "{row}");
        assert_eq!(row["command"], "reconcile --once", "{row}");
        assert!(row["steps"].as_u64().unwrap() > 0, "{row}");
        assert!(row["duration_ms"].as_u64().is_some(), "{row}");
    }
    s.run(&["history", "demo", "--limit", "1"])
        .code(0)
        .stdout_has("3.0.0")
        .stdout_lacks("2.0.0");

    // A gate and a suspension change shared state: a line each.
    s.run(&["retry", "demo", "--env", "local"]).code(0);
    s.run(&[
        "suspend", "--env", "local", "--for", "1m", "--reason", "test",
    ])
    .code(0);
    assert_eq!(s.audit_lines().len(), 5);
    let run = s.run(&["history", "--output", "json"]);
    let rows: serde_json::Value = serde_json::from_str(&run.code(0).stdout).unwrap();
    assert_eq!(rows[0]["command"], "suspend --env local --for 1m", "{rows}");
    assert_eq!(rows[0]["app"], "-", "{rows}");
    assert_eq!(rows[0]["result"], "suspended", "{rows}");
    assert_eq!(rows[1]["command"], "retry demo --env local", "{rows}");
    assert_eq!(rows[1]["result"], "retried", "{rows}");
    assert_eq!(rows[1]["version"], "3.0.0", "{rows}");
    // With APP, only that app's rollouts.
    let run = s.run(&["history", "demo", "--output", "json"]);
    let rows: serde_json::Value = serde_json::from_str(&run.code(0).stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 4, "{rows}");

    // A torn line (a writer killed half way) is skipped, and said.
    let mut log = std::fs::read_to_string(s.state.join("audit.log")).unwrap();
    log.push_str("{\"time\": \"2026-");
    std::fs::write(s.state.join("audit.log"), log).unwrap();
    s.run(&["history", "demo"])
        .code(0)
        .stderr_has(&format!(
            "warning: {} on here, line 6: skipped, not an audit line",
            s.state.join("audit.log").display()
        ))
        .stdout_has("rolled-back");

    // A watcher's pass appends its line too (after the suspension is lifted: a line of its own).
    s.run(&["resume", "--env", "local"]).code(0);
    let four = s.commit("4.0.0", "blue-green");
    let child = kube_free_command(
        std::path::Path::new("."),
        &[
            "watch",
            "--repo",
            s.repo.path_str(),
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--interval",
            "1s",
        ],
    )
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    let _watcher = Watcher(child);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let line = loop {
        let lines = s.audit_lines();
        if let Some(line) = lines.iter().find(|l| l.contains("\"command\":\"watch\"")) {
            break serde_json::from_str::<serde_json::Value>(line).unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "no line: {lines:?}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(line["commit"], four.as_str(), "{line}");
    assert_eq!(line["outcome"], "converged", "{line}");
    assert_eq!(line["rollouts"][0]["version"], "4.0.0", "{line}");
    assert_eq!(line["rollouts"][0]["from"], "2.0.0", "{line}");
    assert_eq!(line["rollouts"][0]["result"], "succeeded", "{line}");
    assert!(s.serving().contains("4.0.0"), "{}", s.serving());
    drop(_watcher);

    // Unknown names: exit 2, no host read.
    s.run(&["history", "nosuch"])
        .code(2)
        .stderr_has("unknown app \"nosuch\"");
    s.run(&["history", "--env", "nosuch"])
        .code(2)
        .stderr_has("unknown environment \"nosuch\"");
}

#[test]
fn help_says_what_history_reads_and_which_runs_append() {
    let help = kube_free(&["history", "--help"]);
    help.code(0);
    let words = help.stdout.split_whitespace().collect::<Vec<_>>().join(" ");
    for needle in [
        "<state_dir>/audit.log",
        "A run that found nothing to do appends nothing",
        "does not change the run's exit code",
        "--limit <N>",
        "--output <OUTPUT>",
        "Exit 2 when APP or ENV is unknown (no host contacted)",
    ] {
        assert!(
            words.contains(needle),
            "{needle:?} not in:\n{}",
            help.stdout
        );
    }
    kube_free(&["--help"]).code(0).stdout_has("history");
}
