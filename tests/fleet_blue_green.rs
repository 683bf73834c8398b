//! Blue-green on a real fleet: two app hosts and a balancer host, each a network namespace with its
//! own sshd; HAProxy in master-worker mode on the balancer; kube-free reaching everything over SSH with
//! strict host keys; the demo app as the service; wrk as the load. Asserts zero failed requests
//! through every switch, one instance per host afterwards, an idempotent second run, a release that
//! never becomes ready cleaned up with the old version serving, and a plan that Graphviz renders.

mod common;
#[path = "fleet/mod.rs"]
mod fleet;
#[path = "fleet_app/mod.rs"]
mod fleet_app;

use common::*;
use fleet_app::Setup;
use std::process::{Command, Stdio};

/// The most a switch may run under load; the load ends 2 s after the reconcile.
const LOAD_SECONDS: u64 = 120;

#[test]
fn blue_green_on_a_fleet_switches_under_load_without_failing_a_request() {
    let mut s = Setup::new(&["web-1", "web-2"], "blue-green");

    // Nothing runs yet: the plan has steps, renders as dot, and Graphviz draws it.
    let plan = s.kube_free(&["plan", "--output", "dot"]);
    plan.code(10);
    let mut dot = Command::new("dot")
        .arg("-Tsvg")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(dot.stdin.as_mut().unwrap(), plan.stdout.as_bytes()).unwrap();
    let svg = dot.wait_with_output().unwrap();
    assert!(
        svg.status.success(),
        "dot failed: {}",
        String::from_utf8_lossy(&svg.stderr)
    );
    assert!(String::from_utf8_lossy(&svg.stdout).contains("<svg"));

    // First deploy.
    s.kube_free(&["reconcile", "--once"])
        .code(0)
        .stdout_has("converged");
    s.assert_serving_only("1.0.0");

    // Converged: a second run only reads (every command it logs is a read) and says so.
    let out = Command::new(bin())
        .args(["reconcile", "--once", "--repo", s.repo.path_str()])
        .env("KUBE_FREE_LOG", "kube_free=debug")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.contains("in sync"), "{stdout}");
    assert!(
        stderr.contains("changes=false"),
        "the debug log lists the commands:\n{stderr}"
    );
    // Only the lease (taken and given back) is written.
    let writes: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("changes=true") && !l.contains("kube-free-lease"))
        .collect();
    assert!(
        writes.is_empty(),
        "a converged run changed something:\n{}",
        writes.join("\n")
    );
    s.kube_free(&["plan"]).code(0).stdout_has("in sync");

    // 1.0.0 → 2.0.0 under GET load.
    s.commit("2.0.0", "", "20s");
    let (run, tally) = s.reconcile_under_load("GET", LOAD_SECONDS);
    run.code(0);
    assert_eq!(
        tally.failed, 0,
        "GET load through the switch:\n{}",
        tally.text
    );
    assert!(
        tally.served_by("1.0.0") > 0 && tally.served_by("2.0.0") > 0,
        "{}",
        tally.text
    );
    s.assert_serving_only("2.0.0");

    // 2.0.0 → 1.0.0 under POST load.
    s.commit("1.0.0", "", "20s");
    let (run, tally) = s.reconcile_under_load("POST", LOAD_SECONDS);
    run.code(0);
    assert_eq!(
        tally.failed, 0,
        "POST load through the switch:\n{}",
        tally.text
    );
    assert!(
        tally.served_by("1.0.0") > 0 && tally.served_by("2.0.0") > 0,
        "{}",
        tally.text
    );
    s.assert_serving_only("1.0.0");

    // The same version with another command: a spec change, rolled out blue-green under load,
    // and `plan` says why.
    let pids = [s.demo_pids("web-1"), s.demo_pids("web-2")];
    s.commit("1.0.0", " --ready-delay 100ms", "20s");
    s.kube_free(&["plan"])
        .code(10)
        .stdout_has("production/demo 1.0.0: command changed since its instances started");
    let (run, tally) = s.reconcile_under_load("GET", LOAD_SECONDS);
    run.code(0);
    assert_eq!(
        tally.failed, 0,
        "GET load through the spec change:\n{}",
        tally.text
    );
    s.assert_serving_only("1.0.0");
    let now = [s.demo_pids("web-1"), s.demo_pids("web-2")];
    assert!(
        now[0] != pids[0] && now[1] != pids[1],
        "new instances serve: {pids:?} then {now:?}"
    );
    s.kube_free(&["plan"]).code(0).stdout_has("in sync");

    // The port of the slot that serves (green, after the spec change) changes: the rollout moves
    // the traffic to blue first, and only then does the config move green's server to 8011.
    s.slots = "{ blue: 8000, green: 8011 }".into();
    s.commit("1.0.0", " --ready-delay 100ms", "20s");
    s.kube_free(&["plan"])
        .code(10)
        .stdout_has("slot ports changed")
        .stdout_has("the config of balancer edge is applied after the traffic moved off [web-1_green, web-2_green]");
    let (run, tally) = s.reconcile_under_load("GET", LOAD_SECONDS);
    run.code(0);
    assert_eq!(
        tally.failed, 0,
        "GET load through the port change:\n{}",
        tally.text
    );
    s.assert_serving_only("1.0.0");
    let config = std::fs::read_to_string(s.fleet.haproxy_config_file()).unwrap();
    assert!(config.contains(":8011"), "{config}");
    s.kube_free(&["plan"]).code(0).stdout_has("in sync");

    // A release that never becomes ready: exit 1 with the reason, no failed request, 1.0.0 still
    // serves everything, and the failed instances are stopped.
    s.commit("3.0.0", " --never-ready", "3s");
    let (run, tally) = s.reconcile_under_load("GET", LOAD_SECONDS);
    run.code(1)
        .stderr_has("not ready within the probe deadline of 3s")
        .stderr_has("rolled back, read back: production/demo traffic goes to 1.0.0 on web-1_")
        .stderr_has("no instance of 3.0.0 runs");
    assert_eq!(
        tally.failed, 0,
        "load during the failed rollout:\n{}",
        tally.text
    );
    assert_eq!(tally.served_by("3.0.0"), 0, "{}", tally.text);
    for host in ["web-1", "web-2"] {
        assert_eq!(
            s.demo_processes(host),
            1,
            "the failed instance on {host} is stopped"
        );
    }
    for _ in 0..4 {
        assert_eq!(http_get(&s.frontend(), "/version"), "1.0.0");
    }
}
