//! Test harness: temporary Git repositories made with the `git` command, runs of the real
//! `kube-free` binary with their exit code, stdout and stderr, and load on a frontend: wrk's
//! ([`Load`], its [`Tally`]) and keep-alive requests timed one by one ([`KeepAliveLoad`]).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// A temporary Git repository, built file by file and commit by commit.
pub struct Repo {
    dir: tempfile::TempDir,
}

/// A `git` command isolated from the user's and the system's configuration.
pub fn git(dir: &Path) -> Command {
    let mut cmd = Command::new("git");
    cmd.current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "kube-free tests")
        .env("GIT_AUTHOR_EMAIL", "tests@kube-free.invalid")
        .env("GIT_COMMITTER_NAME", "kube-free tests")
        .env("GIT_COMMITTER_EMAIL", "tests@kube-free.invalid");
    cmd
}

pub fn run_git(dir: &Path, args: &[&str]) -> String {
    let out = git(dir).args(args).output().expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

impl Repo {
    pub fn new() -> Repo {
        let dir = tempfile::tempdir().expect("temp dir");
        run_git(dir.path(), &["init", "-q", "-b", "main"]);
        Repo { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn path_str(&self) -> &str {
        self.dir.path().to_str().unwrap()
    }

    /// Writes a file in the work tree (not committed).
    pub fn write(&self, path: &str, content: impl AsRef<[u8]>) -> &Self {
        let full = self.dir.path().join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, content).unwrap();
        self
    }

    pub fn remove(&self, path: &str) -> &Self {
        std::fs::remove_file(self.dir.path().join(path)).unwrap();
        self
    }

    /// Commits everything in the work tree; returns the commit id.
    pub fn commit(&self, message: &str) -> String {
        run_git(self.path(), &["add", "-A"]);
        run_git(
            self.path(),
            &["commit", "-q", "--allow-empty", "-m", message],
        );
        self.head()
    }

    pub fn head(&self) -> String {
        run_git(self.path(), &["rev-parse", "HEAD"])
    }

    pub fn git(&self, args: &[&str]) -> String {
        run_git(self.path(), args)
    }
}

/// A finished run of the binary.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn code(&self, expected: i32) -> &Self {
        assert_eq!(
            self.code, expected,
            "exit code {} (expected {expected})\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }

    pub fn stdout_has(&self, needle: &str) -> &Self {
        assert!(
            self.stdout.contains(needle),
            "stdout lacks {needle:?}\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    pub fn stderr_has(&self, needle: &str) -> &Self {
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}\nstderr:\n{}",
            self.stderr
        );
        self
    }

    pub fn stdout_lacks(&self, needle: &str) -> &Self {
        assert!(
            !self.stdout.contains(needle),
            "stdout has {needle:?}\nstdout:\n{}",
            self.stdout
        );
        self
    }

    pub fn stderr_lacks(&self, needle: &str) -> &Self {
        assert!(
            !self.stderr.contains(needle),
            "stderr has {needle:?}\nstderr:\n{}",
            self.stderr
        );
        self
    }
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kube-free"))
}

/// Runs `kube-free ARGS` with a private cache directory and no inherited KUBE_FREE_* settings.
pub fn kube_free(args: &[&str]) -> Run {
    kube_free_in(Path::new("."), args)
}

pub fn kube_free_in(cwd: &Path, args: &[&str]) -> Run {
    let out = kube_free_command(cwd, args)
        .output()
        .expect("kube-free runs");
    Run::from(out)
}

/// `kube-free ARGS` as a command to spawn (for runs that tests signal or run side by side).
pub fn kube_free_command(cwd: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.current_dir(cwd)
        .args(args)
        .env_remove("KUBE_FREE_REPO")
        .env_remove("KUBE_FREE_LOG")
        .env_remove("KUBE_FREE_VERIFY_SSH_SIGNERS")
        .env_remove("KUBE_FREE_VERIFY_GPG_KEYRING")
        .env(
            "KUBE_FREE_CACHE_DIR",
            std::env::temp_dir().join("kube-free-test-cache"),
        )
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1");
    c
}

impl From<std::process::Output> for Run {
    fn from(out: std::process::Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// Line and column (1-based) of the first occurrence of `needle` in `text`.
pub fn position(text: &str, needle: &str) -> (usize, usize) {
    let at = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} is not in the text:\n{text}"));
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let column = before[before.rfind('\n').map_or(0, |p| p + 1)..]
        .chars()
        .count()
        + 1;
    (line, column)
}

/// A small valid desired state that test cases change one thing in.
pub const BASE: &str = r#"version: 1
hosts:
  web-1: { address: 192.0.2.11 }
  web-2: { address: 192.0.2.12, user: deploy, port: 2222 }
  lb-1: { address: 192.0.2.10 }
balancers:
  edge: { kind: haproxy, host: lb-1 }
apps:
  api:
    runtime:
      kind: process
      command: "/opt/api/{version}/bin/api --listen 0.0.0.0:{port}"
    slots: { blue: 8000, green: 8001 }
    probe: { path: /readyz, interval: 1s, timeout: 2s, healthy_after: 3, deadline: 60s }
    drain: 10s
    stop_timeout: 30s
environments:
  production:
    balancer: edge
    hosts: [web-1, web-2]
    apps:
      api:
        version: "1.4.2"
        listen: "0.0.0.0:80"
        strategy:
          canary:
            steps:
              - { weight: 10, pause: 2m }
              - { weight: 50, pause: 5m }
              - { pause: {} }
            analysis: { max_error_rate: 0.01, min_requests: 100 }
"#;

/// BASE with `from` replaced by `to` (which must occur).
pub fn base_with(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "{from:?} is not in BASE");
    BASE.replacen(from, to, 1)
}

/// BASE without its inline environments (for tests that put them in files).
pub fn base_without_environments() -> String {
    BASE[..BASE.find("environments:").unwrap()].to_owned()
}

/// The body of `environments/production.yaml` equivalent to BASE's inline environment.
pub const PRODUCTION_FILE: &str = r#"balancer: edge
hosts: [web-1, web-2]
apps:
  api:
    version: "1.4.2"
    listen: "0.0.0.0:80"
    strategy: blue-green
"#;

/// Builds the demo app example (once per test binary) and returns its path.
pub fn demo_binary() -> &'static PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let mut cargo = Command::new(env!("CARGO"));
        // Without what cargo sets for this test (`CARGO_PKG_NAME`, `CARGO_MANIFEST_DIR`, …): ring's
        // build script reruns when they differ from the build's, which rebuilt ring and all that
        // depends on it here, and again at the next `cargo test` (a minute each on two cores).
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("CARGO_PKG_")
                || name.starts_with("CARGO_MANIFEST_")
                || name.starts_with("CARGO_BIN_")
                || [
                    "CARGO_CRATE_NAME",
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                ]
                .contains(&name.as_ref())
            {
                cargo.env_remove(name.as_ref());
            }
        }
        let status = cargo
            .args(["build", "--quiet", "--example", "kube-free-demo"])
            .current_dir(&manifest_dir)
            .status()
            .expect("failed to run cargo build --example kube-free-demo");
        assert!(status.success(), "building kube-free-demo failed: {status}");
        let target_dir = match std::env::var_os("CARGO_TARGET_DIR") {
            Some(dir) if Path::new(&dir).is_absolute() => PathBuf::from(dir),
            Some(dir) => manifest_dir.join(dir),
            None => manifest_dir.join("target"),
        };
        let bin = target_dir
            .join("debug")
            .join("examples")
            .join("kube-free-demo");
        assert!(bin.is_file(), "{} not found after build", bin.display());
        bin
    })
}

