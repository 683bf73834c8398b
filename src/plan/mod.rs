//! Planning: from the desired state and an observed snapshot to a dependency graph of steps (petgraph),
//! deterministic for the same inputs, and its renderings (text, JSON, Graphviz dot). Pure: no I/O, no
//! clock, no SSH or HAProxy syntax — balancer servers are named by (backend, server) only.

use crate::desired::{CanaryStep, Deployment, DesiredState, Environment, Pause, Strategy};
use crate::drivers::haproxy::{backend_name, server_name, Admin, FULL_WEIGHT};
use crate::observed::ObservedState;
use crate::state::{Phase, RolloutRecord};
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::Direction;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

/// One instance slot of one app of one environment on one host.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct SlotRef {
    pub env: String,
    pub app: String,
    pub host: String,
    pub slot: String,
}

impl SlotRef {
    pub fn backend(&self) -> String {
        backend_name(&self.env, &self.app)
    }
    pub fn server(&self) -> String {
        server_name(&self.host, &self.slot)
    }
}

/// What a step does. Each is idempotent: the executor's effects check whether it is done first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    /// Write the balancer's config file (frontends, backends, servers) and reload hitlessly.
    ApplyConfig { balancer: String },
    /// Start `version` in the slot (detached, recorded in its instance file).
    Start { at: SlotRef, version: String },
    /// Probe the instance until it passes `healthy_after` times in a row (bounded by `deadline`).
    Probe { at: SlotRef },
    /// Put the server in the balancer with weight 0, leave maintenance, wait until the balancer says UP.
    Enable { balancer: String, at: SlotRef },
    /// In one runtime command: full weight to `to`, then weight 0 to `from`; read back.
    Shift {
        balancer: String,
        env: String,
        app: String,
        to: Vec<SlotRef>,
        from: Vec<SlotRef>,
    },
    /// Drain the server, wait for zero sessions (bounded by `drain`), then maintenance.
    Drain { balancer: String, at: SlotRef },
    /// SIGTERM, SIGKILL after `stop_timeout`; remove the instance file.
    Stop { at: SlotRef, version: String },
    /// Canary step `step`: `weight` on every canary server and `100 - weight` on every stable one, so
    /// the canary gets `weight`% of the environment's traffic; read back; record the step.
    Weigh {
        balancer: String,
        env: String,
        app: String,
        version: String,
        step: usize,
        weight: u8,
        canary: Vec<SlotRef>,
        stable: Vec<SlotRef>,
    },
    /// Wait out canary step `step`'s pause (or its gate, until `kube-free promote`), then judge the
    /// canary's figures over the step (analysis) and record the step as done.
    Pause {
        balancer: String,
        env: String,
        app: String,
        version: String,
        step: usize,
        pause: Pause,
        canary: Vec<SlotRef>,
    },
    /// Record the rollout of `version` as succeeded.
    Conclude {
        balancer: String,
        env: String,
        app: String,
        version: String,
    },
}

impl Action {
    /// The host a step acts on, for logs.
    pub fn host(&self) -> Option<&str> {
        match self {
            Action::Start { at, .. } | Action::Probe { at } | Action::Stop { at, .. } => {
                Some(&at.host)
            }
            Action::Enable { at, .. } | Action::Drain { at, .. } => Some(&at.host),
            Action::ApplyConfig { .. }
            | Action::Shift { .. }
            | Action::Weigh { .. }
            | Action::Pause { .. }
            | Action::Conclude { .. } => None,
        }
    }

