//! nginx as the traffic layer, on a real fleet (two app hosts, nginx on the balancer host, all over
//! SSH) under wrk keep-alive load, GET and POST, one fleet for all the scenarios (issue 13).
//!
//! Baselines, without kube-free: the scripts of the teams kube-free replaces, reproduced as they run,
//! so that kube-free's figures stand beside theirs on the same fleet:
//! * "rewrite+reload": one upstream file naming the live port of each host; start the app on the idle
//!   port, curl it until it answers, rewrite the upstream file to the new port, `nginx -s reload`,
//!   kill the old app;
//! * "both ports+kill -9": the upstream lists both ports of each host, nginx defaults
//!   (`max_fails=1 fail_timeout=10s`); start the idle one, curl it, `kill -9` the old one; no reload.
//!
//! Adding a scenario is one function taking `&mut Setup` (or `&Setup`), called from the one test
//! below; a scenario leaves the fleet as it found it: no app running, kube-free.conf empty (see
//! [`clear`]). Figures are printed on stderr in a stable format (`<scenario> <method>: ...`).

mod common;
#[path = "fleet/mod.rs"]
mod fleet;
#[path = "fleet_app/mod.rs"]
mod fleet_app;

use common::*;
use fleet::{Fleet, FleetSpec, NginxModules, NGINX_WORKERS};
use fleet_app::{Balancer, Setup};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Switches per baseline run.
const SWITCHES: usize = 3;
/// Most a baseline's load may run (wrk's `-d`); the load is interrupted when the switches are done.
const LOAD_SECONDS: u64 = 120;
/// How often [`Prober`] sends its GET.
const PROBE_EVERY: Duration = Duration::from_millis(20);
/// The two ports of the app on every host (the `blue`/`green` slots of the desired state).
const PORTS: [u16; 2] = [8000, 8001];

#[test]
fn nginx_on_a_fleet_under_load() {
    let mut s = Setup::with_balancer(&["web-1", "web-2"], "blue-green", Balancer::NginxReload);
    the_fleets_nginx(&s);
    desired_state_renders_nginx(&mut s);
    baseline_rewrite_reload(&s, "GET");
    baseline_rewrite_reload(&s, "POST");
    // nginx answers its 502s fast, so the count is large whatever the method: GET shows it.
    baseline_both_ports_kill9(&s, "GET");
    kube_free_reload_mode(&mut s);
    kube_free_dynamic_mode(&mut s);
    kube_free_killed_mid_rollout(&mut s);
}

/// The fleet's nginx support itself, and its teardown: a fleet of its own, no load.
#[test]
fn fleet_nginx_starts_switches_modules_and_goes_away() {
    let fleet = Fleet::start(FleetSpec::new(&["web-1"], "lb-1").with_nginx());
    assert_eq!(fleet.nginx_modules(), Some(NginxModules::Lua));
    let master = fleet.nginx_master_pid().expect("pid file");
    assert_eq!(fleet.nginx_worker_pids().len(), NGINX_WORKERS);
    // The Lua module is loaded: a Lua location answers.
    std::fs::write(
        fleet.nginx_config_file(),
        "server { listen 0.0.0.0:81; location / { content_by_lua_block { ngx.say(\"lua \", ngx.worker.pid() > 0) } } }\n",
    )
    .unwrap();
    fleet.nginx_reload();
    let address = format!("{}:81", fleet.address("lb-1"));
    let body = http_get(&address, "/");
    assert!(body.contains("lua true"), "{body}");

    // Plain nginx refuses Lua directives; a stale pid file does not confuse the start.
    fleet.stop_nginx();
    assert!(fleet.nginx_worker_pids().is_empty());
    std::fs::write(fleet.nginx_pid_file(), "1\n").unwrap();
    std::fs::write(fleet.nginx_config_file(), "").unwrap();
    fleet.restart_nginx(NginxModules::Plain);
    assert_eq!(fleet.nginx_modules(), Some(NginxModules::Plain));
    let plain = fleet.nginx_master_pid().unwrap();
    assert_ne!(plain, master);
    assert_ne!(plain, 1);
    std::fs::write(
        fleet.nginx_config_file(),
        "server { listen 0.0.0.0:81; location / { content_by_lua_block { ngx.say(1) } } }\n",
    )
    .unwrap();
    let test = fleet.ssh("lb-1", &fleet.nginx_test_command());
    assert!(!test.status.success());
    assert!(String::from_utf8_lossy(&test.stderr).contains("content_by_lua_block"));

    let mut pids = fleet.nginx_worker_pids();
    pids.push(plain);
    let dir = fleet.dir().to_path_buf();
    drop(fleet);
    for pid in pids {
        // Gone, or a zombie left for init to reap: not running.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit_once(") ").and_then(|(_, r)| r.chars().next());
        assert!(
            state.is_none() || state == Some('Z'),
            "nginx process {pid} outlived the fleet: {stat}"
        );
    }
    assert!(!dir.exists());
}

