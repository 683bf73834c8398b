//! The reconciler on fakes (`drivers::fake`), on tokio's paused clock: whole passes — blue-green,
//! canary with analysis, failures and their cleanup — and single live steps, asserting what the
//! fake fleet saw and the safety rules it watched. These run in seconds, without root or hosts; the
//! fleet tests (`tests/fleet_*`) do the same on real sshd, HAProxy and processes under load.

use super::effects::Live;
use super::*;
use crate::drivers::fake::{Behaviour, Fleet};
use crate::execute::{Effects, Fault};
use crate::names::SlotRef;
use crate::observed::Admin;
use crate::plan::{Action, Scope};
use crate::state::Phase;
use std::sync::Arc;
use std::time::Duration;

const CANARY: &str = "{ canary: { steps: [{ weight: 20, pause: 10s }, { weight: 50, pause: 10s }], analysis: { max_error_rate: 0.05, min_requests: 100 }, progress_deadline: 30s } }";

fn at(host: &str, slot: &str) -> SlotRef {
    SlotRef::new("prod", "api", host, slot)
}

/// A fleet where both hosts serve 1.0 from blue, green empty and in maintenance, and a world on it
/// whose desired state (with `strategy`) asks for 2.0.
fn serving_one(strategy: &str) -> (Arc<Fleet>, Arc<World>) {
    let desired = crate::testing::two_hosts(strategy);
    let fleet = Fleet::new(&desired);
    for host in ["web-1", "web-2"] {
        fleet.place(&at(host, "blue"), "1.0", 100, Admin::Ready);
    }
    let world = Arc::new(World::new(desired, "r".into(), fleet.drivers()));
    (fleet, world)
}

/// [`serving_one`], with 2.0 behaving as `new`.
fn rolling_out(strategy: &str, new: Behaviour) -> (Arc<Fleet>, Arc<World>) {
    let (fleet, world) = serving_one(strategy);
    fleet.behave("2.0", new);
    (fleet, world)
}

/// The pass failed by the version's own fault, was cleaned up, and quarantined the version.
fn blames_the_version(err: &ReconcileError) {
    let ReconcileError::RolledBack { failed, outcome } = err else {
        panic!("not rolled back: {err:?}")
    };
    assert_eq!(failed.error.fault, Fault::Version, "{err}");
    assert!(outcome.quarantines(), "{err}");
    assert_eq!(err.next(), Next::Quarantined);
}

fn options() -> Options {
    Options {
        parallel: 8,
        max_wait: None,
    }
}

/// One pass under the lease, as `reconcile --once` runs it.
async fn pass(world: &Arc<World>) -> Result<Report, ReconcileError> {
    pass_with(world, options()).await
}

async fn pass_with(world: &Arc<World>, options: Options) -> Result<Report, ReconcileError> {
    let scope = Scope::default();
    let work = once(world.clone(), &scope, options);
    leased(world, Duration::ZERO, Duration::from_secs(30), work).await
}

/// What serves: (version, weight) of each host's blue and green.
fn weights(fleet: &Fleet) -> Vec<(String, Option<String>, u32)> {
    let mut out = Vec::new();
    for host in ["web-1", "web-2"] {
        for slot in ["blue", "green"] {
            let version = fleet.instance(&at(host, slot)).map(|(v, _)| v);
            out.push((
                format!("{host}_{slot}"),
                version,
                fleet.server(&at(host, slot)).weight,
            ));
        }
    }
    out
}

/// Every host serves `version` with full weight (1.0 from blue, 2.0 from green) and runs nothing
/// in its other slot.
fn served_by(version: &str) -> Vec<(String, Option<String>, u32)> {
    let serving = if version == "1.0" { "blue" } else { "green" };
    let mut out = Vec::new();
    for host in ["web-1", "web-2"] {
        for slot in ["blue", "green"] {
            out.push(if slot == serving {
                (format!("{host}_{slot}"), Some(version.to_owned()), 100)
            } else {
                (format!("{host}_{slot}"), None, 0)
            });
        }
    }
    out
}

