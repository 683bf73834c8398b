//! End-to-end tests for the `kube-free-demo` example app: they build the
//! example once, run it as a real process on loopback, and talk to it with
//! hand-written HTTP/1.1 over `std::net::TcpStream`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

mod common;
use common::demo_binary;

const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A running demo process; killed (and reaped) when dropped.
struct Demo {
    child: Child,
    addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
}

impl Demo {
    fn start(version: &str, extra: &[&str], env: &[(&str, &str)]) -> Demo {
        let port = free_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut cmd = Command::new(demo_binary());
        cmd.arg("--listen")
            .arg(addr.to_string())
            .arg("--version")
            .arg(version)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for var in [
            "DEMO_START_DELAY",
            "DEMO_READY_DELAY",
            "DEMO_NEVER_READY",
            "DEMO_ERROR_RATE",
            "DEMO_DRAIN_DELAY",
        ] {
            cmd.env_remove(var);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn kube-free-demo");

        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(mut err) = child.stderr.take() {
            let sink = stderr.clone();
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = err.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut s) = sink.lock() {
                        s.push_str(&String::from_utf8_lossy(&buf[..n]));
                    }
                }
            });
        }
        let stdout = child.stdout.take();
        let demo = Demo {
            child,
            addr,
            stderr,
        };

        // Wait (bounded) for the "listening" line.
        let (tx, rx) = mpsc::channel();
        if let Some(out) = stdout {
            thread::spawn(move || {
                let mut reader = BufReader::new(out);
                let mut line = String::new();
                let _ = reader.read_line(&mut line);
                let _ = tx.send(line);
                // Keep draining so the child never blocks on a full pipe.
                let _ = std::io::copy(&mut reader, &mut std::io::sink());
            });
        }
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("no listening line; stderr: {}", demo.stderr_text()));
        assert_eq!(
            line.trim_end(),
            format!("kube-free-demo {version} listening on {addr}"),
            "stderr: {}",
            demo.stderr_text()
        );
        demo
    }

    fn stderr_text(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn connect(&self) -> Conn {
        Conn::open(self.addr)
    }

    fn get(&self, path: &str) -> Resp {
        self.connect().request("GET", path, b"")
    }

    fn signal(&self, sig: libc::c_int) {
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill({sig}) failed");
    }

    /// Waits (bounded) for the process to exit.
    fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "kube-free-demo did not exit within {limit:?}; stderr: {}",
                self.stderr_text()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("--- kube-free-demo stderr ---\n{}", self.stderr_text());
        }
    }
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// One client connection (keep-alive capable).
struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect");
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Conn {
            reader: BufReader::new(stream),
        }
    }

    fn send_head(&mut self, method: &str, path: &str, content_length: Option<usize>) {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
        if let Some(len) = content_length {
            head.push_str(&format!("Content-Length: {len}\r\n"));
        }
        head.push_str("\r\n");
        self.write(head.as_bytes());
    }

    fn write(&mut self, bytes: &[u8]) {
        let stream = self.reader.get_mut();
        stream.write_all(bytes).expect("write request");
        stream.flush().expect("flush");
    }

    fn request(&mut self, method: &str, path: &str, body: &[u8]) -> Resp {
        let len = (method == "POST" || !body.is_empty()).then_some(body.len());
        self.send_head(method, path, len);
        if !body.is_empty() {
            self.write(body);
        }
        self.read_response(method == "HEAD")
    }

    fn read_response(&mut self, head_request: bool) -> Resp {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("read status line");
        let mut parts = line.split_whitespace();
        assert_eq!(parts.next(), Some("HTTP/1.1"), "bad status line {line:?}");
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {line:?}"));
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            self.reader.read_line(&mut h).expect("read header");
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').expect("header has a colon");
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
        let mut resp = Resp {
            status,
            headers,
            body: Vec::new(),
        };
        if !head_request {
            let len: usize = resp
                .header("content-length")
                .expect("content-length")
                .parse()
                .expect("numeric content-length");
            resp.body = vec![0; len];
            self.reader.read_exact(&mut resp.body).expect("read body");
        }
        resp
    }

    /// True when the server has closed the connection (EOF within timeout).
    fn closed_by_server(&mut self, within: Duration) -> bool {
        self.reader
            .get_mut()
            .set_read_timeout(Some(within))
            .unwrap();
        let mut buf = [0u8; 1];
        matches!(self.reader.read(&mut buf), Ok(0))
    }
}

