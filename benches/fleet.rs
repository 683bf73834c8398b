//! Fleet benchmarks (issue 17), on the test fleet of `tests/fleet` (hosts in network namespaces
//! of this machine, each with its own sshd; HAProxy on `lb-1`; the demo app): figures printed,
//! nothing asserted. Needs root, like the fleet tests.
//!
//! Run: `cargo bench --bench fleet`. It prints:
//! - **no-op runs over 16 app hosts**: the wall time of `kube-free reconcile --once` and of
//!   `kube-free plan` on a fleet in sync, against the equivalent Ansible check on the same fleet —
//!   a playbook with `gather_facts: false`, pipelining and forks = hosts that lists the state
//!   directory and checks the app's processes on each app host and reads HAProxy's stats on the
//!   balancer host — and the ratio. `ansible-core` is installed from PyPI into a virtualenv
//!   first (`FLEET_BENCH_ANSIBLE=0` leaves Ansible out);
//! - **blue-green over 2 and over 16 app hosts** with the same probe settings (probe every 200 ms,
//!   healthy after 3, drain 5 s, bake 2 s): the wall time of the switch and the ratio, with the
//!   default `--parallel` and with `--parallel 16`.
//!
//! Settings (environment): `FLEET_BENCH_RUNS` (no-op runs of each, default 5: the median is
//! printed, with the fastest and slowest).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/fleet/mod.rs"]
mod fleet;
#[path = "../tests/fleet_app/mod.rs"]
mod fleet_app;

use fleet_app::Setup;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn main() {
    if !nix_root() {
        println!("fleet bench: needs root (network namespaces); skipped");
        return;
    }
    let runs: usize = std::env::var("FLEET_BENCH_RUNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(5);
    println!("fleet bench: the test fleet of tests/fleet, the demo app, HAProxy on lb-1");
    let two = blue_green(2, &[None]);
    let sixteen = no_op_and_blue_green(16, runs);
    for (parallel, took) in &sixteen {
        let label = parallel.map_or("default --parallel".to_owned(), |p| {
            format!("--parallel {p}")
        });
        println!(
            "blue-green 16 / 2 hosts ({label}): {:.1} s / {:.1} s = {:.2}× (target at most 1.3×)",
            took.as_secs_f64(),
            two[0].1.as_secs_f64(),
            took.as_secs_f64() / two[0].1.as_secs_f64()
        );
    }
}

fn nix_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn hosts(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("web-{i}")).collect()
}

/// A fleet of `n` app hosts serving 1.0.0; the blue-green switch to 2.0.0 (then 3.0.0, …), once
/// per `--parallel` setting given, timed.
fn blue_green(n: usize, parallels: &[Option<u16>]) -> Vec<(Option<u16>, Duration)> {
    let names = hosts(n);
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let s = Setup::new(&refs, "blue-green");
    deploy_first(&s, n);
    switches(&s, n, parallels, 2)
}

