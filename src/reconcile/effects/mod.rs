//! The live [`Effects`]: what each step does to hosts and balancers, through the drivers of the
//! world. Each step checks first whether it is done and verifies after. By kind: `instances`
//! (start, probe, stop), `traffic` (config, enable, weights, drain), `canary` (weigh, pause and
//! analysis) and `bake` (bake and take-back, conclude). This file dispatches, bounds each step, and says whose fault a failure is:
//! every error a step meets becomes a [`StepError`] with its [`Fault`], here and nowhere else.

mod bake;
mod canary;
mod instances;
mod traffic;

pub(super) use instances::launch;

use super::{ReconcileError, World};
use crate::desired::{Pause, Strategy};
use crate::drivers::{BalancerError, LedgerError, ProbeError, RuntimeError, TransportError};
use crate::execute::{Effects, Fault, StepError};
use crate::names::{backend_name, SlotRef};
use crate::observed::ObservedState;
use crate::plan::Action;
use crate::state::InstanceRecord;
use std::sync::Arc;
use std::time::Duration;

/// The `stop_timeout` of an app that does not say one (validation's default): an orphan's, when
/// its app is gone from the desired state.
const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The effects of steps on real hosts and balancers (or on whatever drivers the world has).
pub struct Live {
    world: Arc<World>,
    /// The snapshot the plan was built from (records of instances to stop).
    observed: ObservedState,
    /// See [`super::Options::max_wait`].
    max_wait: Option<Duration>,
    /// A cleanup runs to its end, also after a signal: it takes traffic off a failed version.
    cleaning_up: bool,
    /// The records of the instances this run started, for their probes (a resumed run reads
    /// them from their hosts).
    started: std::sync::Mutex<std::collections::HashMap<SlotRef, InstanceRecord>>,
}

/// What stops a step, beyond a driver's own error.
#[derive(Debug, thiserror::Error)]
pub enum Trouble {
    #[error("slot {slot} on {host} already runs {version} (pid {pid})")]
    SlotTaken {
        slot: String,
        host: String,
        version: String,
        pid: u32,
    },
    #[error("no readable instance record of slot {slot} on {host}")]
    NoRecord { slot: String, host: String },
    #[error("the instance exited; end of {log}:\n{tail}")]
    Exited { log: String, tail: String },
    #[error("not ready within the probe deadline of {}{}", crate::desired::duration::format(*.deadline), if .last.is_none() { ": too few passes in a row" } else { "" })]
    NotReady {
        deadline: Duration,
        #[source]
        last: Option<ProbeError>,
    },
    #[error("balancer {balancer} has no server {}/{}", .server.0, .server.1)]
    NoServer {
        balancer: String,
        server: crate::names::ServerKey,
    },
    #[error("balancer {balancer} did not find {}/{} UP within {}: it reports {label:?}", .server.0, .server.1, crate::desired::duration::format(*.waited))]
    NeverUp {
        balancer: String,
        server: crate::names::ServerKey,
        waited: Duration,
        label: String,
    },
    #[error("{}/{} is not in maintenance after the drain: balancer reports {}", .server.0, .server.1, .label.as_deref().map_or("no such server".to_owned(), |l| format!("{l:?}")))]
    NotInMaint {
        server: crate::names::ServerKey,
        label: Option<String>,
    },
    #[error("port {port} on {host} is also listened on by processes that are not of this instance (pids {}: an old server that outlived its stop, or one that left its session); its probes may have been answered by them", if .pids.is_empty() { "unknown".to_owned() } else { .pids.iter().map(u32::to_string).collect::<Vec<_>>().join(", ") })]
    PortShared {
        host: String,
        port: u16,
        pids: Vec<u32>,
    },
    #[error("{env}/{app} is not a canary")]
    NotCanary { env: String, app: String },
    #[error(transparent)]
    Refused(#[from] super::rules::Refusal),
}

/// Whose fault an error met in a step is. Losing contact with a host leaves the rollout as it is;
/// what a host or the balancer answers with a failure is theirs; what the new instance does or
/// does not do is the version's.
trait Blame: std::error::Error + Send + Sync + Sized + 'static {
    fn fault(&self) -> Fault;