/// Panics with the install command unless every tool is on PATH (the README's test command installs
/// them; this names what is missing when run another way).
pub fn require_tools(tools: &[&str]) {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .collect();
    assert!(missing.is_empty(), "missing tools {missing:?}: run the README's test command, which installs them with apt-get");
}

/// Runs an example's `run.sh` (`examples/<name>/run.sh`, with 8 s of load unless `envs` say otherwise) with this build's
/// binaries, asserts it succeeded, and returns its output and wrk's tally.
pub fn run_example(name: &str, envs: &[(&str, &str)]) -> (String, Tally) {
    let top = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(top.join("examples").join(name).join("run.sh"))
        .env("KUBE_FREE", bin())
        .env("DEMO_DIR", demo_binary().parent().unwrap())
        .env("LOAD_SECONDS", "8")
        .env_remove("KEEP")
        .envs(envs.iter().copied())
        .current_dir(top)
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "examples/{name}/run.sh {envs:?} failed ({})\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    let tally = Tally::parse(&stdout);
    (stdout, tally)
}

/// What `examples/quickstart/wrk-count.lua` counted.
#[derive(Debug, Default)]
pub struct Tally {
    pub requests: u64,
    pub failed: u64,
    /// Responses by the version that served them.
    pub served: std::collections::BTreeMap<String, u64>,
    pub text: String,
}

