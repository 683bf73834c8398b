//! What each CLI command does, on top of the library: read the desired state, act, print the result.
//! Output goes to the writers given, so tests can read it; errors are returned, never printed here.

use crate::cli::{
    GateArgs, Output, PlanArgs, PlanOutput, ReconcileArgs, SchemaArgs, ScopeArgs, SourceArgs,
    StatusArgs, ValidateArgs,
};
use crate::desired::{self, DesiredState, Files, LoadError};
use crate::error::{Error, Exit};
use crate::names::{backend_name, server_name};
use crate::plan::{self, Scope};
use crate::reconcile::{self, World};
use crate::source::{self, Snapshot, SourceSpec};
use std::io::Write;
use std::sync::Arc;

/// Opens the source named on the command line at the commit it names.
fn open(args: &SourceArgs) -> Result<Snapshot, Error> {
    let snapshot = source::open(&SourceSpec {
        repo: args.repo.clone(),
        rev: args.rev.clone(),
        cache_dir: args.cache_dir.clone(),
        credentials: Default::default(),
    })?;
    tracing::info!(repo = %snapshot.origin, commit = %snapshot.commit, "reading desired state");
    Ok(snapshot)
}

/// The error for a desired state that could not be loaded from `snapshot`.
fn load_error(snapshot: &Snapshot, e: LoadError) -> Error {
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

fn plural(n: usize, word: &str) -> String {
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}

pub fn validate(
    args: &ValidateArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<Exit, Error> {
    let snapshot = open(&args.source)?;
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
        Err(e) => return Err(load_error(&snapshot, e)),
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
            None => return Err(load_error(&snapshot, LoadError::Invalid(diagnostics))),
        },
    }
    Ok(if diagnostics.is_empty() {
        Exit::Ok
    } else {
        Exit::BadInput
    })
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

/// Loads the desired state and connects to every host it uses. Bad input is reported before any
/// host is contacted.
async fn connect(args: &SourceArgs, scope_filter: &Scope) -> Result<Arc<World>, Error> {
    let snapshot = open(args)?;
    let state = desired::load(&snapshot).map_err(|e| load_error(&snapshot, e))?;
    for (what, name, known) in [
        (
            "environment",
            scope_filter.env.as_deref(),
            state
                .environments
                .contains_key(scope_filter.env.as_deref().unwrap_or_default()),
        ),
        (
            "app",
            scope_filter.app.as_deref(),
            state
                .apps
                .contains_key(scope_filter.app.as_deref().unwrap_or_default()),
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
    Ok(Arc::new(
        World::connect(state, snapshot.commit.to_string(), known_hosts).await?,
    ))
}

fn scope(args: &ScopeArgs) -> Scope {
    Scope {
        env: args.env.clone(),
        app: args.app.clone(),
    }
}

pub async fn plan(args: &PlanArgs, out: &mut dyn Write) -> Result<Exit, Error> {
    let scope = scope(&args.scope);
    let world = connect(&args.source, &scope).await?;
    let observed = world.observe().await?;
    let plan = plan::build(
        &world.desired,
        &observed,
        &world.stale_configs(&observed),
        &scope,
    );
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
    Ok(if !plan.is_empty() {
        Exit::Pending
    } else if plan.stuck.is_empty() {
        Exit::Ok
    } else {
        Exit::Failed
    })
}

pub async fn reconcile(args: &ReconcileArgs, out: &mut dyn Write) -> Result<Exit, Error> {
    let scope = scope(&args.scope);
    let world = connect(&args.source, &scope).await?;
    let options = reconcile::Options {
        parallel: args.parallel as usize,
        max_wait: args.max_wait,
    };
    // Signals are caught once the lease is held: until then one ends the process, as a wait for
    // the lease has nothing to finish.
    let pass = async {
        let signals = tokio::spawn(interrupt_on_signal(world.clone()));
        let result = reconcile::once(world.clone(), &scope, options).await;
        signals.abort();
        result
    };
    let report = reconcile::leased(&world, args.lock_wait, args.lease_ttl, pass).await?;
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

/// On SIGTERM or SIGINT, asks the run to stop after its current steps.
async fn interrupt_on_signal(world: Arc<World>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
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
    };
    let world = connect(&args.source, &scope).await?;
    if world.desired.deployment(&args.env, &args.app).is_none() {
        return Err(Error::UnknownName {
            what: "app in that environment",
            name: args.app.clone(),
        });
    }
    let message = match gate {
        Gate::Promote => reconcile::promote(&world, &args.env, &args.app, args.all).await?,
        Gate::Abort => {
            reconcile::abort(&world, &args.env, &args.app, args.parallel as usize).await?
        }
        Gate::Retry => reconcile::retry(&world, &args.env, &args.app).await?,
    };
    writeln!(out, "{message}")?;
    Ok(Exit::Ok)
}

pub async fn status(args: &StatusArgs, out: &mut dyn Write) -> Result<Exit, Error> {
    let filter = scope(&args.scope);
    let world = connect(&args.source, &filter).await?;
    let observed = world.observe().await?;
    let report = status_report(
        &world.desired,
        &observed,
        &world.stale_configs(&observed),
        &scope(&args.scope),
    );
    match args.output {
        Output::Json => {
            let json = serde_json::json!({ "commit": world.revision, "environments": report });
            serde_json::to_writer_pretty(&mut *out, &json).map_err(std::io::Error::from)?;
            writeln!(out)?;
        }
        Output::Text => {
            writeln!(out, "desired state at commit {}", world.revision)?;
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

/// Per environment and app: desired version, in sync or not, and every slot on every host.
fn status_report(
    desired: &DesiredState,
    observed: &crate::observed::ObservedState,
    stale: &std::collections::BTreeSet<String>,
    scope: &Scope,
) -> Vec<serde_json::Value> {
    let mut apps = Vec::new();
    for (env, app, d) in desired.deployments() {
        if !scope.includes(&env.name, app) {
            continue;
        }
        let only = Scope {
            env: Some(env.name.clone()),
            app: Some(app.to_owned()),
        };
        let plan = plan::build(desired, observed, stale, &only);
        let in_sync = plan.is_empty() && plan.stuck.is_empty();
        let traffic = plan::Traffic::read(desired, observed, &env.name, app);
        let mut slots = Vec::new();
        for host in &env.hosts {
            for slot in &d.slots {
                let inst = observed.instance(host, &env.name, app, &slot.name);
                let server = observed.server(
                    &env.balancer,
                    &backend_name(&env.name, app),
                    &server_name(host, &slot.name),
                );
                slots.push(serde_json::json!({
                    "host": host,
                    "slot": slot.name,
                    "port": slot.port,
                    "version": inst.map(|i| i.record.version.clone()),
                    "revision": inst.map(|i| i.record.revision.clone()),
                    "pid": inst.map(|i| i.record.pid),
                    "alive": inst.map(|i| i.alive),
                    "ready": inst.and_then(|i| i.ready),
                    "weight": server.map(|s| s.weight),
                    "admin": server.map(|s| s.admin),
                    "balancer_status": server.map(|s| s.label.clone()),
                }));
            }
        }
        // The record of an earlier version is history, not the state of this app.
        let record = observed
            .rollout(&env.name, app)
            .filter(|r| r.version == d.version);
        apps.push(serde_json::json!({
            "env": env.name,
            "app": app,
            "desired_version": d.version,
            "strategy": d.strategy.name(),
            "in_sync": in_sync,
            "quarantined": plan::quarantine(desired, observed, &env.name, app).is_some(),
            "last_good": plan::last_good(observed, &env.name, app, &d.version),
            "traffic": traffic.to_string(),
            "problems": plan.stuck,
            "rollout": record,
            "slots": slots,
        }));
    }
    apps
}
