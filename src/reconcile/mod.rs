//! One reconcile pass and everything it touches, split by what each file owns:
//! - `world`: the drivers of a run (one per host, balancer and ledger), built from the desired state;
//! - `lease`: taking, renewing, checking (fencing) and giving back the lease;
//! - `observe`: the snapshot of hosts, balancers and records, and the repair of torn instance files;
//! - `records`: rollout records (read, fresh, written);
//! - `pass`: [`once`] — observe, plan, execute, and after a failed step clean up and quarantine;
//! - `gates`: `promote`, `abort`, `retry`;
//! - `suspend`: `kube-free suspend`/`resume`, and what a pass may do while something is suspended;
//! - `rewind`: the last commit applied, and the refusal of a commit that does not descend from it;
//! - `audit`: the audit log, a line per run that changed something (`kube-free history` reads it);
//! - `effects`: what each step does to hosts and balancers (instances, traffic, canary);
//! - `rules`: the pure decisions — weight and drain safety, the canary's analysis verdict.
//!
//! Nothing here speaks a balancer's or a runtime's language: that is the drivers'.

pub mod audit;
mod effects;
mod gates;
mod lease;
mod observe;
mod pass;
mod records;
pub mod rewind;
pub mod rules;
pub mod suspend;
mod world;

#[cfg(test)]
mod tests;

pub use gates::{abort, promote, retry, GateError};
pub use lease::{leased, LeaseLoss, MIN_TTL as MIN_LEASE_TTL};
pub use pass::{once, once_saved, preview, preview_observed, rollout_of, Outcome};
pub use rewind::RewindError;
pub use suspend::{
    applies, resume, suspend, suspensions, Decision, Resumed, SuspendError, Suspension,
};
pub use world::{Drivers, World, DEFAULT_PARALLEL};

use crate::drivers::lease::Holder;
use crate::drivers::{BalancerError, LedgerError, RuntimeError, TransportError};
use crate::execute::StepFailed;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Balancer(#[from] BalancerError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("cannot create a runtime directory")]
    RuntimeDir(#[source] std::io::Error),
    /// The guard of prune: more than half, or all, of what kube-free runs in scope.
    #[error("{0}; nothing was changed")]
    PruneRefused(String),
    #[error("{failed}; {outcome}")]
    RolledBack {
        failed: Box<StepFailed>,
        outcome: Box<Outcome>,
    },
    /// A step of a cleanup failed (what the cleanup was for is said around it).
    #[error(transparent)]
    Step(Box<StepFailed>),
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
        holder: Holder,
        expires_in: u64,
    },
    #[error("lease on {host}: {loss}")]
    LeaseLost { host: String, loss: LeaseLoss },
    #[error(transparent)]
    Gate(#[from] GateError),
    #[error(transparent)]
    Suspend(#[from] SuspendError),
    #[error(transparent)]
    Rewind(Box<RewindError>),
    /// A saved plan is not what this run would do (`reconcile --plan`): refused before anything
    /// was changed.
    #[error(transparent)]
    Saved(Box<crate::plan::saved::SavedPlanError>),
    /// A rollout record could not be written (the cause names the balancer host).
    #[error("rollout record {path}")]
    Record {
        path: String,
        #[source]
        source: LedgerError,
    },
    /// Every write of a rollout record found it changed since it was read, `tries` times.
    #[error("rollout record {path} changed under every one of {tries} writes (another run or gate keeps writing it); nothing was written; try again")]
    RecordContended { path: String, tries: usize },
}

impl From<crate::plan::saved::SavedPlanError> for ReconcileError {
    fn from(e: crate::plan::saved::SavedPlanError) -> Self {
        ReconcileError::Saved(Box::new(e))
    }
}

impl From<RewindError> for ReconcileError {
    fn from(e: RewindError) -> Self {
        ReconcileError::Rewind(Box::new(e))
    }
}

/// What a loop around passes does next, as a pass's result says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// In sync, or converged by this pass: nothing to do until the desired state or the hosts
    /// change.
    Idle,
    /// A canary pause ends at this time (seconds since the Unix epoch): come back then.
    At(u64),
    /// A canary waits at a gate for `kube-free promote`.
    Promotion,
    /// Another run holds the lease, for about this long.
    Locked(Duration),
    /// The pass stopped (a signal): finish.
    Stop,
    /// A version is quarantined: nothing is tried until its desired state changes or an operator
    /// runs `kube-free retry`.
    Quarantined,
    /// The pass failed (rolled back, a host lost, an error): try again after a backoff.
    Retry,
}

impl ReconcileError {
    /// The run stopped at a pause or gate (exit 3), not on a failure.
    pub fn waits(&self) -> bool {
        matches!(self, ReconcileError::Waiting { .. })
    }

    /// The commit is refused as it is (exit 2): it does not descend from the last one applied, or
    /// a saved plan is not what this run would do.
    pub fn bad_input(&self) -> bool {
        match self {
            ReconcileError::Rewind(e) => e.is_bad_input(),
            ReconcileError::Saved(e) => e.is_bad_input(),
            ReconcileError::PruneRefused(_) => true,
            _ => false,
        }
    }

    /// Another run holds the lease (exit 4).
    pub fn locked(&self) -> bool {
        matches!(self, ReconcileError::Locked { .. })
    }

    /// What to do after a pass that ended with this error.
    pub fn next(&self) -> Next {
        match self {
            ReconcileError::Waiting { failed } => match failed.error.fault {
                crate::execute::Fault::Waiting { until: Some(t) } => Next::At(t),
                crate::execute::Fault::Waiting { until: None } => Next::Promotion,
                _ => Next::Retry,
            },
            ReconcileError::Locked { expires_in, .. } => {
                Next::Locked(Duration::from_secs(*expires_in))
            }
            ReconcileError::Interrupted { .. } => Next::Stop,
            // Both wait for the desired state to change.
            ReconcileError::Quarantined(_) | ReconcileError::PruneRefused(_) => Next::Quarantined,
            ReconcileError::RolledBack { outcome, .. } if outcome.quarantines() => {
                Next::Quarantined
            }
            _ => Next::Retry,
        }
    }
}

/// What a finished pass did.
#[derive(Debug)]
pub struct Report {
    /// Steps done.
    pub steps: usize,
    /// What they were, in the order they finished.
    pub done: Vec<crate::plan::Action>,
}

impl Report {
    /// What to do after this pass: it converged, so nothing until something changes.
    pub fn next(&self) -> Next {
        Next::Idle
    }
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

/// Wall-clock time as kube-free records it (seconds since the Unix epoch): in rollout records and
/// canary windows. Behind a trait so that tests on a paused tokio clock see time pass.
pub trait Clock: Send + Sync {
    fn now(&self) -> u64;
}

/// The machine's clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        crate::state::now()
    }
}
