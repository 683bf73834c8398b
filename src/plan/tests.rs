//! Planner tests on fake observed snapshots: whole plans against rendered snapshots, ordering with a
//! happens-before helper.

use super::*;
use crate::desired::DesiredState;
use crate::observed::{Admin, Check, Instance, ObservedState, Server, ServerCounters};
use crate::state::{Phase, RolloutRecord};
use crate::testing::{two_hosts, two_hosts_yaml};
use std::collections::BTreeSet;

fn desired() -> DesiredState {
    two_hosts("blue-green")
}

fn stat(weight: u32, admin: Admin, up: bool) -> Server {
    let status = match (admin, up) {
        (Admin::Maint, _) => "MAINT",
        (_, true) => "UP",
        (_, false) => "DOWN",
    };
    Server {
        admin,
        up,
        check: if up { Check::Passed } else { Check::None },
        weight,
        sessions: 0,
        counters: ServerCounters::default(),
        label: status.into(),
    }
}

struct World(ObservedState);

impl World {
    fn new() -> Self {
        World(ObservedState::default())
    }
    fn instance(mut self, host: &str, slot: &str, version: &str, alive: bool, ready: bool) -> Self {
        let port = if slot == "blue" { 8000 } else { 8001 };
        let record = crate::testing::record("prod", "api", slot, version, port);
        self.0
            .hosts
            .entry(host.into())
            .or_default()
            .instances
            .insert(
                ("prod".into(), "api".into(), slot.into()),
                Instance {
                    record,
                    alive,
                    ready: alive.then_some(ready),
                },
            );
        self
    }
    /// The instance in `slot` on `host` was started with `spec`.
    fn spec(mut self, host: &str, slot: &str, spec: crate::desired::spec::Spec) -> Self {
        let key = ("prod".to_owned(), "api".to_owned(), slot.to_owned());
        let i = self.0.hosts.get_mut(host).unwrap().instances.get_mut(&key);
        i.unwrap().record.spec = Some(spec);
        self
    }
    fn server(mut self, host: &str, slot: &str, weight: u32, admin: Admin, up: bool) -> Self {
        self.0
            .balancers
            .entry("edge".into())
            .or_default()
            .servers
            .insert(
                ("kf_prod_api".into(), format!("{host}_{slot}")),
                stat(weight, admin, up),
            );
        self
    }
    /// Both hosts serve `version` from blue; green is in maintenance with nothing running.
    fn serving_blue(self, version: &str) -> Self {
        self.instance("web-1", "blue", version, true, true)
            .instance("web-2", "blue", version, true, true)
            .server("web-1", "blue", 100, Admin::Ready, true)
            .server("web-2", "blue", 100, Admin::Ready, true)
            .server("web-1", "green", 0, Admin::Maint, false)
            .server("web-2", "green", 0, Admin::Maint, false)
    }
    fn plan(&self, stale: &[&str]) -> Plan {
        let stale = stale.iter().map(|s| s.to_string()).collect();
        build(&desired(), &self.0, &stale, &Scope::default())
    }
}

/// Whether step `a` (found by its text) must finish before step `b` starts.
fn happens_before(plan: &Plan, a: &str, b: &str) -> bool {
    let find = |text: &str| {
        plan.graph
            .node_indices()
            .find(|n| plan.graph[*n].to_string() == text)
            .unwrap_or_else(|| panic!("no step {text:?} in\n{}", plan.render_text()))
    };
    petgraph::algo::has_path_connecting(&plan.graph, find(a), find(b), None)
}

#[test]
fn first_deploy_starts_blue_everywhere_then_shifts() {
    let plan = World::new().plan(&["edge"]);
    assert_eq!(
        plan.render_text(),
        "\
9 steps:
   1. apply config and reload balancer edge
   2. start prod/api 2.0 in slot blue on web-1  (after 1)
   3. probe prod/api slot blue on web-1  (after 2)
   4. enable kf_prod_api/web-1_blue on edge (weight 0, wait UP)  (after 3)
   5. start prod/api 2.0 in slot blue on web-2  (after 1)
   6. probe prod/api slot blue on web-2  (after 5)
   7. enable kf_prod_api/web-2_blue on edge (weight 0, wait UP)  (after 6)
   8. shift prod/api traffic on edge to [web-1_blue, web-2_blue]  (after 1, 4, 7)
   9. record prod/api 2.0 as succeeded  (after 8)
"
    );
}

#[test]
fn version_change_goes_to_the_idle_slot_and_retires_the_old_one_after_the_shift() {
    let plan = World::new().serving_blue("1.0").plan(&[]);
    assert_eq!(
        plan.render_text(),
        "\
13 steps:
   1. start prod/api 2.0 in slot green on web-1
   2. probe prod/api slot green on web-1  (after 1)
   3. enable kf_prod_api/web-1_green on edge (weight 0, wait UP)  (after 2)
   4. start prod/api 2.0 in slot green on web-2
   5. probe prod/api slot green on web-2  (after 4)
   6. enable kf_prod_api/web-2_green on edge (weight 0, wait UP)  (after 5)
   7. shift prod/api traffic on edge to [web-1_green, web-2_green] from [web-1_blue, web-2_blue]  (after 3, 6)
   8. bake prod/api 2.0 for 5s: watch [web-1_green, web-2_green], [web-1_blue, web-2_blue] kept running to take traffic back  (after 7)
   9. drain kf_prod_api/web-1_blue on edge, then maint  (after 8)
  10. stop prod/api 1.0 in slot blue on web-1  (after 9)
  11. drain kf_prod_api/web-2_blue on edge, then maint  (after 8)
  12. stop prod/api 1.0 in slot blue on web-2  (after 11)
  13. record prod/api 2.0 as succeeded  (after 10, 12)
"
    );
    // Traffic never moves before every new instance passed the probe and is UP in the balancer, and
    // nothing old is touched before the shift and the bake.
    let shift = "shift prod/api traffic on edge to [web-1_green, web-2_green] from [web-1_blue, web-2_blue]";
    for host in ["web-1", "web-2"] {
        assert!(happens_before(
            &plan,
            &format!("probe prod/api slot green on {host}"),
            shift
        ));
        assert!(happens_before(
            &plan,
            &format!("enable kf_prod_api/{host}_green on edge (weight 0, wait UP)"),
            shift
        ));
        assert!(happens_before(
            &plan,
            "bake prod/api 2.0 for 5s: watch [web-1_green, web-2_green], [web-1_blue, web-2_blue] kept running to take traffic back",
            &format!("drain kf_prod_api/{host}_blue on edge, then maint")
        ));
        assert!(happens_before(
            &plan,
            &format!("drain kf_prod_api/{host}_blue on edge, then maint"),
            &format!("stop prod/api 1.0 in slot blue on {host}")
        ));
    }
}

