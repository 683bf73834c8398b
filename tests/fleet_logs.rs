//! `kube-free logs` over SSH on a real fleet (two app hosts, each with its own sshd): the SSH
//! transport streams a command's stdout and stderr line by line with its exit status, and `logs
//! --follow` of a slot on both hosts prefixes each line with its host and slot, shows a line written
//! after it started, and ends with exit 0 on SIGINT. The logs are files where the process runtime
//! keeps them (no deployment: a slot named with `--slot` is read without an instance).

mod common;
#[path = "fleet/mod.rs"]
mod fleet;
#[path = "fleet_app/mod.rs"]
mod fleet_app;

use fleet_app::Setup;
use kube_free::drivers::ssh::{SshOptions, SshTarget, SshTransport};
use kube_free::drivers::{Cmd, Line, Stream, Transport};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Waits (at most 20 s) until `lines` has given every one of `wanted`, in any order.
fn wait_for_all(lines: &std::sync::mpsc::Receiver<String>, wanted: &[String]) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while !wanted.iter().all(|w| seen.contains(w)) {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("not all of {wanted:?} within 20 s; got {seen:#?}"),
        }
    }
    seen
}

fn append(path: &PathBuf, line: &str) {
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    writeln!(f, "{line}").unwrap();
}

#[test]
fn logs_are_streamed_over_ssh_and_followed_on_two_hosts() {
    let s = Setup::new(&["web-1", "web-2"], "blue-green");
    let f = &s.fleet;

    // The transport itself: lines of stdout and stderr as they come, and the exit status.
    let runtime_dir = tempfile::Builder::new()
        .prefix("kf-t")
        .tempdir_in("/tmp")
        .unwrap();
    let options = SshOptions::new(
        runtime_dir.path(),
        Some(f.known_hosts().to_owned()),
        Some(f.identity_file().to_owned()),
        Duration::from_secs(5),
    )
    .unwrap();
    let target = SshTarget {
        host: "web-1".into(),
        address: f.address("web-1"),
        user: "root".into(),
        port: 22,
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let t = rt
        .block_on(SshTransport::connect(&target, &options))
        .unwrap();
    let cmd = Cmd::read([
        "sh",
        "-c",
        "echo one; echo oops >&2; sleep 0.2; printf 'two words'; exit 3",
    ]);
    let (status, lines) = rt.block_on(async {
        let (to, mut from) = tokio::sync::mpsc::channel(4);
        let collect = async {
            let mut all: Vec<Line> = Vec::new();
            while let Some(l) = from.recv().await {
                all.push(l);
            }
            all
        };
        tokio::join!(t.stream(&cmd, to), collect)
    });
    assert_eq!(status.unwrap(), Some(3));
    let text = |stream| -> Vec<String> {
        lines
            .iter()
            .filter(|l| l.stream == stream)
            .map(|l| String::from_utf8_lossy(&l.text).into_owned())
            .collect()
    };
    assert_eq!(text(Stream::Stdout), ["one", "two words"]);
    assert_eq!(text(Stream::Stderr), ["oops"]);
    rt.block_on(t.close());

    // The logs the process runtime would have left in slot blue on both hosts.
    let log = |host: &str| f.state_dir(host).join("production/demo/blue.log");
    for host in ["web-1", "web-2"] {
        std::fs::create_dir_all(log(host).parent().unwrap()).unwrap();
        std::fs::write(log(host), format!("old {host}\nlast {host}\n")).unwrap();
    }
    let out = s.kube_free(&[
        "logs",
        "demo",
        "--env",
        "production",
        "--slot",
        "blue",
        "-n",
        "1",
    ]);
    out.code(0);
    assert_eq!(
        out.stdout,
        format!(
            "==> web-1/blue (no instance, {}) <==\nlast web-1\n==> web-2/blue (no instance, {}) <==\nlast web-2\n",
            log("web-1").display(),
            log("web-2").display()
        )
    );

    let mut follow = s.spawn(&[
        "logs",
        "demo",
        "--env",
        "production",
        "--slot",
        "blue",
        "-n",
        "1",
        "--follow",
    ]);
    let (tx, lines) = std::sync::mpsc::channel();
    let stdout = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = wait_for_all(
        &lines,
        &[
            "web-1/blue | last web-1".into(),
            "web-2/blue | last web-2".into(),
        ],
    );
    assert_eq!(first.len(), 2, "{first:?}");
    append(&log("web-2"), "new web-2");
    assert_eq!(
        wait_for_all(&lines, &["web-2/blue | new web-2".into()]),
        ["web-2/blue | new web-2"]
    );
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
    assert!(stderr.contains("==> web-1/blue (no instance"), "{stderr}");

    // Its SSH channels are closed; each remote `tail -F` ends at its next write (SIGPIPE).
    let tails = || {
        let out = std::process::Command::new("pgrep")
            .args([
                "-f",
                &format!("tail -n 1 -F {}", f.state_dir("web-1").display()),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    append(&log("web-1"), "after web-1");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !tails().is_empty() {
        assert!(
            Instant::now() < deadline,
            "a remote tail still runs: {}",
            tails()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