    /// Whether the step changes something (`Probe` only reads).
    pub fn changes(&self) -> bool {
        !matches!(self, Action::Probe { .. })
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |refs: &[SlotRef]| {
            refs.iter()
                .map(|r| r.server())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            Action::ApplyConfig { balancer } => {
                write!(f, "apply config and reload balancer {balancer}")
            }
            Action::Start { at, version } => write!(
                f,
                "start {}/{} {version} in slot {} on {}",
                at.env, at.app, at.slot, at.host
            ),
            Action::Probe { at } => write!(
                f,
                "probe {}/{} slot {} on {}",
                at.env, at.app, at.slot, at.host
            ),
            Action::Enable { balancer, at } => write!(
                f,
                "enable {}/{} on {balancer} (weight 0, wait UP)",
                at.backend(),
                at.server()
            ),
            Action::Shift {
                balancer,
                env,
                app,
                to,
                from,
            } => {
                write!(
                    f,
                    "shift {env}/{app} traffic on {balancer} to [{}]",
                    list(to)
                )?;
                if !from.is_empty() {
                    write!(f, " from [{}]", list(from))?;
                }
                Ok(())
            }
            Action::Drain { balancer, at } => write!(
                f,
                "drain {}/{} on {balancer}, then maint",
                at.backend(),
                at.server()
            ),
            Action::Stop { at, version } => write!(
                f,
                "stop {}/{} {version} in slot {} on {}",
                at.env, at.app, at.slot, at.host
            ),
            Action::Weigh {
                balancer,
                env,
                app,
                version,
                step,
                weight,
                canary,
                stable,
            } => {
                write!(
                    f,
                    "canary step {step}: {env}/{app} {version} gets {weight}% on {balancer} ([{}] weight {weight}",
                    list(canary)
                )?;
                if !stable.is_empty() {
                    write!(f, ", [{}] weight {}", list(stable), 100 - weight)?;
                }
                f.write_str(")")
            }
            Action::Pause {
                env,
                app,
                step,
                pause: Pause::For(d),
                ..
            } => write!(
                f,
                "canary step {step}: pause {env}/{app} for {}, then analyse",
                crate::desired::duration::format(*d)
            ),
            Action::Pause {
                env,
                app,
                step,
                pause: Pause::UntilPromoted,
                ..
            } => write!(
                f,
                "canary step {step}: wait until `kube-free promote {app} --env {env}`"
            ),
            Action::Conclude {
                env, app, version, ..
            } => write!(f, "record {env}/{app} {version} as succeeded"),
        }
    }
}