#[tokio::test(start_paused = true)]
async fn blue_green_switches_without_breaking_a_rule() {
    let (fleet, world) = serving_one("blue-green");
    let report = pass(&world).await.unwrap();
    assert_eq!(report.steps, 11);
    assert_eq!(report.next(), Next::Idle);
    assert_eq!(weights(&fleet), served_by("2.0"));
    assert_eq!(fleet.violations(), Vec::<String>::new());
    let log = fleet.log();
    let pos = |s: &str| {
        log.iter()
            .position(|l| l == s)
            .unwrap_or_else(|| panic!("{s} in {log:?}"))
    };
    // The new server leaves maintenance at weight 0, gets weight only after, and the old one is
    // stopped only once it is in maintenance.
    for host in ["web-1", "web-2"] {
        let enable = pos(&format!("state kf_prod_api/{host}_green Ready"));
        assert_eq!(
            log[enable - 1],
            format!("weight kf_prod_api/{host}_green 0")
        );
        assert!(enable < pos(&format!("weight kf_prod_api/{host}_green 100")));
        assert!(
            pos(&format!("state kf_prod_api/{host}_blue Maint"))
                < pos(&format!("stop 1.0 {host} in blue"))
        );
    }
    // In sync now: a second pass does nothing.
    let before = fleet.log().len();
    assert_eq!(pass(&world).await.unwrap().steps, 0);
    assert_eq!(fleet.log().len(), before);
}

#[tokio::test(start_paused = true)]
async fn a_version_the_balancer_never_finds_up_gets_no_weight_and_is_quarantined() {
    // Ready to kube-free's probe, but the balancer's own check fails.
    let (fleet, world) = rolling_out("blue-green", Behaviour::unhealthy());
    let err = pass(&world).await.unwrap_err();
    let text = crate::error::chain(&err);
    assert!(
        text.contains("did not find kf_prod_api/web-1_green UP within 30s")
            || text.contains("did not find kf_prod_api/web-2_green UP within 30s"),
        "{text}"
    );
    assert!(text.contains("2.0 is quarantined"), "{text}");
    blames_the_version(&err);
    // 1.0 kept all the traffic; the new instances are stopped.
    assert_eq!(weights(&fleet), served_by("1.0"));
    assert_eq!(fleet.violations(), Vec::<String>::new());
    assert_eq!(fleet.rollout("prod", "api").unwrap().phase, Phase::Failed);
    // Quarantined: the next pass says so and starts nothing.
    let before = fleet.log().len();
    let err = pass(&world).await.unwrap_err();
    assert!(matches!(err, ReconcileError::Quarantined(_)), "{err}");
    assert_eq!(fleet.log().len(), before);
}

#[tokio::test(start_paused = true)]
async fn a_version_that_never_gets_ready_is_cleaned_up_and_what_serves_is_untouched() {
    let (fleet, world) = rolling_out("blue-green", Behaviour::never_ready());
    let err = pass(&world).await.unwrap_err();
    let text = crate::error::chain(&err);
    assert!(
        text.contains("not ready within the probe deadline of 2s: http://192.0.2.1"),
        "{text}"
    );
    assert!(text.contains("answered 500"), "{text}");
    assert!(
        text.contains("cleaned up: instances of 2.0 that got no traffic are stopped"),
        "{text}"
    );
    blames_the_version(&err);
    assert_eq!(fleet.rollout("prod", "api").unwrap().phase, Phase::Failed);
    assert_eq!(weights(&fleet), served_by("1.0"));
    assert!(
        !fleet.log().iter().any(|l| l.starts_with("stop 1.0")),
        "{:?}",
        fleet.log()
    );
    // Never enabled, never weighted.
    assert!(
        !fleet
            .log()
            .iter()
            .any(|l| l.contains("green Ready") || l.contains("green 100")),
        "{:?}",
        fleet.log()
    );
    assert_eq!(fleet.violations(), Vec::<String>::new());
}

