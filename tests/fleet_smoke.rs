//! Smoke test of the test fleet (`tests/fleet`): hosts in their own network namespaces with
//! their own sshd, a balancer with HAProxy, and a complete teardown. Needs root.

#[path = "fleet/mod.rs"]
mod fleet;

use fleet::{ip_command, pids_mentioning, Fleet, FleetSpec};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

fn text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `GET /` over plain TCP (no curl needed); returns the whole response.
fn http_get(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: fleet\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).expect("read reply");
    reply
}

fn netns_list() -> String {
    let out = ip_command()
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    text(&out)
}

fn root_link_exists(name: &str) -> bool {
    ip_command()
        .args(["link", "show", name])
        .output()
        .expect("ip link show")
        .status
        .success()
}

/// A process is gone when /proc has no entry for it or only a zombie (not reaped by init yet).
fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

/// Facts about a fleet that must all be gone after it is dropped.
struct Traces {
    id: u8,
    dir: std::path::PathBuf,
    namespaces: Vec<String>,
    pids: Vec<i32>,
}

impl Traces {
    fn of(fleet: &Fleet) -> Traces {
        let mut namespaces: Vec<String> = fleet.hosts().iter().map(|h| fleet.netns(h)).collect();
        namespaces.push(fleet.switch_netns());
        let mut pids: Vec<i32> = fleet.hosts().iter().flat_map(|h| fleet.pids(h)).collect();
        pids.extend(pids_mentioning(&format!("{}/", fleet.dir().display())));
        Traces {
            id: fleet.id(),
            dir: fleet.dir().to_path_buf(),
            namespaces,
            pids,
        }
    }

    fn assert_gone(&self) {
        let list = netns_list();
        for ns in &self.namespaces {
            assert!(
                !list
                    .lines()
                    .any(|l| l.split_whitespace().next() == Some(ns)),
                "namespace {ns} left after drop: {list}"
            );
        }
        let id = self.id;
        assert!(!root_link_exists(&format!("kfbr{id}")), "bridge left");
        assert!(!root_link_exists(&format!("kf{id}up")), "uplink veth left");
        assert!(!self.dir.exists(), "{} left after drop", self.dir.display());
        let left = pids_mentioning(&format!("{}/", self.dir.display()));
        assert!(left.is_empty(), "processes of the fleet left: {left:?}");
        for &pid in &self.pids {
            assert!(process_gone(pid), "process {pid} of the fleet left");
        }
    }
}

#[test]
fn fleet_hosts_answer_ssh_haproxy_reloads_and_teardown_is_complete() {
    let t0 = Instant::now();
    let fleet = Fleet::start(FleetSpec::new(&["web-1", "web-2"], "lb-1"));
    eprintln!("fleet {} started in {:?}", fleet.id(), t0.elapsed());
    let id = fleet.id();

    // Names, addresses, files.
    assert_eq!(fleet.address("web-1"), format!("10.231.{id}.10"));
    assert_eq!(fleet.address("web-2"), format!("10.231.{id}.11"));
    assert_eq!(fleet.address("lb-1"), format!("10.231.{id}.12"));
    assert_eq!(fleet.netns("web-1"), format!("kf{id}-web-1"));
    assert!(fleet.state_dir("web-2").is_dir());
    let mode = std::fs::metadata(fleet.identity_file()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.permissions().mode() & 0o777, 0o600);
    let known = fleet.known_hosts_text();
    assert_eq!(known.lines().count(), 3, "{known}");

    for host in ["web-1", "web-2", "lb-1"] {
        let ip = fleet.address(host);
        assert!(
            known
                .lines()
                .any(|l| l.starts_with(&format!("{ip} ssh-ed25519 AAAA"))),
            "{known}"
        );

        // A real login with strict host-key checking, known_hosts and the identity file only.
        let out = Command::new("ssh")
            .args(["-F", "/dev/null", "-i"])
            .arg(fleet.identity_file())
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                fleet.known_hosts().display()
            ))
            .args([
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "BatchMode=yes",
                &format!("root@{ip}"),
                "ip -4 -o addr show; echo ROUTES; ip route",
            ])
            .output()
            .expect("ssh");
        assert!(
            out.status.success(),
            "ssh {host}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (addrs, routes) = text(&out)
            .split_once("ROUTES")
            .map(|(a, r)| (a.to_string(), r.to_string()))
            .unwrap();
        assert!(addrs.contains(&format!("inet {ip}/24")), "{host}: {addrs}");
        assert!(
            !routes.contains("default"),
            "{host} has a default route: {routes}"
        );
        assert!(routes.contains(&format!("10.231.{id}.0/24")), "{routes}");

        // The same seen from `ip netns exec`.
        let out = fleet.exec(host, &["hostname", "-I"]);
        assert_eq!(
            text(&out).split_whitespace().collect::<Vec<_>>(),
            [ip.as_str()]
        );
        let out = fleet.exec(host, &["ip", "route"]);
        assert!(!text(&out).contains("default"));
    }

    // Host-to-host traffic over the fleet's bridge: the balancer reaches web-1's sshd.
    let probe = format!(
        "exec 3<>/dev/tcp/{}/22 && head -c 7 <&3",
        fleet.address("web-1")
    );
    let out = fleet.exec("lb-1", &["timeout", "5", "bash", "-c", &probe]);
    assert_eq!(text(&out), "SSH-2.0", "lb-1 -> web-1:22: {out:?}");

    // A process started over ssh keeps running in the host's namespace (killed on drop).
    let out = fleet.ssh("web-2", "sleep 300 >/dev/null 2>&1 & echo $!");
    let stray: i32 = text(&out).trim().parse().expect("pid of background sleep");
    assert!(fleet.pids("web-2").contains(&stray));

    // Balancer: admin socket, empty kube-free config, hitless reload via the documented command.
    assert_eq!(
        std::fs::read_to_string(fleet.haproxy_config_file()).unwrap(),
        ""
    );
    let info = fleet.haproxy_runtime("show info");
    assert!(info.contains("Name: HAProxy"), "{info}");
    let before = fleet.haproxy_worker_pid().unwrap();
    let after = fleet.haproxy_reload();
    assert_ne!(before, after);
    // Back-to-back reloads, the command run as kube-free runs it: over ssh on the balancer.
    let command = fleet.haproxy_reload_command();
    let mut pids = vec![after];
    for _ in 0..3 {
        let out = fleet.ssh("lb-1", &command);
        assert!(out.status.success(), "{command}: {out:?}");
        let pid = fleet.haproxy_worker_pid().unwrap();
        assert!(!pids.contains(&pid), "no new worker: {pids:?} {pid}");
        pids.push(pid);
    }
    // An invalid kube-free.cfg: the reload fails, the old worker keeps answering.
    std::fs::write(
        fleet.haproxy_config_file(),
        "frontend broken\n    no_such_keyword\n",
    )
    .unwrap();
    let out = fleet.ssh("lb-1", &command);
    assert!(!out.status.success(), "reload of a broken config succeeded");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("failed to load"),
        "{out:?}"
    );
    assert_eq!(fleet.haproxy_worker_pid(), pids.last().copied());
    // A valid one again: a frontend on the balancer's address answers after the reload.
    let lb = fleet.address("lb-1");
    std::fs::write(
        fleet.haproxy_config_file(),
        format!("frontend fe\n    bind {lb}:8080\n    http-request return status 200 content-type text/plain string ok\n"),
    )
    .unwrap();
    let after = fleet.haproxy_reload();
    assert_ne!(after, pids[pids.len() - 1]);
    let reply = http_get(&format!("{lb}:8080"));
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.ends_with("\r\n\r\nok"), "{reply}");
    assert!(fleet
        .haproxy_runtime("show info")
        .contains(&format!("Pid: {after}")));

    // sshd can be stopped and started again (for fault tests).
    fleet.stop_sshd("web-1");
    assert!(!fleet.ssh("web-1", "true").status.success());
    fleet.start_sshd("web-1");
    assert!(fleet.ssh("web-1", "true").status.success());

    let traces = Traces::of(&fleet);
    assert!(traces.pids.contains(&stray));
    let t1 = Instant::now();
    drop(fleet);
    eprintln!("fleet {id} torn down in {:?}", t1.elapsed());
    traces.assert_gone();
    assert!(process_gone(stray));
}

