//! Building plans: the strategies (blue-green, rolling, canary) as small ordered transforms over the
//! snapshot, the quarantine of a rolled-back version, and the cleanup after a failed rollout. Pure,
//! like the rest of `plan`.

use super::{Action, Plan, Scope, SlotRef};
use crate::desired::spec::Spec;
use crate::desired::{CanaryStep, Deployment, DesiredState, Environment, Strategy};
use crate::names::{backend_name, server_name};
use crate::observed::{Admin, Found, Instance, ObservedState, Server, FULL_WEIGHT};
use crate::state::{InstanceRecord, UNKNOWN_VERSION};
use crate::state::{Phase, RolloutRecord};
use petgraph::graph::NodeIndex;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;
use std::time::Duration;

/// The record of a rollout that quarantines the desired version of `app` in `env`: it failed or was aborted,
/// and neither the app's desired state nor the operator (`kube-free retry`) said to try again.
pub fn quarantine<'o>(
    desired: &DesiredState,
    observed: &'o ObservedState,
    env: &str,
    app: &str,
) -> Option<&'o RolloutRecord> {
    let d = desired.deployment(env, app)?;
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
    // Each deployment's instances, gathered once: not a pass over every host per deployment.
    let by_app = observed.by_app();
    // A quarantined app that still serves from a slot whose port changed holds its balancer's
    // config: applying it would move that server to a port nothing listens on.
    let mut held: BTreeSet<&str> = BTreeSet::new();
    for (env, app, d) in desired.deployments() {
        if !scope.includes(&env.name, app)
            || !stale_configs.contains(&env.balancer)
            || quarantine(desired, observed, &env.name, app).is_none()
        {
            continue;
        }
        let moved = moved_ports(observed, by_app.of(&env.name, app), env, app, d);
        if !moved.is_empty() {
            held.insert(&env.balancer);
            plan.stuck(format!(
                "the config of balancer {} waits: {}/{app} serves from [{}] on ports its desired state no longer gives them, and its rollout is quarantined",
                env.balancer,
                env.name,
                moved.iter().map(SlotRef::server).collect::<Vec<_>>().join(", ")
            ));
        }
    }
    let mut config_steps: BTreeMap<String, NodeIndex> = BTreeMap::new();
    for balancer in stale_configs.iter().filter(|b| !held.contains(b.as_str())) {
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
    for (env, app, d) in desired.deployments() {
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
            // What an earlier rollback could not finish (the last good version did not come
            // back, a host was unreachable) is finished now; unless the strategy holds.
            let mode = if d.strategy.holds() {
                Cleanup::Hold
            } else {
                Cleanup::Revert
            };
            plan.merge(cleanup(desired, observed, &env.name, app, &q.version, mode));
            continue;
        }
        // Serving slots whose port changed: the config (which moves their servers to the new
        // ports) comes after the rollout has moved the traffic off them and retired them.
        let moved = moved_ports(observed, by_app.of(&env.name, app), env, app, d);
        let (config, config_after) = match config_steps.get(&env.balancer).copied() {
            Some(c) if !moved.is_empty() => (None, Some(c)),
            c => (c, None),
        };
        let r = Rollout {
            env,
            app,
            d,
            version: &d.version,
            wants: Wants::Spec,
            specs: Specs::new(desired, app, &d.version),
            observed,
            found: by_app.of(&env.name, app),
            fingerprint: desired.fingerprint(&env.name, app),
            bake: desired.apps[app].bake,
            image: desired.apps[app].runtime.image().is_some(),
        };
        let before = plan.graph.node_count();
        let mut roots: Vec<NodeIndex> = config.into_iter().collect();
        roots.extend(pulls(&mut plan, &r, &roots));
        let last = match &d.strategy {
            Strategy::Rolling { batch, .. } => {
                rolling(&mut plan, &r, batch.size(env.hosts.len()), &roots)
            }
            Strategy::BlueGreen { .. } => blue_green(&mut plan, &r, &roots),
            Strategy::Canary { steps, .. } => canary(&mut plan, &r, steps, &roots),
        };
        let changes = spec_changes(&r.specs, r.found);
        if plan.graph.node_count() > before && !changes.is_empty() {
            plan.why.push(format!(
                "{}/{app} {}: {} since its instances started: rolled out as a new version is ({})",
                env.name,
                d.version,
                changes.join(", "),
                d.strategy.name()
            ));
        }
        if let Some(config) = config_after {
            for &n in &last {
                plan.graph.add_edge(n, config, ());
            }
            plan.why.push(format!(
                "{}/{app}: the config of balancer {} is applied after the traffic moved off [{}], whose ports change",
                env.name,
                env.balancer,
                moved.iter().map(SlotRef::server).collect::<Vec<_>>().join(", ")
            ));
        }
        // The rollout is recorded as succeeded when this plan did anything for it, or when an
        // earlier run began it and did not finish.
        if plan.graph.node_count() > before || running_record(&r).is_some() {
            let conclude = Action::Conclude {
                balancer: env.balancer.clone(),
                env: env.name.clone(),
                app: app.to_owned(),
                version: d.version.clone(),
            };
            plan.add(conclude, &last);
        }
    }
    let configs: Vec<NodeIndex> = config_steps.into_values().collect();
    super::prune::add(&mut plan, desired, observed, scope, &configs);
    plan
}