#[test]
fn version_livez_readyz_and_catch_all() {
    let demo = Demo::start("v1.2.3", &[], &[]);

    let r = demo.get("/version");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "v1.2.3\n");
    assert_eq!(r.header("x-version"), Some("v1.2.3"));

    let r = demo.get("/livez");
    assert_eq!((r.status, r.text().as_str()), (200, "alive\n"));
    assert_eq!(r.header("x-version"), Some("v1.2.3"));

    let r = demo.get("/readyz");
    assert_eq!((r.status, r.text().as_str()), (200, "ready\n"));
    assert_eq!(r.header("x-version"), Some("v1.2.3"));

    for path in ["/", "/some/other/path?q=1"] {
        let r = demo.get(path);
        assert_eq!((r.status, r.text().as_str()), (200, "v1.2.3\n"), "{path}");
        assert_eq!(r.header("x-version"), Some("v1.2.3"), "{path}");
    }

    let r = demo.connect().request("HEAD", "/version", b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-version"), Some("v1.2.3"));
    assert_eq!(r.header("content-length"), Some("7"));

    let r = demo.connect().request("DELETE", "/", b"");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("x-version"), Some("v1.2.3"));
}

#[test]
fn a_failing_path_always_answers_500() {
    let demo = Demo::start(
        "f1",
        &["--fail-path", "/smoke", "--fail-path", "/deep"],
        &[],
    );
    for _ in 0..3 {
        let r = demo.get("/smoke");
        assert_eq!((r.status, r.text().as_str()), (500, "failing path\n"));
        assert_eq!(r.header("x-version"), Some("f1"));
        assert_eq!(demo.get("/deep").status, 500);
    }
    assert_eq!(demo.get("/version").status, 200);
    assert_eq!(demo.get("/readyz").status, 200);
}

#[test]
fn post_bodies_are_read_and_counted() {
    let demo = Demo::start("post-1", &[], &[]);
    let mut conn = demo.connect();

    let body = vec![b'x'; 100_000];
    let r = conn.request("POST", "/version", &body);
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "post-1\n");
    assert_eq!(r.header("x-body-bytes"), Some("100000"));

    // Same connection, empty POST, then a POST to a probe.
    let r = conn.request("POST", "/anything", b"");
    assert_eq!((r.status, r.header("x-body-bytes")), (200, Some("0")));
    let r = conn.request("POST", "/livez", b"hello");
    assert_eq!((r.status, r.header("x-body-bytes")), (200, Some("5")));

    // Chunked request body.
    conn.write(
        b"POST /x HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n\
          3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n",
    );
    let r = conn.read_response(false);
    assert_eq!((r.status, r.header("x-body-bytes")), (200, Some("7")));
}

#[test]
fn ready_delay_then_ready() {
    let started = Instant::now();
    let demo = Demo::start("slow", &["--ready-delay", "700ms"], &[]);

    let r = demo.get("/readyz");
    assert_eq!((r.status, r.text().as_str()), (503, "not ready\n"));
    assert_eq!(r.header("x-version"), Some("slow"));
    // Liveness and traffic are fine while not ready.
    assert_eq!(demo.get("/livez").status, 200);
    assert_eq!(demo.get("/").status, 200);

    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = demo.get("/readyz");
        if r.status == 200 {
            assert_eq!(r.text(), "ready\n");
            break;
        }
        assert_eq!(r.status, 503);
        assert!(Instant::now() < deadline, "never became ready");
        thread::sleep(Duration::from_millis(50));
    }
    assert!(started.elapsed() >= Duration::from_millis(650));
}

#[test]
fn never_ready_stays_unready() {
    let demo = Demo::start("broken", &["--never-ready"], &[]);
    for _ in 0..5 {
        let r = demo.get("/readyz");
        assert_eq!((r.status, r.text().as_str()), (503, "not ready\n"));
        assert_eq!(demo.get("/livez").status, 200);
        thread::sleep(Duration::from_millis(60));
    }
}

