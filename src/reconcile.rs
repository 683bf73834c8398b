//! One reconcile pass: connect to the hosts, observe them and the balancers (in parallel), diff
//! against the desired state into a plan, execute it; after a failed step, take out and stop what gets
//! no traffic so the previous version keeps serving. Also the live [`Effects`]: what each step does to
//! real hosts, each checking first whether it is done and verifying after.

use crate::desired::{DesiredState, Transport as HostTransport};
use crate::drivers::haproxy::{self, Admin, Haproxy, FULL_WEIGHT};
use crate::drivers::local::LocalTransport;
use crate::drivers::probe::Prober;
use crate::drivers::process::{self, Found, StartSpec};
use crate::drivers::ssh::{SshOptions, SshTarget, SshTransport};
use crate::drivers::{Transport, TransportError};
use crate::execute::{self, Effects, StepFailed};
use crate::observed::{BalancerState, HostState, Instance, ObservedState};
use crate::plan::{self, Action, Plan, Scope, SlotRef};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

const READ_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("cannot create a runtime directory")]
    RuntimeDir(#[source] std::io::Error),
    #[error("{failed}; {outcome}")]
    RolledBack { failed: StepFailed, outcome: String },
}

/// Everything needed to reach the world: one transport per host, the prober, the desired state.
pub struct World {
    pub desired: DesiredState,
    /// Commit of the desired state, recorded in instance files.
    pub revision: String,
    transports: BTreeMap<String, Arc<dyn Transport>>,
    prober: Prober,
    _runtime_dir: tempfile::TempDir,
}

/// Hosts that take part: every environment's hosts and every balancer's host.
fn hosts_in_use(desired: &DesiredState) -> BTreeSet<String> {
    let mut hosts: BTreeSet<String> = desired
        .environments
        .values()
        .flat_map(|e| e.hosts.iter().cloned())
        .collect();
    for e in desired.environments.values() {
        if let Some(b) = desired.balancers.get(&e.balancer) {
            hosts.insert(b.host.clone());
        }
    }
    hosts
}

impl World {
    /// Connects to every host in use, in parallel. `known_hosts` is the content of the repository's
    /// known_hosts file, if it names one.
    pub async fn connect(
        desired: DesiredState,
        revision: String,
        known_hosts: Option<Vec<u8>>,
    ) -> Result<World, ReconcileError> {
        // Unix socket paths are short: keep the directory near the root.
        let runtime_dir = tempfile::Builder::new()
            .prefix("kf-")
            .tempdir_in("/tmp")
            .map_err(ReconcileError::RuntimeDir)?;
        let known_hosts_file = match known_hosts {
            Some(bytes) => {
                let path = runtime_dir.path().join("known_hosts");
                std::fs::write(&path, bytes).map_err(ReconcileError::RuntimeDir)?;
                Some(path)
            }
            None => None,
        };
        let options = SshOptions {
            known_hosts: known_hosts_file,
            identity_file: desired.ssh.identity_file.as_deref().map(expand_home),
            connect_timeout: Duration::from_secs(10),
            runtime_dir: runtime_dir.path().to_owned(),
        };
        let mut pending = Vec::new();
        for name in hosts_in_use(&desired) {
            let host = &desired.hosts[&name];
            let options = options.clone();
            let target = match &host.transport {
                HostTransport::Local => None,
                HostTransport::Ssh {
                    address,
                    user,
                    port,
                } => Some(SshTarget {
                    host: name.clone(),
                    address: address.clone(),
                    user: user.clone(),
                    port: *port,
                }),
            };
            pending.push(tokio::spawn(async move {
                let t: Arc<dyn Transport> = match target {
                    None => Arc::new(LocalTransport::new(&name)),
                    Some(target) => Arc::new(SshTransport::connect(&target, &options).await?),
                };
                Ok::<_, TransportError>((name, t))
            }));
        }
        let mut transports = BTreeMap::new();
        for p in pending {
            let (name, t) = p.await.expect("connecting does not panic")?;
            transports.insert(name, t);
        }
        Ok(World {
            desired,
            revision,
            transports,
            prober: Prober::default(),
            _runtime_dir: runtime_dir,
        })
    }

    fn transport(&self, host: &str) -> &dyn Transport {
        self.transports[host].as_ref()
    }

