//! Test fleet: real hosts for integration tests, built and torn down by the tests themselves.
//!
//! A [`Fleet`] is a set of Linux network namespaces on this machine, one per host, each with its
//! own IPv4 address and its own `sshd`, plus a balancer host that also runs HAProxy. Tests reach
//! the hosts over SSH exactly as kube-free does in production: by address, with strict host-key
//! checking against [`Fleet::known_hosts`] and the key in [`Fleet::identity_file`].
//!
//! Must run as root (namespaces, veths, sshd). Missing system tools are installed once with
//! `apt-get` (see [`ensure_tools`]).
//!
//! # Layout of fleet number `<id>` (1–250)
//!
//! * Id claimed by holding `flock(LOCK_EX)` on `/tmp/kube-free-fleet-<id>.lock` for the fleet's
//!   lifetime, so fleets in parallel test threads or processes never share names or subnets.
//! * Subnet `10.231.<id>.0/24`. Hosts get `.10`, `.11`, ... in the order of
//!   [`FleetSpec::app_hosts`], the balancer comes last. `.1` is this machine's (root namespace)
//!   end of the fleet network, so the test process and kube-free reach every host directly.
//! * Host namespaces `kf<id>-<host>` with `lo` and `eth0` (address, no default route: no traffic
//!   can leave the fleet network).
//! * Bridge `kfbr<id>` lives in its own "switch" namespace `kfsw<id>`; each host's `eth0` is the
//!   peer of veth `kf<id>v<n>` on that bridge, and the root namespace is attached through the
//!   veth `kf<id>up` (address `10.231.<id>.1/24`, peer `kf<id>uq` on the bridge). The bridge is
//!   deliberately not in the root namespace: with `br_netfilter` loaded (as with Docker) frames
//!   bridged in the root namespace go through the root's iptables FORWARD chain, whose policy is
//!   often DROP, which silently cut host-to-host traffic (balancer to app hosts). A fresh
//!   namespace has an empty, accepting ruleset, and the host's firewall stays untouched.
//! * Everything else in `/tmp/kube-free-fleet-<id>/` ([`Fleet::dir`]): keys, `known_hosts`, per
//!   host `hosts/<host>/{sshd_config,ssh_host_ed25519_key,sshd.pid,sshd.log,state/}`, and
//!   `haproxy/{base.cfg,kube-free.cfg,reload.sh,admin.sock,haproxy.pid,haproxy.log}`, and with
//!   nginx `nginx/{nginx.conf,kube-free.conf,reload.sh,nginx.pid,error.log,access.log,tmp/,admin/}`
//!   (`admin/` is kube-free's to make). The name
//!   is fixed per id (not random) so leftovers of a killed run can be found and removed.
//!
//! # Hosts
//!
//! Each host runs `/usr/sbin/sshd -D -e` in its namespace (a child of the test process) on
//! `<address>:22` with its own ed25519 host key, root login by key only, `MaxStartups` and
//! `MaxSessions` 100 (kube-free multiplexes commands over one master connection). Hosts share the
//! machine's filesystem, users, pids and hostname; only the network is separate, so give each
//! host's files their own place ([`Fleet::state_dir`]).
//!
//! # Losing a host
//!
//! [`Fleet::stop_sshd`] takes only sshd away (the host's apps keep serving); [`Fleet::cut_link`]
//! takes the whole host off the network by setting its port on the bridge (`kf<id>v<n>` in
//! `kfsw<id>`) down: packets to it are dropped without an answer, as for a host whose network
//! died, until [`Fleet::restore_link`].
//!
//! # Balancer
//!
//! The balancer host also runs HAProxy in master-worker mode (`haproxy -W -db -f base.cfg -f
//! kube-free.cfg`, foreground, a child of the test process) with the runtime API on
//! [`Fleet::haproxy_admin_socket`]. kube-free owns [`Fleet::haproxy_config_file`] (empty at
//! start) and reloads with [`Fleet::haproxy_reload_command`], a synchronous script (HAProxy 2.6
//! drops a SIGUSR2 that arrives while it starts or re-executes itself, so a bare `kill -USR2`
//! shortly after a start or another reload is silently lost).
//!
//! # nginx (optional)
//!
//! With [`FleetSpec::with_nginx`] (or [`FleetSpec::with_nginx_modules`]) the balancer host also
//! runs nginx: `nginx -p <dir>/nginx/ -c <dir>/nginx/nginx.conf -e <dir>/nginx/error.log -g
//! 'daemon off;'` in its namespace, the master (root, `user root;`) a child of the test process,
//! [`NGINX_WORKERS`] workers. The main config loads the NDK and Lua modules
//! ([`NginxModules::Lua`], for kube-free's `mode: dynamic`) or none ([`NginxModules::Plain`]:
//! the nginx of the scripts and of `mode: reload`), keeps pid, logs and temp files in
//! `<dir>/nginx/`, and includes [`Fleet::nginx_config_file`] (kube-free's, empty at start) in
//! `http {}`. kube-free reloads with [`Fleet::nginx_reload_command`] (synchronous, like
//! `systemctl reload`) and checks with [`Fleet::nginx_test_command`]; its admin endpoint goes
//! to [`Fleet::nginx_admin_socket`]. [`Fleet::restart_nginx`] switches the modules on a running
//! fleet. Off by default: nginx listens on nothing until kube-free.conf says so, but other fleet
//! tests need not pay for its start.
//!
//! # Docker (optional)
//!
//! With [`FleetSpec::with_docker`] every app host (not the balancer) runs its own Docker engine:
//! `nsenter --net=/var/run/netns/<ns> dockerd ...`, a child of the test process like sshd, in the
//! host's network namespace, so a container published on `0.0.0.0` or run with `--network host`
//! listens on that host's address, and its `docker0` bridge, NAT rules and `docker-proxy`
//! processes are that host's. One engine per host because the hosts must really be distinct: with
//! one shared engine, the same container name (`kf-<env>-<app>-<slot>`) on two hosts and the same
//! published port on two hosts would collide, and a container would not be on any one host's
//! address. The machine's main engine and other fleets' engines are never touched. (Not `ip netns
//! exec`: it remounts `/sys` in a new mount namespace, which loses the cgroup mounts, and dockerd
//! fails with "Devices cgroup isn't mounted"; `nsenter --net` changes the network only.)
//!
//! Engine of app host number `<n>` (0-based, spec order), all in `<dir>/docker/<n>/`
//! ([`Fleet::docker_dir`]; short, for the 108-byte limit of unix socket paths): `daemon.json`
//! (`{}`, so the machine's `/etc/docker/daemon.json` does not apply), `data/` (`--data-root`),
//! `x/` (`--exec-root`: containerd's sockets and state, the containers' netns files),
//! `docker.sock` ([`Fleet::docker_host`] is `unix://` and this path), `docker.pid`, `dockerd.log`.
//! The storage driver is the main engine's (`docker info --format '{{.Driver}}'`; `vfs` when
//! there is no main engine), the bridge `docker0` gets `--bip 10.<232+n>.<id>.1/24` (a distinct
//! private /24 per fleet and host, apart from the fleet network; at most [`MAX_DOCKER_HOSTS`]
//! docker hosts per fleet), and containers go to the cgroups `/kube-free-fleet-<id>/<n>/<container>`
//! (`--cgroup-parent`), by which teardown finds their processes. Registries on the fleet network
//! (e.g. one on [`Fleet::gateway_address`], this machine) are plain HTTP (`--insecure-registry
//! 10.231.<id>.0/24`); a registry on 127.0.0.1 of this machine is out of the hosts' reach (their
//! loopback is their own). The host's sshd gives every
//! session `DOCKER_HOST=unix://<dir>/docker/<n>/docker.sock` (`SetEnv`), so a plain `docker` run
//! over SSH, as kube-free runs it, talks to that host's engine. Start: about a second per engine,
//! all engines at once; ready when `docker info` answers.
//!
//! No image can be pulled: [`Fleet::load_image`] builds the demo app's image with
//! `examples/quickstart-docker/build-image.sh` into the first docker host's engine and copies it
//! into the others (`docker save` once, `docker load` into the others side by side: the image has
//! the same id on every host, as if pulled from one registry; about 0.9 s to build and 0.5–1 s to
//! copy with the debug demo binary, where running the script on every engine would give each host
//! an image of its own id for about the same time).
//! [`Fleet::docker`] runs the `docker` CLI against a host's engine, [`Fleet::containers`] lists its
//! containers with their labels.
//!
//! Keep a `Fleet` in a local of the test (not in a `static`, which is never dropped).
//!
//! # Teardown
//!
//! [`Drop`] first empties and stops the Docker engines, if any (`docker rm -f` of every container,
//! SIGTERM to dockerd, which stops its containerd, and a wait), then kills every process in the
//! fleet's namespaces, every process whose command line mentions the fleet's directory (sshd,
//! HAProxy, nginx, dockerd, containerd, the shims, fuse-overlayfs) and every process in the
//! cgroups `/kube-free-fleet-<id>/` (containers, which live in namespaces of their own and outlive
//! a killed shim), unmounts (lazily) whatever is still mounted under the directory (dockerd's
//! bind mount of its data root, fuse-overlayfs layers, netns files), removes the cgroup
//! directories and the sockets that killed containerd shims leave in `/run/containerd/s/`, deletes
//! the namespaces (which takes the bridge and veths with them), deletes
//! `kf<id>up`, waits until they are gone, removes the directory, and only then releases the id
//! lock. Drop runs on panics too (also on a panic half way through
//! [`Fleet::start`]: the value under construction owns what was built so far). A run killed with
//! SIGKILL cannot clean up; its leftovers are removed by the next [`Fleet::start`]: before
//! building, the fleet cleans its own id, and it sweeps every other id that has leftovers and
//! whose lock is free, the same way as a drop. A killed run's dockerd goes on running (it is not
//! killed with its parent) and is emptied and stopped like at a drop; if it died too, its
//! containerd and shims are found by the directory in their command lines and its containers by
//! their cgroup.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, Once};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// PATH of the daemons the fleet starts (dockerd finds containerd, runc, iptables, docker-proxy
/// and fuse-overlayfs on it), and of the image builder; a test run's PATH may lack the sbin ones.
const DAEMON_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Highest fleet id; ids are 1..=MAX_ID, one /24 each.
const MAX_ID: u8 = 250;
/// First host address in the subnet (`10.231.<id>.10`).
const FIRST_HOST: usize = 10;
/// How long a process (sshd, HAProxy) may take to come up.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
const SSHD: &str = "/usr/sbin/sshd";
const HAPROXY: &str = "/usr/sbin/haproxy";
const SSH: &str = "/usr/bin/ssh";
const SSH_KEYGEN: &str = "/usr/bin/ssh-keygen";
const NGINX: &str = "/usr/sbin/nginx";
const DOCKERD: &str = "/usr/sbin/dockerd";
const NSENTER: &str = "/usr/bin/nsenter";
/// How long a Docker engine may take to answer `docker info` after its start.
const DOCKER_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long teardown waits for a Docker engine to stop after SIGTERM (then it is killed).
const DOCKER_STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Most docker hosts in one fleet (each gets its own second octet for `docker0`, 10.232–10.255).
pub const MAX_DOCKER_HOSTS: usize = 24;
/// The modules Debian's `libnginx-mod-http-ndk` and `libnginx-mod-http-lua` install; the Lua one
/// needs the NDK one loaded first.
pub const NGINX_NDK_MODULE: &str = "/usr/share/nginx/modules/ndk_http_module.so";
pub const NGINX_LUA_MODULE: &str = "/usr/share/nginx/modules/ngx_http_lua_module.so";
/// `worker_processes` of the fleet's nginx.
pub const NGINX_WORKERS: usize = 2;
/// Lock serializing the one-time `apt-get` install across test processes.
const INSTALL_LOCK: &str = "/tmp/kube-free-fleet-install.lock";
/// Debian packages providing every tool the fleet and the tests using it need.
const PACKAGES: &[&str] = &[
    "openssh-server",
    "openssh-client",
    "haproxy",
    "wrk",
    "graphviz",
    "iproute2",
];

