//! One pass ([`once`]): observe, plan, execute; after a step that failed, by whose fault: a lost
//! lease stops the run; an unreachable host leaves the rollout as it is; the version's own failure
//! quarantines it and brings the last good version back wherever the failed one had traffic
//! (unless the strategy holds); anything else cleans up (a canary still being judged gives its
//! traffic back first). What the run then says is read back from hosts and balancer. A saved plan
//! ([`once_saved`]) is checked between the pass's observation and its first write.

use super::effects::Live;
use super::{rules, GateError, Options, ReconcileError, Report, World};
use crate::execute::{self, Fault, StepFailed};
use crate::notify::EventKind;
use crate::observed::ObservedState;
use crate::plan::saved::SavedPlan;
use crate::plan::{self, Action, Cleanup, Scope, Traffic};
use crate::source::History;
use crate::state::Phase;
use crate::timings::Both;
use std::collections::BTreeSet;
use std::sync::Arc;

/// What a failed pass did about its failure (after the failed step, in the run's error).
#[derive(Debug)]
pub enum Outcome {
    /// The failed step belongs to no rollout (a balancer's config).
    NothingMoved,
    /// The rollout of `version` of `env`/`app` was cleaned up (or that failed, `cleanup`), and the
    /// version quarantined when it was its own fault.
    Cleaned {
        env: String,
        app: String,
        version: String,
        /// What the cleanup did with the version's traffic.
        mode: Cleanup,
        /// The last good version (what a revert brings back).
        good: Option<String>,
        cleanup: Result<(), Box<ReconcileError>>,
        quarantined: bool,
        /// What was read back afterwards (`None`: it could not be read).
        after: Option<Traffic>,
    },
}

impl Outcome {
    /// Whether the version is quarantined by it.
    pub fn quarantines(&self) -> bool {
        matches!(
            self,
            Outcome::Cleaned {
                quarantined: true,
                ..
            }
        )
    }
}

/// Says what the cleanup did from what was read back after it, never from its plan.
impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Outcome::Cleaned {
            env,
            app,
            version,
            mode,
            good,
            cleanup,
            quarantined,
            after,
        } = self
        else {
            return f.write_str("nothing was moved");
        };
        if let Err(e) = cleanup {
            match (mode, good) {
                (Cleanup::Revert, Some(good)) => {
                    write!(f, "the cleanup (bringing back {good}) failed: ")?
                }
                _ => f.write_str("the cleanup failed: ")?,
            }
            write!(f, "{}; ", crate::error::chain(e.as_ref()))?;
        }
        match after {
            None => write!(f, "what serves {env}/{app} now could not be read back")?,
            Some(t) if t.weighs(version) && !quarantined => write!(
                f,
                "{version} keeps its traffic: the failure was not its own, and the next run goes on from here ({t})"
            )?,
            Some(t) if t.weighs(version) => write!(
                f,
                "NOT rolled back: {version} keeps traffic ({}{t})",
                match (mode, good) {
                    (Cleanup::Hold, _) => "on_failure: hold keeps what the rollout finished; ",
                    (_, None) => "no earlier version to bring back; ",
                    _ => "",
                }
            )?,
            Some(t) if !t.serves() => write!(f, "nothing serves {env}/{app} now ({t})")?,
            Some(t) if *mode == Cleanup::Revert => write!(f, "rolled back, read back: {t}")?,
            Some(t) => write!(f, "read back: {t}")?,
        }
        if let Some(t) = after {
            // After a failed spec change, the instances of the version's new spec.
            let failed = if good
                .as_deref()
                .is_some_and(|g| g.ends_with(plan::EARLIER_SPEC))
            {
                format!("{version} with its new spec")
            } else {
                version.clone()
            };
            match t.running(version).as_slice() {
                [] => write!(f, "; no instance of {failed} runs")?,
                hosts => write!(f, "; {failed} still runs on {}", hosts.join(", "))?,
            }
        }
        if *quarantined {
            write!(f, "; {version} is quarantined until its desired state changes or `kube-free retry {app} --env {env}`")?;
        }
        Ok(())
    }
}

