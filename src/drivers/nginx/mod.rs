//! The nginx balancer driver ([`Nginx`], a [`Balancer`]), in two modes. `dynamic` (the default):
//! kube-free owns one include file ([`dynamic`]) whose Lua picks each request's peer by weight from
//! a shared dict, checks health in a timer, counts outcomes, and serves an admin endpoint on a unix
//! socket that only kube-free reaches; weights and states change there in one batch, without a
//! reload. `reload` (plain nginx, [`reload`]): every change rewrites the upstreams file, tests the
//! config and reloads. In both, a structural change (frontends, servers) writes the files, runs the
//! test command (the previous files back when it fails), reloads and waits until the endpoint
//! answers with the new config's generation. nginx's answers become neutral [`Server`]s here;
//! nothing outside this module reads them.

pub mod dynamic;
pub mod reload;

use super::files::{read_file_cmd, remove_cmd, write_readable_file_cmd};
use super::{run_ok, Balancer, BalancerError, Change, Cmd, Transport, TransportError};
use crate::desired::{DesiredState, NginxMode};
use crate::names::{backend_name, server_name, ServerKey};
use crate::observed::{Admin, BalancerState, Check, Server, ServerCounters, Servers};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TIMEOUT: Duration = Duration::from_secs(20);

/// Where Debian's `libnginx-mod-http-lua` and `libnginx-mod-http-ndk` put their modules.
pub const DEBIAN_MODULES: &str = "/usr/share/nginx/modules";

/// The lines nginx.conf needs for `balancer` (`kube-free nginx-snippet`), with comments.
pub fn snippet(balancer: &crate::desired::Balancer, state_dir: &str) -> String {
    let mut out = format!(
        "# nginx balancer {:?} on host {:?} (mode: {})\n",
        balancer.name,
        balancer.host,
        match balancer.mode {
            NginxMode::Dynamic => "dynamic",
            NginxMode::Reload => "reload",
        }
    );
    if balancer.mode == NginxMode::Dynamic {
        let dir = balancer
            .lua_module
            .as_deref()
            .and_then(|m| m.rsplit_once('/'))
            .map_or(DEBIAN_MODULES, |(d, _)| d);
        let lua = balancer
            .lua_module
            .clone()
            .unwrap_or_else(|| format!("{dir}/ngx_http_lua_module.so"));
        out.push_str(&format!(
            "#\n# 1. In the main context of nginx.conf (top level, before `events`), unless the\n#    distribution loads them already (Debian's libnginx-mod-http-lua does, through\n#    /etc/nginx/modules-enabled/); the NDK module first:\nload_module {dir}/ndk_http_module.so;\nload_module {lua};\n"
        ));
    }
    let n = if balancer.mode == NginxMode::Dynamic {
        "2"
    } else {
        "1"
    };
    out.push_str(&format!(
        "#\n# {n}. Inside the http {{ }} block of nginx.conf (Debian's nginx.conf includes\n#    /etc/nginx/conf.d/*.conf already):\ninclude {};\n",
        balancer.config_file
    ));
    let mut owned = vec![balancer.config_file.clone()];
    if balancer.mode == NginxMode::Reload {
        owned.push(reload::Paths::new(state_dir, &balancer.name).upstreams);
    }
    out.push_str("#\n# kube-free writes (do not edit them):\n");
    for file in owned {
        out.push_str(&format!("#    {file}\n"));
    }
    out.push_str(&format!(
        "# and checks nginx's config with `{}` before every reload.\n",
        balancer.test_command.join(" ")
    ));
    out.push_str(&match balancer.mode {
        NginxMode::Dynamic => format!(
            "# Its endpoint listens on unix:{} (directory mode 0700).\n",
            balancer.admin_socket
        ),
        NginxMode::Reload => format!(
            "# nginx answers the generation of the loaded files on the first frontend, to requests\n#    from this host with `Host: {}`.\n",
            reload::GENERATION_HOST
        ),
    });
    out
}

/// One server of a backend and where nginx reaches it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub backend: String,
    pub server: String,
    /// `ADDRESS:PORT` as nginx's `server` and `$upstream_addr` write it.
    pub address: String,
}

impl Peer {
    pub fn new(backend: &str, server: &str, address: &str) -> Peer {
        Peer {
            backend: backend.to_owned(),
            server: server.to_owned(),
            address: address.to_owned(),
        }
    }
}