/// The step graph: an edge a → b means b runs after a.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub graph: DiGraph<Action, ()>,
    /// What the planner chose not to do, and why (a quarantined version).
    pub notes: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.graph.node_count() == 0
    }

    /// Adds every step and edge of `other` (and its notes), independent of the steps already here.
    fn merge(&mut self, other: Plan) {
        let mut map = BTreeMap::new();
        for n in other.graph.node_indices() {
            map.insert(n, self.graph.add_node(other.graph[n].clone()));
        }
        for e in other.graph.edge_indices() {
            let (a, b) = other.graph.edge_endpoints(e).expect("edges have ends");
            self.graph.add_edge(map[&a], map[&b], ());
        }
        self.notes.extend(other.notes);
    }

    fn add(&mut self, action: Action, after: &[NodeIndex]) -> NodeIndex {
        let n = self.graph.add_node(action);
        for &a in after {
            self.graph.add_edge(a, n, ());
        }
        n
    }

    /// Steps in a deterministic topological order: among steps that are free to run, the one added
    /// first goes first.
    pub fn order(&self) -> Vec<NodeIndex> {
        let mut indegree: BTreeMap<NodeIndex, usize> = self
            .graph
            .node_indices()
            .map(|n| {
                (
                    n,
                    self.graph
                        .neighbors_directed(n, Direction::Incoming)
                        .count(),
                )
            })
            .collect();
        let mut ready: BTreeSet<NodeIndex> = indegree
            .iter()
            .filter(|(_, d)| **d == 0)
            .map(|(n, _)| *n)
            .collect();
        let mut out = Vec::new();
        while let Some(n) = ready.pop_first() {
            out.push(n);
            for m in self.graph.neighbors_directed(n, Direction::Outgoing) {
                let d = indegree.get_mut(&m).expect("every node has a degree");
                *d -= 1;
                if *d == 0 {
                    ready.insert(m);
                }
            }
        }
        out
    }

    /// Step numbers (1-based, in `order`) by node.
    fn numbers(&self) -> BTreeMap<NodeIndex, usize> {
        self.order()
            .into_iter()
            .enumerate()
            .map(|(i, n)| (n, i + 1))
            .collect()
    }

    fn after(&self, n: NodeIndex, numbers: &BTreeMap<NodeIndex, usize>) -> Vec<usize> {
        let mut v: Vec<usize> = self
            .graph
            .neighbors_directed(n, Direction::Incoming)
            .map(|p| numbers[&p])
            .collect();
        v.sort();
        v
    }

    pub fn render_text(&self) -> String {
        let mut out: String = self.notes.iter().map(|n| format!("note: {n}\n")).collect();
        if self.is_empty() {
            out.push_str("in sync: nothing to do\n");
            return out;
        }
        let numbers = self.numbers();
        let _ = writeln!(
            out,
            "{} step{}:",
            numbers.len(),
            if numbers.len() == 1 { "" } else { "s" }
        );
        for n in self.order() {
            let after = self.after(n, &numbers);
            let _ = write!(out, "  {:>2}. {}", numbers[&n], self.graph[n]);
            if !after.is_empty() {
                let _ = write!(
                    out,
                    "  (after {})",
                    after
                        .iter()
                        .map(|a| a.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            out.push('\n');
        }
        out
    }

    pub fn render_json(&self) -> serde_json::Value {
        let numbers = self.numbers();
        let steps: Vec<serde_json::Value> = self
            .order()
            .into_iter()
            .map(|n| {
                serde_json::json!({
                    "step": numbers[&n],
                    "description": self.graph[n].to_string(),
                    "after": self.after(n, &numbers),
                    "detail": self.graph[n],
                })
            })
            .collect();
        serde_json::json!({ "in_sync": self.is_empty(), "steps": steps, "notes": self.notes })
    }

    pub fn render_dot(&self) -> String {
        let numbers = self.numbers();
        let mut out = String::from(
            "digraph plan {\n  rankdir=TB;\n  node [shape=box, fontname=\"monospace\"];\n",
        );
        for n in self.order() {
            let label = format!("{}. {}", numbers[&n], self.graph[n])
                .replace('\\', "\\\\")
                .replace('"', "\\\"");
            let _ = writeln!(out, "  s{} [label=\"{label}\"];", numbers[&n]);
        }
        for e in self.graph.edge_indices() {
            let (a, b) = self.graph.edge_endpoints(e).expect("edges have ends");
            let _ = writeln!(out, "  s{} -> s{};", numbers[&a], numbers[&b]);
        }
        out.push_str("}\n");
        out
    }
}

/// What the planner is asked to do.
#[derive(Clone, Debug, Default)]
pub struct Scope {
    /// Only this environment / app (all when `None`).
    pub env: Option<String>,
    pub app: Option<String>,
}

impl Scope {
    pub fn includes(&self, env: &str, app: &str) -> bool {
        self.env.as_deref().is_none_or(|e| e == env) && self.app.as_deref().is_none_or(|a| a == app)
    }
}

/// The record of a rollout that quarantines the desired version of `app` in `env`: it was rolled back,
/// and neither the app's desired state nor the operator (`kube-free retry`) said to try again.
pub fn quarantine<'o>(
    desired: &DesiredState,
    observed: &'o ObservedState,
    env: &str,
    app: &str,
) -> Option<&'o RolloutRecord> {
    let d = desired.environments.get(env)?.apps.get(app)?;
    observed.rollout(env, app).filter(|r| {
        r.phase.quarantines()
            && r.version == d.version
            && r.fingerprint == desired.fingerprint(env, app)
    })
}

/// Steps that converge the observed state to the desired one. `stale_configs` are the balancers whose
/// config file differs from the one rendered from the desired state.
pub fn build(
    desired: &DesiredState,
    observed: &ObservedState,
    stale_configs: &BTreeSet<String>,
    scope: &Scope,
) -> Plan {
    let mut plan = Plan::default();
    let mut config_steps: BTreeMap<String, NodeIndex> = BTreeMap::new();
    for balancer in stale_configs {
        config_steps.insert(
            balancer.clone(),
            plan.add(
                Action::ApplyConfig {
                    balancer: balancer.clone(),
                },
                &[],
            ),
        );
    }
    for env in desired.environments.values() {
        for (app, d) in &env.apps {
            if !scope.includes(&env.name, app) {
                continue;
            }
            if let Some(q) = quarantine(desired, observed, &env.name, app) {
                plan.notes.push(format!(
                    "{}/{app} {} is quarantined ({}): {}; `kube-free retry {app} --env {}` or a change to its desired state lifts it",
                    env.name,
                    q.version,
                    q.phase.ended_as(),
                    q.outcome.as_deref().unwrap_or("no reason recorded"),
                    env.name
                ));
                // What an earlier rollback could not finish (the stable servers were not UP, a
                // host was unreachable) is finished now.
                let take_back = matches!(d.strategy, Strategy::Canary { .. });
                plan.merge(cleanup(
                    desired, observed, &env.name, app, &q.version, take_back,
                ));
                continue;
            }
            let config = config_steps.get(&env.balancer).copied();
            let r = Rollout {
                env,
                app,
                d,
                version: &d.version,
                observed,
                fingerprint: desired.fingerprint(&env.name, app),
            };
            match &d.strategy {
                Strategy::Rolling { batch } => {
                    rolling(&mut plan, &r, batch.size(env.hosts.len()), config)
                }
                Strategy::BlueGreen => blue_green(&mut plan, &r, config),
                Strategy::Canary { steps, .. } => canary(&mut plan, &r, steps, config),
            }
        }
    }
    plan
}