/// What one pass would do now, without doing it: observe, then plan (what `kube-free plan` shows,
/// and what a watcher without self-heal reports as drift).
pub async fn preview(world: &Arc<World>, scope: &Scope) -> Result<plan::Plan, ReconcileError> {
    Ok(preview_observed(world, scope).await?.1)
}

/// [`preview`], with the snapshot it planned from (what `plan --out` saves the digest of).
pub async fn preview_observed(
    world: &Arc<World>,
    scope: &Scope,
) -> Result<(ObservedState, plan::Plan), ReconcileError> {
    let started = std::time::Instant::now();
    let observed = world.observe().await?;
    world.timings.since("observe", started);
    let started = std::time::Instant::now();
    let plan = plan::build(
        &world.desired,
        &observed,
        &world.stale_configs(&observed),
        scope,
    );
    world.timings.since("plan", started);
    Ok((observed, plan))
}

/// One pass, under the lease the caller holds: observe, plan, execute; on failure, clean up (a
/// canary gives its traffic back to the stable version first), quarantine the version when the
/// version itself failed, and report it.
pub async fn once(
    world: Arc<World>,
    scope: &Scope,
    options: Options,
) -> Result<Report, ReconcileError> {
    pass(world, scope, options, None).await
}

/// A saved plan, what [`once_saved`] executes, and the rewind guard it records the commit with.
struct Saved<'a> {
    plan: &'a SavedPlan,
    history: &'a History,
    allow_rewind: bool,
}

/// [`once`] of a saved plan (`reconcile --plan`), under the lease the caller holds: what it
/// observes must be what the plan was made from and the plan it makes the saved one, step for
/// step ([`SavedPlan::confirm`]), else it is refused having written nothing; only then is the
/// commit recorded as applied (`rewind::guard`, which the caller does not run) and the plan
/// executed, as `once` does (failures, cleanup and quarantine alike).
pub async fn once_saved(
    world: Arc<World>,
    scope: &Scope,
    options: Options,
    saved: &SavedPlan,
    history: &History,
    allow_rewind: bool,
) -> Result<Report, ReconcileError> {
    let saved = Saved {
        plan: saved,
        history,
        allow_rewind,
    };
    pass(world, scope, options, Some(saved)).await
}

async fn pass(
    world: Arc<World>,
    scope: &Scope,
    options: Options,
    saved: Option<Saved<'_>>,
) -> Result<Report, ReconcileError> {
    let (observed, plan) = preview_observed(&world, scope).await?;
    if let Some(saved) = saved {
        saved.plan.confirm(&world.desired, &observed, &plan)?;
        super::rewind::guard(&world, saved.history, saved.allow_rewind).await?;
    }
    if let Some(refused) = &plan.refused {
        return Err(ReconcileError::PruneRefused(refused.clone()));
    }
    for orphan in &plan.orphans {
        tracing::warn!("orphaned, left running (`--prune` or `prune: true` stops it): {orphan}");
    }
    world.repair_instance_files(&observed, scope).await?;
    let quarantined = |done: Vec<Action>| {
        if plan.notes.is_empty() {
            Ok(Report {
                steps: done.len(),
                done,
            })
        } else {
            Err(ReconcileError::Quarantined(plan.notes.clone()))
        }
    };
    if plan.is_empty() {
        tracing::info!("in sync");
        return quarantined(Vec::new());
    }
    tracing::info!(
        steps = plan.graph.node_count(),
        "executing plan\n{}",
        plan.render_text()
    );
    let repairing: BTreeSet<(String, String)> = world
        .desired
        .deployments()
        .filter(|(e, a, _)| plan::quarantine(&world.desired, &observed, &e.name, a).is_some())
        .map(|(e, a, _)| (e.name.clone(), a.to_owned()))
        .collect();
    // A rollout is what moves an app to a version it has not finished rolling out; steps for an
    // app whose record says its version succeeded are a repair (self-heal), not a rollout.
    let rollouts: BTreeSet<(String, String)> = plan
        .graph
        .node_weights()
        .filter_map(rollout_of)
        .filter(|(env, app)| {
            let version = &world.desired.deployed(env, app).version;
            !observed
                .rollout(env, app)
                .is_some_and(|r| r.version == *version && r.phase == Phase::Succeeded)
        })
        .collect();
    for (env, app) in &rollouts {
        let d = world.desired.deployed(env, app);
        world.notify(
            EventKind::Started,
            env,
            app,
            format!(
                "{env}/{app}: rolling out {} ({})",
                d.version,
                d.strategy.name()
            ),
        );
    }
    super::audit::executing(&world, &observed, &plan, &rollouts, &repairing);
    let effects = Live::new(&world, observed, options.max_wait, false);
    let progress = world.progress();
    let progress = Both(progress.as_ref(), &world.timings);
    let started = std::time::Instant::now();
    let ran = execute::run(&plan, effects, options.parallel, &progress).await;
    world.timings.since("execute", started);
    match ran {
        Ok(report) => {
            for (env, app) in &rollouts {
                let d = world.desired.deployed(env, app);
                world.notify(
                    EventKind::Succeeded,
                    env,
                    app,
                    format!("{env}/{app}: {} serves", d.version),
                );
            }
            quarantined(report.done.into_iter().map(|(a, _)| a).collect())
        }
        Err(failed) => Err(after_failure(&world, failed, options.parallel, &repairing).await?),
    }
}

