//! The world of a run: the desired state and the drivers that reach what it names — a transport per
//! host in use, a runtime per app host and runtime kind (process everywhere, docker or podman where
//! an app runs containers), a balancer driver per balancer in use, a
//! ledger (records and lease) per balancer host, the prober and the clock. [`World::connect`] builds
//! the real ones from the desired state; [`World::new`] takes any (fakes in tests).

use super::{Clock, ReconcileError, SystemClock};
use crate::desired::{ContainerCli, DesiredState, Transport as HostTransport};
use crate::drivers::balancer::for_balancer;
use crate::drivers::docker::ContainerRuntime;
use crate::drivers::fenced::{Fence, FencedTransport};
use crate::drivers::lease::lock_file;
use crate::drivers::ledger::HostLedger;
use crate::drivers::local::LocalTransport;
use crate::drivers::probe::HttpProber;
use crate::drivers::process::ProcessRuntime;
use crate::drivers::runtime::Kind;
use crate::drivers::ssh::{SshOptions, SshTarget, SshTransport};
use crate::drivers::{Balancer, Ledger, Prober, Runtime, RuntimeError, Transport, TransportError};
use crate::execute::{Progress, Unwatched};
use crate::names::SlotRef;
use crate::notify::{Event, EventKind, Notifier};
use crate::state::InstanceRecord;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The drivers a world runs on.
pub struct Drivers {
    /// Every host in use, by name: how to tell whether it can be reached.
    pub hosts: BTreeMap<String, Arc<dyn Transport>>,
    /// The runtimes by (app host, kind).
    pub runtimes: BTreeMap<(String, Kind), Arc<dyn Runtime>>,
    /// The balancers in use, by name.
    pub balancers: BTreeMap<String, Arc<dyn Balancer>>,
    /// The ledgers of the hosts a run takes the lease on, by host: the balancer hosts in use (where
    /// records live too) and, with real drivers, the app hosts (whose changes the lease fences).
    pub ledgers: BTreeMap<String, Arc<dyn Ledger>>,
    /// The fences of the runtimes' and balancers' commands ([`FencedTransport`]), by host: set to
    /// this run's lease when it takes the lease there.
    pub fences: BTreeMap<String, Arc<Fence>>,
    pub prober: Arc<dyn Prober>,
    pub clock: Arc<dyn Clock>,
}

/// Everything needed to reach the world.
pub struct World {
    pub desired: DesiredState,
    /// Commit of the desired state, recorded in instance files and rollout records.
    pub revision: String,
    pub(super) drivers: Drivers,
    /// Set by SIGTERM/SIGINT: start no new step, end pauses, finish the current steps.
    interrupted: AtomicBool,
    /// Leases this run holds: (host, epoch).
    pub(super) leases: Mutex<Vec<(String, u64)>>,
    /// This run's id in lock files.
    pub(super) run_id: String,
    /// Where the events of rollouts go (disabled until set).
    notifier: Mutex<Notifier>,
    /// What the run did, for its audit line.
    pub(super) audit: super::audit::Tally,
    /// Who watches the run's steps live (nobody until set).
    progress: Mutex<Arc<dyn Progress>>,
    /// Where the run's time went (`--timings`).
    pub timings: crate::timings::Timings,
    /// The most hosts observed at once (`--parallel`).
    pub(super) parallel: usize,
    _runtime_dir: Option<tempfile::TempDir>,
}

/// The most hosts connected to and observed at once, and steps run at once, unless `--parallel`
/// says otherwise.
pub const DEFAULT_PARALLEL: usize = 8;

/// Spawns `work`, to run once `gate` gives it a turn: at most the gate's permits at once.
pub(super) fn spawn_gated<T: Send + 'static>(
    gate: &Arc<tokio::sync::Semaphore>,
    work: impl std::future::Future<Output = T> + Send + 'static,
) -> tokio::task::JoinHandle<T> {
    let gate = gate.clone();
    tokio::spawn(async move {
        let _turn = gate.acquire_owned().await.expect("never closed");
        work.await
    })
}

