//! nginx in `mode: dynamic`: the include file kube-free owns (rendered here) and the Lua module it
//! embeds (`kube_free.lua`), which picks each request's peer by weight from a shared dict, checks
//! health in a timer, counts outcomes in the log phase and serves the admin endpoint.
//!
//! The admin endpoint (on the unix socket `admin_socket`, HTTP/1.0 is enough):
//! - `GET /kube-free/servers` → 200, `generation <g>`, `boot <id>`, then one line per server:
//!   `server <backend> <server> <admin> <weight> <up|down> <passed|failed|none> <inflight> <n1> <n2>
//!   <n3> <n4> <n5> <nx> <ce> <re> <label...>`;
//! - `POST /kube-free/apply` with lines `weight <backend> <server> <0..100>` and
//!   `state <backend> <server> ready|drain|maint` → 200 and the same read-back, or 400
//!   `error: line <n>: <what>` with nothing changed.

use crate::desired::DesiredState;
use crate::names::{backend_name, server_name};
use std::fmt::Write as _;

/// The shared dict's name. Never change it (nor [`DICT_SIZE`]): nginx keeps a zone across a reload
/// only when name, tag and size are identical, and the weights live in it.
pub const DICT: &str = "kube_free";
/// The shared dict's size; fixed forever, see [`DICT`].
pub const DICT_SIZE: &str = "16m";

/// The Lua module, embedded in the rendered file's `init_by_lua_block`.
pub const LUA_MODULE: &str = include_str!("kube_free.lua");

/// Where kube-free keeps the weights and states of a dynamic nginx balancer, on its host: the
/// Lua module seeds its dict from it after a restart.
pub fn state_file(state_dir: &str, balancer: &str) -> String {
    format!("{}/nginx/{balancer}.state", state_dir.trim_end_matches('/'))
}

/// `s` as a Lua string literal: `\`, `"` and every byte outside printable ASCII escaped (`\ddd`,
/// always three digits, so a digit that follows cannot join the escape).
pub fn lua_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for &b in s.as_bytes() {
        match b {
            b'\\' => out.push_str("\\\\"),
            b'"' => out.push_str("\\\""),
            0x20..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "\\{b:03}");
            }
        }
    }
    out.push('"');
    out
}

/// The generation of the file rendered for `balancer`: the first 16 hex digits of the SHA-256 of
/// the file rendered with an empty generation. The admin endpoint answers with the generation of
/// the worker that serves it, so a reload is done when it answers with this one.
pub fn generation(desired: &DesiredState, balancer: &str) -> String {
    super::generation(&render_with(desired, balancer, ""))
}

/// The generation written in a rendered file (what [`generation`] computed when it was rendered).
pub fn generation_in(rendered: &str) -> Option<&str> {
    const KEY: &str = "\n  generation = \"";
    let at = rendered.find(KEY)? + KEY.len();
    let len = rendered[at..].find('"')?;
    Some(&rendered[at..at + len])
}

/// Seconds as Lua reads them (at least 0.001).
fn secs(d: std::time::Duration) -> String {
    format!("{}", (d.as_millis().max(1) as f64) / 1000.0)
}

/// The include file for `balancer` (http context).
pub fn render(desired: &DesiredState, balancer: &str) -> String {
    render_with(desired, balancer, &generation(desired, balancer))
}

