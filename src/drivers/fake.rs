//! Fakes of every driver trait (tests only), for fast tests of the reconciler without hosts: one
//! in-memory [`Fleet`] — instances per slot, each balancer's servers, rollout records, leases —
//! shared by a fake runtime per host, a fake balancer, a fake ledger, a fake prober and a clock
//! that follows tokio's (so tests run on a paused clock). Each version behaves as the test says
//! ([`Behaviour`]). The fake balancer checks health the way a real one does (a server is UP when
//! its instance runs a healthy version), counts requests by weight as time passes, and writes down
//! every change and every broken safety rule ([`Fleet::violations`]) for the tests to assert.

use super::lease::{Answer, Holder};
use super::ledger::LeaseOp;
use super::runtime::{Found, Kind, Running, StartSpec};
use super::{
    Balancer, BalancerError, Change, Cmd, Ledger, LedgerError, Output, ProbeError, Prober, Runtime,
    RuntimeError, Transport, TransportError,
};
use crate::desired::DesiredState;
use crate::names::{ServerKey, SlotRef};
use crate::observed::{Admin, BalancerState, Check, Server, ServerCounters, Servers};
use crate::reconcile::{Clock, Drivers};
use crate::state::InstanceRecord;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How instances of a version behave.
#[derive(Clone, Copy, Debug)]
pub struct Behaviour {
    /// Exits as soon as it is started.
    pub exits_at_once: bool,
    /// Answers its readiness probe.
    pub ready: bool,
    /// Passes the balancer's own health check.
    pub healthy: bool,
    /// Answers analysis checks (paths other than the probe's).
    pub checks_pass: bool,
    /// Share of its requests answered with a 5xx.
    pub error_rate: f64,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            exits_at_once: false,
            ready: true,
            healthy: true,
            checks_pass: true,
            error_rate: 0.0,
        }
    }
}

impl Behaviour {
    /// Ready to kube-free's probe, but failing the balancer's own check.
    pub fn unhealthy() -> Behaviour {
        Behaviour {
            healthy: false,
            ..Behaviour::default()
        }
    }

    /// Never answers its readiness probe.
    pub fn never_ready() -> Behaviour {
        Behaviour {
            ready: false,
            ..Behaviour::default()
        }
    }

    /// Exits as soon as it is started.
    pub fn exiting() -> Behaviour {
        Behaviour {
            exits_at_once: true,
            ..Behaviour::default()
        }
    }

    /// Answers this share of its requests with a 5xx.
    pub fn erring(error_rate: f64) -> Behaviour {
        Behaviour {
            error_rate,
            ..Behaviour::default()
        }
    }

    /// Fails every analysis check.
    pub fn failing_checks() -> Behaviour {
        Behaviour {
            checks_pass: false,
            ..Behaviour::default()
        }
    }
}

#[derive(Clone, Debug)]
struct FakeInstance {
    record: InstanceRecord,
    alive: bool,
}

#[derive(Default)]
struct State {
    instances: BTreeMap<SlotRef, FakeInstance>,
    /// Servers by balancer; their `up`, `check` and `label` are worked out when read.
    servers: BTreeMap<String, Servers>,
    configs: BTreeMap<String, Option<String>>,
    records: BTreeMap<(String, String), Vec<u8>>,
    /// Lease per balancer host: (epoch, expires, run id).
    leases: BTreeMap<String, (u64, u64, String)>,
    behaviours: BTreeMap<String, Behaviour>,
    /// Hosts that cannot be reached.
    down: BTreeSet<String>,
    /// Hosts that go down as soon as anything is started on them.
    lost_on_start: BTreeSet<String>,
    next_pid: u32,
    /// Every change, in order: `start`, `stop`, the balancer's runtime changes.
    log: Vec<String>,
    /// Safety rules that a change broke.
    violations: Vec<String>,
    /// Fractions of requests not yet counted, per server.
    carry: BTreeMap<(String, ServerKey), f64>,
    last_traffic: Option<tokio::time::Instant>,
}

