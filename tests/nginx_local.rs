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

/// An nginx of its own in a temporary directory, with or without the Lua module; killed on drop.
struct Nginx {
    dir: tempfile::TempDir,
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
        let out = Command::new("nginx")
            .args(["-p", &p, "-c", "nginx.conf"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Nginx { dir }
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

    /// A desired state of the demo app on this machine behind this nginx, in dynamic mode, with
    /// `extra` balancer keys.
    fn desired(&self, extra: &str) -> String {
        let p = self.dir.path().display();
        format!(
            r#"version: 1
hosts:
  here: {{ transport: local, state_dir: {p}/state }}
balancers:
  edge:
    kind: nginx
    host: here
    config_file: {p}/kube-free.conf
    admin_socket: {p}/admin/nginx.sock
    reload_command: "nginx -p {p} -c nginx.conf -s reload"
    test_command: "nginx -p {p} -c nginx.conf -t -q"{extra}
apps:
  demo:
    runtime: {{ kind: process, command: "{demo} --listen 127.0.0.1:{{port}} --version {{version}}" }}
    slots: {{ blue: {blue}, green: {green} }}
    probe: {{ path: /readyz, interval: 200ms, timeout: 1s, healthy_after: 2, deadline: 20s }}
    drain: 2s
environments:
  local:
    balancer: edge
    hosts: [here]
    apps:
      demo: {{ version: "1.0.0", listen: "127.0.0.1:{listen}" }}
"#,
            demo = demo_binary().display(),
            blue = free_port(),
            green = free_port(),
            listen = free_port(),
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
    repo.write("kube-free.yaml", nginx.desired(""));
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
        nginx.desired("\n    lua_module: /usr/share/nginx/modules/no-such-module.so"),
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