/// What hosts a fleet has.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    /// Application hosts, e.g. `["web-1", "web-2"]`; addresses `.10`, `.11`, ... in this order.
    pub app_hosts: Vec<String>,
    /// The balancer host, e.g. `"lb-1"`: runs sshd like every host, and HAProxy.
    pub balancer: String,
    /// Also run nginx on the balancer host, with or without the Lua module; `None` (the default):
    /// no nginx, so fleets that do not use it do not pay for it.
    pub nginx: Option<NginxModules>,
    /// Give every app host its own Docker engine (see the module documentation); off by default.
    pub docker: bool,
}

/// What the fleet's nginx loads (see [`FleetSpec::nginx`] and [`Fleet::restart_nginx`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NginxModules {
    /// `load_module` of [`NGINX_NDK_MODULE`] and [`NGINX_LUA_MODULE`]: for `mode: dynamic`.
    Lua,
    /// No module: plain nginx, as the scripts and `mode: reload` use it.
    Plain,
}

impl FleetSpec {
    /// Convenience constructor: `FleetSpec::new(&["web-1", "web-2"], "lb-1")`.
    pub fn new(app_hosts: &[&str], balancer: &str) -> FleetSpec {
        FleetSpec {
            app_hosts: app_hosts.iter().map(|h| h.to_string()).collect(),
            balancer: balancer.to_string(),
            nginx: None,
            docker: false,
        }
    }

    /// Also runs a Docker engine of its own on every app host (not on the balancer).
    pub fn with_docker(mut self) -> FleetSpec {
        self.docker = true;
        self
    }

    /// Also runs nginx with the Lua module on the balancer host.
    pub fn with_nginx(self) -> FleetSpec {
        self.with_nginx_modules(NginxModules::Lua)
    }

    /// Also runs nginx on the balancer host, loading `modules`.
    pub fn with_nginx_modules(mut self, modules: NginxModules) -> FleetSpec {
        self.nginx = Some(modules);
        self
    }
}

/// One host of a fleet.
#[derive(Debug)]
struct Host {
    name: String,
    netns: String,
    address: String,
    dir: PathBuf,
    /// The host's Docker engine directory `<fleet dir>/docker/<n>` and `n`, if it runs one.
    docker: Option<(PathBuf, usize)>,
}

/// A container of a fleet host's Docker engine, as `docker inspect` shows it (see
/// [`Fleet::containers`]).
#[derive(Debug, Clone)]
pub struct Container {
    /// Full id.
    pub id: String,
    /// Name without the leading `/`, e.g. `kf-production-api-blue`.
    pub name: String,
    /// The image as given at `docker run` (`Config.Image`), e.g. `kf-demo:1`.
    pub image: String,
    /// `created`, `running`, `restarting`, `exited`, `paused`, `removing` or `dead`.
    pub state: String,
    /// Exit code of the last run (0 while running).
    pub exit_code: i64,
    /// Pid of the container's first process as the machine sees it; 0 when not running.
    pub pid: i64,
    /// Labels (`Config.Labels`), e.g. `kube-free.app` -> `api`.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Entrypoint and command as run (`Path`, then `Args`).
    pub argv: Vec<String>,
    /// `HostConfig.NetworkMode`: `default` (bridge), `host`, ...
    pub network_mode: String,
    /// Published ports, `<host ip>:<host port>-><container port>/<proto>`, sorted.
    pub ports: Vec<String>,
    /// `State.Error` (e.g. why the engine could not start it); empty if none.
    pub error: String,
}

/// A running test fleet; see the module documentation. Torn down when dropped.
pub struct Fleet {
    id: u8,
    dir: PathBuf,
    hosts: Vec<Host>,
    balancer: String,
    known_hosts: PathBuf,
    identity: PathBuf,
    /// Per host: the listening sshd (a child of this process: `ip netns exec` execs sshd).
    sshd: Mutex<HashMap<String, Child>>,
    /// The HAProxy master (`-W -db`, foreground, a child of this process).
    haproxy: Mutex<Option<Child>>,
    /// The nginx master (`daemon off;`, a child of this process) and what it loaded, if the
    /// fleet runs nginx.
    nginx: Mutex<Option<(Child, NginxModules)>>,
    /// Per docker host: its dockerd (a child of this process: nsenter execs dockerd) and when it
    /// was started.
    dockerd: Mutex<HashMap<String, (Child, Instant)>>,
    /// Images [`Fleet::load_image`] loaded: (tag, entrypoint args, broken) -> image id.
    images: Mutex<HashMap<String, String>>,
    /// Held for the fleet's lifetime; dropped last, after [`Drop::drop`] has cleaned everything.
    _lock: File,
}

impl Fleet {
    /// Builds and starts a fleet: installs missing tools, claims an id, removes stale leftovers,
    /// creates the namespaces and network, starts and verifies sshd on every host (a real
    /// login with strict host-key checking) and HAProxy on the balancer (admin socket answers,
    /// a reload gives a new worker that answers too).
    ///
    /// Panics with a message naming the failed step (and the daemon's log where there is one)
    /// if anything fails; what was built so far is torn down by the unwinding.
    pub fn start(spec: FleetSpec) -> Fleet {
        ensure_tools();
        validate_spec(&spec);
        if spec.docker {
            let missing: Vec<&str> = [DOCKERD, NSENTER]
                .into_iter()
                .filter(|p| !Path::new(p).exists())
                .collect();
            assert!(
                missing.is_empty() && find_docker().is_some(),
                "fleet: with_docker needs Docker Engine (dockerd, the docker CLI) and nsenter; missing {missing:?}{}",
                if find_docker().is_none() { " and docker" } else { "" }
            );
        }
        let (id, lock) = claim_id();
        if stale_ids(0).contains(&id) {
            eprintln!("fleet: removing leftovers of fleet {id} (earlier run killed?)");
        }
        cleanup_id(id);
        sweep_stale_ids(id);

        let dir = fleet_dir(id);
        let mut names: Vec<String> = spec.app_hosts.clone();
        names.push(spec.balancer.clone());
        let hosts: Vec<Host> = names
            .iter()
            .enumerate()
            .map(|(n, name)| Host {
                name: name.clone(),
                netns: format!("kf{id}-{name}"),
                address: format!("10.231.{id}.{}", FIRST_HOST + n),
                dir: dir.join("hosts").join(name),
                docker: (spec.docker && n < spec.app_hosts.len())
                    .then(|| (dir.join("docker").join(n.to_string()), n)),
            })
            .collect();
        // From here on, a panic drops `fleet`, which tears down whatever exists.
        let fleet = Fleet {
            id,
            known_hosts: dir.join("known_hosts"),
            identity: dir.join("client").join("id_ed25519"),
            dir,
            hosts,
            balancer: spec.balancer.clone(),
            sshd: Mutex::new(HashMap::new()),
            haproxy: Mutex::new(None),
            nginx: Mutex::new(None),
            dockerd: Mutex::new(HashMap::new()),
            images: Mutex::new(HashMap::new()),
            _lock: lock,
        };
        fleet.build_dirs_and_keys();
        fleet.build_network();
        for host in &fleet.hosts {
            fleet.spawn_sshd(&host.name);
        }
        // The engines start side by side with the sshds (about a second each).
        let driver = spec.docker.then(storage_driver);
        for host in fleet.docker_hosts() {
            fleet.spawn_dockerd(&host, driver.as_deref().unwrap());
        }
        for host in &fleet.hosts {
            fleet.wait_sshd(&host.name);
        }
        for host in fleet.docker_hosts() {
            fleet.wait_dockerd(&host);
        }
        fleet.start_haproxy();
        if let Some(modules) = spec.nginx {
            fleet.start_nginx(modules);
        }
        fleet
    }

    /// The fleet's number, 1–250 (third octet of its subnet, part of every name).
    pub fn id(&self) -> u8 {
        self.id
    }

    /// Directory holding everything of this fleet (`/tmp/kube-free-fleet-<id>`); removed on drop.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Names of all hosts: the app hosts in spec order, then the balancer.
    pub fn hosts(&self) -> Vec<String> {
        self.hosts.iter().map(|h| h.name.clone()).collect()
    }

    /// Name of the balancer host.
    pub fn balancer(&self) -> &str {
        &self.balancer
    }

    /// IPv4 address of the host's namespace, e.g. `10.231.3.10`. Panics on an unknown host.
    pub fn address(&self, host: &str) -> String {
        self.host(host).address.clone()
    }

    /// Name of the host's network namespace, `kf<id>-<host>` (for `ip netns exec`).
    pub fn netns(&self, host: &str) -> String {
        self.host(host).netns.clone()
    }

    /// Address of this machine (root namespace) on the fleet network, `10.231.<id>.1`.
    pub fn gateway_address(&self) -> String {
        format!("10.231.{}.1", self.id)
    }

    /// Name of the bridge (inside namespace [`Fleet::switch_netns`]), `kfbr<id>`.
    pub fn bridge(&self) -> String {
        format!("kfbr{}", self.id)
    }

    /// Namespace holding the bridge, `kfsw<id>`.
    pub fn switch_netns(&self) -> String {
        format!("kfsw{}", self.id)
    }

    /// Per-host state directory `<dir>/hosts/<host>/state` (exists; hosts share one filesystem,
    /// so give each host's files their own place here).
    pub fn state_dir(&self, host: &str) -> PathBuf {
        self.host(host).dir.join("state")
    }

    /// `known_hosts` file with every host's ed25519 key, keyed by its IP
    /// (`10.231.<id>.10 ssh-ed25519 AAAA...`).
    pub fn known_hosts(&self) -> &Path {
        &self.known_hosts
    }