/// Every server `balancer` serves, in render order (environments, apps, hosts, slots).
pub fn peers(desired: &DesiredState, balancer: &str) -> Vec<Peer> {
    let mut out = Vec::new();
    for env in desired.environments_of(balancer) {
        for (app, d) in &env.apps {
            for host in &env.hosts {
                for slot in &d.slots {
                    out.push(Peer {
                        backend: backend_name(&env.name, app),
                        server: server_name(host, &slot.name),
                        address: format!("{}:{}", desired.host_address(host), slot.port),
                    });
                }
            }
        }
    }
    out
}

/// A server's weight and admin state as kube-free sets them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub admin: Admin,
    pub weight: u32,
}

impl Default for Entry {
    /// A server never set: out of the balancer.
    fn default() -> Entry {
        Entry {
            admin: Admin::Maint,
            weight: 0,
        }
    }
}

fn admin_word(admin: Admin) -> &'static str {
    match admin {
        Admin::Ready => "ready",
        Admin::Drain => "drain",
        Admin::Maint => "maint",
    }
}

fn parse_admin(word: &str) -> Option<Admin> {
    match word {
        "ready" => Some(Admin::Ready),
        "drain" => Some(Admin::Drain),
        "maint" => Some(Admin::Maint),
        _ => None,
    }
}

/// One change as a line of the apply format (`weight B S N`, `state B S ready|drain|maint`): the
/// body of the dynamic endpoint's `POST /kube-free/apply` and of the state file.
pub fn change_line(change: &Change) -> String {
    match change {
        Change::Weight((b, s), w) => format!("weight {b} {s} {w}"),
        Change::State((b, s), a) => format!("state {b} {s} {}", admin_word(*a)),
    }
}

/// Applies one change to a state map.
fn apply_change(state: &mut BTreeMap<ServerKey, Entry>, change: &Change) {
    match change {
        Change::Weight(k, w) => state.entry(k.clone()).or_default().weight = *w,
        Change::State(k, a) => state.entry(k.clone()).or_default().admin = *a,
    }
}

/// Reads the apply format (unknown lines are skipped).
pub fn parse_state(text: &str) -> BTreeMap<ServerKey, Entry> {
    let mut state = BTreeMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let change = match f.as_slice() {
            ["weight", b, s, w] => w
                .parse()
                .ok()
                .map(|w| Change::Weight((b.to_string(), s.to_string()), w)),
            ["state", b, s, a] => {
                parse_admin(a).map(|a| Change::State((b.to_string(), s.to_string()), a))
            }
            _ => None,
        };
        if let Some(c) = change {
            apply_change(&mut state, &c);
        }
    }
    state
}

/// Writes a state map in the apply format.
pub fn state_text<'a>(entries: impl IntoIterator<Item = (&'a ServerKey, Entry)>) -> String {
    let mut out = String::new();
    for ((b, s), e) in entries {
        out.push_str(&change_line(&Change::Weight(
            (b.clone(), s.clone()),
            e.weight,
        )));
        out.push('\n');
        out.push_str(&change_line(&Change::State(
            (b.clone(), s.clone()),
            e.admin,
        )));
        out.push('\n');
    }
    out
}

/// The first `listen` of an include file (reload mode: the first frontend's).
fn first_listen(config: &str) -> Option<&str> {
    config
        .lines()
        .find_map(|l| l.trim().strip_prefix("listen "))
        .map(|l| l.trim_end_matches(';'))
}

/// The admin socket an installed dynamic-mode file listens on.
pub fn installed_socket(config: &str) -> Option<&str> {
    config
        .lines()
        .find_map(|l| l.trim().strip_prefix("listen unix:"))
        .map(|l| l.trim_end_matches(';').trim())
}

/// Makes `dir` (mode 0700 when it is new) and prints its mode.
pub fn socket_dir_cmd(dir: &str) -> Cmd {
    Cmd::change([
        "sh",
        "-c",
        r#"mkdir -p -m 0700 -- "$1" && stat -c %a -- "$1""#,
        "kube-free-socket-dir",
        dir,
    ])
}

/// The generation of a rendered text: the first 16 hex digits of its SHA-256.
pub fn generation(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))[..16].to_owned()
}