#[tokio::test(start_paused = true)]
async fn an_instance_that_exits_at_once_is_the_versions_fault() {
    let (fleet, world) = rolling_out("blue-green", Behaviour::exiting());
    let err = pass(&world).await.unwrap_err();
    blames_the_version(&err);
    assert!(
        err.to_string().contains("the process exited at once"),
        "{err}"
    );
    assert_eq!(weights(&fleet), served_by("1.0"));
}

#[tokio::test(start_paused = true)]
async fn a_host_lost_in_mid_rollout_leaves_the_rollout_as_it_is() {
    let (fleet, world) = serving_one("blue-green");
    fleet.lose_on_start("web-2");
    let err = pass(&world).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, ReconcileError::HostLost { .. }), "{text}");
    assert!(text.contains("cannot reach host \"web-2\""), "{text}");
    assert_eq!(err.next(), Next::Retry);
    // Nothing undone, nothing quarantined, no weight moved.
    assert_eq!(fleet.rollout("prod", "api"), None);
    assert!(
        !fleet.log().iter().any(|l| l.starts_with("stop")),
        "{:?}",
        fleet.log()
    );
    assert_eq!(fleet.server(&at("web-1", "blue")).weight, 100);
    assert_eq!(fleet.violations(), Vec::<String>::new());
    // Once it is back, the next pass carries on from there.
    fleet.set_down("web-2", false);
    pass(&world).await.unwrap();
    assert_eq!(weights(&fleet), served_by("2.0"));
    assert_eq!(fleet.violations(), Vec::<String>::new());
}

