//! One pass ([`once`]): observe, plan, execute; after a step that failed, by whose fault: a lost
//! lease stops the run; an unreachable host leaves the rollout as it is; anything else cleans up
//! (a canary still being judged gives its traffic back to the stable version first), and the
//! version's own failure quarantines it.

use super::effects::Live;
use super::{rules, Options, ReconcileError, Report, World};
use crate::execute::{self, Fault, StepFailed};
use crate::plan::{self, Action, Scope};
use crate::state::Phase;
use std::sync::Arc;

/// What a failed pass did about its failure (after the failed step, in the run's error).
#[derive(Debug)]
pub enum Outcome {
    /// The failed step belongs to no rollout (a balancer's config).
    NothingMoved,
    /// A cleanup's own step failed.
    CleanupStopped,
    /// The rollout of `version` of `env`/`app` was cleaned up (or that failed, `cleanup`), and the
    /// version quarantined when it was its own fault.
    Cleaned {
        env: String,
        app: String,
        version: String,
        /// A canary: its traffic went back to the version that served before.
        canary: bool,
        cleanup: Result<(), Box<ReconcileError>>,
        quarantined: bool,
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

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Outcome::Cleaned {
            env,
            app,
            version,
            canary,
            cleanup,
            quarantined,
        } = self
        else {
            return f.write_str(match self {
                Outcome::NothingMoved => "nothing was moved",
                _ => "cleanup stopped",
            });
        };
        match cleanup {
            Ok(()) if *canary => write!(f, "rolled back: {env}/{app} traffic is back on the version that served before, and the instances of {version} are stopped")?,
            Ok(()) => write!(f, "cleaned up: instances of {version} that got no traffic are stopped; {env}/{app} keeps what serves")?,
            Err(e) => write!(f, "cleaning up {env}/{app} failed too: {}", crate::error::chain(e.as_ref()))?,
        }
        if *quarantined {
            write!(f, "; {version} is quarantined until its desired state changes or `kube-free retry {app} --env {env}`")?;
        }
        Ok(())
    }
}

/// One pass, under the lease the caller holds: observe, plan, execute; on failure, clean up (a
/// canary gives its traffic back to the stable version first), quarantine the version when the
/// version itself failed, and report it.
pub async fn once(
    world: Arc<World>,
    scope: &Scope,
    options: Options,
) -> Result<Report, ReconcileError> {
    let observed = world.observe().await?;
    world.repair_instance_files(&observed, scope).await?;
    let plan = plan::build(
        &world.desired,
        &observed,
        &world.stale_configs(&observed),
        scope,
    );
    let quarantined = |steps| {
        if plan.notes.is_empty() {
            Ok(Report { steps })
        } else {
            Err(ReconcileError::Quarantined(plan.notes.clone()))
        }
    };
    if plan.is_empty() {
        tracing::info!("in sync");
        return quarantined(0);
    }
    tracing::info!(
        steps = plan.graph.node_count(),
        "executing plan\n{}",
        plan.render_text()
    );
    let effects = Live::new(&world, observed, options.max_wait, false);
    match execute::run(&plan, effects, options.parallel).await {
        Ok(report) => quarantined(report.done.len()),
        Err(failed) => Err(after_failure(&world, failed, options.parallel).await?),
    }
}

/// What a run does after step `failed` did not finish; the error that ends the pass.
async fn after_failure(
    world: &Arc<World>,
    failed: StepFailed,
    parallel: usize,
) -> Result<ReconcileError, ReconcileError> {
    let failed = Box::new(failed);
    let fault = failed.error.fault;
    if failed.error.waits() {
        return Ok(if world.is_interrupted() || fault == Fault::Interrupted {
            ReconcileError::Interrupted { failed }
        } else {
            ReconcileError::Waiting { failed }
        });
    }
    // A run that lost its lease leaves everything to the run that holds it now.
    world.check_lease().await?;
    let Some((env, app)) = rollout_of(&failed.action) else {
        return Ok(ReconcileError::RolledBack {
            failed,
            outcome: Outcome::NothingMoved,
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
    let take_back = canary && rules::takes_back(&failed.action);
    let cleanup = clean_up(world, &env, &app, take_back, parallel)
        .await
        .map_err(Box::new);
    let quarantined = fault == Fault::Version;
    if quarantined {
        let current = world
            .read_rollout(&env, &app)
            .await?
            .filter(|r| r.version == version);
        // An abort stays an abort, and a failure another run recorded stays as it said it.
        if current.as_ref().is_none_or(|r| !r.phase.quarantines()) {
            let mut record = current.unwrap_or_else(|| world.new_record(&env, &app, &version));
            record.fingerprint = world.desired.fingerprint(&env, &app);
            record.phase = Phase::Failed;
            record.outcome = Some(crate::error::chain(&failed.error));
            world.write_rollout(&record).await?;
        }
    }
    Ok(ReconcileError::RolledBack {
        failed,
        outcome: Outcome::Cleaned {
            env,
            app,
            version,
            canary,
            cleanup,
            quarantined,
        },
    })
}

/// The (env, app) whose rollout a step is part of; `None` for a balancer's config.
fn rollout_of(action: &Action) -> Option<(String, String)> {
    match action {
        Action::Start { at, .. }
        | Action::Probe { at }
        | Action::Enable { at, .. }
        | Action::Drain { at, .. }
        | Action::Stop { at, .. } => Some((at.env.clone(), at.app.clone())),
        Action::Shift { env, app, .. }
        | Action::Weigh { env, app, .. }
        | Action::Pause { env, app, .. }
        | Action::Conclude { env, app, .. } => Some((env.clone(), app.clone())),
        Action::ApplyConfig { .. } => None,
    }
}

/// Takes out and stops the instances of the desired version of `env`/`app` that get no traffic; a
/// canary's that get traffic give it back to the stable version first (`take_back`).
pub(super) async fn clean_up(
    world: &Arc<World>,
    env: &str,
    app: &str,
    take_back: bool,
    parallel: usize,
) -> Result<(), ReconcileError> {
    let observed = world.observe().await?;
    let d = world.desired.deployed(env, app);
    let plan = plan::cleanup(&world.desired, &observed, env, app, &d.version, take_back);
    for note in &plan.notes {
        tracing::warn!("{note}");
    }
    tracing::warn!(
        steps = plan.graph.node_count(),
        "cleaning up after the failed rollout\n{}",
        plan.render_text()
    );
    execute::run(&plan, Live::new(world, observed, None, true), parallel)
        .await
        .map(|_| ())
        .map_err(|failed| ReconcileError::RolledBack {
            failed: Box::new(failed),
            outcome: Outcome::CleanupStopped,
        })
}
