//! Planning: from the desired state and an observed snapshot to a dependency graph of steps (petgraph),
//! deterministic for the same inputs, and its renderings (text, JSON, Graphviz dot). Pure: no I/O, no
//! clock, no SSH or balancer syntax — balancer servers are named by (backend, server) only
//! (`names`). This file holds the step types and the graph; `build` the strategies that make one;
//! `saved` a plan kept in a file to be executed as it is (its read and write the only I/O here).

mod build;
pub mod prune;
pub mod saved;
mod traffic;

pub use crate::names::SlotRef;
pub use build::{build, cleanup, last_good, quarantine, reverts_to, Cleanup};
pub use prune::{orphans, Orphan, Prune};
pub use traffic::{SlotTraffic, Traffic, EARLIER_SPEC};

use crate::desired::Pause;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::Direction;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

/// What a step does. Each is idempotent: the executor's effects check whether it is done first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    /// Write the balancer's config file (frontends, backends, servers) and reload hitlessly.
    ApplyConfig { balancer: String },
    /// Make the image of `version` available on `host` (pull it; apps that run images only),
    /// before anything of the rollout starts or stops.
    Pull {
        host: String,
        env: String,
        app: String,
        version: String,
    },
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
    /// Stop an instance the desired state no longer has (an orphan), by the runtime that started
    /// it, after the balancer configs took its server out.
    Prune { at: SlotRef, version: String },
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
    /// For the app's `bake`, after traffic moved to `new`: the `old` servers (weight 0, still
    /// running) stay ready to take it back while `new` is watched; a server that goes DOWN, an
    /// instance that exits, or an error rate above the strategy's analysis moves all traffic back
    /// to `old` in one command and fails the version. `resume`: traffic moved in an earlier run,
    /// whose bake (recorded in the rollout record) goes on where it was; else a bake starts now.
    Bake {
        balancer: String,
        env: String,
        app: String,
        version: String,
        #[serde(serialize_with = "crate::desired::duration::serialize")]
        bake: Duration,
        new: Vec<SlotRef>,
        old: Vec<SlotRef>,
        resume: bool,
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
            Action::Start { at, .. }
            | Action::Probe { at }
            | Action::Stop { at, .. }
            | Action::Prune { at, .. } => Some(&at.host),
            Action::Enable { at, .. } | Action::Drain { at, .. } => Some(&at.host),
            Action::Pull { host, .. } => Some(host),
            Action::ApplyConfig { .. }
            | Action::Shift { .. }
            | Action::Weigh { .. }
            | Action::Pause { .. }
            | Action::Bake { .. }
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
            Action::Pull {
                host,
                env,
                app,
                version,
            } => write!(f, "pull the image of {env}/{app} {version} on {host}"),
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
            Action::Prune { at, version } => write!(
                f,
                "prune {}/{} {version} in slot {} on {} (stop: not in the desired state)",
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
            Action::Bake {
                env,
                app,
                version,
                bake,
                new,
                old,
                resume,
                ..
            } => {
                write!(
                    f,
                    "bake {env}/{app} {version} for {}{}: watch [{}]",
                    crate::desired::duration::format(*bake),
                    if *resume { " (what is left of it)" } else { "" },
                    list(new)
                )?;
                if !old.is_empty() {
                    write!(f, ", [{}] kept running to take traffic back", list(old))?;
                }
                Ok(())
            }
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
    /// Why a rollout that no version change explains is planned (a spec change: `command
    /// changed`, …).
    pub why: Vec<String>,
    /// What is wrong that no step of this plan puts right (traffic left on a quarantined version);
    /// also in `notes`.
    pub stuck: Vec<String>,
    /// The orphans this plan leaves running (not asked to prune, or refused), in words.
    pub orphans: Vec<String>,
    /// Why this plan prunes nothing though it was asked to (the guard: more than half, or all).
    pub refused: Option<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.graph.node_count() == 0
    }

    /// Nothing to do, nothing wrong, nothing orphaned: the hosts are what the desired state says.
    pub fn in_sync(&self) -> bool {
        self.is_empty() && self.stuck.is_empty() && self.orphans.is_empty()
    }

    /// Adds every step and edge of `other` (and its notes), independent of the steps already here.
    pub(crate) fn merge(&mut self, other: Plan) {
        let mut map = BTreeMap::new();
        for n in other.graph.node_indices() {
            map.insert(n, self.graph.add_node(other.graph[n].clone()));
        }
        for e in other.graph.edge_indices() {
            let (a, b) = other.graph.edge_endpoints(e).expect("edges have ends");
            self.graph.add_edge(map[&a], map[&b], ());
        }
        self.notes.extend(other.notes);
        self.why.extend(other.why);
        self.stuck.extend(other.stuck);
        self.orphans.extend(other.orphans);
        self.refused = self.refused.take().or(other.refused);
    }

    /// Notes a problem no step of this plan puts right.
    pub(crate) fn stuck(&mut self, problem: String) {
        self.notes.push(problem.clone());
        self.stuck.push(problem);
    }

    pub(crate) fn add(&mut self, action: Action, after: &[NodeIndex]) -> NodeIndex {
        let n = self.graph.add_node(action);
        for &a in after {
            self.graph.add_edge(a, n, ());
        }
        n
    }

    /// Steps in a deterministic topological order: among steps that are free to run, the one added
    /// first goes first.
    pub fn order(&self) -> Vec<NodeIndex> {
        use std::cmp::Reverse;
        let mut indegree: Vec<usize> = self
            .graph
            .node_indices()
            .map(|n| {
                self.graph
                    .neighbors_directed(n, Direction::Incoming)
                    .count()
            })
            .collect();
        let mut ready: std::collections::BinaryHeap<Reverse<NodeIndex>> = self
            .graph
            .node_indices()
            .filter(|n| indegree[n.index()] == 0)
            .map(Reverse)
            .collect();
        let mut out = Vec::with_capacity(indegree.len());
        while let Some(Reverse(n)) = ready.pop() {
            out.push(n);
            for m in self.graph.neighbors_directed(n, Direction::Outgoing) {
                let d = &mut indegree[m.index()];
                *d -= 1;
                if *d == 0 {
                    ready.push(Reverse(m));
                }
            }
        }
        out
    }

    /// The steps in [`Self::order`], and the number each step has in it (from 1), by node index.
    fn numbered(&self) -> (Vec<NodeIndex>, Vec<usize>) {
        let order = self.order();
        let mut numbers = vec![0; self.graph.node_count()];
        for (i, n) in order.iter().enumerate() {
            numbers[n.index()] = i + 1;
        }
        (order, numbers)
    }

    /// The numbers of the steps `n` comes after, in order.
    fn after(&self, n: NodeIndex, numbers: &[usize]) -> Vec<usize> {
        let mut v: Vec<usize> = self
            .graph
            .neighbors_directed(n, Direction::Incoming)
            .map(|p| numbers[p.index()])
            .collect();
        v.sort_unstable();
        v
    }

    pub fn render_text(&self) -> String {
        // About a hundred bytes a step: sized once, not doubled (and copied) as it grows.
        let mut out = String::with_capacity(64 + 100 * self.graph.node_count());
        out.extend(self.notes.iter().map(|n| format!("note: {n}\n")));
        out.extend(self.why.iter().map(|w| format!("why: {w}\n")));
        out.extend(self.refused.iter().map(|r| format!("refused: {r}\n")));
        out.extend(self.orphans.iter().map(|o| format!("orphaned: {o}\n")));
        if self.is_empty() {
            out.push_str(if self.in_sync() {
                "in sync: nothing to do\n"
            } else if self.stuck.is_empty() {
                "not in sync: orphaned instances run (`--prune`, or `prune: true`, stops them)\n"
            } else {
                "not in sync, and no step can put it right (see the notes)\n"
            });
            return out;
        }
        let (order, numbers) = self.numbered();
        let _ = writeln!(
            out,
            "{} step{}:",
            order.len(),
            if order.len() == 1 { "" } else { "s" }
        );
        for n in order {
            let _ = write!(out, "  {:>2}. {}", numbers[n.index()], self.graph[n]);
            let after = self.after(n, &numbers);
            for (i, a) in after.iter().enumerate() {
                let _ = write!(out, "{}{a}", if i == 0 { "  (after " } else { ", " });
            }
            if !after.is_empty() {
                out.push(')');
            }
            out.push('\n');
        }
        out
    }

    pub fn render_json(&self) -> serde_json::Value {
        let (order, numbers) = self.numbered();
        let steps: Vec<serde_json::Value> = order
            .into_iter()
            .map(|n| {
                serde_json::json!({
                    "step": numbers[n.index()],
                    "description": self.graph[n].to_string(),
                    "after": self.after(n, &numbers),
                    "detail": self.graph[n],
                })
            })
            .collect();
        serde_json::json!({
            "in_sync": self.in_sync(),
            "steps": steps,
            "notes": self.notes,
            "why": self.why,
            "stuck": self.stuck,
            "orphans": self.orphans,
            "refused": self.refused,
        })
    }

    pub fn render_dot(&self) -> String {
        let (order, numbers) = self.numbered();
        let mut out = String::from(
            "digraph plan {\n  rankdir=TB;\n  node [shape=box, fontname=\"monospace\"];\n",
        );
        for n in order {
            let label = format!("{}. {}", numbers[n.index()], self.graph[n])
                .replace('\\', "\\\\")
                .replace('"', "\\\"");
            let _ = writeln!(out, "  s{} [label=\"{label}\"];", numbers[n.index()]);
        }
        for e in self.graph.edge_indices() {
            let (a, b) = self.graph.edge_endpoints(e).expect("edges have ends");
            let _ = writeln!(out, "  s{} -> s{};", numbers[a.index()], numbers[b.index()]);
        }
        out.push_str("}\n");
        out
    }
}

/// What the planner is asked to do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scope {
    /// Only this environment / app (all when `None`).
    pub env: Option<String>,
    pub app: Option<String>,
    /// Never these environments (suspended ones: `reconcile::suspend::decide`).
    pub except: Vec<String>,
    /// What to do with orphans beyond what the desired state asks (`--prune`, `--prune-all`).
    pub prune: Prune,
}

impl Scope {
    pub fn includes(&self, env: &str, app: &str) -> bool {
        self.env.as_deref().is_none_or(|e| e == env)
            && self.app.as_deref().is_none_or(|a| a == app)
            && !self.except.iter().any(|e| e == env)
    }
}

#[cfg(test)]
mod tests;