    fn blamed(self) -> StepError {
        StepError::new(self.fault(), self)
    }
}

/// Contact lost: the step stops and the rollout is left as it is; else the host failed.
fn contact(lost: bool) -> Fault {
    if lost {
        Fault::Unreachable
    } else {
        Fault::Host
    }
}

impl Blame for Trouble {
    fn fault(&self) -> Fault {
        match self {
            // The new version does not run, never gets ready, is never UP in the balancer.
            Trouble::Exited { .. } | Trouble::NotReady { .. } | Trouble::NeverUp { .. } => {
                Fault::Version
            }
            Trouble::SlotTaken { .. }
            | Trouble::NoRecord { .. }
            | Trouble::NoServer { .. }
            | Trouble::NotInMaint { .. }
            | Trouble::NotCanary { .. }
            | Trouble::PortShared { .. }
            | Trouble::Refused(_) => Fault::Host,
        }
    }
}

impl Blame for TransportError {
    fn fault(&self) -> Fault {
        contact(self.lost_contact())
    }
}

impl Blame for BalancerError {
    fn fault(&self) -> Fault {
        contact(self.lost_contact())
    }
}

impl Blame for LedgerError {
    fn fault(&self) -> Fault {
        contact(self.lost_contact())
    }
}

impl Blame for RuntimeError {
    fn fault(&self) -> Fault {
        if self.by_the_instance() {
            Fault::Version
        } else {
            contact(self.lost_contact())
        }
    }
}

/// A run's own errors: a lost lease fences the run; a rollout that was ended meanwhile (aborted,
/// or failed by another run) is the version's; a driver's error is blamed as the driver's.
impl Blame for ReconcileError {
    fn fault(&self) -> Fault {
        match self {
            ReconcileError::LeaseLost { .. } => Fault::Fenced,
            ReconcileError::Gate(super::GateError::Ended { .. }) => Fault::Version,
            ReconcileError::Transport(e) => e.fault(),
            ReconcileError::Balancer(e) => e.fault(),
            ReconcileError::Runtime(e) => e.fault(),
            ReconcileError::Ledger(e) | ReconcileError::Record { source: e, .. } => e.fault(),
            _ => Fault::Host,
        }
    }
}

/// `?` in a step blames each error as [`Blame`] says.
macro_rules! blamed_with_question_mark {
    ($($t:ty),*) => {$(
        impl From<$t> for StepError {
            fn from(e: $t) -> Self {
                e.blamed()
            }
        }
    )*};
}

blamed_with_question_mark!(
    Trouble,
    TransportError,
    BalancerError,
    LedgerError,
    RuntimeError,
    ReconcileError
);

impl From<super::rules::Refusal> for StepError {
    fn from(r: super::rules::Refusal) -> Self {
        Trouble::from(r).blamed()
    }
}

/// The run was asked to stop.
#[derive(Debug, thiserror::Error)]
#[error("interrupted by a signal")]
pub(super) struct Interrupted;

impl Live {
    /// The effects of a plan built from `observed`; a cleanup (`cleaning_up`) is not stopped by a
    /// signal.
    pub(in crate::reconcile) fn new(
        world: &Arc<World>,
        observed: ObservedState,
        max_wait: Option<Duration>,
        cleaning_up: bool,
    ) -> Arc<Live> {
        Arc::new(Live {
            world: world.clone(),
            observed,
            max_wait,
            cleaning_up,
            started: Default::default(),
        })
    }

    fn app(&self, at: &SlotRef) -> &crate::desired::App {
        &self.world.desired.apps[&at.app]
    }

    /// The app's `stop_timeout`; for an orphan whose app is gone from the desired state, the
    /// default one.
    fn stop_timeout(&self, at: &SlotRef) -> Duration {
        self.world
            .desired
            .apps
            .get(&at.app)
            .map_or(DEFAULT_STOP_TIMEOUT, |a| a.stop_timeout)
    }

