//! `kube-free watch`: the long-running service on a bastion. A loop around the same pass as
//! `reconcile --once`: it fetches the branch every `interval` (with ±10% jitter) or when a signed
//! webhook arrives, runs the pass on a new commit, when a resync is due (self-heal: drift is put
//! back and logged as `drift corrected: …`), when a canary pause ends, or after a failure's
//! backoff; it holds the lease only while a pass acts. It owns the loop's timing and what the
//! HTTP endpoints show (`http`), the metrics (`metrics`), webhook signatures (`webhook`) and the
//! status page (`page`); what a pass does is the reconciler's.

mod http;
pub mod metrics;
pub mod page;
pub mod webhook;

use crate::desired::Notification;
use crate::error::Error;
use crate::notify::{Event, EventKind, Notifier};
use crate::plan::{Action, Scope};
use crate::reconcile::{self, Next, World};
use crate::source::{CommitInfo, SourceError, SourceSpec};
use metrics::{KindLabel, Metrics, ResultLabel};
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// How a watcher runs (from the command line).
#[derive(Clone, Debug)]
pub struct Config {
    pub source: SourceSpec,
    pub scope: Scope,
    /// How often the branch is fetched (±10%).
    pub interval: Duration,
    /// How often the pass runs without a new commit (self-heal).
    pub resync: Duration,
    pub listen: SocketAddr,
    /// The webhook secret (`None`: webhooks are refused).
    pub webhook_secret: Option<Vec<u8>>,
    /// Put drift back (else only report it).
    pub self_heal: bool,
    pub parallel: usize,
    pub lease_ttl: Duration,
    /// Longest a pass waits at a canary pause before it hands the loop back.
    pub max_wait: Duration,
    /// Apply a head commit that does not descend from the last one applied.
    pub allow_rewind: bool,
}

/// What the last cycle did, as `/api/v1/status` and the page show it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Cycle {
    /// The commit the cycle read (`None`: Git could not be read).
    pub commit: Option<String>,
    /// `in sync`, `converged`, `waiting`, `locked`, `failed`, `quarantined`, `invalid`, `refused`,
    /// `git failed`, `drift` (found, not corrected), `suspended`, `stopped`.
    pub outcome: String,
    pub error: Option<String>,
    pub finished_at: u64,
    pub duration_ms: u64,
    /// When the next fetch is due (Unix time).
    pub next_poll_at: u64,
    /// When a pass last ended in sync or converged.
    pub last_sync_at: Option<u64>,
    pub last_poll_at: Option<u64>,
    pub last_webhook_at: Option<u64>,
    /// Whether this watcher held the lease in its last pass.
    pub acting: bool,
    /// Seconds the loop waits because cycles failed (0 when healthy).
    pub backoff_secs: u64,
    /// Whether the last cycle reached Git, and the hosts.
    pub reached_git: bool,
    pub reached_hosts: bool,
    /// Drift corrected (or, without self-heal, found) by the last pass that found any.
    pub drift: Vec<String>,
}

#[derive(Default)]
struct View {
    cycle: Cycle,
    commit: Option<String>,
    info: CommitInfo,
    environments: Vec<serde_json::Value>,
    suspended: Vec<reconcile::Suspension>,
}

/// What the loop and the HTTP endpoints share.
pub struct Shared {
    pub metrics: Metrics,
    webhook_secret: Option<Vec<u8>>,
    view: Mutex<View>,
    /// Set by a valid webhook: fetch now (a burst of them is one fetch).
    wake: tokio::sync::Notify,
}

impl Shared {
    fn new(webhook_secret: Option<Vec<u8>>) -> Shared {
        Shared {
            metrics: Metrics::new(),
            webhook_secret,
            view: Mutex::new(View::default()),
            wake: tokio::sync::Notify::new(),
        }
    }

    fn view(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().expect("not poisoned")
    }

    /// `/api/v1/status`: `status --output json` plus the commit and the last cycle.
    pub fn status(&self) -> serde_json::Value {
        let v = self.view();
        serde_json::json!({
            "commit": v.commit,
            "subject": v.info.subject,
            "author": v.info.author,
            "committed_at": v.info.time,
            "environments": v.environments,
            "suspended": v.suspended,
            "cycle": v.cycle,
        })
    }

