//! `kube-free logs` from the command line, on this machine: a desired state with `transport: local`
//! in a real Git repository, the demo app deployed by `reconcile --once` (the process runtime,
//! behind a HAProxy of the test's own) and then replaced by the next version. What `logs` prints of
//! the instances' log files (header, `--lines`, a stopped instance's log with `--slot`, a slot with
//! no log), `--follow` until SIGINT (exit 0) with a line the next deployment writes, and the bad
//! input it refuses (exit 2, before any host is contacted).

mod common;
use common::*;
use std::io::BufRead;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

type Setup = LocalStage;

impl LocalStage {
    /// Commits `version` of the demo app and deploys it.
    fn deploy(&self, version: &str) {
        self.commit(version, "blue-green");
        self.run(&["reconcile", "--once"]).code(0);
    }

    fn log(&self, slot: &str) -> String {
        self.state
            .join(format!("local/demo/{slot}.log"))
            .display()
            .to_string()
    }
}

/// Lines of a child's stdout as they come, read on a thread of their own.
fn lines_of(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits (at most `limit`) for a line with `needle`; every line read on the way.
fn wait_for(
    lines: &std::sync::mpsc::Receiver<String>,
    needle: &str,
    limit: Duration,
) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                let found = line.contains(needle);
                seen.push(line);
                if found {
                    return seen;
                }
            }
            Err(_) => panic!("no line with {needle:?} within {limit:?}; got {seen:#?}"),
        }
    }
}

