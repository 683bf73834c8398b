//! `kube-free watch` on a real fleet (two app hosts, HAProxy on a balancer host, all over SSH),
//! following a bare Git repository over `file://`, one fleet for all the scenarios:
//! A. a watcher deploys the first version, then a committed bump within one interval, under wrk
//!    load with no failed request; SIGTERM ends it with exit 0 and the lease given back;
//! B. webhooks: a bad signature is refused (401) and deploys nothing, a valid one starts the
//!    rollout within 2 s of the POST (the watcher polls only every 10 minutes); 405 and 413;
//! C. self-heal: an instance killed by hand and a weight set by hand are put back by the next
//!    resync, logged as `drift corrected`;
//! D. two watchers (the second reads the repository over SSH from a fleet host, with a deploy key
//!    and a known_hosts file): the acting one is killed with SIGKILL mid-rollout, the other
//!    finishes the rollout, under load with no failed request;
//! E. a real Prometheus scrapes the watcher, and headless Chromium renders its status page;
//! F. with --no-self-heal, and while the environment is suspended, a weight set by hand is
//!    reported and left alone; resumed, the next resync sets it back.
//!
//! B also checks notifications: a local receiver gets `started` and `succeeded`, and one that
//! never answers does not hold the rollout up.
//!
//! Figures are printed.

mod common;
#[path = "fleet/mod.rs"]
mod fleet;
#[path = "fleet_app/mod.rs"]
mod fleet_app;

use common::*;
use fleet_app::Setup;
use hmac::{Hmac, KeyInit, Mac};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SECRET: &str = "a webhook secret";

/// A bare repository the watchers follow over `file://`; the setup's work tree pushes to it.
struct Remote {
    dir: tempfile::TempDir,
}

impl Remote {
    fn new(setup: &Setup) -> Remote {
        let dir = tempfile::tempdir().unwrap();
        run_git(dir.path(), &["init", "-q", "--bare", "-b", "main"]);
        let r = Remote { dir };
        r.push(setup);
        r
    }

    fn url(&self) -> String {
        format!("file://{}", self.dir.path().display())
    }

    fn push(&self, setup: &Setup) {
        run_git(
            setup.repo.path(),
            &[
                "push",
                "-q",
                "--force",
                self.dir.path().to_str().unwrap(),
                "HEAD:refs/heads/main",
            ],
        );
    }
}

/// A running `kube-free watch`, its log in a file.
struct Watcher {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Watcher {
    fn start(remote: &Remote, extra: &[&str]) -> Watcher {
        Watcher::start_url(&remote.url(), extra)
    }

