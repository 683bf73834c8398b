//! `kube-free-demo`: a small HTTP/1.1 service that stands in for a real
//! application in kube-free's tests and demos.
//!
//! It reports its version on every path, exposes `/readyz` and `/livez`
//! probes, and can be told to start slowly, become ready late (or never),
//! inject a deterministic fraction of errors, and drain for a while after
//! SIGTERM/SIGINT before shutting down gracefully. That makes it possible to
//! observe whether a rollout really is zero-downtime.
//!
//! ```text
//! kube-free-demo --listen 127.0.0.1:8080 --version v2 \
//!     [--start-delay 2s] [--ready-delay 500ms] [--never-ready] \
//!     [--error-rate 0.1] [--fail-path /smoke] [--drain-delay 5s] \
//!     [--exit-after 4s] [--exit-after-traffic 3s]
//! ```
//!
//! Endpoints (GET, HEAD and POST; POST bodies are read and discarded, their
//! length is echoed in `x-body-bytes`):
//!
//! * `/version` and any other path: 200, body `<version>\n`
//! * `/readyz`: 200 `ready\n`, or 503 `not ready\n`
//! * `/livez`: 200 `alive\n`
//! * a path given with `--fail-path`: 500 `failing path\n`
//!
//! Every response carries `x-version: <version>`.

use std::convert::Infallible;
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, ALLOW, CONNECTION, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpSocket};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{mpsc, watch};

/// How long in-flight requests get after the drain delay before the process
/// exits regardless.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Demo service for kube-free: reports its version, has readiness and
/// liveness probes, and shuts down gracefully.
#[derive(Parser, Debug)]
#[command(name = "kube-free-demo", disable_version_flag = true)]
struct Args {
    /// Address to listen on, e.g. 127.0.0.1:8080 (port 0 picks a free port).
    #[arg(long, value_name = "ADDR:PORT")]
    listen: String,

    /// Version string reported by the service.
    #[arg(long, value_name = "V")]
    version: String,

    /// Wait this long before binding the port (e.g. 500ms, 2s).
    #[arg(long, env = "DEMO_START_DELAY", value_name = "DURATION",
          value_parser = parse_duration, default_value = "0")]
    start_delay: Duration,

    /// After binding, report not-ready on /readyz for this long.
    #[arg(long, env = "DEMO_READY_DELAY", value_name = "DURATION",
          value_parser = parse_duration, default_value = "0")]
    ready_delay: Duration,

    /// Never report ready on /readyz.
    #[arg(long, env = "DEMO_NEVER_READY",
          value_parser = clap::builder::BoolishValueParser::new(),
          action = clap::ArgAction::SetTrue)]
    never_ready: bool,

    /// Fraction (0.0-1.0) of requests, other than probes, answered with 500.
    #[arg(long, env = "DEMO_ERROR_RATE", value_name = "FLOAT",
          value_parser = parse_rate, default_value = "0")]
    error_rate: f64,

    /// Always answer this path with 500 (repeatable): a smoke test that fails.
    #[arg(long, value_name = "PATH")]
    fail_path: Vec<String>,

    /// Crash this long after start: exit with status 1 at once, dropping every
    /// connection (a bad migration, a lazy init that fails, a leak).
    #[arg(long, env = "DEMO_EXIT_AFTER", value_name = "DURATION",
          value_parser = parse_duration)]
    exit_after: Option<Duration>,

    /// Crash (as --exit-after) this long after the first request that is
    /// not a probe: a version that dies once it takes traffic.
    #[arg(long, env = "DEMO_EXIT_AFTER_TRAFFIC", value_name = "DURATION",
          value_parser = parse_duration)]
    exit_after_traffic: Option<Duration>,

    /// After SIGTERM/SIGINT, keep serving (with /readyz failing) this long.
    #[arg(long, env = "DEMO_DRAIN_DELAY", value_name = "DURATION",
          value_parser = parse_duration, default_value = "0")]
    drain_delay: Duration,
}