/// The fleet the fakes share.
pub struct Fleet {
    state: Mutex<State>,
    /// Host name by address (as the prober is given it), and slot port by (host, port).
    hosts_by_address: BTreeMap<String, String>,
    desired: DesiredState,
    /// Requests per second each backend receives.
    rate: f64,
    /// Wall clock at the start, in seconds; the clock moves with tokio's.
    epoch: u64,
    started: tokio::time::Instant,
}

impl Fleet {
    /// An empty fleet for the hosts and balancers of `desired`: nothing runs, every balancer has
    /// the config the desired state renders and every server in maintenance.
    pub fn new(desired: &DesiredState) -> Arc<Fleet> {
        let mut state = State {
            next_pid: 100,
            ..State::default()
        };
        for b in desired.balancers_in_use() {
            state
                .configs
                .insert(b.to_owned(), Some(rendered_config(desired, b)));
            let servers = state.servers.entry(b.to_owned()).or_default();
            for env in desired.environments_of(b) {
                for (app, d) in &env.apps {
                    for host in &env.hosts {
                        for slot in &d.slots {
                            servers.insert(
                                SlotRef::new(&env.name, app, host, &slot.name).server_key(),
                                server(0, Admin::Maint),
                            );
                        }
                    }
                }
            }
        }
        Arc::new(Fleet {
            state: Mutex::new(state),
            hosts_by_address: desired
                .hosts
                .keys()
                .map(|h| (desired.host_address(h), h.clone()))
                .collect(),
            desired: desired.clone(),
            rate: 1000.0,
            epoch: 1_700_000_000,
            started: tokio::time::Instant::now(),
        })
    }

