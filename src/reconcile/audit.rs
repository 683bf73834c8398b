//! The audit log: one JSON line ([`AuditLine`]) per run that changed something, appended to
//! `<state_dir>/audit.log` on the balancer hosts of the environments the run was about, at its end
//! (also when it failed, was stopped or waits): when, the commit, who, the command, the steps done,
//! how it ended ([`Outcome`]) and what became of each rollout it moved ([`RolloutResult`]). A run tallies
//! its steps and rollouts as it goes ([`Tally`], kept by its world: every live step done counts, a
//! cleanup's too); [`pass_line`] judges a pass by its result, the gates, `suspend` and `resume`
//! write their own line ([`command_line`]). A run that changed nothing writes nothing. A line that
//! cannot be appended is a warning: the run's result and exit code stand. [`read`] gets the logs
//! back for `kube-free history`.

use super::pass::{rollout_of, Outcome as Cleaned};
use super::{ReconcileError, Report, World};
use crate::drivers::LedgerError;
use crate::observed::ObservedState;
use crate::plan::{Plan, Scope, Traffic};
use crate::state::{AuditLine, AuditRollout};
use std::collections::BTreeSet;
use std::sync::Mutex;

/// How a run ended, as its audit line says (`outcome`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every step done: the hosts are as the commit says.
    Converged,
    /// Every step done, and a version is quarantined (what serves is the last good version).
    Quarantined,
    /// Stopped at a canary pause or gate (exit 3); a later run resumes there.
    Waiting,
    /// The version failed and was quarantined; the last good version serves again, as read back.
    RolledBack,
    /// A step failed and what serves is not the last good version alone (a held rollout, no
    /// earlier version, a failed cleanup, a failure that was not the version's), or another error
    /// after the run acted.
    Failed,
    /// A host could not be reached: the rollout stopped where it was.
    HostLost,
    /// Stopped by a signal (or because the lease was lost) before it finished.
    Interrupted,
    /// The run found its lease lost: it changed nothing more.
    LeaseLost,
    Promoted,
    Aborted,
    Retried,
    Suspended,
    Resumed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Converged => "converged",
            Outcome::Quarantined => "quarantined",
            Outcome::Waiting => "waiting",
            Outcome::RolledBack => "rolled-back",
            Outcome::Failed => "failed",
            Outcome::HostLost => "host-lost",
            Outcome::Interrupted => "interrupted",
            Outcome::LeaseLost => "lease-lost",
            Outcome::Promoted => "promoted",
            Outcome::Aborted => "aborted",
            Outcome::Retried => "retried",
            Outcome::Suspended => "suspended",
            Outcome::Resumed => "resumed",
        }
    }
}

/// What became of one rollout of a run (`rollouts[].result`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RolloutResult {
    /// The version serves.
    Succeeded,
    /// The version had succeeded; drift was put back (self-heal).
    Repaired,
    /// The version is quarantined; the steps were for the last good version.
    Quarantined,
    /// At a canary pause or gate.
    Waiting,
    /// The version failed; the last good version serves again.
    RolledBack,
    /// A step of it failed, and it was not rolled back (or the run failed otherwise).
    Failed,
    /// The run stopped before it finished (a signal, a lost host or lease, another rollout's
    /// failure or pause): nothing undone, the next run goes on.
    Stopped,
    Promoted,
    Aborted,
    Retried,
}

impl RolloutResult {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutResult::Succeeded => "succeeded",
            RolloutResult::Repaired => "repaired",
            RolloutResult::Quarantined => "quarantined",
            RolloutResult::Waiting => "waiting",
            RolloutResult::RolledBack => "rolled-back",
            RolloutResult::Failed => "failed",
            RolloutResult::Stopped => "stopped",
            RolloutResult::Promoted => "promoted",
            RolloutResult::Aborted => "aborted",
            RolloutResult::Retried => "retried",
        }
    }
}

