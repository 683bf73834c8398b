//! nginx in `mode: reload` (plain nginx, no Lua): what kube-free renders and reads. The include
//! file (`config_file`) holds the frontends and includes the upstreams file, which lists every
//! server with `weight=` or `down` and is rewritten for every change; both are checked with the
//! test command and loaded by a reload. Weights and admin states are kept by kube-free in the state
//! file (the apply format of [`super::Line`]), health is asked of each server from the balancer host
//! (curl), in-flight requests to a drained server are those of the workers still shutting down
//! after the reload that took it out, and counters are summed from an access log in kube-free's own
//! format. Pure functions; the driver ([`super::Nginx`]) runs them.

use super::{Entry, Peer};
use crate::drivers::Cmd;
use crate::observed::{Admin, Check, Server, ServerCounters, Servers};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Name of the log format kube-free declares in the include file.
const LOG_FORMAT: &str = "kube_free_upstreams";

/// The files of a reload-mode balancer under its host's `state_dir`.
pub struct Paths {
    /// Weights and states (apply format).
    pub state: String,
    /// The upstreams file the include file includes.
    pub upstreams: String,
    /// The access log counters are summed from.
    pub log: String,
}

impl Paths {
    pub fn new(state_dir: &str, balancer: &str) -> Paths {
        let dir = format!("{}/nginx", state_dir.trim_end_matches('/'));
        Paths {
            state: format!("{dir}/{balancer}.state"),
            upstreams: format!("{dir}/{balancer}.upstreams.conf"),
            log: format!("{dir}/{balancer}.access.log"),
        }
    }
}

/// The include file (http context): the log format, the upstreams file, and per environment and
/// app a server block for its `listen` that proxies to its upstream. Weights are not in it, so it
/// changes only when frontends or servers do.
pub fn render(peers: &[Peer], frontends: &[(String, String)], paths: &Paths) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Managed by kube-free from the desired state (nginx, mode: reload); changes here are overwritten.\n\
         # Weights and states are in {}, rewritten and reloaded for every change.\n",
        paths.upstreams
    );
    let _ = writeln!(
        out,
        "log_format {LOG_FORMAT} '$upstream_addr|$upstream_status|$upstream_connect_time|$upstream_header_time';"
    );
    for (backend, listen) in frontends {
        let _ = writeln!(
            out,
            "\nserver {{\n    listen {listen};\n    access_log {} {LOG_FORMAT};\n    location / {{\n        proxy_pass http://{backend};\n        proxy_http_version 1.1;\n        proxy_set_header Connection \"\";\n        proxy_set_header Host $host;\n        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n        proxy_next_upstream error timeout;\n        proxy_next_upstream_tries 3;\n        proxy_connect_timeout 2s;\n    }}\n}}",
            paths.log
        );
    }
    // After the frontends: the generation server it holds is then never a listen's default server.
    let _ = writeln!(out, "\ninclude {};", paths.upstreams);
    // Every server must exist in the upstreams file for the file to be valid; the servers list is
    // part of what this file stands for.
    let _ = writeln!(out, "\n# servers:");
    for p in peers {
        let _ = writeln!(out, "#   {} {} {}", p.backend, p.server, p.address);
    }
    out
}

/// The `Host` of the generation endpoint: a name no client sends (`.invalid` is reserved).
pub const GENERATION_HOST: &str = "kube-free-generation.invalid";

/// The upstreams file for `peers` with the weights and states of `state` (a server it does not
/// know is in maintenance with weight 0) and, on the first frontend's `listen`, a server named
/// [`GENERATION_HOST`] that answers the generation of the loaded files (and the pid of the worker
/// answering) to requests from the balancer host itself.
pub fn render_upstreams(
    peers: &[Peer],
    state: &BTreeMap<(String, String), Entry>,
    generation_listen: Option<&str>,
    include: &str,
) -> String {
    let mut body = String::new();
    let mut backends: Vec<&str> = peers.iter().map(|p| p.backend.as_str()).collect();
    backends.dedup();
    for backend in backends {
        let _ = writeln!(body, "upstream {backend} {{");
        for p in peers.iter().filter(|p| p.backend == backend) {
            let e = state
                .get(&(p.backend.clone(), p.server.clone()))
                .copied()
                .unwrap_or_default();
            // nginx has no weight 0: a server that must get no new requests is `down`.
            if e.admin == Admin::Ready && e.weight > 0 {
                let _ = writeln!(
                    body,
                    "    server {} weight={}; # {}",
                    p.address, e.weight, p.server
                );
            } else {
                let _ = writeln!(body, "    server {} down; # {}", p.address, p.server);
            }
        }
        let _ = writeln!(body, "    keepalive 32;\n}}");
    }
    let generation = super::generation(&format!("{include}\n{body}"));
    let mut out = format!(
        "# Managed by kube-free: weights and states of nginx balancer servers; rewritten for every change.\n\
         # generation {generation}\n\n{body}"
    );
    if let Some(listen) = generation_listen {
        let _ = write!(
            out,
            "\nserver {{\n    listen {listen};\n    server_name {GENERATION_HOST};\n    access_log off;\n    location = /kube-free/generation {{\n{}        deny all;\n        default_type text/plain;\n        return 200 \"generation {generation}\\npid $pid\\n\";\n    }}\n    location / {{\n        return 404;\n    }}\n}}\n",
            allow_local(listen)
        );
    }
    out
}

