//! What each CLI command does, on top of the library: read the desired state, act, print the result.
//! Output goes to the writers given, so tests can read it; errors are returned, never printed here.
//! The one exception is `reconcile`'s live view of its steps, drawn on stderr when that is a
//! terminal ([`crate::progress`]).

use crate::cli::{
    CompletionsArgs, GateArgs, HistoryArgs, LogsArgs, NginxSnippetArgs, Output, PlanArgs,
    PlanOutput, ReconcileArgs, SchemaArgs, ScopeArgs, SourceArgs, StatusArgs, ValidateArgs,
    WatchArgs,
};
use crate::cli::{ResumeArgs, SuspendArgs};
use crate::desired::{self, LoadError};
use crate::error::{Error, Exit};
use crate::history;
use crate::load;
use crate::logs::{self, LogsError, Relayed, Verdict};
use crate::plan::saved::SavedPlan;
use crate::plan::Scope;
use crate::reconcile::suspend::{utc, Decision};
use crate::reconcile::{self, World};
use crate::source::{GitCredentials, SourceSpec, Trust};
use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

fn plural(n: usize, word: &str) -> String {
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}

pub fn validate(
    args: &ValidateArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<Exit, Error> {
    let snapshot = load::open(&spec(&args.source))?;
    let commit = snapshot.commit.to_string();
    if !snapshot.uncommitted.is_empty() && args.output == Output::Text {
        writeln!(
            err,
            "warning: {} in {} ignored; validating commit {} (commit them to validate them):",
            plural(snapshot.uncommitted.len(), "uncommitted change"),
            snapshot.origin,
            snapshot.short_commit()
        )?;
        for line in &snapshot.uncommitted {
            writeln!(err, "  {line}")?;
        }
    }
    let (state, diagnostics) = match desired::load(&snapshot) {
        Ok(state) => (Some(state), Vec::new()),
        Err(LoadError::Invalid(d)) => (None, d),
        Err(e) => return Err(load::load_error(&snapshot, e)),
    };
    match args.output {
        Output::Json => {
            let report = serde_json::json!({
                "valid": diagnostics.is_empty(),
                "repo": snapshot.origin,
                "commit": commit,
                "uncommitted": snapshot.uncommitted,
                "errors": diagnostics,
            });
            serde_json::to_writer_pretty(&mut *out, &report).map_err(std::io::Error::from)?;
            writeln!(out)?;
        }
        Output::Text => match &state {
            Some(state) => writeln!(
                out,
                "valid: {} at commit {} ({}, {}, {}, {})",
                snapshot.origin,
                commit,
                plural(state.environments.len(), "environment"),
                plural(state.apps.len(), "app"),
                plural(state.hosts.len(), "host"),
                plural(state.balancers.len(), "balancer"),
            )?,
            None => return Err(load::load_error(&snapshot, LoadError::Invalid(diagnostics))),
        },
    }
    Ok(if diagnostics.is_empty() {
        Exit::Ok
    } else {
        Exit::BadInput
    })
}

/// `kube-free nginx-snippet`: the nginx.conf lines of each nginx balancer.
pub fn nginx_snippet(args: &NginxSnippetArgs, out: &mut dyn Write) -> Result<Exit, Error> {
    let loaded = load::load(&spec(&args.source), &Scope::default())?;
    let state = &loaded.state;
    let chosen: Vec<&desired::Balancer> = state
        .balancers
        .values()
        .filter(|b| b.kind == desired::BalancerKind::Nginx)
        .filter(|b| args.balancer.as_ref().is_none_or(|n| *n == b.name))
        .collect();
    if chosen.is_empty() {
        return Err(Error::UnknownName {
            what: "nginx balancer",
            name: args.balancer.clone().unwrap_or_else(|| "(any)".to_owned()),
        });
    }
    for (i, b) in chosen.into_iter().enumerate() {
        if i > 0 {
            writeln!(out)?;
        }
        write!(
            out,
            "{}",
            crate::drivers::nginx::snippet(b, state.state_dir(&b.host))
        )?;
    }
    Ok(Exit::Ok)
}

pub fn schema(args: &SchemaArgs, out: &mut dyn Write) -> Result<Exit, Error> {
    let schema = if args.environment {
        desired::environment_schema()
    } else {
        desired::root_schema()
    };
    serde_json::to_writer_pretty(&mut *out, &schema).map_err(std::io::Error::from)?;
    writeln!(out)?;
    Ok(Exit::Ok)
}

/// Loads the desired state and connects to the hosts `scope` reaches (every host in use when it
/// names no environment or app). Bad input is reported before any host is contacted.
async fn connect(args: &SourceArgs, scope: &Scope) -> Result<Arc<World>, Error> {
    load::connect_scope(load::load(&spec(args), scope)?, scope).await
}

/// Connects the hosts `scope` reaches ([`load::connect_scope`]), then refuses a rewound commit
/// ([`reconcile::rewind::check`]); with `timings`, records in the world's timings the reading of
/// the desired state (since `started`), the connecting and the check.
async fn connect_timed(
    loaded: load::Loaded,
    scope: &Scope,
    started: Instant,
    timings: bool,
    allow_rewind: bool,
) -> Result<Arc<World>, Error> {
    let history = loaded.history.clone();
    let read = started.elapsed();
    let connecting = Instant::now();
    let world = load::connect_scope(loaded, scope).await?;
    if timings {
        world.timings.enable();
    }
    world.timings.phase("read the desired state", read);
    world.timings.since(
        format!("connect ({})", plural(world.reached(), "host")),
        connecting,
    );
    let check = reconcile::rewind::check(&world, &history, allow_rewind);
    world.timings.time("read the commit applied", check).await?;
    Ok(world)
}

/// Loads the desired state and connects to every balancer host in use: where suspensions are
/// kept, each a copy, so that every run sees them.
async fn connect_balancer_hosts(args: &SourceArgs, scope: &Scope) -> Result<Arc<World>, Error> {
    let loaded = load::load(&spec(args), scope)?;
    let hosts = loaded
        .state
        .balancer_hosts()
        .into_iter()
        .map(str::to_owned)
        .collect();
    load::connect_to(loaded, hosts).await
}

fn spec(args: &SourceArgs) -> SourceSpec {
    SourceSpec {
        repo: args.repo.clone(),
        rev: args.rev.clone(),
        cache_dir: args.cache_dir.clone(),
        credentials: GitCredentials {
            ssh_key: args.git_ssh_key.clone(),
            known_hosts: args.git_known_hosts.clone(),
            token_file: args.git_token_file.clone(),
        },
        trust: Trust {
            ssh_signers: args.verify_ssh_signers.clone(),
            gpg_keyring: args.verify_gpg_keyring.clone(),
        },
    }
}

fn scope(args: &ScopeArgs) -> Scope {
    Scope {
        env: args.env.clone(),
        app: args.app.clone(),
        ..Default::default()
    }
}

/// `kube-free plan`: what a reconcile would do now; with `--out`, saved for `reconcile --plan`.
pub async fn plan(
    args: &PlanArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<Exit, Error> {
    if let Some(path) = &args.out {
        SavedPlan::check_target(path)?;
    }
    let scope = Scope {
        prune: args.prune.mode(),
        ..scope(&args.scope)
    };
    let started = Instant::now();
    let loaded = load::load(&spec(&args.source), &scope)?;
    // What reconcile would refuse, plan refuses too (it reads the record, writes nothing).
    let world = connect_timed(loaded, &scope, started, args.timings, args.allow_rewind).await?;
    let (observed, plan) = reconcile::preview_observed(&world, &scope).await?;
    match args.output {
        PlanOutput::Text => write!(
            out,
            "desired state at commit {}\n{}",
            world.revision,
            plan.render_text()
        )?,
        PlanOutput::Json => {
            let mut json = plan.render_json();
            json["commit"] = world.revision.clone().into();
            serde_json::to_writer_pretty(&mut *out, &json).map_err(std::io::Error::from)?;
            writeln!(out)?;
        }
        PlanOutput::Dot => write!(out, "{}", plan.render_dot())?,
    }
    if let Some(path) = &args.out {
        let saved = SavedPlan::new(&world.revision, &scope, &world.desired, &observed, &plan);
        saved.write(path)?;
        writeln!(
            err,
            "plan saved to {} ({} at commit {}); `kube-free reconcile --once --plan {}` executes exactly it, once, while nothing it was made from changes",
            path.display(),
            plural(saved.steps(), "step"),
            world.revision,
            path.display()
        )?;
    }
    if args.timings {
        write!(err, "{}", world.timings.render(started.elapsed()))?;
    }
    Ok(if !plan.is_empty() || !plan.orphans.is_empty() {
        Exit::Pending
    } else if plan.stuck.is_empty() {
        Exit::Ok
    } else {
        Exit::Failed
    })
}

pub async fn reconcile(
    args: &ReconcileArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<Exit, Error> {
    let started = Instant::now();
    // A saved plan is read and checked before anything else: its scope, then its commit.
    let saved = args.plan.as_deref().map(SavedPlan::read).transpose()?;
    let scope = match &saved {
        Some(saved) => saved.scope(args.scope.env.as_deref(), args.scope.app.as_deref())?,
        None => Scope {
            prune: args.prune.mode(),
            ..scope(&args.scope)
        },
    };
    let command = reconcile::audit::command(
        if saved.is_some() {
            "reconcile --once --plan"
        } else {
            "reconcile --once"
        },
        &scope,
    );
    let mut loaded = load::load(&spec(&args.source), &scope)?;
    loaded.parallel = args.parallel as usize;
    if let Some(saved) = &saved {
        saved.check_commit(&loaded.commit)?;
    }
    let history = loaded.history.clone();
    // A rewound commit is refused before the lease is even taken; checked again under it.
    let world = connect_timed(loaded, &scope, started, args.timings, args.allow_rewind).await?;
    // Suspended environments are left out; when nothing is left, say what a pass would do.
    let suspensions = reconcile::suspend::check(&world, &scope);
    let scope = match world.timings.time("read suspensions", suspensions).await? {
        Decision::Suspended(by) => {
            for s in &by {
                writeln!(
                    out,
                    "{} suspended until {} by {} ({}): nothing changed",
                    s.what(),
                    utc(s.until),
                    s.by,
                    s.reason
                )?;
            }
            let plan = reconcile::preview(&world, &scope).await?;
            write!(
                out,
                "what reconcile would do at commit {}:\n{}",
                world.revision,
                plan.render_text()
            )?;
            return Ok(Exit::Ok);
        }
        Decision::Run { scope, skipped } => {
            for s in &skipped {
                writeln!(
                    out,
                    "skipped {}: suspended until {} by {} ({})",
                    s.what(),
                    utc(s.until),
                    s.by,
                    s.reason
                )?;
            }
            scope
        }
    };
    let notifier = notifier(&world);
    let options = reconcile::Options {
        parallel: args.parallel as usize,
        max_wait: args.max_wait,
    };
    // Drawn until the result is known; what it showed stays on the terminal.
    let shown = live_view(args.quiet).then(|| {
        let shown = crate::progress::Terminal::start(&world.revision);
        world.set_progress(shown.0.clone());
        shown
    });
    // Signals are caught once the lease is held: until then one ends the process, as a wait for
    // the lease has nothing to finish.
    let asked = Instant::now();
    let pass = async {
        world.timings.since("take the lease", asked);
        let signals = tokio::spawn(interrupt_on_signal(world.clone()));
        let start = reconcile::audit::start(&world);
        let result = match &saved {
            // The pass checks the plan under the lease, then records the commit (the guard).
            Some(saved) => {
                reconcile::once_saved(
                    world.clone(),
                    &scope,
                    options,
                    saved,
                    &history,
                    args.allow_rewind,
                )
                .await
            }
            None => {
                if let Err(e) = reconcile::rewind::guard(&world, &history, args.allow_rewind).await
                {
                    signals.abort();
                    return Err(e);
                }
                reconcile::once(world.clone(), &scope, options).await
            }
        };
        signals.abort();
        // Under the lease, at the end of the pass, whatever its end (a failure to append is a
        // warning).
        if let Some(line) = reconcile::audit::pass_line(&world, &start, &command, &scope, &result) {
            let append = reconcile::audit::append(&world, &line);
            world.timings.time("append the audit line", append).await;
        }
        result
    };
    let report = reconcile::leased(&world, args.lock_wait, args.lease_ttl, pass).await;
    drop(shown);
    // What happened is sent before the process ends (a receiver that does not answer is given up).
    notifier.flush(std::time::Duration::from_secs(5)).await;
    if args.timings {
        write!(err, "{}", world.timings.render(started.elapsed()))?;
    }
    let report = report?;
    if let Some(path) = &args.plan {
        write!(out, "the saved plan {}: ", path.display())?;
    }
    if report.steps == 0 {
        writeln!(out, "in sync at commit {}: nothing to do", world.revision)?;
    } else {
        writeln!(
            out,
            "converged to commit {} in {}",
            world.revision,
            plural(report.steps, "step")
        )?;
    }
    Ok(Exit::Ok)
}

/// Whether `reconcile` draws its steps live: stderr is a terminal that can take it (`TERM` set,
/// not `dumb`), and the result alone was not asked for.
fn live_view(quiet: bool) -> bool {
    use std::io::IsTerminal;
    !quiet
        && std::io::stderr().is_terminal()
        && std::env::var("TERM").is_ok_and(|t| !t.is_empty() && t != "dumb")
}

/// `kube-free completions SHELL`: the shell's completion script for the whole CLI.
pub fn completions(args: &CompletionsArgs, out: &mut dyn Write) -> Result<Exit, Error> {
    use clap::CommandFactory;
    let shell = match args.shell {
        crate::cli::Shell::Bash => clap_complete::Shell::Bash,
        crate::cli::Shell::Zsh => clap_complete::Shell::Zsh,
        crate::cli::Shell::Fish => clap_complete::Shell::Fish,
    };
    // Generated whole first: clap_complete panics on a failed write (`… | head`), `out` reports it.
    let mut script = Vec::new();
    clap_complete::generate(
        shell,
        &mut crate::cli::Cli::command(),
        "kube-free",
        &mut script,
    );
    out.write_all(&script)?;
    Ok(Exit::Ok)
}

pub async fn watch(args: &WatchArgs) -> Result<Exit, Error> {
    let webhook_secret = match &args.webhook_secret_file {
        Some(path) => Some(crate::secret::read(path, "webhook secret file")?),
        None => None,
    };
    let config = crate::watch::Config {
        source: spec(&args.source),
        scope: scope(&args.scope),
        interval: args.interval,
        resync: args.resync,
        listen: args.listen,
        webhook_secret,
        self_heal: !args.no_self_heal,
        parallel: args.parallel as usize,
        lease_ttl: args.lease_ttl,
        max_wait: args.max_wait,
        allow_rewind: args.allow_rewind,
    };
    crate::watch::run(config, signalled()).await?;
    Ok(Exit::Ok)
}

/// Resolves on the first SIGTERM or SIGINT after the call: the handlers are in place when it
/// returns (and from then on these signals no longer end the process by themselves).
fn signalled() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let signals = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = signals else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
}

/// On SIGTERM or SIGINT, asks the run to stop after its current steps.
async fn interrupt_on_signal(world: Arc<World>) {
    signalled().await;
    tracing::warn!("signal received: finishing the current steps, then stopping");
    world.interrupt();
}

/// A manual gate of a rollout.
#[derive(Clone, Copy, Debug)]
pub enum Gate {
    Promote,
    Abort,
    Retry,
}

pub async fn gate(gate: Gate, args: &GateArgs, out: &mut dyn Write) -> Result<Exit, Error> {
    let scope = Scope {
        env: Some(args.env.clone()),
        app: Some(args.app.clone()),
        ..Default::default()
    };
    let world = connect(&args.source, &scope).await?;
    if world.desired.deployment(&args.env, &args.app).is_none() {
        return Err(Error::UnknownName {
            what: "app in that environment",
            name: args.app.clone(),
        });
    }
    let notifier = notifier(&world);
    let message = match gate {
        Gate::Promote => reconcile::promote(&world, &args.env, &args.app, args.all).await?,
        Gate::Abort => {
            reconcile::abort(&world, &args.env, &args.app, args.parallel as usize).await?
        }
        Gate::Retry => reconcile::retry(&world, &args.env, &args.app).await?,
    };
    notifier.flush(std::time::Duration::from_secs(5)).await;
    writeln!(out, "{message}")?;
    Ok(Exit::Ok)
}

/// The sender of the desired state's notifications, set on `world`. One that cannot be set up
/// (a header file others can read, say) is said and left out: notifications never stop a rollout
/// or an abort.
fn notifier(world: &World) -> crate::notify::Notifier {
    let notifier = crate::notify::Notifier::new(&world.desired.notifications).unwrap_or_else(|e| {
        tracing::error!(
            "notifications are off for this run: {}",
            crate::error::chain(&e)
        );
        crate::notify::Notifier::disabled()
    });
    world.set_notifier(notifier.clone());
    notifier
}

pub async fn status(args: &StatusArgs, out: &mut dyn Write) -> Result<Exit, Error> {
    let filter = scope(&args.scope);
    let world = connect(&args.source, &filter).await?;
    let observed = world.observe().await?;
    // Those that apply to the environments shown; a file that cannot be read is said, not fatal.
    let suspended = reconcile::suspensions(&world).await.map(|list| {
        list.into_iter()
            .filter(|s| filter.env.is_none() || s.env.is_none() || s.env == filter.env)
            .collect::<Vec<_>>()
    });
    let report = crate::status::report(
        &world.desired,
        &observed,
        &world.stale_configs(&observed),
        &scope(&args.scope),
    );
    let orphans = crate::plan::orphans(&world.desired, &observed, &filter);
    match args.output {
        Output::Json => {
            let mut json = serde_json::json!({
                "commit": world.revision,
                "environments": report,
                "orphans": orphans,
            });
            match &suspended {
                Ok(list) => json["suspended"] = serde_json::json!(list),
                Err(e) => json["suspended_error"] = crate::error::chain(e).into(),
            }
            serde_json::to_writer_pretty(&mut *out, &json).map_err(std::io::Error::from)?;
            writeln!(out)?;
        }
        Output::Text => {
            writeln!(out, "desired state at commit {}", world.revision)?;
            match &suspended {
                Ok(list) => {
                    for s in list {
                        writeln!(
                            out,
                            "suspended: {} until {} by {} ({})",
                            s.what(),
                            utc(s.until),
                            s.by,
                            s.reason
                        )?;
                    }
                }
                Err(e) => writeln!(out, "suspended: unknown: {}", crate::error::chain(e))?,
            }
            for o in &orphans {
                writeln!(
                    out,
                    "orphaned: {o} (`reconcile --once --prune`, or `prune: true`, stops it)"
                )?;
            }
            for app in &report {
                writeln!(
                    out,
                    "\n{}/{}: desired {} ({}), {}",
                    app["env"].as_str().unwrap_or_default(),
                    app["app"].as_str().unwrap_or_default(),
                    app["desired_version"].as_str().unwrap_or_default(),
                    app["strategy"].as_str().unwrap_or_default(),
                    if app["quarantined"] == true {
                        "quarantined (`kube-free retry` or a change lifts it; the traffic line says what serves)"
                    } else if app["in_sync"] == true {
                        "in sync"
                    } else {
                        "changes pending"
                    }
                )?;
                writeln!(
                    out,
                    "  traffic: {}",
                    app["traffic"].as_str().unwrap_or_default()
                )?;
                if let Some(good) = app["last_good"].as_str() {
                    writeln!(
                        out,
                        "  falls back to: {good} (the last good version before {})",
                        app["desired_version"].as_str().unwrap_or_default()
                    )?;
                }
                for problem in app["problems"].as_array().into_iter().flatten() {
                    writeln!(out, "  problem: {}", problem.as_str().unwrap_or_default())?;
                }
                if let Some(r) = app["rollout"].as_object() {
                    let text = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
                    write!(
                        out,
                        "  rollout: {} of {} at commit {:.12}, {}, step {}",
                        text("strategy"),
                        text("version"),
                        text("revision"),
                        text("phase"),
                        r["step"]
                    )?;
                    if let Some(outcome) = r["outcome"].as_str() {
                        write!(out, ": {outcome}")?;
                    }
                    writeln!(out)?;
                    if let Some(bake) = r["bake"].as_object() {
                        writeln!(
                            out,
                            "  bake of [{}]: {}",
                            bake["servers"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .filter_map(|s| s.as_str())
                                .collect::<Vec<_>>()
                                .join(", "),
                            if bake["passed"] == true {
                                "passed"
                            } else {
                                "not passed"
                            }
                        )?;
                    }
                    if let Some(last) = r["analysis"].as_array().and_then(|a| a.last()) {
                        writeln!(
                            out,
                            "  last analysis: step {} at {}%: {} requests, {} errors ({:.2}%), {}",
                            last["step"],
                            last["weight"],
                            last["requests"],
                            last["errors"],
                            last["error_rate"].as_f64().unwrap_or(0.0) * 100.0,
                            last["verdict"].as_str().unwrap_or_default()
                        )?;
                    }
                }
                writeln!(
                    out,
                    "  {:<16} {:<8} {:<16} {:<8} {:<6} {:>6}  BALANCER",
                    "HOST", "SLOT", "VERSION", "PROCESS", "READY", "WEIGHT"
                )?;
                for s in app["slots"].as_array().into_iter().flatten() {
                    let text = |k: &str| {
                        s[k].as_str()
                            .map(str::to_owned)
                            .unwrap_or_else(|| "-".into())
                    };
                    writeln!(
                        out,
                        "  {:<16} {:<8} {:<16} {:<8} {:<6} {:>6}  {}",
                        text("host"),
                        text("slot"),
                        text("version"),
                        if s["alive"] == true {
                            "running"
                        } else if s["version"].is_null() {
                            "-"
                        } else {
                            "dead"
                        },
                        match s["ready"].as_bool() {
                            Some(true) => "yes",
                            Some(false) => "no",
                            None => "-",
                        },
                        s["weight"].as_u64().map_or("-".into(), |w| w.to_string()),
                        text("balancer_status"),
                    )?;
                }
            }
        }
    }
    Ok(Exit::Ok)
}

/// `kube-free logs`: the logs of an app's instances in an environment, each after a header, or
/// followed at once until a signal. Bad input is reported before any host is contacted, and only
/// the hosts read from are connected to.
pub async fn logs(
    args: &LogsArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<Exit, Error> {
    let scope = Scope {
        env: Some(args.env.clone()),
        app: Some(args.app.clone()),
        ..Default::default()
    };
    let loaded = load::load(&spec(&args.source), &scope)?;
    let wanted = logs::wanted(
        &loaded.state,
        &args.env,
        &args.app,
        args.host.as_deref(),
        args.slot.as_deref(),
    )?;
    let hosts = wanted.hosts();
    let world = load::connect_to(loaded, hosts.clone()).await?;
    let sources = logs::sources(&world, &wanted, args.lines, args.follow).await?;
    if sources.is_empty() {
        writeln!(
            err,
            "no instance of {}/{} on {}: no log to read (--slot reads the log a stopped process left; a container's goes with it)",
            args.env,
            args.app,
            hosts.into_iter().collect::<Vec<_>>().join(", ")
        )?;
        return Ok(Exit::Ok);
    }
    let mut verdicts = Vec::new();
    if args.follow {
        for s in &sources {
            writeln!(err, "{}", s.header())?;
        }
        let all: Vec<&logs::Source> = sources.iter().collect();
        let stop = signalled();
        match logs::relay(&world, &all, all.len() > 1, None, stop, out, err).await? {
            Relayed::Stopped => return Ok(Exit::Ok),
            Relayed::Ended(all) => verdicts = all,
        }
    } else {
        for s in &sources {
            writeln!(out, "{}", s.header())?;
            let never = std::future::pending();
            match logs::relay(&world, &[s], false, Some(logs::IDLE), never, out, err).await? {
                Relayed::Ended(one) => verdicts.extend(one),
                Relayed::Stopped => unreachable!("nothing stops a read"),
            }
        }
    }
    let failed: Vec<String> = sources
        .iter()
        .zip(&verdicts)
        .filter(|(_, v)| matches!(v, Verdict::Failed(_)))
        .map(|(s, _)| s.name())
        .collect();
    if failed.is_empty() {
        Ok(Exit::Ok)
    } else {
        Err(LogsError::Unread {
            failed,
            total: sources.len(),
        }
        .into())
    }
}

/// `kube-free history`: past rollouts from the audit logs of the balancer hosts of the environments
/// asked for, newest first. Bad input is reported before any host is contacted, and only those
/// hosts are connected to.
pub async fn history(
    args: &HistoryArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<Exit, Error> {
    let scope = Scope {
        env: args.env.clone(),
        app: args.app.clone(),
        ..Default::default()
    };
    let loaded = load::load(&spec(&args.source), &scope)?;
    let hosts = history::hosts(&loaded.state, args.env.as_deref());
    let world = load::connect_to(loaded, hosts.clone()).await?;
    let mut lines = Vec::new();
    let mut unread = Vec::new();
    for read in reconcile::audit::read(&world, &hosts).await {
        match read.bytes {
            Ok(None) => {}
            Ok(Some(bytes)) => {
                let (read_lines, skipped) = history::parse(&read.host, &read.file, &bytes);
                for s in skipped {
                    writeln!(err, "warning: {s}")?;
                }
                lines.extend(read_lines);
            }
            Err(e) => {
                writeln!(
                    err,
                    "warning: cannot read the audit log {} on {}: {}",
                    read.file,
                    read.host,
                    crate::error::chain(&e)
                )?;
                unread.push(read.host);
            }
        }
    }
    let rows = history::rows(lines, args.app.as_deref(), args.env.as_deref(), args.limit);
    match args.output {
        Output::Json => {
            serde_json::to_writer_pretty(&mut *out, &rows).map_err(std::io::Error::from)?;
            writeln!(out)?;
        }
        Output::Text if rows.is_empty() => writeln!(
            out,
            "no rollout in the audit log of {}",
            hosts.iter().cloned().collect::<Vec<_>>().join(", ")
        )?,
        Output::Text => history::render_text(&rows, out)?,
    }
    if unread.is_empty() {
        Ok(Exit::Ok)
    } else {
        Err(history::HistoryError::Unread {
            failed: unread,
            total: hosts.len(),
        }
        .into())
    }
}

/// `kube-free suspend`: the environment (or every one) is observe-only until it ends or is resumed.
pub async fn suspend(args: &SuspendArgs, out: &mut dyn Write) -> Result<Exit, Error> {
    let scope = Scope {
        env: args.env.clone(),
        ..Scope::default()
    };
    let world = connect_balancer_hosts(&args.source, &scope).await?;
    let s = reconcile::suspend(&world, args.env.as_deref(), args.for_, &args.reason).await?;
    writeln!(
        out,
        "suspended {} until {} ({}): {}",
        s.what(),
        utc(s.until),
        crate::desired::duration::format(args.for_),
        s.reason
    )?;
    Ok(Exit::Ok)
}

/// `kube-free resume`: ends the suspension of the environment (or every suspension).
pub async fn resume(args: &ResumeArgs, out: &mut dyn Write) -> Result<Exit, Error> {
    let scope = Scope {
        env: args.env.clone(),
        ..Scope::default()
    };
    let world = connect_balancer_hosts(&args.source, &scope).await?;
    let resumed = reconcile::resume(&world, args.env.as_deref()).await?;
    for s in &resumed.removed {
        writeln!(out, "resumed {} (was suspended: {s})", s.what())?;
    }
    if resumed.removed.is_empty() {
        match &args.env {
            Some(env) => writeln!(out, "{env} was not suspended")?,
            None => writeln!(out, "nothing was suspended")?,
        }
    }
    if let (Some(env), Some(s)) = (&args.env, &resumed.still) {
        writeln!(
            out,
            "{env} is still suspended: {s}; `kube-free resume` without --env ends that"
        )?;
    }
    Ok(Exit::Ok)
}