/// What a run does after step `failed` did not finish; the error that ends the pass. `repairing`:
/// the rollouts whose version was quarantined before the pass (its steps were a repair).
async fn after_failure(
    world: &Arc<World>,
    failed: StepFailed,
    parallel: usize,
    repairing: &BTreeSet<(String, String)>,
) -> Result<ReconcileError, ReconcileError> {
    let failed = Box::new(failed);
    let fault = failed.error.fault;
    if failed.error.waits() {
        return Ok(if world.is_interrupted() || fault == Fault::Interrupted {
            ReconcileError::Interrupted { failed }
        } else {
            if let Action::Pause {
                env,
                app,
                version,
                step,
                ..
            } = &failed.action
            {
                // The same words at every pass, so that the event is sent once.
                world.notify(
                    EventKind::Paused,
                    env,
                    app,
                    format!(
                        "{env}/{app}: the canary of {version} is paused at step {}",
                        step + 1
                    ),
                );
            }
            ReconcileError::Waiting { failed }
        });
    }
    // A run that lost its lease leaves everything to the run that holds it now.
    world.check_lease().await?;
    let Some((env, app)) = rollout_of(&failed.action) else {
        return Ok(ReconcileError::RolledBack {
            failed,
            outcome: Box::new(Outcome::NothingMoved),
        });
    };
    // A host that cannot be reached can neither be cleaned up nor observed: leave the rollout as it
    // is (the balancer keeps traffic on healthy servers) for the next run.
    let lost = world.lost_hosts(&env).await;
    if fault == Fault::Unreachable || !lost.is_empty() {
        let said = failed.to_string();
        let lost = lost.into_iter().filter(|l| !said.contains(l)).collect();
        return Ok(ReconcileError::HostLost {
            failed,
            env,
            app,
            lost,
        });
    }
    let d = world.desired.deployed(&env, &app);
    let version = d.version.clone();
    let canary = matches!(d.strategy, crate::desired::Strategy::Canary { .. });
    // The version's own failure brings the last good version back (unless the strategy holds what
    // it finished); another failure only takes a canary's traffic back while it is being judged.
    let mode = match fault {
        Fault::Version if d.strategy.holds() => Cleanup::Hold,
        Fault::Version => Cleanup::Revert,
        _ if canary && rules::takes_back(&failed.action) => Cleanup::Revert,
        _ => Cleanup::Keep,
    };
    let quarantined = fault == Fault::Version;
    let observed = world.observe().await?;
    let good = plan::reverts_to(&world.desired, &observed, &env, &app, &version);
    // Quarantined first: a run killed in the cleanup leaves a record that makes the next one
    // finish it, not try the version again. An abort stays an abort, and a failure another run
    // recorded stays as it said it.
    if quarantined {
        let found = observed.instances_of(&env, &app);
        let last_good = plan::last_good(&observed, &found, &env, &app, &version);
        match world.record_for(&env, &app, &version, last_good).await {
            Ok(mut record) => {
                record.phase = Phase::Failed;
                record.outcome = Some(crate::error::chain(&failed.error));
                match world.save_rollout(&mut record).await {
                    Ok(()) | Err(ReconcileError::Gate(GateError::Ended { .. })) => {}
                    Err(e) => return Err(e),
                }
            }
            Err(ReconcileError::Gate(GateError::Ended { .. })) => {}
            Err(e) => return Err(e),
        }
    }
    // A repair that failed (the failed step was one) is not tried again in the same run.
    let cleanup = if repairing.contains(&(env.clone(), app.clone())) {
        Ok(())
    } else {
        clean_up(world, observed, &env, &app, mode, parallel)
            .await
            .map_err(Box::new)
    };
    let outcome = Outcome::Cleaned {
        mode,
        good,
        cleanup,
        quarantined,
        after: read_back(world, &env, &app).await,
        env: env.clone(),
        app: app.clone(),
        version,
    };
    world.notify(
        EventKind::Failed,
        &env,
        &app,
        format!("{env}/{app}: {failed}; {outcome}"),
    );
    if quarantined {
        world.notify(
            EventKind::Quarantined,
            &env,
            &app,
            format!("{env}/{app}: {outcome}"),
        );
    }
    Ok(ReconcileError::RolledBack {
        outcome: Box::new(outcome),
        failed,
    })
}