    fn balancer(&self, name: &str) -> Haproxy<'_> {
        let b = &self.desired.balancers[name];
        Haproxy {
            transport: self.transport(&b.host),
            admin_socket: &b.admin_socket,
            config_file: &b.config_file,
            reload_command: &b.reload_command,
            state_dir: &self.desired.hosts[&b.host].state_dir,
        }
    }

    fn balancers_in_use(&self) -> BTreeSet<String> {
        self.desired
            .environments
            .values()
            .map(|e| e.balancer.clone())
            .collect()
    }

    /// Observes every host and balancer in use, in parallel.
    pub async fn observe(self: &Arc<Self>) -> Result<ObservedState, ReconcileError> {
        let mut hosts = Vec::new();
        let app_hosts: BTreeSet<String> = self
            .desired
            .environments
            .values()
            .flat_map(|e| e.hosts.iter().cloned())
            .collect();
        for name in app_hosts {
            let world = self.clone();
            hosts.push(tokio::spawn(async move {
                let state = world.observe_host(&name).await?;
                Ok::<_, TransportError>((name, state))
            }));
        }
        let mut balancers = Vec::new();
        for name in self.balancers_in_use() {
            let world = self.clone();
            balancers.push(tokio::spawn(async move {
                let b = world.balancer(&name);
                let state = BalancerState {
                    config: b.current_config().await?,
                    servers: b.servers().await?,
                };
                Ok::<_, TransportError>((name, state))
            }));
        }
        let mut observed = ObservedState::default();
        for h in hosts {
            let (name, state) = h.await.expect("observing does not panic")?;
            observed.hosts.insert(name, state);
        }
        for b in balancers {
            let (name, state) = b.await.expect("observing does not panic")?;
            observed.balancers.insert(name, state);
        }
        Ok(observed)
    }

    async fn observe_host(&self, name: &str) -> Result<HostState, TransportError> {
        let t = self.transport(name);
        let state_dir = &self.desired.hosts[name].state_dir;
        let listed = t
            .run(&process::list_instances_cmd(state_dir), READ_TIMEOUT)
            .await?;
        let mut state = HostState::default();
        for found in process::parse_instances(&listed.stdout_text()) {
            match found {
                Found::Unreadable { path, error } => {
                    tracing::warn!(
                        host = name,
                        path,
                        error,
                        "unreadable instance file, not trusted"
                    );
                    state.unreadable.insert(path, error);
                }
                Found::Record(record) => {
                    let alive = process::is_alive(t, &record).await?;
                    let ready = if alive {
                        Some(
                            self.probe_once(name, &record.app, record.port)
                                .await
                                .is_ok(),
                        )
                    } else {
                        None
                    };
                    let key = (record.env.clone(), record.app.clone(), record.slot.clone());
                    state.instances.insert(
                        key,
                        Instance {
                            record,
                            alive,
                            ready,
                        },
                    );
                }
            }
        }
        Ok(state)
    }

    async fn probe_once(&self, host: &str, app: &str, port: u16) -> Result<(), String> {
        let probe = &self
            .desired
            .apps
            .get(app)
            .ok_or_else(|| format!("app {app:?} is not in the desired state"))?
            .probe;
        self.prober
            .probe(
                &haproxy::host_address(&self.desired, host),
                port,
                &probe.path,
                probe.timeout,
            )
            .await
    }

    /// Balancers whose config file is not the one the desired state renders.
    pub fn stale_configs(&self, observed: &ObservedState) -> BTreeSet<String> {
        self.balancers_in_use()
            .into_iter()
            .filter(|b| {
                observed.balancers.get(b).and_then(|s| s.config.as_deref())
                    != Some(haproxy::render_config(&self.desired, b).as_str())
            })
            .collect()
    }
}

fn expand_home(path: &str) -> PathBuf {
    match path.strip_prefix("~/") {
        Some(rest) => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(rest),
        None => PathBuf::from(path),
    }
}

/// What a finished pass did.
#[derive(Debug)]
pub struct PassReport {
    pub steps: usize,
}

/// One pass: observe, plan, execute; on failure, clean up the failed rollout and report it.
pub async fn once(
    world: Arc<World>,
    scope: &Scope,
    parallel: usize,
) -> Result<PassReport, ReconcileError> {
    let observed = world.observe().await?;
    let plan = plan::build(
        &world.desired,
        &observed,
        &world.stale_configs(&observed),
        scope,
    );
    if plan.is_empty() {
        tracing::info!("in sync");
        return Ok(PassReport { steps: 0 });
    }
    tracing::info!(
        steps = plan.graph.node_count(),
        "executing plan\n{}",
        plan.render_text()
    );
    let effects = Arc::new(Live {
        world: world.clone(),
        observed: observed.clone(),
    });
    match execute::run(&plan, effects, parallel).await {
        Ok(report) => Ok(PassReport {
            steps: report.done.len(),
        }),
        Err(failed) => {
            let outcome = match rollout_of(&failed.action) {
                Some((env, app)) => match clean_up(&world, &env, &app, parallel).await {
                    Ok(()) => format!("rolled back: {env}/{app} keeps the version that was serving; instances that got no traffic are stopped"),
                    Err(e) => format!("cleaning up {env}/{app} failed too: {e}"),
                },
                None => "nothing was moved".to_owned(),
            };
            Err(ReconcileError::RolledBack { failed, outcome })
        }
    }
}

