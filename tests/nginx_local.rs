//! nginx on this machine, end to end through the `kube-free` binary: `examples/nginx/run.sh` in both
//! modes (a blue-green switch under wrk keep-alive load), and what happens on an nginx that cannot
//! run kube-free's dynamic config (no Lua module loaded; a `lua_module` that is not there): a clear
//! error, the previous file back, nothing started.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `examples/nginx/run.sh` in `mode`; checks both versions served; its output and tally.
fn run_mode(mode: &str) -> (String, Tally) {
    require_tools(&["nginx", "wrk", "git", "curl"]);
    let (stdout, tally) = run_example("nginx", &[("MODE", mode)]);
    assert!(
        tally.served_by("1.0.0") > 100,
        "1.0.0 served before the switch\n{stdout}"
    );
    assert!(
        tally.served_by("2.0.0") > 100,
        "2.0.0 served after the switch\n{stdout}"
    );
    assert!(stdout.contains("served now: 2.0.0"), "{stdout}");
    eprintln!(
        "nginx example, {mode} mode: {} requests, {} failed",
        tally.requests, tally.failed
    );
    (stdout, tally)
}

#[test]
fn the_dynamic_mode_example_switches_with_no_failed_request() {
    let _turn = load_test_turn();
    let (stdout, tally) = run_mode("dynamic");
    assert_eq!(tally.failed, 0, "{stdout}");
    assert!(
        stdout.contains("switched 1.0.0 -> 2.0.0 under load with 0 failed requests"),
        "{stdout}"
    );
}

#[test]
fn the_reload_mode_example_switches_and_reports_what_the_reloads_cost() {
    let _turn = load_test_turn();
    let (stdout, tally) = run_mode("reload");
    // A reload closes idle keep-alive connections: some requests may fail, and the example says
    // how many instead of hiding it.
    if tally.failed > 0 {
        assert!(
            stdout.contains(&format!(
                "the reloads cost {} failed requests",
                tally.failed
            )),
            "{stdout}"
        );
    }
    assert!(
        tally.failed * 100 < tally.requests,
        "a reload loses a few requests, not a share: {stdout}"
    );
}