/// Parses `500ms`, `2s`, `1.5s`, `1m`, `250us`, or a bare number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (expected e.g. 500ms, 2s, 1m)"))?;
    let secs = match unit.trim() {
        "" | "s" | "sec" | "secs" => value,
        "ms" => value / 1e3,
        "us" | "µs" => value / 1e6,
        "ns" => value / 1e9,
        "m" | "min" | "mins" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("invalid duration unit {other:?} in {s:?}")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let rate: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("invalid error rate {s:?}"))?;
    if rate.is_finite() && (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err(format!("error rate must be between 0.0 and 1.0, got {s}"))
    }
}

/// Error injection in parts per million, so the arithmetic is exact.
const PPM: u64 = 1_000_000;

struct State {
    version: String,
    version_header: HeaderValue,
    ready_at: Instant,
    never_ready: bool,
    draining: AtomicBool,
    error_ppm: u64,
    fail_paths: Vec<String>,
    /// `--exit-after-traffic`, until the first request that is not a probe arms it.
    exit_after_traffic: std::sync::Mutex<Option<Duration>>,
    /// Requests eligible for error injection seen so far.
    eligible: AtomicU64,
}

impl State {
    fn ready(&self) -> bool {
        !self.never_ready
            && !self.draining.load(Ordering::Relaxed)
            && Instant::now() >= self.ready_at
    }

    /// Request number `n` (1-based) fails when `floor(n * rate)` steps up, so
    /// after N requests exactly `floor(N * rate)` have failed.
    fn inject_error(&self) -> bool {
        if self.error_ppm == 0 {
            return false;
        }
        let n = self.eligible.fetch_add(1, Ordering::Relaxed) + 1;
        (n * self.error_ppm) / PPM > ((n - 1) * self.error_ppm) / PPM
    }
}

type Body = Full<Bytes>;

