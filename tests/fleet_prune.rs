//! Prune on a real fleet (two app hosts, HAProxy on a balancer host, all over SSH), one fleet for
//! every scenario:
//! A. a host taken out of the environment: its instance is listed as orphaned by `plan` (exit 10)
//!    and `status`, left running by a reconcile without `--prune`, and stopped by one with it —
//!    under load, with no failed request: the balancer's config takes its server out first. A
//!    process kube-free did not start on that host is left alone;
//! B. the app renamed in Git (a mistake, say): `--prune` refuses to stop all of what kube-free
//!    runs (exit 2, nothing changed); `--prune-all` starts the new app and stops the old;
//! C. the environment renamed: the old one's instance, known by its rollout records on the
//!    balancer host, is pruned with `--prune-all`.

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

    // B. The app renamed (its slots on other ports): the old one is all kube-free runs.
    let yaml = std::fs::read_to_string(s.repo.path().join("kube-free.yaml")).unwrap();
    let renamed = yaml
        .replace("\n  demo:\n", "\n  demo2:\n")
        .replace("      demo: {", "      demo2: {")
        .replace("blue: 8000, green: 8001", "blue: 8100, green: 8101");
    assert_ne!(renamed, yaml);
    s.repo.write("kube-free.yaml", renamed);
    s.repo.commit("demo renamed");
    let web1 = s.demo_pids("web-1");
    s.kube_free(&["reconcile", "--once", "--prune"])
        .code(2)
        .stderr_has("refusing to prune 1 of the 1 instances kube-free runs: a commit that takes out all of them")
        .stderr_has("nothing was changed");
    assert_eq!(s.demo_pids("web-1"), web1, "nothing was stopped");
    s.kube_free(&["plan"])
        .code(10)
        .stdout_has("orphaned: production/demo 1.0.0 in slot blue on web-1 (running): app demo is not in the desired state");
    s.kube_free(&["reconcile", "--once", "--prune-all"]).code(0);
    let now = s.demo_pids("web-1");
    assert_eq!(now.len(), 1, "demo2 alone runs: {now:?}");
    assert!(
        !web1.contains(&now[0]),
        "demo was pruned: {web1:?} then {now:?}"
    );
    assert_eq!(s.demo_pids("web-2"), [stranger.0.id()]);
    assert_eq!(http_get(&s.frontend(), "/version"), "1.0.0");
    s.kube_free(&["plan"]).code(0).stdout_has("in sync");

    // C. The environment renamed (its slots on other ports again).
    let yaml = std::fs::read_to_string(s.repo.path().join("kube-free.yaml")).unwrap();
    let renamed = yaml
        .replace("\n  production:\n", "\n  staging:\n")
        .replace("blue: 8100, green: 8101", "blue: 8200, green: 8201");
    assert_ne!(renamed, yaml);
    s.repo.write("kube-free.yaml", renamed);
    s.repo.commit("production renamed");
    let before = s.demo_pids("web-1");
    s.kube_free(&["plan"])
        .code(10)
        .stdout_has("orphaned: production/demo2 1.0.0 in slot blue on web-1 (running): environment production is not in the desired state (its rollout records are)");
    s.kube_free(&["reconcile", "--once", "--prune-all"]).code(0);
    let now = s.demo_pids("web-1");
    assert_eq!(now.len(), 1, "staging alone runs: {now:?}");
    assert!(
        !before.contains(&now[0]),
        "production was pruned: {before:?} then {now:?}"
    );
    assert_eq!(http_get(&s.frontend(), "/version"), "1.0.0");
    s.kube_free(&["plan"]).code(0).stdout_has("in sync");
}