/// The generation an answer of the endpoint names (its `generation X` line).
pub fn generation_of_text(answer: &str) -> Option<&str> {
    answer
        .lines()
        .find_map(|l| l.strip_prefix("generation "))
        .map(str::trim)
}

/// The servers in an answer of the dynamic endpoint (`GET /kube-free/servers`, also the answer to
/// an apply): `server B S ADMIN WEIGHT up|down passed|failed|none INFLIGHT N1 N2 N3 N4 N5 NX CE RE
/// LABEL…`. `None` when a line does not read as one.
pub fn parse_dynamic_servers(answer: &str) -> Option<Servers> {
    let mut servers = Servers::new();
    for line in answer.lines().filter(|l| l.starts_with("server ")) {
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() < 16 {
            return None;
        }
        let n = |i: usize| f[i].parse::<u64>().ok();
        let admin = parse_admin(f[3])?;
        let check = match f[6] {
            "passed" => Check::Passed,
            "failed" => Check::Failed,
            "none" => Check::None,
            _ => return None,
        };
        let mut responses = [0; 6];
        for (i, r) in responses.iter_mut().enumerate() {
            *r = n(8 + i)?;
        }
        servers.insert(
            (f[1].to_owned(), f[2].to_owned()),
            Server {
                admin,
                up: f[5] == "up" && admin != Admin::Maint,
                check,
                weight: u32::try_from(n(4)?).ok()?,
                sessions: n(7)?,
                counters: ServerCounters {
                    responses,
                    connection_errors: n(14)?,
                    response_errors: n(15)?,
                },
                label: f[16..].join(" "),
            },
        );
    }
    Some(servers)
}

/// The nginx driver of one balancer of the desired state.
pub struct Nginx {
    name: String,
    transport: Arc<dyn Transport>,
    mode: NginxMode,
    admin_socket: String,
    config_file: String,
    reload_command: Vec<String>,
    test_command: Vec<String>,
    lua_module: Option<String>,
    /// The state file (both modes) and, in reload mode, the upstreams file and the access log.
    paths: reload::Paths,
    /// The include file the desired state renders.
    config: String,
    /// The servers of that config.
    peers: Vec<Peer>,
    /// Reload mode: (backend, server, URL) of each server's health check.
    probes: Vec<(String, String, String)>,
    probe_timeout: f64,
    /// Reload mode: the URL of the generation endpoint (on the first frontend), from the balancer
    /// host; `None` without frontends.
    generation_url: Option<String>,
    /// One change of files and reload at a time (parallel steps change one backend each).
    lock: tokio::sync::Mutex<()>,
}

impl Nginx {
    pub fn new(desired: &DesiredState, name: &str, transport: Arc<dyn Transport>) -> Nginx {
        let b = &desired.balancers[name];
        let paths = reload::Paths::new(desired.state_dir(&b.host), name);
        let peers = peers(desired, name);
        let frontends: Vec<(String, String)> = desired
            .environments_of(name)
            .flat_map(|e| {
                e.apps
                    .iter()
                    .map(|(app, d)| (backend_name(&e.name, app), d.listen.to_string()))
            })
            .collect();
        let config = match b.mode {
            NginxMode::Dynamic => dynamic::render(desired, name),
            NginxMode::Reload => reload::render(&peers, &frontends, &paths),
        };
        let mut probes = Vec::new();
        let mut probe_timeout: f64 = 1.0;
        for env in desired.environments_of(name) {
            for app in env.apps.keys() {
                let probe = &desired.apps[app].probe;
                probe_timeout = probe_timeout.max(probe.timeout.as_secs_f64());
                let backend = backend_name(&env.name, app);
                for p in peers.iter().filter(|p| p.backend == backend) {
                    probes.push((
                        p.backend.clone(),
                        p.server.clone(),
                        format!("http://{}{}", p.address, probe.path),
                    ));
                }
            }
        }
        Nginx {
            name: name.to_owned(),
            transport,
            mode: b.mode,
            admin_socket: b.admin_socket.clone(),
            config_file: b.config_file.clone(),
            reload_command: b.reload_command.clone(),
            test_command: b.test_command.clone(),
            lua_module: b.lua_module.clone(),
            paths,
            config,
            peers,
            probes,
            probe_timeout,
            generation_url: frontends
                .first()
                .map(|(_, listen)| reload::generation_url(listen)),
            lock: tokio::sync::Mutex::new(()),
        }
    }

