//! Benchmark of kube-free's pure parts at fleet scale (issue 17): `validate` and `plan` over a
//! generated desired state of H hosts in environments of 100 hosts, 20 apps each, blue-green, one
//! balancer per environment. Not a timed test: it prints figures and asserts nothing about them.
//!
//! Run: `cargo bench --bench scale`. It prints, for 500, 1,000 and 5,000 hosts:
//! - the wall time and peak RSS of `kube-free validate --repo <dir>` (the binary, a child process
//!   per size, its peak RSS from `wait4`);
//! - the peak RSS of one plan built and rendered in a process of its own (this bench run again
//!   with `SCALE_RSS=plan:<hosts>`);
//! - then divan's timings of `desired::load` (parse and validate, in memory) and of the planner
//!   (`plan::build` and `render_text`) against a synthetic observed snapshot, in two cases: every
//!   app moving to a new version (a whole blue-green rollout of every instance: the biggest plan)
//!   and everything in sync (a no-op pass: what a watcher pays every cycle).
//!
//! Settings (environment): `SCALE_SIZES` (comma-separated host counts for the RSS figures,
//! default `500,1000,5000`), `DIVAN_SAMPLE_COUNT` and divan's other flags after `--`.

use kube_free::desired::{self, DesiredState, MemFiles};
use kube_free::names::SlotRef;
use kube_free::observed::{Admin, Check, Instance, ObservedState, Server, ServerCounters};
use kube_free::plan::{self, Scope};
use kube_free::state::InstanceRecord;
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::process::Command;
use std::time::Instant;

const KUBE_FREE: &str = env!("CARGO_BIN_EXE_kube-free");
/// Hosts per environment, and apps per environment: the shape of the issue's measurements.
const ENV_HOSTS: usize = 100;
const APPS: usize = 20;
const SIZES: [usize; 3] = [500, 1_000, 5_000];
const OLD: &str = "1.0.0";
const NEW: &str = "2.0.0";

fn main() {
    if let Ok(what) = std::env::var("SCALE_RSS") {
        return measure_one(&what);
    }
    let sizes: Vec<usize> = std::env::var("SCALE_SIZES")
        .ok()
        .map(|s| {
            s.split(',')
                .map(|n| n.trim().parse().expect("SCALE_SIZES"))
                .collect()
        })
        .unwrap_or_else(|| SIZES.to_vec());
    println!("scale bench: {ENV_HOSTS} hosts per environment, {APPS} apps each, blue-green");
    for &hosts in &sizes {
        validate_binary(hosts);
        plan_rss(hosts);
    }
    divan::main();
}

/// `kube-free validate` on a generated directory: wall time and peak RSS of the child.
fn validate_binary(hosts: usize) {
    let dir = tempfile::Builder::new()
        .prefix("kf-scale.")
        .tempdir_in("/tmp")
        .expect("temporary directory");
    for (path, content) in files(hosts).0 {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    // kube-free reads the desired state from a commit.
    for args in [
        &["init", "-q"][..],
        &["add", "."],
        &[
            "-c",
            "user.name=bench",
            "-c",
            "user.email=bench@localhost",
            "commit",
            "-qm",
            "generated",
        ],
    ] {
        let ok = Command::new("git")
            .args(args)
            .current_dir(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "git {args:?} failed in {}", dir.path().display());
    }
    let mut best = f64::MAX;
    let mut rss = 0;
    for _ in 0..3 {
        let (secs, kib, ok) = run_measured(
            Command::new(KUBE_FREE)
                .args(["validate", "--repo"])
                .arg(dir.path()),
        );
        assert!(
            ok,
            "kube-free validate failed on the generated desired state"
        );
        best = best.min(secs);
        rss = rss.max(kib);
    }
    println!(
        "validate (binary)  {hosts:>5} hosts × {APPS} apps: {best:.3} s (best of 3), peak RSS {:.0} MB",
        rss as f64 / 1024.0
    );
}

/// One plan built and rendered in a child process of its own: its peak RSS, generation included.
fn plan_rss(hosts: usize) {
    let exe = std::env::current_exe().expect("current exe");
    let (secs, kib, ok) = run_measured(Command::new(exe).env("SCALE_RSS", format!("plan:{hosts}")));
    assert!(ok, "the plan child failed");
    println!(
        "plan (process)     {hosts:>5} hosts × {APPS} apps: {secs:.3} s for generating, loading, observing and planning, peak RSS {:.0} MB",
        kib as f64 / 1024.0
    );
}

/// The child's side of [`plan_rss`].
fn measure_one(what: &str) {
    let hosts: usize = what
        .strip_prefix("plan:")
        .and_then(|n| n.parse().ok())
        .expect("SCALE_RSS=plan:<hosts>");
    let desired = load(hosts);
    let observed = serving(&desired, OLD);
    let started = Instant::now();
    let plan = plan::build(&desired, &observed, &BTreeSet::new(), &Scope::default());
    let text = plan.render_text();
    eprintln!(
        "plan child: {} steps, {} bytes of text, built and rendered in {:.3} s",
        plan.graph.node_count(),
        text.len(),
        started.elapsed().as_secs_f64()
    );
}

/// Runs `cmd` to its end: (wall seconds, peak RSS in KiB, success). The child is reaped by
/// `wait4`, which returns its own peak RSS (std's `wait` does not).
#[allow(clippy::zombie_processes)]
fn run_measured(cmd: &mut Command) -> (f64, i64, bool) {
    let started = Instant::now();
    let child = cmd
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; `usage` is a valid out-pointer.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32, "wait4");
    let secs = started.elapsed().as_secs_f64();
    (
        secs,
        usage.ru_maxrss,
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
    )
}

