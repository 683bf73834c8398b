//! The test fleet's Docker hosts (`FleetSpec::with_docker`), without kube-free: every app host runs
//! its own engine in its own network namespace, so containers started over SSH are on that host's
//! address, the demo app's image is loaded on every host without a registry, a registry on this
//! machine serves every host, and nothing of it outlives the fleet. One fleet for the scenarios of
//! [`docker_hosts_of_a_fleet`]; a scenario leaves no container behind (see [`remove_all`]).
//!
//! Figures (engine start, image load, the whole test) are printed on stderr.

mod common;
#[path = "fleet/mod.rs"]
mod fleet;

use common::*;
use fleet::{pids_mentioning, Fleet, FleetSpec};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The demo image every scenario runs.
const TAG: &str = "kf-demo:1";
/// The port the demo listens on inside its containers (and publishes).
const PORT: u16 = 18080;
/// Set in the child process of [`a_killed_run_and_a_dropped_fleet_leave_nothing`].
const KILLED_RUN_ENV: &str = "KUBE_FREE_TEST_KILLED_DOCKER_RUN";

#[test]
fn docker_hosts_of_a_fleet() {
    let t0 = Instant::now();
    let fleet = Fleet::start(FleetSpec::new(&["web-1", "web-2"], "lb-1").with_docker());
    eprintln!(
        "fleet {} with 2 docker hosts up in {:?}",
        fleet.id(),
        t0.elapsed()
    );
    let t = Instant::now();
    fleet.load_image(demo_binary(), TAG, &[]);
    eprintln!("image {TAG} on both hosts in {:?}", t.elapsed());

    each_host_has_its_own_engine(&fleet);
    published_ports_answer_on_each_hosts_address(&fleet);
    host_network_answers_on_the_hosts_address(&fleet);
    images_that_crash_or_have_no_binary(&fleet);
    a_registry_on_the_gateway_serves_every_host(&fleet);
    eprintln!("docker_hosts_of_a_fleet: {:?} in all", t0.elapsed());
}

// ---- scenarios ----

/// `docker` over SSH talks to the host's own engine; the balancer has none.
fn each_host_has_its_own_engine(f: &Fleet) {
    assert_eq!(f.docker_hosts(), ["web-1", "web-2"]);
    let mut ids = Vec::new();
    for host in f.docker_hosts() {
        let out = f.ssh(
            &host,
            "echo $DOCKER_HOST; docker info --format '{{.ID}} {{.DockerRootDir}}'",
        );
        let text = ok(&out, &format!("docker info over ssh on {host}"));
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some(f.docker_host(&host).as_str()));
        let info = lines.next().unwrap_or_default().to_string();
        assert!(
            info.ends_with(&format!("{}/data", f.docker_dir(&host).display())),
            "{host}: {info}"
        );
        assert_eq!(
            info,
            f.docker_ok(&host, &["info", "--format", "{{.ID}} {{.DockerRootDir}}"])
        );
        ids.push(info);
        // The engine's bridge is in the host's namespace, with the host's subnet.
        let addr = f.exec(&host, &["ip", "-4", "-o", "addr", "show", "docker0"]);
        let subnet = f.docker_bridge_subnet(&host);
        let first = subnet.replace(".0/24", ".1/24");
        assert!(
            String::from_utf8_lossy(&addr.stdout).contains(&first),
            "{host}: docker0 lacks {first}: {addr:?}"
        );
    }
    assert_ne!(ids[0], ids[1], "the two hosts share an engine");
    let lb = f.ssh("lb-1", "echo \"[$DOCKER_HOST]\"");
    assert_eq!(ok(&lb, "ssh lb-1").trim(), "[]");
}