impl Tally {
    pub fn parse(text: &str) -> Tally {
        let mut t = Tally {
            text: text.to_owned(),
            ..Tally::default()
        };
        let mut failed = None;
        for line in text.lines() {
            if let Some(n) = line.strip_prefix("requests: ") {
                t.requests = n.trim().parse().unwrap_or(0);
            } else if let Some(n) = line.strip_prefix("failed: ") {
                failed = n.trim().parse().ok();
            } else if let Some(rest) = line.strip_prefix("served by version ") {
                if let Some((v, n)) = rest.rsplit_once(": ") {
                    t.served.insert(v.to_owned(), n.trim().parse().unwrap_or(0));
                }
            }
        }
        t.failed = failed.unwrap_or_else(|| panic!("wrk printed no tally:\n{text}"));
        t
    }

    pub fn served_by(&self, version: &str) -> u64 {
        self.served.get(version).copied().unwrap_or(0)
    }
}

/// A wrk run in the background: keep-alive load, bounded by its duration (and killed if it overruns).
pub struct Load {
    child: Option<std::process::Child>,
    seconds: u64,
}

impl Load {
    /// `wrk -t2 -c20 -dSECONDS` against `url`, GET or POST, counting responses by version.
    pub fn start(url: &str, seconds: u64, method: &str) -> Load {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/quickstart/wrk-count.lua");
        let child = Command::new("wrk")
            .args([
                "-t2",
                "-c20",
                &format!("-d{seconds}s"),
                "--timeout",
                "5s",
                "-s",
            ])
            .arg(script)
            .arg(url)
            .env("WRK_METHOD", method)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("wrk runs");
        Load {
            child: Some(child),
            seconds,
        }
    }