    /// Contents of [`Fleet::known_hosts`].
    pub fn known_hosts_text(&self) -> String {
        fs::read_to_string(&self.known_hosts).expect("read fleet known_hosts")
    }

    /// Client private key (ed25519, no passphrase, mode 0600) that every host accepts for root;
    /// the public key is next to it with `.pub`.
    pub fn identity_file(&self) -> &Path {
        &self.identity
    }

    /// Runs `ip netns exec <netns of host> argv...` and returns its output (does not panic on a
    /// non-zero exit; does panic if `ip` cannot be run).
    pub fn exec(&self, host: &str, argv: &[&str]) -> Output {
        let ns = self.netns(host);
        Command::new(ip_bin())
            .args(["netns", "exec", &ns])
            .args(argv)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("fleet: ip netns exec {ns} {argv:?}: {e}"))
    }

    /// An `ssh` command to `root@<address of host>` with this fleet's identity and known_hosts,
    /// strict host-key checking and batch mode, ignoring the user's ssh config; append the
    /// remote command with `.arg(...)`.
    pub fn ssh_command(&self, host: &str) -> Command {
        let mut cmd = Command::new(SSH);
        cmd.args(self.ssh_options())
            .arg(format!("root@{}", self.address(host)))
            .stdin(Stdio::null());
        cmd
    }

    /// The ssh client options [`Fleet::ssh_command`] uses (`-F /dev/null -i KEY -o ...`).
    pub fn ssh_options(&self) -> Vec<String> {
        let mut v: Vec<String> = vec![
            "-F".into(),
            "/dev/null".into(),
            "-i".into(),
            self.identity.display().to_string(),
        ];
        for o in [
            format!("UserKnownHostsFile={}", self.known_hosts.display()),
            "GlobalKnownHostsFile=/dev/null".to_string(),
            "StrictHostKeyChecking=yes".to_string(),
            "BatchMode=yes".to_string(),
            "IdentitiesOnly=yes".to_string(),
            "ConnectTimeout=5".to_string(),
            "LogLevel=ERROR".to_string(),
        ] {
            v.push("-o".into());
            v.push(o);
        }
        v
    }

    /// Runs `remote_command` on the host over ssh (see [`Fleet::ssh_command`]); returns the output.
    pub fn ssh(&self, host: &str, remote_command: &str) -> Output {
        self.ssh_command(host)
            .arg(remote_command)
            .output()
            .expect("fleet: run ssh")
    }

    /// Stops sshd on the host: SIGKILL to the listening sshd and to every other sshd process in
    /// the host's namespace (its per-connection processes), so new connections are refused and
    /// existing ones (e.g. kube-free's multiplexing master) are cut. Commands started through
    /// those sessions are not killed here (they may die of SIGHUP/SIGPIPE; drop kills the rest). Returns once port 22 refuses connections. No-op if stopped.
    pub fn stop_sshd(&self, host: &str) {
        let h = self.host(host);
        let child = self.sshd.lock().unwrap().remove(host);
        if let Some(mut child) = child {
            let _ = child.kill();
            let _ = child.wait();
        }
        for pid in netns_pids(&h.netns) {
            if fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p == Path::new(SSHD)) {
                kill9(pid);
            }
        }
        let addr: SocketAddr = format!("{}:22", h.address).parse().unwrap();
        let deadline = Instant::now() + READY_TIMEOUT;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            assert!(
                Instant::now() < deadline,
                "fleet: sshd on {host} still accepts connections after stop_sshd"
            );
            sleep(Duration::from_millis(50));
        }
    }

    /// Starts sshd on the host again (same host key and config), waits until it accepts
    /// connections and verifies a login. No-op if it is running.
    pub fn start_sshd(&self, host: &str) {
        self.host(host);
        {
            let mut map = self.sshd.lock().unwrap();
            if let Some(child) = map.get_mut(host) {
                if matches!(child.try_wait(), Ok(None)) {
                    return;
                }
                map.remove(host);
            }
        }
        self.spawn_sshd(host);
        self.wait_sshd(host);
    }

    /// The host's port on the fleet's bridge: the veth `kf<id>v<n>` in the switch namespace.
    fn switch_port(&self, host: &str) -> String {
        let n = self
            .hosts
            .iter()
            .position(|h| h.name == host)
            .unwrap_or_else(|| panic!("fleet: no host {host:?} in this fleet"));
        format!("kf{}v{n}", self.id)
    }

    /// Cuts the host off the network, as a pulled cable or a dead switch port does: its port on
    /// the bridge goes down, and every packet to or from the host is dropped without an answer
    /// (no RST, no ICMP: a connection attempt to it times out, an established connection hangs;
    /// only once a sender's ARP entry for the host has expired, after 15 s or more, do its
    /// connects fail at once with "no route to host"). Everything on the host keeps running, sshd
    /// too, out of reach until [`Fleet::restore_link`].
    pub fn cut_link(&self, host: &str) {
        ip(&[
            "-n",
            &self.switch_netns(),
            "link",
            "set",
            &self.switch_port(host),
            "down",
        ]);
    }

    /// Puts the host back on the network after [`Fleet::cut_link`].
    pub fn restore_link(&self, host: &str) {
        ip(&[
            "-n",
            &self.switch_netns(),
            "link",
            "set",
            &self.switch_port(host),
            "up",
        ]);
    }

    /// The HAProxy runtime API socket (`stats socket ... level admin expose-fd listeners`).
    pub fn haproxy_admin_socket(&self) -> PathBuf {
        self.dir.join("haproxy").join("admin.sock")
    }

    /// The config file kube-free owns; HAProxy loads it after `base.cfg` (`-f base.cfg -f
    /// kube-free.cfg`); empty at start.
    pub fn haproxy_config_file(&self) -> PathBuf {
        self.dir.join("haproxy").join("kube-free.cfg")
    }

    /// The base config the fleet wrote (`global` + `defaults`).
    pub fn haproxy_base_config_file(&self) -> PathBuf {
        self.dir.join("haproxy").join("base.cfg")
    }

    /// HAProxy's pid file; holds the master's pid (stable across reloads).
    pub fn haproxy_pid_file(&self) -> PathBuf {
        self.dir.join("haproxy").join("haproxy.pid")
    }

    /// HAProxy's log (master and workers' stderr, `log stderr ... notice`).
    pub fn haproxy_log_file(&self) -> PathBuf {
        self.dir.join("haproxy").join("haproxy.log")
    }

    /// The reload script the fleet wrote, `<dir>/haproxy/reload.sh` (see
    /// [`Fleet::haproxy_reload_command`]).
    pub fn haproxy_reload_script(&self) -> PathBuf {
        self.dir.join("haproxy").join("reload.sh")
    }

    /// Command line that reloads HAProxy hitlessly, in kube-free's desired-state form (words
    /// split by shell rules, no shell syntax): `sh <dir>/haproxy/reload.sh`. Runs on the
    /// balancer (over ssh or `ip netns exec`; any namespace works, it only signals a pid).
    ///
    /// The script sends SIGUSR2 to the HAProxy master, which re-reads `base.cfg` and
    /// `kube-free.cfg` and starts a new worker that takes over the listening sockets (`-x`,
    /// `expose-fd listeners`) while the old one finishes its connections. It is synchronous, like
    /// `systemctl reload`: it first waits (≤ 10 s) until the master catches SIGUSR2 (HAProxy 2.6
    /// ignores SIGUSR2 while it starts or re-executes itself, so a signal sent then is lost), then
    /// waits (≤ 10 s) for `Loading success` / `Loading failure` in the log and for the master to
    /// be ready again. Exit 0: the new worker serves the new config. Exit 1 with a message on
    /// stderr: the new config failed to load (the old worker keeps serving the old config) or a
    /// timeout.
    pub fn haproxy_reload_command(&self) -> String {
        format!("sh {}", self.haproxy_reload_script().display())
    }

    /// Sends one runtime API command (e.g. `show info`, `show servers state`) to the admin
    /// socket and returns the whole answer. Panics if the socket cannot be used.
    pub fn haproxy_runtime(&self, command: &str) -> String {
        self.try_haproxy_runtime(command)
            .unwrap_or_else(|e| panic!("fleet: HAProxy runtime API {command:?}: {e}"))
    }

    /// Like [`Fleet::haproxy_runtime`], returning the I/O error instead of panicking.
    pub fn try_haproxy_runtime(&self, command: &str) -> std::io::Result<String> {
        let mut s = UnixStream::connect(self.haproxy_admin_socket())?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.set_write_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(command.trim_end().as_bytes())?;
        s.write_all(b"\n")?;
        let mut answer = String::new();
        s.read_to_string(&mut answer)?;
        Ok(answer)
    }

    /// Pid of the current HAProxy worker (`Pid:` of `show info`), if the socket answers.
    pub fn haproxy_worker_pid(&self) -> Option<u32> {
        let info = self.try_haproxy_runtime("show info").ok()?;
        info.lines()
            .find_map(|l| l.strip_prefix("Pid:"))
            .and_then(|p| p.trim().parse().ok())
    }

    /// Pid of the HAProxy master (stable across reloads), from the pid file.
    pub fn haproxy_master_pid(&self) -> Option<u32> {
        fs::read_to_string(self.haproxy_pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Runs [`Fleet::haproxy_reload_command`] in the balancer's namespace, checks it succeeded
    /// and that a new worker answers on the admin socket; returns the new worker's pid. Panics
    /// otherwise (e.g. kube-free.cfg is invalid), with the script's stderr and HAProxy's log.
    pub fn haproxy_reload(&self) -> u32 {
        let before = self.haproxy_worker_pid();
        let command = self.haproxy_reload_command();
        let argv: Vec<&str> = command.split(' ').collect();
        let out = self.exec(&self.balancer, &argv);
        assert!(
            out.status.success(),
            "fleet: HAProxy reload ({command}) failed: {}\nHAProxy log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            read_lossy(&self.haproxy_log_file())
        );
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(pid) = self.haproxy_worker_pid() {
                if Some(pid) != before {
                    return pid;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "fleet: after a reload the admin socket shows no new worker within {READY_TIMEOUT:?} (still {before:?}); log:\n{}",
                    read_lossy(&self.haproxy_log_file())
                );
            }
            sleep(Duration::from_millis(20));
        }
    }

    // ---- nginx (only with `FleetSpec::with_nginx`) ----

    /// `<dir>/nginx`: nginx's prefix (`-p`) and the home of everything of the fleet's nginx.
    pub fn nginx_dir(&self) -> PathBuf {
        self.dir.join("nginx")
    }

    /// The main config the fleet wrote, `<dir>/nginx/nginx.conf` (`user root;`, `worker_processes
    /// 2`, the modules, pid, logs and temp paths in `<dir>/nginx`, and in `http {}` the line
    /// `include <dir>/nginx/kube-free.conf;`).
    pub fn nginx_main_config_file(&self) -> PathBuf {
        self.nginx_dir().join("nginx.conf")
    }

    /// The include file kube-free owns (http context), `<dir>/nginx/kube-free.conf`; empty at start.
    pub fn nginx_config_file(&self) -> PathBuf {
        self.nginx_dir().join("kube-free.conf")
    }

    /// Where kube-free's admin endpoint (`mode: dynamic`) is to listen:
    /// `<dir>/nginx/admin/admin.sock`. The fleet does not create `admin/` (kube-free makes it, 0700).
    pub fn nginx_admin_socket(&self) -> PathBuf {
        self.nginx_dir().join("admin").join("admin.sock")
    }

    /// nginx's pid file (the master's pid; stable across reloads).
    pub fn nginx_pid_file(&self) -> PathBuf {
        self.nginx_dir().join("nginx.pid")
    }

    /// nginx's error log (level `notice`: starts, reloads, worker exits), also for `-t` and `-s`.
    pub fn nginx_error_log(&self) -> PathBuf {
        self.nginx_dir().join("error.log")
    }

    /// nginx's access log (main config, `combined`, buffered).
    pub fn nginx_access_log(&self) -> PathBuf {
        self.nginx_dir().join("access.log")
    }

    /// The reload script the fleet wrote, `<dir>/nginx/reload.sh` (see
    /// [`Fleet::nginx_reload_command`]).
    pub fn nginx_reload_script(&self) -> PathBuf {
        self.nginx_dir().join("reload.sh")
    }

    /// The options that point the `nginx` binary at the fleet's nginx: `-p <dir>/nginx/ -c
    /// <dir>/nginx/nginx.conf -e <dir>/nginx/error.log`.
    pub fn nginx_options(&self) -> Vec<String> {
        vec![
            "-p".into(),
            format!("{}/", self.nginx_dir().display()),
            "-c".into(),
            self.nginx_main_config_file().display().to_string(),
            "-e".into(),
            self.nginx_error_log().display().to_string(),
        ]
    }

    /// `/usr/sbin/nginx <options> <args>` as one command line (words split by shell rules, no
    /// shell syntax), e.g. `nginx_command("-s reload")`: what an operator's script runs (a bare
    /// `nginx -s reload` only signals the master and returns before anything is reloaded).
    pub fn nginx_command(&self, args: &str) -> String {
        format!("{NGINX} {} {args}", self.nginx_options().join(" "))
            .trim_end()
            .to_string()
    }

    /// Command line that checks the whole nginx config with kube-free's file in place, in
    /// kube-free's desired-state form: `/usr/sbin/nginx -t -p … -c … -e …`.
    pub fn nginx_test_command(&self) -> String {
        format!("{NGINX} -t {}", self.nginx_options().join(" "))
    }

    /// Command line that reloads nginx synchronously, in kube-free's desired-state form: `sh
    /// <dir>/nginx/reload.sh`. Runs on the balancer (over ssh or `ip netns exec`).
    ///
    /// The script runs `nginx -s reload` (with [`Fleet::nginx_options`]; this fails at once, and
    /// nothing is signalled, when the config does not parse), then waits (≤ 10 s) until the master
    /// has [`NGINX_WORKERS`] worker processes that were not there before (read from /proc: the
    /// master's children). Exit 0: the new workers run the new config (old workers may still be
    /// finishing their requests). Exit 1 with a message on stderr: the config was refused (an
    /// `[emerg]`/`[alert]` of the master in the error log after the signal; the old workers keep
    /// serving), the master is not running or died, or a timeout.
    pub fn nginx_reload_command(&self) -> String {
        format!("sh {}", self.nginx_reload_script().display())
    }

    /// The modules the running nginx loaded; `None` when the fleet runs no nginx.
    pub fn nginx_modules(&self) -> Option<NginxModules> {
        self.nginx.lock().unwrap().as_ref().map(|(_, m)| *m)
    }

    /// Pid of the nginx master, from the pid file.
    pub fn nginx_master_pid(&self) -> Option<u32> {
        fs::read_to_string(self.nginx_pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Pids of the nginx master's children (its workers, also old ones still shutting down),
    /// sorted; empty when nginx does not run.
    pub fn nginx_worker_pids(&self) -> Vec<u32> {
        self.nginx_master_pid()
            .map(|master| children_of(master as i32))
            .unwrap_or_default()
            .into_iter()
            .map(|p| p as u32)
            .collect()
    }

    /// Runs [`Fleet::nginx_reload_command`] in the balancer's namespace and checks it succeeded;
    /// returns the worker pids after it. Panics otherwise, with the script's stderr and the tail of
    /// the error log.
    pub fn nginx_reload(&self) -> Vec<u32> {
        let command = self.nginx_reload_command();
        let argv: Vec<&str> = command.split(' ').collect();
        let out = self.exec(&self.balancer, &argv);
        assert!(
            out.status.success(),
            "fleet: nginx reload ({command}) failed: {}\nerror log (end):\n{}",
            String::from_utf8_lossy(&out.stderr),
            tail(&read_lossy(&self.nginx_error_log()), 30)
        );
        self.nginx_worker_pids()
    }

    /// Stops nginx if it runs and starts it again loading `modules` (the main config is written
    /// again; kube-free.conf is kept as it is, so empty it first if it uses what `modules` lack).
    /// Like [`Fleet::start`], waits until the new master runs its workers, checks a reload, and
    /// returns once the master has [`NGINX_WORKERS`] children (the new workers) only.
    pub fn restart_nginx(&self, modules: NginxModules) {
        self.stop_nginx();
        self.start_nginx(modules);
    }

    /// Stops nginx (SIGTERM to the master, then SIGKILL to any nginx process left in the
    /// balancer's namespace) and removes its pid file and a stale admin socket. No-op if stopped.
    pub fn stop_nginx(&self) {
        let taken = self.nginx.lock().unwrap().take();
        if let Some((mut child, _)) = taken {
            // SAFETY: kill(2) on our own child, not yet reaped.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + READY_TIMEOUT;
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let ns = self.netns(&self.balancer);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let left: Vec<i32> = netns_pids(&ns)
                .into_iter()
                .filter(|pid| {
                    fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p == Path::new(NGINX))
                })
                .collect();
            if left.is_empty() || Instant::now() > deadline {
                break;
            }
            for pid in left {
                kill9(pid);
            }
            sleep(Duration::from_millis(20));
        }
        let _ = fs::remove_file(self.nginx_pid_file());
        let _ = fs::remove_file(self.nginx_admin_socket());
    }

    fn start_nginx(&self, modules: NginxModules) {
        let dir = self.nginx_dir();
        create_dir(&dir.join("tmp"));
        let load = match modules {
            NginxModules::Lua => {
                format!("load_module {NGINX_NDK_MODULE};\nload_module {NGINX_LUA_MODULE};\n")
            }
            NginxModules::Plain => String::new(),
        };
        let d = dir.display();
        let main = format!(
            "# Main config of the fleet's nginx, written by tests/fleet; kube-free owns kube-free.conf.\n\
             user root;\n\
             worker_processes {NGINX_WORKERS};\n\
             pid {pid};\n\
             error_log {error_log} notice;\n\
             {load}\
             events {{\n\
             \x20   worker_connections 4096;\n\
             }}\n\
             http {{\n\
             \x20   access_log {d}/access.log combined buffer=64k flush=1s;\n\
             \x20   client_body_temp_path {d}/tmp/client_body;\n\
             \x20   proxy_temp_path {d}/tmp/proxy;\n\
             \x20   fastcgi_temp_path {d}/tmp/fastcgi;\n\
             \x20   uwsgi_temp_path {d}/tmp/uwsgi;\n\
             \x20   scgi_temp_path {d}/tmp/scgi;\n\
             \x20   include {config};\n\
             }}\n",
            pid = self.nginx_pid_file().display(),
            error_log = self.nginx_error_log().display(),
            config = self.nginx_config_file().display(),
        );
        fs::write(self.nginx_main_config_file(), main).unwrap();
        if !self.nginx_config_file().exists() {
            fs::write(self.nginx_config_file(), "").unwrap();
        }
        let script = NGINX_RELOAD_SCRIPT
            .replace("@NGINX@", &self.nginx_command(""))
            .replace("@PIDFILE@", &self.nginx_pid_file().display().to_string())
            .replace("@LOG@", &self.nginx_error_log().display().to_string())
            .replace("@WORKERS@", &NGINX_WORKERS.to_string());
        fs::write(self.nginx_reload_script(), script).unwrap();
        fs::set_permissions(
            self.nginx_reload_script(),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        // A pid file left by a master that was killed would name a process that is gone (or,
        // worse, another one): the readiness check below waits for the new master's pid.
        let _ = fs::remove_file(self.nginx_pid_file());
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.nginx_error_log())
            .unwrap();
        let ns = self.netns(&self.balancer);
        let child = Command::new(ip_bin())
            .args(["netns", "exec", &ns, NGINX])
            .args(self.nginx_options())
            .args(["-g", "daemon off;"])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("fleet: start nginx: {e}"));
        let master = child.id();
        *self.nginx.lock().unwrap() = Some((child, modules));
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self
                .nginx
                .lock()
                .unwrap()
                .as_mut()
                .and_then(|(c, _)| c.try_wait().ok().flatten())
            {
                panic!(
                    "fleet: nginx exited ({status}); error log (end):\n{}",
                    tail(&read_lossy(&self.nginx_error_log()), 30)
                );
            }
            if self.nginx_master_pid() == Some(master)
                && self.nginx_worker_pids().len() == NGINX_WORKERS
            {
                break;
            }
            if Instant::now() > deadline {
                panic!(
                    "fleet: nginx not ready (pid file, {NGINX_WORKERS} workers) within {READY_TIMEOUT:?}; error log (end):\n{}",
                    tail(&read_lossy(&self.nginx_error_log()), 30)
                );
            }
            sleep(Duration::from_millis(20));
        }
        // The reload command works from the start.
        let before = self.nginx_worker_pids();
        let after = self.nginx_reload();
        assert!(
            after.iter().filter(|p| !before.contains(p)).count() == NGINX_WORKERS,
            "fleet: nginx reload gave no {NGINX_WORKERS} new workers ({before:?} -> {after:?})"
        );
        // The old workers, idle, are gone at once: after a start, the master has its workers only.
        let deadline = Instant::now() + READY_TIMEOUT;
        while self.nginx_worker_pids().len() > NGINX_WORKERS {
            assert!(
                Instant::now() < deadline,
                "fleet: nginx's old workers still run {READY_TIMEOUT:?} after a reload at start"
            );
            sleep(Duration::from_millis(20));
        }
    }

    // ---- Docker (only with `FleetSpec::with_docker`) ----

    /// The hosts that run a Docker engine: every app host with [`FleetSpec::with_docker`], in spec
    /// order; none otherwise.
    pub fn docker_hosts(&self) -> Vec<String> {
        self.hosts
            .iter()
            .filter(|h| h.docker.is_some())
            .map(|h| h.name.clone())
            .collect()
    }

    fn engine(&self, host: &str) -> &(PathBuf, usize) {
        self.host(host).docker.as_ref().unwrap_or_else(|| {
            panic!("fleet: host {host:?} runs no Docker engine (FleetSpec::with_docker; app hosts only)")
        })
    }

    /// The host's engine directory `<dir>/docker/<n>` (see the module documentation). Panics if
    /// the host runs no engine.
    pub fn docker_dir(&self, host: &str) -> PathBuf {
        self.engine(host).0.clone()
    }

    /// The `DOCKER_HOST` of the host's engine, `unix://<dir>/docker/<n>/docker.sock`: what the
    /// host's ssh sessions have, and what [`Fleet::docker`] uses.
    pub fn docker_host(&self, host: &str) -> String {
        format!(
            "unix://{}",
            self.docker_dir(host).join("docker.sock").display()
        )
    }

    /// The log of the host's dockerd (and of the containerd it runs).
    pub fn docker_log(&self, host: &str) -> PathBuf {
        self.docker_dir(host).join("dockerd.log")
    }

    /// The subnet of the host's `docker0` bridge, `10.<232+n>.<id>.0/24`.
    pub fn docker_bridge_subnet(&self, host: &str) -> String {
        format!("10.{}.{}.0/24", 232 + self.engine(host).1, self.id)
    }

    /// Pid of the host's dockerd, while it runs.
    pub fn dockerd_pid(&self, host: &str) -> Option<u32> {
        self.host(host);
        let mut map = self.dockerd.lock().unwrap();
        let (child, _) = map.get_mut(host)?;
        matches!(child.try_wait(), Ok(None)).then(|| child.id())
    }

    /// A `docker` command (the CLI kube-free's ssh sessions find first on PATH) against the
    /// host's engine; append the arguments.
    pub fn docker_command(&self, host: &str) -> Command {
        let mut cmd = Command::new(docker_bin());
        cmd.env("DOCKER_HOST", self.docker_host(host))
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_TLS_VERIFY")
            .env_remove("DOCKER_CERT_PATH")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `docker args...` against the host's engine (from this machine, not over ssh); does not
    /// panic on a non-zero exit.
    pub fn docker(&self, host: &str, args: &[&str]) -> Output {
        self.docker_command(host)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("fleet: run docker {args:?} on {host}: {e}"))
    }

    /// Like [`Fleet::docker`], but panics (with stderr) unless it succeeds; returns stdout, trimmed.
    pub fn docker_ok(&self, host: &str, args: &[&str]) -> String {
        let out = self.docker(host, args);
        assert!(
            out.status.success(),
            "fleet: `docker {}` on {host} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Every container of the host's engine, running or not (`docker ps -a`, then `docker
    /// inspect` for exact labels), sorted by name.
    pub fn containers(&self, host: &str) -> Vec<Container> {
        let ids = self.docker_ok(host, &["ps", "-a", "-q", "--no-trunc"]);
        if ids.is_empty() {
            return Vec::new();
        }
        let mut args = vec!["inspect", "--type", "container"];
        args.extend(ids.split_whitespace());
        // A container removed meanwhile fails the exit status, not the others' JSON.
        let out = self.docker(host, &args);
        let all: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "fleet: docker inspect on {host}: {e}: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
        let mut containers: Vec<Container> = all
            .iter()
            .map(|c| {
                let mut argv = vec![text(&c["Path"])];
                if let Some(args) = c["Args"].as_array() {
                    argv.extend(args.iter().map(text));
                }
                let mut ports = Vec::new();
                if let Some(map) = c["NetworkSettings"]["Ports"].as_object() {
                    for (inside, bindings) in map {
                        for b in bindings.as_array().into_iter().flatten() {
                            ports.push(format!(
                                "{}:{}->{inside}",
                                text(&b["HostIp"]),
                                text(&b["HostPort"])
                            ));
                        }
                    }
                }
                ports.sort();
                Container {
                    id: text(&c["Id"]),
                    name: text(&c["Name"]).trim_start_matches('/').to_string(),
                    image: text(&c["Config"]["Image"]),
                    state: text(&c["State"]["Status"]),
                    exit_code: c["State"]["ExitCode"].as_i64().unwrap_or(-1),
                    pid: c["State"]["Pid"].as_i64().unwrap_or(0),
                    labels: c["Config"]["Labels"]
                        .as_object()
                        .map(|m| m.iter().map(|(k, v)| (k.clone(), text(v))).collect())
                        .unwrap_or_default(),
                    argv,
                    network_mode: text(&c["HostConfig"]["NetworkMode"]),
                    ports,
                    error: text(&c["State"]["Error"]),
                }
            })
            .collect();
        containers.sort_by(|a, b| a.name.cmp(&b.name));
        containers
    }

    /// Makes the demo app's image `tag` (ENTRYPOINT `["/kube-free-demo", entrypoint_args...]`, the
    /// demo binary `demo_bin`) available on every docker host, and returns its id (the same on
    /// every host). Builds it with `examples/quickstart-docker/build-image.sh` into the first
    /// docker host's engine, saves it once and loads the archive into the other engines side by
    /// side. Done once per fleet for the same arguments (later calls return the id at once).
    pub fn load_image(&self, demo_bin: &Path, tag: &str, entrypoint_args: &[&str]) -> String {
        self.load_demo_image(Some(demo_bin), tag, entrypoint_args)
    }

    /// Like [`Fleet::load_image`], for an image that has no binary at all (the script's
    /// `BROKEN=nobinary`): every `docker run` of it fails at once.
    pub fn load_image_without_binary(&self, tag: &str) -> String {
        self.load_demo_image(None, tag, &[])
    }

    fn load_demo_image(&self, demo_bin: Option<&Path>, tag: &str, args: &[&str]) -> String {
        let hosts = self.docker_hosts();
        assert!(
            !hosts.is_empty(),
            "fleet: no docker hosts (FleetSpec::with_docker)"
        );
        let key = format!("{tag}\0{}\0{}", args.join("\0"), demo_bin.is_none());
        let mut images = self.images.lock().unwrap();
        if let Some(id) = images.get(&key) {
            return id.clone();
        }
        let t0 = Instant::now();
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/quickstart-docker/build-image.sh");
        let mut build = Command::new("bash");
        build
            .arg(&script)
            .arg(tag)
            .args(args)
            .env("DOCKER_HOST", self.docker_host(&hosts[0]))
            .env("PATH", DAEMON_PATH)
            .env_remove("DOCKER_CONTEXT")
            .env_remove("IMAGE_TAR")
            .stdin(Stdio::null());
        match demo_bin {
            Some(bin) => build.env("DEMO_BIN", bin).env_remove("BROKEN"),
            None => build.env("BROKEN", "nobinary"),
        };
        let out = build
            .output()
            .unwrap_or_else(|e| panic!("fleet: run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "fleet: {} {tag} {args:?} failed ({}): {}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let built = t0.elapsed();
        let t1 = Instant::now();
        if hosts.len() > 1 {
            let archive = self.dir.join("docker").join(format!(
                "image-{}.tar",
                tag.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
            ));
            let archive_text = archive.display().to_string();
            self.docker_ok(&hosts[0], &["save", "-o", &archive_text, tag]);
            std::thread::scope(|s| {
                for host in &hosts[1..] {
                    let archive_text = &archive_text;
                    s.spawn(move || {
                        self.docker_ok(host, &["load", "-q", "-i", archive_text]);
                    });
                }
            });
            let _ = fs::remove_file(&archive);
        }
        for host in &hosts {
            let there = self.docker_ok(host, &["image", "inspect", "--format", "{{.Id}}", tag]);
            assert_eq!(
                there, id,
                "fleet: image {tag} on {host} is not the one built"
            );
        }
        eprintln!(
            "fleet {}: image {tag} built in {built:?} on {}, loaded into {} more engine(s) in {:?}",
            self.id,
            hosts[0],
            hosts.len() - 1,
            t1.elapsed()
        );
        images.insert(key, id.clone());
        id
    }

    fn spawn_dockerd(&self, host: &str, driver: &str) {
        let h = self.host(host);
        let (dir, n) = self.engine(host).clone();
        create_dir(&dir);
        fs::write(dir.join("daemon.json"), "{}\n").unwrap();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("dockerd.log"))
            .unwrap();
        let _ = fs::remove_file(dir.join("docker.pid"));
        let d = |name: &str| dir.join(name).display().to_string();
        // `nsenter --net` (not `ip netns exec`, which remounts /sys and loses the cgroup
        // mounts); nsenter execs dockerd, so the child is dockerd itself.
        let child = Command::new(NSENTER)
            .arg(format!("--net=/run/netns/{}", h.netns))
            .arg(DOCKERD)
            .args(["--config-file", &d("daemon.json")])
            .args(["--data-root", &d("data")])
            .args(["--exec-root", &d("x")])
            .args(["-H", &format!("unix://{}", d("docker.sock"))])
            .args(["--pidfile", &d("docker.pid")])
            .args(["--storage-driver", driver])
            .args(["--bip", &format!("10.{}.{}.1/24", 232 + n, self.id)])
            .args(["--cgroup-parent", &format!("/{}/{n}", cgroup_name(self.id))])
            // A registry of the tests on this machine's fleet address, over plain HTTP.
            .args(["--insecure-registry", &format!("10.231.{}.0/24", self.id)])
            .args(["--shutdown-timeout", "2"])
            .env("PATH", DAEMON_PATH)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("DOCKER_HOST")
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("fleet: start dockerd on {host}: {e}"));
        self.dockerd
            .lock()
            .unwrap()
            .insert(host.to_string(), (child, Instant::now()));
    }

    /// Waits until the host's engine answers `GET /_ping` on its socket, then `docker info` with
    /// the CLI.
    fn wait_dockerd(&self, host: &str) {
        let socket = self.docker_dir(host).join("docker.sock");
        let started = self.dockerd.lock().unwrap().get(host).map(|(_, t)| *t);
        let deadline = Instant::now() + DOCKER_READY_TIMEOUT;
        loop {
            if let Some(status) = self
                .dockerd
                .lock()
                .unwrap()
                .get_mut(host)
                .and_then(|(c, _)| c.try_wait().ok().flatten())
            {
                panic!(
                    "fleet: dockerd on {host} exited ({status}); log (end):\n{}",
                    tail(&read_lossy(&self.docker_log(host)), 30)
                );
            }
            if docker_ping(&socket) {
                break;
            }
            if Instant::now() > deadline {
                panic!(
                    "fleet: dockerd on {host} not answering on {} within {DOCKER_READY_TIMEOUT:?}; log (end):\n{}",
                    socket.display(),
                    tail(&read_lossy(&self.docker_log(host)), 30)
                );
            }
            sleep(Duration::from_millis(20));
        }
        let info = self.docker_ok(
            host,
            &["info", "--format", "{{.Driver}} {{.CgroupVersion}}"],
        );
        eprintln!(
            "fleet {}: dockerd on {host} ready in {:?} ({info})",
            self.id,
            started.map(|t| t.elapsed()).unwrap_or_default()
        );
    }

    /// Pids of all processes currently in the host's namespace.
    pub fn pids(&self, host: &str) -> Vec<i32> {
        netns_pids(&self.netns(host))
    }

    // ---- building ----

    fn host(&self, host: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == host)
            .unwrap_or_else(|| panic!("fleet: no host {host:?} in this fleet"))
    }

    fn build_dirs_and_keys(&self) {
        // World-readable directories (apps kube-free starts may run as other users); only the
        // private keys are 0600.
        create_dir(&self.dir);
        let client = self.dir.join("client");
        create_dir(&client);
        keygen(
            &self.identity,
            &format!("kube-free-fleet-{}-client", self.id),
        );
        fs::set_permissions(&self.identity, fs::Permissions::from_mode(0o600)).unwrap();
        let public = fs::read_to_string(self.identity.with_extension("pub")).unwrap();
        fs::write(client.join("authorized_keys"), &public).unwrap();

        // Privilege separation directory sshd insists on.
        create_dir(Path::new("/run/sshd"));
        fs::set_permissions("/run/sshd", fs::Permissions::from_mode(0o755)).unwrap();

        let mut known_hosts = String::new();
        for h in &self.hosts {
            create_dir(&h.dir.join("state"));
            // An empty home for the sessions: the machine's own shell start-up files (a `pyenv
            // init` in root's .bashrc, say) are not run for every command, and a session killed
            // at teardown cannot leave their lock files behind for the next fleet's logins.
            create_dir(&h.dir.join("home"));
            let key = h.dir.join("ssh_host_ed25519_key");
            keygen(&key, &format!("{}@kube-free-fleet-{}", h.name, self.id));
            let public = fs::read_to_string(key.with_extension("pub")).unwrap();
            let mut words = public.split_whitespace();
            let (kind, blob) = (words.next().unwrap(), words.next().unwrap());
            known_hosts.push_str(&format!("{} {kind} {blob}\n", h.address));
            let config = format!(
                "# sshd of fleet host {name} ({address}), written by tests/fleet\n\
                 ListenAddress {address}:22\n\
                 HostKey {key}\n\
                 PidFile {dir}/sshd.pid\n\
                 AuthorizedKeysFile {authorized}\n\
                 PermitRootLogin prohibit-password\n\
                 PubkeyAuthentication yes\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 UsePAM no\n\
                 StrictModes no\n\
                 MaxStartups 100\n\
                 MaxSessions 100\n\
                 UseDNS no\n\
                 PrintMotd no\n\
                 PrintLastLog no\n\
                 X11Forwarding no\n\
                 AllowTcpForwarding yes\n\
                 AllowStreamLocalForwarding yes\n\
                 SetEnv HOME={dir}/home{docker_host}\n\
                 LogLevel VERBOSE\n\
                 Subsystem sftp internal-sftp\n",
                name = h.name,
                address = h.address,
                key = key.display(),
                dir = h.dir.display(),
                authorized = client.join("authorized_keys").display(),
                // One SetEnv line: sshd takes the first one only.
                docker_host = match &h.docker {
                    Some((engine, _)) =>
                        format!(" DOCKER_HOST=unix://{}/docker.sock", engine.display()),
                    None => String::new(),
                },
            );
            fs::write(h.dir.join("sshd_config"), config).unwrap();
        }
        fs::write(&self.known_hosts, known_hosts).unwrap();
    }

    fn build_network(&self) {
        let id = self.id;
        let sw = self.switch_netns();
        let br = self.bridge();
        ip(&["netns", "add", &sw]);
        ip(&["-n", &sw, "link", "set", "lo", "up"]);
        ip(&["-n", &sw, "link", "add", &br, "type", "bridge"]);
        ip(&["-n", &sw, "link", "set", &br, "up"]);
        let up = format!("kf{id}up");
        let uq = format!("kf{id}uq");
        ip(&[
            "link", "add", &up, "type", "veth", "peer", "name", &uq, "netns", &sw,
        ]);
        ip(&["-n", &sw, "link", "set", &uq, "master", &br, "up"]);
        ip(&["addr", "add", &format!("10.231.{id}.1/24"), "dev", &up]);
        ip(&["link", "set", &up, "up"]);
        for (n, h) in self.hosts.iter().enumerate() {
            let ns = &h.netns;
            let v = format!("kf{id}v{n}");
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&[
                "-n", &sw, "link", "add", &v, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ]);
            ip(&["-n", &sw, "link", "set", &v, "master", &br, "up"]);
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/24", h.address),
                "dev",
                "eth0",
            ]);
            ip(&["-n", ns, "link", "set", "eth0", "up"]);
        }
    }

    fn spawn_sshd(&self, host: &str) {
        let h = self.host(host);
        let log = h.dir.join("sshd.log");
        let stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let config = h.dir.join("sshd_config");
        let child = Command::new(ip_bin())
            .args(["netns", "exec", &h.netns, SSHD, "-D", "-e", "-f"])
            .arg(&config)
            .arg("-E")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(stderr.try_clone().unwrap())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("fleet: start sshd on {host}: {e}"));
        self.sshd.lock().unwrap().insert(host.to_string(), child);
    }

    /// Waits until the host's sshd sends its banner on IP:22, then logs in for real.
    fn wait_sshd(&self, host: &str) {
        let h = self.host(host);
        let addr: SocketAddr = format!("{}:22", h.address).parse().unwrap();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self
                .sshd
                .lock()
                .unwrap()
                .get_mut(host)
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "fleet: sshd on {host} exited ({status}); log:\n{}",
                    read_lossy(&h.dir.join("sshd.log"))
                );
            }
            if ssh_banner(&addr) {
                break;
            }
            if Instant::now() > deadline {
                panic!(
                    "fleet: sshd on {host} ({addr}) not accepting connections within {READY_TIMEOUT:?}; log:\n{}",
                    read_lossy(&h.dir.join("sshd.log"))
                );
            }
            sleep(Duration::from_millis(20));
        }
        let out = self.ssh(host, "true");
        assert!(
            out.status.success(),
            "fleet: ssh login to {host} ({}) failed: {}\nsshd log:\n{}",
            h.address,
            String::from_utf8_lossy(&out.stderr),
            read_lossy(&h.dir.join("sshd.log"))
        );
    }

    fn start_haproxy(&self) {
        let hdir = self.dir.join("haproxy");
        create_dir(&hdir);
        let base = format!(
            "# Base config of the fleet's HAProxy, written by tests/fleet; kube-free owns kube-free.cfg.\n\
             global\n\
             \x20   master-worker\n\
             \x20   stats socket {sock} mode 600 level admin expose-fd listeners\n\
             \x20   pidfile {pid}\n\
             \x20   log stderr format short local0 notice\n\
             \n\
             defaults\n\
             \x20   mode http\n\
             \x20   timeout connect 2s\n\
             \x20   timeout client 30s\n\
             \x20   timeout server 30s\n",
            sock = self.haproxy_admin_socket().display(),
            pid = self.haproxy_pid_file().display(),
        );
        fs::write(self.haproxy_base_config_file(), base).unwrap();
        fs::write(self.haproxy_config_file(), "").unwrap();
        let script = RELOAD_SCRIPT
            .replace("@PIDFILE@", &self.haproxy_pid_file().display().to_string())
            .replace("@LOG@", &self.haproxy_log_file().display().to_string());
        fs::write(self.haproxy_reload_script(), script).unwrap();
        fs::set_permissions(
            self.haproxy_reload_script(),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let log = File::create(self.haproxy_log_file()).unwrap();
        let ns = self.netns(&self.balancer);
        // Foreground master (-W -db) as our child: its pid is stable across reloads (USR2
        // re-execs it in place) and it stops its workers when killed. The pid file is written
        // by HAProxy (`pidfile` in base.cfg).
        let child = Command::new(ip_bin())
            .args(["netns", "exec", &ns, HAPROXY, "-W", "-db", "-f"])
            .arg(self.haproxy_base_config_file())
            .arg("-f")
            .arg(self.haproxy_config_file())
            .current_dir(&hdir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("fleet: start HAProxy: {e}"));
        let master = child.id();
        *self.haproxy.lock().unwrap() = Some(child);

        let deadline = Instant::now() + READY_TIMEOUT;
        let first = loop {
            if let Some(status) = self
                .haproxy
                .lock()
                .unwrap()
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "fleet: HAProxy exited ({status}); log:\n{}",
                    read_lossy(&self.haproxy_log_file())
                );
            }
            // Ready: pid file written, first load done, master accepts SIGUSR2, worker answers.
            let ready = self.haproxy_master_pid() == Some(master)
                && read_lossy(&self.haproxy_log_file()).contains("Loading success")
                && catches_sigusr2(master);
            match self.haproxy_worker_pid() {
                Some(pid) if ready => break pid,
                _ => {}
            }
            if Instant::now() > deadline {
                panic!(
                    "fleet: HAProxy not ready (pid file, `Loading success`, SIGUSR2 handler, admin socket) within {READY_TIMEOUT:?}; log:\n{}",
                    read_lossy(&self.haproxy_log_file())
                );
            }
            sleep(Duration::from_millis(20));
        };
        let second = self.haproxy_reload();
        assert_ne!(first, second);
    }
}

