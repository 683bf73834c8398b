//! Rollbacks that hold, on a real fleet (two app hosts, HAProxy on a balancer host, all over SSH)
//! under wrk load, one fleet for all the scenarios:
//! A. blue-green to a version that crashes 3 s after it takes traffic: its bake catches it, the old
//!    version (still running) takes the traffic back, the version is quarantined, no crash loop;
//! B. a failing canary whose stable version is killed during its pause: the stable version is
//!    started again, probed and enabled, then takes the traffic back;
//! C. a rolling update whose second batch never gets ready: the first batch is reverted;
//! D. the stable version killed before a blue-green shift, and a new version that then crashes:
//!    the last good version comes back from the rollout record;
//! E. a failing canary whose stable version is killed and cannot start again: the canary keeps
//!    serving, and the run, `status` and `plan` say so; once the release is back, the repair;
//! F. a spec change of the serving version (same version, another command) that crashes in its
//!    bake: the instances of the earlier spec, still running, take the traffic back, the new spec
//!    is quarantined, and nothing restarts on the next run.
//!
//! Each release is a start script per version (as `/opt/app/<version>/run` would be), so that
//! what a version does is the version's, not the desired state's. Figures are printed.

mod common;
#[path = "fleet/mod.rs"]
mod fleet;
#[path = "fleet_app/mod.rs"]
mod fleet_app;

use common::*;
use fleet_app::Setup;
use std::time::{Duration, Instant};

/// Most a scenario's load may run; the load ends 2 s after the reconcile.
const LOAD_SECONDS: u64 = 150;

/// A good release.
fn good(_: &str) -> String {
    String::new()
}

/// A canary at 30% for 10 s, judged by its error rate.
const FAILING_CANARY: &str = "{ canary: { steps: [{ weight: 30, pause: 10s }], \
                              analysis: { max_error_rate: 0.05, min_requests: 50 } } }";

/// Every failure is one of `version`'s own 500s, but for the few requests in flight on a killed
/// process (HAProxy's 503s and reset connections): under 0.2% of the load.
fn only_its_own_failures(scenario: &str, tally: &Tally, version: &str) {
    let others = tally.failed.saturating_sub(tally.served_by(version));
    eprintln!("{scenario}: {others} failures that are not {version}'s own 500s");
    assert!(
        (others as f64) < tally.requests as f64 * 0.002,
        "{}",
        tally.text
    );
}