#[test]
fn logs_prints_and_follows_what_the_instances_wrote() {
    let s = Setup::new(&[]);
    let [_, blue, green] = s.ports;
    s.deploy("1.0.0");

    // The one instance: blue, with the line the demo app writes when it listens.
    let out = s.run(&["logs", "demo", "--env", "local"]);
    out.code(0);
    assert_eq!(
        out.stdout,
        format!(
            "==> here/blue (version 1.0.0, {}) <==\nkube-free-demo 1.0.0 listening on 127.0.0.1:{blue}\n",
            s.log("blue")
        )
    );
    // A slot named without an instance or a log: said on stderr, not an error.
    s.run(&["logs", "demo", "--env", "local", "--slot", "green"])
        .code(0)
        .stdout_has(&format!(
            "==> here/green (no instance, {}) <==\n",
            s.log("green")
        ))
        .stderr_has(&format!(
            "here/green: no instance, and no log to read at {} (`tail -n 100 {}` exited 1)",
            s.log("green"),
            s.log("green")
        ));

    // 2.0.0 goes to green; 1.0.0 is stopped, and its log stays.
    s.deploy("2.0.0");
    let out = s.run(&["logs", "demo", "--env", "local", "--host", "here"]);
    out.code(0);
    assert_eq!(
        out.stdout,
        format!(
            "==> here/green (version 2.0.0, {}) <==\nkube-free-demo 2.0.0 listening on 127.0.0.1:{green}\n",
            s.log("green")
        )
    );
    let out = s.run(&["logs", "demo", "--env", "local", "--slot", "blue"]);
    out.code(0);
    let text: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        text[0],
        format!("==> here/blue (no instance, {}) <==", s.log("blue"))
    );
    assert_eq!(
        text[1],
        format!("kube-free-demo 1.0.0 listening on 127.0.0.1:{blue}")
    );
    assert!(text.len() >= 4, "{}", out.stdout);
    assert_eq!(text.last(), Some(&"kube-free-demo: stopped"));
    // --lines limits each log.
    let out = s.run(&[
        "logs", "demo", "--env", "local", "--slot", "blue", "--lines", "1",
    ]);
    out.code(0);
    assert_eq!(
        out.stdout,
        format!(
            "==> here/blue (no instance, {}) <==\nkube-free-demo: stopped\n",
            s.log("blue")
        )
    );

    // --follow: the end of blue's log, then what 3.0.0 writes there when the next deployment
    // starts it; one log, so no prefix. SIGINT ends it with exit 0.
    let mut follow = kube_free_command(
        Path::new("."),
        &[
            "logs",
            "demo",
            "--env",
            "local",
            "--slot",
            "blue",
            "--lines",
            "1",
            "--follow",
            "--repo",
            s.repo.path_str(),
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let lines = lines_of(&mut follow);
    let before = wait_for(&lines, "kube-free-demo: stopped", Duration::from_secs(20));
    assert_eq!(before, ["kube-free-demo: stopped"]);
    s.deploy("3.0.0");
    let after = wait_for(
        &lines,
        &format!("kube-free-demo 3.0.0 listening on 127.0.0.1:{blue}"),
        Duration::from_secs(30),
    );
    assert_eq!(
        after,
        [format!(
            "kube-free-demo 3.0.0 listening on 127.0.0.1:{blue}"
        )]
    );
    let started = Instant::now();
    let _ = std::process::Command::new("kill")
        .args(["-INT", &follow.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = follow.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "--follow did not end on SIGINT");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(follow.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(0), "stderr:\n{stderr}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        stderr,
        format!("==> here/blue (no instance, {}) <==\n", s.log("blue")),
        "the header on stderr, nothing else"
    );
    // The `tail -F` it ran is gone with it.
    let tails = std::process::Command::new("pgrep")
        .args(["-f", &format!("tail -n 1 -F {}", s.log("blue"))])
        .output()
        .unwrap();
    assert!(
        tails.stdout.is_empty(),
        "a tail still runs: {}",
        String::from_utf8_lossy(&tails.stdout)
    );
}

/// A desired state whose second app host cannot be reached (a TEST-NET address, as is `lb-1`, a
/// host outside the environment): a command that connected to it would fail after the connect
/// timeout, not exit 2 at once, and `logs` of the local host must not need it. The balancer runs on
/// the local host: one on `lb-1` would reach `here` at its own 127.0.0.1, which `validate` refuses.
fn unreachable_but_here(state: &Path) -> String {
    format!(
        r#"version: 1
hosts:
  here: {{ transport: local, state_dir: {state} }}
  web-2: {{ address: 192.0.2.12 }}
  lb-1: {{ address: 192.0.2.10 }}
balancers:
  edge: {{ kind: haproxy, host: here }}
apps:
  api:
    runtime: {{ kind: process, command: "/opt/api/{{version}}/api --port {{port}}" }}
    slots: {{ blue: 8000, green: 8001 }}
  web:
    runtime: {{ kind: process, command: "/opt/web/{{version}}/web --port {{port}}" }}
    slots: {{ blue: 9000, green: 9001 }}
environments:
  production:
    balancer: edge
    hosts: [here, web-2]
    apps:
      api: {{ version: "1.0", listen: "0.0.0.0:80", strategy: blue-green }}
"#,
        state = state.display()
    )
}

#[test]
fn unknown_names_are_bad_input_and_only_the_hosts_read_are_contacted() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repo::new();
    repo.write("kube-free.yaml", unreachable_but_here(dir.path()));
    repo.commit("production");
    let run = |args: &[&str]| {
        let mut all = vec!["logs"];
        all.extend(args);
        all.extend(["--repo", repo.path_str()]);
        let started = Instant::now();
        let out = kube_free(&all);
        (out, started.elapsed())
    };
    for (args, says) in [
        (
            vec!["shop", "--env", "production"],
            r#"unknown app "shop" (not in the desired state)"#,
        ),
        (
            vec!["api", "--env", "prod"],
            r#"unknown environment "prod" (not in the desired state)"#,
        ),
        (
            vec!["web", "--env", "production"],
            r#"app "web" is not in environment "production" (it has: api)"#,
        ),
        (
            vec!["api", "--env", "production", "--host", "web-9"],
            r#"host "web-9" is not in environment "production" (it has: here, web-2)"#,
        ),
        (
            vec!["api", "--env", "production", "--host", "lb-1"],
            r#"host "lb-1" is not in environment "production" (it has: here, web-2)"#,
        ),
        (
            vec!["api", "--env", "production", "--slot", "red"],
            r#"slot "red" is not in production/api (it has: blue, green)"#,
        ),
    ] {
        let (out, took) = run(&args);
        out.code(2).stderr_has(says);
        assert!(out.stdout.is_empty(), "{args:?}: {}", out.stdout);
        assert!(took < Duration::from_secs(5), "{args:?} took {took:?}");
    }
    run(&["api"]).0.code(2).stderr_has("--env <ENV>");

    // --host here connects to `here` alone (web-2 and lb-1 would time out): a log the process
    // runtime would have left in the slot's place is read, without an instance.
    let log = dir.path().join("production/api/green.log");
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    std::fs::write(&log, "first\nsecond\nthird\n").unwrap();
    let (out, took) = run(&[
        "api",
        "--env",
        "production",
        "--host",
        "here",
        "--slot",
        "green",
        "-n",
        "2",
    ]);
    out.code(0);
    assert_eq!(
        out.stdout,
        format!(
            "==> here/green (no instance, {}) <==\nsecond\nthird\n",
            log.display()
        )
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
    // Without an instance in any slot of `here`, there is nothing to read.
    let (out, _) = run(&["api", "--env", "production", "--host", "here"]);
    out.code(0).stderr_has(
        "no instance of production/api on here: no log to read (--slot reads the log a stopped process left; a container's goes with it)",
    );
    assert!(out.stdout.is_empty(), "{}", out.stdout);
}

#[test]
fn help_says_what_logs_reads() {
    let help = kube_free(&["logs", "--help"]);
    help.code(0);
    let words = help.stdout.split_whitespace().collect::<Vec<_>>().join(" ");
    for needle in [
        "<state_dir>/<env>/<app>/<slot>.log",
        "--follow",
        "HOST/SLOT | ",
        "until SIGINT or SIGTERM (exit 0)",
        "Exit 2 when the app, environment, host or slot is unknown",
    ] {
        assert!(words.contains(needle), "{needle:?} not in {words}");
    }
    kube_free(&["--help"]).code(0).stdout_has("logs");
}
