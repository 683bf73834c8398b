//! The docker runtime on this machine's Docker engine, end to end through the `kube-free` binary:
//! a `transport: local` host, HAProxy started by the test, images of the demo app built locally by
//! `examples/quickstart-docker/build-image.sh` (no registry is reachable; a local Debian
//! `docker-registry` stands in for one where pulls are the point). Each test has its own
//! environment name, ports and directory, so tests share the engine without touching each other's
//! containers; every container a test made is removed when it ends.

mod common;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const IMAGE: &str = "kf-demo-test";

/// Builds `kf-demo-test:<tag>` with `build-image.sh` (ENTRYPOINT arguments `args`).
fn build_image(tag: &str, args: &[&str]) {
    let top = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(top.join("examples/quickstart-docker/build-image.sh"))
        .arg(format!("{IMAGE}:{tag}"))
        .args(args)
        .env("DEMO_BIN", demo_binary())
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "build-image.sh {tag}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The demo image as 1.0.0, 2.0.0 and 3.0.0, and `crash` (exits at once), built once per binary.
fn images() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        require_tools(&["docker", "haproxy", "wrk", "git", "curl"]);
        build_image("1.0.0", &[]);
        for v in ["2.0.0", "3.0.0"] {
            docker_ok(&["tag", &format!("{IMAGE}:1.0.0"), &format!("{IMAGE}:{v}")]);
        }
        build_image("crash", &["--exit-after", "0s"]);
    });
}

/// One test's world: a directory, HAProxy, a Git repository, an environment of its own.
/// Fields drop in order: HAProxy and the processes go before the directory that holds their files.
struct Stage {
    repo: Repo,
    env: String,
    front: u16,
    slots: (u16, u16),
    /// What the app's `runtime:` says beyond `env`.
    runtime: String,
    strategy: String,
    haproxy: LocalHaproxy,
    /// Stops what the process runtime started (containers: see `Drop`).
    _processes: StopInstances,
    dir: tempfile::TempDir,
}