impl World {
    /// A world on the given drivers.
    pub fn new(desired: DesiredState, revision: String, drivers: Drivers) -> World {
        World {
            desired,
            revision,
            drivers,
            interrupted: AtomicBool::new(false),
            leases: Mutex::new(Vec::new()),
            run_id: format!(
                "{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() % 1_000_000_000)
            ),
            notifier: Mutex::new(Notifier::disabled()),
            audit: Default::default(),
            progress: Mutex::new(Arc::new(Unwatched)),
            timings: Default::default(),
            parallel: DEFAULT_PARALLEL,
            _runtime_dir: None,
        }
    }

    /// Sends the events of this world's rollouts to `notifier`.
    pub fn set_notifier(&self, notifier: Notifier) {
        *self.notifier.lock().expect("not poisoned") = notifier;
    }

    /// Queues an event about `env`/`app` at this world's commit (never blocks).
    pub fn notify(&self, kind: EventKind, env: &str, app: &str, message: String) {
        let version = self
            .desired
            .deployment(env, app)
            .map(|_| self.desired.deployed(env, app).version.clone());
        let event = Event {
            kind,
            env: env.to_owned(),
            app: app.to_owned(),
            commit: self.revision.clone(),
            version,
            message,
        };
        self.notifier.lock().expect("not poisoned").send(event);
    }

    /// The notifier in use.
    pub fn notifier(&self) -> Notifier {
        self.notifier.lock().expect("not poisoned").clone()
    }

    /// Tells `progress` what this world's runs do, as they do it (steps, canary weights, pauses).
    pub fn set_progress(&self, progress: Arc<dyn Progress>) {
        *self.progress.lock().expect("not poisoned") = progress;
    }

    /// Who watches this world's runs live.
    pub fn progress(&self) -> Arc<dyn Progress> {
        self.progress.lock().expect("not poisoned").clone()
    }

    /// Connects to every host in use, [`DEFAULT_PARALLEL`] at a time, and sets up the drivers the
    /// desired state chooses. `known_hosts` is the content of the repository's known_hosts file,
    /// if it names one.
    pub async fn connect(
        desired: DesiredState,
        revision: String,
        known_hosts: Option<Vec<u8>>,
    ) -> Result<World, ReconcileError> {
        let hosts = desired
            .hosts_in_use()
            .into_iter()
            .chain(desired.spare_hosts())
            .map(str::to_owned)
            .collect();
        World::connect_to(desired, revision, known_hosts, hosts, DEFAULT_PARALLEL).await
    }

    /// [`World::connect`] to `hosts` only, `parallel` at a time (and observed as many at a time
    /// later), for a run narrowed to some environments or a command that reads from a few
    /// (`logs`): the drivers are those of these hosts (a runtime per app host among them, a
    /// balancer or ledger whose host is one of them), and nothing may ask for another host.
    pub async fn connect_to(
        desired: DesiredState,
        revision: String,
        known_hosts: Option<Vec<u8>>,
        hosts: std::collections::BTreeSet<String>,
        parallel: usize,
    ) -> Result<World, ReconcileError> {
        let gate = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
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
        let options = SshOptions::new(
            runtime_dir.path(),
            known_hosts_file,
            desired.ssh.identity_file.as_deref().map(expand_home),
            Duration::from_secs(10),
        )
        .map_err(ReconcileError::RuntimeDir)?;
        let mut pending = Vec::new();
        for name in hosts {
            let options = options.clone();
            let target = match &desired.hosts[&name].transport {
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
            pending.push(spawn_gated(&gate, async move {
                let t: Result<Arc<dyn Transport>, TransportError> = match target {
                    None => Ok(Arc::new(LocalTransport::new(&name))),
                    Some(target) => SshTransport::connect(&target, &options)
                        .await
                        .map(|t| Arc::new(t) as _),
                };
                (name, t)
            }));
        }
        let mut hosts = BTreeMap::new();
        let spare = desired.spare_hosts();
        for p in pending {
            match p.await.expect("connecting does not panic") {
                (name, Ok(t)) => {
                    hosts.insert(name, t);
                }
                // A host no environment uses is reached only to look for orphans there.
                (name, Err(e)) if spare.contains(name.as_str()) => {
                    tracing::warn!(error = %e, "a host no environment uses cannot be reached: what kube-free left there (orphans) is not looked for");
                }
                (_, Err(e)) => return Err(e.into()),
            }
        }
        let drivers = real_drivers(&desired, hosts);
        let mut world = World::new(desired, revision, drivers);
        world._runtime_dir = Some(runtime_dir);
        world.parallel = parallel.max(1);
        Ok(world)
    }

    /// The runtime that runs the instance of slot `at`.
    pub fn runtime(&self, at: &SlotRef) -> Result<&dyn Runtime, RuntimeError> {
        let kind = Kind::of(&self.desired.apps[&at.app]);
        self.drivers
            .runtimes
            .get(&(at.host.clone(), kind))
            .map(|r| r.as_ref())
            .ok_or_else(|| RuntimeError::Unsupported {
                app: at.app.clone(),
                kind,
            })
    }

    /// The runtime that runs the instance of `record` in slot `at`: the one that started it (a
    /// container's or the process runtime), which is not the app's when its runtime changed in Git
    /// since.
    pub fn runtime_of(
        &self,
        at: &SlotRef,
        record: &InstanceRecord,
    ) -> Result<&dyn Runtime, RuntimeError> {
        let container = record.container.is_some();
        // An orphan's app may be gone from the desired state: the runtime its record names.
        let app_kind = self.desired.apps.get(&at.app).map(Kind::of);
        if app_kind.is_some_and(|k| container == matches!(k, Kind::Container(_))) {
            return self.runtime(at);
        }
        self.drivers
            .runtimes
            .iter()
            .find(|((h, k), _)| *h == at.host && matches!(k, Kind::Container(_)) == container)
            .map(|(_, r)| r.as_ref())
            .ok_or(RuntimeError::Unsupported {
                app: at.app.clone(),
                kind: app_kind.unwrap_or(Kind::Process),
            })
    }

    /// The runtimes of `host`.
    pub(super) fn runtimes_on<'a>(
        &'a self,
        host: &'a str,
    ) -> impl Iterator<Item = &'a dyn Runtime> + 'a {
        self.drivers
            .runtimes
            .iter()
            .filter(move |((h, _), _)| h == host)
            .map(|(_, r)| r.as_ref())
    }