#[test]
fn converged_state_plans_nothing() {
    let world = World::new().serving_blue("2.0");
    let plan = world.plan(&[]);
    assert!(plan.is_empty(), "{}", plan.render_text());
    assert_eq!(plan.render_text(), "in sync: nothing to do\n");
    assert_eq!(plan.render_json()["in_sync"], true);
}

#[test]
fn a_rollout_killed_midway_resumes_without_redoing_what_is_done() {
    // web-1's green runs 2.0 and is enabled; web-2's green was never started.
    let world = World::new()
        .serving_blue("1.0")
        .instance("web-1", "green", "2.0", true, true)
        .server("web-1", "green", 0, Admin::Ready, true);
    let text = world.plan(&[]).render_text();
    assert!(
        !text.contains("start prod/api 2.0 in slot green on web-1"),
        "{text}"
    );
    assert!(!text.contains("enable kf_prod_api/web-1_green"), "{text}");
    assert!(
        text.contains("start prod/api 2.0 in slot green on web-2"),
        "{text}"
    );
    assert!(
        text.contains("shift prod/api traffic on edge to [web-1_green, web-2_green]"),
        "{text}"
    );
}

#[test]
fn a_new_instance_that_died_is_replaced() {
    let world = World::new()
        .serving_blue("1.0")
        .instance("web-1", "green", "2.0", false, false);
    let text = world.plan(&[]).render_text();
    assert!(
        text.contains("stop prod/api 2.0 in slot green on web-1"),
        "{text}"
    );
    let plan = world.plan(&[]);
    assert!(happens_before(
        &plan,
        "stop prod/api 2.0 in slot green on web-1",
        "start prod/api 2.0 in slot green on web-1"
    ));
}

#[test]
fn after_the_shift_the_old_slot_is_retired_once_the_bake_passed() {
    let desired = desired();
    let mut world = World::new()
        .instance("web-1", "green", "2.0", true, true)
        .instance("web-2", "green", "2.0", true, true)
        .instance("web-1", "blue", "1.0", true, true)
        .server("web-1", "green", 100, Admin::Ready, true)
        .server("web-2", "green", 100, Admin::Ready, true)
        .server("web-1", "blue", 0, Admin::Drain, true)
        .server("web-2", "blue", 0, Admin::Maint, false);
    // A run killed in its bake (or before it recorded one): the bake runs again, then the retire.
    let bake = "bake prod/api 2.0 for 5s (what is left of it): watch [web-1_green, web-2_green], [web-1_blue] kept running to take traffic back";
    let resumed = bake;
    assert_eq!(
        world.plan(&[]).render_text(),
        format!(
            "\
4 steps:
   1. {resumed}
   2. drain kf_prod_api/web-1_blue on edge, then maint  (after 1)
   3. stop prod/api 1.0 in slot blue on web-1  (after 2)
   4. record prod/api 2.0 as succeeded  (after 3)
"
        )
    );
    let mut rec = record(&desired, "2.0", Phase::Progressing, 0);
    rec.bake = Some(crate::state::Bake {
        servers: vec!["web-1_green".into(), "web-2_green".into()],
        started_at: 1,
        base: Default::default(),
        passed: false,
    });
    world
        .0
        .rollouts
        .insert(("prod".into(), "api".into()), rec.clone());
    assert!(world.plan(&[]).render_text().contains(bake));
    // The bake passed: only the old slot's retirement is left.
    rec.bake.as_mut().unwrap().passed = true;
    world.0.rollouts.insert(("prod".into(), "api".into()), rec);
    assert_eq!(
        world.plan(&[]).render_text(),
        "\
3 steps:
   1. drain kf_prod_api/web-1_blue on edge, then maint
   2. stop prod/api 1.0 in slot blue on web-1  (after 1)
   3. record prod/api 2.0 as succeeded  (after 2)
"
    );
}

#[test]
fn cleanup_takes_out_what_gets_no_traffic_and_leaves_what_serves() {
    let world = World::new()
        .serving_blue("1.0")
        .instance("web-1", "green", "2.0", true, false)
        .server("web-1", "green", 0, Admin::Ready, true);
    let plan = cleanup(&desired(), &world.0, "prod", "api", "2.0", Cleanup::Keep);
    assert_eq!(
        plan.render_text(),
        "\
2 steps:
   1. drain kf_prod_api/web-1_green on edge, then maint
   2. stop prod/api 2.0 in slot green on web-1  (after 1)
"
    );
}

#[test]
fn dot_and_json_renderings_cover_every_step_and_edge() {
    let plan = World::new().serving_blue("1.0").plan(&["edge"]);
    let dot = plan.render_dot();
    assert!(dot.starts_with("digraph plan {"));
    assert_eq!(dot.matches(" -> ").count(), plan.graph.edge_count());
    assert_eq!(dot.matches("[label=").count(), plan.graph.node_count());
    let json = plan.render_json();
    assert_eq!(json["in_sync"], false);
    assert_eq!(
        json["steps"].as_array().unwrap().len(),
        plan.graph.node_count()
    );
    assert_eq!(json["steps"][0]["detail"]["action"], "apply-config");
}

