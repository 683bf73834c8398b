//! The lease on a real fleet: two reconcilers started together (one acts, the other exits 4, or
//! waits with --lock-wait and then finds nothing to do), the lease of a run killed with SIGKILL taken
//! over after it expires (and the rollout resumed), and SIGTERM: the current step finishes, the lease
//! is released, and the next run completes the rollout. And a run narrowed with `--env`: it
//! contacts, observes and locks only that environment's hosts and its balancer's host, so a host of
//! another environment that is cut off fails nothing.

mod common;
#[path = "fleet/mod.rs"]
mod fleet;
#[path = "fleet_app/mod.rs"]
mod fleet_app;

use common::*;
use fleet_app::Setup;
use std::time::{Duration, Instant};

#[test]
fn two_reconcilers_at_once_never_both_act() {
    let s = Setup::new(&["web-1", "web-2"], "blue-green");
    s.kube_free(&["reconcile", "--once"]).code(0);

    // Started together: exactly one acts, the other exits 4 and names the holder.
    s.commit("2.0.0", " --ready-delay 2s", "20s");
    let a = s.spawn(&["reconcile", "--once"]);
    let b = s.spawn(&["reconcile", "--once"]);
    let mut runs: Vec<Run> = [a, b]
        .into_iter()
        .map(|c| Run::from(c.wait_with_output().unwrap()))
        .collect();
    runs.sort_by_key(|r| r.code);
    runs[0].code(0).stdout_has("converged");
    runs[1]
        .code(4)
        .stderr_has("locked: the lease on lb-1 is held by run");
    s.assert_serving_only("2.0.0");

    // With --lock-wait, the second waits, then finds everything done: the same outcome as one run.
    s.commit("3.0.0", " --ready-delay 2s", "20s");
    let a = s.spawn(&["reconcile", "--once", "--lock-wait", "60s"]);
    let b = s.spawn(&["reconcile", "--once", "--lock-wait", "60s"]);
    let mut outs: Vec<String> = [a, b]
        .into_iter()
        .map(|c| {
            let run = Run::from(c.wait_with_output().unwrap());
            run.code(0);
            run.stdout
        })
        .collect();
    outs.sort();
    assert!(outs[0].starts_with("converged"), "{outs:?}");
    assert!(outs[1].starts_with("in sync"), "{outs:?}");
    s.assert_serving_only("3.0.0");
}

#[test]
fn a_killed_runs_lease_expires_and_a_signalled_run_stops_cleanly() {
    let s = Setup::new(&["web-1", "web-2"], "blue-green");
    s.kube_free(&["reconcile", "--once"]).code(0);

    // Killed with SIGKILL in the middle of the probe: its lease (6 s) stays behind.
    s.commit("2.0.0", " --ready-delay 4s", "20s");
    let mut victim = s.spawn(&["reconcile", "--once", "--lease-ttl", "6s"]);
    std::thread::sleep(Duration::from_secs(2));
    victim.kill().unwrap();
    victim.wait().unwrap();
    s.kube_free(&["reconcile", "--once"])
        .code(4)
        .stderr_has("locked: the lease on lb-1 is held by run");
    // Taken over once it expired, without anyone removing it; the rollout resumes and completes.
    let started = Instant::now();
    s.kube_free(&["reconcile", "--once", "--lock-wait", "60s"])
        .code(0)
        .stdout_has("converged");
    eprintln!(
        "the dead run's lease was taken over after {:.1}s",
        started.elapsed().as_secs_f64()
    );
    s.assert_serving_only("2.0.0");

    // SIGTERM during the probe: the probe finishes, nothing after it starts, the lease is released.
    s.commit("3.0.0", " --ready-delay 3s", "20s");
    let run = s.spawn(&["reconcile", "--once"]);
    // Once 3.0.0 runs beside 2.0.0 on both hosts, it is being probed (ready after 3 s).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !s.hosts.iter().all(|h| s.demo_processes(h) == 2) {
        assert!(Instant::now() < deadline, "3.0.0 never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    let pid = run.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let run = Run::from(run.wait_with_output().unwrap());
    run.code(1)
        .stderr_has("signal received: finishing the current steps")
        .stderr_has("interrupted by a signal before step");
    // 3.0.0 runs but got no traffic; the next run (no waiting: the lease was released) completes.
    assert_eq!(s.weights_of("3.0.0"), [0, 0]);
    s.kube_free(&["reconcile", "--once"])
        .code(0)
        .stdout_has("converged");
    s.assert_serving_only("3.0.0");
}

#[test]
fn a_run_narrowed_to_an_environment_does_not_need_the_hosts_of_another() {
    let mut s = Setup::new(&["web-1", "web-2"], "blue-green");
    s.production_hosts = Some(vec!["web-1".to_owned()]);
    s.repo.write(
        "environments/staging.yaml",
        "balancer: edge\nhosts: [web-2]\napps:\n  demo: { version: \"1.0.0\", listen: \"0.0.0.0:81\", strategy: blue-green }\n",
    );
    s.commit("1.0.0", "", "20s");
    s.kube_free(&["reconcile", "--once"]).code(0);
    let staging = format!("{}:81", s.fleet.address("lb-1"));
    assert_eq!(http_get(&staging, "/version"), "1.0.0");

    // web-2, staging's only host, leaves the network; production moves to 2.0.0.
    s.fleet.cut_link("web-2");
    s.commit("2.0.0", "", "20s");
    // A run over everything needs web-2 and says so; one narrowed to production does not.
    s.kube_free(&["plan"]).code(1).stderr_has("web-2");
    s.kube_free(&["plan", "--env", "production"])
        .code(10)
        .stdout_has("2.0.0");
    let (run, tally) = s.run_under_load(
        &["reconcile", "--once", "--env", "production"],
        "GET",
        60,
        || {},
    );
    run.code(0).stdout_has("converged");
    assert_eq!(tally.failed, 0, "{tally:?}");
    assert!(tally.requests > 0);
    let status = s.kube_free(&["status", "--env", "production", "--output", "json"]);
    status.code(0);
    let json: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    let envs = json["environments"].as_array().unwrap();
    assert_eq!(envs.len(), 1, "{}", status.stdout);
    assert_eq!(envs[0]["env"], "production", "{}", status.stdout);
    assert_eq!(envs[0]["in_sync"], true, "{}", status.stdout);
    assert_eq!(http_get(&s.frontend(), "/version"), "2.0.0");

    // Back on the network, staging is as it was, and everything is in sync.
    s.fleet.restore_link("web-2");
    let back = Instant::now();
    while http_status_and_body(&staging) != (200, "1.0.0".to_owned()) {
        assert!(
            back.elapsed() < Duration::from_secs(20),
            "staging does not serve 1.0.0 again: {:?} {:?} {:?}",
            http_status_and_body(&staging),
            s.haproxy_stat("status"),
            s.haproxy_stat("weight")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    s.kube_free(&["plan"]).code(0).stdout_has("in sync");
    s.kube_free(&["plan", "--env", "staging"]).code(0);
}

/// The status and the trimmed body of `GET /version` from `address` (0 when it cannot connect).
fn http_status_and_body(address: &str) -> (u16, String) {
    let (status, body) = request(address, "GET", "/version", &[], b"");
    (status, body.trim().to_owned())
}