    pub(super) fn balancer(&self, name: &str) -> &dyn Balancer {
        self.drivers.balancers[name].as_ref()
    }

    /// Whether this run reaches `host`: every host in use, or a narrowed run's (`--env`, `--app`:
    /// [`DesiredState::hosts_in_scope`]). What it does not reach it neither observes nor locks.
    pub fn reaches(&self, host: &str) -> bool {
        self.drivers.hosts.contains_key(host)
    }

    /// How many hosts this run reaches (those that could not be reached are not counted).
    pub fn reached(&self) -> usize {
        self.drivers.hosts.len()
    }

    /// The app hosts this run reaches.
    pub(super) fn app_hosts(&self) -> BTreeSet<&str> {
        let mut hosts = self.desired.instance_hosts();
        hosts.retain(|h| self.reaches(h));
        hosts
    }

    /// The balancer hosts this run reaches: where it reads and writes what runs share.
    pub(super) fn balancer_hosts(&self) -> BTreeSet<&str> {
        let mut hosts = self.desired.balancer_hosts();
        hosts.retain(|h| self.drivers.ledgers.contains_key(*h));
        hosts
    }

    /// The balancers in use that this run reaches.
    pub(super) fn balancers(&self) -> BTreeSet<&str> {
        let mut balancers = self.desired.balancers_in_use();
        balancers.retain(|b| self.drivers.balancers.contains_key(*b));
        balancers
    }

    /// The ledger of `env`: its balancer's host.
    pub(super) fn ledger_of(&self, env: &str) -> &dyn Ledger {
        self.drivers.ledgers[&self.desired.balancer_of(env).host].as_ref()
    }

    pub(super) fn clock(&self) -> &dyn Clock {
        self.drivers.clock.as_ref()
    }

    pub(super) fn prober(&self) -> &dyn Prober {
        self.drivers.prober.as_ref()
    }

    /// The transport of `host`: to tell whether it can be reached, to stream a command's output.
    pub fn host(&self, host: &str) -> &dyn Transport {
        self.drivers.hosts[host].as_ref()
    }

    /// Asks the run to stop after its current steps (SIGTERM, SIGINT).
    pub fn interrupt(&self) {
        self.interrupted.store(true, Ordering::SeqCst);
    }

    pub fn is_interrupted(&self) -> bool {
        self.interrupted.load(Ordering::SeqCst)
    }
}