    /// Why `/readyz` fails: the last cycle did not reach Git or the hosts.
    fn not_ready(&self) -> Option<String> {
        let v = self.view();
        let c = &v.cycle;
        if c.finished_at == 0 {
            Some("no cycle has finished yet".into())
        } else if c.outcome == "refused" {
            Some(format!(
                "the head commit is refused, no host was changed: {}",
                c.error.as_deref().unwrap_or_default()
            ))
        } else if c.outcome == "invalid" {
            Some(format!(
                "the desired state at the head commit is invalid, no host was contacted: {}",
                c.error.as_deref().unwrap_or_default()
            ))
        } else if !c.reached_git || !c.reached_hosts {
            Some(format!(
                "the last cycle did not reach {}: {}",
                if c.reached_git { "the hosts" } else { "Git" },
                c.error.as_deref().unwrap_or(&c.outcome)
            ))
        } else {
            None
        }
    }

    fn set_suspensions(&self, list: &[reconcile::Suspension]) {
        self.metrics.suspended.clear();
        for s in list {
            self.metrics
                .suspended
                .get_or_create(&metrics::EnvLabel {
                    env: s.env.clone().unwrap_or_else(|| "*".into()),
                })
                .set(1);
        }
        self.view().suspended = list.to_vec();
    }

    fn count_webhook(&self, result: &str) {
        self.metrics
            .webhooks
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
    }

    fn webhook_received(&self) {
        self.view().cycle.last_webhook_at = Some(crate::state::now());
        self.wake.notify_one();
    }
}

/// Why a watcher could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The loop's memory between cycles.
struct Loop {
    /// The commit of the last pass (any outcome).
    last_commit: Option<String>,
    /// The commit at which the last pass ended in sync or converged: a pass at it finds drift.
    synced: Option<String>,
    /// A commit whose desired state is invalid: no pass until another.
    invalid: Option<String>,
    last_pass: Option<Instant>,
    /// When a pass must run whatever Git says (a pause ends, a retry, a lease expires).
    due: Option<Instant>,
    next_poll: Instant,
    failures: u32,
    /// The notification targets in use and their sender, kept across cycles (its memory is what
    /// keeps an event from being sent twice); rebuilt when the targets change.
    notifier: Option<(Vec<Notification>, Notifier)>,
    /// What the last audit line appended said when it waited at a pause or gate: a pass that
    /// comes back to the gate and says the same appends nothing.
    last_waiting: Option<String>,
}

impl Loop {
    /// The sender for `targets`; the one in use while they are the same.
    fn notifier(&mut self, targets: &[Notification]) -> Notifier {
        if let Some((t, n)) = &self.notifier {
            if t == targets {
                return n.clone();
            }
        }
        let notifier = Notifier::new(targets).unwrap_or_else(|e| {
            tracing::error!(
                "notifications are off until the next commit: {}",
                crate::error::chain(&e)
            );
            Notifier::disabled()
        });
        self.notifier = Some((targets.to_vec(), notifier.clone()));
        notifier
    }

    /// Says that cycles fail (sent at once, then at 5 m, 30 m, 2 h while it lasts).
    fn sync_failing(&self, commit: Option<&str>, message: &str) {
        if let Some((_, n)) = &self.notifier {
            n.failing(Event {
                kind: EventKind::SyncFailing,
                env: String::new(),
                app: String::new(),
                commit: commit.unwrap_or_default().to_owned(),
                version: None,
                message: message.to_owned(),
            });
        }
    }

    fn sync_recovered(&self) {
        if let Some((_, n)) = &self.notifier {
            n.clear(EventKind::SyncFailing, "", "");
        }
    }
}

