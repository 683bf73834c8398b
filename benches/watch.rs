//! Benchmark of `kube-free watch` (issue 12): idle RSS and CPU over 60 s of no-change polls, and
//! the cost of a no-change cycle (a full pass that finds nothing to do). Not a timed test: it
//! prints figures and asserts nothing about them.
//!
//! Run: `cargo bench --bench watch`. Needs `haproxy` and `git` on PATH and the demo app, which it
//! looks for in `$DEMO_DIR`, else next to this bench in `<target>/release/examples`, else builds
//! with `cargo build --release --example kube-free-demo`. Everything runs on 127.0.0.1 with ports
//! picked free at start (never the quickstart's 18000/18080/18081), under a temporary directory;
//! HAProxy, the demo instances and the watcher are stopped on exit and on panic.
//!
//! Settings (environment): `IDLE_SECS` (default 60), `PASS_SECS` (default 30), `REPO_MODE`
//! (`url`, the default: `--repo file://…`, so every poll is a real Git fetch into the cache; or
//! `dir`: `--repo <work tree>`, read in place), `KEEP_TMP=1` to leave the temporary directory.

use serde_json::Value;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const KUBE_FREE: &str = env!("CARGO_BIN_EXE_kube-free");

fn main() {
    let idle_secs = env_u64("IDLE_SECS", 60);
    let pass_secs = env_u64("PASS_SECS", 30);
    let repo_mode = std::env::var("REPO_MODE").unwrap_or_else(|_| "url".into());
    for tool in ["haproxy", "git"] {
        if Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            eprintln!("watch bench: {tool} is missing (apt-get install -y haproxy git)");
            std::process::exit(2);
        }
    }
    let demo_dir = demo_dir();

    let tmp = tempfile::Builder::new()
        .prefix("kf-watch-bench.")
        .tempdir_in("/tmp")
        .expect("temporary directory");
    let work = tmp.path().to_path_buf();
    let ports = Ports::pick();
    println!(
        "watch bench: work dir {}, frontend :{}, slots :{} :{}, watcher :{}, repo mode {repo_mode}",
        work.display(),
        ports.frontend,
        ports.blue,
        ports.green,
        ports.watcher
    );

    // Stopped in reverse order of declaration: the watcher, then the demo instances, then HAProxy.
    let _haproxy = start_haproxy(&work);
    let _demos = DemoGuard {
        ports: [ports.blue, ports.green],
    };
    let repo = make_repo(&work, &ports);
    let repo_arg = match repo_mode.as_str() {
        "dir" => repo.display().to_string(),
        _ => format!("file://{}", repo.display()),
    };
    let path_env = format!(
        "{}:{}",
        demo_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let kf = |args: &[String]| {
        let mut c = Command::new(KUBE_FREE);
        c.args(args)
            .args(["--repo", &repo_arg, "--rev", "main"])
            .arg("--cache-dir")
            .arg(work.join("cache"))
            .env("PATH", &path_env)
            .env("KUBE_FREE_LOG", "warn");
        c
    };

    let t = Instant::now();
    let status = kf(&["reconcile".into(), "--once".into()])
        .status()
        .expect("run kube-free reconcile");
    assert!(status.success(), "reconcile --once: {status}");
    println!(
        "deployed 1.0.0 in {:.1}s; served now: {}",
        t.elapsed().as_secs_f64(),
        http_get(ports.frontend, "/version")
            .map(|b| b.trim().to_owned())
            .unwrap_or_else(|e| format!("({e})"))
    );

    // 1. Idle: polls only.
    let idle = {
        let watcher = Watcher::start(kf(&watch_args(ports.watcher, "1h")), ports.watcher);
        idle_run(&watcher, idle_secs)
    };
    // 2. A full pass at every poll.
    let pass = {
        let watcher = Watcher::start(kf(&watch_args(ports.watcher, "1s")), ports.watcher);
        pass_run(&watcher, pass_secs)
    };
    report(&idle, &pass, idle_secs, pass_secs);

    if std::env::var("KEEP_TMP").as_deref() == Ok("1") {
        let _ = tmp.keep();
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn watch_args(port: u16, resync: &str) -> Vec<String> {
    [
        "watch",
        "--interval",
        "1s",
        "--resync",
        resync,
        "--listen",
        &format!("127.0.0.1:{port}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `$DEMO_DIR`, else `<target>/release/examples` next to this bench, built there if missing.
fn demo_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("DEMO_DIR") {
        return PathBuf::from(dir);
    }
    // This bench runs as <target>/release/deps/watch-<hash>.
    let exe = std::env::current_exe().expect("current exe");
    let release = exe
        .parent()
        .and_then(Path::parent)
        .expect("<target>/release")
        .to_path_buf();
    let dir = release.join("examples");
    if !dir.join("kube-free-demo").exists() {
        println!("building the demo app: cargo build --release --example kube-free-demo");
        let target = release.parent().expect("<target>");
        let status = Command::new(env!("CARGO"))
            .args(["build", "--release", "--example", "kube-free-demo"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("CARGO_TARGET_DIR", target)
            .status()
            .expect("run cargo");
        assert!(status.success(), "building kube-free-demo: {status}");
    }
    dir
}

struct Ports {
    frontend: u16,
    blue: u16,
    green: u16,
    watcher: u16,
}

impl Ports {
    /// Four distinct free ports on 127.0.0.1 (held together while picked, so all differ).
    fn pick() -> Ports {
        let avoid = [18000, 18080, 18081];
        let mut held = Vec::new();
        while held.len() < 4 {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
            if !avoid.contains(&l.local_addr().unwrap().port()) {
                held.push(l);
            }
        }
        let p: Vec<u16> = held
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        Ports {
            frontend: p[0],
            blue: p[1],
            green: p[2],
            watcher: p[3],
        }
    }
}

/// Sends SIGTERM to `pid`, waits up to `grace` for it to go, then SIGKILL.
fn terminate(pid: i32, grace: Duration) {
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let end = Instant::now() + grace;
    while Instant::now() < end {
        if !Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

struct HaproxyGuard {
    pidfile: PathBuf,
}

impl Drop for HaproxyGuard {
    fn drop(&mut self) {
        let Some(pid) = std::fs::read_to_string(&self.pidfile)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        else {
            return;
        };
        if cmdline(pid).contains("haproxy") {
            terminate(pid, Duration::from_secs(5));
        }
    }
}

fn start_haproxy(work: &Path) -> HaproxyGuard {
    let hx = work.join("haproxy");
    std::fs::create_dir_all(&hx).unwrap();
    std::fs::write(
        hx.join("base.cfg"),
        format!(
            "global\n    master-worker\n    pidfile {d}/haproxy.pid\n    stats socket {d}/admin.sock mode 600 level admin expose-fd listeners\ndefaults\n    timeout connect 2s\n    timeout client 30s\n    timeout server 30s\n",
            d = hx.display()
        ),
    )
    .unwrap();
    std::fs::write(hx.join("kube-free.cfg"), "").unwrap();
    let guard = HaproxyGuard {
        pidfile: hx.join("haproxy.pid"),
    };
    let status = Command::new("haproxy")
        .arg("-W")
        .arg("-D")
        .arg("-f")
        .arg(hx.join("base.cfg"))
        .arg("-f")
        .arg(hx.join("kube-free.cfg"))
        .status()
        .expect("run haproxy");
    assert!(status.success(), "haproxy: {status}");
    let sock = hx.join("admin.sock");
    let end = Instant::now() + Duration::from_secs(5);
    while !sock.exists() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(sock.exists(), "HAProxy's admin socket did not appear");
    guard
}

/// Stops the demo instances kube-free started: the processes (each leads its own session) whose
/// command line is the demo app on one of this bench's slot ports.
struct DemoGuard {
    ports: [u16; 2],
}

impl Drop for DemoGuard {
    fn drop(&mut self) {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return;
        };
        let mine: Vec<i32> = dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&pid| {
                let c = cmdline(pid);
                c.contains("kube-free-demo")
                    && self
                        .ports
                        .iter()
                        .any(|p| c.contains(&format!("127.0.0.1:{p} ")))
            })
            .collect();
        for pid in mine {
            terminate(pid, Duration::from_secs(10));
        }
    }
}

fn git(repo: &Path, args: &[&str]) {
    let status = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["-c", "user.name=bench", "-c", "user.email=bench@localhost"])
        .args(args)
        .status()
        .expect("run git");
    assert!(status.success(), "git {args:?}: {status}");
}

/// The desired state (the quickstart's, on this bench's paths and ports), committed to a new
/// repository on branch `main`.
fn make_repo(work: &Path, ports: &Ports) -> PathBuf {
    let repo = work.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let w = work.display();
    let yaml = format!(
        r#"version: 1
hosts:
  here:
    transport: local
    state_dir: {w}/state
balancers:
  edge:
    kind: haproxy
    host: here
    admin_socket: {w}/haproxy/admin.sock
    config_file: {w}/haproxy/kube-free.cfg
    reload_command: "sh -c 'kill -USR2 \"$(cat {w}/haproxy/haproxy.pid)\"'"
apps:
  demo:
    runtime:
      kind: process
      command: "kube-free-demo --listen 127.0.0.1:{{port}} --version {{version}}"
    slots: {{ blue: {blue}, green: {green} }}
    probe:
      path: /readyz
      interval: 200ms
      timeout: 1s
      healthy_after: 3
      deadline: 30s
    drain: 5s
    stop_timeout: 10s
    bake: 5s
environments:
  local:
    balancer: edge
    hosts: [here]
    apps:
      demo:
        version: "1.0.0"
        listen: "127.0.0.1:{frontend}"
        strategy: blue-green
"#,
        blue = ports.blue,
        green = ports.green,
        frontend = ports.frontend,
    );
    std::fs::write(repo.join("kube-free.yaml"), yaml).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "demo 1.0.0"]);
    repo
}

/// A `kube-free watch` child, stopped (SIGTERM, then SIGKILL) when dropped.
struct Watcher {
    child: Child,
    port: u16,
}

impl Watcher {
    /// Starts it and waits until its first cycle finished in sync.
    fn start(mut cmd: Command, port: u16) -> Watcher {
        let child = cmd
            .stdout(Stdio::null())
            .spawn()
            .expect("start kube-free watch");
        let mut w = Watcher { child, port };
        let t = Instant::now();
        let end = t + Duration::from_secs(60);
        loop {
            if let Some(s) = w.child.try_wait().unwrap() {
                panic!("kube-free watch exited: {s}");
            }
            if let Ok(v) = w.status() {
                let c = &v["cycle"];
                if c["finished_at"].as_u64().unwrap_or(0) != 0 {
                    assert_eq!(c["outcome"], "in sync", "first cycle: {c}");
                    println!(
                        "watcher pid {} up, first cycle in sync after {:.2}s ({} ms)",
                        w.pid(),
                        t.elapsed().as_secs_f64(),
                        c["duration_ms"]
                    );
                    return w;
                }
            }
            assert!(Instant::now() < end, "no finished cycle within 60 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn status(&self) -> Result<Value, String> {
        let body = http_get(self.port, "/api/v1/status")?;
        serde_json::from_str(&body).map_err(|e| e.to_string())
    }

    fn metrics(&self) -> Result<Metrics, String> {
        http_get(self.port, "/metrics").map(|t| Metrics::parse(&t))
    }

    /// (RSS in KiB, threads, utime+stime, cutime+cstime in seconds) from /proc: the last is the
    /// CPU of its children that it waited for (the commands the local transport runs).
    fn proc_sample(&self) -> (u64, u64, f64, f64) {
        let pid = self.pid();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|r| r.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let rest: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        // After the command: state is field 3, utime 14, stime 15, cutime 16, cstime 17 (1-based).
        let ticks = |i: usize, j: usize| {
            (rest[i].parse::<u64>().unwrap() + rest[j].parse::<u64>().unwrap()) as f64
        };
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        (
            field("VmRSS:"),
            field("Threads:"),
            ticks(11, 12) / hz,
            ticks(13, 14) / hz,
        )
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        terminate(self.pid(), Duration::from_secs(10));
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.0 GET on 127.0.0.1 (no client library needed).
fn http_get(port: u16, path: &str) -> Result<String, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").map_err(|e| e.to_string())?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).map_err(|e| e.to_string())?;
    let (head, body) = buf.split_once("\r\n\r\n").ok_or("no header end")?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        return Err(head.lines().next().unwrap_or("").to_owned());
    }
    Ok(body.to_owned())
}

/// The parts of `/metrics` this bench reads.
#[derive(Debug, Default, Clone)]
struct Metrics {
    /// `kube_free_cycles_total` by `result`.
    cycles: Vec<(String, f64)>,
    duration_sum: f64,
    duration_count: f64,
}

impl Metrics {
    fn parse(text: &str) -> Metrics {
        let mut m = Metrics::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let value: f64 = value.parse().unwrap_or(f64::NAN);
            if let Some(labels) = name.strip_prefix("kube_free_cycles_total{") {
                let result = labels
                    .split_once("result=\"")
                    .and_then(|(_, r)| r.split_once('"'))
                    .map(|(r, _)| r.to_owned())
                    .unwrap_or_default();
                m.cycles.push((result, value));
            } else if name == "kube_free_cycle_duration_seconds_sum" {
                m.duration_sum = value;
            } else if name == "kube_free_cycle_duration_seconds_count" {
                m.duration_count = value;
            }
        }
        m
    }

    fn cycles(&self, result: &str) -> Option<f64> {
        self.cycles
            .iter()
            .find(|(r, _)| r == result)
            .map(|(_, v)| *v)
    }

    fn cycles_text(&self) -> String {
        if self.cycles.is_empty() {
            return "(none)".into();
        }
        self.cycles
            .iter()
            .map(|(r, v)| format!("{r}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

struct Run {
    rss_kib: Vec<u64>,
    threads: Vec<u64>,
    cpu_secs: f64,
    /// CPU of the children it reaped (`sh`, `cat` … run by the local transport).
    child_cpu_secs: f64,
    wall_secs: f64,
    m0: Metrics,
    m1: Metrics,
    /// Distinct `cycle.last_poll_at` values seen (Unix seconds, so polls within one second are one).
    polls_seen: usize,
    first_poll: u64,
    last_poll: u64,
    /// Distinct finished cycles seen: (finished_at, duration_ms, outcome).
    cycles_seen: BTreeSet<(u64, u64, String)>,
    /// Outcomes of `/api/v1/status` at the end.
    end_status: Value,
}

/// Samples /proc every second and the status every `status_every` for `secs` seconds.
fn sample(w: &Watcher, secs: u64, status_every: Duration) -> Run {
    let m0 = w.metrics().expect("metrics");
    let (rss, thr, cpu0, ccpu0) = w.proc_sample();
    let mut run = Run {
        rss_kib: vec![rss],
        threads: vec![thr],
        cpu_secs: 0.0,
        child_cpu_secs: 0.0,
        wall_secs: 0.0,
        m0: m0.clone(),
        m1: m0,
        polls_seen: 0,
        first_poll: 0,
        last_poll: 0,
        cycles_seen: BTreeSet::new(),
        end_status: Value::Null,
    };
    let mut polls = BTreeSet::new();
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let mut next_proc = start + Duration::from_secs(1);
    let mut next_status = start;
    let mut first_cycle = None;
    let mut cpu1 = cpu0;
    let mut ccpu1 = ccpu0;
    while Instant::now() < end {
        let now = Instant::now();
        if now >= next_status {
            next_status += status_every;
            if let Ok(v) = w.status() {
                let c = &v["cycle"];
                if let Some(p) = c["last_poll_at"].as_u64() {
                    polls.insert(p);
                }
                let key = (
                    c["finished_at"].as_u64().unwrap_or(0),
                    c["duration_ms"].as_u64().unwrap_or(0),
                    c["outcome"].as_str().unwrap_or("").to_owned(),
                );
                // The cycle that had finished before sampling began is not counted.
                match &first_cycle {
                    None => first_cycle = Some(key),
                    Some(f) if *f != key => {
                        run.cycles_seen.insert(key);
                    }
                    _ => {}
                }
                run.end_status = v;
            }
        }
        if now >= next_proc {
            next_proc += Duration::from_secs(1);
            let (rss, thr, cpu, ccpu) = w.proc_sample();
            run.rss_kib.push(rss);
            run.threads.push(thr);
            cpu1 = cpu;
            ccpu1 = ccpu;
        }
        let wake = next_proc.min(next_status).min(end);
        std::thread::sleep(wake.saturating_duration_since(Instant::now()));
    }
    run.wall_secs = start.elapsed().as_secs_f64();
    run.cpu_secs = cpu1 - cpu0;
    run.child_cpu_secs = ccpu1 - ccpu0;
    run.m1 = w.metrics().expect("metrics");
    run.polls_seen = polls.len();
    run.first_poll = polls.first().copied().unwrap_or(0);
    run.last_poll = polls.last().copied().unwrap_or(0);
    run
}

fn idle_run(w: &Watcher, secs: u64) -> Run {
    println!("idle: sampling the watcher for {secs}s (--interval 1s --resync 1h)");
    sample(w, secs, Duration::from_secs(1))
}

fn pass_run(w: &Watcher, secs: u64) -> Run {
    println!("full passes: sampling the watcher for {secs}s (--interval 1s --resync 1s)");
    sample(w, secs, Duration::from_millis(200))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn report(idle: &Run, pass: &Run, idle_secs: u64, pass_secs: u64) {
    let delta = |r: &Run, result: &str| {
        r.m1.cycles(result).unwrap_or(0.0) - r.m0.cycles(result).unwrap_or(0.0)
    };
    let idle_unchanged = idle.m1.cycles("unchanged");
    let idle_polls = match idle_unchanged {
        Some(_) => delta(idle, "unchanged"),
        None => idle.polls_seen as f64,
    };
    let passes = pass.m1.duration_count - pass.m0.duration_count;
    let pass_mean_ms = if passes > 0.0 {
        (pass.m1.duration_sum - pass.m0.duration_sum) / passes * 1000.0
    } else {
        f64::NAN
    };
    let in_sync: Vec<u64> = pass
        .cycles_seen
        .iter()
        .filter(|(_, _, o)| o == "in sync")
        .map(|(_, d, _)| *d)
        .collect();
    let seen_mean = in_sync.iter().sum::<u64>() as f64 / in_sync.len().max(1) as f64;
    let seen_max = in_sync.iter().max().copied().unwrap_or(0);
    let other: Vec<&(u64, u64, String)> = pass
        .cycles_seen
        .iter()
        .filter(|(_, _, o)| o != "in sync")
        .collect();
    let cpu_per_poll = idle.cpu_secs / idle_polls.max(1.0);
    let cpu_per_pass = pass.cpu_secs / passes.max(1.0);
    // The pass run polls about once a second too; what a pass adds over a poll.
    let pass_polls = pass.wall_secs / 1.0;
    let cpu_pass_extra = (pass.cpu_secs - cpu_per_poll * pass_polls) / passes.max(1.0);

    let rss = |r: &Run| {
        format!(
            "{:.1} / {:.1} / {:.1}",
            mib(r.rss_kib[0]),
            mib(*r.rss_kib.iter().max().unwrap()),
            mib(*r.rss_kib.last().unwrap())
        )
    };
    let thr = |r: &Run| {
        format!(
            "{}..{}",
            r.threads.iter().min().unwrap(),
            r.threads.iter().max().unwrap()
        )
    };
    println!();
    println!("kube-free watch, one local host, one app (blue-green), HAProxy");
    println!("{:-<78}", "");
    println!(
        "{:<40} {:>17} {:>17}",
        "", "idle (resync 1h)", "pass (resync 1s)"
    );
    println!(
        "{:<40} {:>17} {:>17}",
        "seconds sampled",
        format!("{:.1}", idle.wall_secs),
        format!("{:.1}", pass.wall_secs)
    );
    println!(
        "{:<40} {:>17} {:>17}",
        "RSS MiB start / max / end",
        rss(idle),
        rss(pass)
    );
    println!(
        "{:<40} {:>17} {:>17}",
        "threads min..max",
        thr(idle),
        thr(pass)
    );
    println!(
        "{:<40} {:>17} {:>17}",
        "CPU seconds (utime+stime)",
        format!("{:.2}", idle.cpu_secs),
        format!("{:.2}", pass.cpu_secs)
    );
    println!(
        "{:<40} {:>17} {:>17}",
        "CPU % of one core",
        format!("{:.2}", 100.0 * idle.cpu_secs / idle.wall_secs),
        format!("{:.2}", 100.0 * pass.cpu_secs / pass.wall_secs)
    );
    println!(
        "{:<40} {:>17} {:>17}",
        "children's CPU seconds (cutime+cstime)",
        format!("{:.2}", idle.child_cpu_secs),
        format!("{:.2}", pass.child_cpu_secs)
    );
    println!(
        "{:<40} {:>17} {:>17}",
        "polls (distinct last_poll_at seconds)",
        format!("{} ", idle.polls_seen),
        format!("{} ", pass.polls_seen)
    );
    println!(
        "{:<40} {:>17} {:>17}",
        "passes (cycle_duration_seconds_count +)",
        format!("{}", idle.m1.duration_count - idle.m0.duration_count),
        format!("{passes}")
    );
    println!(
        "{:<40} {:>17} {:>17}",
        "pass duration ms, mean (histogram)",
        "-",
        format!("{pass_mean_ms:.1}")
    );
    println!(
        "{:<40} {:>17} {:>17}",
        "pass duration ms, mean / max (status)",
        "-",
        format!("{seen_mean:.1} / {seen_max}")
    );
    println!(
        "{:<40} {:>17} {:>17}",
        "CPU ms per poll / per pass",
        format!("{:.2}", 1000.0 * cpu_per_poll),
        format!("{:.2}", 1000.0 * cpu_per_pass)
    );
    println!(
        "{:<40} {:>17} {:>17}",
        "CPU ms per poll / per pass, with children",
        format!(
            "{:.2}",
            1000.0 * (idle.cpu_secs + idle.child_cpu_secs) / idle_polls.max(1.0)
        ),
        format!(
            "{:.2}",
            1000.0 * (pass.cpu_secs + pass.child_cpu_secs) / passes.max(1.0)
        )
    );
    println!(
        "{:<40} {:>17} {:>17}",
        "CPU ms a pass adds over a poll (approx.)",
        "-",
        format!("{:.2}", 1000.0 * cpu_pass_extra)
    );
    println!("{:-<78}", "");
    println!(
        "cycles_total idle: before {{{}}}, after {{{}}}",
        idle.m0.cycles_text(),
        idle.m1.cycles_text()
    );
    println!(
        "cycles_total pass: before {{{}}}, after {{{}}}",
        pass.m0.cycles_text(),
        pass.m1.cycles_text()
    );
    if idle_unchanged.is_none() {
        println!(
            "note: /metrics has no kube_free_cycles_total{{result=\"unchanged\"}}: a poll without a pass is not counted \
             (nor observed in cycle_duration_seconds, nor shown in cycle.duration_ms); polls are counted here from \
             /api/v1/status cycle.last_poll_at (Unix seconds, first {} last {}, {} distinct in {idle_secs}s)",
            idle.first_poll, idle.last_poll, idle.polls_seen
        );
    }
    println!(
        "status cycles seen in the pass run (every 200 ms): {} in sync{}; {pass_secs}s sampled",
        in_sync.len(),
        if other.is_empty() {
            String::new()
        } else {
            format!(", others: {other:?}")
        }
    );
    println!("last status cycle: {}", pass.end_status["cycle"]);
}
