//! A deployment on a test fleet: the desired state for the demo app on the fleet's hosts, committed
//! to a real Git repository, and the checks the fleet tests share (what serves, how many processes,
//! reconcile under load).
#![allow(dead_code)]

use crate::common::*;
use crate::fleet::{Fleet, FleetSpec, NginxModules, NGINX_LUA_MODULE};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

/// The balancer software of the setup's `edge` balancer on `lb-1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balancer {
    /// `kind: haproxy` (the default).
    Haproxy,
    /// `kind: nginx`, `mode: dynamic`: the fleet's nginx with the Lua module.
    NginxDynamic,
    /// `kind: nginx`, `mode: reload`: the fleet's nginx without modules.
    NginxReload,
}

impl Balancer {
    /// The modules the fleet's nginx needs for this balancer; `None` for HAProxy.
    pub fn nginx_modules(self) -> Option<NginxModules> {
        match self {
            Balancer::Haproxy => None,
            Balancer::NginxDynamic => Some(NginxModules::Lua),
            Balancer::NginxReload => Some(NginxModules::Plain),
        }
    }
}

pub struct Setup {
    /// Dropped last: the fleet is torn down before the next load test starts.
    pub fleet: Fleet,
    pub repo: Repo,
    pub hosts: Vec<String>,
    /// The `strategy:` value of the app in the environment, as YAML.
    pub strategy: String,
    /// The app's `bake`.
    pub bake: String,
    /// The app's `slots:` value, as YAML (`{ blue: 8000, green: 8001 }` unless changed).
    pub slots: String,
    /// The app's `probe.interval` (200ms unless changed): also HAProxy's `check inter`.
    pub probe_interval: String,
    /// More top-level YAML for `kube-free.yaml` (e.g. `notifications:`), appended as it is.
    pub extra: String,
    /// The hosts of `production`, when not every one of [`Setup::hosts`] (the others are then for
    /// environments the test writes in `environments/`).
    pub production_hosts: Option<Vec<String>>,
    /// Where [`Setup::script`] writes each version's start script; `Some` once one is written,
    /// and then the app runs `<dir>/<version>/run <host> --listen … --version …`.
    scripts: Option<tempfile::TempDir>,
    /// The balancer commits render; change it with [`Setup::use_balancer`].
    balancer: Balancer,
    /// Containers instead of processes ([`Setup::with_docker`]): the app runs the image
    /// `kf-demo:{version}` on every host's own engine, in the host's network.
    docker: bool,
    _turn: LoadTestTurn,
}

impl Setup {
    pub fn new(app_hosts: &[&str], strategy: &str) -> Setup {
        Setup::with_balancer(app_hosts, strategy, Balancer::Haproxy)
    }

    /// [`Setup::new`] with another balancer: for nginx, the fleet runs nginx on `lb-1` (with the
    /// Lua module for [`Balancer::NginxDynamic`]) and commits render `kind: nginx`.
    pub fn with_balancer(app_hosts: &[&str], strategy: &str, balancer: Balancer) -> Setup {
        Setup::build(app_hosts, strategy, balancer, false)
    }

    /// [`Setup::new`] with the docker runtime: every app host runs its own Docker engine
    /// ([`FleetSpec::with_docker`]); tag each version's image with [`Setup::image`] before committing it.
    pub fn with_docker(app_hosts: &[&str], strategy: &str) -> Setup {
        Setup::build(app_hosts, strategy, Balancer::Haproxy, true)
    }

    fn build(app_hosts: &[&str], strategy: &str, balancer: Balancer, docker: bool) -> Setup {
        require_tools(&["wrk", "dot", "git"]);
        let turn = load_test_turn();
        let mut spec = FleetSpec::new(app_hosts, "lb-1");
        spec.nginx = balancer.nginx_modules();
        if docker {
            spec = spec.with_docker();
        }
        let fleet = Fleet::start(spec);
        if docker {
            fleet.load_image(demo_binary(), "kf-demo:1.0.0", &[]);
        }
        let repo = Repo::new();
        let s = Setup {
            fleet,
            repo,
            hosts: app_hosts.iter().map(|h| h.to_string()).collect(),
            strategy: strategy.to_owned(),
            bake: "2s".to_owned(),
            slots: "{ blue: 8000, green: 8001 }".to_owned(),
            probe_interval: "200ms".to_owned(),
            extra: String::new(),
            production_hosts: None,
            scripts: None,
            balancer,
            docker,
            _turn: turn,
        };
        s.repo.write("ssh/known_hosts", s.fleet.known_hosts_text());
        s.commit("1.0.0", "", "20s");
        s
    }