/// The last version known to have served `env`/`app` well, other than `failed`: what a failed
/// rollout of `failed` brings back. From the rollout record (the one it names, or an earlier
/// version that succeeded), else from the instances found: one of another version that serves,
/// then one that runs, then one that did run (its record is still there). `found`: the instances
/// of `app` in `env` ([`ObservedState::instances_of`]).
pub fn last_good(
    observed: &ObservedState,
    found: &[Found],
    env: &str,
    app: &str,
    failed: &str,
) -> Option<String> {
    if let Some(v) = observed
        .rollout(env, app)
        .and_then(|r| r.good_before(failed))
    {
        return Some(v.to_owned());
    }
    let backend = backend_name(env, app);
    let mut ranked: Vec<(u8, &str)> = Vec::new();
    for f in found {
        let version = f.instance.record.version.as_str();
        if version == failed || version == UNKNOWN_VERSION {
            continue;
        }
        let key = (backend.clone(), server_name(f.host, f.slot));
        let serves = observed
            .balancers
            .values()
            .any(|b| b.servers.get(&key).is_some_and(Server::serving));
        ranked.push((u8::from(!serves) + u8::from(!f.instance.alive), version));
    }
    ranked.sort();
    ranked.first().map(|(_, v)| (*v).to_owned())
}

/// What a failed rollout of `version` goes back to, in words: the version itself with its
/// earlier spec when a spec change of it failed ([`super::traffic::EARLIER_SPEC`]), else the
/// [`last_good`] version.
pub fn reverts_to(
    desired: &DesiredState,
    observed: &ObservedState,
    env: &str,
    app: &str,
    version: &str,
) -> Option<String> {
    let found = observed.instances_of(env, app);
    if earlier_specs(&Specs::new(desired, app, version), &found).is_empty() {
        last_good(observed, &found, env, app, version)
    } else {
        Some(format!("{version}{}", super::traffic::EARLIER_SPEC))
    }
}

/// The slots of `app` in `env` whose live instance serves (has weight) on a port the desired
/// state no longer gives the slot: the balancer's config moves their servers to the new port.
fn moved_ports(
    observed: &ObservedState,
    found: &[Found],
    env: &Environment,
    app: &str,
    d: &Deployment,
) -> Vec<SlotRef> {
    let mut moved = Vec::new();
    // Most plans have no port that changed: the instances alone say so.
    let port_of = |slot: &str| d.slots.iter().find(|s| s.name == slot).map(|s| s.port);
    if !found
        .iter()
        .any(|f| f.instance.alive && port_of(f.slot).is_some_and(|p| p != f.instance.record.port))
    {
        return moved;
    }
    for host in &env.hosts {
        for slot in &d.slots {
            let at = slot_ref(env, app, host, &slot.name);
            let runs_elsewhere = observed
                .instance(host, &env.name, app, &slot.name)
                .is_some_and(|i| i.alive && i.record.port != slot.port);
            let serves = server(observed, &env.balancer, &at)
                .is_some_and(|s| s.weight > 0 && s.admin != Admin::Maint);
            if runs_elsewhere && serves {
                moved.push(at);
            }
        }
    }
    moved
}

/// The record of this rollout while it runs (begun, not ended), if there is one.
fn running_record<'o>(r: &Rollout<'o>) -> Option<&'o RolloutRecord> {
    r.observed.rollout(&r.env.name, r.app).filter(|rec| {
        rec.version == r.version
            && rec.fingerprint == r.fingerprint
            && matches!(rec.phase, Phase::Progressing | Phase::Paused)
    })
}

