//! The HAProxy balancer driver ([`Haproxy`], a [`Balancer`]). kube-free owns one config file on the
//! balancer host, rendered here from the desired state: per environment and app a frontend
//! (`listen`) and a backend with one server per host and slot. Weights, drain and maintenance change
//! only through the runtime API (admin socket, reached through the transport); a structural change
//! rewrites the file, checks it with `haproxy -c`, saves the runtime state of every server (so it
//! survives) and runs the reload command. HAProxy's answers (`show stat`, `show servers state`) are
//! translated here into the neutral [`Server`]; nothing outside this file reads them.

use super::files::write_readable_file_cmd;
use super::{run_ok, Balancer, BalancerError, Change, Cmd, Transport, TransportError};
use crate::desired::DesiredState;
use crate::names::{backend_name, server_name};
use crate::observed::{Admin, BalancerState, Check, Server, ServerCounters, Servers};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TIMEOUT: Duration = Duration::from_secs(20);

/// Where HAProxy keeps the saved runtime state of a backend, on the balancer host.
pub fn state_file(state_dir: &str, backend: &str) -> String {
    format!(
        "{}/haproxy/{backend}.state",
        state_dir.trim_end_matches('/')
    )
}

/// The config file for `balancer`: every environment it serves, in name order. Servers start in
/// maintenance with weight 0; their runtime state is restored from the saved state file on reload.
///
/// A server that stops answering loses only what was already sent to it: a connection attempt to
/// it gives up after `timeout connect 1s` (a LAN handshake takes well under a millisecond; 1 s is
/// Linux's first SYN retransmit) and the request is sent to another server at once (`option
/// redispatch 1`, `retry-on conn-failure`), and its checks take it out. Not `observe layer4 …
/// on-error mark-down`: when every server with weight dies at once (a version that crashes in its
/// bake), it answers 503 at once where the retries' turn-around would have kept requests until the
/// traffic is taken back. Not `on-marked-down shutdown-sessions`: it also cuts the requests of a
/// server put in maintenance, which a drain does when its time is up (docs/operations.md).
pub fn render_config(desired: &DesiredState, balancer: &str) -> String {
    let state_dir = desired
        .balancers
        .get(balancer)
        .and_then(|b| desired.hosts.get(&b.host))
        .map_or("/var/lib/kube-free", |h| h.state_dir.as_str());
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Managed by kube-free from the desired state; changes here are overwritten."
    );
    let _ = writeln!(
        out,
        "# Weights and server states change at runtime, through the admin socket.\n"
    );
    let _ = writeln!(
        out,
        "defaults kube-free\n    mode http\n    option idle-close-on-response\n    option redispatch 1\n    retries 3\n    retry-on conn-failure\n    timeout connect 1s\n    timeout client 60s\n    timeout server 60s\n    timeout http-keep-alive 10s\n    load-server-state-from-file local"
    );
    for env in desired.environments_of(balancer) {
        for (app_name, d) in &env.apps {
            let Some(app) = desired.apps.get(app_name) else {
                continue;
            };
            let name = backend_name(&env.name, app_name);
            let _ = writeln!(
                out,
                "\nfrontend {name}\n    bind {}\n    default_backend {name}",
                d.listen
            );
            let _ = writeln!(
                out,
                "\nbackend {name}\n    balance roundrobin\n    option httpchk GET {}\n    http-check expect rstatus ^2[0-9][0-9]$\n    server-state-file-name {}\n    default-server check inter {}ms fall 2 rise 1 weight 0 disabled",
                app.probe.path,
                state_file(state_dir, &name),
                app.probe.interval.as_millis().max(100),
            );
            for host in &env.hosts {
                for slot in &d.slots {
                    let _ = writeln!(
                        out,
                        "    server {} {}:{}",
                        server_name(host, &slot.name),
                        desired.host_address(host),
                        slot.port
                    );
                }
            }
        }
    }
    out
}

fn csv_index(header: &str) -> BTreeMap<&str, usize> {
    header
        .trim_start_matches("# ")
        .split(',')
        .enumerate()
        .map(|(i, n)| (n, i))
        .collect()
}

/// The verdict of HAProxy's own health check: `check_status` is the result of the last check
/// (`L7OK` when it reached the app and got a 2xx; `show stat` prefixes it with "* " while the next
/// check runs), and a status in transition ("UP 1/2": a check failed, on its way down) has not
/// passed.
fn check_verdict(status: &str, check_status: &str) -> Check {
    let last = check_status.trim_start_matches("* ");
    if last.is_empty() {
        Check::None
    } else if last.starts_with("L7OK") && !status.contains('/') {
        Check::Passed
    } else {
        Check::Failed
    }
}