impl Stage {
    fn new(env: &str) -> Stage {
        images();
        let dir = tempfile::Builder::new()
            .prefix("kf-dl-")
            .tempdir_in("/tmp")
            .unwrap();
        let haproxy = LocalHaproxy::start(&dir.path().join("haproxy"));
        let processes = StopInstances(dir.path().join("state"));
        let [front, blue, green] = free_ports();
        let stage = Stage {
            dir,
            repo: Repo::new(),
            env: env.to_owned(),
            front,
            slots: (blue, green),
            runtime: format!(
                r#"kind: docker, image: "{IMAGE}:{{version}}", command: "--listen 0.0.0.0:{{port}} --version {{version}}", bind: 127.0.0.1"#
            ),
            strategy: "blue-green".into(),
            haproxy,
            _processes: processes,
        };
        let secret_file = stage.dir().join("secret-file");
        std::fs::write(&secret_file, format!("{}\n", stage.file_secret())).unwrap();
        std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        stage.remove_containers();
        stage
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Commits `version` with the stage's runtime and strategy.
    fn commit(&self, version: &str) -> String {
        let d = self.dir().display();
        let yaml = format!(
            r#"version: 1
hosts:
  here: {{ transport: local, state_dir: {d}/state }}
balancers:
  edge: {balancer}
apps:
  demo:
    runtime: {{ {runtime}, env: {{ DEMO_SECRET: "{secret}", DEMO_FILE_SECRET: {{ file: {d}/secret-file }} }} }}
    slots: {{ blue: {blue}, green: {green} }}
    probe: {{ path: /readyz, interval: 100ms, timeout: 1s, healthy_after: 2, deadline: 15s }}
    drain: 2s
    stop_timeout: 5s
    bake: 1s
environments:
  {env}:
    balancer: edge
    hosts: [here]
    apps:
      demo: {{ version: "{version}", listen: "127.0.0.1:{front}", strategy: {strategy} }}
"#,
            balancer = self.haproxy.balancer_yaml("here"),
            runtime = self.runtime,
            secret = self.secret(),
            blue = self.slots.0,
            green = self.slots.1,
            env = self.env,
            front = self.front,
            strategy = self.strategy,
        );
        self.repo.write("kube-free.yaml", yaml);
        self.repo.commit(&format!("demo {version}"))
    }

    /// A value only this stage uses, given to the app as `DEMO_SECRET`.
    fn secret(&self) -> String {
        format!("s3cret-{}-{}", self.env, self.front)
    }

    /// A value only this stage uses, given to the app as `DEMO_FILE_SECRET` from a 0600 file
    /// outside the repository.
    fn file_secret(&self) -> String {
        format!("f1le-s3cret-{}-{}", self.env, self.front)
    }

    fn kube_free(&self, args: &[&str]) -> Run {
        let mut all = args.to_vec();
        all.extend(["--repo", self.repo.path_str()]);
        kube_free(&all)
    }

    fn frontend(&self) -> String {
        format!("127.0.0.1:{}", self.front)
    }

    /// The stage's containers: (name, version label, running).
    fn containers(&self) -> Vec<(String, String, bool)> {
        let out = docker_ok(&[
            "ps",
            "-a",
            "--filter",
            &format!("label=kube-free.env={}", self.env),
            "--format",
            "{{.Names}} {{.Label \"kube-free.version\"}} {{.State}}",
        ]);
        let mut found: Vec<(String, String, bool)> = out
            .lines()
            .map(|l| {
                let w: Vec<&str> = l.split(' ').collect();
                (w[0].to_owned(), w[1].to_owned(), w[2] == "running")
            })
            .collect();
        found.sort();
        found
    }

    /// Exactly one container runs, of `version`, and nothing else of the stage is left.
    fn assert_only(&self, version: &str) {
        let found = self.containers();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].1, version, "{found:?}");
        assert!(found[0].2, "{found:?}");
        assert_eq!(http_get(&self.frontend(), "/version"), version);
    }

    fn remove_containers(&self) {
        let ids = docker_ok(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=kube-free.env={}", self.env),
        ]);
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(ids);
            docker(&args);
        }
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        self.remove_containers();
    }
}

/// Blue-green, then a canary, with containers under wrk keep-alive load: no failed request, and
/// afterwards exactly the new version's container exists.
#[test]
fn blue_green_and_canary_switch_containers_with_no_failed_request() {
    let mut s = Stage::new("dl-switch");
    s.commit("1.0.0");
    s.kube_free(&["reconcile", "--once"]).code(0);
    s.assert_only("1.0.0");
    let _turn = load_test_turn();

    s.commit("2.0.0");
    s.kube_free(&["plan"])
        .code(10)
        .stdout_has("pull the image of dl-switch/demo 2.0.0 on here");
    let load = Load::start(&format!("http://{}/", s.frontend()), 10, "GET");
    std::thread::sleep(Duration::from_secs(2));
    s.kube_free(&["reconcile", "--once"]).code(0);
    let tally = load.finish();
    assert_eq!(tally.failed, 0, "{}", tally.text);
    assert!(
        tally.served_by("1.0.0") > 0 && tally.served_by("2.0.0") > 0,
        "{}",
        tally.text
    );
    s.assert_only("2.0.0");

    s.strategy = "{ canary: { steps: [ { weight: 30, pause: 2s } ] } }".into();
    s.commit("3.0.0");
    let load = Load::start(&format!("http://{}/", s.frontend()), 12, "GET");
    std::thread::sleep(Duration::from_secs(1));
    s.kube_free(&["reconcile", "--once"]).code(0);
    let tally = load.finish();
    assert_eq!(tally.failed, 0, "{}", tally.text);
    assert!(tally.served_by("3.0.0") > 0, "{}", tally.text);
    s.assert_only("3.0.0");
    // The container's log, through the docker runtime.
    s.kube_free(&["logs", "demo", "--env", "dl-switch", "--lines", "5"])
        .code(0)
        .stdout_has("==> here/")
        .stdout_has("docker logs kf-dl-switch-demo-");
    eprintln!(
        "containers: blue-green and canary under load, {} requests, 0 failed",
        tally.requests
    );
}