#[tokio::test(start_paused = true)]
async fn a_connection_lost_in_a_step_stops_the_rollout_where_it_is_though_the_host_is_back() {
    let (fleet, world) = serving_one("blue-green");
    // The start on web-2 loses its connection; by the time the run looks, web-2 answers again.
    fleet.blip_on_start("web-2");
    let err = pass(&world).await.unwrap_err();
    let ReconcileError::HostLost { failed, lost, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(failed.error.fault, Fault::Unreachable);
    assert!(lost.is_empty(), "{lost:?}");
    assert!(err.to_string().contains("the connection dropped"), "{err}");
    // Nothing cleaned up or quarantined: web-1's new instance stays for the next run.
    assert!(
        !fleet.log().iter().any(|l| l.starts_with("stop")),
        "{:?}",
        fleet.log()
    );
    assert_eq!(fleet.rollout("prod", "api"), None);
    assert_eq!(
        fleet.instance(&at("web-1", "green")),
        Some(("2.0".into(), true))
    );
    pass(&world).await.unwrap();
    assert_eq!(weights(&fleet), served_by("2.0"));
}

#[tokio::test(start_paused = true)]
async fn a_drain_waits_for_sessions_to_end_within_the_apps_drain() {
    let (fleet, world) = serving_one("blue-green");
    // web-1's sessions end 300 ms into its drain; web-2's outlast the app's `drain: 1s`.
    fleet.hold_sessions(&at("web-1", "blue"), 3, Duration::from_millis(300));
    fleet.hold_sessions(&at("web-2", "blue"), 3, Duration::from_secs(60));
    pass(&world).await.unwrap();
    let took = |host: &str| {
        let drain = fleet
            .when(&format!("state kf_prod_api/{host}_blue Drain"))
            .unwrap();
        fleet
            .when(&format!("state kf_prod_api/{host}_blue Maint"))
            .unwrap()
            - drain
    };
    let (quick, slow) = (took("web-1"), took("web-2"));
    assert!(
        quick >= Duration::from_millis(300) && quick < Duration::from_millis(600),
        "{quick:?}"
    );
    assert!(
        slow >= Duration::from_secs(1) && slow < Duration::from_millis(1300),
        "{slow:?}"
    );
    assert_eq!(weights(&fleet), served_by("2.0"));
}

#[tokio::test(start_paused = true)]
async fn a_first_deploy_installs_the_config_first() {
    let desired = crate::testing::two_hosts("blue-green");
    let fleet = Fleet::new(&desired);
    fleet.stale_config("edge");
    let world = Arc::new(World::new(desired, "r".into(), fleet.drivers()));
    pass(&world).await.unwrap();
    let log = fleet.log();
    assert_eq!(log[0], "config edge", "{log:?}");
    assert_eq!(
        weights(&fleet)
            .into_iter()
            .map(|(s, v, w)| (s, v.is_some(), w))
            .collect::<Vec<_>>(),
        [
            ("web-1_blue".to_owned(), true, 100),
            ("web-1_green".to_owned(), false, 0),
            ("web-2_blue".to_owned(), true, 100),
            ("web-2_green".to_owned(), false, 0)
        ]
    );
    assert_eq!(fleet.violations(), Vec::<String>::new());
    assert_eq!(pass(&world).await.unwrap().steps, 0);
}

/// Live effects that, after each step that changes the balancer, check that a restart of the
/// balancer would keep what the step did.
struct Saved(Arc<Live>, Arc<Fleet>);

#[async_trait::async_trait]
impl Effects for Saved {
    async fn apply(&self, action: &Action) -> Result<(), crate::execute::StepError> {
        self.0.apply(action).await?;
        assert_eq!(
            self.1.unsaved("edge"),
            Vec::<crate::names::ServerKey>::new(),
            "after {action}"
        );
        Ok(())
    }
    fn deadline(&self, action: &Action) -> Duration {
        self.0.deadline(action)
    }
}

#[tokio::test(start_paused = true)]
async fn every_step_that_changes_the_balancer_saves_its_state() {
    for strategy in ["blue-green", CANARY] {
        let (fleet, world) = serving_one(strategy);
        world
            .acquire_lease(Duration::ZERO, Duration::from_secs(30))
            .await
            .unwrap();
        let observed = world.observe().await.unwrap();
        let plan = crate::plan::build(
            &world.desired,
            &observed,
            &Default::default(),
            &Scope::default(),
        );
        let effects = Arc::new(Saved(live(&world, observed), fleet.clone()));
        // One step at a time, so that each is checked alone.
        let report = crate::execute::run(&plan, effects, 1).await.unwrap();
        assert!(report.done.len() > 10, "{strategy}: {}", plan.render_text());
        assert_eq!(weights(&fleet), served_by("2.0"));
        assert!(fleet.log().iter().any(|l| l == "save kf_prod_api"));
    }
}

#[tokio::test(start_paused = true)]
async fn a_run_that_lost_its_lease_changes_nothing_more() {
    let (fleet, world) = serving_one(CANARY);
    let thief = {
        let fleet = fleet.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            fleet.steal_leases();
        })
    };
    let err = pass(&world).await.unwrap_err();
    thief.await.unwrap();
    assert!(matches!(err, ReconcileError::LeaseLost { .. }), "{err}");
    assert!(err.to_string().contains("now held by run thief"), "{err}");
    // It stopped in the first pause: the canary keeps its 20%, nothing was cleaned up.
    assert_eq!(fleet.server(&at("web-1", "green")).weight, 20);
    assert!(
        !fleet.log().iter().any(|l| l.starts_with("stop")),
        "{:?}",
        fleet.log()
    );
}

#[tokio::test(start_paused = true)]
async fn a_healthy_canary_walks_its_steps_and_succeeds() {
    let (fleet, world) = serving_one(CANARY);
    let report = pass(&world).await.unwrap();
    assert_eq!(report.next(), Next::Idle);
    assert_eq!(weights(&fleet), served_by("2.0"));
    let record = fleet.rollout("prod", "api").unwrap();
    assert_eq!((record.phase, record.step), (Phase::Succeeded, 2));
    let verdicts: Vec<_> = record
        .analysis
        .iter()
        .map(|a| (a.step, a.weight, a.verdict.as_str()))
        .collect();
    assert_eq!(verdicts, [(0, 20, "passed"), (1, 50, "passed")]);
    // 1,000 requests a second for 10 s, 20% of them to the canary.
    let first = &record.analysis[0];
    assert!((1900..=2100).contains(&first.requests), "{first:?}");
    assert_eq!(fleet.violations(), Vec::<String>::new());
}

