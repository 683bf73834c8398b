//! Saved plans on a real host (this machine, `transport: local`): the demo app behind a HAProxy of
//! the test's own. `plan --out` saves a plan that `reconcile --once --plan` executes; the same file
//! a second time, a plan whose servers changed behind its back (a weight set by hand through
//! HAProxy's admin socket), a plan of another commit, another scope, a damaged file: each refused
//! with exit 2, and nothing is changed (what serves, the instance files, the rollout record and the
//! commit applied are as they were). A plan of nothing executes nothing; one stopped at a canary's
//! gate (exit 3) is spent.
//! And `--timings`: the phases of a `plan` and of a `reconcile`, and every step the run took, slowest
//! first, with what each took.

mod common;
use common::*;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// What [`LocalStage::kept`] reads.
#[derive(Debug, PartialEq)]
struct Kept {
    instances: Vec<(String, String)>,
    record: Option<Vec<u8>>,
    applied: Option<Vec<u8>>,
    config: Vec<u8>,
}

impl LocalStage {
    /// A file of the balancer host's state directory, if it is there.
    fn state_file(&self, path: &str) -> Option<Vec<u8>> {
        std::fs::read(self.state.join(path)).ok()
    }

    /// The versions of the instance files, by slot.
    fn instances(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = std::fs::read_dir(self.state.join("local/demo"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|f| f.path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .map(|p| {
                let json: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
                (
                    json["slot"].as_str().unwrap().to_owned(),
                    json["version"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        v.sort();
        v
    }

    /// What kube-free keeps on the host: the instance files, the rollout record, the commit
    /// applied, and what HAProxy's config file holds.
    fn kept(&self) -> Kept {
        Kept {
            instances: self.instances(),
            record: self.state_file("rollouts/local/demo.json"),
            applied: self.state_file("applied.json"),
            config: std::fs::read(self.haproxy.config_file()).unwrap(),
        }
    }

    /// A command to HAProxy's runtime API; its answer.
    fn haproxy_runtime(&self, command: &str) -> String {
        let mut s = std::os::unix::net::UnixStream::connect(self.haproxy.admin_socket()).unwrap();
        s.write_all(format!("{command}\n").as_bytes()).unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        answer
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn text(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn a_saved_plan_is_executed_once_and_refused_when_anything_it_was_made_from_changed() {
    let s = LocalStage::new(&["flock", "sha256sum"]);
    s.commit("1.0.0", "blue-green");
    s.run(&["reconcile", "--once"]).code(0);
    assert!(s.serving().contains("1.0.0"), "{}", s.serving());

    // Planned, reviewed, executed.
    let two = s.commit("2.0.0", "blue-green");
    let p = s.path("p.json");
    s.run(&["plan", "--out", text(&p)])
        .code(10)
        .stdout_has("start local/demo 2.0.0 in slot green on here")
        .stderr_has(&format!("plan saved to {} (", p.display()))
        .stderr_has(&format!("at commit {two}"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&p).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    assert_eq!(saved["format"], 1);
    assert_eq!(saved["commit"], two.as_str());
    assert_eq!(
        saved["scope"],
        serde_json::json!({ "env": null, "app": null })
    );
    assert!(saved["observed"]["digest"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));
    let steps = saved["plan"]["steps"].as_array().unwrap().len();
    assert!(steps > 3, "{saved}");

    s.run(&["reconcile", "--once", "--plan", text(&p)])
        .code(0)
        .stdout_has(&format!(
            "the saved plan {}: converged to commit {two} in {steps} steps",
            p.display()
        ));
    assert!(s.serving().contains("2.0.0"), "{}", s.serving());

    // A plan is for one run: what it did changed what it was made from.
    let kept = s.kept();
    s.run(&["reconcile", "--once", "--plan", text(&p)])
        .code(2)
        .stderr_has("the observed state changed since the plan was made: ")
        .stderr_has("instance local/demo/green on here appeared")
        .stderr_has("nothing was changed: make a new plan");
    assert_eq!(s.kept(), kept);

    // A weight set by hand after the plan was made: refused under the lease, nothing changed.
    let three = s.commit("3.0.0", "blue-green");
    let p2 = s.path("p2.json");
    s.run(&["plan", "--out", text(&p2)])
        .code(10)
        .stdout_has("start local/demo 3.0.0 in slot blue on here");
    assert_eq!(
        s.haproxy_runtime("set weight kf_local_demo/here_green 50")
            .trim(),
        ""
    );
    let kept = s.kept();
    assert_eq!(
        kept.instances,
        [("green".to_owned(), "2.0.0".to_owned())],
        "{kept:?}"
    );
    s.run(&["reconcile", "--once", "--plan", text(&p2)])
        .code(2)
        .stderr_has("error: the observed state changed since the plan was made: server kf_local_demo/here_green on balancer edge changed; nothing was changed: make a new plan");
    assert_eq!(s.kept(), kept, "something was written");
    assert!(s.serving().contains("2.0.0"), "{}", s.serving());
    let blue = format!("--listen 127.0.0.1:{} --version 3.0.0", s.ports[1]);
    assert!(
        !std::process::Command::new("pgrep")
            .args(["-f", "--", &blue])
            .status()
            .unwrap()
            .success(),
        "an instance of 3.0.0 runs"
    );

    // A plan made at another commit, for another scope, or damaged: refused before the lease.
    let p3 = s.path("p3.json");
    s.run(&["plan", "--out", text(&p3)]).code(10);
    let later = s.commit("3.0.1", "blue-green");
    let lock = s.state_file("lock");
    s.run(&["reconcile", "--once", "--plan", text(&p3)])
        .code(2)
        .stderr_has(&format!(
            "error: the plan was made at commit {three}; the repository is at {later}: make a new plan"
        ));
    s.run(&["reconcile", "--once", "--plan", text(&p3), "--env", "other"])
        .code(2)
        .stderr_has("the plan was made for every environment and app; --env other was given");
    let bad = s.path("bad.json");
    std::fs::write(&bad, b"{\"format\": 1, \"commit\": ").unwrap();
    s.run(&["reconcile", "--once", "--plan", text(&bad)])
        .code(2)
        .stderr_has(&format!(
            "error: the plan file {} is not a saved plan of kube-free: ",
            bad.display()
        ));
    std::fs::write(&bad, b"{\"format\": 9}").unwrap();
    s.run(&["reconcile", "--once", "--plan", text(&bad)])
        .code(2)
        .stderr_has("has format 9; this kube-free reads format 1 only");
    s.run(&[
        "reconcile",
        "--once",
        "--plan",
        text(&s.path("missing.json")),
    ])
    .code(2)
    .stderr_has("cannot read the plan file ");
    assert_eq!(s.state_file("lock"), lock, "the lease was taken");
    assert_eq!(s.kept(), kept, "something was written");
    s.run(&["plan", "--out", text(s.dir.path())])
        .code(2)
        .stderr_has("is a directory: --out needs the name of a file");

    // Converged, a plan of nothing executes nothing.
    s.run(&["reconcile", "--once"]).code(0);
    assert!(s.serving().contains("3.0.1"), "{}", s.serving());
    let p4 = s.path("p4.json");
    s.run(&["plan", "--out", text(&p4), "--env", "local"])
        .code(0)
        .stderr_has("(0 steps at commit");
    let kept = s.kept();
    for _ in 0..2 {
        s.run(&["reconcile", "--once", "--plan", text(&p4)])
            .code(0)
            .stdout_has("in sync at commit");
    }
    assert_eq!(s.kept(), kept);

    // A canary's gate ends the run of a saved plan as any run (exit 3); the plan is then spent.
    s.commit(
        "4.0.0",
        "{ canary: { steps: [{ weight: 50, pause: {} }] } }",
    );
    let p5 = s.path("p5.json");
    s.run(&["plan", "--out", text(&p5)]).code(10);
    s.run(&["reconcile", "--once", "--plan", text(&p5)])
        .code(3)
        .stderr_has("run again to resume there");
    s.run(&["reconcile", "--once", "--plan", text(&p5)])
        .code(2)
        .stderr_has("the observed state changed since the plan was made: ")
        .stderr_has("rollout record of local/demo changed");
}

/// The seconds at the end of a line of `--timings` (`…  0.238 s`, maybe then `  (waits)`).
fn figure(line: &str) -> Option<f64> {
    let line = line.trim_end();
    let line = line
        .strip_suffix("(waits)")
        .or_else(|| line.strip_suffix("(failed)"))
        .unwrap_or(line);
    line.trim_end()
        .strip_suffix(" s")?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

/// The seconds `--timings` gives `name` in `stderr` (a phase, or a step by the start of its
/// words), if it lists it.
fn seconds(stderr: &str, name: &str) -> Option<f64> {
    let table = &stderr[stderr.find("timings:\n")?..];
    table
        .lines()
        .find_map(|line| figure(line.trim_start().strip_prefix(name)?))
}

#[test]
fn timings_say_where_a_plan_and_a_run_spent_their_time() {
    let s = LocalStage::new(&["flock", "sha256sum"]);
    s.commit("1.0.0", "blue-green");
    // Not asked for: not printed.
    s.run(&["plan"]).code(10).stderr_lacks("timings:");

    let plan = s.run(&["plan", "--timings"]);
    plan.code(10)
        .stdout_has("start local/demo 1.0.0 in slot blue on here");
    for phase in [
        "read the desired state",
        "connect (1 host)",
        "read the commit applied",
        "observe",
        "plan",
        "total",
    ] {
        assert!(
            seconds(&plan.stderr, phase).is_some(),
            "{phase}:\n{}",
            plan.stderr
        );
    }
    // A plan runs no step.
    plan.stderr_lacks("steps, slowest first");
    assert_eq!(seconds(&plan.stderr, "execute"), None, "{}", plan.stderr);
    assert!(
        !plan.stdout.contains("timings:"),
        "the plan's output is only the plan"
    );

    let run = s.run(&["reconcile", "--once", "--timings"]);
    run.code(0);
    let total = seconds(&run.stderr, "total").expect("total");
    for phase in [
        "connect (1 host)",
        "read suspensions",
        "take the lease",
        "observe",
        "plan",
        "execute",
        "append the audit line",
    ] {
        let took =
            seconds(&run.stderr, phase).unwrap_or_else(|| panic!("{phase}:\n{}", run.stderr));
        assert!(took <= total, "{phase} {took} s > total {total} s");
    }
    // Every step, with what it took: the probe waits for two answers 200 ms apart, so it cannot
    // take less; the execute phase holds every step.
    let probe = seconds(&run.stderr, "probe local/demo slot blue on here").expect("probe");
    assert!(probe >= 0.2, "probe {probe} s:\n{}", run.stderr);
    let start = seconds(&run.stderr, "start local/demo 1.0.0 in slot blue on here").expect("start");
    let execute = seconds(&run.stderr, "execute").unwrap();
    // (Each figure rounded to the millisecond.)
    assert!(start + probe <= execute + 0.002, "{}", run.stderr);
    // Slowest first.
    let table = &run.stderr[run.stderr.find("steps, slowest first:").unwrap()..];
    let steps: Vec<f64> = table
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with("    "))
        .map(|l| figure(l).unwrap_or_else(|| panic!("{l}")))
        .collect();
    assert!(steps.len() >= 4, "{}", run.stderr);
    assert!(steps.windows(2).all(|w| w[0] >= w[1]), "{steps:?}");
    assert!(s.serving().contains("1.0.0"), "{}", s.serving());
}