/// Waits until process `pid` is gone.
fn wait_gone(pid: u32) {
    while Path::new(&format!("/proc/{pid}")).exists() {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// An nginx of its own in a temporary directory, with or without the Lua module, and the ports of
/// a desired state for it; killed on drop.
struct Nginx {
    dir: tempfile::TempDir,
    /// blue, green, frontend.
    ports: [u16; 3],
}

impl Nginx {
    fn start(lua: bool) -> Nginx {
        require_tools(&["nginx"]);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().display().to_string();
        let modules = if lua {
            "load_module /usr/share/nginx/modules/ndk_http_module.so;\nload_module /usr/share/nginx/modules/ngx_http_lua_module.so;\n"
        } else {
            ""
        };
        std::fs::create_dir_all(dir.path().join("logs")).unwrap();
        std::fs::write(
            dir.path().join("nginx.conf"),
            format!("{modules}worker_processes 1;\npid {p}/nginx.pid;\nerror_log {p}/logs/error.log;\nevents {{ worker_connections 64; }}\nhttp {{\n    access_log off;\n    client_body_temp_path {p}/body;\n    proxy_temp_path {p}/proxy;\n    include {p}/kube-free.conf;\n}}\n"),
        )
        .unwrap();
        std::fs::write(dir.path().join("kube-free.conf"), "").unwrap();
        let nginx = Nginx {
            dir,
            ports: free_ports(),
        };
        nginx.run(&[]);
        nginx
    }

    /// `nginx -p <dir> -c nginx.conf ARGS`, which must succeed.
    fn run(&self, args: &[&str]) {
        let p = self.dir.path().display().to_string();
        let out = Command::new("nginx")
            .args(["-p", &p, "-c", "nginx.conf"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "nginx {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The frontend's address.
    fn frontend(&self) -> String {
        format!("127.0.0.1:{}", self.ports[2])
    }

    /// Kills the master and its workers with SIGKILL (a crash) and waits until they are gone.
    fn crash(&self) {
        let master = self.pid();
        let workers = String::from_utf8(
            Command::new("pgrep")
                .args(["-P", &master.to_string()])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        for pid in std::iter::once(master.to_string()).chain(workers.lines().map(str::to_owned)) {
            let _ = Command::new("kill").args(["-9", &pid]).status();
        }
        wait_gone(master);
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn pid(&self) -> u32 {
        std::fs::read_to_string(self.path("nginx.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// A desired state of the demo app `version` on this machine behind this nginx, in dynamic
    /// mode (with an admin socket) or `mode: reload`, with `extra` balancer keys.
    fn desired(&self, version: &str, mode: &str, extra: &str) -> String {
        let p = self.dir.path().display();
        let keys = match mode {
            "dynamic" => format!("\n    admin_socket: {p}/admin/nginx.sock"),
            _ => format!("\n    mode: {mode}"),
        };
        format!(
            r#"version: 1
hosts:
  here: {{ transport: local, state_dir: {p}/state }}
balancers:
  edge:
    kind: nginx
    host: here
    config_file: {p}/kube-free.conf
    reload_command: "nginx -p {p} -c nginx.conf -s reload"
    test_command: "nginx -p {p} -c nginx.conf -t -q"{keys}{extra}
apps:
  demo:
    runtime: {{ kind: process, command: "{demo} --listen 127.0.0.1:{{port}} --version {{version}}" }}
    slots: {{ blue: {blue}, green: {green} }}
    probe: {{ path: /readyz, interval: 200ms, timeout: 1s, healthy_after: 2, deadline: 20s }}
    drain: 2s
    bake: 0s
environments:
  local:
    balancer: edge
    hosts: [here]
    apps:
      demo: {{ version: "{version}", listen: "127.0.0.1:{listen}" }}
"#,
            demo = demo_binary().display(),
            blue = self.ports[0],
            green = self.ports[1],
            listen = self.ports[2],
        )
    }

    /// Instance records kube-free wrote (nothing started: none).
    fn instances(&self) -> usize {
        let dir = self.path("state/local/demo");
        std::fs::read_dir(dir).map_or(0, |d| d.count())
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        for f in ["blue", "green"] {
            let record = self.path(&format!("state/local/demo/{f}.json"));
            if let Ok(text) = std::fs::read_to_string(record) {
                let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                if let Some(pid) = json["pid"].as_u64() {
                    let _ = Command::new("kill").arg(pid.to_string()).status();
                }
            }
        }
        if let Ok(pid) = std::fs::read_to_string(self.path("nginx.pid")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
    }
}

#[test]
fn dynamic_mode_on_an_nginx_without_lua_fails_clearly_and_puts_the_file_back() {
    let nginx = Nginx::start(false);
    let repo = Repo::new();
    repo.write("kube-free.yaml", nginx.desired("1.0.0", "dynamic", ""));
    repo.commit("demo 1.0.0");
    let run = kube_free(&["reconcile", "--once", "--repo", repo.path_str()]);
    run.code(1)
        .stderr_has("refused the config kube-free rendered (the previous files are back)")
        .stderr_has("this nginx has no Lua module loaded")
        .stderr_has("kube-free nginx-snippet");
    assert_eq!(
        std::fs::read_to_string(nginx.path("kube-free.conf")).unwrap(),
        "",
        "the previous (empty) file is back"
    );
    // nginx still runs on its previous config.
    assert!(Path::new(&format!("/proc/{}", nginx.pid())).exists());
    assert_eq!(nginx.instances(), 0, "what got no traffic was cleaned up");
}

#[test]
fn a_lua_module_that_is_not_there_stops_the_run_before_any_change() {
    let nginx = Nginx::start(true);
    let repo = Repo::new();
    repo.write(
        "kube-free.yaml",
        nginx.desired(
            "1.0.0",
            "dynamic",
            "\n    lua_module: /usr/share/nginx/modules/no-such-module.so",
        ),
    );
    repo.commit("demo 1.0.0");
    let plan = kube_free(&["plan", "--repo", repo.path_str()]);
    plan.code(1).stderr_has(
        "balancers.edge.lua_module: \"/usr/share/nginx/modules/no-such-module.so\" is not a file on this host",
    );
    let run = kube_free(&["reconcile", "--once", "--repo", repo.path_str()]);
    assert_ne!(run.code, 0, "{}", run.stderr);
    run.stderr_has("balancers.edge.lua_module");
    assert_eq!(nginx.instances(), 0, "nothing started");
    assert_eq!(
        std::fs::read_to_string(nginx.path("kube-free.conf")).unwrap(),
        "",
        "the include file is untouched"
    );
}

#[test]
fn after_a_crash_nginx_starts_again_and_serves_at_once_with_its_weights() {
    let nginx = Nginx::start(true);
    let repo = Repo::new();
    repo.write("kube-free.yaml", nginx.desired("1.0.0", "dynamic", ""));
    repo.commit("demo 1.0.0");
    kube_free(&["reconcile", "--once", "--repo", repo.path_str()]).code(0);
    assert_eq!(http_get(&nginx.frontend(), "/version"), "1.0.0");
    let socket = nginx.path("admin/nginx.sock");
    // `nginx -t` beside the running nginx leaves its live socket alone.
    nginx.run(&["-t", "-q"]);
    assert!(socket.exists());
    kube_free(&["plan", "--repo", repo.path_str()]).code(0);

    // A crash leaves the socket file behind; nginx would not bind it again. kube-free's Lua removes
    // it at the next start, and seeds the weights: what served serves again at once.
    nginx.crash();
    assert!(socket.exists(), "the crash left the socket file");
    nginx.run(&[]);
    assert_eq!(http_get(&nginx.frontend(), "/version"), "1.0.0");
    kube_free(&["plan", "--repo", repo.path_str()])
        .code(0)
        .stdout_has("in sync");
}

#[test]
fn an_admin_socket_in_a_directory_others_can_enter_is_refused() {
    let nginx = Nginx::start(true);
    let repo = Repo::new();
    let shared = nginx.path("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let yaml = nginx
        .desired("1.0.0", "dynamic", "")
        .replace("/admin/nginx.sock", "/shared/nginx.sock");
    repo.write("kube-free.yaml", yaml);
    repo.commit("demo 1.0.0");
    kube_free(&["reconcile", "--once", "--repo", repo.path_str()])
        .code(1)
        .stderr_has("balancers.edge.admin_socket: its directory")
        .stderr_has("has mode 755");
    assert_eq!(
        std::fs::read_to_string(nginx.path("kube-free.conf")).unwrap(),
        ""
    );
}

#[test]
fn reload_mode_puts_the_previous_files_back_when_the_test_or_the_reload_fails() {
    let nginx = Nginx::start(false);
    let repo = Repo::new();
    repo.write("kube-free.yaml", nginx.desired("1.0.0", "reload", ""));
    repo.commit("demo 1.0.0");
    kube_free(&["reconcile", "--once", "--repo", repo.path_str()]).code(0);
    assert_eq!(http_get(&nginx.frontend(), "/version"), "1.0.0");
    // What nginx loads; the state file changes with the steps that need no reload (enable, drain).
    let files = || {
        ["state/nginx/edge.upstreams.conf", "kube-free.conf"]
            .map(|f| std::fs::read_to_string(nginx.path(f)).unwrap())
    };
    let serving_blue = || {
        let state = std::fs::read_to_string(nginx.path("state/nginx/edge.state")).unwrap();
        assert!(
            state.contains(
                "weight kf_local_demo here_blue 100\nstate kf_local_demo here_blue ready\n"
            ) && state.contains("weight kf_local_demo here_green 0\n"),
            "{state}"
        );
    };
    let before = files();

    // 2.0.0 with a test command that refuses: the weight move is not installed, and the files
    // (and the weights kube-free keeps) are as they were.
    let broken = |key: &str, command: &str| {
        nginx
            .desired("2.0.0", "reload", "")
            .lines()
            .map(|l| {
                if l.trim_start().starts_with(key) {
                    format!("    {key}: \"{command}\"")
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    for (key, command, says) in [
        (
            "test_command",
            "false",
            "`false` refused the config kube-free rendered",
        ),
        ("reload_command", "false", "`false` failed"),
    ] {
        repo.write("kube-free.yaml", broken(key, command));
        repo.commit(&format!("2.0.0 with {key} {command}"));
        let run = kube_free(&["reconcile", "--once", "--repo", repo.path_str()]);
        run.code(1).stderr_has(says);
        assert_eq!(files(), before, "{key}: the previous files are back");
        serving_blue();
        assert_eq!(http_get(&nginx.frontend(), "/version"), "1.0.0");
    }

    // nginx down: kube-free says so instead of reporting the servers of its files.
    let master = nginx.pid();
    nginx.run(&["-s", "stop"]);
    wait_gone(master);
    kube_free(&["plan", "--repo", repo.path_str()])
        .code(1)
        .stderr_has("nginx does not answer its generation endpoint");
    // Started again, it runs the files as they are; the fixed commit switches.
    nginx.run(&[]);
    repo.write("kube-free.yaml", nginx.desired("2.0.0", "reload", ""));
    repo.commit("2.0.0");
    kube_free(&["reconcile", "--once", "--repo", repo.path_str()]).code(0);
    assert_eq!(http_get(&nginx.frontend(), "/version"), "2.0.0");
}

#[test]
fn nginx_snippet_prints_the_lines_for_nginx_conf() {
    let nginx = Nginx::start(false);
    let repo = Repo::new();
    repo.write(
        "kube-free.yaml",
        nginx.desired(
            "1.0.0",
            "dynamic",
            "\n    lua_module: /opt/nginx/modules/ngx_http_lua_module.so",
        ),
    );
    repo.commit("dynamic");
    let run = kube_free(&["nginx-snippet", "--repo", repo.path_str()]);
    run.code(0)
        .stdout_has("load_module /opt/nginx/modules/ndk_http_module.so;\nload_module /opt/nginx/modules/ngx_http_lua_module.so;")
        .stdout_has(&format!("include {};", nginx.path("kube-free.conf").display()));
    // Three lines to copy: two `load_module` and the `include`.
    assert!(run.stdout.lines().filter(|l| !l.starts_with('#')).count() == 3);
    kube_free(&[
        "nginx-snippet",
        "--repo",
        repo.path_str(),
        "--balancer",
        "other",
    ])
    .code(2)
    .stderr_has("unknown nginx balancer \"other\"");
    repo.write("kube-free.yaml", nginx.desired("1.0.0", "reload", ""));
    repo.commit("reload");
    let run = kube_free(&["nginx-snippet", "--repo", repo.path_str()]);
    run.code(0)
        .stdout_has("(mode: reload)")
        .stdout_has("edge.upstreams.conf");
    assert!(!run.stdout.contains("load_module"), "{}", run.stdout);
}

#[test]
fn reload_mode_follows_a_frontend_that_moved() {
    let nginx = Nginx::start(false);
    let repo = Repo::new();
    repo.write("kube-free.yaml", nginx.desired("1.0.0", "reload", ""));
    repo.commit("demo 1.0.0");
    kube_free(&["reconcile", "--once", "--repo", repo.path_str()]).code(0);
    // The generation server moves with the first frontend: the installed files are still read at
    // the old one, and the new config is installed and reloaded.
    let moved = format!("127.0.0.1:{}", free_port());
    repo.write(
        "kube-free.yaml",
        nginx
            .desired("1.0.0", "reload", "")
            .replace(&nginx.frontend(), &moved),
    );
    repo.commit("the frontend moves");
    kube_free(&["plan", "--repo", repo.path_str()])
        .code(10)
        .stdout_has("apply config and reload balancer edge");
    kube_free(&["reconcile", "--once", "--repo", repo.path_str()]).code(0);
    assert_eq!(http_get(&moved, "/version"), "1.0.0");
    kube_free(&["plan", "--repo", repo.path_str()]).code(0);
}