/// What serves `env`/`app` now, read again from hosts and balancer.
async fn read_back(world: &Arc<World>, env: &str, app: &str) -> Option<Traffic> {
    match world.observe().await {
        Ok(observed) => Some(Traffic::read(&world.desired, &observed, env, app)),
        Err(e) => {
            tracing::warn!(error = %crate::error::chain(&e), "cannot read back what serves {env}/{app}");
            None
        }
    }
}

/// The (env, app) whose rollout a step is part of; `None` for a balancer's config.
pub fn rollout_of(action: &Action) -> Option<(String, String)> {
    match action {
        Action::Start { at, .. }
        | Action::Probe { at }
        | Action::Enable { at, .. }
        | Action::Drain { at, .. }
        | Action::Stop { at, .. } => Some((at.env.clone(), at.app.clone())),
        Action::Shift { env, app, .. }
        | Action::Pull { env, app, .. }
        | Action::Weigh { env, app, .. }
        | Action::Pause { env, app, .. }
        | Action::Bake { env, app, .. }
        | Action::Conclude { env, app, .. } => Some((env.clone(), app.clone())),
        // An orphan is no rollout's: its app may be gone from the desired state.
        Action::ApplyConfig { .. } | Action::Prune { .. } => None,
    }
}

/// Takes out and stops the instances of the desired version of `env`/`app`; with
/// [`Cleanup::Revert`], the last good version serves again first wherever it had traffic (see
/// [`plan::cleanup`]).
pub(super) async fn clean_up(
    world: &Arc<World>,
    observed: ObservedState,
    env: &str,
    app: &str,
    mode: Cleanup,
    parallel: usize,
) -> Result<(), ReconcileError> {
    let d = world.desired.deployed(env, app);
    let plan = plan::cleanup(&world.desired, &observed, env, app, &d.version, mode);
    let progress = world.progress();
    progress.event(execute::Event::CleaningUp { env, app });
    for note in &plan.notes {
        tracing::warn!("{note}");
    }
    tracing::warn!(
        steps = plan.graph.node_count(),
        "cleaning up after the failed rollout\n{}",
        plan.render_text()
    );
    let effects = Live::new(world, observed, None, true);
    let started = std::time::Instant::now();
    let ran = execute::run(
        &plan,
        effects,
        parallel,
        &Both(progress.as_ref(), &world.timings),
    )
    .await;
    world.timings.since("clean up", started);
    ran.map(|_| ())
        .map_err(|failed| ReconcileError::Step(Box::new(failed)))
}