/// How the demo ended, waiting for it at most 5 s.
fn exit_status(demo: &mut Demo) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(status) = demo.child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "still running after 5 s");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn exit_after_crashes_with_status_one() {
    let mut demo = Demo::start("doomed", &["--exit-after", "700ms"], &[]);
    let started = Instant::now();
    assert_eq!(demo.get("/version").text(), "doomed\n");
    let status = exit_status(&mut demo);
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert_eq!(status.code(), Some(1));
}

#[test]
fn exit_after_traffic_waits_for_a_request_that_is_not_a_probe() {
    let mut demo = Demo::start("doomed", &["--exit-after-traffic", "300ms"], &[]);
    // Probes do not arm it.
    for _ in 0..5 {
        assert_eq!(demo.get("/readyz").status, 200);
        thread::sleep(Duration::from_millis(100));
    }
    assert!(
        demo.child.try_wait().unwrap().is_none(),
        "exited on probes alone"
    );
    let served = Instant::now();
    assert_eq!(demo.get("/version").text(), "doomed\n");
    let status = exit_status(&mut demo);
    assert!(served.elapsed() >= Duration::from_millis(250));
    assert_eq!(status.code(), Some(1));
}

#[test]
fn start_delay_defers_binding() {
    let port = free_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    // Not through Demo::start: that waits for the listening line, and we want
    // to probe the port before it exists.
    let child = Command::new(demo_binary())
        .args(["--listen", &addr.to_string(), "--version", "late"])
        .args(["--start-delay", "600ms"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let started = Instant::now();
    let guard = Kill(child);

    thread::sleep(Duration::from_millis(150));
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err(),
        "port bound before the start delay elapsed"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut conn = loop {
        if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            drop(s);
            break Conn::open(addr);
        }
        assert!(Instant::now() < deadline, "never started listening");
        thread::sleep(Duration::from_millis(25));
    };
    assert!(started.elapsed() >= Duration::from_millis(550));
    assert_eq!(conn.request("GET", "/version", b"").text(), "late\n");
    drop(guard);
}

#[test]
fn error_rate_is_deterministic() {
    let demo = Demo::start("flaky", &["--error-rate", "0.3"], &[]);
    let mut conn = demo.connect();
    let mut errors = 0;
    for i in 0..200 {
        let r = conn.request("GET", "/", b"");
        match r.status {
            500 => {
                errors += 1;
                assert_eq!(r.text(), "injected error\n");
                assert_eq!(r.header("x-version"), Some("flaky"));
            }
            200 => assert_eq!(r.text(), "flaky\n"),
            other => panic!("unexpected status {other}"),
        }
        // Probes never get injected errors (and do not count).
        if i % 20 == 0 {
            assert_eq!(conn.request("GET", "/readyz", b"").status, 200);
            assert_eq!(conn.request("GET", "/livez", b"").status, 200);
        }
    }
    assert!((59..=61).contains(&errors), "{errors} errors out of 200");
}

#[test]
fn env_vars_apply_and_flags_win() {
    let demo = Demo::start(
        "env",
        &[],
        &[("DEMO_NEVER_READY", "1"), ("DEMO_ERROR_RATE", "1")],
    );
    assert_eq!(demo.get("/readyz").status, 503);
    assert_eq!(demo.get("/").status, 500);
    assert_eq!(demo.get("/version").status, 500);
    assert_eq!(demo.get("/livez").status, 200);
    drop(demo);

    let demo = Demo::start(
        "env2",
        &["--error-rate", "0"],
        &[("DEMO_ERROR_RATE", "1"), ("DEMO_READY_DELAY", "30s")],
    );
    assert_eq!(demo.get("/").status, 200);
    assert_eq!(demo.get("/readyz").status, 503);
}

#[test]
fn bad_arguments_are_rejected() {
    for args in [
        &["--version", "v"][..],
        &["--listen", "127.0.0.1:0"][..],
        &[
            "--listen",
            "127.0.0.1:0",
            "--version",
            "v",
            "--error-rate",
            "1.5",
        ][..],
        &[
            "--listen",
            "127.0.0.1:0",
            "--version",
            "v",
            "--drain-delay",
            "soon",
        ][..],
    ] {
        let out = Command::new(demo_binary())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run");
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(out.stdout.is_empty(), "{args:?} printed to stdout");
    }
}

#[test]
fn keep_alive_serves_many_requests_on_one_connection() {
    let demo = Demo::start("ka", &[], &[]);
    let mut conn = demo.connect();
    for path in ["/", "/version", "/readyz", "/livez", "/a", "/b"] {
        let r = conn.request("GET", path, b"");
        assert_eq!(r.status, 200, "{path}");
        assert!(!r.closes(), "{path}: server asked to close");
    }
    let r = conn.request("POST", "/", b"12345");
    assert_eq!((r.status, r.header("x-body-bytes")), (200, Some("5")));

    // Pipelined requests on the same connection.
    conn.write(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\nGET /livez HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(conn.read_response(false).text(), "ka\n");
    assert_eq!(conn.read_response(false).text(), "alive\n");
}

#[test]
fn sigterm_drains_then_exits_zero() {
    let mut demo = Demo::start("drain", &["--drain-delay", "1s"], &[]);
    let mut before = demo.connect();
    assert_eq!(before.request("GET", "/", b"").status, 200);
    assert_eq!(demo.get("/readyz").status, 200);

    let signalled = Instant::now();
    demo.signal(libc::SIGTERM);

    // Readiness fails right away...
    let deadline = Instant::now() + Duration::from_millis(500);
    loop {
        let r = demo.get("/readyz");
        if r.status == 503 {
            assert_eq!(r.text(), "not ready\n");
            break;
        }
        assert!(Instant::now() < deadline, "/readyz still 200 after SIGTERM");
        thread::sleep(Duration::from_millis(10));
    }
    // ...while traffic is still served, with Connection: close.
    let r = demo.get("/version");
    assert_eq!((r.status, r.text().as_str()), (200, "drain\n"));
    assert!(r.closes(), "no Connection: close while draining");
    assert_eq!(demo.get("/livez").status, 200);
    let r = before.request("GET", "/", b"");
    assert_eq!(r.status, 200);
    assert!(r.closes(), "keep-alive connection not told to close");
    assert!(before.closed_by_server(Duration::from_secs(2)));
    assert!(
        signalled.elapsed() < Duration::from_millis(900),
        "drain checks took too long to be meaningful"
    );

    let status = demo.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert!(signalled.elapsed() >= Duration::from_millis(950));
    assert!(TcpStream::connect_timeout(&demo.addr, Duration::from_millis(200)).is_err());
}

#[test]
fn in_flight_slow_post_completes_after_sigterm() {
    let mut demo = Demo::start("inflight", &[], &[]);
    let mut idle = demo.connect();
    assert_eq!(idle.request("GET", "/", b"").status, 200);

    let mut slow = demo.connect();
    slow.send_head("POST", "/upload", Some(11));
    slow.write(b"hello");
    thread::sleep(Duration::from_millis(200));

    let signalled = Instant::now();
    demo.signal(libc::SIGTERM);
    // The idle keep-alive connection is closed promptly.
    assert!(idle.closed_by_server(Duration::from_secs(2)));
    thread::sleep(Duration::from_millis(300));
    // The process is still waiting for our request.
    assert!(demo.child.try_wait().expect("try_wait").is_none());

    slow.write(b" world");
    let r = slow.read_response(false);
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "inflight\n");
    assert_eq!(r.header("x-body-bytes"), Some("11"));
    assert!(r.closes());

    let status = demo.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert!(signalled.elapsed() < Duration::from_secs(5));
}

#[test]
fn sigint_exits_zero_promptly() {
    let mut demo = Demo::start("int", &[], &[]);
    assert_eq!(demo.get("/").status, 200);
    let signalled = Instant::now();
    demo.signal(libc::SIGINT);
    let status = demo.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert!(signalled.elapsed() < Duration::from_secs(2));
}
