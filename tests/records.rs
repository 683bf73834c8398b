//! The rollout record's compare-and-swap on a real host (this machine, `transport: local`): the
//! demo app behind a HAProxy of the test's own. A canary waits at a gate in a running
//! `reconcile --once` (its pause reads and writes the record) when `kube-free abort` is run: the
//! abort wins, whatever the order of their writes, and traffic goes back to the old version. The
//! race itself is made deterministic on the fakes (`src/reconcile/tests/canary.rs`); the script's
//! swap is tested on this machine's `sh` in `src/drivers/files.rs`. And the lease's shortest
//! `--lease-ttl`.

mod common;
use common::*;
use std::time::{Duration, Instant};

type Setup = LocalStage;

impl LocalStage {
    /// The rollout record as the balancer host keeps it, if there is one.
    fn record(&self) -> Option<serde_json::Value> {
        let text = std::fs::read(self.state.join("rollouts/local/demo.json")).ok()?;
        serde_json::from_slice(&text).ok()
    }
}

#[test]
fn an_abort_while_a_canary_pause_runs_wins_and_the_old_version_serves_again() {
    let s = Setup::new(&["flock", "sha256sum"]);
    s.commit("1.0", "blue-green");
    s.run(&["reconcile", "--once"]).code(0);
    assert!(s.serving().contains("1.0"), "{}", s.serving());

    s.commit("2.0", "{ canary: { steps: [{ weight: 50, pause: {} }] } }");
    let (out, err) = (s.dir.path().join("run.out"), s.dir.path().join("run.err"));
    let mut running = kube_free_command(
        std::path::Path::new("."),
        &[
            "reconcile",
            "--once",
            "--max-wait",
            "2m",
            "--repo",
            s.repo.path_str(),
        ],
    )
    .stdout(std::fs::File::create(&out).unwrap())
    .stderr(std::fs::File::create(&err).unwrap())
    .spawn()
    .unwrap();
    // The run waits at the gate: its pause reads the record every half second.
    let deadline = Instant::now() + Duration::from_secs(60);
    while s.record().is_none_or(|r| r["phase"] != "paused") {
        assert!(
            Instant::now() < deadline,
            "no pause: {:?}\n{}",
            s.record(),
            std::fs::read_to_string(&err).unwrap_or_default()
        );
        assert!(running.try_wait().unwrap().is_none(), "the run ended");
        std::thread::sleep(Duration::from_millis(100));
    }

    s.run(&["abort", "demo", "--env", "local"])
        .code(0)
        .stdout_has("aborted local/demo 2.0: read back: ");

    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = running.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = running.kill();
            panic!("the run did not end after the abort");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stderr = std::fs::read_to_string(&err).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("aborted by `kube-free abort`"), "{stderr}");

    // The abort stays: the record says so, and the next run does not roll 2.0 out again.
    let record = s.record().unwrap();
    assert_eq!(record["phase"], "aborted", "{record}");
    assert_eq!(record["version"], "2.0", "{record}");
    for _ in 0..20 {
        assert!(s.serving().contains("1.0"), "{}", s.serving());
    }
    s.run(&["reconcile", "--once"])
        .code(1)
        .stderr_has("quarantined");
    assert_eq!(s.record().unwrap()["phase"], "aborted");
    assert!(s.serving().contains("1.0"), "{}", s.serving());
}

#[test]
fn a_lease_ttl_below_five_seconds_is_refused_before_anything_is_read() {
    for args in [
        &["reconcile", "--once", "--lease-ttl", "4s"][..],
        &["watch", "--lease-ttl", "4999ms", "--interval", "1m"],
    ] {
        kube_free(args)
            .code(2)
            .stderr_has("is shorter than 5s: the lease is renewed every quarter of it");
    }
    // 5 s passes the option; this then fails on the repository that is not there.
    kube_free(&[
        "reconcile",
        "--once",
        "--lease-ttl",
        "5s",
        "--repo",
        "/nonexistent/kube-free-repo",
    ])
    .stderr_lacks("is shorter than");
    kube_free(&["reconcile", "--help"])
        .code(0)
        .stdout_has("5s at least");
    kube_free(&["watch", "--help"])
        .code(0)
        .stdout_has("(5s at least)");
}
