//! Rolling on a real fleet: three app hosts, one at a time (`batch: 1`), under keep-alive load through
//! HAProxy. Asserts zero failed requests, that while the rollout runs at most one host is changing
//! (the rest serve), and one instance of the new version per host afterwards.

mod common;
#[path = "fleet/mod.rs"]
mod fleet;
#[path = "fleet_app/mod.rs"]
mod fleet_app;

use fleet_app::Setup;

#[test]
fn rolling_one_host_at_a_time_under_load_without_failing_a_request() {
    let s = Setup::new(&["web-1", "web-2", "web-3"], "{ rolling: { batch: 1 } }");
    s.kube_free(&["reconcile", "--once"]).code(0);
    s.assert_serving_only("1.0.0");

    s.commit("2.0.0", "", "20s");
    let plan = s.kube_free(&["plan"]);
    plan.code(10);
    // Three hosts, one after the other: each host's shift moves only its own weight.
    for host in ["web-1", "web-2", "web-3"] {
        plan.stdout_has(&format!(
            "shift production/demo traffic on edge to [{host}_green] from [{host}_blue]"
        ));
    }
    let (run, tally) = s.reconcile_under_load("GET", 120);
    run.code(0);
    assert_eq!(
        tally.failed, 0,
        "GET load through the rolling update:\n{}",
        tally.text
    );
    assert!(
        tally.served_by("1.0.0") > 0 && tally.served_by("2.0.0") > 0,
        "{}",
        tally.text
    );
    s.assert_serving_only("2.0.0");
}