/// What a run did so far: steps done, whether it began executing a plan, the rollouts it moves.
#[derive(Default)]
pub struct Tally(Mutex<Tallied>);

#[derive(Default)]
struct Tallied {
    steps: usize,
    acted: bool,
    rollouts: Vec<Begun>,
}

/// A rollout a pass moves.
struct Begun {
    env: String,
    app: String,
    version: String,
    strategy: String,
    from: Option<String>,
    kind: Kind,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Rollout,
    Repair,
    Quarantined,
}

impl Tally {
    fn lock(&self) -> std::sync::MutexGuard<'_, Tallied> {
        self.0.lock().expect("not poisoned")
    }

    /// A live step finished.
    pub(super) fn step_done(&self) {
        self.lock().steps += 1;
    }

    fn take(&self) -> Tallied {
        std::mem::take(&mut *self.lock())
    }
}

/// When a run began: the time its line gives, and what its duration counts from.
pub struct Start {
    at: u64,
    started: tokio::time::Instant,
}

/// A run begins: its tally starts from nothing.
pub fn start(world: &World) -> Start {
    world.audit.take();
    Start {
        at: world.clock().now(),
        started: tokio::time::Instant::now(),
    }
}

/// A pass is about to execute `plan`, built from `observed`: every app it has steps for is one of
/// its rollouts; `rollouts` are those that move to a version not yet rolled out, `quarantined`
/// those whose version was quarantined before the pass (the others are repairs).
pub(super) fn executing(
    world: &World,
    observed: &ObservedState,
    plan: &Plan,
    rollouts: &BTreeSet<(String, String)>,
    quarantined: &BTreeSet<(String, String)>,
) {
    let apps: BTreeSet<(String, String)> =
        plan.graph.node_weights().filter_map(rollout_of).collect();
    let mut tally = world.audit.lock();
    tally.acted = true;
    for (env, app) in apps {
        if tally.rollouts.iter().any(|b| b.env == env && b.app == app) {
            continue;
        }
        let d = world.desired.deployed(&env, &app);
        let traffic = Traffic::read(&world.desired, observed, &env, &app);
        let from: Vec<&str> = traffic
            .weighted()
            .into_keys()
            .filter(|v| *v != d.version && *v != "?")
            .collect();
        let key = (env.clone(), app.clone());
        let kind = if quarantined.contains(&key) {
            Kind::Quarantined
        } else if rollouts.contains(&key) {
            Kind::Rollout
        } else {
            Kind::Repair
        };
        tally.rollouts.push(Begun {
            version: d.version.clone(),
            strategy: d.strategy.name().to_owned(),
            from: (!from.is_empty()).then(|| from.join(", ")),
            kind,
            env,
            app,
        });
    }
}

/// `reconcile --once --env prod --app api`: `command` and the scope's options.
pub fn command(command: &str, scope: &Scope) -> String {
    let mut text = command.to_owned();
    for (option, value) in [("--env", &scope.env), ("--app", &scope.app)] {
        if let Some(value) = value {
            text.push_str(&format!(" {option} {value}"));
        }
    }
    text
}