// ---- scenarios ----

/// The fleet's nginx as kube-free will drive it: the test command passes on the empty include file;
/// the reload command is synchronous (new workers when it returns) and refuses a broken file
/// without stopping service.
fn the_fleets_nginx(s: &Setup) {
    let f = &s.fleet;
    let test = f.ssh("lb-1", &f.nginx_test_command());
    assert!(
        test.status.success(),
        "{}",
        String::from_utf8_lossy(&test.stderr)
    );
    std::fs::write(
        f.nginx_config_file(),
        "server { listen 0.0.0.0:80; location / { return 200 \"one\\n\"; } }\n",
    )
    .unwrap();
    let before = f.nginx_worker_pids();
    let reload = f.ssh("lb-1", &f.nginx_reload_command());
    assert!(
        reload.status.success(),
        "{}",
        String::from_utf8_lossy(&reload.stderr)
    );
    let after = f.nginx_worker_pids();
    assert!(
        after.iter().filter(|p| !before.contains(p)).count() >= NGINX_WORKERS,
        "{before:?} -> {after:?}"
    );
    assert_eq!(http_get(&s.frontend(), "/"), "one");

    std::fs::write(
        f.nginx_config_file(),
        "server { listen 0.0.0.0:80; bogus; }\n",
    )
    .unwrap();
    let test = f.ssh("lb-1", &f.nginx_test_command());
    assert!(!test.status.success());
    let reload = f.ssh("lb-1", &f.nginx_reload_command());
    assert!(!reload.status.success());
    assert!(
        String::from_utf8_lossy(&reload.stderr).contains("bogus"),
        "{}",
        String::from_utf8_lossy(&reload.stderr)
    );
    assert_eq!(http_get(&s.frontend(), "/"), "one", "the old config serves");
    clear(s);
}

/// The desired state `Setup` commits for nginx, both modes, is valid.
fn desired_state_renders_nginx(s: &mut Setup) {
    for balancer in [Balancer::NginxReload, Balancer::NginxDynamic] {
        s.use_balancer(balancer);
        s.commit("1.0.0", "", "20s");
        let yaml = std::fs::read_to_string(s.repo.path().join("kube-free.yaml")).unwrap();
        assert!(yaml.contains("kind: nginx"), "{yaml}");
        assert_eq!(
            yaml.contains("admin_socket:"),
            balancer == Balancer::NginxDynamic,
            "{yaml}"
        );
        s.kube_free(&["validate"]).code(0);
    }
    s.use_balancer(Balancer::NginxReload);
    s.commit("1.0.0", "", "20s");
}

/// Baseline "rewrite+reload": see the module documentation.
fn baseline_rewrite_reload(s: &Setup, method: &str) -> Tally {
    let mut apps = Apps::new(s, "a");
    apps.start_everywhere(PORTS[0], "1.0.0");
    write_baseline(s, &apps.upstream_servers(&[PORTS[0]]));
    s.fleet.nginx_reload();
    assert_eq!(http_get(&s.frontend(), "/version"), "1.0.0");

    let load = Load::start(&format!("http://{}/", s.frontend()), LOAD_SECONDS, method);
    let probe = Prober::start(&s.frontend());
    std::thread::sleep(Duration::from_secs(3));
    let mut took = Vec::new();
    for n in 1..=SWITCHES {
        let started = Instant::now();
        let (old, new) = (PORTS[(n - 1) % 2], PORTS[n % 2]);
        let version = format!("1.0.{n}");
        apps.start_everywhere(new, &version);
        apps.curl_until_ready(new);
        write_upstream(s, &apps.upstream_servers(&[new]));
        // The scripts' reload: nginx signals the master and returns at once.
        let out = s.fleet.ssh("lb-1", &s.fleet.nginx_command("-s reload"));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        apps.kill_port(old, "TERM");
        took.push(started.elapsed());
        std::thread::sleep(Duration::from_secs(3));
    }
    std::thread::sleep(Duration::from_secs(2));
    let tally = load.interrupt();
    let failing = probe.stop();
    report("baseline rewrite+reload", method, &tally, &took, failing);
    assert!(tally.requests > 1000, "{}", tally.text);
    assert!(
        tally.served_by(&format!("1.0.{SWITCHES}")) > 0,
        "the last version served: {}",
        tally.text
    );
    apps.stop_all();
    clear(s);
    tally
}