    /// The balancer commits render.
    pub fn balancer(&self) -> Balancer {
        self.balancer
    }

    /// Makes later commits render `balancer`; for nginx, (re)starts the fleet's nginx with the
    /// modules it needs when it runs others or none (kube-free.conf is emptied then, as what it
    /// holds may need what the new modules lack). Does not commit.
    pub fn use_balancer(&mut self, balancer: Balancer) {
        if let Some(modules) = balancer.nginx_modules() {
            if self.fleet.nginx_modules() != Some(modules) {
                self.fleet.stop_nginx();
                std::fs::write(self.fleet.nginx_config_file(), "").unwrap();
                self.fleet.restart_nginx(modules);
            }
        }
        self.balancer = balancer;
    }

    /// Tags the demo image as `kf-demo:<version>` on every docker host; with `entrypoint_args`,
    /// builds and loads one that runs the demo with them (e.g. `--exit-after 0s`: it crashes).
    pub fn image(&self, version: &str, entrypoint_args: &[&str]) {
        let tag = format!("kf-demo:{version}");
        if entrypoint_args.is_empty() {
            for host in &self.hosts {
                self.fleet.docker_ok(host, &["tag", "kf-demo:1.0.0", &tag]);
            }
        } else {
            self.fleet.load_image(demo_binary(), &tag, entrypoint_args);
        }
    }