    /// The drivers of a world on this fleet.
    pub fn drivers(self: &Arc<Self>) -> Drivers {
        let d = &self.desired;
        let host = |h: &str| FakeHost {
            fleet: self.clone(),
            host: h.to_owned(),
        };
        Drivers {
            hosts: d
                .hosts_in_use()
                .into_iter()
                .map(|h| (h.to_owned(), Arc::new(host(h)) as Arc<dyn Transport>))
                .collect(),
            runtimes: d
                .app_hosts()
                .into_iter()
                .map(|h| {
                    let r: Arc<dyn Runtime> = Arc::new(host(h));
                    ((h.to_owned(), Kind::Process), r)
                })
                .collect(),
            balancers: d
                .balancers_in_use()
                .into_iter()
                .map(|b| {
                    let balancer: Arc<dyn Balancer> = Arc::new(FakeBalancer {
                        fleet: self.clone(),
                        name: b.to_owned(),
                        host: d.balancers[b].host.clone(),
                        config: rendered_config(d, b),
                    });
                    (b.to_owned(), balancer)
                })
                .collect(),
            ledgers: d
                .balancer_hosts()
                .into_iter()
                .map(|h| (h.to_owned(), Arc::new(host(h)) as Arc<dyn Ledger>))
                .collect(),
            prober: self.clone(),
            clock: self.clone(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("not poisoned")
    }

    /// Says how instances of `version` behave (healthy, ready and error-free unless told).
    pub fn behave(&self, version: &str, behaviour: Behaviour) {
        self.lock().behaviours.insert(version.to_owned(), behaviour);
    }

    /// Puts an instance of `version` in `at`, running, with the server at `weight` (ready) or in
    /// maintenance (weight 0 and `Maint`).
    pub fn place(&self, at: &SlotRef, version: &str, weight: u32, admin: Admin) {
        let mut s = self.lock();
        s.next_pid += 1;
        let pid = s.next_pid;
        let record = self.record(at, version, pid);
        s.instances.insert(
            at.clone(),
            FakeInstance {
                record,
                alive: true,
            },
        );
        let balancer = self.desired.balancer_of(&at.env).name.clone();
        s.servers
            .entry(balancer)
            .or_default()
            .insert(at.server_key(), server(weight, admin));
    }

    fn record(&self, at: &SlotRef, version: &str, pid: u32) -> InstanceRecord {
        InstanceRecord {
            env: at.env.clone(),
            app: at.app.clone(),
            slot: at.slot.clone(),
            version: version.to_owned(),
            revision: "r".into(),
            port: self
                .desired
                .slot_port(&at.env, &at.app, &at.slot)
                .unwrap_or(0),
            pid,
            start_ticks: 1,
            started_at: 0,
            argv: vec![],
        }
    }

    /// The instance in `at` dies.
    pub fn kill(&self, at: &SlotRef) {
        if let Some(i) = self.lock().instances.get_mut(at) {
            i.alive = false;
        }
    }

    /// `host` can no longer be reached (or again, with `false`).
    pub fn set_down(&self, host: &str, down: bool) {
        let mut s = self.lock();
        if down {
            s.down.insert(host.to_owned());
        } else {
            s.down.remove(host);
            s.lost_on_start.remove(host);
        }
    }

    /// `host` goes down as soon as something is started on it.
    pub fn lose_on_start(&self, host: &str) {
        self.lock().lost_on_start.insert(host.to_owned());
    }

    /// Another run takes every lease over (with a higher epoch).
    pub fn steal_leases(&self) {
        let now = self.now();
        for (epoch, expires, run) in self.lock().leases.values_mut() {
            *epoch += 1;
            *expires = now + 600;
            *run = "thief".into();
        }
    }

    /// The balancer restarts its counters (a reload).
    pub fn reset_counters(&self) {
        let mut s = self.lock();
        self.traffic(&mut s);
        for servers in s.servers.values_mut() {
            for s in servers.values_mut() {
                s.counters = ServerCounters::default();
            }
        }
    }

    /// What runs in `at`: (version, alive).
    pub fn instance(&self, at: &SlotRef) -> Option<(String, bool)> {
        self.lock()
            .instances
            .get(at)
            .map(|i| (i.record.version.clone(), i.alive))
    }

    /// The server of `at`, as the balancer reports it now.
    pub fn server(&self, at: &SlotRef) -> Server {
        let balancer = self.desired.balancer_of(&at.env).name.clone();
        self.report(&self.lock(), &balancer)[&at.server_key()].clone()
    }

    /// Every change so far.
    pub fn log(&self) -> Vec<String> {
        self.lock().log.clone()
    }

    /// Every broken safety rule so far.
    pub fn violations(&self) -> Vec<String> {
        self.lock().violations.clone()
    }

    /// The rollout record of `env`/`app`, parsed.
    pub fn rollout(&self, env: &str, app: &str) -> Option<crate::state::RolloutRecord> {
        let s = self.lock();
        let bytes = s.records.get(&(env.to_owned(), app.to_owned()))?;
        serde_json::from_slice(bytes).ok()
    }

    /// Removes the rollout record of `env`/`app` (lost, or never written).
    pub fn forget_rollout(&self, env: &str, app: &str) {
        self.lock()
            .records
            .remove(&(env.to_owned(), app.to_owned()));
    }

    fn behaviour(s: &State, version: &str) -> Behaviour {
        s.behaviours.get(version).copied().unwrap_or_default()
    }

    /// The slot whose server is `key` in `balancer`'s backends.
    fn slot_of(&self, balancer: &str, key: &ServerKey) -> Option<SlotRef> {
        self.desired.environments_of(balancer).find_map(|env| {
            env.apps.iter().find_map(|(app, d)| {
                env.hosts.iter().find_map(|host| {
                    d.slots
                        .iter()
                        .map(|slot| SlotRef::new(&env.name, app, host, &slot.name))
                        .find(|at| at.server_key() == *key)
                })
            })
        })
    }

    /// Whether the balancer's check finds the instance behind `key` healthy.
    fn healthy(&self, s: &State, balancer: &str, key: &ServerKey) -> bool {
        self.slot_of(balancer, key)
            .and_then(|at| s.instances.get(&at))
            .is_some_and(|i| i.alive && Self::behaviour(s, &i.record.version).healthy)
    }

    /// The servers of `balancer` as it reports them: health worked out from the instances.
    fn report(&self, s: &State, balancer: &str) -> Servers {
        let mut servers = s.servers.get(balancer).cloned().unwrap_or_default();
        for (key, srv) in servers.iter_mut() {
            let healthy = self.healthy(s, balancer, key);
            srv.check = match srv.admin {
                Admin::Maint => Check::None,
                _ if healthy => Check::Passed,
                _ => Check::Failed,
            };
            srv.up = srv.admin != Admin::Maint && healthy;
            srv.label = match (srv.admin, srv.up) {
                (Admin::Maint, _) => "MAINT",
                (Admin::Drain, _) => "DRAIN",
                (Admin::Ready, true) => "UP",
                (Admin::Ready, false) => "DOWN",
            }
            .into();
        }
        servers
    }

    /// Counts the requests every backend got since the last count: `rate` per second, spread by
    /// weight over the servers that serve; a server errs at its version's error rate.
    fn traffic(&self, s: &mut State) {
        let now = tokio::time::Instant::now();
        let elapsed = s
            .last_traffic
            .replace(now)
            .map_or(0.0, |t| (now - t).as_secs_f64());
        let balancers: Vec<String> = s.servers.keys().cloned().collect();
        for b in balancers {
            let report = self.report(s, &b);
            let mut backends: BTreeMap<&str, u32> = BTreeMap::new();
            for ((backend, _), srv) in &report {
                if srv.serving() {
                    *backends.entry(backend).or_default() += srv.weight;
                }
            }
            for (key, srv) in &report {
                let total = backends.get(key.0.as_str()).copied().unwrap_or(0);
                if !srv.serving() || total == 0 {
                    continue;
                }
                let version = self
                    .slot_of(&b, key)
                    .and_then(|at| s.instances.get(&at))
                    .map(|i| i.record.version.clone())
                    .unwrap_or_default();
                let error_rate = Self::behaviour(s, &version).error_rate;
                let carry = s.carry.entry((b.clone(), key.clone())).or_default();
                *carry += self.rate * elapsed * f64::from(srv.weight) / f64::from(total);
                let requests = carry.floor();
                *carry -= requests;
                let errors = (requests * error_rate).round() as u64;
                let stored = s
                    .servers
                    .get_mut(&b)
                    .and_then(|m| m.get_mut(key))
                    .expect("reported servers are stored");
                stored.counters.responses[1] += requests as u64 - errors;
                stored.counters.responses[4] += errors;
            }
        }
    }

    fn unreachable(&self, host: &str) -> Result<(), TransportError> {
        if self.lock().down.contains(host) {
            Err(TransportError::Unreachable {
                host: host.to_owned(),
                message: "the fake host is down".into(),
            })
        } else {
            Ok(())
        }
    }
}

fn server(weight: u32, admin: Admin) -> Server {
    Server {
        admin,
        up: false,
        check: Check::None,
        weight,
        sessions: 0,
        counters: ServerCounters::default(),
        label: String::new(),
    }
}

fn rendered_config(desired: &DesiredState, balancer: &str) -> String {
    let backends: Vec<String> = desired
        .environments_of(balancer)
        .flat_map(|e| {
            e.apps
                .keys()
                .map(|a| crate::names::backend_name(&e.name, a))
        })
        .collect();
    format!("fake config of {balancer}: {}", backends.join(" "))
}

impl Clock for Fleet {
    fn now(&self) -> u64 {
        self.epoch + self.started.elapsed().as_secs()
    }
}

#[async_trait::async_trait]
impl Prober for Fleet {
    async fn probe(
        &self,
        address: &str,
        port: u16,
        path: &str,
        _timeout: Duration,
    ) -> Result<(), ProbeError> {
        let url = format!("http://{address}:{port}{path}");
        let s = self.lock();
        let host = self.hosts_by_address.get(address);
        let instance = s
            .instances
            .iter()
            .find(|(at, i)| Some(&at.host) == host && i.alive && i.record.port == port)
            .map(|(_, i)| i);
        let Some(i) = instance else {
            return Err(ProbeError::Connect { url });
        };
        let b = Self::behaviour(&s, &i.record.version);
        let probe_path = &self.desired.apps[&i.record.app].probe.path;
        let ok = if path == probe_path {
            b.ready
        } else {
            b.checks_pass
        };
        if ok {
            Ok(())
        } else {
            Err(ProbeError::Answered {
                url,
                status: "500 Internal Server Error".into(),
            })
        }
    }
}

/// A fake host: its reachability, its runtime and (for a balancer host) its ledger.
struct FakeHost {
    fleet: Arc<Fleet>,
    host: String,
}

#[async_trait::async_trait]
impl Transport for FakeHost {
    fn host(&self) -> &str {
        &self.host
    }

    /// Only answers whether the host is there (the reconciler's `true`).
    async fn run(&self, cmd: &Cmd, _timeout: Duration) -> Result<Output, TransportError> {
        self.fleet.unreachable(&self.host)?;
        Ok(Output {
            status: Some(if cmd.argv == ["true"] { 0 } else { 127 }),
            ..Output::default()
        })
    }

    async fn connect_unix(&self, path: &str) -> Result<tokio::net::UnixStream, TransportError> {
        Err(TransportError::Process {
            host: self.host.clone(),
            message: format!("a fake host has no socket {path}"),
        })
    }
}

#[async_trait::async_trait]
impl Runtime for FakeHost {
    fn host(&self) -> &str {
        &self.host
    }

    async fn instances(&self) -> Result<Vec<Found>, RuntimeError> {
        self.fleet.unreachable(&self.host)?;
        Ok(self
            .fleet
            .lock()
            .instances
            .iter()
            .filter(|(at, _)| at.host == self.host)
            .map(|(_, i)| Found::Record {
                record: i.record.clone(),
                alive: i.alive,
            })
            .collect())
    }

    async fn instance(&self, at: &SlotRef) -> Result<Option<InstanceRecord>, RuntimeError> {
        self.fleet.unreachable(&self.host)?;
        Ok(self
            .fleet
            .lock()
            .instances
            .get(at)
            .map(|i| i.record.clone()))
    }

    async fn is_alive(&self, record: &InstanceRecord) -> Result<bool, RuntimeError> {
        self.fleet.unreachable(&self.host)?;
        Ok(self
            .fleet
            .lock()
            .instances
            .values()
            .any(|i| i.record.pid == record.pid && i.alive))
    }

    async fn recover(&self, _at: &SlotRef) -> Result<Option<Running>, RuntimeError> {
        Ok(None)
    }

    async fn write_record(&self, _record: &InstanceRecord) -> Result<(), RuntimeError> {
        self.fleet.unreachable(&self.host)?;
        Ok(())
    }

    async fn start(&self, spec: &StartSpec) -> Result<InstanceRecord, RuntimeError> {
        self.fleet.unreachable(&self.host)?;
        let mut s = self.fleet.lock();
        s.log.push(format!(
            "start {} {} in {}",
            spec.version, spec.at.host, spec.at.slot
        ));
        if s.lost_on_start.contains(&self.host) {
            s.down.insert(self.host.clone());
            return Err(TransportError::Unreachable {
                host: self.host.clone(),
                message: "the fake host went down".into(),
            }
            .into());
        }
        if Fleet::behaviour(&s, &spec.version).exits_at_once {
            return Err(RuntimeError::ExitedAtOnce {
                host: self.host.clone(),
                command: spec.launch.command.join(" "),
                log: "fake.log".into(),
                tail: "boom".into(),
            });
        }
        s.next_pid += 1;
        let record = InstanceRecord {
            revision: spec.revision.clone(),
            ..self.fleet.record(&spec.at, &spec.version, s.next_pid)
        };
        s.instances.insert(
            spec.at.clone(),
            FakeInstance {
                record: record.clone(),
                alive: true,
            },
        );
        Ok(record)
    }

    async fn stop(
        &self,
        record: &InstanceRecord,
        _stop_timeout: Duration,
    ) -> Result<(), RuntimeError> {
        self.fleet.unreachable(&self.host)?;
        let at = SlotRef::new(&record.env, &record.app, &self.host, &record.slot);
        let balancer = self.fleet.desired.balancer_of(&record.env).name.clone();
        let mut s = self.fleet.lock();
        s.log.push(format!(
            "stop {} {} in {}",
            record.version, self.host, record.slot
        ));
        if let Some(srv) = s
            .servers
            .get(&balancer)
            .and_then(|m| m.get(&at.server_key()))
        {
            if srv.admin != Admin::Maint && srv.weight > 0 {
                let v = format!(
                    "{} stopped while the balancer could send it requests",
                    at.server()
                );
                s.violations.push(v);
            }
        }
        if s.instances
            .get(&at)
            .is_some_and(|i| i.record.pid == record.pid)
        {
            s.instances.remove(&at);
        }
        Ok(())
    }

    async fn logs(&self, _at: &SlotRef, _lines: u32) -> Result<(String, String), RuntimeError> {
        Ok(("fake.log".into(), String::new()))
    }
}

#[async_trait::async_trait]
impl Ledger for FakeHost {
    fn host(&self) -> &str {
        &self.host
    }

    fn rollout_file(&self, env: &str, app: &str) -> String {
        format!("rollouts/{env}/{app}.json")
    }

    async fn read_rollout(&self, env: &str, app: &str) -> Result<Option<Vec<u8>>, LedgerError> {
        self.fleet.unreachable(&self.host)?;
        let s = self.fleet.lock();
        Ok(s.records.get(&(env.to_owned(), app.to_owned())).cloned())
    }

    async fn write_rollout(&self, env: &str, app: &str, bytes: &[u8]) -> Result<(), LedgerError> {
        self.fleet.unreachable(&self.host)?;
        let mut s = self.fleet.lock();
        s.records
            .insert((env.to_owned(), app.to_owned()), bytes.to_vec());
        Ok(())
    }

    async fn lease(&self, op: &LeaseOp) -> Result<Answer, LedgerError> {
        self.fleet.unreachable(&self.host)?;
        let now = self.fleet.now();
        let mut s = self.fleet.lock();
        let current = s.leases.get(&self.host).cloned();
        let holder = |(epoch, expires, run): &(u64, u64, String)| Holder {
            epoch: *epoch,
            expires: *expires,
            run_id: run.clone(),
            host: "fake".into(),
            pid: 1,
        };
        let held_by = |run_id: &str, epoch: Option<u64>| {
            current.as_ref().is_some_and(|(e, expires, run)| {
                run == run_id && *expires > now && epoch.is_none_or(|want| want == *e)
            })
        };
        Ok(match op {
            LeaseOp::Acquire {
                run_id, ttl_secs, ..
            } => match &current {
                Some(c) if c.2 != *run_id && c.1 > now => Answer::Taken {
                    holder: holder(c),
                    now,
                },
                _ => {
                    let epoch = match &current {
                        Some((e, _, run)) if run == run_id => *e,
                        Some((e, _, _)) => e + 1,
                        None => 1,
                    };
                    let expires = now + ttl_secs;
                    s.leases
                        .insert(self.host.clone(), (epoch, expires, run_id.clone()));
                    Answer::Held { epoch, expires }
                }
            },
            LeaseOp::Renew {
                run_id,
                ttl_secs,
                epoch,
            } if held_by(run_id, Some(*epoch)) => {
                let expires = now + ttl_secs;
                s.leases
                    .insert(self.host.clone(), (*epoch, expires, run_id.clone()));
                Answer::Held {
                    epoch: *epoch,
                    expires,
                }
            }
            LeaseOp::Check { run_id, epoch } if held_by(run_id, Some(*epoch)) => {
                let (e, expires, _) = current.expect("held");
                Answer::Held { epoch: e, expires }
            }
            LeaseOp::Renew { .. } | LeaseOp::Check { .. } => Answer::Lost {
                holder: current.as_ref().map(holder),
            },
            LeaseOp::Release { run_id } => {
                if current.as_ref().is_some_and(|c| c.2 == *run_id) {
                    s.leases.remove(&self.host);
                }
                Answer::Released
            }
        })
    }
}

/// A fake balancer: servers in memory, health from the fleet's instances.
struct FakeBalancer {
    fleet: Arc<Fleet>,
    name: String,
    host: String,
    config: String,
}

#[async_trait::async_trait]
impl Balancer for FakeBalancer {
    fn name(&self) -> &str {
        &self.name
    }

    fn host(&self) -> &str {
        &self.host
    }

    async fn observe(&self) -> Result<BalancerState, BalancerError> {
        let servers = self.servers().await?;
        Ok(BalancerState {
            config: self.fleet.lock().configs.get(&self.name).cloned().flatten(),
            servers,
        })
    }

    async fn servers(&self) -> Result<Servers, BalancerError> {
        self.fleet.unreachable(&self.host)?;
        let mut s = self.fleet.lock();
        self.fleet.traffic(&mut s);
        Ok(self.fleet.report(&s, &self.name))
    }

    /// Applies the changes one by one, noting every safety rule one of them breaks.
    async fn apply(&self, changes: &[Change]) -> Result<(), BalancerError> {
        self.fleet.unreachable(&self.host)?;
        let mut s = self.fleet.lock();
        self.fleet.traffic(&mut s);
        let serves = |servers: &Servers, backend: &str| {
            servers
                .iter()
                .any(|(k, srv)| k.0 == backend && srv.serving() && srv.checked_up())
        };
        let at_first = self.fleet.report(&s, &self.name);
        for change in changes {
            let before = self.fleet.report(&s, &self.name);
            let (key, text) = match change {
                Change::Weight(k, w) => (k, format!("weight {}/{} {w}", k.0, k.1)),
                Change::State(k, a) => (k, format!("state {}/{} {a:?}", k.0, k.1)),
            };
            let Some(current) = before.get(key) else {
                return Err(BalancerError::Refused {
                    balancer: self.name.clone(),
                    host: self.host.clone(),
                    command: text,
                    answer: "No such server.".into(),
                });
            };
            let broken = match change {
                Change::Weight(_, w) if *w > 0 && !current.checked_up() => Some(format!(
                    "{text}: weight to a server that is {}",
                    current.label
                )),
                Change::State(_, Admin::Ready)
                    if current.admin == Admin::Maint && current.weight > 0 =>
                {
                    Some(format!(
                        "{text}: left maintenance with weight {}",
                        current.weight
                    ))
                }
                _ => None,
            };
            s.violations.extend(broken);
            s.log.push(text);
            let stored = s
                .servers
                .get_mut(&self.name)
                .and_then(|m| m.get_mut(key))
                .expect("reported servers are stored");
            match change {
                Change::Weight(_, w) => stored.weight = *w,
                Change::State(_, a) => stored.admin = *a,
            }
        }
        // A backend that served before the batch still has a server that serves.
        let after = self.fleet.report(&s, &self.name);
        for change in changes {
            let (Change::Weight(k, _) | Change::State(k, _)) = change;
            if serves(&at_first, &k.0) && !serves(&after, &k.0) {
                let v = format!("{}: no server serves after the batch", k.0);
                s.violations.push(v);
            }
        }
        Ok(())
    }

    fn rendered_config(&self) -> &str {
        &self.config
    }

    async fn apply_config(&self) -> Result<(), BalancerError> {
        self.fleet.unreachable(&self.host)?;
        let mut s = self.fleet.lock();
        s.log.push(format!("config {}", self.name));
        s.configs
            .insert(self.name.clone(), Some(self.config.clone()));
        Ok(())
    }

    async fn save_state(&self, _backend: &str) -> Result<(), BalancerError> {
        self.fleet
            .unreachable(&self.host)
            .map_err(BalancerError::from)
    }
}