/// Baseline "both ports+kill -9": see the module documentation. Each switch is followed by 12 s
/// (beyond nginx's `fail_timeout=10s`), so that the whole of each switch's outage is counted.
fn baseline_both_ports_kill9(s: &Setup, method: &str) -> Tally {
    let mut apps = Apps::new(s, "b");
    apps.start_everywhere(PORTS[0], "2.0.0");
    write_baseline(s, &apps.upstream_servers(&PORTS));
    s.fleet.nginx_reload();
    assert_eq!(http_get(&s.frontend(), "/version"), "2.0.0");

    let load = Load::start(&format!("http://{}/", s.frontend()), LOAD_SECONDS, method);
    let probe = Prober::start(&s.frontend());
    std::thread::sleep(Duration::from_secs(3));
    let mut took = Vec::new();
    for n in 1..=SWITCHES {
        let started = Instant::now();
        let (old, new) = (PORTS[(n - 1) % 2], PORTS[n % 2]);
        let version = format!("2.0.{n}");
        for host in s.hosts.clone() {
            apps.start(&host, new, &version);
            apps.curl_host_until_ready(&host, new);
            apps.kill(&host, old, "KILL");
        }
        took.push(started.elapsed());
        std::thread::sleep(Duration::from_secs(12));
    }
    std::thread::sleep(Duration::from_secs(2));
    let tally = load.interrupt();
    let failing = probe.stop();
    report("baseline both-ports+kill-9", method, &tally, &took, failing);
    assert!(tally.requests > 1000, "{}", tally.text);
    assert!(
        tally.served_by(&format!("2.0.{SWITCHES}")) > 0,
        "the last version served: {}",
        tally.text
    );
    // The issue measured nginx answering 502 for up to 10 s per switch: both ports "failed".
    assert!(
        tally.failed > 0,
        "no failure with both ports and kill -9: {}",
        tally.text
    );
    apps.stop_all();
    clear(s);
    tally
}

/// kube-free in `mode: reload` on plain nginx: blue-green switches under GET and POST load. Each
/// traffic step that changes the upstreams is one `nginx -t` and one reload; what the reloads cost
/// is printed beside the baselines' figures.
fn kube_free_reload_mode(s: &mut Setup) {
    s.use_balancer(Balancer::NginxReload);
    s.strategy = "blue-green".to_owned();
    s.commit("1.0.0", "", "20s");
    s.kube_free(&["reconcile", "--once"]).code(0);
    s.assert_serving_only("1.0.0");
    for (version, method) in [("2.0.0", "GET"), ("3.0.0", "POST")] {
        s.commit(version, "", "20s");
        let started = Instant::now();
        let (run, tally) = s.reconcile_under_load(method, 90);
        let took = started.elapsed();
        run.code(0);
        report(
            "kube-free reload-mode",
            method,
            &tally,
            &[took],
            Duration::ZERO,
        );
        s.assert_serving_only(version);
        assert!(tally.served_by(version) > 0, "{}", tally.text);
        assert!(
            tally.failed * 100 < tally.requests.max(1),
            "a reload loses a few keep-alive requests, not a share: {}",
            tally.text
        );
    }
    // Rolling, and a canary judged on the counters kube-free sums from its access log: one reload
    // per batch or step.
    let rollouts = [
        ("3.1.0", "{ rolling: { batch: 1 } }"),
        (
            "3.2.0",
            "{ canary: { steps: [{ weight: 50, pause: 3s }], analysis: { max_error_rate: 0.05, min_requests: 20 } } }",
        ),
    ];
    for (version, strategy) in rollouts {
        s.strategy = strategy.to_owned();
        s.commit(version, "", "20s");
        let started = Instant::now();
        let (run, tally) = s.reconcile_under_load("GET", 90);
        let took = started.elapsed();
        run.code(0);
        report(
            &format!("kube-free reload-mode {strategy}"),
            "GET",
            &tally,
            &[took],
            Duration::ZERO,
        );
        s.assert_serving_only(version);
        assert!(tally.failed * 100 < tally.requests.max(1), "{}", tally.text);
    }
    let app = s.status_json();
    assert_eq!(app["rollout"]["phase"], "succeeded", "{app}");
    // A verdict of `passed` needs `min_requests`: the counters summed from nginx's log count them.
    assert!(
        app["rollout"]["analysis"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["verdict"] == "passed"),
        "the canary's analysis read nginx's counters: {app}"
    );
    s.strategy = "blue-green".to_owned();
}

