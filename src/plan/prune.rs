//! Orphans and their pruning: instances kube-free started (an instance file, a container with its
//! labels) that the desired state no longer has — an app taken out of an environment, a host
//! taken out of one, a slot renamed, or an environment taken out whose rollout records are on
//! the balancer hosts of this desired state. An instance of an environment that no balancer
//! host of this desired state knows is left alone: it is another desired state's that shares
//! the host (the same engine, the same state directory). Without a request to prune they are listed (`plan`,
//! `status`); with one (`prune: true` in Git, globally or per app, or `--prune`), each is stopped
//! after the balancer configs are applied, which takes its server out first. A pass that would
//! prune more than half of what kube-free runs in its scope, or all of it, refuses unless
//! `--prune-all`: a broken commit or an empty checkout must not wipe a fleet. Pure.

use super::{Action, Plan, Scope, SlotRef};
use crate::desired::DesiredState;
use crate::observed::ObservedState;
use petgraph::graph::NodeIndex;
use serde::{Deserialize, Serialize};

/// What a run was asked to do with orphans beyond what the desired state says (`prune:`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Prune {
    /// Only what `prune: true` in the desired state asks for.
    #[default]
    Off,
    /// `--prune`: every orphan in scope, within the guard.
    On,
    /// `--prune-all`: every orphan in scope, however many.
    All,
}

/// An instance kube-free started that the desired state no longer has.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Orphan {
    pub at: SlotRef,
    pub version: String,
    pub alive: bool,
    /// Why the desired state does not have it, in words.
    pub why: String,
    /// Whether this run prunes it (asked to, in Git or on the command line).
    pub pruned: bool,
}

impl std::fmt::Display for Orphan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = &self.at;
        write!(
            f,
            "{}/{} {} in slot {} on {} ({}): {}",
            at.env,
            at.app,
            self.version,
            at.slot,
            at.host,
            if self.alive { "running" } else { "dead" },
            self.why
        )
    }
}

/// Every orphan on the hosts `observed` covers, in `scope` (by its environment and app names).
pub fn orphans(desired: &DesiredState, observed: &ObservedState, scope: &Scope) -> Vec<Orphan> {
    let mut found = Vec::new();
    for (host, state) in &observed.hosts {
        for ((env, app, slot), i) in &state.instances {
            if !scope.includes(env, app) {
                continue;
            }
            let Some(why) = why_orphaned(desired, observed, env, app, host, slot) else {
                continue;
            };
            let pruned = scope.prune != Prune::Off
                || desired.prune
                || desired.apps.get(app).is_some_and(|a| a.prune);
            found.push(Orphan {
                at: SlotRef::new(env, app, host, slot),
                version: i.record.version.clone(),
                alive: i.alive,
                why,
                pruned,
            });
        }
    }
    found
}

/// Why the desired state does not have the instance in `slot` of `app` in `env` on `host`;
/// `None` when it has it.
fn why_orphaned(
    desired: &DesiredState,
    observed: &ObservedState,
    env: &str,
    app: &str,
    host: &str,
    slot: &str,
) -> Option<String> {
    let Some(environment) = desired.environments.get(env) else {
        // Rolled out through this desired state's balancers: taken out of it. Else another's.
        return observed.rolled_out_envs.contains(env).then(|| {
            format!("environment {env} is not in the desired state (its rollout records are)")
        });
    };
    let Some(d) = environment.apps.get(app) else {
        // The environment is this desired state's: an app it does not deploy was deployed by it.
        return Some(if desired.apps.contains_key(app) {
            format!("environment {env} does not deploy {app}")
        } else {
            format!("app {app} is not in the desired state")
        });
    };
    if !environment.hosts.iter().any(|h| h == host) {
        return Some(format!("{host} is not one of {env}'s hosts"));
    }
    if !d.slots.iter().any(|s| s.name == slot) {
        return Some(format!("{app} has no slot {slot}"));
    }
    None
}

/// Adds a prune step for each orphan this run prunes, after `after` (the balancer configs, which
/// take their servers out), unless the guard refuses: then none, and `plan.refused` says why.
pub(super) fn add(
    plan: &mut Plan,
    desired: &DesiredState,
    observed: &ObservedState,
    scope: &Scope,
    after: &[NodeIndex],
) {
    let orphans = orphans(desired, observed, scope);
    let pruned: Vec<&Orphan> = orphans.iter().filter(|o| o.pruned).collect();
    let running = pruned.iter().filter(|o| o.alive).count();
    let total = observed
        .hosts
        .values()
        .flat_map(|h| &h.instances)
        .filter(|((env, app, _), i)| i.alive && scope.includes(env, app))
        .count();
    if running > 0 && (running == total || running * 2 > total) && scope.prune != Prune::All {
        plan.refused = Some(format!(
            "refusing to prune {running} of the {total} instances kube-free runs{}: a commit that takes out {} is more likely a mistake (a broken commit, an empty checkout) than a wish; `--prune-all` prunes them",
            match (&scope.env, &scope.app) {
                (None, None) => String::new(),
                (Some(e), None) => format!(" in {e}"),
                (None, Some(a)) => format!(" of {a}"),
                (Some(e), Some(a)) => format!(" of {e}/{a}"),
            },
            if running == total { "all of them" } else { "more than half" }
        ));
    }
    for o in &orphans {
        if o.pruned && plan.refused.is_none() {
            plan.why.push(format!("prune {o}"));
            let prune = Action::Prune {
                at: o.at.clone(),
                version: o.version.clone(),
            };
            plan.add(prune, after);
        } else {
            plan.orphans.push(o.to_string());
        }
    }
}
