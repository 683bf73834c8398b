//! Faults on a real fleet: an SSH connection cut while a command runs (a read-only command is sent
//! again on a new connection, a changing one is not), an app host and the balancer host lost in the
//! middle of a canary under keep-alive load (the run stops where it is and names the host, nothing is
//! undone, no request fails, and the next run once the host is back completes the rollout), and a
//! host that is unreachable before a run starts (nothing moves); a torn instance file, rebuilt from
//! what runs instead of trusted.

mod common;
#[path = "fleet/mod.rs"]
mod fleet;
#[path = "fleet_app/mod.rs"]
mod fleet_app;

use common::*;
use fleet::{Fleet, FleetSpec};
use fleet_app::Setup;
use kube_free::drivers::ssh::{SshOptions, SshTarget, SshTransport};
use kube_free::drivers::{Cmd, Transport, TransportError};
use std::time::{Duration, Instant};

/// Most a rollout may run under load; the load ends 2 s after the reconcile.
const LOAD_SECONDS: u64 = 120;

/// One step at 50% with a pause long enough to lose a host in it.
const STEPS: &str = "{ canary: { steps: [{ weight: 50, pause: 12s }] } }";

#[test]
fn a_dropped_connection_is_sent_again_only_for_read_only_commands() {
    let fleet = Fleet::start(FleetSpec::new(&["web-1"], "lb-1"));
    let runtime_dir = tempfile::Builder::new()
        .prefix("kf-t")
        .tempdir_in("/tmp")
        .unwrap();
    let target = SshTarget {
        host: "web-1".into(),
        address: fleet.address("web-1"),
        user: "root".into(),
        port: 22,
    };
    let options = SshOptions::new(
        runtime_dir.path(),
        Some(fleet.known_hosts().to_owned()),
        Some(fleet.identity_file().to_owned()),
        Duration::from_secs(5),
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let t = std::sync::Arc::new(
        rt.block_on(SshTransport::connect(&target, &options))
            .unwrap(),
    );
    let runs = fleet.dir().join("runs");

    // Each command appends a line to `runs` when it starts, then takes 3 s; sshd is killed (and
    // started again) half a second after that line, which cuts the connection the command runs on.
    let cut_during = |cmd: Cmd| {
        let _ = std::fs::remove_file(&runs);
        let task = {
            let t = t.clone();
            rt.spawn(async move { t.run(&cmd, Duration::from_secs(60)).await })
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::fs::read_to_string(&runs)
            .unwrap_or_default()
            .is_empty()
        {
            assert!(Instant::now() < deadline, "the command never started");
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(500));
        fleet.stop_sshd("web-1");
        fleet.start_sshd("web-1");
        let result = rt.block_on(task).unwrap();
        // Nothing sends it again later.
        std::thread::sleep(Duration::from_secs(4));
        let started = std::fs::read_to_string(&runs).unwrap_or_default();
        (result, started.lines().count())
    };
    let script = format!("echo started >> {}; sleep 3; echo done", runs.display());

    let (read, started) = cut_during(Cmd::read(["sh", "-c", &script]));
    let read = read.expect("a read-only command is sent again on a new connection");
    assert_eq!(read.stdout_text().trim(), "done");
    assert_eq!(started, 2, "sent once, cut, sent again");

    let (change, started) = cut_during(Cmd::change(["sh", "-c", &script]));
    match change {
        Err(e @ TransportError::Unreachable { .. }) => {
            let text = e.to_string();
            assert!(text.contains("web-1"), "{text}");
            assert!(
                text.contains("not sent again: it changes the host"),
                "{text}"
            );
        }
        other => panic!("a changing command cut in the middle must fail, got {other:?}"),
    }
    assert_eq!(started, 1, "a changing command is never sent twice");

    // The next command finds the connection dead before it is sent (the master exits as soon as
    // sshd's end of it is gone), and gets a new one.
    fleet.stop_sshd("web-1");
    std::thread::sleep(Duration::from_secs(1));
    fleet.start_sshd("web-1");
    let out = rt
        .block_on(t.run(&Cmd::change(["echo", "again"]), Duration::from_secs(30)))
        .expect("a new connection for a command not yet sent");
    assert_eq!(out.stdout_text().trim(), "again");
}

/// The weight of every server of the app's backend, as HAProxy's runtime API reports it (read on
/// this machine, not over SSH).
fn haproxy_weights(s: &Setup) -> Vec<(String, String)> {
    let mut weights = s.haproxy_stat("weight");
    weights.sort();
    weights
}

/// Reconciles 2.0.0 under load; once the canary has its 50%, runs `cut`.
fn lose_a_host_in_the_pause(s: &Setup, cut: impl FnOnce()) -> (Run, Tally) {
    s.commit("2.0.0", "", "20s");
    let (run, tally) = s.reconcile_under_load_while("GET", LOAD_SECONDS, || {
        let deadline = Instant::now() + Duration::from_secs(60);
        while s.weights_of("2.0.0") != [50, 50] {
            assert!(Instant::now() < deadline, "the canary never got its 50%");
            std::thread::sleep(Duration::from_millis(300));
        }
        cut();
    });
    eprintln!(
        "the run that lost a host: exit {:?}, {}",
        run.code,
        run.stderr.lines().last().unwrap_or_default()
    );
    (run, tally)
}

#[test]
fn an_app_host_lost_mid_rollout_stops_it_safely_and_the_next_run_completes_it() {
    let s = Setup::new(&["web-1", "web-2"], STEPS);
    s.kube_free(&["reconcile", "--once"]).code(0);
    s.assert_serving_only("1.0.0");

    // web-2's sshd dies (its apps keep serving) while the canary pauses at 50%.
    let (run, tally) = lose_a_host_in_the_pause(&s, || s.fleet.stop_sshd("web-2"));
    run.code(1)
        .stderr_has("cannot reach host \"web-2\"")
        .stderr_has("stops where it is, nothing is undone and nothing is quarantined");
    assert_eq!(tally.failed, 0, "{}", tally.text);
    assert!(tally.served_by("2.0.0") > 0, "{}", tally.text);

    // While it is away, a run changes nothing on any host and names it.
    let weights = haproxy_weights(&s);
    let pids = s.demo_pids("web-1");
    s.kube_free(&["reconcile", "--once"])
        .code(1)
        .stderr_has("cannot reach host \"web-2\"");
    assert_eq!(haproxy_weights(&s), weights, "no weight moved");
    assert_eq!(s.demo_pids("web-1"), pids, "no process started or stopped");
    for _ in 0..4 {
        http_get(&s.frontend(), "/version");
    }

    // Back: the next run completes the rollout, which was neither rolled back nor quarantined.
    // The run that lost web-2 could not give its lease there back: it is taken over once it
    // expires (here at once, or after a wait).
    s.fleet.start_sshd("web-2");
    s.kube_free(&["reconcile", "--once", "--lock-wait", "60s"])
        .code(0)
        .stdout_has("converged");
    s.assert_serving_only("2.0.0");
    assert_eq!(s.status_json()["rollout"]["phase"], "succeeded");
}

#[test]
fn a_lost_balancer_host_moves_nothing_and_the_next_run_completes_the_rollout() {
    let s = Setup::new(&["web-1", "web-2"], STEPS);
    s.kube_free(&["reconcile", "--once"]).code(0);
    s.assert_serving_only("1.0.0");

    // Unreachable before the run: nothing is started anywhere.
    s.commit("2.0.0", "", "20s");
    let pids = [s.demo_pids("web-1"), s.demo_pids("web-2")];
    s.fleet.stop_sshd("lb-1");
    s.kube_free(&["reconcile", "--once"])
        .code(1)
        .stderr_has("cannot reach host \"lb-1\"");
    assert_eq!([s.demo_pids("web-1"), s.demo_pids("web-2")], pids);
    s.fleet.start_sshd("lb-1");

    // Lost in the pause at 50%: the run stops and names it; HAProxy keeps the weights it had.
    let (run, tally) = lose_a_host_in_the_pause(&s, || s.fleet.stop_sshd("lb-1"));
    run.code(1).stderr_has("\"lb-1\"");
    assert_eq!(tally.failed, 0, "{}", tally.text);
    let weights = haproxy_weights(&s);
    assert_eq!(
        weights.iter().filter(|(_, w)| w == "50").count(),
        4,
        "both versions keep 50% on both hosts: {weights:?}"
    );

    // Back: its lease could not be given back, so the next run waits for it to expire, then
    // completes the rollout.
    s.fleet.start_sshd("lb-1");
    s.kube_free(&["reconcile", "--once", "--lock-wait", "60s"])
        .code(0)
        .stdout_has("converged");
    s.assert_serving_only("2.0.0");
    assert_eq!(s.status_json()["rollout"]["phase"], "succeeded");
}

/// The instance file of the slot of web-1 that serves, and its pid.
fn serving_instance_file(s: &Setup) -> (std::path::PathBuf, u64) {
    let app = s.status_json();
    let slot = app["slots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["host"] == "web-1" && x["alive"] == true)
        .unwrap_or_else(|| panic!("web-1 serves: {app}"))
        .clone();
    let file = s.fleet.state_dir("web-1").join(format!(
        "production/demo/{}.json",
        slot["slot"].as_str().unwrap()
    ));
    (file, slot["pid"].as_u64().unwrap())
}

/// Cuts the file in the middle, as a write that was not atomic would leave it.
fn tear(file: &std::path::Path) {
    let text = std::fs::read(file).unwrap();
    std::fs::write(file, &text[..text.len() / 2]).unwrap();
}

#[test]
fn a_torn_instance_file_is_rebuilt_from_what_runs_never_trusted() {
    let s = Setup::new(&["web-1", "web-2"], "blue-green");
    s.kube_free(&["reconcile", "--once"]).code(0);
    s.assert_serving_only("1.0.0");

    // The serving slot's file is torn: its process (from the pid file) still counts, and its command
    // line is 1.0.0's, so nothing is pending; plan reports the file.
    let (file, pid) = serving_instance_file(&s);
    tear(&file);
    s.kube_free(&["plan"])
        .code(0)
        .stderr_has("unreadable instance file, not trusted; rebuilt from what runs");
    assert_eq!(
        serving_instance_file(&s).1,
        pid,
        "status shows the running process"
    );
    // reconcile writes it again from what runs.
    s.kube_free(&["reconcile", "--once"])
        .code(0)
        .stderr_has("instance file repaired from what runs");
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).unwrap()).expect("the file parses again");
    assert_eq!(record["pid"], pid);
    assert_eq!(record["version"], "1.0.0");

    // Torn again, with 2.0.0 desired: the process is still known as 1.0.0 (its environment and
    // command line say so). It keeps serving until 2.0.0 takes over in the other slot, and is then
    // stopped: no request fails, and one process is left per host.
    tear(&file);
    s.commit("2.0.0", "", "20s");
    s.kube_free(&["plan"])
        .code(10)
        .stderr_has(&format!("recovered=\"pid {pid} runs 1.0.0\""));
    let (run, tally) = s.reconcile_under_load("GET", LOAD_SECONDS);
    run.code(0);
    assert_eq!(tally.failed, 0, "{}", tally.text);
    s.assert_serving_only("2.0.0");
    assert!(!file.exists(), "the stopped instance's file is removed");
}