#[test]
fn two_fleets_at_once_and_teardown_on_panic() {
    let a = Fleet::start(FleetSpec::new(&["app"], "lb"));
    let b = Fleet::start(FleetSpec::new(&["app"], "lb"));
    assert_ne!(a.id(), b.id());
    assert_ne!(a.address("app"), b.address("app"));
    assert_ne!(a.netns("app"), b.netns("app"));
    assert_ne!(a.dir(), b.dir());
    for f in [&a, &b] {
        assert!(f.ssh("app", "true").status.success());
        assert!(f.haproxy_runtime("show info").contains("Name: HAProxy"));
    }
    // Each fleet's hosts only see their own subnet.
    let out = a.exec("app", &["ip", "route", "get", &b.address("app")]);
    assert!(!out.status.success(), "fleet a reaches fleet b: {out:?}");

    // A fleet dropped by a panic is torn down too.
    let traces = std::sync::Mutex::new(None);
    let result = std::panic::catch_unwind(|| {
        let c = Fleet::start(FleetSpec::new(&["app"], "lb"));
        *traces.lock().unwrap() = Some(Traces::of(&c));
        panic!("expected panic with fleet {} alive", c.id());
    });
    assert!(result.is_err());
    traces.into_inner().unwrap().unwrap().assert_gone();

    let (ta, tb) = (Traces::of(&a), Traces::of(&b));
    drop(b);
    // Dropping b leaves a intact.
    assert!(a.ssh("app", "true").status.success());
    drop(a);
    ta.assert_gone();
    tb.assert_gone();
}

#[test]
fn leftovers_of_a_killed_run_are_removed() {
    // Fake a killed run of fleet 250: a namespace with a process in it, a directory.
    let id = 250;
    let ns = format!("kf{id}-web-1");
    let dir = Path::new("/tmp/kube-free-fleet-250");
    let _ = ip_command().args(["netns", "add", &ns]).status();
    std::fs::create_dir_all(dir.join("hosts")).unwrap();
    let mut stray = ip_command()
        .args(["netns", "exec", &ns, "sleep", "300"])
        .spawn()
        .unwrap();

    let fleet = Fleet::start(FleetSpec::new(&["web-1"], "lb-1"));
    assert!(
        !netns_list()
            .lines()
            .any(|l| l.starts_with(&format!("{ns} ")) || l == ns),
        "stale namespace survived"
    );
    assert!(!dir.exists() || fleet.id() == id);
    let status = stray.wait().unwrap();
    assert!(!status.success(), "stale process was killed");
    drop(fleet);
}
