//! The [`Runtime`] trait: what kube-free needs of a way to run app instances on a host, and what
//! each implementation promises. An instance lives in a slot (environment, app, slot on a host) and
//! is described by its [`InstanceRecord`]. Which runtime runs an app is chosen from the desired
//! state ([`Kind::of`]).

use super::{Cmd, TransportError};
use crate::desired::{App, ContainerCli};
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
    /// What the desired state rendered besides the version, kept in the instance's record.
    pub spec: crate::desired::spec::Spec,
    /// Grace of an orphan the start stops first.
    pub stop_timeout: Duration,
}

/// What an instance runs: its environment and its command, rendered from the app's runtime, and
/// for a container its image and network.
#[derive(Clone, PartialEq, Eq)]
pub struct Launch {
    /// `NAME=value` assignments, in order. Values may be secrets: they reach the instance through
    /// its standard input or a 0600 file, never a command line, and `Debug` shows only the names.
    pub env: Vec<String>,
    pub command: Vec<String>,
    pub container: Option<Container>,
}

/// How a container runs (docker runtime).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    pub image: String,
    /// The host's network (`true`) or the engine's, with the slot's port published on `bind`.
    pub host_network: bool,
    /// `None`: every address.
    pub bind: Option<std::net::IpAddr>,
}

impl std::fmt::Debug for Launch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self
            .env
            .iter()
            .map(|a| a.split_once('=').map_or(a.as_str(), |(n, _)| n))
            .collect();
        f.debug_struct("Launch")
            .field("env", &names)
            .field("command", &self.command)
            .field("container", &self.container)
            .finish()
    }
}

impl Launch {
    /// The environment as `NAME=value` lines (an env file, or what a start script reads); fails,
    /// naming only the variable, when a value holds a line break or NUL, which no line can carry
    /// (validation refuses those; this is the last guard).
    pub fn env_lines(&self, app: &str) -> Result<String, RuntimeError> {
        let mut text = String::new();
        for assignment in &self.env {
            if assignment.contains(['\n', '\r', '\0']) {
                let name = assignment.split_once('=').map_or("", |(n, _)| n);
                return Err(RuntimeError::BadEnvValue {
                    app: app.to_owned(),
                    name: name.to_owned(),
                });
            }
            text.push_str(assignment);
            text.push('\n');
        }
        Ok(text)
    }
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

/// What [`Runtime::start_unless_running`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Started {
    /// It started the instance: its record.
    New(InstanceRecord),
    /// A live instance was in the slot already (of whatever version): it started nothing, and
    /// this is that instance's record.
    Running(InstanceRecord),
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
///   with `instance` and `is_alive` first, or call `start_unless_running`, which does;
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

    /// Starts the instance of `spec` unless the slot's record names a live instance: then it
    /// starts nothing and returns that record, for the caller to tell whether it is the one
    /// wanted (a resumed run) or another. This default asks [`Runtime::instance`] and
    /// [`Runtime::is_alive`] first; a runtime may do all of it in one round trip.
    async fn start_unless_running(&self, spec: &StartSpec) -> Result<Started, RuntimeError> {
        if let Some(record) = self.instance(&spec.at).await? {
            if self.is_alive(&record).await? {
                return Ok(Started::Running(record));
            }
        }
        self.start(spec).await.map(Started::New)
    }

    /// Stops the instance of `record` and removes the record.
    async fn stop(
        &self,
        record: &InstanceRecord,
        stop_timeout: Duration,
    ) -> Result<(), RuntimeError>;

    /// The last `lines` lines of the slot's log, and where they come from (the output of
    /// [`Runtime::logs_cmd`] without `follow`).
    async fn logs(&self, at: &SlotRef, lines: u32) -> Result<(String, String), RuntimeError>;

    /// Who listens on the instance's port on its host: `Ok(None)` when only the instance does (or
    /// nobody yet, or the runtime cannot tell), `Ok(Some(pids))` when processes that are not of the
    /// instance listen there too (a stale server that outlived its stop, say), so that a probe that
    /// passes may have been answered by them.
    async fn strangers_on_port(
        &self,
        _record: &InstanceRecord,
    ) -> Result<Option<Vec<u32>>, RuntimeError> {
        Ok(None)
    }

