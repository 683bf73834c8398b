//! nginx `mode: dynamic` against a real nginx (Debian's 1.22 with `libnginx-mod-http-lua`) on
//! loopback: the include file rendered by `kube_free::drivers::nginx::dynamic::render`, the Lua
//! module it embeds, and the admin endpoint on its unix socket, spoken to as the driver does
//! (HTTP/1.0). Upstreams are the demo app and, where a slow or misbehaving server is needed, a
//! small server written here. One test per pitfall of the research note (1–8), then weights,
//! drain, health, reload/restart, bad input, counters and a wrk run while weights move.
//!
//! Each test starts its own nginx (`worker_processes 2`) in a temporary directory and stops it
//! when it ends (nextest runs each test in its own process).

mod common;
use common::*;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const FAST: &str = "kf_production_fast";
const LAZY: &str = "kf_production_lazy";
const BLUE: &str = "here_blue";
const GREEN: &str = "here_green";

fn require_nginx() {
    require_tools(&["nginx"]);
    assert!(
        Path::new("/usr/share/nginx/modules/ngx_http_lua_module.so").exists(),
        "the Lua module is missing: apt-get install libnginx-mod-http-lua"
    );
}

/// A child process killed (SIGKILL) when dropped.
struct Proc(Child);

impl Proc {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn wait_for_port(port: u16) {
    let until = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < until, "nothing listens on port {port}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The demo app on 127.0.0.1:`port`, answering with `version`.
fn demo(port: u16, version: &str, extra: &[&str]) -> Proc {
    let child = Command::new(demo_binary())
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--version",
            version,
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("demo app starts");
    wait_for_port(port);
    Proc(child)
}

/// What the server written here does with a request (other than `/readyz`, always 200 at once).
#[derive(Clone, Copy)]
enum Behaviour {
    /// Paths under `/slow` answer after this long, others at once.
    Slow(Duration),
    /// Reads the whole request, then closes the connection without an answer.
    CloseAfterRequest,
}

/// A small HTTP/1.1 server (keep-alive) that counts the requests it received (probes aside).
struct TestServer {
    stop: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    fn start(port: u16, behaviour: Behaviour) -> TestServer {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let (s, r) = (stop.clone(), received.clone());
        let accept = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let r = r.clone();
                        std::thread::spawn(move || serve(conn, behaviour, &r));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        TestServer {
            stop,
            received,
            accept: Some(accept),
        }
    }

    fn received(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(a) = self.accept.take() {
            let _ = a.join();
        }
    }
}

fn serve(mut conn: std::net::TcpStream, behaviour: Behaviour, received: &AtomicU64) {
    conn.set_nonblocking(false).unwrap();
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        while buf.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..head_end + length);
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
        if path != "/readyz" {
            received.fetch_add(1, Ordering::SeqCst);
            match behaviour {
                Behaviour::CloseAfterRequest => return,
                Behaviour::Slow(d) if path.starts_with("/slow") => std::thread::sleep(d),
                Behaviour::Slow(_) => {}
            }
        }
        let answer = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nx-version: test\r\n\r\ntest\n";
        if conn.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// One server's line of `GET /kube-free/servers`.
#[derive(Clone, Debug, PartialEq)]
struct Srv {
    admin: String,
    weight: u32,
    up: bool,
    check: String,
    inflight: i64,
    /// 1xx..5xx, other.
    n: [u64; 6],
    ce: u64,
    re: u64,
    label: String,
}

#[derive(Debug)]
struct Servers {
    generation: String,
    boot: String,
    list: Vec<((String, String), Srv)>,
}

impl Servers {
    fn parse(text: &str) -> Servers {
        let mut s = Servers {
            generation: String::new(),
            boot: String::new(),
            list: Vec::new(),
        };
        for line in text.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            match f[0] {
                "generation" => s.generation = f[1].to_owned(),
                "boot" => s.boot = f[1].to_owned(),
                "server" => {
                    assert!(f.len() >= 17, "short server line {line:?}");
                    let num = |i: usize| -> u64 { f[i].parse().unwrap() };
                    s.list.push((
                        (f[1].to_owned(), f[2].to_owned()),
                        Srv {
                            admin: f[3].to_owned(),
                            weight: f[4].parse().unwrap(),
                            up: match f[5] {
                                "up" => true,
                                "down" => false,
                                other => panic!("health {other:?} in {line:?}"),
                            },
                            check: f[6].to_owned(),
                            inflight: f[7].parse().unwrap(),
                            n: [num(8), num(9), num(10), num(11), num(12), num(13)],
                            ce: num(14),
                            re: num(15),
                            label: f[16..].join(" "),
                        },
                    ))
                }
                other => panic!("unexpected line {other:?} in\n{text}"),
            }
        }
        s
    }

    fn get(&self, backend: &str, server: &str) -> &Srv {
        self.list
            .iter()
            .find(|((b, s), _)| b == backend && s == server)
            .map(|(_, s)| s)
            .unwrap_or_else(|| panic!("no {backend}/{server} in {self:?}"))
    }
}

/// One nginx with the rendered include file, in a temporary directory.
struct Lab {
    dir: tempfile::TempDir,
    nginx: Option<Child>,
    yaml: String,
    /// Frontend ports.
    fast: u16,
    lazy: u16,
    /// Slot ports: fast blue, fast green, lazy blue, lazy green.
    fb: u16,
    fg: u16,
    lb: u16,
    lg: u16,
}

impl Lab {
    fn start() -> Lab {
        Lab::start_patched(|c| c)
    }