impl Drop for Fleet {
    /// Kills sshd, HAProxy, nginx and every other process in the fleet's namespaces or mentioning its
    /// directory, deletes namespaces, bridge and veths, removes the directory; then (field drop)
    /// releases the id lock. Never panics.
    fn drop(&mut self) {
        if let Ok(mut map) = self.sshd.lock() {
            for child in map.values_mut() {
                let _ = child.kill();
            }
        }
        if let Ok(mut hp) = self.haproxy.lock() {
            if let Some(child) = hp.as_mut() {
                let _ = child.kill();
            }
        }
        if let Ok(mut ng) = self.nginx.lock() {
            if let Some((child, _)) = ng.as_mut() {
                let _ = child.kill();
            }
        }
        cleanup_id(self.id);
        // Reap our children (already killed; does not block).
        if let Ok(mut map) = self.sshd.lock() {
            for (_, mut child) in map.drain() {
                let _ = child.wait();
            }
        }
        if let Ok(mut hp) = self.haproxy.lock() {
            if let Some(mut child) = hp.take() {
                let _ = child.wait();
            }
        }
        if let Ok(mut ng) = self.nginx.lock() {
            if let Some((mut child, _)) = ng.take() {
                let _ = child.wait();
            }
        }
        if let Ok(mut map) = self.dockerd.lock() {
            for (_, (mut child, _)) in map.drain() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// True when process `pid` has a handler for SIGUSR2 (`SigCgt` in /proc/PID/status): the
/// HAProxy master is in its loop and will act on a reload signal.
fn catches_sigusr2(pid: u32) -> bool {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (libc::SIGUSR2 - 1)) != 0)
}

/// `<dir>/haproxy/reload.sh`; see [`Fleet::haproxy_reload_command`].
const RELOAD_SCRIPT: &str = r#"#!/bin/sh
# Hitless, synchronous HAProxy reload for the kube-free test fleet (written by tests/fleet).
# Sends SIGUSR2 to the master-worker master once it can take it, and waits for the result.
# Exit 0: the new configuration is loaded. Exit 1: it failed to load (the old worker keeps
# serving) or HAProxy did not answer in time.
pidfile='@PIDFILE@'
log='@LOG@'
pid=$(cat "$pidfile") || exit 1
# The master catches SIGUSR2 (HAProxy ignores it while starting or re-executing itself).
ready() {
  cgt=$(sed -n 's/^SigCgt:[[:space:]]*//p' "/proc/$pid/status" 2>/dev/null)
  [ -n "$cgt" ] && [ $(( 0x$cgt & 0x800 )) -ne 0 ]
}
loads() { grep -c -e 'Loading success' -e 'Loading failure' "$log"; }
i=0
until ready; do
  i=$((i + 1))
  [ "$i" -le 500 ] || { echo "reload: HAProxy master $pid is not ready for a reload" >&2; exit 1; }
  sleep 0.02
done
before=$(loads)
kill -USR2 "$pid" || exit 1
i=0
while [ "$(loads)" -le "$before" ] || ! ready; do
  i=$((i + 1))
  [ "$i" -le 500 ] || { echo "reload: HAProxy did not finish reloading within 10 s" >&2; exit 1; }
  sleep 0.02
done
if grep -e 'Loading success' -e 'Loading failure' "$log" | tail -n 1 | grep -q 'Loading success'; then
  exit 0
fi
echo "reload: HAProxy failed to load the new configuration and keeps the old one; see $log" >&2
exit 1
"#;

/// `<dir>/nginx/reload.sh`; see [`Fleet::nginx_reload_command`].
const NGINX_RELOAD_SCRIPT: &str = r#"#!/bin/sh
# Synchronous nginx reload for the kube-free test fleet (written by tests/fleet).
# Runs `nginx -s reload` and waits until the master runs new workers.
# Exit 0: the new configuration is loaded. Exit 1: it was refused (the old workers keep serving),
# the master is not running or died, or no new workers came within 10 s.
pidfile='@PIDFILE@'
log='@LOG@'
pid=$(cat "$pidfile" 2>/dev/null) || { echo "reload: no nginx pid file $pidfile" >&2; exit 1; }
alive() { [ -e "/proc/$pid" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null; }
alive || { echo "reload: nginx master $pid is not running" >&2; exit 1; }
workers() { pgrep -P "$pid" | tr '\n' ' '; }
old=" $(workers)"
offset=$(wc -c < "$log")
@NGINX@ -s reload || exit 1
i=0
while :; do
  alive || { echo "reload: nginx master $pid died" >&2; exit 1; }
  n=0
  for w in $(workers); do
    case "$old" in *" $w "*) ;; *) n=$((n + 1)) ;; esac
  done
  [ "$n" -ge @WORKERS@ ] && exit 0
  refused=$(tail -c +$((offset + 1)) "$log" | grep -e "\[emerg\] $pid#" -e "\[alert\] $pid#")
  if [ -n "$refused" ]; then
    echo "reload: nginx refused the new configuration (the old workers keep serving):" >&2
    echo "$refused" >&2
    exit 1
  fi
  i=$((i + 1))
  [ "$i" -le 500 ] || { echo "reload: nginx master $pid started no new workers within 10 s" >&2; exit 1; }
  sleep 0.02