/// Runs the watcher until SIGTERM or SIGINT (or `stop` resolves): the current step finishes, the
/// lease is given back, and it returns.
pub async fn run(
    config: Config,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), WatchError> {
    let shared = Arc::new(Shared::new(config.webhook_secret.clone()));
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| WatchError::Listen {
            addr: config.listen,
            source,
        })?;
    tracing::info!(listen = %config.listen, repo = %config.source.repo, "watching");
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    let current: Arc<Mutex<Option<Arc<World>>>> = Arc::default();
    {
        let current = current.clone();
        tokio::spawn(async move {
            stop.await;
            tracing::warn!("stopping: finishing the current step, then giving the lease back");
            // Said first, so that a world connected from now on is interrupted by the cycle.
            let _ = stopping_tx.send(true);
            if let Some(world) = current.lock().expect("not poisoned").as_ref() {
                world.interrupt();
            }
        });
    }
    let server = {
        let mut stopping = stopping.clone();
        tokio::spawn(http::serve(listener, shared.clone(), async move {
            let _ = stopping.wait_for(|s| *s).await;
        }))
    };
    let mut state = Loop {
        last_commit: None,
        synced: None,
        invalid: None,
        last_pass: None,
        due: None,
        next_poll: Instant::now(),
        failures: 0,
        notifier: None,
        last_waiting: None,
    };
    let mut stopped = stopping.clone();
    loop {
        // No resync while the head commit is invalid or cycles fail: the backoff (`due`) or a new
        // commit decides then, else the loop would spin on a resync that is past.
        let resync = state
            .last_pass
            .filter(|_| state.invalid.is_none() && state.failures == 0)
            .map(|t| t + config.resync);
        let wake = [state.due, resync]
            .into_iter()
            .flatten()
            .fold(state.next_poll, Instant::min);
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            _ = shared.wake.notified() => {}
            _ = stopped.wait_for(|s| *s) => break,
        }
        if *stopping.borrow() {
            break;
        }
        let stop = cycle(&config, &shared, &mut state, &current, &stopping).await;
        if stop || *stopping.borrow() {
            break;
        }
    }
    let _ = server.await;
    tracing::info!("stopped");
    Ok(())
}