    /// Starts nginx on the rendered file as `patch` changes it.
    fn start_patched(patch: impl Fn(String) -> String) -> Lab {
        require_nginx();
        let dir = tempfile::tempdir().unwrap();
        let [fast, lazy, fb, fg, lb, lg] = free_ports();
        let d = dir.path().display().to_string();
        // `fast`: checked every 100 ms. `lazy`: checked once when it leaves maintenance, then
        // every 30 s, so a server that stopped stays UP long enough to test retries.
        let yaml = format!(
            r#"version: 1
hosts:
  here: {{ transport: local, state_dir: {d}/state }}
balancers:
  edge: {{ kind: nginx, host: here, admin_socket: {d}/admin/nginx-admin.sock, config_file: {d}/kube-free.conf }}
apps:
  fast:
    runtime: {{ kind: process, command: "/bin/false {{port}}" }}
    slots: {{ blue: {fb}, green: {fg} }}
    probe: {{ path: /readyz, interval: 100ms, timeout: 500ms, healthy_after: 1, deadline: 5s }}
  lazy:
    runtime: {{ kind: process, command: "/bin/false {{port}}" }}
    slots: {{ blue: {lb}, green: {lg} }}
    probe: {{ path: /readyz, interval: 30s, timeout: 1s, healthy_after: 1, deadline: 60s }}
environments:
  production:
    balancer: edge
    hosts: [here]
    apps:
      fast: {{ version: "1", listen: "127.0.0.1:{fast}", strategy: blue-green }}
      lazy: {{ version: "1", listen: "127.0.0.1:{lazy}", strategy: blue-green }}
"#
        );
        std::fs::create_dir_all(dir.path().join("admin")).unwrap();
        std::fs::create_dir_all(dir.path().join("state/nginx")).unwrap();
        std::fs::write(
            dir.path().join("nginx.conf"),
            format!(
                "load_module /usr/share/nginx/modules/ndk_http_module.so;\n\
                 load_module /usr/share/nginx/modules/ngx_http_lua_module.so;\n\
                 worker_processes 2;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
                 events {{ worker_connections 1024; }}\n\
                 http {{\n    access_log off;\n    client_body_temp_path {d}/body;\n    proxy_temp_path {d}/proxy;\n\
                 fastcgi_temp_path {d}/fastcgi;\n    uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;\n\
                 include {d}/kube-free.conf;\n}}\n"
            ),
        )
        .unwrap();
        let mut lab = Lab {
            dir,
            nginx: None,
            yaml,
            fast,
            lazy,
            fb,
            fg,
            lb,
            lg,
        };
        let conf = patch(lab.render(&lab.yaml.clone()));
        std::fs::write(lab.path("kube-free.conf"), conf).unwrap();
        lab.start_nginx();
        lab
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn render(&self, yaml: &str) -> String {
        let desired = kube_free::desired::load(
            &kube_free::desired::MemFiles::default().with("kube-free.yaml", yaml),
        )
        .unwrap_or_else(|e| panic!("invalid desired state: {e:?}"));
        kube_free::drivers::nginx::dynamic::render(&desired, "edge")
    }

    fn start_nginx(&mut self) {
        let d = self.dir.path().display().to_string();
        let child = Command::new("nginx")
            .args([
                "-p",
                &d,
                "-c",
                &format!("{d}/nginx.conf"),
                "-g",
                "daemon off;",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx starts");
        self.nginx = Some(child);
        let until = Instant::now() + Duration::from_secs(10);
        while self.try_admin("GET", "/kube-free/servers", "").is_none() {
            assert!(
                Instant::now() < until,
                "nginx did not answer on its admin socket:\n{}",
                self.error_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn master(&self) -> u32 {
        self.nginx.as_ref().unwrap().id()
    }

    /// The worker processes of the running master.
    fn workers(&self) -> Vec<u32> {
        let master = self.master().to_string();
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            let after = &stat[stat.rfind(')').unwrap() + 2..];
            let ppid = after.split(' ').nth(1).unwrap_or("");
            let cmd = std::fs::read_to_string(e.path().join("cmdline")).unwrap_or_default();
            if ppid == master && cmd.contains("worker process") && !cmd.contains("shutting") {
                out.push(pid);
            }
        }
        out
    }

    /// SIGQUIT (graceful stop), then waits.
    fn stop_nginx(&mut self) {
        if let Some(mut c) = self.nginx.take() {
            signal(c.id(), "QUIT");
            let until = Instant::now() + Duration::from_secs(10);
            while c.try_wait().unwrap().is_none() {
                if Instant::now() > until {
                    let _ = c.kill();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// `nginx -s reload` (SIGHUP to the master); returns when the admin endpoint answers with
    /// `generation` from a worker that was not there before.
    fn reload(&self, generation: &str) {
        let before = self.workers();
        signal(self.master(), "HUP");
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let now = self.workers();
            if self.servers().generation == generation
                && now.len() == 2
                && now.iter().all(|w| !before.contains(w))
            {
                return;
            }
            assert!(
                Instant::now() < until,
                "no new workers after the reload:\n{}",
                self.error_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.path("error.log")).unwrap_or_default()
    }

    fn try_admin(&self, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
        let mut s = UnixStream::connect(self.path("admin/nginx-admin.sock")).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.0\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .ok()?;
        let mut reply = String::new();
        s.read_to_string(&mut reply).ok()?;
        let (head, body) = reply.split_once("\r\n\r\n")?;
        let code = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((code, body.to_owned()))
    }

    fn admin(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        self.try_admin(method, path, body)
            .unwrap_or_else(|| panic!("no answer from the admin socket:\n{}", self.error_log()))
    }

    fn servers(&self) -> Servers {
        let (code, body) = self.admin("GET", "/kube-free/servers", "");
        assert_eq!(code, 200, "{body}");
        Servers::parse(&body)
    }

    fn srv(&self, backend: &str, server: &str) -> Srv {
        self.servers().get(backend, server).clone()
    }

    /// POST /kube-free/apply, which must succeed; the read-back.
    fn apply(&self, body: &str) -> Servers {
        let (code, answer) = self.admin("POST", "/kube-free/apply", body);
        assert_eq!(code, 200, "apply {body:?}: {answer}");
        Servers::parse(&answer)
    }

    fn wait_until(&self, what: &str, secs: u64, cond: impl Fn(&Servers) -> bool) {
        let until = Instant::now() + Duration::from_secs(secs);
        loop {
            let s = self.servers();
            if cond(&s) {
                return;
            }
            assert!(
                Instant::now() < until,
                "timed out waiting for {what}: {s:#?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn wait_up(&self, backend: &str, server: &str, up: bool) {
        self.wait_until(&format!("{backend}/{server} up={up}"), 5, |s| {
            s.get(backend, server).up == up
        });
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop_nginx();
    }
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

/// One GET over a fresh connection: the status and the version that answered (its `x-version`), or
/// (0, "") when the connection failed.
fn get(port: u16, path: &str) -> (u16, String) {
    let (code, reply) = raw(port, "GET", path, "");
    (code, version_of(&reply))
}

fn raw(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    let code = reply
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, reply)
}

fn version_of(reply: &str) -> String {
    reply
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("x-version")
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_default()
}

/// `n` GETs, each on a fresh connection; counts by (status, version).
fn tally(port: u16, path: &str, n: usize) -> std::collections::BTreeMap<(u16, String), usize> {
    let mut out = std::collections::BTreeMap::new();
    for _ in 0..n {
        *out.entry(get(port, path)).or_insert(0) += 1;
    }
    // nginx runs the log phase (where the counters are kept) after the response went out.
    std::thread::sleep(Duration::from_millis(50));
    out
}

fn only(t: &std::collections::BTreeMap<(u16, String), usize>, code: u16, version: &str) -> bool {
    t.len() == 1 && t.contains_key(&(code, version.to_owned()))
}

/// Blue and green of `fast` as demo apps v1 and v2, both ready and UP, weights as given.
fn fast_pair(lab: &Lab, blue: u32, green: u32) -> (Proc, Proc) {
    let b = demo(lab.fb, "v1", &[]);
    let g = demo(lab.fg, "v2", &[]);
    lab.apply(&format!(
        "state {FAST} {BLUE} ready\nstate {FAST} {GREEN} ready\nweight {FAST} {BLUE} {blue}\nweight {FAST} {GREEN} {green}\n"
    ));
    lab.wait_up(FAST, BLUE, true);
    lab.wait_up(FAST, GREEN, true);
    (b, g)
}

// ---------------------------------------------------------------------------------------------
// Pitfalls (research note, "Pitfalls to test").

/// Pitfall 1: with no eligible server (all in maintenance; weights 0/0; all DOWN) the request gets
/// 503 from the access phase and nginx never tries the `0.0.0.1` placeholder.
#[test]
fn pitfall_1_no_eligible_server_answers_503_and_never_the_placeholder() {
    let lab = Lab::start();
    // Fresh: every server in maintenance, weight 0.
    let s = lab.servers();
    assert_eq!(s.list.len(), 4, "{s:?}");
    assert!(s
        .list
        .iter()
        .all(|(_, v)| v.admin == "maint" && v.weight == 0 && !v.up));
    assert!(only(&tally(lab.fast, "/", 10), 503, ""));

    let pair = fast_pair(&lab, 0, 0);
    assert!(only(&tally(lab.fast, "/", 10), 503, ""), "weights 0/0");

    lab.apply(&format!(
        "weight {FAST} {BLUE} 50\nweight {FAST} {GREEN} 50\n"
    ));
    let t = tally(lab.fast, "/", 20);
    assert!(t.keys().all(|(c, _)| *c == 200), "{t:?}");
    drop(pair);
    lab.wait_up(FAST, BLUE, false);
    lab.wait_up(FAST, GREEN, false);
    assert!(only(&tally(lab.fast, "/", 10), 503, ""), "both DOWN");

    let log = lab.error_log();
    assert!(
        !log.contains("0.0.0.1"),
        "nginx tried the placeholder:\n{log}"
    );
}

/// Pitfall 2: a change is seen by every worker on the next request (the dict is read per request;
/// no per-worker copy to sync). 200 fresh connections right after the answer, spread over both
/// workers, all follow it.
#[test]
fn pitfall_2_a_change_applies_to_every_worker_at_once() {
    let lab = Lab::start();
    let (_b, _g) = fast_pair(&lab, 100, 0);
    assert!(only(&tally(lab.fast, "/", 50), 200, "v1"));
    lab.apply(&format!(
        "weight {FAST} {BLUE} 0\nweight {FAST} {GREEN} 100\n"
    ));
    let t = tally(lab.fast, "/", 200);
    assert!(only(&t, 200, "v2"), "{t:?}");
}

/// Pitfall 3: two pushes within one second both take effect (no second-granularity sync).
#[test]
fn pitfall_3_two_pushes_within_one_second_both_apply() {
    let lab = Lab::start();
    let (_b, _g) = fast_pair(&lab, 100, 0);
    for round in 0..10 {
        let (to, from, v) = if round % 2 == 0 {
            (GREEN, BLUE, "v2")
        } else {
            (BLUE, GREEN, "v1")
        };
        let started = Instant::now();
        lab.apply(&format!(
            "weight {FAST} {from} 100\nweight {FAST} {to} 100\n"
        ));
        let back = lab.apply(&format!("weight {FAST} {from} 0\n"));
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(back.get(FAST, from).weight, 0);
        assert_eq!(back.get(FAST, to).weight, 100);
        let t = tally(lab.fast, "/", 20);
        assert!(only(&t, 200, v), "round {round}: {t:?}");
    }
}

/// Pitfall 4: weights, states, counters and in-flight survive a reload (the dict's name and size
/// never change, so nginx keeps the zone), also when the file changed (a new generation); after a
/// full stop and start they are re-seeded from the state file, with a new boot id.
#[test]
fn pitfall_4_reload_keeps_weights_states_counters_and_a_restart_reseeds() {
    let mut lab = Lab::start();
    let b = TestServer::start(lab.fb, Behaviour::Slow(Duration::from_millis(1500)));
    let _g = demo(lab.fg, "v2", &[]);
    lab.apply(&format!(
        "state {FAST} {BLUE} ready\nstate {FAST} {GREEN} drain\nweight {FAST} {BLUE} 30\nweight {FAST} {GREEN} 70\n"
    ));
    lab.wait_up(FAST, BLUE, true);
    lab.wait_up(FAST, GREEN, true);
    assert!(only(&tally(lab.fast, "/", 20), 200, "test"));
    let before = lab.servers();

    // A request in flight across the reload.
    let fast = lab.fast;
    let slow = std::thread::spawn(move || get(fast, "/slow"));
    lab.wait_until("one in flight", 5, |s| s.get(FAST, BLUE).inflight == 1);

    // Same file: same generation, new workers.
    lab.reload(&before.generation);
    let after = lab.servers();
    assert_eq!(after.boot, before.boot);
    for (key, s) in &before.list {
        let a = after.get(&key.0, &key.1);
        assert_eq!(
            (&a.admin, a.weight, a.n, a.ce),
            (&s.admin, s.weight, s.n, s.ce),
            "{key:?}"
        );
    }
    assert_eq!(slow.join().unwrap(), (200, "test".to_owned()));
    lab.wait_until("in flight back to 0 (old worker)", 5, |s| {
        s.get(FAST, BLUE).inflight == 0
    });

    // Another file (the lazy app's probe timeout): a new generation, the same weights.
    let yaml = lab.yaml.replace("timeout: 1s", "timeout: 2s");
    let conf = lab.render(&yaml);
    let generation = kube_free::drivers::nginx::dynamic::generation_in(&conf)
        .unwrap()
        .to_owned();
    assert_ne!(generation, before.generation);
    std::fs::write(lab.path("kube-free.conf"), &conf).unwrap();
    lab.reload(&generation);
    let s = lab.servers();
    assert_eq!(s.boot, before.boot);
    assert_eq!(s.get(FAST, BLUE).weight, 30);
    assert_eq!(s.get(FAST, GREEN).admin, "drain");
    assert_eq!(s.get(FAST, BLUE).n[1], before.get(FAST, BLUE).n[1] + 1);
    // The new workers check health: green stopping is seen.
    drop(_g);
    lab.wait_up(FAST, GREEN, false);

    // Full stop and start: the dict is gone; the state file re-seeds it (unknown servers and bad
    // lines are skipped).
    std::fs::write(
        lab.path("state/nginx/edge.state"),
        format!(
            "# saved by kube-free\nweight {FAST} {BLUE} 42\nstate {FAST} {BLUE} ready\nweight {FAST} gone 5\nweight {FAST} {GREEN} 400\nstate {LAZY} {GREEN} drain\nweight {LAZY} {GREEN} 7\n"
        ),
    )
    .unwrap();
    lab.stop_nginx();
    lab.start_nginx();
    let s = lab.servers();
    assert_ne!(s.boot, before.boot);
    assert_eq!(s.generation, generation);
    let blue = s.get(FAST, BLUE);
    assert_eq!((blue.admin.as_str(), blue.weight), ("ready", 42));
    assert_eq!(blue.n, [0; 6], "counters start again after a restart");
    let green = s.get(FAST, GREEN);
    assert_eq!((green.admin.as_str(), green.weight), ("maint", 0));
    let lg = s.get(LAZY, GREEN);
    assert_eq!((lg.admin.as_str(), lg.weight), ("drain", 7));
    // Re-seeded servers start DOWN and come UP after a passing check.
    lab.wait_up(FAST, BLUE, true);
    assert!(only(&tally(lab.fast, "/", 10), 200, "test"));
    drop(b);
}

/// Pitfall 5: a retry goes to another peer than the dead one it tried (nginx's own retry would
/// pick the single placeholder again), and a POST that reached a server is not re-sent. Also
/// pitfall 8's second half: `$upstream_addr`/`_status`/`_connect_time` with retries are paired
/// right (connection errors on the dead peer, 2xx on the live one).
#[test]
fn pitfall_5_retries_skip_the_dead_peer_and_a_sent_post_is_not_retried() {
    let lab = Lab::start();
    let mut b = demo(lab.lb, "v1", &[]);
    let _g = demo(lab.lg, "v2", &[]);
    lab.apply(&format!(
        "state {LAZY} {BLUE} ready\nstate {LAZY} {GREEN} ready\nweight {LAZY} {BLUE} 90\nweight {LAZY} {GREEN} 10\n"
    ));
    lab.wait_up(LAZY, BLUE, true);
    lab.wait_up(LAZY, GREEN, true);
    // Blue dies; its next check is 30 s away, so it stays UP (and chosen 90% of the time).
    b.kill();
    let t = tally(lab.lazy, "/", 100);
    assert!(only(&t, 200, "v2"), "{t:?}");
    let s = lab.servers();
    let (blue, green) = (s.get(LAZY, BLUE), s.get(LAZY, GREEN));
    assert!(blue.up, "{blue:?}");
    assert!(
        blue.ce >= 60,
        "connection errors on the dead peer: {blue:?}"
    );
    assert_eq!(blue.n, [0; 6]);
    assert_eq!(green.n[1], 100, "{green:?}");
    assert_eq!((green.ce, green.re), (0, 0));
    assert_eq!((blue.inflight, green.inflight), (0, 0));

    // A server that takes the request and closes without answering: GET is retried on green,
    // a POST that was sent is not (502, and it reached blue only).
    let ce_before = lab.srv(LAZY, BLUE).ce;
    let closer = TestServer::start(lab.lb, Behaviour::CloseAfterRequest);
    let t = tally(lab.lazy, "/", 50);
    assert!(only(&t, 200, "v2"), "GET: {t:?}");
    let got_get = closer.received();
    assert!(got_get >= 20, "blue saw {got_get} GETs");
    let before = lab.srv(LAZY, GREEN).n[1];
    let mut bad = 0;
    for _ in 0..50 {
        match raw(lab.lazy, "POST", "/", "payload").0 {
            200 => {}
            502 => bad += 1,
            other => panic!("POST answered {other}"),
        }
    }
    std::thread::sleep(Duration::from_millis(50));
    let s = lab.servers();
    assert!(bad >= 20, "{bad} POSTs failed");
    assert_eq!(
        closer.received() - got_get,
        bad,
        "a failed POST reached blue once"
    );
    assert_eq!(
        s.get(LAZY, GREEN).n[1] - before,
        50 - bad,
        "no POST retried on green"
    );
    // Every request blue took is a failed attempt on blue: a response error, or (when the close
    // races nginx's send) a connection error.
    let blue = s.get(LAZY, BLUE);
    assert_eq!(
        blue.re + blue.ce - ce_before,
        got_get + bad,
        "failed attempts counted: {blue:?}"
    );
    assert!(blue.re + 2 >= got_get + bad, "response errors: {blue:?}");
    assert_eq!(s.get(LAZY, BLUE).n[4], 0);
}

/// Pitfall 6: with keep-alive connections to the old app idle in nginx's pool, draining it and
/// then killing it loses no request (POST under wrk): a drained server gets no new request, so no
/// request is ever sent on a connection the kill closes.
#[test]
fn pitfall_6_killing_a_drained_app_with_idle_keepalive_connections_loses_no_post() {
    require_tools(&["wrk"]);
    let _turn = load_test_turn();
    let lab = Lab::start();
    let (mut b, _g) = fast_pair(&lab, 100, 0);
    let load = Load::start(&format!("http://127.0.0.1:{}/", lab.fast), 4, "POST");
    std::thread::sleep(Duration::from_secs(1));
    lab.apply(&format!(
        "weight {FAST} {GREEN} 100\nstate {FAST} {BLUE} drain\nweight {FAST} {BLUE} 0\n"
    ));
    lab.wait_until("blue drained", 5, |s| s.get(FAST, BLUE).inflight == 0);
    b.kill();
    let t = load.finish();
    assert_eq!(t.failed, 0, "{}", t.text);
    assert!(
        t.served_by("v1") > 100 && t.served_by("v2") > 100,
        "{}",
        t.text
    );
    let s = lab.servers();
    assert_eq!(s.get(FAST, GREEN).inflight, 0);
}

/// Pitfall 7: in flight after a client abort (499) and an internal redirect goes back to 0 — the
/// log phase finds the peers in `$upstream_addr` (one pass per redirect), not in `ngx.ctx`, which
/// a redirect clears. After `kill -9` of a worker with a request in flight the counter stays
/// stuck at 1 for good (nothing runs the dead worker's log phase): the driver must not wait for
/// in-flight 0 forever and bounds a drain by the app's `drain` time.
#[test]
fn pitfall_7_in_flight_after_client_abort_internal_redirect_and_worker_kill() {
    // The fast frontend with an internal redirect on 500s to a named location that proxies again.
    let lab = Lab::start_patched(|conf| {
        let at = conf.find(&format!("kube_free.access(\"{FAST}\")")).unwrap();
        let end = at + conf[at..].find("    }\n").unwrap() + "    }\n".len();
        let mut c = conf.clone();
        c.insert_str(
            end,
            &format!("    location @again {{\n        proxy_pass http://{FAST};\n    }}\n"),
        );
        c.insert_str(
            at + conf[at..].find("proxy_connect_timeout 2s;").unwrap(),
            "proxy_intercept_errors on;\n        error_page 500 = @again;\n        ",
        );
        c
    });
    let slow = TestServer::start(lab.fb, Behaviour::Slow(Duration::from_secs(3)));
    lab.apply(&format!(
        "state {FAST} {BLUE} ready\nweight {FAST} {BLUE} 100\n"
    ));
    lab.wait_up(FAST, BLUE, true);

    // Client abort.
    let mut c = std::net::TcpStream::connect(("127.0.0.1", lab.fast)).unwrap();
    write!(c, "GET /slow HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    lab.wait_until("in flight", 5, |s| s.get(FAST, BLUE).inflight == 1);
    drop(c);
    let t0 = Instant::now();
    lab.wait_until("in flight 0 after the abort", 5, |s| {
        s.get(FAST, BLUE).inflight == 0
    });
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "seen only when the server answered"
    );
    let s = lab.srv(FAST, BLUE);
    assert_eq!(
        (s.re, s.ce),
        (0, 0),
        "a client abort is not the server's fault: {s:?}"
    );

    // Internal redirect: blue answers 500 twice (first pass, then @again).
    drop(slow);
    let mut boom = demo(lab.fb, "v1", &["--fail-path", "/boom"]);
    // The checks may have seen the port closed between the two servers: one check interval with
    // the demo app listening, then UP.
    std::thread::sleep(Duration::from_millis(300));
    lab.wait_up(FAST, BLUE, true);
    let before = lab.srv(FAST, BLUE);
    assert_eq!(get(lab.fast, "/boom").0, 500);
    std::thread::sleep(Duration::from_millis(50)); // the log phase runs after the response
    let after = lab.srv(FAST, BLUE);
    assert_eq!(
        after.n[4] - before.n[4],
        2,
        "both passes counted: {after:?}"
    );
    assert_eq!(after.inflight, 0, "{after:?}");

    // kill -9 of the workers while a request is in flight: the counter stays at 1.
    boom.kill();
    let _slow = TestServer::start(lab.fb, Behaviour::Slow(Duration::from_secs(2)));
    lab.wait_up(FAST, BLUE, true);
    let fast = lab.fast;
    let client = std::thread::spawn(move || get(fast, "/slow"));
    lab.wait_until("in flight", 5, |s| s.get(FAST, BLUE).inflight == 1);
    for w in lab.workers() {
        signal(w, "KILL");
    }
    assert_eq!(
        client.join().unwrap().0,
        0,
        "the client lost its connection"
    );
    std::thread::sleep(Duration::from_millis(2500));
    lab.wait_until("workers back", 5, |_| lab.workers().len() == 2);
    assert_eq!(
        lab.srv(FAST, BLUE).inflight,
        1,
        "in flight after kill -9 of the worker (documented as stuck)"
    );
    assert_eq!(get(lab.fast, "/").0, 200, "the respawned workers serve");
}

/// Pitfall 8: canary at 0/100 with one side empty or DOWN: traffic goes to the eligible side only
/// (weights count among eligible servers); with the weighted side DOWN and the other at 0, 503.
#[test]
fn pitfall_8_canary_with_one_side_down_or_empty() {
    let lab = Lab::start();
    let _b = demo(lab.fb, "v1", &[]);
    // Green: nothing listens (DOWN once checked).
    lab.apply(&format!(
        "state {FAST} {BLUE} ready\nstate {FAST} {GREEN} ready\nweight {FAST} {BLUE} 1\nweight {FAST} {GREEN} 99\n"
    ));
    lab.wait_up(FAST, BLUE, true);
    lab.wait_until("green failed twice", 5, |s| {
        s.get(FAST, GREEN).check == "failed" && !s.get(FAST, GREEN).up
    });
    let t = tally(lab.fast, "/", 100);
    assert!(only(&t, 200, "v1"), "1/99 with green DOWN: {t:?}");

    lab.apply(&format!(
        "weight {FAST} {BLUE} 100\nweight {FAST} {GREEN} 0\n"
    ));
    assert!(only(&tally(lab.fast, "/", 30), 200, "v1"), "100/0");

    lab.apply(&format!(
        "weight {FAST} {BLUE} 0\nweight {FAST} {GREEN} 100\n"
    ));
    assert!(
        only(&tally(lab.fast, "/", 30), 503, ""),
        "0/100 with green DOWN"
    );

    lab.apply(&format!(
        "weight {FAST} {BLUE} 5\nstate {FAST} {GREEN} maint\n"
    ));
    assert!(
        only(&tally(lab.fast, "/", 30), 200, "v1"),
        "5/100 with green in maint"
    );
    let s = lab.srv(FAST, GREEN);
    assert_eq!(
        (s.ce, s.n[1], s.n[4]),
        (0, 0, 0),
        "green never chosen: {s:?}"
    );
}

// ---------------------------------------------------------------------------------------------

/// Weights move traffic proportionally: 10/90 serves blue 7–13% over 1000 requests.
#[test]
fn weights_move_traffic_proportionally() {
    let lab = Lab::start();
    let (_b, _g) = fast_pair(&lab, 10, 90);
    let t = tally(lab.fast, "/", 1000);
    let blue = t.get(&(200, "v1".to_owned())).copied().unwrap_or(0);
    let green = t.get(&(200, "v2".to_owned())).copied().unwrap_or(0);
    assert_eq!(blue + green, 1000, "{t:?}");
    assert!((70..=130).contains(&blue), "blue served {blue} of 1000");
    let s = lab.servers();
    assert_eq!(s.get(FAST, BLUE).n[1] as usize, blue);
    assert_eq!(s.get(FAST, GREEN).n[1] as usize, green);
}

/// Drain: a draining server gets no new request (even at weight 100) while its in-flight requests
/// finish, and in-flight reaches 0.
#[test]
fn drain_takes_no_new_requests_and_in_flight_reaches_zero() {
    let lab = Lab::start();
    let blue = TestServer::start(lab.fb, Behaviour::Slow(Duration::from_millis(1500)));
    let _g = demo(lab.fg, "v2", &[]);
    lab.apply(&format!(
        "state {FAST} {BLUE} ready\nweight {FAST} {BLUE} 100\nstate {FAST} {GREEN} ready\nweight {FAST} {GREEN} 100\n"
    ));
    lab.wait_up(FAST, BLUE, true);
    lab.wait_up(FAST, GREEN, true);
    lab.apply(&format!("weight {FAST} {GREEN} 0\n"));
    let fast = lab.fast;
    let slow: Vec<_> = (0..3)
        .map(|_| std::thread::spawn(move || get(fast, "/slow")))
        .collect();
    lab.wait_until("3 in flight", 5, |s| s.get(FAST, BLUE).inflight == 3);
    let s = lab.apply(&format!(
        "state {FAST} {BLUE} drain\nweight {FAST} {GREEN} 100\n"
    ));
    assert_eq!(s.get(FAST, BLUE).admin, "drain");
    assert!(s.get(FAST, BLUE).label.contains("DRAIN"), "{s:?}");
    let got = blue.received();
    let t = tally(lab.fast, "/", 50);
    assert!(only(&t, 200, "v2"), "{t:?}");
    assert_eq!(blue.received(), got, "a draining server got a new request");
    assert_eq!(lab.srv(FAST, BLUE).inflight, 3);
    for h in slow {
        assert_eq!(h.join().unwrap(), (200, "test".to_owned()));
    }
    lab.wait_until("drained", 5, |s| s.get(FAST, BLUE).inflight == 0);
}

/// Health: a stopped server goes DOWN after two failed checks (passing through "UP 1/2") and gets
/// no traffic; it is UP again after one passing check; a server leaving maintenance starts DOWN.
#[test]
fn health_checks_rise_one_fall_two_and_leaving_maint_starts_down() {
    let lab = Lab::start();
    let (mut b, _g) = fast_pair(&lab, 50, 50);
    assert_eq!(lab.srv(FAST, BLUE).check, "passed");
    b.kill();
    let mut saw_half = false;
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let s = lab.srv(FAST, BLUE);
        if s.up && s.check == "failed" {
            saw_half = true;
            assert!(s.label.starts_with("UP 1/2"), "{s:?}");
        }
        if !s.up {
            assert_eq!(s.check, "failed");
            assert!(s.label.starts_with("DOWN"), "{s:?}");
            break;
        }
        assert!(Instant::now() < until, "blue never went DOWN: {s:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        saw_half,
        "DOWN after a single failed check (fall must be 2)"
    );
    assert!(only(&tally(lab.fast, "/", 50), 200, "v2"));
    assert_eq!(lab.srv(FAST, BLUE).ce, 0, "a DOWN server was tried");

    let _b2 = demo(lab.fb, "v1", &[]);
    lab.wait_up(FAST, BLUE, true);
    let t = tally(lab.fast, "/", 100);
    assert!(t.contains_key(&(200, "v1".to_owned())), "{t:?}");

    // Maintenance clears health; leaving it starts DOWN with no check, then UP after one pass.
    let s = lab.apply(&format!("state {FAST} {BLUE} maint\n"));
    let blue = s.get(FAST, BLUE);
    assert_eq!(
        (blue.up, blue.check.as_str(), blue.label.as_str()),
        (false, "none", "MAINT")
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        lab.srv(FAST, BLUE).check,
        "none",
        "a server in maint is not checked"
    );
    let s = lab.apply(&format!("state {FAST} {BLUE} ready\n"));
    assert_eq!(
        (s.get(FAST, BLUE).up, s.get(FAST, BLUE).check.as_str()),
        (false, "none")
    );
    lab.wait_up(FAST, BLUE, true);
    assert_eq!(lab.srv(FAST, BLUE).check, "passed");
}

/// Apply checks every line first: any bad one → 400 naming the line, and nothing changed. Other
/// paths → 404.
#[test]
fn apply_with_a_bad_line_changes_nothing() {
    let lab = Lab::start();
    let good = format!("# comment\n\nweight {FAST} {BLUE} 10\n");
    let before = lab.servers();
    for (bad, what) in [
        (format!("weight nope {BLUE} 1"), "unknown backend"),
        (format!("weight {FAST} nope 1"), "unknown server"),
        (format!("weight {FAST} {BLUE} 101"), "bad weight"),
        (format!("weight {FAST} {BLUE} -1"), "bad weight"),
        (format!("weight {FAST} {BLUE} 1.5"), "bad weight"),
        (format!("state {FAST} {BLUE} up"), "bad state"),
        (format!("state {FAST} {BLUE} ready now"), "3 words"),
        (format!("drain {FAST} {BLUE}"), "unknown command"),
    ] {
        let (code, body) = lab.admin("POST", "/kube-free/apply", &format!("{good}{bad}\n"));
        assert_eq!(code, 400, "{bad}: {body}");
        assert!(body.starts_with("error: line 4: "), "{bad}: {body}");
        assert!(body.contains(what), "{bad}: {body}");
    }
    let after = lab.servers();
    assert_eq!(format!("{:?}", before.list), format!("{:?}", after.list));
    assert_eq!(lab.admin("GET", "/other", "").0, 404);
    assert_eq!(lab.admin("GET", "/kube-free/apply", "").0, 404);
    let s = lab.apply(&format!("{good}state {FAST} {BLUE} drain\r\n"));
    let blue = s.get(FAST, BLUE);
    assert_eq!((blue.weight, blue.admin.as_str()), (10, "drain"));
}

/// Counters by class and connection errors: 2xx and 5xx from the app, connection errors on a dead
/// peer (every try of a request, no other server to retry on: 502).
#[test]
fn counters_by_class_and_connection_errors() {
    let lab = Lab::start();
    let _b = demo(lab.fb, "v1", &["--fail-path", "/boom"]);
    lab.apply(&format!(
        "state {FAST} {BLUE} ready\nweight {FAST} {BLUE} 100\n"
    ));
    lab.wait_up(FAST, BLUE, true);
    assert!(only(&tally(lab.fast, "/", 5), 200, "v1"));
    assert!(only(&tally(lab.fast, "/boom", 3), 500, "v1"));
    let s = lab.srv(FAST, BLUE);
    assert_eq!(s.n, [0, 5, 0, 0, 3, 0], "{s:?}");
    assert_eq!((s.ce, s.re, s.inflight), (0, 0, 0));

    let mut b = demo(lab.lb, "v1", &[]);
    lab.apply(&format!(
        "state {LAZY} {BLUE} ready\nweight {LAZY} {BLUE} 100\n"
    ));
    lab.wait_up(LAZY, BLUE, true);
    b.kill();
    assert!(only(&tally(lab.lazy, "/", 4), 502, ""));
    let s = lab.srv(LAZY, BLUE);
    assert_eq!(s.ce, 12, "3 tries per request: {s:?}");
    assert_eq!((s.n, s.re, s.inflight), ([0; 6], 0, 0));
}

/// Zero failed requests under wrk keep-alive GET load while the weights move 0→100 in steps.
#[test]
fn no_failed_request_under_load_while_weights_move() {
    require_tools(&["wrk"]);
    let _turn = load_test_turn();
    let lab = Lab::start();
    let (_b, _g) = fast_pair(&lab, 100, 0);
    let load = Load::start(&format!("http://127.0.0.1:{}/", lab.fast), 5, "GET");
    std::thread::sleep(Duration::from_millis(500));
    for green in [10, 25, 50, 75, 90, 100] {
        lab.apply(&format!(
            "weight {FAST} {GREEN} {green}\nweight {FAST} {BLUE} {}\n",
            100 - green
        ));
        std::thread::sleep(Duration::from_millis(600));
    }
    let t = load.finish();
    assert_eq!(t.failed, 0, "{}", t.text);
    assert!(t.requests > 1000, "{}", t.text);
    assert!(
        t.served_by("v1") > 100 && t.served_by("v2") > 100,
        "{}",
        t.text
    );
    lab.wait_until("nothing in flight", 5, |s| {
        s.get(FAST, BLUE).inflight == 0 && s.get(FAST, GREEN).inflight == 0
    });
    let s = lab.servers();
    let (b, g) = (s.get(FAST, BLUE), s.get(FAST, GREEN));
    // wrk does not count the requests its connections had in flight when it stopped.
    assert!(b.n[1] + g.n[1] >= t.requests, "{s:?}");
    assert_eq!((b.ce, g.ce, b.re, g.re), (0, 0, 0, 0));
}