fn deploy_first(s: &Setup, n: usize) {
    let started = Instant::now();
    s.kube_free(&["reconcile", "--once"]).code(0);
    println!(
        "first deploy of 1.0.0 on {n} hosts: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Switches to a new version for each of `parallels`, starting at `first` (2 for 2.0.0).
fn switches(
    s: &Setup,
    n: usize,
    parallels: &[Option<u16>],
    first: usize,
) -> Vec<(Option<u16>, Duration)> {
    let mut out = Vec::new();
    for (i, parallel) in parallels.iter().enumerate() {
        let version = format!("{}.0.0", first + i);
        s.commit(&version, "", "20s");
        let p = parallel.map(|p| p.to_string());
        let mut args = vec!["reconcile", "--once", "--timings"];
        if let Some(p) = &p {
            args.extend(["--parallel", p]);
        }
        let started = Instant::now();
        let run = s.kube_free(&args);
        let took = started.elapsed();
        run.code(0);
        s.assert_serving_only(&version);
        let label = p.map_or("default --parallel".to_owned(), |p| {
            format!("--parallel {p}")
        });
        println!(
            "blue-green to {version} over {n} hosts ({label}): {:.1} s",
            took.as_secs_f64()
        );
        print_phases(&run.stderr);
        print_steps(&run.stderr);
        out.push((*parallel, took));
    }
    out
}

/// The phases of `--timings` (not each step), indented.
fn print_phases(stderr: &str) {
    let Some(at) = stderr.find("timings:\n") else {
        return;
    };
    for line in stderr[at..].lines().skip(1) {
        if line.starts_with("  steps") {
            break;
        }
        // The names are padded to the longest step's: print each name and figure once.
        println!(
            "    {}",
            line.split_whitespace().collect::<Vec<_>>().join(" ")
        );
    }
}

/// The steps of `--timings` by kind (their first word: start, probe, enable, shift, bake, drain,
/// stop, …): how many, the median and the slowest.
fn print_steps(stderr: &str) {
    let Some(at) = stderr.find("  steps, slowest first:\n") else {
        return;
    };
    let mut kinds: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    for line in stderr[at..].lines().skip(1) {
        let Some(step) = line.strip_prefix("    ") else {
            break;
        };
        let words: Vec<&str> = step.split_whitespace().collect();
        let Some(secs) = words
            .iter()
            .rposition(|w| *w == "s")
            .and_then(|i| words.get(i.checked_sub(1)?)?.parse::<f64>().ok())
        else {
            continue;
        };
        kinds.entry(words[0].to_owned()).or_default().push(secs);
    }
    for (kind, mut secs) in kinds {
        secs.sort_by(f64::total_cmp);
        println!(
            "    {kind:<8} {:>3} steps, median {:.2} s, slowest {:.2} s",
            secs.len(),
            secs[secs.len() / 2],
            secs[secs.len() - 1]
        );
    }
}

/// The 16-host fleet: no-op runs against Ansible, then the blue-green switches.
fn no_op_and_blue_green(n: usize, runs: usize) -> Vec<(Option<u16>, Duration)> {
    let names = hosts(n);
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let s = Setup::new(&refs, "blue-green");
    deploy_first(&s, n);

    let reconcile = timed(runs, || {
        s.kube_free(&["reconcile", "--once"]).code(0);
    });
    print_figure(&format!("no-op reconcile --once, {n} hosts"), &reconcile);
    // Every host connected to and observed at once.
    let wide = timed(runs, || {
        s.kube_free(&["reconcile", "--once", "--parallel", "32"])
            .code(0);
    });
    print_figure(
        &format!("no-op reconcile --once --parallel 32, {n} hosts"),
        &wide,
    );
    let plan = timed(runs, || {
        s.kube_free(&["plan"]).code(0);
    });
    print_figure(&format!("no-op plan, {n} hosts"), &plan);
    for parallel in ["8", "32"] {
        let run = s.kube_free(&["reconcile", "--once", "--timings", "--parallel", parallel]);
        println!("  its phases (--parallel {parallel}):");
        print_phases(&run.stderr);
    }

    if std::env::var("FLEET_BENCH_ANSIBLE").as_deref() != Ok("0") {
        match ansible(&s, &names) {
            Ok(playbook) => {
                let ansible = timed(runs, || {
                    let out = playbook().expect("ansible-playbook runs");
                    assert!(
                        out.status.success(),
                        "ansible-playbook failed:\n{}{}",
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    );
                });
                print_figure(&format!("Ansible check, {n} hosts"), &ansible);
                for (label, ours) in [("", &reconcile), (" --parallel 32", &wide)] {
                    println!(
                        "no-op reconcile{label} / Ansible: {:.3} (target at most 0.1)",
                        median(ours).as_secs_f64() / median(&ansible).as_secs_f64()
                    );
                }
            }
            Err(e) => println!("Ansible check: not run ({e})"),
        }
    }
    switches(&s, n, &[None, Some(16)], 2)
}

fn timed(runs: usize, mut f: impl FnMut()) -> Vec<Duration> {
    (0..runs.max(1))
        .map(|_| {
            let started = Instant::now();
            f();
            started.elapsed()
        })
        .collect()
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

fn print_figure(what: &str, v: &[Duration]) {
    let (min, max) = (v.iter().min().unwrap(), v.iter().max().unwrap());
    println!(
        "{what}: median {:.2} s (fastest {:.2} s, slowest {:.2} s, {} runs)",
        median(v).as_secs_f64(),
        min.as_secs_f64(),
        max.as_secs_f64(),
        v.len()
    );
}

type Playbook = Box<dyn Fn() -> std::io::Result<std::process::Output>>;

/// Installs `ansible-core` into a virtualenv and writes the inventory, configuration and playbook
/// of the check; returns what runs it.
fn ansible(s: &Setup, hosts: &[String]) -> Result<Playbook, String> {
    let dir = std::env::temp_dir().join("kube-free-bench-ansible");
    let venv = dir.join("venv");
    let bin = venv.join("bin");
    if !bin.join("ansible-playbook").exists() {
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let started = Instant::now();
        sh(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
        sh(Command::new(bin.join("pip")).args(["install", "--quiet", "ansible-core"]))?;
        println!(
            "ansible-core installed into {} in {:.0} s",
            venv.display(),
            started.elapsed().as_secs_f64()
        );
    }
    let version = Command::new(bin.join("ansible-playbook"))
        .arg("--version")
        .output()
        .map_err(|e| e.to_string())?;
    println!(
        "{}",
        String::from_utf8_lossy(&version.stdout)
            .lines()
            .next()
            .unwrap_or("")
    );
    let f = &s.fleet;
    let work = dir.join("check");
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let mut inventory = String::from("[apps]\n");
    for h in hosts {
        inventory.push_str(&format!(
            "{h} ansible_host={} state_dir={}\n",
            f.address(h),
            f.state_dir(h).display()
        ));
    }
    inventory.push_str(&format!(
        "[lb]\nlb-1 ansible_host={} admin_socket={}\n",
        f.address("lb-1"),
        f.haproxy_admin_socket().display()
    ));
    write(&work.join("inventory"), &inventory)?;
    let ssh_args = f
        .ssh_options()
        .iter()
        .filter(|o| *o != "-F" && *o != "/dev/null")
        .map(|o| {
            if o.contains(' ') {
                format!("'{o}'")
            } else {
                o.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    write(
        &work.join("ansible.cfg"),
        &format!(
            "[defaults]\ninventory = inventory\nforks = {}\nremote_user = root\ninterpreter_python = /usr/bin/python3\nstdout_callback = default\nretry_files_enabled = false\n\n[ssh_connection]\npipelining = true\nssh_args = {ssh_args} -o ControlMaster=auto -o ControlPersist=60s\n",
            hosts.len() + 1
        ),
    )?;
    // What kube-free reads of the fleet in a no-op pass: each app host's instance files and
    // whether their processes run, and the balancer's servers.
    write(
        &work.join("check.yml"),
        r#"- hosts: apps
  gather_facts: false
  tasks:
    - name: list the state directory
      command: ls -R {{ state_dir }}
      changed_when: false
    - name: the app's processes run
      shell: |
        for f in {{ state_dir }}/*/*/*.json; do
          pid=$(sed -n 's/.*"pid": *\([0-9]*\).*/\1/p' "$f")
          test -d "/proc/$pid" || { echo "$f: $pid does not run"; exit 1; }
        done
      changed_when: false
- hosts: lb
  gather_facts: false
  tasks:
    - name: read the balancer's stats
      command: python3 -c "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(b'show stat\n'); print(s.makefile().read())" {{ admin_socket }}
      changed_when: false
"#,
    )?;
    let playbook = bin.join("ansible-playbook");
    Ok(Box::new(move || {
        Command::new(&playbook)
            .arg("check.yml")
            .current_dir(&work)
            .env("ANSIBLE_CONFIG", work.join("ansible.cfg"))
            .output()
    }))
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

fn sh(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
