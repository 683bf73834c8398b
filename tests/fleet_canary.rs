//! Canary on a real fleet (two app hosts, HAProxy on a balancer host, all over SSH) under keep-alive
//! load: the canary's measured share of requests at its weight, a gate that ends the run with exit 3
//! and resumes at the same step, a torn rollout record (the step is read from the weights),
//! `promote`, analysis over a step, a new commit that pre-empts a
//! running canary, and an erroring canary rolled back by analysis, quarantined, and retried.

mod common;
#[path = "fleet/mod.rs"]
mod fleet;
#[path = "fleet_app/mod.rs"]
mod fleet_app;

use common::*;
use fleet_app::Setup;

/// Most a switch may run under load; the load ends 2 s after the reconcile.
const LOAD_SECONDS: u64 = 120;

/// 10% behind a gate, then 50% for 4 s; analysis over each pause.
const STEPS: &str = "{ canary: { steps: [{ weight: 10, pause: {} }, { weight: 50, pause: 4s }], \
                     analysis: { max_error_rate: 0.05, min_requests: 50 } } }";

#[test]
fn canary_steps_gates_and_a_new_commit_under_load_without_failing_a_request() {
    let s = Setup::new(&["web-1", "web-2"], STEPS);
    // Nothing serves yet: the first deploy has nothing to compare against and goes at once.
    s.kube_free(&["reconcile", "--once"]).code(0);
    s.assert_serving_only("1.0.0");

    // 2.0.0: started and probed on both hosts, 10%, then the gate ends the run (exit 3).
    s.commit("2.0.0", "", "20s");
    let (run, tally) = s.reconcile_under_load("GET", LOAD_SECONDS);
    run.code(3)
        .stderr_has("canary step 0 waits for `kube-free promote demo --env production`");
    assert_eq!(tally.failed, 0, "load up to the gate:\n{}", tally.text);
    assert_eq!(s.weights_of("2.0.0"), [10, 10]);
    assert_eq!(s.weights_of("1.0.0"), [90, 90]);
    let app = s.status_json();
    assert_eq!(app["rollout"]["phase"], "paused", "{app}");
    assert_eq!(app["rollout"]["step"], 0, "{app}");

    // At 10%, the canary serves about a tenth of the requests.
    let at_ten = Load::start(&format!("http://{}/", s.frontend()), 4, "GET").finish();
    let share = at_ten.served_by("2.0.0") as f64 / at_ten.requests as f64;
    eprintln!(
        "at 10%: {} requests, {} by 2.0.0 ({:.1}%), {} failed",
        at_ten.requests,
        at_ten.served_by("2.0.0"),
        share * 100.0,
        at_ten.failed
    );
    assert!(at_ten.requests >= 2000, "{}", at_ten.text);
    assert!((0.07..=0.13).contains(&share), "{}", at_ten.text);
    assert_eq!(at_ten.failed, 0, "{}", at_ten.text);

    // Run again before anyone promotes: the same step, nothing restarted.
    let pids_before = demo_pids(&s);
    s.kube_free(&["reconcile", "--once", "--max-wait", "1s"])
        .code(3)
        .stderr_has("canary step 0 waits");
    assert_eq!(demo_pids(&s), pids_before, "no instance was restarted");
    s.kube_free(&["plan"])
        .code(10)
        .stdout_has("canary step 0: wait until `kube-free promote demo --env production`");

    // Promote: step 1 sets 50%; its pause of 4 s is longer than --max-wait 1s, so the run ends there
    // (exit 3) and the next run resumes at step 1, with nothing restarted.
    s.kube_free(&["promote", "demo", "--env", "production"])
        .code(0)
        .stdout_has("the pause of step 0 ends");
    s.kube_free(&["reconcile", "--once", "--max-wait", "1s"])
        .code(3)
        .stderr_has("canary step 1 pauses")
        .stderr_has("longer than --max-wait");
    assert_eq!(s.weights_of("2.0.0"), [50, 50]);
    assert_eq!(s.status_json()["rollout"]["step"], 1);
    assert_eq!(demo_pids(&s), pids_before, "no instance was restarted");
    s.kube_free(&["plan"])
        .code(10)
        .stdout_has("   1. canary step 1: production/demo 2.0.0 gets 50%");
    // A torn rollout record is not trusted; the plan reads the step from the balancer's weights
    // (50%: step 1), so the canary does not fall back to 10%.
    let record = s
        .fleet
        .state_dir("lb-1")
        .join("rollouts/production/demo.json");
    let text = std::fs::read(&record).unwrap();
    std::fs::write(&record, &text[..text.len() / 2]).unwrap();
    s.kube_free(&["plan"])
        .code(10)
        .stderr_has("unreadable rollout record; ignored")
        .stdout_has("   1. canary step 1: production/demo 2.0.0 gets 50%");

    // The rest under load: what is left of the pause, analysis, then all of it.
    let (run, tally) = s.reconcile_under_load("POST", LOAD_SECONDS);
    run.code(0);
    assert_eq!(tally.failed, 0, "load through the canary:\n{}", tally.text);
    assert!(tally.served_by("1.0.0") > 0 && tally.served_by("2.0.0") > 0);
    s.assert_serving_only("2.0.0");
    let app = s.status_json();
    assert_eq!(app["rollout"]["phase"], "succeeded", "{app}");
    let analysis = app["rollout"]["analysis"].as_array().unwrap();
    assert!(
        analysis
            .iter()
            .any(|a| a["step"] == 1 && a["verdict"] == "passed"),
        "{app}"
    );

    // A new commit pre-empts a running canary: 3.0.0 waits at its gate at 10% ...
    s.commit("3.0.0", "", "20s");
    s.kube_free(&["reconcile", "--once"]).code(3);
    assert_eq!(s.weights_of("3.0.0"), [10, 10]);
    // ... when 4.0.0 is committed. Its run takes 3.0.0 out (the stable version keeps serving) and
    // puts 4.0.0 at 10% in its place.
    s.commit("4.0.0", "", "20s");
    let (run, tally) = s.reconcile_under_load("GET", LOAD_SECONDS);
    run.code(3);
    assert_eq!(
        tally.failed, 0,
        "load through the pre-emption:\n{}",
        tally.text
    );
    assert!(s.weights_of("3.0.0").is_empty(), "3.0.0 is stopped");
    assert_eq!(s.weights_of("4.0.0"), [10, 10]);
    assert_eq!(s.weights_of("2.0.0"), [90, 90]);
    s.kube_free(&["promote", "demo", "--env", "production", "--all"])
        .code(0);
    s.kube_free(&["reconcile", "--once"]).code(0);
    s.assert_serving_only("4.0.0");
}