    /// Makes `image` available on the host before anything is started or stopped for it (pulls
    /// it; with `always` false only when the host does not have it). Runtimes that run no images
    /// have nothing to do.
    async fn pull(&self, image: &str, always: bool) -> Result<(), RuntimeError> {
        let _ = (image, always);
        Ok(())
    }

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
    /// Containers, through the `docker` or `podman` command.
    Container(ContainerCli),
}

impl Kind {
    /// The runtime that runs `app`.
    pub fn of(app: &App) -> Kind {
        match app.runtime {
            crate::desired::Runtime::Process { .. } => Kind::Process,
            crate::desired::Runtime::Docker { cli, .. } => Kind::Container(cli),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Process => "process",
            Kind::Container(cli) => cli.program(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// Something else listens on the slot's port before the instance starts: not the version's
    /// fault, and starting it would fail or share the port.
    #[error("host {host:?}: port {port} of slot {slot} is already listened on (pids {pids}), by no instance kube-free knows")]
    PortTaken {
        host: String,
        slot: String,
        port: u16,
        pids: String,
    },
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
    /// A start was asked of a slot whose record names a live instance (see
    /// [`Runtime::start_unless_running`]).
    #[error("host {host:?}: slot {slot} already runs an instance (pid {pid})")]
    Occupied {
        host: String,
        slot: String,
        pid: u32,
    },
    /// The slot's record names a live instance but cannot be read otherwise: nothing is started
    /// over it.
    #[error("host {host:?}: the record {path} of a live instance cannot be read: {error}")]
    Unreadable {
        host: String,
        path: String,
        error: String,
    },
    #[error("host {host:?}: pid {pid} survived SIGKILL")]
    Unkillable { host: String, pid: u32 },
    #[error("app {app:?}: the {} runtime is not supported yet", .kind.name())]
    Unsupported { app: String, kind: Kind },
    #[error("environment variable {name} of app {app:?} holds a line break or NUL, which cannot be passed to an instance")]
    BadEnvValue { app: String, name: String },
    #[error("environment variable {name} of app {app:?} comes from secret file {file}, which this run did not read")]
    SecretUnread {
        app: String,
        name: String,
        file: String,
    },
    /// The registry says there is no such image: the version's fault.
    #[error("host {host:?}: image {image} not found: {error}")]
    ImageMissing {
        host: String,
        image: String,
        error: String,
    },
    /// The image could not be pulled for another reason (the registry does not answer, a full
    /// disk): a later run tries again.
    #[error("host {host:?}: pulling image {image} failed: {error}")]
    Pull {
        host: String,
        image: String,
        error: String,
    },
    /// `docker run` refused the container (exit 125: the engine's own trouble).
    #[error("host {host:?}: `{cli} run` of {name} failed: {error}")]
    Run {
        host: String,
        cli: &'static str,
        name: String,
        error: String,
    },
    #[error("host {host:?}: the instance in slot {slot} was not started by the {runtime} runtime")]
    NotMine {
        host: String,
        runtime: &'static str,
        slot: String,
    },
    #[error("host {host:?}: a container named {name} that kube-free did not start is in the way")]
    InTheWay { host: String, name: String },
    #[error("host {host:?}: container {container} is still there after `{cli} rm -f`: {error}")]
    NotRemoved {
        host: String,
        cli: &'static str,
        container: String,
        error: String,
    },
}

impl RuntimeError {
    /// Whether contact with the host was lost (see [`TransportError::lost_contact`]).
    pub fn lost_contact(&self) -> bool {
        matches!(self, RuntimeError::Transport(e) if e.lost_contact())
    }

    /// Whether the instance itself failed (it exited at once, its image does not exist; the app
    /// asks for a runtime there is not), as opposed to the host.
    pub fn by_the_instance(&self) -> bool {
        matches!(
            self,
            RuntimeError::ExitedAtOnce { .. }
                | RuntimeError::Unsupported { .. }
                | RuntimeError::ImageMissing { .. }
        )
    }
}