/// The slot's server in the balancer, if the balancer knows it.
fn server<'o>(
    observed: &'o ObservedState,
    balancer: &str,
    at: &SlotRef,
) -> Option<&'o crate::drivers::haproxy::ServerStat> {
    observed.server(balancer, &at.backend(), &at.server())
}

/// The slot's instance is alive and runs `version`.
fn runs(observed: &ObservedState, at: &SlotRef, version: &str) -> bool {
    observed
        .instance(&at.host, &at.env, &at.app, &at.slot)
        .is_some_and(|i| i.alive && i.record.version == version)
}

fn serving(observed: &ObservedState, balancer: &str, at: &SlotRef) -> bool {
    server(observed, balancer, at).is_some_and(|s| s.weight > 0 && s.admin != Admin::Maint && s.up)
}

fn slot_ref(env: &Environment, app: &str, host: &str, slot: &str) -> SlotRef {
    SlotRef {
        env: env.name.clone(),
        app: app.to_owned(),
        host: host.to_owned(),
        slot: slot.to_owned(),
    }
}

/// One app of one environment going to one version, as seen in one snapshot.
struct Rollout<'a> {
    env: &'a Environment,
    app: &'a str,
    d: &'a Deployment,
    version: &'a str,
    observed: &'a ObservedState,
    fingerprint: String,
}

/// What one host needs for `version`: the slot that will serve it, the steps that make it ready
/// (start, probe, enable), and what the shift and the retirement of the other slots involve.
struct HostPrep {
    target: SlotRef,
    /// Steps added for this host (empty when the target is ready and enabled already).
    ready_steps: Vec<NodeIndex>,
    /// The target is not yet at full weight, or another slot still has weight.
    shift_needed: bool,
    /// Other slots that still have weight.
    from: Vec<SlotRef>,
    /// Other slots to drain and stop.
    retire: Vec<SlotRef>,
}

