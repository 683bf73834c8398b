//! The [`Runtime`] trait: what kube-free needs of a way to run app instances on a host, and what
//! each implementation promises. An instance lives in a slot (environment, app, slot on a host) and
//! is described by its [`InstanceRecord`]. Which runtime runs an app is chosen from the desired
//! state ([`Kind::of`]).

use super::{Cmd, TransportError};
use crate::desired::App;
use crate::names::SlotRef;
use crate::state::InstanceRecord;
use std::time::Duration;

/// What to start in a slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartSpec {
    pub at: SlotRef,
    pub version: String,
    /// Commit of the desired state that starts it.
    pub revision: String,
    pub port: u16,
    pub launch: Launch,
    /// Grace of an orphan the start stops first.
    pub stop_timeout: Duration,
}

/// What an instance runs: its environment and its command, rendered from the app's runtime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    /// `NAME=value` assignments, in order.
    pub env: Vec<String>,
    pub command: Vec<String>,
}

/// An instance record as found on its host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    /// A record, and whether the instance it names still runs (and is the one that was started).
    Record { record: InstanceRecord, alive: bool },
    /// A record that is not valid (torn or edited): reported, never trusted. `slot` is the slot it
    /// belongs to, (env, app, slot), when its place says so.
    Unreadable {
        path: String,
        error: String,
        slot: Option<(String, String, String)>,
    },
}

/// What runs in a slot whose record cannot be read, as the host tells of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Running {
    pub pid: u32,
    pub start_ticks: u64,
    /// Its command line.
    pub argv: Vec<String>,
    /// Its environment, `NAME=value` words.
    pub environ: Vec<String>,
}

/// A way to run app instances on one host.
///
/// Promises, for every implementation:
/// - `instances` lists every instance record on the host with whether its instance still runs,
///   and never trusts a record it cannot read;
/// - `start` stops what a killed run left in the slot without a record (it never got traffic),
///   starts the instance detached from the session, records it, and fails (with the end of its
///   log) when it exits at once; it never starts over a record of a live instance — callers check
///   with `instance` and `is_alive` first;
/// - `stop` ends the instance (graceful first, forced after `stop_timeout`) and removes its
///   record; stopping what does not run is not an error;
/// - `is_alive` tells the recorded instance from a later one that reuses its id;
/// - `logs_cmd` reads the slot's log as the runtime keeps it, the same for every instance that
///   ran there.
#[async_trait::async_trait]
pub trait Runtime: Send + Sync {
    /// The host it runs instances on.
    fn host(&self) -> &str;

    /// Every instance record on the host, of every environment and app.
    async fn instances(&self) -> Result<Vec<Found>, RuntimeError>;

    /// The record of the slot as it is now, if there is a readable one.
    async fn instance(&self, at: &SlotRef) -> Result<Option<InstanceRecord>, RuntimeError>;

    /// Whether the instance of `record` runs, and is the one that was started.
    async fn is_alive(&self, record: &InstanceRecord) -> Result<bool, RuntimeError>;

    /// What runs in a slot whose record cannot be read, if anything does.
    async fn recover(&self, at: &SlotRef) -> Result<Option<Running>, RuntimeError>;

    /// Writes a slot's record (again, after a recovery).
    async fn write_record(&self, record: &InstanceRecord) -> Result<(), RuntimeError>;

    /// Starts an instance and records it.
    async fn start(&self, spec: &StartSpec) -> Result<InstanceRecord, RuntimeError>;

    /// Stops the instance of `record` and removes the record.
    async fn stop(
        &self,
        record: &InstanceRecord,
        stop_timeout: Duration,
    ) -> Result<(), RuntimeError>;

    /// The last `lines` lines of the slot's log, and where they come from (the output of
    /// [`Runtime::logs_cmd`] without `follow`).
    async fn logs(&self, at: &SlotRef, lines: u32) -> Result<(String, String), RuntimeError>;

    /// Where the slot's log is, for people (a file, a container), and the command that prints its
    /// last `lines` lines on the runtime's host, then, with `follow`, every new line until it is
    /// ended. Pure: it runs nothing. The log may outlive the instance (the process runtime keeps
    /// its file after a stop); the command fails when there is none.
    fn logs_cmd(&self, at: &SlotRef, lines: u32, follow: bool) -> (String, Cmd);
}

/// The runtimes there are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Process,
    Docker,
}

impl Kind {
    /// The runtime that runs `app`.
    pub fn of(app: &App) -> Kind {
        match app.runtime {
            crate::desired::Runtime::Process { .. } => Kind::Process,
            crate::desired::Runtime::Docker { .. } => Kind::Docker,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Process => "process",
            Kind::Docker => "docker",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("host {host:?}: `{command}`: the process exited at once; end of {log}:\n{tail}")]
    ExitedAtOnce {
        host: String,
        command: String,
        log: String,
        tail: String,
    },
    #[error("host {host:?}: `{command}`: no pid from the start script: {output:?}")]
    NoPid {
        host: String,
        command: String,
        output: String,
    },
    #[error("host {host:?}: pid {pid} survived SIGKILL")]
    Unkillable { host: String, pid: u32 },
    #[error("app {app:?}: the {} runtime is not supported yet", .kind.name())]
    Unsupported { app: String, kind: Kind },
}

impl RuntimeError {
    /// Whether contact with the host was lost (see [`TransportError::lost_contact`]).
    pub fn lost_contact(&self) -> bool {
        matches!(self, RuntimeError::Transport(e) if e.lost_contact())
    }

    /// Whether the instance itself failed (it exited at once; the app asks for a runtime there is
    /// not), as opposed to the host.
    pub fn by_the_instance(&self) -> bool {
        matches!(
            self,
            RuntimeError::ExitedAtOnce { .. } | RuntimeError::Unsupported { .. }
        )
    }
}