fn host(n: usize) -> String {
    format!("h-{n:05}")
}

fn app(n: usize) -> String {
    format!("app-{n:02}")
}

/// The generated repository: `kube-free.yaml` and one file per environment, every app at [`NEW`].
fn files(hosts: usize) -> MemFiles {
    let envs = hosts.div_ceil(ENV_HOSTS);
    let mut root = String::from("version: 1\nhosts:\n");
    for h in 0..hosts {
        let _ = writeln!(
            root,
            "  {}: {{ address: 10.{}.{}.{}, user: deploy }}",
            host(h),
            h / 65536,
            h / 256 % 256,
            h % 256
        );
    }
    for e in 0..envs {
        let _ = writeln!(
            root,
            "  lb-{e:03}: {{ address: 10.200.{}.{}, user: deploy }}",
            e / 256,
            e % 256
        );
    }
    root.push_str("ssh:\n  known_hosts: ssh/known_hosts\nbalancers:\n");
    for e in 0..envs {
        let _ = writeln!(
            root,
            "  lb-{e:03}: {{ kind: haproxy, host: lb-{e:03}, admin_socket: /run/haproxy/admin.sock, config_file: /etc/haproxy/kube-free.cfg, reload_command: \"sudo systemctl reload haproxy\" }}"
        );
    }
    root.push_str("apps:\n");
    for a in 0..APPS {
        let port = 8000 + 2 * a;
        let _ = writeln!(
            root,
            "  {}:\n    runtime: {{ kind: process, command: \"/opt/{}/{{version}}/bin/app --listen 0.0.0.0:{{port}}\" }}\n    slots: {{ blue: {port}, green: {} }}\n    probe: {{ path: /healthz }}",
            app(a),
            app(a),
            port + 1
        );
    }
    let mut files = MemFiles::default()
        .with("kube-free.yaml", root)
        .with("ssh/known_hosts", "");
    for e in 0..envs {
        let mut env = format!("balancer: lb-{e:03}\nhosts: [");
        let members: Vec<String> = (e * ENV_HOSTS..((e + 1) * ENV_HOSTS).min(hosts))
            .map(host)
            .collect();
        env.push_str(&members.join(", "));
        env.push_str("]\napps:\n");
        for a in 0..APPS {
            let _ = writeln!(
                env,
                "  {}: {{ version: \"{NEW}\", listen: \"0.0.0.0:{}\", strategy: blue-green }}",
                app(a),
                10_000 + a
            );
        }
        files = files.with(&format!("environments/env-{e:03}.yaml"), env);
    }
    files
}

fn load(hosts: usize) -> DesiredState {
    desired::load(&files(hosts)).expect("the generated desired state is valid")
}

/// A snapshot in which every deployment of `desired` serves `version` from blue on every host,
/// green in maintenance with nothing running; no balancer config is stale.
fn serving(desired: &DesiredState, version: &str) -> ObservedState {
    let mut observed = ObservedState::default();
    for (env, app, _) in desired.deployments() {
        for host in &env.hosts {
            let at = SlotRef::new(&env.name, app, host, "blue");
            let record = InstanceRecord {
                env: env.name.to_string(),
                app: app.to_owned(),
                slot: "blue".into(),
                version: version.into(),
                revision: "r".into(),
                port: desired.slot_port(&env.name, app, "blue").unwrap_or(0),
                pid: 1,
                start_ticks: 1,
                started_at: 0,
                argv: vec![],
                container: None,
                spec: Some(desired.spec(&at, version)),
            };
            observed
                .hosts
                .entry(host.to_string())
                .or_default()
                .instances
                .insert(
                    (env.name.to_string(), app.to_owned(), "blue".into()),
                    Instance {
                        record,
                        alive: true,
                        ready: Some(true),
                    },
                );
            let servers = &mut observed
                .balancers
                .entry(env.balancer.to_string())
                .or_default()
                .servers;
            servers.insert(at.server_key(), server(100, Admin::Ready, true));
            let green = SlotRef::new(&env.name, app, host, "green");
            servers.insert(green.server_key(), server(0, Admin::Maint, false));
        }
    }
    observed
}

fn server(weight: u32, admin: Admin, up: bool) -> Server {
    Server {
        admin,
        up,
        check: if up { Check::Passed } else { Check::None },
        weight,
        sessions: 0,
        counters: ServerCounters::default(),
        label: if up { "UP" } else { "MAINT" }.into(),
    }
}

/// Parsing and validating the generated repository, held in memory.
#[divan::bench(args = SIZES, sample_count = 5, sample_size = 1)]
fn validate(bencher: divan::Bencher, hosts: usize) {
    let files = files(hosts);
    bencher.bench(|| desired::load(&files).expect("valid"));
}

/// Building and rendering the plan of a blue-green rollout of every app on every host.
#[divan::bench(args = SIZES, sample_count = 5, sample_size = 1)]
fn plan_rollout(bencher: divan::Bencher, hosts: usize) {
    let desired = load(hosts);
    let observed = serving(&desired, OLD);
    bencher.bench(|| {
        let plan = plan::build(&desired, &observed, &BTreeSet::new(), &Scope::default());
        plan.render_text().len()
    });
}

/// Building the plan of a fleet in sync: the no-op pass.
#[divan::bench(args = SIZES, sample_count = 5, sample_size = 1)]
fn plan_in_sync(bencher: divan::Bencher, hosts: usize) {
    let desired = load(hosts);
    let observed = serving(&desired, NEW);
    bencher.bench(|| {
        let plan = plan::build(&desired, &observed, &BTreeSet::new(), &Scope::default());
        assert!(plan.is_empty(), "{}", plan.render_text());
        plan.render_text().len()
    });
}