    fn t(&self) -> &dyn Transport {
        self.transport.as_ref()
    }

    fn error(&self, message: String) -> BalancerError {
        BalancerError::Reload {
            balancer: self.name.clone(),
            host: self.t().host().to_owned(),
            message,
        }
    }

    /// One HTTP/1.0 request to the dynamic endpoint on the admin socket: (status, body).
    async fn http(
        &self,
        method: &str,
        path: &str,
        body: &str,
    ) -> Result<(u16, String), TransportError> {
        self.http_at(&self.admin_socket, method, path, body).await
    }

    /// [`Nginx::http`] on `socket`.
    async fn http_at(
        &self,
        socket: &str,
        method: &str,
        path: &str,
        body: &str,
    ) -> Result<(u16, String), TransportError> {
        let io = |what: &str| {
            let host = self.t().host().to_owned();
            let what = format!("{what} {socket}");
            move |source| TransportError::Io { host, what, source }
        };
        let request = format!(
            "{method} {path} HTTP/1.0\r\nHost: kube-free\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let work = async {
            // A change holds what its host's fence holds (the lease's lock) while it is sent.
            let (mut stream, _held) = if method == "GET" {
                (self.t().connect_unix(socket).await?, None)
            } else {
                self.t().connect_unix_for_change(socket).await?
            };
            stream
                .write_all(request.as_bytes())
                .await
                .map_err(io("cannot write to"))?;
            let mut answer = Vec::new();
            stream
                .read_to_end(&mut answer)
                .await
                .map_err(io("cannot read from"))?;
            Ok::<_, TransportError>(String::from_utf8_lossy(&answer).into_owned())
        };
        let answer =
            tokio::time::timeout(TIMEOUT, work)
                .await
                .map_err(|_| TransportError::Timeout {
                    host: self.t().host().to_owned(),
                    cmd: format!("{method} {path} on {socket}"),
                    timeout: TIMEOUT,
                })??;
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        Ok((status, body.to_owned()))
    }

    fn unexpected(&self, command: &'static str, answer: &str) -> BalancerError {
        BalancerError::Unexpected {
            balancer: self.name.clone(),
            host: self.t().host().to_owned(),
            command,
            socket: self.admin_socket.clone(),
            answer: answer.lines().next().unwrap_or("").to_owned(),
        }
    }

    /// The dynamic endpoint's servers, with the generation of the worker that answered.
    async fn dynamic_servers(&self) -> Result<(Option<String>, Servers), BalancerError> {
        self.dynamic_servers_at(&self.admin_socket).await
    }

    /// [`Nginx::dynamic_servers`] on `socket`.
    async fn dynamic_servers_at(
        &self,
        socket: &str,
    ) -> Result<(Option<String>, Servers), BalancerError> {
        let (status, body) = self
            .http_at(socket, "GET", "/kube-free/servers", "")
            .await?;
        match parse_dynamic_servers(&body) {
            Some(servers) if status == 200 && generation_of_text(&body).is_some() => {
                Ok((generation_of_text(&body).map(str::to_owned), servers))
            }
            _ => Err(self.unexpected("GET /kube-free/servers", &body)),
        }
    }

    /// The generation of the config nginx runs now (`None`: the endpoint does not answer).
    async fn running_generation(&self) -> Option<String> {
        match self.mode {
            NginxMode::Dynamic => self.dynamic_servers().await.ok()?.0,
            NginxMode::Reload => {
                let url = self.generation_url.as_deref()?;
                let out = self
                    .t()
                    .run(&reload::generation_cmd(url), TIMEOUT)
                    .await
                    .ok()?;
                generation_of_text(&out.stdout_text()).map(str::to_owned)
            }
        }
    }

    async fn read(&self, path: &str) -> Result<Option<String>, TransportError> {
        let out = self.t().run(&Cmd::read(["cat", path]), TIMEOUT).await?;
        Ok(out.success().then(|| out.stdout_text()))
    }

    /// The include file as it is on the balancer host (`None` if there is none).
    async fn current_config(&self) -> Result<Option<String>, TransportError> {
        self.read(&self.config_file).await
    }