/// Adds the steps that make `host` ready to serve `version` from its target slot, after `after`.
#[allow(clippy::too_many_arguments)]
fn prepare_host(plan: &mut Plan, r: &Rollout, host: &str, after: &[NodeIndex]) -> HostPrep {
    let Rollout {
        env,
        app,
        d,
        version,
        observed,
        ..
    } = *r;
    let balancer = &env.balancer;
    let refs: Vec<SlotRef> = d
        .slots
        .iter()
        .map(|s| slot_ref(env, app, host, &s.name))
        .collect();
    let inst = |r: &SlotRef| observed.instance(host, &r.env, &r.app, &r.slot);
    let good = |r: &SlotRef| runs(observed, r, version);
    // Prefer a slot that already runs the version (serving first), then an empty idle one.
    let target = refs
        .iter()
        .find(|r| good(r) && serving(observed, balancer, r))
        .or_else(|| refs.iter().find(|r| good(r)))
        .or_else(|| {
            refs.iter()
                .find(|r| !serving(observed, balancer, r) && inst(r).is_none())
        })
        // A dead instance's slot before a live old one (which may be all that can still serve).
        .or_else(|| {
            refs.iter()
                .find(|r| !serving(observed, balancer, r) && inst(r).is_some_and(|i| !i.alive))
        })
        .or_else(|| refs.iter().find(|r| !serving(observed, balancer, r)))
        // Every slot serves: reuse the one with the least weight (drained first, below).
        .or_else(|| {
            refs.iter()
                .min_by_key(|r| server(observed, balancer, r).map_or(0, |s| s.weight))
        })
        .expect("an app has two slots")
        .clone();
    let mut last = after.to_vec();
    let mut ready_steps = Vec::new();
    let mut add = |plan: &mut Plan, action: Action, last: &mut Vec<NodeIndex>| {
        let n = plan.add(action, last);
        ready_steps.push(n);
        *last = vec![n];
    };
    if !good(&target) {
        if let Some(old) = inst(&target) {
            // Never signal an instance the balancer can still send requests to.
            if server(observed, balancer, &target).is_some_and(|s| s.admin != Admin::Maint) {
                add(
                    plan,
                    Action::Drain {
                        balancer: balancer.clone(),
                        at: target.clone(),
                    },
                    &mut last,
                );
            }
            add(
                plan,
                Action::Stop {
                    at: target.clone(),
                    version: old.record.version.clone(),
                },
                &mut last,
            );
        }
        add(
            plan,
            Action::Start {
                at: target.clone(),
                version: version.to_owned(),
            },
            &mut last,
        );
    }
    let srv = server(observed, balancer, &target);
    let enabled = srv.is_some_and(|s| s.checked_up());
    let ready = good(&target) && inst(&target).is_some_and(|i| i.ready == Some(true));
    if !enabled || !ready {
        add(plan, Action::Probe { at: target.clone() }, &mut last);
    }
    if !enabled || !good(&target) {
        add(
            plan,
            Action::Enable {
                balancer: balancer.clone(),
                at: target.clone(),
            },
            &mut last,
        );
    }
    let mut prep = HostPrep {
        shift_needed: srv.is_none_or(|s| s.weight != FULL_WEIGHT) || !good(&target),
        target,
        ready_steps,
        from: Vec::new(),
        retire: Vec::new(),
    };
    for other in refs.iter().filter(|r| **r != prep.target) {
        let known = server(observed, balancer, other);
        if known.is_some_and(|s| s.weight > 0) {
            prep.shift_needed = true;
            prep.from.push(other.clone());
        }
        if known.is_some_and(|s| s.admin != Admin::Maint) || inst(other).is_some() {
            prep.retire.push(other.clone());
        }
    }
    prep
}

/// Drains (unless in maintenance already) and stops each slot, after `after`; returns the last steps.
fn retire(
    plan: &mut Plan,
    balancer: &str,
    slots: &[SlotRef],
    observed: &ObservedState,
    after: &[NodeIndex],
) -> Vec<NodeIndex> {
    let mut ends = Vec::new();
    for other in slots {
        let mut last = after.to_vec();
        if server(observed, balancer, other).is_some_and(|s| s.admin != Admin::Maint) {
            last = vec![plan.add(
                Action::Drain {
                    balancer: balancer.to_owned(),
                    at: other.clone(),
                },
                &last,
            )];
        }
        if let Some(i) = observed.instance(&other.host, &other.env, &other.app, &other.slot) {
            last = vec![plan.add(
                Action::Stop {
                    at: other.clone(),
                    version: i.record.version.clone(),
                },
                &last,
            )];
        }
        ends.extend(last);
    }
    ends
}

/// Blue-green toward `version`: on every host the target slot runs `version`, is probed and enabled;
/// one shift moves all weight; the other slots are drained, put in maintenance and stopped.
fn blue_green(plan: &mut Plan, r: &Rollout, config: Option<NodeIndex>) {
    let Rollout { env, observed, .. } = *r;
    let base: Vec<NodeIndex> = config.into_iter().collect();
    let preps: Vec<HostPrep> = env
        .hosts
        .iter()
        .map(|h| prepare_host(plan, r, h, &base))
        .collect();
    let mut before: Vec<NodeIndex> = base.clone();
    before.extend(preps.iter().flat_map(|p| p.ready_steps.last().copied()));
    let after = shift_to_targets(plan, r, &preps, &before).map_or(base, |n| vec![n]);
    let old: Vec<SlotRef> = preps.into_iter().flat_map(|p| p.retire).collect();
    retire(plan, &env.balancer, &old, observed, &after);
}

/// When any of `preps` needs it, one shift (after `after`): full weight to every host's target
/// slot, weight 0 to the other slots that have weight.
fn shift_to_targets(
    plan: &mut Plan,
    r: &Rollout,
    preps: &[HostPrep],
    after: &[NodeIndex],
) -> Option<NodeIndex> {
    preps.iter().any(|p| p.shift_needed).then(|| {
        let shift = Action::Shift {
            balancer: r.env.balancer.clone(),
            env: r.env.name.clone(),
            app: r.app.to_owned(),
            to: preps.iter().map(|p| p.target.clone()).collect(),
            from: preps.iter().flat_map(|p| p.from.iter().cloned()).collect(),
        };
        plan.add(shift, after)
    })
}

