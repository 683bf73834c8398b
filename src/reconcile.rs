//! One reconcile pass: connect to the hosts, observe them and the balancers (in parallel), diff
//! against the desired state into a plan, execute it; after a failed step, take out and stop what gets
//! no traffic so the previous version keeps serving. Also the live [`Effects`]: what each step does to
//! real hosts, each checking first whether it is done and verifying after.

use crate::desired::{DesiredState, Transport as HostTransport};
use crate::drivers::haproxy::{self, Admin, Haproxy, FULL_WEIGHT};
use crate::drivers::lease;
use crate::drivers::local::LocalTransport;
use crate::drivers::probe::Prober;
use crate::drivers::process::{self, Found, StartSpec};
use crate::drivers::ssh::{SshOptions, SshTarget, SshTransport};
use crate::drivers::{Transport, TransportError};
use crate::execute::{self, Effects, StepError, StepFailed};
use crate::observed::{BalancerState, HostState, Instance, ObservedState};
use crate::plan::{self, Action, Plan, Scope, SlotRef};
use crate::state::{Counters, Phase, Promote, RolloutRecord, StepFigures};
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
    RolledBack {
        failed: Box<StepFailed>,
        outcome: String,
    },
    #[error("{failed}; run again to resume there")]
    Waiting { failed: Box<StepFailed> },
    #[error("interrupted by a signal before step {} ({}); the steps before it are done; run again to resume there", .failed.number, .failed.action)]
    Interrupted { failed: Box<StepFailed> },
    #[error("{failed}; {}the rollout of {env}/{app} stops where it is, nothing is undone and nothing is quarantined; the balancer sends traffic only to the servers its health checks find UP; run again once the host is back", .lost.iter().map(|l| format!("{l}; ")).collect::<String>())]
    HostLost {
        failed: Box<StepFailed>,
        env: String,
        app: String,
        /// Why each host of the environment that cannot be reached now cannot be (beyond what the
        /// failed step says).
        lost: Vec<String>,
    },
    #[error("{}", .0.join("\n"))]
    Quarantined(Vec<String>),
    #[error("locked: the lease on {host} is held by {holder}, for {expires_in}s more (wait for it with --lock-wait)")]
    Locked {
        host: String,
        holder: crate::drivers::lease::Holder,
        expires_in: u64,
    },
    #[error("lease on {host}: {message}")]
    Lease { host: String, message: String },
    #[error("{0}")]
    Gate(String),
    #[error("rollout record {path} on {host}: {message}")]
    Record {
        host: String,
        path: String,
        message: String,
    },
}

impl ReconcileError {
    /// The run stopped at a pause or gate (exit 3), not on a failure.
    pub fn waits(&self) -> bool {
        matches!(self, ReconcileError::Waiting { .. })
    }

    /// Another run holds the lease (exit 4).
    pub fn locked(&self) -> bool {
        matches!(self, ReconcileError::Locked { .. })
    }
}

/// Everything needed to reach the world: one transport per host, the prober, the desired state.
pub struct World {
    pub desired: DesiredState,
    /// Commit of the desired state, recorded in instance files.
    pub revision: String,
    transports: BTreeMap<String, Arc<dyn Transport>>,
    prober: Prober,
    /// One save of HAProxy's server state at a time (parallel steps change one backend).
    save_lock: tokio::sync::Mutex<()>,
    /// Set by SIGTERM/SIGINT: start no new step, end pauses, finish the current steps.
    pub interrupted: std::sync::atomic::AtomicBool,
    /// Leases this run holds: (balancer host, lock file, epoch).
    leases: std::sync::Mutex<Vec<(String, String, u64)>>,
    /// This run's id in lock files.
    run_id: String,
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
            save_lock: tokio::sync::Mutex::new(()),
            leases: std::sync::Mutex::new(Vec::new()),
            interrupted: std::sync::atomic::AtomicBool::new(false),
            run_id: format!(
                "{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() % 1_000_000_000)
            ),
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

    /// The hosts of `env` and its balancer's host that cannot be reached now (each after the
    /// transport's own reconnect attempts), with why.
    async fn lost_hosts(&self, env: &str) -> Vec<String> {
        let e = &self.desired.environments[env];
        let mut hosts: BTreeSet<&String> = e.hosts.iter().collect();
        hosts.insert(&self.desired.balancers[&e.balancer].host);
        let mut lost = Vec::new();
        for host in hosts {
            let check = crate::drivers::Cmd::read(["true"]);
            if let Err(e @ (TransportError::Unreachable { .. } | TransportError::Timeout { .. })) =
                self.transport(host).run(&check, READ_TIMEOUT).await
            {
                lost.push(e.to_string());
            }
        }
        lost
    }

    fn balancers_in_use(&self) -> BTreeSet<String> {
        self.desired
            .environments
            .values()
            .map(|e| e.balancer.clone())
            .collect()
    }

    /// The hosts of the balancers in use, each once, in name order: where the leases live.
    fn lease_hosts(&self) -> BTreeSet<String> {
        self.balancers_in_use()
            .iter()
            .map(|b| self.desired.balancers[b].host.clone())
            .collect()
    }

    async fn lease_command(
        &self,
        host: &str,
        cmd: &crate::drivers::Cmd,
    ) -> Result<lease::Answer, ReconcileError> {
        let out = crate::drivers::run_ok(self.transport(host), cmd, READ_TIMEOUT).await?;
        lease::parse_answer(&out.stdout_text()).ok_or_else(|| ReconcileError::Lease {
            host: host.to_owned(),
            message: format!("unexpected answer {:?}", out.stdout_text().trim()),
        })
    }