#[test]
fn scope_limits_the_plan() {
    let world = World::new();
    let scope = Scope {
        env: Some("staging".into()),
        ..Scope::default()
    };
    assert!(build(&desired(), &world.0, &BTreeSet::new(), &scope).is_empty());
    // An environment left out (suspended) gets no step either.
    let except = Scope {
        except: vec!["prod".into()],
        ..Scope::default()
    };
    assert!(build(&desired(), &world.0, &BTreeSet::new(), &except).is_empty());
    assert!(!build(&desired(), &world.0, &BTreeSet::new(), &Scope::default()).is_empty());
}

fn rolling_desired(batch: &str) -> DesiredState {
    let yaml = two_hosts_yaml(&format!("{{ rolling: {{ batch: {batch} }} }}"))
        .replace("  lb-1:", "  web-3: { address: 192.0.2.13 }\n  lb-1:")
        .replace("hosts: [web-1, web-2]", "hosts: [web-1, web-2, web-3]");
    crate::testing::desired(&yaml)
}

/// Three hosts all serving `version` from blue.
fn three_serving_blue(version: &str) -> World {
    let mut w = World::new().serving_blue(version);
    w = w
        .instance("web-3", "blue", version, true, true)
        .server("web-3", "blue", 100, Admin::Ready, true)
        .server("web-3", "green", 0, Admin::Maint, false);
    w
}

#[test]
fn rolling_one_host_at_a_time_moves_each_hosts_own_weight() {
    let world = three_serving_blue("1.0");
    let plan = build(
        &rolling_desired("1"),
        &world.0,
        &BTreeSet::new(),
        &Scope::default(),
    );
    let text = plan.render_text();
    assert!(text.starts_with("22 steps:\n"), "{text}");
    for host in ["web-1", "web-2", "web-3"] {
        let shift = format!("shift prod/api traffic on edge to [{host}_green] from [{host}_blue]");
        let bake = format!("bake prod/api 2.0 for 5s: watch [{host}_green], [{host}_blue] kept running to take traffic back");
        assert!(happens_before(
            &plan,
            &format!("enable kf_prod_api/{host}_green on edge (weight 0, wait UP)"),
            &shift
        ));
        // Each batch bakes after its shift, and only then retires its old slot.
        assert!(happens_before(&plan, &shift, &bake));
        assert!(happens_before(
            &plan,
            &bake,
            &format!("drain kf_prod_api/{host}_blue on edge, then maint")
        ));
        assert!(happens_before(
            &plan,
            &format!("drain kf_prod_api/{host}_blue on edge, then maint"),
            &format!("stop prod/api 1.0 in slot blue on {host}")
        ));
    }
    // One batch at a time: the next host starts only after the previous one is fully done.
    assert!(happens_before(
        &plan,
        "stop prod/api 1.0 in slot blue on web-1",
        "start prod/api 2.0 in slot green on web-2"
    ));
    assert!(happens_before(
        &plan,
        "stop prod/api 1.0 in slot blue on web-2",
        "start prod/api 2.0 in slot green on web-3"
    ));
}

#[test]
fn rolling_in_batches_of_two_changes_two_hosts_together() {
    let world = three_serving_blue("1.0");
    let plan = build(
        &rolling_desired("2"),
        &world.0,
        &BTreeSet::new(),
        &Scope::default(),
    );
    assert!(!happens_before(
        &plan,
        "stop prod/api 1.0 in slot blue on web-1",
        "start prod/api 2.0 in slot green on web-2"
    ));
    assert!(!happens_before(
        &plan,
        "stop prod/api 1.0 in slot blue on web-2",
        "start prod/api 2.0 in slot green on web-1"
    ));
    for first in ["web-1", "web-2"] {
        assert!(happens_before(
            &plan,
            &format!("stop prod/api 1.0 in slot blue on {first}"),
            "start prod/api 2.0 in slot green on web-3"
        ));
    }
}

#[test]
fn rolling_resumes_with_the_hosts_not_done_yet() {
    // web-1 is done (green 2.0 at full weight, blue stopped); web-2 and web-3 are not.
    let mut world = World::new()
        .instance("web-1", "green", "2.0", true, true)
        .server("web-1", "green", 100, Admin::Ready, true)
        .server("web-1", "blue", 0, Admin::Maint, false)
        .instance("web-2", "blue", "1.0", true, true)
        .server("web-2", "blue", 100, Admin::Ready, true)
        .server("web-2", "green", 0, Admin::Maint, false);
    world = world
        .instance("web-3", "blue", "1.0", true, true)
        .server("web-3", "blue", 100, Admin::Ready, true)
        .server("web-3", "green", 0, Admin::Maint, false);
    let plan = build(
        &rolling_desired("1"),
        &world.0,
        &BTreeSet::new(),
        &Scope::default(),
    );
    let text = plan.render_text();
    assert!(!text.contains("on web-1"), "web-1 is done:\n{text}");
    assert!(text.starts_with("15 steps:\n"), "{text}");
    assert!(happens_before(
        &plan,
        "stop prod/api 1.0 in slot blue on web-2",
        "start prod/api 2.0 in slot green on web-3"
    ));
    // Converged: nothing.
    let done = World::new()
        .instance("web-1", "green", "2.0", true, true)
        .instance("web-2", "green", "2.0", true, true)
        .instance("web-3", "green", "2.0", true, true)
        .server("web-1", "green", 100, Admin::Ready, true)
        .server("web-2", "green", 100, Admin::Ready, true)
        .server("web-3", "green", 100, Admin::Ready, true)
        .server("web-1", "blue", 0, Admin::Maint, false)
        .server("web-2", "blue", 0, Admin::Maint, false)
        .server("web-3", "blue", 0, Admin::Maint, false);
    assert!(build(
        &rolling_desired("1"),
        &done.0,
        &BTreeSet::new(),
        &Scope::default()
    )
    .is_empty());
}