/// Waits (at most a minute) until `ready` says so.
fn wait_for(what: &str, ready: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The whole answer to a GET of `path`, whatever its status.
fn raw_get(address: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(address).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    text
}

/// Prints a scenario's figures.
fn figures(scenario: &str, tally: &Tally) {
    eprintln!(
        "{scenario}: {} requests, {} failed ({:.2}%), served {:?}",
        tally.requests,
        tally.failed,
        tally.failed as f64 * 100.0 / tally.requests.max(1) as f64,
        tally.served
    );
}

#[test]
fn rollbacks_hold_under_load_when_a_version_dies_or_fails_part_way() {
    let mut s = Setup::new(&["web-1", "web-2"], "blue-green");
    s.bake = "6s".into();
    for v in ["1.0.0", "3.0.0-bad", "4.0.0", "6.0.0-bad"] {
        s.script(v, &good);
    }
    s.commit("1.0.0", "", "20s");
    s.kube_free(&["reconcile", "--once"]).code(0);
    s.assert_serving_only("1.0.0");

    // A. 2.0.0 passes its probe, takes the traffic, and crashes 3 s later.
    s.script("2.0.0", &|_| "--exit-after-traffic 3s".into());
    s.commit("2.0.0", "", "20s");
    let (run, tally) = s.reconcile_under_load("GET", LOAD_SECONDS);
    figures("A: 2.0.0 crashes in its bake", &tally);
    run.code(1)
        .stderr_has("exited")
        .stderr_has("into its bake")
        .stderr_has("rolled back, read back: production/demo traffic goes to 1.0.0 on web-1_")
        .stderr_has("no instance of 2.0.0 runs")
        .stderr_has("2.0.0 is quarantined");
    s.assert_serving_only("1.0.0");
    assert!(tally.served_by("2.0.0") > 0, "{}", tally.text);
    // What failed is what was in flight when 2.0.0 died and what reached it before the take-back:
    // a fraction of a second of the load (0.1–0.5 % seen; 1.3 % once, with SSH slow under load),
    // not the outage the rest of the bake would have been.
    assert!(
        (tally.failed as f64) < tally.requests as f64 * 0.02,
        "{}",
        tally.text
    );
    let app = s.status_json();
    assert_eq!(app["rollout"]["phase"], "failed", "{app}");
    assert_eq!(app["rollout"]["last_good"], "1.0.0", "{app}");
    // No crash loop: the next run starts nothing.
    let pids = [s.demo_pids("web-1"), s.demo_pids("web-2")];
    s.kube_free(&["reconcile", "--once"])
        .code(1)
        .stderr_has("2.0.0 is quarantined");
    assert_eq!([s.demo_pids("web-1"), s.demo_pids("web-2")], pids);

    // B. A canary that answers 500 to everything, at 30% for 10 s; both 1.0.0 processes are
    // killed in its pause. Analysis fails it; 1.0.0 is started again and takes the traffic back.
    s.strategy = FAILING_CANARY.into();
    s.script("3.0.0-bad", &|_| "--error-rate 1.0".into());
    s.commit("3.0.0-bad", "", "20s");
    let (run, tally) = s.reconcile_under_load_while("GET", LOAD_SECONDS, || {
        wait_for("the canary at 30%", || {
            s.weights_of("3.0.0-bad") == [30, 30]
        });
        s.kill_version("1.0.0");
    });
    figures("B: stable killed during a failing canary", &tally);
    only_its_own_failures("B", &tally, "3.0.0-bad");
    run.code(1)
        .stderr_has("analysis failed at step 0")
        .stderr_has("rolled back, read back: production/demo traffic goes to 1.0.0 on web-1_blue (weight 100, UP), web-2_blue (weight 100, UP); no instance of 3.0.0-bad runs");
    s.assert_serving_only("1.0.0");
    s.kube_free(&["plan"]).code(0).stdout_has("quarantined");

    // C. Rolling, one host at a time; 4.0.0 never gets ready on web-2. web-1, done and baked, is
    // brought back to 1.0.0 the way it went: start, probe, enable, shift, then 4.0.0 stopped.
    s.strategy = "{ rolling: { batch: 1 } }".into();
    s.script("4.0.0", &|host| {
        if host == "web-2" {
            "--never-ready".into()
        } else {
            String::new()
        }
    });
    s.commit("4.0.0", "", "3s");
    let (run, tally) = s.reconcile_under_load("GET", LOAD_SECONDS);
    figures("C: rolling update failing on its second batch", &tally);
    run.code(1)
        .stderr_has("probe production/demo slot green on web-2")
        .stderr_has("rolled back, read back: production/demo traffic goes to 1.0.0 on web-1_blue (weight 100, UP)")
        .stderr_has("no instance of 4.0.0 runs");
    assert!(tally.served_by("4.0.0") > 0, "{}", tally.text);
    assert_eq!(tally.failed, 0, "{}", tally.text);
    s.assert_serving_only("1.0.0");

    // D. Blue-green to 5.0.0, which gets ready slowly and crashes 3 s after it takes traffic; 1.0.0 is
    // killed before the shift. Nothing runs to take the traffic back: the last good version
    // (from the rollout record) is started again, probed, enabled and given the traffic.
    s.strategy = "blue-green".into();
    s.script("5.0.0", &|_| {
        "--ready-delay 2s --exit-after-traffic 3s".into()
    });
    s.commit("5.0.0", "", "20s");
    let (run, tally) = s.reconcile_under_load_while("GET", LOAD_SECONDS, || {
        wait_for("5.0.0 on both hosts", || {
            s.hosts.iter().all(|h| s.pid_of(h, "5.0.0").is_some())
        });
        s.kill_version("1.0.0");
    });
    figures(
        "D: stable killed before the shift, new version crashes",
        &tally,
    );
    run.code(1)
        .stderr_has("into its bake")
        .stderr_has("rolled back, read back: production/demo traffic goes to 1.0.0 on web-1_blue (weight 100, UP), web-2_blue (weight 100, UP); no instance of 5.0.0 runs");
    s.assert_serving_only("1.0.0");

    // E. Like B, but 1.0.0's release is gone when it is needed again: it cannot come back, so the
    // canary keeps serving, and every report says so.
    s.strategy = FAILING_CANARY.into();
    s.script("6.0.0-bad", &|_| "--error-rate 1.0".into());
    s.commit("6.0.0-bad", "", "20s");
    let (run, tally) = s.reconcile_under_load_while("GET", LOAD_SECONDS, || {
        wait_for("the canary at 30%", || {
            s.weights_of("6.0.0-bad") == [30, 30]
        });
        s.break_script("1.0.0");
        s.kill_version("1.0.0");
    });
    figures("E: the last good version cannot come back", &tally);
    only_its_own_failures("E", &tally, "6.0.0-bad");
    run.code(1)
        .stderr_has("the cleanup (bringing back 1.0.0) failed")
        .stderr_has("NOT rolled back: 6.0.0-bad keeps traffic")
        .stderr_has("6.0.0-bad still runs on web-1, web-2");
    assert_eq!(s.weights_of("6.0.0-bad"), [30, 30]);
    let answer = raw_get(&s.frontend(), "/version");
    assert!(
        answer.starts_with("HTTP/1.1 500") && answer.contains("x-version: 6.0.0-bad"),
        "{answer}"
    );
    let status = s.kube_free(&["status"]);
    status
        .code(0)
        .stdout_has("  traffic: production/demo traffic goes to ")
        .stdout_has("6.0.0-bad on web-1_green (weight 30, UP), web-2_green (weight 30, UP)")
        .stdout_has("falls back to: 1.0.0");
    s.kube_free(&["plan"])
        .code(10)
        .stdout_has("start production/demo 1.0.0 in slot blue on web-1");
    // The release is back: the next run repairs it.
    s.script("1.0.0", &good);
    s.kube_free(&["reconcile", "--once"])
        .code(1)
        .stderr_has("6.0.0-bad is quarantined");
    s.assert_serving_only("1.0.0");

    // F. The same version with another command (a flag that makes it crash 3 s after it takes
    // traffic): rolled out as a new version would be, caught by its bake, and the instances of
    // the earlier spec (kept running through the bake) take the traffic back.
    s.strategy = "blue-green".into();
    let specs = |s: &Setup| -> Vec<String> {
        let app = s.status_json();
        let mut specs: Vec<String> = app["slots"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|slot| slot["alive"] == true)
            .map(|slot| slot["spec"].as_str().unwrap_or("none").to_owned())
            .collect();
        specs.sort();
        specs
    };
    let before = specs(&s);
    s.commit("1.0.0", " --exit-after-traffic 3s", "20s");
    s.kube_free(&["plan"])
        .code(10)
        .stdout_has("production/demo 1.0.0: command changed since its instances started")
        .stdout_has("start production/demo 1.0.0 in slot");
    let (run, tally) = s.reconcile_under_load("GET", LOAD_SECONDS);
    figures("F: a spec change crashes in its bake", &tally);
    run.code(1)
        .stderr_has("into its bake")
        .stderr_has(
            "rolled back, read back: production/demo traffic goes to 1.0.0 (earlier spec) on web-1_",
        )
        .stderr_has("no instance of 1.0.0 with its new spec runs")
        .stderr_has("1.0.0 is quarantined");
    // What fails is what reached the crashed instances before the take-back, as in A (0.4–0.7 %
    // alone on this machine, 4.2 % once in CI with the short run of this scenario): without the
    // take-back the rest of the bake (3 s of about 16) would fail, some 20 %.
    assert!(
        (tally.failed as f64) < tally.requests as f64 * 0.10,
        "{}",
        tally.text
    );
    s.assert_serving_only("1.0.0");
    assert_eq!(specs(&s), before, "the earlier spec's instances serve");
    let pids = [s.demo_pids("web-1"), s.demo_pids("web-2")];
    s.kube_free(&["reconcile", "--once"])
        .code(1)
        .stderr_has("1.0.0 is quarantined");
    assert_eq!([s.demo_pids("web-1"), s.demo_pids("web-2")], pids);
}