/// The drivers the desired state chooses, on the hosts' transports: a process runtime on every app
/// host, a container runtime (docker or podman) on every app host of an app that runs on one, the
/// driver of each balancer's kind, a ledger on every balancer host, HTTP probes, the machine's
/// clock; of the hosts in `hosts` only.
fn real_drivers(desired: &DesiredState, hosts: BTreeMap<String, Arc<dyn Transport>>) -> Drivers {
    let connected: BTreeSet<String> = hosts.keys().cloned().collect();
    let here = |h: &&str| connected.contains(*h);
    // The runtimes and balancers reach their hosts through the host's fence, so that a command
    // that changes a host checks the lease there first; the ledgers (the lease itself, records
    // written by compare-and-swap) do not.
    let fences: BTreeMap<String, Arc<Fence>> = desired
        .instance_hosts()
        .into_iter()
        .chain(desired.balancer_hosts())
        .filter(here)
        .map(|h| (h.to_owned(), Fence::new(lock_file(desired.state_dir(h)))))
        .collect();
    let raw = hosts;
    let hosts: BTreeMap<String, Arc<dyn Transport>> = raw
        .iter()
        .map(|(h, t)| {
            let t = match fences.get(h) {
                Some(fence) => Arc::new(FencedTransport::new(t.clone(), fence.clone())) as _,
                None => t.clone(),
            };
            (h.clone(), t)
        })
        .collect();
    let mut runtimes: BTreeMap<(String, Kind), Arc<dyn Runtime>> = BTreeMap::new();
    for h in desired.instance_hosts().into_iter().filter(here) {
        let r: Arc<dyn Runtime> =
            Arc::new(ProcessRuntime::new(hosts[h].clone(), desired.state_dir(h)));
        runtimes.insert((h.to_owned(), Kind::Process), r);
    }
    // Where an app runs containers, strictly; on the other app hosts, to see containers an app
    // left that runs processes now (or uses another cli), leniently: a host without the engine
    // (or without the command) has none.
    for (env, app, _) in desired.deployments() {
        let Kind::Container(cli) = Kind::of(&desired.apps[app]) else {
            continue;
        };
        for h in env.hosts.iter().filter(|h| hosts.contains_key(*h)) {
            let r: Arc<dyn Runtime> = Arc::new(ContainerRuntime::new(
                hosts[h].clone(),
                cli.program(),
                desired.state_dir(h),
            ));
            runtimes.insert((h.clone(), Kind::Container(cli)), r);
        }
    }
    // Docker always (an app that ran containers and runs processes now left them there), podman
    // where an app names it.
    let mut clis: BTreeSet<ContainerCli> = desired
        .apps
        .values()
        .filter_map(|a| match Kind::of(a) {
            Kind::Container(cli) => Some(cli),
            Kind::Process => None,
        })
        .collect();
    clis.insert(ContainerCli::Docker);
    for h in desired.instance_hosts().into_iter().filter(here) {
        for cli in &clis {
            runtimes
                .entry((h.to_owned(), Kind::Container(*cli)))
                .or_insert_with(|| {
                    Arc::new(
                        ContainerRuntime::new(
                            hosts[h].clone(),
                            cli.program(),
                            desired.state_dir(h),
                        )
                        .lenient(),
                    )
                });
        }
    }
    let balancers = desired
        .balancers_in_use()
        .into_iter()
        .filter(|b| hosts.contains_key(&desired.balancers[*b].host))
        .map(|b| {
            let transport = hosts[&desired.balancers[b].host].clone();
            (b.to_owned(), for_balancer(desired, b, transport))
        })
        .collect();
    let ledgers = desired
        .balancer_hosts()
        .into_iter()
        .chain(desired.instance_hosts())
        .filter(here)
        .map(|h| {
            let l: Arc<dyn Ledger> =
                Arc::new(HostLedger::new(raw[h].clone(), desired.state_dir(h)));
            (h.to_owned(), l)
        })
        .collect();
    Drivers {
        hosts: raw,
        runtimes,
        balancers,
        ledgers,
        fences,
        prober: Arc::new(HttpProber::default()),
        clock: Arc::new(SystemClock),
    }
}

fn expand_home(path: &str) -> PathBuf {
    match path.strip_prefix("~/") {
        Some(rest) => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(rest),
        None => PathBuf::from(path),
    }
}