/// `allow` lines for the addresses a request from the balancer host itself comes from, when it
/// is sent to `listen`: loopback, and the listen address when it is a specific one.
fn allow_local(listen: &str) -> String {
    let mut out = "        allow 127.0.0.0/8;\n        allow ::1;\n".to_owned();
    let address = local_address(listen);
    if !address.starts_with("127.") && address != "[::1]" {
        let _ = writeln!(out, "        allow {};", address.trim_matches(['[', ']']));
    }
    out
}

/// The address the balancer host reaches `listen` (`ADDRESS:PORT`) at: loopback for a wildcard.
pub fn local_address(listen: &str) -> String {
    let address = listen.rsplit_once(':').map_or(listen, |(a, _)| a);
    match address {
        "" | "*" | "0.0.0.0" => "127.0.0.1".to_owned(),
        "[::]" => "[::1]".to_owned(),
        a => a.to_owned(),
    }
}

/// The URL of the generation endpoint on `listen`, from the balancer host.
pub fn generation_url(listen: &str) -> String {
    let port = listen.rsplit_once(':').map_or("80", |(_, p)| p);
    format!(
        "http://{}:{port}/kube-free/generation",
        local_address(listen)
    )
}

/// Asks, on the balancer host, the generation endpoint at `url`.
pub fn generation_cmd(url: &str) -> Cmd {
    Cmd::read([
        "curl",
        "-s",
        "--max-time",
        "2",
        "-H",
        &format!("Host: {GENERATION_HOST}"),
        "--",
        url,
    ])
}

/// The generation written in an upstreams file.
pub fn generation_of(upstreams: &str) -> Option<&str> {
    upstreams
        .lines()
        .find_map(|l| l.strip_prefix("# generation "))
}

/// One command that reads, on the balancer host, what `servers` needs: the state file, how many
/// workers of this nginx are still shutting down, each server's health (curl, unless in
/// maintenance) and the counters summed from the access log.
pub fn observe_cmd(
    paths: &Paths,
    generation_url: &str,
    probes: &[(String, String, String)],
    timeout_secs: f64,
) -> Cmd {
    let mut argv: Vec<String> = [
        "sh",
        "-c",
        OBSERVE_SCRIPT,
        "kube-free-nginx",
        &paths.state,
        &paths.log,
        generation_url,
        &format!("{timeout_secs:.1}"),
    ]
    .map(str::to_owned)
    .to_vec();
    for (backend, server, url) in probes {
        argv.extend([backend.clone(), server.clone(), url.clone()]);
    }
    Cmd::read(argv)
}

const OBSERVE_SCRIPT: &str = r###"state=$1 log=$2 url=$3 timeout=$4; shift 4
echo "## state"; test ! -e "$state" || cat -- "$state"
answer=$(curl -s --max-time 2 -H 'Host: kube-free-generation.invalid' -- "$url")
pid=$(printf '%s\n' "$answer" | sed -n 's/^pid //p')
echo "## generation $(printf '%s\n' "$answer" | sed -n 's/^generation //p')"
old=0
if [ -n "$pid" ] && [ -r "/proc/$pid/stat" ]; then
  master=$(cut -d' ' -f4 "/proc/$pid/stat")
  for c in $(pgrep -P "$master"); do
    if tr '\0' ' ' < "/proc/$c/cmdline" 2>/dev/null | grep -q 'shutting down'; then old=$((old+1)); fi
  done
fi
echo "## shutting_down $old"
while [ $# -ge 3 ]; do
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time "$timeout" -- "$3" 2>/dev/null)
  echo "probe $1 $2 ${code:-000}"
  shift 3
