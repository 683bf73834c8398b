//! The desired state of a run: opens the source at a commit, loads and checks the desired state
//! there and reads its secret files (bad input, unknown `--env`/`--app` names included, is
//! reported before any host is contacted), and connects the [`World`] that acts on it: every host
//! in use, the hosts of a narrowed run's scope, or only the hosts a command reads from. Shared by the one-shot commands and the watcher; prints nothing.

use crate::desired::{self, DesiredState, Files, LoadError};
use crate::error::Error;
use crate::plan::Scope;
use crate::reconcile::World;
use crate::source::{self, CommitInfo, History, Snapshot, SourceSpec};
use std::collections::BTreeSet;
use std::sync::Arc;

/// The desired state read from one commit, ready to connect.
pub struct Loaded {
    pub state: DesiredState,
    /// The commit id read.
    pub commit: String,
    pub info: CommitInfo,
    /// The `ssh.known_hosts` file's bytes, read from the same commit.
    pub known_hosts: Option<Vec<u8>>,
    /// The commit's history, for rewind protection.
    pub history: History,
    /// The most hosts connected to and observed at once (`--parallel`).
    pub parallel: usize,
}

/// Opens the source at the commit `spec` names (fetching it first when it is a URL).
pub fn open(spec: &SourceSpec) -> Result<Snapshot, Error> {
    let snapshot = source::open(spec)?;
    tracing::info!(repo = %snapshot.origin, commit = %snapshot.commit, "reading desired state");
    Ok(snapshot)
}

/// The error for a desired state that could not be loaded from `snapshot`.
pub fn load_error(snapshot: &Snapshot, e: LoadError) -> Error {
    let origin = snapshot.origin.clone();
    let commit = snapshot.commit.to_string();
    match e {
        LoadError::Invalid(diagnostics) => Error::Invalid {
            origin,
            commit,
            diagnostics,
        },
        LoadError::NoRootFile => Error::NoRootFile { origin, commit },
        e @ LoadError::Files(_) => Error::Read {
            origin,
            commit,
            source: e,
        },
    }
}

/// Reads and checks the desired state at the commit `spec` names; `scope` must name only
/// environments and apps it has. Blocking (Git).
pub fn load(spec: &SourceSpec, scope: &Scope) -> Result<Loaded, Error> {
    let snapshot = open(spec)?;
    let mut state = desired::load(&snapshot).map_err(|e| load_error(&snapshot, e))?;
    state
        .read_secrets()
        .map_err(|problems| load_error(&snapshot, LoadError::Invalid(problems)))?;
    for (what, name, known) in [
        (
            "environment",
            scope.env.as_deref(),
            state
                .environments
                .contains_key(scope.env.as_deref().unwrap_or_default()),
        ),
        (
            "app",
            scope.app.as_deref(),
            state
                .apps
                .contains_key(scope.app.as_deref().unwrap_or_default()),
        ),
    ] {
        if let (Some(name), false) = (name, known) {
            return Err(Error::UnknownName {
                what,
                name: name.to_owned(),
            });
        }
    }
    let known_hosts = match &state.ssh.known_hosts {
        Some(path) => Some(
            snapshot
                .read(path)
                .map_err(|e| load_error(&snapshot, LoadError::Files(e)))?,
        ),
        None => None,
    };
    Ok(Loaded {
        state,
        commit: snapshot.commit.to_string(),
        info: snapshot.commit_info(),
        known_hosts,
        history: snapshot.history(),
        parallel: crate::reconcile::DEFAULT_PARALLEL,
    })
}

/// Connects to the hosts a run over `scope` reaches: the hosts of its environments and their
/// balancers' hosts ([`DesiredState::hosts_in_scope`]), every host in use when it names no
/// environment or app. A host outside the scope is neither contacted, observed nor locked. An
/// environment and an app it does not deploy are bad input, before any host is contacted.
pub async fn connect_scope(loaded: Loaded, scope: &Scope) -> Result<Arc<World>, Error> {
    // An environment and an app that it does not deploy: a scope with nothing in it, which a run
    // would reach, lock and change nothing of, and call in sync.
    if let (Some(env), Some(app)) = (scope.env.as_deref(), scope.app.as_deref()) {
        if loaded.state.deployment(env, app).is_none() {
            return Err(Error::NotIn {
                what: "app",
                name: app.to_owned(),
                place: format!("environment {env:?}"),
                known: loaded.state.environments[env]
                    .apps
                    .keys()
                    .cloned()
                    .collect(),
            });
        }
    }
    let mut hosts: BTreeSet<String> = loaded
        .state
        .hosts_in_scope(scope.env.as_deref(), scope.app.as_deref())
        .into_iter()
        .map(str::to_owned)
        .collect();
    // An unnarrowed run also looks for orphans on the hosts no environment uses.
    if scope.env.is_none() && scope.app.is_none() {
        hosts.extend(loaded.state.spare_hosts().into_iter().map(str::to_owned));
    }
    connect_to(loaded, hosts).await
}

/// Connects to `hosts` only (see [`World::connect_to`]).
pub async fn connect_to(loaded: Loaded, hosts: BTreeSet<String>) -> Result<Arc<World>, Error> {
    Ok(Arc::new(
        World::connect_to(
            loaded.state,
            loaded.commit,
            loaded.known_hosts,
            hosts,
            loaded.parallel,
        )
        .await?,
    ))
}