/// The slot's server in the balancer, if the balancer knows it.
fn server<'o>(observed: &'o ObservedState, balancer: &str, at: &SlotRef) -> Option<&'o Server> {
    observed.server(balancer, &at.backend(), &at.server())
}

/// Which instances of a rollout's version it takes for its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wants {
    /// Any instance of the version (what a revert to an earlier version brings back).
    Version,
    /// An instance of the version with the spec the desired state renders for its slot.
    Spec,
    /// An instance of the version with another spec than that one: what ran before a spec
    /// change that failed (which no commit but an earlier one can start again).
    EarlierSpec,
}

impl Rollout<'_> {
    /// The slot's instance is alive and is what this rollout wants.
    fn runs(&self, at: &SlotRef) -> bool {
        self.observed
            .instance(&at.host, &at.env, &at.app, &at.slot)
            .is_some_and(|i| i.alive && self.is_wanted(at, &i.record))
    }

    fn is_wanted(&self, at: &SlotRef, record: &InstanceRecord) -> bool {
        match self.wants {
            Wants::Version => record.version == self.version,
            Wants::Spec => self.specs.is(at, record),
            Wants::EarlierSpec => record.version == self.version && !self.specs.is(at, record),
        }
    }
}

/// The specs the desired state renders for the slots of one app at one version, each rendered
/// once: per slot, and per host only when the app's templates name the host. A plan asks them of
/// every instance, some more than once.
pub(super) struct Specs<'a> {
    desired: &'a DesiredState,
    version: &'a str,
    per_host: bool,
    /// By slot, then by host ("" when the spec is the same on every host).
    rendered: RefCell<HashMap<String, HashMap<String, Rc<Spec>>>>,
}

impl<'a> Specs<'a> {
    pub(super) fn new(desired: &'a DesiredState, app: &str, version: &'a str) -> Specs<'a> {
        Specs {
            desired,
            version,
            per_host: desired.spec_names_host(app),
            rendered: RefCell::default(),
        }
    }

    /// The spec of slot `at` (of this app) at this version.
    fn of(&self, at: &SlotRef) -> Rc<Spec> {
        let host = if self.per_host { at.host.as_str() } else { "" };
        if let Some(spec) = self
            .rendered
            .borrow()
            .get(&at.slot)
            .and_then(|hosts| hosts.get(host))
        {
            return spec.clone();
        }
        let spec = Rc::new(self.desired.spec(at, self.version));
        self.rendered
            .borrow_mut()
            .entry(at.slot.clone())
            .or_default()
            .insert(host.to_owned(), spec.clone());
        spec
    }

    /// `record` is of this version with the spec the desired state renders for slot `at`
    /// ([`InstanceRecord::is`]).
    pub(super) fn is(&self, at: &SlotRef, record: &InstanceRecord) -> bool {
        record.version == self.version && record.spec.as_ref().is_none_or(|s| *s == *self.of(at))
    }
}

/// The instances of the version of `specs` among `found` (those of one app in one environment)
/// with another spec than the desired state renders for their slots (alive or not): a spec change
/// of the version is under way or failed.
fn earlier_specs<'o>(specs: &Specs, found: &[Found<'o>]) -> Vec<(SlotRef, &'o InstanceRecord)> {
    let mut earlier = Vec::new();
    for f in found {
        let record = &f.instance.record;
        if record.version != specs.version
            || record.spec.is_none()
            || specs.desired.slot_port(f.env, f.app, f.slot).is_none()
        {
            continue;
        }
        let at = SlotRef::new(f.env, f.app, f.host, f.slot);
        if !specs.is(&at, record) {
            earlier.push((at, record));
        }
    }
    earlier
}

/// What `plan` says of a spec change of `version`: the parts of the spec that changed since the
/// instances of `version` that run another one were started (`command changed`, …).
fn spec_changes(specs: &Specs, found: &[Found]) -> Vec<String> {
    let mut changes: Vec<String> = Vec::new();
    for (at, record) in earlier_specs(specs, found) {
        if let Some(spec) = &record.spec {
            for c in specs.of(&at).changes(spec) {
                if !changes.contains(&c) {
                    changes.push(c);
                }
            }
        }
    }
    changes
}