done
"#;

/// Pids whose parent is `parent` (from /proc/PID/stat), zombies excluded, sorted.
fn children_of(parent: i32) -> Vec<i32> {
    let mut pids = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return pids;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next();
        let ppid = fields.next().and_then(|p| p.parse::<i32>().ok());
        if ppid == Some(parent) && state != Some("Z") {
            pids.push(pid);
        }
    }
    pids.sort();
    pids
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ---- tools ----

/// Installs the system tools the fleet needs if any is missing: once per process, and under
/// the global lock file `/tmp/kube-free-fleet-install.lock` so parallel test processes do not
/// run apt at the same time. Services the packages would start are blocked with a temporary
/// `/usr/sbin/policy-rc.d` (when none exists); the fleet never uses them anyway.
pub fn ensure_tools() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if missing_tools().is_empty() {
            return;
        }
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(INSTALL_LOCK)
            .unwrap_or_else(|e| panic!("fleet: open {INSTALL_LOCK}: {e}"));
        // SAFETY: flock on a valid, owned file descriptor.
        let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(rc, 0, "fleet: flock {INSTALL_LOCK}");
        let missing = missing_tools();
        if missing.is_empty() {
            return; // another process installed them meanwhile
        }
        eprintln!("fleet: missing {missing:?}; installing {PACKAGES:?} with apt-get");
        let policy = Path::new("/usr/sbin/policy-rc.d");
        let own_policy = !policy.exists()
            && fs::write(policy, "#!/bin/sh\nexit 101\n").is_ok()
            && fs::set_permissions(policy, fs::Permissions::from_mode(0o755)).is_ok();
        let apt = |args: &[&str]| {
            let status = Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .stdin(Stdio::null())
                .status()
                .unwrap_or_else(|e| panic!("fleet: run apt-get {args:?}: {e}"));
            status.success()
        };
        let ok = apt(&["update"]) && apt(&[&["install", "-y"][..], PACKAGES].concat());
        if own_policy {
            let _ = fs::remove_file(policy);
        }
        assert!(ok, "fleet: apt-get install {PACKAGES:?} failed");
        let missing = missing_tools();
        assert!(
            missing.is_empty(),
            "fleet: still missing after apt-get install: {missing:?}"
        );
    });
}