done
echo "## counters"
test ! -e "$log" || awk -F'|' '{
  n = split($1, a, /, | : /); split($2, s, /, | : /); split($3, c, /, | : /); split($4, h, /, | : /)
  for (i = 1; i <= n; i++) {
    k = a[i]
    if (c[i] == "-") ce[k]++
    else if (h[i] == "-") re[k]++
    else { cl = substr(s[i], 1, 1); if (cl ~ /^[1-5]$/) r[k " " cl]++; else r[k " x"]++ }
  }
} END {
  for (k in ce) print "ce", k, ce[k]
  for (k in re) print "re", k, re[k]
  for (k in r) print "r", k, r[k]
}' "$log"
"###;

/// What [`observe_cmd`] printed, for the servers `peers` of the installed config.
pub struct Observation {
    pub state: BTreeMap<(String, String), Entry>,
    pub generation: Option<String>,
    pub shutting_down: u64,
    /// (backend, server) → HTTP status of the probe (`000`: no answer).
    pub probes: BTreeMap<(String, String), String>,
    /// address → counters.
    pub counters: BTreeMap<String, ServerCounters>,
}

pub fn parse_observation(text: &str) -> Observation {
    let mut o = Observation {
        state: BTreeMap::new(),
        generation: None,
        shutting_down: 0,
        probes: BTreeMap::new(),
        counters: BTreeMap::new(),
    };
    let mut section = "";
    let mut state_text = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("## ") {
            section = rest.split_whitespace().next().unwrap_or("");
            let value = rest.split_whitespace().nth(1);
            match section {
                "generation" => o.generation = value.map(str::to_owned),
                "shutting_down" => {
                    o.shutting_down = value.and_then(|v| v.parse().ok()).unwrap_or(0)
                }
                _ => {}
            }
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        match (section, f.as_slice()) {
            ("state", _) => {
                state_text.push_str(line);
                state_text.push('\n');
            }
            (_, ["probe", b, s, code]) => {
                o.probes
                    .insert((b.to_string(), s.to_string()), code.to_string());
            }
            ("counters", [kind, addr, rest @ ..]) => {
                let c = o.counters.entry(addr.to_string()).or_default();
                match (*kind, rest) {
                    ("ce", [n]) => c.connection_errors += n.parse().unwrap_or(0),
                    ("re", [n]) => c.response_errors += n.parse().unwrap_or(0),
                    ("r", [class, n]) => {
                        let i = match *class {
                            "1" => 0,
                            "2" => 1,
                            "3" => 2,
                            "4" => 3,
                            "5" => 4,
                            _ => 5,
                        };
                        c.responses[i] += n.parse().unwrap_or(0);
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    o.state = super::parse_state(&state_text);
    o
}

/// The servers of the installed config as the observation shows them.
pub fn servers(peers: &[Peer], o: &Observation) -> Servers {
    peers
        .iter()
        .map(|p| {
            let key = (p.backend.clone(), p.server.clone());
            let e = o.state.get(&key).copied().unwrap_or_default();
            let code = o.probes.get(&key).map(String::as_str);
            let passed = code.is_some_and(|c| c.starts_with('2'));
            let (up, check) = match (e.admin, code) {
                (Admin::Maint, _) | (_, None) => (false, Check::None),
                _ => (passed, if passed { Check::Passed } else { Check::Failed }),
            };
            let mut label = match (e.admin, up) {
                (Admin::Maint, _) => "MAINT".to_owned(),
                (Admin::Drain, _) => "DRAIN".to_owned(),
                (Admin::Ready, true) => "UP".to_owned(),
                (Admin::Ready, false) => "DOWN".to_owned(),
            };
            if let Some(c) = code.filter(|_| e.admin != Admin::Maint) {
                let _ = write!(
                    label,
                    " (check: {})",
                    if c == "000" { "no answer" } else { c }
                );
            }
            let server = Server {
                admin: e.admin,
                up,
                check,
                weight: e.weight,
                // A drained server gets no new requests from the workers now running; requests
                // sent to it before are in the workers still shutting down.
                sessions: if e.admin == Admin::Drain {
                    o.shutting_down
                } else {
                    0
                },
                counters: o.counters.get(&p.address).copied().unwrap_or_default(),
                label,
            };
            (key, server)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers() -> Vec<Peer> {
        vec![
            Peer::new("kf_p_api", "web-1_blue", "10.0.0.11:8000"),
            Peer::new("kf_p_api", "web-1_green", "10.0.0.11:8001"),
        ]
    }

    #[test]
    fn upstreams_have_no_weight_zero_and_a_generation_endpoint() {
        let mut state = BTreeMap::new();
        state.insert(
            ("kf_p_api".to_owned(), "web-1_blue".to_owned()),
            Entry {
                admin: Admin::Ready,
                weight: 100,
            },
        );
        state.insert(
            ("kf_p_api".to_owned(), "web-1_green".to_owned()),
            Entry {
                admin: Admin::Ready,
                weight: 0,
            },
        );
        let up = render_upstreams(&peers(), &state, Some("0.0.0.0:80"), "inc");
        assert!(
            up.contains("    server 10.0.0.11:8000 weight=100; # web-1_blue\n"),
            "{up}"
        );
        assert!(
            up.contains("    server 10.0.0.11:8001 down; # web-1_green\n"),
            "{up}"
        );
        assert!(
            up.contains("    listen 0.0.0.0:80;\n    server_name kube-free-generation.invalid;"),
            "{up}"
        );
        assert!(
            up.contains("allow 127.0.0.0/8;\n        allow ::1;\n        deny all;"),
            "{up}"
        );
        let generation = generation_of(&up).unwrap();
        assert_eq!(generation.len(), 16);
        assert!(up.contains(&format!(
            "return 200 \"generation {generation}\\npid $pid\\n\";"
        )));
        // Another weight is another generation.
        state.insert(
            ("kf_p_api".to_owned(), "web-1_green".to_owned()),
            Entry {
                admin: Admin::Ready,
                weight: 50,
            },
        );
        let other = render_upstreams(&peers(), &state, Some("0.0.0.0:80"), "inc");
        assert_ne!(generation_of(&other), Some(generation));
    }

    #[test]
    fn the_generation_endpoint_is_reached_from_the_balancer_host() {
        assert_eq!(
            generation_url("0.0.0.0:80"),
            "http://127.0.0.1:80/kube-free/generation"
        );
        assert_eq!(
            generation_url("[::]:8080"),
            "http://[::1]:8080/kube-free/generation"
        );
        assert_eq!(
            generation_url("10.0.0.10:443"),
            "http://10.0.0.10:443/kube-free/generation"
        );
        assert!(allow_local("10.0.0.10:443").contains("allow 10.0.0.10;"));
        assert_eq!(
            generation_cmd("http://127.0.0.1:80/kube-free/generation").to_string(),
            "curl -s --max-time 2 -H 'Host: kube-free-generation.invalid' -- http://127.0.0.1:80/kube-free/generation"
        );
    }

    #[test]
    fn an_observation_becomes_servers() {
        let text = "## state\nweight kf_p_api web-1_blue 100\nstate kf_p_api web-1_blue ready\nweight kf_p_api web-1_green 0\nstate kf_p_api web-1_green drain\n## generation abc\n## shutting_down 2\nprobe kf_p_api web-1_blue 200\nprobe kf_p_api web-1_green 000\n## counters\nr 10.0.0.11:8000 2 70\nr 10.0.0.11:8000 5 3\nce 10.0.0.11:8001 4\nr kf_p_api 5 9\n";
        let o = parse_observation(text);
        assert_eq!(o.generation.as_deref(), Some("abc"));
        let s = servers(&peers(), &o);
        let blue = &s[&("kf_p_api".to_owned(), "web-1_blue".to_owned())];
        assert!(blue.checked_up() && blue.serving());
        assert_eq!(blue.counters.responses, [0, 70, 0, 0, 3, 0]);
        assert_eq!(blue.sessions, 0);
        let green = &s[&("kf_p_api".to_owned(), "web-1_green".to_owned())];
        assert_eq!(
            (green.admin, green.up, green.check, green.sessions),
            (Admin::Drain, false, Check::Failed, 2)
        );
        assert_eq!(green.counters.connection_errors, 4);
        assert_eq!(green.label, "DRAIN (check: no answer)");
    }

    #[test]
    fn the_observe_command_passes_every_value_as_an_argument() {
        let paths = Paths::new("/var/lib/kube-free/", "edge");
        assert_eq!(paths.state, "/var/lib/kube-free/nginx/edge.state");
        let cmd = observe_cmd(
            &paths,
            "http://127.0.0.1:80/kube-free/generation",
            &[(
                "kf_p_api".into(),
                "web-1_blue".into(),
                "http://10.0.0.11:8000/r?a=$(x)".into(),
            )],
            2.0,
        );
        assert_eq!(&cmd.argv[..2], ["sh", "-c"]);
        assert_eq!(
            &cmd.argv[3..],
            [
                "kube-free-nginx",
                "/var/lib/kube-free/nginx/edge.state",
                "/var/lib/kube-free/nginx/edge.access.log",
                "http://127.0.0.1:80/kube-free/generation",
                "2.0",
                "kf_p_api",
                "web-1_blue",
                "http://10.0.0.11:8000/r?a=$(x)"
            ]
        );
        assert!(!cmd.changes);
    }
}