/// A poll, and the pass when one is due. Returns whether the loop must stop.
async fn cycle(
    config: &Config,
    shared: &Shared,
    state: &mut Loop,
    current: &Mutex<Option<Arc<World>>>,
    stopping: &tokio::sync::watch::Receiver<bool>,
) -> bool {
    let started = Instant::now();
    let now = crate::state::now();
    state.next_poll = started + jittered(config.interval);
    shared.view().cycle.last_poll_at = Some(now);
    let spec = config.source.clone();
    let scope = config.scope.clone();
    let loaded = tokio::task::block_in_place(|| crate::load::load(&spec, &scope));
    let loaded = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            let invalid = e.exit() == crate::Exit::BadInput;
            let commit = match &e {
                Error::Invalid { commit, .. }
                | Error::NoRootFile { commit, .. }
                | Error::Read { commit, .. }
                | Error::Source(SourceError::Untrusted { commit, .. }) => Some(commit.clone()),
                _ => None,
            };
            let message = crate::error::chain(&e);
            // Said once per commit, not at every poll.
            if commit.is_none() || commit.as_ref() != state.invalid.as_ref() {
                if let Error::Invalid { diagnostics, .. } = &e {
                    for d in diagnostics {
                        tracing::error!("{d}");
                    }
                }
                tracing::error!("desired state not read: {message}");
            }
            state.sync_failing(commit.as_deref(), &message);
            if commit.is_some() || invalid {
                // The commit (or the command line: an --env it does not have) is bad input:
                // nothing is done until another commit.
                state.invalid = Some(commit.clone().unwrap_or_default());
                state.due = None;
                finish(
                    shared,
                    state,
                    started,
                    commit,
                    "invalid",
                    Some(message),
                    true,
                    false,
                );
            } else {
                shared.metrics.git_fetch_errors.inc();
                backoff(config, state);
                finish(
                    shared,
                    state,
                    started,
                    None,
                    "git failed",
                    Some(message),
                    false,
                    false,
                );
            }
            return false;
        }
    };
    let commit = loaded.commit.clone();
    let notifier = state.notifier(&loaded.state.notifications);
    let new_commit = state.last_commit.as_deref() != Some(commit.as_str());
    let resync_due = state
        .last_pass
        .is_none_or(|t| started.duration_since(t) >= config.resync);
    let due = state.due.is_some_and(|d| d <= started);
    if !new_commit && !resync_due && !due {
        shared
            .metrics
            .cycles
            .get_or_create(&ResultLabel {
                result: "unchanged".into(),
            })
            .inc();
        let mut v = shared.view();
        v.cycle.next_poll_at = now + state.next_poll.duration_since(started).as_secs();
        return false;
    }
    let resumed_at_sync = state.synced.as_deref() == Some(commit.as_str());
    {
        let mut v = shared.view();
        v.commit = Some(commit.clone());
        v.info = loaded.info.clone();
    }
    state.last_commit = Some(commit.clone());
    state.last_pass = Some(started);
    state.due = None;
    let was_refused = state.invalid.as_deref() == Some(commit.as_str());
    state.invalid = None;
    let history = loaded.history.clone();
    let loaded = crate::load::Loaded {
        parallel: config.parallel,
        ..loaded
    };
    let world = match crate::load::connect_scope(loaded, &config.scope).await {
        Ok(world) => world,
        Err(e) => {
            let message = crate::error::chain(&e);
            tracing::error!("hosts not reached: {message}");
            hosts_failed(config, shared, state, started, commit, message);
            return false;
        }
    };
    world.set_notifier(notifier);
    *current.lock().expect("not poisoned") = Some(world.clone());
    if *stopping.borrow() {
        world.interrupt();
    }
    // A head commit that does not descend from the last one applied is refused like an invalid
    // one: said once, nothing done until another commit.
    if let Err(e) = reconcile::rewind::check(&world, &history, config.allow_rewind).await {
        let message = crate::error::chain(&e);
        *current.lock().expect("not poisoned") = None;
        if e.bad_input() {
            if !was_refused {
                tracing::error!("head commit refused: {message}");
            }
            state.invalid = Some(commit.clone());
            state.sync_failing(Some(&commit), &message);
            finish(
                shared,
                state,
                started,
                Some(commit),
                "refused",
                Some(message),
                true,
                true,
            );
        } else {
            tracing::error!("last applied commit not read: {message}");
            hosts_failed(config, shared, state, started, commit, message);
        }
        return false;
    }
    // Suspended environments are only observed: their drift is reported, nothing is changed.
    let suspensions = match reconcile::suspensions(&world).await {
        Ok(list) => list,
        Err(e) => {
            let message = crate::error::chain(&e);
            tracing::error!("suspensions not read: {message}");
            hosts_failed(config, shared, state, started, commit, message);
            *current.lock().expect("not poisoned") = None;
            return false;
        }
    };
    shared.set_suspensions(&suspensions);
    let (outcome, error, stop, reached_hosts) =
        match reconcile::suspend::decide(&world.desired, &config.scope, &suspensions) {
            reconcile::Decision::Suspended(by) => {
                for s in &by {
                    tracing::info!(
                        "{} is suspended until {} ({}): observe only",
                        s.what(),
                        reconcile::suspend::utc(s.until),
                        s.reason
                    );
                }
                let (_, error, stop, reached) = report_drift(&config.scope, shared, &world).await;
                ("suspended".into(), error, stop, reached)
            }
            reconcile::Decision::Run { scope, skipped } => {
                for s in &skipped {
                    tracing::info!(
                        "{} is suspended until {} ({}): left out",
                        s.what(),
                        reconcile::suspend::utc(s.until),
                        s.reason
                    );
                }
                if resumed_at_sync && !config.self_heal {
                    report_drift(&scope, shared, &world).await
                } else {
                    act(
                        config,
                        &scope,
                        shared,
                        state,
                        &world,
                        &history,
                        resumed_at_sync,
                    )
                    .await
                }
            }
        };
    match (&outcome[..], &error) {
        ("in sync" | "converged" | "drift" | "waiting" | "locked", _) => state.sync_recovered(),
        (_, Some(error)) => state.sync_failing(Some(&commit), error),
        _ => {}
    }
    if !matches!(&outcome[..], "failed" | "git failed" | "invalid") {
        state.failures = 0;
    }
    if matches!(&outcome[..], "in sync" | "converged" | "quarantined") {
        state.synced = Some(commit.clone());
        shared.metrics.last_success.set(crate::state::now() as f64);
        shared.view().cycle.last_sync_at = Some(crate::state::now());
    }
    refresh(shared, &world, &config.scope).await;
    *current.lock().expect("not poisoned") = None;
    finish(
        shared,
        state,
        started,
        Some(commit),
        &outcome,
        error,
        true,
        reached_hosts,
    );
    stop
}

/// What a cycle's pass ended with: the outcome, the error, whether to stop, whether the hosts
/// were reached.
type PassEnd = (String, Option<String>, bool, bool);

