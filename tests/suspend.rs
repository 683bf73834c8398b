//! `kube-free suspend` and `kube-free resume` from the command line, on a desired state whose
//! balancer host is this machine (`transport: local`) with its `state_dir` in a temporary directory:
//! what they print, the file they keep there, and the inputs they refuse (exit 2, nothing written).
//! What `reconcile` does while suspended is tested on the fakes (`src/reconcile/tests/suspend.rs`)
//! and under `tests/fleet_watch.rs`.

mod common;
use common::*;

/// Two environments on this machine; nothing here can reach another address.
fn local(state: &std::path::Path) -> String {
    format!(
        r#"version: 1
hosts:
  here: {{ transport: local, state_dir: {state} }}
balancers:
  edge: {{ kind: haproxy, host: here, admin_socket: {state}/none.sock, config_file: {state}/kf.cfg }}
apps:
  api:
    runtime: {{ kind: process, command: "/bin/false {{port}}" }}
    slots: {{ blue: 18931, green: 18932 }}
environments:
  production:
    balancer: edge
    hosts: [here]
    apps:
      api: {{ version: "2.0", listen: "127.0.0.1:18930", strategy: blue-green }}
  staging:
    balancer: edge
    hosts: [here]
    apps:
      api: {{ version: "2.0", listen: "127.0.0.1:18933", strategy: blue-green, slots: {{ blue: 18934, green: 18935 }} }}
"#,
        state = state.display()
    )
}

fn run(repo: &Repo, args: &[&str]) -> Run {
    let mut all = args.to_vec();
    all.extend(["--repo", repo.path_str()]);
    let out = kube_free_command(std::path::Path::new("."), &all)
        .env("USER", "alice")
        .output()
        .expect("kube-free runs");
    Run::from(out)
}

#[test]
fn suspend_and_resume_say_what_they_did_and_keep_it_on_the_balancer_host() {
    let state = tempfile::tempdir().unwrap();
    let repo = Repo::new();
    repo.write("kube-free.yaml", local(state.path()));
    repo.commit("two environments");
    let file = state.path().join("suspensions.json");

    let out = run(
        &repo,
        &[
            "suspend",
            "--env",
            "production",
            "--for",
            "2h",
            "--reason",
            "db migration",
        ],
    );
    out.code(0);
    assert!(
        out.stdout.starts_with("suspended production until ")
            && out.stdout.ends_with(" UTC (2h): db migration\n"),
        "{}",
        out.stdout
    );
    let kept: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(kept[0]["env"], "production");
    assert_eq!(kept[0]["reason"], "db migration");
    assert!(
        kept[0]["by"].as_str().unwrap().starts_with("alice@"),
        "{kept}"
    );
    let (at, until) = (
        kept[0]["at"].as_u64().unwrap(),
        kept[0]["until"].as_u64().unwrap(),
    );
    assert_eq!(until - at, 7200);

    run(&repo, &["suspend", "--for", "30m", "--reason", "freeze"])
        .code(0)
        .stdout_has("suspended every environment until ")
        .stdout_has(" UTC (30m): freeze");

    run(&repo, &["resume", "--env", "production"])
        .code(0)
        .stdout_has("resumed production (was suspended: production until ")
        .stdout_has(" by alice@")
        .stdout_has("production is still suspended: every environment until ")
        .stdout_has("`kube-free resume` without --env ends that");
    run(&repo, &["resume", "--env", "production"])
        .code(0)
        .stdout_has("production was not suspended\n");
    run(&repo, &["resume"])
        .code(0)
        .stdout_has("resumed every environment (was suspended: every environment until ");
    run(&repo, &["resume"])
        .code(0)
        .stdout_has("nothing was suspended\n");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "[]");
}

#[test]
fn bad_suspensions_are_refused_and_nothing_is_written() {
    let state = tempfile::tempdir().unwrap();
    let repo = Repo::new();
    repo.write("kube-free.yaml", local(state.path()));
    repo.commit("two environments");
    for (args, says) in [
        (
            vec![
                "suspend",
                "--env",
                "production",
                "--for",
                "0s",
                "--reason",
                "x",
            ],
            "a suspension must last more than 0s and at most 30 days, not 0s",
        ),
        (
            vec!["suspend", "--for", "721h", "--reason", "x"],
            "a suspension must last more than 0s and at most 30 days, not 721h",
        ),
        (
            vec!["suspend", "--for", "1h", "--reason", " "],
            "a suspension needs a reason",
        ),
        (vec!["suspend", "--for", "1h"], "--reason <TEXT>"),
        (vec!["suspend", "--reason", "x"], "--for <DURATION>"),
        (
            vec!["suspend", "--env", "prod", "--for", "1h", "--reason", "x"],
            "unknown environment \"prod\" (not in the desired state)",
        ),
        (
            vec!["resume", "--env", "prod"],
            "unknown environment \"prod\" (not in the desired state)",
        ),
    ] {
        run(&repo, &args).code(2).stderr_has(says);
    }
    assert!(!state.path().join("suspensions.json").exists());
}

#[test]
fn help_says_what_suspend_means() {
    let help = kube_free(&["suspend", "--help"]);
    help.code(0);
    let words = help.stdout.split_whitespace().collect::<Vec<_>>().join(" ");
    for needle in [
        "observe-only",
        "ends by itself",
        "This is not a canary pause",
    ] {
        assert!(words.contains(needle), "{needle:?} not in {words}");
    }
    kube_free(&["--help"])
        .code(0)
        .stdout_has("suspend")
        .stdout_has("resume");
}