/// Exits with status 1 `after` from now, dropping every connection: a crash.
fn crash_after(after: Duration, flag: &'static str) {
    std::thread::spawn(move || {
        std::thread::sleep(after);
        eprintln!("kube-free-demo: crashing, as {flag} asked");
        std::process::exit(1);
    });
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    if !matches!(path.as_str(), "/readyz" | "/livez") {
        if let Some(after) = state.exit_after_traffic.lock().unwrap().take() {
            crash_after(after, "--exit-after-traffic");
        }
    }

    // Read (and discard) the whole body, counting bytes.
    let mut body_bytes: u64 = 0;
    let mut body = req.into_body();
    let mut body_ok = true;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    body_bytes += data.len() as u64;
                }
            }
            Err(_) => {
                body_ok = false;
                break;
            }
        }
    }

    let (status, text): (StatusCode, Bytes) = if !body_ok {
        (
            StatusCode::BAD_REQUEST,
            Bytes::from_static(b"bad request body\n"),
        )
    } else if !matches!(method, Method::GET | Method::HEAD | Method::POST) {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            Bytes::from_static(b"method not allowed\n"),
        )
    } else {
        match path.as_str() {
            "/readyz" => {
                if state.ready() {
                    (StatusCode::OK, Bytes::from_static(b"ready\n"))
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        Bytes::from_static(b"not ready\n"),
                    )
                }
            }
            "/livez" => (StatusCode::OK, Bytes::from_static(b"alive\n")),
            p if state.fail_paths.iter().any(|f| f == p) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                Bytes::from_static(b"failing path\n"),
            ),
            _ if state.inject_error() => (
                StatusCode::INTERNAL_SERVER_ERROR,
                Bytes::from_static(b"injected error\n"),
            ),
            _ => (StatusCode::OK, Bytes::from(format!("{}\n", state.version))),
        }
    };

    let mut resp = Response::new(Full::new(text));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(
        HeaderName::from_static("x-version"),
        state.version_header.clone(),
    );
    headers.insert(
        HeaderName::from_static("x-body-bytes"),
        HeaderValue::from(body_bytes),
    );
    if status == StatusCode::METHOD_NOT_ALLOWED {
        headers.insert(ALLOW, HeaderValue::from_static("GET, HEAD, POST"));
    }
    if state.draining.load(Ordering::Relaxed) {
        // Tell keep-alive clients to reconnect (elsewhere); hyper closes the
        // connection after writing this response.
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(resp)
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Accepts connections until `shutdown` becomes true, then drops the listener.
/// Each connection task holds a clone of `tracker`; the receiver sees `None`
/// once they have all finished.
async fn accept_loop(
    listener: TcpListener,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
    tracker: mpsc::Sender<()>,
) {
    let mut builder = http1::Builder::new();
    builder
        .keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    let builder = Arc::new(builder);

    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                // E.g. EMFILE under heavy load: back off briefly, keep going.
                eprintln!("kube-free-demo: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let builder = builder.clone();
        let mut shutdown = shutdown.clone();
        let tracker = tracker.clone();
        tokio::spawn(async move {
            let _tracker = tracker;
            let svc = service_fn(move |req| handle(state.clone(), req));
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            let mut closing = false;
            if *shutdown.borrow_and_update() {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            loop {
                tokio::select! {
                    _ = conn.as_mut() => break,
                    _ = shutdown.changed(), if !closing => {
                        // Finishes the in-flight request (if any), closes
                        // the connection if it is idle.
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                }
            }
        });
    }
    drop(listener);
}

/// Waits for SIGTERM or SIGINT and returns its name.
async fn next_signal(term: &mut Signal, int: &mut Signal) -> &'static str {
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();

    let addr = match args.listen.to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(addr)) => addr,
        Ok(None) => {
            eprintln!(
                "kube-free-demo: --listen {:?} resolved to no address",
                args.listen
            );
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("kube-free-demo: invalid --listen {:?}: {e}", args.listen);
            return ExitCode::from(2);
        }
    };
    let version_header = match HeaderValue::from_str(&args.version) {
        Ok(v) => v,
        Err(_) => {
            eprintln!("kube-free-demo: --version must be a valid header value");
            return ExitCode::from(2);
        }
    };

    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("kube-free-demo: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };

    if let Some(after) = args.exit_after {
        crash_after(after, "--exit-after");
    }

    if !args.start_delay.is_zero() {
        tokio::select! {
            _ = tokio::time::sleep(args.start_delay) => {}
            sig = next_signal(&mut term, &mut int) => {
                eprintln!("kube-free-demo: {sig} during start delay, exiting");
                return ExitCode::SUCCESS;
            }
        }
    }

    let listener = match bind(addr) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("kube-free-demo: cannot listen on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let local = listener.local_addr().unwrap_or(addr);

    let state = Arc::new(State {
        version: args.version.clone(),
        version_header,
        ready_at: Instant::now() + args.ready_delay,
        never_ready: args.never_ready,
        draining: AtomicBool::new(false),
        error_ppm: (args.error_rate * PPM as f64).round() as u64,
        fail_paths: args.fail_path.clone(),
        exit_after_traffic: std::sync::Mutex::new(args.exit_after_traffic),
        eligible: AtomicU64::new(0),
    });

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (tracker_tx, mut tracker_rx) = mpsc::channel::<()>(1);
    let acceptor = tokio::spawn(accept_loop(
        listener,
        state.clone(),
        shutdown_rx,
        tracker_tx,
    ));

    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "kube-free-demo {} listening on {local}", args.version);
        let _ = out.flush();
    }

    let sig = next_signal(&mut term, &mut int).await;
    state.draining.store(true, Ordering::SeqCst);
    eprintln!(
        "kube-free-demo: {sig} received, draining for {:?}",
        args.drain_delay
    );
    if !args.drain_delay.is_zero() {
        tokio::select! {
            _ = tokio::time::sleep(args.drain_delay) => {}
            sig = next_signal(&mut term, &mut int) => {
                eprintln!("kube-free-demo: second {sig}, cutting the drain short");
            }
        }
    }

    // Stop accepting and ask every connection to finish up.
    let _ = shutdown_tx.send(true);
    let finished = tokio::time::timeout(SHUTDOWN_GRACE, async {
        let _ = acceptor.await;
        // `None` once every connection task has dropped its sender.
        let _ = tracker_rx.recv().await;
    })
    .await;
    if finished.is_err() {
        eprintln!(
            "kube-free-demo: connections still open after {SHUTDOWN_GRACE:?}, exiting anyway"
        );
    }
    eprintln!("kube-free-demo: stopped");
    ExitCode::SUCCESS
}
