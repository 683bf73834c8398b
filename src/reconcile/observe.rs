//! Observation: the snapshot a plan is built from — every app host's instances (through its
//! runtimes, each alive instance probed once, a host's all at once), every balancer's config and
//! servers, every rollout record — read in parallel. An instance record that cannot be read is
//! never trusted: the slot is rebuilt from what runs there, its version believed only when the
//! process says it of itself, and `reconcile` writes the record again. Also: which balancer configs
//! are stale, and which hosts of an environment cannot be reached now.

use super::effects::launch;
use super::world::spawn_gated;
use super::{ReconcileError, World};
use crate::drivers::runtime::{Found, Running};
use crate::drivers::{Cmd, ProbeError, Runtime};
use crate::names::SlotRef;
use crate::observed::{HostState, Instance, ObservedState};
use crate::plan::Scope;
use crate::state::{InstanceRecord, UNKNOWN_VERSION};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

const READ_TIMEOUT: Duration = Duration::from_secs(20);

impl World {
    /// Observes every host and balancer this run reaches, and every rollout record there, in
    /// parallel.
    pub async fn observe(self: &Arc<Self>) -> Result<ObservedState, ReconcileError> {
        // At most `--parallel` hosts at a time: each is one round trip (its instances), plus a
        // probe of each live instance, all at once.
        let gate = Arc::new(tokio::sync::Semaphore::new(self.parallel));
        let mut hosts = Vec::new();
        for name in self.app_hosts() {
            let (world, name) = (self.clone(), name.to_owned());
            hosts.push(spawn_gated(&gate, async move {
                let state = world.observe_host(&name).await?;
                Ok::<_, ReconcileError>((name, state))
            }));
        }
        let mut balancers = Vec::new();
        for name in self.balancers() {
            let (world, name) = (self.clone(), name.to_owned());
            balancers.push(spawn_gated(&gate, async move {
                let state = world.balancer(&name).observe().await?;
                Ok::<_, ReconcileError>((name, state))
            }));
        }
        // Every record of a balancer host in one read.
        let mut ledgers = Vec::new();
        for host in self.balancer_hosts() {
            let (ledger, host) = (self.drivers.ledgers[host].clone(), host.to_owned());
            ledgers.push(spawn_gated(&gate, async move {
                (host, ledger.rollouts().await)
            }));
        }
        let mut observed = ObservedState::default();
        for l in ledgers {
            let (host, found) = l.await.expect("observing does not panic");
            let found = found?;
            observed.rolled_out_envs.extend(found.envs);
            for ((env, app), bytes) in found.records {
                // The records of this desired state's deployments, from their balancer's host.
                let ours = self.desired.deployment(&env, &app).is_some()
                    && self.desired.balancer_of(&env).host == host;
                if !ours {
                    continue;
                }
                if let (Some(record), _) = self.decode_record(&env, &app, &bytes) {
                    observed.rollouts.insert((env, app), record);
                }
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

    async fn observe_host(&self, name: &str) -> Result<HostState, ReconcileError> {
        let mut state = HostState::default();
        // The records to probe, probed all at once below.
        let mut records = Vec::new();
        for runtime in self.runtimes_on(name) {
            for found in runtime.instances().await? {
                match found {
                    Found::Unreadable { path, error, slot } => {
                        let recovered = match slot {
                            Some((env, app, slot)) => {
                                let at = SlotRef::new(&env, &app, name, &slot);
                                self.recover_instance(runtime, &at).await?
                            }
                            None => None,
                        };
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
                            state.recovered.push(key.clone());
                            state
                                .instances
                                .insert(key, self.seen(name, record, true).await);
                        }
                    }
                    Found::Record { record, alive } => records.push((record, alive)),
                }
            }
        }
        let seen = records.into_iter().map(|(record, alive)| async move {
            let key = (record.env.clone(), record.app.clone(), record.slot.clone());
            (key, self.seen(name, record, alive).await)
        });
        state
            .instances
            .extend(futures_util::future::join_all(seen).await);
        Ok(state)
    }

    /// The instance of slot `at`, whose record cannot be read, rebuilt from what runs there: `None`
    /// when nothing runs or the slot is not in the desired state. Its version is the one the
    /// process says of itself (see [`recovered_version`]); else unknown.
    pub(super) async fn recover_instance(
        &self,
        runtime: &dyn Runtime,
        at: &SlotRef,
    ) -> Result<Option<InstanceRecord>, ReconcileError> {
        let Some(port) = self.desired.slot_port(&at.env, &at.app, &at.slot) else {
            return Ok(None);
        };
        let Some(running) = runtime.recover(at).await? else {
            return Ok(None);
        };
        Ok(Some(InstanceRecord {
            env: at.env.clone(),
            app: at.app.clone(),
            slot: at.slot.clone(),
            version: recovered_version(&self.desired, at, port, &running),
            revision: String::new(),
            port,
            pid: running.pid,
            start_ticks: running.start_ticks,
            started_at: 0,
            argv: running.argv,
            container: None,
            // Its command is this version's (or its version is unknown); what else it was
            // given is not told: taken as wanted.
            spec: None,
        }))
    }

    /// Writes the instance records that could not be read again, from what observation rebuilt
    /// (reconcile only, under the lease).
    pub async fn repair_instance_files(
        &self,
        observed: &ObservedState,
        scope: &Scope,
    ) -> Result<(), ReconcileError> {
        for (name, host) in &observed.hosts {
            for key in host.recovered.iter().filter(|k| scope.includes(&k.0, &k.1)) {
                let record = &host.instances[key].record;
                let at = SlotRef::new(&key.0, &key.1, name, &key.2);
                self.runtime(&at)?.write_record(record).await?;
                tracing::warn!(host = %name, env = %key.0, app = %key.1, slot = %key.2, version = %record.version, pid = record.pid, "instance file repaired from what runs");
            }
        }
        Ok(())
    }

    /// An instance as observed: probed once when it runs and its app is still in the desired state
    /// (one of an app that is no longer there is never ready: there is no probe to ask).
    async fn seen(&self, host: &str, record: InstanceRecord, alive: bool) -> Instance {
        let ready = match alive {
            false => None,
            true if self.desired.apps.contains_key(&record.app) => Some(
                self.probe_once(host, &record.app, record.port)
                    .await
                    .is_ok(),
            ),
            true => Some(false),
        };
        Instance {
            record,
            alive,
            ready,
        }
    }

    /// One probe of the instance of `app` (of the desired state) on `host` at `port`.
    pub(super) async fn probe_once(
        &self,
        host: &str,
        app: &str,
        port: u16,
    ) -> Result<(), ProbeError> {
        self.probe_path(host, app, port, &self.desired.apps[app].probe.path)
            .await
    }

    /// One GET of `path` from the instance of `app` on `host` at `port`, within the app's probe
    /// timeout: its readiness probe, or an analysis check.
    pub(super) async fn probe_path(
        &self,
        host: &str,
        app: &str,
        port: u16,
        path: &str,
    ) -> Result<(), ProbeError> {
        let timeout = self.desired.apps[app].probe.timeout;
        self.prober()
            .probe(&self.desired.host_address(host), port, path, timeout)
            .await
    }

    /// Balancers whose config file is not the one the desired state renders.
    pub fn stale_configs(&self, observed: &ObservedState) -> BTreeSet<String> {
        self.balancers()
            .into_iter()
            .filter(|b| {
                observed.balancers.get(*b).and_then(|s| s.config.as_deref())
                    != Some(self.balancer(b).rendered_config())
            })
            .map(str::to_owned)
            .collect()
    }

    /// The hosts of `env` and its balancer's host that cannot be reached now (each after the
    /// transport's own reconnect attempts), with why.
    pub(super) async fn lost_hosts(&self, env: &str) -> Vec<String> {
        let mut lost = Vec::new();
        for host in self.desired.hosts_of(env) {
            let check = Cmd::read(["true"]);
            if let Err(e) = self.host(host).run(&check, READ_TIMEOUT).await {
                if e.lost_contact() {
                    lost.push(e.to_string());
                }
            }
        }
        lost
    }
}

/// The version a process that runs in slot `at` says it is: the start gave it
/// `KUBE_FREE_{ENV,APP,SLOT,VERSION}`, trusted only when they name this slot and its command line
/// is exactly what that version runs there; else [`UNKNOWN_VERSION`].
pub(super) fn recovered_version(
    desired: &crate::desired::DesiredState,
    at: &SlotRef,
    port: u16,
    running: &Running,
) -> String {
    let var = |name: &str| {
        running
            .environ
            .iter()
            .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
    };
    var("KUBE_FREE_VERSION")
        .filter(|_| {
            var("KUBE_FREE_ENV") == Some(&at.env)
                && var("KUBE_FREE_APP") == Some(&at.app)
                && var("KUBE_FREE_SLOT") == Some(&at.slot)
        })
        .filter(|v| launch(desired, at, v, port).is_ok_and(|l| l.command == running.argv))
        .unwrap_or(UNKNOWN_VERSION)
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::{load, DesiredState, MemFiles};
    use crate::drivers::runtime::{Kind, StartSpec};

    /// A local host and an app whose command line is the same for every version: only the
    /// environment kube-free gave the process tells which version it is.
    fn desired(state_dir: &str) -> DesiredState {
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

    fn at(slot: &str) -> SlotRef {
        SlotRef::new("prod", "api", "here", slot)
    }

    /// Starts the app as `version` in `slot` the way a start does, but as if for `as_slot`.
    async fn start(w: &World, slot: &str, as_slot: &str, version: &str) -> u32 {
        let spec = StartSpec {
            at: at(slot),
            version: version.into(),
            revision: "r".into(),
            port: 18500,
            launch: launch(&w.desired, &at(as_slot), version, 18500).unwrap(),
            spec: crate::desired::spec::Spec::example(),
            stop_timeout: Duration::from_secs(5),
        };
        w.runtime(&at(slot))
            .unwrap()
            .start(&spec)
            .await
            .unwrap()
            .pid
    }

    #[tokio::test]
    async fn a_torn_slot_is_known_by_what_its_process_says_of_itself() {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().to_str().unwrap().to_owned();
        let w = World::connect(desired(&state_dir), "r".into(), None)
            .await
            .unwrap();
        let runtime = w.drivers.runtimes[&("here".to_owned(), Kind::Process)].clone();
        let torn = |slot: &str| {
            let file = crate::state::instance_file(&state_dir, "prod", "api", slot);
            std::fs::write(&file, "{\"env\":\"pr").unwrap();
        };
        let recover = |slot: &'static str| {
            let runtime = runtime.clone();
            let w = &w;
            async move {
                torn(slot);
                w.recover_instance(runtime.as_ref(), &at(slot))
                    .await
                    .unwrap()
            }
        };

        // Started as 2.0 in blue: its environment says so, and its command line is 2.0's.
        let pid = start(&w, "blue", "blue", "2.0").await;
        let record = recover("blue").await.unwrap();
        assert_eq!((record.version.as_str(), record.pid), ("2.0", pid));
        assert_eq!(record.argv, ["sleep", "600"]);
        // Observation reports the torn file and rebuilds the slot from what runs.
        let host = w.observe_host("here").await.unwrap();
        assert_eq!(host.unreadable.len(), 1, "{host:?}");
        assert_eq!(
            host.recovered,
            [("prod".into(), "api".into(), "blue".into())]
        );
        assert_eq!(
            host.instances[&("prod".into(), "api".into(), "blue".into())]
                .record
                .pid,
            pid
        );

        // A process whose environment names another slot is not trusted with a version.
        let pid = start(&w, "green", "blue", "2.0").await;
        let record = recover("green").await.unwrap();
        assert_eq!(
            (record.version.as_str(), record.pid),
            (UNKNOWN_VERSION, pid)
        );

        // Once it is gone, nothing runs there.
        let kill = crate::drivers::process::session_cmd(pid, record.start_ticks, Some("KILL"));
        w.host("here").run(&kill, READ_TIMEOUT).await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while recover("green").await.is_some() {
            assert!(std::time::Instant::now() < deadline, "pid {pid} did not go");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // A slot the desired state does not have is not rebuilt.
        let stray = SlotRef::new("prod", "api", "here", "red");
        assert!(w
            .recover_instance(runtime.as_ref(), &stray)
            .await
            .unwrap()
            .is_none());
        let blue = recover("blue").await.unwrap();
        let kill = crate::drivers::process::session_cmd(blue.pid, blue.start_ticks, Some("KILL"));
        w.host("here").run(&kill, READ_TIMEOUT).await.unwrap();
    }
}