/// The audit line of a pass over `scope` that began at `start` and ended with `result`, or `None`
/// when it changed nothing (in sync, or it stopped, waited or found its lease lost before any
/// step was done). Takes the world's tally.
pub fn pass_line(
    world: &World,
    start: &Start,
    command: &str,
    scope: &Scope,
    result: &Result<Report, ReconcileError>,
) -> Option<AuditLine> {
    let tallied = world.audit.take();
    let acted_then_failed = tallied.acted
        && matches!(result, Err(e) if !matches!(
            e,
            ReconcileError::Waiting { .. }
                | ReconcileError::Interrupted { .. }
                | ReconcileError::LeaseLost { .. }
                | ReconcileError::Locked { .. }
        ));
    if tallied.steps == 0 && !acted_then_failed {
        return None;
    }
    let rollouts = tallied
        .rollouts
        .iter()
        .map(|b| AuditRollout {
            env: b.env.clone(),
            app: b.app.clone(),
            version: b.version.clone(),
            strategy: b.strategy.clone(),
            from: b.from.clone(),
            result: result_of(result, b).as_str().to_owned(),
        })
        .collect();
    let envs: Vec<String> = world
        .desired
        .deployments()
        .filter(|(e, a, _)| scope.includes(&e.name, a))
        .map(|(e, _, _)| e.name.clone())
        .chain(tallied.rollouts.iter().map(|b| b.env.clone()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let stopped_at = match result {
        Err(
            ReconcileError::Waiting { failed }
            | ReconcileError::Interrupted { failed }
            | ReconcileError::RolledBack { failed, .. }
            | ReconcileError::HostLost { failed, .. },
        ) => Some(failed.action.to_string()),
        _ => None,
    };
    Some(AuditLine {
        stopped_at,
        ..line(
            world,
            start,
            command,
            outcome_of(result),
            tallied.steps,
            envs,
            rollouts,
        )
    })
}

fn line(
    world: &World,
    start: &Start,
    command: &str,
    outcome: Outcome,
    steps: usize,
    envs: Vec<String>,
    rollouts: Vec<AuditRollout>,
) -> AuditLine {
    AuditLine {
        time: crate::state::rfc3339(start.at),
        commit: world.revision.clone(),
        who: super::suspend::who(),
        command: command.to_owned(),
        steps,
        outcome: outcome.as_str().to_owned(),
        duration_ms: start.started.elapsed().as_millis() as u64,
        rollouts,
        envs,
        stopped_at: None,
        run: world.run_id.clone(),
    }
}

/// How a pass that ended with `result` ended.
fn outcome_of(result: &Result<Report, ReconcileError>) -> Outcome {
    match result {
        Ok(_) => Outcome::Converged,
        Err(ReconcileError::Quarantined(_)) => Outcome::Quarantined,
        Err(ReconcileError::Waiting { .. }) => Outcome::Waiting,
        Err(ReconcileError::Interrupted { .. }) => Outcome::Interrupted,
        Err(ReconcileError::LeaseLost { .. }) => Outcome::LeaseLost,
        Err(ReconcileError::HostLost { .. }) => Outcome::HostLost,
        Err(ReconcileError::RolledBack { outcome, .. }) if rolled_back(outcome) => {
            Outcome::RolledBack
        }
        Err(_) => Outcome::Failed,
    }
}

/// The failed version was quarantined, the cleanup went through, and as read back afterwards it
/// has no traffic and something serves.
fn rolled_back(outcome: &Cleaned) -> bool {
    matches!(
        outcome,
        Cleaned::Cleaned {
            version,
            quarantined: true,
            cleanup: Ok(()),
            after: Some(t),
            ..
        } if !t.weighs(version) && t.serves()
    )
}

/// What became of rollout `b` in a pass that ended with `result`.
fn result_of(result: &Result<Report, ReconcileError>, b: &Begun) -> RolloutResult {
    let this = |env: &str, app: &str| b.env == env && b.app == app;
    match result {
        Ok(_) | Err(ReconcileError::Quarantined(_)) => match b.kind {
            Kind::Rollout => RolloutResult::Succeeded,
            Kind::Repair => RolloutResult::Repaired,
            Kind::Quarantined => RolloutResult::Quarantined,
        },
        Err(ReconcileError::Waiting { failed })
            if rollout_of(&failed.action).is_some_and(|(e, a)| this(&e, &a)) =>
        {
            RolloutResult::Waiting
        }
        Err(ReconcileError::RolledBack { outcome, .. }) => match outcome.as_ref() {
            Cleaned::Cleaned { env, app, .. } if this(env, app) && rolled_back(outcome) => {
                RolloutResult::RolledBack
            }
            Cleaned::Cleaned { env, app, .. } if this(env, app) => RolloutResult::Failed,
            _ => RolloutResult::Stopped,
        },
        Err(
            ReconcileError::Waiting { .. }
            | ReconcileError::Interrupted { .. }
            | ReconcileError::LeaseLost { .. }
            | ReconcileError::HostLost { .. },
        ) => RolloutResult::Stopped,
        Err(_) => RolloutResult::Failed,
    }
}

/// What two lines say, less when, how long and how many steps: a watcher that comes back to a
/// gate says the same each time.
fn gist(line: &AuditLine) -> String {
    serde_json::json!([line.commit, line.outcome, line.stopped_at, line.rollouts]).to_string()
}

/// Appends `line` to the audit log on the balancer hosts of its environments (every balancer host
/// this world reaches when it names none). A host where it fails is warned about; the run's result
/// stands.
pub async fn append(world: &World, line: &AuditLine) {
    let text = serde_json::to_string(line).expect("an audit line serializes");
    let mut hosts: BTreeSet<&str> = line
        .envs
        .iter()
        .filter_map(|e| world.desired.environments.get(e))
        .map(|e| world.desired.balancers[&e.balancer].host.as_str())
        .collect();
    if hosts.is_empty() {
        hosts = world.desired.balancer_hosts();
    }
    for host in hosts {
        let Some(ledger) = world.drivers.ledgers.get(host) else {
            continue;
        };
        if let Err(e) = ledger.append_audit(&text).await {
            tracing::warn!(
                %host,
                error = %crate::error::chain(&e),
                "this run's line was not appended to the audit log {} on {host} (the run's result stands)",
                ledger.audit_file()
            );
        }
    }
}

/// [`append`], unless `line` waits where the last line appended through `last` waited, saying the
/// same: a watcher that comes back to a gate every few seconds writes one line, not one a visit.
/// `last` keeps what the line appended said when it waits.
pub async fn append_once(world: &World, line: &AuditLine, last: &mut Option<String>) {
    let waits = line.outcome == Outcome::Waiting.as_str();
    let said = gist(line);
    if waits && last.as_deref() == Some(said.as_str()) {
        return;
    }
    append(world, line).await;
    *last = waits.then_some(said);
}

/// Appends the line of a command other than a pass (a gate, `suspend`, `resume`) that began at
/// `start` and changed shared state, about `envs`; its steps are those of its tally (an abort's
/// cleanup).
pub(super) async fn command_line(
    world: &World,
    start: &Start,
    command: &str,
    outcome: Outcome,
    envs: Vec<String>,
    rollouts: Vec<AuditRollout>,
) {
    let steps = world.audit.take().steps;
    let line = line(world, start, command, outcome, steps, envs, rollouts);
    append(world, &line).await;
}

/// The rollout a gate acts on: `env`/`app` at its desired version, coming from `from`.
pub(super) fn gate_rollout(
    world: &World,
    env: &str,
    app: &str,
    from: Option<String>,
    result: RolloutResult,
) -> AuditRollout {
    let d = world.desired.deployed(env, app);
    AuditRollout {
        env: env.to_owned(),
        app: app.to_owned(),
        version: d.version.clone(),
        strategy: d.strategy.name().to_owned(),
        from,
        result: result.as_str().to_owned(),
    }
}

/// The audit log of one balancer host, as read.
pub struct Read {
    pub host: String,
    /// Where it is, for messages.
    pub file: String,
    /// Its bytes (`None`: there is none).
    pub bytes: Result<Option<Vec<u8>>, LedgerError>,
}

/// The audit logs of `hosts` (balancer hosts this world reaches), in name order.
pub async fn read(world: &World, hosts: &BTreeSet<String>) -> Vec<Read> {
    let mut all = Vec::new();
    for host in hosts {
        let Some(ledger) = world.drivers.ledgers.get(host) else {
            continue;
        };
        all.push(Read {
            host: host.clone(),
            file: ledger.audit_file(),
            bytes: ledger.read_audit().await,
        });
    }
    all
}
