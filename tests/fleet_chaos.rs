//! Crash-resume under fire: on a fleet of three app hosts under keep-alive load, the reconciler is
//! killed with SIGKILL at random moments of a blue-green, a canary and a rolling rollout, and run again
//! each time; then it runs until it converges. Asserts, across the whole run, zero failed requests,
//! and after each rollout exactly the desired version on every host (one instance, no orphans), a
//! canary record that says succeeded, and nothing left to do.

mod common;
#[path = "fleet/mod.rs"]
mod fleet;
#[path = "fleet_app/mod.rs"]
mod fleet_app;

use common::*;
use fleet_app::Setup;
use std::time::{Duration, Instant};

/// Kills per rollout (three rollouts).
const KILLS_PER_ROLLOUT: u32 = 8;

/// A small deterministic generator (printed seed: a failure can be replayed with KUBE_FREE_CHAOS_SEED).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

/// Waits until the lease in `lock` (`EPOCH EXPIRES RUN_ID HOST PID`, the balancer host's clock, which
/// is this machine's) has expired, if one is held; returns how long that took.
fn wait_for_expiry(lock: &std::path::Path) -> Duration {
    let started = Instant::now();
    let expires: Option<u64> = std::fs::read_to_string(lock)
        .ok()
        .and_then(|t| t.split_whitespace().nth(1)?.parse().ok());
    if let Some(expires) = expires {
        let now = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
        };
        assert!(expires <= now() + 10, "a lease of at most 6 s: {expires}");
        while now() <= expires {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    started.elapsed()
}

/// The command lines of the SSH master connections to the setup's hosts.
fn ssh_masters(s: &Setup) -> Vec<String> {
    let addresses: Vec<String> = ["web-1", "web-2", "web-3", "lb-1"]
        .iter()
        .map(|h| s.fleet.address(h))
        .collect();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let words: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|w| String::from_utf8_lossy(w).into_owned())
            .collect();
        if words.first().is_some_and(|w| w == "ssh")
            && words.iter().any(|w| w == "-M")
            && words.iter().any(|w| addresses.contains(w))
        {
            found.push(words.join(" "));
        }
    }
    found
}

#[test]
fn killed_anywhere_the_reconciler_resumes_without_failing_a_request() {
    let mut s = Setup::new(&["web-1", "web-2", "web-3"], "blue-green");
    s.kube_free(&["reconcile", "--once"]).code(0);
    let seed = std::env::var("KUBE_FREE_CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("chaos seed {seed}");
    let mut rng = Lcg(seed);
    let rollouts = [
        ("2.0.0", "blue-green"),
        (
            "3.0.0",
            "{ canary: { steps: [{ weight: 20, pause: 2s }, { weight: 60, pause: 2s }], \
             analysis: { max_error_rate: 0.05, min_requests: 10 } } }",
        ),
        ("4.0.0", "{ rolling: { batch: 1 } }"),
    ];
    let load = Load::start(&format!("http://{}/", s.frontend()), 900, "GET");
    // A short lease (6 s, renewed every 1.25 s): a killed run's lease expires soon, and the next run
    // takes it over, as any run would; nobody removes it.
    let reconcile = [
        "reconcile",
        "--once",
        "--lock-wait",
        "60s",
        "--lease-ttl",
        "5s",
    ];
    let lock = s.fleet.state_dir("lb-1").join("lock");
    let mut expiry_waits = Duration::ZERO;
    let (mut kills, mut runs) = (0, 0);
    // SSH masters a killed run leaves (it cannot close them), seen just after its kill.
    let mut masters_after_kills = 0;
    let started = Instant::now();
    for (version, strategy) in rollouts {
        s.strategy = strategy.to_owned();
        s.commit(version, "", "20s");
        let mut points = Vec::new();
        for _ in 0..KILLS_PER_ROLLOUT {
            let mut child = s.spawn(&reconcile);
            runs += 1;
            let delay = Duration::from_millis(300 + rng.next(2700));
            std::thread::sleep(delay);
            if child.try_wait().unwrap().is_some() {
                // It finished the rollout before its kill: nothing is left to interrupt.
                let _ = child.wait_with_output();
                break;
            }
            child.kill().unwrap();
            kills += 1;
            masters_after_kills = masters_after_kills.max(ssh_masters(&s).len());
            points.push(format!("{}ms", delay.as_millis()));
            let _ = child.wait_with_output();
            // The next run would wait for the lease: wait here instead, so that its kill lands in
            // the rollout and not in that wait.
            expiry_waits += wait_for_expiry(&lock);
        }
        eprintln!("{version} ({strategy}): killed at {}", points.join(", "));
        // Runs resume a killed rollout quickly, so one may finish it before its kill lands (a
        // blue-green over three hosts needs about 5 s of runs in all); but every rollout is
        // interrupted first.
        assert!(
            !points.is_empty(),
            "{version}: only {} runs were killed mid-way",
            points.len()
        );
        let mut converged = false;
        for _ in 0..10 {
            runs += 1;
            let run = s.kube_free(&reconcile);
            if run.code == 0 {
                converged = true;
                break;
            }
            eprintln!("run exited {}: {}", run.code, run.stderr);
        }
        assert!(converged, "{version} did not converge after the kills");
        s.assert_serving_only(version);
        s.kube_free(&["plan"]).code(0).stdout_has("in sync");
        if version == "3.0.0" {
            let app = s.status_json();
            assert_eq!(app["rollout"]["phase"], "succeeded", "{app}");
        }
    }
    let tally = load.interrupt();
    eprintln!(
        "killed runs' leases expired and were taken over: {:.1}s of waiting in all",
        expiry_waits.as_secs_f64()
    );
    eprintln!(
        "chaos: {kills} kills, {runs} runs, {} requests, {} failed, served {:?}, {:.0}s",
        tally.requests,
        tally.failed,
        tally.served,
        started.elapsed().as_secs_f64()
    );
    assert!(kills >= 10, "only {kills} runs were killed mid-way");
    assert_eq!(tally.failed, 0, "{}", tally.text);

    // The masters of killed runs exit once idle for `ControlPersist`; every one of them was
    // started with kube-free's own settings (`-F`).
    assert!(masters_after_kills > 0, "no master was seen after a kill");
    let masters = ssh_masters(&s);
    assert!(
        masters.iter().all(|m| m.contains(" -F /tmp/kf-")),
        "{masters:#?}"
    );
    let waited = Instant::now();
    while !ssh_masters(&s).is_empty() {
        assert!(
            waited.elapsed()
                < Duration::from_secs(kube_free::drivers::ssh::CONTROL_PERSIST.get() as u64 + 30),
            "SSH masters left behind: {:#?}",
            ssh_masters(&s)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!(
        "ssh: up to {masters_after_kills} masters left by a killed run; none left {:.0}s after the last run",
        waited.elapsed().as_secs_f64()
    );
}