/// kube-free in `mode: dynamic` on nginx with Lua, taking over the running deployment from reload
/// mode (the same state file seeds the weights): blue-green (GET, POST), rolling and canary, each
/// with no failed request; the 10% step serves 7–13% of the requests.
fn kube_free_dynamic_mode(s: &mut Setup) {
    s.use_balancer(Balancer::NginxDynamic);
    s.commit("3.2.0", "", "20s");
    s.kube_free(&["reconcile", "--once"]).code(0);
    s.assert_serving_only("3.2.0");
    let rollouts = [
        ("4.0.0", "blue-green", "GET"),
        ("5.0.0", "blue-green", "POST"),
        ("6.0.0", "{ rolling: { batch: 1 } }", "GET"),
    ];
    for (version, strategy, method) in rollouts {
        s.strategy = strategy.to_owned();
        s.commit(version, "", "20s");
        let (run, tally) = s.reconcile_under_load(method, 90);
        run.code(0);
        eprintln!(
            "kube-free dynamic-mode {strategy} {method}: {} requests, {} failed",
            tally.requests, tally.failed
        );
        assert_eq!(tally.failed, 0, "{}", tally.text);
        assert!(tally.served_by(version) > 0, "{}", tally.text);
        s.assert_serving_only(version);
    }

    s.strategy = "{ canary: { steps: [{ weight: 10, pause: {} }], analysis: { max_error_rate: 0.05, min_requests: 20 } } }".to_owned();
    s.commit("7.0.0", "", "20s");
    let (run, tally) = s.reconcile_under_load("GET", 90);
    run.code(3)
        .stderr_has("canary step 0 waits for `kube-free promote demo --env production`");
    assert_eq!(tally.failed, 0, "{}", tally.text);
    // At the 10% step: what the canary serves, under load.
    let load = Load::start(&format!("http://{}/", s.frontend()), 30, "GET");
    std::thread::sleep(Duration::from_secs(5));
    let at_step = load.interrupt();
    let share = at_step.served_by("7.0.0") as f64 / at_step.requests.max(1) as f64;
    eprintln!(
        "kube-free dynamic-mode canary 10% step: {} requests, {:.1}% served by 7.0.0, {} failed",
        at_step.requests,
        share * 100.0,
        at_step.failed
    );
    assert!((0.07..=0.13).contains(&share), "{}", at_step.text);
    assert_eq!(at_step.failed, 0, "{}", at_step.text);
    s.kube_free(&["promote", "demo", "--env", "production"])
        .code(0);
    let (run, tally) = s.reconcile_under_load("POST", 90);
    run.code(0);
    eprintln!(
        "kube-free dynamic-mode canary promoted POST: {} requests, {} failed",
        tally.requests, tally.failed
    );
    assert_eq!(tally.failed, 0, "{}", tally.text);
    s.assert_serving_only("7.0.0");
}