/// A container that exits at once fails (its start, or its probe) with its last log lines; the version is
/// quarantined, the old one serves on, and nothing of the failed version is left.
#[test]
fn a_container_that_crashes_on_start_is_rolled_back_and_quarantined() {
    let s = Stage::new("dl-crash");
    s.commit("1.0.0");
    s.kube_free(&["reconcile", "--once"]).code(0);
    s.commit("crash");
    s.kube_free(&["reconcile", "--once"])
        .code(1)
        // At once, or while it is probed (a loaded machine may see it up for a moment).
        .stderr_has("exited")
        .stderr_has("crashing, as --exit-after asked")
        .stderr_has("quarantined");
    s.assert_only("1.0.0");
    s.kube_free(&["status"]).stdout_has("quarantined");
    // Quarantined: the next run changes nothing.
    s.kube_free(&["reconcile", "--once"]).code(1);
    s.assert_only("1.0.0");
}

/// kube-free killed with SIGKILL while the new container is being probed: the next run resumes
/// and ends with exactly the new version's container.
#[test]
fn a_run_killed_mid_rollout_resumes() {
    let mut s = Stage::new("dl-kill");
    s.commit("1.0.0");
    s.kube_free(&["reconcile", "--once"]).code(0);
    // 2.0.0 becomes ready only after 3 s: the run is killed while it waits.
    s.runtime = s.runtime.replace(
        "--version {version}",
        "--version {version} --ready-delay 3s",
    );
    s.commit("2.0.0");
    // A short lease: the killed run's expires soon, and the next run takes it over.
    let mut child = kube_free_command(
        s.dir(),
        &[
            "reconcile",
            "--once",
            "--lease-ttl",
            "5s",
            "--repo",
            s.repo.path_str(),
        ],
    )
    .spawn()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !s.containers().iter().any(|c| c.1 == "2.0.0" && c.2) {
        assert!(Instant::now() < deadline, "2.0.0 never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(s.containers().len(), 2, "{:?}", s.containers());
    assert_eq!(http_get(&s.frontend(), "/version"), "1.0.0");
    s.kube_free(&["reconcile", "--once", "--lock-wait", "30s"])
        .code(0);
    s.assert_only("2.0.0");
}

/// What the engine says wins over what kube-free started: a container removed by hand is seen
/// gone and started again; one restarted by hand is seen running, and is left alone.
#[test]
fn containers_changed_by_hand_are_seen_as_they_are() {
    let s = Stage::new("dl-hand");
    s.commit("1.0.0");
    s.kube_free(&["reconcile", "--once"]).code(0);
    let name = s.containers()[0].0.clone();
    docker_ok(&["restart", "-t", "1", &name]);
    let wait_ready = || {
        let deadline = Instant::now() + Duration::from_secs(10);
        while request(&s.frontend(), "GET", "/version", &[], b"").0 != 200 {
            assert!(
                Instant::now() < deadline,
                "the restarted container never served"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_ready();
    s.kube_free(&["plan"]).code(0);
    docker_ok(&["rm", "-f", &name]);
    s.kube_free(&["plan"])
        .code(10)
        .stdout_has("start dl-hand/demo 1.0.0");
    s.kube_free(&["reconcile", "--once"]).code(0);
    s.assert_only("1.0.0");
}

/// The app's environment reaches the instance, but its values are never on a command line (`ps`
/// while kube-free starts it), in a file kube-free keeps, in its debug log or in `status`: with
/// containers and with processes.
#[test]
fn environment_values_stay_out_of_argv_files_and_logs() {
    let s = Stage::new("dl-secret");
    s.commit("1.0.0");
    deploy_and_look_for_the_secret(&s);
    let env = docker_ok(&[
        "inspect",
        "--format",
        "{{json .Config.Env}}",
        &s.containers()[0].0,
    ]);
    for var in [
        format!("DEMO_SECRET={}", s.secret()),
        format!("DEMO_FILE_SECRET={}", s.file_secret()),
    ] {
        assert!(env.contains(&var), "{env}");
    }

    let mut p = Stage::new("dl-secret-process");
    p.runtime = format!(
        r#"kind: process, command: "{} --listen 127.0.0.1:{{port}} --version {{version}}""#,
        demo_binary().display()
    );
    p.commit("1.0.0");
    deploy_and_look_for_the_secret(&p);
    // The process has it: its environment, read from /proc.
    let pid =
        std::fs::read_to_string(p.dir().join("state/dl-secret-process/demo/blue.pid")).unwrap();
    let pid = pid.split_whitespace().next().unwrap();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    let mut environ: Vec<&str> = environ.split('\0').filter(|v| !v.is_empty()).collect();
    environ.sort();
    let mut expected = vec![
        format!("DEMO_FILE_SECRET={}", p.file_secret()),
        format!("DEMO_SECRET={}", p.secret()),
        format!("HOME={}", std::env::var("HOME").unwrap()),
        "KUBE_FREE_APP=demo".to_owned(),
        "KUBE_FREE_ENV=dl-secret-process".to_owned(),
        "KUBE_FREE_SLOT=blue".to_owned(),
        "KUBE_FREE_VERSION=1.0.0".to_owned(),
        // The host session's (here kube-free's own, a local host).
        format!("PATH={}", std::env::var("PATH").unwrap()),
        format!("PORT={}", p.slots.0),
        "PWD=/".to_owned(),
    ];
    expected.sort();
    // Only what it was given: nothing of kube-free's environment (`KUBE_FREE_LOG=debug`).
    assert_eq!(environ, expected);
}

/// Deploys the stage's commit at `KUBE_FREE_LOG=debug` while sampling `ps`; the secret is nowhere.
fn deploy_and_look_for_the_secret(s: &Stage) {
    let secrets = [s.secret(), s.file_secret()];
    let mut child = kube_free_command(
        s.dir(),
        &["reconcile", "--once", "--repo", s.repo.path_str()],
    )
    .env("KUBE_FREE_LOG", "debug")
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let mut samples = 0;
    while child.try_wait().unwrap().is_none() {
        let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
        let ps = String::from_utf8_lossy(&ps.stdout);
        for secret in &secrets {
            assert!(
                !ps.contains(secret),
                "the secret is on a command line:\n{ps}"
            );
        }
        samples += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(samples > 10, "ps was sampled {samples} times");
    for text in [&out.stdout, &out.stderr] {
        let text = String::from_utf8_lossy(text);
        for secret in &secrets {
            assert!(!text.contains(secret), "{text}");
        }
    }
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("command"),
        "a debug log"
    );
    // No file kube-free keeps holds it (the env file lived only while `docker run` read it).
    let mut files = vec![s.dir().join("state")];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else {
            // The records of the environment's instances and rollouts are their owner's only,
            // in directories of their owner's only.
            let private = [s.env.as_str(), "rollouts"]
                .iter()
                .any(|d| path.starts_with(s.dir().join("state").join(d)));
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            if private {
                assert_eq!(mode(&path), 0o600, "{path:?}");
                assert_eq!(mode(path.parent().unwrap()), 0o700, "{path:?}");
            }
            let text = std::fs::read(&path).unwrap();
            for secret in &secrets {
                assert!(
                    !String::from_utf8_lossy(&text).contains(secret),
                    "{} holds the secret",
                    path.display()
                );
            }
            assert!(
                !path.to_string_lossy().ends_with(".env"),
                "{path:?} is left"
            );
        }
    }
    for secret in &secrets {
        s.kube_free(&["status", "--output", "json"])
            .code(0)
            .stdout_lacks(secret);
        s.kube_free(&["plan", "--output", "json"])
            .stdout_lacks(secret);
    }
}

/// An app moved from processes to containers in Git: the next version starts as a container and
/// the old process is drained and stopped by the process runtime that started it; then back.
#[test]
fn an_app_moves_between_processes_and_containers() {
    let mut s = Stage::new("dl-move");
    let docker = s.runtime.clone();
    let process = format!(
        r#"kind: process, command: "{} --listen 127.0.0.1:{{port}} --version {{version}}""#,
        demo_binary().display()
    );
    s.runtime = process.clone();
    s.commit("1.0.0");
    s.kube_free(&["reconcile", "--once"]).code(0);
    let pid_file = s.dir().join("state/dl-move/demo/blue.pid");
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let pid = pid.split_whitespace().next().unwrap().to_owned();
    assert!(Path::new(&format!("/proc/{pid}")).exists());

    s.runtime = docker;
    s.commit("2.0.0");
    s.kube_free(&["reconcile", "--once"]).code(0);
    s.assert_only("2.0.0");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        stat.is_empty() || stat.contains(") Z "),
        "the process of 1.0.0 still runs: {stat}"
    );

    s.runtime = process;
    s.commit("3.0.0");
    s.kube_free(&["reconcile", "--once"]).code(0);
    assert!(s.containers().is_empty(), "{:?}", s.containers());
    assert_eq!(http_get(&s.frontend(), "/version"), "3.0.0");
}

/// `examples/quickstart-docker/run.sh`: builds the image, deploys, switches under wrk load.
#[test]
fn the_quickstart_docker_example_switches_with_no_failed_request() {
    require_tools(&["docker", "haproxy", "wrk", "git", "curl"]);
    let _turn = load_test_turn();
    // Starting a container takes longer than a process: load long enough to see both versions.
    let (stdout, tally) = run_example("quickstart-docker", &[("LOAD_SECONDS", "15")]);
    assert_eq!(tally.failed, 0, "{stdout}");
    assert!(
        tally.served_by("1.0.0") > 0 && tally.served_by("2.0.0") > 0,
        "{stdout}"
    );
    assert!(
        stdout.contains("switched 1.0.0 -> 2.0.0 under load with 0 failed requests"),
        "{stdout}"
    );
    assert!(
        stdout.contains("container kf-local-demo-green: kf-demo:2.0.0"),
        "{stdout}"
    );
}

/// Pulls from a registry (Debian's `docker-registry` on loopback): a tag the registry does not
/// have is the version's fault (quarantined, nothing stopped); a registry that does not answer is
/// not (nothing quarantined, and the next run rolls out once the image can be had).
#[test]
fn a_missing_tag_is_quarantined_and_an_unreachable_registry_is_retried() {
    let mut registry = Registry::start();
    let mut s = Stage::new("dl-pull");
    let repo = format!("{}/kf-demo-pull", registry.address());
    let image = |v: &str| format!("{repo}:{v}");
    docker_ok(&["tag", &format!("{IMAGE}:1.0.0"), &image("1.0.0")]);
    docker_ok(&["push", &image("1.0.0")]);
    docker_ok(&["rmi", &image("1.0.0")]);
    s.runtime = s.runtime.replace(
        &format!("{IMAGE}:{{version}}"),
        &format!("{repo}:{{version}}"),
    );
    s.commit("1.0.0");
    // Pulled from the registry.
    s.kube_free(&["reconcile", "--once"]).code(0);
    s.assert_only("1.0.0");

    s.commit("9.9.9");
    s.kube_free(&["reconcile", "--once"])
        .code(1)
        .stderr_has(&format!("image {} not found", image("9.9.9")))
        .stderr_has("quarantined");
    s.assert_only("1.0.0");

    registry.stop();
    s.commit("2.0.0");
    s.kube_free(&["reconcile", "--once"])
        .code(1)
        .stderr_has(&format!("pulling image {} failed", image("2.0.0")))
        .stderr_lacks("quarantined");
    s.assert_only("1.0.0");

    // The image can be had again (here: the host has it): the next run rolls it out.
    docker_ok(&["tag", &format!("{IMAGE}:1.0.0"), &image("2.0.0")]);
    s.kube_free(&["reconcile", "--once"]).code(0);
    s.assert_only("2.0.0");
    docker(&["rmi", &image("1.0.0"), &image("2.0.0")]);
}

/// `cli: podman` runs the same containers with Debian's podman: a blue-green switch under load.
#[test]
fn podman_switches_with_no_failed_request() {
    if Command::new("podman").arg("--version").output().is_err() {
        panic!("podman is missing: run the README's test command, which installs it");
    }
    let mut s = Stage::new("dl-podman");
    s.runtime = format!("cli: podman, {}", s.runtime);
    // Podman keeps its own images: the same image, loaded from Docker's store.
    let save = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "docker save {IMAGE}:1.0.0 | podman load -q && podman tag {IMAGE}:1.0.0 {IMAGE}:2.0.0"
        ))
        .env("CONTAINERS_CONF", podman_conf())
        .output()
        .unwrap();
    assert!(
        save.status.success(),
        "{}",
        String::from_utf8_lossy(&save.stderr)
    );
    s.commit("1.0.0");
    let podman_run = |s: &Stage, args: &[&str]| -> Run {
        let mut all = args.to_vec();
        all.extend(["--repo", s.repo.path_str()]);
        let out = kube_free_command(s.dir(), &all)
            .env("CONTAINERS_CONF", podman_conf())
            .output()
            .unwrap();
        Run::from(out)
    };
    podman_run(&s, &["reconcile", "--once"]).code(0);
    assert_eq!(http_get(&s.frontend(), "/version"), "1.0.0");
    let _turn = load_test_turn();
    s.commit("2.0.0");
    let load = Load::start(&format!("http://{}/", s.frontend()), 10, "GET");
    std::thread::sleep(Duration::from_secs(2));
    podman_run(&s, &["reconcile", "--once"]).code(0);
    let tally = load.finish();
    assert_eq!(tally.failed, 0, "{}", tally.text);
    assert!(tally.served_by("2.0.0") > 0, "{}", tally.text);
    let left = Command::new("podman")
        .args([
            "ps",
            "-a",
            "--filter",
            "label=kube-free.env=dl-podman",
            "--format",
            "{{.Names}} {{.Labels}}",
        ])
        .env("CONTAINERS_CONF", podman_conf())
        .output()
        .unwrap();
    let left = String::from_utf8_lossy(&left.stdout);
    assert_eq!(left.lines().count(), 1, "{left}");
    assert!(left.contains("kube-free.version:2.0.0"), "{left}");
    let _ = Command::new("sh")
        .arg("-c")
        .arg("podman rm -f -t 0 $(podman ps -aq --filter label=kube-free.env=dl-podman)")
        .env("CONTAINERS_CONF", podman_conf())
        .output();
}

/// A containers.conf for podman on this machine: root here may not raise rlimits
/// (no CAP_SYS_RESOURCE), and podman's default ulimits for containers are above the hard ones.
fn podman_conf() -> PathBuf {
    static CONF: OnceLock<PathBuf> = OnceLock::new();
    CONF.get_or_init(|| {
        let path = PathBuf::from("/tmp/kube-free-test-containers.conf");
        let hard = |flag: &str| {
            let out = Command::new("sh")
                .arg("-c")
                .arg(format!("ulimit -H{flag}"))
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        };
        let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .unwrap()
            .trim()
            .parse::<u64>()
            .unwrap();
        let nproc = hard("u").parse::<u64>().map_or(pid_max, |n| n.min(pid_max));
        std::fs::write(
            &path,
            format!(
                "[containers]\ndefault_ulimits = [\"nofile={0}:{0}\", \"nproc={1}:{1}\"]\n",
                hard("n"),
                nproc
            ),
        )
        .unwrap();
        path
    })
    .clone()
}