    /// Ends the load now, the way Ctrl-C does: wrk stops, prints its tally and exits.
    pub fn interrupt(self) -> Tally {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
        }
        self.finish()
    }

    /// Waits for wrk to end (it is killed if it overruns its duration by 30 s) and reads its tally.
    pub fn finish(mut self) -> Tally {
        let mut child = self.child.take().unwrap();
        let limit = std::time::Instant::now() + std::time::Duration::from_secs(self.seconds + 30);
        while child.try_wait().unwrap().is_none() {
            assert!(
                std::time::Instant::now() < limit,
                "wrk overran its duration"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let out = child.wait_with_output().unwrap();
        Tally::parse(&String::from_utf8_lossy(&out.stdout))
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One request of a [`KeepAliveLoad`]: when it started (since the load began), how long it took,
/// and whether it got a 2xx in time.
#[derive(Debug, Clone, Copy)]
pub struct Timed {
    pub start: std::time::Duration,
    pub took: std::time::Duration,
    pub ok: bool,
}

/// Keep-alive GET load timed request by request (wrk gives no per-request figures, and counts a
/// request that hangs once per 2 s instead of once): `connections` client threads, each sending
/// `GET /` on its own HTTP/1.1 connection, one request at a time. A request that gets no complete
/// response within `timeout` (or an error, a closed connection, a non-2xx) fails, and its
/// connection is replaced by a new one, as a client with a timeout does.
pub struct KeepAliveLoad {
    began: std::time::Instant,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Vec<Timed>>>,
}

impl KeepAliveLoad {
    /// Starts the load on `address` (`ip:port`); it ends at [`KeepAliveLoad::finish`], or by
    /// itself after `max`.
    pub fn start(
        address: &str,
        connections: usize,
        timeout: std::time::Duration,
        max: std::time::Duration,
    ) -> KeepAliveLoad {
        let began = std::time::Instant::now();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let address: std::net::SocketAddr = address.parse().expect("ip:port");
        let threads = (0..connections)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut done = Vec::new();
                    let mut conn = None;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) && began.elapsed() < max
                    {
                        let start = std::time::Instant::now();
                        let (ok, keep) = match one_get(&mut conn, address, timeout) {
                            Ok(keep) => (true, keep),
                            Err(_) => (false, false),
                        };
                        if !keep {
                            conn = None;
                        }
                        done.push(Timed {
                            start: start - began,
                            took: start.elapsed(),
                            ok,
                        });
                        if !ok {
                            // A refused connection fails at once: do not spin.
                            std::thread::sleep(std::time::Duration::from_millis(10));
                        }
                    }
                    done
                })
            })
            .collect();
        KeepAliveLoad {
            began,
            stop,
            threads,
        }
    }

    /// Time since the load began, on the clock of [`Timed::start`].
    pub fn elapsed(&self) -> std::time::Duration {
        self.began.elapsed()
    }

    /// Stops the load, waits for the requests under way (each ends within its timeout) and
    /// returns every request, in the order they started.
    pub fn finish(mut self) -> Vec<Timed> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut all: Vec<Timed> = self
            .threads
            .drain(..)
            .flat_map(|t| t.join().expect("a load thread panicked"))
            .collect();
        all.sort_by_key(|t| t.start);
        all
    }
}

impl Drop for KeepAliveLoad {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// One `GET /` on `conn` (connected first if `None`) within `timeout`: `Ok(keep)` for a 2xx,
/// `keep` false when the response closes the connection.
fn one_get(
    conn: &mut Option<std::io::BufReader<std::net::TcpStream>>,
    address: std::net::SocketAddr,
    timeout: std::time::Duration,
) -> std::io::Result<bool> {
    use std::io::BufRead;
    let deadline = std::time::Instant::now() + timeout;
    let left = || {
        deadline
            .checked_duration_since(std::time::Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::TimedOut))
    };
    if conn.is_none() {
        let s = std::net::TcpStream::connect_timeout(&address, timeout)?;
        s.set_nodelay(true)?;
        *conn = Some(std::io::BufReader::new(s));
    }
    let r = conn.as_mut().unwrap();
    r.get_ref().set_write_timeout(Some(left()?))?;
    r.get_mut()
        .write_all(b"GET / HTTP/1.1\r\nHost: kube-free-test\r\n\r\n")?;
    let mut line = String::new();
    let mut status = 0;
    let (mut length, mut close) = (0usize, false);
    loop {
        r.get_ref().set_read_timeout(Some(left()?))?;
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let l = line.trim_end().to_ascii_lowercase();
        if status == 0 {
            status = l
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .ok_or(std::io::ErrorKind::InvalidData)?;
        } else if l.is_empty() {
            break;
        } else if let Some(v) = l.strip_prefix("content-length:") {
            length = v
                .trim()
                .parse()
                .map_err(|_| std::io::ErrorKind::InvalidData)?;
        } else if l == "connection: close" {
            close = true;
        }
    }
    let mut body = vec![0; length];
    r.get_ref().set_read_timeout(Some(left()?))?;
    r.read_exact(&mut body)?;
    if !(200..300).contains(&status) {
        return Err(std::io::Error::other(format!("status {status}")));
    }
    Ok(!close)
}