/// kube-free killed with SIGKILL at three moments of a blue-green rollout on nginx (dynamic); the
/// next run resumes it, and no request fails.
fn kube_free_killed_mid_rollout(s: &mut Setup) {
    s.strategy = "blue-green".to_owned();
    s.commit("8.0.0", "", "20s");
    let reconcile = [
        "reconcile",
        "--once",
        "--lock-wait",
        "60s",
        "--lease-ttl",
        "5s",
    ];
    let load = Load::start(&format!("http://{}/", s.frontend()), 120, "GET");
    std::thread::sleep(Duration::from_secs(2));
    let mut kills = 0;
    for delay in [1500, 3000, 4500] {
        let mut child = s.spawn(&reconcile);
        std::thread::sleep(Duration::from_millis(delay));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
        }
        let _ = child.wait_with_output();
    }
    let mut converged = false;
    for _ in 0..5 {
        if s.kube_free(&reconcile).code == 0 {
            converged = true;
            break;
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    let tally = load.interrupt();
    eprintln!(
        "kube-free dynamic-mode killed mid-rollout: {kills} kills, {} requests, {} failed, served {:?}",
        tally.requests, tally.failed, tally.served
    );
    assert!(converged, "8.0.0 did not converge after the kills");
    assert!(kills >= 2, "only {kills} runs were killed mid-way");
    assert_eq!(tally.failed, 0, "{}", tally.text);
    s.assert_serving_only("8.0.0");
}

// ---- helpers ----

/// Prints a baseline's figures: `<scenario> <method>: <n> switches, <requests> requests, <failed>
/// failed (<per switch> per switch, <percent>%), failing <seconds>s (<per switch>s per switch),
/// served {...}; switches took [...]`, then wrk's error lines. "failing" is the time the
/// [`Prober`] saw the frontend fail.
fn report(scenario: &str, method: &str, tally: &Tally, took: &[Duration], failing: Duration) {
    let switches = took.len().max(1);
    eprintln!(
        "{scenario} {method}: {} switches, {} requests, {} failed ({:.1} per switch, {:.3}%), failing {:.2}s ({:.2}s per switch), served {:?}; switches took {:?}",
        took.len(),
        tally.requests,
        tally.failed,
        tally.failed as f64 / switches as f64,
        tally.failed as f64 * 100.0 / tally.requests.max(1) as f64,
        failing.as_secs_f64(),
        failing.as_secs_f64() / switches as f64,
        tally.served,
        took.iter().map(|d| format!("{:.2}s", d.as_secs_f64())).collect::<Vec<_>>(),
    );
    for line in tally
        .text
        .lines()
        .filter(|l| l.starts_with("socket errors") || l.starts_with("non-2xx"))
    {
        eprintln!("{scenario} {method}: {line}");
    }
}

/// One GET of `/version` every [`PROBE_EVERY`], each on a new connection, beside the wrk load: how
/// long the frontend fails (a count of failed requests depends on how fast failures are answered;
/// a 502 is answered much faster than a proxied request).
struct Prober {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Duration>,
}

impl Prober {
    fn start(address: &str) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let address = address.to_owned();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut failing = Duration::ZERO;
            while !flag.load(Ordering::Relaxed) {
                let sent = Instant::now();
                let (code, _) = request(&address, "GET", "/version", &[], b"");
                std::thread::sleep(PROBE_EVERY.saturating_sub(sent.elapsed()));
                // A failure counts until the next probe is sent.
                if !(200..300).contains(&code) {
                    failing += sent.elapsed();
                }
            }
            failing
        });
        Prober { stop, thread }
    }

    /// Stops probing; the time the probes failed.
    fn stop(self) -> Duration {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("prober")
    }
}

/// Empties kube-free.conf and reloads (synchronously): nginx listens on nothing again.
fn clear(s: &Setup) {
    std::fs::write(s.fleet.nginx_config_file(), "").unwrap();
    let _ = std::fs::remove_file(upstream_file(s));
    s.fleet.nginx_reload();
}

/// The scripts' upstream file, included by the baseline's kube-free.conf.
fn upstream_file(s: &Setup) -> std::path::PathBuf {
    s.fleet.nginx_dir().join("baseline-upstream.conf")
}

/// Writes the scripts' nginx config: kube-free.conf with the frontend on port 80, nginx defaults,
/// including the upstream file with `servers`.
fn write_baseline(s: &Setup, servers: &[String]) {
    write_upstream(s, servers);
    std::fs::write(
        s.fleet.nginx_config_file(),
        format!(
            "# The scripts' nginx (tests/fleet_nginx.rs baselines): nginx defaults.\n\
             include {};\n\
             server {{\n\
             \x20   listen 0.0.0.0:80;\n\
             \x20   location / {{\n\
             \x20       proxy_pass http://demo;\n\
             \x20   }}\n\
             }}\n",
            upstream_file(s).display()
        ),
    )
    .unwrap();
}