fn canary_desired() -> DesiredState {
    two_hosts("{ canary: { steps: [{ weight: 10, pause: 1m }, { weight: 50 }, { pause: {} }] } }")
}

fn record(desired: &DesiredState, version: &str, phase: Phase, step: usize) -> RolloutRecord {
    RolloutRecord {
        env: "prod".into(),
        app: "api".into(),
        version: version.into(),
        revision: "r".into(),
        fingerprint: desired.fingerprint("prod", "api"),
        strategy: "canary".into(),
        phase,
        step,
        step_started_at: 0,
        step_base: Default::default(),
        started_at: 0,
        updated_at: 1,
        promote: Default::default(),
        analysis: vec![],
        outcome: Some("analysis failed".into()),
        last_good: None,
        bake: None,
        stored: Default::default(),
    }
}

#[test]
fn a_canary_walks_its_steps_once_every_host_is_ready() {
    let desired = canary_desired();
    let world = World::new().serving_blue("1.0");
    let plan = build(&desired, &world.0, &BTreeSet::new(), &Scope::default());
    assert_eq!(
        plan.render_text(),
        "\
17 steps:
   1. start prod/api 2.0 in slot green on web-1
   2. probe prod/api slot green on web-1  (after 1)
   3. enable kf_prod_api/web-1_green on edge (weight 0, wait UP)  (after 2)
   4. start prod/api 2.0 in slot green on web-2
   5. probe prod/api slot green on web-2  (after 4)
   6. enable kf_prod_api/web-2_green on edge (weight 0, wait UP)  (after 5)
   7. canary step 0: prod/api 2.0 gets 10% on edge ([web-1_green, web-2_green] weight 10, [web-1_blue, web-2_blue] weight 90)  (after 3, 6)
   8. canary step 0: pause prod/api for 1m, then analyse  (after 7)
   9. canary step 1: prod/api 2.0 gets 50% on edge ([web-1_green, web-2_green] weight 50, [web-1_blue, web-2_blue] weight 50)  (after 8)
  10. canary step 2: wait until `kube-free promote api --env prod`  (after 9)
  11. shift prod/api traffic on edge to [web-1_green, web-2_green] from [web-1_blue, web-2_blue]  (after 10)
  12. bake prod/api 2.0 for 5s: watch [web-1_green, web-2_green], [web-1_blue, web-2_blue] kept running to take traffic back  (after 11)
  13. drain kf_prod_api/web-1_blue on edge, then maint  (after 12)
  14. stop prod/api 1.0 in slot blue on web-1  (after 13)
  15. drain kf_prod_api/web-2_blue on edge, then maint  (after 12)
  16. stop prod/api 1.0 in slot blue on web-2  (after 15)
  17. record prod/api 2.0 as succeeded  (after 14, 16)
"
    );
}

/// Both hosts: blue runs 1.0, green runs `green` and gets `canary`% (blue the rest).
fn canary_world(green: &str, canary: u32) -> World {
    World::new()
        .instance("web-1", "blue", "1.0", true, true)
        .instance("web-2", "blue", "1.0", true, true)
        .instance("web-1", "green", green, true, true)
        .instance("web-2", "green", green, true, true)
        .server("web-1", "blue", 100 - canary, Admin::Ready, true)
        .server("web-2", "blue", 100 - canary, Admin::Ready, true)
        .server("web-1", "green", canary, Admin::Ready, true)
        .server("web-2", "green", canary, Admin::Ready, true)
}

#[test]
fn a_canary_resumes_at_the_step_its_record_names() {
    let desired = canary_desired();
    let mut world = canary_world("2.0", 50);
    world.0.rollouts.insert(
        ("prod".into(), "api".into()),
        record(&desired, "2.0", Phase::Paused, 2),
    );
    let text = build(&desired, &world.0, &BTreeSet::new(), &Scope::default()).render_text();
    assert!(
        text.starts_with(
            "8 steps:\n   1. canary step 2: wait until `kube-free promote api --env prod`\n"
        ),
        "{text}"
    );
    assert!(
        !text.contains("step 0") && !text.contains("step 1"),
        "{text}"
    );

    // A record of another version (superseded, still in green at 50%) starts over at step 0, after
    // the slot is reused: the weights are 1.5's, not 2.0's.
    let mut world = canary_world("1.5", 50);
    world.0.rollouts.insert(
        ("prod".into(), "api".into()),
        record(&desired, "1.5", Phase::Progressing, 2),
    );
    let text = build(&desired, &world.0, &BTreeSet::new(), &Scope::default()).render_text();
    assert!(
        text.contains("canary step 0: prod/api 2.0 gets 10%"),
        "{text}"
    );
}

#[test]
fn a_canary_without_its_record_resumes_at_the_step_the_balancer_shows() {
    let desired = canary_desired();
    let world = |canary: u32| canary_world("2.0", canary);
    let first_step = |w: World| {
        let text = build(&desired, &w.0, &BTreeSet::new(), &Scope::default()).render_text();
        text.lines().nth(1).unwrap_or_default().to_owned()
    };
    // At 50% (step 1's weight), the lost record's step is step 1: the canary does not fall back to
    // 10%, and step 1's weigh runs again.
    assert_eq!(
        first_step(world(50)),
        "   1. canary step 1: prod/api 2.0 gets 50% on edge ([web-1_green, web-2_green] weight 50, [web-1_blue, web-2_blue] weight 50)"
    );
    // At 10%, step 0 (its pause runs again in full).
    assert!(first_step(world(10)).contains("canary step 0"));
    // A share no step sets, or servers that disagree, start at step 0.
    assert!(first_step(world(30)).contains("canary step 0"));
    let uneven = world(50).server("web-2", "green", 10, Admin::Ready, true);
    assert!(first_step(uneven).contains("canary step 0"));
}