/// The same container name and published port on both hosts, started over SSH as kube-free will:
/// each answers on its own host's address with its own version, from the balancer's namespace.
fn published_ports_answer_on_each_hosts_address(f: &Fleet) {
    let t = Instant::now();
    for (n, host) in f.docker_hosts().iter().enumerate() {
        let run = format!(
            "docker run -d --name kf-test-demo-blue --label kube-free.app=demo --label kube-free.slot=blue \
             -p 0.0.0.0:{PORT}:{PORT} {TAG} --listen 0.0.0.0:{PORT} --version v{n}-{host}"
        );
        ok(
            &f.ssh(host, &run),
            &format!("docker run over ssh on {host}"),
        );
    }
    eprintln!("2 containers started over ssh in {:?}", t.elapsed());
    for (n, host) in f.docker_hosts().iter().enumerate() {
        let url = format!("http://{}:{PORT}/version", f.address(host));
        let body = curl_from(f, "lb-1", &url);
        assert_eq!(body, format!("v{n}-{host}"), "{url} from lb-1");
        let cs = f.containers(host);
        assert_eq!(cs.len(), 1, "{host}: {cs:?}");
        let c = &cs[0];
        assert_eq!(c.name, "kf-test-demo-blue");
        assert_eq!(c.state, "running");
        assert_eq!(c.image, TAG);
        assert_eq!(
            c.labels.get("kube-free.app").map(String::as_str),
            Some("demo")
        );
        assert_eq!(
            c.labels.get("kube-free.slot").map(String::as_str),
            Some("blue")
        );
        assert_eq!(c.ports, [format!("0.0.0.0:{PORT}->{PORT}/tcp")]);
        assert_eq!(c.argv[0], "/kube-free-demo");
        assert!(c.pid > 0);
    }
    // And from this machine (the root namespace), as kube-free's probes and HAProxy see it.
    for (n, host) in f.docker_hosts().iter().enumerate() {
        let body = get_when_up(&format!("{}:{PORT}", f.address(host)), "/version");
        assert_eq!(body, format!("v{n}-{host}"));
    }
    remove_all(f);
}

/// `--network host`: the demo binds the host's own address directly.
fn host_network_answers_on_the_hosts_address(f: &Fleet) {
    let host = "web-2";
    let address = f.address(host);
    let run = format!(
        "docker run -d --name kf-test-demo-green --network host {TAG} --listen {address}:{PORT} --version host-net"
    );
    ok(&f.ssh(host, &run), "docker run --network host");
    let body = curl_from(f, "lb-1", &format!("http://{address}:{PORT}/"));
    assert_eq!(body, "host-net");
    let c = &f.containers(host)[0];
    assert_eq!(c.network_mode, "host");
    assert!(c.ports.is_empty());
    // The container's process is in the host's network namespace.
    assert!(f.pids(host).contains(&(c.pid as i32)), "{c:?}");
    // web-1 has nothing on that port.
    let other = format!("http://{}:{PORT}/", f.address("web-1"));
    let out = f.exec("lb-1", &["curl", "-sS", "--max-time", "2", &other]);
    assert!(!out.status.success(), "{other} answers: {out:?}");
    remove_all(f);
}