/// Rewrites the upstream file, as the scripts do.
fn write_upstream(s: &Setup, servers: &[String]) {
    let lines: String = servers
        .iter()
        .map(|a| format!("    server {a};\n"))
        .collect();
    std::fs::write(upstream_file(s), format!("upstream demo {{\n{lines}}}\n")).unwrap();
}

/// The demo app as the scripts run it: started in the background over SSH, one process per host and
/// port, killed by pid.
struct Apps<'a> {
    s: &'a Setup,
    /// Names the log files: `<state dir>/baseline-<tag>-<port>.log`.
    tag: &'static str,
    /// (host, port, pid) of the processes started and not killed.
    live: Vec<(String, u16, u32)>,
}

impl<'a> Apps<'a> {
    fn new(s: &'a Setup, tag: &'static str) -> Apps<'a> {
        Apps {
            s,
            tag,
            live: Vec::new(),
        }
    }

    /// `host:port` of every app host for each of `ports`, host by host.
    fn upstream_servers(&self, ports: &[u16]) -> Vec<String> {
        self.s
            .hosts
            .iter()
            .flat_map(|h| {
                ports
                    .iter()
                    .map(|p| format!("{}:{p}", self.s.fleet.address(h)))
            })
            .collect()
    }

    fn start_everywhere(&mut self, port: u16, version: &str) {
        for host in self.s.hosts.clone() {
            self.start(&host, port, version);
        }
    }

    /// `nohup demo --listen 0.0.0.0:<port> --version <version> &` over SSH; remembers the pid.
    fn start(&mut self, host: &str, port: u16, version: &str) {
        let f = &self.s.fleet;
        let log = f
            .state_dir(host)
            .join(format!("baseline-{}-{port}.log", self.tag));
        let out = f.ssh(
            host,
            &format!(
                "nohup {} --listen 0.0.0.0:{port} --version {version} >>{} 2>&1 </dev/null & echo $!",
                demo_binary().display(),
                log.display()
            ),
        );
        assert!(
            out.status.success(),
            "start the app on {host}:{port}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pid: u32 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("a pid");
        self.live.push((host.to_owned(), port, pid));
    }

    fn curl_until_ready(&self, port: u16) {
        for host in &self.s.hosts {
            self.curl_host_until_ready(host, port);
        }
    }

    /// `curl` on the host until the app on `port` answers its readiness path (at most 10 s).
    fn curl_host_until_ready(&self, host: &str, port: u16) {
        let out = self.s.fleet.ssh(
            host,
            &format!(
                "i=0; until curl -fsS -o /dev/null http://127.0.0.1:{port}/readyz; do \
                 i=$((i + 1)); [ $i -lt 100 ] || exit 1; sleep 0.1; done"
            ),
        );
        assert!(
            out.status.success(),
            "the app on {host}:{port} never answered: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn kill_port(&mut self, port: u16, signal: &str) {
        for host in self.s.hosts.clone() {
            self.kill(&host, port, signal);
        }
    }

    /// `kill -<signal> <pid>` over SSH, the way the scripts stop the old app (does not wait).
    fn kill(&mut self, host: &str, port: u16, signal: &str) {
        let at = self
            .live
            .iter()
            .position(|(h, p, _)| h == host && *p == port)
            .unwrap_or_else(|| panic!("no app on {host}:{port}"));
        let (_, _, pid) = self.live.remove(at);
        let out = self.s.fleet.ssh(host, &format!("kill -{signal} {pid}"));
        assert!(
            out.status.success(),
            "kill -{signal} {pid} on {host}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Kills every app started (SIGKILL) and waits until no demo process is left on the hosts.
    fn stop_all(&mut self) {
        for (host, port, _) in self.live.clone() {
            self.kill(&host, port, "KILL");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.s.hosts.iter().any(|h| self.s.demo_processes(h) > 0) {
            assert!(
                Instant::now() < deadline,
                "demo processes outlived their kill"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