#[test]
fn a_canary_with_nothing_to_compare_against_goes_as_blue_green() {
    let plan = build(
        &canary_desired(),
        &ObservedState::default(),
        &BTreeSet::new(),
        &Scope::default(),
    );
    let text = plan.render_text();
    assert!(!text.contains("canary step"), "{text}");
    // Nothing to take traffic back to: no bake; the rollout is recorded (2.0 is the last good).
    assert!(!text.contains("bake"), "{text}");
    assert!(text.contains("record prod/api 2.0 as succeeded"), "{text}");
    assert!(
        text.contains("shift prod/api traffic on edge to [web-1_blue, web-2_blue]"),
        "{text}"
    );
}

#[test]
fn a_quarantined_version_is_left_alone_until_its_desired_state_changes() {
    let desired = canary_desired();
    let mut world = World::new().serving_blue("1.0");
    world.0.rollouts.insert(
        ("prod".into(), "api".into()),
        record(&desired, "2.0", Phase::Failed, 0),
    );
    let plan = build(&desired, &world.0, &BTreeSet::new(), &Scope::default());
    assert!(plan.is_empty(), "{}", plan.render_text());
    assert_eq!(plan.notes.len(), 1);
    assert!(
        plan.notes[0].starts_with("prod/api 2.0 is quarantined (failed): analysis failed;"),
        "{:?}",
        plan.notes
    );
    assert!(quarantine(&desired, &world.0, "prod", "api").is_some());
    // A rollback left half done (the canary still has weight) is finished by the next plan.
    let mut half = World::new()
        .instance("web-1", "blue", "1.0", true, true)
        .instance("web-1", "green", "2.0", true, true)
        .server("web-1", "blue", 90, Admin::Ready, true)
        .server("web-1", "green", 10, Admin::Ready, true);
    half.0.rollouts.insert(
        ("prod".into(), "api".into()),
        record(&desired, "2.0", Phase::Failed, 0),
    );
    let text = build(&desired, &half.0, &BTreeSet::new(), &Scope::default()).render_text();
    assert!(
        text.contains("shift prod/api traffic on edge to [web-1_blue] from [web-1_green]"),
        "{text}"
    );
    // Nothing served on web-2: the last good version is started there first, on its own: a
    // host where it cannot come back holds up no other.
    let plan = build(&desired, &half.0, &BTreeSet::new(), &Scope::default());
    assert!(happens_before(
        &plan,
        "enable kf_prod_api/web-2_blue on edge (weight 0, wait UP)",
        "shift prod/api traffic on edge to [web-2_blue]"
    ));
    assert!(!happens_before(
        &plan,
        "enable kf_prod_api/web-2_blue on edge (weight 0, wait UP)",
        "shift prod/api traffic on edge to [web-1_blue] from [web-1_green]"
    ));
    assert!(
        text.contains("stop prod/api 2.0 in slot green on web-1"),
        "{text}"
    );
    assert!(
        text.starts_with("note: prod/api 2.0 is quarantined"),
        "{text}"
    );
    // Another desired state of the app (here: its steps) lifts it.
    let changed = two_hosts("{ canary: { steps: [{ weight: 20 }] } }");
    let plan = build(&changed, &world.0, &BTreeSet::new(), &Scope::default());
    assert!(plan.notes.is_empty());
    assert!(!plan.is_empty());
}

#[test]
fn a_canary_rollback_gives_the_traffic_back_before_stopping_the_canary() {
    let desired = canary_desired();
    let world = World::new()
        .instance("web-1", "blue", "1.0", true, true)
        .instance("web-2", "blue", "1.0", true, true)
        .instance("web-1", "green", "2.0", true, true)
        .instance("web-2", "green", "2.0", true, false)
        .server("web-1", "blue", 90, Admin::Ready, true)
        .server("web-2", "blue", 90, Admin::Ready, true)
        .server("web-1", "green", 10, Admin::Ready, true)
        .server("web-2", "green", 0, Admin::Ready, true);
    let plan = cleanup(&desired, &world.0, "prod", "api", "2.0", Cleanup::Revert);
    // A shift per host: web-1's takes the canary's weight, web-2's gives the stable its full
    // weight back.
    let shift = "shift prod/api traffic on edge to [web-1_blue] from [web-1_green]";
    assert!(plan
        .render_text()
        .contains("shift prod/api traffic on edge to [web-2_blue]\n"));
    assert!(happens_before(
        &plan,
        shift,
        "drain kf_prod_api/web-1_green on edge, then maint"
    ));
    assert!(happens_before(
        &plan,
        "drain kf_prod_api/web-1_green on edge, then maint",
        "stop prod/api 2.0 in slot green on web-1"
    ));
    assert!(happens_before(
        &plan,
        "drain kf_prod_api/web-2_green on edge, then maint",
        "stop prod/api 2.0 in slot green on web-2"
    ));
    assert!(!plan.render_text().contains("1.0 in slot blue"));

    // When the failure was not the version's, what serves keeps serving, and nothing is said
    // to be wrong.
    let plan = cleanup(&desired, &world.0, "prod", "api", "2.0", Cleanup::Keep);
    assert!(plan.stuck.is_empty());
    assert!(!plan.render_text().contains("shift"));
    assert!(
        !plan.render_text().contains("on web-1"),
        "{}",
        plan.render_text()
    );

    // With no other version alive, the canary keeps its traffic and is not stopped.
    let alone = World::new()
        .instance("web-1", "green", "2.0", true, true)
        .server("web-1", "green", 10, Admin::Ready, true);
    let plan = cleanup(&desired, &alone.0, "prod", "api", "2.0", Cleanup::Revert);
    assert!(plan.is_empty(), "{}", plan.render_text());
    assert_eq!(plan.notes.len(), 1, "{:?}", plan.notes);
    assert!(plan.stuck[0].contains("no earlier version is known to bring back"));
    // Held: the same, for that reason.
    let plan = cleanup(&desired, &alone.0, "prod", "api", "2.0", Cleanup::Hold);
    assert!(
        plan.stuck[0].contains("on_failure: hold"),
        "{:?}",
        plan.stuck
    );
}

