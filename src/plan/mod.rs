//! Planning: from the desired state and an observed snapshot to a dependency graph of steps (petgraph),
//! deterministic for the same inputs, and its renderings (text, JSON, Graphviz dot). Pure: no I/O, no
//! clock, no SSH or HAProxy syntax — balancer servers are named by (backend, server) only.

use crate::desired::{Deployment, DesiredState, Environment};
use crate::drivers::haproxy::{backend_name, server_name, Admin, FULL_WEIGHT};
use crate::observed::ObservedState;
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
}

impl Action {
    /// The host a step acts on, for logs.
    pub fn host(&self) -> Option<&str> {
        match self {
            Action::Start { at, .. } | Action::Probe { at } | Action::Stop { at, .. } => {
                Some(&at.host)
            }
            Action::Enable { at, .. } | Action::Drain { at, .. } => Some(&at.host),
            Action::ApplyConfig { .. } | Action::Shift { .. } => None,
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
        }
    }
}

/// The step graph: an edge a → b means b runs after a.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub graph: DiGraph<Action, ()>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.graph.node_count() == 0
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
        if self.is_empty() {
            return "in sync: nothing to do\n".into();
        }
        let numbers = self.numbers();
        let mut out = format!(
            "{} step{}:\n",
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
        serde_json::json!({ "in_sync": self.is_empty(), "steps": steps })
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
    fn includes(&self, env: &str, app: &str) -> bool {
        self.env.as_deref().is_none_or(|e| e == env) && self.app.as_deref().is_none_or(|a| a == app)
    }
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
            if scope.includes(&env.name, app) {
                let config = config_steps.get(&env.balancer).copied();
                blue_green(&mut plan, env, app, d, &d.version, observed, config);
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

fn serving(observed: &ObservedState, balancer: &str, at: &SlotRef) -> bool {
    server(observed, balancer, at).is_some_and(|s| s.weight > 0 && s.admin != Admin::Maint)
}

fn slot_ref(env: &Environment, app: &str, host: &str, slot: &str) -> SlotRef {
    SlotRef {
        env: env.name.clone(),
        app: app.to_owned(),
        host: host.to_owned(),
        slot: slot.to_owned(),
    }
}

/// Blue-green toward `version`: on every host the target slot runs `version`, is probed and enabled;
/// one shift moves all weight; the other slots are drained, put in maintenance and stopped.
fn blue_green(
    plan: &mut Plan,
    env: &Environment,
    app: &str,
    d: &Deployment,
    version: &str,
    observed: &ObservedState,
    config: Option<NodeIndex>,
) {
    let balancer = &env.balancer;
    let base: Vec<NodeIndex> = config.into_iter().collect();
    let mut before_shift: Vec<NodeIndex> = base.clone();
    let mut to = Vec::new();
    let mut from = Vec::new();
    let mut retire: Vec<SlotRef> = Vec::new();
    let mut shift_needed = false;
    for host in &env.hosts {
        let refs: Vec<SlotRef> = d
            .slots
            .iter()
            .map(|s| slot_ref(env, app, host, &s.name))
            .collect();
        let inst = |r: &SlotRef| observed.instance(host, &r.env, &r.app, &r.slot);
        let good = |r: &SlotRef| inst(r).is_some_and(|i| i.alive && i.record.version == version);
        let target = refs
            .iter()
            .find(|r| good(r) && serving(observed, balancer, r))
            .or_else(|| refs.iter().find(|r| good(r)))
            .or_else(|| {
                refs.iter()
                    .find(|r| !serving(observed, balancer, r) && inst(r).is_none())
            })
            .or_else(|| refs.iter().find(|r| !serving(observed, balancer, r)))
            .unwrap_or(&refs[0])
            .clone();
        let mut last = base.clone();
        if !good(&target) {
            if let Some(old) = inst(&target) {
                last = vec![plan.add(
                    Action::Stop {
                        at: target.clone(),
                        version: old.record.version.clone(),
                    },
                    &last,
                )];
            }
            last = vec![plan.add(
                Action::Start {
                    at: target.clone(),
                    version: version.to_owned(),
                },
                &last,
            )];
        }
        let srv = server(observed, balancer, &target);
        let enabled = srv.is_some_and(|s| s.up && s.admin == Admin::Ready);
        let ready = inst(&target).is_some_and(|i| i.ready == Some(true)) && good(&target);
        if !enabled || !ready {
            last = vec![plan.add(Action::Probe { at: target.clone() }, &last)];
        }
        if !enabled || !good(&target) {
            last = vec![plan.add(
                Action::Enable {
                    balancer: balancer.clone(),
                    at: target.clone(),
                },
                &last,
            )];
        }
        before_shift.extend(last.iter().filter(|n| !base.contains(n)));
        if srv.is_none_or(|s| s.weight != FULL_WEIGHT) || !good(&target) {
            shift_needed = true;
        }
        for other in refs.iter().filter(|r| **r != target) {
            let known = server(observed, balancer, other);
            if known.is_some_and(|s| s.weight > 0) {
                shift_needed = true;
                from.push(other.clone());
            }
            if known.is_some_and(|s| s.admin != Admin::Maint) || inst(other).is_some() {
                retire.push(other.clone());
            }
        }
        to.push(target);
    }
    let shift = shift_needed.then(|| {
        plan.add(
            Action::Shift {
                balancer: balancer.clone(),
                env: env.name.clone(),
                app: app.to_owned(),
                to,
                from,
            },
            &before_shift,
        )
    });
    let after_shift: Vec<NodeIndex> = shift.into_iter().chain(base.iter().copied()).collect();
    for other in retire {
        let mut last = after_shift.clone();
        if server(observed, balancer, &other).is_some_and(|s| s.admin != Admin::Maint) {
            last = vec![plan.add(
                Action::Drain {
                    balancer: balancer.clone(),
                    at: other.clone(),
                },
                &last,
            )];
        }
        if let Some(i) = observed.instance(&other.host, &other.env, &other.app, &other.slot) {
            plan.add(
                Action::Stop {
                    at: other.clone(),
                    version: i.record.version.clone(),
                },
                &last,
            );
        }
    }
}

/// After a failed rollout: take every slot of the environment's app that gets no traffic out of the
/// balancer and stop its instance, leaving what serves untouched.
pub fn cleanup(desired: &DesiredState, observed: &ObservedState, env: &str, app: &str) -> Plan {
    let mut plan = Plan::default();
    let Some(environment) = desired.environments.get(env) else {
        return plan;
    };
    let Some(d) = environment.apps.get(app) else {
        return plan;
    };
    let balancer = &environment.balancer;
    for host in &environment.hosts {
        for slot in &d.slots {
            let at = slot_ref(environment, app, host, &slot.name);
            if serving(observed, balancer, &at) {
                continue;
            }
            let mut last = Vec::new();
            if server(observed, balancer, &at).is_some_and(|s| s.admin != Admin::Maint) {
                last = vec![plan.add(
                    Action::Drain {
                        balancer: balancer.clone(),
                        at: at.clone(),
                    },
                    &[],
                )];
            }
            if let Some(i) = observed.instance(host, env, app, &slot.name) {
                plan.add(
                    Action::Stop {
                        at: at.clone(),
                        version: i.record.version.clone(),
                    },
                    &last,
                );
            }
        }
    }
    plan
}

#[cfg(test)]
mod tests;
