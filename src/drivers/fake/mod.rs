//! Fakes of every driver trait (tests only), for fast tests of the reconciler without hosts: one
//! in-memory [`Fleet`] — instances per slot, each balancer's servers, rollout records, leases, audit logs —
//! shared by a fake runtime per host, a fake balancer, a fake ledger, a fake prober and a clock
//! that follows tokio's (so tests run on a paused clock). Each version behaves as the test says
//! ([`Behaviour`]). The fake balancer checks health the way a real one does (a server is UP when
//! its instance runs a healthy version), counts requests by weight as time passes, and writes down
//! every change and every broken safety rule ([`Fleet::violations`]) for the tests to assert.
//! This file holds the fleet, the prober and the clock; `host` a host (its reachability, runtime
//! and ledger); `balancer` the balancer.

mod balancer;
mod host;

use super::runtime::Kind;
use super::{Balancer, Ledger, ProbeError, Prober, Runtime, Transport, TransportError};
use crate::desired::DesiredState;
use crate::names::{ServerKey, SlotRef};
use crate::observed::{Admin, Check, Server, ServerCounters, Servers};
use crate::reconcile::{Clock, Drivers};
use crate::state::InstanceRecord;
use balancer::FakeBalancer;
use host::FakeHost;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How instances of a version behave.
#[derive(Clone, Copy, Debug)]
pub struct Behaviour {
    /// Exits as soon as it is started.
    pub exits_at_once: bool,
    /// Exits this long after it started (having passed its probe and taken traffic).
    pub exits_after: Option<Duration>,
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
            exits_after: None,
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