#[test]
fn a_slot_that_serves_is_drained_before_it_is_stopped_for_reuse() {
    // Abnormal but possible: both slots of web-1 serve the old version (weights 100 and 30).
    let world = World::new()
        .serving_blue("1.0")
        .instance("web-1", "green", "1.0", true, true)
        .server("web-1", "green", 30, Admin::Ready, true);
    let plan = World::plan(&world, &[]);
    // The lower-weight slot is reused, and it is drained before its instance is stopped.
    assert!(
        happens_before(
            &plan,
            "drain kf_prod_api/web-1_green on edge, then maint",
            "stop prod/api 1.0 in slot green on web-1"
        ),
        "{}",
        plan.render_text()
    );
    assert!(happens_before(
        &plan,
        "stop prod/api 1.0 in slot green on web-1",
        "start prod/api 2.0 in slot green on web-1"
    ));
}

#[test]
fn a_new_version_that_died_after_the_shift_never_gets_the_old_one_stopped() {
    // green 2.0 took all weight and died (HAProxy: DOWN); blue 1.0 is alive, weight 0, in maint.
    let world = World::new()
        .instance("web-1", "green", "2.0", false, false)
        .instance("web-1", "blue", "1.0", true, true)
        .server("web-1", "green", 100, Admin::Ready, false)
        .server("web-1", "blue", 0, Admin::Maint, false)
        .instance("web-2", "green", "2.0", true, true)
        .server("web-2", "green", 100, Admin::Ready, true)
        .server("web-2", "blue", 0, Admin::Maint, false);
    // The cleanup of a failed rollout to 2.0 leaves 1.0 alone.
    let cleanup_text =
        cleanup(&desired(), &world.0, "prod", "api", "2.0", Cleanup::Keep).render_text();
    assert!(!cleanup_text.contains("1.0"), "{cleanup_text}");
    // The next plan restarts 2.0 in the dead slot, not over the live 1.0.
    let plan = world.plan(&[]);
    let text = plan.render_text();
    assert!(
        text.contains("start prod/api 2.0 in slot green on web-1"),
        "{text}"
    );
    assert!(
        !text.contains("start prod/api 2.0 in slot blue on web-1"),
        "{text}"
    );
    assert!(happens_before(
        &plan,
        "shift prod/api traffic on edge to [web-1_green, web-2_green]",
        "stop prod/api 1.0 in slot blue on web-1"
    ));
}

/// An app that runs images pulls the version's image on every host that lacks it before anything
/// of the rollout starts or stops, also in a rolling update whose later batches stop old
/// instances; a host that runs the version already pulls nothing.
#[test]
fn images_are_pulled_before_anything_starts_or_stops() {
    let yaml = two_hosts_yaml("{ rolling: { batch: 1 } }").replace(
        r#"runtime: { kind: process, command: "/opt/api/{version}/api --port {port}" }"#,
        r#"runtime: { kind: docker, image: "reg.local/api:{version}" }"#,
    );
    let desired = crate::testing::desired(&yaml);
    // Both slots hold 1.0 on web-2 (green in maintenance), so its rollout stops green first.
    let world = World::new()
        .serving_blue("1.0")
        .instance("web-2", "green", "1.0", true, true);
    let plan = build(&desired, &world.0, &BTreeSet::new(), &Scope::default());
    let text = plan.render_text();
    for host in ["web-1", "web-2"] {
        let pull = format!("pull the image of prod/api 2.0 on {host}");
        assert!(text.contains(&pull), "{text}");
        for n in plan.graph.node_indices() {
            let step = plan.graph[n].to_string();
            if !step.starts_with("pull ") {
                assert!(
                    happens_before(&plan, &pull, &step),
                    "{pull} before {step}\n{text}"
                );
            }
        }
    }
    // Where the version runs already, nothing is pulled.
    let done = World::new()
        .instance("web-1", "green", "2.0", true, true)
        .instance("web-2", "green", "2.0", true, true);
    let plan = build(&desired, &done.0, &BTreeSet::new(), &Scope::default());
    assert!(
        !plan.render_text().contains("pull "),
        "{}",
        plan.render_text()
    );
    // A process app pulls nothing.
    let plan = World::new().plan(&[]);
    assert!(
        !plan.render_text().contains("pull "),
        "{}",
        plan.render_text()
    );
}

/// The spec `desired` renders for `slot` on `host` of prod/api 2.0.
fn spec_of(desired: &DesiredState, host: &str, slot: &str) -> crate::desired::spec::Spec {
    desired.spec(&SlotRef::new("prod", "api", host, slot), "2.0")
}

/// [`two_hosts_yaml`] with another command for the same version.
fn new_command() -> DesiredState {
    crate::testing::desired(
        &two_hosts_yaml("blue-green").replace("--port {port}", "--port {port} --workers 4"),
    )
}

#[test]
fn a_spec_change_of_the_same_version_is_rolled_out_and_says_why() {
    let old = desired();
    let world = World::new()
        .serving_blue("2.0")
        .spec("web-1", "blue", spec_of(&old, "web-1", "blue"))
        .spec("web-2", "blue", spec_of(&old, "web-2", "blue"));
    assert!(
        world.plan(&[]).is_empty(),
        "{}",
        world.plan(&[]).render_text()
    );
    let plan = build(
        &new_command(),
        &world.0,
        &BTreeSet::new(),
        &Scope::default(),
    );
    let text = plan.render_text();
    for step in [
        "start prod/api 2.0 in slot green on web-1",
        "start prod/api 2.0 in slot green on web-2",
        "shift prod/api traffic on edge to [web-1_green, web-2_green] from [web-1_blue, web-2_blue]",
        "stop prod/api 2.0 in slot blue on web-2",
    ] {
        assert!(text.contains(step), "{step} in\n{text}");
    }
    assert!(text.contains("bake prod/api 2.0"), "{text}");
    assert!(plan.notes.is_empty(), "{:?}", plan.notes);
    assert_eq!(
        plan.why,
        ["prod/api 2.0: command changed since its instances started: rolled out as a new version is (blue-green)"]
    );
    // An instance whose record has no spec (written before kube-free kept one) is taken as
    // what is wanted: nothing restarts for it.
    let unknown = World::new().serving_blue("2.0");
    assert!(build(
        &new_command(),
        &unknown.0,
        &BTreeSet::new(),
        &Scope::default()
    )
    .is_empty());
}

