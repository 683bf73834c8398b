//! The HAProxy balancer driver. kube-free owns one config file on the balancer host, rendered here
//! from the desired state: per environment and app a frontend (`listen`) and a backend with one server
//! per host and slot. Weights, drain and maintenance change only through the runtime API (admin socket,
//! reached through the transport); a structural change rewrites the file, checks it with `haproxy -c`,
//! saves the runtime state of every server (so it survives) and runs the reload command.

use super::process::write_file_cmd;
use super::{run_ok, Cmd, Transport, TransportError};
use crate::desired::{DesiredState, Environment, Transport as HostTransport};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Weight of a server that takes its full share.
pub const FULL_WEIGHT: u32 = 100;
const TIMEOUT: Duration = Duration::from_secs(20);

pub fn backend_name(env: &str, app: &str) -> String {
    format!("kf_{env}_{app}")
}

pub fn server_name(host: &str, slot: &str) -> String {
    format!("{host}_{slot}")
}

/// Where HAProxy keeps the saved runtime state of a backend, on the balancer host.
pub fn state_file(state_dir: &str, backend: &str) -> String {
    format!(
        "{}/haproxy/{backend}.state",
        state_dir.trim_end_matches('/')
    )
}

/// Address the balancer uses to reach an app host.
pub fn host_address(desired: &DesiredState, host: &str) -> String {
    match desired.hosts.get(host).map(|h| &h.transport) {
        Some(HostTransport::Ssh { address, .. }) if address.contains(':') => format!("[{address}]"),
        Some(HostTransport::Ssh { address, .. }) => address.clone(),
        _ => "127.0.0.1".to_owned(),
    }
}

/// The config file for `balancer`: every environment it serves, in name order. Servers start in
/// maintenance with weight 0; their runtime state is restored from the saved state file on reload.
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
        "defaults kube-free\n    mode http\n    option idle-close-on-response\n    option redispatch 1\n    retries 3\n    retry-on conn-failure\n    timeout connect 5s\n    timeout client 60s\n    timeout server 60s\n    timeout http-keep-alive 10s\n    load-server-state-from-file local"
    );
    let envs: Vec<&Environment> = desired
        .environments
        .values()
        .filter(|e| e.balancer == balancer)
        .collect();
    for env in envs {
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
                        host_address(desired, host),
                        slot.port
                    );
                }
            }
        }
    }
    out
}

/// Administrative state of a server, as set through the runtime API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Admin {
    Ready,
    Drain,
    Maint,
}

/// One server as HAProxy reports it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ServerStat {
    pub admin: Admin,
    /// HAProxy considers it up (health checks pass, not in maintenance).
    pub up: bool,
    pub weight: u32,
    /// Current sessions.
    pub scur: u64,
    /// `show stat` status text (UP, DOWN, MAINT, DRAIN, ...).
    pub status: String,
    /// Result of HAProxy's own last health check (`L7OK` when it reached the app and got a 2xx).
    pub check_status: String,
    /// Responses by class and totals, for analysis.
    pub hrsp_2xx: u64,
    pub hrsp_5xx: u64,
    pub req_tot: u64,
    /// Every outcome of a request sent to the server: responses of all classes, plus failed
    /// connections and failed responses.
    pub requests: u64,
    /// 5xx responses, failed connections (`econ`) and failed responses (`eresp`).
    pub errors: u64,
}

impl ServerStat {
    /// Ready, UP, and HAProxy's own health check passed: weight may go to it.
    pub fn checked_up(&self) -> bool {
        self.up
            && self.admin == Admin::Ready
            && self.status == "UP"
            // `show stat` prefixes the last result with "* " while the next check is running.
            && self
                .check_status
                .trim_start_matches("* ")
                .starts_with("L7OK")
    }
}

/// (backend, server) → what HAProxy says of it.
pub type Servers = BTreeMap<(String, String), ServerStat>;

fn csv_index(header: &str) -> BTreeMap<&str, usize> {
    header
        .trim_start_matches("# ")
        .split(',')
        .enumerate()
        .map(|(i, n)| (n, i))
        .collect()
}