/// Parses `show stat` and `show servers state` into one neutral view per server.
pub fn parse_servers(show_stat: &str, servers_state: &str) -> Servers {
    // show servers state: "be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state ..."
    let mut admin_bits: BTreeMap<(String, String), (u32, u32)> = BTreeMap::new();
    for line in servers_state.lines().filter(|l| !l.starts_with('#')) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() > 6 {
            let op = f[5].parse().unwrap_or(0);
            let admin = f[6].parse().unwrap_or(0);
            admin_bits.insert((f[1].to_owned(), f[3].to_owned()), (op, admin));
        }
    }
    let mut lines = show_stat.lines();
    let Some(header) = lines.next() else {
        return Servers::new();
    };
    let idx = csv_index(header);
    let mut servers = Servers::new();
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        let get = |name: &str| idx.get(name).and_then(|&i| f.get(i)).copied().unwrap_or("");
        let num = |name: &str| get(name).parse::<u64>().unwrap_or(0);
        let (backend, server) = (get("pxname"), get("svname"));
        if backend.is_empty() || server == "FRONTEND" || server == "BACKEND" {
            continue;
        }
        let status = get("status").to_owned();
        let (op, bits) = admin_bits
            .get(&(backend.to_owned(), server.to_owned()))
            .copied()
            .unwrap_or((0, 0));
        let admin = if status.starts_with("MAINT") {
            Admin::Maint
        } else if bits & 0x08 != 0 {
            Admin::Drain
        } else {
            Admin::Ready
        };
        let up = op == 2 && !status.starts_with("MAINT");
        servers.insert(
            (backend.to_owned(), server.to_owned()),
            Server {
                admin,
                up,
                check: check_verdict(&status, get("check_status")),
                weight: num("weight") as u32,
                sessions: num("scur"),
                counters: ServerCounters {
                    responses: [
                        "hrsp_1xx",
                        "hrsp_2xx",
                        "hrsp_3xx",
                        "hrsp_4xx",
                        "hrsp_5xx",
                        "hrsp_other",
                    ]
                    .map(num),
                    connection_errors: num("econ"),
                    response_errors: num("eresp"),
                },
                label: status,
            },
        );
    }
    servers
}

/// The runtime API command of one change.
pub fn change_command(change: &Change) -> String {
    match change {
        Change::Weight((backend, server), weight) => {
            format!("set server {backend}/{server} weight {weight}")
        }
        Change::State((backend, server), admin) => {
            let state = match admin {
                Admin::Ready => "ready",
                Admin::Drain => "drain",
                Admin::Maint => "maint",
            };
            format!("set server {backend}/{server} state {state}")
        }
    }
}

/// The HAProxy driver of one balancer of the desired state: its host's transport and the paths and
/// config rendered from the desired state.
pub struct Haproxy {
    name: String,
    transport: Arc<dyn Transport>,
    admin_socket: String,
    config_file: String,
    reload_command: Vec<String>,
    state_dir: String,
    /// The config file the desired state renders.
    config: String,
    /// Backends of that config: a reload is done when a new worker serves every one.
    backends: Vec<String>,
    /// One save of the server state at a time (parallel steps change one backend each).
    save_lock: tokio::sync::Mutex<()>,
}

impl Haproxy {
    pub fn new(desired: &DesiredState, name: &str, transport: Arc<dyn Transport>) -> Haproxy {
        let b = &desired.balancers[name];
        Haproxy {
            name: name.to_owned(),
            transport,
            admin_socket: b.admin_socket.clone(),
            config_file: b.config_file.clone(),
            reload_command: b.reload_command.clone(),
            state_dir: desired.state_dir(&b.host).to_owned(),
            config: render_config(desired, name),
            backends: desired.backends_of(name),
            save_lock: tokio::sync::Mutex::new(()),
        }
    }

    fn t(&self) -> &dyn Transport {
        self.transport.as_ref()
    }