    /// Writes the start script of `version`, as a release would ship one: it runs the demo app
    /// with its arguments and, on each host, the flags `flags(host)` gives (a version that crashes,
    /// errs or never gets ready there). Once a script is written, commits run the scripts.
    pub fn script(&mut self, version: &str, flags: &dyn Fn(&str) -> String) {
        let dir = self
            .scripts
            .get_or_insert_with(|| tempfile::tempdir().unwrap())
            .path()
            .join(version);
        std::fs::create_dir_all(&dir).unwrap();
        let cases: String = self
            .hosts
            .iter()
            .map(|h| format!("  {h}) extra=\"{}\" ;;\n", flags(h)))
            .collect();
        let script = format!(
            "#!/bin/sh\nhost=$1; shift\ncase $host in\n{cases}  *) extra= ;;\nesac\nexec {} \"$@\" $extra\n",
            demo_binary().display()
        );
        let path = dir.join("run");
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// Makes `version`'s start script fail at once (a release whose files are gone).
    pub fn break_script(&self, version: &str) {
        let path = self
            .scripts
            .as_ref()
            .unwrap()
            .path()
            .join(version)
            .join("run");
        std::fs::write(
            &path,
            "#!/bin/sh\necho 'release files are gone' >&2\nexit 1\n",
        )
        .unwrap();
    }

    /// Pid of the instance of `version` on `host`, from its instance file.
    pub fn pid_of(&self, host: &str, version: &str) -> Option<u32> {
        let dir = self.fleet.state_dir(host).join("production/demo");
        ["blue", "green"].iter().find_map(|slot| {
            let text = std::fs::read_to_string(dir.join(format!("{slot}.json"))).ok()?;
            let json: serde_json::Value = serde_json::from_str(&text).ok()?;
            (json["version"] == version).then(|| json["pid"].as_u64().unwrap() as u32)
        })
    }

    /// Kills the instance of `version` on every host with SIGKILL (a crash).
    pub fn kill_version(&self, version: &str) {
        for host in &self.hosts {
            let pid = self
                .pid_of(host, version)
                .unwrap_or_else(|| panic!("no instance of {version} on {host}"));
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }

    /// Commits the desired state with `version`, extra demo-app flags and a probe deadline.
    pub fn commit(&self, version: &str, extra_flags: &str, deadline: &str) -> String {
        let f = &self.fleet;
        let host = |h: &str| {
            format!(
                "  {h}: {{ address: {}, state_dir: {} }}\n",
                f.address(h),
                f.state_dir(h).display()
            )
        };
        let hosts: String = self.hosts.iter().map(|h| host(h)).collect();
        let flags = format!("--listen 0.0.0.0:{{port}} --version {{version}}{extra_flags}");
        let runtime = match &self.scripts {
            _ if self.docker => format!(
                "      kind: docker\n      image: \"kf-demo:{{version}}\"\n      network: host\n      command: \"{flags}\""
            ),
            Some(dir) => format!(
                "      kind: process\n      command: \"{}/{{version}}/run {{host}} {flags}\"",
                dir.path().display()
            ),
            None => format!(
                "      kind: process\n      command: \"{} {flags}\"",
                demo_binary().display()
            ),
        };
        let yaml = format!(
            r#"version: 1
hosts:
{hosts}{lb}ssh:
  known_hosts: ssh/known_hosts
  identity_file: {identity}
balancers:
  edge:
{balancer}apps:
  demo:
    runtime:
{runtime}
    slots: {slots}
    probe: {{ path: /readyz, interval: {probe_interval}, timeout: 1s, healthy_after: 3, deadline: {deadline} }}
    drain: 5s
    stop_timeout: 10s
    bake: {bake}
environments:
  production:
    balancer: edge
    hosts: [{host_list}]
    apps:
      demo: {{ version: "{version}", listen: "0.0.0.0:80", strategy: {strategy} }}
"#,
            lb = host("lb-1"),
            host_list = self
                .production_hosts
                .as_ref()
                .unwrap_or(&self.hosts)
                .join(", "),
            identity = f.identity_file().display(),
            balancer = self.balancer_yaml(),
            bake = self.bake,
            slots = self.slots,
            probe_interval = self.probe_interval,
            strategy = self.strategy,
        );
        self.repo
            .write("kube-free.yaml", format!("{yaml}{}", self.extra));
        self.repo.commit(&format!("demo {version}{extra_flags}"))
    }

    /// The keys of the `edge` balancer, indented for `balancers.edge`.
    fn balancer_yaml(&self) -> String {
        let f = &self.fleet;
        match self.balancer {
            Balancer::Haproxy => format!(
                "    kind: haproxy\n    host: lb-1\n    admin_socket: {}\n    config_file: {}\n    reload_command: {:?}\n",
                f.haproxy_admin_socket().display(),
                f.haproxy_config_file().display(),
                f.haproxy_reload_command(),
            ),
            Balancer::NginxDynamic | Balancer::NginxReload => {
                let dynamic = self.balancer == Balancer::NginxDynamic;
                let mut yaml = format!(
                    "    kind: nginx\n    host: lb-1\n    mode: {}\n    config_file: {}\n",
                    if dynamic { "dynamic" } else { "reload" },
                    f.nginx_config_file().display(),
                );
                if dynamic {
                    yaml.push_str(&format!(
                        "    admin_socket: {}\n    lua_module: {NGINX_LUA_MODULE}\n",
                        f.nginx_admin_socket().display()
                    ));
                }
                yaml.push_str(&format!(
                    "    reload_command: {:?}\n    test_command: {:?}\n",
                    f.nginx_reload_command(),
                    f.nginx_test_command()
                ));
                yaml
            }
        }
    }

    pub fn kube_free(&self, args: &[&str]) -> Run {
        let mut all = args.to_vec();
        all.extend(["--repo", self.repo.path_str()]);
        kube_free(&all)
    }

    /// `kube-free ARGS --repo <the setup's repository>`, started in the background with its output
    /// captured.
    pub fn spawn(&self, args: &[&str]) -> std::process::Child {
        let mut all = args.to_vec();
        all.extend(["--repo", self.repo.path_str()]);
        kube_free_command(std::path::Path::new("."), &all)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("kube-free starts")
    }

    pub fn frontend(&self) -> String {
        format!("{}:80", self.fleet.address("lb-1"))
    }

    /// Pids of the live demo-app processes in a host's namespace (zombies do not count), sorted.
    pub fn demo_pids(&self, host: &str) -> Vec<u32> {
        let out = Command::new("ip")
            .args(["netns", "pids", &self.fleet.netns(host)])
            .output()
            .unwrap();
        let mut pids: Vec<u32> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|pid| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let state = stat.rsplit_once(") ").and_then(|(_, r)| r.chars().next());
                String::from_utf8_lossy(&cmdline).contains("kube-free-demo") && state != Some('Z')
            })
            .filter_map(|pid| pid.trim().parse().ok())
            .collect();
        pids.sort();
        pids
    }

    /// Live demo-app processes in a host's namespace.
    pub fn demo_processes(&self, host: &str) -> usize {
        self.demo_pids(host).len()
    }