fn rollout_of(action: &Action) -> Option<(String, String)> {
    match action {
        Action::Start { at, .. }
        | Action::Probe { at }
        | Action::Enable { at, .. }
        | Action::Drain { at, .. }
        | Action::Stop { at, .. } => Some((at.env.clone(), at.app.clone())),
        Action::Shift { env, app, .. } => Some((env.clone(), app.clone())),
        Action::ApplyConfig { .. } => None,
    }
}

async fn clean_up(
    world: &Arc<World>,
    env: &str,
    app: &str,
    parallel: usize,
) -> Result<(), ReconcileError> {
    let observed = world.observe().await?;
    let plan: Plan = plan::cleanup(&world.desired, &observed, env, app);
    tracing::warn!(
        steps = plan.graph.node_count(),
        "cleaning up after the failed rollout\n{}",
        plan.render_text()
    );
    let effects = Arc::new(Live {
        world: world.clone(),
        observed,
    });
    execute::run(&plan, effects, parallel)
        .await
        .map(|_| ())
        .map_err(|failed| ReconcileError::RolledBack {
            failed,
            outcome: "cleanup stopped".into(),
        })
}

/// The effects of steps on real hosts and balancers.
pub struct Live {
    world: Arc<World>,
    /// The snapshot the plan was built from (records of instances to stop).
    observed: ObservedState,
}

impl Live {
    fn app(&self, at: &SlotRef) -> &crate::desired::App {
        &self.world.desired.apps[&at.app]
    }

    fn port(&self, at: &SlotRef) -> u16 {
        let d = &self.world.desired.environments[&at.env].apps[&at.app];
        d.slots
            .iter()
            .find(|s| s.name == at.slot)
            .map_or(0, |s| s.port)
    }

    async fn server(
        &self,
        balancer: &str,
        at: &SlotRef,
    ) -> Result<Option<haproxy::ServerStat>, String> {
        let servers = self
            .world
            .balancer(balancer)
            .servers()
            .await
            .map_err(|e| e.to_string())?;
        Ok(servers.get(&(at.backend(), at.server())).cloned())
    }

