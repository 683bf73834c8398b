//! Rewind protection: the last commit a run applied, kept on every balancer host
//! (`<state_dir>/applied.json`, beside the lease), and the rule that a run applies only a commit
//! that descends from it. A rollback in Git is a revert commit; a force-push that goes back (or
//! elsewhere) is refused unless the operator allows it (`--allow-rewind`). Whether one commit is
//! in another's history is Git's to say ([`History`]); this file reads and writes the record.

use super::{ReconcileError, World};
use crate::drivers::LedgerError;
use crate::source::{History, Relation};
use crate::state::Applied;

#[derive(Debug, thiserror::Error)]
pub enum RewindError {
    #[error("commit {commit} does not descend from commit {last}, the last one applied ({by}, {at}; {path} on {host}): the branch was rewound or replaced by a force-push; to go back, revert in Git (git revert), or run with --allow-rewind to apply it anyway")]
    Diverged {
        commit: String,
        last: String,
        by: String,
        at: String,
        host: String,
        path: String,
    },
    #[error("commit {last}, the last one applied ({by}, {at}; {path} on {host}), is not in the repository read, so whether commit {commit} descends from it cannot be told (a force-push removed it, or the repository is another one); run with --allow-rewind to apply commit {commit} anyway")]
    Unknown {
        commit: String,
        last: String,
        by: String,
        at: String,
        host: String,
        path: String,
    },
    #[error("{path} on {host} cannot be read: {error}")]
    Unreadable {
        host: String,
        path: String,
        error: String,
    },
    #[error("cannot read the history of commit {commit}")]
    Git {
        commit: String,
        #[source]
        source: git2::Error,
    },
    #[error("cannot record commit {commit} as applied in {path} on {host}")]
    Write {
        commit: String,
        host: String,
        path: String,
        #[source]
        source: Box<LedgerError>,
    },
}

impl RewindError {
    /// Whether the commit is at fault (exit 2), not the hosts or the machine.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            RewindError::Diverged { .. } | RewindError::Unknown { .. }
        )
    }
}

/// The last commit applied, as one balancer host keeps it.
#[derive(Clone, Debug)]
pub struct Last {
    pub host: String,
    pub path: String,
    pub applied: Applied,
}

/// The last commit applied, per balancer host in use that has a record.
pub async fn last_applied(world: &World) -> Result<Vec<Last>, ReconcileError> {
    let mut all = Vec::new();
    for host in world.balancer_hosts() {
        let ledger = world.drivers.ledgers[host].as_ref();
        let Some(bytes) = ledger.read_applied().await? else {
            continue;
        };
        let applied: Applied =
            serde_json::from_slice(&bytes).map_err(|e| RewindError::Unreadable {
                host: host.to_owned(),
                path: ledger.applied_file(),
                error: e.to_string(),
            })?;
        all.push(Last {
            host: host.to_owned(),
            path: ledger.applied_file(),
            applied,
        });
    }
    Ok(all)
}

/// Refuses `history`'s commit unless it is, or descends from, the last commit applied on every
/// balancer host; with `allow`, a commit that does not is only warned about. Returns the records
/// read. Reads only.
pub async fn check(
    world: &World,
    history: &History,
    allow: bool,
) -> Result<Vec<Last>, ReconcileError> {
    let lasts = last_applied(world).await?;
    let commit = history.commit.to_string();
    for last in &lasts {
        let relation =
            history
                .relation(&last.applied.commit)
                .map_err(|source| RewindError::Git {
                    commit: commit.clone(),
                    source,
                })?;
        let (host, path) = (last.host.clone(), last.path.clone());
        let (by, at) = (
            format!("by {}", last.applied.by),
            super::suspend::utc(last.applied.at),
        );
        let error = match relation {
            Relation::Same | Relation::Descends => continue,
            Relation::Diverged => RewindError::Diverged {
                commit: commit.clone(),
                last: last.applied.commit.clone(),
                by,
                at,
                host,
                path,
            },
            Relation::Unknown => RewindError::Unknown {
                commit: commit.clone(),
                last: last.applied.commit.clone(),
                by,
                at,
                host,
                path,
            },
        };
        if allow {
            tracing::warn!("--allow-rewind: applying although {error}");
        } else {
            return Err(error.into());
        }
    }
    Ok(lasts)
}

/// [`check`], then records `history`'s commit as the last applied on every balancer host that
/// does not have it yet. Run under the lease, before a pass acts.
pub async fn guard(world: &World, history: &History, allow: bool) -> Result<(), ReconcileError> {
    let lasts = check(world, history, allow).await?;
    let commit = history.commit.to_string();
    let applied = Applied {
        commit: commit.clone(),
        at: world.clock().now(),
        by: super::suspend::who(),
    };
    let bytes = serde_json::to_vec_pretty(&applied).expect("a record serializes");
    for host in world.balancer_hosts() {
        if lasts
            .iter()
            .any(|l| l.host == host && l.applied.commit == commit)
        {
            continue;
        }
        let ledger = world.drivers.ledgers[host].as_ref();
        world.check_lease().await?;
        ledger
            .write_applied(&bytes)
            .await
            .map_err(|source| RewindError::Write {
                commit: commit.clone(),
                host: host.to_owned(),
                path: ledger.applied_file(),
                source: Box::new(source),
            })?;
    }
    Ok(())
}
