//! The README's main job, for real: `examples/quickstart/run.sh` starts HAProxy on this machine,
//! deploys the demo app 1.0.0 with the local transport, commits 2.0.0 and switches under wrk load.
//! Asserts both versions served and no request failed.

mod common;
use common::*;

#[test]
fn the_quickstart_switches_versions_under_load_with_no_failed_request() {
    require_tools(&["haproxy", "wrk", "git", "curl"]);
    let _turn = load_test_turn();
    let (stdout, tally) = run_example("quickstart", &[]);
    assert_eq!(tally.failed, 0, "{stdout}");
    assert!(
        tally.served_by("1.0.0") > 100,
        "1.0.0 served before the switch\n{stdout}"
    );
    assert!(
        tally.served_by("2.0.0") > 100,
        "2.0.0 served after the switch\n{stdout}"
    );
    assert!(stdout.contains("served now: 2.0.0"), "{stdout}");
    assert!(
        stdout.contains("switched 1.0.0 -> 2.0.0 under load with 0 failed requests"),
        "{stdout}"
    );
}