fn render_with(desired: &DesiredState, balancer: &str, generation: &str) -> String {
    let b = desired.balancers.get(balancer);
    let state_dir = b
        .and_then(|b| desired.hosts.get(&b.host))
        .map_or("/var/lib/kube-free", |h| h.state_dir.as_str());
    let admin_socket = b.map_or("", |b| b.admin_socket.as_str());
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Managed by kube-free from the desired state (balancer {balancer}); changes here are overwritten."
    );
    let _ = writeln!(
        out,
        "# Weights and server states change at runtime, through the admin socket.\n"
    );
    let _ = writeln!(out, "lua_shared_dict {DICT} {DICT_SIZE};");
    let _ = writeln!(out, "lua_socket_log_errors off;\n");

    let mut backends = String::new();
    let mut frontends = String::new();
    for env in desired.environments_of(balancer) {
        for (app_name, d) in &env.apps {
            let Some(app) = desired.apps.get(app_name) else {
                continue;
            };
            let name = backend_name(&env.name, app_name);
            let _ = writeln!(
                backends,
                "    {{ name = {}, check = {{ path = {}, interval = {}, timeout = {}, rise = 1, fall = 2 }}, servers = {{",
                lua_string(&name),
                lua_string(&app.probe.path),
                secs(app.probe.interval.max(std::time::Duration::from_millis(100))),
                secs(app.probe.timeout),
            );
            for host in &env.hosts {
                for slot in &d.slots {
                    let _ = writeln!(
                        backends,
                        "      {{ name = {}, host = {}, port = {} }},",
                        lua_string(&server_name(host, &slot.name)),
                        lua_string(&desired.host_address(host)),
                        slot.port
                    );
                }
            }
            let _ = writeln!(backends, "    }} }},");
            let _ = writeln!(
                frontends,
                r#"
upstream {name} {{
    server 0.0.0.1;   # placeholder, never used: the peer is chosen in Lua
    balancer_by_lua_block {{ kube_free.balance({q}) }}
    keepalive 32;
}}

server {{
    listen {listen};
    location / {{
        access_by_lua_block {{ kube_free.access({q}) }}
        proxy_pass http://{name};
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $host;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_next_upstream error timeout;
        proxy_next_upstream_tries 3;
        proxy_connect_timeout 2s;
    }}
    log_by_lua_block {{ kube_free.log() }}
}}"#,
                q = lua_string(&name),
                listen = d.listen,
            );
        }
    }

    let _ = writeln!(out, "init_by_lua_block {{");
    out.push_str(LUA_MODULE);
    let _ = writeln!(
        out,
        "\nkube_free.configure({{\n  generation = {},\n  state_file = {},\n  admin_socket = {},\n  backends = {{",
        lua_string(generation),
        lua_string(&state_file(state_dir, balancer)),
        lua_string(admin_socket),
    );
    out.push_str(&backends);
    let _ = writeln!(out, "  }},\n}})\n}}\n");
    let _ = writeln!(
        out,
        "init_worker_by_lua_block {{ kube_free.init_worker() }}\n"
    );
    let _ = writeln!(
        out,
        "server {{\n    listen unix:{admin_socket};\n    access_log off;\n    client_max_body_size 1m;\n    client_body_buffer_size 1m;\n    location / {{ content_by_lua_block {{ kube_free.admin() }} }}\n}}"
    );
    out.push_str(&frontends);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::desired;

    fn nginx_yaml(dir: &str) -> String {
        format!(
            r#"version: 1
hosts:
  web-1: {{ address: 192.0.2.11 }}
  web-2: {{ address: "2001:db8::12" }}
  lb-1: {{ address: 192.0.2.10, state_dir: {dir}/state }}
balancers:
  edge: {{ kind: nginx, host: lb-1, admin_socket: {dir}/admin.sock }}
apps:
  api:
    runtime: {{ kind: process, command: "/opt/api/{{version}}/api --port {{port}}" }}
    slots: {{ blue: 8000, green: 8001 }}
    probe: {{ path: /ready, interval: 100ms, timeout: 1500ms, healthy_after: 2, deadline: 2s }}
environments:
  prod:
    balancer: edge
    hosts: [web-1, web-2]
    apps:
      api: {{ version: "2.0", listen: "127.0.0.1:18080", strategy: blue-green }}
  staging:
    balancer: edge
    hosts: [web-1]
    apps:
      api: {{ version: "2.0", listen: "127.0.0.1:18081", strategy: blue-green, slots: {{ blue: 9000, green: 9001 }} }}
"#
        )
    }

    #[test]
    fn lua_strings_escape_quotes_backslashes_and_every_unprintable_byte() {
        assert_eq!(lua_string("web-1_blue"), r#""web-1_blue""#);
        assert_eq!(lua_string(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(lua_string("a\nb\t1\r"), r#""a\010b\0091\013""#);
        assert_eq!(lua_string("\u{0}7"), r#""\0007""#);
        assert_eq!(lua_string("\u{7f}é"), r#""\127\195\169""#);
        assert_eq!(lua_string(""), r#""""#);
        assert_eq!(lua_string("]]--[["), r#""]]--[[""#);
    }

    #[test]
    fn rendering_is_deterministic_and_names_every_server_in_order() {
        let d = desired(&nginx_yaml("/srv/kf"));
        let a = render(&d, "edge");
        assert_eq!(a, render(&d, "edge"));
        let g = generation(&d, "edge");
        assert_eq!(g.len(), 16);
        assert_eq!(generation_in(&a), Some(g.as_str()));
        assert!(a.contains(&format!("lua_shared_dict {DICT} {DICT_SIZE};")));
        assert!(a.contains(r#"state_file = "/srv/kf/state/nginx/edge.state""#));
        assert!(a.contains("listen unix:/srv/kf/admin.sock;"));
        let order: Vec<usize> = [
            r#"{ name = "kf_prod_api", check = { path = "/ready", interval = 0.1, timeout = 1.5, rise = 1, fall = 2 }"#,
            r#"{ name = "web-1_blue", host = "192.0.2.11", port = 8000 }"#,
            r#"{ name = "web-1_green", host = "192.0.2.11", port = 8001 }"#,
            r#"{ name = "web-2_blue", host = "[2001:db8::12]", port = 8000 }"#,
            r#"{ name = "web-2_green", host = "[2001:db8::12]", port = 8001 }"#,
            r#"{ name = "kf_staging_api""#,
            r#"{ name = "web-1_blue", host = "192.0.2.11", port = 9000 }"#,
            "upstream kf_prod_api {",
            "listen 127.0.0.1:18080;",
            r#"kube_free.access("kf_prod_api")"#,
            "upstream kf_staging_api {",
            "listen 127.0.0.1:18081;",
        ]
        .iter()
        .map(|n| a.find(n).unwrap_or_else(|| panic!("{n} missing from\n{a}")))
        .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");

        // Another version of the desired state with other servers: another generation.
        let other = desired(&nginx_yaml("/srv/kf").replace("9001", "9002"));
        assert_ne!(generation(&other, "edge"), g);
    }

    /// The rendered file, included in an nginx.conf that loads the modules, passes `nginx -t` (run
    /// when nginx and the Lua module are installed, as on the test machine).
    #[test]
    fn the_rendered_file_passes_nginx_t() {
        let module = "/usr/share/nginx/modules/ngx_http_lua_module.so";
        if !std::path::Path::new(module).exists()
            || std::process::Command::new("nginx")
                .arg("-v")
                .output()
                .is_err()
        {
            eprintln!("nginx or its Lua module is not installed: skipped");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let yaml = nginx_yaml(d).replace("\"2001:db8::12\"", "192.0.2.12");
        let conf = render(&desired(&yaml), "edge");
        std::fs::write(dir.path().join("kube-free.conf"), &conf).unwrap();
        std::fs::write(
            dir.path().join("nginx.conf"),
            format!(
                "load_module /usr/share/nginx/modules/ndk_http_module.so;\nload_module {module};\n\
                 worker_processes 2;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
                 events {{ worker_connections 64; }}\n\
                 http {{\n    access_log off;\n    client_body_temp_path {d};\n    proxy_temp_path {d};\n    include {d}/kube-free.conf;\n}}\n"
            ),
        )
        .unwrap();
        let out = std::process::Command::new("nginx")
            .args(["-t", "-p", d, "-c", &format!("{d}/nginx.conf")])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "nginx -t failed:\n{}\n{conf}",
            String::from_utf8_lossy(&out.stderr)
        );
        // And a file broken on purpose fails: the check can fail.
        std::fs::write(
            dir.path().join("kube-free.conf"),
            conf.replace("kube_free.configure({", "kube_free.configure({{"),
        )
        .unwrap();
        let out = std::process::Command::new("nginx")
            .args(["-t", "-p", d, "-c", &format!("{d}/nginx.conf")])
            .output()
            .unwrap();
        assert!(!out.status.success(), "a broken Lua block passed nginx -t");
    }
}