    /// Writes `files`, tests nginx's config, reloads and waits until the endpoint answers with
    /// `generation` (`None`: there is no endpoint to ask, one reload). The previous files go back
    /// when the test or the reload fails.
    async fn install(
        &self,
        files: &[(&str, &str)],
        generation: Option<&str>,
    ) -> Result<(), BalancerError> {
        let mut previous = Vec::new();
        for (path, _) in files {
            previous.push((path.to_string(), self.read(path).await?));
        }
        for (path, content) in files {
            run_ok(
                self.t(),
                &write_readable_file_cmd(path, content.as_bytes()),
                TIMEOUT,
            )
            .await?;
        }
        let tested = self
            .t()
            .run(&Cmd::read(self.test_command.iter().cloned()), TIMEOUT)
            .await;
        let refused = match &tested {
            Ok(out) if out.success() => None,
            Ok(out) => Some(self.test_failure(&out.stderr_text())),
            Err(e) => Some(self.error(format!("`{}`: {e}", self.test_command.join(" ")))),
        };
        if let Some(e) = refused {
            self.restore(&previous).await;
            return Err(e);
        }
        let failure = match self.reload_until(generation).await {
            Ok(true) => return Ok(()),
            Ok(false) => self.error(format!(
                "`{}`: nginx did not load the new config (generation {}) after two reloads (30 s); the previous files are back; check nginx's error log",
                self.reload_command.join(" "),
                generation.unwrap_or("-")
            )),
            Err(e) => e,
        };
        // What nginx runs is not what the files say: put the previous files back and reload them.
        self.restore(&previous).await;
        let _ = run_ok(
            self.t(),
            &Cmd::change(self.reload_command.iter().cloned()),
            TIMEOUT,
        )
        .await;
        Err(failure)
    }

    /// What a failed config test means, in words an operator can act on.
    fn test_failure(&self, stderr: &str) -> BalancerError {
        let lua = ["lua_shared_dict", "_by_lua_block", "lua_socket_log_errors"];
        let hint = if stderr.contains("unknown directive") && lua.iter().any(|d| stderr.contains(d))
        {
            "; this nginx has no Lua module loaded: add the lines `kube-free nginx-snippet` prints to nginx.conf (Debian: apt-get install libnginx-mod-http-lua), or use `mode: reload`"
        } else {
            ""
        };
        self.error(format!(
            "`{}` refused the config kube-free rendered (the previous files are back): {stderr}{hint}",
            self.test_command.join(" ")
        ))
    }

    async fn restore(&self, previous: &[(String, Option<String>)]) {
        for (path, content) in previous {
            let cmd = match content {
                Some(c) => write_readable_file_cmd(path, c.as_bytes()),
                None => remove_cmd(path),
            };
            if let Err(e) = run_ok(self.t(), &cmd, TIMEOUT).await {
                tracing::error!(error = %e, path, "cannot put the previous nginx file back");
            }
        }
    }

    /// Runs the reload command until nginx answers with `generation` (a second reload when the
    /// first shows no effect in 10 s); whether it did.
    async fn reload_until(&self, generation: Option<&str>) -> Result<bool, BalancerError> {
        for wait in [Duration::from_secs(10), Duration::from_secs(20)] {
            run_ok(
                self.t(),
                &Cmd::change(self.reload_command.iter().cloned()),
                TIMEOUT,
            )
            .await?;
            let Some(generation) = generation else {
                return Ok(true);
            };
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                if self.running_generation().await.as_deref() == Some(generation) {
                    return Ok(true);
                }
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tracing::warn!(
                host = self.t().host(),
                "nginx did not load the new config yet; reloading again"
            );
        }
        Ok(false)
    }