#[test]
fn a_canary_that_fails_analysis_is_rolled_back_quarantined_and_retried() {
    let steps = "{ canary: { steps: [{ weight: 20, pause: 3s }, { weight: 50, pause: 3s }], \
                 analysis: { max_error_rate: 0.05, min_requests: 50 } } }";
    let mut s = Setup::new(&["web-1", "web-2"], steps);
    s.kube_free(&["reconcile", "--once"]).code(0);
    s.assert_serving_only("1.0.0");

    // 2.0.0 answers 30% of requests with 500: analysis of the first step fails it.
    s.commit("2.0.0", " --error-rate 0.3", "20s");
    let (run, tally) = s.reconcile_under_load("GET", LOAD_SECONDS);
    run.code(1)
        .stderr_has("analysis failed at step 0")
        .stderr_has("2.0.0 is quarantined");
    eprintln!(
        "failed requests: {} of the {} the canary served (it fails 30%)",
        tally.failed,
        tally.served_by("2.0.0")
    );
    assert!(tally.served_by("1.0.0") > 0, "{}", tally.text);
    // Every failed request is one of the canary's 500s: the stable version failed none.
    assert!(
        tally.failed as f64 <= tally.served_by("2.0.0") as f64 * 0.3 + 2.0,
        "{}",
        tally.text
    );
    for _ in 0..4 {
        assert_eq!(http_get(&s.frontend(), "/version"), "1.0.0");
    }
    assert!(s.weights_of("2.0.0").is_empty(), "2.0.0 is stopped");
    assert_eq!(s.weights_of("1.0.0"), [100, 100]);
    for host in ["web-1", "web-2"] {
        assert_eq!(s.demo_processes(host), 1, "only 1.0.0 runs on {host}");
    }
    let app = s.status_json();
    assert_eq!(app["quarantined"], true, "{app}");
    assert_eq!(app["rollout"]["phase"], "failed", "{app}");
    let figures = &app["rollout"]["analysis"][0];
    assert_eq!(figures["verdict"], "failed", "{app}");
    assert!(figures["error_rate"].as_f64().unwrap() > 0.2, "{app}");

    // Quarantined: the next run does nothing but say so.
    s.kube_free(&["reconcile", "--once"])
        .code(1)
        .stderr_has("production/demo 2.0.0 is quarantined (failed): analysis failed at step 0");
    s.kube_free(&["plan"]).code(0).stdout_has("quarantined");
    for host in ["web-1", "web-2"] {
        assert_eq!(s.demo_processes(host), 1, "nothing started on {host}");
    }

    // `retry` lifts it: the next run starts 2.0.0 again (and analysis fails it again).
    s.kube_free(&["retry", "demo", "--env", "production"])
        .code(0)
        .stdout_has("may be rolled out again");
    let (run, tally) = s.reconcile_under_load("GET", LOAD_SECONDS);
    run.code(1).stderr_has("analysis failed at step 0");
    assert!(
        tally.served_by("2.0.0") > 0,
        "2.0.0 ran again: {}",
        tally.text
    );
    assert_eq!(s.weights_of("1.0.0"), [100, 100]);

    // `abort` in the middle of a canary: 3.0.0 waits in its first pause (3 s > --max-wait 1s) ...
    s.commit("3.0.0", "", "20s");
    s.kube_free(&["reconcile", "--once", "--max-wait", "1s"])
        .code(3);
    assert_eq!(s.weights_of("3.0.0"), [20, 20]);
    // ... and is rolled back by hand: traffic back on 1.0.0, 3.0.0 stopped and quarantined.
    s.kube_free(&["abort", "demo", "--env", "production"])
        .code(0)
        .stdout_has("aborted production/demo 3.0.0");
    assert!(s.weights_of("3.0.0").is_empty(), "3.0.0 is stopped");
    assert_eq!(s.weights_of("1.0.0"), [100, 100]);
    let app = s.status_json();
    assert_eq!(app["rollout"]["phase"], "aborted", "{app}");
    assert_eq!(app["quarantined"], true, "{app}");
    s.kube_free(&["reconcile", "--once"])
        .code(1)
        .stderr_has("3.0.0 is quarantined (aborted)");

    // An HTTP check of the analysis fails 4.0.0, whose /smoke answers 500, whatever the counters say.
    s.strategy = steps.replace("min_requests: 50", "min_requests: 50, checks: [/smoke]");
    s.commit("4.0.0", " --fail-path /smoke", "20s");
    s.kube_free(&["reconcile", "--once"])
        .code(1)
        .stderr_has("analysis failed at step 0: check /smoke on web-1")
        .stderr_has("/smoke answered 500");
    assert!(s.weights_of("4.0.0").is_empty(), "4.0.0 is stopped");
    assert_eq!(s.weights_of("1.0.0"), [100, 100]);
}

/// Pids of the demo processes on every app host.
fn demo_pids(s: &Setup) -> Vec<Vec<u32>> {
    s.hosts.iter().map(|h| s.demo_pids(h)).collect()
}