#[tokio::test(start_paused = true)]
async fn a_canary_with_too_many_errors_gives_its_traffic_back_and_is_quarantined() {
    let (fleet, world) = rolling_out(CANARY, Behaviour::erring(0.3));
    let err = pass(&world).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("analysis failed at step 0: error rate 0.300 over"),
        "{text}"
    );
    blames_the_version(&err);
    assert!(
        text.contains("rolled back: prod/api traffic is back on the version that served before"),
        "{text}"
    );
    assert_eq!(weights(&fleet), served_by("1.0"));
    let record = fleet.rollout("prod", "api").unwrap();
    assert_eq!(record.phase, Phase::Failed);
    assert_eq!(record.analysis[0].verdict, "failed");
    assert_eq!(fleet.violations(), Vec::<String>::new());
}

#[tokio::test(start_paused = true)]
async fn a_failed_check_fails_the_analysis_whatever_the_figures() {
    let (fleet, world) = rolling_out(
        &CANARY.replace(
            "min_requests: 100 }",
            "min_requests: 100, checks: [/smoke] }",
        ),
        Behaviour::failing_checks(),
    );
    let err = pass(&world).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("analysis failed at step 0: check /smoke on web-1: http://192.0.2.11:8001/smoke answered 500"), "{text}");
    blames_the_version(&err);
    assert_eq!(weights(&fleet), served_by("1.0"));
}

#[tokio::test(start_paused = true)]
async fn too_few_requests_extend_the_window_until_the_progress_deadline() {
    let (fleet, world) = serving_one(&CANARY.replace("min_requests: 100", "min_requests: 1000000"));
    let started = tokio::time::Instant::now();
    let err = pass(&world).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("analysis inconclusive at step 0"), "{text}");
    blames_the_version(&err);
    assert!(
        text.contains("fewer than min_requests 1000000, within the progress deadline of 30s"),
        "{text}"
    );
    // The 10 s pause, then windows extended up to the 30 s progress deadline.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(40) && took < Duration::from_secs(50),
        "{took:?}"
    );
    let record = fleet.rollout("prod", "api").unwrap();
    assert!(record.analysis.len() > 2, "{:?}", record.analysis);
    assert!(record.analysis.iter().all(|a| a.verdict == "inconclusive"));
    assert_eq!(weights(&fleet), served_by("1.0"));
}

#[tokio::test(start_paused = true)]
async fn a_promote_does_not_wait_for_enough_requests() {
    let (fleet, world) = serving_one(&CANARY.replace("min_requests: 100", "min_requests: 1000000"));
    let promoter = {
        let world = world.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            promote(&world, "prod", "api", true).await.unwrap()
        })
    };
    pass(&world).await.unwrap();
    assert!(promoter
        .await
        .unwrap()
        .contains("every remaining pause is skipped"));
    assert_eq!(weights(&fleet), served_by("2.0"));
    let record = fleet.rollout("prod", "api").unwrap();
    assert!(
        record.analysis.iter().all(|a| a.verdict == "inconclusive"),
        "{:?}",
        record.analysis
    );
}

#[tokio::test(start_paused = true)]
async fn counters_that_restart_start_the_window_over() {
    let (fleet, world) = serving_one(CANARY);
    // Step 1 (50%) runs from 10 s to 20 s; the balancer restarts its counters at 18 s.
    let reload = {
        let fleet = fleet.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(18)).await;
            fleet.reset_counters();
        })
    };
    pass(&world).await.unwrap();
    reload.await.unwrap();
    let record = fleet.rollout("prod", "api").unwrap();
    // Counted from the restart, over a whole new window of 10 s at 500 requests a second.
    let second = &record.analysis[1];
    assert!((4500..=5500).contains(&second.requests), "{second:?}");
    assert_eq!(second.verdict, "passed");
}