    /// Sends runtime API commands (joined with `;`, one connection) and returns the answer. When
    /// every command is a `set`, any answer is HAProxy's complaint and an error.
    async fn runtime(&self, commands: &[String]) -> Result<String, BalancerError> {
        let io = |what: &str| {
            let host = self.t().host().to_owned();
            let what = format!("{what} {}", self.admin_socket);
            move |source| TransportError::Io { host, what, source }
        };
        let line = commands.join("; ");
        let changes = commands.iter().any(|c| c.starts_with("set "));
        tracing::debug!(host = self.t().host(), changes, cmd = %line, "runtime API");
        let work = async {
            // A change holds what its host's fence holds (the lease's lock) while it is sent.
            let (mut stream, _held) = if changes {
                self.t().connect_unix_for_change(&self.admin_socket).await?
            } else {
                (self.t().connect_unix(&self.admin_socket).await?, None)
            };
            stream
                .write_all(format!("{line}\n").as_bytes())
                .await
                .map_err(io("cannot write to"))?;
            stream.shutdown().await.map_err(io("cannot write to"))?;
            let mut answer = String::new();
            stream
                .read_to_string(&mut answer)
                .await
                .map_err(io("cannot read from"))?;
            Ok::<_, TransportError>(answer)
        };
        let answer =
            tokio::time::timeout(TIMEOUT, work)
                .await
                .map_err(|_| TransportError::Timeout {
                    host: self.t().host().to_owned(),
                    cmd: format!("runtime API: {line}"),
                    timeout: TIMEOUT,
                })??;
        // Set commands answer nothing on success; anything else is HAProxy's complaint.
        let complaint = answer.lines().map(str::trim).find(|l| !l.is_empty());
        if commands.iter().all(|c| c.starts_with("set ")) {
            if let Some(c) = complaint {
                return Err(BalancerError::Refused {
                    balancer: self.name.clone(),
                    host: self.t().host().to_owned(),
                    command: line,
                    answer: c.to_owned(),
                });
            }
        }
        Ok(answer)
    }

    /// The config file as it is on the balancer host (`None` if there is none).
    async fn current_config(&self) -> Result<Option<String>, TransportError> {
        let out = self
            .t()
            .run(&Cmd::read(["cat", &self.config_file]), TIMEOUT)
            .await?;
        Ok(out.success().then(|| out.stdout_text()))
    }

    /// Runs the reload command until a new worker serves every backend.
    async fn reload(&self) -> Result<(), BalancerError> {
        // HAProxy drops a reload signal that arrives while it is starting or re-executing itself;
        // a second reload is harmless, so one is sent when the first shows no effect.
        for wait in [Duration::from_secs(10), Duration::from_secs(20)] {
            let before = self.worker_pid().await;
            run_ok(
                self.t(),
                &Cmd::change(self.reload_command.iter().cloned()),
                TIMEOUT,
            )
            .await?;
            if self.wait_for_reload(before, wait).await {
                return Ok(());
            }
            tracing::warn!(
                host = self.t().host(),
                "HAProxy did not load the new config yet; reloading again"
            );
        }
        Err(BalancerError::Reload {
            balancer: self.name.clone(),
            host: self.t().host().to_owned(),
            message: format!(
                "`{}`: HAProxy did not serve the new backends after two reloads (30 s); check its log",
                self.reload_command.join(" ")
            ),
        })
    }

    /// Pid of the worker answering on the admin socket (`show info`).
    async fn worker_pid(&self) -> Option<u32> {
        let info = self.runtime(&["show info".into()]).await.ok()?;
        info.lines()
            .find_map(|l| l.strip_prefix("Pid: "))
            .and_then(|p| p.trim().parse().ok())
    }