#[test]
fn a_spec_that_names_the_host_is_each_hosts_own() {
    // `{host}` in the command: each host renders its own spec, and the planner (which renders a
    // slot's spec once for every host when no template names the host) tells them apart.
    let desired = crate::testing::desired(
        &two_hosts_yaml("blue-green").replace("--port {port}", "--port {port} --name {host}"),
    );
    assert!(desired.spec_names_host("api"));
    assert!(!self::desired().spec_names_host("api"));
    assert_ne!(
        spec_of(&desired, "web-1", "blue"),
        spec_of(&desired, "web-2", "blue")
    );
    let own = World::new()
        .serving_blue("2.0")
        .spec("web-1", "blue", spec_of(&desired, "web-1", "blue"))
        .spec("web-2", "blue", spec_of(&desired, "web-2", "blue"));
    let plan = build(&desired, &own.0, &BTreeSet::new(), &Scope::default());
    assert!(plan.is_empty(), "{}", plan.render_text());
    // web-2 runs what web-1 renders: web-2 alone is started again.
    let swapped = World::new()
        .serving_blue("2.0")
        .spec("web-1", "blue", spec_of(&desired, "web-1", "blue"))
        .spec("web-2", "blue", spec_of(&desired, "web-1", "blue"));
    let text = build(&desired, &swapped.0, &BTreeSet::new(), &Scope::default()).render_text();
    assert!(
        text.contains("start prod/api 2.0 in slot green on web-2"),
        "{text}"
    );
    assert!(!text.contains("on web-1"), "{text}");
}

#[test]
fn a_failed_spec_change_goes_back_to_the_earlier_spec_where_it_runs_and_holds_elsewhere() {
    let (old, new) = (desired(), new_command());
    // web-1: the new spec in green has the traffic, the earlier one still runs in blue.
    // web-2: the new spec in green has the traffic, the earlier one is gone.
    let world = World::new()
        .instance("web-1", "blue", "2.0", true, true)
        .spec("web-1", "blue", spec_of(&old, "web-1", "blue"))
        .server("web-1", "blue", 0, Admin::Ready, true)
        .instance("web-1", "green", "2.0", true, true)
        .spec("web-1", "green", spec_of(&new, "web-1", "green"))
        .server("web-1", "green", 100, Admin::Ready, true)
        .instance("web-2", "green", "2.0", true, true)
        .spec("web-2", "green", spec_of(&new, "web-2", "green"))
        .server("web-2", "green", 100, Admin::Ready, true)
        .server("web-2", "blue", 0, Admin::Maint, false);
    let plan = cleanup(&new, &world.0, "prod", "api", "2.0", Cleanup::Revert);
    assert_eq!(
        plan.render_text(),
        "\
note: prod/api 2.0 keeps its traffic on [web-2_green]: its spec changed, no instance of its earlier spec runs there, and only a commit with that spec can start one
3 steps:
   1. shift prod/api traffic on edge to [web-1_blue] from [web-1_green]
   2. drain kf_prod_api/web-1_green on edge, then maint  (after 1)
   3. stop prod/api 2.0 in slot green on web-1  (after 2)
"
    );
    assert_eq!(
        plan.stuck,
        ["prod/api 2.0 keeps its traffic on [web-2_green]: its spec changed, no instance of its earlier spec runs there, and only a commit with that spec can start one"]
    );
    assert_eq!(
        reverts_to(&new, &world.0, "prod", "api", "2.0").as_deref(),
        Some("2.0 (earlier spec)")
    );
    // What serves, as messages and `status` say it, tells the two specs apart.
    let traffic = Traffic::read(&new, &world.0, "prod", "api");
    assert!(traffic.weighs("2.0"));
    assert!(!traffic.weighs("2.0 (earlier spec)"));
}

impl World {
    /// An instance kube-free started of `env`/`app` in `slot` on `host`, running.
    fn other(mut self, host: &str, env: &str, app: &str, slot: &str, version: &str) -> Self {
        let mut this = World::new().instance(host, slot, version, true, true);
        let key = ("prod".to_owned(), "api".to_owned(), slot.to_owned());
        let mut i = this
            .0
            .hosts
            .get_mut(host)
            .unwrap()
            .instances
            .remove(&key)
            .unwrap();
        i.record.env = env.into();
        i.record.app = app.into();
        self.0
            .hosts
            .entry(host.into())
            .or_default()
            .instances
            .insert((env.into(), app.into(), slot.into()), i);
        self
    }
}

fn pruning(prune: Prune) -> Scope {
    Scope {
        prune,
        ..Scope::default()
    }
}

#[test]
fn orphans_are_listed_and_left_alone_unless_prune_is_asked_for() {
    let world = World::new()
        .serving_blue("2.0")
        .other("web-3", "prod", "api", "blue", "1.0");
    let plan = build(&desired(), &world.0, &BTreeSet::new(), &Scope::default());
    assert!(plan.is_empty() && !plan.in_sync());
    assert_eq!(
        plan.render_text(),
        "\
orphaned: prod/api 1.0 in slot blue on web-3 (running): web-3 is not one of prod's hosts
not in sync: orphaned instances run (`--prune`, or `prune: true`, stops them)
"
    );
    // Asked to prune: stopped after the config that takes its server out.
    let plan = build(
        &desired(),
        &world.0,
        &["edge".into()].into(),
        &pruning(Prune::On),
    );
    assert_eq!(
        plan.render_text(),
        "\
why: prune prod/api 1.0 in slot blue on web-3 (running): web-3 is not one of prod's hosts
2 steps:
   1. apply config and reload balancer edge
   2. prune prod/api 1.0 in slot blue on web-3 (stop: not in the desired state)  (after 1)
"
    );
    // `prune: true` in Git asks for it too, globally or for the app.
    for yaml in [
        format!("prune: true\n{}", two_hosts_yaml("blue-green")),
        two_hosts_yaml("blue-green").replace("    bake: 5s\n", "    bake: 5s\n    prune: true\n"),
    ] {
        let d = crate::testing::desired(&yaml);
        let plan = build(&d, &world.0, &BTreeSet::new(), &Scope::default());
        assert_eq!(plan.graph.node_count(), 1, "{yaml}");
    }
}