/// Parses `show stat` and `show servers state` into one view per server.
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
        servers.insert(
            (backend.to_owned(), server.to_owned()),
            ServerStat {
                admin,
                up: op == 2 && !status.starts_with("MAINT"),
                weight: num("weight") as u32,
                scur: num("scur"),
                status,
                check_status: get("check_status").to_owned(),
                hrsp_2xx: num("hrsp_2xx"),
                hrsp_5xx: num("hrsp_5xx"),
                req_tot: num("req_tot"),
                requests: [
                    "hrsp_1xx",
                    "hrsp_2xx",
                    "hrsp_3xx",
                    "hrsp_4xx",
                    "hrsp_5xx",
                    "hrsp_other",
                    "econ",
                    "eresp",
                ]
                .iter()
                .map(|k| num(k))
                .sum(),
                errors: num("hrsp_5xx") + num("econ") + num("eresp"),
            },
        );
    }
    servers
}

pub fn set_weight(backend: &str, server: &str, weight: u32) -> String {
    format!("set server {backend}/{server} weight {weight}")
}

pub fn set_state(backend: &str, server: &str, admin: Admin) -> String {
    let state = match admin {
        Admin::Ready => "ready",
        Admin::Drain => "drain",
        Admin::Maint => "maint",
    };
    format!("set server {backend}/{server} state {state}")
}

/// The balancer as kube-free drives it: its host's transport and the paths from the desired state.
pub struct Haproxy<'a> {
    pub transport: &'a dyn Transport,
    pub admin_socket: &'a str,
    pub config_file: &'a str,
    pub reload_command: &'a [String],
    pub state_dir: &'a str,
}