    /// Reload mode: the servers of the installed include file (its `# servers:` list).
    fn installed_peers(config: &str) -> Vec<Peer> {
        config
            .lines()
            .skip_while(|l| *l != "# servers:")
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.trim_start_matches('#').split_whitespace().collect();
                match f.as_slice() {
                    [b, s, a] => Some(Peer::new(b, s, a)),
                    _ => None,
                }
            })
            .collect()
    }

    /// Reload mode: what the balancer host shows; `url`: the generation endpoint of the installed
    /// files.
    async fn reload_observation(&self, url: &str) -> Result<reload::Observation, BalancerError> {
        let out = run_ok(
            self.t(),
            &reload::observe_cmd(&self.paths, url, &self.probes, self.probe_timeout),
            TIMEOUT + Duration::from_secs_f64(self.probe_timeout * self.probes.len() as f64),
        )
        .await?;
        Ok(reload::parse_observation(&out.stdout_text()))
    }

    /// Reload mode: every server of the installed config, and whether nginx runs the installed
    /// upstreams file (its generation answers); an error when nginx does not answer at all.
    async fn reload_servers(&self, config: Option<&str>) -> Result<(Servers, bool), BalancerError> {
        let Some(config) = config else {
            return Ok((Servers::new(), false));
        };
        let peers = Self::installed_peers(config);
        // The generation server is on the installed file's first frontend (which the desired
        // state may have moved since).
        let url = first_listen(config).map_or_else(String::new, reload::generation_url);
        let o = self.reload_observation(&url).await?;
        if o.generation.is_none() && !peers.is_empty() {
            return Err(self.error(format!(
                "nginx does not answer its generation endpoint ({url}); is it running?"
            )));
        }
        let upstreams = self.read(&self.paths.upstreams).await?.unwrap_or_default();
        let loaded = reload::generation_of(&upstreams) == o.generation.as_deref();
        Ok((reload::servers(&peers, &o), loaded))
    }

    /// Reload mode: writes the upstreams file for `peers` with `state`, tests, reloads and then
    /// keeps `state` in the state file. `config`: the include file too (a structural change).
    async fn reload_install(
        &self,
        peers: &[Peer],
        state: &BTreeMap<ServerKey, Entry>,
        config: Option<&str>,
    ) -> Result<(), BalancerError> {
        let include = config.map_or_else(|| self.config.clone(), str::to_owned);
        // The generation server listens on the include file's first frontend.
        let listen = self.generation_url.as_ref().and(first_listen(&include));
        let upstreams = reload::render_upstreams(peers, state, listen, &include);
        let generation = listen.and(reload::generation_of(&upstreams));
        let current = self.read(&self.paths.upstreams).await?;
        // A file already in place counts only when nginx runs it (a reload may have failed).
        let loaded = current.as_deref() == Some(upstreams.as_str())
            && (generation.is_none() || self.running_generation().await.as_deref() == generation);
        if config.is_some() || !loaded {
            let mut files = vec![(self.paths.upstreams.as_str(), upstreams.as_str())];
            if let Some(c) = config {
                files.push((self.config_file.as_str(), c));
            }
            self.install(&files, generation).await?;
        }
        let kept: BTreeMap<&ServerKey, Entry> = peers
            .iter()
            .filter_map(|p| {
                state
                    .get_key_value(&(p.backend.clone(), p.server.clone()))
                    .map(|(k, e)| (k, *e))
            })
            .collect();
        run_ok(
            self.t(),
            &write_readable_file_cmd(&self.paths.state, state_text(kept).as_bytes()),
            TIMEOUT,
        )
        .await?;
        Ok(())
    }

    async fn read_state(&self) -> Result<BTreeMap<ServerKey, Entry>, BalancerError> {
        let out = run_ok(self.t(), &read_file_cmd(&self.paths.state), TIMEOUT).await?;
        Ok(parse_state(&out.stdout_text()))
    }

    /// Makes the admin socket's directory (mode 0700) and checks that only its owner can enter it:
    /// nginx makes the socket itself mode 0666, so the directory is what keeps others out.
    async fn private_socket_dir(&self) -> Result<(), BalancerError> {
        let dir =
            self.admin_socket
                .rsplit_once('/')
                .map_or("/", |(d, _)| if d.is_empty() { "/" } else { d });
        let out = run_ok(self.t(), &socket_dir_cmd(dir), TIMEOUT).await?;
        let mode = out.stdout_text();
        if mode.trim().ends_with("00") {
            return Ok(());
        }
        Err(self.error(format!(
            "balancers.{}.admin_socket: its directory {dir} has mode {} (others may enter it and reach the socket, which nginx makes mode 0666); give the socket a directory of its own, which kube-free makes with mode 0700",
            self.name,
            mode.trim()
        )))
    }

    /// Dynamic mode: the generation the rendered config carries.
    fn rendered_generation(&self) -> String {
        dynamic::generation_in(&self.config)
            .unwrap_or_default()
            .to_owned()
    }
}