/// Runs the pass under the lease.
async fn act(
    config: &Config,
    scope: &Scope,
    shared: &Shared,
    state: &mut Loop,
    world: &Arc<World>,
    history: &crate::source::History,
    at_sync: bool,
) -> PassEnd {
    let options = reconcile::Options {
        parallel: config.parallel,
        max_wait: Some(config.max_wait),
    };
    shared.metrics.drift_found.clear();
    // Nothing to do needs no lease: a resync that finds the hosts in sync leaves the lease to
    // whoever acts (another watcher, a CI run, `promote`).
    match reconcile::preview(world, scope).await {
        // A prune the guard refuses is not "in sync": the pass says why, as an error.
        Ok(plan) if plan.is_empty() && plan.refused.is_none() => {
            shared.view().cycle.acting = false;
            return if plan.notes.is_empty() {
                ("in sync".into(), None, false, true)
            } else {
                (
                    "quarantined".into(),
                    Some(plan.notes.join("; ")),
                    false,
                    true,
                )
            };
        }
        Ok(_) => {}
        Err(e) => {
            backoff(config, state);
            return ("failed".into(), Some(crate::error::chain(&e)), false, false);
        }
    }
    let command = reconcile::audit::command("watch", &config.scope);
    let last_waiting = &mut state.last_waiting;
    let pass = async {
        shared.metrics.lease_held.set(1);
        shared.view().cycle.acting = true;
        let start = reconcile::audit::start(world);
        let result = match reconcile::rewind::guard(world, history, config.allow_rewind).await {
            Ok(()) => reconcile::once(world.clone(), scope, options).await,
            Err(e) => Err(e),
        };
        // Under the lease, at the end of the pass, whatever its end.
        if let Some(line) = reconcile::audit::pass_line(world, &start, &command, scope, &result) {
            reconcile::audit::append_once(world, &line, last_waiting).await;
        }
        shared.metrics.lease_held.set(0);
        result
    };
    let result = reconcile::leased(world, Duration::ZERO, config.lease_ttl, pass).await;
    shared.view().cycle.acting = !matches!(&result, Err(e) if e.locked());
    match result {
        Ok(report) => {
            if at_sync && !report.done.is_empty() {
                let drift = describe_drift(&report.done);
                for (kind, text, env, app) in &drift {
                    tracing::warn!("drift corrected: {text}");
                    world.notify(EventKind::DriftCorrected, env, app, text.clone());
                    shared
                        .metrics
                        .drift_corrections
                        .get_or_create(&KindLabel { kind: kind.clone() })
                        .inc();
                }
                shared.view().cycle.drift = drift.into_iter().map(|(_, t, ..)| t).collect();
            }
            let outcome = if report.steps == 0 {
                "in sync"
            } else {
                tracing::info!(steps = report.steps, commit = %world.revision, "converged");
                "converged"
            };
            (outcome.into(), None, false, true)
        }
        Err(e) => {
            let reached = !matches!(
                e,
                reconcile::ReconcileError::Transport(_)
                    | reconcile::ReconcileError::HostLost { .. }
            );
            let message = crate::error::chain(&e);
            let next = e.next();
            let outcome = match next {
                Next::At(t) => {
                    let wait = t.saturating_sub(crate::state::now());
                    state.due = Some(Instant::now() + Duration::from_secs(wait));
                    tracing::info!("waiting at a canary pause for {wait}s more");
                    "waiting"
                }
                Next::Promotion => {
                    state.due = Some(Instant::now() + config.interval.min(Duration::from_secs(10)));
                    tracing::info!("waiting for `kube-free promote`");
                    "waiting"
                }
                Next::Locked(d) => {
                    state.due =
                        Some(Instant::now() + (d + Duration::from_secs(1)).min(config.interval));
                    tracing::info!("another run holds the lease: {message}");
                    "locked"
                }
                Next::Stop => "stopped",
                Next::Quarantined => {
                    tracing::error!("{message}");
                    "quarantined"
                }
                Next::Idle | Next::Retry => {
                    tracing::error!("pass failed: {message}");
                    backoff(config, state);
                    "failed"
                }
            };
            (outcome.into(), Some(message), next == Next::Stop, reached)
        }
    }
}

/// Without self-heal: the pass's plan is reported as drift, nothing is changed.
async fn report_drift(scope: &Scope, shared: &Shared, world: &Arc<World>) -> PassEnd {
    shared.metrics.drift_found.clear();
    match reconcile::preview(world, scope).await {
        Ok(plan) if plan.is_empty() => ("in sync".into(), None, false, true),
        Ok(plan) => {
            let actions: Vec<Action> = plan.graph.node_weights().cloned().collect();
            let drift = describe_drift(&actions);
            for (kind, text, ..) in &drift {
                tracing::warn!("drift found, not corrected (self-heal off or suspended): {text}");
                shared
                    .metrics
                    .drift_found
                    .get_or_create(&KindLabel { kind: kind.clone() })
                    .inc();
            }
            shared.view().cycle.drift = drift.into_iter().map(|(_, t, ..)| t).collect();
            ("drift".into(), None, false, true)
        }
        Err(e) => ("failed".into(), Some(crate::error::chain(&e)), false, false),
    }
}