    /// Exits `after` its start.
    pub fn dying(after: Duration) -> Behaviour {
        Behaviour {
            exits_after: Some(after),
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
    /// The suspensions file per balancer host.
    suspensions: BTreeMap<String, Vec<u8>>,
    /// The last-applied file per balancer host.
    applied: BTreeMap<String, Vec<u8>>,
    /// The audit log per balancer host.
    audit: BTreeMap<String, Vec<u8>>,
    /// Lease per balancer host: (epoch, expires, run id).
    leases: BTreeMap<String, (u64, u64, String)>,
    behaviours: BTreeMap<String, Behaviour>,
    /// Hosts that cannot be reached.
    down: BTreeSet<String>,
    /// Hosts that go down as soon as anything is started on them.
    lost_on_start: BTreeSet<String>,
    /// Hosts whose next start loses the connection, though the host stays.
    blip_on_start: BTreeSet<String>,
    next_pid: u32,
    /// Every change, in order, with when it happened: `start`, `stop`, `config`, the balancer's
    /// runtime changes and saves.
    log: Vec<(Duration, String)>,
    /// When a server left maintenance (its first health check is due a [`CHECK_EVERY`] later).
    enabled_at: BTreeMap<(String, ServerKey), tokio::time::Instant>,
    /// When a server was put to drain.
    drained_at: BTreeMap<(String, ServerKey), tokio::time::Instant>,
    /// Sessions a server holds while it serves, and how long after a drain they last.
    sessions: BTreeMap<(String, ServerKey), (u64, Duration)>,
    /// The weights and admin states a balancer restart would restore, per balancer.
    saved: BTreeMap<String, BTreeMap<ServerKey, (u32, Admin)>>,
    /// Safety rules that a change broke.
    violations: Vec<String>,
    /// How long reading a host's instances takes ([`Fleet::slow_observation`]), and how many
    /// hosts were being read at once: now, and at most.
    observe_delay: Duration,
    observing: (usize, usize),
    /// How long a probe takes ([`Fleet::slow_probes`]), and how many ran at once: now, and at
    /// most.
    probe_delay: Duration,
    probing: (usize, usize),
    /// Fractions of requests not yet counted, per server.
    carry: BTreeMap<(String, ServerKey), f64>,
    last_traffic: Option<tokio::time::Instant>,
    /// Another writer that comes first, once: just before a rollout record write whose new record
    /// `.0` accepts is compared, `.1` changes the stored record (see [`Fleet::meanwhile`]).
    meanwhile: Option<(RecordTest, RecordChange)>,
}

type RecordTest = Box<dyn Fn(&crate::state::RolloutRecord) -> bool + Send>;
type RecordChange = Box<dyn FnOnce(&mut crate::state::RolloutRecord) + Send>;

/// How often the fake balancer checks a server's health: a server that leaves maintenance is UP at
/// once, as HAProxy reports it, but its check has no result until then.
const CHECK_EVERY: Duration = Duration::from_millis(200);

/// The fleet the fakes share.
pub struct Fleet {
    state: Mutex<State>,
    /// Host name by address (as the prober is given it).
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
            let saved = state.saved.entry(b.to_owned()).or_default();
            for env in desired.environments_of(b) {
                for (app, d) in &env.apps {
                    for host in &env.hosts {
                        for slot in &d.slots {
                            let key = SlotRef::new(&env.name, app, host, &slot.name).server_key();
                            servers.insert(key.clone(), server(0, Admin::Maint));
                            saved.insert(key, (0, Admin::Maint));
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

    /// The suspensions file of balancer host `host`, as text.
    pub fn suspensions(&self, host: &str) -> Option<String> {
        let s = self.lock();
        s.suspensions
            .get(host)
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }

    /// Replaces the suspensions file of balancer host `host` (a torn one, in tests).
    pub fn set_suspensions(&self, host: &str, bytes: &[u8]) {
        self.lock()
            .suspensions
            .insert(host.to_owned(), bytes.to_vec());
    }

    /// The lines of the audit log of balancer host `host`, parsed.
    pub fn audit(&self, host: &str) -> Vec<crate::state::AuditLine> {
        let s = self.lock();
        let text = s
            .audit
            .get(host)
            .map(|b| String::from_utf8_lossy(b).into_owned());
        text.unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("an audit line"))
            .collect()
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
            fences: BTreeMap::new(),
            prober: self.clone(),
            clock: self.clone(),
        }
    }

    /// A host's instances being read: takes the delay [`Fleet::slow_observation`] set, counted
    /// among the hosts read at once meanwhile.
    pub(super) async fn observing(&self) {
        let delay = {
            let mut s = self.lock();
            if s.observe_delay.is_zero() {
                return;
            }
            s.observing.0 += 1;
            s.observing.1 = s.observing.1.max(s.observing.0);
            s.observe_delay
        };
        tokio::time::sleep(delay).await;
        self.lock().observing.0 -= 1;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("not poisoned")
    }

    /// Says how instances of `version` behave (healthy, ready and error-free unless told).
    pub fn behave(&self, version: &str, behaviour: Behaviour) {
        self.lock().behaviours.insert(version.to_owned(), behaviour);
    }

    /// Instances of `version` on `host` behave as `behaviour` (elsewhere as [`Fleet::behave`] says).
    pub fn behave_on(&self, host: &str, version: &str, behaviour: Behaviour) {
        self.lock()
            .behaviours
            .insert(format!("{version}@{host}"), behaviour);
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
            .entry(balancer.clone())
            .or_default()
            .insert(at.server_key(), server(weight, admin));
        // As an earlier run left it: saved.
        s.saved
            .entry(balancer)
            .or_default()
            .insert(at.server_key(), (weight, admin));
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
            container: None,
            spec: None,
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

    /// The next start on `host` loses its connection (the host itself stays reachable).
    pub fn blip_on_start(&self, host: &str) {
        self.lock().blip_on_start.insert(host.to_owned());
    }

    /// The server of `at` holds `n` sessions while it serves, which end `linger` after it is put
    /// to drain.
    pub fn hold_sessions(&self, at: &SlotRef, n: u64, linger: Duration) {
        let balancer = self.desired.balancer_of(&at.env).name.clone();
        self.lock()
            .sessions
            .insert((balancer, at.server_key()), (n, linger));
    }

    /// The config of `balancer` is not the one the desired state renders (a first deploy).
    pub fn stale_config(&self, balancer: &str) {
        self.lock().configs.insert(balancer.to_owned(), None);
    }

    /// Servers of `balancer` whose weight or admin state a restart would not restore: what changed
    /// since the last save.
    pub fn unsaved(&self, balancer: &str) -> Vec<ServerKey> {
        let s = self.lock();
        let saved = s.saved.get(balancer);
        s.servers
            .get(balancer)
            .into_iter()
            .flatten()
            .filter(|(k, srv)| saved.and_then(|m| m.get(*k)) != Some(&(srv.weight, srv.admin)))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Notes a change at the time it happens.
    fn note(&self, s: &mut State, what: String) {
        s.log.push((self.started.elapsed(), what));
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

    /// Run `run` holds the lease on `host` for `secs` more (epoch one higher than any before).
    pub fn hold_lease(&self, host: &str, run: &str, secs: u64) {
        let now = self.now();
        let mut s = self.lock();
        let epoch = s.leases.get(host).map_or(1, |l| l.0 + 1);
        s.leases
            .insert(host.to_owned(), (epoch, now + secs, run.to_owned()));
    }

    /// The lease on `host`: (epoch, expires, run id), and the fleet's clock now.
    pub fn lease_on(&self, host: &str) -> (Option<(u64, u64, String)>, u64) {
        let now = self.now();
        (self.lock().leases.get(host).cloned(), now)
    }

    /// Reading a host's instances takes `delay` from now on; [`Fleet::most_observed_at_once`]
    /// says how many hosts were read at once.
    pub fn slow_observation(&self, delay: Duration) {
        self.lock().observe_delay = delay;
    }

    /// The most hosts whose instances were being read at once (while observation was slow),
    /// since the fleet began or [`Fleet::reset_most_observed`].
    pub fn most_observed_at_once(&self) -> usize {
        self.lock().observing.1
    }

    /// A probe takes `delay` from now on; [`Fleet::most_probed_at_once`] says how many ran at
    /// once.
    pub fn slow_probes(&self, delay: Duration) {
        self.lock().probe_delay = delay;
    }

    /// The most probes that ran at once (while probes were slow).
    pub fn most_probed_at_once(&self) -> usize {
        self.lock().probing.1
    }

    pub fn reset_most_observed(&self) {
        self.lock().observing.1 = 0;
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
        self.lock().log.iter().map(|(_, l)| l.clone()).collect()
    }

    /// When the change `entry` happened (the first one if several), since the fleet was made.
    pub fn when(&self, entry: &str) -> Option<Duration> {
        let s = self.lock();
        s.log.iter().find(|(_, l)| l == entry).map(|(t, _)| *t)
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

    /// Once, at the next write of a rollout record whose new content `when` accepts, `change` is
    /// made to the stored record just before that write is compared with what its writer read: as
    /// if another process (`kube-free abort`, say) wrote between the writer's read and its write.
    pub fn meanwhile(
        &self,
        when: impl Fn(&crate::state::RolloutRecord) -> bool + Send + 'static,
        change: impl FnOnce(&mut crate::state::RolloutRecord) + Send + 'static,
    ) {
        self.lock().meanwhile = Some((Box::new(when), Box::new(change)));
    }

    /// Removes the rollout record of `env`/`app` (lost, or never written).
    pub fn forget_rollout(&self, env: &str, app: &str) {
        self.lock()
            .records
            .remove(&(env.to_owned(), app.to_owned()));
    }

    /// How `version` behaves on `host` (see [`Fleet::behave_on`]), else everywhere.
    fn behaviour(s: &State, host: &str, version: &str) -> Behaviour {
        s.behaviours
            .get(&format!("{version}@{host}"))
            .or_else(|| s.behaviours.get(version))
            .copied()
            .unwrap_or_default()
    }

    /// The instance in the slot whose server is `key`, if one is there.
    fn instance_behind<'s>(
        s: &'s State,
        key: &ServerKey,
    ) -> Option<(&'s SlotRef, &'s FakeInstance)> {
        s.instances.iter().find(|(at, _)| at.server_key() == *key)
    }

    /// Whether the balancer's check finds the instance behind `key` healthy.
    fn healthy(s: &State, key: &ServerKey) -> bool {
        Self::instance_behind(s, key).is_some_and(|(at, i)| {
            i.alive && Self::behaviour(s, &at.host, &i.record.version).healthy
        })
    }

    /// The servers of `balancer` as it reports them: health worked out from the instances.
    fn report(&self, s: &State, balancer: &str) -> Servers {
        let now = tokio::time::Instant::now();
        let mut servers = s.servers.get(balancer).cloned().unwrap_or_default();
        for (key, srv) in servers.iter_mut() {
            let at = (balancer.to_owned(), key.clone());
            let healthy = Self::healthy(s, key);
            let unchecked = s
                .enabled_at
                .get(&at)
                .is_some_and(|t| now - *t < CHECK_EVERY);
            (srv.up, srv.check) = match srv.admin {
                Admin::Maint => (false, Check::None),
                // Out of maintenance: UP at once, before its first check.
                _ if unchecked => (true, Check::None),
                _ if healthy => (true, Check::Passed),
                _ => (false, Check::Failed),
            };
            srv.label = match (srv.admin, srv.up) {
                (Admin::Maint, _) => "MAINT",
                (Admin::Drain, _) => "DRAIN",
                (Admin::Ready, true) => "UP",
                (Admin::Ready, false) => "DOWN",
            }
            .into();
            srv.sessions = match (s.sessions.get(&at), srv.admin) {
                (Some((n, _)), Admin::Ready) => *n,
                (Some((n, linger)), Admin::Drain)
                    if s.drained_at.get(&at).is_some_and(|t| now - *t < *linger) =>
                {
                    *n
                }
                _ => 0,
            };
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
            // A draining server gets no new requests.
            let takes = |srv: &Server| srv.serving() && srv.admin == Admin::Ready;
            for ((backend, _), srv) in &report {
                if takes(srv) {
                    *backends.entry(backend).or_default() += srv.weight;
                }
            }
            for (key, srv) in &report {
                let total = backends.get(key.0.as_str()).copied().unwrap_or(0);
                if !takes(srv) || total == 0 {
                    continue;
                }
                let error_rate = Self::instance_behind(s, key).map_or(0.0, |(at, i)| {
                    Self::behaviour(s, &at.host, &i.record.version).error_rate
                });
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
    format!(
        "fake config of {balancer}: {}",
        desired.backends_of(balancer).join(" ")
    )
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
        let delay = {
            let mut s = self.lock();
            s.probing.0 += 1;
            s.probing.1 = s.probing.1.max(s.probing.0);
            s.probe_delay
        };
        tokio::time::sleep(delay).await;
        let mut s = self.lock();
        s.probing.0 -= 1;
        let host = self.hosts_by_address.get(address);
        let instance = s
            .instances
            .iter()
            .find(|(at, i)| Some(&at.host) == host && i.alive && i.record.port == port);
        let Some((at, i)) = instance else {
            return Err(ProbeError::Connect { url });
        };
        let b = Self::behaviour(&s, &at.host, &i.record.version);
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