#[async_trait::async_trait]
impl Balancer for Nginx {
    fn name(&self) -> &str {
        &self.name
    }

    fn host(&self) -> &str {
        self.t().host()
    }

    async fn observe(&self) -> Result<BalancerState, BalancerError> {
        // Before any step: a run on a host without the module changes nothing.
        self.check_lua_module().await?;
        let config = self.current_config().await?;
        let (servers, loaded) = match self.mode {
            NginxMode::Reload => self.reload_servers(config.as_deref()).await?,
            NginxMode::Dynamic => {
                let installed = config.as_deref().and_then(dynamic::generation_in);
                // The endpoint of the installed file (admin_socket may have changed since).
                let socket = config
                    .as_deref()
                    .and_then(installed_socket)
                    .unwrap_or(&self.admin_socket)
                    .to_owned();
                match self.dynamic_servers_at(&socket).await {
                    Ok((running, servers)) => {
                        let loaded = installed.is_some() && running.as_deref() == installed;
                        (servers, loaded)
                    }
                    // Before kube-free's file is installed there is no endpoint, and no server.
                    Err(e) if installed.is_none() => {
                        tracing::debug!(error = %e, "no nginx endpoint yet; kube-free's file is to be installed");
                        (Servers::new(), false)
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        if config.is_some() && !loaded {
            tracing::debug!(
                balancer = %self.name,
                "nginx does not run the files on disk (a reload failed or was cut short): config is stale"
            );
        }
        Ok(BalancerState {
            // A file nginx does not run is not the config in force: it is installed again.
            config: config.filter(|_| loaded),
            servers,
        })
    }

    async fn servers(&self) -> Result<Servers, BalancerError> {
        match self.mode {
            NginxMode::Dynamic => Ok(self.dynamic_servers().await?.1),
            NginxMode::Reload => {
                let config = self.current_config().await?;
                Ok(self.reload_servers(config.as_deref()).await?.0)
            }
        }
    }

    async fn apply(&self, changes: &[Change]) -> Result<(), BalancerError> {
        if changes.is_empty() {
            return Ok(());
        }
        let body: String = changes.iter().map(|c| change_line(c) + "\n").collect();
        match self.mode {
            NginxMode::Dynamic => {
                let (status, answer) = self.http("POST", "/kube-free/apply", &body).await?;
                if status == 200 && parse_dynamic_servers(&answer).is_some() {
                    Ok(())
                } else {
                    Err(BalancerError::Refused {
                        balancer: self.name.clone(),
                        host: self.t().host().to_owned(),
                        command: body.trim_end().replace('\n', "; "),
                        answer: format!("{status} {}", answer.trim()),
                    })
                }
            }
            NginxMode::Reload => {
                let _one_at_a_time = self.lock.lock().await;
                let config = self.current_config().await?.unwrap_or_default();
                let installed = Self::installed_peers(&config);
                let mut state = self.read_state().await?;
                for c in changes {
                    let (Change::Weight(k, _) | Change::State(k, _)) = c;
                    if !installed
                        .iter()
                        .any(|p| p.backend == k.0 && p.server == k.1)
                    {
                        return Err(BalancerError::Refused {
                            balancer: self.name.clone(),
                            host: self.t().host().to_owned(),
                            command: change_line(c),
                            answer: "no such server in the installed config".into(),
                        });
                    }
                    apply_change(&mut state, c);
                }
                self.reload_install(&installed, &state, None).await
            }
        }
    }

    fn rendered_config(&self) -> &str {
        &self.config
    }

    async fn apply_config(&self) -> Result<(), BalancerError> {
        let _one_at_a_time = self.lock.lock().await;
        match self.mode {
            NginxMode::Dynamic => {
                self.check_lua_module().await?;
                self.private_socket_dir().await?;
                // Weights and states survive a reload in the dict; the file keeps them for a
                // restart.
                if let Ok((_, servers)) = self.dynamic_servers().await {
                    self.write_dynamic_state(&servers).await?;
                }
                let generation = self.rendered_generation();
                self.install(
                    &[(self.config_file.as_str(), self.config.as_str())],
                    Some(&generation),
                )
                .await
            }
            NginxMode::Reload => {
                let state = self.read_state().await?;
                let config = self.config.clone();
                self.reload_install(&self.peers, &state, Some(&config))
                    .await
            }
        }
    }

    async fn save_state(&self, _backend: &str) -> Result<(), BalancerError> {
        match self.mode {
            // The state file is written with every change.
            NginxMode::Reload => Ok(()),
            NginxMode::Dynamic => {
                // Read and written under the lock: a later read is written after an earlier one.
                let _one_at_a_time = self.lock.lock().await;
                let (_, servers) = self.dynamic_servers().await?;
                self.write_dynamic_state(&servers).await
            }
        }
    }
}

impl Nginx {
    /// Dynamic mode with `lua_module` set: the module file is on the host.
    async fn check_lua_module(&self) -> Result<(), BalancerError> {
        let Some(module) = self
            .lua_module
            .as_deref()
            .filter(|_| self.mode == NginxMode::Dynamic)
        else {
            return Ok(());
        };
        let out = self
            .t()
            .run(&Cmd::read(["test", "-f", module]), TIMEOUT)
            .await?;
        if out.success() {
            return Ok(());
        }
        Err(self.error(format!(
            "balancers.{}.lua_module: {module:?} is not a file on this host (Debian: apt-get install libnginx-mod-http-lua; or use `mode: reload`)",
            self.name
        )))
    }

    async fn write_dynamic_state(&self, servers: &Servers) -> Result<(), BalancerError> {
        let text = state_text(servers.iter().map(|(k, s)| {
            (
                k,
                Entry {
                    admin: s.admin,
                    weight: s.weight,
                },
            )
        }));
        run_ok(
            self.t(),
            &write_readable_file_cmd(&self.paths.state, text.as_bytes()),
            TIMEOUT,
        )
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_apply_format_round_trips() {
        let key = ("kf_p_api".to_owned(), "web-1_blue".to_owned());
        assert_eq!(
            change_line(&Change::Weight(key.clone(), 40)),
            "weight kf_p_api web-1_blue 40"
        );
        assert_eq!(
            change_line(&Change::State(key.clone(), Admin::Drain)),
            "state kf_p_api web-1_blue drain"
        );
        let state = parse_state("weight kf_p_api web-1_blue 40\nstate kf_p_api web-1_blue drain\n# x\nweight a b nope\n");
        assert_eq!(
            state[&key],
            Entry {
                admin: Admin::Drain,
                weight: 40
            }
        );
        assert_eq!(state.len(), 1);
        assert_eq!(
            parse_state(&state_text(state.iter().map(|(k, e)| (k, *e)))),
            state
        );
    }

    #[test]
    fn dynamic_answers_become_servers() {
        let answer = "generation 0123456789abcdef\nboot 77\nserver kf_p_api web-1_blue ready 100 up passed 3 0 70 0 1 2 0 4 5 UP (check: 200)\nserver kf_p_api web-1_green maint 0 down none 0 0 0 0 0 0 0 0 0 MAINT\n";
        assert_eq!(generation_of_text(answer), Some("0123456789abcdef"));
        let s = parse_dynamic_servers(answer).unwrap();
        let blue = &s[&("kf_p_api".to_owned(), "web-1_blue".to_owned())];
        assert!(blue.checked_up());
        assert_eq!(
            (blue.weight, blue.sessions, blue.counters.responses),
            (100, 3, [0, 70, 0, 1, 2, 0])
        );
        assert_eq!(
            (
                blue.counters.connection_errors,
                blue.counters.response_errors
            ),
            (4, 5)
        );
        assert_eq!(blue.label, "UP (check: 200)");
        let green = &s[&("kf_p_api".to_owned(), "web-1_green".to_owned())];
        assert_eq!(
            (green.admin, green.up, green.check),
            (Admin::Maint, false, Check::None)
        );
        assert!(parse_dynamic_servers("server a b ready x up passed").is_none());
    }

    #[test]
    fn installed_peers_are_read_from_the_include_file() {
        let paths = reload::Paths::new("/s", "edge");
        let peers = vec![
            Peer::new("kf_p_api", "web-1_blue", "10.0.0.11:8000"),
            Peer::new("kf_p_api", "web-1_green", "10.0.0.11:8001"),
        ];
        let config = reload::render(&peers, &[("kf_p_api".into(), "0.0.0.0:80".into())], &paths);
        assert_eq!(Nginx::installed_peers(&config), peers);
    }
}
