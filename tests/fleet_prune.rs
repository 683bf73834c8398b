//! Prune on a real fleet (two app hosts, HAProxy on a balancer host, all over SSH), one fleet for
//! every scenario:
//! A. a host taken out of the environment: its instance is listed as orphaned by `plan` (exit 10)
//!    and `status`, left running by a reconcile without `--prune`, and stopped by one with it —
//!    under load, with no failed request: the balancer's config takes its server out first. A
//!    process kube-free did not start on that host is left alone;
//! B. a commit with no environment at all (a broken one): `--prune` refuses to stop all of what
//!    kube-free runs (exit 2, nothing changed); `--prune-all` does it.

mod common;
#[path = "fleet/mod.rs"]
mod fleet;
#[path = "fleet_app/mod.rs"]
mod fleet_app;

use common::*;
use fleet_app::Setup;
use std::process::{Child, Command, Stdio};

/// Most a scenario's load may run; the load ends 2 s after the reconcile.
const LOAD_SECONDS: u64 = 90;

/// A process kube-free did not start; killed when dropped.
struct Stranger(Child);

impl Drop for Stranger {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn orphans_are_listed_pruned_when_asked_and_a_fleet_is_never_wiped_by_mistake() {
    let mut s = Setup::new(&["web-1", "web-2"], "blue-green");
    s.kube_free(&["reconcile", "--once"]).code(0);
    s.assert_serving_only("1.0.0");
    let mut stranger = Stranger(
        Command::new("ip")
            .args(["netns", "exec", &s.fleet.netns("web-2")])
            .arg(demo_binary())
            .args(["--listen", "0.0.0.0:9100", "--version", "stranger"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // `ip netns exec` becomes the stranger once it has entered the namespace.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !s.demo_pids("web-2").contains(&stranger.0.id()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the stranger did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(
        s.demo_pids("web-2").len(),
        2,
        "the instance and the stranger"
    );

    // A. web-2 taken out of production; it stays under `hosts:`.
    s.production_hosts = Some(vec!["web-1".into()]);
    s.commit("1.0.0", "", "20s");
    let orphan =
        "production/demo 1.0.0 in slot blue on web-2 (running): web-2 is not one of production's hosts";
    s.kube_free(&["plan"])
        .code(10)
        .stdout_has(&format!("orphaned: {orphan}"));
    s.kube_free(&["status"])
        .code(0)
        .stdout_has(&format!("orphaned: {orphan}"));
    let status = s.kube_free(&["status", "--output", "json"]);
    let json: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(json["orphans"][0]["at"]["host"], "web-2", "{json}");
    assert_eq!(json["orphans"][0]["pruned"], false, "{json}");

    // Pruned under load: the config takes web-2's server out, then its instance is stopped.
    let (run, tally) = s.run_under_load(
        &["reconcile", "--once", "--prune"],
        "GET",
        LOAD_SECONDS,
        || {},
    );
    run.code(0);
    assert_eq!(tally.failed, 0, "load through the prune:\n{}", tally.text);
    assert!(tally.served_by("1.0.0") > 0, "{}", tally.text);
    assert_eq!(
        s.demo_pids("web-2"),
        [stranger.0.id()],
        "only the stranger runs on web-2"
    );
    assert!(
        stranger.0.try_wait().unwrap().is_none(),
        "the stranger runs"
    );
    s.kube_free(&["plan"]).code(0).stdout_has("in sync");
    for _ in 0..4 {
        assert_eq!(http_get(&s.frontend(), "/version"), "1.0.0");
    }

    // B. A commit without any environment: its one instance is all kube-free runs.
    let yaml = std::fs::read_to_string(s.repo.path().join("kube-free.yaml")).unwrap();
    let (head, _) = yaml.split_once("environments:").unwrap();
    s.repo
        .write("kube-free.yaml", format!("{head}environments: {{}}\n"));
    s.repo.commit("no environments");
    let web1 = s.demo_pids("web-1");
    s.kube_free(&["reconcile", "--once", "--prune"])
        .code(2)
        .stderr_has("refusing to prune 1 of the 1 instances kube-free runs: a commit that takes out all of them")
        .stderr_has("nothing was changed");
    assert_eq!(s.demo_pids("web-1"), web1, "nothing was stopped");
    s.kube_free(&["plan"])
        .code(10)
        .stdout_has("orphaned: production/demo 1.0.0 in slot blue on web-1 (running): environment production is not in the desired state");
    s.kube_free(&["reconcile", "--once", "--prune-all"]).code(0);
    assert!(s.demo_pids("web-1").is_empty(), "pruned");
    assert_eq!(s.demo_pids("web-2"), [stranger.0.id()]);
    s.kube_free(&["plan"]).code(0).stdout_has("in sync");
}