fn serving(observed: &ObservedState, balancer: &str, at: &SlotRef) -> bool {
    server(observed, balancer, at).is_some_and(Server::serving)
}

fn slot_ref(env: &Environment, app: &str, host: &str, slot: &str) -> SlotRef {
    SlotRef::new(&env.name, app, host, slot)
}

/// For an app that runs images: a pull of the version's image on every host where no slot runs
/// it yet, after `after`. Every other step of the rollout comes after them, so a missing image
/// fails the rollout before anything stops.
fn pulls(plan: &mut Plan, r: &Rollout, after: &[NodeIndex]) -> Vec<NodeIndex> {
    r.env
        .hosts
        .iter()
        .filter_map(|host| pull_on(plan, r, host, after))
        .collect()
}

/// The pull of the version's image on `host` after `after`, unless the app runs no images or a
/// slot there runs the version.
fn pull_on(plan: &mut Plan, r: &Rollout, host: &str, after: &[NodeIndex]) -> Option<NodeIndex> {
    if !r.image
        || r.d
            .slots
            .iter()
            .any(|s| r.runs(&slot_ref(r.env, r.app, host, &s.name)))
    {
        return None;
    }
    let pull = Action::Pull {
        host: host.to_owned(),
        env: r.env.name.clone(),
        app: r.app.to_owned(),
        version: r.version.to_owned(),
    };
    Some(plan.add(pull, after))
}

/// One app of one environment going to one version, as seen in one snapshot.
struct Rollout<'a> {
    env: &'a Environment,
    app: &'a str,
    d: &'a Deployment,
    version: &'a str,
    /// Which instances of `version` count as this rollout's.
    wants: Wants,
    /// The specs of `version`.
    specs: Specs<'a>,
    observed: &'a ObservedState,
    /// The instances of the app in the environment.
    found: &'a [Found<'a>],
    fingerprint: String,
    /// The app's bake.
    bake: Duration,
    /// The app runs images: each host pulls the version's before it starts it.
    image: bool,
}

/// One slot of a host as a snapshot shows it.
struct SlotSeen<'o> {
    at: SlotRef,
    instance: Option<&'o Instance>,
    server: Option<&'o Server>,
    /// Its instance is alive and is what the rollout wants.
    wanted: bool,
}