    /// Whether, within `limit`, a new worker (other than `before`) answers on the admin socket and
    /// serves every backend of the config.
    async fn wait_for_reload(&self, before: Option<u32>, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let new_worker = match (before, self.worker_pid().await) {
                (Some(old), Some(now)) => now != old,
                (None, Some(_)) => true,
                (_, None) => false,
            };
            let serving = self
                .runtime(&["show backend".into()])
                .await
                .unwrap_or_default();
            if new_worker
                && self
                    .backends
                    .iter()
                    .all(|b| serving.lines().any(|l| l.trim() == b))
            {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Saves a backend's server state, the caller holding `save_lock`.
    async fn save_state_locked(&self, backend: &str) -> Result<(), BalancerError> {
        let state = self
            .runtime(&[format!("show servers state {backend}")])
            .await?;
        run_ok(
            self.t(),
            &write_readable_file_cmd(&state_file(&self.state_dir, backend), state.as_bytes()),
            TIMEOUT,
        )
        .await?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl Balancer for Haproxy {
    fn name(&self) -> &str {
        &self.name
    }

    fn host(&self) -> &str {
        self.t().host()
    }

    async fn observe(&self) -> Result<BalancerState, BalancerError> {
        Ok(BalancerState {
            config: self.current_config().await?,
            servers: self.servers().await?,
        })
    }

    async fn servers(&self) -> Result<Servers, BalancerError> {
        let stat = self.runtime(&["show stat".into()]).await?;
        let state = self.runtime(&["show servers state".into()]).await?;
        // Anything else (the master CLI, an error) must not read as "no servers".
        let unexpected = |command: &'static str, answer: &str| BalancerError::Unexpected {
            balancer: self.name.clone(),
            host: self.t().host().to_owned(),
            command,
            socket: self.admin_socket.clone(),
            answer: answer.lines().next().unwrap_or("").to_owned(),
        };
        if !stat.starts_with("# pxname,svname,") {
            return Err(unexpected("show stat", &stat));
        }
        if !state
            .lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("# be_id be_name"))
        {
            return Err(unexpected("show servers state", &state));
        }
        Ok(parse_servers(&stat, &state))
    }

    async fn apply(&self, changes: &[Change]) -> Result<(), BalancerError> {
        if changes.is_empty() {
            return Ok(());
        }
        let commands: Vec<String> = changes.iter().map(change_command).collect();
        self.runtime(&commands).await.map(|_| ())
    }

    fn rendered_config(&self) -> &str {
        &self.config
    }

    /// Writes the config: checks it, saves every backend's runtime state, installs it, reloads and
    /// waits until HAProxy serves every backend of it.
    async fn apply_config(&self) -> Result<(), BalancerError> {
        let candidate = format!("{}.kube-free-new", self.config_file);
        run_ok(
            self.t(),
            &write_readable_file_cmd(&candidate, self.config.as_bytes()),
            TIMEOUT,
        )
        .await?;
        run_ok(
            self.t(),
            &Cmd::read(["haproxy", "-c", "-q", "-f", &candidate]),
            TIMEOUT,
        )
        .await?;
        // Without the running state saved, the reload would restart every server in maintenance.
        let running = self.runtime(&["show backend".into()]).await?;
        {
            let _one_at_a_time = self.save_lock.lock().await;
            for backend in running
                .lines()
                .map(str::trim)
                .filter(|b| b.starts_with("kf_"))
            {
                self.save_state_locked(backend).await?;
            }
        }
        let previous = self.current_config().await?;
        run_ok(
            self.t(),
            &Cmd::change(["mv", "-f", &candidate, &self.config_file]),
            TIMEOUT,
        )
        .await?;
        let reloaded = self.reload().await;
        if reloaded.is_err() {
            // Put the previous file back, so that the next run sees the config as stale and retries.
            let restore =
                write_readable_file_cmd(&self.config_file, previous.unwrap_or_default().as_bytes());
            if let Err(e) = run_ok(self.t(), &restore, TIMEOUT).await {
                tracing::error!(error = %e, "cannot restore the previous HAProxy config file");
            }
        }
        reloaded
    }

    /// Saves the runtime state of `backend`'s servers (weights, maintenance) where HAProxy reads it
    /// on a reload or restart (`server-state-file-name`).
    async fn save_state(&self, backend: &str) -> Result<(), BalancerError> {
        let _one_at_a_time = self.save_lock.lock().await;
        self.save_state_locked(backend).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,tracked,type,rate,rate_lim,rate_max,check_status,check_code,check_duration,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other,hanafail,req_rate,req_rate_max,req_tot,\n\
kf_p_api,FRONTEND,,,0,0,262,0,0,0,0,0,0,,,,,OPEN,,,,,,,,,1,2,0,,,,0,0,0,0,,,,0,0,0,0,0,0,,0,0,0,\n\
kf_p_api,web-1_blue,0,0,3,5,,9,0,0,,0,,0,0,0,0,UP,100,1,0,0,0,5,0,,1,3,1,,9,,2,0,,1,L7OK,200,1,0,7,0,0,2,0,,,,9,\n\
kf_p_api,web-1_green,0,0,0,0,,0,0,0,,0,,0,0,0,0,MAINT,0,1,0,0,0,5,0,,1,3,2,,0,,2,0,,0,,,,0,0,0,0,0,0,,,,0,\n\
kf_p_api,BACKEND,0,0,3,5,26,9,0,0,0,0,,0,0,0,0,UP,100,1,0,,0,5,0,,1,3,0,,9,,1,0,,1,,,,0,7,0,0,2,0,,,,9,\n";
    const STATE: &str = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight\n3 kf_p_api 1 web-1_blue 10.0.0.11 2 4 100 1 0\n3 kf_p_api 2 web-1_green 10.0.0.11 0 5 0 1 0\n";

    #[test]
    fn show_stat_and_servers_state_combine() {
        let s = parse_servers(STAT, STATE);
        assert_eq!(s.len(), 2);
        let blue = &s[&("kf_p_api".to_owned(), "web-1_blue".to_owned())];
        assert_eq!(
            (blue.admin, blue.up, blue.weight, blue.sessions),
            (Admin::Ready, true, 100, 3)
        );
        assert_eq!(blue.counters.responses, [0, 7, 0, 0, 2, 0]);
        assert_eq!((blue.counters.requests(), blue.counters.errors()), (9, 2));
        assert_eq!((blue.check, blue.label.as_str()), (Check::Passed, "UP"));
        assert!(blue.checked_up());
        let green = &s[&("kf_p_api".to_owned(), "web-1_green".to_owned())];
        assert_eq!(
            (green.admin, green.up, green.weight, green.check),
            (Admin::Maint, false, 0, Check::None)
        );
    }

    #[test]
    fn the_rendered_config_passes_haproxy_check() {
        let yaml = r#"version: 1
hosts:
  web-1: { address: 192.0.2.11 }
  lb-1: { address: 192.0.2.10 }
balancers:
  edge: { kind: haproxy, host: lb-1 }
apps:
  api:
    runtime: { kind: process, command: "api {port}" }
    slots: { blue: 8000, green: 8001 }
    probe: { path: "/ready/z_~!&()*+,;=:@%-?x=1" }
environments:
  prod:
    balancer: edge
    hosts: [web-1]
    apps:
      api: { version: "1", listen: "127.0.0.1:18999" }
"#;
        let desired =
            crate::desired::load(&crate::desired::MemFiles::default().with("kube-free.yaml", yaml))
                .unwrap();
        let config = render_config(&desired, "edge");
        assert!(
            config.contains("server web-1_blue 192.0.2.11:8000"),
            "{config}"
        );
        assert!(
            config.contains("http-check expect rstatus ^2[0-9][0-9]$"),
            "{config}"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kube-free.cfg");
        std::fs::write(&file, &config).unwrap();
        let out = std::process::Command::new("haproxy")
            .args(["-c", "-q", "-f"])
            .arg(&file)
            .output()
            .expect("haproxy is installed (the README's test command installs it)");
        assert!(
            out.status.success(),
            "haproxy -c: {}\n{config}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn a_dead_server_is_left_quickly_and_a_drained_one_keeps_its_requests() {
        let yaml = r#"version: 1
hosts:
  web-1: { address: 192.0.2.11 }
  lb-1: { address: 192.0.2.10 }
balancers:
  edge: { kind: haproxy, host: lb-1 }
apps:
  api:
    runtime: { kind: process, command: "api {port}" }
    slots: { blue: 8000, green: 8001 }
    probe: { path: /readyz, interval: 2s }
environments:
  prod:
    balancer: edge
    hosts: [web-1]
    apps:
      api: { version: "1", listen: "127.0.0.1:18999" }
"#;
        let desired =
            crate::desired::load(&crate::desired::MemFiles::default().with("kube-free.yaml", yaml))
                .unwrap();
        let config = render_config(&desired, "edge");
        for line in [
            "    option redispatch 1\n",
            "    retries 3\n",
            "    retry-on conn-failure\n",
            "    timeout connect 1s\n",
            "    default-server check inter 2000ms fall 2 rise 1 weight 0 disabled\n",
        ] {
            assert!(config.contains(line), "{line:?} in:\n{config}");
        }
        assert!(!config.contains("shutdown-sessions"), "{config}");
        assert!(!config.contains("observe"), "{config}");
    }

    #[test]
    fn a_check_in_progress_keeps_the_last_result() {
        assert_eq!(check_verdict("UP", "* L7OK"), Check::Passed);
        assert_eq!(check_verdict("UP", "* L4CON"), Check::Failed);
        assert_eq!(check_verdict("UP", "L7OKC"), Check::Passed);
        assert_eq!(check_verdict("DRAIN", "L7OK"), Check::Passed);
        // One failed check of `fall 2`: still up, on its way down.
        assert_eq!(check_verdict("UP 1/2", "L7OK"), Check::Failed);
        assert_eq!(check_verdict("MAINT", ""), Check::None);
    }

    #[test]
    fn runtime_commands_are_exact() {
        let key = ("kf_p_api".to_owned(), "web-1_blue".to_owned());
        assert_eq!(
            change_command(&Change::Weight(key.clone(), 100)),
            "set server kf_p_api/web-1_blue weight 100"
        );
        assert_eq!(
            change_command(&Change::State(key, Admin::Drain)),
            "set server kf_p_api/web-1_blue state drain"
        );
    }
}