#[test]
fn each_way_out_of_the_desired_state_is_an_orphan_with_its_reason() {
    let world = World::new()
        .serving_blue("2.0")
        .other("web-1", "staging", "api", "blue", "1.0")
        .other("web-1", "prod", "gone", "blue", "1.0")
        .other("web-2", "prod", "api", "purple", "1.0");
    let why: Vec<String> = orphans(&desired(), &world.0, &Scope::default())
        .into_iter()
        .map(|o| o.why)
        .collect();
    // An environment the desired state does not have, and no balancer host of it knows, is
    // another desired state's on a shared host: left alone, not listed.
    assert_eq!(
        why,
        [
            "app gone is not in the desired state",
            "api has no slot purple"
        ]
    );
    // One with rollout records on this desired state's balancer hosts was taken out of it.
    let mut taken_out = World(world.0.clone());
    taken_out.0.rolled_out_envs.insert("staging".into());
    let why: Vec<String> = orphans(&desired(), &taken_out.0, &Scope::default())
        .into_iter()
        .map(|o| o.why)
        .collect();
    assert_eq!(
        why[1],
        "environment staging is not in the desired state (its rollout records are)"
    );
    // A scope limits them by their names.
    let only = Scope {
        app: Some("gone".into()),
        ..Scope::default()
    };
    assert_eq!(orphans(&desired(), &world.0, &only).len(), 1);
}

#[test]
fn pruning_more_than_half_or_all_of_what_runs_is_refused_unless_prune_all() {
    let half = World::new()
        .serving_blue("2.0")
        .other("web-1", "prod", "gone", "blue", "1.0")
        .other("web-2", "prod", "gone", "blue", "1.0");
    let plan = build(&desired(), &half.0, &BTreeSet::new(), &pruning(Prune::On));
    assert_eq!((plan.graph.node_count(), plan.refused.is_none()), (2, true));

    let most = half.other("web-2", "prod", "gone", "green", "1.0");
    let plan = build(&desired(), &most.0, &BTreeSet::new(), &pruning(Prune::On));
    assert!(plan.is_empty());
    assert_eq!(
        plan.refused.as_deref(),
        Some("refusing to prune 3 of the 5 instances kube-free runs: a commit that takes out more than half is more likely a mistake (a broken commit, an empty checkout) than a wish; `--prune-all` prunes them")
    );
    assert_eq!(plan.orphans.len(), 3);
    let plan = build(&desired(), &most.0, &BTreeSet::new(), &pruning(Prune::All));
    assert_eq!((plan.graph.node_count(), plan.refused), (3, None));

    // Everything in scope: refused, even when it is one instance.
    let all = World::new().other("web-1", "prod", "gone", "blue", "1.0");
    let only = Scope {
        app: Some("gone".into()),
        prune: Prune::On,
        ..Scope::default()
    };
    let plan = build(&desired(), &all.0, &BTreeSet::new(), &only);
    assert!(plan.refused.unwrap().starts_with("refusing to prune 1 of the 1 instances kube-free runs of gone: a commit that takes out all of them"));
}

#[test]
fn a_serving_slot_whose_port_changes_keeps_its_server_until_the_traffic_left_it() {
    let old = desired();
    let moved = crate::testing::desired(
        &two_hosts_yaml("blue-green").replace("blue: 8000, green: 8001", "blue: 8010, green: 8001"),
    );
    let world = World::new()
        .serving_blue("2.0")
        .spec("web-1", "blue", spec_of(&old, "web-1", "blue"))
        .spec("web-2", "blue", spec_of(&old, "web-2", "blue"));
    let plan = build(&moved, &world.0, &["edge".into()].into(), &Scope::default());
    let text = plan.render_text();
    assert!(
        happens_before(
            &plan,
            "stop prod/api 2.0 in slot blue on web-1",
            "apply config and reload balancer edge"
        ),
        "{text}"
    );
    assert!(
        happens_before(&plan, "start prod/api 2.0 in slot green on web-1", "shift prod/api traffic on edge to [web-1_green, web-2_green] from [web-1_blue, web-2_blue]"),
        "{text}"
    );
    assert!(
        !happens_before(
            &plan,
            "apply config and reload balancer edge",
            "start prod/api 2.0 in slot green on web-1"
        ),
        "{text}"
    );
    assert_eq!(
        plan.why,
        [
            "prod/api 2.0: command changed, slot ports changed since its instances started: rolled out as a new version is (blue-green)",
            "prod/api: the config of balancer edge is applied after the traffic moved off [web-1_blue, web-2_blue], whose ports change",
        ]
    );
    // Quarantined there, the config waits: applying it would take the traffic's port away.
    let mut failed = World(world.0.clone());
    let rec = record(&moved, "2.0", Phase::Failed, 0);
    failed.0.rollouts.insert(("prod".into(), "api".into()), rec);
    let plan = build(
        &moved,
        &failed.0,
        &["edge".into()].into(),
        &Scope::default(),
    );
    assert!(
        !plan.render_text().contains("apply config"),
        "{}",
        plan.render_text()
    );
    assert!(
        plan.stuck
            .iter()
            .any(|s| s.starts_with("the config of balancer edge waits")),
        "{:?}",
        plan.stuck
    );
}