/// Rolling toward `version`: hosts in batches of `batch`; within a batch each host gets its target
/// slot ready, moves its own weight to it and retires its old slot; the next batch starts when the
/// batch before it is done, so at most one batch of hosts is ever changing.
fn rolling(plan: &mut Plan, r: &Rollout, batch: usize, config: Option<NodeIndex>) {
    let Rollout { env, observed, .. } = *r;
    let mut after: Vec<NodeIndex> = config.into_iter().collect();
    for hosts in env.hosts.chunks(batch.max(1)) {
        let mut ends = Vec::new();
        for host in hosts {
            let prep = prepare_host(plan, r, host, &after);
            let mut last: Vec<NodeIndex> = prep
                .ready_steps
                .last()
                .copied()
                .map_or_else(|| after.clone(), |n| vec![n]);
            if let Some(shift) = shift_to_targets(plan, r, std::slice::from_ref(&prep), &last) {
                last = vec![shift];
            }
            let retired = retire(plan, &env.balancer, &prep.retire, observed, &last);
            let host_changed =
                !prep.ready_steps.is_empty() || prep.shift_needed || !retired.is_empty();
            if host_changed {
                ends.extend(if retired.is_empty() { last } else { retired });
            }
        }
        if !ends.is_empty() {
            after = ends;
        }
    }
}

/// The step a canary without a record stands at, as the balancer shows it: the last step that sets
/// the weight every canary server has, when every stable server has the rest (what that step's
/// `Weigh` left), and every canary slot runs this version; else 0. Its `Weigh` and pause run again
/// from there, so nothing is skipped that was not seen done, and the canary's share does not fall
/// back to the first step's.
fn step_from_weights(
    r: &Rollout,
    steps: &[CanaryStep],
    canary: &[SlotRef],
    stable: &[SlotRef],
) -> usize {
    let balancer = &r.env.balancer;
    let weight = |at: &SlotRef| {
        server(r.observed, balancer, at)
            .filter(|s| s.admin == Admin::Ready)
            .map(|s| s.weight)
    };
    // Weights of a slot that still runs another (superseded) canary say nothing of this one.
    if !canary.iter().all(|at| runs(r.observed, at, r.version)) {
        return 0;
    }
    let Some(w) = canary.first().and_then(weight) else {
        return 0;
    };
    if w == 0
        || w > 100
        || stable.is_empty()
        || !canary.iter().all(|at| weight(at) == Some(w))
        || !stable.iter().all(|at| weight(at) == Some(100 - w))
    {
        return 0;
    }
    steps
        .iter()
        .rposition(|s| s.weight.map(u32::from) == Some(w))
        .unwrap_or(0)
}