/// The kind (`instance`, `traffic`, `config`), text, environment and app (empty for a balancer's
/// config) of each step that puts drift back; bookkeeping steps (records) are not drift.
fn describe_drift(actions: &[Action]) -> Vec<(String, String, String, String)> {
    actions
        .iter()
        .filter_map(|a| {
            let kind = match a {
                Action::Start { .. }
                | Action::Probe { .. }
                | Action::Stop { .. }
                | Action::Prune { .. } => "instance",
                Action::Enable { .. }
                | Action::Shift { .. }
                | Action::Drain { .. }
                | Action::Weigh { .. } => "traffic",
                Action::ApplyConfig { .. } => "config",
                _ => return None,
            };
            let (env, app) = crate::reconcile::rollout_of(a).unwrap_or_default();
            Some((kind.to_owned(), a.to_string(), env, app))
        })
        .collect()
}

/// Reads the hosts again for the page, the API and the metrics.
async fn refresh(shared: &Shared, world: &Arc<World>, scope: &Scope) {
    match world.observe().await {
        Ok(observed) => {
            let apps = crate::status::report(
                &world.desired,
                &observed,
                &world.stale_configs(&observed),
                scope,
            );
            shared.metrics.set_apps(&apps);
            shared.view().environments = apps;
        }
        Err(e) => tracing::warn!(error = %crate::error::chain(&e), "status not read"),
    }
}

/// Ends a cycle whose hosts could not be reached before its pass: said, backed off.
fn hosts_failed(
    config: &Config,
    shared: &Shared,
    state: &mut Loop,
    started: Instant,
    commit: String,
    message: String,
) {
    state.sync_failing(Some(&commit), &message);
    backoff(config, state);
    finish(
        shared,
        state,
        started,
        Some(commit),
        "failed",
        Some(message),
        true,
        false,
    );
}

/// Waits longer after each failing cycle: 1 s, 2 s, 4 s … up to the interval.
fn backoff(config: &Config, state: &mut Loop) {
    state.failures += 1;
    let wait =
        Duration::from_secs(1u64 << state.failures.min(20).saturating_sub(1)).min(config.interval);
    state.due = Some(Instant::now() + wait);
    state.next_poll = state.next_poll.min(Instant::now() + wait);
}

#[allow(clippy::too_many_arguments)]
fn finish(
    shared: &Shared,
    state: &Loop,
    started: Instant,
    commit: Option<String>,
    outcome: &str,
    error: Option<String>,
    reached_git: bool,
    reached_hosts: bool,
) {
    let elapsed = started.elapsed();
    let now = crate::state::now();
    shared
        .metrics
        .cycles
        .get_or_create(&ResultLabel {
            result: outcome.replace(' ', "_"),
        })
        .inc();
    shared.metrics.cycle_duration.observe(elapsed.as_secs_f64());
    let backoff = if state.failures == 0 {
        0
    } else {
        state
            .due
            .map_or(0, |d| d.saturating_duration_since(Instant::now()).as_secs())
    };
    shared.metrics.backoff.set(backoff as f64);
    let mut v = shared.view();
    let c = &mut v.cycle;
    c.commit = commit;
    c.outcome = outcome.into();
    c.error = error;
    c.finished_at = now;
    c.duration_ms = elapsed.as_millis() as u64;
    c.next_poll_at = now
        + state
            .due
            .map_or(state.next_poll, |d| d.min(state.next_poll))
            .saturating_duration_since(Instant::now())
            .as_secs();
    c.backoff_secs = backoff;
    c.reached_git = reached_git;
    c.reached_hosts = reached_hosts;
}

/// `interval` ±10%, so that watchers started together do not fetch together.
fn jittered(interval: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos() as u64;
    // splitmix64 of the clock's nanoseconds: a fraction in [0, 1).
    let mut x = nanos.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    let fraction = (x >> 11) as f64 / (1u64 << 53) as f64;
    interval.mul_f64(0.9 + 0.2 * fraction)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..1000 {
            let d = jittered(Duration::from_secs(60));
            assert!(
                d >= Duration::from_secs(54) && d <= Duration::from_secs(66),
                "{d:?}"
            );
        }
    }
}