    /// The instance file of a slot as it is now on its host, if there is a readable one.
    async fn current_record(
        &self,
        at: &SlotRef,
    ) -> Result<Option<crate::state::InstanceRecord>, String> {
        let state_dir = &self.world.desired.hosts[&at.host].state_dir;
        let file = crate::state::instance_file(state_dir, &at.env, &at.app, &at.slot);
        let out = self
            .world
            .transport(&at.host)
            .run(&crate::drivers::Cmd::read(["cat", &file]), READ_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        Ok(out
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten())
    }

    async fn start(&self, at: &SlotRef, version: &str) -> Result<(), String> {
        // Done already (a resumed run)? Never start over a live instance of another version.
        if let Some(record) = self.current_record(at).await? {
            if process::is_alive(self.world.transport(&at.host), &record)
                .await
                .map_err(|e| e.to_string())?
            {
                return if record.version == version {
                    Ok(())
                } else {
                    Err(format!(
                        "slot {} on {} already runs {} (pid {})",
                        at.slot, at.host, record.version, record.pid
                    ))
                };
            }
        }
        let host = &self.world.desired.hosts[&at.host];
        let app = self.app(at);
        let port = self.port(at);
        let value = |p: crate::desired::template::Placeholder| {
            use crate::desired::template::Placeholder::*;
            match p {
                Version => version.to_owned(),
                Port => port.to_string(),
                Slot => at.slot.clone(),
                App => at.app.clone(),
                Env => at.env.clone(),
                Host => at.host.clone(),
            }
        };
        let crate::desired::Runtime::Process { command, env } = &app.runtime else {
            return Err(format!(
                "app {:?}: the docker runtime is not supported yet",
                at.app
            ));
        };
        let mut argv = vec![
            "env".to_owned(),
            format!("PORT={port}"),
            format!("KUBE_FREE_ENV={}", at.env),
            format!("KUBE_FREE_APP={}", at.app),
            format!("KUBE_FREE_SLOT={}", at.slot),
            format!("KUBE_FREE_VERSION={version}"),
        ];
        argv.extend(env.iter().map(|(k, v)| format!("{k}={}", v.render(value))));
        argv.extend(command.iter().map(|w| w.render(value)));
        let spec = StartSpec {
            state_dir: &host.state_dir,
            env: &at.env,
            app: &at.app,
            slot: &at.slot,
            version,
            revision: &self.world.revision,
            port,
            argv,
        };
        process::start(self.world.transport(&at.host), &spec)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    async fn probe(&self, at: &SlotRef) -> Result<(), String> {
        let probe = &self.app(at).probe;
        let t = self.world.transport(&at.host);
        let state_dir = &self.world.desired.hosts[&at.host].state_dir;
        let file = crate::state::instance_file(state_dir, &at.env, &at.app, &at.slot);
        let record = t
            .run(&crate::drivers::Cmd::read(["cat", &file]), READ_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        let record: crate::state::InstanceRecord = serde_json::from_slice(&record.stdout)
            .map_err(|e| format!("instance file {file}: {e}"))?;
        let mut passes = 0;
        let mut last_error = String::new();
        let deadline = tokio::time::Instant::now() + probe.deadline;
        loop {
            if !process::is_alive(t, &record)
                .await
                .map_err(|e| e.to_string())?
            {
                let log = crate::state::log_file(state_dir, &at.env, &at.app, &at.slot);
                let tail = t
                    .run(&process::tail_cmd(&log, 20), READ_TIMEOUT)
                    .await
                    .map(|o| o.stdout_text())
                    .unwrap_or_default();
                return Err(format!("the instance exited; end of {log}:\n{tail}"));
            }
            match self.world.probe_once(&at.host, &at.app, record.port).await {
                Ok(()) => {
                    passes += 1;
                    if passes >= probe.healthy_after {
                        return Ok(());
                    }
                }
                Err(e) => {
                    passes = 0;
                    last_error = e;
                }
            }
            if tokio::time::Instant::now() + probe.interval > deadline {
                return Err(format!(
                    "not ready within the probe deadline of {}: {}",
                    crate::desired::duration::format(probe.deadline),
                    if last_error.is_empty() {
                        "too few passes in a row".to_owned()
                    } else {
                        last_error
                    }
                ));
            }
            tokio::time::sleep(probe.interval).await;
        }
    }

    async fn enable(&self, balancer: &str, at: &SlotRef) -> Result<(), String> {
        let b = self.world.balancer(balancer);
        let current = self.server(balancer, at).await?.ok_or_else(|| {
            format!(
                "balancer {balancer} has no server {}/{}",
                at.backend(),
                at.server()
            )
        })?;
        if !(current.up && current.admin == Admin::Ready) {
            // Weight 0 first: leaving maintenance makes a server UP at once.
            b.runtime(&[
                haproxy::set_weight(&at.backend(), &at.server(), 0),
                haproxy::set_state(&at.backend(), &at.server(), Admin::Ready),
            ])
            .await
            .map_err(|e| e.to_string())?;
        }
        loop {
            match self.server(balancer, at).await? {
                // HAProxy's own health check passed: the balancer reaches the instance.
                Some(s)
                    if s.up && s.admin == Admin::Ready && s.check_status.starts_with("L7OK") =>
                {
                    return Ok(())
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Keeps HAProxy's saved state in step with a runtime change, so a reload or restart keeps it.
    async fn save_state(&self, balancer: &str, backend: &str) -> Result<(), String> {
        self.world
            .balancer(balancer)
            .save_state(backend)
            .await
            .map_err(|e| e.to_string())
    }

    async fn shift(&self, balancer: &str, to: &[SlotRef], from: &[SlotRef]) -> Result<(), String> {
        let b = self.world.balancer(balancer);
        let servers = b.servers().await.map_err(|e| e.to_string())?;
        // Invariant: weight only goes to servers that HAProxy reports UP and ready.
        for r in to {
            match servers.get(&(r.backend(), r.server())) {
                Some(s) if s.up && s.admin == Admin::Ready => {}
                other => {
                    return Err(format!(
                        "refusing to move traffic to {}/{}: balancer reports {:?}",
                        r.backend(),
                        r.server(),
                        other.map(|s| &s.status)
                    ))
                }
            }
        }
        let mut commands: Vec<String> = to
            .iter()
            .map(|r| haproxy::set_weight(&r.backend(), &r.server(), FULL_WEIGHT))
            .collect();
        commands.extend(
            from.iter()
                .map(|r| haproxy::set_weight(&r.backend(), &r.server(), 0)),
        );
        b.runtime(&commands).await.map_err(|e| e.to_string())?;
        let after = b.servers().await.map_err(|e| e.to_string())?;
        for (r, want) in to
            .iter()
            .map(|r| (r, FULL_WEIGHT))
            .chain(from.iter().map(|r| (r, 0)))
        {
            let got = after.get(&(r.backend(), r.server())).map(|s| s.weight);
            if got != Some(want) {
                return Err(format!(
                    "read back weight {got:?} for {}/{}, expected {want}",
                    r.backend(),
                    r.server()
                ));
            }
        }
        Ok(())
    }

    async fn drain(&self, balancer: &str, at: &SlotRef) -> Result<(), String> {
        let b = self.world.balancer(balancer);
        let (backend, server) = (at.backend(), at.server());
        match self.server(balancer, at).await? {
            None => return Ok(()),
            Some(s) if s.admin == Admin::Maint => return Ok(()),
            Some(s) if s.admin == Admin::Ready => {
                b.runtime(&[haproxy::set_state(&backend, &server, Admin::Drain)])
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Some(_) => {}
        }
        let limit = tokio::time::Instant::now() + self.app(at).drain;
        loop {
            let scur = self.server(balancer, at).await?.map_or(0, |s| s.scur);
            if scur == 0 {
                break;
            }
            if tokio::time::Instant::now() >= limit {
                tracing::warn!(%backend, %server, scur, "drain time is up with sessions still open");
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        b.runtime(&[haproxy::set_state(&backend, &server, Admin::Maint)])
            .await
            .map_err(|e| e.to_string())?;
        match self.server(balancer, at).await? {
            Some(s) if s.admin == Admin::Maint => Ok(()),
            other => Err(format!(
                "{backend}/{server} is not in maintenance after the drain: {:?}",
                other.map(|s| s.status)
            )),
        }
    }

    async fn stop(&self, at: &SlotRef) -> Result<(), String> {
        let Some(instance) = self.observed.instance(&at.host, &at.env, &at.app, &at.slot) else {
            return Ok(());
        };
        let state_dir = &self.world.desired.hosts[&at.host].state_dir;
        process::stop(
            self.world.transport(&at.host),
            state_dir,
            &instance.record,
            self.app(at).stop_timeout,
        )
        .await
        .map_err(|e| e.to_string())
    }
}

#[async_trait::async_trait]
impl Effects for Live {
    async fn apply(&self, action: &Action) -> Result<(), String> {
        match action {
            Action::ApplyConfig { balancer } => {
                let config = haproxy::render_config(&self.world.desired, balancer);
                let backends: Vec<String> = self
                    .world
                    .desired
                    .environments
                    .values()
                    .filter(|e| &e.balancer == balancer)
                    .flat_map(|e| e.apps.keys().map(|a| haproxy::backend_name(&e.name, a)))
                    .collect();
                self.world
                    .balancer(balancer)
                    .apply_config(&config, &backends)
                    .await
                    .map_err(|e| e.to_string())
            }
            Action::Start { at, version } => self.start(at, version).await,
            Action::Probe { at } => self.probe(at).await,
            Action::Enable { balancer, at } => {
                self.enable(balancer, at).await?;
                self.save_state(balancer, &at.backend()).await
            }
            Action::Shift {
                balancer,
                to,
                from,
                env,
                app,
            } => {
                self.shift(balancer, to, from).await?;
                self.save_state(balancer, &haproxy::backend_name(env, app))
                    .await
            }
            Action::Drain { balancer, at } => {
                self.drain(balancer, at).await?;
                self.save_state(balancer, &at.backend()).await
            }
            Action::Stop { at, .. } => self.stop(at).await,
        }
    }

    fn deadline(&self, action: &Action) -> Duration {
        let app = |at: &SlotRef| &self.world.desired.apps[&at.app];
        let slack = Duration::from_secs(30);
        match action {
            Action::ApplyConfig { .. } => Duration::from_secs(90),
            Action::Start { .. } | Action::Enable { .. } | Action::Shift { .. } => slack,
            Action::Probe { at } => app(at).probe.deadline + slack,
            Action::Drain { at, .. } => app(at).drain + slack,
            Action::Stop { at, .. } => app(at).stop_timeout + slack,
        }
    }
}