    fn port(&self, at: &SlotRef) -> u16 {
        self.world
            .desired
            .slot_port(&at.env, &at.app, &at.slot)
            .unwrap_or(0)
    }

    fn strategy(&self, env: &str, app: &str) -> &Strategy {
        &self.world.desired.deployed(env, app).strategy
    }
}

#[async_trait::async_trait]
impl Effects for Live {
    async fn apply(&self, action: &Action) -> Result<(), StepError> {
        if action.changes() {
            self.world.check_lease().await?;
        }
        let done = match action {
            Action::ApplyConfig { balancer } => self.apply_config(balancer).await,
            Action::Pull {
                host,
                env,
                app,
                version,
            } => self.pull(host, env, app, version).await,
            Action::Start { at, version } => self.start(at, version).await,
            Action::Probe { at } => self.probe(at).await,
            Action::Enable { balancer, at } => self.enable(balancer, at).await,
            Action::Shift {
                balancer,
                env,
                app,
                to,
                from,
            } => {
                self.shift(balancer, &backend_name(env, app), to, from)
                    .await
            }
            Action::Drain { balancer, at } => self.drain(balancer, at).await,
            Action::Stop { at, .. } | Action::Prune { at, .. } => self.stop(at).await,
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
                    .await?;
                self.world.notify(
                    crate::notify::EventKind::Step,
                    env,
                    app,
                    format!(
                        "{env}/{app}: the canary of {version} takes {weight}% (step {})",
                        step + 1
                    ),
                );
                Ok(())
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
                    .await
            }
            Action::Bake {
                balancer,
                env,
                app,
                version,
                bake,
                new,
                old,
                resume,
            } => {
                self.bake(balancer, env, app, version, *bake, new, old, *resume)
                    .await
            }
            Action::Conclude {
                env, app, version, ..
            } => self.conclude(env, app, version).await,
        };
        if done.is_ok() {
            self.world.audit.step_done();
        }
        done
    }

    fn stopping(&self) -> Option<StepError> {
        (!self.cleaning_up && self.world.is_interrupted())
            .then(|| StepError::new(Fault::Interrupted, Interrupted))
    }

    /// How long a step may take. Durations from the desired state are at most a year (validation),
    /// `--max-wait` is the operator's: sums saturate rather than overflow.
    fn deadline(&self, action: &Action) -> Duration {
        let slack = Duration::from_secs(30);
        match action {
            Action::ApplyConfig { .. } => Duration::from_secs(90),
            Action::Pull { .. } => crate::drivers::docker::PULL_TIMEOUT + slack,
            // A container's start: an orphan removed, `run`, a look after it, on a failure its
            // log and its removal; each bounded by its own timeout.
            Action::Start { .. } => slack * 3,
            Action::Shift { .. } => slack,
            // Its own wait for UP ends first, as the version's fault.
            Action::Enable { .. } => traffic::UP_WITHIN + slack,
            // Its last probe may start just before the probe's own deadline.
            Action::Probe { at } => {
                let probe = &self.app(at).probe;
                probe
                    .deadline
                    .saturating_add(probe.timeout)
                    .saturating_add(slack)
            }
            Action::Drain { at, .. } => self.app(at).drain.saturating_add(slack),
            Action::Stop { at, .. } | Action::Prune { at, .. } => {
                self.stop_timeout(at).saturating_add(slack * 2)
            }
            Action::Weigh { .. } | Action::Conclude { .. } => slack,
            // Reads that fail are retried for a while within it.
            Action::Bake { bake, .. } => bake.saturating_add(slack),
            Action::Pause {
                env, app, pause, ..
            } => {
                let progress = match self.strategy(env, app) {
                    Strategy::Canary {
                        progress_deadline, ..
                    } => *progress_deadline,
                    _ => Duration::ZERO,
                };
                let pause = match pause {
                    Pause::For(d) => *d,
                    Pause::UntilPromoted => self.max_wait.unwrap_or_default(),
                };
                pause.saturating_add(progress).saturating_add(slack)
            }
        }
    }
}