/// One HTTP/1.1 GET over a fresh connection; the body. Panics on any failure.
pub fn http_get(address: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect(address).unwrap_or_else(|e| panic!("connect {address}: {e}"));
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "GET {address}{path}: {text}"
    );
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.trim().to_owned())
        .unwrap_or_default()
}

/// Held by a test that puts load on this machine (wrk through HAProxy), so that such tests take turns
/// instead of sharing two cores; released when dropped.
pub struct LoadTestTurn(std::fs::File);

pub fn load_test_turn() -> LoadTestTurn {
    use std::os::unix::io::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/tmp/kube-free-load-tests.lock")
        .expect("lock file opens");
    // SAFETY: flock on a valid, owned descriptor.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock failed");
    LoadTestTurn(file)
}

/// A TCP port free on 127.0.0.1 now.
pub fn free_port() -> u16 {
    let [port] = free_ports();
    port
}

/// `N` distinct TCP ports free on 127.0.0.1 now. Every listener is held until all are bound:
/// ports taken one after another from listeners dropped at once can repeat.
pub fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: [std::net::TcpListener; N] =
        std::array::from_fn(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    listeners.map(|l| l.local_addr().unwrap().port())
}

/// One HTTP/1.1 request; the status code and the body (0 and nothing when it cannot connect).
pub fn request(
    address: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let Ok(mut s) = std::net::TcpStream::connect(address) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: watch\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    if s.write_all(head.as_bytes()).is_err() {
        return (0, String::new());
    }
    let _ = s.write_all(body);
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    let reply = String::from_utf8_lossy(&reply).into_owned();
    let code = reply
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = reply
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

/// Debian's registry server (package `docker-registry`: distribution 2.8).
pub const DOCKER_REGISTRY: &str = "/usr/bin/docker-registry";

/// A local Docker registry for the tests: `docker-registry serve <config>` on `<ip>:<free port>`
/// with its storage in a temporary directory, plain HTTP, no auth, deletes allowed. Engines treat a
/// registry on 127.0.0.0/8 as insecure (plain HTTP) by themselves; the fleet's engines do so for the
/// fleet's subnet (see tests/fleet), so [`Registry::start_on`] the fleet's gateway address serves
/// every fleet host. Killed when dropped.
pub struct Registry {
    child: Option<std::process::Child>,
    address: String,
    dir: tempfile::TempDir,
}

impl Registry {
    /// A registry on `127.0.0.1:<free port>`, answering `GET /v2/` when this returns.
    pub fn start() -> Registry {
        Registry::start_on("127.0.0.1")
    }

    /// A registry on `<ip>:<free port>` (an address of this machine's network namespace), answering
    /// `GET /v2/` when this returns. Panics if it does not come up within 10 s.
    pub fn start_on(ip: &str) -> Registry {
        assert!(
            Path::new(DOCKER_REGISTRY).exists(),
            "{DOCKER_REGISTRY} not found: apt-get install docker-registry"
        );
        let dir = tempfile::Builder::new()
            .prefix("kube-free-registry-")
            .tempdir()
            .expect("temp dir");
        // Another process may take a free port before the registry binds it: try a few.
        for _ in 0..5 {
            let port = std::net::TcpListener::bind((ip, 0))
                .unwrap_or_else(|e| panic!("registry: bind {ip}:0: {e}"))
                .local_addr()
                .unwrap()
                .port();
            let address = format!("{ip}:{port}");
            let config = format!(
                "version: 0.1\n\
                 log:\n  level: info\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n\
                 http:\n  addr: {address}\n",
                storage = dir.path().join("storage").display()
            );
            let config_file = dir.path().join("config.yml");
            std::fs::write(&config_file, config).unwrap();
            let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
            let mut child = Command::new(DOCKER_REGISTRY)
                .arg("serve")
                .arg(&config_file)
                .stdin(std::process::Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("registry: start {DOCKER_REGISTRY}: {e}"));
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    let log = std::fs::read_to_string(dir.path().join("registry.log"))
                        .unwrap_or_default();
                    if log.contains("address already in use") {
                        break;
                    }
                    panic!("registry exited ({status}); log:\n{log}");
                }
                if request(&address, "GET", "/v2/", &[], b"").0 == 200 {
                    return Registry {
                        child: Some(child),
                        address,
                        dir,
                    };
                }
                if std::time::Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "registry on {address}: GET /v2/ not answering 200 within 10 s; log:\n{}",
                        std::fs::read_to_string(dir.path().join("registry.log"))
                            .unwrap_or_default()
                    );
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        panic!("registry: no free port on {ip} after 5 tries");
    }

    /// `<ip>:<port>`, the prefix of image names in it: `<address>/kf-demo:1`.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// True while the registry process runs.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The registry's log (its stdout and stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Where it stores repositories and blobs.
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Kills the registry and waits for it; its address then refuses connections (the storage is
    /// kept until drop). No-op if stopped.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The small local stage of `logs_cli`, `rewind` and `records`: the demo app on this machine
/// (`transport: local`) behind its own HAProxy, deployed from a Git repository, with short probes
/// and drain. Holds the load-test turn (no load, but real timing). Dropped in order: the
/// instances are stopped, then HAProxy, then the files go.
pub struct LocalStage {
    _instances: StopInstances,
    pub haproxy: LocalHaproxy,
    pub repo: Repo,
    /// `state_dir` of the host `here`.
    pub state: PathBuf,
    /// frontend, blue, green.
    pub ports: [u16; 3],
    pub dir: tempfile::TempDir,
    _turn: LoadTestTurn,
}

impl LocalStage {
    /// A stage on this machine; `tools` are needed besides haproxy and git.
    pub fn new(tools: &[&str]) -> LocalStage {
        require_tools(&["haproxy", "git"]);
        require_tools(tools);
        let turn = load_test_turn();
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        LocalStage {
            _instances: StopInstances(state.clone()),
            haproxy: LocalHaproxy::start(&dir.path().join("haproxy")),
            repo: Repo::new(),
            state,
            ports: free_ports(),
            dir,
            _turn: turn,
        }
    }

    /// The desired state with the demo app `version`, rolled out with `strategy`.
    pub fn yaml(&self, version: &str, strategy: &str) -> String {
        let [frontend, blue, green] = self.ports;
        format!(
            r#"version: 1
hosts:
  here: {{ transport: local, state_dir: {state} }}
balancers:
  edge: {balancer}
apps:
  demo:
    runtime: {{ kind: process, command: "{demo} --listen 127.0.0.1:{{port}} --version {{version}}" }}
    slots: {{ blue: {blue}, green: {green} }}
    probe: {{ path: /readyz, interval: 200ms, timeout: 1s, healthy_after: 2, deadline: 20s }}
    drain: 1s
    stop_timeout: 5s
    bake: 0s
environments:
  local:
    balancer: edge
    hosts: [here]
    apps:
      demo: {{ version: "{version}", listen: "127.0.0.1:{frontend}", strategy: {strategy} }}
"#,
            state = self.state.display(),
            balancer = self.haproxy.balancer_yaml("here"),
            demo = demo_binary().display(),
        )
    }

    /// Commits the demo app `version` with `strategy`; returns the commit.
    pub fn commit(&self, version: &str, strategy: &str) -> String {
        self.repo
            .write("kube-free.yaml", self.yaml(version, strategy));
        self.repo.commit(&format!("demo {version}"))
    }

    /// `kube-free ARGS --repo <the stage's repository>`.
    pub fn run(&self, args: &[&str]) -> Run {
        let mut all = args.to_vec();
        all.extend(["--repo", self.repo.path_str()]);
        kube_free(&all)
    }

    /// The version the frontend serves.
    pub fn serving(&self) -> String {
        http_get(&format!("127.0.0.1:{}", self.ports[0]), "/version")
    }
}

/// HAProxy of a test's own on this machine, for a `transport: local` desired state: master-worker in
/// the foreground (a child of the test, stopped on drop) with its files in a directory:
/// `base.cfg` (as in `examples/quickstart/run.sh`), `kube-free.cfg` (kube-free's, empty at start),
/// `admin.sock`. It reloads with `kill -USR2 <master>`: kube-free's HAProxy driver sends a reload
/// again when HAProxy missed one.
pub struct LocalHaproxy {
    child: std::process::Child,
    dir: PathBuf,
}

impl LocalHaproxy {
    pub fn start(dir: &Path) -> LocalHaproxy {
        require_tools(&["haproxy"]);
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(
            dir.join("base.cfg"),
            format!(
                "global\n    master-worker\n    stats socket {d}/admin.sock mode 600 level admin expose-fd listeners\ndefaults\n    timeout connect 2s\n    timeout client 30s\n    timeout server 30s\n",
                d = dir.display()
            ),
        )
        .unwrap();
        std::fs::write(dir.join("kube-free.cfg"), "").unwrap();
        let log = std::fs::File::create(dir.join("haproxy.log")).unwrap();
        let child = Command::new("haproxy")
            .arg("-W")
            .arg("-db")
            .arg("-f")
            .arg(dir.join("base.cfg"))
            .arg("-f")
            .arg(dir.join("kube-free.cfg"))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("haproxy starts");
        let haproxy = LocalHaproxy {
            child,
            dir: dir.to_owned(),
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(haproxy.admin_socket()).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "HAProxy's admin socket did not answer; log:\n{}",
                std::fs::read_to_string(dir.join("haproxy.log")).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        haproxy
    }

    pub fn admin_socket(&self) -> PathBuf {
        self.dir.join("admin.sock")
    }

    pub fn config_file(&self) -> PathBuf {
        self.dir.join("kube-free.cfg")
    }

    /// `balancers.<name>` of a desired state, on host `host`, as flow-style YAML.
    pub fn balancer_yaml(&self, host: &str) -> String {
        format!(
            "{{ kind: haproxy, host: {host}, admin_socket: {}, config_file: {}, reload_command: \"kill -USR2 {}\" }}",
            self.admin_socket().display(),
            self.config_file().display(),
            self.child.id()
        )
    }
}

impl Drop for LocalHaproxy {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while self.child.try_wait().ok().flatten().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.child.wait();
    }
}

/// Stops, when dropped, every instance whose instance file is under `state_dir`
/// (`<env>/<app>/<slot>.json`): SIGTERM to its process group, SIGKILL after 10 s.
pub struct StopInstances(pub PathBuf);

impl Drop for StopInstances {
    fn drop(&mut self) {
        let files = std::fs::read_dir(&self.0)
            .into_iter()
            .flatten()
            .flatten()
            .flat_map(|env| {
                std::fs::read_dir(env.path())
                    .into_iter()
                    .flatten()
                    .flatten()
            })
            .flat_map(|app| {
                std::fs::read_dir(app.path())
                    .into_iter()
                    .flatten()
                    .flatten()
            })
            .map(|f| f.path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"));
        for file in files {
            let Some(pid) = std::fs::read_to_string(&file)
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .and_then(|j| j["pid"].as_u64())
            else {
                continue;
            };
            let _ = Command::new("kill")
                .args(["-s", "TERM", "--", &format!("-{pid}")])
                .status();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while Path::new(&format!("/proc/{pid}")).exists()
                && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .unwrap_or_default()
                    .contains(") Z")
            {
                if std::time::Instant::now() > deadline {
                    let _ = Command::new("kill")
                        .args(["-s", "KILL", "--", &format!("-{pid}")])
                        .status();
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    }
}

/// `docker ARGS` against this machine's engine (never one that `DOCKER_HOST` names).
pub fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .args(args)
        .env_remove("DOCKER_HOST")
        .env_remove("DOCKER_CONTEXT")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("docker runs")
}

/// [`docker`], which must succeed; its stdout, trimmed.
pub fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