    /// `kube-free status --output json`: the one environment/app of the setup.
    pub fn status_json(&self) -> serde_json::Value {
        let status = self.kube_free(&["status", "--output", "json"]);
        status.code(0);
        let json: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
        json["environments"][0].clone()
    }

    /// `column` of `show stat` (e.g. `weight`, `status`) for every server and frontend of
    /// kube-free's backends, by `svname`, in HAProxy's order: read from HAProxy itself.
    pub fn haproxy_stat(&self, column: &str) -> Vec<(String, String)> {
        let stat = self.fleet.haproxy_runtime("show stat");
        let mut lines = stat.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap()
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
        let (px, sv, value) = (col("pxname"), col("svname"), col(column));
        lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| f.len() > value && f[px].starts_with("kf_") && f[sv] != "BACKEND")
            .map(|f| (f[sv].to_owned(), f[value].to_owned()))
            .collect()
    }

    /// Weights of the servers running `version`, as status reports them.
    pub fn weights_of(&self, version: &str) -> Vec<u64> {
        let app = self.status_json();
        app["slots"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["version"] == version && s["alive"] == true)
            .map(|s| s["weight"].as_u64().unwrap_or(0))
            .collect()
    }

    /// Every host serves only `version` from one instance, and the balancer sends it everything.
    pub fn assert_serving_only(&self, version: &str) {
        let status = self.kube_free(&["status", "--output", "json"]);
        status.code(0);
        let json: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
        let app = &json["environments"][0];
        if app["in_sync"] != true {
            let plan = self.kube_free(&["plan"]);
            panic!(
                "not in sync:\n{}\nplan:\n{}{}",
                status.stdout, plan.stdout, plan.stderr
            );
        }
        for host in &self.hosts {
            let slots: Vec<&serde_json::Value> = app["slots"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|s| s["host"] == host.as_str())
                .collect();
            let running: Vec<_> = slots.iter().filter(|s| s["alive"] == true).collect();
            assert_eq!(
                running.len(),
                1,
                "one instance on {host}: {}",
                status.stdout
            );
            assert_eq!(running[0]["version"], version, "{}", status.stdout);
            assert_eq!(running[0]["weight"], 100, "{}", status.stdout);
            let idle = slots.iter().find(|s| s["alive"] != true).unwrap();
            assert_eq!(idle["admin"], "maint", "{}", status.stdout);
            assert_eq!(
                self.demo_processes(host),
                1,
                "exactly one demo process on {host}"
            );
            let port = running[0]["port"].as_u64().unwrap();
            assert_eq!(
                http_get(&format!("{}:{port}", self.fleet.address(host)), "/version"),
                version
            );
        }
        for _ in 0..4 {
            assert_eq!(http_get(&self.frontend(), "/version"), version);
        }
    }

    /// Reconciles while wrk loads the frontend: load for 3 s before, through the whole run and 2 s
    /// after it (at most `max_seconds` in all); returns the reconcile run and the tally.
    pub fn reconcile_under_load(&self, method: &str, max_seconds: u64) -> (Run, Tally) {
        self.reconcile_under_load_while(method, max_seconds, || {})
    }

    /// [`Setup::reconcile_under_load`], calling `during` once the reconcile has started.
    pub fn reconcile_under_load_while(
        &self,
        method: &str,
        max_seconds: u64,
        during: impl FnOnce(),
    ) -> (Run, Tally) {
        self.run_under_load(&["reconcile", "--once"], method, max_seconds, during)
    }

    /// `kube-free ARGS` while wrk loads the frontend, as [`Setup::reconcile_under_load_while`].
    pub fn run_under_load(
        &self,
        args: &[&str],
        method: &str,
        max_seconds: u64,
        during: impl FnOnce(),
    ) -> (Run, Tally) {
        let load = Load::start(&format!("http://{}/", self.frontend()), max_seconds, method);
        std::thread::sleep(std::time::Duration::from_secs(3));
        let run = self.spawn(args);
        during();
        let run = Run::from(run.wait_with_output().expect("kube-free runs"));
        std::thread::sleep(std::time::Duration::from_secs(2));
        let tally = load.interrupt();
        eprintln!(
            "{method} load: {} requests, {} failed, served {:?}",
            tally.requests, tally.failed, tally.served
        );
        (run, tally)
    }
}