/// Canary toward `version`: on every host the target slot runs `version`, is probed and enabled; then
/// the steps from the one the rollout record says is in progress: `Weigh` sets the canary's share,
/// `Pause` waits and analyses; after the last step one shift gives the canary everything, the old
/// slots are retired and the record says succeeded. With nothing else serving (a first deploy) there
/// is nothing to compare against, and it goes as blue-green does.
fn canary(plan: &mut Plan, r: &Rollout, steps: &[CanaryStep], config: Option<NodeIndex>) {
    let Rollout {
        env,
        app,
        version,
        observed,
        ..
    } = *r;
    let base: Vec<NodeIndex> = config.into_iter().collect();
    let preps: Vec<HostPrep> = env
        .hosts
        .iter()
        .map(|h| prepare_host(plan, r, h, &base))
        .collect();
    let record = observed.rollout(&env.name, app).filter(|rec| {
        rec.version == version
            && rec.fingerprint == r.fingerprint
            && matches!(rec.phase, Phase::Progressing | Phase::Paused)
    });
    let stable: Vec<SlotRef> = preps.iter().flat_map(|p| p.from.iter().cloned()).collect();
    let canary: Vec<SlotRef> = preps.iter().map(|p| p.target.clone()).collect();
    // Without a record of this rollout (lost, unreadable), where it stands is read from the balancer.
    let first = match record {
        Some(rec) => rec.step,
        None => step_from_weights(r, steps, &canary, &stable),
    };
    let walking = !stable.is_empty() || record.is_some_and(|rec| rec.step < steps.len());
    let mut after = base.clone();
    after.extend(preps.iter().flat_map(|p| p.ready_steps.last().copied()));
    let action = |step: usize| (env.balancer.clone(), env.name.clone(), app.to_owned(), step);
    if walking {
        for (i, step) in steps.iter().enumerate().skip(first) {
            if let Some(weight) = step.weight {
                let (balancer, env, app, step) = action(i);
                let weigh = Action::Weigh {
                    balancer,
                    env,
                    app,
                    version: version.to_owned(),
                    step,
                    weight,
                    canary: canary.clone(),
                    stable: stable.clone(),
                };
                after = vec![plan.add(weigh, &after)];
            }
            if let Some(pause) = step.pause {
                let (balancer, env, app, step) = action(i);
                let wait = Action::Pause {
                    balancer,
                    env,
                    app,
                    version: version.to_owned(),
                    step,
                    pause,
                    canary: canary.clone(),
                };
                after = vec![plan.add(wait, &after)];
            }
        }
    }
    if let Some(shift) = shift_to_targets(plan, r, &preps, &after) {
        after = vec![shift];
    }
    let old: Vec<SlotRef> = preps.into_iter().flat_map(|p| p.retire).collect();
    let retired = retire(plan, &env.balancer, &old, observed, &after);
    if walking || record.is_some() {
        let conclude = Action::Conclude {
            balancer: env.balancer.clone(),
            env: env.name.clone(),
            app: app.to_owned(),
            version: version.to_owned(),
        };
        plan.add(conclude, if retired.is_empty() { &after } else { &retired });
    }
}

/// After a failed or aborted rollout to `version`: the slots running `version` are taken out of the
/// balancer and stopped; other versions are left alone. With `take_back`, slots of `version` that get
/// traffic give it back first, in one shift, to the live slots of other versions (the stable ones; the
/// shift itself refuses servers that are not UP, so traffic never goes to a broken stable version);
/// without stable slots they keep serving. Without `take_back`, slots that get traffic keep it.
pub fn cleanup(
    desired: &DesiredState,
    observed: &ObservedState,
    env: &str,
    app: &str,
    version: &str,
    take_back: bool,
) -> Plan {
    let mut plan = Plan::default();
    let Some(environment) = desired.environments.get(env) else {
        return plan;
    };
    let Some(d) = environment.apps.get(app) else {
        return plan;
    };
    let balancer = &environment.balancer;
    let (mut failed, mut stable) = (Vec::new(), Vec::new());
    for host in &environment.hosts {
        for slot in &d.slots {
            let at = slot_ref(environment, app, host, &slot.name);
            match observed.instance(host, env, app, &slot.name) {
                Some(i) if i.record.version == version => failed.push(at),
                Some(i) if i.alive => stable.push(at),
                _ => {}
            }
        }
    }
    let (serving_failed, quiet): (Vec<SlotRef>, Vec<SlotRef>) = failed
        .into_iter()
        .partition(|at| serving(observed, balancer, at));
    let mut after = Vec::new();
    let mut retire_now = quiet;
    if take_back && !serving_failed.is_empty() {
        if stable.is_empty() {
            plan.notes.push(format!(
                "{env}/{app} {version} keeps its traffic: no other version runs to take it back"
            ));
        } else {
            after = vec![plan.add(
                Action::Shift {
                    balancer: balancer.clone(),
                    env: env.to_owned(),
                    app: app.to_owned(),
                    to: stable,
                    from: serving_failed.clone(),
                },
                &[],
            )];
            retire_now.extend(serving_failed);
        }
    }
    retire_now.sort();
    for at in retire_now {
        let mut last = if serving(observed, balancer, &at) {
            after.clone()
        } else {
            Vec::new()
        };
        if server(observed, balancer, &at).is_some_and(|s| s.admin != Admin::Maint) {
            last = vec![plan.add(
                Action::Drain {
                    balancer: balancer.clone(),
                    at: at.clone(),
                },
                &last,
            )];
        }
        plan.add(
            Action::Stop {
                at: at.clone(),
                version: version.to_owned(),
            },
            &last,
        );
    }
    plan
}

#[cfg(test)]
mod tests;