#[tokio::test(start_paused = true)]
async fn a_gate_and_a_long_pause_stop_the_run_and_say_when_to_come_back() {
    let gate = CANARY.replace("{ weight: 50, pause: 10s }", "{ weight: 50, pause: {} }");
    let (fleet, world) = serving_one(&gate);
    let limited = Options {
        parallel: 8,
        max_wait: Some(Duration::from_secs(5)),
    };
    // The first pause (10 s) is longer than --max-wait: the run stops at it.
    let err = pass_with(&world, limited).await.unwrap_err();
    assert!(err.waits(), "{err}");
    assert!(
        err.to_string()
            .contains("canary step 0 pauses 10s more, longer than --max-wait"),
        "{err}"
    );
    let Next::At(t) = err.next() else {
        panic!("{:?}", err.next())
    };
    assert_eq!(
        t,
        fleet.rollout("prod", "api").unwrap().step_started_at + 10
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    // Then the gate: it waits for a promote.
    let err = pass_with(&world, limited).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("canary step 1 waits for `kube-free promote api --env prod`"),
        "{err}"
    );
    assert_eq!(err.next(), Next::Promotion);
    assert_eq!(fleet.server(&at("web-1", "green")).weight, 50);
    assert_eq!(fleet.rollout("prod", "api").unwrap().phase, Phase::Paused);
}

#[tokio::test(start_paused = true)]
async fn a_canary_without_its_record_resumes_at_the_weights_the_balancer_shows() {
    let (fleet, world) = serving_one(CANARY);
    // A run stood at step 1 (50%) when its record was lost.
    for host in ["web-1", "web-2"] {
        fleet.place(&at(host, "blue"), "1.0", 50, Admin::Ready);
        fleet.place(&at(host, "green"), "2.0", 50, Admin::Ready);
    }
    fleet.forget_rollout("prod", "api");
    pass(&world).await.unwrap();
    let log = fleet.log();
    assert!(
        !log.iter()
            .any(|l| l.ends_with("green 20") || l.ends_with("blue 80")),
        "the canary's share never fell back to step 0's: {log:?}"
    );
    assert!(!log.iter().any(|l| l.starts_with("start")), "{log:?}");
    let record = fleet.rollout("prod", "api").unwrap();
    assert_eq!(
        record.analysis.iter().map(|a| a.step).collect::<Vec<_>>(),
        [1]
    );
    assert_eq!(weights(&fleet), served_by("2.0"));
}

#[tokio::test(start_paused = true)]
async fn a_failing_canary_never_gives_its_traffic_to_a_stable_version_that_is_down() {
    let (fleet, world) = rolling_out(CANARY, Behaviour::erring(0.5));
    // The stable version fails the balancer's check during the canary's first pause.
    let breaker = {
        let fleet = fleet.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            fleet.behave("1.0", Behaviour::unhealthy());
        })
    };
    let err = pass(&world).await.unwrap_err();
    breaker.await.unwrap();
    let text = crate::error::chain(&err);
    assert!(text.contains("analysis failed at step 0"), "{text}");
    assert!(text.contains("cleaning up prod/api failed too"), "{text}");
    blames_the_version(&err);
    assert!(
        text.contains("refusing to change weights: no server that is UP would keep any weight"),
        "{text}"
    );
    // The canary keeps what it had; the broken stable got no more.
    assert_eq!(fleet.server(&at("web-1", "green")).weight, 20);
    assert_eq!(fleet.server(&at("web-1", "blue")).weight, 80);
    assert!(
        !fleet.log().iter().any(|l| l.starts_with("stop")),
        "{:?}",
        fleet.log()
    );
    assert_eq!(fleet.violations(), Vec::<String>::new());
}

#[tokio::test(start_paused = true)]
async fn an_abort_in_a_pause_rolls_the_canary_back() {
    let (fleet, world) = serving_one(CANARY);
    // What `kube-free abort` writes first, while the pass pauses.
    let aborter = {
        let world = world.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            let mut record = world.read_rollout("prod", "api").await.unwrap().unwrap();
            record.phase = Phase::Aborted;
            record.outcome = Some("aborted by `kube-free abort`".into());
            world.write_rollout(&record).await.unwrap();
        })
    };
    let err = pass(&world).await.unwrap_err();
    aborter.await.unwrap();
    assert!(
        err.to_string()
            .contains("aborted by `kube-free abort` at step 0"),
        "{err}"
    );
    blames_the_version(&err);
    assert_eq!(weights(&fleet), served_by("1.0"));
    // An abort stays an abort.
    assert_eq!(fleet.rollout("prod", "api").unwrap().phase, Phase::Aborted);
}