/// Images for crash tests: an ENTRYPOINT with `--exit-after 0s` exits 1 at once; an image without
/// a binary cannot start at all (what `docker run` then says is printed for the runtime's sake).
fn images_that_crash_or_have_no_binary(f: &Fleet) {
    let host = "web-1";
    let t = Instant::now();
    f.load_image(demo_binary(), "kf-demo:crash", &["--exit-after", "0s"]);
    f.load_image_without_binary("kf-demo:nobinary");
    eprintln!("2 broken images on both hosts in {:?}", t.elapsed());

    let run = format!(
        "docker run -d --name kf-test-crash kf-demo:crash --listen 0.0.0.0:{PORT} --version crash"
    );
    ok(&f.ssh(host, &run), "docker run of the crashing image");
    let deadline = Instant::now() + Duration::from_secs(10);
    let c = loop {
        let c = f.containers(host).remove(0);
        if c.state == "exited" || Instant::now() > deadline {
            break c;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!((c.state.as_str(), c.exit_code), ("exited", 1), "{c:?}");
    let logs = f.docker(host, &["logs", "kf-test-crash"]);
    assert!(
        String::from_utf8_lossy(&logs.stderr).contains("crashing, as --exit-after asked"),
        "{logs:?}"
    );

    let run = format!("docker run -d --name kf-test-nobinary kf-demo:nobinary --listen 0.0.0.0:{PORT} --version none");
    let out = f.ssh(host, &run);
    eprintln!(
        "docker run -d of an image without binary: exit {:?}, stderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    assert_eq!(out.status.code(), Some(127), "{out:?}");
    let c = f
        .containers(host)
        .into_iter()
        .find(|c| c.name == "kf-test-nobinary")
        .expect("the container exists");
    assert_eq!(c.state, "created", "{c:?}");
    assert!(c.error.contains("/kube-free-demo"), "{c:?}");
    remove_all(f);
}

/// A registry on this machine's fleet address: web-1 pushes, web-2 pulls and runs (plain HTTP,
/// the fleet's engines trust the fleet subnet). Prints what a pull says when the tag, the repository
/// or the registry is missing, through ssh as kube-free sees it.
fn a_registry_on_the_gateway_serves_every_host(f: &Fleet) {
    let mut registry = Registry::start_on(&f.gateway_address());
    let reg = registry.address().to_string();
    let remote = format!("{reg}/kf-demo:1");
    let t = Instant::now();
    ok(
        &f.ssh(
            "web-1",
            &format!("docker tag {TAG} {remote} && docker push -q {remote}"),
        ),
        "push from web-1",
    );
    eprintln!("push to {reg} from web-1 in {:?}", t.elapsed());
    let t = Instant::now();
    ok(
        &f.ssh("web-2", &format!("docker pull -q {remote}")),
        "pull on web-2",
    );
    eprintln!("pull from {reg} on web-2 in {:?}", t.elapsed());
    let run = format!("docker run -d --name kf-test-pulled -p {PORT}:{PORT} {remote} --listen 0.0.0.0:{PORT} --version pulled");
    ok(&f.ssh("web-2", &run), "run the pulled image");
    assert_eq!(
        curl_from(f, "lb-1", &format!("http://{}:{PORT}/", f.address("web-2"))),
        "pulled"
    );

    let pull = |what: &str| {
        let out = f.ssh("web-2", &format!("docker pull {what}"));
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        eprintln!(
            "over ssh: docker pull {what}: exit {:?}, stderr: {stderr}",
            out.status.code()
        );
        (out.status.code(), stderr)
    };
    let (code, err) = pull(&format!("{reg}/kf-demo:missing"));
    assert_eq!(code, Some(1));
    assert!(err.contains("manifest unknown"), "{err}");
    let (code, err) = pull(&format!("{reg}/nothere:1"));
    assert_eq!(code, Some(1));
    assert!(err.contains("manifest unknown"), "{err}");
    registry.stop();
    let (code, err) = pull(&remote);
    assert_eq!(code, Some(1));
    assert!(err.contains("connection refused"), "{err}");
    remove_all(f);
}

// ---- teardown ----

/// A run killed with SIGKILL (a child process holding a docker fleet with running containers)
/// leaves engines, containers and mounts behind, and the next fleet's start removes them, even with
/// the engine killed too; a fleet dropped the ordinary way (its engine empties itself and stops)
/// leaves nothing either.
#[test]
fn a_killed_run_and_a_dropped_fleet_leave_nothing() {
    // The killed run: this test binary again, running `killed_run_child` only.
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "killed_run_child",
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(KILLED_RUN_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the child test process");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let killed_dir = loop {
        let line = lines
            .next()
            .expect("the child ended before it was ready")
            .expect("read the child's stdout");
        // libtest may have written "test killed_run_child ... " on the same line.
        if let Some((_, dir)) = line.split_once("READY ") {
            break PathBuf::from(dir.trim());
        }
    };
    let killed = Traces::of_dir(&killed_dir);
    assert!(
        !killed.containers.is_empty() && !killed.engines.is_empty(),
        "{killed:?}"
    );
    child.kill().unwrap(); // SIGKILL: no Drop runs
    child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        killed.engines.iter().all(|&p| !gone(p)),
        "the engines died with the run: {killed:?}"
    );
    // Harder still: the engine is killed too (its containerd, shims and containers run on), so
    // no `docker rm` can help; the sweep must find the containers by their cgroup.
    for &p in &killed.engines {
        // SAFETY: kill(2) on the killed run's dockerd.
        unsafe {
            libc::kill(p, libc::SIGKILL);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !killed.engines.iter().all(|&p| gone(p)) {
        assert!(Instant::now() < deadline, "dockerd survives SIGKILL");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(killed.containers.iter().all(|&p| !gone(p)), "{killed:?}");

    // The next fleet's start sweeps the leftovers (its own id, or another one whose lock is free;
    // another test process may be sweeping them at the same moment, hence the wait). A fleet
    // without docker, so that its files cannot be taken for the killed run's.
    let t = Instant::now();
    let sweeper = Fleet::start(FleetSpec::new(&["app"], "lb"));
    eprintln!(
        "fleet {} (after sweeping the killed run) up in {:?}",
        sweeper.id(),
        t.elapsed()
    );
    killed.wait_gone();

    // A docker fleet dropped with a running container.
    let fleet = Fleet::start(FleetSpec::new(&["app"], "lb").with_docker());
    drop(sweeper);
    fleet.load_image(demo_binary(), TAG, &[]);
    let run = format!("docker run -d --name kf-test-drop -p {PORT}:{PORT} {TAG} --listen 0.0.0.0:{PORT} --version drop");
    ok(&fleet.ssh("app", &run), "docker run");
    assert_eq!(
        get_when_up(&format!("{}:{PORT}", fleet.address("app")), "/"),
        "drop"
    );
    let traces = Traces::of_dir(fleet.dir());
    assert_eq!(traces.containers.len(), 1, "{traces:?}");
    let t = Instant::now();
    drop(fleet);
    eprintln!("docker fleet dropped in {:?}", t.elapsed());
    traces.assert_gone();
}

/// The killed run of [`a_killed_run_and_a_dropped_fleet_leave_nothing`]: a docker fleet with a
/// published container and a host-network one, then "READY <dir>" on stdout, then waits to be
/// killed. Does nothing unless run by that test.
#[test]
#[ignore = "run by a_killed_run_and_a_dropped_fleet_leave_nothing"]
fn killed_run_child() {
    if std::env::var_os(KILLED_RUN_ENV).is_none() {
        return;
    }
    let fleet = Fleet::start(FleetSpec::new(&["app"], "lb").with_docker());
    fleet.load_image(demo_binary(), TAG, &[]);
    let address = fleet.address("app");
    for run in [
        format!("docker run -d -p {PORT}:{PORT} {TAG} --listen 0.0.0.0:{PORT} --version killed"),
        format!(
            "docker run -d --network host {TAG} --listen {address}:{} --version killed-host",
            PORT + 1
        ),
    ] {
        ok(&fleet.ssh("app", &run), &run);
    }
    for port in [PORT, PORT + 1] {
        assert!(get_when_up(&format!("{address}:{port}"), "/").starts_with("killed"));
    }
    println!("READY {}", fleet.dir().display());
    std::thread::sleep(Duration::from_secs(300));
}

/// What of a docker fleet must be gone after its teardown: its engines (dockerd, containerd,
/// shims, fuse-overlayfs: every process naming its directory), its containers' processes, mounts
/// under its directory, its containers' cgroups.
#[derive(Debug)]
struct Traces {
    dir: PathBuf,
    /// dockerd pids.
    engines: Vec<i32>,
    /// Pids of the containers' processes (the demo app).
    containers: Vec<i32>,
    /// Every process naming the directory.
    processes: Vec<i32>,
    cgroup: String,
}

impl Traces {
    fn of_dir(dir: &Path) -> Traces {
        let id = dir
            .file_name()
            .unwrap()
            .to_string_lossy()
            .replace("kube-free-fleet-", "");
        let cgroup = format!("kube-free-fleet-{id}");
        let processes = pids_mentioning(&format!("{}/", dir.display()));
        let engines: Vec<i32> = processes
            .iter()
            .copied()
            .filter(|p| exe(*p).ends_with("/dockerd"))
            .collect();
        // Container processes live in namespaces of their own: found by the cgroup the fleet
        // gives them.
        let containers = pids_in_cgroup(&cgroup);
        assert!(
            containers.iter().all(|p| exe(*p) == "/kube-free-demo"),
            "{containers:?}"
        );
        assert!(
            !mounts_under(dir).is_empty(),
            "no mounts under {} while it runs",
            dir.display()
        );
        Traces {
            dir: dir.to_path_buf(),
            engines,
            containers,
            processes,
            cgroup,
        }
    }

    /// [`Traces::assert_gone`], allowing 30 s for a teardown under way.
    fn wait_gone(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::panic::catch_unwind(|| self.assert_gone()).is_err() {
            assert!(
                Instant::now() < deadline,
                "leftovers of the killed run not removed"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn assert_gone(&self) {
        for &p in self
            .engines
            .iter()
            .chain(&self.containers)
            .chain(&self.processes)
        {
            assert!(
                gone(p),
                "process {p} ({}) outlived the fleet: {self:?}",
                exe(p)
            );
        }
        let left = mounts_under(&self.dir.join("docker"));
        assert!(left.is_empty(), "mounts left: {left:?}");
        let demo = pids_in_cgroup(&self.cgroup);
        assert!(
            demo.is_empty(),
            "processes left in cgroup {}: {demo:?}",
            self.cgroup
        );
        let cgroups: Vec<String> = std::fs::read_dir("/sys/fs/cgroup")
            .unwrap()
            .flatten()
            .map(|e| e.path().join(&self.cgroup))
            .filter(|p| p.exists())
            .map(|p| p.display().to_string())
            .collect();
        assert!(cgroups.is_empty(), "cgroups left: {cgroups:?}");
        assert!(
            !self.dir.join("docker").exists(),
            "{} left",
            self.dir.join("docker").display()
        );
    }
}

// ---- helpers ----

/// stdout of a successful command; panics with its stderr otherwise.
fn ok(out: &std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `curl` of `url` from the host's namespace, until it answers 200 (10 s at most: a container just
/// started may not listen yet); the body, trimmed.
fn curl_from(f: &Fleet, host: &str, url: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = f.exec(host, &["curl", "-sS", "--fail", "--max-time", "2", url]);
        if out.status.success() || Instant::now() > deadline {
            return ok(&out, &format!("curl {url} from {host}"))
                .trim()
                .to_string();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `GET path` from this machine until it answers 200 (10 s at most); the body, trimmed.
fn get_when_up(address: &str, path: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, body) = request(address, "GET", path, &[], b"");
        if code == 200 {
            return body.trim().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "GET {address}{path}: {code} {body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Removes every container of every docker host.
fn remove_all(f: &Fleet) {
    for host in f.docker_hosts() {
        let ids: Vec<String> = f.containers(&host).into_iter().map(|c| c.id).collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(ids.iter().map(String::as_str));
            f.docker_ok(&host, &args);
        }
        assert!(f.containers(&host).is_empty());
    }
}

/// Running processes in the cgroup `/<name>/` or below it.
fn pids_in_cgroup(name: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/cgroup"))
                .is_ok_and(|c| c.contains(&format!(":/{name}/")))
        })
        .filter(|p| !gone(*p))
        .collect()
}

fn exe(pid: i32) -> String {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// Not running: no such process, or a zombie.
fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_none_or(|(_, rest)| rest.starts_with('Z')),
    }
}

/// Mount points at or under `dir` in this (the machine's) mount namespace.
fn mounts_under(dir: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| Path::new(m).starts_with(dir))
        .map(str::to_string)
        .collect()
}