fn missing_tools() -> Vec<String> {
    let mut missing: Vec<String> = [
        SSHD,
        HAPROXY,
        SSH,
        SSH_KEYGEN,
        "/usr/bin/wrk",
        "/usr/bin/dot",
    ]
    .iter()
    .filter(|p| !Path::new(p).exists())
    .map(|p| p.to_string())
    .collect();
    if find_ip().is_none() {
        missing.push("ip".to_string());
    }
    missing
}

fn find_ip() -> Option<&'static str> {
    ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .into_iter()
        .find(|p| Path::new(p).exists())
}

/// Absolute path of `ip` (PATH of a test run may lack the sbin directories).
fn ip_bin() -> &'static str {
    find_ip().expect("fleet: `ip` (iproute2) not found")
}

/// A `Command` for `ip` (iproute2) by absolute path, for tests that inspect namespaces.
pub fn ip_command() -> Command {
    Command::new(ip_bin())
}

/// Runs `ip args...`, panicking with its stderr on failure.
fn ip(args: &[&str]) {
    let out = Command::new(ip_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("fleet: run ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "fleet: `ip {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// Runs `ip args...`, ignoring failure; returns stdout.
fn ip_quiet(args: &[&str]) -> String {
    Command::new(ip_bin())
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn keygen(path: &Path, comment: &str) {
    let out = Command::new(SSH_KEYGEN)
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .expect("fleet: run ssh-keygen");
    assert!(
        out.status.success(),
        "fleet: ssh-keygen {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn create_dir(path: &Path) {
    fs::create_dir_all(path).unwrap_or_else(|e| panic!("fleet: mkdir {}: {e}", path.display()));
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()))
}

/// True when something on `addr` accepts a connection and sends an SSH banner.
fn ssh_banner(addr: &SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 8];
    s.read_exact(&mut buf).is_ok() && buf.starts_with(b"SSH-")
}

fn validate_spec(spec: &FleetSpec) {
    let mut all: Vec<&String> = spec.app_hosts.iter().collect();
    all.push(&spec.balancer);
    assert!(
        all.len() <= 240,
        "fleet: at most 240 hosts ({} asked)",
        all.len()
    );
    assert!(
        !spec.docker || spec.app_hosts.len() <= MAX_DOCKER_HOSTS,
        "fleet: at most {MAX_DOCKER_HOSTS} docker hosts ({} asked)",
        spec.app_hosts.len()
    );
    for (i, name) in all.iter().enumerate() {
        let ok = !name.is_empty()
            && name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !name.starts_with('-');
        assert!(
            ok,
            "fleet: bad host name {name:?} (want ^[a-z0-9][a-z0-9-]{{0,62}}$)"
        );
        assert!(
            !all[..i].contains(name),
            "fleet: host name {name:?} given twice"
        );
    }
}

// ---- ids, leftovers ----

fn fleet_dir(id: u8) -> PathBuf {
    PathBuf::from(format!("/tmp/kube-free-fleet-{id}"))
}

fn lock_path(id: u8) -> PathBuf {
    PathBuf::from(format!("/tmp/kube-free-fleet-{id}.lock"))
}

/// Takes the lock of `id` without waiting; `None` if another fleet (in any process, this one
/// included) holds it.
fn try_lock(id: u8) -> Option<File> {
    let path = lock_path(id);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("fleet: open {}: {e}", path.display()));
    // SAFETY: flock on a valid, owned file descriptor (opened with O_CLOEXEC by std, so
    // daemons we start do not inherit the lock).
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    (rc == 0).then_some(file)
}

/// Claims the first free fleet id.
fn claim_id() -> (u8, File) {
    (1..=MAX_ID)
        .find_map(|id| try_lock(id).map(|f| (id, f)))
        .unwrap_or_else(|| panic!("fleet: all {MAX_ID} fleet ids are in use"))
}

/// Ids (other than `own`; 0 for none) that have leftovers: namespaces, root links, directories.
fn stale_ids(own: u8) -> Vec<u8> {
    let mut ids = Vec::new();
    let mut note = |s: &str| {
        let digits: String = s.chars().take_while(|c| c.is_ascii_digit()).collect();
        if let Ok(id) = digits.parse::<u8>() {
            if (1..=MAX_ID).contains(&id) && id != own && !ids.contains(&id) {
                ids.push(id);
            }
        }
    };
    for ns in netns_list() {
        if let Some(rest) = ns.strip_prefix("kfsw").or_else(|| ns.strip_prefix("kf")) {
            note(rest);
        }
    }
    for link in root_links() {
        if let Some(rest) = link
            .strip_prefix("kfbr")
            .or_else(|| link.strip_prefix("kf"))
        {
            note(rest);
        }
    }
    if let Ok(entries) = fs::read_dir("/tmp") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(rest) = name.strip_prefix("kube-free-fleet-") {
                if e.path().is_dir() && rest.bytes().all(|b| b.is_ascii_digit()) {
                    note(rest);
                }
            }
        }
    }
    ids
}

/// Cleans up leftovers of other ids whose lock is free (their run was killed).
fn sweep_stale_ids(own: u8) {
    for id in stale_ids(own) {
        if let Some(lock) = try_lock(id) {
            eprintln!("fleet: removing leftovers of fleet {id} (earlier run killed?)");
            cleanup_id(id);
            drop(lock);
        }
    }
}

/// Removes everything of fleet `id`: Docker engines and containers, processes, mounts, cgroups,
/// namespaces, links, directory. The caller holds the id's lock. Best effort, never panics; waits
/// (bounded) until the names are free again.
fn cleanup_id(id: u8) {
    let dir = fleet_dir(id);
    let prefix = format!("kf{id}-");
    let sw = format!("kfsw{id}");
    let ours = |ns: &str| ns.starts_with(&prefix) || ns == sw;
    let needle = format!("{}/", dir.display());

    // Named after the containers, which the engines' stop removes.
    let shim_sockets = shim_sockets(&dir);
    stop_docker_engines(&dir);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let namespaces: Vec<String> = netns_list().into_iter().filter(|n| ours(n)).collect();
        let mut pids: Vec<i32> = namespaces.iter().flat_map(|ns| netns_pids(ns)).collect();
        pids.extend(pids_mentioning(&needle));
        // Containers: own namespaces, and they outlive a killed shim; found by their cgroup.
        pids.extend(pids_in_cgroup(&cgroup_name(id)));
        if pids.is_empty() || Instant::now() > deadline {
            break;
        }
        for pid in pids {
            kill9(pid);
        }
        sleep(Duration::from_millis(20));
    }
    unmount_under(&dir);
    remove_cgroups(&cgroup_name(id));
    for socket in shim_sockets {
        let _ = fs::remove_file(socket);
    }
    for ns in netns_list().into_iter().filter(|n| ours(n)) {
        ip_quiet(&["netns", "delete", &ns]);
    }
    let link_ours = |l: &str| {
        l == format!("kfbr{id}")
            || [format!("kf{id}v"), format!("kf{id}p"), format!("kf{id}u")]
                .iter()
                .any(|p| l.starts_with(p.as_str()))
    };
    // Links of deleted namespaces vanish asynchronously; delete the root-side ones explicitly
    // and wait until none is left, so the same names and addresses can be used again at once.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left: Vec<String> = root_links().into_iter().filter(|l| link_ours(l)).collect();
        let ns_left = netns_list().into_iter().any(|n| ours(&n));
        if (left.is_empty() && !ns_left) || Instant::now() > deadline {
            break;
        }
        for l in left {
            ip_quiet(&["link", "delete", &l]);
        }
        for ns in netns_list().into_iter().filter(|n| ours(n)) {
            ip_quiet(&["netns", "delete", &ns]);
        }
        sleep(Duration::from_millis(20));
    }
    let _ = fs::remove_dir_all(&dir);
}

/// Names of all named network namespaces (`ip netns list`).
fn netns_list() -> Vec<String> {
    ip_quiet(&["netns", "list"])
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Pids of the processes in a named namespace (`ip netns pids`).
fn netns_pids(ns: &str) -> Vec<i32> {
    ip_quiet(&["netns", "pids", ns])
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Names of the links in the root namespace.
fn root_links() -> Vec<String> {
    ip_quiet(&["-o", "link", "show"])
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}

/// Pids (other than ours) whose command line contains `needle`, zombies excluded.
pub fn pids_mentioning(needle: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut pids = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return pids;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmdline: Vec<u8> = cmdline
            .into_iter()
            .map(|b| if b == 0 { b' ' } else { b })
            .collect();
        if String::from_utf8_lossy(&cmdline).contains(needle) {
            pids.push(pid);
        }
    }
    pids
}

// ---- Docker engines ----

/// Name of the cgroup (directly under each hierarchy's root) that holds fleet `id`'s containers:
/// `kube-free-fleet-<id>` (dockerd's `--cgroup-parent /kube-free-fleet-<id>/<n>`).
fn cgroup_name(id: u8) -> String {
    format!("kube-free-fleet-{id}")
}

fn find_docker() -> Option<&'static str> {
    ["/usr/local/bin/docker", "/usr/bin/docker"]
        .into_iter()
        .find(|p| Path::new(p).exists())
}

/// The `docker` CLI, the one first on a login's PATH (`/usr/local/bin` before `/usr/bin`).
fn docker_bin() -> &'static str {
    find_docker().expect("fleet: the docker CLI is not installed")
}

/// The main engine's storage driver (`docker info --format '{{.Driver}}'` on the default
/// engine): what works on this machine's filesystem. `vfs` (slow, works anywhere) when no main
/// engine answers.
fn storage_driver() -> String {
    let out = Command::new(docker_bin())
        .args(["info", "--format", "{{.Driver}}"])
        .env_remove("DOCKER_HOST")
        .env_remove("DOCKER_CONTEXT")
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() && !String::from_utf8_lossy(&o.stdout).trim().is_empty() => {
            String::from_utf8_lossy(&o.stdout).trim().to_string()
        }
        _ => {
            eprintln!(
                "fleet: no main Docker engine answers; the fleet's engines use storage driver vfs"
            );
            "vfs".to_string()
        }
    }
}

/// True when a Docker engine answers `GET /_ping` with `OK` on the unix socket.
fn docker_ping(socket: &Path) -> bool {
    let Ok(mut s) = UnixStream::connect(socket) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.0 200") && answer.ends_with("OK")
}

/// Empties and stops every Docker engine of the fleet directory `dir` that still runs (its
/// `docker.pid` names a live dockerd of that directory): `docker rm -f` of all its containers,
/// then SIGTERM and a wait of at most [`DOCKER_STOP_TIMEOUT`]. All engines side by side. What
/// is left (an engine that does not stop, containers of an engine that was killed) the caller
/// kills.
fn stop_docker_engines(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir.join("docker")) else {
        return;
    };
    let engines: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("daemon.json").exists())
        .collect();
    std::thread::scope(|s| {
        for engine in &engines {
            s.spawn(move || stop_docker_engine(engine));
        }
    });
}

fn stop_docker_engine(engine: &Path) {
    let Some(pid) = fs::read_to_string(engine.join("docker.pid"))
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
    else {
        return;
    };
    // The pid file of a killed dockerd may name another process by now.
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let mine = format!("{}/", engine.display());
    if process_gone(pid) || !String::from_utf8_lossy(&cmdline).contains(&mine) {
        return;
    }
    let host = format!("unix://{}/docker.sock", engine.display());
    let docker = |args: &[&str]| {
        Command::new("/usr/bin/timeout")
            .arg("30")
            .arg(docker_bin())
            .args(args)
            .env("DOCKER_HOST", &host)
            .env_remove("DOCKER_CONTEXT")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let ids = docker(&["ps", "-a", "-q"]);
    let ids: Vec<&str> = ids.split_whitespace().collect();
    if !ids.is_empty() {
        docker(&[&["rm", "-f", "-v"][..], &ids].concat());
    }
    // SAFETY: kill(2) on the dockerd of this fleet directory (checked above).
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + DOCKER_STOP_TIMEOUT;
    while !process_gone(pid) && Instant::now() < deadline {
        sleep(Duration::from_millis(20));
    }
}

/// The sockets of the containerd shims of the fleet directory's containers, which a killed shim
/// (or one whose containerd was stopped under it) leaves behind: containerd names each
/// `/run/containerd/s/<sha256 of "<containerd address>/<namespace>/<container id>">`, whatever
/// its own root.
fn shim_sockets(dir: &Path) -> Vec<PathBuf> {
    use sha2::{Digest, Sha256};
    let mut sockets = Vec::new();
    let Ok(engines) = fs::read_dir(dir.join("docker")) else {
        return sockets;
    };
    for engine in engines.flatten().map(|e| e.path()) {
        let address = engine.join("x").join("containerd").join("containerd.sock");
        let Ok(containers) = fs::read_dir(engine.join("data").join("containers")) else {
            continue;
        };
        for id in containers.flatten().map(|e| e.file_name()) {
            let key = format!("{}/moby/{}", address.display(), id.to_string_lossy());
            let name = hex::encode(Sha256::digest(key.as_bytes()));
            sockets.push(Path::new("/run/containerd/s").join(name));
        }
    }
    sockets
}

/// True when `pid` is not running: no such process, or a zombie.
fn process_gone(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_none_or(|(_, rest)| rest.starts_with('Z')),
    }
}

/// Pids (zombies excluded) in the cgroup `/<name>/` or below it, in any hierarchy.
fn pids_in_cgroup(name: &str) -> Vec<i32> {
    let needle = format!(":/{name}/");
    let mut pids = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return pids;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cgroups) = fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
            continue;
        };
        if cgroups.lines().any(|l| l.contains(&needle)) && !process_gone(pid) {
            pids.push(pid);
        }
    }
    pids
}

/// Removes the (empty) cgroup directories `<hierarchy>/<name>` and below, in every hierarchy.
fn remove_cgroups(name: &str) {
    fn remove_tree(dir: &Path) -> bool {
        if let Ok(entries) = fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    remove_tree(&e.path());
                }
            }
        }
        fs::remove_dir(dir).is_ok() || !dir.exists()
    }
    let root = Path::new("/sys/fs/cgroup");
    let mut tops = vec![root.join(name)];
    if let Ok(entries) = fs::read_dir(root) {
        tops.extend(entries.flatten().map(|e| e.path().join(name)));
    }
    for top in tops.iter().filter(|t| t.exists()) {
        // A cgroup whose last process just died may refuse rmdir for a moment.
        let deadline = Instant::now() + Duration::from_secs(2);
        while !remove_tree(top) && Instant::now() < deadline {
            sleep(Duration::from_millis(20));
        }
    }
}

/// Mount points at or under `dir` in this process's mount namespace (the machine's), deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mountinfo(m)))
        .filter(|m| m.starts_with(dir))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
    mounts.dedup();
    mounts
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(n) = u8::from_str_radix(digits, 8) {
                out.push(n);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Lazily unmounts (`umount -l`) everything mounted at or under `dir` (dockerd's bind mount of its
/// data root, fuse-overlayfs layers, containers' netns files), deepest first.
fn unmount_under(dir: &Path) {
    for _ in 0..5 {
        let mounts = mounts_under(dir);
        if mounts.is_empty() {
            return;
        }
        for m in mounts {
            let Ok(path) = std::ffi::CString::new(m.as_os_str().as_encoded_bytes()) else {
                continue;
            };
            // SAFETY: umount2(2) with a valid NUL-terminated path.
            unsafe {
                libc::umount2(path.as_ptr(), libc::MNT_DETACH);
            }
        }
    }
}

fn kill9(pid: i32) {
    if pid > 1 {
        // SAFETY: plain kill(2) on a pid we found in our namespaces / matching our directory.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}