impl SlotSeen<'_> {
    fn serving(&self) -> bool {
        self.server.is_some_and(Server::serving)
    }
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
    // Each slot looked up once: a plan asks this of every host of every deployment.
    let seen: Vec<SlotSeen> = d
        .slots
        .iter()
        .map(|s| {
            let at = slot_ref(env, app, host, &s.name);
            let instance = observed.instance(host, &at.env, &at.app, &at.slot);
            SlotSeen {
                wanted: instance.is_some_and(|i| i.alive && r.is_wanted(&at, &i.record)),
                server: server(observed, balancer, &at),
                instance,
                at,
            }
        })
        .collect();
    // Prefer a slot that already runs the version (serving first), then an empty idle one.
    let target = seen
        .iter()
        .find(|s| s.wanted && s.serving())
        .or_else(|| seen.iter().find(|s| s.wanted))
        .or_else(|| seen.iter().find(|s| !s.serving() && s.instance.is_none()))
        // A dead instance's slot before a live old one (which may be all that can still serve).
        .or_else(|| {
            seen.iter()
                .find(|s| !s.serving() && s.instance.is_some_and(|i| !i.alive))
        })
        .or_else(|| seen.iter().find(|s| !s.serving()))
        // Every slot serves: reuse the one with the least weight (drained first, below).
        .or_else(|| seen.iter().min_by_key(|s| s.server.map_or(0, |s| s.weight)))
        .expect("an app has two slots");
    let mut last = after.to_vec();
    let mut ready_steps = Vec::new();
    let mut add = |plan: &mut Plan, action: Action, last: &mut Vec<NodeIndex>| {
        let n = plan.add(action, last);
        ready_steps.push(n);
        *last = vec![n];
    };
    if !target.wanted {
        if let Some(old) = target.instance {
            // Never signal an instance the balancer can still send requests to.
            if target.server.is_some_and(|s| s.admin != Admin::Maint) {
                add(
                    plan,
                    Action::Drain {
                        balancer: balancer.clone(),
                        at: target.at.clone(),
                    },
                    &mut last,
                );
            }
            add(
                plan,
                Action::Stop {
                    at: target.at.clone(),
                    version: old.record.version.clone(),
                },
                &mut last,
            );
        }
        add(
            plan,
            Action::Start {
                at: target.at.clone(),
                version: version.to_owned(),
            },
            &mut last,
        );
    }
    let enabled = target.server.is_some_and(|s| s.checked_up());
    let ready = target.wanted && target.instance.is_some_and(|i| i.ready == Some(true));
    if !enabled || !ready {
        add(
            plan,
            Action::Probe {
                at: target.at.clone(),
            },
            &mut last,
        );
    }
    if !enabled || !target.wanted {
        add(
            plan,
            Action::Enable {
                balancer: balancer.clone(),
                at: target.at.clone(),
            },
            &mut last,
        );
    }
    let mut prep = HostPrep {
        shift_needed: target.server.is_none_or(|s| s.weight != FULL_WEIGHT) || !target.wanted,
        target: target.at.clone(),
        ready_steps,
        from: Vec::new(),
        retire: Vec::new(),
    };
    for other in seen.iter().filter(|s| s.at != prep.target) {
        if other.server.is_some_and(|s| s.weight > 0) {
            prep.shift_needed = true;
            prep.from.push(other.at.clone());
        }
        if other.server.is_some_and(|s| s.admin != Admin::Maint) || other.instance.is_some() {
            prep.retire.push(other.at.clone());
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
fn blue_green(plan: &mut Plan, r: &Rollout, roots: &[NodeIndex]) -> Vec<NodeIndex> {
    let env = r.env;
    let base: Vec<NodeIndex> = roots.to_vec();
    let preps: Vec<HostPrep> = env
        .hosts
        .iter()
        .map(|h| prepare_host(plan, r, h, &base))
        .collect();
    let mut before: Vec<NodeIndex> = base.clone();
    before.extend(preps.iter().flat_map(|p| p.ready_steps.last().copied()));
    let shift = shift_to_targets(plan, r, &preps, &before);
    let after = shift.map_or(before, |n| vec![n]);
    bake_and_retire(plan, r, preps, shift.is_some(), after)
}

/// After the shift (if any, `moved`): the bake, then the other slots of `preps` drained and
/// stopped; returns the last steps.
fn bake_and_retire(
    plan: &mut Plan,
    r: &Rollout,
    preps: Vec<HostPrep>,
    moved: bool,
    after: Vec<NodeIndex>,
) -> Vec<NodeIndex> {
    let after = bake(plan, r, &preps, moved, after);
    let old: Vec<SlotRef> = preps.into_iter().flat_map(|p| p.retire).collect();
    let retired = retire(plan, &r.env.balancer, &old, r.observed, &after);
    if retired.is_empty() {
        after
    } else {
        retired
    }
}

/// After traffic moved to the targets of `preps` (`moved`: in this plan), a bake of the app's
/// length: when there is something to take the traffic back to (old instances that still run, or
/// a last good version to bring back), or when a bake of these servers began and did not pass (a
/// resumed run). Returns the steps the old slots retire after.
fn bake(
    plan: &mut Plan,
    r: &Rollout,
    preps: &[HostPrep],
    moved: bool,
    after: Vec<NodeIndex>,
) -> Vec<NodeIndex> {
    let Rollout {
        env,
        app,
        version,
        observed,
        ..
    } = *r;
    if r.bake.is_zero() || preps.is_empty() {
        return after;
    }
    let new: Vec<SlotRef> = preps.iter().map(|p| p.target.clone()).collect();
    let mut old: Vec<SlotRef> = preps
        .iter()
        .flat_map(|p| p.from.iter().chain(&p.retire))
        .filter(|at| {
            observed
                .instance(&at.host, &at.env, &at.app, &at.slot)
                .is_some_and(|i| i.alive)
        })
        .cloned()
        .collect();
    old.sort();
    old.dedup();
    let names: Vec<String> = new.iter().map(SlotRef::server).collect();
    let record = observed
        .rollout(&env.name, app)
        .filter(|rec| rec.version == version && rec.fingerprint == r.fingerprint);
    let recorded = record.and_then(|rec| rec.bake.as_ref().filter(|b| b.servers == names));
    let wanted = if moved {
        !old.is_empty() || last_good(observed, r.found, &env.name, app, version).is_some()
    } else {
        // Traffic moved in an earlier run: a bake of these servers that began and did not pass
        // goes on; without one, old instances still running are baked against unless this
        // rollout is recorded as done.
        let done = record.is_some_and(|rec| rec.phase == Phase::Succeeded && rec.bake.is_none());
        recorded.is_some_and(|b| !b.passed)
            || (!old.is_empty() && !done && !recorded.is_some_and(|b| b.passed))
    };
    if !wanted {
        return after;
    }
    let step = Action::Bake {
        balancer: env.balancer.clone(),
        env: env.name.clone(),
        app: app.to_owned(),
        version: version.to_owned(),
        bake: r.bake,
        new,
        old,
        resume: !moved,
    };
    vec![plan.add(step, &after)]
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
fn rolling(plan: &mut Plan, r: &Rollout, batch: usize, roots: &[NodeIndex]) -> Vec<NodeIndex> {
    let Rollout { env, observed, .. } = *r;
    let mut after: Vec<NodeIndex> = roots.to_vec();
    for hosts in env.hosts.chunks(batch.max(1)) {
        let mut shifted = Vec::new();
        let mut preps: Vec<HostPrep> = Vec::new();
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
            if !prep.ready_steps.is_empty() || prep.shift_needed {
                shifted.extend(last);
            }
            preps.push(prep);
        }
        // The batch bakes as one, then its hosts retire their old slots.
        let moved = preps.iter().any(|p| p.shift_needed);
        let from = if shifted.is_empty() {
            after.clone()
        } else {
            shifted.clone()
        };
        let baked = bake(plan, r, &preps, moved, from);
        let mut ends = Vec::new();
        for prep in &preps {
            ends.extend(retire(plan, &env.balancer, &prep.retire, observed, &baked));
        }
        if ends.is_empty() && !shifted.is_empty() {
            ends = baked;
        }
        if !ends.is_empty() {
            after = ends;
        }
    }
    after
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
    if !canary.iter().all(|at| r.runs(at)) {
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
/// `Pause` waits and analyses; after the last step one shift gives the canary everything, it bakes,
/// and the old slots are retired. With nothing else serving (a first deploy) there
/// is nothing to compare against, and it goes as blue-green does.
fn canary(
    plan: &mut Plan,
    r: &Rollout,
    steps: &[CanaryStep],
    roots: &[NodeIndex],
) -> Vec<NodeIndex> {
    let Rollout {
        env, app, version, ..
    } = *r;
    let base: Vec<NodeIndex> = roots.to_vec();
    let preps: Vec<HostPrep> = env
        .hosts
        .iter()
        .map(|h| prepare_host(plan, r, h, &base))
        .collect();
    let record = running_record(r);
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
    let shift = shift_to_targets(plan, r, &preps, &after);
    if let Some(shift) = shift {
        after = vec![shift];
    }
    bake_and_retire(plan, r, preps, shift.is_some(), after)
}

/// What a cleanup does with the traffic the version of a failed rollout has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cleanup {
    /// The version failed: the last good version takes the traffic back, started again where it
    /// does not run.
    Revert,
    /// The version failed, and its strategy holds what the rollout finished (`on_failure: hold`).
    Hold,
    /// The failure was not the version's: what serves keeps serving.
    Keep,
}

/// After a failed or aborted rollout to `version`. With [`Cleanup::Revert`], the last good version
/// ([`last_good`]) serves again on every host where `version` has weight, where nothing else
/// serves, or where it has a canary's partial weight: it is started in its slot where it does not
/// run, probed and enabled (the steps of a forward rollout), then a shift per host gives it that
/// host's traffic (a host that cannot be restored holds up no other). Then every instance of
/// `version` is taken out and stopped. Otherwise (or without a last good version), instances of
/// `version` that get traffic keep it, and only the others are stopped. Other versions are left
/// alone. A failed spec change (`version` runs with another spec somewhere) reverts to the
/// instances of the earlier spec where they still run, and holds elsewhere: this desired state
/// can start only its own spec.
pub fn cleanup(
    desired: &DesiredState,
    observed: &ObservedState,
    env: &str,
    app: &str,
    version: &str,
    mode: Cleanup,
) -> Plan {
    let mut plan = Plan::default();
    let (Some(environment), Some(d)) =
        (desired.environments.get(env), desired.deployment(env, app))
    else {
        return plan;
    };
    let balancer = &environment.balancer;
    let slots = |host: &str| -> Vec<SlotRef> {
        d.slots
            .iter()
            .map(|s| slot_ref(environment, app, host, &s.name))
            .collect()
    };
    let failed_specs = Specs::new(desired, app, version);
    let runs_failed = |at: &SlotRef| {
        observed
            .instance(&at.host, env, app, &at.slot)
            .is_some_and(|i| failed_specs.is(at, &i.record))
    };
    let weighted = |at: &SlotRef| {
        server(observed, balancer, at).is_some_and(|s| s.weight > 0 && s.admin != Admin::Maint)
    };
    let failed: Vec<SlotRef> = environment
        .hosts
        .iter()
        .flat_map(|h| slots(h))
        .filter(|at| runs_failed(at))
        .collect();
    let kept: Vec<SlotRef> = failed.iter().filter(|at| weighted(at)).cloned().collect();
    // The steps after which each failed slot that has weight may be taken out.
    let mut shifted: BTreeMap<SlotRef, Vec<NodeIndex>> = BTreeMap::new();
    let mut retire_now: Vec<SlotRef> = failed.clone();
    let found = observed.instances_of(env, app);
    let spec_change = !earlier_specs(&failed_specs, &found).is_empty();
    let good = if spec_change {
        Some(version.to_owned())
    } else {
        last_good(observed, &found, env, app, version)
    };
    match (mode, good.as_deref()) {
        (Cleanup::Revert, Some(good)) => {
            let r = Rollout {
                env: environment,
                app,
                d,
                version: good,
                wants: if spec_change {
                    Wants::EarlierSpec
                } else {
                    Wants::Version
                },
                specs: Specs::new(desired, app, good),
                observed,
                found: &found,
                fingerprint: String::new(),
                bake: Duration::ZERO,
                image: desired.apps[app].runtime.image().is_some(),
            };
            let partial = |at: &SlotRef| {
                r.runs(at)
                    && server(observed, balancer, at).is_some_and(|s| s.weight != FULL_WEIGHT)
            };
            let mut held: Vec<SlotRef> = Vec::new();
            for host in &environment.hosts {
                let here = slots(host);
                let needed = here
                    .iter()
                    .any(|at| (runs_failed(at) && weighted(at)) || partial(at))
                    || !here
                        .iter()
                        .any(|at| !runs_failed(at) && serving(observed, balancer, at));
                if !needed {
                    continue;
                }
                if spec_change && !here.iter().any(|at| r.runs(at)) {
                    held.extend(
                        here.iter()
                            .filter(|at| runs_failed(at) && weighted(at))
                            .cloned(),
                    );
                    continue;
                }
                let pulled: Vec<NodeIndex> =
                    pull_on(&mut plan, &r, host, &[]).into_iter().collect();
                let prep = prepare_host(&mut plan, &r, host, &pulled);
                let ready: Vec<NodeIndex> = prep.ready_steps.last().copied().into_iter().collect();
                let shift = shift_to_targets(&mut plan, &r, std::slice::from_ref(&prep), &ready);
                for at in here.iter().filter(|at| runs_failed(at)) {
                    shifted.insert(at.clone(), shift.into_iter().collect());
                }
                // A slot the last good version now takes is not the failed version's any more.
                retire_now.retain(|at| *at != prep.target);
            }
            if !held.is_empty() {
                plan.stuck(format!(
                    "{env}/{app} {version} keeps its traffic on [{}]: its spec changed, no instance of its earlier spec runs there, and only a commit with that spec can start one",
                    held.iter()
                        .map(SlotRef::server)
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                retire_now.retain(|at| !held.contains(at));
            }
        }
        (Cleanup::Revert | Cleanup::Hold, _) if !kept.is_empty() => {
            let why = if mode == Cleanup::Hold {
                "its strategy holds what a failed rollout finished (on_failure: hold)"
            } else {
                "no earlier version is known to bring back"
            };
            plan.stuck(format!(
                "{env}/{app} {version} keeps its traffic on [{}]: {why}",
                kept.iter()
                    .map(SlotRef::server)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            retire_now.retain(|at| !kept.contains(at));
        }
        // Not the version's failure: what serves keeps serving.
        _ => retire_now.retain(|at| !kept.contains(at)),
    }
    retire_now.sort();
    for at in retire_now {
        let mut last = match shifted.get(&at) {
            Some(after) if weighted(&at) => after.clone(),
            _ => Vec::new(),
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
