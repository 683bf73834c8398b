//! An app host lost at the balancer: web-2's link is cut (the whole host leaves the network, its
//! apps with it) while keep-alive clients load the frontend. What HAProxy had already sent to it
//! is lost, at most one request per client connection; every other request is served, the ones
//! HAProxy tried to connect to the dead host with after its connect timeout, on web-1. The
//! figures (requests, failed, the slowest served) are printed.

mod common;
#[path = "fleet/mod.rs"]
mod fleet;
#[path = "fleet_app/mod.rs"]
mod fleet_app;

use common::*;
use fleet_app::Setup;
use std::time::Duration;

/// Client connections of the load (as wrk's 16 in the measurement of issue 15).
const CONNECTIONS: usize = 16;
/// The clients' timeout: a request with no response by then has failed.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
/// `timeout connect` of the rendered HAProxy config.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Load after the cut: longer than HAProxy's checks take to mark the host DOWN (`fall 2` checks of
/// `inter 2s`, each timing out after 2 s: up to 6 s).
const AFTER_CUT: Duration = Duration::from_secs(8);

#[test]
fn an_app_host_cut_off_under_load_loses_at_most_what_was_in_flight() {
    // HAProxy's own check interval (2 s) rather than the fleet's 200 ms: with checks that slow,
    // what HAProxy sees on real traffic has to take the host out.
    let mut s = Setup::new(&["web-1", "web-2"], "blue-green");
    s.probe_interval = "2s".to_owned();
    s.commit("1.0.0", "", "30s");
    s.kube_free(&["reconcile", "--once"]).code(0);
    s.assert_serving_only("1.0.0");

    let load = KeepAliveLoad::start(
        &s.frontend(),
        CONNECTIONS,
        CLIENT_TIMEOUT,
        Duration::from_secs(60),
    );
    std::thread::sleep(Duration::from_secs(3));
    let cut = load.elapsed();
    s.fleet.cut_link("web-2");
    std::thread::sleep(AFTER_CUT);
    let requests = load.finish();
    let states = s.haproxy_stat("status");
    s.fleet.restore_link("web-2");
    let log = std::fs::read_to_string(s.fleet.haproxy_log_file()).unwrap_or_default();
    for line in log
        .lines()
        .filter(|l| l.contains("web-2") && l.contains("DOWN"))
    {
        eprintln!("haproxy: {line}");
    }

    let (before, after): (Vec<Timed>, Vec<Timed>) =
        requests.iter().partition(|r| r.start + r.took < cut);
    let failed: Vec<&Timed> = after.iter().filter(|r| !r.ok).collect();
    let served_after: Vec<&Timed> = after.iter().filter(|r| r.ok).collect();
    let slowest = served_after
        .iter()
        .map(|r| r.took)
        .max()
        .unwrap_or_default();
    let timed_out = failed.iter().filter(|r| r.took >= CLIENT_TIMEOUT).count();
    let last_failure = failed
        .iter()
        .map(|r| (r.start + r.took).saturating_sub(cut))
        .max()
        .unwrap_or_default();
    eprintln!(
        "web-2 cut off under {CONNECTIONS} keep-alive connections (client timeout {CLIENT_TIMEOUT:?}): \
         {} requests before the cut, all served: {}; {} after it: {} failed ({timed_out} timed out, \
         the last one {last_failure:?} after the cut), slowest served {slowest:?}; servers then: {states:?}",
        before.len(),
        before.iter().all(|r| r.ok),
        after.len(),
        failed.len(),
    );

    assert!(
        before.len() > 100 && before.iter().all(|r| r.ok),
        "a steady state first"
    );
    assert!(
        states
            .iter()
            .any(|(sv, st)| sv.starts_with("web-2") && st.starts_with("DOWN")),
        "HAProxy took web-2 out: {states:?}"
    );
    assert!(
        served_after.len() > 100,
        "web-1 went on serving: {} served after the cut",
        served_after.len()
    );
    // Lost: what HAProxy had sent to web-2 when it was cut, or sent on a connection to it that
    // it kept open for reuse before it knew: one request per client connection at most.
    assert!(
        failed.len() <= CONNECTIONS,
        "{} requests failed, more than the {CONNECTIONS} that can have been in flight",
        failed.len()
    );
    // Every other request was served, at worst after one connect timeout and a redispatch.
    assert!(
        slowest <= CONNECT_TIMEOUT + Duration::from_millis(500),
        "a request waited {slowest:?} to be served"
    );
}