impl Haproxy<'_> {
    /// Sends runtime API commands (joined with `;`, one connection) and returns the answer.
    pub async fn runtime(&self, commands: &[String]) -> Result<String, TransportError> {
        let io = |what: &str| {
            let host = self.transport.host().to_owned();
            let what = format!("{what} {}", self.admin_socket);
            move |source| TransportError::Io { host, what, source }
        };
        let line = commands.join("; ");
        let changes = commands.iter().any(|c| c.starts_with("set "));
        tracing::debug!(host = self.transport.host(), changes, cmd = %line, "runtime API");
        let work = async {
            let mut stream = self.transport.connect_unix(self.admin_socket).await?;
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
                    host: self.transport.host().to_owned(),
                    cmd: format!("runtime API: {line}"),
                    timeout: TIMEOUT,
                })??;
        // Set commands answer nothing on success; anything else is HAProxy's complaint.
        let complaint = answer.lines().map(str::trim).find(|l| !l.is_empty());
        if commands.iter().all(|c| c.starts_with("set ")) {
            if let Some(c) = complaint {
                return Err(TransportError::Failed {
                    host: self.transport.host().to_owned(),
                    cmd: format!("runtime API: {line}"),
                    status: None,
                    stderr: c.to_owned(),
                });
            }
        }
        Ok(answer)
    }

    /// Every server's state.
    pub async fn servers(&self) -> Result<Servers, TransportError> {
        let stat = self.runtime(&["show stat".into()]).await?;
        let state = self.runtime(&["show servers state".into()]).await?;
        // Anything else (the master CLI, an error) must not read as "no servers".
        let unexpected = |what: &str, answer: &str| TransportError::Failed {
            host: self.transport.host().to_owned(),
            cmd: format!("runtime API: {what} on {}", self.admin_socket),
            status: None,
            stderr: format!(
                "unexpected answer: {:?}",
                answer.lines().next().unwrap_or("")
            ),
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

    /// The config file as it is on the balancer host (`None` if there is none).
    pub async fn current_config(&self) -> Result<Option<String>, TransportError> {
        let out = self
            .transport
            .run(&Cmd::read(["cat", self.config_file]), TIMEOUT)
            .await?;
        Ok(out.success().then(|| out.stdout_text()))
    }

    /// Writes a new config: checks it, saves every backend's runtime state, installs it, reloads and
    /// waits until HAProxy serves every backend of it.
    pub async fn apply_config(
        &self,
        config: &str,
        backends: &[String],
    ) -> Result<(), TransportError> {
        let candidate = format!("{}.kube-free-new", self.config_file);
        run_ok(
            self.transport,
            &write_file_cmd(&candidate, config.as_bytes()),
            TIMEOUT,
        )
        .await?;
        run_ok(
            self.transport,
            &Cmd::read(["haproxy", "-c", "-q", "-f", &candidate]),
            TIMEOUT,
        )
        .await?;
        // Without the running state saved, the reload would restart every server in maintenance.
        let running = self.runtime(&["show backend".into()]).await?;
        for backend in running
            .lines()
            .map(str::trim)
            .filter(|b| b.starts_with("kf_"))
        {
            self.save_state(backend).await?;
        }
        let previous = self.current_config().await?;
        run_ok(
            self.transport,
            &Cmd::change(["mv", "-f", &candidate, self.config_file]),
            TIMEOUT,
        )
        .await?;
        let reloaded = self.reload(backends).await;
        if reloaded.is_err() {
            // Put the previous file back, so that the next run sees the config as stale and retries.
            let restore = write_file_cmd(self.config_file, previous.unwrap_or_default().as_bytes());
            if let Err(e) = run_ok(self.transport, &restore, TIMEOUT).await {
                tracing::error!(error = %e, "cannot restore the previous HAProxy config file");
            }
        }
        reloaded
    }

    /// Saves the runtime state of `backend`'s servers (weights, maintenance) where HAProxy reads it on
    /// a reload or restart (`server-state-file-name`).
    pub async fn save_state(&self, backend: &str) -> Result<(), TransportError> {
        let state = self
            .runtime(&[format!("show servers state {backend}")])
            .await?;
        run_ok(
            self.transport,
            &write_file_cmd(&state_file(self.state_dir, backend), state.as_bytes()),
            TIMEOUT,
        )
        .await?;
        Ok(())
    }

    /// Runs the reload command until a new worker serves `backends`.
    async fn reload(&self, backends: &[String]) -> Result<(), TransportError> {
        // HAProxy drops a reload signal that arrives while it is starting or re-executing itself;
        // a second reload is harmless, so one is sent when the first shows no effect.
        for wait in [Duration::from_secs(10), Duration::from_secs(20)] {
            let before = self.worker_pid().await;
            run_ok(
                self.transport,
                &Cmd::change(self.reload_command.iter().cloned()),
                TIMEOUT,
            )
            .await?;
            if self.wait_for_reload(before, backends, wait).await {
                return Ok(());
            }
            tracing::warn!(
                host = self.transport.host(),
                "HAProxy did not load the new config yet; reloading again"
            );
        }
        Err(TransportError::Failed {
            host: self.transport.host().to_owned(),
            cmd: self.reload_command.join(" "),
            status: None,
            stderr:
                "HAProxy did not serve the new backends after two reloads (30 s); check its log"
                    .into(),
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
    /// serves every one of `backends`.
    async fn wait_for_reload(
        &self,
        before: Option<u32>,
        backends: &[String],
        limit: Duration,
    ) -> bool {
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
                && backends
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
            (blue.admin, blue.up, blue.weight, blue.scur),
            (Admin::Ready, true, 100, 3)
        );
        assert_eq!((blue.hrsp_2xx, blue.hrsp_5xx, blue.req_tot), (7, 2, 9));
        assert_eq!(blue.check_status, "L7OK");
        let green = &s[&("kf_p_api".to_owned(), "web-1_green".to_owned())];
        assert_eq!(
            (green.admin, green.up, green.weight),
            (Admin::Maint, false, 0)
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
    fn a_check_in_progress_keeps_the_last_result() {
        let mut s = ServerStat {
            admin: Admin::Ready,
            up: true,
            weight: 100,
            scur: 0,
            status: "UP".into(),
            check_status: "* L7OK".into(),
            hrsp_2xx: 0,
            hrsp_5xx: 0,
            req_tot: 0,
            requests: 0,
            errors: 0,
        };
        assert!(s.checked_up());
        s.check_status = "* L4CON".into();
        assert!(!s.checked_up());
        s.check_status = "L7OKC".into();
        assert!(s.checked_up());
    }

    #[test]
    fn runtime_commands_are_exact() {
        assert_eq!(
            set_weight("kf_p_api", "web-1_blue", 100),
            "set server kf_p_api/web-1_blue weight 100"
        );
        assert_eq!(
            set_state("kf_p_api", "web-1_blue", Admin::Drain),
            "set server kf_p_api/web-1_blue state drain"
        );
    }
}
