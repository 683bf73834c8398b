//! The library's top-level error and the process exit codes of design §3. Each error maps to one
//! documented exit code; `main` prints it once, with its causes.

use crate::desired::{Diagnostic, LoadError};
use crate::source::SourceError;

/// Process exit codes (design §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    Ok = 0,
    Failed = 1,
    BadInput = 2,
    Waiting = 3,
    Locked = 4,
    Pending = 10,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("the desired state at commit {commit} of {origin} has {} problem{}", diagnostics.len(), if diagnostics.len() == 1 { "" } else { "s" })]
    Invalid {
        origin: String,
        commit: String,
        diagnostics: Vec<Diagnostic>,
    },
    #[error("no kube-free.yaml in {origin} at commit {commit}")]
    NoRootFile { origin: String, commit: String },
    #[error("cannot read the desired state from {origin} at commit {commit}")]
    Read {
        origin: String,
        commit: String,
        #[source]
        source: LoadError,
    },
    #[error("cannot write output")]
    Output(#[from] std::io::Error),
    #[error(transparent)]
    Reconcile(Box<crate::reconcile::ReconcileError>),
    #[error("unknown {what} {name:?} (not in the desired state)")]
    UnknownName { what: &'static str, name: String },
    #[error("{what} {name:?} is not in {place} (it has: {})", if known.is_empty() { "none".to_owned() } else { known.join(", ") })]
    NotIn {
        what: &'static str,
        name: String,
        /// Where it was looked for: `environment "production"`, `production/api`.
        place: String,
        /// What is there.
        known: Vec<String>,
    },
    #[error(transparent)]
    Logs(#[from] crate::logs::LogsError),
    #[error(transparent)]
    History(#[from] crate::history::HistoryError),
    #[error(transparent)]
    SavedPlan(#[from] crate::plan::saved::SavedPlanError),
    #[error(transparent)]
    Secret(#[from] crate::secret::SecretError),
    #[error(transparent)]
    Watch(#[from] crate::watch::WatchError),
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
}

impl Error {
    pub fn exit(&self) -> Exit {
        match self {
            Error::Source(e) if e.is_bad_input() => Exit::BadInput,
            Error::Invalid { .. }
            | Error::NoRootFile { .. }
            | Error::UnknownName { .. }
            | Error::NotIn { .. } => Exit::BadInput,
            Error::Secret(e) if e.is_bad_input() => Exit::BadInput,
            Error::SavedPlan(e) if e.is_bad_input() => Exit::BadInput,
            Error::Reconcile(e) if e.bad_input() => Exit::BadInput,
            Error::Reconcile(e) if e.waits() => Exit::Waiting,
            Error::Reconcile(e) if e.locked() => Exit::Locked,
            Error::Source(_)
            | Error::Read { .. }
            | Error::Output(_)
            | Error::Reconcile(_)
            | Error::Secret(_)
            | Error::Watch(_)
            | Error::Logs(_)
            | Error::History(_)
            | Error::SavedPlan(_)
            | Error::Runtime(_) => Exit::Failed,
        }
    }
}

/// An error and its causes, as one line: `error: cause: cause`.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

impl From<crate::reconcile::ReconcileError> for Error {
    fn from(e: crate::reconcile::ReconcileError) -> Self {
        Error::Reconcile(Box::new(e))
    }
}