    /// Takes the lease on every balancer host in use, waiting up to `wait` for another run's to
    /// end or expire. Fails with [`ReconcileError::Locked`] (having released what it took).
    pub async fn acquire_lease(&self, wait: Duration, ttl: Duration) -> Result<(), ReconcileError> {
        let me = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .and_then(|h| h.split_whitespace().next().map(str::to_owned))
            .unwrap_or_else(|| "unknown".into());
        let until = tokio::time::Instant::now() + wait;
        for host in self.lease_hosts() {
            let path = lease::lock_file(&self.desired.hosts[&host].state_dir);
            let cmd = lease::acquire_cmd(
                &path,
                &self.run_id,
                lease_secs(ttl),
                &me,
                std::process::id(),
            );
            loop {
                match self.lease_command(&host, &cmd).await {
                    Ok(lease::Answer::Held { epoch, .. }) => {
                        tracing::info!(%host, epoch, run = %self.run_id, "lease taken");
                        self.leases.lock().expect("not poisoned").push((
                            host.clone(),
                            path.clone(),
                            epoch,
                        ));
                        break;
                    }
                    Ok(lease::Answer::Taken { holder, now })
                        if tokio::time::Instant::now() >= until =>
                    {
                        self.release_lease().await;
                        return Err(ReconcileError::Locked {
                            host,
                            expires_in: holder.expires.saturating_sub(now),
                            holder,
                        });
                    }
                    Ok(lease::Answer::Taken { holder, .. }) => {
                        tracing::info!(%host, %holder, "waiting for the lease");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Ok(other) => {
                        self.release_lease().await;
                        return Err(ReconcileError::Lease {
                            host,
                            message: format!("unexpected answer {other:?}"),
                        });
                    }
                    Err(e) => {
                        self.release_lease().await;
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
    }

    /// Extends every lease this run holds by `ttl`; a lease that was lost is an error.
    pub async fn renew_lease(&self, ttl: Duration) -> Result<(), ReconcileError> {
        self.confirm_leases(|path, epoch| {
            lease::renew_cmd(path, &self.run_id, lease_secs(ttl), epoch)
        })
        .await
    }

    /// Renews the leases this run holds every quarter of `ttl` until the returned task is aborted.
    /// A renewal that fails is logged; the next step's fencing check stops the run.
    pub fn heartbeat(self: &Arc<Self>, ttl: Duration) -> tokio::task::JoinHandle<()> {
        let world = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(ttl / 4).await;
                if let Err(e) = world.renew_lease(ttl).await {
                    tracing::error!(error = %e, "lease not renewed");
                }
            }
        })
    }

    /// Fencing: whether this run still holds every lease it took, at the epoch it took it.
    pub async fn check_lease(&self) -> Result<(), ReconcileError> {
        self.confirm_leases(|path, epoch| lease::check_cmd(path, &self.run_id, epoch))
            .await
    }

    /// Runs `cmd(lock file, epoch)` for every lease this run holds; anything but "held" is an error
    /// that says who holds it now.
    async fn confirm_leases(
        &self,
        cmd: impl Fn(&str, u64) -> crate::drivers::Cmd,
    ) -> Result<(), ReconcileError> {
        let held = self.leases.lock().expect("not poisoned").clone();
        for (host, path, epoch) in held {
            let message = match self.lease_command(&host, &cmd(&path, epoch)).await? {
                lease::Answer::Held { .. } => continue,
                lease::Answer::Lost { holder: Some(h) } if h.run_id == self.run_id => {
                    "lost: it expired (this run was stalled for longer than --lease-ttl); this run changes nothing more".to_owned()
                }
                lease::Answer::Lost { holder: Some(h) } => {
                    format!("lost: now held by {h}; this run changes nothing more")
                }
                lease::Answer::Lost { holder: None } => {
                    "lost (expired); this run changes nothing more".to_owned()
                }
                other => format!("unexpected answer {other:?}"),
            };
            return Err(ReconcileError::Lease { host, message });
        }
        Ok(())
    }

    pub fn is_interrupted(&self) -> bool {
        self.interrupted.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Gives back every lease this run holds (errors are logged: an unreleased lease expires).
    pub async fn release_lease(&self) {
        let held = std::mem::take(&mut *self.leases.lock().expect("not poisoned"));
        for (host, path, _) in held {
            if let Err(e) = self
                .lease_command(&host, &lease::release_cmd(&path, &self.run_id))
                .await
            {
                tracing::warn!(%host, error = %e, "lease not released; it expires by itself");
            }
        }
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
        let mut rollouts = Vec::new();
        for (env, app) in self.deployments() {
            let world = self.clone();
            rollouts.push(tokio::spawn(async move {
                let record = world.read_rollout(&env, &app).await?;
                Ok::<_, ReconcileError>(((env, app), record))
            }));
        }
        let mut observed = ObservedState::default();
        for r in rollouts {
            let (key, record) = r.await.expect("observing does not panic")?;
            if let Some(record) = record {
                observed.rollouts.insert(key, record);
            }
        }
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

    /// Every (environment, app) of the desired state.
    fn deployments(&self) -> Vec<(String, String)> {
        self.desired
            .environments
            .values()
            .flat_map(|e| e.apps.keys().map(|a| (e.name.clone(), a.clone())))
            .collect()
    }

    /// The balancer host of `env` and the path of the rollout record of `env`/`app` on it.
    fn rollout_location(&self, env: &str, app: &str) -> (&str, String) {
        let balancer = &self.desired.balancers[&self.desired.environments[env].balancer];
        let state_dir = &self.desired.hosts[&balancer.host].state_dir;
        (
            &balancer.host,
            crate::state::rollout_file(state_dir, env, app),
        )
    }

    /// The rollout record of `env`/`app`, if there is one. A torn or foreign file is reported and not
    /// trusted (read as no record: the next step writes a fresh one from what it observes).
    pub async fn read_rollout(
        &self,
        env: &str,
        app: &str,
    ) -> Result<Option<RolloutRecord>, ReconcileError> {
        let (host, path) = self.rollout_location(env, app);
        let out = crate::drivers::run_ok(
            self.transport(host),
            &process::read_file_cmd(&path),
            READ_TIMEOUT,
        )
        .await?;
        if out.stdout.is_empty() {
            return Ok(None);
        }
        match serde_json::from_slice::<RolloutRecord>(&out.stdout) {
            Ok(r) if r.env == env && r.app == app => Ok(Some(r)),
            Ok(_) => {
                tracing::warn!(%host, %path, "rollout record names another environment or app; ignored");
                Ok(None)
            }
            Err(e) => {
                tracing::warn!(%host, %path, error = %e, "unreadable rollout record; ignored");
                Ok(None)
            }
        }
    }

    /// The record of the rollout of `version`, or a fresh one when there is none for it (another
    /// version, an earlier desired state, or one that succeeded). A rollout that was aborted or
    /// rolled back meanwhile (by `kube-free abort`, or by another run) is an error: nothing may
    /// write over that.
    pub async fn record_for(
        &self,
        env: &str,
        app: &str,
        version: &str,
    ) -> Result<RolloutRecord, ReconcileError> {
        let fingerprint = self.desired.fingerprint(env, app);
        let current = self
            .read_rollout(env, app)
            .await?
            .filter(|r| r.version == version && r.fingerprint == fingerprint);
        if let Some(ended) = current.as_ref().filter(|r| r.phase.quarantines()) {
            return Err(ReconcileError::Gate(format!(
                "the rollout of {version} was {}: {}",
                ended.phase.ended_as(),
                ended.outcome.as_deref().unwrap_or("no reason recorded")
            )));
        }
        Ok(current
            .filter(|r| matches!(r.phase, Phase::Progressing | Phase::Paused))
            .unwrap_or_else(|| self.new_record(env, app, version)))
    }

    /// A record of a rollout of `version` that starts now.
    fn new_record(&self, env: &str, app: &str, version: &str) -> RolloutRecord {
        let strategy = self.desired.environments[env].apps[app].strategy.name();
        RolloutRecord {
            env: env.to_owned(),
            app: app.to_owned(),
            version: version.to_owned(),
            revision: self.revision.clone(),
            fingerprint: self.desired.fingerprint(env, app),
            strategy: strategy.to_owned(),
            phase: Phase::Progressing,
            step: 0,
            step_started_at: crate::state::now(),
            step_base: Counters::default(),
            started_at: crate::state::now(),
            updated_at: 0,
            promote: Promote::No,
            analysis: Vec::new(),
            outcome: None,
        }
    }

    /// Writes the rollout record atomically on the balancer host.
    pub async fn write_rollout(&self, record: &RolloutRecord) -> Result<(), ReconcileError> {
        let (host, path) = self.rollout_location(&record.env, &record.app);
        let mut record = record.clone();
        record.updated_at = crate::state::now();
        let bytes = serde_json::to_vec_pretty(&record).expect("records serialize");
        crate::drivers::run_ok(
            self.transport(host),
            &process::write_file_cmd(&path, &bytes),
            READ_TIMEOUT,
        )
        .await
        .map(|_| ())
        .map_err(|e| ReconcileError::Record {
            host: host.to_owned(),
            path,
            message: e.to_string(),
        })
    }

    async fn observe_host(&self, name: &str) -> Result<HostState, TransportError> {
        let t = self.transport(name);
        let state_dir = &self.desired.hosts[name].state_dir;
        let listed =
            crate::drivers::run_ok(t, &process::list_instances_cmd(state_dir), READ_TIMEOUT)
                .await?;
        let mut state = HostState::default();
        for found in process::parse_instances(&listed.stdout_text()) {
            match found {
                Found::Unreadable { path, error } => {
                    let recovered = self.recover_instance(name, &path).await?;
                    tracing::warn!(
                        host = name,
                        path,
                        error,
                        recovered = recovered.as_ref().map_or(
                            "nothing runs there".to_owned(),
                            |r| format!("pid {} runs {}", r.pid, r.version)
                        ),
                        "unreadable instance file, not trusted; rebuilt from what runs"
                    );
                    state.unreadable.insert(path, error);
                    if let Some(record) = recovered {
                        let key = (record.env.clone(), record.app.clone(), record.slot.clone());
                        let ready = self
                            .probe_once(name, &record.app, record.port)
                            .await
                            .is_ok();
                        state.recovered.push(key.clone());
                        state.instances.insert(
                            key,
                            Instance {
                                record,
                                alive: true,
                                ready: Some(ready),
                            },
                        );
                    }
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

    /// The instance of the slot whose file at `path` cannot be read, rebuilt from what runs there
    /// (see [`process::recover`]): `None` when nothing runs or the slot is not in the desired state.
    /// Its version is the one its environment names, when the rest of its environment names this slot
    /// and its command line is that version's; else unknown.
    async fn recover_instance(
        &self,
        host: &str,
        path: &str,
    ) -> Result<Option<crate::state::InstanceRecord>, TransportError> {
        let state_dir = self.desired.hosts[host].state_dir.trim_end_matches('/');
        let parts: Vec<&str> = path
            .strip_prefix(state_dir)
            .map(|p| p.trim_start_matches('/'))
            .and_then(|p| p.strip_suffix(".json"))
            .map(|p| p.split('/').collect())
            .unwrap_or_default();
        let [env, app, slot] = parts[..] else {
            return Ok(None);
        };
        let Some(d) = self
            .desired
            .environments
            .get(env)
            .and_then(|e| e.apps.get(app))
        else {
            return Ok(None);
        };
        let Some(port) = d.slots.iter().find(|s| s.name == slot).map(|s| s.port) else {
            return Ok(None);
        };
        let t = self.transport(host);
        let Some(running) = process::recover(t, state_dir, env, app, slot).await? else {
            return Ok(None);
        };
        let at = SlotRef {
            env: env.to_owned(),
            app: app.to_owned(),
            host: host.to_owned(),
            slot: slot.to_owned(),
        };
        // The start gave it KUBE_FREE_{ENV,APP,SLOT,VERSION}: trusted only when they name this slot
        // and its command line is exactly what that version runs there.
        let var = |name: &str| {
            running
                .environ
                .iter()
                .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
        };
        let version = var("KUBE_FREE_VERSION")
            .filter(|_| {
                var("KUBE_FREE_ENV") == Some(env)
                    && var("KUBE_FREE_APP") == Some(app)
                    && var("KUBE_FREE_SLOT") == Some(slot)
            })
            .filter(|v| {
                instance_command(&self.desired, &at, v, port)
                    .is_ok_and(|(_, command)| command == running.argv)
            })
            .unwrap_or(crate::state::UNKNOWN_VERSION)
            .to_owned();
        Ok(Some(crate::state::InstanceRecord {
            env: at.env,
            app: at.app,
            slot: at.slot,
            version,
            revision: String::new(),
            port,
            pid: running.pid,
            start_ticks: running.start_ticks,
            started_at: 0,
            argv: running.argv,
        }))
    }

    /// Writes the instance files that could not be read again, from what observation rebuilt
    /// (reconcile only, under the lease).
    pub async fn repair_instance_files(
        &self,
        observed: &ObservedState,
        scope: &Scope,
    ) -> Result<(), TransportError> {
        for (name, host) in &observed.hosts {
            let state_dir = &self.desired.hosts[name].state_dir;
            for key in host.recovered.iter().filter(|k| scope.includes(&k.0, &k.1)) {
                let record = &host.instances[key].record;
                let file = crate::state::instance_file(state_dir, &key.0, &key.1, &key.2);
                let json = serde_json::to_vec(record).expect("a record serializes");
                crate::drivers::run_ok(
                    self.transport(name),
                    &process::write_file_cmd(&file, &json),
                    READ_TIMEOUT,
                )
                .await?;
                tracing::warn!(host = %name, %file, version = %record.version, pid = record.pid, "instance file repaired from what runs");
            }
        }
        Ok(())
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

/// Seconds to ask the balancer host for: the host's clock counts whole seconds, so one more makes the
/// lease last at least `ttl`.
fn lease_secs(ttl: Duration) -> u64 {
    ttl.as_secs_f64().ceil() as u64 + 1
}

/// What a finished pass did.
#[derive(Debug)]
pub struct PassReport {
    pub steps: usize,
}

/// How a pass runs.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Most steps at once.
    pub parallel: usize,
    /// Longest this run waits at a pause or gate before it stops there (exit 3); `None`: timed pauses
    /// are waited out, gates are not waited for.
    pub max_wait: Option<Duration>,
}

/// One pass: observe, plan, execute; on failure, clean up (a canary gives its traffic back to the
/// stable version first), quarantine the version when the version itself failed, and report it.
pub async fn once(
    world: Arc<World>,
    scope: &Scope,
    options: Options,
) -> Result<PassReport, ReconcileError> {
    let observed = world.observe().await?;
    world.repair_instance_files(&observed, scope).await?;
    let plan = plan::build(
        &world.desired,
        &observed,
        &world.stale_configs(&observed),
        scope,
    );
    let quarantined = |steps| {
        if plan.notes.is_empty() {
            Ok(PassReport { steps })
        } else {
            Err(ReconcileError::Quarantined(plan.notes.clone()))
        }
    };
    if plan.is_empty() {
        tracing::info!("in sync");
        return quarantined(0);
    }
    tracing::info!(
        steps = plan.graph.node_count(),
        "executing plan\n{}",
        plan.render_text()
    );
    let effects = Arc::new(Live {
        world: world.clone(),
        observed: observed.clone(),
        max_wait: options.max_wait,
        cleaning_up: false,
    });
    match execute::run(&plan, effects, options.parallel).await {
        Ok(report) => quarantined(report.done.len()),
        Err(failed) if failed.waiting && world.is_interrupted() => {
            Err(ReconcileError::Interrupted {
                failed: Box::new(failed),
            })
        }
        Err(failed) if failed.waiting => Err(ReconcileError::Waiting {
            failed: Box::new(failed),
        }),
        Err(failed) => {
            // A run that lost its lease leaves everything to the run that holds it now.
            world.check_lease().await?;
            let Some((env, app)) = rollout_of(&failed.action) else {
                return Err(ReconcileError::RolledBack {
                    failed: Box::new(failed),
                    outcome: "nothing was moved".to_owned(),
                });
            };
            // A host that cannot be reached can neither be cleaned up nor observed: leave the
            // rollout as it is (the balancer keeps traffic on healthy servers) for the next run.
            let lost = world.lost_hosts(&env).await;
            if failed.unreachable || !lost.is_empty() {
                let lost = lost
                    .into_iter()
                    .filter(|l| !failed.message.contains(l.as_str()))
                    .collect();
                return Err(ReconcileError::HostLost {
                    failed: Box::new(failed),
                    env,
                    app,
                    lost,
                });
            }
            let version = world.desired.environments[&env].apps[&app].version.clone();
            let canary = matches!(
                world.desired.environments[&env].apps[&app].strategy,
                crate::desired::Strategy::Canary { .. }
            );
            // Only a canary that is still being judged gives its traffic back: after the
            // final shift, a failed drain or stop of the old version leaves it serving.
            let take_back = canary
                && (failed_by_the_version(&failed.action)
                    || matches!(failed.action, Action::Weigh { .. }));
            let cleaned = match clean_up(&world, &env, &app, take_back, options.parallel).await {
                Ok(()) if canary => format!("rolled back: {env}/{app} traffic is back on the version that served before, and the instances of {version} are stopped"),
                Ok(()) => format!("cleaned up: instances of {version} that got no traffic are stopped; {env}/{app} keeps what serves"),
                Err(e) => format!("cleaning up {env}/{app} failed too: {e}"),
            };
            let outcome = if failed_by_the_version(&failed.action) {
                let current = world
                    .read_rollout(&env, &app)
                    .await?
                    .filter(|r| r.version == version);
                // An abort stays an abort.
                if current.as_ref().is_none_or(|r| r.phase != Phase::Aborted) {
                    let mut record =
                        current.unwrap_or_else(|| world.new_record(&env, &app, &version));
                    record.fingerprint = world.desired.fingerprint(&env, &app);
                    record.phase = Phase::Failed;
                    record.outcome = Some(failed.message.clone());
                    world.write_rollout(&record).await?;
                }
                format!("{cleaned}; {version} is quarantined until its desired state changes or `kube-free retry {app} --env {env}`")
            } else {
                cleaned
            };
            Err(ReconcileError::RolledBack {
                failed: Box::new(failed),
                outcome,
            })
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
        Action::Shift { env, app, .. }
        | Action::Weigh { env, app, .. }
        | Action::Pause { env, app, .. }
        | Action::Conclude { env, app, .. } => Some((env.clone(), app.clone())),
        Action::ApplyConfig { .. } => None,
    }
}

/// Whether a failure of this step is the new version's fault (it does not start, never becomes
/// ready, is not UP in the balancer, fails analysis or is aborted), so that it is quarantined; a
/// balancer or host that fails a step does not quarantine the version.
fn failed_by_the_version(action: &Action) -> bool {
    matches!(
        action,
        Action::Start { .. } | Action::Probe { .. } | Action::Enable { .. } | Action::Pause { .. }
    )
}

/// Takes out and stops the instances of the desired version of `env`/`app` that get no traffic; a
/// canary's that get traffic give it back to the stable version first.
async fn clean_up(
    world: &Arc<World>,
    env: &str,
    app: &str,
    take_back: bool,
    parallel: usize,
) -> Result<(), ReconcileError> {
    let observed = world.observe().await?;
    let d = &world.desired.environments[env].apps[app];
    let plan: Plan = plan::cleanup(&world.desired, &observed, env, app, &d.version, take_back);
    for note in &plan.notes {
        tracing::warn!("{note}");
    }
    tracing::warn!(
        steps = plan.graph.node_count(),
        "cleaning up after the failed rollout\n{}",
        plan.render_text()
    );
    let effects = Arc::new(Live {
        world: world.clone(),
        observed,
        max_wait: None,
        cleaning_up: true,
    });
    execute::run(&plan, effects, parallel)
        .await
        .map(|_| ())
        .map_err(|failed| ReconcileError::RolledBack {
            failed: Box::new(failed),
            outcome: "cleanup stopped".into(),
        })
}

/// `kube-free promote`: the current pause (or, with `all`, every remaining one) of the running
/// canary of `env`/`app` ends; a running or the next reconcile goes on from there.
pub async fn promote(
    world: &World,
    env: &str,
    app: &str,
    all: bool,
) -> Result<String, ReconcileError> {
    let version = &world.desired.environments[env].apps[app].version;
    let mut record = match world.read_rollout(env, app).await? {
        Some(r)
            if r.version == *version && matches!(r.phase, Phase::Progressing | Phase::Paused) =>
        {
            r
        }
        other => {
            return Err(ReconcileError::Gate(format!(
                "{env}/{app} has no canary of {version} in progress to promote ({})",
                describe_record(other.as_ref())
            )))
        }
    };
    record.promote = if all {
        Promote::All
    } else {
        Promote::Step(record.step)
    };
    world.write_rollout(&record).await?;
    Ok(if all {
        format!("promoted {env}/{app} {version}: every remaining pause is skipped")
    } else {
        format!(
            "promoted {env}/{app} {version}: the pause of step {} ends",
            record.step
        )
    })
}

/// `kube-free abort`: the running canary of `env`/`app` gives its traffic back to the stable version
/// and stops; its version is quarantined.
pub async fn abort(
    world: &Arc<World>,
    env: &str,
    app: &str,
    parallel: usize,
) -> Result<String, ReconcileError> {
    let version = world.desired.environments[env].apps[app].version.clone();
    let mut record = match world.read_rollout(env, app).await? {
        Some(r) if r.version == version && r.phase != Phase::Succeeded => r,
        other => {
            return Err(ReconcileError::Gate(format!(
                "{env}/{app} has no rollout of {version} in progress to abort ({})",
                describe_record(other.as_ref())
            )))
        }
    };
    record.phase = Phase::Aborted;
    record.outcome = Some("aborted by `kube-free abort`".into());
    record.fingerprint = world.desired.fingerprint(env, app);
    world.write_rollout(&record).await?;
    // A reconcile of this app that runs now reads the abort within a second, rolls back and gives
    // the lease up; then this finds nothing left to do.
    let ttl = Duration::from_secs(30);
    world.acquire_lease(Duration::from_secs(60), ttl).await?;
    let heartbeat = world.heartbeat(ttl);
    let cleaned = clean_up(world, env, app, true, parallel).await;
    heartbeat.abort();
    world.release_lease().await;
    cleaned?;
    Ok(format!("aborted {env}/{app} {version}: traffic is back on the version that served before and {version} is stopped; it is quarantined until its desired state changes or `kube-free retry {app} --env {env}`"))
}

/// `kube-free retry`: lifts the quarantine of the desired version of `env`/`app`; the next reconcile
/// rolls it out again from the start.
pub async fn retry(world: &World, env: &str, app: &str) -> Result<String, ReconcileError> {
    let version = &world.desired.environments[env].apps[app].version;
    let mut record = match world.read_rollout(env, app).await? {
        Some(r) if r.version == *version && r.phase.quarantines() => r,
        other => {
            return Err(ReconcileError::Gate(format!(
                "{env}/{app} {version} is not quarantined ({})",
                describe_record(other.as_ref())
            )))
        }
    };
    // A record that no longer matches any fingerprint: the next rollout starts afresh.
    record.fingerprint = String::from("retry");
    record.outcome = Some(format!(
        "{} (retried)",
        record.outcome.as_deref().unwrap_or("rolled back")
    ));
    world.write_rollout(&record).await?;
    Ok(format!(
        "{env}/{app} {version} may be rolled out again: run `kube-free reconcile --once`"
    ))
}

fn describe_record(record: Option<&RolloutRecord>) -> String {
    match record {
        None => "no rollout record".into(),
        Some(r) => format!("the last rollout, of {}, is {:?}", r.version, r.phase).to_lowercase(),
    }
}

/// The effects of steps on real hosts and balancers.
pub struct Live {
    world: Arc<World>,
    /// The snapshot the plan was built from (records of instances to stop).
    observed: ObservedState,
    /// See [`Options::max_wait`].
    max_wait: Option<Duration>,
    /// A cleanup runs to its end, also after a signal: it takes traffic off a failed version.
    cleaning_up: bool,
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
        let servers = self.servers(balancer).await?;
        Ok(servers.get(&(at.backend(), at.server())).cloned())
    }

    /// Every server of the balancer as HAProxy reports it now.
    async fn servers(&self, balancer: &str) -> Result<haproxy::Servers, String> {
        self.world
            .balancer(balancer)
            .servers()
            .await
            .map_err(|e| e.to_string())
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

    async fn start(&self, at: &SlotRef, version: &str) -> Result<(), StepError> {
        // Done already (a resumed run)? Never start over a live instance of another version.
        if let Some(record) = self.current_record(at).await? {
            if process::is_alive(self.world.transport(&at.host), &record).await? {
                return if record.version == version {
                    Ok(())
                } else {
                    Err(StepError::Failed(format!(
                        "slot {} on {} already runs {} (pid {})",
                        at.slot, at.host, record.version, record.pid
                    )))
                };
            }
        }
        let host = &self.world.desired.hosts[&at.host];
        let app = self.app(at);
        process::stop_orphan(
            self.world.transport(&at.host),
            &host.state_dir,
            &at.env,
            &at.app,
            &at.slot,
            app.stop_timeout,
        )
        .await?;
        let port = self.port(at);
        let (assignments, command) = instance_command(&self.world.desired, at, version, port)?;
        let mut argv = vec!["env".to_owned()];
        argv.extend(assignments);
        argv.extend(command);
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
        process::start(self.world.transport(&at.host), &spec).await?;
        Ok(())
    }

    async fn probe(&self, at: &SlotRef) -> Result<(), String> {
        let probe = &self.app(at).probe;
        let t = self.world.transport(&at.host);
        let state_dir = &self.world.desired.hosts[&at.host].state_dir;
        let record = self.current_record(at).await?.ok_or_else(|| {
            format!(
                "no readable instance file {}",
                crate::state::instance_file(state_dir, &at.env, &at.app, &at.slot)
            )
        })?;
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
        let (backend, server) = (at.backend(), at.server());
        let commands = match current.admin {
            // Weight 0 first: leaving maintenance makes a server UP at once.
            Admin::Maint => vec![
                haproxy::set_weight(&backend, &server, 0),
                haproxy::set_state(&backend, &server, Admin::Ready),
            ],
            // Its weight is what the balancer gives it now; only the shift changes that.
            Admin::Drain => vec![haproxy::set_state(&backend, &server, Admin::Ready)],
            Admin::Ready => vec![],
        };
        if !commands.is_empty() {
            b.runtime(&commands).await.map_err(|e| e.to_string())?;
        }
        // Until HAProxy's own health check passed: the balancer reaches the instance.
        while !self
            .server(balancer, at)
            .await?
            .is_some_and(|s| s.checked_up())
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Keeps HAProxy's saved state in step with a runtime change, so a reload or restart keeps it.
    async fn save_state(&self, balancer: &str, backend: &str) -> Result<(), String> {
        let _one_at_a_time = self.world.save_lock.lock().await;
        self.world
            .balancer(balancer)
            .save_state(backend)
            .await
            .map_err(|e| e.to_string())
    }

    async fn shift(&self, balancer: &str, to: &[SlotRef], from: &[SlotRef]) -> Result<(), String> {
        let weights: Vec<(&SlotRef, u32)> = to
            .iter()
            .map(|r| (r, FULL_WEIGHT))
            .chain(from.iter().map(|r| (r, 0)))
            .collect();
        self.set_weights(balancer, &weights, to).await
    }

    /// Sets each server's weight in one runtime command (unless all are right already) and reads
    /// them back. Refuses unless every server of `must_be_up` is UP with a passed health check, and
    /// unless some server that is UP keeps a weight above zero.
    async fn set_weights(
        &self,
        balancer: &str,
        weights: &[(&SlotRef, u32)],
        must_be_up: &[SlotRef],
    ) -> Result<(), String> {
        let b = self.world.balancer(balancer);
        let servers = self.servers(balancer).await?;
        let stat = |r: &SlotRef| servers.get(&(r.backend(), r.server()));
        if !weights
            .iter()
            .any(|(r, w)| *w > 0 && stat(r).is_some_and(|s| s.checked_up()))
        {
            return Err(
                "refusing to change weights: no server that is UP would keep any weight".into(),
            );
        }
        // Invariant: weight only goes to servers that HAProxy reports UP and ready.
        for r in must_be_up {
            match servers.get(&(r.backend(), r.server())) {
                Some(s) if s.checked_up() => {}
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
        if weights
            .iter()
            .all(|(r, w)| stat(r).is_some_and(|s| s.weight == *w))
        {
            return Ok(());
        }
        let commands: Vec<String> = weights
            .iter()
            .map(|(r, w)| haproxy::set_weight(&r.backend(), &r.server(), *w))
            .collect();
        b.runtime(&commands).await.map_err(|e| e.to_string())?;
        let after = self.servers(balancer).await?;
        for &(r, want) in weights {
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
        let servers = self.servers(balancer).await?;
        let current = servers.get(&(backend.clone(), server.clone()));
        // Never take traffic away from the last server that can take it.
        if current.is_some_and(|s| s.weight > 0 && s.admin != Admin::Maint) {
            let others_serve = servers.iter().any(|((b, s), stat)| {
                *b == backend && *s != server && stat.weight > 0 && stat.checked_up()
            });
            if !others_serve {
                return Err(format!("refusing to drain {backend}/{server}: no other server of the backend is UP with weight"));
            }
        }
        match current {
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

    /// GETs each of `paths` from every canary instance; the first that does not answer 2xx.
    async fn run_checks(&self, canary: &[SlotRef], paths: &[String]) -> Result<(), String> {
        for at in canary {
            let timeout = self.app(at).probe.timeout;
            let address = haproxy::host_address(&self.world.desired, &at.host);
            for path in paths {
                self.world
                    .prober
                    .probe(&address, self.port(at), path, timeout)
                    .await
                    .map_err(|e| format!("check {path} on {}: {e}", at.host))?;
            }
        }
        Ok(())
    }

    /// The canary's cumulative counters now (summed over its servers).
    async fn counters(&self, balancer: &str, canary: &[SlotRef]) -> Result<Counters, String> {
        let servers = self.servers(balancer).await?;
        Ok(canary
            .iter()
            .filter_map(|r| servers.get(&(r.backend(), r.server())))
            .fold(Counters::default(), |c, s| Counters {
                requests: c.requests + s.requests,
                errors: c.errors + s.errors,
            }))
    }

    async fn save_record(&self, record: &RolloutRecord) -> Result<(), String> {
        self.world
            .write_rollout(record)
            .await
            .map_err(|e| e.to_string())
    }

    /// Makes `step` the step in progress: its analysis window starts now, from the canary's
    /// counters now.
    async fn start_window(
        &self,
        record: &mut RolloutRecord,
        step: usize,
        balancer: &str,
        canary: &[SlotRef],
    ) -> Result<(), String> {
        record.step = step;
        record.step_started_at = crate::state::now();
        record.step_base = self.counters(balancer, canary).await?;
        Ok(())
    }

    /// Canary step `step`: the canary's share to `weight`%, then the record says the step is in
    /// progress (its window starts now, unless it already had started).
    #[allow(clippy::too_many_arguments)]
    async fn weigh(
        &self,
        balancer: &str,
        env: &str,
        app: &str,
        version: &str,
        step: usize,
        weight: u8,
        canary: &[SlotRef],
        stable: &[SlotRef],
    ) -> Result<(), String> {
        let w = u32::from(weight);
        let weights: Vec<(&SlotRef, u32)> = canary
            .iter()
            .map(|r| (r, w))
            .chain(stable.iter().map(|r| (r, 100 - w)))
            .collect();
        let must_be_up = if w > 0 { canary } else { &[] };
        self.set_weights(balancer, &weights, must_be_up).await?;
        self.save_state(balancer, &haproxy::backend_name(env, app))
            .await?;
        let mut record = self
            .world
            .record_for(env, app, version)
            .await
            .map_err(|e| e.to_string())?;
        if record.step != step || record.updated_at == 0 {
            self.start_window(&mut record, step, balancer, canary)
                .await?;
        }
        record.phase = Phase::Progressing;
        tracing::info!(%env, %app, %version, step, weight, "canary weight set");
        self.save_record(&record).await
    }

    /// Canary step `step`'s pause: waits until it is over (or promoted), polling the record for
    /// `kube-free promote` and `kube-free abort`; a wait longer than `--max-wait` ends the run here
    /// (exit 3; the next run resumes). Then the analysis of the step's window: a failure rolls back,
    /// too few requests extend the window (up to `progress_deadline`).
    #[allow(clippy::too_many_arguments)]
    async fn pause(
        &self,
        balancer: &str,
        env: &str,
        app: &str,
        version: &str,
        step: usize,
        pause: crate::desired::Pause,
        canary: &[SlotRef],
    ) -> Result<(), StepError> {
        let crate::desired::Strategy::Canary {
            analysis,
            progress_deadline,
            ..
        } = &self.world.desired.environments[env].apps[app].strategy
        else {
            return Err(StepError::Failed(format!("{env}/{app} is not a canary")));
        };
        let mut record = self
            .world
            .record_for(env, app, version)
            .await
            .map_err(|e| e.to_string())?;
        if record.step > step {
            return Ok(());
        }
        if record.step < step || record.updated_at == 0 {
            self.start_window(&mut record, step, balancer, canary)
                .await?;
            self.save_record(&record).await?;
        }
        let waited_from = tokio::time::Instant::now();
        let max_wait = self.max_wait;
        let pause_secs = match pause {
            crate::desired::Pause::For(d) => d.as_secs_f64().ceil() as u64,
            crate::desired::Pause::UntilPromoted => 0,
        };
        // The window ends here; too few requests move it (never past the progress deadline).
        let mut window_end = record.step_started_at + pause_secs;
        let give_up = record.step_started_at + pause_secs + progress_deadline.as_secs().max(1);
        let (mut failing_record, mut failing_counters) = (Failing::default(), Failing::default());
        loop {
            // Promote and abort come from other processes, through the record. A read that fails
            // (the transport already retried a dropped connection) is tried again for a while.
            let read = self.world.read_rollout(env, app).await;
            let Some(current) = failing_record
                .attempt("reading the rollout record", read)
                .await?
            else {
                continue;
            };
            if let Some(c) = current.as_ref().filter(|c| c.version == version) {
                if c.phase == Phase::Aborted {
                    return Err(StepError::Failed(format!(
                        "aborted by `kube-free abort` at step {step}"
                    )));
                }
                record.promote = c.promote;
            }
            let promoted =
                matches!(record.promote, Promote::All) || record.promote == Promote::Step(step);
            let now = crate::state::now();
            let gate_open = match pause {
                crate::desired::Pause::For(_) => true,
                crate::desired::Pause::UntilPromoted => promoted,
            };
            if gate_open && (now >= window_end || promoted) {
                let Some(a) = analysis else { break };
                let base = record.step_base;
                let read = self.counters(balancer, canary).await;
                let Some(counters) = failing_counters
                    .attempt("reading the balancer's counters", read)
                    .await?
                else {
                    continue;
                };
                if counters.requests < base.requests {
                    // The balancer's counters restarted (a reload): count from here.
                    record.step_base = counters;
                    window_end = (now + pause_secs.max(1)).min(give_up);
                    self.save_record(&record).await?;
                    continue;
                }
                let requests = counters.requests - base.requests;
                let errors = counters.errors.saturating_sub(base.errors);
                let error_rate = if requests == 0 {
                    0.0
                } else {
                    errors as f64 / requests as f64
                };
                let weight = self.world.desired.environments[env].apps[app]
                    .strategy
                    .canary_weight(step);
                let check_failed = self.run_checks(canary, &a.checks).await.err();
                let verdict = if check_failed.is_some() {
                    "failed"
                } else if requests < a.min_requests {
                    "inconclusive"
                } else if error_rate > a.max_error_rate {
                    "failed"
                } else {
                    "passed"
                };
                let figures = StepFigures {
                    step,
                    weight,
                    requests,
                    errors,
                    error_rate,
                    verdict: verdict.to_owned(),
                };
                tracing::info!(%env, %app, %version, step, requests, errors, error_rate, verdict, "canary analysis");
                record.analysis.push(figures);
                if record.analysis.len() > 100 {
                    record.analysis.remove(0);
                }
                match verdict {
                    // A promote is a person's decision: too few requests do not hold it up (errors
                    // still do).
                    "passed" => break,
                    "inconclusive" if promoted => break,
                    "failed" => {
                        record.outcome = Some(match check_failed {
                            Some(e) => format!("analysis failed at step {step}: {e}"),
                            None => format!("analysis failed at step {step}: error rate {error_rate:.3} over {requests} requests is above {}", a.max_error_rate),
                        });
                        self.save_record(&record).await?;
                        return Err(StepError::Failed(
                            record.outcome.clone().unwrap_or_default(),
                        ));
                    }
                    _ if now >= give_up => {
                        record.outcome = Some(format!("analysis inconclusive at step {step}: {requests} requests, fewer than min_requests {}, within the progress deadline of {}", a.min_requests, crate::desired::duration::format(*progress_deadline)));
                        self.save_record(&record).await?;
                        return Err(StepError::Failed(
                            record.outcome.clone().unwrap_or_default(),
                        ));
                    }
                    _ => {
                        window_end = (now + pause_secs.max(5)).min(give_up);
                        self.save_record(&record).await?;
                        continue;
                    }
                }
            }
            if self.world.is_interrupted() {
                return Err(StepError::Waiting(format!(
                    "canary step {step}: interrupted in its pause"
                )));
            }
            // Still waiting: how long, and may this run wait that long?
            let remaining = if gate_open {
                Some(Duration::from_secs(window_end.saturating_sub(now)))
            } else {
                None
            };
            let allowed = max_wait.map(|m| m.saturating_sub(waited_from.elapsed()));
            // A gate waits for a promote at most --max-wait (not at all without it).
            let must_stop = match remaining {
                Some(r) => allowed.is_some_and(|a| r > a),
                None => allowed.is_none_or(|a| a.is_zero()),
            };
            if must_stop {
                let phase = if gate_open {
                    Phase::Progressing
                } else {
                    Phase::Paused
                };
                if record.phase != phase {
                    record.phase = phase;
                    self.save_record(&record).await?;
                }
                return Err(StepError::Waiting(match remaining {
                    Some(r) => format!(
                        "canary step {step} pauses {} more, longer than --max-wait",
                        crate::desired::duration::format(r)
                    ),
                    None => format!(
                        "canary step {step} waits for `kube-free promote {app} --env {env}`"
                    ),
                }));
            }
            if !gate_open && record.phase != Phase::Paused {
                record.phase = Phase::Paused;
                self.save_record(&record).await?;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        self.start_window(&mut record, step + 1, balancer, canary)
            .await?;
        record.phase = Phase::Progressing;
        if record.promote == Promote::Step(step) {
            record.promote = Promote::No;
        }
        self.save_record(&record).await?;
        Ok(())
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

/// What an instance of `version` in slot `at` runs: the environment assignments (given through
/// `env`) and the command, from the app's runtime with its placeholders filled in.
fn instance_command(
    desired: &DesiredState,
    at: &SlotRef,
    version: &str,
    port: u16,
) -> Result<(Vec<String>, Vec<String>), String> {
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
    let crate::desired::Runtime::Process { command, env } = &desired.apps[&at.app].runtime else {
        return Err(format!(
            "app {:?}: the docker runtime is not supported yet",
            at.app
        ));
    };
    let mut assignments = vec![
        format!("PORT={port}"),
        format!("KUBE_FREE_ENV={}", at.env),
        format!("KUBE_FREE_APP={}", at.app),
        format!("KUBE_FREE_SLOT={}", at.slot),
        format!("KUBE_FREE_VERSION={version}"),
    ];
    assignments.extend(env.iter().map(|(k, v)| format!("{k}={}", v.render(value))));
    Ok((
        assignments,
        command.iter().map(|w| w.render(value)).collect(),
    ))
}

/// A host that could not be reached (or did not answer in time: a change may or may not have
/// happened) leaves the rollout as it is; any other error fails the step.
impl From<TransportError> for StepError {
    fn from(e: TransportError) -> Self {
        match e {
            TransportError::Unreachable { .. } | TransportError::Timeout { .. } => {
                StepError::Unreachable(e.to_string())
            }
            e => StepError::Failed(e.to_string()),
        }
    }
}

/// Consecutive failed reads of one kind in a pause: tried again each second for [`Failing::GRACE`],
/// then the step stops as unreachable (a host that stays away must not hold a run until its
/// deadline, and its absence is not the version's fault).
#[derive(Default)]
struct Failing(Option<std::time::Instant>);

impl Failing {
    const GRACE: Duration = Duration::from_secs(10);

    /// The value of a read that worked (and the count starts over); `None` after a pause of a
    /// second when it failed within the grace; an error once reads have failed for longer.
    async fn attempt<T, E: std::fmt::Display>(
        &mut self,
        what: &str,
        read: Result<T, E>,
    ) -> Result<Option<T>, StepError> {
        let e = match read {
            Ok(value) => {
                self.0 = None;
                return Ok(Some(value));
            }
            Err(e) => e,
        };
        let since = *self.0.get_or_insert_with(std::time::Instant::now);
        if since.elapsed() >= Self::GRACE {
            return Err(StepError::Unreachable(format!(
                "{what} failed for {} s: {e}",
                Self::GRACE.as_secs()
            )));
        }
        tracing::warn!(error = %e, "{what} failed; trying again");
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok(None)
    }
}

#[async_trait::async_trait]
impl Effects for Live {
    async fn apply(&self, action: &Action) -> Result<(), StepError> {
        if action.changes() {
            self.world.check_lease().await.map_err(|e| e.to_string())?;
        }
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
                    .map_err(|e| e.to_string())?
            }
            Action::Start { at, version } => self.start(at, version).await?,
            Action::Probe { at } => self.probe(at).await?,
            Action::Enable { balancer, at } => {
                self.enable(balancer, at).await?;
                self.save_state(balancer, &at.backend()).await?
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
                    .await?
            }
            Action::Drain { balancer, at } => {
                self.drain(balancer, at).await?;
                self.save_state(balancer, &at.backend()).await?
            }
            Action::Stop { at, .. } => self.stop(at).await?,
            Action::Weigh {
                balancer,
                env,
                app,
                version,
                step,
                weight,
                canary,
                stable,
            } => {
                self.weigh(balancer, env, app, version, *step, *weight, canary, stable)
                    .await?
            }
            Action::Pause {
                balancer,
                env,
                app,
                version,
                step,
                pause,
                canary,
            } => {
                self.pause(balancer, env, app, version, *step, *pause, canary)
                    .await?
            }
            Action::Conclude {
                env, app, version, ..
            } => {
                let mut record = self
                    .world
                    .record_for(env, app, version)
                    .await
                    .map_err(|e| e.to_string())?;
                record.phase = Phase::Succeeded;
                record.promote = Promote::No;
                if let crate::desired::Strategy::Canary { steps, .. } =
                    &self.world.desired.environments[env].apps[app].strategy
                {
                    record.step = steps.len();
                }
                self.save_record(&record).await?
            }
        }
        Ok(())
    }

    fn stopping(&self) -> Option<String> {
        (!self.cleaning_up && self.world.is_interrupted())
            .then(|| "interrupted by a signal".to_owned())
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
            Action::Weigh { .. } | Action::Conclude { .. } => slack,
            Action::Pause {
                env, app, pause, ..
            } => {
                let progress = match &self.world.desired.environments[env].apps[app].strategy {
                    crate::desired::Strategy::Canary {
                        progress_deadline, ..
                    } => *progress_deadline,
                    _ => Duration::ZERO,
                };
                let pause = match pause {
                    crate::desired::Pause::For(d) => *d,
                    crate::desired::Pause::UntilPromoted => self.max_wait.unwrap_or_default(),
                };
                pause + progress + slack
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::{load, MemFiles};

    /// A local host and an app whose command line is the same for every version: only the
    /// environment kube-free gave the process tells which version it is.
    fn world(state_dir: &str) -> DesiredState {
        let yaml = format!(
            r#"version: 1
hosts:
  here: {{ transport: local, state_dir: {state_dir} }}
balancers:
  edge: {{ kind: haproxy, host: here }}
apps:
  api:
    runtime: {{ kind: process, command: "sleep 600" }}
    slots: {{ blue: 18500, green: 18501 }}
environments:
  prod:
    balancer: edge
    hosts: [here]
    apps:
      api: {{ version: "3.0", listen: "127.0.0.1:18502" }}
"#
        );
        load(&MemFiles::default().with("kube-free.yaml", yaml)).unwrap()
    }

    /// Starts the app as `version` in `slot` the way a start does, but as if for `as_slot`.
    async fn start(w: &World, slot: &str, as_slot: &str, version: &str) -> u32 {
        let state_dir = w.desired.hosts["here"].state_dir.clone();
        let at = |slot: &str| SlotRef {
            env: "prod".into(),
            app: "api".into(),
            host: "here".into(),
            slot: slot.into(),
        };
        let (assignments, command) =
            instance_command(&w.desired, &at(as_slot), version, 18500).unwrap();
        let mut argv = vec!["env".to_owned()];
        argv.extend(assignments);
        argv.extend(command);
        let spec = StartSpec {
            state_dir: &state_dir,
            env: "prod",
            app: "api",
            slot,
            version,
            revision: "r",
            port: 18500,
            argv,
        };
        process::start(w.transport("here"), &spec)
            .await
            .unwrap()
            .pid
    }

    #[tokio::test]
    async fn a_torn_slot_is_known_by_what_its_process_says_of_itself() {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().to_str().unwrap().to_owned();
        let w = World::connect(world(&state_dir), "r".into(), None)
            .await
            .unwrap();
        let torn = |slot: &str| {
            let file = crate::state::instance_file(&state_dir, "prod", "api", slot);
            std::fs::write(&file, "{\"env\":\"pr").unwrap();
            file
        };

        // Started as 2.0 in blue: its environment says so, and its command line is 2.0's.
        let pid = start(&w, "blue", "blue", "2.0").await;
        let record = w
            .recover_instance("here", &torn("blue"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((record.version.as_str(), record.pid), ("2.0", pid));
        assert_eq!(record.argv, ["sleep", "600"]);

        // A process whose environment names another slot is not trusted with a version.
        let pid = start(&w, "green", "blue", "2.0").await;
        let record = w
            .recover_instance("here", &torn("green"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (record.version.as_str(), record.pid),
            (crate::state::UNKNOWN_VERSION, pid)
        );

        // Once it is gone, nothing runs there.
        let kill = process::kill_cmd(pid, "KILL");
        w.transport("here")
            .run(&kill, Duration::from_secs(5))
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while w
            .recover_instance("here", &torn("green"))
            .await
            .unwrap()
            .is_some()
        {
            assert!(std::time::Instant::now() < deadline, "pid {pid} did not go");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Outside the state directory's layout, nothing is rebuilt.
        assert!(w
            .recover_instance("here", &format!("{state_dir}/prod/api.json"))
            .await
            .unwrap()
            .is_none());
        let blue = w
            .recover_instance("here", &torn("blue"))
            .await
            .unwrap()
            .unwrap();
        w.transport("here")
            .run(&process::kill_cmd(blue.pid, "KILL"), Duration::from_secs(5))
            .await
            .unwrap();
    }
}
