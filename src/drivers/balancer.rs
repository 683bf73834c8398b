//! The [`Balancer`] trait: what kube-free needs of a traffic layer, and what each implementation
//! promises. A balancer serves, per environment and app, one backend (`names::backend_name`) with
//! one server per host and slot (`names::server_name`); it reports them as neutral
//! [`Server`](crate::observed::Server)s and changes their weights and admin states at runtime,
//! without a reload. Which driver serves a balancer of the desired state is chosen here
//! ([`for_balancer`]).

use super::{Transport, TransportError};
use crate::desired::{BalancerKind, DesiredState};
use crate::names::ServerKey;
use crate::observed::{Admin, BalancerState, Servers};
use std::sync::Arc;

/// One runtime change of a server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Its weight (0 ..= [`FULL_WEIGHT`](crate::observed::FULL_WEIGHT)).
    Weight(ServerKey, u32),
    /// Its admin state: `Ready` enables it, `Drain` lets it finish what it has, `Maint` takes it out.
    State(ServerKey, Admin),
}

/// A traffic layer kube-free drives.
///
/// Promises, for every implementation:
/// - `servers` answers what the balancer does now (weights, admin states, its own check verdict,
///   sessions, counters), or an error; never an empty or partial list in place of an error;
/// - `apply` makes the changes in the order given, as one batch (one runtime command where the
///   product allows it), without a reload, and fails when the balancer refuses any of them; it does
///   not read back (callers do, with `servers`);
/// - leaving `Maint` may make a server take requests at once: callers set weight 0 in the same batch
///   first when it must not;
/// - `apply_config` installs [`Balancer::rendered_config`] only after the product checked it, keeps
///   every server's runtime state across the reload, returns once the new config serves every
///   backend, and puts the previous file back when the reload fails;
/// - `save_state` makes the runtime state of a backend survive a reload or restart.
#[async_trait::async_trait]
pub trait Balancer: Send + Sync {
    /// The balancer's name in the desired state.
    fn name(&self) -> &str;

    /// The host it runs on.
    fn host(&self) -> &str;

    /// The config kube-free owns as it is on the host, and every server.
    async fn observe(&self) -> Result<BalancerState, BalancerError>;

    /// Every server as the balancer reports it now.
    async fn servers(&self) -> Result<Servers, BalancerError>;

    /// Makes `changes`, in order, in one batch.
    async fn apply(&self, changes: &[Change]) -> Result<(), BalancerError>;

    /// The config file the desired state renders for this balancer.
    fn rendered_config(&self) -> &str;

    /// Installs [`Balancer::rendered_config`] and reloads, keeping the servers' runtime state.
    async fn apply_config(&self) -> Result<(), BalancerError>;

    /// Saves the runtime state of `backend`'s servers so that a reload or restart keeps it.
    async fn save_state(&self, backend: &str) -> Result<(), BalancerError>;
}

#[derive(Debug, thiserror::Error)]
pub enum BalancerError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("balancer {balancer} on {host:?} refused `{command}`: {answer}")]
    Refused {
        balancer: String,
        host: String,
        command: String,
        answer: String,
    },
    #[error(
        "balancer {balancer} on {host:?}: unexpected answer to `{command}` on {socket}: {answer:?}"
    )]
    Unexpected {
        balancer: String,
        host: String,
        command: &'static str,
        socket: String,
        answer: String,
    },
    #[error("balancer {balancer} on {host:?}: {message}")]
    Reload {
        balancer: String,
        host: String,
        message: String,
    },
}

impl BalancerError {
    /// Whether contact with the balancer's host was lost (see [`TransportError::lost_contact`]).
    pub fn lost_contact(&self) -> bool {
        matches!(self, BalancerError::Transport(e) if e.lost_contact())
    }
}

/// The driver of balancer `name` of the desired state, on its host's `transport`.
pub fn for_balancer(
    desired: &DesiredState,
    name: &str,
    transport: Arc<dyn Transport>,
) -> Arc<dyn Balancer> {
    match desired.balancers[name].kind {
        BalancerKind::Haproxy => Arc::new(super::haproxy::Haproxy::new(desired, name, transport)),
        BalancerKind::Nginx => Arc::new(super::nginx::Nginx::new(desired, name, transport)),
    }
}
