//! The manual gates of a rollout, through its record: `promote` ends a canary's pause (or every one
//! left), `abort` rolls a running rollout back under the lease and quarantines its version, `retry`
//! lifts a quarantine. Each changes the record by compare-and-swap (read, change, write over what
//! was read; again when another writer came in between, see [`World::update_rollout`]), so a
//! running rollout's own writes cannot undo it. Each gate that changed the record appends its line
//! to the audit log (without the lease: `promote` must work while a run that holds it waits at the
//! gate; the append is serialized with other writers on the host by the lease's `flock`).

use super::audit::{self, Outcome, RolloutResult};
use super::lease::leased;
use super::pass::clean_up;
use super::{ReconcileError, World};
use crate::plan::Traffic;
use crate::state::{Phase, Promote, RolloutRecord};
use std::sync::Arc;
use std::time::Duration;

/// A gate that cannot be opened, or a rollout that was ended meanwhile.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("{env}/{app} has no canary of {version} in progress to promote ({record})")]
    NothingToPromote {
        env: String,
        app: String,
        version: String,
        record: String,
    },
    #[error("{env}/{app} has no rollout of {version} in progress to abort ({record})")]
    NothingToAbort {
        env: String,
        app: String,
        version: String,
        record: String,
    },
    #[error("{env}/{app} {version} is not quarantined ({record})")]
    NotQuarantined {
        env: String,
        app: String,
        version: String,
        record: String,
    },
    /// The rollout of `version` was aborted or failed (by `kube-free abort`, or in another
    /// run): nothing may write over that.
    #[error("the rollout of {version} ended ({ended_as}): {outcome}")]
    Ended {
        version: String,
        ended_as: &'static str,
        outcome: String,
    },
}

/// `kube-free promote`: the current pause (or, with `all`, every remaining one) of the running
/// canary of `env`/`app` ends; a running or the next reconcile goes on from there.
pub async fn promote(
    world: &World,
    env: &str,
    app: &str,
    all: bool,
) -> Result<String, ReconcileError> {
    let start = audit::start(world);
    let version = &world.desired.deployed(env, app).version;
    let record = world
        .update_rollout(env, app, |current| {
            let mut record = match current {
                Some(r)
                    if r.version == *version
                        && matches!(r.phase, Phase::Progressing | Phase::Paused) =>
                {
                    r
                }
                other => {
                    return Err(GateError::NothingToPromote {
                        env: env.to_owned(),
                        app: app.to_owned(),
                        version: version.clone(),
                        record: describe_record(other.as_ref()),
                    }
                    .into())
                }
            };
            record.promote = if all {
                Promote::All
            } else {
                Promote::Step(record.step)
            };
            Ok(record)
        })
        .await?;
    let said = if all {
        format!("promoted {env}/{app} {version}: every remaining pause is skipped")
    } else {
        format!(
            "promoted {env}/{app} {version}: the pause of step {} ends",
            record.step
        )
    };
    world.notify(crate::notify::EventKind::Promoted, env, app, said.clone());
    let rollout = audit::gate_rollout(
        world,
        env,
        app,
        record.last_good.clone(),
        RolloutResult::Promoted,
    );
    let command = format!(
        "promote {app} --env {env}{}",
        if all { " --all" } else { "" }
    );
    audit::command_line(
        world,
        &start,
        &command,
        Outcome::Promoted,
        vec![env.to_owned()],
        vec![rollout],
    )
    .await;
    Ok(said)
}

/// `kube-free abort`: the running canary of `env`/`app` gives its traffic back to the stable version
/// and stops; its version is quarantined.
pub async fn abort(
    world: &Arc<World>,
    env: &str,
    app: &str,
    parallel: usize,
) -> Result<String, ReconcileError> {
    let start = audit::start(world);
    let version = world.desired.deployed(env, app).version.clone();
    let record = world
        .update_rollout(env, app, |current| {
            let mut record = match current {
                Some(r) if r.version == version && r.phase != Phase::Succeeded => r,
                other => {
                    return Err(GateError::NothingToAbort {
                        env: env.to_owned(),
                        app: app.to_owned(),
                        version: version.clone(),
                        record: describe_record(other.as_ref()),
                    }
                    .into())
                }
            };
            record.phase = Phase::Aborted;
            record.outcome = Some("aborted by `kube-free abort`".into());
            record.fingerprint = world.desired.fingerprint(env, app);
            Ok(record)
        })
        .await?;
    // A reconcile of this app that runs now reads the abort within a second, rolls back and gives
    // the lease up; then this finds nothing left to do.
    let (wait, ttl) = (Duration::from_secs(60), Duration::from_secs(30));
    let cleanup = async {
        let observed = world.observe().await?;
        clean_up(
            world,
            observed,
            env,
            app,
            crate::plan::Cleanup::Revert,
            parallel,
        )
        .await
    };
    let result = async {
        leased(world, wait, ttl, cleanup).await?;
        let after = Traffic::read(&world.desired, &world.observe().await?, env, app);
        let said = if after.weighs(&version) {
            format!("NOT rolled back: {after}")
        } else {
            format!("read back: {after}")
        };
        Ok::<_, ReconcileError>(format!("aborted {env}/{app} {version}: {said}; it is quarantined until its desired state changes or `kube-free retry {app} --env {env}`"))
    }
    .await;
    // The record says aborted whatever became of the cleanup: that is a change.
    let rollout = audit::gate_rollout(
        world,
        env,
        app,
        record.last_good.clone(),
        RolloutResult::Aborted,
    );
    let outcome = match &result {
        Ok(_) => Outcome::Aborted,
        Err(_) => Outcome::Failed,
    };
    audit::command_line(
        world,
        &start,
        &format!("abort {app} --env {env}"),
        outcome,
        vec![env.to_owned()],
        vec![rollout],
    )
    .await;
    result
}

/// `kube-free retry`: lifts the quarantine of the desired version of `env`/`app`; the next reconcile
/// rolls it out again from the start.
pub async fn retry(world: &World, env: &str, app: &str) -> Result<String, ReconcileError> {
    let start = audit::start(world);
    let version = &world.desired.deployed(env, app).version;
    let record = world
        .update_rollout(env, app, |current| {
            let mut record = match current {
                Some(r) if r.version == *version && r.phase.quarantines() => r,
                other => {
                    return Err(GateError::NotQuarantined {
                        env: env.to_owned(),
                        app: app.to_owned(),
                        version: version.clone(),
                        record: describe_record(other.as_ref()),
                    }
                    .into())
                }
            };
            // A record that no longer matches any fingerprint: the next rollout starts afresh.
            record.fingerprint = String::from("retry");
            record.outcome = Some(format!(
                "{} (retried)",
                record.outcome.as_deref().unwrap_or("rolled back")
            ));
            Ok(record)
        })
        .await?;
    let rollout = audit::gate_rollout(
        world,
        env,
        app,
        record.last_good.clone(),
        RolloutResult::Retried,
    );
    audit::command_line(
        world,
        &start,
        &format!("retry {app} --env {env}"),
        Outcome::Retried,
        vec![env.to_owned()],
        vec![rollout],
    )
    .await;
    Ok(format!(
        "{env}/{app} {version} may be rolled out again: run `kube-free reconcile --once`"
    ))
}

fn describe_record(record: Option<&RolloutRecord>) -> String {
    match record {
        None => "no rollout record".into(),
        Some(r) => format!("the last rollout, of {}, is {:?}", r.version, r.phase).to_lowercase(),
    }
}