#[tokio::test(start_paused = true)]
async fn an_instance_of_an_app_no_longer_desired_is_seen_but_never_probed() {
    let (fleet, world) = serving_one("blue-green");
    // An app removed from the desired state left an instance behind.
    let old = SlotRef::new("prod", "old", "web-1", "blue");
    fleet.place(&old, "0.9", 0, Admin::Maint);
    let observed = world.observe().await.unwrap();
    let seen = observed.instance("web-1", "prod", "old", "blue").unwrap();
    assert_eq!((seen.alive, seen.ready), (true, Some(false)));
    // The pass rolls the desired app out and leaves the other alone.
    pass(&world).await.unwrap();
    assert_eq!(weights(&fleet), served_by("2.0"));
    assert_eq!(fleet.instance(&old), Some(("0.9".into(), true)));
}

/// The live effects of one world, as a pass makes them.
fn live(world: &Arc<World>, observed: crate::observed::ObservedState) -> Arc<Live> {
    Live::new(world, observed, None, false)
}

#[tokio::test(start_paused = true)]
async fn a_drain_never_takes_the_last_server_that_serves() {
    let (fleet, world) = serving_one("blue-green");
    fleet.place(&at("web-2", "blue"), "1.0", 0, Admin::Maint);
    world
        .acquire_lease(Duration::ZERO, Duration::from_secs(30))
        .await
        .unwrap();
    let observed = world.observe().await.unwrap();
    let effects = live(&world, observed);
    let drain = |host: &str| Action::Drain {
        balancer: "edge".into(),
        at: at(host, "blue"),
    };
    let err = effects.apply(&drain("web-1")).await.unwrap_err();
    assert_eq!(err.fault, Fault::Host);
    assert_eq!(err.to_string(), "refusing to drain kf_prod_api/web-1_blue: no other server of the backend is UP with weight");
    let s = fleet.server(&at("web-1", "blue"));
    assert_eq!((s.admin, s.weight), (Admin::Ready, 100));
    // A server in maintenance already is drained at once.
    effects.apply(&drain("web-2")).await.unwrap();
    assert_eq!(fleet.violations(), Vec::<String>::new());
}

#[tokio::test(start_paused = true)]
async fn a_shift_refuses_targets_that_are_not_up_and_never_leaves_none_with_weight() {
    // web-1 green runs a version the balancer finds DOWN, enabled at weight 0.
    let (fleet, world) = rolling_out("blue-green", Behaviour::unhealthy());
    fleet.place(&at("web-1", "green"), "2.0", 0, Admin::Ready);
    world
        .acquire_lease(Duration::ZERO, Duration::from_secs(30))
        .await
        .unwrap();
    let effects = live(&world, world.observe().await.unwrap());
    let shift = Action::Shift {
        balancer: "edge".into(),
        env: "prod".into(),
        app: "api".into(),
        to: vec![at("web-1", "green")],
        from: vec![at("web-1", "blue"), at("web-2", "blue")],
    };
    let err = effects.apply(&shift).await.unwrap_err();
    assert_eq!(err.fault, Fault::Host);
    assert_eq!(
        err.to_string(),
        "refusing to change weights: no server that is UP would keep any weight"
    );
    // With another server keeping weight, the target itself is refused.
    let shift = Action::Shift {
        balancer: "edge".into(),
        env: "prod".into(),
        app: "api".into(),
        to: vec![at("web-1", "green"), at("web-2", "blue")],
        from: vec![at("web-1", "blue")],
    };
    let err = effects.apply(&shift).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "refusing to move traffic to kf_prod_api/web-1_green: balancer reports \"DOWN\""
    );
    for host in ["web-1", "web-2"] {
        assert_eq!(fleet.server(&at(host, "blue")).weight, 100);
    }
    assert_eq!(fleet.server(&at("web-1", "green")).weight, 0);
    assert_eq!(fleet.violations(), Vec::<String>::new());
}