    /// A watcher of the repository at `url`.
    fn start_url(url: &str, extra: &[&str]) -> Watcher {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let log = dir.path().join("watch.log");
        let cache = dir.path().join("cache");
        let mut args = vec![
            "watch",
            "--repo",
            url,
            "--rev",
            "main",
            "--listen",
            &listen,
            "--lease-ttl",
            "5s",
            "--max-wait",
            "5s",
        ];
        let secret = secret.to_str().unwrap().to_owned();
        args.extend(["--webhook-secret-file", &secret]);
        let cache = cache.to_str().unwrap().to_owned();
        args.extend(["--cache-dir", &cache]);
        args.extend(extra);
        let child = kube_free_command(Path::new("."), &args)
            .env("KUBE_FREE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("kube-free watch starts");
        let w = Watcher {
            child,
            port,
            log,
            _dir: dir,
        };
        wait_for("the watcher's /healthz", Duration::from_secs(20), || {
            w.get("/healthz").0 == 200
        });
        w
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn get(&self, path: &str) -> (u16, String) {
        request(&self.address(), "GET", path, &[], b"")
    }

    fn status(&self) -> serde_json::Value {
        let (code, body) = self.get("/api/v1/status");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// The last cycle converged or found the app in sync at `version`.
    fn in_sync_at(&self, version: &str) -> bool {
        let s = self.status();
        let app = &s["environments"][0];
        app["desired_version"] == version && app["in_sync"] == true
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log, past its first `mark` bytes, has `needle`; how long that took.
    fn wait_log(&self, mark: usize, needle: &str, limit: Duration) -> Duration {
        wait_for(needle, limit, || {
            self.log().get(mark..).is_some_and(|l| l.contains(needle))
        })
    }

    fn metric(&self, name: &str) -> Option<f64> {
        let (_, text) = self.get("/metrics");
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then its exit code.
    fn terminate(&mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "watcher did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- watcher on port {} ---\n{}", self.port, self.log());
        }
    }
}

fn sign(body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn wait_for(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < limit, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

fn serves(setup: &Setup, version: &str) -> bool {
    setup
        .hosts
        .iter()
        .any(|h| setup.pid_of(h, version).is_some())
}

fn assert_no_failures(scenario: &str, tally: &Tally) {
    eprintln!(
        "{scenario}: {} requests, {} failed, served {:?}",
        tally.requests, tally.failed, tally.served
    );
    assert!(
        tally.requests > 500,
        "{scenario}: too little load: {}",
        tally.text
    );
    assert_eq!(tally.failed, 0, "{scenario}: {}", tally.text);
}

#[test]
fn watch_follows_the_branch_heals_drift_answers_webhooks_and_survives_a_dead_bastion() {
    let mut setup = Setup::new(&["web-1", "web-2"], "blue-green");
    setup.bake = "1s".into();
    setup.commit("1.0.0", "", "20s");
    let remote = Remote::new(&setup);

    // A. The first deploy, then a bump within one interval, under load; SIGTERM.
    let mut a = Watcher::start(&remote, &["--interval", "2s", "--resync", "1h"]);
    let first = wait_for("1.0.0 in sync", Duration::from_secs(90), || {
        a.in_sync_at("1.0.0")
    });
    eprintln!("A: first deploy by the watcher in {first:?}");
    setup.assert_serving_only("1.0.0");
    let load = Load::start(&format!("http://{}/", setup.frontend()), 120, "GET");
    std::thread::sleep(Duration::from_secs(2));
    let commit = setup.commit("2.0.0", "", "20s");
    let mark = a.log().len();
    remote.push(&setup);
    let pushed = Instant::now();
    let read = a.wait_log(mark, &format!("commit={commit}"), Duration::from_secs(10));
    let acting = a.wait_log(mark, "executing plan", Duration::from_secs(60));
    wait_for("2.0.0 in sync", Duration::from_secs(90), || {
        a.in_sync_at("2.0.0")
    });
    eprintln!(
        "A: 2.0.0 read {read:?} after the push (interval 2s), its plan executing after {acting:?}, in sync after {:?}",
        pushed.elapsed()
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_no_failures("A", &load.interrupt());
    setup.assert_serving_only("2.0.0");
    // One interval (2 s, +10% jitter) and the fetch.
    assert!(
        read < Duration::from_millis(3200),
        "not within one interval: {read:?}"
    );
    let status = a.status();
    assert_eq!(status["cycle"]["reached_git"], true, "{status}");
    assert_eq!(status["subject"], "demo 2.0.0", "{status}");
    assert_eq!(a.get("/readyz").0, 200);
    let code = a.terminate();
    let log = a.log();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("stopped"), "{log}");
    // The lease was given back: a one-shot run takes it at once.
    setup
        .kube_free(&["reconcile", "--once"])
        .code(0)
        .stdout_has("in sync");

    // B. Webhooks, with polling every 10 minutes.
    let mut b = Watcher::start(&remote, &["--interval", "10m", "--resync", "1h"]);
    wait_for("B in sync", Duration::from_secs(60), || {
        b.in_sync_at("2.0.0")
    });
    let receiver = Receiver::start(true);
    let dead = Receiver::start(false);
    setup.extra = format!(
        "notifications:\n  - {{ name: ops, url: \"http://{}/hook\", events: [started, succeeded, failed] }}\n  - {{ name: dead, url: \"http://{}/hook\" }}\n",
        receiver.address, dead.address
    );
    let commit = setup.commit("3.0.0", "", "20s");
    remote.push(&setup);
    let payload = br#"{"ref":"refs/heads/main"}"#;
    let bad = request(
        &b.address(),
        "POST",
        "/hooks/git",
        &[("X-Hub-Signature-256", "sha256=00")],
        payload,
    );
    assert_eq!(bad.0, 401, "{}", bad.1);
    let unsigned = request(&b.address(), "POST", "/hooks/git", &[], payload);
    assert_eq!(unsigned.0, 401, "{}", unsigned.1);
    assert_eq!(b.get("/hooks/git").0, 405);
    let big = vec![b'x'; 2 * 1024 * 1024];
    let too_big = request(
        &b.address(),
        "POST",
        "/hooks/git",
        &[("X-Gitlab-Token", SECRET)],
        &big,
    );
    assert_eq!(too_big.0, 413, "{}", too_big.1);
    std::thread::sleep(Duration::from_secs(3));
    assert!(!serves(&setup, "3.0.0"), "a refused webhook deployed 3.0.0");
    assert!(b.log().contains("webhook refused"), "{}", b.log());
    let mark = b.log().len();
    let good = request(
        &b.address(),
        "POST",
        "/hooks/git",
        &[
            ("X-Hub-Signature-256", &sign(payload)),
            ("X-GitHub-Event", "push"),
        ],
        payload,
    );
    assert_eq!(good.0, 202, "{}", good.1);
    let posted = Instant::now();
    let read = b.wait_log(mark, &format!("commit={commit}"), Duration::from_secs(10));
    let lease = b.wait_log(mark, "lease taken", Duration::from_secs(30));
    eprintln!("B: 3.0.0 read {read:?} after a valid webhook, the lease taken after {lease:?}");
    assert!(read < Duration::from_secs(2), "{read:?}");
    wait_for("3.0.0 in sync", Duration::from_secs(60), || {
        b.in_sync_at("3.0.0")
    });
    // The receiver got `started` and `succeeded` for the rollout; the one that never answers did
    // not hold it up: the first step began right after `started` was sent.
    let started = receiver.wait_for("started", &commit);
    let succeeded = receiver.wait_for("succeeded", &commit);
    assert!(started.1.contains(r#""version":"3.0.0""#), "{}", started.1);
    let first_step = log_time(&b.log()[mark..], "step started step=1 ");
    let since_started = first_step - started.0;
    eprintln!(
        "B: notifications: started and succeeded received {:.1}s apart; the first step began {since_started:.2}s after `started` arrived; the dead receiver holds {} connections",
        succeeded.0 - started.0,
        dead.connections()
    );
    assert!(dead.connections() >= 1, "the dead receiver was not tried");
    assert!(
        since_started < 2.0,
        "the first step waited {since_started:.2}s after `started` was sent"
    );
    eprintln!("B: in sync {:?} after the webhook", posted.elapsed());
    let metrics = b.get("/metrics").1;
    for line in [
        r#"kube_free_webhook_requests_total{result="bad_signature"} 1"#,
        r#"kube_free_webhook_requests_total{result="unsigned"} 1"#,
        r#"kube_free_webhook_requests_total{result="too_large"} 1"#,
        r#"kube_free_webhook_requests_total{result="accepted"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }

    assert_eq!(b.terminate(), Some(0));

    // C. Self-heal at the next resync (every 4 s): an instance killed, a weight set by hand.
    let c = Watcher::start(&remote, &["--interval", "10m", "--resync", "4s"]);
    wait_for("C in sync", Duration::from_secs(60), || {
        c.in_sync_at("3.0.0")
    });
    let pid = setup.pid_of("web-1", "3.0.0").unwrap();
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    let healed = wait_for("3.0.0 restarted on web-1", Duration::from_secs(60), || {
        setup.pid_of("web-1", "3.0.0").is_some_and(|p| p != pid) && c.in_sync_at("3.0.0")
    });
    eprintln!("C: killed instance restarted and in sync after {healed:?}");
    let server = setup.status_json()["slots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["host"] == "web-2" && s["version"] == "3.0.0")
        .map(|s| format!("web-2_{}", s["slot"].as_str().unwrap()))
        .unwrap();
    setup
        .fleet
        .haproxy_runtime(&format!("set weight kf_production_demo/{server} 10"));
    // Read from HAProxy at once: the watcher may set it back within the second a `status` takes.
    let weight = setup
        .fleet
        .haproxy_runtime(&format!("get weight kf_production_demo/{server}"));
    assert!(weight.starts_with("10 "), "{weight}");
    let healed = wait_for("the weight set back", Duration::from_secs(30), || {
        setup.weights_of("3.0.0") == [100, 100]
    });
    eprintln!("C: weight set back after {healed:?}");
    // Traffic moved back onto the server, so it bakes; then the rollout record is done again.
    wait_for("in sync after the bake", Duration::from_secs(30), || {
        setup.status_json()["in_sync"] == true
    });
    // The balancer's config, kube-free's own file, edited by hand: rewritten and reloaded.
    let config = setup.fleet.haproxy_config_file();
    let original = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{original}\n# edited by hand\n")).unwrap();
    let healed = wait_for("the config rewritten", Duration::from_secs(30), || {
        std::fs::read_to_string(&config).unwrap() == original
    });
    eprintln!("C: edited config rewritten after {healed:?}");
    // Each is logged once its pass is over.
    for drift in [
        "drift corrected: start",
        "drift corrected: shift",
        "drift corrected: apply config and reload balancer edge",
    ] {
        c.wait_log(0, drift, Duration::from_secs(30));
    }
    let metrics = c.get("/metrics").1;
    assert!(
        metrics.contains(r#"kube_free_drift_corrections_total{kind="config"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"kube_free_drift_corrections_total{kind="instance"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"kube_free_drift_corrections_total{kind="traffic"}"#),
        "{metrics}"
    );
    setup.assert_serving_only("3.0.0");

    // D. Two watchers; the one acting is killed mid-rollout; the other finishes it.
    // The second one reads the repository over SSH from a fleet host, with a deploy key and the
    // host key from a file.
    let ssh_url = format!(
        "ssh://root@{}{}",
        setup.fleet.address("web-1"),
        remote.dir.path().display()
    );
    let key = setup.fleet.identity_file().to_str().unwrap().to_owned();
    let known = setup.fleet.known_hosts().to_str().unwrap().to_owned();
    let mut watchers = [
        c,
        Watcher::start_url(
            &ssh_url,
            &[
                "--interval",
                "2s",
                "--resync",
                "1h",
                "--git-ssh-key",
                &key,
                "--git-known-hosts",
                &known,
            ],
        ),
    ];
    wait_for(
        "the SSH watcher's first cycle",
        Duration::from_secs(60),
        || watchers[1].status()["cycle"]["reached_git"] == true,
    );
    let load = Load::start(&format!("http://{}/", setup.frontend()), 150, "GET");
    std::thread::sleep(Duration::from_secs(2));
    setup.bake = "4s".into();
    let commit = setup.commit("4.0.0", "", "20s");
    let mark = watchers[1].log().len();
    remote.push(&setup);
    let pushed = Instant::now();
    let acting = {
        let mut found = None;
        wait_for("a watcher acting", Duration::from_secs(30), || {
            found = watchers
                .iter()
                .position(|w| w.metric("kube_free_lease_held") == Some(1.0));
            found.is_some()
        });
        found.unwrap()
    };
    let read = watchers[1].wait_log(mark, &format!("commit={commit}"), Duration::from_secs(10));
    eprintln!("D: the SSH watcher read 4.0.0 {read:?} after the push (interval 2s)");
    assert!(
        read < Duration::from_millis(3200),
        "not within one interval: {read:?}"
    );
    wait_for("4.0.0 started", Duration::from_secs(30), || {
        serves(&setup, "4.0.0")
    });
    std::thread::sleep(Duration::from_millis(500));
    let other_mark = watchers[1 - acting].log().len();
    watchers[acting].kill();
    let killed = Instant::now();
    eprintln!(
        "D: watcher {acting} killed with SIGKILL mid-rollout, {:?} after the push",
        pushed.elapsed()
    );
    let other = &watchers[1 - acting];
    // The dead one's lease expires after the TTL (5 s, +1 s on the host's clock); the other tries
    // again when its lock retry (the lease's remaining time + 1 s) or its interval says, then
    // connects, plans and takes it: measured 14 s on a loaded 2-core machine.
    let took_over = other.wait_log(other_mark, "lease taken", Duration::from_secs(60));
    eprintln!("D: the other watcher took the lease {took_over:?} after the kill");
    assert!(
        took_over < Duration::from_secs(25),
        "not within the lease TTL and one interval: {took_over:?}"
    );
    let took = wait_for(
        "4.0.0 in sync by the other watcher",
        Duration::from_secs(120),
        || other.in_sync_at("4.0.0"),
    );
    eprintln!("D: the other watcher finished the rollout {took:?} after the kill");
    std::thread::sleep(Duration::from_secs(1));
    assert_no_failures("D", &load.interrupt());
    setup.assert_serving_only("4.0.0");
    // Lease TTL 5 s + the other's interval (2 s, or its retry) + the rest of the rollout.
    assert!(killed.elapsed() < Duration::from_secs(60));

    // E. What the surviving watcher shows: Prometheus scrapes it, Chromium renders its page.
    prometheus_scrapes_the_serving_version(other, "4.0.0");
    the_page_shows_every_app_in_chromium(other, "4.0.0");
    drop(watchers);

    // F. Without self-heal, and while suspended, drift is reported and left alone; resumed, the
    // next resync puts it back.
    let weight_by_hand = |weight: u64| {
        let server = setup.status_json()["slots"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["host"] == "web-2" && s["version"] == "4.0.0")
            .map(|s| format!("web-2_{}", s["slot"].as_str().unwrap()))
            .unwrap();
        setup
            .fleet
            .haproxy_runtime(&format!("set weight kf_production_demo/{server} {weight}"));
    };
    let mut f = Watcher::start(
        &remote,
        &["--interval", "10m", "--resync", "2s", "--no-self-heal"],
    );
    wait_for("F in sync", Duration::from_secs(60), || {
        f.in_sync_at("4.0.0")
    });
    weight_by_hand(10);
    let mark = f.log().len();
    f.wait_log(
        mark,
        "drift found, not corrected (self-heal off or suspended): shift production/demo traffic",
        Duration::from_secs(30),
    );
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        setup.weights_of("4.0.0").contains(&10),
        "--no-self-heal put the weight back"
    );
    assert_eq!(f.status()["cycle"]["outcome"], "drift");
    assert!(f
        .get("/metrics")
        .1
        .contains(r#"kube_free_drift{kind="traffic"}"#));
    assert_eq!(f.terminate(), Some(0));
    eprintln!("F: --no-self-heal reported the weight set by hand and left it");

    setup
        .kube_free(&[
            "suspend",
            "--env",
            "production",
            "--for",
            "1h",
            "--reason",
            "a test",
        ])
        .code(0)
        .stdout_has("suspended production until");
    let g = Watcher::start(&remote, &["--interval", "10m", "--resync", "2s"]);
    wait_for("G's first cycle", Duration::from_secs(60), || {
        g.status()["cycle"]["outcome"] == "suspended"
    });
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        setup.weights_of("4.0.0").contains(&10),
        "a suspended environment was healed"
    );
    let status = g.status();
    assert_eq!(status["suspended"][0]["env"], "production", "{status}");
    assert_eq!(status["suspended"][0]["reason"], "a test", "{status}");
    assert!(g
        .get("/metrics")
        .1
        .contains(r#"kube_free_suspended{env="production"} 1"#));
    assert!(
        g.get("/").1.contains("a test"),
        "the page shows the suspension"
    );
    setup
        .kube_free(&["resume", "--env", "production"])
        .code(0)
        .stdout_has("resumed production");
    let healed = wait_for(
        "the weight set back after resume",
        Duration::from_secs(60),
        || setup.weights_of("4.0.0") == [100, 100],
    );
    eprintln!("F: suspended, the drift stayed; resumed, it was put back {healed:?} later");
    wait_for("in sync after the bake", Duration::from_secs(30), || {
        setup.status_json()["in_sync"] == true
    });
}

/// A real Prometheus scrapes the watcher every second; a PromQL query over its HTTP API returns
/// the serving version's info series.
fn prometheus_scrapes_the_serving_version(watcher: &Watcher, version: &str) {
    require_tools(&["prometheus"]);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: kube-free\n    static_configs:\n      - targets: [\"{}\"]\n",
            watcher.address()
        ),
    )
    .unwrap();
    let port = free_port();
    let mut prometheus = KillOnDrop(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus starts"),
    );
    let query = format!("/api/v1/query?query=kube_free_app_info%7Bserving%3D%22{version}%22%7D");
    let address = format!("127.0.0.1:{port}");
    let mut answer = String::new();
    let took = wait_for(
        "prometheus to have the series",
        Duration::from_secs(60),
        || {
            answer = request(&address, "GET", &query, &[], b"").1;
            answer.contains(r#""app":"demo""#)
        },
    );
    let json: serde_json::Value = serde_json::from_str(answer.trim()).unwrap_or_default();
    let series = &json["data"]["result"][0]["metric"];
    assert_eq!(series["desired"], version, "{answer}");
    assert_eq!(series["env"], "production", "{answer}");
    eprintln!("E: Prometheus has kube_free_app_info{{serving=\"{version}\"}} after {took:?}");
    let _ = prometheus.0.kill();
}

/// Headless Chromium renders the status page: the DOM shows the desired and serving versions of
/// every app; a screenshot is saved under the target directory.
fn the_page_shows_every_app_in_chromium(watcher: &Watcher, version: &str) {
    require_tools(&["chromium"]);
    let profile = tempfile::tempdir().unwrap();
    let url = format!("http://{}/", watcher.address());
    let chromium = |extra: &[&str]| {
        Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra)
            .arg(&url)
            .output()
            .expect("chromium runs")
    };
    let dom = String::from_utf8_lossy(&chromium(&["--dump-dom"]).stdout).into_owned();
    let section = dom
        .split(r#"id="production-demo""#)
        .nth(1)
        .unwrap_or_else(|| panic!("no section for production/demo in\n{dom}"));
    assert!(
        section.contains(&format!(r#"<span class="desired">{version}</span>"#)),
        "{section}"
    );
    assert!(
        section.contains(&format!(r#"<span class="serving">{version}</span>"#)),
        "{section}"
    );
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("watch-status-page.png");
    let _ = std::fs::remove_file(&shot);
    let out = chromium(&[
        &format!("--screenshot={}", shot.display()),
        "--window-size=1200,900",
        "--hide-scrollbars",
    ]);
    assert!(
        std::fs::metadata(&shot).is_ok_and(|m| m.len() > 1000),
        "no screenshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "E: the page in Chromium shows {version}; screenshot {}",
        shot.display()
    );
}

/// Seconds since midnight (UTC) of the log line that has `needle`.
fn log_time(log: &str, needle: &str) -> f64 {
    let line = log
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no {needle:?} in\n{log}"));
    // 2026-11-30T13:08:15.358433Z
    let time = &line[11..line.find('Z').unwrap()];
    let mut parts = time.split(':');
    let h: f64 = parts.next().unwrap().parse().unwrap();
    let m: f64 = parts.next().unwrap().parse().unwrap();
    let s: f64 = parts.next().unwrap().parse().unwrap();
    h * 3600.0 + m * 60.0 + s
}

fn seconds_of_day() -> f64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    (now.as_secs() % 86_400) as f64 + now.subsec_micros() as f64 / 1e6
}

/// A local HTTP receiver of notifications: it answers 200 and keeps each body with the time it
/// arrived; or (`answer: false`) accepts connections and never answers.
struct Receiver {
    address: String,
    got: std::sync::Arc<std::sync::Mutex<Vec<(f64, String)>>>,
    held: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Receiver {
    fn start(answer: bool) -> Receiver {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (g, h) = (got.clone(), held.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                if !answer {
                    h.lock().unwrap().push(stream);
                    continue;
                }
                let g = g.clone();
                std::thread::spawn(move || {
                    if let Some(body) = read_request(&stream) {
                        g.lock().unwrap().push((seconds_of_day(), body));
                        let _ = (&stream).write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        );
                    }
                });
            }
        });
        Receiver { address, got, held }
    }

    /// The first `event` about `commit`: when it arrived and its body (waits up to a minute).
    fn wait_for(&self, event: &str, commit: &str) -> (f64, String) {
        let needle = format!(r#""event":"{event}""#);
        let mut found = None;
        wait_for(
            &format!("a {event} notification"),
            Duration::from_secs(60),
            || {
                found = self
                    .got
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|(_, b)| b.contains(&needle) && b.contains(commit))
                    .cloned();
                found.is_some()
            },
        );
        found.unwrap()
    }

    fn connections(&self) -> usize {
        self.held.lock().unwrap().len()
    }
}

/// Reads one HTTP request; its body.
fn read_request(mut stream: &std::net::TcpStream) -> Option<String> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&data).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if body.len() >= length {
                return Some(body.to_owned());
            }
        }
    }
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
